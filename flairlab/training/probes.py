"""What do frozen encoder features know? Linear probes and reconstruction quality per modality.

Diagnostics for a pre-training run, independent of any head or fine-tuning schedule:

* `linear_probe`: the encoder's token maps (every modality, dates averaged) are bilinearly
  resampled to the label grid, and a multinomial logistic regression (`fit_logistic`, the floor's
  solver) is fitted on up to `max_pixels` labelled training pixels and scored (mIoU) on other
  splits. Pre-trained features that beat random-init features of the same architecture carry
  transferable information; equal scores mean pre-training taught the probe nothing.
* `reconstruction_quality`: the MAE loss per modality on evaluation patches (masked tokens, L1
  on patch-normalised targets), next to the loss of predicting the patch mean (0 in normalised
  units, ≈ 0.8 = E|N(0, 1)|) — how much of each modality the model has learned to predict.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from flairlab.data.dataset import collate
from flairlab.models.segmodel import n_classes_of
from flairlab.training.baseline import evaluate_pixels, fit_logistic, labelled_pixels, linear_logits


@torch.no_grad()
def pixel_features(encoder: nn.Module, batch: dict[str, Any], modalities: list[str],
                   size: int) -> Tensor:  # fmt: skip
    """Frozen features on the label grid: (B, M·E, size, size), one E block per modality (its
    dates averaged), bilinearly resampled from the token grid."""
    feats = encoder.forward_features(batch)
    maps = []
    for key in modalities:
        x = feats[key].mean(1).permute(0, 3, 1, 2)  # (B, E, g, g)
        maps.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(maps, dim=1)


@torch.no_grad()
def linear_probe(
    encoder: nn.Module,
    train_ds: Dataset,
    eval_sets: dict[str, Dataset],
    task: str,
    modalities: list[str],
    size: int,
    *,
    max_pixels: int = 50_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit a per-pixel logistic regression on frozen features of `train_ds` (evaluation-mode
    items); return {"<set>_miou", "<set>_oa" for each eval set, "train_loss", "n_features"}."""
    encoder.eval()

    def features(batch: dict[str, Any]) -> Tensor:
        return pixel_features(encoder, batch, modalities, size)

    X, y = labelled_pixels(train_ds, task, features, max_pixels, seed)
    with torch.enable_grad():
        mean, std, W, b, info = fit_logistic(X, y, n_classes_of(task))
    out: dict[str, Any] = {"n_features": X.shape[1], "n_train_pixels": len(y), **info}
    for name, ds in eval_sets.items():
        r = evaluate_pixels(lambda batch: linear_logits(features(batch), mean, std, W, b), ds,
                            task)  # fmt: skip
        out[f"{name}_miou"], out[f"{name}_oa"] = r["miou"], r["oa"]
    return out


@torch.no_grad()
def reconstruction_quality(mae: nn.Module, ds: Dataset, seeds: int = 3,
                           batch_size: int = 8) -> dict[str, float]:  # fmt: skip
    """Mean MAE loss per modality (and `total`) over `ds`, averaged over `seeds` masks, with the
    loss of the zero prediction (`<modality>_zero`: the patch mean in normalised units)."""
    mae.eval()
    sums: dict[str, float] = {}
    n = 0
    for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate):
        for s in range(seeds):
            torch.manual_seed(s)
            out = mae(batch)
            sums["total"] = sums.get("total", 0.0) + float(out.loss)
            for k, v in out.per_modality_loss.items():
                sums[k] = sums.get(k, 0.0) + float(v)
                zero = out.target_patches[k].abs().mean()  # L1 of predicting 0 (all tokens)
                sums[f"{k}_zero"] = sums.get(f"{k}_zero", 0.0) + float(zero)
            n += 1
    return {k: v / n for k, v in sums.items()}
