"""`flairlab sample OUT`: write the embedded synthetic FLAIR-HUB sample in the exact on-disk format.

The patch ids and splits are the official toy dataset's (split CSVs © IGN, Licence Ouverte 2.0,
shipped in `flairlab/resources/toy_splits/`); the pixels come from `flairlab.data.synthetic`.
Layout, names, dtypes and metadata follow `flairhub-format.md` §2-§6 and the recipe of §13:

    OUT/<DOMAIN>_<MOD>/<ROI>/<DOMAIN>_<MOD>_<ROI>_<R>-<C>.tif   (historical: <CODE>-195X_...)
    OUT/GLOBAL_ALL_MTD/GLOBAL_*_MTD_DATES.gpkg, GLOBAL_ALL_MTD_SPLIT.gpkg
    OUT/FLAIR-HUB_TOY-DATASET_{TRAIN,VALID,TEST}.csv
    OUT/FLAIRLAB_EXTRA-ZONE.csv          (only with `zone`: the extra patches, same format)

Real FLAIR-HUB ROIs are contiguous grids of patches, the toy set only scattered ones. `zone=N`
adds a contiguous N × N block of the test ROI `D012-2019_AF-S1-27` (rows 5…, cols 8…, around its
two toy patches): every position that is not a toy patch becomes an *extra* patch, listed in the
marker (`extra_patches`) and in its own split CSV, never in the toy CSVs or the toy split
GeoPackage; the date GeoPackages list them like any patch. Maps and zone predictions then cover a
real area. `ensure_sample` (the notebooks, `make sample`, `flairlab sample`) writes the default
sample: 40 toy patches and a 4 × 4 zone (14 extra patches).

>>> root = make_sample("/tmp/flairhub-sample", n_patches=12, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import resources
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from shapely.geometry import box
from tqdm.auto import tqdm

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError
from flairlab.data.synthetic import make_scene, patch_bounds, render_patch, roi_origins

DEFAULT_N_PATCHES = 40  # default subset: all splits, all 10 domains, adjacent patches; ~100 MB
DEFAULT_ZONE = 4  # side of the contiguous block of extra patches in the default sample
ZONE_ORIGIN = ("D012-2019", "AF-S1-27", 5, 8)  # domain, ROI, first row and column of the block
EXTRA_CSV = "FLAIRLAB_EXTRA-ZONE.csv"
EXTRA_SPLIT = "EXTRA"
MARKER = ".flairlab-sample.json"  # written first: a folder holding it may be regenerated
SPLITS = ("TRAIN", "VALID", "TEST")
TOY_CSV = "FLAIR-HUB_TOY-DATASET_{}.csv"
HISTORICAL = "AERIAL-RLT_PAN"
# (Sentinel) date files of spec §5.1 and mono-temporal date files of §5.2
TS_DATES = {"SENTINEL2_TS": "GLOBAL_SENTINEL2_MTD_DATES.gpkg",
            "SENTINEL1-ASC_TS": "GLOBAL_SENTINEL1-ASC_MTD_DATES.gpkg",
            "SENTINEL1-DESC_TS": "GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg"}  # fmt: skip
MONO_DATES = {"aerial": "GLOBAL_AERIAL_MTD_DATES.gpkg", "rlt": "GLOBAL_AERIAL-RLT_MTD_DATES.gpkg",
              "spot": "GLOBAL_SPOT_MTD_DATES.gpkg"}  # fmt: skip
# OGR_CURRENT_DATE fixes the gpkg_contents timestamp, so GeoPackages are bit-reproducible
GPKG_DATE = "2025-07-02T00:00:00.000Z"


# -- official toy patch list --------------------------------------------------------------------
def load_toy_splits() -> pd.DataFrame:
    """The 250 official toy patches: patch_id, split, domain, roi, row, col and the raw CSV line."""
    frames = []
    for split in SPLITS:
        text = resources.files("flairlab").joinpath(
            "resources", "toy_splits", TOY_CSV.format(split)
        )
        lines = text.read_text(encoding="utf-8").splitlines()
        df = pd.read_csv(io.StringIO("\n".join(lines)), dtype=str)
        df = df[["patch_id"]].assign(split=split, line=lines[1:], header=lines[0])
        frames.append(df)
    toy = pd.concat(frames, ignore_index=True)
    parts = toy["patch_id"].str.split("_", expand=True)
    rc = parts[2].str.split("-", expand=True).astype(int)
    return toy.assign(domain=parts[0], roi=parts[1], row=rc[0], col=rc[1]).set_index("patch_id")


def select_patches(toy: pd.DataFrame, n: int) -> list[str]:
    """A deterministic subset of n toy patches, greedy by priority.

    Order of preference: a new domain, a new split, a 4-neighbour of a chosen patch (zone mosaics),
    a new (split, domain) pair, a patch with a toy 4-neighbour, a split below its toy share, an
    ROI already chosen, an ROI with more toy patches; ties by patch id.
    """
    cells = set(zip(toy["domain"] + "_" + toy["roi"], toy["row"], toy["col"], strict=True))
    roi_size = (toy["domain"] + "_" + toy["roi"]).value_counts()
    cand = {
        pid: (r.split, r.domain, f"{r.domain}_{r.roi}", r.row, r.col) for pid, r in toy.iterrows()
    }

    def neighbours(key: str, row: int, col: int) -> list[tuple[str, int, int]]:
        return [(key, row + dr, col + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))]

    share = toy["split"].value_counts(normalize=True).to_dict()
    counts = dict.fromkeys(SPLITS, 0)
    chosen: list[str] = []
    got: set[tuple[str, int, int]] = set()
    domains, splits, pairs, rois = set(), set(), set(), set()
    for _ in range(min(n, len(cand))):

        def score(pid: str) -> tuple:
            split, dom, key, row, col = cand[pid]
            nb = neighbours(key, row, col)
            behind = counts[split] < share[split] * (len(chosen) + 1)
            return (dom not in domains, split not in splits, any(c in got for c in nb),
                    (split, dom) not in pairs, any(c in cells for c in nb), behind,
                    key in rois, int(roi_size[key]))  # fmt: skip

        best = max(sorted(cand), key=score)
        split, dom, key, row, col = cand.pop(best)
        chosen.append(best)
        counts[split] += 1
        got.add((key, row, col))
        domains.add(dom), splits.add(split), pairs.add((split, dom)), rois.add(key)
    return sorted(chosen)


def zone_patches(toy: pd.DataFrame, side: int) -> pd.DataFrame:
    """The extra patches of a `side` × `side` zone (see the module docstring): rows like
    `load_toy_splits`'s with split `EXTRA`, in patch-id order; toy positions are left out."""
    domain, roi, row0, col0 = ZONE_ORIGIN
    if not 0 <= side <= 25 - max(row0, col0) + 1:
        raise ValueError(f"zone must be in 0..{26 - max(row0, col0)}, got {side}")
    rows = []
    for r in range(row0, row0 + side):
        for c in range(col0, col0 + side):
            pid = f"{domain}_{roi}_{r}-{c}"
            if pid not in toy.index:
                rows.append(dict(patch_id=pid, split=EXTRA_SPLIT, line="", header="",
                                 domain=domain, roi=roi, row=r, col=c))  # fmt: skip
    cols = ["patch_id", *toy.columns]
    return pd.DataFrame(rows, columns=cols).set_index("patch_id").sort_index()


