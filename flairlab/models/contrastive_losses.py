"""Pure contrastive loss rows and the DDP helpers they rely on (`flairlab.training.contrastive`).

* distributed: `gather_rows` (all_gather with autograd, uneven batches), `global_mean` (this
  rank's share of a global mean), `reduce_logs` (log floats averaged over ranks); all are
  no-ops in a single process;
* losses on L2-normalised embeddings: `nce_rows` (per-row InfoNCE), `clip_loss` (symmetric CLIP),
  `multi_positive_rows` (MIL-NCE), and the (n, b) pair masks `pair_exclusion`, `same_roi_pairs`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


# -- distributed helpers ---------------------------------------------------------------------------
def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered copies and hands
    each rank the slice of its own rows (all_reduce: works on gloo and NCCL alike)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, ...]:
        parts = [torch.empty_like(x) for _ in range(_world())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:
        g = torch.stack(grads).contiguous()
        dist.all_reduce(g)
        return g[dist.get_rank()]


def gather_rows(x: Tensor, *, grad: bool) -> tuple[Tensor, int]:
    """Concatenate `x` (n, ...) over DDP ranks (uneven n allowed) → (x_all, this rank's offset).
    With `grad`, gradients of x_all flow back to each rank's own rows (summed over ranks)."""
    if _world() == 1:
        return x, 0
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(_world())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - x.shape[0]
    xp = F.pad(x, (0, 0) * (x.dim() - 1) + (0, pad)) if pad else x.contiguous()
    if grad:
        parts = _AllGather.apply(xp)
    else:
        parts = [torch.empty_like(xp) for _ in sizes]
        dist.all_gather(parts, xp)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])
    return out, sum(sizes[: dist.get_rank()])


def global_mean(rows: Tensor, valid: Tensor | None = None) -> Tensor:
    """This rank's share of the mean of `rows` over all ranks' valid rows, scaled by the world
    size so that DDP's gradient average yields the gradient of the global mean."""
    valid = torch.ones_like(rows, dtype=torch.bool) if valid is None else valid
    count = valid.sum().to(rows.dtype).detach()
    if _world() > 1:
        count = count.clone()
        dist.all_reduce(count)
    total = torch.where(valid, rows, torch.zeros_like(rows)).sum()
    return total * _world() / count.clamp_min(1)


def reduce_logs(logs: dict[str, Tensor]) -> dict[str, float]:
    """Detached log tensors → floats, averaged over DDP ranks, with a single device sync."""
    keys = list(logs)
    vals = torch.stack([logs[k].detach().to(torch.float64).reshape(()) for k in keys])
    if _world() > 1:
        vals = vals.clone()
        dist.all_reduce(vals)
        vals /= _world()
    return dict(zip(keys, vals.tolist(), strict=True))


# -- losses ----------------------------------------------------------------------------------------
def nce_rows(logits: Tensor, offset: int = 0, exclude: Tensor | None = None) -> Tensor:
    """Per-row −log softmax (n,) of the positive column offset+i of `logits` (n, b); `exclude`
    (n, b) removes pairs from the denominator (it must not contain the positives)."""
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    ar = torch.arange(logits.shape[0], device=logits.device)
    return torch.logsumexp(logits, 1) - logits[ar, offset + ar]


def clip_loss(u: Tensor, v: Tensor, scale: float | Tensor, symmetric: bool = True) -> Tensor:
    """Single-process cross-modal InfoNCE of L2-normalised u, v (B, P): ½(u→v + v→u)."""
    s = scale * u @ v.T
    return 0.5 * (nce_rows(s).mean() + nce_rows(s.T).mean()) if symmetric else nce_rows(s).mean()


def multi_positive_rows(
    z: Tensor,
    z_all: Tensor,
    scale: Tensor,
    offset: int = 0,
    exclude: Tensor | None = None,
    valid_all: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """MIL-NCE losses (n, M) for z (n, M, P) and z_all (b, M, P): anchor = modality a of patch i;
    positives = the other modalities of patch i; candidates = every other-modality embedding.
    `exclude` (n, b) drops pairs of patches; `valid_all` (b, M) drops empty embeddings. Returns
    (losses, ok): ok is False where the anchor or all of its positives are empty."""
    n, M, _ = z.shape
    ar = torch.arange(n, device=z.device)
    ex = torch.zeros(n, z_all.shape[0], dtype=torch.bool, device=z.device)
    ex = ex if exclude is None else ex | exclude
    va = torch.ones(z_all.shape[:2], dtype=torch.bool, device=z.device)
    va = va if valid_all is None else valid_all
    out, oks = [], []
    for a in range(M):
        others = [c for c in range(M) if c != a]
        keys = z_all[:, others].transpose(0, 1)  # (M-1, b, P)
        logits = scale * torch.einsum("np,kbp->nkb", z[:, a], keys)
        pos_ok = va[offset + ar][:, others]  # (n, M-1)
        ok = va[offset + ar, a] & pos_ok.any(1)
        drop = (ex[:, None] | ~va[:, others].T[None]) & ok[:, None, None]  # empty rows: no drop
        logits = logits.masked_fill(drop, float("-inf"))
        pos = logits[ar, :, offset + ar].masked_fill(~pos_ok & ok[:, None], float("-inf"))
        out.append(torch.logsumexp(logits.flatten(1), 1) - torch.logsumexp(pos, 1))
        oks.append(ok)
    return torch.stack(out, 1), torch.stack(oks, 1)


def pair_exclusion(exclude: Tensor, cols_ok: Tensor, offset: int = 0) -> Tensor:
    """(n, b) pairs left out of a denominator: `exclude` plus empty columns, never the positive."""
    ex = exclude | ~cols_ok[None, :]
    ar = torch.arange(ex.shape[0], device=ex.device)
    ex[ar, offset + ar] = False
    return ex


def same_roi_pairs(codes: Tensor, codes_all: Tensor, offset: int = 0) -> Tensor:
    """(n, b) True where local patch i and patch j differ but share the ROI code."""
    same = codes[:, None] == codes_all[None, :]
    ar = torch.arange(len(codes), device=codes.device)
    same[ar, offset + ar] = False
    return same
