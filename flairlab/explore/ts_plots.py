"""Time-series exploration plots: temporal profiles per class and Sentinel-2 cloud statistics.

Same contract as `flairlab.explore.plots`: each function returns an `ExplorePlot` (HoloViews
view + matplotlib twin, PNG saved to `output_dir/figures/` when given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.explore.plots import NOTEBOOK_WIDTH, ExplorePlot, _finish, _hv, class_colors

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def variable_label(variable: str) -> tuple[str, str]:
    """(short name, axis label with unit) of a profile variable: `ndvi`, `s1_asc_vv`, ..."""
    if variable == "ndvi":
        return "NDVI", "NDVI (unitless, −1…1)"
    if variable.startswith("s1_"):
        _, orbit, band = variable.split("_", 2)
        orbit = {"asc": "ascending", "desc": "descending"}.get(orbit, orbit)
        return f"S1 {band.upper()} ({orbit})", f"S1 {band.upper()} backscatter, {orbit} orbit (dB)"
    return variable, variable


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
    (`classes`, or the `max_classes` classes with the most pixels); months as Jan…Dec."""
    hv, cat = _hv(), catalog or load_catalog()
    nom = cat.nomenclature("cosia")
    df = stats.profiles.to_frame(nom.names, min_pixels=min_pixels)
    df = df[df["variable"] == variable]
    if classes is None:
        classes = df.groupby("class_id")["pixels"].sum().nlargest(max_classes).index.tolist()
    df = df[df["class_id"].isin(classes)]
    colors = class_colors("cosia", cat)
    period = stats.profiles.period
    short, ylabel = variable_label(variable)
    xlabel = "month of year (all years pooled)" if period == "month" else "acquisition date"
    title = f"{short} per COSIA class: median and interquartile range"
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
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if period == "month":
        ax.set_xticks(range(1, 13), MONTHS)
    if len(elems):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    opts: dict[str, Any] = {}
    if period == "month":
        opts["xticks"] = list(enumerate(MONTHS, start=1))
    overlay = hv.Overlay(elems).opts(
        width=NOTEBOOK_WIDTH, height=340, legend_position="right", title=title,
        xlabel=xlabel, ylabel=ylabel, **opts,
    )  # fmt: skip
    return _finish(overlay, fig, output_dir, f"profile_{variable}", interactive)


def clouds_by_month(df: pd.DataFrame) -> pd.DataFrame:
    """Per month of year (1-12, all years and patches pooled) from `CloudStats.to_frame()`:
    patch_dates, % cloudy pixels, % snowy pixels, % clean patch-dates."""
    month = pd.to_datetime(df["date"]).dt.month
    w = df.assign(
        month=month,
        cloudy=df["cloudy_frac"] * df["pixels"],
        snowy=df["snowy_frac"] * df["pixels"],
        clean=df["clean_date_frac"] * df["patch_dates"],
    )
    g = w.groupby("month")[["patch_dates", "pixels", "cloudy", "snowy", "clean"]].sum()
    g = g.reindex(range(1, 13), fill_value=0)
    px, pdates = g["pixels"].replace(0, np.nan), g["patch_dates"].replace(0, np.nan)
    return pd.DataFrame({
        "month": g.index, "patch_dates": g["patch_dates"].astype(int),
        "cloudy_pct": 100 * g["cloudy"] / px, "snowy_pct": 100 * g["snowy"] / px,
        "clean_pct": 100 * g["clean"] / pdates,
    }).reset_index(drop=True)  # fmt: skip


CLOUD_SERIES = {  # column: (legend, colour)
    "cloudy_pct": ("cloudy pixels", "#4a6fa5"),
    "snowy_pct": ("snowy pixels", "#7fc8f8"),
    "clean_pct": ("clean acquisitions", "#2ca02c"),
}


def plot_clouds(
    stats: Any, *, output_dir: str | Path | None = None, interactive: bool = True
) -> ExplorePlot:
    """Sentinel-2 snow and clouds per month of year (all dates and patches pooled): % cloudy and
    snowy pixels, % clean acquisitions (official rule); right, how cloudy each acquisition is."""
    hv = _hv()
    cs = stats.clouds
    df = cs.to_frame()
    monthly = clouds_by_month(df)
    years = pd.to_datetime(df["date"]).dt.year if len(df) else pd.Series([], dtype=int)
    span = f"{years.min()}–{years.max()}" if len(years) else "no dates"
    n = int(monthly["patch_dates"].sum())
    title = f"Sentinel-2 snow and clouds by month: {n} patch acquisitions, {span}"
    ticks = [f"{m}\n{k}" for m, k in zip(MONTHS, monthly["patch_dates"], strict=True)]
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2.3, 1])
    width = 0.27
    for k, (col, (label, color)) in enumerate(CLOUD_SERIES.items()):
        ax1.bar(monthly["month"] + (k - 1) * width, monthly[col].fillna(0), width,
                label=label, color=color)  # fmt: skip
    ax1.set_xticks(range(1, 13), ticks, fontsize=8)
    ax1.set(ylim=(0, 105), ylabel="share (%)", xlabel="month (n = patch acquisitions)",
            title="per month of year, all years pooled")  # fmt: skip
    ax1.legend(fontsize=8, ncol=3, loc="upper center")
    edges = cs.frac_spec.edges * 100
    ax2.stairs(cs.frac_hist, edges, fill=True, color="#4a6fa5", alpha=0.7)
    ax2.set(xlabel="cloudy pixels in the acquisition (%)", ylabel="patch acquisitions",
            title="how cloudy each acquisition is")  # fmt: skip
    fig.suptitle(title)
    tidy = monthly.melt(["month", "patch_dates"], list(CLOUD_SERIES), "series", "percent")
    tidy["month"] = [MONTHS[m - 1] for m in tidy["month"]]
    tidy["series"] = [CLOUD_SERIES[c][0] for c in tidy["series"]]
    bars = hv.Bars(tidy, ["month", "series"], ["percent", "patch_dates"]).opts(
        width=520, height=320, ylim=(0, 105), ylabel="share (%)", xlabel="month",
        color="series", cmap=dict(CLOUD_SERIES.values()), tools=["hover"],
        title="by month of year, all years pooled", multi_level=False, xrotation=0,
        show_legend=True, legend_position="top",
    )  # fmt: skip
    hist = hv.Histogram(
        (edges, cs.frac_hist), kdims=["cloudy pixels in the acquisition (%)"],
        vdims=["patch acquisitions"],
    ).opts(width=NOTEBOOK_WIDTH - 520, height=320, title="how cloudy each acquisition is")
    return _finish((bars + hist).opts(title=title), fig, output_dir, "s2_clouds", interactive)
