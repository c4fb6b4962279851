"""Packed training store: store vs GeoTIFF equality (planted values, every modality and label),
bit-identical dataset items, pack-time resampling, memory:// round trip, resume after a killed
pool, stale-store refusal, damaged chunks, dask packing, the CLI and GDAL-free reading."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from _flairtree import make_tree

from flairlab.cli import main as cli_main
from flairlab.data.catalog import load_catalog, parse_catalog
from flairlab.data.dataset import FlairHubDataset, dataset_index
from flairlab.data.errors import DataError
from flairlab.data.pack import pack
from flairlab.data.reader import read_dates, read_raster
from flairlab.data.sources import ensure_source
from flairlab.data.store import MARKERS, StaleStoreError, open_store

CAT = load_catalog()
ALL_MODS = ("aerial", "dem", "spot", "rlt", "s2", "s1_asc", "s1_desc")
SMALL = dict(
    modalities=ALL_MODS,
    targets=("cosia", "lpis"),
    image_size={"aerial": 64, "dem": 32, "rlt": 32, "spot": 16, "cosia": 64, "lpis": 64},
    n_dates={"s2": 4, "s1_asc": 2, "s1_desc": 2},
)


def assert_same_items(a: FlairHubDataset, b: FlairHubDataset, n: int | None = None) -> None:
    assert a.patch_ids == b.patch_ids
    for i in range(len(a) if n is None else min(n, len(a))):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        for k, v in x.items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == y[k].dtype and torch.equal(v, y[k]), (k, x["patch_id"])
            else:
                assert v == y[k], k


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted-value tree of tests/_flairtree.py (4 patches, every modality)."""
    return make_tree(tmp_path_factory.mktemp("planted") / "FLAIR-HUB")


