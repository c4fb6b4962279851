"""Read FLAIR-HUB patches: rasters to numpy / xarray, dates from `GLOBAL_ALL_MTD` (spec §4, §5).

Time series are stored date-major: 1-based band `t*C + c + 1` holds channel c of date t, so a
`(T*C, H, W)` file reshapes to `(T, C, H, W)` by consecutive chunks of C (spec §4.6).

Validation shared by every reading path (`open_patch`, `read_raster`, the torch dataset, any
other backend): `header_problems` (band count, size, CRS, footprint, rotation), `dtype_problem`
(a dtype other than the catalog's is accepted only when its values mean the same thing, i.e. fit
the catalog dtype exactly — uint16 holding 0-255 for uint8 aerial, not 16-bit radiometry), and
`check_footprints` (every file of a patch covers the same ground). `validate_raster` runs the
first two and returns a `RasterInfo` (bounds, count of NaN/inf values) for the third.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from flairlab.data.catalog import IGNORE_INDEX, Catalog, Modality, load_catalog
from flairlab.data.errors import DataError
from flairlab.data.index import modality_path, parse_patch_id


def _parse_yyyymmdd(value: str, path: Path, patch_id: str) -> np.datetime64:
    s = str(value).strip()
    if len(s) != 8 or not s.isdigit():
        raise DataError(f"date of {patch_id} is not YYYYMMDD", path=path, found=value)
    if s[6:] == "00":  # unknown day (historical photos): lenient, as MAESTRO does (spec §5.2)
        s = s[:6] + "01"
    try:
        return np.datetime64(f"{s[:4]}-{s[4:6]}-{s[6:]}", "D")
    except ValueError:
        raise DataError(
            f"date of {patch_id} is not a calendar date", path=path, found=value
        ) from None


class DateTable(Mapping):
    """patch_id -> datetime64[D] array of one date file; JSON is parsed lazily, once per patch
    (the arrays are cached read-only)."""

    def __init__(self, path: Path, raw: dict[str, str], fmt: str) -> None:
        self.path, self._raw, self.format = path, raw, fmt
        self._parsed: dict[str, np.ndarray] = {}

    def __getitem__(self, patch_id: str) -> np.ndarray:
        dates = self._parsed.get(patch_id)
        if dates is None:
            dates = self._parsed[patch_id] = self._parse(patch_id)
            dates.flags.writeable = False
        return dates

    def _parse(self, patch_id: str) -> np.ndarray:
        try:
            value = self._raw[patch_id]
        except KeyError:
            raise DataError(f"no dates for patch {patch_id}", path=self.path) from None
        if self.format == "yyyymmdd":
            return np.array([_parse_yyyymmdd(value, self.path, patch_id)])
        try:
            obj = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            raise DataError(
                f"acquisition_dates of {patch_id} is not JSON",
                path=self.path,
                found=str(value)[:60],
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"acquisition_dates of {patch_id} must be a JSON object",
                path=self.path,
                found=type(obj).__name__,
            )
        keys = [str(k) for k in range(1, len(obj) + 1)]
        if sorted(obj, key=lambda k: int(k) if str(k).isdigit() else -1) != keys:
            raise DataError(
                f"acquisition_dates keys of {patch_id}",
                path=self.path,
                expected=f'"1".."{len(obj)}"',
                found=list(obj)[:5],
            )
        return np.array([_parse_yyyymmdd(obj[k], self.path, patch_id) for k in keys])

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@lru_cache(maxsize=32)
def _load_date_table(path: Path, column: str, fmt: str, mtime: float) -> DateTable:
    import pyogrio

    if not path.is_file():
        raise DataError("date GeoPackage not found", path=path)
    try:
        df = pyogrio.read_dataframe(path, columns=["patch_id", column], read_geometry=False)
    except Exception as err:  # pyogrio raises its own error types for bad files/columns
        raise DataError(f"cannot read columns patch_id, {column}: {err}", path=path) from None
    if df["patch_id"].duplicated().any():
        raise DataError(
            f"patch {df['patch_id'][df['patch_id'].duplicated()].iloc[0]} appears more than once",
            path=path,
        )
    return DateTable(path, dict(zip(df["patch_id"], df[column], strict=True)), fmt)


def read_dates(root: str | Path, modality: str, catalog: Catalog | None = None) -> DateTable:
    """Dates of every patch for `modality` (a Mapping patch_id -> datetime64[D] array)."""
    cat = catalog or load_catalog()
    mod = cat.modality(modality)
    if mod.dates is None:
        raise DataError(f"modality {mod.name} has no dates in the catalog")
    path = Path(os.path.abspath(Path(root) / cat.metadata_dir / mod.dates.file))
    try:  # one stat per call, so that a rewritten file is read again
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        mtime = 0.0
    return _load_date_table(path, mod.dates.column, mod.dates.format, mtime)


FOOTPRINT_TOL_M = 0.01  # the files of one patch must share bounds within 1 cm (spec §3)
FREE_SIZE = {"AERIAL-RLT_PAN"}  # size in pixels inferred by the spec: any square covering 102.4 m


@dataclass(frozen=True)
class RasterInfo:
    """What validation learnt about one file: `bounds` (left, bottom, right, top) in metres of
    its CRS, and `nonfinite`, its number of NaN / ±inf values."""

    path: str
    bounds: tuple[float, float, float, float]
    nonfinite: int = 0


def header_problems(
    mod: Modality, cat: Catalog, *, count: int, height: int, width: int, crs: object,
    transform: object,
) -> list[tuple[str, str]]:  # fmt: skip
    """`(kind, message)` for each way a file's header breaks the catalog: kinds `bands`, `size`,
    `crs`, `footprint` (the file does not cover a `patch_size_m` square, or is rotated)."""
    out = []
    if mod.time_series:
        if count == 0 or count % mod.n_bands:
            out.append(("bands", f"band count {count} is not a multiple of {mod.n_bands}"))
    elif count != mod.n_bands:
        out.append(("bands", f"expected {mod.n_bands} bands, found {count}"))
    if height != width or (mod.name not in FREE_SIZE and height != mod.size_px):
        out.append(("size", f"expected {mod.size_px}x{mod.size_px} px, found {height}x{width}"))
    crs_name = crs.to_string() if crs else None
    if crs_name != cat.crs:
        out.append(("crs", f"expected {cat.crs}, found {crs_name}"))
    tr = transform
    if tr.b != 0 or tr.d != 0:
        out.append(("footprint", f"rotated geotransform {tuple(tr)[:6]} is not supported"))
    else:
        w_m, h_m = abs(tr.a) * width, abs(tr.e) * height
        if max(abs(w_m - cat.patch_size_m), abs(h_m - cat.patch_size_m)) > FOOTPRINT_TOL_M:
            out.append(("footprint", f"covers {w_m:.3f} x {h_m:.3f} m, expected "
                        f"{cat.patch_size_m} x {cat.patch_size_m} m"))  # fmt: skip
    return out


def dtype_problem(arr: np.ndarray, mod: Modality) -> str | None:
    """Why `arr` (of a dtype other than the catalog's) would change meaning, or None.

    Float catalog dtypes accept any numeric data. Integer ones accept another dtype only when
    every value is an integer within the catalog dtype's range (so the catalog's scaling still
    holds); a uint16 aerial with values above 255, or reflectances in [0, 1], are refused."""
    want = np.dtype(mod.dtype)
    if not np.issubdtype(arr.dtype, np.number):
        return f"expected numeric {want.name} data, found {arr.dtype}"
    if arr.dtype == want or np.issubdtype(want, np.floating) or arr.size == 0:
        return None
    floating = np.issubdtype(arr.dtype, np.floating)
    if floating and not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        return (f"expected {want.name}, found {arr.dtype} with non-integer or non-finite "
                f"values (range {lo:g}..{hi:g}); the catalog scaling assumes {want.name}")
    info, lo, hi = np.iinfo(want), arr.min(), arr.max()
    if lo < info.min or hi > info.max:
        return (f"expected {want.name}, found {arr.dtype} with values {lo:g}..{hi:g} outside "
                f"{info.min}..{info.max}; the catalog scaling assumes {want.name} values")
    return None


def count_nonfinite(arr: np.ndarray) -> int:
    """Number of NaN / ±inf values (0 for integer data)."""
    if not np.issubdtype(arr.dtype, np.floating):
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def validate_raster(
    arr: np.ndarray, mod: Modality, path: str | Path, *, transform: object, crs: object,
    catalog: Catalog | None = None,
) -> RasterInfo:  # fmt: skip
    """Refuse (DataError naming `path`) a raster whose bands, size, CRS, footprint or dtype do
    not fit `mod`; return its bounds and number of NaN / inf values."""
    cat = catalog or load_catalog()
    h, w = arr.shape[-2:]
    found = header_problems(mod, cat, count=arr.shape[0], height=h, width=w, crs=crs,
                            transform=transform)  # fmt: skip
    bad_dtype = dtype_problem(arr, mod)
    if bad_dtype:
        found.append(("dtype", bad_dtype))
    if found:
        raise DataError(f"{mod.name} {found[0][0]}: {found[0][1]}"
                        + "".join(f"; {k}: {m}" for k, m in found[1:]), path=path)  # fmt: skip
    return RasterInfo(str(path), _bounds(transform, h, w), count_nonfinite(arr))


def _bounds(tr: object, h: int, w: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a north-up raster."""
    return (tr.c, tr.f + tr.e * h, tr.c + tr.a * w, tr.f)


