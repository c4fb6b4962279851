"""`flairlab run`: parameter checks, run folders, failure records, sweeps (real papermill runs)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import nbformat
import pytest

from flairlab.cli import main as cli_main
from flairlab.data.errors import DataError
from flairlab.runs.notebooks import notebook_parameters, parse_parameters
from flairlab.runs.provenance import create_run_dir, data_fingerprint, git_info
from flairlab.runs.runner import load_pipeline, parse_sets, plan_runs, run_pipeline

A_PARAMS = """\
n: int = 2  # how many
scale: float = 1.0  # multiplier
label: str | None = None  # optional tag
output_dir: str = "outputs/a"  # where results go
source: str = "sample"  # data source"""
B_PARAMS = """\
fail: bool = False  # raise in the middle
prev: str = ""  # output_dir of step a
output_dir: str = "outputs/b"  # where results go"""


def write_nb(path: Path, params: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_markdown_cell("# tiny test notebook"),
        nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
        *(nbformat.v4.new_code_cell(c) for c in cells),
    ]
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two chained notebooks + a pipeline; the `sample` source points at a 2-file tree."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha")
    (data / "sub" / "b.bin").write_bytes(b"\0" * 64)
    monkeypatch.setenv("FLAIRLAB_SAMPLE_ROOT", str(data))
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    save = "from flairlab.data.results import save_results, save_figure\n"
    write_nb(
        nbs / "a.ipynb",
        A_PARAMS,
        save + "save_results(output_dir, {'total': n * scale, 'label': label})",
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\nax.plot([0, n])\nsave_figure(fig, output_dir, 'line')",
    )
    write_nb(
        nbs / "b.ipynb",
        B_PARAMS,
        "import json, pathlib\nx = json.loads(pathlib.Path(prev, 'results.json').read_text())",
        "if fail:\n    raise RuntimeError('boom in b')",
        save + "save_results(output_dir, {'twice': 2 * x['total']})",
    )
    write_nb(nbs / "c.ipynb", 'output_dir: str = "outputs/c"  # out', "print('c ran')")
    (tmp_path / "pipe.yaml").write_text(
        "name: tiny\nnotebooks_dir: nbs\nparameters: {n: 3}\nsteps:\n"
        "  - notebook: a.ipynb\n"
        "  - notebook: b.ipynb\n    parameters: {prev: '${steps.a.output_dir}'}\n"
        "  - notebook: c.ipynb\n"
    )
    return tmp_path


# -- parameters cell ------------------------------------------------------------------------------
def test_parse_parameters_types_defaults_and_help() -> None:
    p = parse_parameters(A_PARAMS)
    assert list(p) == ["n", "scale", "label", "output_dir", "source"]
    assert (p["n"].type_name, p["n"].default, p["n"].help) == ("int", 2, "how many")
    assert p["label"].optional and p["label"].check(None, where="x") is None
    assert p["scale"].check(3, where="x") == 3.0 and isinstance(
        p["scale"].check(3, where="x"), float
    )
    assert p["n"].check("7", where="x", from_string=True) == 7
    with pytest.raises(DataError, match=r"nb\.ipynb: parameter 'n': expected int, found bool True"):
        p["n"].check(True, where="nb.ipynb")
    with pytest.raises(DataError, match="expected float, found str"):
        p["scale"].check("1e-3", where="x")  # YAML strings are not silently parsed


@pytest.mark.parametrize(
    ("src", "msg"),
    [
        ("n = 3  # untyped", "name: int"),
        ("xs: list = [1]  # list", "annotation: expected int, float, str or bool"),
        ("n: int = 1.5  # wrong default", "parameter 'n': expected int, found float"),
        ("n: int = len('ab')  # call", "default: expected a scalar literal"),
        ("import os", "parameters cell line 1"),
    ],
)
def test_parse_parameters_rejects_non_flat_cells(src: str, msg: str) -> None:
    with pytest.raises(DataError, match=msg):
        parse_parameters(src, where="nb.ipynb")


def test_notebook_needs_exactly_one_parameters_cell(tmp_path: Path) -> None:
    path = write_nb(tmp_path / "two.ipynb", "a: int = 1  # a", "b: int = 2")
    nb = nbformat.read(path, 4)
    nb.cells[2].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    with pytest.raises(DataError, match=r"two\.ipynb: code cells tagged 'parameters': expected 1"):
        notebook_parameters(path)


