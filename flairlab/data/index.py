"""Patch index: FLAIR-HUB file-name grammar, split CSVs and folder scans (format spec §2).

A patch id is `DOMAIN_ROI_R-C` (`D006-2020_FF-S1-14_5-5`); its file for modality MOD is
`<root>/<DOMAIN>_<MOD>/<ROI>/<DOMAIN>_<MOD>_<ROI>_<R>-<C>.tif`, except the historical
`AERIAL-RLT_PAN`, whose folder and file use `<CODE>-195X` instead of `<CODE>-<YEAR>`.

Split-CSV cells are relative paths starting with `../` (the official loader resolves them against
the process working directory, one level below the data). flairlab resolves them against a
dataset root: the leading `../` is dropped and the rest joined to `root`. Without `root`, the root
is the CSV's parent folder when the files are there (the cells read literally), else the CSV's
own folder (the toy release's layout); when neither holds the files, a DataError lists them.
"""

from __future__ import annotations

import csv
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError

_DOMAIN = r"(?P<code>D\d{3}(?:\d{3})?)-(?P<year>\d{4})"
_ROI = r"(?P<roi>[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)"
_POS = r"(?P<row>[1-9]\d*)-(?P<col>[1-9]\d*)"
PATCH_ID_RE = re.compile(rf"^{_DOMAIN}_{_ROI}_{_POS}$")
FILE_RE = re.compile(
    r"^(?P<code>D\d{3}(?:\d{3})?)-(?P<year>\d{4}|195X)_(?P<mod>[A-Z0-9-]+_[A-Z0-9-]+)_"
    rf"{_ROI}_{_POS}\.tif$"
)
HISTORICAL_YEAR = "195X"
META_COLUMNS = ["domain", "year", "roi", "row", "col"]


@dataclass(frozen=True)
class PatchId:
    """Parsed patch id. `row`/`col` are the 1-based positions of the name (not coordinates)."""

    domain: str
    code: str
    year: int
    roi: str
    row: int
    col: int

    @property
    def patch_id(self) -> str:
        return f"{self.domain}_{self.roi}_{self.row}-{self.col}"

    @property
    def roi_key(self) -> str:
        """ROIs are unique only per domain: key them as `DOMAIN_ROI` (spec §12)."""
        return f"{self.domain}_{self.roi}"


def parse_patch_id(patch_id: str) -> PatchId:
    """Parse `DOMAIN_ROI_R-C`; raises DataError on anything else."""
    m = PATCH_ID_RE.match(patch_id)
    if not m:
        raise DataError(
            f"patch id {patch_id!r} is not of the form DOMAIN_ROI_R-C (e.g. D006-2020_FF-S1-14_5-5)"
        )
    code, year = m["code"], int(m["year"])
    return PatchId(f"{code}-{year}", code, year, m["roi"], int(m["row"]), int(m["col"]))


def parse_file_name(path: str | Path) -> tuple[str, str]:
    """`(patch_id, modality)` from a FLAIR-HUB file name; historical files map to the modern id
    only through `index_patches` (their name has no year), so this returns the `195X` domain."""
    name = Path(path).name
    m = FILE_RE.match(name)
    if not m:
        raise DataError(
            "file name does not follow <DOMAIN>_<MODALITY>_<ROI>_<R>-<C>.tif", path=path
        )
    return f"{m['code']}-{m['year']}_{m['roi']}_{m['row']}-{m['col']}", m["mod"]


def domain_folder(patch: PatchId, modality: str, catalog: Catalog | None = None) -> str:
    """Folder name `<DOMAIN>_<MOD>` (`<CODE>-195X_AERIAL-RLT_PAN` for the historical modality)."""
    mod = (catalog or load_catalog()).modality(modality)
    domain = (
        f"{patch.code}-{HISTORICAL_YEAR}" if mod.folder_domain == "historical" else patch.domain
    )
    return f"{domain}_{mod.name}"


def modality_path(
    root: str | Path, patch_id: str, modality: str, catalog: Catalog | None = None
) -> Path:
    """Expected path of one patch's file for `modality` (dataset name or alias) under `root`."""
    cat = catalog or load_catalog()
    p = parse_patch_id(patch_id)
    folder = domain_folder(p, modality, cat)
    return Path(root) / folder / p.roi / f"{folder}_{p.roi}_{p.row}-{p.col}.tif"


def _sniff_delimiter(path: Path) -> str:
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = f.readline()
    if not header.strip():
        raise DataError("split CSV is empty", path=path)
    try:
        return csv.Sniffer().sniff(header, delimiters=",;").delimiter
    except csv.Error:
        return ","