def check_footprints(
    patch_id: str, infos: Mapping[str, RasterInfo], only: Collection[str] | None = None
) -> None:
    """Every file of one patch must cover the same ground (within FOOTPRINT_TOL_M); otherwise
    DataError naming the odd file out (against the footprint most files share). With `only`,
    the other files just vote for the reference footprint (witnesses) and are not checked."""
    if len(infos) < 2:
        return
    items = list(infos.items())

    def agree(a: RasterInfo, b: RasterInfo) -> bool:
        return max(abs(u - v) for u, v in zip(a.bounds, b.bounds, strict=True)) <= FOOTPRINT_TOL_M

    support = [sum(agree(i, j) for _, j in items) for _, i in items]
    ref_name, ref = items[int(np.argmax(support))]
    for name, info in items:
        if (only is None or name in only) and not agree(info, ref):
            raise DataError(
                f"{name} of patch {patch_id} covers other ground than its {ref_name} "
                "(shifted geotransform, or another patch's file?)",
                path=info.path,
                expected=f"bounds {tuple(round(v, 2) for v in ref.bounds)} (as {ref.path})",
                found=tuple(round(v, 2) for v in info.bounds),
            )


def validate_header(
    path: str | Path, modality: str, catalog: Catalog | None = None
) -> RasterInfo:
    """`header_problems` of one file without reading its pixels: DataError naming the file, or
    its `RasterInfo` (nonfinite not counted) for `check_footprints`."""
    import rasterio  # the GDAL stack loads only when a raster is read (models/training need none)

    cat = catalog or load_catalog()
    mod = cat.modality(modality)
    try:
        with rasterio.open(path) as src:
            tr, crs, count, h, w = src.transform, src.crs, src.count, src.height, src.width
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"cannot read {mod.name} raster: {err}", path=path) from None
    found = header_problems(mod, cat, count=count, height=h, width=w, crs=crs, transform=tr)
    if found:
        raise DataError(f"{mod.name} {found[0][0]}: {found[0][1]}", path=path)
    return RasterInfo(str(path), _bounds(tr, h, w))


