"""How fast the first picture comes: the bokeh set-up cell of notebooks 00–02 and the sample.

Side by side in one run (timings on shared machines are noisy: compare the ratios):

* **set-up cell** — in a fresh kernel each time, alternating, `--repeat` times:
  `hv.extension('bokeh', logo=False, inline=True)` (what the notebooks ran before) against
  `flairlab.explore.display.setup_plots(True)` (what they run now: no HoloViews notebook archive,
  hence no `nbformat` → `jsonschema` → `rfc3987_syntax` grammar compilation; panel CSS inlined),
  and `setup_plots(False)` (static runs: nothing loaded). Seconds of the cell, bytes it outputs;
* **sample generation** — `make_sample` of `--patches` toy patches plus the default zone, serial
  (`workers=1`) against a process per CPU: wall and CPU seconds (on a busy machine a pool only
  adds CPU time, which is why `default_workers` counts idle CPUs).

    .venv/bin/python benchmarks/bench_first_picture.py [--repeat 3] [--patches 12] [--no-sample]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

SETUP = "from flairlab.explore.display import setup_plots\n"
CELLS = {
    "hv.extension (before)": "import holoviews as hv\n"
    "hv.extension('bokeh', logo=False, inline=True)",
    "setup_plots(True) (now)": SETUP + "setup_plots(True)",
    "setup_plots(False) (static)": SETUP + "setup_plots(False)",
}


def time_cell(source: str) -> tuple[float, int]:
    """Seconds to execute `source` in a fresh, already started kernel; bytes of its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nb.cells = [nbformat.v4.new_code_cell("import time\nt0 = time.perf_counter()"),
                nbformat.v4.new_code_cell(source),
                nbformat.v4.new_code_cell("print(time.perf_counter() - t0)")]  # fmt: skip
    NotebookClient(nb, kernel_name="python3", timeout=600).execute()
    seconds = float(nb.cells[2].outputs[0]["text"])
    return seconds, len(json.dumps(nb.cells[1].outputs))


def bench_cells(repeat: int) -> None:
    times: dict[str, list[float]] = {k: [] for k in CELLS}
    sizes: dict[str, int] = {}
    for _ in range(repeat):  # alternate, so that machine load hits every variant alike
        for name, src in CELLS.items():
            t, size = time_cell(src)
            times[name].append(t)
            sizes[name] = size
    base = statistics.median(times["hv.extension (before)"])
    print(f"bokeh set-up cell, fresh kernel, median of {repeat} (load {os.getloadavg()[0]:.1f})")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:28s} {med:6.2f} s  ({med / base:4.2f} x before)  "
              f"{sizes[name] / 1e6:5.2f} MB of output   runs: {', '.join(f'{t:.1f}' for t in ts)}")


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the pool's workers)."""
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def bench_sample(n: int, repeat: int) -> None:
    from flairlab.data.sample import DEFAULT_ZONE, default_workers, make_sample

    n_cpu = len(os.sched_getaffinity(0))
    variants = {"serial": 1, f"{n_cpu} processes": n_cpu}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeat):  # alternate the variants
            for name, workers in variants.items():
                t, c = time.perf_counter(), _cpu_s()
                make_sample(Path(tmp) / f"{r}-{workers}", n_patches=n, zone=DEFAULT_ZONE,
                            workers=workers, progress=False)  # fmt: skip
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(_cpu_s() - c)
    serial = statistics.median(wall["serial"])
    print(f"sample: {n} toy patches + the {DEFAULT_ZONE} x {DEFAULT_ZONE} zone, median of {repeat} "
          f"(load {os.getloadavg()[0]:.1f}, {n_cpu} CPUs; default now: "
          f"{default_workers(99)} process(es))")  # fmt: skip
    for name in variants:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"  {name:28s} {w:6.1f} s wall ({w / serial:4.2f} x serial), {c:6.1f} s CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--patches", type=int, default=12)
    ap.add_argument("--no-sample", action="store_true")
    args = ap.parse_args()
    bench_cells(args.repeat)
    if not args.no_sample:
        bench_sample(args.patches, args.repeat)


if __name__ == "__main__":
    main()
