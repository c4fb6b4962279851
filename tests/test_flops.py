"""The per-layer FLOP count (flairlab.models.flops) against torch's own counter and the spec."""

from __future__ import annotations

import math

import pytest
import torch
from test_model import random_batch, small_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from flairlab.models.flops import (
    FlopCount,
    block_flops,
    encoder_flops,
    mfu,
    peak_bf16_flops,
    pretrain_flops,
    segmentation_flops,
    unit_tokens,
)
from flairlab.models.heads import SegmentationHead
from flairlab.models.mae import MAE
from flairlab.models.mae_config import FUSION_MODES, MAEConfig, flair_modalities
from flairlab.models.segmodel import SegmentationModel

torch.set_num_threads(1)


def counted(fn) -> int:
    """FLOPs torch's FlopCounterMode sees while `fn()` runs. The CPU flash-attention kernel is not
    in its registry, so attention runs on the math backend (two batched matmuls, counted)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def pretrain_step(model: MAE, batch: dict):
    return lambda: model(batch).loss.backward()


def band_group_modalities() -> dict:
    """small_config's geometry with S2 as two band-group tokens and S1 bands split (G > 1)."""
    mods = flair_modalities(image_size={"aerial": 32, "dem": 32},
                            patch_size={"aerial": 8, "dem": 16},
                            n_dates={"s2": 3, "s1_asc": 2, "s1_desc": 2})  # fmt: skip
    mods["s2"].bands = [[0, 1, 2, 6], [3, 4, 5, 7, 8, 9]]
    mods["s1_asc"].bands = mods["s1_desc"].bands = [[0], [1]]
    return mods


@pytest.mark.parametrize("fusion_mode", FUSION_MODES)
def test_pretrain_step_equals_torch_flop_counter(fusion_mode):
    cfg = small_config(fusion_mode=fusion_mode)
    batch = random_batch(cfg, B=2)
    expected = pretrain_flops(cfg, batch=2)
    assert counted(pretrain_step(MAE(cfg), batch)) == expected.total
    assert expected.backward_total < 2 * expected.forward_total  # patch embeddings: 1× backward


@pytest.mark.parametrize("fusion_mode", ["monotemp", "inter-group"])
def test_band_group_tokens_and_masking_options(fusion_mode):
    cfg = small_config(
        fusion_mode=fusion_mode, mask_ratio=0.6, mask_scale=0.5, modalities=band_group_modalities()
    )
    batch = random_batch(cfg, B=3, seed=1)
    assert counted(pretrain_step(MAE(cfg), batch)) == pretrain_flops(cfg, batch=3).total


@pytest.mark.parametrize("frozen", [False, True])
def test_finetune_step_equals_torch_flop_counter(frozen):
    cfg = small_config(modalities=band_group_modalities())
    encoder = MAE(cfg)
    head = SegmentationHead(cfg.embed_dim, 15, cfg.token_grid("aerial"), 32)
    model = SegmentationModel(encoder, head, list(cfg.modalities))
    batch = random_batch(cfg, B=2)
    flops = counted(lambda: model(batch, frozen=frozen).square().mean().backward())
    expected = segmentation_flops(cfg, 15, cfg.token_grid("aerial"), 32, batch=2, frozen=frozen)
    assert flops == expected.total
    assert expected.forward["head.kv"] > 0 and expected.backward["encoder.aerial"] == (
        0 if frozen else 2 * expected.forward["encoder.aerial"]
    )


def test_flairhub_default_geometry_token_counts_and_exact_count():
    """1880 tokens, 470 visible (spec R1), and the exact count at that geometry (nano width)."""
    c = MAEConfig(size="tiny")
    units = {u.name: (u.sequences, u.tokens, u.visible) for u in unit_tokens(c)}
    assert units == {"aerial": (1, 1024, 256), "dem": (1, 256, 64), "s2": (1, 400, 100),
                     "s1": (1, 200, 50)}  # fmt: skip
    assert sum(t for _, t, _ in units.values()) == c.n_tokens() == 1880
    assert sum(v for *_, v in units.values()) == c.n_visible() == 470
    # per date (monotemp): every date of every modality is its own sequence of g² tokens
    per_date = {u.name: (u.sequences, u.tokens, u.visible)
                for u in unit_tokens(MAEConfig(fusion_mode="monotemp"))}  # fmt: skip
    assert per_date["s2"] == (16, 25, 25 - round(0.75 * 25))
    assert per_date["aerial"] == (1, 1024, 256)

    nano = MAEConfig(size="nano", depth=2, inter_depth=1)  # real token counts, small widths
    batch = random_batch(nano, B=1)
    assert counted(pretrain_step(MAE(nano), batch)) == pretrain_flops(nano, batch=1).total


def test_reference_forward_costs_of_the_spec():
    """maestro-method.md R2 / §7 (matmul FLOPs per sample, inter-group, FLAIR-HUB 1880 tokens):
    tiny fine-tune 31 GF, pre-train 4 + 10 GF; medium 388 GF, 84 + 55 GF (fine-tune: the whole
    encoder; pre-train: encoder / decoder blocks only; rounded in the spec)."""
    for size, ft, enc, dec in (("tiny", 31, 4, 10), ("medium", 388, 84, 55)):
        c = MAEConfig(size=size)
        encoder = encoder_flops(c).forward_total / 1e9
        assert math.isclose(encoder, ft, rel_tol=0.01), (size, encoder)
        p = pretrain_flops(c).forward
        enc_blocks = sum(v for k, v in p.items() if k.startswith(("encoder.", "inter"))) / 1e9
        dec_blocks = sum(v for k, v in p.items() if k.startswith("decoder.")) / 1e9
        assert abs(enc_blocks - enc) <= max(0.5, 0.03 * enc), (size, enc_blocks)
        assert abs(dec_blocks - dec) <= max(0.5, 0.03 * dec), (size, dec_blocks)


def test_block_formula_and_linearity_in_batch():
    # tiny encoder block over the 256 visible aerial tokens, by hand
    L, d, i, m = 256, 192, 192, 384
    assert (
        block_flops(L, d, 3, 64, m)
        == 2 * L * d * 3 * i + 4 * L * L * i + 2 * L * i * d + 4 * L * d * m
    )
    c = MAEConfig(size="medium")
    one, many = pretrain_flops(c, 1), pretrain_flops(c, 32)
    assert many.total == 32 * one.total and many.per_sample == one.total
    assert 420e9 < one.per_sample < 440e9  # ≈ 3 × (145 GF forward incl. embeddings and heads)
    assert set(one.summary()) >= {"inter", "decoder.aerial", "pixel_head.aerial", "total"}


def test_peak_lookup_and_mfu():
    assert peak_bf16_flops("NVIDIA H200") == 989.4e12
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756.5e12
    assert peak_bf16_flops("NVIDIA H200 NVL") == 835.5e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA L4") == 121e12
    assert peak_bf16_flops("NVIDIA L40S") == 362.05e12
    assert peak_bf16_flops("NVIDIA A10G") is None  # unknown: no guess
    assert peak_bf16_flops("Tesla T4") is None and peak_bf16_flops("Tesla V100-SXM2-16GB") is None
    assert mfu(500e12, 1.0, 1000e12) == 0.5
    assert mfu(1.0, 1.0, None) is None
    count = FlopCount(batch=4)
    count.add("x", 10, backward_factor=1)
    assert (count.forward_total, count.backward_total, count.per_sample) == (40, 40, 20)
