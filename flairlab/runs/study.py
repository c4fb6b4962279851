"""The pre-training study (`benchmarks/ssl_study.py`): its committed result, as a table and a plot.

`benchmarks/reported/ssl_study.json` has the shape

    {"metric": "test_miou",
     "arms": {"scratch": {"0.1": [m1, m2, m3], "1.0": [...]}, "mae": {...}, "contrastive": {...}},
     "steps": {...}, "pipeline": "...", "commit": "..."}

one score per seed; seeds are paired (the i-th score of every arm at a fraction was fine-tuned on
the same labelled subset). `ssl_study_details.json` beside it adds the floor (per-pixel logistic
regression) per seed, the pre-training curves and the diagnostics.

"Beats scratch by more than 2 standard deviations": the paired differences to scratch (same
seed, same labelled subset) have a mean above twice their standard deviation (ddof = 1). The
seed also draws the labelled subset, whose choice moves every arm together; pairing removes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flairlab.data.errors import DataError

ARM_LABELS = {"scratch": "random init (scratch)", "mae": "MAE pre-training",
              "contrastive": "contrastive pre-training"}  # fmt: skip


def load_study(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(study, details or None) from `ssl_study.json` (and `ssl_study_details.json` beside it)."""
    path = Path(path)
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"unreadable study result ({err})", path=path) from None
    missing = [k for k in ("metric", "arms", "steps", "pipeline", "commit") if k not in study]
    if missing:
        expected = "metric, arms, steps, pipeline, commit"
        raise DataError("study result lacks fields", path=path, expected=expected, found=missing)
    details_path = path.with_name(f"{path.stem}_details.json")
    details = None
    if details_path.exists():
        details = json.loads(details_path.read_text(encoding="utf-8"))
    return study, details


def _stats(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def study_table(study: dict[str, Any], floors: dict[str, list[float]] | None = None
                ) -> pd.DataFrame:  # fmt: skip
    """One row per arm (and the floor): mean ± std per label fraction, the paired difference to
    scratch and whether it exceeds 2 standard deviations."""
    arms = study["arms"]
    fractions = list(next(iter(arms.values())))
    rows = {}
    for arm, per_fraction in arms.items():
        row: dict[str, Any] = {}
        for f in fractions:
            m, s = _stats(per_fraction[f])
            row[f"labels {float(f):.0%}"] = f"{m:.3f} ± {s:.3f}"
            if arm != "scratch" and "scratch" in arms:
                diff = np.asarray(per_fraction[f]) - np.asarray(arms["scratch"][f])
                d, sd = _stats(list(diff))
                row[f"Δ vs scratch {float(f):.0%} (paired)"] = f"{d:+.3f} ± {sd:.3f}"
                row[f"> 2 std at {float(f):.0%}"] = bool(d > 2 * sd)
        rows[ARM_LABELS.get(arm, arm)] = row
    if floors:
        rows["floor: per-pixel logistic regression"] = {
            f"labels {float(f):.0%}": "{:.3f} ± {:.3f}".format(*_stats(floors[f]))
            for f in fractions if f in floors
        }  # fmt: skip
    return pd.DataFrame(rows).T.fillna("")


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    cols = [df.index.name or "", *map(str, df.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([str(idx), *(str(v) for v in row)]) + " |")
    return "\n".join(lines)


def plot_study(study: dict[str, Any], floors: dict[str, list[float]] | None = None) -> Any:
    """Test mIoU per arm, one panel per label fraction: every seed a dot (lines join the paired
    seeds), mean ± std as a bar, the floor dashed."""
    import matplotlib.pyplot as plt

    arms = study["arms"]
    fractions = list(next(iter(arms.values())))
    # own y range per panel: at 100 % of the labels the arms differ by thousandths
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.6 * len(fractions), 4.0),
                             squeeze=False)  # fmt: skip
    names = list(arms)
    for ax, f in zip(axes[0], fractions, strict=True):
        vals = np.array([arms[a][f] for a in names], float)  # (arms, seeds)
        for j in range(vals.shape[1]):
            ax.plot(range(len(names)), vals[:, j], "-", color="0.8", lw=0.8, zorder=1)
        for i in range(len(names)):
            m, s = _stats(list(vals[i]))
            ax.errorbar(i, m, yerr=s, fmt="s", color=f"C{i}", capsize=6, ms=8, zorder=3)
            ax.plot(np.full(vals.shape[1], i), vals[i], "o", color=f"C{i}", mfc="white", zorder=2)
            ax.annotate(f"{m:.3f}", (i, m), textcoords="offset points", xytext=(10, -3),
                        fontsize=8)  # fmt: skip
        if floors and f in floors:
            ax.axhline(np.mean(floors[f]), color="tab:red", ls="--", lw=1,
                       label="floor: per-pixel logistic regression (mean over seeds)")  # fmt: skip
        ax.set_xticks(range(len(names)), [ARM_LABELS.get(a, a).replace(" ", "\n", 1)
                                          for a in names], fontsize=8)  # fmt: skip
        ax.set_title(f"{float(f):.0%} of the labelled training patches", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    metric = study["metric"].replace("_", " ").replace("miou", "mIoU")
    axes[0, 0].set_ylabel(f"{metric} (circles: seeds; squares: mean ± std)")
    fig.suptitle(f"Pre-training study · commit {study['commit'][:10]}", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:  # below the panels, where it hides no seed
        fig.legend(handles, labels, loc="lower center", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    return fig
