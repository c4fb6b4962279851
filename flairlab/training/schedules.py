"""The one learning-rate schedule (one-cycle) and the EMA of weights, for every training loop."""

from __future__ import annotations

import math

import torch
from torch import nn


def one_cycle(
    step: int, total: int, final_factor: float, warm: float = 0.2, start: float = 1e-3
) -> float:
    """LR multiplier at `step` (0-based) of `total`: `start` → 1 (cosine, first `warm` of the
    steps, at least one step) → 1/final_factor (cosine, reached at the last step).

    MAESTRO: start 1/1000, warm 0.2. Short CPU budgets (~50 steps) use a shorter warm-up from a
    higher start (e.g. warm 0.1, start 1/25, as torch's OneCycleLR) so that few steps are spent
    at a negligible rate."""
    peak = max(1, round(warm * total))
    if step < peak:
        lo = start
        return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * step / peak))
    end = 1.0 / final_factor
    t = (step - peak) / max(1, total - 1 - peak)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def one_cycle_scheduler(
    opt: torch.optim.Optimizer, total: int, final_factor: float, warm: float = 0.2,
    start: float = 1e-3,
) -> torch.optim.lr_scheduler.LambdaLR:  # fmt: skip
    """`one_cycle` as a per-step scheduler of `opt` (its param-group lrs are the peaks)."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: one_cycle(s, total, final_factor, warm, start)
    )


def ema_momentum(epochs: int) -> float:
    """m = 1 − 1/(0.2·E) (R6: E=50 → 0.9, 100 → 0.95, 10 → 0.5), clipped at 0 for E < 5."""
    return max(0.0, 1.0 - 1.0 / (0.2 * epochs)) if epochs > 0 else 0.0


def ema_momentum_at(step: int, total: int, horizon: float = 0.2) -> float:
    """Per-step EMA momentum: the averaging horizon is `horizon` of the phase's `total` steps,
    m = 1 − 1/(horizon·total) (R6's per-epoch rule, counted in steps), warmed up as
    min(m, (1 + step)/(10 + step)) so that the average does not drag the initial weights
    through a short run. `step` is 0-based; m = 0 copies the weights."""
    m = max(0.0, 1.0 - 1.0 / (horizon * total)) if total > 0 else 0.0
    return min(m, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, m: float) -> None:
    """θ_ema ← m·θ_ema + (1 − m)·θ (parameters); buffers are copied."""
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.mul_(m).add_(p.detach(), alpha=1 - m)
    for be, b in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(b)
