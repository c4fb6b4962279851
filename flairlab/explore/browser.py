"""Look at one patch, every modality side by side: an ipywidgets browser and a static twin.

* `plot_patch(root, patch_id, ...) -> matplotlib Figure` (torchgeo-style `plot`), for reports;
* `PatchBrowser(index)` — pick domain / ROI / patch; S2 and S1 date sliders; panels for aerial
  RGB and IRC (NIR-R-G), elevation (DSM − DTM), SPOT, S2 true colour + snow/cloud mask,
  S1 VV/VH (ascending, descending), historical PAN, COSIA and LPIS with official colours.

Both draw from `render_panels(load_patch(...))`, which returns RGB arrays in `[0, 1]`.
Display stretches: optical bands 2–98 % percentiles per panel; S1 in dB on fixed ranges
(R = VV −25…0 dB, G = VH −30…−5 dB, B = VV − VH 0…15 dB); the S2 mask tints the dimmed grey
image red by cloud and blue by snow probability. Date sliders read out acquisition dates.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.index import index_patches
from flairlab.data.reader import read_dates, read_raster

S1_PANELS = {"s1_asc": "SENTINEL1-ASC_TS", "s1_desc": "SENTINEL1-DESC_TS"}
PANEL_ORDER = [
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


@dataclass
class PatchData:
    """One patch's files: `arrays[modality]` `(C, H, W)` or `(T, C, H, W)`; `dates[modality]`."""

    patch_id: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    dates: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Panel:
    title: str
    rgb: np.ndarray  # (H, W, 3) float in [0, 1]
    legend: list[tuple[int, str, str]] | None = None  # (class id, name, colour) present
    labels: bool = False  # class map: resample with nearest


def _index(root_or_index: str | Path | pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    if isinstance(root_or_index, pd.DataFrame):
        return root_or_index
    return index_patches(Path(root_or_index), catalog=catalog)


def load_patch(
    root_or_index: str | Path | pd.DataFrame, patch_id: str, catalog: Catalog | None = None
) -> PatchData:
    """Read every modality present for `patch_id` (missing files are skipped)."""
    cat = catalog or load_catalog()
    idx = _index(root_or_index, cat)
    row = idx.loc[patch_id]
    out = PatchData(patch_id)
    for name in cat.modality_names:
        if name not in row or pd.isna(row[name]):
            continue
        out.arrays[name] = read_raster(row[name], name, cat)
        m = cat.modality(name)
        if m.time_series and idx.attrs.get("root"):
            out.dates[name] = read_dates(idx.attrs["root"], name, cat)[patch_id]
    return out


def _stretch(bands: np.ndarray, lo_q: float = 2, hi_q: float = 98) -> np.ndarray:
    """`(C, H, W)` → `(H, W, C)` in [0, 1], percentile stretch per band."""
    x = bands.astype(np.float64)
    out = np.empty((*x.shape[1:], x.shape[0]))
    for c in range(x.shape[0]):
        finite = x[c][np.isfinite(x[c])]
        lo, hi = np.percentile(finite, [lo_q, hi_q]) if finite.size else (0.0, 1.0)
        out[..., c] = np.clip((x[c] - lo) / max(hi - lo, 1e-9), 0, 1)
    return np.nan_to_num(out)


def _classes(labels: np.ndarray, nomenclature: str, cat: Catalog) -> tuple[np.ndarray, list]:
    nom = cat.nomenclature(nomenclature)
    lut = np.zeros((256, 3))
    for c in nom.classes:
        lut[c.id] = np.array(c.rgb) / 255
    lut[nom.n_classes :] = (1.0, 0.0, 1.0)  # out-of-range values stand out in magenta
    present = np.unique(labels)
    legend = [
        (
            int(i),
            nom.names[i] if i < nom.n_classes else f"{i} (unknown)",
            nom.classes[i].color if i < nom.n_classes else "#ff00ff",
        )
        for i in present
    ]
    return lut[labels.astype(np.intp)], legend


def mask_overlay(rgb: np.ndarray, cloud: np.ndarray, snow: np.ndarray) -> np.ndarray:
    """The S2 image `(H, W, 3)` in dimmed grey, tinted red by cloud and blue by snow probability
    (`(H, W)` in [0, 1]): a clear date shows the landscape, not a black square."""
    grey = 0.35 + 0.5 * rgb.mean(-1, keepdims=True)
    red, blue = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.35, 1.0])
    c = np.clip(cloud, 0, 1)[..., None]
    sn = np.clip(snow, 0, 1)[..., None]
    out = grey * (1 - c) + red * c
    return np.clip(out * (1 - sn) + blue * sn, 0, 1)


