"""Exploration plots: an interactive HoloViews (bokeh) view plus a static matplotlib PNG twin.

Every `plot_*` function takes the merged `flairlab.explore.scale.DatasetStats` (or tables derived
from it) and returns an `ExplorePlot`: `.hv` (HoloViews object), `.fig` (matplotlib Figure) and
`.png` (path of the PNG twin, written with `flairlab.data.results.save_figure` when `output_dir` is
given).
In a notebook it displays the interactive view, or the PNG when `interactive=False` (executed
notebooks are often viewed untrusted, where bokeh output stays blank).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.results import save_figure

PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def _hv() -> Any:
    import holoviews as hv

    if "bokeh" not in hv.Store.loaded_backends():
        hv.extension("bokeh", logo=False, inline=True)  # BokehJS inlined: works offline
    return hv


@dataclass
class ExplorePlot:
    """An interactive HoloViews object and its static matplotlib twin."""

    hv: Any
    fig: Figure
    png: Path | None = None
    interactive: bool = True

    def _ipython_display_(self) -> None:
        from IPython.display import Image, display

        if self.interactive:
            display(self.hv)
        elif self.png is not None:
            display(Image(filename=str(self.png)))
        else:
            display(self.fig)


def _finish(
    hv_obj: Any, fig: Figure, output_dir: str | Path | None, name: str, interactive: bool
) -> ExplorePlot:
    png = save_figure(fig, output_dir, name) if output_dir is not None else None
    return ExplorePlot(hv_obj, fig, png, interactive)


def class_colors(nomenclature: str = "cosia", catalog: Catalog | None = None) -> dict[int, str]:
    """Official class colours as `#rrggbb` (grey where the catalog has none)."""
    nom = (catalog or load_catalog()).nomenclature(nomenclature)
    return {c.id: c.color or "#808080" for c in nom.classes}


def modality_table(catalog: Catalog | None = None) -> pd.DataFrame:
    """One row per modality: alias, kind, bands, dtype, pixel size, size, time series, groups."""
    cat = catalog or load_catalog()
    rows = [
        dict(
            modality=m.name,
            alias=m.alias,
            kind=m.kind,
            bands=", ".join(m.band_names),
            dtype=m.dtype,
            resolution_m=m.resolution_m,
            size_px=m.size_px,
            time_series=m.time_series,
            maestro_groups=_fmt(m.band_groups) if m.band_groups else "",
        )
        for m in cat.modalities.values()
    ]
    return pd.DataFrame(rows).set_index("modality")


def class_table(nomenclature: str = "cosia", catalog: Catalog | None = None) -> Any:
    """Class id, name, French name, colour and `ignored` as a Styler with colour swatches."""
    nom = (catalog or load_catalog()).nomenclature(nomenclature)
    df = pd.DataFrame(
        [
            dict(id=c.id, name=c.name, name_fr=c.name_fr, color=c.color or "", ignored=c.ignored)
            for c in nom.classes
        ]
    ).set_index("id")
    return df.style.map(lambda c: f"background-color: {c}" if c else "", subset=["color"])


def _group_label(by: str, key: str, cat: Catalog) -> tuple[str, str | None]:
    if by == "class":
        c = cat.nomenclature("cosia").classes[int(key)]
        return f"{c.id} {c.name}", c.color
    return key, None


def plot_histograms(
    stats: Any,
    modality: str,
    *,
    by: str = "all",
    bands: list[str] | None = None,
    max_groups: int = 8,
    logy: bool = False,
    output_dir: str | Path | None = None,
    interactive: bool = True,
    catalog: Catalog | None = None,
) -> ExplorePlot:
    """Per band: histograms (share of pixels per bin) of each group overlaid (largest groups)."""
    hv, cat = _hv(), catalog or load_catalog()
    m = cat.modality(modality)
    groups = stats.groups(m.name, by)
    if not groups:
        raise ValueError(f"no statistics for {m.name} grouped by {by!r}")
    keys = sorted(groups, key=lambda k: -groups[k].count.sum())[:max_groups]
    names = bands or m.band_names
    spec = next(iter(groups.values())).spec
    edges = spec.edges
    xlim = _occupied(edges, [groups[k].hist[0] for k in keys])
    unit = " (dB)" if spec.transform == "db" else ""
    ncol = min(4, len(names))
    nrow = -(-len(names) // ncol)
    fig = Figure(figsize=(3.6 * ncol, 2.6 * nrow), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    panels = []
    for i, band in enumerate(names):
        b = m.band_names.index(band)
        curves = []
        for j, key in enumerate(keys):
            st = groups[key]
            total = max(int(st.hist[0, b].sum() + st.under[0, b] + st.over[0, b]), 1)
            share = st.hist[0, b] / total
            label, color = _group_label(by, key, cat)
            color = color or PALETTE[j % len(PALETTE)]
            curves.append(
                hv.Histogram(
                    (edges, share), kdims=[f"{band}{unit}"], vdims=["share"], label=label
                ).opts(fill_alpha=0.25, line_color=color, fill_color=color, logy=logy)
            )
            axes[i].stairs(
                share,
                edges,
                label=label,
                color=color,
                fill=len(keys) == 1,
                alpha=0.9 if len(keys) > 1 else 0.5,
            )
        axes[i].set(title=band, xlabel=f"value{unit}", ylabel="share of pixels", xlim=xlim)
        if logy:
            axes[i].set_yscale("log")
        panels.append(
            hv.Overlay(curves).opts(
                title=f"{m.name} {band}",
                width=330,
                height=240,
                xlim=xlim,
                legend_position="top_right",
                show_legend=i == 0,
            )
        )
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if len(keys) > 1:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"{m.name} histograms" + ("" if by == "all" else f" by {by}"))
    layout = hv.Layout(panels).cols(ncol)
    name = f"hist_{m.alias}_{by}" + ("_" + "-".join(bands) if bands else "")
    return _finish(layout, fig, output_dir, name, interactive)


def _occupied(edges: np.ndarray, hists: list[np.ndarray]) -> tuple[float, float]:
    """x-range of the bins holding data (all bands and groups), with one bin of margin."""
    nz = np.flatnonzero(np.sum([h.sum(0) for h in hists], 0))
    if nz.size == 0:
        return float(edges[0]), float(edges[-1])
    lo, hi = max(nz[0] - 1, 0), min(nz[-1] + 2, len(edges) - 1)
    return float(edges[lo]), float(edges[hi])


def plot_correlation(
    stats: Any,
    modality: str,
    *,
    group: str = "all",
    band_groups: list[list[str]] | None = None,
    output_dir: str | Path | None = None,
    interactive: bool = True,
    catalog: Catalog | None = None,
) -> ExplorePlot:
    """Band correlation heatmap; bands reordered by `band_groups` (outlined) when given."""
    hv, cat = _hv(), catalog or load_catalog()
    m = cat.modality(modality)
    st = stats.bands[m.name][group]
    corr = st.corr()
    order = [b for g in band_groups for b in g] if band_groups else m.band_names
    ix = [m.band_names.index(b) for b in order]
    c = corr[np.ix_(ix, ix)]
    data = [(x, y, float(c[j, i])) for i, x in enumerate(order) for j, y in enumerate(order)]
    heat = hv.HeatMap(data, kdims=["band", "band2"], vdims=["r"]).opts(
        cmap="RdBu_r",
        clim=(-1, 1),
        colorbar=True,
        tools=["hover"],
        width=420,
        height=360,
        title=f"{m.name} correlation ({group})",
        invert_yaxis=True,
        xrotation=45,
    )
    labels = hv.Labels(
        [(x, y, f"{v:.2f}") for x, y, v in data], kdims=["band", "band2"], vdims=["text"]
    ).opts(text_font_size="8pt")
    fig = Figure(figsize=(1.0 + 0.55 * len(order), 0.6 + 0.5 * len(order)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(c, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(order)), order, rotation=45)
    ax.set_yticks(range(len(order)), order)
    for i in range(len(order)):
        for j in range(len(order)):
            ax.text(
                j,
                i,
                f"{c[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(c[i, j]) > 0.6 else "black",
            )
    start = 0
    for g in band_groups or []:
        ax.add_patch(_rect(start - 0.5, len(g)))
        start += len(g)
    fig.colorbar(im, ax=ax, shrink=0.8, label="r")
    ax.set_title(f"{m.name} correlation ({group})")
    name = f"corr_{m.alias}" + ("" if group == "all" else "_" + group.replace(":", "_"))
    return _finish(heat * labels, fig, output_dir, name, interactive)


def _rect(x0: float, n: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x0, x0), n, n, fill=False, edgecolor="black", linewidth=2)


def plot_band_groups(
    stats: Any,
    discovered: dict[str, list[list[str]]],
    min_corr: float,
    *,
    output_dir: str | Path | None = None,
    interactive: bool = True,
    catalog: Catalog | None = None,
) -> ExplorePlot:
    """Per modality: dendrogram of `1 − |r|` with the cut, and discovered vs MAESTRO groups."""
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    hv, cat = _hv(), catalog or load_catalog()
    mods = [m for m in discovered if len(cat.modality(m).band_names) > 1]
    fig = Figure(figsize=(9, 2.4 * max(len(mods), 1)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(max(len(mods), 1), 1, squeeze=False)).ravel()
    tables = []
    for ax, mod in zip(axes, mods, strict=False):
        m = cat.modality(mod)
        dist = 1 - np.abs(np.nan_to_num(stats.bands[mod]["all"].corr()))
        np.fill_diagonal(dist, 0)
        Z = linkage(squareform((dist + dist.T) / 2, checks=False), "average")
        dendrogram(Z, labels=m.band_names, ax=ax, color_threshold=1 - min_corr)
        ax.axhline(1 - min_corr, color="red", linestyle="--", linewidth=1)
        fixed = m.band_groups or [m.band_names]
        ax.set(
            ylabel="1 − |r|",
            title=f"{mod}: discovered {_fmt(discovered[mod])}  |  MAESTRO {_fmt(fixed)}",
        )
        ax.title.set_fontsize(9)
        tables.append((mod, _fmt(discovered[mod]), _fmt(fixed)))
    table = hv.Table(pd.DataFrame(tables, columns=["modality", "discovered", "MAESTRO"])).opts(
        width=800, height=40 + 28 * len(tables), title=f"band groups (min |r| = {min_corr})"
    )
    return _finish(table, fig, output_dir, "band_groups", interactive)


def _fmt(groups: list[list[str]]) -> str:
    return " ".join("{" + ",".join(g) + "}" for g in groups)


def plot_overview(
    index: pd.DataFrame,
    stats: Any | None = None,
    *,
    output_dir: str | Path | None = None,
    interactive: bool = True,
    catalog: Catalog | None = None,
) -> ExplorePlot:
    """Patches per domain and split; COSIA class distribution per split (official colours)."""
    hv, cat = _hv(), catalog or load_catalog()
    idx = index.assign(split=index["split"].fillna("none") if "split" in index else "all")
    counts = idx.groupby(["domain", "split"]).size().rename("patches").reset_index()
    pivot = counts.pivot(index="domain", columns="split", values="patches").fillna(0)
    has_cls = stats is not None and "cosia" in stats.class_counts
    fig = Figure(figsize=(12 if has_cls else 6, 3.8), layout="constrained")
    axes = np.atleast_1d(
        fig.subplots(1, 2 if has_cls else 1, width_ratios=[1, 2.2] if has_cls else None)
    )
    pivot.plot.bar(stacked=True, ax=axes[0], color=PALETTE[: pivot.shape[1]], rot=45)
    axes[0].set(ylabel="patches", title=f"{len(idx)} patches, {len(pivot)} domains")
    bars = hv.Bars(counts, ["domain", "split"], "patches").opts(
        stacked=True, width=420, height=320, xrotation=45, tools=["hover"], title="patches"
    )
    if not has_cls:
        return _finish(bars, fig, output_dir, "overview", interactive)
    nom = cat.nomenclature("cosia")
    cc = stats.class_counts["cosia"].to_frame(nom.names)
    share = cc.groupby(["split", "class_id"])["pixels"].sum().unstack(0).fillna(0)
    share = share / share.sum(axis=0).replace(0, 1)
    colors = class_colors("cosia", cat)
    width = 0.8 / share.shape[1]
    for k, split in enumerate(share.columns):
        axes[1].bar(
            share.index + (k - (share.shape[1] - 1) / 2) * width,
            share[split],
            width,
            color=[colors[i] for i in share.index],
            edgecolor="k",
            linewidth=0.4,
            hatch=["", "//", ".."][k % 3],
            label=split,
        )
    axes[1].set_xticks(
        share.index,
        [f"{i} {nom.names[i]}" for i in share.index],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    axes[1].set(ylabel="share of labelled pixels", title="COSIA classes per split")
    axes[1].legend(fontsize=8)
    tidy = share.reset_index().melt("class_id", var_name="split", value_name="share")
    tidy["class"] = [f"{i:02d} {nom.names[i]}" for i in tidy["class_id"]]
    cbars = hv.Bars(tidy, ["class", "split"], "share").opts(
        width=720,
        height=320,
        xrotation=60,
        tools=["hover"],
        title="COSIA classes per split",
        multi_level=False,
        color="split",
        cmap=PALETTE,
    )
    return _finish(bars + cbars, fig, output_dir, "overview", interactive)
