"""Prediction maps with no tile server and no internet (notebook-ecosystem.md §3).

Rasters (EPSG:2154 COGs from `flairlab.maps.predict`, or patch GeoTIFFs) are reprojected to Web
Mercator (nearest for classes), coloured into RGBA (alpha 0 for nodata) and shown as Leaflet
image overlays embedded as PNG `data:` URLs. Two renderers share the same `Overlay` objects:

* `interactive_map`: a leafmap (ipyleaflet) map for JupyterLab/Binder, with a legend, opacity
  sliders and a split view (prediction | truth) through `SplitMapControl` on custom panes;
* `flairlab.maps.html_map.export_html`: a self-contained folium page (Leaflet inlined, no CDN link)
  with a fixed legend, a layer control, opacity sliders and the same split view.

`plot_zone` draws the same zone as a static matplotlib figure.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.merge import merge
from rasterio.warp import Resampling, calculate_default_transform, reproject

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError

WEB_MERCATOR = "EPSG:3857"
ERROR_LEGEND = {0: ("correct", "#1a9641"), 1: ("wrong", "#d7191c")}
DEFAULT_MAX_PIXELS = 4_000_000  # per overlay, after reprojection (larger zones are downsampled)
SPLIT_PANES = ("flairlab-left", "flairlab-right")


@dataclass
class Overlay:
    """One image layer: `rgba` (H, W, 4) uint8 on a Web Mercator grid, `bounds` [[S, W], [N, E]]
    in degrees; `kind` is "rgb", "classes" or "error"; `values` the class ids present."""

    name: str
    rgba: np.ndarray
    bounds: list[list[float]]
    kind: str
    values: list[int]
    opacity: float = 1.0
    show: bool = True
    _url: str | None = field(default=None, repr=False, compare=False)

    def png(self) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.rgba, "RGBA").save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    def data_url(self) -> str:
        """PNG as a `data:` URL (encoded once; both renderers reuse it)."""
        if self._url is None:
            self._url = "data:image/png;base64," + base64.b64encode(self.png()).decode("ascii")
        return self._url


def _read(
    src: str | Path | Sequence[str | Path],
    bands: Sequence[int],
    max_pixels: int,
    resampling: Resampling,
) -> tuple[np.ma.MaskedArray, Any, Any]:
    """Mosaic one or more rasters (bands 1-based) at a resolution giving <= max_pixels;
    masked where no file covers or nodata. -> (C, H, W) masked array, transform, crs."""
    paths = [src] if isinstance(src, (str, Path)) else list(src)
    if not paths:
        raise DataError("no raster to show", expected=">= 1 file", found=0)
    with rasterio.open(paths[0]) as first:
        crs, res = first.crs, first.res
    bounds = []
    for p in paths:
        with rasterio.open(p) as ds:
            if ds.crs != crs:
                raise DataError(
                    "rasters of one layer must share a CRS", path=p, expected=crs, found=ds.crs
                )
            bounds.append(ds.bounds)
    w, s = min(b.left for b in bounds), min(b.bottom for b in bounds)
    e, n = max(b.right for b in bounds), max(b.top for b in bounds)
    scale = max(1.0, np.sqrt((e - w) * (n - s) / (res[0] * res[1]) / max_pixels))
    arr, transform = merge(
        paths,
        indexes=list(bands),
        res=(res[0] * scale, res[1] * scale),
        resampling=resampling,
        masked=True,
    )
    return arr, transform, crs


def to_web_mercator(
    arr: np.ma.MaskedArray, transform: Any, crs: Any, *, max_pixels: int, resampling: Resampling
) -> tuple[np.ndarray, np.ndarray, list[list[float]]]:
    """Reproject (C, H, W) to EPSG:3857. -> data (C, h, w), valid (h, w) bool, [[S, W], [N, E]]."""
    c, h, w = arr.shape
    left, top = transform @ (0, 0)
    right, bottom = transform @ (w, h)
    dst_tr, dw, dh = calculate_default_transform(crs, WEB_MERCATOR, w, h, left, bottom, right, top)
    res0, f = (dst_tr.a, -dst_tr.e), np.sqrt(dw * dh / max_pixels)
    while dw * dh > max_pixels:  # keep the footprint, coarsen the pixels (sizes round up)
        dst_tr, dw, dh = calculate_default_transform(
            crs, WEB_MERCATOR, w, h, left, bottom, right, top,
            resolution=(res0[0] * f, res0[1] * f),
        )  # fmt: skip
        f *= 1.01
    out = np.zeros((c, dh, dw), arr.dtype)
    valid = np.zeros((dh, dw), np.uint8)
    src_valid = (~np.ma.getmaskarray(arr).any(0)).astype(np.uint8)
    reproject(
        np.ma.getdata(arr),
        out,
        src_transform=transform,
        src_crs=crs,
        dst_transform=dst_tr,
        dst_crs=WEB_MERCATOR,
        resampling=resampling,
    )
    reproject(
        src_valid,
        valid,
        src_transform=transform,
        src_crs=crs,
        dst_transform=dst_tr,
        dst_crs=WEB_MERCATOR,
        resampling=Resampling.nearest,
        src_nodata=None,
        dst_nodata=0,
    )
    to_ll = Transformer.from_crs(WEB_MERCATOR, "EPSG:4326", always_xy=True)
    west, north = to_ll.transform(*(dst_tr @ (0, 0)))
    east, south = to_ll.transform(*(dst_tr @ (dw, dh)))
    return out, valid.astype(bool), [[south, west], [north, east]]


def html_text(value: object) -> str:
    """`value` as HTML text: `<`, `>`, `&`, `"`, `'` escaped (safe in elements and attributes).
    The escaping discipline of every map page is described in `flairlab.maps.html_map`."""
    return html.escape(str(value), quote=True)


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def palette_overlay(
    src: str | Path | Sequence[str | Path],
    name: str,
    colors: dict[int, tuple[int, int, int]],
    *,
    kind: str = "classes",
    opacity: float = 1.0,
    show: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Overlay:
    """A class raster (band 1, nodata -> transparent) coloured with `colors` {id: (r, g, b)}."""
    arr, tr, crs = _read(src, [1], max_pixels, Resampling.nearest)
    data, valid, bounds = to_web_mercator(
        arr, tr, crs, max_pixels=max_pixels, resampling=Resampling.nearest
    )
    ids = data[0]
    lut = np.zeros((256, 4), np.uint8)
    for k, rgb in colors.items():
        lut[int(k)] = (*rgb, 255)
    known = np.isin(ids, list(colors))
    unknown = valid & ~known
    if unknown.any():
        raise DataError(
            f"layer {name!r}: values without a colour",
            path=src if isinstance(src, (str, Path)) else None,
            expected=sorted(colors),
            found=np.unique(ids[unknown])[:5].tolist(),
        )
    rgba = lut[ids]
    rgba[~valid] = 0
    values = np.unique(ids[valid]).astype(int).tolist()
    return Overlay(name, rgba, bounds, kind, values, opacity, show)


def class_overlay(
    src: str | Path | Sequence[str | Path],
    name: str,
    *,
    nomenclature: str = "cosia",
    catalog: Catalog | None = None,
    **kwargs: Any,
) -> Overlay:
    """Class raster coloured with the catalog nomenclature's palette."""
    colors = (catalog or load_catalog()).nomenclature(nomenclature).colors()
    return palette_overlay(src, name, colors, kind="classes", **kwargs)