@pytest.fixture(scope="module")
def tree_store(tree: Path) -> Path:
    out = tree.parent / "tree.zarr"
    pack(tree, out, workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def sample_store(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "sample.zarr"
    rep = pack(sample_root, out, workers=0, progress=False)
    assert rep.packed == rep.n_patches and rep.reused == 0
    return out


# -- equality -----------------------------------------------------------------------------------
def test_store_equals_geotiffs_for_every_modality_and_label(tree: Path, tree_store: Path):
    store = open_store(tree_store)
    index = dataset_index(tree)
    assert store.patch_ids == list(index.index)
    assert set(store.modalities) == set(CAT.modality_names)
    for pid in store.patch_ids:
        for name in CAT.modality_names:
            path = index.at[pid, name]
            want = read_raster(path, name)
            got = store.read(name, pid)
            assert got.dtype == want.dtype and np.array_equal(got, want), (pid, name)
            via_zarr = np.asarray(store.array(name)[store.patch_ids.index(pid)])[: len(got)]
            assert np.array_equal(via_zarr, got)  # the direct chunk decoder agrees with zarr
            with rasterio.open(path) as src:
                assert store.geo(name, pid) == (tuple(src.transform)[:6], src.crs.to_string())
            if CAT.modality(name).dates is not None:
                assert np.array_equal(store.dates(name)[pid], read_dates(tree, name)[pid])
    assert store.index("valid").index.tolist() == index.index[index["split"] == "valid"].tolist()
    assert store.manifest["complete"] and "label range" in store.manifest["checks"]
    assert store.meta("nonfinite").sum() == 0


def test_dataset_items_bit_identical_from_store(sample_root: Path, sample_store: Path):
    for train in (False, True):
        for split in ("train", "test"):
            kw = dict(SMALL, train=train, seed=5)
            assert_same_items(
                FlairHubDataset(sample_root, split, **kw),
                FlairHubDataset(sample_store, split, **kw),
            )
    # time series keep every date (zero padding past T is never served)
    store = open_store(sample_store)
    lengths = store.dates("s2").lengths()
    assert lengths.min() < lengths.max() == store.manifest["arrays"]["SENTINEL2_TS"]["shape"][0]


def test_dataset_from_store_in_dataloader_workers(sample_root: Path, sample_store: Path):
    from torch.utils.data import DataLoader

    from flairlab.data.dataset import collate

    kw = dict(SMALL, train=False)
    loaders = [
        DataLoader(FlairHubDataset(r, "train", **kw), batch_size=3, collate_fn=collate,
                   num_workers=w)
        for r, w in ((sample_root, 0), (sample_store, 2))
    ]  # fmt: skip
    for a, b in zip(*loaders, strict=True):
        for k in ("aerial", "s2", "s2_dates", "cosia", "lpis"):
            assert torch.equal(a[k], b[k]), k


def test_pack_time_resampling_is_explicit_and_exact(sample_root: Path, tmp_path: Path):
    out = tmp_path / "r64.zarr"
    mods = ("aerial", "dem", "s2")
    pack(sample_root, out, "valid", modalities=(*mods, "cosia"),
         resample={"aerial": 64, "dem": 64, "cosia": 64}, workers=0, progress=False)  # fmt: skip
    store = open_store(out)
    assert store.packed_size("aerial") == 64 and store.packed_size("s2") is None
    assert store.read("AERIAL_RGBI", store.patch_ids[0]).shape == (4, 64, 64)
    kw = dict(modalities=mods, targets=("cosia",), n_dates={"s2": 4},
              image_size={"aerial": 64, "dem": 64, "cosia": 64})  # fmt: skip
    for train in (False, True):
        assert_same_items(
            FlairHubDataset(sample_root, "valid", train=train, **kw),
            FlairHubDataset(out, "valid", train=train, **kw),
        )
    with pytest.raises(DataError, match="resampled to 64 px"):
        FlairHubDataset(out, "valid", **{**kw, "image_size": {"aerial": 128, "dem": 64}})
    with pytest.raises(DataError, match="time series"):
        pack(sample_root, tmp_path / "bad.zarr", "valid", resample={"s2": 5}, progress=False)


def test_memory_url_round_trip(sample_root: Path):
    import fsspec

    url = "memory://flairlab-test/sample.zarr"
    try:
        rep = pack(sample_root, url, "valid", modalities=("aerial", "s2", "cosia"), workers=2,
                   progress=False)  # fmt: skip
        assert rep.url == url and rep.packed == len(open_store(url))
        kw = dict(modalities=("aerial", "s2"), image_size={"aerial": 64, "cosia": 64},
                  n_dates={"s2": 4}, train=True, seed=2)  # fmt: skip
        assert_same_items(FlairHubDataset(sample_root, "valid", **kw),
                          FlairHubDataset(url, "valid", **kw))  # fmt: skip
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists("/flairlab-test"):
            fs.rm("/flairlab-test", recursive=True)


# -- life cycle ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_the_pool_is_killed(sample_root: Path, tmp_path: Path):
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "flairlab.cli", "pack", str(sample_root), str(out),
           "--workers", "2", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    markers = out / MARKERS
    deadline = time.monotonic() + 120
    try:
        while not (markers.is_dir() and any(markers.iterdir())):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "pack wrote no patch in 120 s"
            time.sleep(0.02)
    finally:  # the whole process group: the CLI and its pool workers
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    n = len(dataset_index(sample_root))
    done = len(list(markers.iterdir()))
    assert 0 < done < n, f"{done} patches packed before the kill"
    with pytest.raises(DataError, match="incomplete"):
        FlairHubDataset(out, "train")
    rep = pack(sample_root, out, workers=0, progress=False)
    # every patch marked before the kill is reused, except a marker the kill cut short (redone)
    assert rep.reused >= done - 2 and rep.reused + rep.packed == n
    kw = dict(SMALL, train=False)
    assert_same_items(
        FlairHubDataset(sample_root, "train", **kw), FlairHubDataset(out, "train", **kw)
    )


def test_stale_store_is_refused_then_repacked(tree: Path, tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    out = tmp_path / "s.zarr"
    pack(src, out, modalities=("aerial", "s2"), workers=0, progress=False)
    FlairHubDataset(out, "train", modalities=("aerial",), targets=())  # fresh: accepted
    pid = "D006-2020_FF-S1-14_1-2"
    path = Path(dataset_index(src).at[pid, "AERIAL_RGBI"])
    with rasterio.open(path, "r+") as dst:  # the source changes after packing
        dst.write(np.full((4, 512, 512), 9, np.uint8))
    with pytest.raises(StaleStoreError, match=path.name):
        FlairHubDataset(out, "train", modalities=("aerial",), targets=())
    open_store(out, verify="none")  # explicitly unchecked: allowed
    rep = pack(src, out, modalities=("aerial", "s2"), workers=0, progress=False)
    assert (rep.packed, rep.reused) == (1, 3)  # only the changed patch is packed again
    assert (open_store(out).read("aerial", pid) == 9).all()
    # the catalog's description of a packed modality changes: refused, naming it
    data = yaml.safe_load(CAT.path.read_text(encoding="utf-8"))
    data["modalities"]["SENTINEL2_TS"]["dtype"] = "int16"
    other = parse_catalog(data, CAT.path)
    with pytest.raises(StaleStoreError, match="SENTINEL2_TS"):
        open_store(out, catalog=other)


def test_damaged_or_missing_chunk_names_patch_and_modality(tree: Path, tmp_path: Path):
    out = tmp_path / "d.zarr"
    pack(tree, out, modalities=("aerial", "dem"), workers=0, progress=False)
    ds = FlairHubDataset(out, None, modalities=("aerial", "dem"), targets=())
    i = 2
    pid = ds.patch_ids[i]
    chunk = out / "DEM_ELEV" / "c" / str(i) / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-100])  # truncated
    with pytest.raises(DataError, match=rf"DEM_ELEV of patch {pid}.*damaged"):
        ds[i]
    chunk.unlink()  # missing: zarr alone would return zeros
    with pytest.raises(DataError, match=rf"DEM_ELEV of patch {pid}.*missing"):
        ds[i]
    ds[1]  # the other patches still read


def test_other_codec_chains_are_read_through_zarr(tree: Path, tmp_path: Path, monkeypatch):
    from zarr.codecs import Crc32cCodec, ZstdCodec

    import flairlab.data.pack as packmod

    monkeypatch.setattr(packmod, "_codecs", lambda codec: [ZstdCodec(level=1), Crc32cCodec()])
    out = tmp_path / "z.zarr"
    pack(tree, out, modalities=("dem", "s1_asc"), workers=0, progress=False)
    store = open_store(out)
    assert store._decoder("DEM_ELEV") is None  # not a chain `pack` writes: zarr decodes it
    index = dataset_index(tree)
    for pid in store.patch_ids:
        for name in ("DEM_ELEV", "SENTINEL1-ASC_TS"):
            assert np.array_equal(store.read(name, pid), read_raster(index.at[pid, name], name))
    chunk = out / "DEM_ELEV" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:50])
    with pytest.raises(DataError, match=rf"DEM_ELEV of patch {store.patch_ids[1]}"):
        store.read("DEM_ELEV", store.patch_ids[1])
    chunk.unlink()
    with pytest.raises(DataError, match="missing"):
        store.read("DEM_ELEV", store.patch_ids[1])


