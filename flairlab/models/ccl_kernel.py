"""CCL-K: kernel-conditional contrastive weights and losses (contrastive-methods.md §2, §3.3).

Every sample of the (gathered) batch is weighted by how similar its conditioning value z_j is to
the anchor's z_i: W = (K_Z + λI)⁻¹ K_Z (kernel-ridge smoother, computed in float64 without
autograd), then the diagonal is zeroed and weights < 1e-6 (negative ones included) are clipped to 0
(official CCLK-release form, §2.5). Column i of W holds the weights for z = z_i.

Conditioning variables read from a flairlab batch (`condition_values`):

* ``domain``   département-year of the patch id, indicator kernel (Fair-CCLK: domain invariance);
* ``doy``      aerial acquisition day of year (``ref_date``), periodic kernel, scale in days;
* ``position`` patch centre in metres: ``batch["position"]`` (B, 2) when the loader gives it,
  otherwise the within-ROI grid position from the patch id × 102.4 m times an ROI indicator (a
  distance needs no row/column orientation); RBF, bandwidth in metres or the median heuristic.
  Without ``position`` every partner is a same-ROI patch, so with the same-ROI mask (fair/hard)
  all anchors are orphans (``w_orphan_frac`` = 1): give positions or turn the mask off;
* ``labels``   COSIA / LPIS class histogram of the patch, cosine kernel (weakly supervised: uses
  labels, train split only);
* ``embedding`` the anchor embedding itself, stop-grad, RBF with median bandwidth (HardNeg-CCLK).
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from flairlab.data.errors import DataError

VARIANTS = ("fair", "weak", "hard")
CONDITIONS = ("domain", "doy", "position", "labels", "embedding")
CODE_BITS = 52  # integer codes stay exact in float64 (gathered with the other conditions)


def stable_code(text: str) -> int:
    """Process-independent 52-bit code of a string (the same on every DDP rank and run)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << CODE_BITS) - 1)


# -- kernels: float64 (b, b) ---------------------------------------------------------------------
def indicator_kernel(codes: Tensor) -> Tensor:
    """k(z, z') = 1[z = z'] for codes (b,) or (b, d) (all columns must match)."""
    c = codes.reshape(codes.shape[0], -1)
    return (c[:, None, :] == c[None, :, :]).all(-1).to(torch.float64)


def periodic_kernel(day: Tensor, scale_days: float = 30.0, period: float = 365.25) -> Tensor:
    """exp(κ(cos(2πΔ/P) − 1)) for days (b,), κ = (P / 2π·scale)²: an RBF of std ≈ `scale_days`
    for Δ ≪ P that wraps around the year (31 Dec and 1 Jan are neighbours)."""
    kappa = (period / (2 * math.pi * scale_days)) ** 2
    phase = 2 * math.pi * day.to(torch.float64) / period
    return torch.exp(kappa * (torch.cos(phase[:, None] - phase[None, :]) - 1))


def _sq_dists(x: Tensor) -> Tensor:
    x = x.to(torch.float64).reshape(x.shape[0], -1)
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").square()


def median_bandwidth(d2: Tensor, pairs: Tensor | None = None) -> float:
    """Median of the positive pairwise distances (optionally among `pairs`); 1.0 if none."""
    keep = d2 > 0
    if pairs is not None:
        keep &= pairs
    vals = d2[keep]
    return float(vals.median().sqrt()) if vals.numel() else 1.0


def rbf_kernel(x: Tensor, bandwidth: float | None = None) -> tuple[Tensor, float]:
    """exp(−‖x − x'‖² / 2σ²) for x (b, d); σ = `bandwidth` (units of x) or the median distance."""
    d2 = _sq_dists(x)
    bw = median_bandwidth(d2) if bandwidth is None else float(bandwidth)
    return torch.exp(-d2 / (2 * bw * bw)), bw


def cosine_kernel(h: Tensor) -> Tensor:
    """cos(h, h') for non-negative histograms (b, C); a zero row gets zero similarity."""
    h = h.to(torch.float64)
    hn = h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return hn @ hn.T


