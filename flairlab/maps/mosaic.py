"""Zone rasters without a model: patch geometry, blended mosaics, label / error maps, COG writing.

A *zone* is every selected patch of one `DOMAIN_ROI`. Each patch's class probabilities
`(K, 512, 512)` at 0.2 m are placed on the zone's Lambert-93 grid, taken from the patches'
GeoTIFF transforms (never from the `R-C` in their names). Where patches overlap, probabilities
are averaged with per-pixel weights (`blend="average"`: flat; `"smooth"`: a raised-cosine window
that favours patch centres); where nothing was predicted the class raster holds nodata (255).
`flairlab.maps.predict` runs the model and feeds these pieces.

Memory and disk scale with the patches, not with the zone's bounding box: a zone is cut into
connected groups of patches (`patch_groups`: footprints that overlap or touch), each accumulated
on its own small grid (`ZoneGrid.subgrid`), and the zone rasters are written window by window
(`SparseRaster`: a tiled GeoTIFF whose empty tiles are never stored, then a COG).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError

NODATA = 255
PROB_SCALE = 250.0  # probabilities raster: uint8 = round(PROB_SCALE * p)
ERROR_COLORS = {0: (26, 150, 65), 1: (215, 25, 28)}  # correct (green), wrong (red)


# -- geometry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchGeo:
    """Georeferencing of one patch raster: north-up `transform`, `crs`, `(height, width)`."""

    transform: Affine
    crs: CRS
    height: int
    width: int
    path: str = ""


def read_patch_geo(path: str | Path) -> PatchGeo:
    """Transform, CRS and size of a patch GeoTIFF (its AERIAL_RGBI or label file)."""
    try:
        with rasterio.open(path) as src:
            tr, crs, h, w = src.transform, src.crs, src.height, src.width
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"cannot open raster: {err}", path=path) from None
    if crs is None:
        raise DataError("raster has no CRS", path=path, expected="EPSG:2154", found=None)
    if tr.b != 0 or tr.d != 0 or tr.a <= 0 or tr.e >= 0:
        raise DataError("geotransform is not north-up", path=path, found=tuple(tr)[:6])
    return PatchGeo(tr, crs, h, w, str(path))


@dataclass(frozen=True)
class ZoneGrid:
    """The zone raster grid: union of the patch footprints at the patches' pixel size.
    `offsets[pid] = (row, col)` of the patch's upper-left pixel in the zone grid."""

    crs: CRS
    transform: Affine
    height: int
    width: int
    offsets: dict[str, tuple[int, int]]
    shapes: dict[str, tuple[int, int]]

    def window(self, pid: str) -> tuple[slice, slice]:
        (r, c), (h, w) = self.offsets[pid], self.shapes[pid]
        return slice(r, r + h), slice(c, c + w)

    def subgrid(self, pids: Sequence[str]) -> tuple[ZoneGrid, tuple[int, int]]:
        """The grid of `pids` alone (their bounding box) and its (row, col) in this grid."""
        r0 = min(self.offsets[p][0] for p in pids)
        c0 = min(self.offsets[p][1] for p in pids)
        h = max(self.offsets[p][0] + self.shapes[p][0] for p in pids) - r0
        w = max(self.offsets[p][1] + self.shapes[p][1] for p in pids) - c0
        offsets = {p: (self.offsets[p][0] - r0, self.offsets[p][1] - c0) for p in pids}
        sub = ZoneGrid(self.crs, self.transform @ Affine.translation(c0, r0), h, w, offsets,
                       {p: self.shapes[p] for p in pids})  # fmt: skip
        return sub, (r0, c0)