def read_checked(
    path: str | Path, modality: str, catalog: Catalog | None = None
) -> tuple[np.ndarray, RasterInfo]:
    """One patch file as numpy (`(C, H, W)`, or `(T, C, H, W)` for time series), validated
    against the catalog (`validate_raster`), with its `RasterInfo`."""
    import rasterio  # the GDAL stack loads only when a raster is read (models/training need none)

    cat = catalog or load_catalog()
    mod = cat.modality(modality)
    try:
        with rasterio.open(path) as src:
            arr = src.read()
            tr, crs = src.transform, src.crs
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"cannot read {mod.name} raster: {err}", path=path) from None
    info = validate_raster(arr, mod, path, transform=tr, crs=crs, catalog=cat)
    if mod.time_series:
        arr = arr.reshape(arr.shape[0] // mod.n_bands, mod.n_bands, *arr.shape[1:])
    return arr, info


def read_raster(path: str | Path, modality: str, catalog: Catalog | None = None) -> np.ndarray:
    """Read one patch file as numpy: `(C, H, W)`, or `(T, C, H, W)` for time series.

    Bands, size, CRS and footprint are validated against the catalog; another numeric dtype is
    accepted when its values fit the catalog's dtype (`dtype_problem`, spec B17)."""
    return read_checked(path, modality, catalog)[0]


def _resolve(
    root_or_index: str | Path | pd.DataFrame, patch_id: str, name: str, cat: Catalog
) -> tuple[Path, Path]:
    """(file path, dataset root) from a root folder or an index DataFrame."""
    if isinstance(root_or_index, pd.DataFrame):
        idx = root_or_index
        try:
            cell = idx.at[patch_id, name]
        except KeyError:
            raise DataError(f"patch {patch_id} is not in the index") from None
        if pd.isna(cell):
            raise DataError(f"patch {patch_id} has no {name} file in the index")
        root = idx.attrs.get("root")
        return Path(cell), Path(root) if root is not None else Path(cell).parents[2]
    root = Path(root_or_index)
    path = modality_path(root, patch_id, name, cat)
    if not path.is_file():
        raise DataError(f"{name} file of patch {patch_id} not found", path=path)
    return path, root


def open_patch(
    root_or_index: str | Path | pd.DataFrame,
    patch_id: str,
    modality: str,
    catalog: Catalog | None = None,
) -> xr.DataArray:
    """One patch and modality as a labelled `xarray.DataArray`.

    Single-date: dims `(band, y, x)`; time series: `(time, band, y, x)` with `time` from the
    GLOBAL_ALL_MTD date GeoPackages (the S2 mask uses the S2 dates). `x`/`y` are pixel centres
    in the file's CRS; `band` holds the catalog band names.
    """
    import rasterio

    cat = catalog or load_catalog()
    mod = cat.modality(modality)
    parse_patch_id(patch_id)
    path, root = _resolve(root_or_index, patch_id, mod.name, cat)
    try:
        with rasterio.open(str(path)) as src:  # a str opens ~5 % faster than a Path
            arr = src.read()
            tr, crs = src.transform, src.crs
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"cannot read {mod.name} raster: {err}", path=path) from None
    validate_raster(arr, mod, path, transform=tr, crs=crs, catalog=cat)
    h, w = arr.shape[-2:]
    days: tuple[int, ...] = ()
    if mod.time_series:
        arr = arr.reshape(arr.shape[0] // mod.n_bands, mod.n_bands, h, w)
        dates = read_dates(root, mod.name, cat)[patch_id]
        if len(dates) != arr.shape[0]:
            raise DataError(
                f"{mod.name}: number of dates of {patch_id} differs from T",
                path=path,
                expected=f"T={arr.shape[0]} (bands/{mod.n_bands})",
                found=f"{len(dates)} dates in {mod.dates.file}",
            )
        days = tuple(dates.astype("datetime64[D]").astype(np.int64).tolist())
    template = _patch_template(mod.name, tuple(mod.band_names), tuple(tr)[:6], arr.shape, days)
    da = template.copy(deep=False, data=arr)
    da.attrs.update(
        crs=_crs_string(crs.to_wkt()) if crs else None,
        resolution=(tr.a, -tr.e),
        modality=mod.name,
        patch_id=patch_id,
        path=str(path),
        transform=tuple(tr)[:6],
    )
    return da


@lru_cache(maxsize=64)
def _crs_string(wkt: str) -> str:
    """`CRS.to_string()` ("EPSG:2154") by WKT: the PROJ identification costs ~2x the WKT."""
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt).to_string()


