"""Band groups from data: hierarchical clustering of band correlations, vs MAESTRO's fixed groups.

MAESTRO normalises reconstruction targets per group of strongly correlated bands (aerial
{NIR}{R,G,B}; S2 {B02–B05}{B06–B8A}{B11,B12}; S1 {VV}{VH}). `cluster_bands` finds such groups in
a correlation matrix: average-linkage clustering on the distance `1 − |r|`, cut so that bands in a
group have an average absolute correlation of at least `min_corr`.

The chosen groups and per-band normalisation statistics go to a *norm file* that pretraining
reads (`save_norm_file` / `load_norm_file`). Format (YAML, or JSON when the name ends in .json):

    format: flairlab-norm
    version: 1
    source: sample            # free-form provenance
    n_patches: 12
    modalities:
      SENTINEL1-ASC_TS:
        bands: [VV, VH]       # catalog band names, file order
        space: db             # statistics of: raw values ("none") or 10·log10(x) ("db")
        mean: [-12.1, -18.3]  # per band, in `space`
        std: [3.2, 3.5]
        count: [123456, 123456]
        scaled_mean: [...]    # the same statistics after the catalog scaling the model applies
        scaled_std: [...]     # (x / divide_by, or ln(max(x, floor)) / divide_by)
        band_groups: [[VV], [VH]]          # groups to use (names)
        maestro_band_groups: [[VV], [VH]]  # the catalog's fixed groups, for reference
        min_corr: 0.9
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError
from flairlab.data.results import write_json_atomic

NORM_FORMAT, NORM_VERSION = "flairlab-norm", 1


def cluster_bands(
    corr: np.ndarray, band_names: list[str], min_corr: float = 0.9, method: str = "average"
) -> list[list[str]]:
    """Groups of bands (names, file order; groups ordered by their first band).

    `corr` is `(C, C)`; NaN entries (constant bands) count as uncorrelated.
    """
    corr = np.asarray(corr, np.float64)
    C = len(band_names)
    if corr.shape != (C, C):
        raise ValueError(f"corr has shape {corr.shape}, expected ({C}, {C})")
    if C == 1:
        return [list(band_names)]
    dist = 1.0 - np.abs(np.nan_to_num(corr, nan=0.0))
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0.0)
    Z = linkage(squareform(np.clip(dist, 0, 1), checks=False), method=method)
    labels = fcluster(Z, t=1.0 - min_corr, criterion="distance")
    groups: dict[int, list[str]] = {}
    for name, lab in zip(band_names, labels, strict=True):
        groups.setdefault(int(lab), []).append(name)
    return sorted(groups.values(), key=lambda g: band_names.index(g[0]))


def rand_index(a: list[list[str]], b: list[list[str]]) -> float:
    """Share of band pairs on which two groupings agree (together / apart); 1.0 = identical."""
    la = {x: i for i, g in enumerate(a) for x in g}
    lb = {x: i for i, g in enumerate(b) for x in g}
    names = sorted(la)
    if sorted(lb) != names:
        raise ValueError("groupings cover different bands")
    pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1 :]]
    if not pairs:
        return 1.0
    return sum((la[x] == la[y]) == (lb[x] == lb[y]) for x, y in pairs) / len(pairs)


def _fmt(groups: list[list[str]]) -> str:
    return " ".join("{" + ",".join(g) + "}" for g in groups)


def discover_groups(
    stats: Any,
    min_corr: float = 0.9,
    modalities: list[str] | None = None,
    catalog: Catalog | None = None,
) -> dict[str, list[list[str]]]:
    """Groups per modality from `DatasetStats` (its `all` co-moments)."""
    cat = catalog or load_catalog()
    out = {}
    for mod, table in stats.bands.items():
        if modalities is not None and mod not in modalities:
            continue
        st = table.get("all")
        if st is None or not st.comoments or st.co_n == 0:
            continue
        out[mod] = cluster_bands(st.corr(), cat.modality(mod).band_names, min_corr)
    return out


def compare_groups(
    discovered: dict[str, list[list[str]]], catalog: Catalog | None = None
) -> pd.DataFrame:
    """Side by side: modality, discovered groups, MAESTRO's groups, same?, Rand index."""
    cat = catalog or load_catalog()
    rows = []
    for mod, groups in discovered.items():
        m = cat.modality(mod)
        fixed = m.band_groups or [m.band_names]
        rows.append(
            dict(
                modality=mod,
                discovered=_fmt(groups),
                maestro=_fmt(fixed),
                same=sorted(map(sorted, groups)) == sorted(map(sorted, fixed)),
                rand_index=rand_index(groups, fixed),
            )
        )
    return pd.DataFrame(rows, columns=["modality", "discovered", "maestro", "same", "rand_index"])