def patch_groups(grid: ZoneGrid) -> list[list[str]]:
    """Connected groups of a zone's patches: footprints that overlap or touch (corners too) are
    in one group. Groups in order of their first patch in `grid.offsets`, patches in that order.
    """
    pids = list(grid.offsets)
    parent = list(range(len(pids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    boxes = [(*grid.offsets[p], *grid.shapes[p]) for p in pids]  # (row, col, h, w)
    order = sorted(range(len(pids)), key=lambda i: boxes[i][0])
    for a_pos, i in enumerate(order):  # sweep by row: only boxes starting above i's bottom
        ri, ci, hi, wi = boxes[i]
        for j in order[a_pos + 1 :]:
            rj, cj, _, wj = boxes[j]
            if rj > ri + hi:
                break
            if cj <= ci + wi and ci <= cj + wj:
                parent[root(j)] = root(i)
    groups: dict[int, list[str]] = {}
    for i, p in enumerate(pids):
        groups.setdefault(root(i), []).append(p)
    return list(groups.values())


def zone_grid(geos: Mapping[str, PatchGeo], tol_px: float = 1e-3) -> ZoneGrid:
    """Zone grid from patch geometries; patches must share CRS and pixel size and sit on one
    pixel lattice (offsets within `tol_px` of whole pixels), otherwise DataError naming the odd
    patch out (against the CRS and pixel size most patches share)."""
    if not geos:
        raise DataError("no patches to mosaic", expected=">= 1 patch", found=0)
    kinds = [(g.crs.to_string(), round(g.transform.a, 9), round(g.transform.e, 9))
             for g in geos.values()]  # fmt: skip
    common = max(set(kinds), key=kinds.count)
    first = next(g for g, k in zip(geos.values(), kinds, strict=True) if k == common)
    xres, yres = first.transform.a, -first.transform.e
    for pid, g in geos.items():
        if g.crs != first.crs:
            raise DataError(
                f"patch {pid}: CRS differs", path=g.path, expected=first.crs, found=g.crs
            )
        if not (
            np.isclose(g.transform.a, xres, rtol=1e-9)
            and np.isclose(-g.transform.e, yres, rtol=1e-9)
        ):
            raise DataError(
                f"patch {pid}: pixel size differs",
                path=g.path,
                expected=(xres, yres),
                found=(g.transform.a, -g.transform.e),
            )
    x0 = min(g.transform.c for g in geos.values())
    y0 = max(g.transform.f for g in geos.values())
    offsets, shapes = {}, {}
    for pid, g in geos.items():
        col, row = (g.transform.c - x0) / xres, (y0 - g.transform.f) / yres
        if abs(col - round(col)) > tol_px or abs(row - round(row)) > tol_px:
            raise DataError(
                f"patch {pid} is not on the zone's pixel grid",
                path=g.path,
                expected="whole-pixel offsets",
                found=(row, col),
            )
        offsets[pid], shapes[pid] = (round(row), round(col)), (g.height, g.width)
    height = max(offsets[p][0] + shapes[p][0] for p in geos)
    width = max(offsets[p][1] + shapes[p][1] for p in geos)
    transform = Affine(xres, 0.0, x0, 0.0, -yres, y0)
    return ZoneGrid(first.crs, transform, height, width, offsets, shapes)


def blend_weights(h: int, w: int, kind: str = "average", floor: float = 1e-3) -> np.ndarray:
    """Per-pixel blending weight of one patch, (H, W) float32 in (0, 1]. `smooth` is an outer
    product of raised cosines (max at the centre, `floor` at the border, never 0)."""
    if kind == "average":
        return np.ones((h, w), np.float32)
    if kind != "smooth":
        raise DataError("blend", expected="'average' or 'smooth'", found=kind)

    def ramp(n: int) -> np.ndarray:
        return np.maximum(0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(n) + 0.5) / n), floor)

    return np.outer(ramp(h), ramp(w)).astype(np.float32)


# -- accumulation ---------------------------------------------------------------------------------
class ZoneMosaic:
    """Weighted sum of patch probabilities on a ZoneGrid (one connected group of patches, see
    `patch_groups`). Big grids (> `max_bytes`) accumulate in a memory-mapped file under
    `workdir`."""

    def __init__(
        self,
        grid: ZoneGrid,
        n_classes: int,
        blend: str = "average",
        workdir: str | Path | None = None,
        max_bytes: int = 2**29,
    ) -> None:
        self.grid, self.n_classes, self.blend = grid, n_classes, blend
        shape = (n_classes, grid.height, grid.width)
        if 4 * np.prod(shape) > max_bytes and workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            self._file = Path(workdir) / f".mosaic-{os.getpid()}-{id(self)}.npy"
            self.prob_sum = np.lib.format.open_memmap(self._file, "w+", np.float32, shape)
        else:
            self._file, self.prob_sum = None, np.zeros(shape, np.float32)
        self.weight_sum = np.zeros((grid.height, grid.width), np.float32)
        self.seen: set[str] = set()

    def add(self, pid: str, probs: np.ndarray) -> None:
        """Add one patch's probabilities (K, H, W)."""
        if pid not in self.grid.offsets:
            raise DataError(
                f"prediction for patch {pid}, which is not in this zone",
                expected=sorted(self.grid.offsets)[:3],
                found=pid,
            )
        if probs.shape != (self.n_classes, *self.grid.shapes[pid]):
            raise DataError(
                f"prediction shape of patch {pid}",
                expected=(self.n_classes, *self.grid.shapes[pid]),
                found=probs.shape,
            )
        ys, xs = self.grid.window(pid)
        w = blend_weights(*self.grid.shapes[pid], kind=self.blend)
        self.prob_sum[:, ys, xs] += probs * w
        self.weight_sum[ys, xs] += w
        self.seen.add(pid)

    def classes(self, rows: int = 1024) -> np.ndarray:
        """(H, W) uint8 argmax class ids, NODATA where no patch was predicted."""
        out = np.full(self.weight_sum.shape, NODATA, np.uint8)
        for r in range(0, out.shape[0], rows):
            out[r : r + rows] = self.prob_sum[:, r : r + rows].argmax(0)
        out[self.weight_sum <= 0] = NODATA
        return out

    def probabilities_uint8(self, rows: int = 1024) -> np.ndarray:
        """(K, H, W) uint8 round(250·p), NODATA where no patch was predicted."""
        out = np.full(self.prob_sum.shape, NODATA, np.uint8)
        for r in range(0, out.shape[1], rows):
            wsum = self.weight_sum[r : r + rows]
            p = self.prob_sum[:, r : r + rows] / np.where(wsum > 0, wsum, 1.0)
            q = np.rint(np.clip(p, 0, 1) * PROB_SCALE).astype(np.uint8)
            out[:, r : r + rows] = np.where(wsum > 0, q, NODATA)
        return out

    def close(self) -> None:
        if self._file is not None:
            del self.prob_sum
            self._file.unlink(missing_ok=True)
            self._file = None


# -- labels, errors, metrics ----------------------------------------------------------------------
def read_label(
    path: str | Path, nomenclature: str = "cosia", catalog: Catalog | None = None
) -> np.ndarray:
    """(H, W) uint8 class ids of a label patch (band 1, or the LPIS level's band); values outside
    the nomenclature are a DataError."""
    nom = (catalog or load_catalog()).nomenclature(nomenclature)
    band = int(nomenclature[-1]) if nomenclature.startswith("lpis_l") else 1
    try:
        with rasterio.open(path) as src:
            arr = src.read(band)
    except (rasterio.errors.RasterioIOError, IndexError) as err:
        raise DataError(f"cannot read {nomenclature} label band {band}: {err}", path=path) from None
    if arr.size and arr.max() >= nom.n_classes:
        bad = np.unique(arr[arr >= nom.n_classes])[:5].tolist()
        raise DataError(
            f"{nomenclature} label values out of range",
            path=path,
            expected=f"0..{nom.n_classes - 1}",
            found=bad,
        )
    return arr.astype(np.uint8)


def error_map(pred: np.ndarray, truth: np.ndarray, ignored: Sequence[int] = ()) -> np.ndarray:
    """uint8: 0 correct, 1 wrong, NODATA where either side is nodata or truth is ignored."""
    out = (pred != truth).astype(np.uint8)
    out[(pred == NODATA) | (truth == NODATA) | np.isin(truth, list(ignored))] = NODATA
    return out


def zone_confusion(pred: np.ndarray, truth: np.ndarray, nom: Any) -> np.ndarray:
    """(n, n) int64 confusion counts (rows: truth) over pixels whose truth is an evaluated class
    and that were predicted; add them up over the groups of a zone."""
    ok = (pred != NODATA) & np.isin(truth, nom.evaluated_ids)
    n = nom.n_classes
    t, p = truth[ok].astype(np.int64), pred[ok].astype(np.int64)
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def metrics_of_confusion(cm: np.ndarray, nom: Any) -> dict[str, Any]:
    """IGN/MAESTRO metrics (`flairlab.training.metrics`) of `zone_confusion` counts;
    predicted-but-ignored classes still count as errors."""
    from flairlab.training.metrics import metrics_from_confusion

    m = metrics_from_confusion(cm, nom.names)
    return {
        "n_evaluated_px": int(cm.sum()),
        "oa": m["oa"],
        "miou": m["miou"],
        "iou": {k: v["iou"] for k, v in m["per_class"].items() if v["support"] > 0},
    }


def zone_metrics(pred: np.ndarray, truth: np.ndarray, nom: Any) -> dict[str, Any]:
    """Metrics over pixels whose truth is an evaluated class (see `metrics_of_confusion`)."""
    return metrics_of_confusion(zone_confusion(pred, truth, nom), nom)


# -- writing --------------------------------------------------------------------------------------
class SparseRaster:
    """A raster of a whole zone grid written window by window, then published as a COG.

    Pixels go to a tiled GeoTIFF (`sparse_ok`: tiles never written are not stored and read as
    nodata), so memory and disk follow the windows written, not the grid's size; `finish` turns
    it into a Cloud-Optimized GeoTIFF (GDAL COG driver: 256 px tiles, deflate, internal
    overviews built with `resampling`) under a temporary name, renamed when complete, so a
    reader never sees half a file. `abort` removes everything."""

    def __init__(
        self, path: str | Path, *, count: int, dtype: str, width: int, height: int,
        transform: Affine, crs: CRS, nodata: int | float | None = NODATA,
        colormap: Mapping[int, tuple] | None = None,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.parts.tif")
        self._cog = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp.tif")
        self.nodata = nodata
        self._ds = rasterio.open(
            self._tmp, "w", driver="GTiff", width=width, height=height, count=count,
            dtype=dtype, crs=crs, transform=transform, nodata=nodata, tiled=True,
            blockxsize=256, blockysize=256, sparse_ok=True, compress="deflate",
            interleave="pixel" if count > 1 else "band",
        )  # fmt: skip
        if colormap is not None:  # before any pixel: GDAL fixes the photometric tag then
            self._ds.write_colormap(1, {int(k): (*v[:3], 255) for k, v in colormap.items()})

    def write(self, data: np.ndarray, row: int = 0, col: int = 0) -> None:
        """Write (H, W) or (C, H, W) `data` with its upper-left pixel at (row, col)."""
        arr = data[None] if data.ndim == 2 else data
        window = ((row, row + arr.shape[1]), (col, col + arr.shape[2]))
        self._ds.write(arr, window=window)

    def finish(
        self,
        *,
        descriptions: Sequence[str] | None = None,
        resampling: str = "nearest",
        tags: Mapping[str, Any] | None = None,
    ) -> Path:
        from rasterio.shutil import copy as copy_raster

        try:
            for i, d in enumerate(descriptions or [], start=1):
                self._ds.set_band_description(i, d)
            if tags:
                self._ds.update_tags(**{k: str(v) for k, v in tags.items()})
            self._ds.close()
            with rasterio.Env(GDAL_CACHEMAX=128):  # MB: the copy streams tile by tile
                copy_raster(self._tmp, self._cog, driver="COG", blocksize=256,
                            compress="deflate", overview_resampling=resampling,
                            sparse_ok=True)  # fmt: skip
            os.replace(self._cog, self.path)
        except BaseException:
            self.abort()
            raise
        self._tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        if not self._ds.closed:
            self._ds.close()
        self._tmp.unlink(missing_ok=True)
        self._cog.unlink(missing_ok=True)


def write_cog(
    path: str | Path,
    data: np.ndarray,
    *,
    transform: Affine,
    crs: CRS,
    nodata: int | float | None = NODATA,
    colormap: Mapping[int, tuple] | None = None,
    descriptions: Sequence[str] | None = None,
    resampling: str = "nearest",
    tags: Mapping[str, Any] | None = None,
) -> Path:
    """Write (H, W) or (C, H, W) as a Cloud-Optimized GeoTIFF (see `SparseRaster`)."""
    arr = data[None] if data.ndim == 2 else data
    c, h, w = arr.shape
    out = SparseRaster(path, count=c, dtype=arr.dtype.name, width=w, height=h,
                       transform=transform, crs=crs, nodata=nodata, colormap=colormap)  # fmt: skip
    try:
        out.write(arr)
    except BaseException:
        out.abort()
        raise
    return out.finish(descriptions=descriptions, resampling=resampling, tags=tags)
