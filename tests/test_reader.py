"""Index, reader and checker on hand-written GeoTIFFs with planted values (no mocks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from flairlab.cli import main as cli_main
from flairlab.data.catalog import IGNORE_INDEX, load_catalog
from flairlab.data.check import check_dataset
from flairlab.data.errors import DataError
from flairlab.data.index import (
    index_patches,
    modality_path,
    parse_file_name,
    parse_patch_id,
    read_split_csv,
)
from flairlab.data.reader import cosia_target, lpis_target, open_patch, read_dates, read_raster

CAT = load_catalog()
X0, Y0 = 650_000.0, 6_860_000.0
PATCHES = ["D006-2020_FF-S1-14_5-5", "D006-2020_FF-S1-14_5-6", "D024047-2021_AA-S1-V18_1-1"]
T = {"SENTINEL2_TS": 3, "SENTINEL2_MSK-SC": 3, "SENTINEL1-ASC_TS": 2, "SENTINEL1-DESC_TS": 4}


def _dates(n: int, year: int) -> list[str]:
    return [f"{year}{m:02d}15" for m in range(1, n + 1)]


def planted(mod_name: str, pid: str) -> np.ndarray:
    """Values that encode (t, c): value = 10*t + c + 1 (+ a planted pixel at row 1, col 2)."""
    mod = CAT.modality(mod_name)
    t = T.get(mod_name, 1)
    n = mod.size_px if mod_name != "AERIAL-RLT_PAN" else 256
    arr = np.zeros((t * mod.n_bands, n, n), dtype=mod.dtype)
    for b in range(t * mod.n_bands):
        arr[b] = 10 * (b // mod.n_bands) + b % mod.n_bands + 1
    if mod.kind == "label":
        arr[:] = 3
    arr[:, 1, 2] = 7  # planted pixel
    return arr


def write_tif(path: Path, arr: np.ndarray, res: float, x0: float, y0: float, crs="EPSG:2154"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=arr.shape[1],
        width=arr.shape[2],
        count=arr.shape[0],
        dtype=arr.dtype,
        crs=crs,
        transform=from_origin(x0, y0, res, res),
        compress="deflate",
    ) as dst:
        dst.write(arr)


def origin(pid: str) -> tuple[float, float]:
    p = parse_patch_id(pid)
    return X0 + (p.col - 1) * 102.4, Y0 - (p.row - 1) * 102.4


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "FLAIR-HUB"
    for pid in PATCHES:
        x0, y0 = origin(pid)
        for name, mod in CAT.modalities.items():
            res = 0.4 if name == "AERIAL-RLT_PAN" else mod.resolution_m
            write_tif(modality_path(root, pid, name), planted(name, pid), res, x0, y0)
    mtd = root / "GLOBAL_ALL_MTD"
    mtd.mkdir()
    geoms = [box(*origin(p), origin(p)[0] + 102.4, origin(p)[1] - 102.4) for p in PATCHES]
    for name, file in [
        ("SENTINEL2_TS", "GLOBAL_SENTINEL2_MTD_DATES.gpkg"),
        ("SENTINEL1-ASC_TS", "GLOBAL_SENTINEL1-ASC_MTD_DATES.gpkg"),
        ("SENTINEL1-DESC_TS", "GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg"),
    ]:
        vals = [
            json.dumps({str(i + 1): d for i, d in enumerate(_dates(T[name], 2020))})
            for _ in PATCHES
        ]
        gpd.GeoDataFrame(
            {"patch_id": PATCHES, "acquisition_dates": vals}, geometry=geoms, crs="EPSG:2154"
        ).to_file(mtd / file)
    gpd.GeoDataFrame(
        {"patch_id": PATCHES, "date": ["20200612", "20200612", "20210700"]},
        geometry=geoms,
        crs="EPSG:2154",
    ).to_file(mtd / "GLOBAL_AERIAL_MTD_DATES.gpkg")
    return root


def test_patch_id_and_file_grammar():
    p = parse_patch_id("D024047-2021_AA-S1-V18_10-22")
    assert (p.code, p.year, p.roi, p.row, p.col) == ("D024047", 2021, "AA-S1-V18", 10, 22)
    assert p.roi_key == "D024047-2021_AA-S1-V18"
    for bad in ["D006-2020_FF-S1-14_0-5", "D06-2020_FF_5-5", "D006-2020_FF-S1-14_5", "x"]:
        with pytest.raises(DataError, match="DOMAIN_ROI_R-C"):
            parse_patch_id(bad)
    pid, mod = parse_file_name("D006-195X_AERIAL-RLT_PAN_FF-S1-14_5-5.tif")
    assert (pid, mod) == ("D006-195X_FF-S1-14_5-5", "AERIAL-RLT_PAN")
    path = modality_path("/r", "D006-2020_FF-S1-14_5-5", "rlt")
    assert (
        path.as_posix()
        == "/r/D006-195X_AERIAL-RLT_PAN/FF-S1-14/D006-195X_AERIAL-RLT_PAN_FF-S1-14_5-5.tif"
    )


def test_official_toy_csvs_resolve(shared_dir: Path, tmp_path: Path):
    csvs = sorted((shared_dir / "data" / "flairhub-toy-splits").glob("*.csv"))
    df = index_patches(csvs, root=tmp_path)
    assert len(df) == 250 and df["split"].value_counts().to_dict() == {
        "train": 150,
        "valid": 50,
        "test": 50,
    }
    rlt = df.at["D006-2020_FF-S1-14_5-5", "AERIAL-RLT_PAN"]
    assert rlt == str(
        tmp_path / "D006-195X_AERIAL-RLT_PAN/FF-S1-14/D006-195X_AERIAL-RLT_PAN_FF-S1-14_5-5.tif"
    )
    assert df.notna().all().all()
    # ROIs are unique only per domain
    assert (df["domain"] + "_" + df["roi"]).nunique() == 160 and df["roi"].nunique() == 147


def test_split_csv_semicolon_and_mismatch(tree: Path, tmp_path: Path):
    rows = [f"{pid};../{modality_path('', pid, 'AERIAL_RGBI').as_posix()}" for pid in PATCHES]
    p = tmp_path / "s.csv"
    p.write_text("patch_id;AERIAL_RGBI\n" + "\n".join(rows) + "\n")
    df = read_split_csv(p, root=tree)
    assert Path(df.at[PATCHES[0], "AERIAL_RGBI"]).is_file()
    assert df["DEM_ELEV"].isna().all()
    p.write_text(
        "patch_id,AERIAL_RGBI\n"
        f"{PATCHES[0]},../{modality_path('', PATCHES[1], 'aerial').as_posix()}\n"
    )
    with pytest.raises(DataError, match=r"s\.csv.*line 2, column AERIAL_RGBI"):
        read_split_csv(p, root=tree)


def test_scan_matches_paths(tree: Path):
    df = index_patches(tree)
    assert list(df.index) == sorted(PATCHES)
    assert df.notna().all().all()
    assert df.at["D024047-2021_AA-S1-V18_1-1", "AERIAL-RLT_PAN"].endswith(
        "D024047-195X_AERIAL-RLT_PAN_AA-S1-V18_1-1.tif"
    )
    assert df.loc[PATCHES[0], ["row", "col"]].tolist() == [5, 5]


def test_time_series_unstacking_and_dates(tree: Path):
    da = open_patch(tree, PATCHES[0], "SENTINEL2_TS")
    assert da.dims == ("time", "band", "y", "x") and da.shape == (3, 10, 10, 10)
    assert list(da.band.values) == CAT.modality("s2").band_names
    # value 10*t + c + 1 planted at band t*C + c
    assert da.isel(y=0, x=0).values.tolist() == [
        [10 * t + c + 1 for c in range(10)] for t in range(3)
    ]
    assert str(da.time.values[2])[:10] == "2020-03-15"
    msk = open_patch(tree, PATCHES[0], "s2_mask")
    assert list(msk.band.values) == ["snow", "cloud"] and (msk.time == da.time).all()
    desc = open_patch(tree, PATCHES[0], "s1_desc")
    assert desc.shape == (4, 2, 10, 10)
    assert read_raster(da.attrs["path"], "s2").shape == (3, 10, 10, 10)


def test_coordinates_and_orientation(tree: Path):
    da = open_patch(tree, PATCHES[1], "AERIAL_RGBI")
    x0, y0 = origin(PATCHES[1])
    assert da.dims == ("band", "y", "x") and da.attrs["crs"] == "EPSG:2154"
    assert da.x.values[0] == pytest.approx(x0 + 0.1) and da.y.values[0] == pytest.approx(y0 - 0.1)
    assert da.y.values[1] < da.y.values[0]  # north-up
    # the planted pixel (row 1, col 2) sits at these pixel-centre coordinates
    hit = da.sel(band="R").sel(x=x0 + 2.5 * 0.2, y=y0 - 1.5 * 0.2, method="nearest")
    assert int(hit) == 7
    assert da.attrs["resolution"] == (0.2, 0.2)
    rlt = open_patch(tree, PATCHES[1], "rlt")
    assert rlt.shape == (1, 256, 256) and rlt.x.values[0] == pytest.approx(x0 + 0.2)


def test_labels_and_targets(tree: Path):
    lpis = open_patch(tree, PATCHES[0], "lpis")
    assert list(lpis.band.values) == ["level1", "level2", "level3"]
    assert lpis_target(lpis, level=2).shape == (512, 512)
    arr = np.array([[0, 14, 15], [18, 3, 16]], dtype=np.uint8)
    assert cosia_target(arr).tolist() == [[0, 14, IGNORE_INDEX], [IGNORE_INDEX, 3, IGNORE_INDEX]]
    with pytest.raises(DataError, match=r"out of range.*expected 0..18, found \[19, 255\]"):
        cosia_target(np.array([[0, 19, 255]], dtype=np.uint8))
    with pytest.raises(DataError, match="LPIS level 1"):
        lpis_target(np.full((3, 2, 2), 23, dtype=np.uint8))


def test_mono_dates_lenient_day(tree: Path):
    d = read_dates(tree, "aerial")
    assert str(d["D024047-2021_AA-S1-V18_1-1"][0]) == "2021-07-01"  # day 00 -> 01


def test_clean_tree_passes_check(tree: Path):
    problems = check_dataset(tree, progress=False)
    assert problems.empty, problems.to_string()
    assert cli_main(["check", str(tree), "--quiet"]) == 0


def _broken_copy(tree: Path, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(tree, root)
    return root


def test_check_finds_every_problem_kind(tree: Path, tmp_path: Path, capsys):
    root = _broken_copy(tree, tmp_path)
    a, b, c = PATCHES
    modality_path(root, a, "spot").unlink()  # missing
    modality_path(root, a, "dem").write_bytes(b"II*\x00garbage")  # unreadable
    p = modality_path(root, b, "aerial")
    x0, y0 = origin(b)
    write_tif(p, np.zeros((3, 512, 512), np.uint8), 0.2, x0, y0)  # bands
    write_tif(
        modality_path(root, b, "spot"), np.zeros((4, 64, 64), np.float32), 1.6, x0, y0
    )  # dtype
    write_tif(
        modality_path(root, c, "s1_asc"), np.ones((6, 10, 10), np.float32), 10.24, *origin(c)
    )  # dates: T=3 vs 2
    write_tif(
        modality_path(root, c, "dem"),
        np.zeros((2, 512, 512), np.float32),
        0.2,
        origin(c)[0] + 5,
        origin(c)[1],
    )  # footprint
    write_tif(
        modality_path(root, c, "cosia"), np.full((1, 512, 512), 40, np.uint8), 0.2, *origin(c)
    )  # labels
    write_tif(
        modality_path(root, c, "rlt"),
        np.zeros((1, 256, 256), np.uint8),
        0.4,
        *origin(c),
        crs="EPSG:32631",
    )  # crs
    with rasterio.open(modality_path(root, a, "s2_mask")) as src:  # mask T != S2 T
        prof = src.profile
    prof.update(count=4)
    with rasterio.open(modality_path(root, a, "s2_mask"), "w", **prof) as dst:
        dst.write(np.zeros((4, 10, 10), prof["dtype"]))
    problems = check_dataset(root, progress=False)
    kinds = set(problems["kind"])
    assert kinds >= {
        "missing",
        "unreadable",
        "bands",
        "dtype",
        "dates",
        "footprint",
        "labels",
        "crs",
    }
    got = {(r.patch_id, r.modality, r.kind) for r in problems.itertuples()}
    assert (a, "SPOT_RGBI", "missing") in got and (a, "DEM_ELEV", "unreadable") in got
    assert (b, "AERIAL_RGBI", "bands") in got and (b, "SPOT_RGBI", "dtype") in got
    assert (c, "SENTINEL1-ASC_TS", "dates") in got and (c, "DEM_ELEV", "footprint") in got
    assert (c, "AERIAL_LABEL-COSIA", "labels") in got and (c, "AERIAL-RLT_PAN", "crs") in got
    assert (a, "SENTINEL2_MSK-SC", "dates") in got
    assert cli_main(["check", str(root), "--quiet"]) == 1
    assert "problem(s)" in capsys.readouterr().out


def test_reader_errors_name_file(tree: Path, tmp_path: Path):
    root = _broken_copy(tree, tmp_path)
    a = PATCHES[0]
    with pytest.raises(
        DataError, match="AERIAL_RGBI file of patch D006-2020_FF-S1-14_9-9 not found"
    ):
        open_patch(root, "D006-2020_FF-S1-14_9-9", "aerial")
    write_tif(modality_path(root, a, "s2"), np.ones((25, 10, 10), np.uint16), 10.24, *origin(a))
    with pytest.raises(DataError, match=r"SENTINEL2_TS_FF-S1-14_5-5\.tif: .*multiple of 10"):
        open_patch(root, a, "s2")
    write_tif(modality_path(root, a, "s2"), np.ones((40, 10, 10), np.uint16), 10.24, *origin(a))
    with pytest.raises(DataError, match=r"number of dates.*expected T=4.*found 3 dates"):
        open_patch(root, a, "s2")
    gpd.GeoDataFrame(
        {"patch_id": [a], "acquisition_dates": ['{"1": "2020-01-01"}']},
        geometry=[box(0, 0, 1, 1)],
        crs="EPSG:2154",
    ).to_file(root / "GLOBAL_ALL_MTD" / "GLOBAL_SENTINEL1-ASC_MTD_DATES.gpkg")
    with pytest.raises(
        DataError, match=r"GLOBAL_SENTINEL1-ASC_MTD_DATES\.gpkg: date of .* not YYYYMMDD"
    ):
        open_patch(root, a, "s1_asc")


def test_index_dataframe_input(tree: Path):
    df = index_patches(tree)
    da = open_patch(df, PATCHES[0], "s1_asc")
    assert da.shape == (2, 2, 10, 10)
    with pytest.raises(DataError, match="not in the index"):
        open_patch(df, "D006-2020_FF-S1-14_1-1", "aerial")
    assert isinstance(df["AERIAL_RGBI"].dtype, pd.StringDtype)
