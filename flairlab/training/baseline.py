"""The floor to beat: per-pixel multinomial logistic regression on the model's own inputs.

A fine-tuned model's mIoU means little on its own; next to a simple classifier fitted on **the
same training pixels** it says whether the network learned more than "this colour / height /
S2 profile is that class". The baseline sees exactly the model inputs of a batch (the dataset's
scaling and geometry; `FlairHubDataset` with `train=False`, i.e. median dates and no flips):

* every modality / date / band of the batch is resampled to the label grid S × S (bilinear when
  coarser, e.g. Sentinel at 10 m; area average when finer; as is when equal) → one feature per
  (modality, date, band): aerial NIR, R, G, B; DEM DSM/1000 and 30·(DSM − DTM)/1000 (the height);
  S2 10 bands × D dates (the monthly profile); S1 VV, VH × D dates per orbit;
* features are standardised with the training mean / std, and a multinomial logistic regression
  with an L2 penalty on the weights is fitted by full-batch L-BFGS on up to `max_pixels` labelled
  training pixels drawn uniformly (seeded);
* evaluation accumulates the same confusion matrix as the model's (`SegmentationMetrics`).

No spatial context at all: the network's receptive field, the encoder's pre-training and its
fusion of dates are what should put it above this line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from flairlab.data.catalog import IGNORE_INDEX
from flairlab.data.dataset import MODEL_BANDS, collate
from flairlab.data.errors import DataError
from flairlab.data.results import write_json_atomic
from flairlab.models.heads import inputs_on_grid
from flairlab.models.segmodel import class_names, n_classes_of
from flairlab.training.metrics import SegmentationMetrics


def feature_names(batch: dict[str, Any], modalities: list[str]) -> list[str]:
    """`key[date].band` for every feature of `inputs_on_grid` (e.g. `s2[3].B08`)."""
    names = []
    for key in modalities:
        D = batch[key].shape[1]
        for d in range(D):
            names += [f"{key}[{d}].{b}" if D > 1 else f"{key}.{b}" for b in MODEL_BANDS[key]]
    return names


Features = Callable[[dict[str, Any]], Tensor]  # batch -> (B, F, S, S) on the label grid


def linear_logits(x: Tensor, mean: Tensor, std: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """(B, K, S, S) = W · (x − mean) / std + b for features x (B, F, S, S)."""
    z = (x - mean[:, None, None]) / std[:, None, None]
    return torch.einsum("bfhw,kf->bkhw", z, weight) + bias[:, None, None]


@dataclass
class PixelLogistic:
    """Fitted per-pixel classifier on the model inputs: logits = W · (x − mean) / std + b."""

    mean: Tensor  # (F,)
    std: Tensor  # (F,)
    weight: Tensor  # (K, F)
    bias: Tensor  # (K,)
    modalities: list[str]
    size: int

    def features(self, batch: dict[str, Any]) -> Tensor:
        return inputs_on_grid(batch, self.modalities, self.size)

    def logits(self, batch: dict[str, Any]) -> Tensor:
        """(B, K, size, size) logits of a batch."""
        return linear_logits(self.features(batch), self.mean, self.std, self.weight, self.bias)


def _loader(ds: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)


@torch.no_grad()
def labelled_pixels(
    ds: Dataset, task: str, features: Features, max_pixels: int, seed: int, batch_size: int = 8,
    max_patches: int = 500,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(X (N, F), y (N,)): `features` of labelled pixels of `ds`, at most `max_pixels` of them,
    drawn uniformly (seeded) from at most `max_patches` patches (a seeded random subset of a
    larger dataset), at most ⌈2·max_pixels / patches⌉ per patch — memory stays bounded at the
    native 512-px label grid and on the full dataset."""
    g = torch.Generator().manual_seed(seed)
    if len(ds) > max_patches:
        ds = Subset(ds, torch.randperm(len(ds), generator=g)[:max_patches].tolist())
    per_patch = -(-2 * max_pixels // max(1, len(ds)))
    xs, ys = [], []
    for batch in _loader(ds, batch_size):
        feats = features(batch)  # (B, F, S, S)
        y = batch[task]
        if y.shape[-1] != feats.shape[-1]:
            raise ValueError(f"labels are {y.shape[-1]} px, features {feats.shape[-1]} px")
        for f, t in zip(feats.permute(0, 2, 3, 1), y, strict=True):
            keep = torch.nonzero((t != IGNORE_INDEX).flatten()).squeeze(1)
            if len(keep) > per_patch:
                keep = keep[torch.randperm(len(keep), generator=g)[:per_patch]]
            xs.append(f.reshape(-1, f.shape[-1])[keep])
            ys.append(t.flatten()[keep])
    X, y = torch.cat(xs), torch.cat(ys)
    if len(y) > max_pixels:
        idx = torch.randperm(len(y), generator=g)[:max_pixels]
        X, y = X[idx], y[idx]
    return X, y


def fit_logistic(
    X: Tensor, y: Tensor, n_classes: int, l2: float = 1e-4, max_iter: int = 100
) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, float]]:
    """Multinomial logistic regression by full-batch L-BFGS on standardised features.

    Minimises mean cross-entropy + l2/2·‖W‖². Returns (mean, std, W (K, F), b (K,), info) with
    info = final loss, the loss of predicting the class frequencies, iterations."""
    X = X.double()
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mean) / std
    counts = torch.bincount(y, minlength=n_classes).double()
    prior = counts / counts.sum()
    W = torch.zeros(n_classes, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.log(prior.clamp_min(1e-8)).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7,
                            tolerance_change=1e-10)  # fmt: skip
    n_eval = 0

    def closure() -> Tensor:
        nonlocal n_eval
        n_eval += 1
        opt.zero_grad()
        loss = F.cross_entropy(Z @ W.T + b, y) + 0.5 * l2 * (W**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(F.cross_entropy(Z @ W.T + b, y))
        present = prior > 0
        floor = float(-(prior[present] * prior[present].log()).sum())
    info = {"train_loss": final, "class_frequency_loss": floor, "evaluations": n_eval}
    return mean.float(), std.float(), W.detach().float(), b.detach().float(), info


@torch.no_grad()
def evaluate_pixels(logits: Callable[[dict[str, Any]], Tensor], ds: Dataset, task: str,
                    batch_size: int = 8) -> dict[str, Any]:  # fmt: skip
    """Epoch-accumulated metrics (as `flairlab.training.metrics.evaluate`) of `logits(batch)`."""
    metrics = SegmentationMetrics(n_classes_of(task), class_names(task))
    for batch in _loader(ds, batch_size):
        metrics.update(logits(batch), batch[task])
    return metrics.compute()


def evaluate_pixel_model(model: PixelLogistic, ds: Dataset, task: str) -> dict[str, Any]:
    """Metrics of the baseline on `ds`."""
    return evaluate_pixels(model.logits, ds, task)


def run_baseline(
    train_ds: Dataset,
    eval_sets: dict[str, Dataset],
    task: str,
    modalities: list[str],
    size: int,
    *,
    max_pixels: int = 30_000,
    l2: float = 1e-4,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[PixelLogistic, dict[str, Any]]:
    """Fit on the labelled pixels of `train_ds` (evaluation-mode items), evaluate on every set of
    `eval_sets` ({"val": ds, "test": ds}). Returns the model and a JSON-ready record."""
    t0 = time.perf_counter()
    first = next(iter(_loader(train_ds, 1)))
    X, y = labelled_pixels(train_ds, task, lambda b: inputs_on_grid(b, modalities, size),
                           max_pixels, seed)  # fmt: skip
    mean, std, W, b, info = fit_logistic(X, y, n_classes_of(task), l2, max_iter)
    model = PixelLogistic(mean, std, W, b, list(modalities), size)
    names = feature_names(first, modalities)
    fit_s = time.perf_counter() - t0
    record: dict[str, Any] = {
        "method": "per-pixel multinomial logistic regression (L-BFGS, standardised inputs)",
        "inputs": "the model's input modalities resampled to the label grid "
        "(every date and band one feature, no spatial context)",
        "modalities": list(modalities),
        "n_features": len(names),
        "features": names,
        "n_train_pixels": len(y),
        "l2": l2,
        **info,
        "fit_seconds": fit_s,
    }
    for name, ds in eval_sets.items():
        m = evaluate_pixel_model(model, ds, task)
        record[name] = m
        record[f"{name}_miou"], record[f"{name}_oa"] = m["miou"], m["oa"]
    record["seconds"] = time.perf_counter() - t0
    return model, record


def baseline_summary(record: dict[str, Any]) -> str:
    """One line for a notebook: the floor's scores."""
    parts = [f"{k.removesuffix('_miou')} mIoU {record[k]:.3f}" for k in record
             if k.endswith("_miou") and np.isfinite(record[k])]  # fmt: skip
    return (f"per-pixel logistic regression on {record['n_features']} input features, "
            f"{record['n_train_pixels']:,} training pixels: " + ", ".join(parts))  # fmt: skip


def save_baseline(model: PixelLogistic, path: str | Path) -> Path:
    """The fitted floor as safetensors (mean, std, weight, bias) + `<path>.json` (inputs)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: getattr(model, k).contiguous() for k in ("mean", "std", "weight", "bias")}
    save_file(tensors, str(path))
    write_json_atomic(path.with_suffix(".json"),
                      {"modalities": model.modalities, "size": model.size})  # fmt: skip
    return path


def load_baseline(path: str | Path) -> PixelLogistic:
    """Inverse of `save_baseline`."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise DataError("baseline needs its .safetensors and .json", path=path)
    t = load_file(str(path))
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return PixelLogistic(t["mean"], t["std"], t["weight"], t["bias"], meta["modalities"],
                         meta["size"])  # fmt: skip
