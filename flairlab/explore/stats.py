"""Streaming, mergeable band statistics (pure numpy; `flairlab.explore.scale` runs them on data).

Every accumulator here has `update(...)` (add some pixels) and `merge(other)` (add another
accumulator, in place). Merging is associative and commutative: counts and histograms exactly,
means/variances/co-moments up to float64 rounding (Chan et al.'s pairwise update). The memory of
an accumulator depends on bands × bins × groups, never on how many pixels or patches went in.

* `BandStats` — per band, optionally per group (e.g. COSIA class): histogram on fixed bin edges
  with under/overflow counts, count / mean / M2 (variance), min / max, non-finite ("invalid")
  count, and optionally the band co-moment matrix (→ correlation) over pixels valid in all bands.
* `ClassCounts` — label pixel counts per (split, domain).
* `CloudStats` — Sentinel-2 snow/cloud probabilities summarised per acquisition date.
* `ProfileStats` — per class and period, fixed-bin histograms of a per-pixel variable (NDVI,
  S1 VV/VH in dB); medians and quartiles are read from the histograms (`hist_quantile`), so they
  stay mergeable — within one bin width of the order statistic (interpolated inside the bin).

Histogram convention (numpy's): `bins` equal bins on `[lo, hi]`, half-open `[e_i, e_i+1)` except
the last, which is closed; `under` counts values `< lo`, `over` values `> hi`. With
`transform="db"` values are `10·log10(x)` of linear power and `x <= 0` counts as invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from flairlab.data.errors import DataError

_COUNT_PATH_MAX_RANGE = 1 << 16  # integer data with at most this many distinct values: bincount


@dataclass(frozen=True)
class HistSpec:
    """Fixed histogram bins: `bins` equal bins on `[lo, hi]` of the transformed values."""

    lo: float
    hi: float
    bins: int
    transform: Literal["none", "db"] = "none"

    @classmethod
    def from_modality(cls, modality: object) -> HistSpec:
        h = modality.histogram  # type: ignore[attr-defined]
        return cls(float(h.min), float(h.max), int(h.bins), h.transform)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transformed float64 values; non-finite marks invalid (db: `x <= 0` → -inf/NaN)."""
        x = np.asarray(x, dtype=np.float64)
        if self.transform == "db":
            with np.errstate(divide="ignore", invalid="ignore"):
                return 10.0 * np.log10(x)
        return x


def bin_index(t: np.ndarray, spec: HistSpec) -> np.ndarray:
    """Shifted bin index of finite values `t`: 0 = under, 1..bins = bins, bins+1 = over.

    Matches `np.histogram(t, spec.edges)` exactly: `floor` of the scaled value, except for
    values within ~1e-9 bin of an edge, which get numpy's own edge comparison.
    """
    B = spec.bins
    f = t - spec.lo
    f *= B / (spec.hi - spec.lo)
    fl = np.floor(f)
    f -= fl  # fractional part
    near = f < 1e-9
    near |= f > 1 - 1e-9
    np.clip(fl, -1, B, out=fl)
    idx = fl.astype(np.intp)
    idx += 1
    if near.any():
        idx[near] = _bin_index_exact(t[near], spec)
    return idx


def _bin_index_exact(t: np.ndarray, spec: HistSpec) -> np.ndarray:
    """`bin_index` with numpy's edge correction on every value (used near edges)."""
    edges, B = spec.edges, spec.bins
    under, over = t < spec.lo, t > spec.hi
    tc = np.clip(t, spec.lo, spec.hi)
    idx = np.minimum(((tc - spec.lo) * (B / (spec.hi - spec.lo))).astype(np.intp), B - 1)
    idx[tc < edges[idx]] -= 1
    idx[(tc >= edges[idx + 1]) & (idx != B - 1)] += 1
    idx += 1
    idx[under] = 0
    idx[over] = B + 1
    return idx


def chan_merge(na, ma, Ma, nb, mb, Mb):
    """Merge (count, mean, M2) pairs elementwise (Chan et al. 1979). M may be (..., C, C)."""
    na, nb = np.asarray(na, np.float64), np.asarray(nb, np.float64)
    n = na + nb
    frac = np.divide(nb, n, out=np.zeros_like(n), where=n > 0)
    delta = mb - ma
    mean = ma + delta * frac
    w = na * frac  # = na*nb/n
    if np.ndim(Ma) > np.ndim(ma):  # co-moment matrices
        M = Ma + Mb + delta[..., :, None] * delta[..., None, :] * w[..., None, None]
    else:
        M = Ma + Mb + delta * delta * w
    return mean, M