def error_overlay(src: str | Path, name: str = "errors", **kwargs: Any) -> Overlay:
    """Error raster of `flairlab.maps.predict` (0 correct, 1 wrong, 255 not evaluated)."""
    colors = {k: _hex_rgb(c) for k, (_, c) in ERROR_LEGEND.items()}
    return palette_overlay(src, name, colors, kind="error", **kwargs)


def rgb_overlay(
    src: str | Path | Sequence[str | Path],
    name: str = "aerial",
    *,
    bands: Sequence[int] = (1, 2, 3),
    opacity: float = 1.0,
    show: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Overlay:
    """True-colour image (bands R, G, B, 1-based; AERIAL_RGBI default); non-uint8 data are
    stretched between their 2nd and 98th percentiles."""
    arr, tr, crs = _read(src, bands, max_pixels, Resampling.bilinear)
    data, valid, bounds = to_web_mercator(
        arr, tr, crs, max_pixels=max_pixels, resampling=Resampling.bilinear
    )
    if data.dtype != np.uint8:
        v = data[:, valid].astype(np.float64)
        lo, hi = np.percentile(v, [2, 98], axis=1) if v.size else (np.zeros(3), np.ones(3))
        span = np.maximum(hi - lo, 1e-12)[:, None, None]
        data = (np.clip((data - lo[:, None, None]) / span, 0, 1) * 255).astype(np.uint8)
    rgba = np.dstack([*data, np.where(valid, 255, 0).astype(np.uint8)])
    return Overlay(name, rgba, bounds, "rgb", [], opacity, show)


def zone_overlays(
    result: Any,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    opacity: float = 0.6,
    catalog: Catalog | None = None,
) -> list[Overlay]:
    """Overlays for a `flairlab.maps.predict.ZoneResult`: aerial, prediction, truth, errors;
    class layers at `opacity` so that the aerial image shows through them."""
    out = []
    if result.aerial:
        out.append(rgb_overlay(result.aerial, max_pixels=max_pixels))
    kw = dict(
        nomenclature=result.nomenclature, catalog=catalog, max_pixels=max_pixels, opacity=opacity
    )
    out.append(class_overlay(result.prediction, "prediction", **kw))
    if result.truth is not None:
        out.append(class_overlay(result.truth, "ground truth", **kw))
    if result.error is not None:
        out.append(error_overlay(result.error, max_pixels=max_pixels, opacity=opacity, show=False))
    return out


def zone_scores(result: Any) -> str | None:
    """"OA …, mIoU …" of a zone's prediction, or None without ground truth."""
    m = result.metrics or {}
    return f"OA {m['oa']:.3f}, mIoU {m['miou']:.3f}" if m.get("oa") is not None else None


def zone_info(
    result: Any, checkpoint: str | Path | None = None, modalities: Sequence[str] = ()
) -> tuple[str, dict[str, str]]:
    """(heading, rows) describing a `ZoneResult` for a map page: zone, patches and extent, the
    model (checkpoint file and its run step, or "untrained"), its inputs and the zone metrics."""
    with rasterio.open(result.prediction) as ds:
        b = ds.bounds
    extent = f"{(b.right - b.left) / 1e3:.2f} × {(b.top - b.bottom) / 1e3:.2f} km"
    n = len(result.patch_ids)
    rows = {"zone": f"{result.zone}: {n} patch{'es' if n != 1 else ''}, {extent} (EPSG:2154)"}
    if checkpoint:
        ck = Path(checkpoint)
        rows["model"] = f"{ck.parent.name}/{ck.name}" if ck.parent.name else ck.name
    else:
        rows["model"] = "untrained (fresh weights): a pipeline check, its map is noise"
    if modalities:
        rows["inputs"] = ", ".join(modalities)
    scores = zone_scores(result)
    if scores:
        n_px = (result.metrics or {}).get("n_evaluated_px", 0)
        rows["metrics"] = f"{scores} on {n_px:,} labelled pixels"
    else:
        rows["metrics"] = "no ground truth in this zone"
    return f"{result.zone}: prediction vs ground truth", rows


def legend_entries(
    overlays: Sequence[Overlay], nomenclature: str = "cosia", catalog: Catalog | None = None
) -> dict[str, str]:
    """{label: '#rrggbb'} for the classes present in the class overlays (id order), then the
    error classes when an error overlay is shown."""
    nom = (catalog or load_catalog()).nomenclature(nomenclature)
    present = sorted({v for o in overlays if o.kind == "classes" for v in o.values})
    out = {nom.classes[i].name: nom.classes[i].color or "#808080" for i in present}
    errs = sorted({v for o in overlays if o.kind == "error" for v in o.values})
    out.update({ERROR_LEGEND[v][0]: ERROR_LEGEND[v][1] for v in errs if v in ERROR_LEGEND})
    return out


def union_bounds(overlays: Sequence[Overlay]) -> list[list[float]]:
    """[[S, W], [N, E]] (degrees) covering every overlay."""
    return [
        [min(o.bounds[0][0] for o in overlays), min(o.bounds[0][1] for o in overlays)],
        [max(o.bounds[1][0] for o in overlays), max(o.bounds[1][1] for o in overlays)],
    ]


def view_of(bounds: list[list[float]], size_px: int = 500) -> tuple[tuple[float, float], int]:
    """(centre (lat, lon), integer zoom) showing `bounds` [[S, W], [N, E]] in a `size_px` view."""
    to_m = Transformer.from_crs("EPSG:4326", WEB_MERCATOR, always_xy=True)
    (x0, y0), (x1, y1) = (to_m.transform(b[1], b[0]) for b in bounds)
    world = 2 * 20037508.342789244  # Web Mercator width in metres = 256 px at zoom 0
    span = max(abs(x1 - x0), abs(y1 - y0), 1e-3)
    zoom = int(np.clip(np.floor(np.log2(size_px * world / (256 * span))), 0, 22))
    to_ll = Transformer.from_crs(WEB_MERCATOR, "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform((x0 + x1) / 2, (y0 + y1) / 2)
    return (lat, lon), zoom


def split_layers(overlays: Sequence[Overlay], split: Sequence[str] | None) -> dict[str, str]:
    """{layer name: pane} for the split view (left, right); {} when off."""
    if not split:
        return {}
    names = [o.name for o in overlays]
    missing = [s for s in split if s not in names]
    if len(split) != 2 or missing:
        raise DataError("split view needs two layer names", expected=names, found=list(split))
    return dict(zip(split, SPLIT_PANES, strict=True))


def interactive_map(
    overlays: Sequence[Overlay],
    *,
    split: Sequence[str] | None = ("prediction", "ground truth"),
    basemap: str | None = None,
    nomenclature: str = "cosia",
    legend_title: str = "Classes",
    height: str = "600px",
    catalog: Catalog | None = None,
) -> Any:
    """A leafmap (ipyleaflet) map: overlays as data-URL ImageOverlays (nothing fetched), legend,
    opacity sliders, optional split view. `basemap` (e.g. "OpenStreetMap") needs internet."""
    import ipyleaflet
    import ipywidgets as widgets
    import leafmap

    panes = split_layers(overlays, split if split and len(overlays) > 1 else None)
    m = leafmap.Map(
        draw_control=False,
        measure_control=False,
        toolbar_control=False,
        search_control=False,
        layers_control=True,
        height=height,
    )
    for layer in [lyr for lyr in m.layers if isinstance(lyr, ipyleaflet.TileLayer)]:
        m.remove(layer)
    if basemap:
        m.add_basemap(basemap)
    m.panes = {p: {"zIndex": 450} for p in panes.values()}
    sliders, layers = [], {}
    for ov in overlays:
        kw = {"pane": panes[ov.name]} if ov.name in panes else {}
        layer = ipyleaflet.ImageOverlay(
            url=ov.data_url(),
            bounds=ov.bounds,
            name=html_text(ov.name),  # the layer control and the legend render HTML
            opacity=ov.opacity,
            visible=ov.show,
            **kw,
        )
        m.add(layer)
        layers[ov.name] = layer
        s = widgets.FloatSlider(
            value=ov.opacity,
            min=0,
            max=1,
            step=0.05,
            description=ov.name,
            readout=False,
            layout=widgets.Layout(width="220px"),
        )
        widgets.jslink((s, "value"), (layer, "opacity"))
        sliders.append(s)
    m.add(ipyleaflet.WidgetControl(widget=widgets.VBox(sliders), position="topright"))
    entries = legend_entries(overlays, nomenclature, catalog)
    if entries:
        m.add_legend(title=html_text(legend_title), position="bottomright",
                     legend_dict={html_text(k): c for k, c in entries.items()})  # fmt: skip
    if panes:
        left, right = (layers[n] for n in panes)
        m.add(ipyleaflet.SplitMapControl(left_layer=left, right_layer=right))
    m.center, m.zoom = view_of(union_bounds(overlays))  # fit_bounds is lost before display
    return m


def plot_zone(result: Any, *, max_pixels: int = 1_000_000, catalog: Catalog | None = None) -> Any:
    """Static figure of a `ZoneResult` (Lambert-93 axes, km): aerial | prediction | truth |
    errors, with a legend of the classes present. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    nom = (catalog or load_catalog()).nomenclature(result.nomenclature)
    lut = np.full((256, 4), 0, np.uint8)
    for k, rgb in nom.colors().items():
        lut[k] = (*rgb, 255)
    err_lut = np.zeros((256, 4), np.uint8)
    for k, (_, c) in ERROR_LEGEND.items():
        err_lut[k] = (*_hex_rgb(c), 255)
    panels: list[tuple[str, Any, np.ndarray | None]] = [
        ("aerial", result.aerial, None),
        ("prediction", result.prediction, lut),
        ("ground truth", result.truth, lut),
        ("errors", result.error, err_lut),
    ]
    panels = [p for p in panels if p[1]]
    with rasterio.open(result.prediction) as ds:
        aspect = ds.height / ds.width
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2 * aspect + 1.6),
                             squeeze=False)  # fmt: skip
    present: set[int] = set()
    for ax, (title, src, table) in zip(axes[0], panels, strict=True):
        bands = [1] if table is not None else [1, 2, 3]
        rs = Resampling.nearest if table is not None else Resampling.bilinear
        arr, tr, _ = _read(src, bands, max_pixels, rs)
        h, w = arr.shape[1:]
        extent = [tr.c / 1e3, (tr.c + w * tr.a) / 1e3, (tr.f + h * tr.e) / 1e3, tr.f / 1e3]
        data, mask = np.ma.getdata(arr), np.ma.getmaskarray(arr).any(0)
        if table is None:
            img = np.dstack([*data.astype(np.uint8), np.where(mask, 0, 255).astype(np.uint8)])
        else:
            img = table[data[0]]
            img[mask] = 0
            if table is lut:
                present |= set(np.unique(data[0][~mask]).tolist())
        ax.imshow(img, extent=extent, interpolation="nearest")
        ax.set_title(title)
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.set_xlabel("x (km, EPSG:2154)")
    axes[0][0].set_ylabel("y (km)")
    handles = [
        Patch(color=nom.classes[i].color or "#808080", label=nom.classes[i].name)
        for i in sorted(present)
        if i < nom.n_classes
    ]
    handles += [Patch(color=c, label=n) for n, c in ERROR_LEGEND.values()] if result.error else []
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(6, len(handles) or 1),
        fontsize=8,
        frameon=False,
    )
    scores = zone_scores(result)
    fig.suptitle(f"{result.zone}: {len(result.patch_ids)} patch(es)"
                 + (f" · {scores}" if scores else ""))  # fmt: skip
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
