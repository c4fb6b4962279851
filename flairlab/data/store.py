"""Packed training store: a FLAIR-HUB dataset (or a split) in one Zarr v3 group, read fast.

`flairlab pack SOURCE OUT` (`flairlab.data.pack`) writes it; `FlairHubDataset(OUT, split, ...)`
reads it exactly as it reads the GeoTIFF folder (same arguments, same tensors). OUT is a folder or
any fsspec URL (`memory://…`, `s3://…`), so a cluster can read one shared store. Layout, format 1:

    OUT/zarr.json                root group; attrs["flairlab_store"] = the manifest (below)
    OUT/<MODALITY>/              one array per packed modality (dataset name, e.g. AERIAL_RGBI), the
                                 file's native dtype and band order, one chunk = one patch:
                                 (N, C, H, W); time series (N, T_max, C, H, W), zero-padded past T
    OUT/dates/<MODALITY>/        int32 (N, T_max) acquisition days since 1970-01-01 (-2**31 = none)
    OUT/meta/<field>/            per (patch, modality), written when the pack completes: present,
                                 size and mtime_ns of the source file, transform (the file's
                                 affine a, b, c, d, e, f as rasterio's, before any resampling),
                                 crs (index into manifest["crs"]), nonfinite (NaN/inf count),
                                 shape (bands, H, W) of the file
    OUT/_patches/<patch_id>.json marker of one packed patch, written after its chunks (resume)

Manifest: format, format_version, created, completed, complete (true only once every patch is
packed: an interrupted pack never looks complete), source_root, split, patch_ids, splits,
modalities, arrays {name: {shape, dtype, time_series, resample}}, codec, catalog (fingerprints),
metadata_files {relative path: [size, mtime_ns]}, checks (what the pack validated), crs.

Every chunk carries a CRC-32C: a truncated or corrupted chunk is an error naming the patch and the
modality, and so is a missing one (zarr would silently return zeros). A store is refused when it
is incomplete, when the catalog's description of a packed modality changed, or when a checked
source file or date/split file changed since packing (`verify`, see `PatchStore.verify`).
Reading needs numpy, pandas and zarr only (no GDAL stack).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError

FORMAT = "flairlab-store"
FORMAT_VERSION = 1
MANIFEST = "flairlab_store"  # root-group attribute holding the manifest
MARKERS = "_patches"  # one JSON marker per packed patch
DATE_FILL = int(np.iinfo(np.int32).min)  # padding of the date arrays
META_FIELDS = ("present", "size", "mtime_ns", "transform", "crs", "nonfinite", "shape")
VERIFY_AUTO_FILES = 20_000  # verify="auto" stats at most this many source files (evenly spread)
SPLIT_ALIASES = {"val": "valid", "validation": "valid"}
# catalog fields that define what a store holds (scaling, statistics, colours are read-time only)
_FINGERPRINT_FIELDS = (
    "kind", "folder_domain", "dtype", "time_series", "n_bands", "bands", "mask", "dates",
)  # fmt: skip


class StaleStoreError(DataError):
    """The store no longer matches its source or the catalog: pack it again."""


# -- locations ----------------------------------------------------------------------------------
def is_url(location: str | Path) -> bool:
    """True for an fsspec URL with a scheme (`memory://x`, `s3://b/x`); local paths are False."""
    return "://" in str(location) and not str(location).startswith("file://")


def normalise_location(location: str | Path) -> str:
    """A URL as is; a local path (or `file://` URL) as an absolute path string."""
    s = str(location)
    if is_url(s):
        return s.rstrip("/")
    return str(Path(s.removeprefix("file://")).expanduser().resolve())


def filesystem(location: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a store location."""
    import fsspec

    return fsspec.core.url_to_fs(location)


def looks_like_store(location: str | Path) -> bool:
    """True when `location` holds a Zarr group (`zarr.json`); cheap, reads no array."""
    loc = normalise_location(location)
    if not is_url(loc):
        return (Path(loc) / "zarr.json").is_file()
    fs, path = filesystem(loc)
    return bool(fs.exists(f"{path}/zarr.json"))


def zarr_store(location: str, read_only: bool = True, strict: bool = False) -> Any:
    """A zarr `Store` for a location: LocalStore for paths, FsspecStore for URLs. `strict`: a
    missing chunk raises instead of reading as the fill value."""
    from zarr.storage import FsspecStore, LocalStore

    loc = normalise_location(location)
    base = (
        FsspecStore.from_url(loc, read_only=read_only)
        if is_url(loc)
        else LocalStore(loc, read_only=read_only)
    )
    return _strict_store_class()(base) if strict else base


