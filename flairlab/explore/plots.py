"""Exploration plots: an interactive HoloViews (bokeh) view plus a static matplotlib PNG twin.

Every `plot_*` function takes the merged `flairlab.explore.scale.DatasetStats` (or tables derived
from it) and returns an `ExplorePlot`: `.hv` (HoloViews object), `.fig` (matplotlib Figure) and
`.png` (path of the PNG twin, written with `flairlab.data.results.save_figure` when `output_dir` is
given).
In a notebook it displays the interactive view with the PNG in front of it for viewers that run no
script (untrusted notebooks, GitHub; removed once BokehJS runs, `flairlab.explore.display`), or
only the PNG when `interactive=False`.
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
from flairlab.explore.display import bokeh_backend, html_with_static_twin, load_bokeh

NOTEBOOK_WIDTH = 800  # px: the widest bokeh figure that fits a notebook cell beside the sidebar
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
    return bokeh_backend()  # BokehJS reaches the notebook in `ExplorePlot` display (load_bokeh)


@dataclass
class ExplorePlot:
    """An interactive HoloViews object and its static matplotlib twin."""

    hv: Any
    fig: Figure
    png: Path | None = None
    interactive: bool = True

    def png_bytes(self) -> bytes:
        """The static twin as PNG bytes (the saved file, else rendered now)."""
        if self.png is not None and self.png.is_file():
            return self.png.read_bytes()
        import io

        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        return buf.getvalue()

    def _ipython_display_(self) -> None:
        from IPython.display import Image, display, publish_display_data

        if not self.interactive:
            display(Image(data=self.png_bytes()))
            return
        load_bokeh()  # BokehJS once per notebook (a no-op after `setup_plots`)
        data, meta = self.hv._repr_mimebundle_()
        if "text/html" in data:  # the PNG stays where scripts do not run (untrusted, GitHub)
            alt = self.fig.get_suptitle() or "static figure"
            data = {**data, "text/html": html_with_static_twin(data["text/html"],
                                                               self.png_bytes(), alt)}
        publish_display_data(data, meta)


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
    ncol = grid_columns(len(names))
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
            hist = hv.Histogram(
                (edges, share), kdims=[f"{band}{unit}"], vdims=["share"], label=label
            )
            curves.append(hist.opts(
                fill_alpha=0.25, line_color=color, fill_color=color, logy=logy,
                xlabel=f"{band}: {value_label(m, spec.transform)}", ylabel="share of pixels",
            ))  # fmt: skip
            axes[i].stairs(
                share,
                edges,
                label=label,
                color=color,
                fill=len(keys) == 1,
                alpha=0.9 if len(keys) > 1 else 0.5,
            )
        axes[i].set(title=band, xlabel=value_label(m, spec.transform), ylabel="share of pixels",
                    xlim=xlim)  # fmt: skip
        if logy:
            axes[i].set_yscale("log")
        panels.append(
            hv.Overlay(curves).opts(
                title=f"{m.name} {band}",
                width=NOTEBOOK_WIDTH // ncol,
                height=240,
                xticks=4,
                xlim=xlim,
                legend_position="top_right",
                legend_opts={"label_text_font_size": "7pt", "spacing": 0, "glyph_height": 10,
                             "glyph_width": 10, "padding": 4},
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


def value_label(modality: Any, transform: str | None = None) -> str:
    """Axis label of a modality's pixel values with their unit: `backscatter (dB)`,
    `elevation (m)`, `reflectance × 10 000` (S2), else `digital number (uint8)`."""
    units = {b.units for b in modality.bands} - {None}
    if transform == "db":
        return "backscatter (dB)"
    if units == {"m"}:
        return "elevation (m)"
    if len(units) == 1:
        return f"value ({units.pop()})"
    if "reflectance x10000" in (modality.description or ""):
        return "reflectance × 10 000"
    return f"digital number ({modality.dtype})"


def grid_columns(n: int) -> int:
    """Panels per row for `n` small plots at notebook width (4 bands: 2 × 2, never above 3)."""
    return 2 if n == 4 else min(3, max(n, 1))


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
    n = len(order)
    side = min(NOTEBOOK_WIDTH - 120, max(300, 52 * n))  # ~52 px per cell: 2-decimal labels fit
    title = f"{m.name} band correlation r ({group})"
    heat = hv.HeatMap(data, kdims=["band", "band2"], vdims=["r"]).opts(
        cmap="RdBu_r",
        clim=(-1, 1),
        colorbar=True,
        tools=["hover"],
        width=side + 110,
        height=side + 60,
        title=title,
        xlabel="band",
        ylabel="band",
        invert_yaxis=True,
        xrotation=45,
    )
    fontsize = "10pt" if n <= 12 else "8pt"
    labels = [
        hv.Labels(
            [(x, y, f"{v:.2f}") for x, y, v in data if (abs(v) > 0.6) == dark],
            kdims=["band", "band2"], vdims=["text"],
        ).opts(text_font_size=fontsize, text_color="white" if dark else "black")
        for dark in (True, False)
    ]  # fmt: skip
    inch = 0.62 if n > 6 else 0.8
    fig = Figure(figsize=(1.6 + inch * n, 0.9 + inch * n), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(c, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), order, rotation=45)
    ax.set_yticks(range(n), order)
    ax.set(xlabel="band", ylabel="band")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{c[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if abs(c[i, j]) > 0.6 else "black",
            )
    start = 0
    for g in band_groups or []:
        ax.add_patch(_rect(start - 0.5, len(g)))
        start += len(g)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Pearson r")
    ax.set_title(title + ("\n(boxes: discovered band groups)" if band_groups else ""), fontsize=10)
    name = f"corr_{m.alias}" + ("" if group == "all" else "_" + group.replace(":", "_"))
    return _finish(hv.Overlay([heat, *labels]), fig, output_dir, name, interactive)


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
    """Patches per domain and split; COSIA class distribution per split (official colours for
    classes, hatching and a legend for splits)."""
    from matplotlib.patches import Patch

    hv, cat = _hv(), catalog or load_catalog()
    idx = index.assign(split=index["split"].fillna("none") if "split" in index else "all")
    counts = idx.groupby(["domain", "split"]).size().rename("patches").reset_index()
    pivot = counts.pivot(index="domain", columns="split", values="patches").fillna(0)
    split_colors = dict(zip(pivot.columns, PALETTE, strict=False))
    has_cls = stats is not None and "cosia" in stats.class_counts
    fig = Figure(figsize=(12 if has_cls else 6, 4.2), layout="constrained")
    axes = np.atleast_1d(
        fig.subplots(1, 2 if has_cls else 1, width_ratios=[1, 2.2] if has_cls else None)
    )
    pivot.plot.bar(stacked=True, ax=axes[0], color=list(split_colors.values()), rot=45)
    axes[0].set(ylabel="patches", xlabel="domain (department-year)",
                title=f"{len(idx)} patches in {len(pivot)} domains")  # fmt: skip
    axes[0].legend(title="split", fontsize=8)
    bars = hv.Bars(counts, ["domain", "split"], "patches").opts(
        stacked=True, width=NOTEBOOK_WIDTH, height=300, xrotation=45, tools=["hover"],
        title=f"{len(idx)} patches per domain and split", cmap=split_colors,
        legend_position="top_right", xlabel="domain (department-year)", ylabel="patches",
    )  # fmt: skip
    if not has_cls:
        fig.suptitle("Dataset overview")
        return _finish(bars, fig, output_dir, "overview", interactive)
    nom = cat.nomenclature("cosia")
    cc = stats.class_counts["cosia"].to_frame(nom.names)
    share = cc.groupby(["split", "class_id"])["pixels"].sum().unstack(0).fillna(0)
    share = share / share.sum(axis=0).replace(0, 1)
    colors = class_colors("cosia", cat)
    width = 0.8 / share.shape[1]
    hatches = ["", "//", "..", "xx", "\\\\"]
    for k, split in enumerate(share.columns):
        axes[1].bar(
            share.index + (k - (share.shape[1] - 1) / 2) * width,
            share[split],
            width,
            color=[colors[i] for i in share.index],
            edgecolor="k",
            linewidth=0.4,
            hatch=hatches[k % len(hatches)],
        )
    axes[1].set_xticks(
        share.index,
        [f"{i} {nom.names[i]}" for i in share.index],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    axes[1].set(ylabel="share of labelled pixels", xlabel="COSIA class",
                title="COSIA classes per split (bar colour: class, hatching: split)")  # fmt: skip
    axes[1].legend(
        handles=[Patch(facecolor="white", edgecolor="k", hatch=hatches[k % len(hatches)] * 2,
                       label=split) for k, split in enumerate(share.columns)],
        title="split", fontsize=8,
    )  # fmt: skip
    fig.suptitle("Dataset overview")
    tidy = share.reset_index().melt("class_id", var_name="split", value_name="share")
    tidy["class"] = [f"{i:02d} {nom.names[i]}" for i in tidy["class_id"]]
    cbars = hv.Bars(tidy, ["class", "split"], "share").opts(
        width=NOTEBOOK_WIDTH,
        height=380,
        xrotation=60,
        tools=["hover"],
        title="COSIA classes: share of labelled pixels per split",
        multi_level=False,
        color="split",
        cmap={sp: split_colors.get(sp, "#7f7f7f") for sp in share.columns},
        show_legend=True,
        legend_position="top_right",
        xlabel="COSIA class",
        ylabel="share of labelled pixels",
    )
    return _finish((bars + cbars).cols(1), fig, output_dir, "overview", interactive)