def _finish(df: pd.DataFrame, catalog: Catalog, root: Path) -> pd.DataFrame:
    """Add meta columns, order modality columns as in the catalog, sort by patch id."""
    for name in catalog.modality_names:
        if name not in df.columns:
            df[name] = pd.NA
        df[name] = df[name].astype("string")
    parsed = [parse_patch_id(pid) for pid in df.index]
    df["domain"] = [p.domain for p in parsed]
    df["year"] = pd.array([p.year for p in parsed], dtype="Int64")
    df["roi"] = [p.roi for p in parsed]
    df["row"] = pd.array([p.row for p in parsed], dtype="Int64")
    df["col"] = pd.array([p.col for p in parsed], dtype="Int64")
    extra = [c for c in df.columns if c not in catalog.modality_names and c not in META_COLUMNS]
    df = df[catalog.modality_names + META_COLUMNS + extra].sort_index()
    df.index.name = "patch_id"
    df.attrs["root"] = str(root)
    return df


def read_split_csv(
    csv_path: str | Path,
    root: str | Path | None = None,
    catalog: Catalog | None = None,
    allow_empty: bool = False,
) -> pd.DataFrame:
    """Read an official split CSV (`,` or `;`, sniffed); cells `../X` resolve to `root/X`.

    Every cell is checked against its column and `patch_id` (a mismatch is a DataError). A CSV
    with a header but no rows is an error unless `allow_empty` (one split of a dataset that has
    no patch in it, e.g. a tiny sample's test split).
    """
    cat = catalog or load_catalog()
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError("split CSV not found", path=csv_path)
    raw = pd.read_csv(csv_path, sep=_sniff_delimiter(csv_path), dtype=str, keep_default_na=False)
    if "patch_id" not in raw.columns:
        raise DataError(
            "split CSV has no 'patch_id' column",
            path=csv_path,
            expected="patch_id,<modality columns>",
            found=",".join(raw.columns),
        )
    if raw.empty and not allow_empty:
        raise DataError("split CSV has a header but no patch rows", path=csv_path,
                        expected="one line per patch", found="0 lines")  # fmt: skip
    if raw["patch_id"].duplicated().any():
        dup = raw.loc[raw["patch_id"].duplicated(), "patch_id"].iloc[0]
        raise DataError(f"patch_id {dup!r} appears more than once", path=csv_path)
    _refuse_unknown_modality_columns(raw, csv_path, cat)
    mods = [c for c in raw.columns if c in cat.modalities]
    base = Path(root) if root is not None else _csv_root(csv_path, raw[mods])
    out = pd.DataFrame(index=pd.Index(raw["patch_id"], name="patch_id"))
    for row_no, pid in enumerate(raw["patch_id"], start=2):
        try:
            parse_patch_id(pid)
        except DataError as err:
            raise DataError(f"line {row_no}: {err}", path=csv_path) from None
    for mod in mods:
        values = []
        for row_no, (pid, cell) in enumerate(zip(raw["patch_id"], raw[mod], strict=True), start=2):
            if not cell:
                values.append(pd.NA)
                continue
            rel = _relative(cell)
            expected = modality_path("", pid, mod, cat).as_posix()
            if rel != expected:
                raise DataError(
                    f"line {row_no}, column {mod}: path does not match patch {pid}",
                    path=csv_path,
                    expected="../" + expected,
                    found=cell,
                )
            values.append(str(base / rel))
        out[mod] = values
    df = _finish(out, cat, base)
    df.attrs["split_csv"] = str(csv_path)
    return df


def _relative(cell: str) -> str:
    """A split-CSV cell without its leading `../` / `./` parts."""
    rel = cell.replace("\\", "/")
    while rel.startswith("../") or rel.startswith("./"):
        rel = rel.split("/", 1)[1]
    return rel


def _csv_root(csv_path: Path, cells: pd.DataFrame, n_probe: int = 10) -> Path:
    """Dataset root of a split CSV: its parent folder (cells `../X` read literally) if the files
    are there, else its own folder; DataError listing the first missing files otherwise."""
    rels = [_relative(c) for c in cells.to_numpy().ravel() if c][:n_probe]
    candidates = list(dict.fromkeys([csv_path.parent.parent, csv_path.parent]))
    if not rels:
        return csv_path.parent
    found = [sum((base / r).is_file() for r in rels) for base in candidates]
    if max(found) > 0:
        return candidates[found.index(max(found))]
    missing = [str(base / r) for base in candidates for r in rels[:2]]
    raise DataError(
        "files of the split CSV not found next to it",
        path=csv_path,
        expected="the modality folders in the CSV's folder or its parent (else pass root=)",
        found="missing " + ", ".join(missing),
    )