def test_pack_refuses_foreign_folders_and_other_layouts(tree: Path, tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="non-empty folder"):
        pack(tree, foreign, modalities=("aerial",), progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "o.zarr"
    pack(tree, out, modalities=("aerial",), workers=0, progress=False)
    with pytest.raises(DataError, match=r"another layout.*modalities"):
        pack(tree, out, modalities=("aerial", "dem"), progress=False)
    rep = pack(tree, out, modalities=("aerial", "dem"), workers=0, overwrite=True, progress=False)
    assert rep.packed == 4 and open_store(out).modalities == ["AERIAL_RGBI", "DEM_ELEV"]


def test_pack_validates_every_file(tree: Path, tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    index = dataset_index(src)
    bad = Path(index.iloc[1]["AERIAL_LABEL-COSIA"])
    with rasterio.open(bad, "r+") as dst:
        arr = dst.read()
        arr[0, 5, 5] = 40  # COSIA has 19 classes
        dst.write(arr)
    with pytest.raises(DataError, match=rf"{bad.name}.*out of range"):
        pack(src, tmp_path / "x.zarr", modalities=("cosia",), workers=0, progress=False)


def test_pack_on_a_dask_cluster(tree: Path, tree_store: Path, tmp_path: Path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(
        cluster
    ) as client:  # fmt: skip
        rep = pack(tree, tmp_path / "dask.zarr", client=client, progress=False)
    assert rep.packed == 4
    a, b = open_store(tree_store), open_store(tmp_path / "dask.zarr")
    for pid in a.patch_ids:
        for name in ("AERIAL_RGBI", "SENTINEL2_TS", "ALL_LABEL-LPIS"):
            assert np.array_equal(a.read(name, pid), b.read(name, pid))


def test_cli_pack(tree: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli.zarr"
    args = ["pack", str(tree), str(out), "--modalities", "aerial,s2", "--workers", "0",
            "--resample", "aerial=128", "--quiet"]  # fmt: skip
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "packed 4 patches (4 now, 0 reused)" in printed and str(out) in printed
    assert cli_main(args) == 0 and "(0 now, 4 reused)" in capsys.readouterr().out
    assert open_store(out).packed_size("aerial") == 128
    assert cli_main(["pack", str(tmp_path / "nope"), str(out), "--quiet"]) == 2
    assert "not a FLAIR-HUB folder" in capsys.readouterr().err


def test_catalog_sources_name_stores(tree: Path, tree_store: Path, tmp_path: Path, monkeypatch):
    data = yaml.safe_load(CAT.path.read_text(encoding="utf-8"))
    data["sources"]["packed"] = {"path": str(tree_store)}
    data["sources"]["planted"] = {"path": str(tree)}
    data["sources"]["derived"] = {"path": "derived.zarr", "env": "FLAIRLAB_TEST_DERIVED",
                                  "generate": True, "packed_from": "planted",
                                  "resample": {"aerial": 128}}  # fmt: skip
    cat_file = tmp_path / "catalog.yaml"
    cat_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    cat = load_catalog(cat_file)
    kw = dict(modalities=("aerial",), targets=(), train=False, catalog=cat)
    assert_same_items(
        FlairHubDataset(tree, "train", **kw), FlairHubDataset("packed", "train", **kw)
    )
    derived = tmp_path / "elsewhere" / "derived.zarr"
    monkeypatch.setenv("FLAIRLAB_TEST_DERIVED", str(derived))
    kw["image_size"] = {"aerial": 128}
    with pytest.raises(DataError, match="not packed yet"):
        FlairHubDataset("derived", "train", **kw)
    assert ensure_source("derived", cat) == str(derived)  # packed from `planted`
    ds = FlairHubDataset("derived", "train", **kw)
    assert ds.store.url == str(derived) and ds.store.packed_size("aerial") == 128
    assert_same_items(FlairHubDataset(tree, "train", **kw), ds)
    bad = dict(data, sources={**data["sources"], "x": {"path": "x", "packed_from": "nowhere"}})
    with pytest.raises(DataError, match="packed_from names unknown source"):
        parse_catalog(bad, cat_file)


def test_store_reading_needs_no_gdal_stack(tree_store: Path):
    code = f"""
import sys
for blocked in ("rasterio", "pyogrio", "geopandas", "fiona", "osgeo"):
    sys.modules[blocked] = None  # any import of the GDAL stack fails
from flairlab.data.dataset import FlairHubDataset
ds = FlairHubDataset({str(tree_store)!r}, "train", modalities=("aerial", "s2"), targets=("cosia",),
                     image_size={{"aerial": 64, "cosia": 64}}, n_dates={{"s2": 2}})
item = ds[0]
print(tuple(item["aerial"].shape), tuple(item["s2"].shape), tuple(item["cosia"].shape))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[-2] == "(1, 4, 64, 64) (2, 10, 10, 10) (64, 64)"


def test_pack_records_split_csvs_given_as_globs_and_lists(sample_root: Path):
    """Every split CSV a catalog source names — file, glob or a list of them — is recorded with
    the store's source files (a change to any of them makes the store stale)."""
    from flairlab.data.pack import _metadata_files

    cat = load_catalog()
    source = cat.sources["sample"].model_copy(
        update={"splits": {"train": ["FLAIR-HUB_*TRAIN.csv"], "valid": "*_VALID.csv"}}
    )
    cat = cat.model_copy(update={"sources": {**cat.sources, "sample": source}})
    index = dataset_index(sample_root, cat)
    files = _metadata_files(sample_root, ["AERIAL_RGBI"], index, cat)
    assert {"FLAIR-HUB_TOY-DATASET_TRAIN.csv", "FLAIR-HUB_TOY-DATASET_VALID.csv"} <= set(files)
