"""Compare runs: load `runs/*/{params,status}.json` and each step's `results.json` into tables.

`load_runs(runs_dir)` gives one row per (run, step) with columns

    run, pipeline, run_status, started, sweep, sweep_index, step, notebook, step_status,
    param.<name>     the step's parameters (every effective value, defaults included)
    result.<key>     the step's results.json, nested keys joined with "." (scalars only)
    <step>.<name>    the parameters of the *other* steps of the same run (e.g. the pre-training
                     settings next to a fine-tuning result)

`step_table` keeps the rows of one notebook, `column` finds a column by its short name,
`summarize` / `label_efficiency` aggregate a metric, and the `plot_*` functions draw them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flairlab.data.errors import DataError

BASE_COLUMNS = [
    "run",
    "pipeline",
    "run_status",
    "started",
    "sweep",
    "sweep_index",
    "step",
    "notebook",
    "step_status",
]


def _flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_run(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of one run folder (one per step). DataError if params.json is missing or unreadable."""
    run_dir = Path(run_dir)
    try:
        params = _read_json(run_dir / "params.json")
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"unreadable run record ({err})", path=run_dir / "params.json") from None
    try:
        status = _read_json(run_dir / "status.json")
    except (OSError, json.JSONDecodeError):
        status = {"status": "unknown", "steps": []}
    step_status = {s.get("name"): s.get("status") for s in status.get("steps", [])}
    steps = params.get("steps", [])
    sweep = params.get("sweep") or {}
    rows = []
    for step in steps:
        name = step["name"]
        row: dict[str, Any] = {
            "run": run_dir.name,
            "pipeline": params.get("pipeline"),
            "run_status": status.get("status"),
            "started": status.get("started"),
            "sweep": sweep.get("id"),
            "sweep_index": sweep.get("index"),
            "step": name,
            "notebook": Path(step.get("notebook", name)).stem,
            "step_status": step_status.get(name, "unknown"),
        }
        row.update(_flatten(step.get("parameters", {}), "param."))
        for other in steps:
            if other["name"] != name:
                row.update(_flatten(other.get("parameters", {}), f"{other['name']}."))
        res = run_dir / name / "results.json"
        if res.is_file():
            try:
                row.update(_flatten(_read_json(res), "result."))
            except json.JSONDecodeError as err:
                raise DataError(f"invalid JSON ({err})", path=res) from None
        rows.append(row)
    return rows


