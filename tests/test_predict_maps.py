"""Zone inference (georeferenced COG mosaics) and offline maps (HTML + headless Chromium).

Data: 2×2 adjacent 512×512 patches at 0.2 m in EPSG:2154, written in the FLAIR-HUB layout to a
tmp dir. The aerial bands encode the position in the zone, so a pointwise predictor (1×1 conv)
gives outputs that are a smooth function of position: a seam shows as a jump.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from flairlab.data.catalog import load_catalog
from flairlab.data.errors import DataError
from flairlab.maps.mosaic import NODATA, PatchGeo, blend_weights, read_patch_geo, zone_grid
from flairlab.maps.predict import ZoneResult, predict, predict_zone, select_patches

S, RES, X0, Y0 = 512, 0.2, 652_000.0, 6_862_000.0  # near Paris, Lambert-93
DOMAIN, ROI = "D075-2021", "UU-S1-7"
ZONE = f"{DOMAIN}_{ROI}"
PRED_CLASSES, TRUTH_CLASSES = (0, 6), (8, 13)  # disjoint colours: building/water vs grass/conifer


def _write(path: Path, arr: np.ndarray, transform, crs: str = "EPSG:2154") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=arr.shape[2],
        height=arr.shape[1],
        count=arr.shape[0],
        dtype=arr.dtype,
        crs=crs,
        transform=transform,
    ) as d:
        d.write(arr)
    return path


def _mod_path(root: Path, mod: str, r: int, c: int) -> Path:
    return root / f"{DOMAIN}_{mod}" / ROI / f"{DOMAIN}_{mod}_{ROI}_{r}-{c}.tif"


@pytest.fixture(scope="module")
def zone_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2×2 patches: AERIAL_RGBI (band 1 = x position, band 2 = y position) + COSIA labels
    (8 where x + y > 1 else 13, and class 16 = ignored in a corner of patch 1-1)."""
    root = tmp_path_factory.mktemp("zone")
    yy, xx = np.mgrid[0:S, 0:S]
    for r in (1, 2):
        for c in (1, 2):
            tr = from_origin(X0 + (c - 1) * S * RES, Y0 - (r - 1) * S * RES, RES, RES)
            X, Y = (xx + (c - 1) * S) / (2 * S - 1), (yy + (r - 1) * S) / (2 * S - 1)
            img = np.stack([X * 255, Y * 255, (1 - X) * 255, np.full_like(X, 90.0)])
            _write(_mod_path(root, "AERIAL_RGBI", r, c), np.rint(img).astype(np.uint8), tr)
            lab = np.where(X + Y > 1, TRUTH_CLASSES[0], TRUTH_CLASSES[1]).astype(np.uint8)
            if (r, c) == (1, 1):
                lab[:32, :32] = 16
            _write(_mod_path(root, "AERIAL_LABEL-COSIA", r, c), lab[None], tr)
    return root


def _batches_for(root: Path):
    def make(pids: list[str]):
        for pid in pids:
            r, c = (int(v) for v in pid.rsplit("_", 1)[1].split("-"))
            with rasterio.open(_mod_path(root, "AERIAL_RGBI", r, c)) as src:
                x = torch.from_numpy(src.read().astype(np.float32) / 255.0)
            yield {"aerial": x[None, None], "patch_id": [pid]}  # (B, D, C, H, W)

    return make


def _conv_predictor(n_classes: int = 15) -> torch.nn.Conv2d:
    """Logits: class 0 (building) grows with x, class 6 (water) with y."""
    conv = torch.nn.Conv2d(4, n_classes, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-5.0)
        conv.weight[PRED_CLASSES[0], 0] = 8.0
        conv.weight[PRED_CLASSES[1], 1] = 8.0
        conv.bias[PRED_CLASSES[0]] = conv.bias[PRED_CLASSES[1]] = 0.0
    return conv


