"""Data pipeline: date binning (real TreeSatAI reference values, R3), scaling, geometry, labels,
and the torch dataset on the embedded sample (shapes, dtypes, identical flips, ignore values)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from flairlab.data.catalog import IGNORE_INDEX, load_catalog
from flairlab.data.dataset import (
    MODEL_BANDS,
    band_indices,
    collate,
    dates_to_ydh,
    dihedral,
    label_target,
    resize_nearest,
    scale_values,
    select_dates,
)
from flairlab.data.errors import DataError

H5_NAME = "treesatai-sample/sentinel-ts/Betula_spec._1_15679_WEFL_NLF_2019.h5"


# -- R3: date selection on the real TreeSatAI sample --------------------------------------------
@pytest.fixture(scope="module")
def treesat(shared_dir):
    h5py = pytest.importorskip("h5py")
    path = shared_dir / "data" / H5_NAME
    if not path.is_file():
        pytest.skip(f"{path} is missing")

    def doy(products: np.ndarray) -> np.ndarray:
        # product id: the 5th '_' field from the end starts with YYYYMMDD
        days = [dt.datetime.strptime(p.decode().split("_")[-5][:8], "%Y%m%d") for p in products]
        return np.array([d.timetuple().tm_yday for d in days])

    with h5py.File(path, "r") as f:
        return {
            "s2": (f["sen-2-data"][:], f["sen-2-masks"][:], doy(f["sen-2-products"][:])),
            "s1_asc": (f["sen-1-asc-data"][:], None, doy(f["sen-1-asc-products"][:])),
            "s1_desc": (f["sen-1-des-data"][:], None, doy(f["sen-1-des-products"][:])),
        }


S2_REF = {
    0: [23, 40, 58, 88, 105, 133, 158, 180, 190, 205, 238, 265, 278, 303, 330, 348],
    1: [23, 48, 55, 88, 105, 138, 158, 168, 205, 208, 238, 265, 278, 303, 340, 348],
}


@pytest.mark.parametrize("offset", [0, 1])
def test_r3_s2_eval_selection(treesat, offset):
    x, mask, doy = treesat["s2"]
    assert x.shape == (146, 10, 6, 6)
    sel = select_dates(x, 16, mask, offset=offset)
    assert doy[sel.indices].tolist() == S2_REF[offset]
    if offset == 0:
        assert sel.n_clear.tolist() == [0, 2, 3, 1, 6, 3, 3, 7, 0, 2, 4, 4, 1, 1, 0, 1]


@pytest.mark.parametrize(
    ("key", "offset", "expected"),
    [
        ("s1_asc", 0, [49, 109, 241, 302]),
        ("s1_asc", 1, [49, 109, 241, 313]),
        ("s1_asc", 2, [49, 109, 241, 313]),
        ("s1_asc", 3, [49, 109, 241, 313]),
        ("s1_desc", 0, [70, 142, 231, 328]),
        ("s1_desc", 3, [70, 142, 231, 328]),
    ],
)
def test_r3_s1_eval_selection(treesat, key, offset, expected):
    x, _, doy = treesat[key]
    assert doy[select_dates(x, 4, offset=offset).indices].tolist() == expected


def test_r3_offset_range_and_train_choice_is_clear(treesat):
    x, mask, _ = treesat["s2"]
    with pytest.raises(DataError, match="offset"):
        select_dates(x, 16, mask, offset=146 % 16 + 1)
    cloudy = (mask > 0).reshape(146, -1).any(1)
    picks = set()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        sel = select_dates(x, 16, mask, random_choice=True, rng=rng)
        for b, i in enumerate(sel.indices):
            assert 9 * b <= i < 9 * (b + 1)  # stays in its bin
            if sel.n_clear[b] > 0:
                assert not cloudy[i]  # a bin with a clear acquisition never returns a cloudy one
        picks.add(tuple(sel.indices))
    assert len(picks) > 1  # training choice is random


def test_select_dates_fallback_and_short_series():
    rng = np.random.default_rng(0)
    x = rng.random((8, 2, 3, 3)).astype(np.float32)
    mask = np.zeros((8, 2, 3, 3))
    mask[0:4, 1, 0, 0] = 40.0  # bin 0 (acq 0..3) fully cloudy -> falls back to all of them
    mask[5, 0, 2, 2] = 1.0  # bin 1: acq 5 cloudy (one pixel of the snow channel)
    sel = select_dates(x, 2, mask)
    assert sel.n_clear.tolist() == [0, 3]

    def closest(xb: np.ndarray) -> int:  # independent computation of the median-closest one
        score = np.abs(xb - np.nanmedian(xb, 0)).reshape(len(xb), -1).mean(1)
        return int(np.nanargmin(score))

    assert sel.indices[0] == closest(x[0:4].astype(np.float64))
    xb = x[4:8].astype(np.float64)
    xb[1, :, 2, 2] = np.nan
    assert sel.indices[1] == 4 + closest(xb) and sel.indices[1] != 5
    # T == D: as is; T < D: repeated, in order
    assert select_dates(x, 8).indices.tolist() == list(range(8))
    assert select_dates(x[:3], 4).indices.tolist() == [0, 0, 1, 2]
    with pytest.raises(DataError, match="no acquisition"):
        select_dates(x[:0], 4)


# -- scaling, geometry, dates, labels ---------------------------------------------------------
def test_scale_values_from_catalog():
    s1 = np.array([[[[0.0]], [[np.e**5]]]], dtype=np.float32)  # (1, 2, 1, 1)
    out = scale_values(s1, "s1_asc")
    np.testing.assert_allclose(out[0, :, 0, 0], [np.log(1e-10) / 5, 1.0], rtol=1e-6)
    s2 = np.full((1, 10, 1, 1), 2500, np.uint16)
    np.testing.assert_allclose(scale_values(s2, "s2"), 0.5)
    dem = np.array([[[[310.0]], [[300.0]]]], dtype=np.float32)  # DSM 310 m, DTM 300 m
    np.testing.assert_allclose(scale_values(dem, "dem")[0, :, 0, 0], [0.31, 0.3], rtol=1e-6)
    nan = np.array([[[[np.nan]], [[0.1]]]], dtype=np.float32)
    assert np.isfinite(scale_values(nan, "s1_desc")).all()


def test_band_order_aerial_nirrgb():
    assert band_indices("aerial") == [3, 0, 1, 2]  # file R, G, B, NIR -> NIR, R, G, B
    assert set(MODEL_BANDS) >= {"aerial", "dem", "s2", "s1_asc", "s1_desc", "spot", "rlt"}
    for key in MODEL_BANDS:  # every model key is a catalog alias
        assert load_catalog().modality(key).alias == key


def test_resize_nearest_and_dihedral():
    a = np.arange(16).reshape(4, 4)
    np.testing.assert_array_equal(resize_nearest(a, 2), a[1::2, 1::2])
    up = resize_nearest(np.arange(4).reshape(2, 2), 4)
    np.testing.assert_array_equal(up, np.kron(np.arange(4).reshape(2, 2), np.ones((2, 2))))
    np.testing.assert_array_equal(dihedral(a, True, False, False), a[::-1])
    np.testing.assert_array_equal(dihedral(a, False, True, True), a[:, ::-1].T)


def test_dates_to_ydh():
    d = np.array(["2019-07-01", "2020-12-31", "2021-01-01"], dtype="datetime64[D]")
    assert dates_to_ydh(d).tolist() == [[2019, 182, 0], [2020, 366, 0], [2021, 1, 0]]
    assert dates_to_ydh(d).dtype == np.int64


def test_labels_ignore_and_out_of_range():
    y = np.array([[[0, 14, 15, 18]]], dtype=np.uint8)
    assert label_target(y, "cosia").tolist() == [[0, 14, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(DataError, match="out of range"):
        label_target(np.array([[[3, 19]]], np.uint8), "cosia", path="x.tif")
    lp = np.stack([np.full((2, 2), 22), np.full((2, 2), 30), np.full((2, 2), 45)]).astype(np.uint8)
    assert (label_target(lp, "lpis") == 22).all()  # level 1 band; 22 (background) is a class
    lp[0, 0, 0] = 23
    with pytest.raises(DataError):
        label_target(lp, "lpis")


def test_collate_contract():
    items = [
        {
            "s2": torch.zeros(4, 10, 5, 5),
            "s2_dates": torch.zeros(4, 3, dtype=torch.int64),
            "patch_id": f"p{i}",
            "roi": "r",
        }
        for i in range(3)
    ]
    b = collate(items)
    assert b["s2"].shape == (3, 4, 10, 5, 5) and b["s2_dates"].shape == (3, 4, 3)
    assert b["patch_id"] == ["p0", "p1", "p2"]


# -- the torch dataset on the embedded sample -------------------------------------------------
SMALL = dict(
    modalities=("aerial", "dem", "s2", "s1_asc", "s1_desc"),
    image_size={"aerial": 64, "dem": 32, "cosia": 64},
    n_dates={"s2": 4, "s1_asc": 2, "s1_desc": 2},
)
OPS = [(v, h, t) for v in (False, True) for h in (False, True) for t in (False, True)]


def _ops_matching(a: np.ndarray, b: np.ndarray) -> set[tuple[bool, bool, bool]]:
    """Dihedral ops that map `a` onto `b` (last two axes)."""
    return {op for op in OPS if np.array_equal(dihedral(a, *op), b)}


def test_dataset_batch_contract(sample_root):
    from torch.utils.data import DataLoader

    from flairlab.data.dataset import FlairHubDataset

    ds = FlairHubDataset(sample_root, split="train", seed=0, **SMALL)
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate, num_workers=2)))
    assert batch["aerial"].shape == (3, 1, 4, 64, 64) and batch["aerial"].dtype == torch.float32
    assert batch["dem"].shape == (3, 1, 2, 32, 32)
    assert batch["s2"].shape == (3, 4, 10, 10, 10) and batch["s1_desc"].shape == (3, 2, 2, 10, 10)
    assert batch["s2_dates"].shape == (3, 4, 3) and batch["s2_dates"].dtype == torch.int64
    assert batch["ref_date"].shape == (3, 1, 3)
    torch.testing.assert_close(batch["ref_date"], batch["aerial_dates"])  # ref = aerial date
    assert batch["cosia"].shape == (3, 64, 64) and batch["cosia"].dtype == torch.int64
    assert len(batch["patch_id"]) == 3 and all(
        r in p for r, p in zip(batch["roi"], batch["patch_id"], strict=True)
    )
    for key in ("s2", "s1_asc"):  # dates in order, within a year
        d = batch[f"{key}_dates"]
        assert (d[:, :, 1] >= 1).all() and (d[:, :, 1] <= 366).all()
    for key in SMALL["modalities"]:
        assert torch.isfinite(batch[key]).all()
    assert float(batch["aerial"].min()) >= 0 and float(batch["aerial"].max()) <= 1


def test_dataset_flips_identical_on_all_rasters_and_labels(sample_root):
    from flairlab.data.dataset import FlairHubDataset
    from flairlab.data.reader import read_raster

    train = FlairHubDataset(sample_root, split="train", seed=1, train=True, **SMALL)
    ref = FlairHubDataset(sample_root, split="train", seed=1, train=False, **SMALL)
    seen = set()
    for i in range(min(4, len(train))):
        a, b = train[i], ref[i]
        ops = _ops_matching(b["cosia"].numpy(), a["cosia"].numpy())
        ops &= _ops_matching(b["aerial"].numpy(), a["aerial"].numpy())
        ops &= _ops_matching(b["dem"].numpy(), a["dem"].numpy())
        assert ops, f"no single flip maps the eval item onto the train item ({b['patch_id']})"
        # S2 dates differ (random choice in train): rebuild each chosen acquisition from the file
        path = train.index.at[a["patch_id"], "SENTINEL2_TS"]
        raw = scale_values(read_raster(path, "SENTINEL2_TS"), "s2")
        all_dates = dates_to_ydh(train._dates["s2"][a["patch_id"]]).tolist()
        for frame, ymd in zip(a["s2"].numpy(), a["s2_dates"].tolist(), strict=True):
            cands = [raw[j] for j, d in enumerate(all_dates) if d == ymd]
            ops &= {op for op in OPS for c in cands if np.array_equal(dihedral(c, *op), frame)}
        assert ops, "S2 frames were not flipped like the other rasters"
        seen |= ops
    train.set_epoch(1)
    assert len(seen) > 1 or not torch.equal(train[0]["aerial"], ref[0]["aerial"])


def test_dataset_eval_is_deterministic_and_labels_ignore(sample_root):
    from flairlab.data.dataset import FlairHubDataset
    from flairlab.data.reader import read_raster

    kw = dict(SMALL, image_size={"aerial": 64, "dem": 32, "cosia": 512})
    a = FlairHubDataset(sample_root, split="valid", train=False, **kw)
    b = FlairHubDataset(sample_root, split="valid", train=False, **kw)
    assert len(a) > 0
    x, y = a[0], b[0]
    for key in ("s2", "s2_dates", "s1_asc", "cosia"):
        assert torch.equal(x[key], y[key])
    raw = read_raster(a.index.at[x["patch_id"], "AERIAL_LABEL-COSIA"], "cosia")[0]
    lab = x["cosia"].numpy()
    ignored = np.isin(raw, [15, 16, 17, 18])
    assert (lab[ignored] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(lab[~ignored], raw[~ignored])
    assert set(np.unique(lab)) <= set(range(15)) | {IGNORE_INDEX}


def test_dataset_errors(sample_root):
    from flairlab.data.dataset import FlairHubDataset

    with pytest.raises(DataError, match="modality"):
        FlairHubDataset(sample_root, split="train", modalities=("aerial", "lidar"))
    with pytest.raises(DataError, match="not in the index"):
        FlairHubDataset(sample_root, split="train", patch_ids=["D999-2020_XX-1_1-1"])
    with pytest.raises(DataError, match="target"):
        FlairHubDataset(sample_root, split="train", targets=("landcover",))
