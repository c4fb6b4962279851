"""Wall time and peak memory of the demo (or any command): `make demo` budget is 5 min / 2 GB.

    .venv/bin/python benchmarks/bench_demo.py               # flairlab run pipelines/demo.yaml
    .venv/bin/python benchmarks/bench_demo.py -- make demo  # any command after `--`

Peak memory is measured two ways side by side: the largest single process (what
`/usr/bin/time -v` reports as "Maximum resident set size") and the whole process tree summed
(runner + kernel + workers), sampled every 0.2 s with psutil. The per-step times come from the
run's `status.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(proc: psutil.Process) -> tuple[int, dict[str, int]]:
    """Summed RSS of a process and its descendants, and RSS per command name."""
    total, per = 0, {}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss = p.memory_info().rss
            name = " ".join(p.cmdline()[1:3])[:60] or p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += rss
        per[name] = max(per.get(name, 0), rss)
    return total, per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default=str(ROOT / "runs"))
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines" / "demo.yaml"))
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("command", nargs="*", help="command to measure (default: flairlab run ...)")
    args = ap.parse_args()
    cmd = args.command or [
        str(Path(sys.executable).parent / "flairlab"),
        "run",
        args.pipeline,
        "--runs-dir",
        args.runs_dir,
    ]
    before = set(Path(args.runs_dir).glob("*")) if Path(args.runs_dir).is_dir() else set()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    ps = psutil.Process(proc.pid)
    peak_tree, peak_single, peak_by = 0, 0, {}
    while proc.poll() is None:
        total, per = tree_rss(ps)
        peak_tree = max(peak_tree, total)
        peak_single = max([peak_single, *per.values()])
        for k, v in per.items():
            peak_by[k] = max(peak_by.get(k, 0), v)
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    new = (
        sorted(set(Path(args.runs_dir).glob("*")) - before) if Path(args.runs_dir).is_dir() else []
    )
    steps = {}
    for run in new:
        status = run / "status.json"
        if status.is_file():
            for s in json.loads(status.read_text())["steps"]:
                steps[s["name"]] = (s.get("status"), s.get("duration_s"))
    top = sorted(peak_by.items(), key=lambda kv: -kv[1])[:6]
    out = {
        "command": cmd,
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_tree_mib": round(peak_tree / 2**20),
        "peak_single_process_mib": round(peak_single / 2**20),
        "cpus": psutil.cpu_count(),
        "load_avg_1m_at_end": round(psutil.getloadavg()[0], 2),
        "steps": steps,
        "peak_by_process_mib": {k: round(v / 2**20) for k, v in top},
    }
    print(json.dumps(out, indent=1))
    print(
        f"wall {wall:.0f} s = {wall / 300:.2f} x the 5 min budget; peak memory (process tree) "
        f"{peak_tree / 2**30:.2f} GiB = {peak_tree / 2**31:.2f} x the 2 GiB budget"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
