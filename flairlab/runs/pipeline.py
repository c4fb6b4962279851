"""Pipeline files and run planning: every parameter is checked before anything runs.

A pipeline YAML lists notebook steps; `plan_runs` expands the sweep grid and checks every value
against the notebooks' `parameters` cells (`flairlab.runs.notebooks`). See `flairlab.runs.runner`
for the file format and for execution.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from flairlab.data.errors import DataError
from flairlab.runs.notebooks import Param, notebook_parameters

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr | None

_STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TEMPLATE = re.compile(r"\$\{([^}]*)\}")
RUNNER_OWNED = ("output_dir",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(_Strict):
    notebook: str
    name: str | None = None  # defaults to the notebook's stem
    parameters: dict[str, Scalar] = {}


class Pipeline(_Strict):
    name: str
    description: str = ""
    notebooks_dir: str = "."
    parameters: dict[str, Scalar] = {}
    steps: list[Step]
    sweep: dict[str, list[Scalar]] = {}
    cell_timeout_s: int | None = None  # per-cell execution limit (None: no limit)
    path: Path | None = None

    def step_name(self, i: int) -> str:
        s = self.steps[i]
        return s.name or Path(s.notebook).stem

    def notebook_path(self, i: int) -> Path:
        base = (self.path.parent if self.path else Path.cwd()) / self.notebooks_dir
        return (base / self.steps[i].notebook).resolve()


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline YAML; DataError names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError("pipeline file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DataError(f"not valid YAML: {err}", path=path) from None
    if not isinstance(data, dict):
        raise DataError("pipeline", path=path, expected="a mapping", found=type(data).__name__)
    try:
        pipe = Pipeline(**data, path=path.resolve())
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise DataError("invalid pipeline\n" + "\n".join(lines), path=path) from None
    names = [pipe.step_name(i) for i in range(len(pipe.steps))]
    for n in names:
        if not _STEP_NAME.match(n):
            raise DataError(f"step name {n!r}", path=path, expected=_STEP_NAME.pattern, found=n)
    if len(set(names)) != len(names):
        raise DataError("step names must be unique (set `name:`)", path=path, found=names)
    if not names:
        raise DataError("steps", path=path, expected="at least one step", found=0)
    if not _STEP_NAME.match(pipe.name):
        raise DataError("name", path=path, expected=_STEP_NAME.pattern, found=pipe.name)
    return pipe


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """`["a=1", "step.b=x"]` -> `{"a": "1", "step.b": "x"}` (values stay strings until checked)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DataError("--set", expected="KEY=VALUE or STEP.KEY=VALUE", found=item)
        out[key.strip()] = value
    return out


@dataclass
class RunPlan:
    """One run to execute: fully validated parameters per step (templates not yet expanded)."""

    name: str
    steps: list[tuple[str, Path, dict[str, Any]]]  # (step name, notebook, parameters)
    sweep_index: int | None = None
    sweep_point: dict[str, Any] = field(default_factory=dict)


class _Planner:
    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.names = [pipe.step_name(i) for i in range(len(pipe.steps))]
        self.declared: dict[str, dict[str, Param]] = {}
        self.paths: dict[str, Path] = {}
        for i, name in enumerate(self.names):
            nb = pipe.notebook_path(i)
            self.paths[name] = nb
            self.declared[name] = notebook_parameters(nb)
            if "output_dir" not in self.declared[name]:
                raise DataError("parameters cell must declare `output_dir: str`", path=nb)

    def targets(self, key: str, origin: str) -> list[tuple[str, str]]:
        """Steps a key applies to: `param` -> every step declaring it, `step.param` -> that step."""
        step, _, param = key.rpartition(".")
        if param in RUNNER_OWNED:
            raise DataError(f"{origin}: {param!r} is set by the runner (one folder per step)")
        if step:
            if step not in self.declared:
                raise DataError(f"{origin}: unknown step {step!r}", expected=self.names, found=step)
            if param not in self.declared[step]:
                known = sorted(self.declared[step])
                raise DataError(
                    f"{origin}: unknown parameter {param!r} (declared: {known})",
                    path=self.paths[step],
                )
            return [(step, param)]
        hits = [(s, param) for s in self.names if param in self.declared[s]]
        if not hits:
            raise DataError(
                f"{origin}: unknown parameter {param!r}: no step declares it", path=self.pipe.path
            )
        return hits

    def check(self, step: str, param: str, value: Any, origin: str, from_string: bool) -> Any:
        where = self.paths[step]
        try:
            value = self.declared[step][param].check(value, where=where, from_string=from_string)
        except DataError as err:
            raise DataError(f"{err} (from {origin}, step {step!r})") from None
        if isinstance(value, str):
            for ref in _TEMPLATE.findall(value):
                if ref not in ("run_dir", "runs_dir") and not (
                    ref.startswith("steps.")
                    and ref.endswith(".output_dir")
                    and ref[6:-11] in self.declared
                ):
                    raise DataError(
                        f"parameter {param!r}: unknown template ${{{ref}}} (from {origin})",
                        path=where,
                        expected="${run_dir}, ${runs_dir} or ${steps.NAME.output_dir}",
                    )
        return value

    def plan(self, sets: dict[str, str]) -> list[RunPlan]:
        pipe = self.pipe
        # start from the notebooks' own defaults so params.json records every effective value
        base = {s: {k: p.default for k, p in self.declared[s].items()} for s in self.names}

        def apply(key: str, value: Any, origin: str, from_string: bool, into: dict) -> None:
            for step, param in self.targets(key, origin):
                into[step][param] = self.check(step, param, value, origin, from_string)

        for key, value in pipe.parameters.items():
            apply(key, value, f"parameters.{key}", False, base)
        for i, step in enumerate(pipe.steps):
            name = self.names[i]
            for key, value in step.parameters.items():
                apply(f"{name}.{key}", value, f"steps[{i}].parameters.{key}", False, base)
        swept = {t for key in pipe.sweep for t in self.targets(key, f"sweep.{key}")}
        for key, value in sets.items():
            clash = swept & set(self.targets(key, f"--set {key}"))
            if clash:
                raise DataError(f"--set {key}: that parameter is also swept ({sorted(clash)})")
            apply(key, value, f"--set {key}", True, base)
        keys = list(pipe.sweep)
        grid = list(itertools.product(*(pipe.sweep[k] for k in keys))) if keys else [()]
        plans = []
        for index, values in enumerate(grid):
            params = {s: dict(p) for s, p in base.items()}
            point = dict(zip(keys, values, strict=True))
            for key, value in point.items():
                apply(key, value, f"sweep.{key}={value!r}", False, params)
            steps = [(s, self.paths[s], params[s]) for s in self.names]
            if keys:
                plans.append(RunPlan(f"{pipe.name}-{index:03d}", steps, index, point))
            else:
                plans.append(RunPlan(pipe.name, steps))
        return plans


def plan_runs(pipe: Pipeline, sets: dict[str, str] | None = None) -> list[RunPlan]:
    """Validate every parameter of every run (sweep points included) without running anything."""
    return _Planner(pipe).plan(sets or {})


def expand_templates(value: Any, ctx: dict[str, str]) -> Any:
    """Replace `${key}` in a string parameter with `ctx[key]` (keys checked at planning time)."""
    if not isinstance(value, str):
        return value
    return _TEMPLATE.sub(lambda m: ctx[m.group(1)], value)
