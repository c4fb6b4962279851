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

from flairlab.data.catalog import IGNORE_INDEX, load_catalog
from flairlab.data.dataset import TARGETS, FlairHubDataset, collate
from flairlab.models.segmodel import SegmentationModel


def plot_curves(history: list[dict[str, Any]], title: str = "") -> plt.Figure:
    """Training loss and validation mIoU per epoch; probe and fine-tune phases side by side."""
    df = pd.DataFrame(history)
    df["step"] = np.arange(1, len(df) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for phase, part in df.groupby("phase", sort=False):
        axes[0].plot(part["step"], part["train_loss"], "o-", label=phase)
        val = part.dropna(subset=["val_miou"])  # validation may run every few epochs only
        axes[1].plot(val["step"], val["val_miou"], "o-", label=phase)
    axes[0].set(xlabel="epoch (probe, then fine-tune)", ylabel="train cross-entropy")
    axes[1].set(xlabel="epoch (probe, then fine-tune)", ylabel="validation mIoU")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def per_class_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per class: IoU, F1 and pixel support (classes without support show NaN IoU/F1
    when never predicted; they do not count in the mIoU)."""
    df = pd.DataFrame(metrics["per_class"]).T
    df["support"] = df["support"].astype(int)
    df["in_miou"] = df["support"] > 0
    df.index.name = "class"
    return df[["iou", "f1", "support", "in_miou"]]


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


@torch.no_grad()
def plot_predictions(
    model: SegmentationModel, ds: FlairHubDataset, task: str, n: int = 3,
    device: str | torch.device = "cpu",
) -> plt.Figure:  # fmt: skip
    """For the first `n` patches of `ds`: aerial RGB (if loaded), ground truth, prediction."""
    items = [ds[i] for i in range(min(n, len(ds)))]
    batch = collate(items)
    model.eval()
    dev = torch.device(device)
    inputs = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    pred = model(inputs).float().argmax(1).cpu().numpy()
    truth = batch[task].numpy()
    cmap = class_cmap(task)
    cols = 3 if "aerial" in batch else 2
    fig, axes = plt.subplots(len(items), cols, figsize=(3 * cols, 3 * len(items)), squeeze=False)
    for r, pid in enumerate(batch["patch_id"]):
        panels = []
        if "aerial" in batch:
            rgb = batch["aerial"][r, 0, 1:4].permute(1, 2, 0).numpy()  # model order NIR, R, G, B
            panels.append(("aerial (R, G, B)", np.clip(rgb, 0, 1), {}))
        t = np.ma.masked_equal(truth[r], IGNORE_INDEX)
        kw = {"cmap": cmap, "vmin": -0.5, "vmax": cmap.N - 0.5, "interpolation": "nearest"}
        panels += [("ground truth", t, kw), ("prediction", pred[r], kw)]
        for c, (name, img, opts) in enumerate(panels):
            axes[r, c].imshow(img, **opts)
            axes[r, c].set_title(f"{name}\n{pid}" if c == 0 else name, fontsize=8)
            axes[r, c].axis("off")
    fig.tight_layout()
    return fig


def run_dataset(meta: dict[str, Any], split: str = "test") -> FlairHubDataset:
    """Evaluation dataset (no augmentation) with the geometry a fine-tuned model was trained on
    (`meta` = the JSON written beside `finetuned.safetensors`)."""
    ft = meta["finetune"]
    return FlairHubDataset(
        ft["root"] or ft["source"], split, modalities=tuple(meta["modalities"]),
        targets=(meta["task"],), train=False, seed=ft["seed"], **meta["geometry"],
    )  # fmt: skip
