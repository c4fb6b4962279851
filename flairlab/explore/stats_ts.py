"""Mergeable label counts and time-series statistics: class pixels, S2 clouds, temporal profiles.

Like `flairlab.explore.stats.BandStats`, each accumulator has `update(...)` and an in-place,
associative `merge(other)`, and its memory grows with the number of groups (splits × domains,
distinct dates or periods, classes, bins) — never with the number of patches.

Temporal profiles keep, per variable, period and class, a histogram on fixed bins (NDVI on
[-1, 1]; S1 VV/VH in dB on the catalog's bins). Medians and quartiles are read from those
histograms (`flairlab.explore.stats.hist_quantile`) so that partial results merge exactly; each lies
within one bin width (0.02 for NDVI, 0.5 dB for S1 with the default catalog) of the matching
order statistic of the pixels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from flairlab.data.errors import DataError
from flairlab.explore.stats import HistSpec, bin_index, hist_quantile

Period = Literal["date", "month"]
NDVI_SPEC = HistSpec(-1.0, 1.0, 100)


def period_keys(dates: np.ndarray, period: Period) -> np.ndarray:
    """`'YYYY-MM-DD'` per date (`date`), or the month of year `'01'..'12'` pooled over years."""
    s = np.datetime_as_string(np.asarray(dates).astype("datetime64[D]"), unit="D")
    if period == "date":
        return s
    if period == "month":
        return np.array([d[5:7] for d in s])
    raise ValueError(f"period must be 'date' or 'month', got {period!r}")


def _add(table: dict, key, value: np.ndarray) -> None:
    if key in table:
        table[key] = table[key] + value
    else:
        table[key] = value.copy()


class ClassCounts:
    """Label pixel counts per `(split, domain)`: `counts[(split, domain)]` is `(n_classes,)`."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self.counts: dict[tuple[str, str], np.ndarray] = {}

    def update(self, labels: np.ndarray, split: str, domain: str) -> ClassCounts:
        """Add a label map whose values were already checked to lie in `[0, n_classes)`."""
        c = np.bincount(np.asarray(labels).ravel(), minlength=self.n_classes).astype(np.int64)
        if c.size != self.n_classes:
            raise ValueError(f"label values exceed n_classes={self.n_classes}")
        _add(self.counts, (str(split), str(domain)), c)
        return self

    def merge(self, other: ClassCounts) -> ClassCounts:
        if other.n_classes != self.n_classes:
            raise ValueError("cannot merge ClassCounts with different numbers of classes")
        for k, v in other.counts.items():
            _add(self.counts, k, v)
        return self

    def to_frame(self, names: list[str] | None = None) -> pd.DataFrame:
        """Tidy table: split, domain, class_id, class_name, pixels (zero counts kept)."""
        rows = [
            (s, d, i, names[i] if names else str(i), int(n))
            for (s, d), c in sorted(self.counts.items())
            for i, n in enumerate(c)
        ]
        return pd.DataFrame(rows, columns=["split", "domain", "class_id", "class_name", "pixels"])


