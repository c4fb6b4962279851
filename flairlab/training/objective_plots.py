"""Figures and results of a pre-training run by objective (mae | contrastive | both).

The MAE curve is `flairlab.training.pretrain_plots.plot_loss_curve`; the contrastive curve reads the
`contrastive_<key>` columns written by `flairlab.training.pretrain` (loss per modality pair,
in-batch top-1 retrieval accuracy per pair, temperature, and for CCL-K the weight mass W0 puts on
other samples).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from flairlab.training.pretrain_config import PretrainConfig
from flairlab.training.pretrain_plots import plot_loss_curve, read_metrics

PREFIX = "contrastive_"


def _columns(rows: list[dict[str, float]], start: str) -> list[str]:
    return [k for k in rows[0] if k.startswith(PREFIX + start)]


def plot_contrastive_curve(metrics: str | Path | list[dict[str, Any]]) -> plt.Figure:
    """Left: contrastive loss (total and per pair; CCL-K weight mass on the right axis).
    Right: in-batch retrieval accuracy per pair against chance (1 / global batch), temperature
    on the right axis."""
    rows = read_metrics(metrics)
    if PREFIX + "loss" not in rows[0]:
        raise ValueError("no contrastive_loss column: not a contrastive run")
    step = [r["step"] for r in rows]
    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.6))
    for key in _columns(rows, "loss"):
        total = key == PREFIX + "loss"
        ax.plot(step, [r[key] for r in rows], lw=2.2 if total else 1, alpha=1 if total else 0.7,
                label="mean over pairs" if total else key[len(PREFIX) + 5:])  # fmt: skip
    ax.set(xlabel="optimizer step", ylabel="contrastive loss", title="contrastive loss")
    if PREFIX + "w_offdiag_mass" in rows[0]:
        ax_w = ax.twinx()
        ax_w.plot(step, [r[PREFIX + "w_offdiag_mass"] for r in rows], color="0.5", ls="--", lw=1)
        ax_w.set_ylabel("CCL-K weight mass on other samples", color="0.4")
    ax.legend(fontsize=8)
    for key in _columns(rows, "acc_"):
        ax_acc.plot(step, [r[key] for r in rows], lw=1, label=key[len(PREFIX) + 4 :])
    if PREFIX + "global_batch" in rows[0]:
        chance = [1 / max(r[PREFIX + "global_batch"], 1) for r in rows]
        ax_acc.plot(step, chance, color="k", ls=":", lw=1, label="chance")
    ax_acc.set(xlabel="optimizer step", ylabel="top-1 in-batch retrieval", ylim=(0, 1.05),
               title="cross-modal retrieval (training batches)")  # fmt: skip
    ax_acc.legend(fontsize=8)
    if PREFIX + "temperature" in rows[0]:
        ax_t = ax_acc.twinx()
        ax_t.plot(step, [r[PREFIX + "temperature"] for r in rows], color="0.5", ls="--", lw=1)
        ax_t.set_ylabel("temperature τ", color="0.4")
    fig.tight_layout()
    return fig


def training_curves(
    metrics: str | Path | list[dict[str, Any]], objective: str
) -> dict[str, plt.Figure]:
    """{figure name: figure}: `loss_curve` when the MAE term trains, `contrastive_curve` when the
    contrastive term does."""
    rows = read_metrics(metrics)
    figs = {}
    if objective in ("mae", "both"):
        figs["loss_curve"] = plot_loss_curve(rows)
    if objective in ("contrastive", "both"):
        figs["contrastive_curve"] = plot_contrastive_curve(rows)
    return figs


def objective_results(
    summary: dict[str, Any], metrics: list[dict[str, float]], cfg: PretrainConfig
) -> dict[str, Any]:
    """The objective part of the notebook's results.json: settings, total loss at the first and
    last step, and the contrastive logs of the first and last step (prefix removed)."""
    tc = cfg.train
    cc = tc.contrastive_config()
    first, last = metrics[0], metrics[-1]
    out: dict[str, Any] = {
        "objective": tc.objective,
        "contrastive_weight": tc.contrastive_weight,
        "contrastive_config": asdict(cc) if cc is not None else None,
        "steps": summary["step"],
        "total_loss_first_step": first["loss"],
        "total_loss_last_step": last["loss"],
    }
    if cc is not None:
        out["contrastive_first_step"] = {k[len(PREFIX):]: v for k, v in first.items()
                                         if k.startswith(PREFIX)}  # fmt: skip
        out["contrastive_last_step"] = {k[len(PREFIX):]: v for k, v in last.items()
                                        if k.startswith(PREFIX)}  # fmt: skip
    return out
