"""Figures for MAE pre-training: loss curves and, per modality, input / visible tokens /
reconstruction / normalised target / normalised prediction."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from flairlab.data.dataset import MODEL_BANDS
from flairlab.models.mae import MAE, MAEOutput, count_parameters

MASK_FILL = 0.5  # grey for hidden tokens
RGB_CHOICES = (("R", "G", "B"), ("B04", "B03", "B02"))
PANELS = ("input", "visible tokens", "reconstruction", "normalised target", "normalised prediction")


def read_metrics(metrics: str | Path | list[dict[str, Any]]) -> list[dict[str, float]]:
    """Rows of a run's metrics.csv (a run folder, the CSV path, or rows already loaded)."""
    if isinstance(metrics, list):
        return metrics
    path = Path(metrics)
    if path.is_dir():
        path = path / "metrics.csv"
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def plot_loss_curve(metrics: str | Path | list[dict[str, Any]]) -> plt.Figure:
    """Total and per-modality MAE loss against the optimizer step, learning rate on the right."""
    rows = read_metrics(metrics)
    step = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for key in [k for k in rows[0] if k.startswith("loss_")]:
        total = key == "loss_mae"
        ax.plot(step, [r[key] for r in rows], lw=2.2 if total else 1, alpha=1 if total else 0.7,
                label="total (weighted)" if total else key[5:])  # fmt: skip
    ax.set(xlabel="optimizer step", ylabel="L1 on masked pixels (normalised)",
           title="MAE pre-training loss (dashed: learning rate)")  # fmt: skip
    ax.legend(fontsize=8, ncol=2)
    ax2 = ax.twinx()
    ax2.plot(step, [r["lr"] for r in rows], color="0.6", ls="--", lw=1)
    ax2.set_ylabel("learning rate", color="0.4")
    fig.tight_layout()
    return fig


def _display_bands(key: str, n_chans: int) -> list[int]:
    names = MODEL_BANDS.get(key, [])[:n_chans]
    for rgb in RGB_CHOICES:
        if all(b in names for b in rgb):
            return [names.index(b) for b in rgb]
    return [0]


def _to_rgb(img: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(c, H, W) → (H, W, 3) in [0, 1] with per-channel limits (grey when c = 1)."""
    out = np.clip((img - lo[:, None, None]) / np.maximum(hi - lo, 1e-9)[:, None, None], 0, 1)
    out = np.moveaxis(out, 0, -1)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def _token_mask_pixels(mask: Tensor, p: int) -> np.ndarray:
    """(g, g) token mask → (g·p, g·p) pixel mask."""
    return mask.repeat_interleave(p, 0).repeat_interleave(p, 1).cpu().numpy()


@torch.no_grad()
def panel_images(
    model: MAE, batch: dict, out: MAEOutput, key: str, sample: int = 0, date: int = 0
) -> dict[str, np.ndarray]:
    """The five (H, W, 3) panels in [0, 1] for one modality / sample / date (see PANELS).

    Image-space panels share the input's 2–98 % stretch; the reconstruction keeps the input on
    visible tokens and shows the un-normalised prediction on masked ones; normalised panels map
    [−2.5, 2.5] to [0, 1]."""
    m = model.config.modalities[key]
    bands = _display_bands(key, m.in_chans)
    x = batch[key][sample : sample + 1].float().cpu()
    pred = out.pred_patches[key][sample : sample + 1].float().cpu()
    recon = model.unnormalise(key, x, pred)[0, date, bands].numpy()
    img = x[0, date, bands].numpy()
    group = next(i for i, g in enumerate(m.band_groups) if bands[0] in g)
    slice_ = group * m.n_dates + date  # token map of the displayed bands (joint tokens: date)
    hidden = _token_mask_pixels(out.masks[key][sample, slice_], m.patch_size)
    lo = np.percentile(img, 2, axis=(1, 2))
    hi = np.percentile(img, 98, axis=(1, 2))
    rgb_in = _to_rgb(img, lo, hi)
    visible = np.where(hidden[..., None], MASK_FILL, rgb_in)
    rec = np.where(hidden[..., None], _to_rgb(recon, lo, hi), rgb_in)
    nlo, nhi = np.full(len(bands), -2.5), np.full(len(bands), 2.5)
    tgt = out.targets[key][sample, date, bands].float().cpu().numpy()
    prd = out.reconstructions[key][sample, date, bands].float().cpu().numpy()
    return dict(zip(PANELS, (rgb_in, visible, rec, _to_rgb(tgt, nlo, nhi),
                             _to_rgb(prd, nlo, nhi)), strict=True))  # fmt: skip


def plot_reconstructions(
    model: MAE, batch: dict, out: MAEOutput | None = None, sample: int = 0, date: int = 0
) -> plt.Figure:
    """One row per modality, the PANELS as columns (run `model(batch)` when `out` is None)."""
    if out is None:
        model.eval()
        with torch.no_grad():
            out = model(batch)
    keys = list(model.config.modalities)
    fig, axes = plt.subplots(len(keys), len(PANELS), figsize=(2.3 * len(PANELS), 2.3 * len(keys)),
                             squeeze=False)  # fmt: skip
    for row, key in zip(axes, keys, strict=True):
        d = min(date, model.config.modalities[key].n_dates - 1)
        for ax, (title, im) in zip(row, panel_images(model, batch, out, key, sample, d).items(),
                                   strict=True):  # fmt: skip
            ax.imshow(im, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if key == keys[0]:
                ax.set_title(title, fontsize=9)
        loss = float(out.per_modality_loss[key])
        row[0].set_ylabel(f"{key}\ndate {d}, loss {loss:.3f}", fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def reconstruct(model: MAE, batch: dict, seed: int = 0) -> MAEOutput:
    """A reproducible masked forward pass in eval mode (the mask drawn from `seed`)."""
    model.eval()
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return model(batch)
    finally:
        torch.set_rng_state(state)


def run_results(summary: dict, metrics: list[dict[str, float]], model: MAE, out: MAEOutput,
                batch: dict) -> dict[str, Any]:  # fmt: skip
    """The notebook's results.json: losses at the first / last step and on the shown batch."""
    first, last = metrics[0], metrics[-1]
    return {
        "steps": summary["step"],
        "loss_first_step": first["loss_mae"],
        "loss_last_step": last["loss_mae"],
        "loss_per_modality_last_step": {
            k[5:]: v for k, v in last.items() if k.startswith("loss_") and k != "loss_mae"
        },
        "valid_patches": list(batch["patch_id"]),
        "valid_loss": float(out.loss),
        "valid_loss_per_modality": {k: float(v) for k, v in out.per_modality_loss.items()},
        "parameters": count_parameters(model),
        "tokens_per_patch": model.config.n_tokens(),
        "visible_tokens": model.config.n_visible(),
        "model_config": model.config.to_dict(),
        **{k: summary[k] for k in ("precision", "device", "world_size", "checkpoint")},
    }
