"""A tiny FLAIR-HUB tree with planted structure, for the statistics and exploration tests.

Real GeoTIFFs in the on-disk layout + the GLOBAL_ALL_MTD date GeoPackages + split CSVs. Planted:
aerial R, G, B move together (one latent), NIR is independent; S2 bands form the three MAESTRO
groups; COSIA holds classes 0..18 in blocks; S2 cloud/snow are 0 except for known dates.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from flairlab.data.catalog import load_catalog
from flairlab.data.index import modality_path, parse_patch_id

CAT = load_catalog()
PATCHES = {
    "D006-2020_FF-S1-14_1-1": "train",
    "D006-2020_FF-S1-14_1-2": "train",
    "D024-2021_AA-S1-V18_1-1": "valid",
    "D024-2021_AA-S1-V18_2-1": "test",
}
T = {"SENTINEL2_TS": 5, "SENTINEL2_MSK-SC": 5, "SENTINEL1-ASC_TS": 3, "SENTINEL1-DESC_TS": 4}
SIZES = {"AERIAL-RLT_PAN": (256, 0.4)}
X0, Y0 = 650_000.0, 6_860_000.0


def dates_for(name: str, year: int) -> list[str]:
    return [f"{year}{2 * m + 1:02d}1{m}" for m in range(T[name])]


def _write(path: Path, arr: np.ndarray, res: float, x0: float, y0: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=arr.shape[-2],
        width=arr.shape[-1],
        count=arr.shape[0],
        dtype=arr.dtype,
        crs="EPSG:2154",
        transform=from_origin(x0, y0, res, res),
    ) as dst:
        dst.write(arr)


def planted(name: str, rng: np.random.Generator) -> np.ndarray:
    m = CAT.modality(name)
    n = SIZES.get(name, (m.size_px, 0))[0]
    t = T.get(name, 1)
    shape = (t, n, n)
    if name == "AERIAL_RGBI":
        z = rng.normal(0, 1, (n, n))
        rgb = [100 + 40 * (z + 0.1 * rng.normal(0, 1, (n, n))) for _ in range(3)]
        bands = [*rgb, 110 + 40 * rng.normal(0, 1, (n, n))]
        return np.clip(np.stack(bands), 0, 255).astype(np.uint8)
    if name == "SENTINEL2_TS":
        zs = [rng.normal(0, 1, shape) for _ in range(3)]
        group = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
        base = [800, 900, 700, 1200, 2500, 2800, 3000, 3100, 2000, 1200]
        arr = np.stack(
            [base[c] + 300 * (zs[group[c]] + 0.05 * rng.normal(0, 1, shape)) for c in range(10)], 1
        )
        return np.clip(arr, 1, 9000).astype(np.uint16).reshape(t * 10, n, n)
    if name == "SENTINEL2_MSK-SC":
        arr = np.zeros((t, 2, n, n), np.uint8)
        arr[1, 1] = 80  # date 1 fully cloudy
        arr[2, 0, :3] = 60  # date 2: 30 % snow
        return arr.reshape(t * 2, n, n)
    if name.startswith("SENTINEL1"):
        return rng.lognormal(-3, 1, (t * 2, n, n)).astype(np.float32)
    if name == "DEM_ELEV":
        dtm = 200 + 10 * rng.normal(0, 1, (n, n))
        return np.stack([dtm + np.abs(rng.normal(0, 3, (n, n))), dtm]).astype(np.float32)
    if name == "SPOT_RGBI":
        return rng.integers(100, 3000, (4, n, n)).astype(np.uint16)
    if name == "AERIAL-RLT_PAN":
        return rng.integers(0, 256, (1, n, n)).astype(np.uint8)
    if name == "AERIAL_LABEL-COSIA":
        lab = (np.arange(n)[:, None] // 32 + np.arange(n)[None, :] // 128) % 19
        return lab[None].astype(np.uint8)
    if name == "ALL_LABEL-LPIS":
        return np.stack([np.full((n, n), 22), np.full((n, n), 30), np.full((n, n), 45)]).astype(
            np.uint8
        )
    raise KeyError(name)


def make_tree(root: Path, seed: int = 0) -> Path:
    """Write the tree under `root` (created) and return it."""
    rng = np.random.default_rng(seed)
    geoms = []
    for pid in PATCHES:
        p = parse_patch_id(pid)
        x0, y0 = X0 + (p.col - 1) * 102.4, Y0 - (p.row - 1) * 102.4
        geoms.append(box(x0, y0 - 102.4, x0 + 102.4, y0))
        for name, m in CAT.modalities.items():
            res = SIZES.get(name, (0, m.resolution_m))[1]
            _write(modality_path(root, pid, name), planted(name, rng), res, x0, y0)
    mtd = root / "GLOBAL_ALL_MTD"
    mtd.mkdir(parents=True)
    years = [parse_patch_id(p).year for p in PATCHES]
    for name, file in [
        ("SENTINEL2_TS", "GLOBAL_SENTINEL2_MTD_DATES.gpkg"),
        ("SENTINEL1-ASC_TS", "GLOBAL_SENTINEL1-ASC_MTD_DATES.gpkg"),
        ("SENTINEL1-DESC_TS", "GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg"),
    ]:
        vals = [
            json.dumps({str(i + 1): d for i, d in enumerate(dates_for(name, y))}) for y in years
        ]
        gpd.GeoDataFrame(
            {"patch_id": list(PATCHES), "acquisition_dates": vals}, geometry=geoms, crs="EPSG:2154"
        ).to_file(mtd / file)
    for file in (
        "GLOBAL_AERIAL_MTD_DATES.gpkg",
        "GLOBAL_SPOT_MTD_DATES.gpkg",
        "GLOBAL_AERIAL-RLT_MTD_DATES.gpkg",
    ):
        gpd.GeoDataFrame(
            {"patch_id": list(PATCHES), "date": [f"{y}0612" for y in years]},
            geometry=geoms,
            crs="EPSG:2154",
        ).to_file(mtd / file)
    names = sorted(CAT.modality_names)
    for split in ("train", "valid", "test"):
        lines = [",".join(["patch_id", *names])]
        for pid, s in PATCHES.items():
            if s == split:
                rel = [f"../{modality_path('', pid, n).as_posix()}" for n in names]
                lines.append(",".join([pid, *rel]))
        (root / f"FLAIR-HUB_TOY-DATASET_{split.upper()}.csv").write_text("\n".join(lines) + "\n")
    return root


def split_csvs(root: Path) -> list[Path]:
    return [root / f"FLAIR-HUB_TOY-DATASET_{s}.csv" for s in ("TRAIN", "VALID", "TEST")]
