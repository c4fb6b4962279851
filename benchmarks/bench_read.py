"""Read throughput: flairlab's `open_patch` / `read_raster` versus a bare rasterio read (the floor).

Reads every modality of each patch, alternating the three readers patch by patch (in a rotating
order) so that all see the same cache and machine load, and prints patches/s and the ratio
(goal >= 0.9).

    python benchmarks/bench_read.py [ROOT] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import rasterio

from flairlab.data.catalog import load_catalog
from flairlab.data.index import index_patches
from flairlab.data.reader import open_patch, read_raster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", help="dataset root (default: a fresh 12-patch sample)")
    ap.add_argument("--repeat", type=int, default=3, help="passes over the patches")
    args = ap.parse_args()
    cat = load_catalog()
    root = args.root
    if root is None:
        from flairlab.data.sample import make_sample

        root = Path(tempfile.mkdtemp()) / "sample"
        make_sample(root, n_patches=12, seed=0, progress=False)
    index = index_patches(root, catalog=cat)
    names = cat.modality_names
    for pid in index.index:  # warm the OS cache and the date tables
        for name in names:
            open_patch(index, pid, name, cat)

    def bare(pid: str) -> None:
        for name in names:
            with rasterio.open(index.at[pid, name]) as src:
                src.read()

    def numpy_path(pid: str) -> None:
        for name in names:
            read_raster(index.at[pid, name], name, cat)

    def xarray_path(pid: str) -> None:
        for name in names:
            open_patch(index, pid, name, cat)

    readers = {"rasterio (floor)": bare, "read_raster": numpy_path, "open_patch": xarray_path}
    spent = dict.fromkeys(readers, 0.0)
    n = 0
    order = list(readers.items())
    for _ in range(args.repeat):
        for pid in index.index:
            order = order[1:] + order[:1]  # rotate: no reader always reads a patch first
            for label, fn in order:
                t0 = time.perf_counter()
                fn(pid)
                spent[label] += time.perf_counter() - t0
            n += 1
    floor = n / spent["rasterio (floor)"]
    print(f"{n} patch reads x {len(names)} modalities, root={root}")
    for label, s in spent.items():
        rate = n / s
        print(f"  {label:18s} {rate:8.1f} patches/s   ratio to floor {rate / floor:5.2f}")


if __name__ == "__main__":
    main()