@lru_cache(maxsize=4096)
def _patch_template(
    name: str,
    bands: tuple[str, ...],
    transform: tuple[float, ...],
    shape: tuple[int, ...],
    days: tuple[int, ...],
) -> xr.DataArray:
    """An empty DataArray with one patch file's coordinates (pixel centres, band names, dates),
    built once per file: a shallow copy with the data costs ~1/10 of building the indexes."""
    a, _, c, _, e, f = transform
    h, w = shape[-2:]
    coords: dict[str, object] = {
        "band": list(bands),
        "y": f + (np.arange(h) + 0.5) * e,
        "x": c + (np.arange(w) + 0.5) * a,
    }
    dims: tuple[str, ...] = ("band", "y", "x")
    if len(shape) == 4:
        coords["time"] = np.array(days, dtype="datetime64[D]").astype("datetime64[ns]")
        dims = ("time", *dims)
    empty = np.broadcast_to(np.zeros((), np.uint8), shape)
    return xr.DataArray(empty, dims=dims, coords=coords, name=name)


def cosia_target(
    labels: np.ndarray | xr.DataArray,
    catalog: Catalog | None = None,
    path: str | Path | None = None,
) -> np.ndarray:
    """COSIA labels for training/metrics: classes 15-18 -> IGNORE_INDEX; values > 18 raise.

    Official metrics ignore 15-18 (spec §6.1); an unknown value is an error, never class 0.
    """
    nom = (catalog or load_catalog()).nomenclature("cosia")
    return _label_target(labels, nom.n_classes, nom.ignored_ids, "COSIA", path)


