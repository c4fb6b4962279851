"""Inference over patches and whole zones, written as georeferenced Cloud-Optimized GeoTIFFs.

Patch probabilities are mosaicked per zone (every selected patch of one `DOMAIN_ROI`) on the
Lambert-93 grid of the patches' GeoTIFFs by `flairlab.maps.mosaic` (flat or raised-cosine blending
where patches overlap; nodata 255 where nothing was predicted), one connected group of patches at
a time, so memory and disk follow the patches predicted, not the zone's bounding box.

Before anything is predicted, every patch's files (georeference, label, model inputs) are checked
against the catalog (CRS, size, footprint) and against each other (same ground): a shifted or
swapped raster is a DataError naming that file. `predict` refuses a non-empty output folder
unless `overwrite=True` (`--overwrite`).

Outputs per zone (`<out>/<DOMAIN_ROI>_*.tif`, EPSG of the patches, COG layout, deflate):
`prediction` (uint8 class ids + the nomenclature's colour table), optional `probabilities`
(uint8, one band per class, value = round(250·p), nodata 255), and, when labels exist, `truth`
(the label mosaic, same colours) and `error` (0 correct, 1 wrong, 255 not evaluated).

The model side is a protocol: `predict_fn(batch) -> Tensor (B, K, H, W)` (logits by default,
`logits=False` for probabilities), with `batch["patch_id"]` naming the B patches.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError
from flairlab.data.index import parse_patch_id
from flairlab.data.reader import check_footprints, validate_header
from flairlab.data.results import write_json_atomic
from flairlab.maps.mosaic import (
    ERROR_COLORS,
    NODATA,
    PROB_SCALE,
    PatchGeo,
    SparseRaster,
    ZoneMosaic,
    error_map,
    metrics_of_confusion,
    patch_groups,
    read_label,
    read_patch_geo,
    zone_confusion,
    zone_grid,
)

PredictFn = Callable[[dict[str, Any]], torch.Tensor]
LABEL_MODALITY = {"cosia": "AERIAL_LABEL-COSIA", "lpis_l1": "ALL_LABEL-LPIS"}


# -- inference -------------------------------------------------------------------------------------
def iter_predictions(
    predict_fn: PredictFn, batches: Iterable[dict[str, Any]], *, logits: bool = True
) -> Iterator[tuple[str, np.ndarray]]:
    """Run `predict_fn` on each batch; yield `(patch_id, probabilities (K, H, W) float32)`."""
    for batch in batches:
        pids = list(batch["patch_id"])
        with torch.inference_mode():
            out = predict_fn(batch)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != len(pids):
            found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DataError(
                "predict_fn output", expected=f"Tensor ({len(pids)}, K, H, W)", found=found
            )
        out = out.detach().float()
        probs = torch.softmax(out, dim=1) if logits else out
        if not logits and (probs.min() < -1e-4 or probs.max() > 1 + 1e-4):
            raise DataError(
                "predict_fn probabilities (logits=False) outside [0, 1]",
                found=(float(probs.min()), float(probs.max())),
            )
        yield from zip(pids, probs.cpu().numpy(), strict=True)


@dataclass
class ZoneResult:
    """What `predict_zone` wrote for one zone (paths are None when not written)."""

    zone: str
    patch_ids: list[str]
    prediction: Path
    probabilities: Path | None = None
    truth: Path | None = None
    error: Path | None = None
    aerial: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    nomenclature: str = "cosia"


def predict_zone(
    predict_fn: PredictFn,
    batches: Iterable[dict[str, Any]],
    geos: Mapping[str, PatchGeo],
    out_dir: str | Path,
    zone: str,
    *,
    labels: Mapping[str, str | Path] | None = None,
    nomenclature: str = "cosia",
    blend: str = "average",
    logits: bool = True,
    probabilities: bool = False,
    catalog: Catalog | None = None,
) -> ZoneResult:
    """Predict every patch of `geos` from `batches`, mosaic them and write the zone's COGs.

    Each connected group of patches (`patch_groups`) is mosaicked on its own grid and written
    into the zone rasters as soon as its last patch is predicted; batches ordered group by group
    (as `predict` does) keep one group in memory at a time."""
    cat = catalog or load_catalog()
    nom = cat.nomenclature(nomenclature)
    grid, out_dir = zone_grid(geos), Path(out_dir)
    groups = patch_groups(grid)
    group_of = {pid: g for g, pids in enumerate(groups) for pid in pids}
    todo = {g: set(pids) for g, pids in enumerate(groups)}
    live: dict[int, tuple[ZoneMosaic, tuple[int, int]]] = {}
    outs: dict[str, SparseRaster] = {}
    cm = np.zeros((nom.n_classes, nom.n_classes), np.int64)
    labels = dict(labels or {})

    def raster(kind: str, count: int = 1, colormap: Mapping | None = None) -> SparseRaster:
        return SparseRaster(out_dir / f"{zone}_{kind}.tif", count=count, dtype="uint8",
                            width=grid.width, height=grid.height, transform=grid.transform,
                            crs=grid.crs, colormap=colormap)  # fmt: skip

    def flush(g: int) -> None:  # a finished group: classes, probabilities, truth, errors
        nonlocal cm
        mosaic, (r0, c0) = live.pop(g)
        pred = mosaic.classes()
        outs["prediction"].write(pred, r0, c0)
        if probabilities:
            outs["probabilities"].write(mosaic.probabilities_uint8(), r0, c0)
        mosaic.close()
        if labels:
            truth = np.full(pred.shape, NODATA, np.uint8)
            for pid in groups[g]:
                if pid in labels:
                    truth[mosaic.grid.window(pid)] = read_label(labels[pid], nomenclature, cat)
            outs["truth"].write(truth, r0, c0)
            outs["error"].write(error_map(pred, truth, nom.ignored_ids), r0, c0)
            cm += zone_confusion(pred, truth, nom)

    try:
        for pid, p in iter_predictions(predict_fn, batches, logits=logits):
            if not outs:
                if p.shape[0] > nom.n_classes:
                    raise DataError(
                        f"predict_fn returns {p.shape[0]} classes",
                        expected=f"<= {nom.n_classes} ({nomenclature})",
                        found=p.shape[0],
                    )
                n_classes = p.shape[0]
                outs["prediction"] = raster("prediction", colormap=nom.colors())
                if probabilities:
                    outs["probabilities"] = raster("probabilities", n_classes)
                if labels:
                    outs["truth"] = raster("truth", colormap=nom.colors())
                    outs["error"] = raster("error", colormap=ERROR_COLORS)
            if pid not in group_of:
                raise DataError(f"prediction for patch {pid}, which is not in zone {zone}",
                                expected=sorted(group_of)[:3], found=pid)  # fmt: skip
            g = group_of[pid]
            if g not in live:
                if not todo[g]:
                    raise DataError(f"patch {pid} predicted twice", expected="once", found=2)
                sub, origin = grid.subgrid(groups[g])
                live[g] = (ZoneMosaic(sub, n_classes, blend, workdir=out_dir), origin)
            live[g][0].add(pid, p)
            todo[g].discard(pid)
            if not todo[g]:
                flush(g)
        missing = sorted(pid for g in todo.values() for pid in g)
        if missing or not outs:
            raise DataError(
                f"zone {zone}: no prediction for {len(missing) or len(geos)} patch(es)",
                expected="every patch of the zone",
                found=(missing or sorted(geos))[:5],
            )
        tags = dict(zone=zone, nomenclature=nomenclature, blend=blend, patches=len(geos))
        res = ZoneResult(zone, sorted(geos), outs["prediction"].finish(
            descriptions=[f"{nomenclature} class"], resampling="mode", tags=tags),
            nomenclature=nomenclature)  # fmt: skip
        if probabilities:
            res.probabilities = outs["probabilities"].finish(
                resampling="average", descriptions=nom.names[:n_classes],
                tags={**tags, "scale": f"1/{PROB_SCALE:g}"},
            )  # fmt: skip
        if labels:
            res.truth = outs["truth"].finish(resampling="mode", tags=tags,
                                             descriptions=[f"{nomenclature} label"])  # fmt: skip
            res.error = outs["error"].finish(
                tags=tags, descriptions=["0 correct, 1 wrong, 255 not evaluated"]
            )
            res.metrics = metrics_of_confusion(cm, nom)
    except BaseException:
        for out in outs.values():
            out.abort()
        raise
    finally:
        for mosaic, _ in live.values():
            mosaic.close()
    return res


# -- datasets, models, CLI ------------------------------------------------------------------------
def select_patches(
    index: Any, *, zone: str = "", patches: str | Sequence[str] = "", split: str = ""
) -> list[str]:
    """Patch ids from an index: an explicit (comma-separated) list, else every patch of the
    (comma-separated) `DOMAIN_ROI` zones, optionally restricted to a split."""
    if isinstance(patches, str):
        patches = [p.strip() for p in patches.split(",") if p.strip()]
    if patches:
        unknown = [p for p in patches if p not in index.index]
        if unknown:
            raise DataError(
                "patch ids not in the dataset", expected="ids of the index", found=unknown[:5]
            )
        return list(dict.fromkeys(patches))
    df = index
    if split:
        if "split" not in df.columns:
            raise DataError("the index has no split column", expected=split, found="none")
        df = df[df["split"] == split]
    if zone:
        keys = df["domain"].astype(str) + "_" + df["roi"].astype(str)
        zones = [z.strip() for z in zone.split(",") if z.strip()]
        df = df[keys.isin(zones)]
        if df.empty:
            raise DataError(
                "zone has no patches", expected="DOMAIN_ROI, e.g. D006-2020_FF-S1-14", found=zone
            )
    elif not split:
        raise DataError("nothing selected", expected="zone, patches or split", found="none")
    return list(df.index)


def check_patch_files(
    pid: str, row: Any, used: Sequence[str], catalog: Catalog, witnesses: Sequence[str] = ()
) -> None:
    """The files of one patch that a prediction combines (`used`: georeference, inputs, label;
    headers only) against the catalog (CRS, size, footprint), then against each other
    (`check_footprints`); the patch's other files (`witnesses`) only help decide which footprint
    is right. DataError naming the faulty file."""
    infos = {}
    for col in dict.fromkeys([*used, *witnesses]):
        if col not in row.index or _isna(row[col]):
            continue
        try:
            infos[col] = validate_header(row[col], col, catalog)
        except DataError:
            if col in used:
                raise
    check_footprints(pid, infos, only=[c for c in used if c in infos])


def group_by_zone(patch_ids: Iterable[str]) -> dict[str, list[str]]:
    """`{DOMAIN_ROI: [patch ids]}` (ROIs are only unique per domain, spec §12)."""
    zones: dict[str, list[str]] = {}
    for pid in patch_ids:
        zones.setdefault(parse_patch_id(pid).roi_key, []).append(pid)
    return zones


def dataset_batches(
    root: str | Path,
    patch_ids: list[str],
    *,
    modalities: Sequence[str],
    batch_size: int = 4,
    num_workers: int = 0,
    index: Any = None,
    catalog: Catalog | None = None,
    n_dates: dict[str, int] | None = None,
) -> Iterable[dict[str, Any]]:
    """Evaluation batches (no flips, deterministic dates) from `flairlab.data.dataset`;
    `index`: the dataset's patch index when the caller has it (not rebuilt); `n_dates`: dates
    per series (default FLAIR-HUB's) — a model's own, so that its date bins are the ones it was
    trained on."""
    from torch.utils.data import DataLoader

    from flairlab.data.dataset import FlairHubDataset, collate

    ds = FlairHubDataset(
        root, split=None, modalities=tuple(modalities), targets=(), train=False,
        patch_ids=patch_ids, index=index, catalog=catalog, n_dates=n_dates,
    )  # fmt: skip
    return DataLoader(
        ds, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers
    )


def predict(
    predict_fn: PredictFn,
    root: str | Path,
    patch_ids: Sequence[str],
    out_dir: str | Path,
    *,
    modalities: Sequence[str] = ("aerial",),
    batch_size: int = 4,
    nomenclature: str = "cosia",
    blend: str = "average",
    logits: bool = True,
    probabilities: bool = False,
    batches_for: Callable[[list[str]], Iterable[dict[str, Any]]] | None = None,
    catalog: Catalog | None = None,
    index: Any = None,
    overwrite: bool = False,
) -> list[ZoneResult]:
    """Predict `patch_ids` of the dataset at `root` (folder or catalog source name), one mosaic
    per zone; writes the COGs and `<out_dir>/predictions.json`. Georeferencing comes from each
    patch's AERIAL_RGBI file (else its label file); truth/error when labels exist. `index`:
    the dataset's patch index if the caller built it (the root is resolved and indexed once).
    `out_dir` must be empty or new unless `overwrite`. Every file used is checked first
    (`check_patch_files`)."""
    from flairlab.data.dataset import dataset_index
    from flairlab.data.results import start_run

    cat = catalog or load_catalog()
    if isinstance(root, str) and root in cat.sources:
        root = cat.source_root(root)
    root = Path(root)
    if index is None:
        index = dataset_index(root, cat)
    select_patches(index, patches=list(patch_ids))  # unknown ids -> DataError
    label_col = LABEL_MODALITY.get(nomenclature)
    zones = group_by_zone(patch_ids)
    inputs = [cat.modality(m).name for m in modalities] if batches_for is None else []
    used = ["AERIAL_RGBI", *inputs, *([label_col] if label_col else [])]
    geo_by_zone = {}
    for pids in zones.values():  # all checks before anything is written
        rows = index.loc[pids]
        geo_paths = rows["AERIAL_RGBI"].fillna(
            rows[label_col] if label_col else rows["AERIAL_RGBI"]
        )
        if geo_paths.isna().any():
            raise DataError(
                f"patch {geo_paths.index[geo_paths.isna()][0]} has no AERIAL_RGBI or "
                "label file to georeference it",
                path=root,
            )
        for pid in pids:
            check_patch_files(pid, rows.loc[pid], used, cat, witnesses=cat.modality_names)
        geo_by_zone[tuple(pids)] = {pid: read_patch_geo(p) for pid, p in geo_paths.items()}
    start_run(out_dir, overwrite)
    results = []
    for zone, pids in tqdm(zones.items(), desc="zones", unit="zone"):
        rows = index.loc[pids]
        geos = geo_by_zone[tuple(pids)]
        pids = [p for group in patch_groups(zone_grid(geos)) for p in group]  # group by group
        labels = {p: v for p, v in rows[label_col].items() if not _isna(v)} if label_col else {}
        batches = (
            batches_for(pids)
            if batches_for is not None
            else dataset_batches(root, pids, modalities=modalities, batch_size=batch_size,
                                 index=index, catalog=cat,
                                 n_dates=getattr(predict_fn, "n_dates", None))
        )
        res = predict_zone(
            predict_fn,
            tqdm(batches, desc=zone, leave=False),
            geos,
            out_dir,
            zone,
            labels=labels,
            nomenclature=nomenclature,
            blend=blend,
            logits=logits,
            probabilities=probabilities,
            catalog=cat,
        )
        res.aerial = [Path(p) for p in rows["AERIAL_RGBI"] if not _isna(p)]
        results.append(res)
    write_json_atomic(
        Path(out_dir) / "predictions.json",
        {
            r.zone: {
                "patch_ids": r.patch_ids,
                "prediction": r.prediction,
                "probabilities": r.probabilities,
                "truth": r.truth,
                "error": r.error,
                "metrics": r.metrics,
            }
            for r in results
        },
    )
    return results


def load_segmentation_model(
    checkpoint: str | Path | None,
    *,
    device: str = "cpu",
    modalities: Sequence[str] = ("aerial",),
    task: str = "cosia",
    size: str = "nano",
    image_size: dict[str, int] | None = None,
    out_size: int = 512,
) -> tuple[PredictFn, list[str]]:
    """`(predict_fn, modalities)`: a fine-tuned `finetuned.safetensors` (its own modalities and
    geometry), or, with no checkpoint, a freshly initialised encoder + head
    (`flairlab.models.segmodel`, as `flairlab.training.finetune` builds its scratch baseline) for
    smoke runs and tests."""
    from flairlab.models import segmodel
    from flairlab.models.heads import SegmentationHead

    if checkpoint:
        return segmodel.load_segmentation_model(checkpoint, device, out_size)
    dev = segmodel.pick_device(device)
    mods = list(modalities)
    encoder, _ = segmodel.build_encoder(None, mods, size=size, image_size=image_size)
    mc = encoder.config
    grid = mc.token_grid(segmodel.reference_modality(mc, mods))
    head = SegmentationHead(mc.embed_dim, segmodel.n_classes_of(task), grid, out_size)
    model = segmodel.SegmentationModel(encoder, head, mods).to(dev).eval()

    def predict_fn(batch: dict[str, Any]) -> torch.Tensor:
        return segmodel.predict_logits(model, segmodel.to_device(batch, dev), out_size)

    return predict_fn, mods


def _isna(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v) in ("<NA>", "nan")


def _run(args: argparse.Namespace) -> int:
    cat = load_catalog()
    from flairlab.data.dataset import dataset_index

    root = Path(args.root) if args.root else cat.source_root(args.source)
    index = dataset_index(root, cat)
    pids = select_patches(index, zone=args.zone, patches=args.patches, split=args.split)
    model, modalities = load_segmentation_model(
        args.checkpoint or None, device=args.device, modalities=args.modalities.split(",")
    )
    results = predict(
        model,
        root,
        pids,
        args.out,
        modalities=modalities,
        batch_size=args.batch_size,
        blend=args.blend,
        probabilities=args.probabilities,
        catalog=cat,
        index=index,
        overwrite=args.overwrite,
    )
    for r in results:
        line = f"{r.zone}: {len(r.patch_ids)} patches -> {r.prediction}"
        if r.metrics:
            line += f"  (OA {r.metrics['oa']:.3f}, mIoU {r.metrics['miou']:.3f})"
        print(line)
        if args.html:
            from flairlab.maps.html_map import export_html
            from flairlab.maps.leaflet import zone_overlays

            print("  map:", export_html(zone_overlays(r), Path(args.out) / f"{r.zone}_map.html"))
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict patches / zones and write COGs (+ HTML maps)")
    p.add_argument("--source", default="sample", help="catalog data source (default: sample)")
    p.add_argument("--root", default="", help="dataset folder (overrides --source)")
    p.add_argument("--zone", default="", help="DOMAIN_ROI zone(s), comma-separated")
    p.add_argument("--patches", default="", help="comma-separated patch ids")
    p.add_argument("--split", default="", help="restrict to a split (train/valid/test)")
    p.add_argument("--checkpoint", default="", help="fine-tuned checkpoint ('' = fresh model)")
    p.add_argument("--out", default="outputs/predict", help="output folder")
    p.add_argument("--blend", default="average", choices=["average", "smooth"])
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--modalities", default="aerial", help="fresh model's inputs (no checkpoint)")
    p.add_argument("--html", action="store_true", help="also export an offline HTML map per zone")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=_run)