@cache
def _strict_store_class() -> type:
    """WrapperStore subclass (zarr imported lazily) whose `get` refuses a missing chunk."""
    from zarr.storage import WrapperStore

    class StrictChunkStore(WrapperStore):
        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            value = await self._store.get(key, prototype, byte_range)
            if value is None and "/c/" in f"/{key}":
                raise FileNotFoundError(f"chunk {key} is missing")
            return value

    return StrictChunkStore


def chunk_decoder(array: Any) -> Any:
    """Decoder `bytes -> chunk array` for the codec chains `pack` writes — bytes (little endian
    or single-byte), optional Blosc, CRC-32C — or None for any other chain (read through zarr).
    A chunk whose checksum does not match raises ValueError."""
    import google_crc32c  # zarr's own checksum dependency
    import numcodecs.blosc

    codecs = [c.to_dict() for c in array.metadata.codecs]
    chain = [c["name"] for c in codecs]
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    dtype = np.dtype(array.dtype)
    if (
        chain not in (["bytes", "blosc", "crc32c"], ["bytes", "crc32c"])
        or (endian != "little" and dtype.itemsize > 1)
        or array.metadata.chunk_key_encoding.to_dict().get("name") != "default"
    ):
        return None
    dtype, shape, blosc = dtype.newbyteorder("<"), tuple(array.chunks), chain[1] == "blosc"

    def decode(data: bytes) -> np.ndarray:
        body = np.frombuffer(data, np.uint8)[:-4]  # a view: no copy of the chunk
        if google_crc32c.value(body) != int.from_bytes(data[-4:], "little"):
            raise ValueError(f"checksum mismatch over {len(data)} bytes (truncated or corrupted)")
        raw = numcodecs.blosc.decompress(data) if blosc else body  # blosc reads its own length
        return np.frombuffer(raw, dtype).reshape(shape)

    return decode


def chunk_key(name: str, index: int, ndim: int) -> str:
    """Key of patch `index`'s chunk of array `name` (zarr v3 default keys, a chunk per patch)."""
    return "/".join([name, "c", str(index), *["0"] * (ndim - 1)])