def label_histogram(labels: Tensor, n_classes: int, ignore_index: int = 255, name: str = "labels"):
    """Class frequencies (B, n_classes) float64 of label maps (B, H, W); ignored pixels are left
    out; a patch without any valid pixel gets a zero row. Other values raise DataError."""
    lab = labels.reshape(labels.shape[0], -1).long()
    bad = ((lab < 0) | (lab >= n_classes)) & (lab != ignore_index)
    if bool(bad.any()):
        found = sorted({int(v) for v in lab[bad].unique()[:5]})
        raise DataError(
            f"batch[{name!r}] class ids",
            expected=f"0..{n_classes - 1} or {ignore_index}",
            found=found,
        )
    valid = lab != ignore_index
    B = lab.shape[0]
    offs = torch.arange(B, device=lab.device)[:, None] * n_classes
    counts = torch.bincount((lab + offs)[valid], minlength=B * n_classes).view(B, n_classes)
    counts = counts.to(torch.float64)
    return counts / counts.sum(1, keepdim=True).clamp_min(1)


# -- conditioning variables from a batch -----------------------------------------------------------
def _patch_ids(batch: dict) -> list:
    from flairlab.data.index import (
        parse_patch_id,  # light, but keep kernels importable on their own
    )

    if "patch_id" not in batch:
        raise DataError("batch field 'patch_id'", expected="list[str] DOMAIN_ROI_R-C", found="none")
    return [parse_patch_id(p) for p in batch["patch_id"]]


def condition_values(
    batch: dict,
    condition: str,
    *,
    label_key: str = "cosia",
    n_label_classes: int = 15,
    patch_size_m: float = 102.4,
) -> Tensor:
    """Conditioning variable z (B, d_z) float64 for `condition` (not `embedding`; module doc)."""
    if condition == "domain":
        return torch.tensor([[float(stable_code(p.domain))] for p in _patch_ids(batch)])
    if condition == "doy":
        key = "ref_date" if "ref_date" in batch else "aerial_dates"
        if key not in batch:
            raise DataError("batch field 'ref_date' or 'aerial_dates'", expected="(B, D, 3) int64")
        doy = batch[key][:, 0, 1].to(torch.float64)
        if bool(((doy < 1) | (doy > 366)).any()):
            raise DataError(f"batch[{key!r}] day of year", expected="1..366", found=doy.tolist())
        return doy[:, None]
    if condition == "position":
        if "position" in batch:
            pos = torch.as_tensor(batch["position"], dtype=torch.float64)
            if pos.ndim != 2 or pos.shape[1] != 2:
                raise DataError(
                    "batch['position']", expected="(B, 2) metres", found=tuple(pos.shape)
                )
            return torch.cat([pos, torch.zeros(len(pos), 1, dtype=torch.float64)], 1)
        rows = [[p.col * patch_size_m, -p.row * patch_size_m, float(stable_code(p.roi_key))]
                for p in _patch_ids(batch)]  # fmt: skip
        return torch.tensor(rows, dtype=torch.float64)
    if condition == "labels":
        if label_key not in batch:
            raise DataError(
                f"batch field {label_key!r}", expected="(B, H, W) label map", found="none"
            )
        return label_histogram(batch[label_key], n_label_classes, name=label_key)
    raise DataError("CCL-K condition read from a batch", expected=CONDITIONS[:4], found=condition)


def condition_kernel(z: Tensor, condition: str, bandwidth: float | None = None) -> Tensor:
    """K_Z (b, b) float64 for gathered conditions z; the diagonal is set to 1 (official code)."""
    if condition == "domain":
        K = indicator_kernel(z[:, 0])
    elif condition == "doy":
        K = periodic_kernel(z[:, 0], 30.0 if bandwidth is None else bandwidth)
    elif condition == "position":
        same = indicator_kernel(z[:, 2])
        d2 = _sq_dists(z[:, :2])
        bw = median_bandwidth(d2, same > 0) if bandwidth is None else float(bandwidth)
        K = torch.exp(-d2 / (2 * bw * bw)) * same
    elif condition == "labels":
        K = cosine_kernel(z)
    elif condition == "embedding":
        K = rbf_kernel(z, bandwidth)[0]
    else:
        raise DataError("CCL-K condition", expected=CONDITIONS, found=condition)
    return K.fill_diagonal_(1.0)


