"""Exploration plots write PNGs and render in bokeh; the browser reacts; notebooks 00-02 run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from _flairtree import CAT, PATCHES, make_tree, split_csvs
from matplotlib.figure import Figure

from flairlab.data.index import index_patches
from flairlab.explore.bandgroups import discover_groups, load_norm_file
from flairlab.explore.browser import PatchBrowser, load_patch, plot_patch, render_panels
from flairlab.explore.plots import (
    ExplorePlot,
    class_table,
    modality_table,
    plot_band_groups,
    plot_correlation,
    plot_histograms,
    plot_overview,
)
from flairlab.explore.scale import compute_stats
from flairlab.explore.ts_plots import plot_clouds, plot_profiles
from flairlab.runs.notebooks import error_outputs, read_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("explore") / "FLAIR-HUB")


@pytest.fixture(scope="module")
def data(tree):
    idx = index_patches(split_csvs(tree), tree)
    return idx, compute_stats(idx, workers=0, progress=False)


def _png_ok(p: ExplorePlot) -> None:
    import holoviews as hv
    from PIL import Image

    assert isinstance(p.fig, Figure) and p.png is not None and p.png.is_file()
    with Image.open(p.png) as im:
        assert im.width > 200 and im.height > 150
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # not a blank canvas
    model = hv.render(p.hv, backend="bokeh")
    assert model is not None


def test_plots_write_pngs_and_render(data, tmp_path):
    idx, st = data
    groups = discover_groups(st, 0.9)
    plots = {
        "hist_aerial_all": plot_histograms(st, "aerial", output_dir=tmp_path),
        "hist_s2_class_B04-B08": plot_histograms(
            st, "s2", by="class", bands=["B04", "B08"], output_dir=tmp_path
        ),
        "hist_s1_asc_domain": plot_histograms(st, "s1_asc", by="domain", output_dir=tmp_path),
        "corr_s2": plot_correlation(
            st, "s2", band_groups=groups["SENTINEL2_TS"], output_dir=tmp_path
        ),
        "band_groups": plot_band_groups(st, groups, 0.9, output_dir=tmp_path),
        "profile_ndvi": plot_profiles(st, "ndvi", min_pixels=1, output_dir=tmp_path),
        "s2_clouds": plot_clouds(st, output_dir=tmp_path),
        "overview": plot_overview(idx, st, output_dir=tmp_path),
    }
    for name, p in plots.items():
        assert p.png == tmp_path / "figures" / f"{name}.png"
        _png_ok(p)
    # the class histogram overlays the classes' official colours
    hist = plots["hist_s2_class_B04-B08"].hv
    colors = {el.opts.get().kwargs["line_color"] for el in hist.values()[0].values()}
    assert colors <= set(CAT.nomenclature("cosia").classes[i].color for i in range(19))
    with pytest.raises(ValueError, match="no statistics"):
        plot_histograms(st, "cosia")
    assert "maestro_groups" in modality_table().columns
    assert "#db0e9a" in class_table().to_html()


def test_render_panels_and_plot_patch(data):
    idx, _ = data
    pid = idx.index[0]
    patch = load_patch(idx, pid)
    p0 = render_panels(patch, s2_date=0)
    p1 = render_panels(patch, s2_date=1)
    assert list(p0) == [
        "aerial_rgb",
        "aerial_irc",
        "elevation",
        "spot",
        "s2",
        "s2_mask",
        "s1_asc",
        "s1_desc",
        "rlt",
        "cosia",
        "lpis",
    ]
    assert all(p.rgb.ndim == 3 and p.rgb.min() >= 0 and p.rgb.max() <= 1 for p in p0.values())
    assert "2020-03-11" in p1["s2"].title  # planted date 1: fully cloudy in the mask
    cloudy, clear = p1["s2_mask"].rgb, p0["s2_mask"].rgb  # cloud tints red, clear stays grey
    assert (cloudy[..., 0] > cloudy[..., 1] + 0.5).all() and (cloudy[..., 0] >= 0.72).all()
    assert np.ptp(clear, axis=-1).max() == pytest.approx(0) and 0.3 < clear.mean() < 0.9
    assert np.ptp(clear[..., 0]) > 0  # the landscape shows through, not a black square
    cosia = patch.arrays["AERIAL_LABEL-COSIA"][0]
    ids = {i for i, _, _ in p0["cosia"].legend}
    assert ids == set(np.unique(cosia).tolist())
    # official colour of the class at pixel (0, 0)
    rgb = np.array(CAT.nomenclature("cosia").classes[cosia[0, 0]].rgb) / 255
    np.testing.assert_allclose(p0["cosia"].rgb[0, 0], rgb)
    fig = plot_patch(idx, pid, s2_date=1)
    assert isinstance(fig, Figure)
    assert sum(ax.get_visible() for ax in fig.axes) == 11


def test_browser_builds_and_follows_selection(data):
    idx, _ = data
    b = PatchBrowser(idx, panel_px=96)
    assert b.domain.options == ("D006-2020", "D024-2021")
    assert b.patch.value == "D006-2020_FF-S1-14_1-1"
    assert len(b.sliders["s2"].options) == 5 and len(b.sliders["s1_desc"].options) == 4
    assert b.sliders["s2"].label == b.titles["s2"].value.split()[-1].split("<")[0]  # a date
    assert b.widget.children[2] is b.grid and len(b.grid.children) == 11
    first = b.images["aerial_rgb"].value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    s2 = b.images["s2"].value
    b.sliders["s2"].value = 1
    assert b.images["s2"].value != s2 and "2020-03-11" in b.titles["s2"].value
    b.domain.value = "D024-2021"  # cascades: ROI → patch → redraw
    assert b.roi.value == "AA-S1-V18" and b.patch.value == "D024-2021_AA-S1-V18_1-1"
    assert b.images["aerial_rgb"].value != first
    assert b.sliders["s2"].value == 0 and "2021-01-10" in b.titles["s2"].value
    b.select("D024-2021_AA-S1-V18_2-1")
    assert b.patch.value == "D024-2021_AA-S1-V18_2-1"
    assert "background" in b.legend.value and "#db0e9a" in b.legend.value


@pytest.fixture(scope="module")
def nb_root(request, tree) -> Path:
    """The session sample when `flairlab.data.sample` exists; the planted tree until then."""
    if importlib.util.find_spec("flairlab.data.sample") is not None:
        return request.getfixturevalue("sample_root")
    return tree


def _run(name: str, out: Path, **params) -> dict:
    import papermill as pm

    out.mkdir(parents=True)
    executed = out / f"{name}.ipynb"
    pm.execute_notebook(
        NOTEBOOKS / f"{name}.ipynb",
        executed,
        kernel_name="python3",
        parameters=dict(output_dir=str(out), **params),
        progress_bar=False,
        cwd=str(out),
    )
    assert error_outputs(read_notebook(executed)) == []
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_notebook_00_generates_the_sample(tmp_path, monkeypatch):
    pytest.importorskip("flairlab.data.sample")
    gen = tmp_path / "generated-sample"  # the catalog's sample source, pointed at an empty folder
    monkeypatch.setenv("FLAIRLAB_SAMPLE_ROOT", str(gen))
    res = _run(
        "00_getting_started",
        tmp_path / "nb00",
        source="sample",
        sample_patches=3,
        sample_zone=0,
        workers=0,
        interactive=False,
    )
    assert Path(res["root"]) == gen.resolve() and res["n_patches"] == 3
    assert len(index_patches(gen)) == 3 and sum(res["patches_per_split"].values()) == 3
    assert sum(res["cosia_pixel_share"].values()) == pytest.approx(1.0, abs=1e-4)
    assert all(v == 3 for v in res["modality_files"].values())
    for fig in res["figures"]:
        assert (tmp_path / "nb00" / "figures" / f"{fig}.png").is_file()


@pytest.mark.slow
def test_notebook_01_explore_modalities(nb_root, tmp_path):
    res = _run(
        "01_explore_modalities",
        tmp_path / "nb01",
        source=str(nb_root),
        n_patches=3,
        workers=2,
        interactive=False,
    )
    assert res["n_patches"] == 3 and res["s2_clouds"]["patch_dates"] > 0
    assert 0 <= res["s2_clouds"]["clean_date_frac"] <= 1 and res["profile_rows"] > 0
    for fig in res["figures"]:
        assert (tmp_path / "nb01" / "figures" / f"{fig}.png").is_file()


@pytest.mark.slow
def test_notebook_02_band_histograms(nb_root, tmp_path):
    res = _run(
        "02_band_histograms",
        tmp_path / "nb02",
        source=str(nb_root),
        split="",
        n_patches=3,
        workers=0,
        hist_by="class",
        interactive=False,
    )
    norm = load_norm_file(res["norm_file"])
    assert norm["n_patches"] == 3
    assert set(norm["modalities"]) >= {"AERIAL_RGBI", "SENTINEL2_TS", "SENTINEL1-ASC_TS"}
    assert {r["modality"] for r in res["groups_vs_maestro"]} >= {"SENTINEL2_TS"}
    if nb_root.name == "FLAIR-HUB" and set(index_patches(nb_root).index) == set(PATCHES):
        assert res["band_groups"]["SENTINEL2_TS"] == CAT.modality("s2").band_groups  # planted
    assert len(list((tmp_path / "nb02" / "figures").glob("hist_*.png"))) >= 8
