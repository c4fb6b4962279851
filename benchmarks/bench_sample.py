"""Embedded sample budget: generation time and disk size against the issue's targets.

Budgets (issue 3): the default sample in ≤ 60 s on 2 cores and ≤ 200 MB on disk. Prints wall and
CPU seconds (wall is inflated when other jobs share the cores; CPU time is what one idle core
would need, the generator being single-process), bytes on disk and the ratios to the budgets,
plus the per-patch cost so the `--all-toy` numbers can be extrapolated.

    .venv/bin/python benchmarks/bench_sample.py [--patches 40] [--all-toy]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from flairlab.data.sample import DEFAULT_N_PATCHES, make_sample

BUDGET_S, BUDGET_BYTES = 60.0, 200e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=DEFAULT_N_PATCHES)
    ap.add_argument("--all-toy", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sample"
        wall, cpu = time.perf_counter(), time.process_time()
        make_sample(out, n_patches=args.patches, all_toy=args.all_toy, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        n = 250 if args.all_toy else args.patches
    print(f"patches        {n}")
    print(f"wall           {wall:7.1f} s   ({wall / BUDGET_S:.2f} x the 60 s budget)")
    print(f"cpu            {cpu:7.1f} s   ({cpu / BUDGET_S:.2f} x the 60 s budget)")
    print(f"size           {size / 1e6:7.1f} MB  ({size / BUDGET_BYTES:.2f} x the 200 MB budget)")
    print(f"per patch      {cpu / n:7.2f} s cpu, {size / n / 1e6:.2f} MB")
    print(f"load average   {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