def load_runs(runs_dir: str | Path) -> pd.DataFrame:
    """All run folders under `runs_dir` as one table; folders that are not runs are skipped.

    Sweep folders (`sweep.json`) are index files, not runs. Unreadable runs are listed with the
    reason in `df.attrs["skipped"]` rather than silently dropped.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise DataError("runs folder not found", path=runs_dir)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if (d / "sweep.json").is_file() and not (d / "params.json").exists():
            continue
        try:
            rows.extend(read_run(d))
        except DataError as err:
            skipped.append(str(err))
    df = pd.DataFrame(rows, columns=None if rows else BASE_COLUMNS)
    df.attrs["skipped"] = skipped
    return df


def step_table(runs: pd.DataFrame, notebook: str, *, only_ok: bool = True) -> pd.DataFrame:
    """Rows of one notebook (e.g. `04_finetune`), finished steps only unless `only_ok=False`."""
    rows = runs[runs["notebook"] == notebook]
    if only_ok:
        rows = rows[rows["step_status"] == "ok"]
    return rows.dropna(axis=1, how="all").reset_index(drop=True)


def column(table: pd.DataFrame, name: str) -> str:
    """Column for a short name: exact, else `result.<name>`, `param.<name>`, `<step>.<name>`."""
    for cand in (name, f"result.{name}", f"param.{name}"):
        if cand in table.columns:
            return cand
    hits = [c for c in table.columns if c.endswith(f".{name}") and c.count(".") == 1]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise DataError(f"column {name!r} is ambiguous", expected="one of", found=hits)
    raise DataError(f"column {name!r} not found", found=sorted(table.columns)[:40])


def varies(table: pd.DataFrame, name: str) -> bool:
    """True when `name` resolves to a column taking at least two distinct values."""
    try:
        col = column(table, name)
    except DataError:
        return False
    return table[col].dropna().astype(str).nunique() >= 2


def summarize(table: pd.DataFrame, by: str | list[str], metric: str) -> pd.DataFrame:
    """Mean, std, min, max and count of `metric` per value(s) of `by` (short names allowed)."""
    keys = [by] if isinstance(by, str) else list(by)
    cols = [column(table, k) for k in keys]
    m = column(table, metric)
    data = table[[*cols, m]].copy()
    data[m] = pd.to_numeric(data[m], errors="coerce")
    data = data.dropna(subset=[m]).rename(columns=dict(zip(cols, keys, strict=True)))
    out = data.groupby(keys, dropna=False)[m].agg(["mean", "std", "min", "max", "count"])
    return out.rename(columns={"count": "runs"})


def label_efficiency(
    table: pd.DataFrame, metric: str, fraction: str = "label_fraction", by: str | None = None
) -> pd.DataFrame:
    """Mean `metric` per label fraction (rows) and per value of `by` (columns)."""
    summary = summarize(table, [fraction] if by is None else [fraction, by], metric)["mean"]
    return summary.to_frame(metric) if by is None else summary.unstack(by)


def pretrain_method(weight: Any, objective: Any = None) -> str:
    """Label of a pre-training run: its objective (mae | contrastive | both) when recorded,
    else its contrastive weight (0 -> plain MAE)."""
    obj = str(objective).strip().lower() if objective is not None else ""
    if obj == "contrastive":
        return "contrastive"
    try:
        w = float(weight)
    except (TypeError, ValueError):
        return "MAE" if obj == "mae" else "unknown"
    return "MAE" if obj == "mae" or w == 0 else f"MAE + contrastive (w={w:g})"


def plot_summary(summary: pd.DataFrame, metric: str, title: str = "", ax: Any = None) -> Any:
    """Bars of the mean with std error bars and the run count on each bar; returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(summary) + 1.5), 3.2))
    labels = [" · ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in summary.index]
    x = np.arange(len(summary))
    std = summary["std"].fillna(0).to_numpy()
    bars = ax.bar(x, summary["mean"], yerr=std, capsize=4, color="#4c72b0")
    for bar, n in zip(bars, summary["runs"], strict=True):
        ax.annotate(
            f"n={n}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.set_xticks(x, labels, rotation=20 if max(map(len, labels), default=0) > 8 else 0)
    ax.set_xlabel(" · ".join(map(str, summary.index.names)))
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.figure.tight_layout()
    return ax.figure


def plot_label_efficiency(curves: pd.DataFrame, metric: str, title: str = "") -> Any:
    """One line per column of `label_efficiency(...)` (x: label fraction, log scale)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for col in curves.columns:
        s = curves[col].dropna()
        ax.plot(s.index.astype(float), s.to_numpy(), marker="o", label=str(col))
    ax.set_xscale("log")
    ax.set_xlabel(curves.index.name or "label fraction")
    ax.set_ylabel(metric)
    ax.set_title(title)
    if len(curves.columns) > 1 or curves.columns.name:
        ax.legend(title=curves.columns.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def compare_factor(
    table: pd.DataFrame,
    by: str,
    metric: str,
    *,
    title: str,
    output_dir: str | Path | None = None,
    name: str | None = None,
) -> pd.DataFrame | None:
    """Summary + bar plot of `metric` per value of `by`; None (and a note) when `by` never varies.

    The figure is saved as `<output_dir>/figures/<name>.png` when both are given and shown inline.
    """
    import matplotlib.pyplot as plt

    from flairlab.data.results import save_figure

    if table.empty or not varies(table, by):
        print(f"{title}: no runs differ in {by!r} yet (run a sweep over it, then re-run this).")
        return None
    summary = summarize(table, by, metric)
    fig = plot_summary(summary, metric, title)
    if output_dir is not None and name:
        save_figure(fig, output_dir, name)
    plt.show()
    return summary


def plot_runs(table: pd.DataFrame, metric: str, label: str | None = None) -> Any:
    """Horizontal bars: `metric` of every row (run · step), newest at the top."""
    import matplotlib.pyplot as plt

    m = column(table, metric)
    rows = table.dropna(subset=[m]).sort_values("started")
    names = rows["run"] + " · " + rows["step"]
    if label is not None and varies(rows, label):
        names = names + " (" + rows[column(rows, label)].astype(str) + ")"
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(rows) + 1.2))
    ax.barh(np.arange(len(rows)), pd.to_numeric(rows[m]), color="#55a868")
    ax.set_yticks(np.arange(len(rows)), names, fontsize=8)
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} of every run")
    fig.tight_layout()
    return fig


def run_overview(runs: pd.DataFrame, current: str | Path | None = None) -> pd.DataFrame:
    """One row per run: pipeline, status, start time, steps and finished steps. `current`: the
    folder of a step of the run this is computed in (e.g. the notebook's `output_dir`); that run
    still reads "running", so its status says so: "this run (in progress)"."""
    if runs.empty:
        return pd.DataFrame(columns=["run", "pipeline", "run_status", "started", "steps", "ok"])
    g = runs.groupby(["run", "pipeline", "run_status", "started"], dropna=False)["step_status"]
    out = g.agg(steps="size", ok=lambda s: int((s == "ok").sum())).reset_index()
    if current is not None:
        this_run = out["run"] == Path(current).resolve().parent.name
        this = this_run & (out["run_status"] == "running")
        out.loc[this, "run_status"] = "this run (in progress)"
    return out


def _truthy(values: pd.Series) -> pd.Series:
    return values.map(lambda v: str(v).strip().lower() not in ("", "false", "0", "none", "nan"))


def finetune_table(
    runs: pd.DataFrame,
    notebook: str = "04_finetune",
    *,
    pretrained: str = "pretrained",
    contrastive: str = "contrastive_weight",
) -> pd.DataFrame:
    """Finished rows of the fine-tuning notebook plus a `pretraining` label column.

    `pretraining` is "scratch" when `pretrained` is false, else the objective from the
    contrastive weight of the run's pre-training step ("MAE", "MAE + contrastive (w=…)").
    """
    ft = step_table(runs, notebook)
    if ft.empty:
        return ft
    is_pre = _truthy(ft[column(ft, pretrained)]) if _has(ft, pretrained) else None
    weights = ft[column(ft, contrastive)] if _has(ft, contrastive) else None
    objectives = ft[column(ft, "objective")] if _has(ft, "objective") else None
    labels = []
    for i in range(len(ft)):
        if is_pre is not None and not is_pre.iloc[i]:
            labels.append("scratch")
        else:
            labels.append(
                pretrain_method(
                    weights.iloc[i] if weights is not None else None,
                    objectives.iloc[i] if objectives is not None else None,
                )
                if weights is not None or objectives is not None
                else "pre-trained"
            )
    return ft.assign(pretraining=labels)


def _has(table: pd.DataFrame, name: str) -> bool:
    try:
        column(table, name)
    except DataError:
        return False
    return True


def only_true(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows whose `name` column is true (all rows when there is no such column)."""
    return table[_truthy(table[column(table, name)])] if _has(table, name) else table


def pick(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The columns among `names` (short names allowed) that exist, under their short names."""
    found = {n: column(table, n) for n in names if _has(table, n)}
    return table[list(found.values())].set_axis(list(found), axis=1)


def compare_label_efficiency(
    table: pd.DataFrame,
    metric: str,
    fraction: str,
    *,
    by: str | None = None,
    output_dir: str | Path | None = None,
) -> pd.DataFrame | None:
    """Label-efficiency curves (one per value of `by` if it varies), plotted and saved."""
    import matplotlib.pyplot as plt

    from flairlab.data.results import save_figure

    if table.empty or not varies(table, fraction):
        print(f"label efficiency: no runs differ in {fraction!r} yet (sweep over it).")
        return None
    curves = label_efficiency(table, metric, fraction, by if by and varies(table, by) else None)
    fig = plot_label_efficiency(curves, metric, "label efficiency")
    if output_dir is not None:
        save_figure(fig, output_dir, "label_efficiency")
    plt.show()
    return curves


def records(table: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    """A summary table as JSON-ready records (None stays None)."""
    return None if table is None else table.reset_index().to_dict(orient="records")