# -- paths and writers --------------------------------------------------------------------------
def rel_path(patch_id: str, modality: str) -> str:
    """`<DOMAIN>_<MOD>/<ROI>/<DOMAIN>_<MOD>_<ROI>_<R>-<C>.tif` (historical domain `<CODE>-195X`)."""
    domain, roi, rc = patch_id.split("_")
    if modality == HISTORICAL:
        domain = domain.split("-")[0] + "-195X"
    return f"{domain}_{modality}/{roi}/{domain}_{modality}_{roi}_{rc}.tif"


def write_geotiff(path: Path, arr: np.ndarray, left: float, top: float, res: float) -> None:
    """Band-first array → deflate-compressed, tiled, north-up GeoTIFF in EPSG:2154."""
    count, height, width = arr.shape
    block = max(16, min(256, width // 2 // 16 * 16))  # ≥ 2 tiles a side (16 px for 10 × 10)
    is_label = arr.dtype == np.uint8 and count <= 3 and "LABEL" in path.name
    predictor = 3 if arr.dtype == np.float32 else (1 if is_label else 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=arr.dtype.name,
                   crs=CRS.from_epsg(2154), transform=from_origin(left, top, res, res),
                   compress="deflate", zlevel=6, predictor=predictor, tiled=True,
                   blockxsize=block, blockysize=block)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)


def write_gpkg(path: Path, table: pd.DataFrame, geometry: list) -> None:
    """One-layer GeoPackage (layer = file stem) with patch footprints in EPSG:2154."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    gdf = gpd.GeoDataFrame(table.reset_index(drop=True), geometry=geometry, crs="EPSG:2154")
    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": GPKG_DATE})
    try:
        gdf.to_file(path, driver="GPKG", layer=path.stem, engine="pyogrio")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})


def split_csv_text(patch_ids: list[str], modalities: list[str]) -> str:
    """Split CSV exactly as the official toy files: comma, LF, sorted rows, `../` paths."""
    cols = sorted(modalities)
    lines = ["patch_id," + ",".join(cols)]
    lines += [
        pid + "," + ",".join("../" + rel_path(pid, m) for m in cols) for pid in sorted(patch_ids)
    ]
    return "\n".join(lines) + "\n"


# -- the sample ---------------------------------------------------------------------------------
def _prepare_root(root: Path) -> list[str]:
    """Refuse foreign data; return the files listed by a previous sample's marker."""
    if root.exists() and not root.is_dir():
        raise DataError("sample output is not a folder", path=root)
    entries = sorted(root.iterdir()) if root.exists() else []
    if not entries:
        return []
    marker = root / MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        assert info.get("generator") == "flairlab.data.sample"
    except (OSError, ValueError, AssertionError):
        raise DataError(
            "refusing to write a sample into a non-empty folder that is not a flairlab sample",
            path=root, expected=f"an empty folder or a previous sample (with {MARKER})",
            found=f"{len(entries)} entries, e.g. {entries[0].name!r}",
        ) from None  # fmt: skip
    return list(info.get("files", []))


def _write_marker(root: Path, info: dict) -> None:
    (root / MARKER).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _remove_stale(root: Path, old: list[str], new: set[str]) -> None:
    """Delete files of a previous sample that the new one does not rewrite (and empty folders)."""
    for rel in sorted(set(old) - new):
        p = (root / rel).resolve()
        if root.resolve() in p.parents and p.is_file():
            p.unlink()
            for parent in p.parents:
                if parent == root.resolve() or any(parent.iterdir()):
                    break
                parent.rmdir()


def make_sample(
    out_dir: str | Path,
    n_patches: int | None = DEFAULT_N_PATCHES,
    seed: int = 0,
    all_toy: bool = False,
    progress: bool = True,
    zone: int = 0,
    workers: int | None = None,
    store: str | Path | None = None,
) -> Path:
    """Write the synthetic sample into `out_dir` and return it (`n_patches=None`: all 250 toy
    patches; `zone`: side of the block of extra patches, 0 for none; `workers` processes render
    the patches, default: the idle CPUs, at most 8 (`default_workers`); `store`: also pack it into
    this training store (`flairlab.data.pack`; resumed if there)).

    Refuses a non-empty folder that is not a previous flairlab sample (DataError); a previous
    sample is regenerated in place. The same seed gives bit-identical files, and a patch's files
    do not depend on which other patches are written (nor on `workers`).
    """
    cat = load_catalog()
    toy = load_toy_splits()
    n = len(toy) if all_toy or n_patches is None else int(n_patches)
    if not 1 <= n <= len(toy):
        raise ValueError(f"n_patches must be in 1..{len(toy)}, got {n_patches}")
    extra = zone_patches(toy, int(zone))
    root = Path(out_dir)
    old_files = _prepare_root(root)
    patches = select_patches(toy, n)
    mods = cat.modality_names
    files = [rel_path(p, m) for p in [*patches, *extra.index] for m in mods]
    meta = [f"{cat.metadata_dir}/{f}" for f in (*TS_DATES.values(), *MONO_DATES.values())]
    files += [*meta, f"{cat.metadata_dir}/{cat.split_gpkg}"] + [TOY_CSV.format(s) for s in SPLITS]
    files += [EXTRA_CSV] if len(extra) else []
    foreign = [f for f in files if (root / f).exists() and f not in set(old_files)]
    if foreign:  # e.g. real FLAIR-HUB files copied into a sample folder: never overwritten
        raise DataError(
            "refusing to overwrite a file that the previous sample did not write",
            path=root / foreign[0],
        )
    root.mkdir(parents=True, exist_ok=True)
    info = {"generator": "flairlab.data.sample", "format_version": 1, "seed": seed,
            "n_patches": n, "patches": patches, "files": sorted(files),
            "zone": int(zone), "extra_patches": list(extra.index),
            "complete": False}  # fmt: skip
    _write_marker(root, info)
    _remove_stale(root, old_files, set(files))
    table = pd.concat([toy, extra])  # extras sit in a toy ROI: ROI origins do not change
    everything = [*patches, *extra.index]
    _write_patches(root, cat, table, everything, seed, progress, workers)
    _write_metadata(root, cat, table, everything, seed)
    _write_marker(root, {**info, "complete": True})
    if store is not None:
        from flairlab.data.pack import pack

        print(pack(root, store, overwrite=True, progress=progress))
    return root


def _scenes(toy: pd.DataFrame, patches: list[str], seed: int) -> dict:
    """One scene per DOMAIN_ROI; origins depend on the full toy ROI list, not on the subset."""
    scenes = {}
    for domain in sorted({toy.at[p, "domain"] for p in patches}):
        origins = roi_origins(seed, domain, sorted(set(toy.loc[toy["domain"] == domain, "roi"])))
        for roi in sorted({toy.at[p, "roi"] for p in patches if toy.at[p, "domain"] == domain}):
            scenes[(domain, roi)] = make_scene(seed, domain, roi, origins[roi])
    return scenes


def _render_patch_files(root: Path, cat: Catalog, pid: str, sc, row: int, col: int) -> str:
    """Render one patch of scene `sc` and write its ten GeoTIFFs (a process-pool task)."""
    arrays = render_patch(sc, row, col)
    left, _, _, top = patch_bounds(sc, row, col)
    for name in cat.modality_names:
        m, arr = cat.modality(name), arrays[name]
        bands_ok = arr.shape[0] % m.n_bands == 0 if m.time_series else arr.shape[0] == m.n_bands
        if arr.dtype != np.dtype(m.dtype) or arr.shape[1:] != (m.size_px,) * 2 or not bands_ok:
            raise RuntimeError(f"synthetic {name} array {arr.shape} {arr.dtype} breaks the catalog")
        write_geotiff(root / rel_path(pid, name), arr, left, top, m.resolution_m)
    return pid


def default_workers(n_tasks: int) -> int:
    """Processes for `n_tasks` independent CPU-bound tasks: the CPUs this process may use that
    other jobs leave idle (1-minute load average), at most 8 — a busy machine gets 1 (on 2
    shared cores at load 5, 2 processes cost 15 % more CPU and saved no time:
    `benchmarks/bench_first_picture.py`)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    idle = (cpus or 1) - int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else cpus or 1
    return max(1, min(idle, 8, n_tasks))


def _write_patches(root: Path, cat: Catalog, toy: pd.DataFrame, patches, seed, progress,
                   workers: int | None = None) -> None:  # fmt: skip
    scenes = _scenes(toy, patches, seed)
    tasks = [(pid, scenes[(toy.at[pid, "domain"], toy.at[pid, "roi"])],
              int(toy.at[pid, "row"]), int(toy.at[pid, "col"])) for pid in patches]  # fmt: skip
    n_workers = default_workers(len(tasks)) if workers is None else max(1, int(workers))
    bar = tqdm(total=len(tasks), desc="flairlab sample", unit="patch", disable=not progress)
    with bar:
        if n_workers == 1:
            for pid, sc, row, col in tasks:
                _render_patch_files(root, cat, pid, sc, row, col)
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=n_workers) as ex:
            futures = [ex.submit(_render_patch_files, root, cat, *t) for t in tasks]
            for fut in as_completed(futures):
                fut.result()  # re-raises a worker's error
                bar.update()


def _write_metadata(root: Path, cat: Catalog, toy: pd.DataFrame, patches, seed) -> None:
    scenes = _scenes(toy, patches, seed)
    sc_of = [scenes[(toy.at[p, "domain"], toy.at[p, "roi"])] for p in patches]
    geoms = [
        box(*patch_bounds(sc, int(toy.at[p, "row"]), int(toy.at[p, "col"])))
        for p, sc in zip(patches, sc_of, strict=True)
    ]
    mtd = root / cat.metadata_dir
    attr = {"SENTINEL2_TS": "s2", "SENTINEL1-ASC_TS": "s1_asc", "SENTINEL1-DESC_TS": "s1_desc"}
    for name, fname in TS_DATES.items():
        col = []
        for sc in sc_of:
            days = sc.dates.yyyymmdd(getattr(sc.dates, attr[name]))
            col.append(json.dumps({str(i + 1): d for i, d in enumerate(days)}))
        write_gpkg(
            mtd / fname, pd.DataFrame({"patch_id": patches, "acquisition_dates": col}), geoms
        )
    for kind, fname in MONO_DATES.items():
        if kind == "rlt":
            col = [sc.dates.rlt for sc in sc_of]
        else:
            col = [sc.dates.yyyymmdd(getattr(sc.dates, kind))[0] for sc in sc_of]
        write_gpkg(mtd / fname, pd.DataFrame({"patch_id": patches, "date": col}), geoms)
    toy_only = [i for i, p in enumerate(patches) if toy.at[p, "split"] in SPLITS]
    splits = [toy.at[patches[i], "split"].lower() for i in toy_only]
    write_gpkg(  # the toy split file: extra patches are in no toy split
        mtd / cat.split_gpkg,
        pd.DataFrame({"patch_id": [patches[i] for i in toy_only], "split_toy": splits}),
        [geoms[i] for i in toy_only],
    )
    extra = [p for p in patches if toy.at[p, "split"] == EXTRA_SPLIT]
    if extra:
        (root / EXTRA_CSV).write_bytes(split_csv_text(extra, cat.modality_names).encode("utf-8"))
    for split in SPLITS:
        ids = [p for p in patches if toy.at[p, "split"] == split]
        text = split_csv_text(ids, cat.modality_names)
        official = toy.loc[ids, "line"].tolist() if ids else []
        header = toy.loc[toy["split"] == split, "header"].iloc[0]
        if text.splitlines() != [header, *sorted(official)]:
            raise RuntimeError(f"generated {TOY_CSV.format(split)} differs from the official rows")
        (root / TOY_CSV.format(split)).write_bytes(text.encode("utf-8"))


def sample_is_complete(root: str | Path) -> bool:
    """True when `root` holds a finished flairlab sample."""
    try:
        info = json.loads((Path(root) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("complete") is True


def ensure_sample(root: str | Path | None = None, n_patches: int | None = DEFAULT_N_PATCHES,
                  seed: int = 0, progress: bool = True,
                  zone: int = DEFAULT_ZONE) -> Path:  # fmt: skip
    """The catalog's sample root (or `root`), generated first when missing or unfinished. A
    finished sample written before zones existed gets its `zone` (same patches, seed)."""
    root = Path(root) if root is not None else load_catalog().source_root("sample")
    if not sample_is_complete(root):
        make_sample(root, n_patches=n_patches, seed=seed, progress=progress, zone=zone)
    elif zone:
        info = json.loads((root / MARKER).read_text(encoding="utf-8"))
        if "zone" not in info:
            make_sample(root, n_patches=info["n_patches"], seed=info["seed"], progress=progress,
                        zone=zone)  # fmt: skip
    return root


# -- command line -------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else load_catalog().source_root("sample")
    try:
        root = make_sample(out, n_patches=args.patches, seed=args.seed, all_toy=args.all_toy,
                           progress=not args.quiet, zone=args.zone, workers=args.workers,
                           store=args.store or None)  # fmt: skip
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    info = json.loads((root / MARKER).read_text(encoding="utf-8"))
    extra = len(info.get("extra_patches", []))
    zone = f" + {extra} extra patches ({args.zone} × {args.zone} zone)" if extra else ""
    print(f"wrote {info['n_patches']} patches{zone} ({size / 1e6:.1f} MB) to {root}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write the synthetic FLAIR-HUB sample (exact on-disk format)")
    p.add_argument("out", nargs="?", help="output folder (default: the catalog's sample source)")
    p.add_argument("--patches", type=int, default=DEFAULT_N_PATCHES,
                   help=f"number of toy patches (default {DEFAULT_N_PATCHES})")  # fmt: skip
    p.add_argument("--all-toy", action="store_true", help="all 250 patches of the official toy set")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--zone", type=int, default=DEFAULT_ZONE,
                   help="side of a contiguous block of extra (non-toy) patches in "
                   f"{ZONE_ORIGIN[0]}_{ZONE_ORIGIN[1]}, 0 for none (default {DEFAULT_ZONE})")
    p.add_argument("--workers", type=int, default=None,
                   help="processes rendering patches (default: idle CPUs, at most 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--store", default="", help="also pack the sample into this training store")
    p.set_defaults(func=_run)