def _scaled(mean: np.ndarray, std: np.ndarray, space: str, scaling: Any) -> tuple[list, list]:
    """Statistics after the model-side scaling (exact: both maps are affine in `space`)."""
    div = scaling.divide_by if scaling is not None else 1.0
    if space == "db":
        if scaling is None or not scaling.log:
            return [None] * len(mean), [None] * len(std)
        k = math.log(10) / 10 / div  # ln(x) = dB · ln(10) / 10
        return list(mean * k), list(std * k)
    if scaling is not None and scaling.log:
        return [None] * len(mean), [None] * len(std)  # ln of raw values: not affine
    return list(mean / div), list(std / div)


def norm_entries(
    stats: Any,
    groups: dict[str, list[list[str]]] | None = None,
    min_corr: float | None = None,
    catalog: Catalog | None = None,
) -> dict[str, dict]:
    """Per-modality norm-file entries from `DatasetStats` (group `all`)."""
    cat = catalog or load_catalog()
    out = {}
    for mod, table in stats.bands.items():
        st, m = table.get("all"), cat.modality(mod)
        if st is None:
            continue
        mean, std = st.mean[0], st.std()[0]
        smean, sstd = _scaled(mean, std, st.spec.transform, m.scaling)
        out[mod] = dict(
            bands=m.band_names,
            space=st.spec.transform,
            mean=list(mean),
            std=list(std),
            count=[int(c) for c in st.count[0]],
            scaled_mean=smean,
            scaled_std=sstd,
            band_groups=(groups or {}).get(mod, m.band_groups or [m.band_names]),
            maestro_band_groups=m.band_groups or [m.band_names],
            min_corr=min_corr,
        )
    return out


def norm_table(entries: dict[str, dict]) -> pd.DataFrame:
    """`norm_entries` as one row per modality and band: space, mean, std (statistics space),
    scaled mean / std (what the model sees) and the discovered group the band belongs to."""
    rows = []
    for mod, e in entries.items():
        group_of = {b: "{" + ",".join(g) + "}" for g in e["band_groups"] for b in g}
        for i, band in enumerate(e["bands"]):
            rows.append(dict(
                modality=mod, band=band, space=e["space"], mean=e["mean"][i], std=e["std"][i],
                scaled_mean=e["scaled_mean"][i], scaled_std=e["scaled_std"][i],
                group=group_of.get(band, ""),
            ))  # fmt: skip
    return pd.DataFrame(rows).set_index(["modality", "band"])


