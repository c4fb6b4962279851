"""Figures and tables for fine-tuning runs: curves, per-class table, confusion matrix, predictions.

All functions take what `flairlab.training.finetune.run_finetune` returns (or writes to
`results.json`), so a notebook stays a sequence of calls.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from flairlab.data.catalog import IGNORE_INDEX, load_catalog
from flairlab.data.dataset import TARGETS, FlairHubDataset, collate
from flairlab.models.segmodel import SegmentationModel

PHASE_COLOURS = {"probe": "tab:purple", "finetune": "tab:blue"}


def plot_curves(
    history: list[dict[str, Any]],
    train_log: list[dict[str, Any]] | None = None,
    baseline: dict[str, Any] | None = None,
    title: str = "",
) -> plt.Figure:
    """Loss and mIoU by optimiser step: training (per step, thin, and its mean between
    validations, dots) and validation (squares), probe and fine-tuning phases shaded apart, the
    floor's validation mIoU (per-pixel logistic regression) as a dashed line. Readable with two
    validations as with two hundred."""
    df = pd.DataFrame(history)
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 3.8))
    if train_log:
        log = pd.DataFrame(train_log).dropna(subset=["loss"])
        ax_loss.plot(log["step"], log["loss"], color="0.75", lw=0.8, label="train (each step)")
    for phase, part in df.groupby("phase", sort=False):
        c = PHASE_COLOURS.get(phase, "tab:gray")
        ax_loss.plot(part["step"], part["train_loss"], "o", color=c, ms=5, mfc="white",
                     label=f"train, {phase} (mean since last check)")  # fmt: skip
        if "val_loss" in part:
            ax_loss.plot(part["step"], part["val_loss"], "s-", color=c, ms=5,
                         label=f"validation, {phase}")  # fmt: skip
        if "train_miou" in part:
            ax_miou.plot(part["step"], part["train_miou"], "o--", color=c, ms=5, mfc="white",
                         lw=0.8, label=f"train, {phase} (running)")  # fmt: skip
        val = part.dropna(subset=["val_miou"])
        ax_miou.plot(val["step"], val["val_miou"], "s-", color=c, ms=5,
                     label=f"validation, {phase}")  # fmt: skip
    if baseline and baseline.get("val_miou") is not None:
        label = f"floor: per-pixel logistic ({baseline['val_miou']:.2f})"
        ax_miou.axhline(baseline["val_miou"], color="tab:red", ls="--", lw=1, label=label)
    probe = df[df["phase"] == "probe"]
    if len(probe) and (df["phase"] != "probe").any():
        for ax in (ax_loss, ax_miou):
            ax.axvspan(0, probe["step"].max(), color="tab:purple", alpha=0.06, lw=0)
    if len(df):
        last = df.dropna(subset=["val_miou"]).iloc[-1]
        ax_miou.annotate(f"{last['val_miou']:.2f}", (last["step"], last["val_miou"]),
                         textcoords="offset points", xytext=(4, 4), fontsize=8)  # fmt: skip
    ax_loss.set(xlabel="optimiser step", ylabel="pixel cross-entropy")
    ax_miou.set(xlabel="optimiser step", ylabel="mIoU", ylim=(0, 1))
    for ax in (ax_loss, ax_miou):
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title + ("\n" if title else "") + "shaded: probe (encoder frozen)", fontsize=10)
    fig.tight_layout()
    return fig


def per_class_table(metrics: dict[str, Any], floor: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per class: IoU, F1 and pixel support (classes without support show NaN IoU/F1
    when never predicted; they do not count in the mIoU); with `floor` (the baseline's metrics
    on the same split) its IoU beside the model's."""
    df = pd.DataFrame(metrics["per_class"]).T
    df["support"] = df["support"].astype(int)
    df["in_miou"] = df["support"] > 0
    df.index.name = "class"
    cols = ["iou", "f1", "support", "in_miou"]
    if floor is not None:
        df["floor_iou"] = pd.DataFrame(floor["per_class"]).T["iou"]
        cols.insert(1, "floor_iou")
    return df[cols]


def floor_table(results: dict[str, Any]) -> pd.DataFrame:
    """The model next to its floor (per-pixel logistic regression on the same training pixels):
    validation / test mIoU and OA, what each was fitted with."""
    rows = {"model": {
        "val mIoU": results["val"]["miou"], "test mIoU": results["test_miou"],
        "test OA": results["test_oa"],
        "fitted on": f"{results['n_train_patches']} patches, {results['steps']['total']} "
                     "optimiser steps",
    }}  # fmt: skip
    b = results.get("baseline")
    if b:
        rows["floor: per-pixel logistic regression"] = {
            "val mIoU": b["val_miou"], "test mIoU": b["test_miou"], "test OA": b["test_oa"],
            "fitted on": f"{b['n_train_pixels']:,} pixels of the same patches, "
                         f"{b['n_features']} input features",
        }  # fmt: skip
    return pd.DataFrame(rows).T


