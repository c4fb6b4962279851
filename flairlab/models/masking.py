"""MAESTRO structured masking: modality / band group / date / location proposals + random fill.

A *mask unit* is the sequence one encoder stack sees (a group of modalities in `group` modes, one
modality in `mod` modes, one date of one modality in `shared`/`monotemp`). Each modality of a unit
contributes `G·D·N` tokens laid out as (band group, date, location), band group outermost.

For every sample exactly `M = round(ρ·L)` of the unit's `L` tokens are masked (Python rounding),
with `ρ = 1 − (1 − mask_ratio) / n_slices^mask_scale` (ρ = mask_ratio when `mask_scale = 0`):

1. structured proposal (only when `structured`): OR of independent Bernoulli draws per modality —
   the whole modality (p = `mask_mod`, only if the unit holds ≥ 2 modalities), each band group
   (`mask_bands`, only if G > 1), each date (`mask_dates`, only if D > 1), each location at all
   dates ("tube", `mask_loc`); a sample whose proposal covers its whole unit is redrawn;
2. random fill: every token gets a uniform key, structured tokens are shifted below all others, and
   the `M` smallest keys are masked. Structured tokens are therefore masked first; when there are
   more than `M` of them, *which* ones are masked is random (the reference breaks this tie by
   position — a deliberate deviation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_REDRAWS = 100  # structured proposals covering a whole unit are redrawn at most this often


@dataclass(frozen=True)
class MaskSpec:
    """Masking hyper-parameters (MAESTRO defaults, spec §5)."""

    ratio: float = 0.75
    scale: float = 0.0
    p_mod: float = 0.25
    p_bands: float = 0.0
    p_dates: float = 0.25
    p_loc: float = 0.25


def n_masked(n_tokens: int, n_slices: int, spec: MaskSpec) -> int:
    """Tokens masked per sample in a unit of `n_tokens` tokens made of `n_slices`
    (date × band-group) slices: `round(ρ·L)`, Python rounding (0.75·9 → 7, 0.75·200 → 150)."""
    rho = 1.0 - (1.0 - spec.ratio) / (n_slices**spec.scale)
    return round(rho * n_tokens)


def structured_proposal(
    layout: list[tuple[int, int, int]],
    batch: int,
    spec: MaskSpec,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Structured proposal for one unit. `layout` lists (G, D, N) per modality; returns (B, L) bool.

    Samples whose proposal would hide the whole unit are redrawn (at most `MAX_REDRAWS` times).
    """

    def bern(p: float, *shape: int) -> Tensor:
        return torch.rand(shape, device=device, generator=generator) < p

    def draw(b: int) -> Tensor:
        parts = []
        multi = len(layout) >= 2
        for G, D, N in layout:
            m = torch.zeros(b, G, D, N, dtype=torch.bool, device=device)
            if multi and spec.p_mod > 0:
                m |= bern(spec.p_mod, b, 1, 1, 1)
            if G > 1 and spec.p_bands > 0:
                m |= bern(spec.p_bands, b, G, 1, 1)
            if D > 1 and spec.p_dates > 0:
                m |= bern(spec.p_dates, b, 1, D, 1)
            if spec.p_loc > 0:
                m |= bern(spec.p_loc, b, 1, 1, N)
            parts.append(m.flatten(1))
        return torch.cat(parts, dim=1)

    prop = draw(batch)
    for _ in range(MAX_REDRAWS):
        full = prop.all(dim=1)
        if not bool(full.any()):
            return prop
        prop[full] = draw(int(full.sum()))
    raise ValueError(
        f"structured masking: proposals keep covering whole units after {MAX_REDRAWS} redraws "
        f"(p_mod={spec.p_mod}, p_bands={spec.p_bands}, p_dates={spec.p_dates}, "
        f"p_loc={spec.p_loc}); lower these probabilities"
    )


def random_masking(
    layout: list[tuple[int, int, int]],
    batch: int,
    spec: MaskSpec,
    *,
    structured: bool = True,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask one unit for a batch.

    Args:
        layout: (G, D, N) per modality of the unit (band groups, dates, locations).
        batch: number of sequences B.
    Returns:
        mask (B, L) bool, True = hidden from the encoder, exactly `n_masked` per row;
        keep (B, L − M) int64, indices of the visible tokens in ascending (original) order.
    """
    L = sum(G * D * N for G, D, N in layout)
    n_slices = sum(G * D for G, D, _ in layout)
    M = n_masked(L, n_slices, spec)
    prop = None
    if structured:  # drawn first: the same generator state reproduces the proposal
        prop = structured_proposal(layout, batch, spec, device=device, generator=generator)
    key = torch.rand(batch, L, device=device, generator=generator)
    if prop is not None:
        key = torch.where(prop, key - 1.0, key)  # structured tokens sort first, ties random
    order = torch.argsort(key, dim=1)
    mask = torch.zeros(batch, L, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :M], True)
    keep = order[:, M:].sort(dim=1).values
    return mask, keep
