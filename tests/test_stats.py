"""Streaming statistics equal numpy, merge associatively, scale out, find planted band groups."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _flairtree import CAT, PATCHES, make_tree, split_csvs

from flairlab.data.errors import DataError
from flairlab.data.index import index_patches
from flairlab.explore.bandgroups import (
    cluster_bands,
    compare_groups,
    discover_groups,
    group_indices,
    load_norm_file,
    norm_entries,
    rand_index,
    save_norm_file,
)
from flairlab.explore.scale import compute_stats, select_patches
from flairlab.explore.stats import BandStats, HistSpec, hist_quantile, resample_labels
from flairlab.explore.stats_ts import ClassCounts, CloudStats, ProfileStats

RNG = np.random.default_rng(42)


def check_against_numpy(st: BandStats, g: int, values: np.ndarray) -> None:
    """`values` (C, N) transformed float64 values of group g, invalid ones already removed."""
    for b, v in enumerate(values):
        v = v[np.isfinite(v)]
        assert st.count[g, b] == v.size
        np.testing.assert_allclose(st.mean[g, b], v.mean(), rtol=1e-12)
        np.testing.assert_allclose(st.var()[g, b], v.var(), rtol=1e-10)
        assert st.min[g, b] == v.min() and st.max[g, b] == v.max()
        np.testing.assert_array_equal(st.hist[g, b], np.histogram(v, st.spec.edges)[0])
        assert st.under[g, b] == (v < st.spec.lo).sum()
        assert st.over[g, b] == (v > st.spec.hi).sum()


def test_integer_path_with_groups_equals_numpy():
    x = RNG.integers(0, 256, (4, 50_000)).astype(np.uint8)
    codes = RNG.integers(0, 6, 50_000)
    st = BandStats(4, HistSpec(10, 200, 37), n_groups=6).update(x, codes)  # odd bins, out-of-range
    for g in range(6):
        check_against_numpy(st, g, x[:, codes == g].astype(np.float64))


def test_float_db_path_counts_invalid_and_overflow():
    x = RNG.lognormal(-3, 2, (2, 20_000)).astype(np.float32)
    x[0, :7] = 0.0  # log of 0: invalid, never a value
    x[1, 3] = np.nan
    x[1, 4] = -1.0
    codes = RNG.integers(0, 3, 20_000)
    spec = HistSpec(-35, 5, 80, "db")
    st = BandStats(2, spec, n_groups=3).update(x, codes)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = 10 * np.log10(x.astype(np.float64))
    for g in range(3):
        check_against_numpy(st, g, t[:, codes == g])
    assert st.invalid[:, 0].sum() == 7 and st.invalid[:, 1].sum() == 2
    assert st.under.sum() > 0 and st.over.sum() > 0  # the test data reaches both tails


def test_bin_edges_match_numpy_at_exact_edges():
    spec = HistSpec(0, 10000, 100)
    x = np.array([[0, 99, 100, 101, 9900, 9999, 10000, 10001, 65535]], np.uint16)
    st = BandStats(1, spec).update(x)
    ref = np.histogram(x[0][x[0] <= 10000], spec.edges)[0]
    np.testing.assert_array_equal(st.hist[0, 0], ref)
    assert st.over[0, 0] == 2 and st.hist[0, 0, -1] == 3  # last bin is closed: 10000 is in it
    flt = BandStats(1, spec).update(x.astype(np.float64))  # float path, same answer
    np.testing.assert_array_equal(flt.hist, st.hist)


def test_merge_is_associative_and_chunked_equals_single_pass():
    x = RNG.normal(0, 1, (3, 30_000)) * [[1], [50], [1e4]] + [[0], [100], [1e6]]
    x[1] += 3 * x[0]
    spec = HistSpec(-5, 5, 40)
    whole = BandStats(3, spec, comoments=True).update(x)
    parts = [BandStats(3, spec, comoments=True).update(p) for p in np.array_split(x, 7, axis=1)]

    def fresh():
        return BandStats(3, spec, comoments=True)

    left = fresh()
    for p in parts:
        left.merge(p)
    right = fresh()
    for p in reversed(parts):
        right = p.__class__(3, spec, comoments=True).merge(p).merge(right)
    tree = (
        fresh()
        .merge(fresh().merge(parts[0]).merge(parts[1]).merge(parts[2]))
        .merge(fresh().merge(parts[3]).merge(parts[4]).merge(parts[5]).merge(parts[6]))
    )
    for st in (left, right, tree):
        for k in ("count", "hist", "under", "over"):
            np.testing.assert_array_equal(getattr(st, k), getattr(whole, k))
        np.testing.assert_allclose(st.mean, whole.mean, rtol=1e-13)
        np.testing.assert_allclose(st.m2, whole.m2, rtol=1e-10)
        np.testing.assert_allclose(st.corr(), np.corrcoef(x), atol=1e-12)
    check_against_numpy(whole, 0, x)


def test_hist_quantile_within_one_bin_of_numpy():
    spec = HistSpec(-1, 1, 100)
    v = np.tanh(RNG.normal(0.3, 0.5, 10_001))
    st = BandStats(1, spec).update(v[None])
    for q in (0.25, 0.5, 0.75):
        est = hist_quantile(st.hist[0, 0], spec, q, st.under[0, 0], st.over[0, 0])
        assert abs(est - np.quantile(v, q)) <= (spec.hi - spec.lo) / spec.bins  # dense data
        assert abs(est - np.sort(v)[int(np.ceil(q * v.size)) - 1]) <= 0.02
    assert np.isnan(hist_quantile(np.zeros(100), spec, 0.5))


def test_resample_labels_majority_and_nearest():
    lab = np.zeros((8, 8), np.uint8)
    lab[:4, :4] = 3
    lab[0, 0] = 5  # minority pixel loses the vote
    lab[4:, 4:] = 7
    out = resample_labels(lab, (2, 2), 19)
    np.testing.assert_array_equal(out, [[3, 0], [0, 7]])
    brute = RNG.integers(0, 4, (12, 12)).astype(np.uint8)
    maj = resample_labels(brute, (3, 3), 4)
    for i in range(3):
        for j in range(3):
            block = brute[4 * i : 4 * i + 4, 4 * j : 4 * j + 4].ravel()
            assert maj[i, j] == np.bincount(block, minlength=4).argmax()
    np.testing.assert_array_equal(resample_labels(lab, (16, 16), 19, "nearest")[::2, ::2], lab)


def test_label_clouds_profile_accumulators():
    cc = ClassCounts(4).update(np.array([[0, 1], [1, 3]]), "train", "D1")
    cc.merge(ClassCounts(4).update(np.array([[3, 3]]), "train", "D1"))
    assert cc.counts[("train", "D1")].tolist() == [1, 2, 0, 3]
    mask = np.zeros((3, 2, 10, 10), np.uint8)
    mask[1, 1, :5] = 90  # date 1: half cloudy
    dates = np.array(["2021-01-05", "2021-02-05", "2021-03-05"], "datetime64[D]")
    cs = CloudStats().update(mask, dates)
    df = cs.to_frame()
    assert df["cloudy_frac"].tolist() == [0.0, 0.5, 0.0]
    assert df["clean_date_frac"].tolist() == [1.0, 0.0, 1.0]
    assert cs.frac_hist.sum() == 3
    with pytest.raises(DataError, match="out of range"):
        CloudStats().update(mask + 101, dates, path="m.tif")
    vals = RNG.uniform(-1, 1, (3, 100))
    codes = np.repeat([0, 1], 50)
    ps = ProfileStats({"ndvi": HistSpec(-1, 1, 100)}, 2, "date").update("ndvi", vals, codes, dates)
    prof = ps.to_frame()
    for _, r in prof.iterrows():
        t = list(dates.astype(str)).index(r["period"])
        v = np.sort(vals[t, codes == r["class_id"]])
        # the estimate lies in the bin holding the ceil(q*n)-th smallest value
        assert abs(r["median"] - v[int(np.ceil(0.5 * v.size)) - 1]) <= 0.02
        assert r["pixels"] == 50


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("stats") / "FLAIR-HUB")


@pytest.fixture(scope="module")
def serial(tree):
    idx = index_patches(split_csvs(tree), tree)
    return idx, compute_stats(idx, workers=0, progress=False)


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_dataset_stats_equal_numpy_on_files(serial):
    idx, st = serial
    aerial = np.concatenate([_read(p).reshape(4, -1) for p in idx["AERIAL_RGBI"]], 1)
    check_against_numpy(st.bands["AERIAL_RGBI"]["all"], 0, aerial.astype(np.float64))
    np.testing.assert_allclose(
        st.bands["AERIAL_RGBI"]["all"].corr(), np.corrcoef(aerial.astype(np.float64)), atol=1e-10
    )
    d006 = idx[idx["domain"] == "D006-2020"]
    s1 = np.concatenate(
        [
            _read(p).reshape(-1, 2, 100).transpose(1, 0, 2).reshape(2, -1)
            for p in d006["SENTINEL1-ASC_TS"]
        ],
        1,
    )
    check_against_numpy(
        st.bands["SENTINEL1-ASC_TS"]["domain:D006-2020"], 0, 10 * np.log10(s1.astype(np.float64))
    )
    # per class: S2 pixels under the majority COSIA class of each 10.24 m cell
    s2_cls = st.bands["SENTINEL2_TS"]["class"]
    vals, cls = [], []
    for pid in idx.index:
        s2 = _read(idx.at[pid, "SENTINEL2_TS"]).reshape(-1, 10, 100)
        lab = resample_labels(_read(idx.at[pid, "AERIAL_LABEL-COSIA"])[0], (10, 10), 19).ravel()
        vals.append(s2.transpose(1, 0, 2).reshape(10, -1))
        cls.append(np.tile(lab, s2.shape[0]))
    vals, cls = np.concatenate(vals, 1).astype(np.float64), np.concatenate(cls)
    for g in np.unique(cls)[:5]:
        check_against_numpy(s2_cls, int(g), vals[:, cls == g])
    cc = st.class_counts["cosia"].to_frame()
    assert cc.groupby("split")["pixels"].sum().to_dict() == {
        "test": 512 * 512,
        "train": 2 * 512 * 512,
        "valid": 512 * 512,
    }
    clouds = st.clouds.to_frame().set_index("date")
    assert clouds.loc["2020-03-11", "cloudy_frac"] == 1.0  # planted: date 1 fully cloudy
    assert clouds.loc["2021-05-12", "snowy_frac"] == pytest.approx(0.3)
    assert st.n_patches == len(PATCHES) and not st.missing


def _assert_same(a, b) -> None:
    assert a.n_patches == b.n_patches
    for mod, table in a.bands.items():
        assert set(table) == set(b.bands[mod])
        for key, s in table.items():
            o = b.bands[mod][key]
            np.testing.assert_array_equal(s.hist, o.hist)
            np.testing.assert_array_equal(s.count, o.count)
            np.testing.assert_allclose(s.mean, o.mean, rtol=1e-12)
            np.testing.assert_allclose(s.m2, o.m2, rtol=1e-9)
            if s.comoments:
                np.testing.assert_allclose(s.co_m2, o.co_m2, rtol=1e-9, atol=1e-6)
    assert a.clouds.by_date.keys() == b.clouds.by_date.keys()
    for var, t in a.profiles.hists.items():
        for k, v in t.items():
            np.testing.assert_array_equal(v, b.profiles.hists[var][k])


@pytest.mark.slow
def test_process_pool_and_dask_equal_serial(serial):
    idx, ref = serial
    _assert_same(ref, compute_stats(idx, workers=2, chunk_size=1, progress=False))
    distributed = pytest.importorskip("dask.distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        got = compute_stats(idx, executor=client.get_executor(), chunk_size=1, progress=False)
    _assert_same(ref, got)


def test_cluster_bands_recovers_planted_groups():
    z = RNG.normal(0, 1, (3, 5000))
    plant = [0, 1, 0, 2, 1, 0, 2]
    x = np.stack([z[g] + 0.1 * RNG.normal(0, 1, 5000) for g in plant])
    names = [f"b{i}" for i in range(7)]
    groups = cluster_bands(np.corrcoef(x), names, min_corr=0.8)
    assert groups == [["b0", "b2", "b5"], ["b1", "b4"], ["b3", "b6"]]
    assert cluster_bands(np.corrcoef(x), names, min_corr=0.0) == [names]
    assert rand_index(groups, [names]) < 1 and rand_index(groups, groups) == 1.0


def test_band_groups_on_files_and_norm_file(serial, tmp_path):
    idx, st = serial
    found = discover_groups(st, min_corr=0.9)
    assert found["SENTINEL2_TS"] == CAT.modality("s2").band_groups  # planted = MAESTRO's
    assert found["AERIAL_RGBI"] == [["R", "G", "B"], ["NIR"]]
    table = compare_groups(found).set_index("modality")
    assert table.loc["SENTINEL2_TS", "same"] and table.loc["AERIAL_RGBI", "same"]
    entries = norm_entries(st, found, 0.9)
    path = save_norm_file(tmp_path / "norm.yaml", entries, source="tree", n_patches=len(idx))
    back = load_norm_file(path)["modalities"]
    s1 = back["SENTINEL1-ASC_TS"]
    assert s1["space"] == "db" and s1["band_groups"] == [["VV"], ["VH"]]
    np.testing.assert_allclose(s1["scaled_mean"], np.array(s1["mean"]) * np.log(10) / 10 / 5)
    np.testing.assert_allclose(
        back["AERIAL_RGBI"]["scaled_std"], np.array(back["AERIAL_RGBI"]["std"]) / 255
    )
    with pytest.raises(DataError, match="exists"):
        save_norm_file(path, entries)
    aerial = back["AERIAL_RGBI"]["band_groups"]
    assert group_indices(aerial, ["NIR", "R", "G", "B"]) == [[1, 2, 3], [0]]  # model order
    with pytest.raises(DataError, match="missing"):
        group_indices(aerial, ["R", "G"])
    json_path = save_norm_file(tmp_path / "norm.json", entries)
    assert load_norm_file(json_path)["modalities"].keys() == back.keys()
    bad = path.read_text().replace("space: db", "space: linear")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(DataError, match=r"bad.yaml: modalities\.SENTINEL1-ASC_TS\.space"):
        load_norm_file(tmp_path / "bad.yaml")


def test_bad_label_value_raises_naming_the_file(tree, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tree, root)
    idx = index_patches(split_csvs(root), root)
    path = idx["AERIAL_LABEL-COSIA"].iloc[0]
    with rasterio.open(path, "r+") as ds:
        arr = ds.read()
        arr[0, 0, 0] = 40
        ds.write(arr)
    msg = r"LABEL-COSIA_FF-S1-14_1-1\.tif: COSIA label values out of range.*\[40\]"
    with pytest.raises(DataError, match=msg):
        compute_stats(idx, workers=0, progress=False, by=("class",))


def test_select_patches_filters_split_and_count(tree):
    df = select_patches(tree, split="train")
    assert list(df.index) == [p for p, s in PATCHES.items() if s == "train"]
    assert len(select_patches(tree, n_patches=2, seed=1)) == 2
    with pytest.raises(DataError, match="split"):
        select_patches(tree, split="nope")


def test_stats_cli_writes_norm_file(tree, tmp_path, capsys):
    from flairlab.cli import main

    out = tmp_path / "out"
    assert main(["stats", str(tree), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    norm = load_norm_file(out / "norm_stats.yaml")
    assert norm["n_patches"] == 2  # the train split of the tree
    assert norm["modalities"]["SENTINEL2_TS"]["band_groups"] == CAT.modality("s2").band_groups
    assert (out / "band_summary.csv").is_file() and "SENTINEL2_TS" in capsys.readouterr().out
    # an input error: one line naming the file, exit 2 (the traceback only with --debug)
    assert main(["stats", str(tree), "--out", str(out), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flairlab stats: error:") and "exists" in err and "Traceback" not in err
    with pytest.raises(DataError, match="exists"):
        main(["--debug", "stats", str(tree), "--out", str(out), "--workers", "0", "--quiet"])
