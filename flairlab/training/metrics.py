"""Segmentation / classification metrics as IGN and MAESTRO compute them (maestro-method.md §8.4).

One confusion matrix is accumulated over the whole evaluation epoch (pixels with the ignore
value removed). From it: IoU_c = TP / (TP + FP + FN), F1_c = 2TP / (2TP + FP + FN), and
**mIoU / mean F1 over classes with support** (TP + FN > 0) only — a class absent from the targets
is left out of the means even if it is predicted (those wrong predictions still count as false
negatives of the true classes). OA = trace / total; weighted F1 = Σ_c F1_c · support_c / Σ support.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassConfusionMatrix, MultilabelStatScores

from flairlab.data.catalog import IGNORE_INDEX
from flairlab.models.segmodel import (
    SegmentationModel,
    autocast,
    class_names,
    n_classes_of,
    to_device,
)


def metrics_from_confusion(cm: np.ndarray | Tensor, names: list[str] | None = None) -> dict:
    """Metrics from a confusion matrix `cm[true, pred]` (C, C) of pixel counts.

    Returns miou, oa, mean_f1, weighted_f1 (floats; NaN when nothing is labelled), per_class
    {name: {iou, f1, support}} (iou/f1 NaN for a class without support and without
    predictions), present (class indices with support) and the matrix itself.
    """
    cm = np.asarray(cm.cpu() if isinstance(cm, Tensor) else cm, dtype=np.float64)
    C = cm.shape[0]
    names = names or [str(i) for i in range(C)]
    tp = np.diag(cm)
    support = cm.sum(1)  # TP + FN
    predicted = cm.sum(0)  # TP + FP
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (support + predicted - tp)
        f1 = 2 * tp / (support + predicted)
    present = support > 0
    total = cm.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "oa": float(tp.sum() / total) if total else float("nan"),
        "mean_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "weighted_f1": float((f1[present] * support[present]).sum() / support.sum())
        if present.any()
        else float("nan"),
        "per_class": {
            names[c]: {"iou": float(iou[c]), "f1": float(f1[c]), "support": int(support[c])}
            for c in range(C)
        },
        "present": np.flatnonzero(present).tolist(),
        "confusion": cm.astype(np.int64).tolist(),
    }


class SegmentationMetrics:
    """Epoch-accumulated confusion matrix (torchmetrics) over pixels ≠ ignore_index.

    update(logits (B, C, H, W) or predictions (B, H, W), target (B, H, W)); compute() -> dict of
    `metrics_from_confusion`; reset() for the next epoch.
    """

    def __init__(
        self, n_classes: int, names: list[str] | None = None, ignore_index: int = IGNORE_INDEX
    ) -> None:
        self.n_classes, self.names = n_classes, names
        self.cm = MulticlassConfusionMatrix(n_classes, ignore_index=ignore_index)
        self._updated = False

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(1)
        self.cm.update(pred.detach().cpu(), target.detach().cpu())
        self._updated = True

    def compute(self) -> dict:
        if not self._updated:
            return metrics_from_confusion(np.zeros((self.n_classes,) * 2), self.names)
        return metrics_from_confusion(self.cm.compute(), self.names)

    def reset(self) -> None:
        self.cm.reset()
        self._updated = False


class MultilabelMetrics:
    """Multi-label classification: per-label TP/FP/FN accumulated over the epoch at a 0.5
    sigmoid threshold; weighted F1 (weights = label support), macro F1 over supported labels."""

    def __init__(self, n_labels: int, threshold: float = 0.5) -> None:
        self.stats = MultilabelStatScores(n_labels, threshold=threshold, average=None)

    def update(self, logits: Tensor, target: Tensor) -> None:
        self.stats.update(torch.sigmoid(logits.detach().float()).cpu(), target.long().cpu())

    def compute(self) -> dict:
        tp, fp, _, fn, _ = self.stats.compute().double().unbind(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = (2 * tp / (2 * tp + fp + fn)).numpy()
        support = (tp + fn).numpy()
        present = support > 0
        return {
            "weighted_f1": float(np.nansum(f1 * support) / support.sum())
            if support.sum()
            else float("nan"),
            "macro_f1": float(np.nanmean(f1[present])) if present.any() else float("nan"),
            "f1": f1.tolist(),
            "support": support.astype(int).tolist(),
        }

    def reset(self) -> None:
        self.stats.reset()


# -- loss and evaluation of a segmentation model ------------------------------------------
def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor | None:
    """Pixel cross-entropy over labelled pixels (≠ 255); None when a batch has none."""
    if not (target != IGNORE_INDEX).any():
        return None
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)


@torch.no_grad()
def evaluate(
    model: SegmentationModel,
    loader: DataLoader,
    task: str,
    device: torch.device,
    max_steps: int = 0,
    precision: str | None = None,
) -> dict:
    """Epoch-accumulated metrics (mIoU over present classes, OA, per-class IoU/F1, confusion)
    and `loss`, the mean pixel cross-entropy over the labelled pixels."""
    model.eval()
    metrics = SegmentationMetrics(n_classes_of(task), class_names(task))
    ce_sum, n_px = 0.0, 0
    for step, batch in enumerate(loader):
        if max_steps and step >= max_steps:
            break
        batch = to_device(batch, device)
        with autocast(device, precision):
            logits = model(batch)
        metrics.update(logits.float(), batch[task])
        labelled = int((batch[task] != IGNORE_INDEX).sum())
        if labelled:
            ce_sum += float(segmentation_loss(logits, batch[task])) * labelled
            n_px += labelled
    return {**metrics.compute(), "loss": ce_sum / n_px if n_px else float("nan")}
