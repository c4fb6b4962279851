"""Every figure a notebook saves as PNG reads on its own: a title, labelled axes, a legend where
colours encode something — checked on the matplotlib artists of the figures the notebooks draw
(00, 01, 02, 03, 05, 06; notebook 04's figures belong to the fine-tuning code's own tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from flairlab.data.catalog import load_catalog

CAT = load_catalog()


def _is_colorbar(ax) -> bool:
    return hasattr(ax, "_colorbar")


def _words(labels) -> bool:
    """Tick labels that are names (classes, bands, months), not numbers."""
    def numeric(t: str) -> bool:
        try:
            float(t.replace("\u2212", "-").replace(",", ""))
        except ValueError:
            return False
        return True

    return any(t.get_text() and not numeric(t.get_text()) for t in labels)


def figure_problems(fig: Figure) -> list[str]:
    """What a reader misses: data axes without a title (nor a figure title), without an x or y
    label (a twin's label, another panel's of the same row for y, or named ticks count),
    pictures (images with hidden axes) without a title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()  # tick labels exist once drawn
    problems = []
    sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
    axes = [ax for ax in fig.axes if ax.get_visible() and not _is_colorbar(ax)]
    rows: dict[float, list] = {}
    for ax in axes:
        rows.setdefault(round(ax.get_position().y0, 2), []).append(ax)
    for i, ax in enumerate(axes):
        if not (ax.lines or ax.patches or ax.collections or ax.images or ax.containers):
            continue
        name = f"axes {i} ({ax.get_title()!r})"
        x_twins = ax.get_shared_x_axes().get_siblings(ax)  # twinx axes share the title too
        if not (any(a.get_title() for a in x_twins) or sup):
            problems.append(f"{name}: no title")
        if ax.images and not ax.axison:
            continue  # a picture: its title is its label
        if not (any(a.get_xlabel() for a in x_twins) or _words(ax.get_xticklabels())):
            problems.append(f"{name}: no x label")
        row = rows[round(ax.get_position().y0, 2)]
        if not (any(a.get_ylabel() for a in row) or _words(ax.get_yticklabels())):
            problems.append(f"{name}: no y label")
    return problems


def test_the_check_catches_a_bare_figure() -> None:
    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [1, 2])
    assert figure_problems(fig) == ["axes 0 (''): no title", "axes 0 (''): no x label",
                                    "axes 0 (''): no y label"]  # fmt: skip
    ax.set(title="t", xlabel="x (m)", ylabel="y (m)")
    assert figure_problems(fig) == []


# -- the notebooks' figures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def explored(sample_root: Path) -> tuple:
    from flairlab.explore.scale import compute_stats, select_patches

    index = select_patches(str(sample_root), catalog=CAT)
    stats = compute_stats(index, workers=0, progress=False)
    return index, stats


def _explore_figures(index: pd.DataFrame, stats) -> dict[str, Callable[[], Figure]]:
    from flairlab.explore import plots, ts_plots
    from flairlab.explore.bandgroups import discover_groups
    from flairlab.explore.browser import plot_patch

    groups = discover_groups(stats, min_corr=0.9, catalog=CAT)
    s2, aerial = "SENTINEL2_TS", "AERIAL_RGBI"
    return {
        "00 overview": lambda: plots.plot_overview(index, stats, catalog=CAT).fig,
        "00/01 patch": lambda: plot_patch(index, index.index[0], catalog=CAT),
        "01 ndvi": lambda: ts_plots.plot_profiles(stats, "ndvi", catalog=CAT).fig,
        "01 s1 vv": lambda: ts_plots.plot_profiles(stats, "s1_asc_vv", catalog=CAT).fig,
        "01 clouds": lambda: ts_plots.plot_clouds(stats).fig,
        "02 hist": lambda: plots.plot_histograms(stats, aerial, catalog=CAT).fig,
        "02 hist by domain": lambda: plots.plot_histograms(stats, s2, by="domain").fig,
        "02 hist by class": lambda: plots.plot_histograms(
            stats, s2, by="class", bands=["B04", "B08"], catalog=CAT
        ).fig,
        "02 band groups": lambda: plots.plot_band_groups(stats, groups, 0.9, catalog=CAT).fig,
        "02 correlation": lambda: plots.plot_correlation(
            stats, s2, band_groups=groups[s2], catalog=CAT
        ).fig,
    }


