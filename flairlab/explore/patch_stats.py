"""Statistics of one patch: every accumulator of `flairlab.explore.stats` fed from its files.

`patch_stats(row, dates, config)` reads the patch's files (`flairlab.data.reader.read_raster`),
checks its COSIA labels (a value > 18 is a DataError naming the file), resamples them to each
modality's grid (majority of the 0.2 m pixels under each coarser pixel,
`flairlab.explore.stats.resample_labels`) and updates a `DatasetStats`: band statistics overall /
per domain / per split / per class, co-moments, COSIA and LPIS level-1 pixel counts, S2 snow/cloud
per date and the NDVI and S1 temporal profiles. `DatasetStats.merge` adds two of them
(`flairlab.explore.scale` runs this at scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.reader import read_raster
from flairlab.explore.stats import BandStats, HistSpec, check_labels, resample_labels
from flairlab.explore.stats_ts import NDVI_SPEC, ClassCounts, CloudStats, Period, ProfileStats

IMAGE_MODALITIES = (
    "AERIAL_RGBI",
    "AERIAL-RLT_PAN",
    "DEM_ELEV",
    "SPOT_RGBI",
    "SENTINEL2_TS",
    "SENTINEL1-ASC_TS",
    "SENTINEL1-DESC_TS",
)
COSIA, LPIS, S2, S2_MASK = (
    "AERIAL_LABEL-COSIA",
    "ALL_LABEL-LPIS",
    "SENTINEL2_TS",
    "SENTINEL2_MSK-SC",
)
S1 = {"s1_asc": "SENTINEL1-ASC_TS", "s1_desc": "SENTINEL1-DESC_TS"}


@dataclass(frozen=True)
class StatsConfig:
    """What `compute_stats` accumulates (all of it mergeable; see `flairlab.explore.stats`)."""

    modalities: tuple[str, ...] = IMAGE_MODALITIES  # band statistics for these
    by: tuple[str, ...] = ("domain", "split", "class")  # extra groupings of the band statistics
    correlation: bool = True  # band co-moments (overall, per domain, per split)
    class_resample: Literal["majority", "nearest"] = "majority"  # COSIA → modality grid
    class_counts: bool = True  # COSIA (and LPIS level 1) pixels per split/domain
    clouds: bool = True  # S2 snow/cloud per date
    profiles: bool = True  # NDVI and S1 VV/VH histograms per class and period
    period: Period = "month"  # profile period: "date" or "month" (of year, pooled)
    max_cloud: float = 1  # % — pixel-level cloud threshold (official default, spec §9.3)
    max_snow: float = 1  # % — pixel-level snow threshold
    max_frac_cover: float = 0.05  # a date is clean when ≥ 95 % of its pixels are clean
    catalog_path: str | None = None  # None: the default catalog


@dataclass
class DatasetStats:
    """Merged statistics. `bands[modality][group]` with group `all`, `domain:<D>`, `split:<S>`
    (one-group BandStats with co-moments) or `class` (one group per COSIA class)."""

    config: StatsConfig
    bands: dict[str, dict[str, BandStats]] = field(default_factory=dict)
    class_counts: dict[str, ClassCounts] = field(default_factory=dict)  # cosia, lpis_l1
    clouds: CloudStats | None = None
    profiles: ProfileStats | None = None
    n_patches: int = 0
    missing: dict[str, int] = field(default_factory=dict)  # modality → patches without a file

    def merge(self, other: DatasetStats) -> DatasetStats:
        """Add `other` into `self` (in place) and return `self`."""
        for mod, groups in other.bands.items():
            mine = self.bands.setdefault(mod, {})
            for key, st in groups.items():
                mine[key] = mine[key].merge(st) if key in mine else st
        for name, cc in other.class_counts.items():
            self.class_counts[name] = (
                self.class_counts[name].merge(cc) if name in self.class_counts else cc
            )
        for attr in ("clouds", "profiles"):
            a, b = getattr(self, attr), getattr(other, attr)
            setattr(self, attr, b if a is None else (a if b is None else a.merge(b)))
        self.n_patches += other.n_patches
        for k, v in other.missing.items():
            self.missing[k] = self.missing.get(k, 0) + v
        return self

    def groups(self, modality: str, by: str) -> dict[str, BandStats]:
        """`{value: BandStats}` for `by` in domain/split/class (class keys are class ids)."""
        mod = _catalog(self.config).modality(modality).name
        table = self.bands.get(mod, {})
        if by == "class":
            st = table.get("class")
            return (
                {}
                if st is None
                else {str(g): st.group(g) for g in range(st.n_groups) if st.count[g].sum() > 0}
            )
        if by == "all":
            return {"all": table["all"]} if "all" in table else {}
        return {k.split(":", 1)[1]: v for k, v in table.items() if k.startswith(by + ":")}

    def summary(self) -> pd.DataFrame:
        """One row per modality and band (group `all`): count, mean, std, min, max, out-of-range."""
        cat = _catalog(self.config)
        rows = []
        for mod, table in self.bands.items():
            st, m = table.get("all"), cat.modality(mod)
            if st is None:
                continue
            for b, name in enumerate(m.band_names):
                rows.append(
                    dict(
                        modality=mod,
                        band=name,
                        space=st.spec.transform,
                        count=int(st.count[0, b]),
                        mean=st.mean[0, b],
                        std=st.std()[0, b],
                        min=st.min[0, b],
                        max=st.max[0, b],
                        under=int(st.under[0, b]),
                        over=int(st.over[0, b]),
                        invalid=int(st.invalid[0, b]),
                    )
                )
        return pd.DataFrame(rows)


def _catalog(config: StatsConfig) -> Catalog:
    return load_catalog(config.catalog_path)


def _as_channels(arr: np.ndarray) -> np.ndarray:
    """`(C, H, W)` or `(T, C, H, W)` → `(C, N)` (all dates pooled)."""
    if arr.ndim == 4:
        return arr.transpose(1, 0, 2, 3).reshape(arr.shape[1], -1)
    return arr.reshape(arr.shape[0], -1)


def _ndvi(s2: np.ndarray, names: list[str]) -> np.ndarray:
    """NDVI `(T, H*W)` = (B08 − B04) / (B08 + B04) in float64; NaN where the sum is 0."""
    red = s2[:, names.index("B04")].reshape(s2.shape[0], -1).astype(np.float64)
    nir = s2[:, names.index("B08")].reshape(s2.shape[0], -1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (nir - red) / (nir + red)


def new_stats(config: StatsConfig) -> DatasetStats:
    """An empty `DatasetStats` (profile and cloud accumulators created as the config asks)."""
    cat = _catalog(config)
    out = DatasetStats(config)
    n_cls = cat.nomenclature("cosia").n_classes
    if config.clouds:
        out.clouds = CloudStats(config.max_cloud, config.max_snow, config.max_frac_cover)
    if config.profiles:
        specs = {"ndvi": NDVI_SPEC}
        for alias, name in S1.items():
            for band in cat.modality(name).band_names:
                specs[f"{alias}_{band.lower()}"] = HistSpec.from_modality(cat.modality(name))
        out.profiles = ProfileStats(specs, n_cls, config.period)
    return out


def patch_stats(
    row: dict[str, Any],
    dates: dict[str, np.ndarray],
    config: StatsConfig,
    out: DatasetStats | None = None,
) -> DatasetStats:
    """Statistics of one patch (`row`: modality → path or None, plus domain and split)."""
    cat = _catalog(config)
    out = out if out is not None else new_stats(config)
    nom = cat.nomenclature("cosia")
    need_cls = "class" in config.by or config.profiles
    cosia = None
    if row.get(COSIA) and (need_cls or config.class_counts):
        cosia = read_raster(row[COSIA], COSIA, cat)[0]
        check_labels(cosia, nom.n_classes, row[COSIA])
    split, domain = str(row.get("split") or "none"), str(row["domain"])
    if config.class_counts and cosia is not None:
        out.class_counts.setdefault("cosia", ClassCounts(nom.n_classes)).update(
            cosia, split, domain
        )
        if row.get(LPIS):
            lp, n1 = read_raster(row[LPIS], LPIS, cat)[0], cat.nomenclature("lpis_l1").n_classes
            check_labels(lp, n1, row[LPIS], "LPIS level 1")
            out.class_counts.setdefault("lpis_l1", ClassCounts(n1)).update(lp, split, domain)
    grids: dict[tuple[int, int], np.ndarray] = {}

    def classes_on(shape: tuple[int, int]) -> np.ndarray:
        if shape not in grids:
            grids[shape] = resample_labels(cosia, shape, nom.n_classes, config.class_resample)
        return grids[shape]

    arrays: dict[str, np.ndarray] = {}
    wanted = set(config.modalities)
    if config.profiles:
        wanted |= {S2, *S1.values()}
    if config.clouds or config.profiles:
        wanted.add(S2_MASK)
    for name in cat.modality_names:
        if name in wanted and row.get(name):
            arrays[name] = read_raster(row[name], name, cat)
        elif name in wanted:
            out.missing[name] = out.missing.get(name, 0) + 1
    for name in config.modalities:
        name = cat.modality(name).name
        if name not in arrays:
            continue
        arr, m = arrays[name], cat.modality(name)
        x, spec, table = (
            _as_channels(arr),
            HistSpec.from_modality(m),
            out.bands.setdefault(name, {}),
        )
        if "class" in config.by and cosia is not None:
            lab = classes_on(arr.shape[-2:]).ravel()
            codes = np.tile(lab, arr.shape[0]) if arr.ndim == 4 else lab
            per_class = BandStats(m.n_bands, spec, nom.n_classes).update(x, codes)
            table["class"] = table["class"].merge(per_class) if "class" in table else per_class
            st = per_class.collapse()
        else:
            st = BandStats(m.n_bands, spec).update(x)
        if config.correlation:
            st.comoments = True
            st.update_comoments(x)
        keys = ["all"] + [
            f"{k}:{v}" for k, v in (("domain", domain), ("split", split)) if k in config.by
        ]
        for key in keys:
            table[key] = table[key].merge(st) if key in table else _copy(st)
    mask = arrays.get(S2_MASK)
    if config.clouds and mask is not None:
        out.clouds.update(mask, dates[S2_MASK], row[S2_MASK])
    if config.profiles and cosia is not None:
        if S2 in arrays:
            s2 = arrays[S2]
            lab = classes_on(s2.shape[-2:]).ravel()
            valid = None
            if mask is not None:
                T = mask.shape[0]
                valid = (mask[:, 0].reshape(T, -1) <= config.max_snow) & (
                    mask[:, 1].reshape(T, -1) <= config.max_cloud
                )
            out.profiles.update(
                "ndvi", _ndvi(s2, cat.modality(S2).band_names), lab, dates[S2], valid
            )
        for alias, name in S1.items():
            if name in arrays:
                a = arrays[name]
                lab = classes_on(a.shape[-2:]).ravel()
                for c, band in enumerate(cat.modality(name).band_names):
                    out.profiles.update(
                        f"{alias}_{band.lower()}", a[:, c].reshape(a.shape[0], -1), lab, dates[name]
                    )
    out.n_patches += 1
    return out


def _copy(st: BandStats) -> BandStats:
    fresh = BandStats(st.n_bands, st.spec, st.n_groups, st.comoments)
    return fresh.merge(st)