class CloudStats:
    """Sentinel-2 snow/cloud probabilities (0–100 %) summarised per acquisition date.

    A pixel is cloudy if cloud > `max_cloud`, snowy if snow > `max_snow`; a patch-date is clean
    if at least `(1 - max_frac_cover)` of its pixels are neither (the official loader's rule,
    defaults 1 %, 1 %, 0.05; spec §9.3). `frac_hist` histograms the cloudy fraction of every
    patch-date on `[0, 1]`.
    """

    FIELDS = ("patch_dates", "pixels", "cloudy", "snowy", "clean_dates", "cloud_sum", "snow_sum")

    def __init__(
        self,
        max_cloud: float = 1,
        max_snow: float = 1,
        max_frac_cover: float = 0.05,
        frac_bins: int = 20,
    ):
        self.max_cloud, self.max_snow, self.max_frac_cover = max_cloud, max_snow, max_frac_cover
        self.frac_spec = HistSpec(0.0, 1.0, frac_bins)
        self.by_date: dict[str, np.ndarray] = {}
        self.frac_hist = np.zeros(frac_bins, np.int64)

    def _params(self) -> tuple:
        return (self.max_cloud, self.max_snow, self.max_frac_cover, self.frac_spec)

    def update(self, mask: np.ndarray, dates: np.ndarray, path: object = None) -> CloudStats:
        """`mask` is `(T, 2, H, W)` (snow, cloud) for the `T` acquisition `dates`."""
        mask = np.asarray(mask)
        if mask.ndim != 4 or mask.shape[1] != 2 or mask.shape[0] != len(dates):
            raise DataError(
                "S2 snow/cloud mask shape",
                path=path,
                expected=f"({len(dates)}, 2, H, W)",
                found=mask.shape,
            )
        if mask.size and (mask.min() < 0 or mask.max() > 100):
            raise DataError(
                "S2 snow/cloud probabilities out of range",
                path=path,
                expected="0..100",
                found=f"{mask.min()}..{mask.max()}",
            )
        T = mask.shape[0]
        snow = mask[:, 0].reshape(T, -1).astype(np.float64)
        cloud = mask[:, 1].reshape(T, -1).astype(np.float64)
        n = snow.shape[1]
        cloudy, snowy = cloud > self.max_cloud, snow > self.max_snow
        clean = (~cloudy & ~snowy).sum(1)
        rows = np.stack(
            [
                np.ones(T),
                np.full(T, n),
                cloudy.sum(1),
                snowy.sum(1),
                clean >= (1 - self.max_frac_cover) * n,
                cloud.sum(1),
                snow.sum(1),
            ],
            1,
        ).astype(np.float64)
        for key, row in zip(period_keys(dates, "date"), rows, strict=True):
            _add(self.by_date, str(key), row)
        frac = cloudy.sum(1) / max(n, 1)
        idx = bin_index(frac, self.frac_spec)  # fractions lie in [0, 1]: no under/overflow
        self.frac_hist += np.bincount(idx - 1, minlength=self.frac_spec.bins)
        return self

    def merge(self, other: CloudStats) -> CloudStats:
        if other._params() != self._params():
            raise ValueError("cannot merge CloudStats with different thresholds or bins")
        for k, v in other.by_date.items():
            _add(self.by_date, k, v)
        self.frac_hist = self.frac_hist + other.frac_hist
        return self

    def summary(self) -> dict[str, float]:
        """Totals over all dates: dates, patch-dates, cloudy/snowy pixel shares, clean share."""
        if not self.by_date:
            return dict(
                dates=0,
                patch_dates=0,
                cloudy_frac=float("nan"),
                snowy_frac=float("nan"),
                clean_date_frac=float("nan"),
            )
        t = np.sum(list(self.by_date.values()), 0)
        return dict(
            dates=len(self.by_date),
            patch_dates=int(t[0]),
            cloudy_frac=t[2] / t[1],
            snowy_frac=t[3] / t[1],
            clean_date_frac=t[4] / t[0],
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per date: patch_dates, cloudy_frac, snowy_frac, mean cloud/snow %,
        clean_date_frac (share of that date's patches passing the clean rule)."""
        cols = [
            "date",
            "patch_dates",
            "pixels",
            "cloudy_frac",
            "snowy_frac",
            "mean_cloud_pct",
            "mean_snow_pct",
            "clean_date_frac",
        ]
        if not self.by_date:
            return pd.DataFrame(columns=cols)
        keys = sorted(self.by_date)
        a = np.stack([self.by_date[k] for k in keys])
        pd_, px = a[:, 0], a[:, 1]
        df = pd.DataFrame(
            {
                "date": pd.to_datetime(keys),
                "patch_dates": pd_.astype(np.int64),
                "pixels": px.astype(np.int64),
                "cloudy_frac": a[:, 2] / px,
                "snowy_frac": a[:, 3] / px,
                "mean_cloud_pct": a[:, 5] / px,
                "mean_snow_pct": a[:, 6] / px,
                "clean_date_frac": a[:, 4] / pd_,
            }
        )
        return df[cols]


class ProfileStats:
    """Per variable, period and class: histogram `(n_classes, bins + 2)` (under, bins, over).

    `specs` maps a variable name to its `HistSpec` (the transform is applied in `update`).
    """

    def __init__(self, specs: dict[str, HistSpec], n_classes: int, period: Period = "month"):
        period_keys(np.array(["2020-01-01"], "datetime64[D]"), period)  # validate early
        self.specs, self.n_classes, self.period = dict(specs), n_classes, period
        self.hists: dict[str, dict[str, np.ndarray]] = {v: {} for v in specs}

    def update(
        self,
        var: str,
        values: np.ndarray,
        codes: np.ndarray,
        dates: np.ndarray,
        valid: np.ndarray | None = None,
    ) -> ProfileStats:
        """`values` `(T, N)` raw, `codes` `(N,)` class ids, `dates` `(T,)`, `valid` `(T, N)`."""
        spec, G, B2 = self.specs[var], self.n_classes, self.specs[var].bins + 2
        t = spec.apply(values)
        ok = np.isfinite(t) if valid is None else np.isfinite(t) & valid
        keys = period_keys(dates, self.period)
        uniq, inv = np.unique(keys, return_inverse=True)
        P = len(uniq)
        T, N = t.shape
        pidx = np.broadcast_to(inv.reshape(T, 1), (T, N))[ok]
        cidx = np.broadcast_to(np.asarray(codes, np.intp).reshape(1, N), (T, N))[ok]
        comb = (pidx * G + cidx) * B2 + bin_index(t[ok], spec)
        cnt = np.bincount(comb, minlength=P * G * B2).reshape(P, G, B2)
        for j, key in enumerate(uniq):
            _add(self.hists[var], str(key), cnt[j])
        return self

    def merge(self, other: ProfileStats) -> ProfileStats:
        if (other.specs, other.n_classes, other.period) != (
            self.specs,
            self.n_classes,
            self.period,
        ):
            raise ValueError("cannot merge ProfileStats with different variables or periods")
        for var, table in other.hists.items():
            for k, v in table.items():
                _add(self.hists[var], k, v)
        return self

    def to_frame(self, names: list[str] | None = None, min_pixels: int = 1) -> pd.DataFrame:
        """Tidy table: variable, period, class_id, class_name, pixels, q25, median, q75."""
        rows = []
        for var, table in self.hists.items():
            spec = self.specs[var]
            for key in sorted(table):
                h = table[key]
                n = h.sum(1)
                qs = [
                    hist_quantile(h[:, 1:-1], spec, q, h[:, 0], h[:, -1]) for q in (0.25, 0.5, 0.75)
                ]
                for c in np.flatnonzero(n >= min_pixels):
                    rows.append(
                        (
                            var,
                            key,
                            int(c),
                            names[c] if names else str(c),
                            int(n[c]),
                            qs[0][c],
                            qs[1][c],
                            qs[2][c],
                        )
                    )
        cols = ["variable", "period", "class_id", "class_name", "pixels", "q25", "median", "q75"]
        return pd.DataFrame(rows, columns=cols)
