"""`data_catalog.yaml`: modalities, nomenclatures and data sources, validated with pydantic.

The catalog is the only place where band lists, class tables and colours live; code asks it.

>>> cat = load_catalog()
>>> cat.modality("SENTINEL2_TS").band_names[:3]
['B02', 'B03', 'B04']
>>> cat.modality("s1_asc").name          # aliases work too
'SENTINEL1-ASC_TS'
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flairlab.data.errors import CatalogError, UnknownNameError

CATALOG_ENV = "FLAIRLAB_CATALOG"
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
IGNORE_INDEX = 255  # label value flairlab uses for "not evaluated" pixels (never a real class)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Band(_Strict):
    name: str
    wavelength_nm: float | None = None
    frequency_ghz: float | None = None
    units: str | None = None
    nomenclature: str | None = None


class Scaling(_Strict):
    """Model-side scaling: optional ln(max(x, log_floor)), then division by `divide_by`."""

    divide_by: float = 1.0
    log: bool = False
    log_floor: float = 1e-10


class Histogram(_Strict):
    """Fixed bin edges for exploration histograms (`transform: db` = 10·log10 of linear power)."""

    min: float
    max: float
    bins: int = Field(gt=0)
    transform: Literal["none", "db"] = "none"

    @model_validator(mode="after")
    def _range(self) -> Histogram:
        if not self.max > self.min:
            raise ValueError(f"max ({self.max}) must exceed min ({self.min})")
        return self


class Stats(_Strict):
    mean: list[float]
    std: list[float]


class Dates(_Strict):
    file: str
    column: str
    format: Literal["yyyymmdd", "json"]


class Modality(_Strict):
    """One FLAIR-HUB modality (a folder `<DOMAIN>_<name>/` of per-patch GeoTIFFs)."""

    name: str = ""  # filled from the YAML key
    alias: str
    kind: Literal["image", "mask", "label"]
    description: str = ""
    folder_domain: Literal["modern", "historical"]
    dtype: Literal["uint8", "uint16", "int16", "float32"]
    resolution_m: float = Field(gt=0)
    size_px: int = Field(gt=0)
    time_series: bool
    n_bands: int = Field(gt=0)  # channels per date for time series
    bands: list[Band]
    scaling: Scaling | None = None
    histogram: Histogram
    band_groups: list[list[str]] | None = None
    stats: Stats | None = None
    mask: str | None = None
    dates: Dates | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Modality:
        if len(self.bands) != self.n_bands:
            raise ValueError(f"bands lists {len(self.bands)} entries but n_bands is {self.n_bands}")
        names = self.band_names
        if self.band_groups is not None:
            flat = [b for g in self.band_groups for b in g]
            unknown = sorted(set(flat) - set(names))
            if unknown:
                raise ValueError(f"band_groups name unknown bands {unknown}; bands are {names}")
            if sorted(flat) != sorted(names):
                raise ValueError(f"band_groups must use every band exactly once; got {flat}")
        if self.stats is not None:
            for key in ("mean", "std"):
                n = len(getattr(self.stats, key))
                if n != self.n_bands:
                    raise ValueError(f"stats.{key} has {n} values, expected {self.n_bands}")
        return self

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    @property
    def band_group_indices(self) -> list[list[int]]:
        """Band groups as 0-based file-order indices (one group of all bands when unset)."""
        groups = self.band_groups or [self.band_names]
        return [[self.band_names.index(b) for b in g] for g in groups]


class ClassDef(_Strict):
    id: int = Field(ge=0, le=254)
    name: str
    name_fr: str | None = None
    color: str | None = None
    ignored: bool = False
    background: bool = False

    @field_validator("color")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _HEX.match(v):
            raise ValueError(f"colour {v!r} is not of the form '#rrggbb'")
        return v

    @property
    def rgb(self) -> tuple[int, int, int]:
        c = self.color or "#808080"
        return (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16))


class Nomenclature(_Strict):
    name: str = ""
    description: str = ""
    classes: list[ClassDef]

    @model_validator(mode="after")
    def _ids(self) -> Nomenclature:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..{len(ids) - 1} in order, got {ids}")
        return self

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def evaluated_ids(self) -> list[int]:
        """Ids that count in metrics (COSIA: 0-14)."""
        return [c.id for c in self.classes if not c.ignored]

    @property
    def ignored_ids(self) -> list[int]:
        return [c.id for c in self.classes if c.ignored]

    def colors(self) -> dict[int, tuple[int, int, int]]:
        return {c.id: c.rgb for c in self.classes}


class Source(_Strict):
    """A dataset location: a FLAIR-HUB folder, or a packed store (`flairlab pack`; a folder or an
    fsspec URL such as `s3://bucket/flairhub.zarr`). `packed_from` names the source a generated
    store is packed from, with the pack-time `resample` sizes (px per modality alias or name)."""

    description: str = ""
    path: str
    env: str | None = None
    generate: bool = False
    splits: dict[str, str | list[str]] = {}  # split -> CSV file name or glob pattern(s)
    packed_from: str | None = None
    resample: dict[str, int] = {}


class Catalog(_Strict):
    schema_version: Literal[1]
    patch_size_m: float
    crs: str
    metadata_dir: str
    split_gpkg: str
    sources: dict[str, Source]
    modalities: dict[str, Modality]
    nomenclatures: dict[str, Nomenclature]
    path: Path | None = None  # the YAML file this catalog came from

    @model_validator(mode="after")
    def _cross(self) -> Catalog:
        aliases = [m.alias for m in self.modalities.values()]
        if len(set(aliases)) != len(aliases):
            raise ValueError(f"modality aliases must be unique, got {aliases}")
        for key, src in self.sources.items():
            if src.packed_from is not None and src.packed_from not in self.sources:
                raise ValueError(
                    f"sources.{key}.packed_from names unknown source {src.packed_from!r}"
                )
        for key, m in self.modalities.items():
            if m.mask is not None and m.mask not in self.modalities:
                raise ValueError(f"modalities.{key}.mask names unknown modality {m.mask!r}")
            for b in m.bands:
                if b.nomenclature and b.nomenclature not in self.nomenclatures:
                    raise ValueError(
                        f"modalities.{key}.bands: nomenclature {b.nomenclature!r} is not defined"
                    )
            size_m = m.size_px * m.resolution_m
            if abs(size_m - self.patch_size_m) > 1e-6:
                raise ValueError(
                    f"modalities.{key}: size_px*resolution_m = {size_m:g} m, "
                    f"expected patch_size_m = {self.patch_size_m:g} m"
                )
        return self

    # -- lookups -----------------------------------------------------------------------------
    def modality(self, name: str) -> Modality:
        """Modality by dataset name (`SENTINEL2_TS`) or alias (`s2`)."""
        if name in self.modalities:
            return self.modalities[name]
        for m in self.modalities.values():
            if m.alias == name:
                return m
        aliases = sorted(m.alias for m in self.modalities.values())
        raise UnknownNameError(
            "unknown modality",
            expected=f"one of {sorted(self.modalities)} or {aliases}",
            found=name,
        )

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)

    def nomenclature(self, name: str) -> Nomenclature:
        try:
            return self.nomenclatures[name]
        except KeyError:
            raise UnknownNameError(
                "unknown nomenclature", expected=sorted(self.nomenclatures), found=name
            ) from None

    def source_root(self, name: str = "sample") -> Path:
        """Resolve a named source: its env variable wins, else `path`, relative to the YAML — or,
        for a store with `packed_from`, to the folder holding that source (its sibling)."""
        if name not in self.sources:
            raise UnknownNameError("unknown source", expected=sorted(self.sources), found=name)
        src = self.sources[name]
        raw = os.environ.get(src.env) if src.env else None
        p = Path(os.path.expanduser(raw or src.path))
        if not p.is_absolute():
            base = self.path.parent if self.path is not None else Path.cwd()
            if src.packed_from is not None and not raw:  # a store sits beside its origin
                base = self.source_root(src.packed_from).parent
            p = base / p
        return p.resolve()

    def source_url(self, name: str = "sample") -> str:
        """`source_root` as a string, except that a URL (`s3://…`, `memory://…`) is kept as is."""
        src = self.sources.get(name)
        raw = (os.environ.get(src.env) if src and src.env else None) or (src.path if src else "")
        return raw if "://" in raw else str(self.source_root(name))


def _default_catalog_path() -> Path:
    env = os.environ.get(CATALOG_ENV)
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]  # flairlab/
    checkout = package.parent / "data_catalog.yaml"  # a source checkout / editable install
    if checkout.exists():
        return checkout
    return package / "data_catalog.yaml"  # copy shipped inside the wheel


def _format_errors(err: ValidationError, path: Path) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {loc or '<root>'}: {e['msg']}")
    return f"{path}: invalid catalog\n" + "\n".join(lines)


def parse_catalog(data: dict, path: Path | None = None) -> Catalog:
    """Validate a catalog mapping (already parsed YAML). Raises CatalogError naming the field."""
    where = path or Path("<catalog>")
    if not isinstance(data, dict):
        raise CatalogError("top level must be a mapping", path=where)
    data = dict(data)
    for section in ("modalities", "nomenclatures"):
        items = data.get(section)
        if isinstance(items, dict):
            data[section] = {
                k: ({**v, "name": k} if isinstance(v, dict) else v) for k, v in items.items()
            }
    try:
        return Catalog(**data, path=path)
    except ValidationError as err:
        raise CatalogError(_format_errors(err, where)) from None


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load and validate `data_catalog.yaml` (default: `$FLAIRLAB_CATALOG`, else the project's)."""
    p = Path(path) if path is not None else _default_catalog_path()
    return _load_cached(p.resolve())


@lru_cache(maxsize=8)
def _load_cached(p: Path) -> Catalog:
    if not p.exists():
        raise CatalogError("catalog file not found", path=p)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise CatalogError(f"not valid YAML: {err}", path=p) from None
    return parse_catalog(data, p)
