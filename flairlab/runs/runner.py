"""`flairlab run PIPELINE.yaml`: execute a sequence of notebooks with papermill, reproducibly.

A pipeline file (see `pipelines/demo.yaml`)::

    name: demo
    notebooks_dir: ../notebooks          # relative to this file
    parameters: {source: sample}         # defaults for every step that declares them
    steps:
      - notebook: 03_pretrain_mae.ipynb
        parameters: {epochs: 2}
      - notebook: 04_finetune.ipynb
        parameters: {checkpoint: "${steps.03_pretrain_mae.output_dir}"}
    sweep: {03_pretrain_mae.fusion_mode: [group, shared], seed: [0, 1]}   # optional grid

Overrides (`--set`, sweep keys) are `param` (every step declaring it) or `step.param` (one step).
String values may use `${run_dir}`, `${runs_dir}` and `${steps.NAME.output_dir}`.
Every value is checked against the notebooks' `parameters` cells before anything runs. Each run
gets a fresh `runs/<UTC stamp>-<name>/` (see `flairlab.runs.provenance.create_run_dir`) holding
`params.json`, `environment.json`, `status.json`, `pipeline.yaml`, one executed `<step>.ipynb`
per step and its `output_dir` `<step>/` (`results.json`, figures, artefacts).

Executed notebooks are finished for their readers (`flairlab.runs.notebooks.finish_executed`): no
jupytext pairing, progress bars showing where they ended, BokehJS stored once, and signed with the
user's Jupyter notebook secret so JupyterLab renders their plots, widgets and maps as opened
(`--no-trust` leaves them unsigned).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from flairlab.data.errors import DataError
from flairlab.data.results import write_json_atomic
from flairlab.runs.notebooks import finish_executed, read_notebook, slowest_cells
from flairlab.runs.pipeline import (
    Pipeline,
    RunPlan,
    expand_templates,
    load_pipeline,
    parse_sets,
    plan_runs,
)
from flairlab.runs.provenance import (
    create_run_dir,
    environment_info,
    source_fingerprints,
    source_roots,
    utc_iso,
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _error_record(err: BaseException, step: str, notebook: Path, executed: Path) -> dict[str, Any]:
    """What failed, where: the failing cell is located in the executed notebook on disk."""
    rec: dict[str, Any] = {
        "step": step,
        "notebook": str(notebook),
        "executed_notebook": executed.name,
        "ename": getattr(err, "ename", type(err).__name__),
        "evalue": getattr(err, "evalue", str(err)),
        "cell_index": None,  # index of the failing cell in the executed notebook
        "execution_count": getattr(err, "exec_count", None),
        "cell_source": getattr(err, "source", None),
        "traceback": [_ANSI.sub("", t) for t in getattr(err, "traceback", None) or []],
    }
    if executed.exists():
        cells = [
            (i, c, c.get("metadata", {}).get("papermill", {}))
            for i, c in enumerate(read_notebook(executed).cells)
            if c.cell_type == "code"
        ]
        failed = [(i, c) for i, c, m in cells if m.get("exception") or m.get("status") == "failed"]
        # a dead kernel or a timeout flags no cell: take the last one that started
        started = [(i, c) for i, c, m in cells if m.get("start_time")]
        if failed or started:
            i, cell = (failed or started[-1:])[0]
            rec.update(cell_index=i, cell_source=cell.source)
    if not rec["traceback"]:
        rec["traceback"] = traceback.format_exception(err)
    return rec


class _KnownParams(logging.Filter):
    """papermill warns on `str | None` parameters its regex cannot read; we validated them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passed unknown parameter")


