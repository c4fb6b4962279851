"""Deterministic reference-layout weights and batches, shared by tests/test_reference.py and
the scratch script that ran IGN's reference implementation to write `fixtures/maestro_*.json`.

`reference_state(shapes)` fills every key of a reference state dict (layout recorded from
IGNF/MAESTRO) with seeded values; `reference_batch()` is a FLAIR-HUB-geometry batch in the
reference's conventions (DEM as [DSM, DTM] / 1000, S1 descending named `s1_des`);
`flairlab_batch()` is the same batch as flairlab's data pipeline delivers it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "fixtures"
GOLDEN = DATA / "maestro_reference_tiny_inter_group.json"
# reference input -> (image_size, channels, dates): FLAIR-HUB defaults (IGNF/MAESTRO@6a30075)
FLAIR_INPUTS = {"aerial": (512, 4, 1), "dem": (512, 2, 1), "s2": (10, 10, 16),
                "s1_asc": (10, 2, 4), "s1_des": (10, 2, 4)}  # fmt: skip


def load_golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def reference_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded values for every key (norm weights ≈ 1, biases small, matrices ~ 1/√fan_in), in
    the order of `shapes` (the seed of a key is its rank in sorted order)."""
    rank = {k: i for i, k in enumerate(sorted(shapes))}
    out = {}
    for key, shape in shapes.items():
        i = rank[key]
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        if ".norm" in key or ".net.0." in key:
            x = 1 + 0.1 * x if key.endswith("weight") else 0.05 * x
        elif key.endswith("bias"):
            x = 0.02 * x
        elif "mask_token" not in key and len(shape) > 1:
            x = x / math.sqrt(math.prod(shape[1:]))
        out[key] = x.float()
    return out


def reference_batch(B: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for name, (size, chans, dates) in FLAIR_INPUTS.items():
        batch[name] = torch.rand(B, dates, chans, size, size, generator=g)
        days = torch.randint(1, 366, (B, dates, 1), generator=g)
        hours = torch.randint(0, 24, (B, dates, 1), generator=g)
        batch[f"{name}_dates"] = torch.cat([torch.full_like(days, 2021), days, hours], -1)
    batch["ref_date"] = batch["aerial_dates"].clone()
    return batch


def flairlab_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference applies the DEM transform inside its model; flairlab's dataset does it."""
    out = {k: v.clone() for k, v in batch.items()}
    dem = out["dem"]
    dem[:, :, 1] = 30 * (dem[:, :, 0] - dem[:, :, 1])
    out["s1_desc"], out["s1_desc_dates"] = out.pop("s1_des"), out.pop("s1_des_dates")
    return out


def feature_probe(feats: torch.Tensor) -> dict:
    """A small, exact-enough summary of (B=1, S, N, d) features: 3 tokens × 8 channels per
    slice, and the mean absolute value."""
    N = feats.shape[2]
    idx = [0, N // 2, N - 1]
    return {"tokens": feats[0][:, idx, :8].tolist(), "mean_abs": feats.abs().mean().item()}
