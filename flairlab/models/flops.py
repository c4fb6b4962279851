"""Model FLOPs of the MAESTRO MAE and of its segmentation model, counted layer by layer (for MFU).

Convention ("model FLOPs", as PaLM / nanoGPT count them for MFU): only matrix products count —
linear layers, the patch-embedding convolutions and the two attention products Q·Kᵀ and A·V — at
2 FLOPs per multiply-add. Norms, activations, softmax, masking, gathers and the loss are left out
(they are memory-bound and small). A backward pass costs twice its forward (input gradient +
weight gradient), except for the patch embeddings, whose input (pixels) needs no gradient: 1×.
Recomputation is never counted. This is exactly what `torch.utils.flop_counter.FlopCounterMode`
reports for one step (tests/test_flops.py checks equality on every fusion mode).

One pre-norm transformer block over a sequence of L tokens, width d, h heads of size e
(inner i = h·e), MLP hidden m (`block_flops`):

    qkv 2·L·d·3i  +  Q·Kᵀ and A·V 4·L²·i  +  output projection 2·L·i·d  +  MLP 4·L·d·m

Pre-training step, per sample (`pretrain_flops`), with the token counts of `MAEConfig`: patch
embeddings on every token (Σ 2·D·N·|g|·p²·d per modality), the per-unit encoder stacks on the
*visible* tokens of each unit, the inter-* fusion blocks on all visible tokens together, the
encoder → decoder projection on visible tokens, the decoders on *all* tokens of each unit, and the
pixel heads on all tokens (Σ 2·D·N·dd·p²·|g|). FLAIR-HUB default geometry: 1880 tokens, 470
visible (aerial 256 of 1024, DEM 64 of 256, S2 100 of 400, S1 50 of 200).

Fine-tuning step (`segmentation_flops`): the encoder on all tokens, then the attentive head — per
cell of the reference grid G×G, K = Σ dates·band groups tokens: keys/values 2·K·E·2E, attention
4·K·E (one query), projection 2·E·n·p² (n classes, p = label px / G).

`peak_bf16_flops(device_name)` looks up the dense bf16 tensor-core peak of a GPU (datasheet
values, no sparsity) for MFU = achieved FLOP/s ÷ peak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from flairlab.models.mae_config import MAEConfig
from flairlab.models.masking import MaskSpec, n_masked

BACKWARD = 2  # backward FLOPs per forward FLOP for a matmul whose input needs a gradient


def block_flops(L: int, dim: int, heads: int, dim_head: int, mlp_hidden: int) -> int:
    """Forward FLOPs of one pre-norm attention + MLP block over one sequence of L tokens."""
    inner = heads * dim_head
    return (
        2 * L * dim * 3 * inner + 4 * L * L * inner + 2 * L * inner * dim + 4 * L * dim * mlp_hidden
    )


@dataclass(frozen=True)
class UnitTokens:
    """Token counts of one encoder sequence unit (a group / modality, or one date of a modality
    in per-date modes): `sequences` per sample of `tokens` tokens, `visible` of them encoded in
    pre-training."""

    name: str
    sequences: int
    tokens: int
    visible: int


def unit_tokens(config: MAEConfig) -> list[UnitTokens]:
    """Per mask unit (= encoder sequence): sequences per sample, tokens and visible tokens."""
    c = config
    spec = MaskSpec(ratio=c.mask_ratio, scale=c.mask_scale)
    out = []
    for name, layout, reps in c.mask_units():
        L = sum(G * D * N for G, D, N in layout)
        visible = L - n_masked(L, sum(G * D for G, D, _ in layout), spec)
        out.append(UnitTokens(name, reps, L, visible))
    return out


@dataclass
class FlopCount:
    """FLOPs of one training step of `batch` samples, per component (`forward`, `backward`)."""

    batch: int
    forward: dict[str, int] = field(default_factory=dict)
    backward: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, forward: int, backward_factor: int = BACKWARD) -> None:
        """Add `forward` FLOPs per sample under `name` (× batch), backward = factor × forward."""
        f = forward * self.batch
        self.forward[name] = self.forward.get(name, 0) + f
        self.backward[name] = self.backward.get(name, 0) + backward_factor * f

    @property
    def forward_total(self) -> int:
        return sum(self.forward.values())

    @property
    def backward_total(self) -> int:
        return sum(self.backward.values())

    @property
    def total(self) -> int:
        """Forward + backward FLOPs of the step."""
        return self.forward_total + self.backward_total

    @property
    def per_sample(self) -> float:
        return self.total / self.batch

    def summary(self) -> dict[str, float]:
        """GFLOPs per sample by component (forward + backward) and in total, for JSON reports."""
        out = {k: (self.forward[k] + self.backward[k]) / self.batch / 1e9 for k in self.forward}
        return {**out, "total": self.per_sample / 1e9}


def _encoder(count: FlopCount, config: MAEConfig, units: list[UnitTokens], visible: bool,
             backward: int) -> None:  # fmt: skip
    """Patch embeddings (one conv per band group and date), per-unit stacks, inter-* blocks."""
    c = config
    mlp = int(c.embed_dim * c.mlp_ratio)
    for k, m in c.modalities.items():
        embed = sum(2 * m.n_dates * m.grid**2 * len(g) * m.patch_size**2 * c.embed_dim
                    for g in m.band_groups)  # fmt: skip
        count.add(f"patch_embed.{k}", embed, 1 if backward else 0)
    for u in units:
        L = u.visible if visible else u.tokens
        blocks = c.encoder_depth * block_flops(L, c.embed_dim, c.num_heads, c.dim_head, mlp)
        count.add(f"encoder.{u.name}", u.sequences * blocks, backward)
    if c.is_inter:  # one sequence of every unit's tokens (inter-* modes are never per date)
        L = sum(u.sequences * (u.visible if visible else u.tokens) for u in units)
        blocks = c.inter_depth * block_flops(L, c.embed_dim, c.num_heads, c.dim_head, mlp)
        count.add("inter", blocks, backward)


def pretrain_flops(config: MAEConfig, batch: int = 1) -> FlopCount:
    """Model FLOPs of one MAE pre-training step (forward + backward) of `batch` samples."""
    c, dd = config, config.decoder_dim
    units = unit_tokens(c)
    count = FlopCount(batch)
    _encoder(count, c, units, visible=True, backward=BACKWARD)
    for u in units:
        if c.embed_dim != dd:
            count.add(f"enc_to_dec.{u.name}", u.sequences * 2 * u.visible * c.embed_dim * dd)
        blocks = c.decoder_depth * block_flops(u.tokens, dd, c.decoder_heads, c.decoder_dim_head,
                                               c.decoder_mlp_hidden)  # fmt: skip
        count.add(f"decoder.{u.name}", u.sequences * blocks)
    for k, m in c.modalities.items():
        pix = sum(2 * m.n_dates * m.grid**2 * dd * m.patch_size**2 * len(g) for g in m.band_groups)
        count.add(f"pixel_head.{k}", pix)
    return count


def encoder_flops(config: MAEConfig, batch: int = 1, backward: bool = True) -> FlopCount:
    """Model FLOPs of the encoder on all tokens (fine-tuning / inference features)."""
    count = FlopCount(batch)
    _encoder(
        count, config, unit_tokens(config), visible=False, backward=BACKWARD if backward else 0
    )
    return count


def segmentation_flops(
    config: MAEConfig,
    n_classes: int,
    grid: int,
    label_size: int,
    batch: int = 1,
    modalities: list[str] | None = None,
    frozen: bool = False,
) -> FlopCount:
    """Model FLOPs of one fine-tuning step: MAE encoder + `SegmentationHead` (attentive pooling of
    the K tokens per cell of the `grid`² reference grid, projection to n_classes·p² with
    p = label_size / grid). `frozen` (probe): the encoder runs forward only."""
    count = encoder_flops(config, batch, backward=not frozen)
    keys = modalities if modalities is not None else list(config.modalities)
    K = sum(config.modalities[k].n_slices for k in keys)
    E, cells, p = config.embed_dim, grid**2, label_size // grid
    count.add("head.kv", cells * 2 * K * E * 2 * E)
    count.add("head.attention", cells * 4 * K * E)  # one query per cell over K keys
    count.add("head.proj", cells * 2 * E * n_classes * p * p)
    return count


# -- devices ---------------------------------------------------------------------------------
# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s from the vendors' datasheets; the first
# pattern that matches `torch.cuda.get_device_name()` wins (so specific names come first).
# None: the GPU has no bf16 tensor cores (MFU is not defined against a bf16 peak).
PEAK_BF16_TFLOPS: list[tuple[str, float | None]] = [
    (r"GB200", 2500.0),
    (r"B200", 2250.0),
    (r"B100", 1750.0),
    (r"H200 NVL", 835.5),
    (r"H100 NVL", 835.5),
    (r"H100 PCIe", 756.5),
    (r"H20\b", 148.0),
    (r"GH200|H200|H100|H800", 989.4),
    (r"A100|A800", 312.0),
    (r"\bA30\b", 165.0),
    (r"\bA40\b", 149.7),
    (r"\bA10\b", 125.0),
    (r"L40S", 362.05),
    (r"\bL40\b", 181.05),
    (r"\bL4\b", 121.0),
    (r"RTX 4090", 165.2),
    (r"RTX A6000", 154.8),
    (r"MI300X", 1307.4),
    (r"MI250X", 383.0),
    (r"V100|T4\b|P100", None),
]


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak in FLOP/s for a device name (None when unknown or without bf16 units)."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return None if tflops is None else tflops * 1e12
    return None


def mfu(flops_per_step: float, step_seconds: float, peak_flops: float | None) -> float | None:
    """Model FLOP utilisation: achieved FLOP/s over the peak (None without a peak)."""
    if not peak_flops or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / peak_flops
