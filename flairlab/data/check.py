"""`flairlab check ROOT`: validate a FLAIR-HUB folder patch by patch (format spec §2-§6).

Reports missing files, unreadable or truncated rasters, wrong band count / dtype / size / CRS,
footprints that disagree across a patch's modalities, NaN / inf values (float rasters are read
whole), dates that do not parse (every date file, mono-temporal ones included), date counts
different from T, and label values out of range. Exit code 1 when anything was found.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from tqdm.auto import tqdm

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError
from flairlab.data.index import index_patches
from flairlab.data.reader import (
    FOOTPRINT_TOL_M,
    count_nonfinite,
    dtype_problem,
    header_problems,
    read_dates,
)


@dataclass
class Problem:
    patch_id: str
    modality: str
    kind: str  # missing | unreadable | bands | dtype | size | crs | footprint | nonfinite | dates
    # | labels
    message: str
    path: str = ""


def _check_file(
    pid: str, name: str, path: str, cat: Catalog, dates: dict
) -> tuple[list[Problem], tuple[float, float, float, float] | None, int | None]:
    """Problems of one file, its bounds, and its number of dates (time series)."""
    mod = cat.modality(name)
    out: list[Problem] = []

    def add(kind: str, msg: str) -> None:
        out.append(Problem(pid, name, kind, msg, path))

    try:
        with rasterio.open(path) as src:
            count, dtype, h, w = src.count, src.dtypes[0], src.height, src.width
            crs, bounds, transform = src.crs, tuple(src.bounds), src.transform
            need_pixels = mod.kind == "label" or np.issubdtype(np.dtype(dtype), np.floating)
            data = src.read() if need_pixels else src.read(1, window=((h - 1, h), (w - 1, w)))
    except Exception as err:  # rasterio/GDAL raise several error types for broken files
        add("unreadable", f"cannot read: {err}")
        return out, None, None
    for kind, msg in header_problems(mod, cat, count=count, height=h, width=w, crs=crs,
                                     transform=transform):  # fmt: skip
        add(kind, msg)
    t = count // mod.n_bands if mod.time_series and count and not count % mod.n_bands else None
    if dtype != mod.dtype:
        fits = need_pixels and dtype_problem(data, mod) is None
        add("dtype", f"expected {mod.dtype}, found {dtype}"
            + (" (values fit: readers accept it)" if fits else ""))  # fmt: skip
    n_bad = count_nonfinite(data) if need_pixels else 0
    if n_bad:
        add("nonfinite", f"{n_bad} NaN/inf value(s) of {data.size} (read as 0 in training)")
    if mod.dates is not None and (t is not None or not mod.time_series):
        table = dates.get(mod.dates.file)
        if isinstance(table, str):
            add("dates", table)
        elif table is not None:
            try:
                n = len(table[pid])  # parses every date of the patch
                if t is not None and n != t:
                    add("dates", f"{n} dates in {mod.dates.file} but T = {t} in the raster")
            except DataError as err:  # the date file's name, then what is wrong
                what = str(err).removeprefix(f"{err.path}: ")
                add("dates", f"{Path(err.path or '').name}: {what}")
    if mod.kind == "label":
        for band, values in zip(mod.bands, data, strict=False):
            nom = band.nomenclature
            n_classes = cat.nomenclature(nom).n_classes if nom else 256
            if values.size and int(values.max()) >= n_classes:
                bad = np.unique(values[values >= n_classes])[:5].tolist()
                add("labels", f"band {band.name}: values {bad} outside 0..{n_classes - 1}")
    return out, bounds, t


def check_dataset(
    root: str | Path,
    split_csv: str | Path | None = None,
    catalog: Catalog | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """All problems found under `root` (optionally only the patches of `split_csv`).

    Returns a DataFrame with columns patch_id, modality, kind, message, path (empty when clean).
    """
    cat = catalog or load_catalog()
    root = Path(root)
    index = index_patches(split_csv, root, cat) if split_csv else index_patches(root, catalog=cat)
    problems: list[Problem] = []
    for orphan in index.attrs.get("orphans", []):
        problems.append(
            Problem(
                "?", "AERIAL-RLT_PAN", "missing", "historical file without a modern patch", orphan
            )
        )
    dates: dict[str, object] = {}
    for m in cat.modalities.values():
        if m.dates is None or m.dates.file in dates:
            continue
        if not m.time_series and not (root / cat.metadata_dir / m.dates.file).is_file():
            continue  # mono-temporal dates are checked when their file is there
        try:
            dates[m.dates.file] = read_dates(root, m.name, cat)
        except DataError as err:
            dates[m.dates.file] = str(err)
    for pid, row in tqdm(index.iterrows(), total=len(index), desc="check", disable=not progress):
        footprints: dict[str, tuple] = {}
        n_dates: dict[str, int] = {}
        for name in cat.modality_names:
            path = row[name]
            if pd.isna(path) or not Path(path).is_file():
                problems.append(
                    Problem(
                        pid, name, "missing", "file not found", "" if pd.isna(path) else str(path)
                    )
                )
                continue
            found, bounds, t = _check_file(pid, name, str(path), cat, dates)
            problems += found
            if bounds is not None:
                footprints[name] = bounds
            if t is not None:
                n_dates[name] = t
        if footprints:
            ref_name, ref = next(iter(footprints.items()))
            for name, b in footprints.items():
                if max(abs(u - v) for u, v in zip(b, ref, strict=True)) > FOOTPRINT_TOL_M:
                    problems.append(
                        Problem(
                            pid,
                            name,
                            "footprint",
                            f"bounds {b} differ from {ref_name} {ref}",
                            row[name],
                        )
                    )
        s2, msk = n_dates.get("SENTINEL2_TS"), n_dates.get("SENTINEL2_MSK-SC")
        if s2 is not None and msk is not None and s2 != msk:
            problems.append(
                Problem(
                    pid,
                    "SENTINEL2_MSK-SC",
                    "dates",
                    f"mask has T = {msk}, S2 has T = {s2}",
                    row["SENTINEL2_MSK-SC"],
                )
            )
    cols = ["patch_id", "modality", "kind", "message", "path"]
    df = pd.DataFrame([asdict(p) for p in problems], columns=cols)
    df.attrs["n_patches"] = len(index)
    return df


def summary(problems: pd.DataFrame) -> pd.DataFrame:
    """Counts of problems per modality and kind."""
    if problems.empty:
        return pd.DataFrame()
    return problems.pivot_table(
        index="modality", columns="kind", values="patch_id", aggfunc="count", fill_value=0
    )


def _run(args: argparse.Namespace) -> int:
    try:
        problems = check_dataset(args.root, args.split, progress=not args.quiet)
    except DataError as err:
        print(f"error: {err}")
        return 2
    n = problems.attrs.get("n_patches", 0)
    if problems.empty:
        print(f"OK: {n} patches, no problems found in {args.root}")
        return 0
    print(f"{len(problems)} problem(s) in {problems['patch_id'].nunique()} of {n} patches:\n")
    print(summary(problems).to_string())
    print()
    with pd.option_context("display.max_colwidth", 120, "display.width", 200):
        print(problems.head(args.show)[["patch_id", "modality", "kind", "message"]].to_string())
    if args.report:
        problems.to_csv(args.report, index=False)
        print(f"\nfull report: {args.report}")
    return 1


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a FLAIR-HUB folder (exit 1 when problems are found)")
    p.add_argument("root", help="dataset root (the folder holding <DOMAIN>_<MODALITY>/ folders)")
    p.add_argument("--split", help="only check the patches of this split CSV")
    p.add_argument("--report", help="write every problem to this CSV file")
    p.add_argument("--show", type=int, default=30, help="problems to print (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
