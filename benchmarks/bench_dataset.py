"""Data pipeline throughput: FlairHubDataset items/s at the FLAIR-HUB default geometry.

Measured side by side in one run: (1) reading the raw files only (`read_raster`, the floor),
(2) full items in the main process, (3) a DataLoader with `--workers` processes. Prints the
pipeline overhead over raw reading and the worker speed-up.

    .venv/bin/python benchmarks/bench_dataset.py [--root DIR] [--n 24] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from flairlab.data.catalog import load_catalog
from flairlab.data.dataset import TARGETS, FlairHubDataset, collate
from flairlab.data.reader import read_raster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="", help="dataset folder (default: a fresh sample)")
    ap.add_argument("--n", type=int, default=24, help="patches in the generated sample")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    root = Path(args.root) if args.root else None
    if root is None:
        from flairlab.data.sample import make_sample

        root = Path(tempfile.mkdtemp(prefix="bench-dataset-"))
        make_sample(root, n_patches=args.n, seed=0)
    ds = FlairHubDataset(root, split=None, train=True, seed=0)
    cat = load_catalog()
    cols = [cat.modality(k).name for k in ds.modalities] + ["SENTINEL2_MSK-SC"]
    cols.append(cat.modality(TARGETS["cosia"][0]).name)
    n = len(ds)

    t = time.perf_counter()
    for pid in ds.patch_ids:
        for c in cols:
            read_raster(ds.index.at[pid, c], c)
    raw = (time.perf_counter() - t) / n

    ds[0]  # warm caches (date tables)
    t = time.perf_counter()
    for i in range(n):
        ds[i]
    item = (time.perf_counter() - t) / n

    loader = DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=args.workers)
    batches = iter(loader)
    next(batches)  # worker start-up excluded
    t = time.perf_counter()
    count = sum(len(b["patch_id"]) for b in batches)
    workers = (time.perf_counter() - t) / count

    print(f"patches: {n}  (aerial/dem 512 px, S2 16 dates, S1 4+4 dates, COSIA 512 px)")
    print(f"raw file reading     : {1 / raw:7.1f} patches/s")
    print(f"items, main process  : {1 / item:7.1f} patches/s  (pipeline/raw time {item / raw:.2f})")
    print(f"items, {args.workers} workers     : {1 / workers:7.1f} patches/s  "
          f"(speed-up {item / workers:.2f} over the main process)")  # fmt: skip


if __name__ == "__main__":
    main()