def _refuse_unknown_modality_columns(raw: pd.DataFrame, path: Path, cat: Catalog) -> None:
    """A column that is not a catalog modality but looks like one (a close name, or `.tif`
    cells) is a DataError rather than silently dropped; other extra columns are ignored."""
    for col in raw.columns:
        if col == "patch_id" or col in cat.modalities:
            continue
        close = difflib.get_close_matches(col.upper(), cat.modality_names, n=1, cutoff=0.75)
        tif = raw[col].head(20).str.lower().str.endswith((".tif", ".tiff")).any()
        if close or tif:
            raise DataError(
                f"column {col!r} is not a modality of the catalog"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                path=path,
                expected=cat.modality_names,
                found=col,
            )


def scan_root(root: str | Path, catalog: Catalog | None = None) -> pd.DataFrame:
    """Index a dataset folder by globbing `<root>/<DOMAIN>_<MOD>/<ROI>/*.tif`."""
    cat = catalog or load_catalog()
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset root is not a folder", path=root)
    records: dict[str, dict[str, str]] = {}
    historical: list[tuple[str, str, Path]] = []  # (code_roi_pos key, modality, path)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        m = re.match(r"^(D\d{3}(?:\d{3})?)-(\d{4}|195X)_(.+)$", folder.name)
        if not m or m[3] not in cat.modalities:
            continue
        for tif in sorted(folder.glob("*/*.tif")):
            pid, mod = parse_file_name(tif)
            if mod != m[3] or not tif.name.startswith(folder.name + "_"):
                raise DataError(
                    "file is in the wrong folder",
                    path=tif,
                    expected=f"{folder.name}_...",
                    found=tif.name,
                )
            if pid.split("_", 1)[0].endswith(HISTORICAL_YEAR):
                code = pid.split("-", 1)[0]
                historical.append((code + "_" + pid.split("_", 1)[1], mod, tif))
            else:
                records.setdefault(pid, {})[mod] = str(tif)
    by_key = {pid.split("-", 1)[0] + "_" + pid.split("_", 1)[1]: pid for pid in records}
    orphans = []
    for key, mod, tif in historical:
        if key in by_key:
            records[by_key[key]][mod] = str(tif)
        else:
            orphans.append(str(tif))
    df = pd.DataFrame.from_dict(records, orient="index")
    if df.empty:
        raise DataError(
            "no FLAIR-HUB patch files found",
            path=root,
            expected="<root>/<DOMAIN>_<MODALITY>/<ROI>/*.tif",
            found="nothing",
        )
    df = _finish(df, cat, root)
    df.attrs["orphans"] = orphans  # historical files without a modern counterpart
    split_gpkg = root / cat.metadata_dir / cat.split_gpkg
    if split_gpkg.is_file():
        df["split"] = _read_split_gpkg(split_gpkg).reindex(df.index).astype("string")
    return df


def _read_split_gpkg(path: Path) -> pd.Series:
    import pyogrio

    cols = [c for c in pyogrio.read_info(path)["fields"] if str(c).startswith("split")]
    if "patch_id" not in pyogrio.read_info(path)["fields"] or not cols:
        raise DataError("split GeoPackage needs 'patch_id' and a 'split_*' column", path=path)
    col = "split_toy" if "split_toy" in cols else sorted(cols)[0]
    df = pyogrio.read_dataframe(path, columns=["patch_id", col], read_geometry=False)
    return df.set_index("patch_id")[col]


def index_patches(
    root_or_split_csv: str | Path | list[str | Path],
    root: str | Path | None = None,
    catalog: Catalog | None = None,
) -> pd.DataFrame:
    """Patch index: one row per patch id, one path column per modality (NA if missing).

    Accepts a dataset root (scanned), one split CSV, or a list of split CSVs (a `split` column
    is added from the file names: TRAIN/VALID/TEST). Meta columns: domain, year, roi, row, col.
    `df.attrs["root"]` holds the dataset root used to find `GLOBAL_ALL_MTD/`.
    """
    cat = catalog or load_catalog()
    if isinstance(root_or_split_csv, (list, tuple)):
        frames = []
        for p in root_or_split_csv:
            f = read_split_csv(p, root, cat)
            f["split"] = _split_name(Path(p))
            frames.append(f)
        df = pd.concat(frames)
        if df.index.duplicated().any():
            raise DataError(f"patch {df.index[df.index.duplicated()][0]!r} is in several splits")
        df["split"] = df["split"].astype("string")
        df.attrs = frames[0].attrs
        return df.sort_index()
    p = Path(root_or_split_csv)
    if p.is_dir():
        return scan_root(p, cat)
    if p.suffix.lower() == ".csv":
        return read_split_csv(p, root, cat)
    raise DataError("expected a dataset folder or a split CSV", path=p)