# -- catalog fingerprint ------------------------------------------------------------------------
def catalog_fingerprint(names: list[str], catalog: Catalog | None = None) -> dict[str, str]:
    """sha256 (16 hex) of what the catalog says about each packed modality, plus `_layout` (CRS,
    patch size, metadata folder, split GeoPackage). Read-time settings do not count."""
    cat = catalog or load_catalog()

    def digest(obj: object) -> str:
        text = json.dumps(obj, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    out = {"_layout": digest([cat.crs, cat.patch_size_m, cat.metadata_dir, cat.split_gpkg])}
    for name in names:
        dump = cat.modality(name).model_dump()
        out[name] = digest({k: dump[k] for k in _FINGERPRINT_FIELDS})
    return out


# -- dates --------------------------------------------------------------------------------------
class StoreDates(Mapping):
    """patch_id -> datetime64[D] acquisitions of one modality, from the store's date array."""

    def __init__(self, days: np.ndarray, rows: dict[str, int], where: str) -> None:
        self._days, self._rows, self.path = days, rows, where

    def __getitem__(self, patch_id: str) -> np.ndarray:
        try:
            row = self._days[self._rows[patch_id]]
        except KeyError:
            raise DataError(f"no dates for patch {patch_id}", path=self.path) from None
        return row[row != DATE_FILL].astype("datetime64[D]")

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def lengths(self) -> np.ndarray:
        """(N,) number of acquisitions per patch, in store order."""
        return (self._days != DATE_FILL).sum(axis=1)


# -- the store ----------------------------------------------------------------------------------
@dataclass
class _Prefetch:
    """Arrays of one patch read together (one round trip) for the dataset's `_read` calls."""

    names: tuple[str, ...] = ()
    patch_id: str | None = None
    arrays: dict[str, np.ndarray] | None = None


class PatchStore:
    """A packed store opened for reading (see the module doc). Picklable: DataLoader workers
    reopen it lazily.

    >>> store = open_store("data/flairhub-sample.zarr")            # doctest: +SKIP
    >>> store.read("AERIAL_RGBI", store.patch_ids[0]).shape        # doctest: +SKIP
    (4, 512, 512)
    """

    def __init__(self, location: str | Path, catalog: Catalog | None = None) -> None:
        self.url = normalise_location(location)
        self.cat = catalog or load_catalog()
        self._open()
        m = self.manifest
        self.patch_ids: list[str] = list(m["patch_ids"])
        self._row = {pid: i for i, pid in enumerate(self.patch_ids)}
        self.modalities: list[str] = list(m["modalities"])
        self._dates: dict[str, StoreDates] = {}
        self._lengths: dict[str, np.ndarray] = {}
        self._meta: dict[str, np.ndarray] = {}
        self._decoders: dict[str, Any] = {}
        self._fs: tuple[Any, str] | None = None
        self.prefetch = _Prefetch()
        self.verified = "not verified"

    def _open(self) -> None:
        import zarr

        if not looks_like_store(self.url):
            raise DataError("no packed store here (no zarr.json)", path=self.url)
        self._group = zarr.open_group(store=zarr_store(self.url, strict=True), mode="r")
        m = dict(self._group.attrs).get(MANIFEST)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise DataError(
                "Zarr group is not a flairlab store", path=self.url, expected=f"attrs[{MANIFEST!r}]"
            )
        if m.get("format_version") != FORMAT_VERSION:
            raise DataError(
                "store format version", path=self.url, expected=FORMAT_VERSION,
                found=m.get("format_version"),
            )  # fmt: skip
        self.manifest: dict[str, Any] = m
        self._arrays: dict[str, Any] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_group", "_arrays", "prefetch", "_decoders", "_fs"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._group, self._arrays, self.prefetch = None, {}, _Prefetch()
        self._decoders, self._fs = {}, None

    def __repr__(self) -> str:
        done = "complete" if self.manifest.get("complete") else "INCOMPLETE"
        return f"PatchStore({self.url!r}, {len(self.patch_ids)} patches, {done})"

    def __len__(self) -> int:
        return len(self.patch_ids)

    # -- metadata ---------------------------------------------------------------------------
    def array(self, name: str) -> Any:
        """The zarr array of modality `name` (dataset name or alias)."""
        name = self.cat.modality(name).name
        if name not in self._arrays:
            if name not in self.modalities:
                raise DataError(
                    "modality not in the store", path=self.url, expected=self.modalities, found=name
                )
            if self._group is None:  # unpickled in a worker
                self._open()
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def meta(self, field: str) -> np.ndarray:
        """Per (patch, modality) metadata written when the pack completed (`META_FIELDS`)."""
        if field not in self._meta:
            self.require_complete()
            if self._group is None:
                self._open()
            self._meta[field] = self._group[f"meta/{field}"][...]
        return self._meta[field]

    def require_complete(self) -> None:
        """Refuse a store whose pack has not finished (an interrupted or running pack)."""
        if not self.manifest.get("complete"):
            done = self._count_markers()
            raise DataError(
                f"store is incomplete ({done} of {len(self.patch_ids)} patches packed): the pack "
                "was interrupted or is still running; run `flairlab pack` again to finish it",
                path=self.url,
            )

    def _count_markers(self) -> int:
        fs, path = filesystem(self.url)
        try:
            return len(fs.ls(f"{path}/{MARKERS}", detail=False))
        except FileNotFoundError:
            return 0

    def index(self, split: str | None = None) -> pd.DataFrame:
        """Patch index in the folder index's shape: modality columns hold `<store>/<MODALITY>`
        where the patch has it (NA otherwise), meta columns domain/year/roi/row/col, `split`."""
        from flairlab.data.index import _finish

        self.require_complete()
        present = self.meta("present")
        df = pd.DataFrame(index=pd.Index(self.patch_ids, name="patch_id"))
        for j, name in enumerate(self.modalities):
            df[name] = np.where(present[:, j], f"{self.url}/{name}", None)
        if self.manifest.get("splits") is not None:
            df["split"] = pd.array(self.manifest["splits"], dtype="string")
        df = _finish(df, self.cat, self.url)
        df.attrs["store"] = self.url
        if split is None:
            return df
        split = SPLIT_ALIASES.get(split, split)
        if "split" not in df.columns:
            raise DataError(
                "store has no split information", path=self.url, expected=split, found="none"
            )
        out = df[df["split"] == split]
        if out.empty:
            raise DataError(
                "split has no patches in the store", path=self.url, expected=split,
                found=sorted(df["split"].dropna().unique()),
            )  # fmt: skip
        return out

    def dates(self, name: str) -> StoreDates:
        """Mapping patch_id -> datetime64[D] dates of modality `name` (as the date GeoPackage)."""
        name = self.cat.modality(name).name
        if name not in self._dates:
            if self._group is None:
                self._open()
            key = f"dates/{name}"
            try:
                days = self._group[key][...]
            except KeyError:
                raise DataError(f"store has no dates for {name}", path=self.url) from None
            self._dates[name] = StoreDates(days, self._row, f"{self.url}/{key}")
        return self._dates[name]

    def geo(self, name: str, patch_id: str) -> tuple[tuple[float, ...], str | None]:
        """(GDAL-order affine transform, CRS string) of the patch's source file."""
        j = self.modalities.index(self.cat.modality(name).name)
        i = self._row_of(patch_id)
        code = int(self.meta("crs")[i, j])
        crs = self.manifest["crs"][code] if code >= 0 else None
        return tuple(float(v) for v in self.meta("transform")[i, j]), crs

    def packed_size(self, name: str) -> int | None:
        """Pixel size a modality was resampled to at pack time (None: native)."""
        return self.manifest["arrays"][self.cat.modality(name).name]["resample"]

    def check_sizes(self, sizes: Mapping[str, int]) -> None:
        """Refuse to serve a pack-time-resampled modality at another size (never resample twice:
        nearest-of-nearest differs from nearest)."""
        for key, size in sizes.items():
            packed = self.packed_size(key)
            if packed is not None and packed != size:
                raise DataError(
                    f"{self.cat.modality(key).name} was resampled to {packed} px when the store "
                    f"was packed; read it at {packed} px, or from the GeoTIFFs / a store packed "
                    "without resampling",
                    path=self.url, expected=f"image_size {packed}", found=size,
                )  # fmt: skip

    # -- reading ----------------------------------------------------------------------------
    def _row_of(self, patch_id: str) -> int:
        try:
            return self._row[patch_id]
        except KeyError:
            raise DataError(f"patch {patch_id} is not in the store", path=self.url) from None

    def _trim(self, name: str, i: int, arr: np.ndarray) -> np.ndarray:
        """Drop the zero padding past a time series' T acquisitions."""
        if not self.manifest["arrays"][name]["time_series"]:
            return arr
        if name not in self._lengths:
            self._lengths[name] = self.dates(name).lengths()
        return arr[: int(self._lengths[name][i])]

    def read(self, name: str, patch_id: str) -> np.ndarray:
        """One modality of one patch as packed: (C, H, W), or (T, C, H, W) for time series —
        the shape `read_raster` returns for its file (resampled if the pack said so). With
        `prefetch.names` set, the first read of a patch fetches all those arrays at once."""
        name = self.cat.modality(name).name
        pf = self.prefetch
        if name in pf.names:
            if pf.patch_id != patch_id or pf.arrays is None or name not in pf.arrays:
                pf.arrays, pf.patch_id = self.read_patch(patch_id, pf.names), patch_id
            return pf.arrays.pop(name)
        return self.read_patch(patch_id, (name,))[name]

    def read_patch(self, patch_id: str, names: tuple[str, ...] | list) -> dict[str, np.ndarray]:
        """Several modalities of one patch. The chunks are fetched as bytes (one batched request
        for a URL) and decoded here when they use a codec chain `pack` writes (CRC-32C checked,
        Blosc, little-endian bytes: ~10x less overhead than zarr's per-read event-loop round
        trips); any other chain is read through zarr."""
        i = self._row_of(patch_id)
        names = [self.cat.modality(n).name for n in names]
        keys = {n: chunk_key(n, i, self.array(n).ndim) for n in names}
        blobs = self._fetch(list(keys.values()))
        out = {}
        for name in names:
            blob = blobs[keys[name]]
            try:
                if isinstance(blob, BaseException):
                    raise blob
                decode = self._decoder(name)
                arr = decode(blob)[0] if decode is not None else np.asarray(self.array(name)[i])
            except Exception as err:  # any failure names the patch, the modality and the chunk
                what = "missing" if isinstance(err, FileNotFoundError) else "damaged"
                raise DataError(
                    f"cannot read {name} of patch {patch_id} from the store: the chunk is "
                    f"{what} ({type(err).__name__}: {err}); pack the store again",
                    path=f"{self.url}/{keys[name]}",
                ) from None
            out[name] = self._trim(name, i, arr)
        return out

    def _fetch(self, keys: list[str]) -> dict[str, bytes | BaseException]:
        """Chunk bytes by key (an exception where a chunk cannot be read)."""
        out: dict[str, bytes | BaseException] = {}
        if not is_url(self.url):
            for key in keys:
                try:
                    with open(os.path.join(self.url, key), "rb") as f:
                        out[key] = f.read()
                except OSError as err:
                    out[key] = err
            return out
        if self._fs is None:
            self._fs = filesystem(self.url)
        fs, root = self._fs
        paths = {key: fs._strip_protocol(f"{root}/{key}") for key in keys}
        got = fs.cat(list(paths.values()), on_error="return")
        return {key: got.get(p, FileNotFoundError(p)) for key, p in paths.items()}

    def _decoder(self, name: str) -> Any:
        """bytes -> (1, *chunk) array for the codec chains `pack` writes, else None (zarr)."""
        if name not in self._decoders:
            self._decoders[name] = chunk_decoder(self.array(name))
        return self._decoders[name]

    # -- staleness --------------------------------------------------------------------------
    def verify(self, mode: str = "auto") -> str:
        """Refuse a store that no longer matches its source (StaleStoreError) and say what was
        checked. Modes: `none`; `catalog` (the catalog's description of the packed modalities);
        `auto` (catalog, date/split files, and up to VERIFY_AUTO_FILES source files evenly
        spread; catalog only when the source folder is not on this machine); `full` (every
        source file)."""
        if mode not in ("none", "catalog", "auto", "full"):
            raise DataError("verify mode", expected="none|catalog|auto|full", found=mode)
        self.require_complete()
        if mode == "none":
            self.verified = "not verified (verify='none')"
            return self.verified
        now = catalog_fingerprint(self.modalities, self.cat)
        was = self.manifest["catalog"]
        changed = sorted(k for k in set(now) | set(was) if now.get(k) != was.get(k))
        if changed:
            raise StaleStoreError(
                f"the catalog's description of {', '.join(changed)} changed since the store was "
                f"packed (band list, dtype, dates or layout); pack it again from "
                f"{self.manifest['source_root']}",
                path=self.url,
            )
        root = Path(self.manifest["source_root"])
        if mode == "catalog" or not root.is_dir():
            why = "" if mode == "catalog" else f" (source folder {root} not on this machine)"
            self.verified = f"catalog checked{why}"
            return self.verified
        problems = []
        for rel, (size, mtime) in self.manifest["metadata_files"].items():
            problems += _stat_problem(root / rel, size, mtime)
        cells = np.argwhere(self.meta("present"))
        if mode == "auto" and len(cells) > VERIFY_AUTO_FILES:
            cells = cells[np.linspace(0, len(cells) - 1, VERIFY_AUTO_FILES).astype(np.int64)]
        size, mtime = self.meta("size"), self.meta("mtime_ns")
        from flairlab.data.index import modality_path

        for i, j in cells:
            path = modality_path(root, self.patch_ids[i], self.modalities[j], self.cat)
            problems += _stat_problem(path, int(size[i, j]), int(mtime[i, j]))
            if len(problems) >= 5:
                break
        if problems:
            raise StaleStoreError(
                f"store is stale: source files changed since it was packed ({'; '.join(problems)})"
                f". Run `flairlab pack {root} {self.url}` again (only changed patches are "
                "re-packed)",
                path=self.url,
            )
        total = int(self.meta("present").sum())
        self.verified = f"catalog, metadata files and {len(cells)} of {total} source files checked"
        return self.verified


def _stat_problem(path: Path, size: int, mtime_ns: int) -> list[str]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [f"{path} is gone"]
    if st.st_size != size or st.st_mtime_ns != mtime_ns:
        return [f"{path} changed (size {size} -> {st.st_size})"]
    return []


def open_store(
    location: str | Path, catalog: Catalog | None = None, verify: str = "auto"
) -> PatchStore:
    """Open a packed store for reading; refuses an incomplete or stale one (`PatchStore.verify`)."""
    store = PatchStore(location, catalog)
    store.verify(verify)
    return store


def store_for(root: Any, catalog: Catalog | None = None, verify: str = "auto") -> PatchStore | None:
    """The opened store when `root` is one — a PatchStore, a store path or URL, or a catalog
    source naming one — else None (a GeoTIFF folder). A generated store source must have been
    made first (`flairlab.data.sources.ensure_source`, as training does)."""
    if isinstance(root, PatchStore):  # a copy: each dataset prefetches its own arrays
        store = copy.copy(root)
        store.prefetch = _Prefetch()
        return store
    cat = catalog or load_catalog()
    if isinstance(root, str) and root in cat.sources:
        src, root = cat.sources[root], cat.source_url(root)
        if src.packed_from is not None and not is_url(root) and not looks_like_store(root):
            raise DataError(
                f"store not packed yet: `flairlab pack {src.packed_from} {root}`, or "
                "flairlab.data.sources.ensure_source (training does it for generated sources)",
                path=root,
            )
    if is_url(root) or looks_like_store(root):
        return open_store(root, cat, verify)
    return None