# -- validation before anything runs -------------------------------------------------------------
@pytest.mark.parametrize(
    ("sets", "msg"),
    [
        (["typo=1"], r"--set typo: unknown parameter 'typo': no step declares it"),
        (["a.fail=true"], r"a\.ipynb: --set a\.fail: unknown parameter 'fail'"),
        (["n=three"], r"a\.ipynb: parameter 'n': expected int, found str 'three'"),
        (["b.fail=maybe"], r"b\.ipynb: parameter 'fail': expected bool"),
        (["zz.n=1"], r"unknown step 'zz'"),
        (["output_dir=/tmp/x"], r"'output_dir' is set by the runner"),
        (["b.prev=${steps.nope.output_dir}"], r"unknown template \$\{steps\.nope\.output_dir\}"),
    ],
)
def test_bad_overrides_fail_before_running(project: Path, sets: list[str], msg: str) -> None:
    runs = project / "runs"
    with pytest.raises(DataError, match=msg):
        run_pipeline(project / "pipe.yaml", parse_sets(sets), runs)
    assert not runs.exists()  # nothing was created, nothing ran


def test_wrong_type_in_yaml_and_in_a_late_sweep_point(project: Path) -> None:
    pipe = project / "pipe.yaml"
    pipe.write_text(pipe.read_text().replace("{n: 3}", "{n: 3.5}"))
    with pytest.raises(DataError, match=r"a\.ipynb: parameter 'n': expected int, found float 3\.5"):
        run_pipeline(pipe, None, project / "runs")
    pipe.write_text(pipe.read_text().replace("{n: 3.5}", "{n: 3}") + "sweep: {n: [1, 2, 'x']}\n")
    with pytest.raises(DataError, match=r"found str 'x' \(from sweep\.n='x'"):
        run_pipeline(pipe, None, project / "runs")
    assert not (project / "runs").exists()


def test_pipeline_file_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nsteps: [{notebook: a.ipynb, params: {}}]\n")
    with pytest.raises(DataError, match=r"p\.yaml: invalid pipeline\n  steps\.0\.params"):
        load_pipeline(bad)
    with pytest.raises(DataError, match="pipeline file not found"):
        load_pipeline(tmp_path / "missing.yaml")
    with pytest.raises(DataError, match="KEY=VALUE"):
        parse_sets(["novalue"])


def test_notebook_without_output_dir_is_rejected(project: Path) -> None:
    write_nb(project / "nbs" / "c.ipynb", "k: int = 1  # k", "pass")
    with pytest.raises(
        DataError, match=r"c\.ipynb: parameters cell must declare `output_dir: str`"
    ):
        plan_runs(load_pipeline(project / "pipe.yaml"))


def test_sweep_expansion_is_a_grid_with_step_scoped_keys(project: Path) -> None:
    pipe = load_pipeline(project / "pipe.yaml")
    pipe.sweep = {"n": [1, 2, 3], "a.scale": [0.5, 2]}
    plans = plan_runs(pipe, {"b.fail": "false"})
    assert [p.name for p in plans] == [f"tiny-{i:03d}" for i in range(6)]
    got = [(p.steps[0][2]["n"], p.steps[0][2]["scale"]) for p in plans]
    assert got == [(1, 0.5), (1, 2.0), (2, 0.5), (2, 2.0), (3, 0.5), (3, 2.0)]
    assert all(p.steps[1][2]["fail"] is False for p in plans)
    assert plans[3].sweep_index == 3 and plans[3].sweep_point == {"n": 2, "a.scale": 2}
    with pytest.raises(DataError, match="also swept"):
        plan_runs(pipe, {"a.n": "4"})


