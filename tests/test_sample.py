"""The embedded synthetic sample: exact FLAIR-HUB format, official split CSVs, determinism, safety
and learnability (real GeoTIFFs / GeoPackages written to tmp dirs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

from flairlab.data import synthetic as S
from flairlab.data.catalog import load_catalog
from flairlab.data.errors import DataError
from flairlab.data.sample import (
    MARKER,
    SPLITS,
    TOY_CSV,
    load_toy_splits,
    make_sample,
    rel_path,
    select_patches,
)

CAT = load_catalog()
MODS = CAT.modality_names


def _patches(root: Path) -> list[str]:
    return json.loads((root / MARKER).read_text())["patches"]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _gpkg(root: Path, name: str):
    return pyogrio.read_dataframe(root / CAT.metadata_dir / name)


def _domain_year(pid: str) -> int:
    return int(pid.split("_")[0].split("-")[1])


# -- format conformance ---------------------------------------------------------------------------
def test_tree_files_bands_dtypes_crs_alignment(sample_root: Path) -> None:
    patches = _patches(sample_root)
    assert len(patches) == 12
    toy = load_toy_splits()
    assert len({toy.at[p, "domain"] for p in patches}) == 10  # default subsets keep every domain
    assert {toy.at[p, "split"] for p in patches} == set(SPLITS)
    for pid in patches:
        domain, roi, rc = pid.split("_")
        bounds = {}
        for name in MODS:
            m = CAT.modality(name)
            folder = domain.replace(domain[-4:], "195X") if name == "AERIAL-RLT_PAN" else domain
            path = sample_root / f"{folder}_{name}" / roi / f"{folder}_{name}_{roi}_{rc}.tif"
            assert path.is_file(), path
            assert path.relative_to(sample_root).as_posix() == rel_path(pid, name)
            with rasterio.open(path) as src:
                assert src.crs.to_epsg() == 2154
                assert src.dtypes == (m.dtype,) * src.count
                assert (src.width, src.height) == (m.size_px, m.size_px)
                tr = src.transform
                assert tr.b == tr.d == 0 and tr.a == pytest.approx(m.resolution_m)
                assert tr.e == pytest.approx(-m.resolution_m)
                assert src.profile["compress"] == "deflate" and src.profile["tiled"]
                count = src.count
                bounds[name] = tuple(src.bounds)
            if m.time_series:
                assert count % m.n_bands == 0 and count > 0
            else:
                assert count == m.n_bands
        ref = np.array(bounds["AERIAL_RGBI"])
        for name, b in bounds.items():  # one 102.4 m footprint for every modality
            np.testing.assert_allclose(b, ref, atol=1e-6, rtol=0, err_msg=name)
        assert ref[2] - ref[0] == pytest.approx(102.4) and ref[3] - ref[1] == pytest.approx(102.4)


def _read(root: Path, pid: str, name: str) -> tuple[rasterio.coords.BoundingBox, np.ndarray]:
    with rasterio.open(root / rel_path(pid, name)) as src:
        return src.bounds, src.read()


def test_patch_grid_and_adjacent_patches_join(sample_root: Path) -> None:
    by_roi: dict[str, list[tuple[int, int, str]]] = {}
    for pid in _patches(sample_root):
        key, rc = pid.rsplit("_", 1)
        by_roi.setdefault(key, []).append((*map(int, rc.split("-")), pid))
    pairs = 0
    for items in by_roi.values():
        for r1, c1, p1 in items:
            (b1, dem1), (_, cos1) = (
                _read(sample_root, p1, "DEM_ELEV"),
                _read(sample_root, p1, "AERIAL_LABEL-COSIA"),
            )
            for r2, c2, p2 in items:
                b2, dem2 = _read(sample_root, p2, "DEM_ELEV")
                # left = x0 + (c-1)·102.4, top = y0 - (r-1)·102.4
                assert b2.left - b1.left == pytest.approx((c2 - c1) * 102.4)
                assert b2.top - b1.top == pytest.approx(-(r2 - r1) * 102.4)
                if (r2, c2) == (r1 + 1, c1):  # p2 is just south of p1
                    pairs += 1
                    assert abs(b1.bottom - b2.top) < 1e-6 and b1.left == b2.left  # shared edge
                    assert np.abs(dem1[1, -1] - dem2[1, 0]).max() < 0.05  # continuous terrain
                    cos2 = _read(sample_root, p2, "AERIAL_LABEL-COSIA")[1]
                    assert (cos1[0, -1] == cos2[0, 0]).mean() > 0.9  # the scene continues
    assert pairs >= 2  # the default subsets favour adjacent patches (zone mosaics)


def test_dates_gpkgs_match_rasters(sample_root: Path) -> None:
    patches = _patches(sample_root)
    s1_lists = []
    for name, fname, minimum in (
        ("SENTINEL2_TS", "GLOBAL_SENTINEL2_MTD_DATES.gpkg", 16),
        ("SENTINEL1-ASC_TS", "GLOBAL_SENTINEL1-ASC_MTD_DATES.gpkg", 4),
        ("SENTINEL1-DESC_TS", "GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg", 4),
    ):
        assert pyogrio.list_layers(sample_root / CAT.metadata_dir / fname).shape[0] == 1
        df = _gpkg(sample_root, fname)
        assert list(df.columns) == ["patch_id", "acquisition_dates", "geometry"]
        assert df.crs.to_epsg() == 2154 and sorted(df.patch_id) == patches
        per_roi: dict[str, str] = {}
        for pid, text, geom in zip(df.patch_id, df.acquisition_dates, df.geometry, strict=True):
            d = json.loads(text)
            t = len(d)
            assert list(d) == [str(k) for k in range(1, t + 1)] and t >= minimum
            days = np.array([np.datetime64(f"{v[:4]}-{v[4:6]}-{v[6:]}") for v in d.values()])
            assert (np.diff(days) > np.timedelta64(0, "D")).all()  # sorted, distinct
            assert {int(v[:4]) for v in d.values()} == {_domain_year(pid)}
            assert per_roi.setdefault(pid.rsplit("_", 1)[0], text) == text  # one list per ROI
            with rasterio.open(sample_root / rel_path(pid, name)) as src:
                assert src.count == t * CAT.modality(name).n_bands
                np.testing.assert_allclose(geom.bounds, tuple(src.bounds), atol=1e-6)
            if name == "SENTINEL2_TS":
                with rasterio.open(sample_root / rel_path(pid, "SENTINEL2_MSK-SC")) as src:
                    assert src.count == 2 * t  # mask T = S2 T
            else:
                s1_lists.append((name, pid, text))
    asc = {p: t for n, p, t in s1_lists if n == "SENTINEL1-ASC_TS"}
    desc = {p: t for n, p, t in s1_lists if n == "SENTINEL1-DESC_TS"}
    assert any(asc[p] != desc[p] for p in asc)  # independent orbits
    for fname in ("GLOBAL_AERIAL_MTD_DATES.gpkg", "GLOBAL_SPOT_MTD_DATES.gpkg"):
        df = _gpkg(sample_root, fname)
        assert list(df.columns) == ["patch_id", "date", "geometry"]
        assert all(int(d[:4]) == _domain_year(p) for p, d in zip(df.patch_id, df.date, strict=True))
    rlt = _gpkg(sample_root, "GLOBAL_AERIAL-RLT_MTD_DATES.gpkg")
    assert all(1947 <= int(d[:4]) <= 1965 and len(d) == 8 for d in rlt.date)
    split = _gpkg(sample_root, CAT.split_gpkg)
    toy = load_toy_splits()
    assert list(split.columns) == ["patch_id", "split_toy", "geometry"]
    assert all(
        s == toy.at[p, "split"].lower()
        for p, s in zip(split.patch_id, split.split_toy, strict=True)
    )


def test_pixel_values_are_physical(sample_root: Path) -> None:
    bright, clear_vis = [], []
    for pid in _patches(sample_root):
        arr = {}
        for name in MODS:
            with rasterio.open(sample_root / rel_path(pid, name)) as src:
                arr[name] = src.read()
        s2 = arr["SENTINEL2_TS"].reshape(-1, 10, 10, 10)
        msk = arr["SENTINEL2_MSK-SC"].reshape(-1, 2, 10, 10)
        assert (s2.reshape(len(s2), -1).max(1) > 0).all()  # never an all-zero frame
        assert msk.max() <= 100 and (msk[:, 1].max((1, 2)) == 0).sum() >= 4  # clear dates exist
        vis = s2[:, :3].mean(1)
        bright += vis[msk[:, 1] >= 80].tolist()
        clear_vis += vis[msk.max(1) == 0].tolist()
        for orbit in ("SENTINEL1-ASC_TS", "SENTINEL1-DESC_TS"):
            assert (
                np.isfinite(arr[orbit]).all() and (arr[orbit] > 0).all() and arr[orbit].max() < 10
            )
        dsm, dtm = arr["DEM_ELEV"]
        assert (dsm >= dtm).all() and np.isfinite(dtm).all()
        assert arr["AERIAL_LABEL-COSIA"].max() <= 18
        l1, l2, l3 = arr["ALL_LABEL-LPIS"].astype(int)
        assert l3.max() <= 45
        np.testing.assert_array_equal(l2, S.L3_TO_L2[l3])
        np.testing.assert_array_equal(l1, S.L2_TO_L1[l2])
    # cloudy pixels are bright in S2: the mask agrees with the radiometry
    assert len(bright) > 20 and np.median(bright) > 3 * np.median(clear_vis)


def test_label_classes_include_rare_ignored_ones(sample_root: Path) -> None:
    counts = np.zeros(256, int)
    for pid in _patches(sample_root):
        with rasterio.open(sample_root / rel_path(pid, "AERIAL_LABEL-COSIA")) as src:
            counts += np.bincount(src.read(1).ravel(), minlength=256)
    frac = counts / counts.sum()
    assert (frac[:15] > 0).sum() >= 12  # most evaluated classes are present
    assert 0 < frac[15:19].sum() < 0.1  # classes 15-18 occur, rarely


def test_default_subset_covers_domains_splits_and_adjacent_patches() -> None:
    from flairlab.data.sample import DEFAULT_N_PATCHES

    toy = load_toy_splits()
    default = select_patches(toy, DEFAULT_N_PATCHES)
    sub = toy.loc[default]
    assert sub["domain"].nunique() == 10 and set(sub["split"]) == set(SPLITS)
    assert sub["split"].value_counts().min() >= 0.15 * len(sub)  # near the 60/20/20 toy shares
    cells = set(zip(sub["domain"] + sub["roi"], sub["row"], sub["col"], strict=True))
    adjacent = sum((k, r + 1, c) in cells or (k, r, c + 1) in cells for k, r, c in cells)
    assert adjacent >= 4  # every adjacent pair of the toy set
    assert set(select_patches(toy, 12)) <= set(default)  # smaller subsets are prefixes
    assert len(select_patches(toy, 250)) == 250


# -- split CSVs ---------------------------------------------------------------------------------
def test_split_csvs_are_official_rows(sample_root: Path) -> None:
    official_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "flairhub-toy-splits"
    packaged = Path(__file__).resolve().parents[1] / "flairlab" / "resources" / "toy_splits"
    n = 0
    for split in SPLITS:
        raw = (sample_root / TOY_CSV.format(split)).read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf") and b"\r" not in raw and raw.endswith(b"\n")
        lines = raw.decode("utf-8").splitlines()
        ref_file = packaged / TOY_CSV.format(split)
        if official_dir.is_dir():
            ref_file = official_dir / TOY_CSV.format(split)
            assert ref_file.read_bytes() == (packaged / TOY_CSV.format(split)).read_bytes()
        ref = ref_file.read_text(encoding="utf-8").splitlines()
        assert lines[0] == ref[0]  # same header, same column order
        assert set(lines[1:]) <= set(ref[1:]) and lines[1:] == sorted(lines[1:])
        assert all(cell.startswith("../") for line in lines[1:] for cell in line.split(",")[1:])
        n += len(lines) - 1
    assert n == len(_patches(sample_root))
    if not official_dir.is_dir():
        pytest.skip("../shared toy CSVs absent: compared with the packaged copies only")


# -- determinism, safety, CLI --------------------------------------------------------------------
def test_deterministic_idempotent_and_subset_invariant(tmp_path: Path, sample_root: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_sample(a, n_patches=2, seed=0, progress=False)
    ref = _digest(sample_root)  # a patch's files do not depend on the other patches written
    two = _digest(a)
    assert len(two) == 2 * 10 + 7 + 3 + 1 and all(
        ref[k] == v for k, v in two.items() if ".tif" in k
    )
    (a / "notes.txt").write_text("mine")
    make_sample(a, n_patches=1, seed=0, progress=False)  # regenerate in place, smaller
    make_sample(b, n_patches=1, seed=0, progress=False)  # fresh run, same seed
    da, db = _digest(a), _digest(b)
    assert (a / "notes.txt").read_text() == "mine" and da.pop("notes.txt")
    assert da == db  # bit-identical, GeoPackages and CSVs included; stale patch files removed
    assert sum(k.endswith(".tif") for k in da) == 10


def test_refuses_foreign_folders(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8data")
    with pytest.raises(DataError, match="not a flairlab sample"):
        make_sample(foreign, n_patches=1, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
    (foreign / MARKER).write_text(json.dumps({"generator": "something else"}))
    with pytest.raises(DataError):
        make_sample(foreign, n_patches=1, progress=False)
    # a sample folder into which someone copied a real file at a path the sample would write
    mixed = tmp_path / "mixed"
    target = mixed / rel_path(select_patches(load_toy_splits(), 1)[0], "AERIAL_RGBI")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"real data")
    (mixed / MARKER).write_text(json.dumps({"generator": "flairlab.data.sample", "files": []}))
    with pytest.raises(DataError, match="overwrite"):
        make_sample(mixed, n_patches=1, progress=False)
    assert target.read_bytes() == b"real data"
    with pytest.raises(ValueError, match="n_patches"):
        make_sample(tmp_path / "x", n_patches=0, progress=False)


def test_cli_writes_sample_and_reports_errors(tmp_path: Path, sample_root: Path, capsys) -> None:
    import argparse

    from flairlab.cli import COMMANDS
    from flairlab.data.sample import add_cli

    assert COMMANDS["sample"][0] == "flairlab.data.sample"
    parser = argparse.ArgumentParser(prog="flairlab")  # only this sub-command: no torch import
    add_cli(parser.add_subparsers(dest="command"))

    def main(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        return args.func(args)

    assert main(["sample", str(tmp_path / "s"), "--patches", "1", "--seed", "3", "--quiet",
                 "--zone", "0"]) == 0  # fmt: skip
    assert "wrote 1 patches" in capsys.readouterr().out
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.txt").write_text("x")
    assert main(["sample", str(tmp_path / "t"), "--patches", "1", "--quiet"]) == 2
    assert "not a flairlab sample" in capsys.readouterr().err
    pid = _patches(tmp_path / "s")[0]  # the first default patch, also in the seed-0 sample
    with rasterio.open(tmp_path / "s" / rel_path(pid, "SENTINEL2_TS")) as src:
        seed3 = src.read()
    with rasterio.open(sample_root / rel_path(pid, "SENTINEL2_TS")) as src:
        seed0 = src.read()
    assert seed3.shape != seed0.shape or (seed3 != seed0).any()


# -- readers of the lead's foundation ------------------------------------------------------------
def test_passes_check_and_reads_back(sample_root: Path) -> None:
    from flairlab.data.check import check_dataset
    from flairlab.data.index import index_patches
    from flairlab.data.reader import open_patch, read_dates

    problems = check_dataset(sample_root, progress=False)
    assert problems.empty, problems.head().to_string()
    idx = index_patches(sample_root / TOY_CSV.format("TRAIN"), sample_root)
    assert set(idx.index) <= set(_patches(sample_root)) and len(idx) > 0
    pid = _patches(sample_root)[0]
    dates = read_dates(sample_root, "SENTINEL2_TS")[pid]
    for name in MODS:
        da = open_patch(sample_root, pid, name)
        if CAT.modality(name).time_series and name.startswith("SENTINEL2"):
            assert da.sizes["time"] == len(dates)
            np.testing.assert_array_equal(da["time"].values.astype("datetime64[D]"), dates)
        assert da.attrs["crs"] in ("EPSG:2154", 2154) or "2154" in str(da.attrs["crs"])


# -- learnability ---------------------------------------------------------------------------------
def _composites(
    s2: np.ndarray, clear: np.ndarray, doys: np.ndarray, n_bins: int = 12
) -> np.ndarray:
    """(T, C, P) reflectance, (T, P) clear flags -> (P, n_bins·C) cloud-free period means."""
    bins = np.minimum((doys - 1) * n_bins // 366, n_bins - 1)
    comp = np.full((n_bins, s2.shape[1], s2.shape[2]), np.nan, np.float32)
    for b in range(n_bins):
        w = ((bins == b)[:, None] & clear)[:, None].astype(np.float32)
        n = w.sum(0)
        comp[b] = np.where(n > 0, (s2 * w).sum(0) / np.maximum(n, 1), np.nan)
    flat = comp.reshape(n_bins, -1)
    x = np.arange(n_bins)
    for j in range(flat.shape[1]):  # fill empty periods by circular interpolation
        ok = ~np.isnan(flat[:, j])
        flat[:, j] = np.interp(x, x[ok], flat[ok, j], period=n_bins)
    return comp.transpose(2, 0, 1).reshape(s2.shape[2], -1)


def _block_labels(label: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """512×512 labels -> majority class and its fraction per 10.24 m S2 pixel (100,)."""
    blk = (np.arange(512) / 51.2).astype(int)
    bid = blk[:, None] * 10 + blk[None, :]
    h = np.bincount((bid * n_classes + label).ravel(), minlength=100 * n_classes)
    h = h.reshape(100, n_classes)
    return h.argmax(1), h.max(1) / h.sum(1)


def _nearest_centroid(X: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    """Accuracy on ~train of a nearest-centroid classifier on standardised features."""
    mu, sd = X[train].mean(0), X[train].std(0) + 1e-6
    Z = (X - mu) / sd
    classes = np.unique(y[train])
    C = np.stack([Z[train & (y == c)].mean(0) for c in classes])
    pred = classes[((Z[~train, None] - C[None]) ** 2).sum(-1).argmin(1)]
    return float((pred == y[~train]).mean())


def _ts_vs_single(pixels: list[tuple], min_count: int = 15) -> dict[str, float]:
    """pixels: (s2 (T,10,P), clear (T,P), doys (T,), labels (P,), keep (P,)) per patch."""
    ts = np.concatenate([_composites(s, c, d) for s, c, d, _, _ in pixels])
    y = np.concatenate([lab for *_, lab, _ in pixels])
    keep = np.concatenate([k for *_, k in pixels])
    vals, counts = np.unique(y[keep], return_counts=True)
    keep &= np.isin(y, vals[counts >= min_count])
    train = np.random.default_rng(0).random(len(y)) < 0.5
    out = {"n_pixels": int(keep.sum()), "n_classes": int((counts >= min_count).sum())}
    out["time_series"] = _nearest_centroid(ts[keep], y[keep], train[keep])
    singles, july = [], []
    for s, c, d, *_ in pixels:  # one clear date per patch: closest to 15 July, or each in turn
        good = np.flatnonzero(c.mean(1) == 1)
        july.append(s[good[np.argmin(np.abs(d[good] - 196))]].T)
        singles.append([s[good[int(q * (len(good) - 1))]].T for q in np.linspace(0, 1, 8)])
    out["single_july"] = _nearest_centroid(np.concatenate(july)[keep], y[keep], train[keep])
    accs = [
        _nearest_centroid(np.concatenate([p[q] for p in singles])[keep], y[keep], train[keep])
        for q in range(8)
    ]
    out["single_mean"], out["single_best"] = float(np.mean(accs)), float(np.max(accs))
    return out


def test_learnability_forest_needs_the_time_series(sample_root: Path) -> None:
    """Deciduous vs coniferous look alike in summer; the leaf-off season separates them."""
    from flairlab.data.reader import read_dates, read_raster

    dates = read_dates(sample_root, "SENTINEL2_TS")
    pixels = []
    for pid in _patches(sample_root):
        s2 = read_raster(sample_root / rel_path(pid, "SENTINEL2_TS"), "SENTINEL2_TS")
        msk = read_raster(sample_root / rel_path(pid, "SENTINEL2_MSK-SC"), "SENTINEL2_MSK-SC")
        cos = read_raster(sample_root / rel_path(pid, "AERIAL_LABEL-COSIA"), "AERIAL_LABEL-COSIA")
        lab, purity = _block_labels(cos[0], 19)
        d = dates[pid]
        doys = (d - d.astype("datetime64[Y]")).astype(int) + 1
        s2 = s2.reshape(len(d), 10, 100).astype(np.float32) / 1e4
        keep = (purity >= 0.8) & np.isin(lab, [12, 13])
        pixels.append((s2, msk.reshape(len(d), 2, 100).max(1) < 5, doys, lab, keep))
    res = _ts_vs_single(pixels)
    print("forest (deciduous vs coniferous):", {k: round(v, 3) for k, v in res.items()})
    assert res["n_classes"] == 2 and res["n_pixels"] >= 100
    assert res["time_series"] >= 0.9
    assert res["time_series"] > res["single_july"] + 0.2
    assert res["time_series"] > res["single_mean"] + 0.1


def test_learnability_crop_types_need_the_time_series() -> None:
    """Crop types share one green spectrum and differ in timing (LPIS level 3, one ROI)."""
    sc = S.make_scene(0, "D051-2019", "AA-S1-17", origin=(790_000.0, 6_880_000.0))
    doys = sc.dates.s2
    pixels = []
    for r, c in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        a = S.render_patch(sc, r, c)
        s2 = a["SENTINEL2_TS"].reshape(len(doys), 10, 100).astype(np.float32) / 1e4
        clear = a["SENTINEL2_MSK-SC"].reshape(len(doys), 2, 100).max(1) < 5
        lab, purity = _block_labels(a["ALL_LABEL-LPIS"][2], 46)
        pixels.append((s2, clear, doys, lab, (purity >= 0.8) & (lab != 45)))
    res = _ts_vs_single(pixels)
    print("crops (LPIS level 3):", {k: round(v, 3) for k, v in res.items()})
    assert res["n_classes"] >= 3
    assert res["time_series"] > res["single_july"] + 0.05
    assert res["time_series"] > res["single_mean"] + 0.05


def test_learnability_buildings_need_elevation(sample_root: Path) -> None:
    """Grey roofs and asphalt share a spectrum; DSM - DTM tells them apart."""
    feats, ys = [], []
    for pid in _patches(sample_root):
        with rasterio.open(sample_root / rel_path(pid, "AERIAL_RGBI")) as src:
            rgbi = src.read()[:, ::4, ::4].reshape(4, -1).T.astype(np.float32)
        with rasterio.open(sample_root / rel_path(pid, "DEM_ELEV")) as src:
            dem = src.read()[:, ::4, ::4].reshape(2, -1)
        with rasterio.open(sample_root / rel_path(pid, "AERIAL_LABEL-COSIA")) as src:
            lab = src.read(1)[::4, ::4].ravel()
        feats.append(np.column_stack([rgbi, dem[0] - dem[1]]))
        ys.append(lab)
    X, y = np.concatenate(feats), np.concatenate(ys)
    keep = np.isin(y, [0, 3])  # building vs impervious surface
    X, y = X[keep], y[keep]
    train = np.random.default_rng(0).random(len(y)) < 0.5
    spectral = _nearest_centroid(X[:, :4], y, train)
    with_height = _nearest_centroid(X, y, train)
    print(f"building vs impervious: aerial only {spectral:.3f}, aerial + height {with_height:.3f}")
    assert with_height > 0.9 and with_height > spectral + 0.1


# -- the contiguous zone of extra patches --------------------------------------------------------
def test_zone_adds_contiguous_extra_patches_and_keeps_toy_files(
    tmp_path: Path, sample_root: Path
) -> None:
    from flairlab.data.check import check_dataset
    from flairlab.data.index import index_dataset, index_patches
    from flairlab.data.sample import EXTRA_CSV, ZONE_ORIGIN, zone_patches

    toy = load_toy_splits()
    root = make_sample(tmp_path / "z", n_patches=2, seed=0, zone=3, workers=2, progress=False)
    info = json.loads((root / MARKER).read_text())
    extra = info["extra_patches"]
    domain, roi, r0, c0 = ZONE_ORIGIN
    block = {f"{domain}_{roi}_{r}-{c}" for r in range(r0, r0 + 3) for c in range(c0, c0 + 3)}
    assert set(extra) == block - set(toy.index) and not set(extra) & set(toy.index)
    assert list(zone_patches(toy, 3).index) == extra and len(extra) == 8  # (5, 10) is a toy id
    assert len(info["patches"]) == 2 and info["zone"] == 3
    # toy files are those of every other sample (process pool or not); extras are real patches
    ref, got = _digest(sample_root), _digest(root)
    assert all(ref[k] == v for k, v in got.items() if k.endswith(".tif") and k in ref)
    assert sum(k.endswith(".tif") for k in got) == 10 * (2 + len(extra))
    # listed in their own split CSV (official format), not in the toy CSVs nor the toy split file
    idx = index_dataset(root)
    assert set(idx.index[idx["split"] == "extra"]) == set(extra)
    assert set(index_patches(root / EXTRA_CSV, root).index) == set(extra)
    for split in SPLITS:
        assert not set(extra) & set((root / TOY_CSV.format(split)).read_text().split())
    assert not set(extra) & set(_gpkg(root, CAT.split_gpkg)["patch_id"])
    assert set(extra) <= set(_gpkg(root, "GLOBAL_SENTINEL2_MTD_DATES.gpkg")["patch_id"])
    assert check_dataset(root, progress=False).empty
    # neighbours join: the shared edge of two extra patches continues the same scene
    a, b = f"{domain}_{roi}_{r0}-{c0}", f"{domain}_{roi}_{r0}-{c0 + 1}"
    with rasterio.open(root / rel_path(a, "DEM_ELEV")) as sa, \
            rasterio.open(root / rel_path(b, "DEM_ELEV")) as sb:  # fmt: skip
        assert sa.bounds.right == pytest.approx(sb.bounds.left)
        left, right = sa.read(2)[:, -1], sb.read(2)[:, 0]  # DTM columns either side of the edge
    assert np.abs(left - right).mean() < 0.5
    with pytest.raises(ValueError, match="zone"):
        make_sample(tmp_path / "bad", n_patches=1, zone=40, progress=False)