def date_options(data: PatchData, name: str) -> list[tuple[str, int]]:
    """`(label, index)` of a series' dates for a slider: `2020-03-14` (or `date #i`)."""
    arr = data.arrays.get(name)
    n = arr.shape[0] if arr is not None else 0
    return [(_date(data, name, t), t) for t in range(n)]


def _date(data: PatchData, name: str, t: int) -> str:
    d = data.dates.get(name)
    return str(d[t])[:10] if d is not None and t < len(d) else f"date #{t}"


def render_panels(
    data: PatchData,
    s2_date: int = 0,
    s1_asc_date: int = 0,
    s1_desc_date: int = 0,
    catalog: Catalog | None = None,
) -> dict[str, Panel]:
    """RGB panels of a loaded patch (keys from `PANEL_ORDER`, only for modalities present)."""
    cat = catalog or load_catalog()
    a, p = data.arrays, {}
    if "AERIAL_RGBI" in a:
        x = a["AERIAL_RGBI"]
        p["aerial_rgb"] = Panel("aerial RGB (0.2 m)", _stretch(x[[0, 1, 2]]))
        p["aerial_irc"] = Panel("aerial IRC (NIR-R-G)", _stretch(x[[3, 0, 1]]))
    if "DEM_ELEV" in a:
        import matplotlib

        h = a["DEM_ELEV"][0].astype(np.float64) - a["DEM_ELEV"][1]
        lo, hi = np.nanpercentile(h, [1, 99])
        rgb = matplotlib.colormaps["viridis"](np.clip((h - lo) / max(hi - lo, 1e-9), 0, 1))[..., :3]
        p["elevation"] = Panel(f"height DSM−DTM ({lo:.1f}…{hi:.1f} m)", rgb)
    if "SPOT_RGBI" in a:
        p["spot"] = Panel("SPOT RGB (1.6 m)", _stretch(a["SPOT_RGBI"][[0, 1, 2]]))
    if "SENTINEL2_TS" in a:
        s2 = a["SENTINEL2_TS"]
        t = min(s2_date, s2.shape[0] - 1)
        names = cat.modality("SENTINEL2_TS").band_names
        bands = s2[t, [names.index(b) for b in ("B04", "B03", "B02")]]
        p["s2"] = Panel(f"S2 true colour {_date(data, 'SENTINEL2_TS', t)}", _stretch(bands))
        if "SENTINEL2_MSK-SC" in a:
            mk = a["SENTINEL2_MSK-SC"][min(t, a["SENTINEL2_MSK-SC"].shape[0] - 1)] / 100.0
            cloudy = (mk[1] > 0.01).mean()
            p["s2_mask"] = Panel(
                f"S2 cloud (red) / snow (blue) over the image: {cloudy:.0%} cloudy",
                mask_overlay(p["s2"].rgb, cloud=mk[1], snow=mk[0]),
            )
    for key, name in S1_PANELS.items():
        if name in a:
            s1 = a[name]
            t = min(s1_asc_date if key == "s1_asc" else s1_desc_date, s1.shape[0] - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                vv, vh = (
                    10 * np.log10(s1[t, 0].astype(np.float64)),
                    10 * np.log10(s1[t, 1].astype(np.float64)),
                )
            rgb = np.stack([(vv + 25) / 25, (vh + 30) / 25, (vv - vh) / 15], -1)
            orbit = "ascending" if key == "s1_asc" else "descending"
            p[key] = Panel(
                f"S1 {orbit} VV/VH {_date(data, name, t)}", np.clip(np.nan_to_num(rgb), 0, 1)
            )
    if "AERIAL-RLT_PAN" in a:
        pan = _stretch(a["AERIAL-RLT_PAN"][[0]])
        p["rlt"] = Panel("historical PAN (1950s)", np.repeat(pan, 3, -1))
    if "AERIAL_LABEL-COSIA" in a:
        rgb, legend = _classes(a["AERIAL_LABEL-COSIA"][0], "cosia", cat)
        p["cosia"] = Panel("COSIA land cover", rgb, legend, labels=True)
    if "ALL_LABEL-LPIS" in a:
        rgb, legend = _classes(a["ALL_LABEL-LPIS"][0], "lpis_l1", cat)
        p["lpis"] = Panel("LPIS crops (level 1)", rgb, legend, labels=True)
    return {k: p[k] for k in PANEL_ORDER if k in p}


def _legend_handles(legend: list[tuple[int, str, str]]) -> list:
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=c, edgecolor="k", linewidth=0.4, label=f"{i} {n}") for i, n, c in legend
    ]