class BandStats:
    """Statistics of `n_bands` bands in `n_groups` groups. Arrays are `(G, C[, bins])`.

    `update(x, codes)`: `x` is `(C, N)` raw values (any numeric dtype), `codes` an optional
    `(N,)` int array of group ids in `[0, G)`. `comoments=True` also keeps the `(C, C)`
    co-moment matrix over pixels valid in every band (only for `n_groups == 1`).
    """

    def __init__(self, n_bands: int, spec: HistSpec, n_groups: int = 1, comoments: bool = False):
        if comoments and n_groups != 1:
            raise ValueError("co-moments are kept only for n_groups == 1")
        G, C, B = n_groups, n_bands, spec.bins
        self.spec, self.n_groups, self.n_bands = spec, G, C
        self.count = np.zeros((G, C), np.int64)
        self.mean = np.zeros((G, C))
        self.m2 = np.zeros((G, C))
        self.min = np.full((G, C), np.inf)
        self.max = np.full((G, C), -np.inf)
        self.hist = np.zeros((G, C, B), np.int64)
        self.under = np.zeros((G, C), np.int64)
        self.over = np.zeros((G, C), np.int64)
        self.invalid = np.zeros((G, C), np.int64)
        self.comoments = comoments
        self.co_n = 0
        self.co_mean = np.zeros(C)
        self.co_m2 = np.zeros((C, C))

    # -- updates ------------------------------------------------------------------------------
    def update(self, x: np.ndarray, codes: np.ndarray | None = None) -> BandStats:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] != self.n_bands:
            raise ValueError(f"expected x of shape ({self.n_bands}, N), got {x.shape}")
        if codes is not None:
            codes = np.asarray(codes, dtype=np.intp).ravel()
            if codes.shape[0] != x.shape[1]:
                raise ValueError(f"codes has {codes.shape[0]} entries, x has {x.shape[1]} pixels")
            if codes.size and (codes.min() < 0 or codes.max() >= self.n_groups):
                raise ValueError(f"group codes must lie in [0, {self.n_groups})")
        elif self.n_groups != 1:
            raise ValueError("codes are required when n_groups > 1")
        if x.shape[1] == 0:
            return self
        if self._use_counts(x):
            self._update_counts(x, codes)
        else:
            self._update_float(x, codes)
        if self.comoments:
            self.update_comoments(x)
        return self

    def _use_counts(self, x: np.ndarray) -> bool:
        if x.dtype.kind not in "ui" or x.dtype.itemsize > 2:
            return False
        if x.dtype == np.uint8:
            return 256 * self.n_groups <= max(x.shape[1], 4096)
        rng = int(x.max()) - int(x.min()) + 1
        return rng * self.n_groups <= max(x.shape[1], 4096) and rng <= _COUNT_PATH_MAX_RANGE

    def _update_counts(self, x: np.ndarray, codes: np.ndarray | None) -> None:
        """Integer data: exact value counts by bincount, then moments/histogram from them."""
        G, B = self.n_groups, self.spec.bins
        v0, R = (0, 256) if x.dtype == np.uint8 else (int(x.min()), int(x.max()) - int(x.min()) + 1)
        values = np.arange(v0, v0 + R)
        t = self.spec.apply(values)
        ok = np.isfinite(t)
        shifted = np.zeros(R, np.intp)
        shifted[ok] = bin_index(t[ok], self.spec)
        tv = np.where(ok, t, 0.0)
        for b in range(self.n_bands):
            idx = x[b] if v0 == 0 and x.dtype.kind == "u" else x[b].astype(np.intp) - v0
            if codes is not None:
                idx = codes * R + idx
            cnt = np.bincount(idx, minlength=G * R).reshape(G, R)
            valid = cnt[:, ok]
            n = valid.sum(1)
            mean = np.divide(valid @ tv[ok], n, out=np.zeros(G), where=n > 0)
            m2 = (valid * (tv[ok][None, :] - mean[:, None]) ** 2).sum(1)
            self._merge_moments(b, n, mean, m2)
            self.invalid[:, b] += cnt[:, ~ok].sum(1)
            present = valid > 0
            anyp = present.any(1)
            vals = tv[ok]  # ascending: values ascend and both transforms are increasing
            lo = np.where(anyp, vals[np.argmax(present, 1)], np.inf)
            hi = np.where(anyp, vals[vals.size - 1 - np.argmax(present[:, ::-1], 1)], -np.inf)
            self.min[:, b] = np.minimum(self.min[:, b], lo)
            self.max[:, b] = np.maximum(self.max[:, b], hi)
            full = np.zeros((G, B + 2), np.int64)
            for g in np.flatnonzero(anyp):
                full[g] = np.bincount(shifted[ok], weights=valid[g], minlength=B + 2).astype(
                    np.int64
                )
            self._add_hist(b, full)

    def _update_float(self, x: np.ndarray, codes: np.ndarray | None) -> None:
        G, B = self.n_groups, self.spec.bins
        t = self.spec.apply(x)
        finite = np.isfinite(t)
        for b in range(self.n_bands):
            tb, ok = t[b], finite[b]
            cb = codes
            if not ok.all():
                self.invalid[:, b] += (
                    np.bincount(codes[~ok], minlength=G) if codes is not None else (~ok).sum()
                )
                tb = tb[ok]
                cb = None if codes is None else codes[ok]
            if tb.size == 0:
                continue
            idx = bin_index(tb, self.spec)
            if cb is None:
                n = np.array([tb.size])
                mean = np.array([tb.mean()])
                d = tb - mean[0]
                m2 = np.array([np.einsum("i,i->", d, d)])
                lo, hi = np.array([tb.min()]), np.array([tb.max()])
                full = np.bincount(idx, minlength=B + 2)[None, :]
            else:
                n = np.bincount(cb, minlength=G)
                s = np.bincount(cb, weights=tb, minlength=G)
                mean = np.divide(s, n, out=np.zeros(G), where=n > 0)
                m2 = np.bincount(cb, weights=(tb - mean[cb]) ** 2, minlength=G)
                lo, hi = np.full(G, np.inf), np.full(G, -np.inf)
                np.minimum.at(lo, cb, tb)
                np.maximum.at(hi, cb, tb)
                full = np.bincount(cb * (B + 2) + idx, minlength=G * (B + 2)).reshape(G, B + 2)
            self._merge_moments(b, n, mean, m2)
            self.min[:, b] = np.minimum(self.min[:, b], lo)
            self.max[:, b] = np.maximum(self.max[:, b], hi)
            self._add_hist(b, full)

    def update_comoments(self, x: np.ndarray) -> None:
        """Add the `(C, C)` co-moments of pixels finite in every band (after the transform)."""
        t = self.spec.apply(x)
        ok = np.isfinite(t).all(0)
        if not ok.all():
            t = t[:, ok]
        n = t.shape[1]
        if n == 0:
            return
        m = t.mean(1)
        d = t - m[:, None]
        self.co_mean, self.co_m2 = chan_merge(self.co_n, self.co_mean, self.co_m2, n, m, d @ d.T)
        self.co_n += n

    def _merge_moments(self, b: int, n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        self.mean[:, b], self.m2[:, b] = chan_merge(
            self.count[:, b], self.mean[:, b], self.m2[:, b], n, mean, m2
        )
        self.count[:, b] += n.astype(np.int64)

    def _add_hist(self, b: int, full: np.ndarray) -> None:
        self.under[:, b] += full[:, 0]
        self.hist[:, b] += full[:, 1:-1]
        self.over[:, b] += full[:, -1]

    # -- merging ------------------------------------------------------------------------------
    def merge(self, other: BandStats) -> BandStats:
        """Add `other` into `self` (in place) and return `self`."""
        if (other.spec, other.n_groups, other.n_bands, other.comoments) != (
            self.spec,
            self.n_groups,
            self.n_bands,
            self.comoments,
        ):
            raise ValueError("cannot merge BandStats with different bins, groups or bands")
        self.mean, self.m2 = chan_merge(
            self.count, self.mean, self.m2, other.count, other.mean, other.m2
        )
        self.count = self.count + other.count
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)
        for k in ("hist", "under", "over", "invalid"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        if self.comoments:
            self.co_mean, self.co_m2 = chan_merge(
                self.co_n, self.co_mean, self.co_m2, other.co_n, other.co_mean, other.co_m2
            )
            self.co_n += other.co_n
        return self

    def collapse(self) -> BandStats:
        """One group holding the union of all groups (co-moments are not kept)."""
        out = BandStats(self.n_bands, self.spec, 1)
        for g in range(self.n_groups):
            out.merge(self.group(g))
        return out

    def group(self, g: int) -> BandStats:
        """Group `g` as a one-group BandStats (a copy)."""
        out = BandStats(self.n_bands, self.spec, 1)
        for k in ("count", "mean", "m2", "min", "max", "hist", "under", "over", "invalid"):
            setattr(out, k, getattr(self, k)[g : g + 1].copy())
        return out

    # -- results ------------------------------------------------------------------------------
    def var(self, ddof: int = 0) -> np.ndarray:
        """Variance `(G, C)` (NaN where fewer than `ddof + 1` values)."""
        d = self.count - ddof
        return np.divide(self.m2, d, out=np.full(self.m2.shape, np.nan), where=d > 0)

    def std(self, ddof: int = 0) -> np.ndarray:
        return np.sqrt(self.var(ddof))

    def corr(self) -> np.ndarray:
        """Pearson correlation `(C, C)` of the transformed values (NaN for constant bands)."""
        if not self.comoments:
            raise ValueError("this BandStats was built without comoments=True")
        d = np.sqrt(np.diag(self.co_m2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.co_m2 / np.outer(d, d)


def hist_quantile(
    counts: np.ndarray,
    spec: HistSpec,
    q: float,
    under: np.ndarray | int = 0,
    over: np.ndarray | int = 0,
) -> np.ndarray:
    """Quantile `q` from histograms `(..., bins)` by linear interpolation inside the bin.

    The estimate lies in the bin holding the `ceil(q·n)`-th smallest value, so it is within one
    bin width of it (and of numpy's quantile when neighbouring values are that close). NaN where
    there is no data or the quantile falls in the under/overflow (outside `[lo, hi]`).
    """
    counts = np.asarray(counts, np.float64)
    under = np.broadcast_to(np.asarray(under, np.float64), counts.shape[:-1])
    over = np.broadcast_to(np.asarray(over, np.float64), counts.shape[:-1])
    total = under + counts.sum(-1) + over
    target = q * total
    cum = under[..., None] + np.cumsum(counts, -1)
    k = np.minimum((cum < target[..., None]).sum(-1), spec.bins - 1)
    before = (
        np.take_along_axis(cum, k[..., None], -1)[..., 0]
        - np.take_along_axis(counts, k[..., None], -1)[..., 0]
    )
    ck = np.take_along_axis(counts, k[..., None], -1)[..., 0]
    width = (spec.hi - spec.lo) / spec.bins
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip(np.where(ck > 0, (target - before) / ck, 0.0), 0.0, 1.0)
    out = spec.lo + (k + frac) * width
    bad = (total == 0) | (target < under) | (target > under + counts.sum(-1))
    return np.where(bad, np.nan, out)


def resample_labels(
    labels: np.ndarray,
    shape: tuple[int, int],
    n_classes: int,
    method: Literal["majority", "nearest"] = "majority",
) -> np.ndarray:
    """Resample a `(H, W)` class map to `shape` covering the same footprint.

    `majority`: each target pixel takes the most frequent class among the source pixels whose
    centre falls in it (ties → smallest id); when the target is not coarser, this is `nearest`
    (the source pixel under each target pixel centre). Labels must lie in `[0, n_classes)`.
    """
    H, W = labels.shape
    h, w = shape
    if (h, w) == (H, W):
        return labels
    if method == "nearest" or h > H or w > W:
        rows = ((np.arange(h) + 0.5) * H / h).astype(np.intp)
        cols = ((np.arange(w) + 0.5) * W / w).astype(np.intp)
        return labels[np.ix_(rows, cols)]
    ty = ((np.arange(H) + 0.5) * h / H).astype(np.intp)
    tx = ((np.arange(W) + 0.5) * w / W).astype(np.intp)
    cell = (ty[:, None] * w + tx[None, :]) * n_classes + labels.astype(np.intp)
    counts = np.bincount(cell.ravel(), minlength=h * w * n_classes).reshape(h * w, n_classes)
    return counts.argmax(1).reshape(h, w).astype(labels.dtype)


def check_labels(labels: np.ndarray, n_classes: int, path: object = None, what: str = "COSIA"):
    """Raise DataError if labels are not integers in `[0, n_classes)` (never remap silently)."""
    if labels.dtype.kind not in "ui":
        raise DataError(f"{what} labels must be integers", path=path, found=labels.dtype)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = np.unique(labels[(labels < 0) | (labels >= n_classes)])[:5].tolist()
        raise DataError(
            f"{what} label values out of range",
            path=path,
            expected=f"0..{n_classes - 1}",
            found=bad,
        )
