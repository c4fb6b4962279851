"""Peak memory and disk of zone prediction on sparse zones of the sample (goal: <= 1 GB).

    .venv/bin/python benchmarks/bench_sparse_zone.py                  # both cases below
    .venv/bin/python benchmarks/bench_sparse_zone.py --root /tmp/sample --case cli

A sparse zone is a `DOMAIN_ROI` whose few patches lie far apart: its bounding box is many times
the area of its patches. Two cases, each run in a fresh process and measured side by side:

* `cli`: `flairlab predict --probabilities --html` on the sample zone with the largest bounding
  box (6 patches of D006-2020_NV-S1-8, a 7167 x 9728 px box at 0.2 m);
* `notebook`: notebook 05 with its default parameters (the test split: its 3-patch sparse zone
  D083-2020_UN-S1-19 and three small ones), executed by papermill.

Peak memory: the largest single process (`ru_maxrss` of the children, what `/usr/bin/time -v`
reports) and the process tree summed (psutil, sampled every 0.1 s); peak disk: the output
folder's size sampled at the same rate (a memory-mapped mosaic shows up there), and at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from bench_demo import tree_rss

ROOT = Path(__file__).resolve().parents[1]
GOAL_BYTES = 2**30
CLI_ZONE = "D006-2020_NV-S1-8"


def folder_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):  # a temporary file renamed while we walk
            total += p.stat().st_size if p.is_file() else 0
    return total


def measure(cmd: list[str], out_dir: Path) -> dict[str, float]:
    """Run `cmd` (through `_child`, so that `ru_maxrss` is this command's alone); peak RSS
    (single process, tree) and peak / final size of `out_dir`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--_child", json.dumps(cmd)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    ps = psutil.Process(proc.pid)
    peak_tree = peak_disk = 0
    while proc.poll() is None:
        peak_tree = max(peak_tree, tree_rss(ps)[0])
        if out_dir.exists():
            peak_disk = max(peak_disk, folder_bytes(out_dir))
        time.sleep(0.1)
    out, err = (s.read().decode(errors="replace") for s in (proc.stdout, proc.stderr))
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    single = int(out.split()[-1])
    final = folder_bytes(out_dir)
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_single_gb": round(single / 1e9, 3),
        "peak_rss_tree_gb": round(peak_tree / 1e9, 3),
        "peak_disk_gb": round(max(peak_disk, final) / 1e9, 3),
        "final_disk_gb": round(final / 1e9, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="sample folder (default: generate one in a temporary folder)")
    ap.add_argument("--case", choices=["cli", "notebook", "both"], default="both")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="bench-sparse-") as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "sample"
        if not args.root:
            subprocess.run([str(bin_dir / "flairlab"), "sample", str(root)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        results = {}
        if args.case in ("cli", "both"):  # each case in its own process: ru_maxrss is per child
            out = Path(tmp) / "cli"
            cmd = [str(bin_dir / "flairlab"), "predict", "--root", str(root), "--zone", CLI_ZONE,
                   "--probabilities", "--html", "--out", str(out)]  # fmt: skip
            results["cli"] = measure(cmd, out)
        if args.case in ("notebook", "both"):
            out = Path(tmp) / "nb05"
            cmd = [str(bin_dir / "papermill"), str(ROOT / "notebooks" / "05_predict_and_map.ipynb"),
                   str(Path(tmp) / "05.ipynb"), "-p", "source", str(root), "-p", "output_dir",
                   str(out), "--cwd", str(ROOT / "notebooks")]  # fmt: skip
            results["notebook"] = measure(cmd, out)
    for case, r in results.items():
        ratio = max(r["peak_rss_single_gb"], r["peak_rss_tree_gb"]) * 1e9 / GOAL_BYTES
        print(f"{case:9s} {r}  peak/goal(1 GiB) = {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


def _child(cmd: list[str]) -> int:
    """Run `cmd`, then print the largest RSS (bytes) of its processes (ru_maxrss, kB on Linux)."""
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sys.stderr.write(proc.stderr.decode(errors="replace")[-5000:])
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    return proc.returncode


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_child":
        sys.exit(_child(json.loads(sys.argv[2])))
    sys.exit(main())