def plot_patch(
    root_or_index: str | Path | pd.DataFrame,
    patch_id: str,
    *,
    s2_date: int = 0,
    s1_asc_date: int = 0,
    s1_desc_date: int = 0,
    ncols: int = 4,
    catalog: Catalog | None = None,
) -> Figure:
    """Static figure of every modality of a patch (the `PatchBrowser`'s twin)."""
    cat = catalog or load_catalog()
    panels = render_panels(
        load_patch(root_or_index, patch_id, cat), s2_date, s1_asc_date, s1_desc_date, cat
    )
    n = len(panels)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.3 * ncols, 3.3 * nrows + 1.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, panel in zip(axes, panels.values(), strict=False):
        ax.imshow(panel.rgb, interpolation="nearest")
        ax.set_title(panel.title, fontsize=8)
        ax.set_axis_off()
        if panel.legend:
            ax.legend(
                handles=_legend_handles(panel.legend),
                fontsize=6,
                loc="upper left",
                bbox_to_anchor=(0, -0.02),
                ncol=2,
                frameon=False,
            )
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(patch_id)
    return fig


def _png(panel: Panel, px: int) -> bytes:
    from PIL import Image

    img = Image.fromarray((panel.rgb * 255).round().astype(np.uint8))
    h, w = panel.rgb.shape[:2]
    small, large = w < px, w >= px
    resample = Image.NEAREST if panel.labels or small else Image.BOX if large else Image.BILINEAR
    buf = io.BytesIO()
    img.resize((px, round(px * h / w)), resample).save(buf, format="PNG")
    return buf.getvalue()


def _legend_html(legend: list[tuple[int, str, str]], title: str) -> str:
    """Legend markup for an ipywidgets HTML widget: names and title as escaped text (a class
    name from the catalog is data, never markup)."""
    items = "".join(
        f'<span style="display:inline-block;margin:1px 6px 1px 0"><span style="display:'
        f"inline-block;width:11px;height:11px;background:{html.escape(c)};border:1px solid #333;"
        f'vertical-align:middle"></span> {i} {html.escape(n)}</span>'
        for i, n, c in legend
    )
    return f"<b>{html.escape(title)}</b>: {items}"