def plot_confusion(metrics: dict[str, Any], normalize: str = "true") -> plt.Figure:
    """Confusion matrix normalised per true class (rows sum to 1; rows without support blank)."""
    cm = np.asarray(metrics["confusion"], dtype=float)
    names = list(metrics["per_class"])
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / cm.sum(1, keepdims=True) if normalize == "true" else cm / cm.sum()
    fig, ax = plt.subplots(figsize=(0.45 * len(names) + 3, 0.45 * len(names) + 2.5))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true")
    for i, j in zip(*np.nonzero(norm >= 0.01), strict=True):
        ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.04, label="share of the true class")
    fig.tight_layout()
    return fig


def class_cmap(task: str) -> ListedColormap:
    """Colours of the task's nomenclature (evaluated classes), index = class id."""
    nom = load_catalog().nomenclature(TARGETS[task][2])
    colors = nom.colors()
    return ListedColormap([np.array(colors[i]) / 255 for i in nom.evaluated_ids])


def class_legend(fig: plt.Figure, task: str, class_ids: list[int] | np.ndarray,
                 ncol: int = 5) -> None:  # fmt: skip
    """A legend of the task's classes `class_ids` (evaluated ids) in their official colours and
    names, under the figure."""
    nom = load_catalog().nomenclature(TARGETS[task][2])
    colors = nom.colors()
    evaluated = nom.evaluated_ids
    handles = [Patch(facecolor=np.array(colors[evaluated[c]]) / 255, edgecolor="0.4", lw=0.5,
                     label=nom.names[evaluated[c]]) for c in sorted(set(int(c) for c in class_ids))]
    fig.legend(handles=handles, loc="lower center", ncol=min(ncol, max(1, len(handles))),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))  # fmt: skip


@torch.no_grad()
def plot_predictions(
    model: SegmentationModel, ds: FlairHubDataset, task: str, n: int = 3,
    device: str | torch.device = "cpu", baseline: Any = None,
) -> plt.Figure:  # fmt: skip
    """For the first `n` patches of `ds`: aerial RGB (if loaded), ground truth, the model's
    prediction and (if given, a `PixelLogistic`) the floor's, with a legend of the classes shown
    (official colours and names); white = ignored pixels."""
    items = [ds[i] for i in range(min(n, len(ds)))]
    batch = collate(items)
    model.eval()
    dev = torch.device(device)
    inputs = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    pred = model(inputs).float().argmax(1).cpu().numpy()
    floor = baseline.logits(batch).argmax(1).numpy() if baseline is not None else None
    truth = batch[task].numpy()
    cmap = class_cmap(task)
    cols = 2 + ("aerial" in batch) + (floor is not None)
    fig, axes = plt.subplots(len(items), cols, figsize=(2.8 * cols, 2.8 * len(items) + 0.9),
                             squeeze=False)  # fmt: skip
    for r, pid in enumerate(batch["patch_id"]):
        panels = []
        if "aerial" in batch:
            rgb = batch["aerial"][r, 0, 1:4].permute(1, 2, 0).numpy()  # model order NIR, R, G, B
            panels.append(("aerial (R, G, B)", np.clip(rgb, 0, 1), {}))
        t = np.ma.masked_equal(truth[r], IGNORE_INDEX)
        kw = {"cmap": cmap, "vmin": -0.5, "vmax": cmap.N - 0.5, "interpolation": "nearest"}
        panels += [("ground truth", t, kw), ("model", pred[r], kw)]
        if floor is not None:
            panels.append(("floor: per-pixel logistic", floor[r], kw))
        for c, (name, img, opts) in enumerate(panels):
            axes[r, c].imshow(img, **opts)
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(pid, fontsize=8)
    shown = np.union1d(np.unique(truth[truth != IGNORE_INDEX]), np.unique(pred))
    if floor is not None:
        shown = np.union1d(shown, np.unique(floor))
    fig.tight_layout(rect=(0, 0.9 / (2.8 * len(items) + 0.9) + 0.02, 1, 1))
    class_legend(fig, task, shown)
    return fig


def run_dataset(meta: dict[str, Any], split: str = "test") -> FlairHubDataset:
    """Evaluation dataset (no augmentation) with the geometry a fine-tuned model was trained on
    (`meta` = the JSON written beside `finetuned.safetensors`)."""
    ft = meta["finetune"]
    return FlairHubDataset(
        ft["root"] or ft["source"], split, modalities=tuple(meta["modalities"]),
        targets=(meta["task"],), train=False, seed=ft["seed"], **meta["geometry"],
    )  # fmt: skip
