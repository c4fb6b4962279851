"""What a fine-tuning run needs on an accelerator: memory and time per epoch, from FLOPs.

Estimates, stated with their assumptions (nothing here runs the model):

* **time** — model FLOPs of one step (`flairlab.models.flops.segmentation_flops`: encoder on all
  tokens + attentive head, forward + backward; the probe runs the encoder forward only) × steps
  per epoch ÷ (the GPU's dense bf16 peak × MFU). MFU 0.35 is a typical value for transformer
  training with bf16 autocast and fused attention; measure yours and pass it.
* **memory** — fp32 weights of the whole MAE (4 B / parameter, the unused decoder included),
  gradients + AdamW moments + EMA copy of the trained ones (4 + 8 + 4 B / parameter), and the
  activations kept for backward per sample: ≈ 34 B × tokens × width per transformer block (bf16
  autocast with fused attention, no L² score matrices — Korthikanti et al. 2022, MLP ratio 4) plus
  the head's token grid (G² × K tokens × width, ×3 in bf16) and the logits (fp32, ×3). No
  allocator margin is added: keep 10–20 % free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flairlab.models.flops import peak_bf16_flops, segmentation_flops, unit_tokens
from flairlab.models.heads import SegmentationHead
from flairlab.models.mae import MAE
from flairlab.models.mae_config import MAEConfig
from flairlab.models.segmodel import n_classes_of, reference_modality

ACTIVATION_BYTES_PER_TOKEN_WIDTH = 34  # per transformer block, bf16 + fused attention
TRAINED_BYTES_PER_PARAMETER = 4 + 8 + 4  # gradient, AdamW m and v, EMA copy (fp32)


@dataclass
class Requirements:
    """One configuration's estimate; `table()` for display."""

    description: str
    parameters: int  # whole MAE + head (all in memory)
    trained_parameters: int  # encoder + head (fine-tuning)
    batch_size: int
    steps_per_epoch: int
    gflops_per_step: float  # fine-tuning, forward + backward
    probe_gflops_per_step: float
    weights_gb: float
    training_state_gb: float
    activations_gb: float  # for the whole batch
    gpu: str
    mfu: float
    peak_tflops: float | None

    @property
    def memory_gb(self) -> float:
        return self.weights_gb + self.training_state_gb + self.activations_gb

    def seconds_per_epoch(self, probe: bool = False) -> float | None:
        if not self.peak_tflops:
            return None
        flops = self.probe_gflops_per_step if probe else self.gflops_per_step
        return flops * 1e9 * self.steps_per_epoch / (self.peak_tflops * 1e12 * self.mfu)

    def table(self) -> dict[str, Any]:
        """Quantities with units, for a notebook (one column of a DataFrame)."""

        def seconds(probe: bool) -> float | None:
            s = self.seconds_per_epoch(probe)
            return None if s is None else float(f"{s:.3g}")

        return {
            "parameters (M)": round(self.parameters / 1e6, 1),
            "trained parameters (M)": round(self.trained_parameters / 1e6, 1),
            "batch": self.batch_size,
            "steps per epoch": self.steps_per_epoch,
            "fine-tune GFLOP / step": round(self.gflops_per_step, 1),
            "GPU memory, weights (GB)": round(self.weights_gb, 2),
            "GPU memory, grads + AdamW + EMA (GB)": round(self.training_state_gb, 2),
            "GPU memory, activations (GB)": round(self.activations_gb, 2),
            "GPU memory, total (GB)": round(self.memory_gb, 2),
            f"probe epoch on {self.gpu}, compute only (s)": seconds(True),
            f"fine-tune epoch on {self.gpu}, compute only (s)": seconds(False),
            "assumed MFU": self.mfu,
        }


def activation_bytes(config: MAEConfig, modalities: list[str], grid: int, label_size: int,
                     n_classes: int) -> int:  # fmt: skip
    """Activations kept for backward by one sample (see the module docstring)."""
    c = config
    units = unit_tokens(c)
    token_layers = sum(u.sequences * u.tokens for u in units) * c.encoder_depth
    if c.is_inter:
        token_layers += sum(u.sequences * u.tokens for u in units) * c.inter_depth
    blocks = ACTIVATION_BYTES_PER_TOKEN_WIDTH * token_layers * c.embed_dim
    K = sum(c.modalities[k].n_slices for k in modalities)
    head = 3 * 2 * grid * grid * K * c.embed_dim + 3 * 4 * n_classes * label_size**2
    return blocks + head