@pytest.fixture(scope="module")
def zone_result(zone_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ZoneResult:
    conv = _conv_predictor()
    out = tmp_path_factory.mktemp("pred")
    pids = [f"{ZONE}_{r}-{c}" for r in (1, 2) for c in (1, 2)]
    (res,) = predict(
        lambda b: conv(b["aerial"][:, 0]),
        zone_root,
        pids,
        out,
        batches_for=_batches_for(zone_root),
        probabilities=True,
    )
    return res


# -- GeoTIFF outputs ------------------------------------------------------------------------------
def test_prediction_cog_round_trip(zone_result: ZoneResult) -> None:
    colors = load_catalog().nomenclature("cosia").colors()
    with rasterio.open(zone_result.prediction) as src:
        assert src.crs.to_epsg() == 2154
        assert src.dtypes == ("uint8",) and src.nodata == NODATA and src.count == 1
        assert src.bounds == pytest.approx((X0, Y0 - 2 * S * RES, X0 + 2 * S * RES, Y0))
        assert src.res == pytest.approx((RES, RES))
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.profile["tiled"] and src.block_shapes == [(256, 256)]
        assert src.overviews(1) == [2, 4]
        cmap = src.colormap(1)
        assert all(cmap[k][:3] == v for k, v in colors.items())
        pred = src.read(1)
    assert set(np.unique(pred)) == set(PRED_CLASSES)
    # building where x > y, water where y > x (the predictor's rule), nowhere nodata
    yy, xx = np.mgrid[0 : 2 * S, 0 : 2 * S]
    far = np.abs(xx - yy) > 4
    expected = np.where(xx > yy, PRED_CLASSES[0], PRED_CLASSES[1])
    assert (pred[far] == expected[far]).all()


def test_probabilities_truth_and_error_rasters(zone_result: ZoneResult) -> None:
    names = load_catalog().nomenclature("cosia").names
    with rasterio.open(zone_result.probabilities) as src:
        assert src.count == 15 and list(src.descriptions) == names[:15]
        probs = src.read()
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    total = probs.astype(int).sum(0)
    assert np.abs(total - 250).max() <= 8  # rounding of 15 bands
    with rasterio.open(zone_result.truth) as src:
        truth = src.read(1)
    with rasterio.open(zone_result.error) as src:
        err = src.read(1)
        assert src.colormap(1)[1][:3] == (215, 25, 28)
    assert set(np.unique(truth)) == {*TRUTH_CLASSES, 16}
    assert (err[truth == 16] == NODATA).all() and (truth == 16).sum() == 32 * 32
    assert (err[truth != 16] == 1).all()  # disjoint classes: every evaluated pixel is wrong
    m = zone_result.metrics
    assert m["n_evaluated_px"] == 4 * S * S - 32 * 32 and m["oa"] == 0.0


def test_mosaic_has_no_seams_or_gaps(zone_result: ZoneResult) -> None:
    with rasterio.open(zone_result.probabilities) as src:
        p0 = src.read(PRED_CLASSES[0] + 1).astype(float)  # building probability ~ x position
    assert (p0 != NODATA).all()  # no gap anywhere in the union of the footprints
    step_inside = np.abs(np.diff(p0[:, : S - 1], axis=1)).max()
    seam = np.abs(p0[:, S] - p0[:, S - 1]).max()  # across the vertical patch edge
    seam_rows = np.abs(p0[S] - p0[S - 1]).max()  # across the horizontal one
    assert seam <= step_inside + 1 and seam_rows <= step_inside + 1


def test_seam_check_detects_misplaced_patches(zone_root: Path, tmp_path: Path) -> None:
    """The seam criterion fails when georeferencing is wrong (patches 1-1 and 1-2 swapped)."""
    conv = _conv_predictor()
    geos = {
        f"{ZONE}_{r}-{c}": read_patch_geo(_mod_path(zone_root, "AERIAL_RGBI", r, c))
        for r in (1, 2)
        for c in (1, 2)
    }
    geos[f"{ZONE}_1-1"], geos[f"{ZONE}_1-2"] = geos[f"{ZONE}_1-2"], geos[f"{ZONE}_1-1"]
    res = predict_zone(
        lambda b: conv(b["aerial"][:, 0]),
        _batches_for(zone_root)(list(geos)),
        geos,
        tmp_path,
        ZONE,
        probabilities=True,
    )
    with rasterio.open(res.probabilities) as src:
        p0 = src.read(1).astype(float)
    assert np.abs(p0[:S, S] - p0[:S, S - 1]).max() > 50


def test_overlap_blending(tmp_path: Path) -> None:
    """Two patches overlapping by half: average = mean of both, smooth favours patch centres."""
    geos = {
        f"{ZONE}_1-1": PatchGeo(from_origin(X0, Y0, RES, RES), rasterio.CRS.from_epsg(2154), S, S),
        f"{ZONE}_1-2": PatchGeo(
            from_origin(X0 + S / 2 * RES, Y0, RES, RES), rasterio.CRS.from_epsg(2154), S, S
        ),
    }
    grid = zone_grid(geos)
    assert (grid.height, grid.width) == (S, S + S // 2)
    batches = [{"patch_id": [pid], "k": k} for k, pid in enumerate(geos)]

    def fn(b: dict) -> torch.Tensor:  # patch 0 says class 0, patch 1 class 1 (probabilities)
        out = torch.zeros(1, 2, S, S)
        out[:, b["k"]] = 1.0
        return out

    avg = predict_zone(fn, batches, geos, tmp_path / "a", ZONE, logits=False, probabilities=True)
    smooth = predict_zone(
        fn, batches, geos, tmp_path / "s", ZONE, logits=False, probabilities=True, blend="smooth"
    )
    with rasterio.open(avg.probabilities) as a, rasterio.open(smooth.probabilities) as s:
        pa, ps = a.read(1), s.read(1)
    assert (pa[:, : S // 2] == 250).all() and (pa[:, S:] == 0).all()
    assert (pa[:, S // 2 : S] == 125).all()
    overlap = ps[S // 2, S // 2 : S].astype(int)  # from patch 0's centre to patch 1's centre
    assert overlap[0] > 240 and overlap[-1] < 10 and (np.diff(overlap) <= 0).all()
    w = blend_weights(S, S, "smooth")
    assert w.min() > 0 and w[S // 2, S // 2] == pytest.approx(1.0, abs=1e-4)


def test_big_zone_accumulates_on_disk(tmp_path: Path) -> None:
    """Above `max_bytes` the probability sums live in a memory-mapped file, removed at close."""
    from flairlab.maps.mosaic import ZoneMosaic

    crs = rasterio.CRS.from_epsg(2154)
    geos = {"a": PatchGeo(from_origin(X0, Y0, RES, RES), crs, 64, 64),
            "b": PatchGeo(from_origin(X0 + 64 * RES, Y0, RES, RES), crs, 64, 64)}  # fmt: skip
    big = ZoneMosaic(zone_grid(geos), 3, workdir=tmp_path, max_bytes=1)
    small = ZoneMosaic(zone_grid(geos), 3)
    rng = np.random.default_rng(0)
    for pid in geos:
        p = rng.dirichlet(np.ones(3), size=(64, 64)).transpose(2, 0, 1).astype(np.float32)
        big.add(pid, p)
        small.add(pid, p)
    assert isinstance(big.prob_sum, np.memmap) and len(list(tmp_path.glob(".mosaic-*"))) == 1
    assert (big.classes() == small.classes()).all()
    assert (big.probabilities_uint8() == small.probabilities_uint8()).all()
    big.close()
    assert list(tmp_path.glob(".mosaic-*")) == []


def test_sparse_zone_memory_and_disk_follow_the_patches(tmp_path: Path) -> None:
    """Two adjacent patches and one 11 patches away: a 6144 x 6144 px zone whose float
    accumulators would take 4 x 6144² x 4 B = 604 MB. Each connected group is mosaicked on its
    own grid and the zone rasters are written window by window: Python-side allocations stay
    small, nothing big lands on disk, and the rasters and metrics are those of the whole zone."""
    import tracemalloc

    from flairlab.maps.mosaic import patch_groups, zone_metrics

    crs = rasterio.CRS.from_epsg(2154)
    cells = {(1, 1): 0, (1, 2): 1, (12, 12): 3}  # (row, col) -> the class predicted there
    geos = {f"{ZONE}_{r}-{c}": PatchGeo(from_origin(X0 + (c - 1) * S * RES,
            Y0 - (r - 1) * S * RES, RES, RES), crs, S, S) for r, c in cells}  # fmt: skip
    assert patch_groups(zone_grid(geos)) == [[f"{ZONE}_1-1", f"{ZONE}_1-2"], [f"{ZONE}_12-12"]]
    labels = {}
    for (r, c), k in cells.items():  # truth: the predicted class, except one wrong patch
        lab = np.full((1, S, S), 2 if (r, c) == (1, 2) else k, np.uint8)
        labels[f"{ZONE}_{r}-{c}"] = _write(tmp_path / f"lab_{r}_{c}.tif", lab,
                                          geos[f"{ZONE}_{r}-{c}"].transform)  # fmt: skip
    batches = [{"patch_id": [pid], "k": k} for pid, k in zip(geos, cells.values(), strict=True)]

    def fn(b: dict) -> torch.Tensor:
        out = torch.zeros(1, 4, S, S)
        out[:, b["k"]] = 5.0
        return out

    out = tmp_path / "out"
    tracemalloc.start()
    res = predict_zone(fn, batches, geos, out, ZONE, labels=labels, probabilities=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 150e6, f"peak Python allocations {peak / 1e6:.0f} MB"  # the box: > 750 MB
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    assert sorted(files) == [f"{ZONE}_{k}.tif" for k in ("error", "prediction", "probabilities",
                                                          "truth")]  # fmt: skip
    assert sum(files.values()) < 5e6, files  # no accumulator or temporary file left behind
    with rasterio.open(res.prediction) as ds, rasterio.open(res.truth) as dt:
        assert (ds.width, ds.height) == (12 * S, 12 * S) and ds.block_shapes[0] == (256, 256)
        pred, truth = ds.read(1), dt.read(1)
    expect = np.full(pred.shape, NODATA, np.uint8)
    for (r, c), k in cells.items():
        expect[(r - 1) * S : r * S, (c - 1) * S : c * S] = k
    assert np.array_equal(pred, expect)
    nom = load_catalog().nomenclature("cosia")
    assert res.metrics == zone_metrics(pred, truth, nom)
    assert res.metrics["n_evaluated_px"] == 3 * S * S and res.metrics["oa"] == pytest.approx(2 / 3)


def test_bad_inputs_raise(zone_root: Path, tmp_path: Path) -> None:
    crs = rasterio.CRS.from_epsg(2154)
    off_grid = {
        "a": PatchGeo(from_origin(X0, Y0, RES, RES), crs, S, S),
        "b": PatchGeo(from_origin(X0 + 0.05, Y0, RES, RES), crs, S, S),
    }
    with pytest.raises(DataError, match="pixel grid"):
        zone_grid(off_grid)
    other_crs = {
        "a": off_grid["a"],
        "b": PatchGeo(from_origin(X0, Y0, RES, RES), rasterio.CRS.from_epsg(32631), S, S),
    }
    with pytest.raises(DataError, match="CRS"):
        zone_grid(other_crs)
    geos = {f"{ZONE}_1-1": read_patch_geo(_mod_path(zone_root, "AERIAL_RGBI", 1, 1))}
    batch = [{"patch_id": [f"{ZONE}_1-1"]}]
    with pytest.raises(DataError, match="predict_fn output"):
        predict_zone(lambda b: torch.zeros(1, 15, S), batch, geos, tmp_path, ZONE)
    with pytest.raises(DataError, match="prediction shape"):
        predict_zone(lambda b: torch.zeros(1, 15, 256, 256), batch, geos, tmp_path, ZONE)
    bad = _write(
        tmp_path / "bad_label.tif", np.full((1, S, S), 40, np.uint8), from_origin(X0, Y0, RES, RES)
    )
    with pytest.raises(DataError, match="out of range"):
        predict_zone(
            lambda b: torch.zeros(1, 15, S, S),
            batch,
            geos,
            tmp_path,
            ZONE,
            labels={f"{ZONE}_1-1": bad},
        )


def test_select_patches(zone_root: Path) -> None:
    from flairlab.data.index import index_patches

    index = index_patches(zone_root)
    assert len(select_patches(index, zone=ZONE)) == 4
    assert select_patches(index, patches=f"{ZONE}_2-2, {ZONE}_1-1") == [
        f"{ZONE}_2-2",
        f"{ZONE}_1-1",
    ]
    with pytest.raises(DataError, match="zone has no patches"):
        select_patches(index, zone="D075-2021_XX-S1-1")
    with pytest.raises(DataError, match="not in the dataset"):
        select_patches(index, patches=f"{ZONE}_9-9")


# -- maps -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def overlays(zone_result: ZoneResult):
    from flairlab.maps.leaflet import zone_overlays

    ovs = zone_overlays(zone_result, opacity=1.0)
    return ovs


def test_overlays_in_web_mercator(overlays) -> None:
    by = {o.name: o for o in overlays}
    assert list(by) == ["aerial", "prediction", "ground truth", "errors"]
    (s, w), (n, e) = by["prediction"].bounds
    assert 48.84 < s < n < 48.87 and 2.33 < w < e < 2.36  # Lambert-93 (652 km, 6862 km) = Paris
    assert by["prediction"].values == list(PRED_CLASSES)
    assert by["ground truth"].values == [*TRUTH_CLASSES, 16]
    rgba = by["prediction"].rgba
    assert rgba.dtype == np.uint8 and rgba.shape[2] == 4 and (rgba[..., 3] == 0).any()
    assert by["prediction"].data_url().startswith("data:image/png;base64,")


def test_big_layers_are_downsampled(zone_result: ZoneResult) -> None:
    from flairlab.maps.leaflet import class_overlay

    full = class_overlay(zone_result.prediction, "p")
    small = class_overlay(zone_result.prediction, "p", max_pixels=20_000)
    h, w, _ = small.rgba.shape
    assert h * w <= 20_000 < full.rgba.shape[0] * full.rgba.shape[1]
    assert small.values == full.values  # same footprint, up to a coarse pixel (~2e-5 deg):
    assert np.allclose(small.bounds, full.bounds, atol=5e-5, rtol=0)


def test_legend_lists_only_present_classes(overlays) -> None:
    from flairlab.maps.leaflet import legend_entries

    entries = legend_entries(overlays)
    assert list(entries) == [
        "building",
        "water",
        "herbaceous vegetation",
        "coniferous",
        "ligneous",
        "wrong",
    ]
    assert entries["building"] == "#db0e9a"


def test_offline_checker_flags_remote_resources() -> None:
    from flairlab.maps.html_map import offline_problems

    assert offline_problems('<script src="https://cdn.jsdelivr.net/x.js"></script>')
    assert offline_problems("<link href='//unpkg.com/a.css' rel=stylesheet>")
    assert offline_problems("<style>a{background:url(http://x/y.png)}</style>")
    assert not offline_problems('<a href="https://leafletjs.com" title="x">Leaflet</a>')
    assert not offline_problems('<img src="data:image/png;base64,AAAA">')


@pytest.fixture(scope="module")
def html_map(overlays, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flairlab.maps.html_map import export_html

    return export_html(overlays, tmp_path_factory.mktemp("html") / "map.html")


def test_html_is_self_contained(html_map: Path) -> None:
    page = html_map.read_text(encoding="utf-8")
    remote = [
        m
        for m in re.finditer(r"""(?:src|href)\s*=\s*["']?(https?:)?//[^"'\s>]+""", page)
        if not page[page.rfind("<", 0, m.start()) :].startswith("<a")
    ]
    assert remote == []
    assert "Leaflet 1.9.4" in page and "L.Control.SideBySide" in page and "getContainer" in page
    assert page.count("data:image/png;base64,") >= 4  # 4 overlays (+ inlined CSS icons)
    for name in ("aerial", "prediction", "ground truth", "errors", "building", "coniferous"):
        assert name in page
    print(f"HTML size: {html_map.stat().st_size / 1e3:.0f} kB")


CHROMIUM = shutil.which("chromium")


def _screenshot(html: Path, out: Path) -> np.ndarray:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    cmd = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=900,700",
        "--virtual-time-budget=5000",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={out.parent / 'chromium-profile'}",
        f"--screenshot={out}",
        html.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(out).convert("RGB"))


def _count(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 3) -> int:
    return int((np.abs(img.astype(int) - rgb).max(-1) <= tol).sum())


def test_browser_renders_split_view(html_map: Path, tmp_path: Path) -> None:
    img = _screenshot(html_map, tmp_path / "map.png")
    colors = load_catalog().nomenclature("cosia").colors()
    h, w, _ = img.shape
    mid, img = w // 2, img[: h - 130]  # leave out the legend (bottom right; its swatches match)
    left, right = img[:, : mid - 25], img[:, mid + 25 :]  # and the divider / handle
    counts = {
        side: {c: _count(part, colors[c]) for c in (*PRED_CLASSES, *TRUTH_CLASSES)}
        for side, part in (("left", left), ("right", right))
    }
    print("palette pixel counts:", counts)
    for c in PRED_CLASSES:  # prediction on the left only
        assert counts["left"][c] > 5000 and counts["right"][c] < 50
    for c in TRUTH_CLASSES:  # ground truth on the right only
        assert counts["right"][c] > 5000 and counts["left"][c] < 50


def test_browser_without_split_shows_prediction_over_truth(overlays, tmp_path: Path) -> None:
    from flairlab.maps.html_map import export_html

    pred = [o for o in overlays if o.name == "prediction"]
    html = export_html(pred, tmp_path / "pred_only.html", split=None)
    img = _screenshot(html, tmp_path / "pred.png")
    colors = load_catalog().nomenclature("cosia").colors()
    assert _count(img, colors[0]) > 10000 and _count(img, colors[6]) > 10000
    assert _count(img, colors[8]) == 0


def test_interactive_map_layers(overlays) -> None:
    import ipyleaflet

    from flairlab.maps.leaflet import interactive_map

    m = interactive_map(overlays)
    images = {lyr.name: lyr for lyr in m.layers if isinstance(lyr, ipyleaflet.ImageOverlay)}
    assert list(images) == ["aerial", "prediction", "ground truth", "errors"]
    assert all(i.url.startswith("data:image/png;base64,") for i in images.values())
    assert not any(isinstance(lyr, ipyleaflet.TileLayer) for lyr in m.layers)  # nothing fetched
    split = [c for c in m.controls if isinstance(c, ipyleaflet.SplitMapControl)]
    assert len(split) == 1
    assert split[0].left_layer is images["prediction"]
    assert split[0].right_layer is images["ground truth"]
    assert images["prediction"].pane != images["ground truth"].pane
    assert set(m.panes) == {images["prediction"].pane, images["ground truth"].pane}
    assert images["errors"].visible is False
    assert 17 <= m.zoom <= 19 and m.center[0] == pytest.approx(48.855, abs=0.002)  # whole zone


# -- the real pipeline: FlairHubDataset batches, a fresh segmentation model, the CLI --------------
def test_cli_predict_on_dataset_tree(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`flairlab predict` on a tiny FLAIR-HUB tree (dataset loader + freshly initialised model):
    one mosaic per zone, truth/error rasters, predictions.json and the offline HTML map."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _flairtree import make_tree

    from flairlab.cli import main

    torch.manual_seed(0)
    root = make_tree(tmp_path / "tree")
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--root",
            str(root),
            "--zone",
            "D006-2020_FF-S1-14",
            "--out",
            str(out),
            "--checkpoint",
            "",
            "--batch-size",
            "2",
            "--html",
        ]
    )
    assert rc == 0
    zone = "D006-2020_FF-S1-14"
    with rasterio.open(out / f"{zone}_prediction.tif") as src:
        pred = src.read(1)
        assert src.crs.to_epsg() == 2154 and src.shape == (512, 1024)  # patches 1-1 | 1-2
        assert src.bounds == pytest.approx(
            (650_000.0, 6_860_000.0 - 102.4, 650_000.0 + 204.8, 6_860_000.0)
        )
    assert (pred != NODATA).all() and pred.max() < 15  # fresh COSIA head: ids 0-14
    summary = json.loads((out / "predictions.json").read_text())
    assert list(summary) == [zone] and len(summary[zone]["patch_ids"]) == 2
    assert 0.0 <= summary[zone]["metrics"]["oa"] <= 1.0
    assert (out / f"{zone}_error.tif").is_file()
    page = (out / f"{zone}_map.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "L.Control.SideBySide" in page
    assert f"{zone}: 2 patches" in capsys.readouterr().out


def _largest_zone(root: Path) -> tuple[str, list[str]]:
    from flairlab.data.dataset import dataset_index
    from flairlab.maps.predict import group_by_zone

    zones = group_by_zone(dataset_index(root).index)
    return max(zones.items(), key=lambda kv: len(kv[1]))


@pytest.mark.slow
def test_notebook_05_runs_with_papermill(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notebook end to end on the embedded sample (source="sample", fresh model), on the
    sample's largest zone so that a real mosaic is made."""
    import json

    import papermill as pm

    monkeypatch.setenv("FLAIRLAB_SAMPLE_ROOT", str(sample_root))  # the kernel inherits it
    zone, pids = _largest_zone(sample_root)
    assert len(pids) >= 2, "the sample should hold a zone of several patches"
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "05_predict_and_map.ipynb"
    out = tmp_path / "out"
    pm.execute_notebook(str(nb), str(tmp_path / "executed.ipynb"), kernel_name="python3",
                        cwd=str(tmp_path), progress_bar=False,
                        parameters={"zone": zone, "split": "", "output_dir": str(out),
                                    "device": "cpu"})  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    z = res["zones"][zone]
    assert res["n_patches"] == len(pids) and res["main_zone"] == zone
    for key in ("prediction", "probabilities", "truth", "error", "html"):
        assert (out / z[key]).is_file()
    assert (out / "figures" / "zone_map.png").is_file()
    assert 0.0 <= z["metrics"]["oa"] <= 1.0
    from flairlab.data.dataset import dataset_index

    foot = [read_patch_geo(dataset_index(sample_root).at[p, "AERIAL_RGBI"]) for p in pids]
    union = (
        min(g.transform.c for g in foot),
        min(g.transform.f - g.height * RES for g in foot),
        max(g.transform.c + g.width * RES for g in foot),
        max(g.transform.f for g in foot),
    )
    with rasterio.open(out / z["prediction"]) as src:
        assert src.bounds == pytest.approx(union)
        assert (src.read(1) != NODATA).sum() == len(pids) * 512 * 512  # every patch pixel


@pytest.mark.slow
def test_predict_from_finetuned_checkpoint(tmp_path: Path) -> None:
    """A model written by `flairlab.training.finetune` (64-px labels) predicts full-size zones."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _flairtree import make_tree

    from flairlab.maps.predict import load_segmentation_model
    from flairlab.training.finetune import FinetuneConfig, run_finetune

    torch.manual_seed(0)
    root = make_tree(tmp_path / "tree")
    cfg = FinetuneConfig(modalities=["aerial"], image_size={"aerial": 64},
                         patch_size={"aerial": 8}, label_size=64, probe_steps=1,
                         finetune_steps=1, eval_every=0, batch_size=2, root=str(root),
                         device="cpu")  # fmt: skip
    run_finetune(cfg, tmp_path / "ft")
    predict_fn, mods = load_segmentation_model(tmp_path / "ft" / "finetuned.safetensors")
    assert mods == ["aerial"]
    pids = ["D006-2020_FF-S1-14_1-1", "D006-2020_FF-S1-14_1-2"]
    (res,) = predict(predict_fn, root, pids, tmp_path / "pred", modalities=mods)
    with rasterio.open(res.prediction) as src:
        pred = src.read(1)
    assert pred.shape == (512, 1024) and (pred != NODATA).all() and pred.max() < 15
    assert res.metrics["n_evaluated_px"] > 0


def test_html_title_box_shows_zone_model_metrics_escaped(zone_result: ZoneResult, tmp_path) -> None:
    """The map page names the zone, the model and its scores; text is escaped, never run or
    evaluated as a template (a hostile zone or checkpoint name stays text)."""
    from flairlab.maps.html_map import export_html
    from flairlab.maps.leaflet import zone_info, zone_overlays

    heading, info = zone_info(zone_result, "runs/x/04_finetune/finetuned.safetensors", ["aerial"])
    assert info["model"] == "04_finetune/finetuned.safetensors" and "OA" in info["metrics"]
    assert "4 patches" in info["zone"] and " km (EPSG:2154)" in info["zone"]
    info["note"] = "<script>alert(1)</script> {{ 7 * 7 }} {% if 1 %}x{% endif %}"
    page = export_html(zone_overlays(zone_result), tmp_path / "m.html", heading=heading + " <b>",
                       info=info).read_text(encoding="utf-8")  # fmt: skip
    assert f"<title>{zone_result.zone}: prediction vs ground truth &lt;b&gt;</title>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ 7 * 7 }} {% if 1 %}x{% endif %}" in page
    assert "<script>alert(1)" not in page and "49" not in page.split("flairlab-info")[1][:600]
    assert "04_finetune/finetuned.safetensors" in page