# -- real runs ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_folder_layout_and_no_overwrite(project: Path) -> None:
    runs = project / "runs"
    (res,) = run_pipeline(project / "pipe.yaml", {"a.label": "hello"}, runs)
    run = res.run_dir
    assert res.status == "ok" and run.parent == runs.resolve()
    assert run.name.endswith("-tiny") and len(run.name.split("-")[0]) == len("20260101T120000Z")
    files = "params.json environment.json status.json pipeline.yaml a.ipynb b.ipynb c.ipynb"
    for rel in [*files.split(), "a/results.json", "a/figures/line.png", "b/results.json"]:
        assert (run / rel).is_file(), rel
    assert json.loads((run / "a/results.json").read_text()) == {"total": 3.0, "label": "hello"}
    assert json.loads((run / "b/results.json").read_text()) == {"twice": 6.0}
    params = json.loads((run / "params.json").read_text())
    a = params["steps"][0]["parameters"]
    assert a == {
        "n": 3,
        "scale": 1.0,
        "label": "hello",
        "output_dir": str(run / "a"),
        "source": "sample",
    }
    assert params["steps"][1]["parameters"]["prev"] == str(run / "a")
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "ok" and [s["status"] for s in status["steps"]] == ["ok"] * 3
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["papermill"] and env["python"].count(".") == 2
    fp = env["data"]["sample"]
    assert fp["exists"] and fp["n_files"] == 2 and fp["total_bytes"] == 5 + 64
    executed = nbformat.read(run / "a.ipynb", 4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "n = 3" in injected[0].source
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    one_step = project / "one.yaml"  # same pipeline name, step a only (keeps the test fast)
    one_step.write_text((project / "pipe.yaml").read_text().split("  - notebook: b.ipynb")[0])
    (res2,) = run_pipeline(one_step, {"n": "4"}, runs)
    assert res2.run_dir != run and res2.status == "ok"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert json.loads((res2.run_dir / "a/results.json").read_text())["total"] == 4.0


def test_run_dirs_never_collide(tmp_path: Path) -> None:
    made: list[Path] = []
    threads = [
        threading.Thread(target=lambda: made.append(create_run_dir(tmp_path, "x", stamp="S")))
        for _ in range(12)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 12 and {p.name for p in made} == {"S-x"} | {
        f"S-x-{i}" for i in range(2, 13)
    }
    with pytest.raises(ValueError, match="run name"):
        create_run_dir(tmp_path, "../escape")


@pytest.mark.slow
def test_failing_step_leaves_a_complete_record(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = project / "runs"
    rc = cli_main(["run", str(project / "pipe.yaml"), "--runs-dir", str(runs), "--set", "fail=yes"])
    assert rc == 1
    (run,) = runs.iterdir()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed"
    assert [s["status"] for s in status["steps"]] == ["ok", "failed", "skipped"]
    err = status["error"]
    assert (err["step"], err["ename"], err["evalue"]) == ("b", "RuntimeError", "boom in b")
    assert "raise RuntimeError" in err["cell_source"] and "boom in b" in err["traceback"][-1]
    executed = nbformat.read(run / "b.ipynb", 4)
    cell = executed.cells[err["cell_index"]]
    assert cell.source == err["cell_source"]
    assert [o.output_type for o in cell.outputs] == ["error"]
    assert not (run / "c.ipynb").exists() and not (run / "b" / "results.json").exists()
    assert (run / "a" / "results.json").exists()
    assert "b FAILED: RuntimeError: boom in b" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_runs_one_folder_per_point_with_index(project: Path) -> None:
    pipe = project / "pipe.yaml"
    text = pipe.read_text().split("  - notebook: b.ipynb")[0]  # step a only
    pipe.write_text(text + "sweep: {a.scale: [0.5, 2.0]}\n")
    runs = project / "runs"
    results = run_pipeline(pipe, None, runs)
    assert [r.status for r in results] == ["ok", "ok"]
    (sweep_dir,) = runs.glob("*-tiny-sweep")
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert index["grid"] == {"a.scale": [0.5, 2.0]}
    assert [(p["index"], p["point"], p["status"]) for p in index["points"]] == [
        (0, {"a.scale": 0.5}, "ok"),
        (1, {"a.scale": 2.0}, "ok"),
    ]
    for point, res in zip(index["points"], results, strict=True):
        assert point["run"] == res.run_dir.name
        params = json.loads((res.run_dir / "params.json").read_text())
        assert params["sweep"] == {
            "id": sweep_dir.name,
            "index": point["index"],
            "point": point["point"],
        }
        total = json.loads((res.run_dir / "a" / "results.json").read_text())["total"]
        assert total == 3 * point["point"]["a.scale"]


# -- provenance -----------------------------------------------------------------------------------
def test_data_fingerprint_tracks_content_not_location(tmp_path: Path, monkeypatch) -> None:
    for root in (tmp_path / "x", tmp_path / "y"):
        (root / "d").mkdir(parents=True)
        (root / "d" / "f.tif").write_bytes(b"abc")
        (root / ".hidden").write_text("ignored")
    fx, fy = data_fingerprint(tmp_path / "x"), data_fingerprint(tmp_path / "y")
    assert fx["sha256"] == fy["sha256"] and fx["n_files"] == 1
    (tmp_path / "y" / "d" / "f.tif").write_bytes(b"abd")  # same size, different bytes
    assert data_fingerprint(tmp_path / "y")["sha256"] != fx["sha256"]
    # large-file mode: size + mtime
    monkeypatch.setattr("flairlab.runs.provenance.SMALL_FILE_BYTES", 0)
    h1 = data_fingerprint(tmp_path / "x")["sha256"]
    os.utime(tmp_path / "x" / "d" / "f.tif", ns=(1, 1))
    assert data_fingerprint(tmp_path / "x")["sha256"] != h1
    assert data_fingerprint(tmp_path / "missing") == {
        "root": str(tmp_path / "missing"),
        "exists": False,
    }


def test_git_info_commit_and_dirty_flag(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    assert git_info(tmp_path) is None
    git("init", "-q")
    (tmp_path / "f.txt").write_text("1")
    git("add", "f.txt")
    git("commit", "-q", "-m", "init")
    info = git_info(tmp_path)
    assert info is not None and len(info["commit"]) == 40 and info["dirty"] is False
    (tmp_path / "f.txt").write_text("2")
    assert git_info(tmp_path)["dirty"] is True


@pytest.mark.slow
def test_dead_kernel_is_recorded_with_its_cell(tmp_path: Path) -> None:
    write_nb(
        tmp_path / "d.ipynb", 'output_dir: str = "o"  # out', "x = 1", "import os\nos._exit(3)"
    )
    (tmp_path / "p.yaml").write_text("name: dead\nsteps:\n  - notebook: d.ipynb\n")
    (res,) = run_pipeline(tmp_path / "p.yaml", None, tmp_path / "runs")
    err = json.loads((res.run_dir / "status.json").read_text())["error"]
    assert res.status == "failed" and err["ename"] == "DeadKernelError"
    assert err["cell_source"] == "import os\nos._exit(3)" and (res.run_dir / "d.ipynb").exists()


def _sleep_cell_started(executed: Path) -> bool:
    """True once papermill has saved the sleeping cell as started (the race the test waits out)."""
    try:
        nb = json.loads(executed.read_text())
    except (OSError, ValueError):  # being written
        return False
    return any(
        "time.sleep(60)" in "".join(c.get("source", ""))
        and c.get("metadata", {}).get("papermill", {}).get("start_time")
        for c in nb.get("cells", [])
    )


@pytest.mark.slow
def test_ctrl_c_stops_the_kernel_and_leaves_a_record(tmp_path: Path) -> None:
    import signal
    import sys
    import time

    write_nb(tmp_path / "s.ipynb", 'output_dir: str = "o"  # out', "import time\ntime.sleep(60)")
    (tmp_path / "p.yaml").write_text(
        "name: slow\nsteps:\n  - notebook: s.ipynb\n  - notebook: s.ipynb\n    name: again\n"
    )
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "flairlab.runs.runner",
        str(tmp_path / "p.yaml"),
        "--runs-dir",
        str(runs),
    ]
    # SIGINT back to its default: a test run started in the background (`make test &`) inherits
    # an ignored SIGINT, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the sleeping cell runs
        executed = list(runs.glob("*-slow/s.ipynb"))
        if executed and _sleep_cell_started(executed[0]):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired as timeout:
        proc.kill()
        pytest.fail(f"the runner did not stop within 60 s of Ctrl-C; stderr:\n{timeout.stderr}")
    assert proc.returncode == 130, err[-2000:]
    (run,) = runs.glob("*-slow")
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["duration_s"] < 40
    assert [s["status"] for s in status["steps"]] == ["interrupted", "skipped"]
    assert status["error"]["cell_source"] == "import time\ntime.sleep(60)"


def test_json_outputs_get_the_usual_permissions(tmp_path):
    import stat

    from flairlab.data.results import write_json_atomic

    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- executed notebooks: readable as opened -------------------------------------------------------
def _trusted(path: Path) -> bool:
    from nbformat.sign import NotebookNotary

    with NotebookNotary() as notary:  # the secret of $JUPYTER_DATA_DIR (tests/conftest.py)
        return notary.check_signature(nbformat.read(path, 4))


@pytest.mark.slow
def test_executed_notebooks_are_finished_and_signed(tmp_path: Path) -> None:
    """Runner output opens trusted (this user's secret), unpaired from jupytext, progress bars at
    their end, BokehJS-like scripts stored once; `trust=False` leaves them unsigned."""
    nb_path = write_nb(
        tmp_path / "n.ipynb",
        'output_dir: str = "outputs/n"  # out',
        "from tqdm.auto import tqdm\ntotal = sum(tqdm(range(7), desc='counting'))",
        "from IPython.display import publish_display_data\n"
        "publish_display_data({'application/javascript': 'var loaded = 1;',\n"
        "                      'application/vnd.holoviews_load.v0+json': 'var loaded = 1;'})",
    )
    nb = nbformat.read(nb_path, 4)
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    nbformat.write(nb, nb_path)
    (tmp_path / "p.yaml").write_text("name: t\nnotebooks_dir: .\nsteps:\n  - notebook: n.ipynb\n")
    (res,) = run_pipeline(tmp_path / "p.yaml", None, tmp_path / "runs")
    executed = res.run_dir / "n.ipynb"
    assert res.status == "ok" and _trusted(executed)
    out = nbformat.read(executed, 4)
    assert "formats" not in out.metadata.get("jupytext", {})
    datas = [o.get("data", {}) for c in out.cells if c.cell_type == "code" for o in c.outputs]
    assert not [d for d in datas if "application/vnd.jupyter.widget-view+json" in d]
    texts = [d["text/plain"] for d in datas if "counting" in d.get("text/plain", "")]
    assert len(texts) == 1 and texts[0].startswith("counting: 100%|██████████| 7/7"), texts
    scripts = [o["data"] for c in out.cells if c.cell_type == "code" for o in c.outputs
               if "application/javascript" in o.get("data", {})]  # fmt: skip
    assert scripts == [{"application/javascript": "var loaded = 1;"}]
    assert _trusted(executed)  # still trusted after everything above was read
    (res2,) = run_pipeline(tmp_path / "p.yaml", None, tmp_path / "runs", trust=False)
    assert res2.status == "ok" and not _trusted(res2.run_dir / "n.ipynb")


def test_progress_text_reads_the_saved_widget_state() -> None:
    from flairlab.runs.notebooks import progress_text

    def model(name: str, **state) -> dict:
        return {"model_name": name, "state": state}

    states = {
        "box": model("HBoxModel", children=["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]),
        "l": model("HTMLModel", value="band\u2007statistics:\u2007\u200750%"),
        "p": model("FloatProgressModel", value=20.0, max=40.0, bar_style="danger"),
        "r": model("HTMLModel", value="\u200720/40\u2007[00:02&lt;00:02,\u20079.9patch/s]"),
        "other": model("VBoxModel", children=["IPY_MODEL_l"]),
    }
    assert progress_text(states, "box") == (
        "band statistics:  50%|█████     | 20/40 [00:02<00:02, 9.9patch/s]"
    )
    assert progress_text(states, "other") is None and progress_text(states, "missing") is None


def test_a_kernel_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    import sys

    from flairlab.runs.runner import _running, _stop_processes

    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "1"  # the handler is installed
    _stop_processes([proc.pid], grace_s=0.5)
    assert proc.wait(timeout=10) == -9  # SIGKILL: SIGTERM was ignored
    assert not _running(proc.pid)


@pytest.mark.skipif(os.name != "posix", reason="Unix-socket kernels on POSIX only")
def test_kernels_talk_over_private_unix_sockets(tmp_path: Path) -> None:
    """No open TCP ports (and no "running over TCP without encryption" warning on every step);
    the socket folder is removed with the kernel."""
    import sys
    import tempfile

    write_nb(tmp_path / "s.ipynb", 'output_dir: str = "o"  # out', "print(6 * 7)")
    (tmp_path / "p.yaml").write_text("name: ipc\nsteps:\n  - notebook: s.ipynb\n")
    before = set(Path(tempfile.gettempdir()).glob("flairlab-kernel-*"))
    cmd = [sys.executable, "-m", "flairlab.runs.runner", str(tmp_path / "p.yaml"),
           "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "over TCP" not in done.stderr, done.stderr
    assert set(Path(tempfile.gettempdir()).glob("flairlab-kernel-*")) == before
