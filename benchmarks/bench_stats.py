"""Band-statistics pass: throughput versus a bare rasterio read (the floor), and peak memory.

1. Throughput, measured side by side patch by patch (same cache, same machine load):
   * histogram pass (histograms + count/mean/M2/min/max of the 7 image modalities) versus a bare
     `rasterio` read of the same 7 files — goal ratio >= 0.8;
   * full pass (also per domain/split/COSIA class, correlations, S2 clouds, temporal profiles,
     class counts) versus a bare read of the files it opens (all 10 modalities).
2. Peak memory (ru_maxrss) of a serial full pass over N and 2N patches, each in a fresh
   subprocess, next to a baseline subprocess that only imports and indexes — goal: flat.

    python benchmarks/bench_stats.py [ROOT] [--n 12] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import rasterio

from flairlab.data.catalog import load_catalog
from flairlab.explore.patch_stats import IMAGE_MODALITIES, StatsConfig, new_stats, patch_stats
from flairlab.explore.scale import _tasks, select_patches

HIST_ONLY = StatsConfig(by=(), correlation=False, class_counts=False, clouds=False, profiles=False)
FULL = StatsConfig()


def _child(root: str, n: int) -> None:
    """Subprocess body: index, then (n > 0) a serial full pass over the first n patches."""
    from flairlab.explore.scale import compute_stats

    index = select_patches(root)
    tracemalloc.start()
    stats = compute_stats(index.iloc[:n], FULL, workers=0, progress=False) if n else None
    held, peak = tracemalloc.get_traced_memory()  # bytes: still held (the result), peak
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "n": n,
                "maxrss_mb": kb / 1024,
                "traced_peak_mb": peak / 2**20,
                "held_mb": held / 2**20,
                "patches": stats.n_patches if stats else 0,
            }
        )
    )


def _peak(root: str, n: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, root, "--child", str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", help="dataset root (default: a fresh sample of 2N patches)")
    ap.add_argument("--n", type=int, default=12, help="N for the memory comparison (N vs 2N)")
    ap.add_argument("--repeat", type=int, default=2, help="throughput passes over the patches")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return _child(args.root, args.child)
    cat = load_catalog()
    root = args.root
    if root is None:
        from flairlab.data.sample import make_sample

        root = str(Path(tempfile.mkdtemp()) / "sample")
        make_sample(root, n_patches=2 * args.n, seed=0, progress=False)
    index = select_patches(root)
    rows = {}
    for cfg in (HIST_ONLY, FULL):  # one task per patch: row dict + its dates
        for chunk_rows, chunk_dates, _ in _tasks(index, cfg, 1):
            rows.setdefault(id(cfg), []).append((chunk_rows[0], chunk_dates[0]))
    image_files = list(IMAGE_MODALITIES)
    all_files = cat.modality_names

    def bare(row: dict, names: list[str]) -> None:
        for name in names:
            if row.get(name):
                with rasterio.open(row[name]) as src:
                    src.read()

    for row, _ in rows[id(FULL)]:  # warm the OS cache
        bare(row, all_files)
    runs = {
        "rasterio, 7 image files (floor)": lambda i: bare(rows[id(HIST_ONLY)][i][0], image_files),
        "histogram pass": lambda i: patch_stats(*rows[id(HIST_ONLY)][i], HIST_ONLY, acc[0]),
        "rasterio, 10 files (floor)": lambda i: bare(rows[id(FULL)][i][0], all_files),
        "full pass": lambda i: patch_stats(*rows[id(FULL)][i], FULL, acc[1]),
    }
    acc = [new_stats(HIST_ONLY), new_stats(FULL)]
    spent = dict.fromkeys(runs, 0.0)
    n = 0
    for _ in range(args.repeat):
        for i in range(len(index)):
            for label, fn in runs.items():
                t0 = time.perf_counter()
                fn(i)
                spent[label] += time.perf_counter() - t0
            n += 1
    rate = {k: n / v for k, v in spent.items()}
    print(f"root={root}: {len(index)} patches x {args.repeat} passes")
    floors = ["rasterio, 7 image files (floor)", "rasterio, 10 files (floor)"]
    for label in runs:
        floor = floors[0] if label in (floors[0], "histogram pass") else floors[1]
        print(
            f"  {label:34s} {rate[label]:7.1f} patches/s   ratio to floor "
            f"{rate[label] / rate[floor]:5.2f}"
        )
    n2 = min(2 * args.n, len(index))
    base, p1, p2 = _peak(root, 0), _peak(root, args.n), _peak(root, n2)
    print(
        f"memory of a serial full pass (fresh subprocess each): N={p1['patches']}, "
        f"2N={p2['patches']}"
    )
    print(
        f"  peak RSS       baseline (imports + index) {base['maxrss_mb']:.0f} MB, "
        f"N {p1['maxrss_mb']:.0f} MB, 2N {p2['maxrss_mb']:.0f} MB, "
        f"ratio 2N/N {p2['maxrss_mb'] / p1['maxrss_mb']:.3f}"
    )
    print(
        f"  traced peak    N {p1['traced_peak_mb']:.1f} MB, 2N {p2['traced_peak_mb']:.1f} MB, "
        f"ratio {p2['traced_peak_mb'] / p1['traced_peak_mb']:.3f}   (numpy + python, tracemalloc)"
    )
    print(
        f"  result held    N {p1['held_mb']:.2f} MB, 2N {p2['held_mb']:.2f} MB, "
        f"ratio {p2['held_mb'] / p1['held_mb']:.3f}"
    )


if __name__ == "__main__":
    main()