def lpis_target(
    labels: np.ndarray | xr.DataArray,
    level: int = 1,
    catalog: Catalog | None = None,
    path: str | Path | None = None,
) -> np.ndarray:
    """One LPIS level (1-3) as int64 class ids; values beyond the level's classes raise."""
    if path is None and isinstance(labels, xr.DataArray):
        path = labels.attrs.get("path")  # kept before the band is taken as a plain array
    if level not in (1, 2, 3):
        raise DataError("LPIS level", path=path, expected="1, 2 or 3", found=level)
    arr = np.asarray(labels)
    if arr.ndim == 3:
        arr = arr[level - 1]
    nom = (catalog or load_catalog()).nomenclature(f"lpis_l{level}")
    return _label_target(arr, nom.n_classes, [], f"LPIS level {level}", path)


def _label_target(
    labels: np.ndarray | xr.DataArray,
    n_classes: int,
    ignored: list[int],
    what: str,
    path: str | Path | None,
) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if path is None and isinstance(labels, xr.DataArray):
        path = labels.attrs.get("path")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{what} labels must be integers", path=path, found=arr.dtype)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        bad = np.unique(arr[(arr < 0) | (arr >= n_classes)])[:5].tolist()
        raise DataError(
            f"{what} label values out of range",
            path=path,
            expected=f"0..{n_classes - 1}",
            found=bad,
        )
    out = arr.astype(np.int64)
    if ignored:
        out[np.isin(out, ignored)] = IGNORE_INDEX
    return out