def save_norm_file(
    path: str | Path,
    modalities: dict[str, dict],
    *,
    source: str = "",
    n_patches: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a norm file (format in the module docstring); refuses to overwrite by default."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataError("norm file exists (pass overwrite=True)", path=path)
    doc = dict(
        format=NORM_FORMAT,
        version=NORM_VERSION,
        source=source,
        n_patches=int(n_patches),
        modalities=modalities,
    )
    _validate(json.loads(json.dumps(doc, default=float)), path)
    if path.suffix.lower() == ".json":
        return write_json_atomic(path, doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(doc, default=float))
    path.write_text(
        yaml.safe_dump(clean, sort_keys=False, width=100, default_flow_style=None), encoding="utf-8"
    )
    return path


def load_norm_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a norm file; DataError naming the file and field when it is malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError("norm file not found", path=path)
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise DataError(
            f"norm file is not valid {path.suffix[1:] or 'YAML'}: {err}", path=path
        ) from None
    _validate(doc, path)
    return doc


def group_indices(groups: list[list[str]], band_order: list[str]) -> list[list[int]]:
    """Band groups (names) as 0-based indices into `band_order` (e.g. a model's channel order)."""
    missing = sorted({b for g in groups for b in g} - set(band_order))
    if missing:
        raise DataError(
            "band groups name bands missing from the band order", expected=band_order, found=missing
        )
    return [[band_order.index(b) for b in g] for g in groups]


def _validate(doc: Any, path: Path) -> None:
    if not isinstance(doc, dict) or doc.get("format") != NORM_FORMAT:
        raise DataError(
            "format",
            path=path,
            expected=NORM_FORMAT,
            found=doc.get("format") if isinstance(doc, dict) else type(doc).__name__,
        )
    if doc.get("version") != NORM_VERSION:
        raise DataError("version", path=path, expected=NORM_VERSION, found=doc.get("version"))
    mods = doc.get("modalities")
    if not isinstance(mods, dict):
        raise DataError("modalities must be a mapping", path=path)
    for mod, e in mods.items():
        bands = e.get("bands") if isinstance(e, dict) else None
        if not isinstance(bands, list) or not bands:
            raise DataError(
                f"modalities.{mod}.bands", path=path, expected="list of band names", found=bands
            )
        if e.get("space") not in ("none", "db"):
            raise DataError(
                f"modalities.{mod}.space", path=path, expected="none|db", found=e.get("space")
            )
        for key in ("mean", "std", "scaled_mean", "scaled_std"):
            v = e.get(key)
            if not isinstance(v, list) or len(v) != len(bands):
                raise DataError(
                    f"modalities.{mod}.{key}", path=path, expected=f"{len(bands)} values", found=v
                )
        flat = [b for g in e.get("band_groups") or [] for b in g]
        if sorted(flat) != sorted(bands):
            raise DataError(
                f"modalities.{mod}.band_groups must use every band once",
                path=path,
                expected=bands,
                found=e.get("band_groups"),
            )


def _run_cli(args: Any) -> int:
    from flairlab.explore.scale import compute_stats, select_patches

    out = Path(args.out)
    index = select_patches(args.source, split=args.split or None, n_patches=args.n_patches)
    opts = dict(clouds=False, profiles=False, class_counts=False, progress=not args.quiet)
    if args.scheduler:
        from dask.distributed import Client

        with Client(args.scheduler) as client:
            stats = compute_stats(index, executor=client.get_executor(), **opts)
    else:
        stats = compute_stats(index, workers=args.workers, **opts)
    groups = discover_groups(stats, args.min_corr)
    norm = save_norm_file(
        out / args.norm_file,
        norm_entries(stats, groups, args.min_corr),
        source=str(args.source),
        n_patches=stats.n_patches,
        overwrite=args.overwrite,
    )
    stats.summary().to_csv(out / "band_summary.csv", index=False)
    table = compare_groups(groups)
    table.to_csv(out / "band_groups.csv", index=False)
    print(table.to_string(index=False))
    print(f"{stats.n_patches} patches -> {norm}")
    return 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser(
        "stats", help="band statistics, band groups and the norm file pretraining reads"
    )
    p.add_argument("source", help="catalog source name (sample, flairhub) or a dataset folder")
    p.add_argument("--out", required=True, help="output folder (norm file, band_summary.csv, ...)")
    p.add_argument("--split", default="train", help="split to use ('' for all; default train)")
    p.add_argument("--n-patches", type=int, default=None, help="random subset of patches")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--scheduler", help="dask scheduler address: run on that cluster instead")
    p.add_argument("--min-corr", type=float, default=0.9, help="band-group threshold on |r|")
    p.add_argument("--norm-file", default="norm_stats.yaml", help="file name (.yaml or .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing norm file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_cli)