EXPLORE = ["00 overview", "00/01 patch", "01 ndvi", "01 s1 vv", "01 clouds", "02 hist",
           "02 hist by domain", "02 hist by class", "02 band groups", "02 correlation"]  # fmt: skip


@pytest.mark.parametrize("name", EXPLORE)
def test_exploration_figures_are_labelled(explored: tuple, name: str) -> None:
    fig = _explore_figures(*explored)[name]()
    assert not figure_problems(fig), figure_problems(fig)


def test_profile_and_cloud_axes_carry_units_and_months(explored: tuple) -> None:
    from flairlab.explore import ts_plots

    _, stats = explored
    ndvi = ts_plots.plot_profiles(stats, "ndvi", catalog=CAT).fig.axes[0]
    vv = ts_plots.plot_profiles(stats, "s1_asc_vv", catalog=CAT).fig.axes[0]
    assert "NDVI" in ndvi.get_ylabel() and "(dB)" in vv.get_ylabel()
    assert [t.get_text() for t in ndvi.get_xticklabels()][:3] == ["Jan", "Feb", "Mar"]
    clouds = ts_plots.plot_clouds(stats).fig
    assert "%" in clouds.axes[0].get_ylabel() and clouds.axes[0].get_legend() is not None
    assert len(clouds.axes[0].get_xticks()) == 12  # one group of bars per month, not per date


def test_overview_legend_names_the_splits(explored: tuple) -> None:
    from flairlab.explore.plots import plot_overview

    index, stats = explored
    fig = plot_overview(index, stats, catalog=CAT).fig
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None and legend.get_title().get_text() == "split"
        assert {t.get_text() for t in legend.get_texts()} == set(index["split"].dropna())


def test_pretraining_curves_are_labelled() -> None:
    from flairlab.training.objective_plots import training_curves

    rows = [{"step": s, "loss": 0.8 - 0.01 * s, "loss_mae": 0.8 - 0.01 * s, "loss_aerial": 0.7,
             "loss_s2": 0.9, "lr": 1e-3 * s / 10, "contrastive_loss": 2.0,
             "contrastive_loss_aerial_s2": 2.0, "contrastive_acc_aerial_s2": 0.3,
             "contrastive_temperature": 0.07} for s in range(1, 11)]  # fmt: skip
    for name, fig in training_curves(rows, "both").items():
        assert not figure_problems(fig), (name, figure_problems(fig))


def test_zone_map_is_labelled(sample_root: Path, tmp_path: Path) -> None:
    import torch

    from flairlab.maps.leaflet import plot_zone
    from flairlab.maps.predict import predict

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 15, 1)
    zone = "D068-2021_UU-S1-2"
    pids = [p.name.split("_RGBI_")[1].removesuffix(".tif")
            for p in sample_root.glob("D068-2021_AERIAL_RGBI/UU-S1-2/*.tif")]  # fmt: skip
    with torch.no_grad():
        (res,) = predict(lambda b: conv(b["aerial"][:, 0].float()), sample_root,
                         [f"{zone}_{p.split('_')[-1]}" for p in pids], tmp_path)  # fmt: skip
    fig = plot_zone(res)
    assert not figure_problems(fig), figure_problems(fig)
    assert "OA" in fig._suptitle.get_text()


def test_run_comparison_figures_are_labelled() -> None:
    from flairlab.runs import compare

    table = pd.DataFrame({"run": ["r1", "r2", "r3"], "step": ["04_finetune"] * 3,
                          "started": ["1", "2", "3"], "test_miou": [0.2, 0.3, 0.25],
                          "pretraining": ["scratch", "MAE", "MAE"]})  # fmt: skip
    figs = [compare.plot_runs(table, "test_miou", label="pretraining")]
    summary = compare.summarize(table, "pretraining", "test_miou")
    figs.append(compare.plot_summary(summary, "test_miou", title="pre-trained vs scratch"))
    curves = pd.DataFrame({"pretrained": [0.2, 0.3], "scratch": [0.1, 0.25]},
                          index=pd.Index([0.1, 1.0], name="label fraction"))  # fmt: skip
    figs.append(compare.plot_label_efficiency(curves, "test_miou", title="label efficiency"))
    for fig in figs:
        assert not figure_problems(fig), figure_problems(fig)
    assert np.isfinite(summary["mean"]).all()