logging.getLogger("papermill").addFilter(_KnownParams())


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _kernel_manager_class() -> type:
    """An AsyncKernelManager that remembers its kernels, so that Ctrl-C can stop them."""
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        live: ClassVar[list[Any]] = []

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._ipc_folder = None
            if os.name == "posix":  # Unix sockets in a private folder instead of open TCP ports
                self._ipc_folder = tempfile.mkdtemp(prefix="flairlab-kernel-")
                self.transport, self.ip = "ipc", os.path.join(self._ipc_folder, "ipc")
            TrackedKernelManager.live.append(self)

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart and self._ipc_folder:
                shutil.rmtree(self._ipc_folder, ignore_errors=True)

    return TrackedKernelManager


def _execute(pm: Any, nb: Path, executed: Path, params: dict[str, Any], **kwargs: Any) -> None:
    """papermill in a worker thread. nbclient swallows SIGINT while a cell runs (its kernel lives
    in another session), so Ctrl-C lands here: stop the kernel, let papermill save, re-raise."""
    km_class = _kernel_manager_class()
    box: dict[str, BaseException] = {}

    def work() -> None:
        try:
            pm.execute_notebook(
                nb, executed, parameters=params, kernel_manager_class=km_class, **kwargs
            )
        except BaseException as err:  # handed to the main thread
            box["error"] = err

    worker = threading.Thread(target=work, name=f"papermill-{nb.stem}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        pids = [getattr(getattr(km, "provisioner", None), "pid", None) for km in km_class.live]
        _stop_processes([pid for pid in pids if pid])
        worker.join(30)  # papermill writes the notebook as far as it ran
        raise
    if "error" in box:
        raise box["error"]


def _stop_processes(pids: list[int], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what still runs after `grace_s` (a kernel busy in C code, or one
    that ignores SIGTERM, would otherwise outlive the run and hold its output pipes open)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _running(pid)]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (Linux /proc; elsewhere: it exists)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return not Path("/proc").is_dir()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _finish_notebook(executed: Path, trust: bool) -> None:
    """`finish_executed`, after every step that wrote a notebook (failed ones included)."""
    if not executed.exists():
        return
    try:
        finish_executed(executed, trust=trust)
    except Exception as err:  # a half-written notebook stays as papermill left it
        _say(f"warning: could not finish {executed.name}: {err}")


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "ok" | "failed" | "interrupted"
    failed_step: str | None = None


def execute_plan(
    pipe: Pipeline,
    plan: RunPlan,
    runs_dir: Path,
    env: dict[str, Any],
    *,
    sweep: dict[str, Any] | None = None,
    progress: bool = False,
    log_output: bool = False,
    trust: bool = True,
) -> RunResult:
    """Run one plan in a fresh run folder; a failing step stops the run and is recorded.
    `trust`: sign the executed notebooks (see `_finish_notebook`)."""
    import papermill as pm

    run_dir = create_run_dir(runs_dir, plan.name).resolve()  # notebooks run in their own cwd
    ctx = {"run_dir": str(run_dir), "runs_dir": str(runs_dir.resolve())}
    ctx.update({f"steps.{s}.output_dir": str(run_dir / s) for s, _, _ in plan.steps})
    steps = []
    for name, nb, params in plan.steps:
        resolved = {k: expand_templates(v, ctx) for k, v in params.items()}
        resolved["output_dir"] = str(run_dir / name)
        steps.append((name, nb, resolved))
    sources = {p["source"] for _, _, p in steps if isinstance(p.get("source"), str)}
    roots = source_roots(sources)
    started = utc_iso()
    write_json_atomic(
        run_dir / "params.json",
        {
            "pipeline": pipe.name,
            "pipeline_file": str(pipe.path),
            "run": run_dir.name,
            "sweep": sweep,
            "steps": [
                {"name": n, "notebook": nb.name, "notebook_path": str(nb), "parameters": p}
                for n, nb, p in steps
            ],
        },
    )
    if pipe.path is not None:
        shutil.copyfile(pipe.path, run_dir / "pipeline.yaml")
    fingerprints = source_fingerprints(roots)
    write_json_atomic(run_dir / "environment.json", {**env, "data": fingerprints})
    status: dict[str, Any] = {
        "status": "running",
        "run": run_dir.name,
        "pipeline": pipe.name,
        "started": started,
        "finished": None,
        "duration_s": None,
        "error": None,
        "steps": [{"name": n, "notebook": nb.name, "status": "pending"} for n, nb, _ in steps],
    }
    write_json_atomic(run_dir / "status.json", status)
    _say(f"flairlab run: {pipe.name} -> {run_dir}")
    t_run = time.perf_counter()
    result = RunResult(run_dir, "ok")
    for i, (name, nb, params) in enumerate(steps):
        rec = status["steps"][i]
        (run_dir / name).mkdir()
        executed = run_dir / f"{name}.ipynb"
        rec.update(
            status="running", started=utc_iso(), executed_notebook=executed.name, output_dir=name
        )
        write_json_atomic(run_dir / "status.json", status)
        _say(f"[{i + 1}/{len(steps)}] {name} ...")
        t0 = time.perf_counter()
        try:
            try:
                _execute(
                    pm,
                    nb,
                    executed,
                    params,
                    kernel_name="python3",
                    cwd=str(nb.parent),
                    progress_bar=progress,
                    log_output=log_output,
                    request_save_on_cell_execute=True,
                    execution_timeout=pipe.cell_timeout_s,
                )
            finally:  # failed and interrupted notebooks too, before their error is read
                _finish_notebook(executed, trust)
        except KeyboardInterrupt as err:
            rec.update(status="interrupted", duration_s=round(time.perf_counter() - t0, 2))
            status.update(status="interrupted", error=_error_record(err, name, nb, executed))
            for later in status["steps"][i + 1 :]:
                later["status"] = "skipped"
            _finish(run_dir, status, t_run)
            _say(f"interrupted: {run_dir} (status.json records where)")
            err.run_dir = run_dir  # for the sweep index
            raise
        except Exception as err:  # the notebook failed: record everything, stop this run
            rec.update(status="failed", duration_s=round(time.perf_counter() - t0, 2))
            status.update(status="failed", error=_error_record(err, name, nb, executed))
            result = RunResult(run_dir, "failed", name)
            _say(
                f"[{i + 1}/{len(steps)}] {name} FAILED: {status['error']['ename']}: "
                f"{status['error']['evalue']}\n  see {executed}"
            )
            break
        rec.update(status="ok", duration_s=round(time.perf_counter() - t0, 2), finished=utc_iso())
        rec["slowest_cells"] = slowest_cells(executed)
        write_json_atomic(run_dir / "status.json", status)
        _say(f"[{i + 1}/{len(steps)}] {name} ok ({rec['duration_s']:.1f} s)")
    for rec in status["steps"]:
        if rec["status"] == "pending":
            rec["status"] = "skipped"
    if result.status == "ok":
        status["status"] = "ok"
    if any(not fp.get("exists") for fp in fingerprints.values()):  # data made by the run itself
        write_json_atomic(run_dir / "environment.json", {**env, "data": source_fingerprints(roots)})
    _finish(run_dir, status, t_run)
    _say(f"run {status['status']} in {status['duration_s']:.1f} s: {run_dir}")
    return result


def _finish(run_dir: Path, status: dict[str, Any], t_run: float) -> None:
    status.update(finished=utc_iso(), duration_s=round(time.perf_counter() - t_run, 2))
    write_json_atomic(run_dir / "status.json", status)


def run_pipeline(
    pipeline: str | Path | Pipeline,
    sets: dict[str, str] | None = None,
    runs_dir: str | Path = "runs",
    *,
    progress: bool = False,
    log_output: bool = False,
    trust: bool = True,
) -> list[RunResult]:
    """Validate, then execute every run of a pipeline (one per sweep point); `trust=False` leaves
    the executed notebooks unsigned."""
    pipe = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    plans = plan_runs(pipe, sets)  # raises before anything is created or executed
    runs_dir = Path(runs_dir)
    project = pipe.path.parent if pipe.path else Path.cwd()
    env = environment_info(project)
    env["command"] = sys.argv
    sweep_dir = None
    index: dict[str, Any] = {}
    if pipe.sweep:
        sweep_dir = create_run_dir(runs_dir, f"{pipe.name}-sweep")
        index = {
            "pipeline": pipe.name,
            "grid": pipe.sweep,
            "started": utc_iso(),
            "points": [
                {"index": p.sweep_index, "point": p.sweep_point, "run": None, "status": "pending"}
                for p in plans
            ],
        }
        write_json_atomic(sweep_dir / "sweep.json", index)
        _say(f"sweep of {len(plans)} runs, index: {sweep_dir / 'sweep.json'}")
    results = []
    for plan in plans:
        sweep = None
        if sweep_dir is not None:
            sweep = {"id": sweep_dir.name, "index": plan.sweep_index, "point": plan.sweep_point}
        try:
            res = execute_plan(pipe, plan, runs_dir, env, sweep=sweep, progress=progress,
                               log_output=log_output, trust=trust)  # fmt: skip
        except KeyboardInterrupt as err:
            if sweep_dir is not None:
                run = getattr(err, "run_dir", None)
                point = index["points"][plan.sweep_index]
                point.update(run=run.name if run else None, status="interrupted")
                write_json_atomic(sweep_dir / "sweep.json", index)
            raise
        results.append(res)
        if sweep_dir is not None:
            index["points"][plan.sweep_index].update(run=res.run_dir.name, status=res.status)
            write_json_atomic(sweep_dir / "sweep.json", index)
    return results


def _main(args: argparse.Namespace) -> int:
    try:
        pipe = load_pipeline(args.pipeline)
        sets = parse_sets(args.set)
        if args.dry_run:
            for plan in plan_runs(pipe, sets):
                print(f"# run {plan.name} {plan.sweep_point or ''}")
                for name, nb, params in plan.steps:
                    print(f"{name} ({nb}): {dict(params, output_dir=f'<run>/{name}')}")
            return 0
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        results = run_pipeline(pipe, sets, args.runs_dir, progress=progress,
                               log_output=args.log_output, trust=args.trust)  # fmt: skip
    except DataError as err:
        _say(f"flairlab run: error: {err}")
        return 2
    except KeyboardInterrupt:
        _say("flairlab run: interrupted")
        return 130
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        _say(f"FAILED run {r.run_dir} at step {r.failed_step} (see status.json)")
    return 1 if failed else 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a notebook pipeline (papermill) into runs/<stamp>-<name>/",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", type=Path, help="pipeline YAML (e.g. pipelines/demo.yaml)")
    p.add_argument(
        "--set",
        action="append",
        metavar="[STEP.]KEY=VALUE",
        help="override a parameter (repeatable)",
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders go")
    p.add_argument("--dry-run", action="store_true", help="validate and print parameters only")
    p.add_argument("--log-output", action="store_true", help="stream notebook output to stderr")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-cell progress bar (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--trust",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sign the executed notebooks with your Jupyter notebook secret, so that JupyterLab "
        "shows their plots, widgets and maps without 'Trust Notebook' (default: yes)",
    )
    p.set_defaults(func=_main)


def main(argv: list[str] | None = None) -> int:
    """`python -m flairlab.runs.runner PIPELINE.yaml ...`: same as `flairlab run`, importing only
    the runner (the kernels import torch; the runner process itself stays ~150 MB)."""
    parser = argparse.ArgumentParser(prog="python -m flairlab.runs.runner")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["run", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


__all__ = [
    "Pipeline",
    "RunPlan",
    "RunResult",
    "execute_plan",
    "load_pipeline",
    "main",
    "parse_sets",
    "plan_runs",
    "run_pipeline",
]


if __name__ == "__main__":
    sys.exit(main())