def _split_name(path: Path) -> str:
    stem = path.stem.upper()
    for key, name in (("TRAIN", "train"), ("VAL", "valid"), ("TEST", "test")):
        if key in stem:
            return name
    return path.stem


def split_csvs(root: str | Path, splits: dict[str, str | list[str]]) -> dict[str, list[Path]]:
    """`{split: [CSV files]}` in `root` for `{split: file name or glob pattern(s)}` (a catalog
    source's `splits`, e.g. `{"train": "FLAIR-HUB*_TRAIN.csv"}`); splits without a match are left
    out. A file matched by two splits is a DataError."""
    root = Path(root)
    found: dict[str, list[Path]] = {}
    owner: dict[Path, str] = {}
    for split, patterns in splits.items():
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            for path in sorted(root.glob(pattern)) if root.is_dir() else []:
                if not path.is_file():
                    continue
                if owner.setdefault(path, split) != split:
                    raise DataError(
                        f"split CSV matches the patterns of two splits ({owner[path]}, {split})",
                        path=path, expected="one split per file (sources.<name>.splits)",
                    )  # fmt: skip
                if path not in found.setdefault(split, []):
                    found[split].append(path)
    return found


def index_split_csvs(
    csvs: dict[str, list[Path]], root: str | Path, catalog: Catalog | None = None
) -> pd.DataFrame:
    """Index of `{split: [CSV files]}` (`split_csvs`) with a `split` column. A patch listed twice
    in one split (e.g. toy and full CSVs side by side) counts once; in two splits, DataError."""
    cat = catalog or load_catalog()
    frames = []
    for split, paths in csvs.items():
        parts = [read_split_csv(p, root, cat, allow_empty=True) for p in paths]
        part = pd.concat(parts)
        part = part[~part.index.duplicated()]
        part["split"] = split
        part.attrs = parts[0].attrs
        frames.append(part)
    df = pd.concat(frames)
    if df.empty:
        files = [p.name for paths in csvs.values() for p in paths]
        raise DataError("split CSVs have a header but no patch rows", path=Path(root),
                        expected="one line per patch", found=f"0 lines in {files}")  # fmt: skip
    if df.index.duplicated().any():
        pid = df.index[df.index.duplicated()][0]
        where = sorted(df.loc[[pid], "split"].unique())
        raise DataError(f"patch {pid!r} is in several splits: {where}", path=Path(root))
    df["split"] = df["split"].astype("string")
    df.attrs = frames[0].attrs
    return df.sort_index()


def index_dataset(root: str | Path, catalog: Catalog | None = None,
                  splits: dict[str, str | list[str]] | None = None) -> pd.DataFrame:  # fmt: skip
    """Index of a dataset folder from its split CSVs — `splits` (name or glob per split), by
    default those of the catalog source whose folder `root` is, else the split patterns of every
    source — or, without any split CSV, a folder scan (split from `GLOBAL_ALL_MTD_SPLIT.gpkg`)."""
    cat = catalog or load_catalog()
    here = Path(root).resolve()
    if splits is None:  # a source that declares no split names gets every source's patterns
        splits = next((src.splits for name, src in cat.sources.items()
                       if cat.source_root(name) == here and src.splits), None)  # fmt: skip
    if splits is None:
        splits = {}
        for src in cat.sources.values():
            for split, pattern in src.splits.items():
                have = splits.setdefault(split, [])
                have.extend(p for p in ([pattern] if isinstance(pattern, str) else pattern)
                            if p not in have)  # fmt: skip
    csvs = split_csvs(root, splits)
    if csvs:
        return index_split_csvs(csvs, root, cat)
    return index_patches(root, catalog=cat)


def source_index(source: str = "sample", catalog: Catalog | None = None) -> pd.DataFrame:
    """Index of a catalog source from its split CSVs (names or glob patterns in the source's
    `splits`); a folder scan when none of them is there."""
    cat = catalog or load_catalog()
    return index_dataset(cat.source_root(source), cat, cat.sources[source].splits)


def index_summary(index: pd.DataFrame, n: int = 5, catalog: Catalog | None = None) -> pd.DataFrame:
    """The first `n` patches of an index as a reader wants them: domain, ROI, row, col, split and
    how many of the catalog's modality files each has (`10/10`), without the file paths."""
    cat = catalog or load_catalog()
    mods = [m for m in cat.modality_names if m in index.columns]
    head = index.head(n)
    out = head[[c for c in [*META_COLUMNS, "split"] if c in head.columns and c != "year"]].copy()
    out["files"] = [f"{k}/{len(mods)}" for k in head[mods].notna().sum(axis=1)]
    return out