# -- weights ---------------------------------------------------------------------------------------
def ridge_weights(K: Tensor, lam: float, *, grad: bool = False) -> Tensor:
    """W = (K + λI)⁻¹ K (b, b) in float64 by `torch.linalg.solve`; no autograd unless `grad`."""
    if not lam > 0:
        raise DataError("CCL-K lambda", expected="> 0", found=lam)
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        K64 = (K if grad else K.detach()).to(torch.float64)
        eye = torch.eye(K64.shape[0], dtype=torch.float64, device=K64.device)
        return torch.linalg.solve(K64 + lam * eye, K64)


def anchor_weights(
    W: Tensor, offset: int, n: int, exclude: Tensor | None = None, threshold: float = 1e-6
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weights W0 (n, b) of the local anchors offset..offset+n: row i = column offset+i of W with
    the anchor's own entry zeroed, entries < `threshold` (negative ones too) and `exclude`d pairs
    set to 0. Stats: mean own weight, mean row mass of W0, fraction of negative off-diagonal W."""
    Wt = W.T[offset : offset + n]
    own = torch.zeros_like(Wt, dtype=torch.bool)
    own[torch.arange(n), offset + torch.arange(n)] = True
    W0 = Wt.masked_fill(own | (Wt < threshold), 0.0)
    if exclude is not None:
        W0 = W0.masked_fill(exclude, 0.0)
    mass = W0.sum(1)
    off = Wt[~own]
    stats = {
        "w_diag": Wt[own].mean(),
        "w_offdiag_mass": mass.mean(),
        "w_neg_frac": (off < 0).to(torch.float64).mean() if off.numel() else Wt.new_zeros(()),
    }
    return W0, stats


def cclk_rows(
    s_xy: Tensor,
    s_xx: Tensor,
    w0: Tensor,
    variant: str,
    offset: int = 0,
    exclude: Tensor | None = None,
) -> Tensor:
    """Per-anchor CCL-K losses (n,) from scaled similarities s_xy, s_xx (n, b) of local anchors x_i
    to all y_j / x_j and weights w0 (n, b) (`anchor_weights`), in the log domain:

    * fair / hard: −s_ii + log(e^{s_ii} + (b−1)([K_XY W0]_ii + [K_XX W0]_ii))
    * weak: p_i = [K_XY W0]_ii + [K_XX W0]_ii;
      −log p_i + log(p_i + Σ_j K_XY[i,j] + Σ_{j≠i} K_XX[i,j])
      (`exclude`d pairs, e.g. same-ROI, are left out of the weak denominator).

    Rows whose weights are all 0 come out finite but meaningless: replace them (`guard`)."""
    if variant not in VARIANTS:
        raise DataError("CCL-K variant", expected=VARIANTS, found=variant)
    n, b = s_xy.shape
    ar = torch.arange(n, device=s_xy.device)
    pos = s_xy[ar, offset + ar]
    own = torch.zeros_like(s_xy, dtype=torch.bool)
    own[ar, offset + ar] = True
    s_xx = s_xx.masked_fill(own, float("-inf"))
    has = (w0 > 0).any(1, keepdim=True)
    logw = torch.where(has, w0.to(s_xy.dtype).log(), torch.zeros_like(s_xy))
    if variant in ("fair", "hard"):
        lw = logw + math.log(max(b - 1, 1))
        den = torch.logsumexp(torch.cat([pos[:, None], s_xy + lw, s_xx + lw], 1), 1)
        return den - pos
    log_p = torch.logsumexp(torch.cat([s_xy + logw, s_xx + logw], 1), 1)
    if exclude is not None:
        s_xy, s_xx = (
            s_xy.masked_fill(exclude, float("-inf")),
            s_xx.masked_fill(exclude, float("-inf")),
        )
    den = torch.logsumexp(torch.cat([log_p[:, None], s_xy, s_xx], 1), 1)
    return den - log_p