def estimate(
    config: MAEConfig,
    modalities: list[str],
    *,
    task: str = "cosia",
    label_size: int = 512,
    batch_size: int = 32,
    n_train: int = 10_000,
    gpu: str = "NVIDIA H100",
    mfu: float = 0.35,
    description: str = "",
) -> Requirements:
    """Requirements of fine-tuning `config` on `n_train` patches (see the module docstring)."""
    n_classes = n_classes_of(task)
    grid = config.token_grid(reference_modality(config, modalities))  # as in fine-tuning
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = MAE(config)
        head = SegmentationHead(config.embed_dim, n_classes, grid, label_size)
    n_head = sum(p.numel() for p in head.parameters())
    enc = [model.patch_embed, model.encoders] + ([model.inter] if model.inter else [])
    total = sum(p.numel() for p in model.parameters()) + n_head
    trained = sum(p.numel() for m in enc for p in m.parameters()) + n_head
    step = segmentation_flops(config, n_classes, grid, label_size, batch_size, modalities)
    probe = segmentation_flops(config, n_classes, grid, label_size, batch_size, modalities,
                               frozen=True)  # fmt: skip
    acts = activation_bytes(config, modalities, grid, label_size, n_classes) * batch_size
    peak = peak_bf16_flops(gpu)
    return Requirements(
        description=description or f"{config.size} {config.fusion_mode}",
        parameters=total, trained_parameters=trained, batch_size=batch_size,
        steps_per_epoch=-(-n_train // batch_size), gflops_per_step=step.total / 1e9,
        probe_gflops_per_step=probe.total / 1e9, weights_gb=4 * total / 1e9,
        training_state_gb=TRAINED_BYTES_PER_PARAMETER * trained / 1e9,
        activations_gb=acts / 1e9, gpu=gpu, mfu=mfu,
        peak_tflops=None if peak is None else peak / 1e12,
    )  # fmt: skip


__all__ = ["Requirements", "activation_bytes", "estimate"]


def finetune_requirements(cfg: Any, *, gpu: str = "NVIDIA H100", mfu: float = 0.35,
                          n_train: int | None = None) -> Any:  # fmt: skip
    """A table (pandas DataFrame) for a `FinetuneConfig`: this run's geometry and batch on its
    training patches, next to the same model at the FLAIR-HUB geometry (the pre-training one of
    IGN's weights), batch 32, per 10 000 patches. Builds the encoder's configuration (downloads
    a Hub checkpoint if it is not cached) but no weights are trained."""
    import dataclasses

    import pandas as pd

    from flairlab.data.dataset import DEFAULT_IMAGE_SIZE, dataset_index
    from flairlab.models.mae_config import FLAIR_GEOMETRY
    from flairlab.models.segmodel import build_encoder

    mods = list(cfg.modalities)
    encoder, _ = build_encoder(
        cfg.checkpoint or getattr(cfg, "scratch_like", "") or None, mods, load_weights=False,
        size=cfg.size, image_size=cfg.image_size, patch_size=cfg.patch_size,
        n_dates=cfg.n_dates, fusion_mode=cfg.fusion_mode,
    )  # fmt: skip
    config: MAEConfig = encoder.config
    del encoder
    if n_train is None:
        root = getattr(cfg, "root", "") or cfg.source
        if root == "sample":
            from flairlab.data.sample import ensure_sample

            root = ensure_sample()
        index = dataset_index(root)
        split = getattr(cfg, "train_split", "train")
        n_all = int((index["split"] == split).sum()) if "split" in index else len(index)
        n_train = max(1, round(n_all * getattr(cfg, "label_fraction", 1.0)))
    label = cfg.label_size or DEFAULT_IMAGE_SIZE[cfg.task]
    run = estimate(config, mods, task=cfg.task, label_size=label, batch_size=cfg.batch_size,
                   n_train=n_train, gpu=gpu, mfu=mfu)  # fmt: skip
    flair = {k: dataclasses.replace(m, image_size=FLAIR_GEOMETRY[k][0],
                                    n_dates=FLAIR_GEOMETRY[k][2])
             for k, m in config.modalities.items() if k in FLAIR_GEOMETRY}  # fmt: skip
    full = MAEConfig.from_dict({**config.to_dict(), "modalities": {
        k: dataclasses.asdict(m) for k, m in {**config.modalities, **flair}.items()}})
    base = estimate(full, mods, task=cfg.task, label_size=DEFAULT_IMAGE_SIZE[cfg.task],
                    batch_size=32, n_train=10_000, gpu=gpu, mfu=mfu)  # fmt: skip
    return pd.DataFrame({f"this run ({n_train} training patches)": run.table(),
                         "FLAIR-HUB geometry, batch 32, 10 000 patches": base.table()},
                        dtype=object)