class PatchBrowser:
    """ipywidgets browser over an index (`flairlab.data.index.index_patches`); `.widget` is the
    widget tree."""

    def __init__(self, index: pd.DataFrame, catalog: Catalog | None = None, panel_px: int = 200):
        import ipywidgets as w

        self.index, self.cat, self.px = index.sort_index(), catalog or load_catalog(), panel_px
        self.data: PatchData | None = None
        lay = w.Layout(width="auto")
        self.domain = w.Dropdown(
            description="domain", options=sorted(self.index["domain"].unique()), layout=lay
        )
        self.roi = w.Dropdown(description="ROI", layout=lay)
        self.patch = w.Dropdown(description="patch", layout=w.Layout(width="340px"))
        self.sliders = {  # the readout is the acquisition date
            k: w.SelectionSlider(options=[("-", 0)], description=d, continuous_update=False,
                                 layout=w.Layout(width="300px"))
            for k, d in (("s2", "S2 date"), ("s1_asc", "S1 asc"), ("s1_desc", "S1 desc"))
        }  # fmt: skip
        self._loading = False
        self.images = {
            k: w.Image(format="png", layout=w.Layout(width=f"{panel_px}px")) for k in PANEL_ORDER
        }
        self.titles = {k: w.HTML() for k in PANEL_ORDER}
        self.boxes = {
            k: w.VBox([self.titles[k], self.images[k]], layout=w.Layout(width=f"{panel_px + 10}px"))
            for k in PANEL_ORDER
        }
        self.legend = w.HTML()
        self.grid = w.HBox(list(self.boxes.values()), layout=w.Layout(flex_flow="row wrap"))
        self.widget = w.VBox(
            [
                w.HBox([self.domain, self.roi, self.patch]),
                w.HBox(list(self.sliders.values())),
                self.grid,
                self.legend,
            ]
        )
        self.domain.observe(lambda _: self._set_rois(), names="value")
        self.roi.observe(lambda _: self._set_patches(), names="value")
        self.patch.observe(lambda _: self._load(), names="value")
        for s in self.sliders.values():
            s.observe(lambda _: self._draw(), names="value")
        self._set_rois()

    def _set_rois(self) -> None:
        rois = sorted(self.index.loc[self.index["domain"] == self.domain.value, "roi"].unique())
        self.roi.options = rois
        if self.roi.value not in rois:
            self.roi.value = rois[0] if rois else None

    def _set_patches(self) -> None:
        sel = self.index[
            (self.index["domain"] == self.domain.value) & (self.index["roi"] == self.roi.value)
        ]
        self.patch.options = list(sel.index)
        if self.patch.value not in self.patch.options and len(sel):
            self.patch.value = sel.index[0]

    def _load(self) -> None:
        if self.patch.value is None:
            return
        self.data = load_patch(self.index, self.patch.value, self.cat)
        self._loading = True  # one redraw for the new patch, not one per slider
        try:
            for key, name in (("s2", "SENTINEL2_TS"), *S1_PANELS.items()):
                opts = date_options(self.data, name)
                s = self.sliders[key]
                s.options = opts or [("-", 0)]
                s.value = 0
                s.disabled = not opts
        finally:
            self._loading = False
        self._draw()

    def _draw(self) -> None:
        if self.data is None or self._loading:
            return
        v = {k: s.value for k, s in self.sliders.items()}
        panels = render_panels(self.data, v["s2"], v["s1_asc"], v["s1_desc"], self.cat)
        for key in PANEL_ORDER:
            self.boxes[key].layout.display = "flex" if key in panels else "none"
            if key in panels:
                self.titles[key].value = f"<small>{html.escape(panels[key].title)}</small>"
                self.images[key].value = _png(panels[key], self.px)
        self.legend.value = "<br>".join(
            _legend_html(panels[k].legend, panels[k].title)
            for k in ("cosia", "lpis")
            if k in panels
        )

    def select(self, patch_id: str) -> PatchBrowser:
        """Jump to a patch (sets domain, ROI and patch)."""
        row = self.index.loc[patch_id]
        self.domain.value, self.roi.value = row["domain"], row["roi"]
        self.patch.value = patch_id
        return self

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
