"""Time-series exploration plots: temporal profiles per class and Sentinel-2 cloud statistics.

Same contract as `flairlab.explore.plots`: each function returns an `ExplorePlot` (HoloViews
view + matplotlib twin, PNG saved to `output_dir/figures/` when given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.explore.plots import ExplorePlot, _finish, _hv, class_colors


def plot_profiles(
    stats: Any,
    variable: str = "ndvi",
    *,
    classes: list[int] | None = None,
    max_classes: int = 6,
    min_pixels: int = 20,
    output_dir: str | Path | None = None,
    interactive: bool = True,
    catalog: Catalog | None = None,
) -> ExplorePlot:
    """Median (line) and interquartile range (band) of `variable` per class and period
    (`classes`, or the `max_classes` classes with the most pixels)."""
    hv, cat = _hv(), catalog or load_catalog()
    nom = cat.nomenclature("cosia")
    df = stats.profiles.to_frame(nom.names, min_pixels=min_pixels)
    df = df[df["variable"] == variable]
    if classes is None:
        classes = df.groupby("class_id")["pixels"].sum().nlargest(max_classes).index.tolist()
    df = df[df["class_id"].isin(classes)]
    colors = class_colors("cosia", cat)
    period = stats.profiles.period
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    elems = []
    for cid, part in df.groupby("class_id"):
        part = part.sort_values("period")
        x = pd.to_datetime(part["period"]) if period == "date" else part["period"].astype(int)
        label, color = f"{cid} {nom.names[cid]}", colors[cid]
        ax.plot(x, part["median"], marker="o", color=color, label=label, markeredgecolor="k")
        ax.fill_between(x, part["q25"], part["q75"], color=color, alpha=0.15)
        pts = list(zip(x, part["median"], part["q25"], part["q75"], strict=True))
        elems.append(
            hv.Spread(
                [(a, b, b - lo, hi - b) for a, b, lo, hi in pts],
                kdims=["period"],
                vdims=["median", "neg", "pos"],
                label=label,
            ).opts(color=color, alpha=0.15)
        )
        elems.append(
            hv.Curve(
                [(a, b) for a, b, *_ in pts], kdims=["period"], vdims=["median"], label=label
            ).opts(color=color, tools=["hover"])
        )
    unit = " (dB)" if variable.startswith("s1_") else ""
    ax.set(
        xlabel="month of year" if period == "month" else "date",
        ylabel=f"{variable}{unit}",
        title=f"{variable} per COSIA class (median, IQR)",
    )
    if len(elems):
        ax.legend(fontsize=7, ncol=2, loc="best")
    overlay = hv.Overlay(elems).opts(
        width=760, height=340, legend_position="right", title=f"{variable} per class (median, IQR)"
    )
    return _finish(overlay, fig, output_dir, f"profile_{variable}", interactive)


def plot_clouds(
    stats: Any, *, output_dir: str | Path | None = None, interactive: bool = True
) -> ExplorePlot:
    """S2 cloud/snow per acquisition date, share of clean patch-dates, cloud-fraction histogram."""
    hv = _hv()
    cs = stats.clouds
    df = cs.to_frame()
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2.2, 1])
    ax1.plot(df["date"], df["cloudy_frac"], "o-", label="cloudy pixels", color="#4a6fa5")
    ax1.plot(df["date"], df["snowy_frac"], "s-", label="snowy pixels", color="#7fc8f8")
    ax1.plot(df["date"], df["clean_date_frac"], "^:", label="clean patch-dates", color="#2ca02c")
    ax1.set(ylim=(-0.02, 1.02), ylabel="fraction", title="Sentinel-2 snow/cloud per date")
    ax1.legend(fontsize=8)
    ax1.tick_params(axis="x", labelrotation=30)
    edges = cs.frac_spec.edges
    ax2.stairs(cs.frac_hist, edges, fill=True, color="#4a6fa5", alpha=0.6)
    ax2.set(
        xlabel="cloudy fraction of a patch-date",
        ylabel="patch-dates",
        title="distribution over patch-dates",
    )
    kd = ["date"]
    lines = hv.Overlay(
        [
            hv.Curve(df, kd, ["cloudy_frac"], label="cloudy pixels").opts(color="#4a6fa5"),
            hv.Curve(df, kd, ["snowy_frac"], label="snowy pixels").opts(color="#7fc8f8"),
            hv.Curve(df, kd, ["clean_date_frac"], label="clean patch-dates").opts(color="#2ca02c"),
            hv.Scatter(df, kd, ["cloudy_frac", "patch_dates", "mean_cloud_pct"]).opts(
                color="#4a6fa5", size=6, tools=["hover"]
            ),
        ]
    ).opts(width=620, height=300, ylim=(-0.02, 1.02), title="Sentinel-2 snow/cloud per date")
    hist = hv.Histogram(
        (edges, cs.frac_hist), kdims=["cloudy fraction"], vdims=["patch-dates"]
    ).opts(width=320, height=300)
    return _finish(lines + hist, fig, output_dir, "s2_clouds", interactive)
