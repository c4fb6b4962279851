"""Plumbing of the pre-training loop: devices and precision, data order, RNG state, metric log.

Kept apart from `flairlab.training.pretrain` so that the loop itself reads top to bottom.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from flairlab.data.errors import DataError
from flairlab.data.results import write_json_atomic


def cpu_supports_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX), from torch's probes or /proc/cpuinfo."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_budget() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota (containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return n


LOADAVG = Path("/proc/loadavg")  # "0.20 0.18 0.12 <running>/<total> <last pid>"


def free_cpus(samples: int = 5) -> int:
    """CPUs this process can use now: `cpu_budget()` minus the tasks already running on the
    machine (the running-task count of /proc/loadavg, median of `samples` reads 20 ms apart,
    without this process), at least 1. On a shared 2-core machine with 4 other runnable tasks a
    nano fine-tuning step took 0.6 s with one torch thread and 4.9 s with two (threads waiting
    for descheduled siblings); on an idle machine this is `cpu_budget()`."""
    budget = cpu_budget()
    counts = []
    for i in range(samples):
        try:
            running = int(LOADAVG.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return budget
        counts.append(running - 1)  # the reading process itself is running
        if i + 1 < samples:
            time.sleep(0.02)
    return max(1, min(budget, budget - int(np.median(counts))))


def set_threads(threads: int = 0) -> int:
    """torch CPU threads: `threads` if > 0, else `free_cpus()` (capped by torch's default).
    Returns the number set."""
    n = threads if threads > 0 else min(torch.get_num_threads(), free_cpus())
    torch.set_num_threads(n)
    return n


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` → bf16 autocast on CUDA GPUs that support it (else fp16), and on a CPU whichever of
    fp32 and bf16 autocast `measure_cpu_precision` finds faster; other values are kept."""
    if precision != "auto":
        return precision
    if accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return measure_cpu_precision()["precision"]


_PRECISION: dict[str, dict[str, Any]] = {}  # per process: machine key -> measurement


def _machine_key() -> str:
    """CPU model and torch version: what the precision measurement depends on."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu} | torch {torch.__version__}"


def _precision_cache() -> Path:
    base = os.environ.get("FLAIRLAB_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(base or Path.home() / ".cache") / "flairlab" / "precision.json"


def _block_step_seconds(bf16: bool, parts: tuple, limit: float) -> float:
    """Best of 2 forward + backward passes of the benchmark block (stops early past `limit` s)."""
    block, embed, tokens, image = parts
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = block(tokens).float().square().mean() + embed(image).float().square().mean()
        loss.backward()
        best = min(best, time.perf_counter() - t0)
        if best > limit:
            break
    return best


def measure_cpu_precision(refresh: bool = False) -> dict[str, Any]:
    """Time one training step of a nano-sized model slice — a patch embedding (conv 16 px +
    GroupNorm on a 4 × 128² px batch) and a transformer block (LayerNorm, attention, MLP; 96
    wide, 4 × 280 tokens), forward + backward — in fp32 and under bf16 autocast, back to back
    (5 pairs; the median of the pairwise ratios decides), on one thread: what decides is the
    instruction set, and one thread is not thrown off by other jobs on a shared machine (two
    threads waiting for each other were measured 3-10× off there). bf16 is picked only when it
    is at least 1.25× faster (ratio ≤ 0.8; it also costs precision). ~2-3 s, cached per process
    and in `~/.cache/flairlab/precision.json` (per CPU model and torch version;
    `FLAIRLAB_CACHE_DIR` moves it).

    On the AMD EPYC (AVX-512 BF16) of the project machines both take the same time → fp32; on
    AVX2-only CPUs bf16 is emulated and ~10× slower → fp32; AMX CPUs → bf16.

    Returns {"precision": "32-true" | "bf16-mixed", "fp32_ms", "bf16_ms" (medians),
    "bf16_over_fp32", "key"}."""
    key = _machine_key()
    if not refresh and key in _PRECISION:
        return _PRECISION[key]
    path = _precision_cache()
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    if not refresh and isinstance(stored.get(key), dict) and "precision" in stored[key]:
        _PRECISION[key] = stored[key]
        return stored[key]
    from flairlab.models.mae import PatchEmbed, Transformer

    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # leave the caller's random stream untouched
        torch.manual_seed(0)
        parts = (Transformer(96, 1, 3, 32, 192), PatchEmbed([[0, 1, 2, 3]], 16, 96),
                 torch.randn(4, 280, 96, generator=g), torch.randn(4, 1, 4, 128, 128, generator=g))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _block_step_seconds(False, parts, 0.0)  # warm-up: kernels are created on the first call
        _block_step_seconds(True, parts, 0.0)
        pairs = []
        for _ in range(5):  # back to back, so that both see the same machine load
            fp32 = _block_step_seconds(False, parts, 1.0)
            pairs.append((fp32, _block_step_seconds(True, parts, 3 * fp32)))
    finally:
        torch.set_num_threads(threads)
    ratio = float(np.median([b / f for f, b in pairs]))
    fp32, bf16 = float(np.median([f for f, _ in pairs])), float(np.median([b for _, b in pairs]))
    result = {"precision": "bf16-mixed" if ratio <= 0.8 else "32-true",
              "fp32_ms": 1e3 * fp32, "bf16_ms": 1e3 * bf16, "bf16_over_fp32": ratio,
              "key": key}  # fmt: skip
    _PRECISION[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**stored, key: result})
    except OSError:
        pass  # a read-only home: measured again in the next process
    return result


class EpochBatchSampler:
    """Per-rank batches of a seeded permutation per epoch, resumable at any batch.

    Epoch e shuffles with seed (seed, e); global batch i = perm[i·B·W : (i+1)·B·W], of which rank
    r takes the r-th B indices. Incomplete global batches are dropped."""

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if n < batch * world:
            raise DataError("dataset smaller than one global batch", expected=f"≥ {batch * world}",
                            found=n)  # fmt: skip
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.per_epoch = n // (batch * world)  # batches per epoch (may be lowered, never raised)
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.per_epoch - self.start

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        gb = self.batch * self.world
        for i in range(self.start, self.per_epoch):
            lo = i * gb + self.rank * self.batch
            yield perm[lo : lo + self.batch]


def set_epoch(ds: Dataset, epoch: int) -> None:
    base = ds.dataset if isinstance(ds, Subset) else ds
    if hasattr(base, "set_epoch"):
        base.set_epoch(epoch)


def collate_fn(ds: Dataset):
    base = ds.dataset if isinstance(ds, Subset) else ds
    fn = getattr(base, "collate_fn", None)
    if fn is None:
        from flairlab.data.dataset import collate as fn
    return fn


def rng_state() -> dict[str, Tensor]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor(np_state[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }


def set_rng_state(s: dict[str, Tensor]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), int(s["numpy_pos"])))
    random.setstate((3, tuple(int(v) for v in s["python"]), None))


def step_seed(seed: int, rank: int, micro_step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + micro_step * 104_729) % (2**63)


class MetricLog:
    """metrics.csv (appended row by row) + metrics.json (rewritten atomically at checkpoints).
    On resume, rows logged after the checkpoint's step are dropped."""

    def __init__(self, out: Path, step: int) -> None:
        self.csv, self.json = out / "metrics.csv", out / "metrics.json"
        out.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        if self.csv.exists() and step > 0:
            lines = self.csv.read_text(encoding="utf-8").splitlines(keepends=True)
            if lines and not lines[-1].endswith("\n"):  # a row cut short by a crash (kill -9)
                lines.pop()
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)}
                    for r in csv.DictReader(lines)]  # fmt: skip
            self.rows = [r for r in rows if r["step"] <= step]
        self._rewrite()

    def _rewrite(self) -> None:
        self.cols = list(dict.fromkeys(k for r in self.rows for k in r))
        with self.csv.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.cols)
            w.writeheader()
            w.writerows(self.rows)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if list(row) != self.cols:  # first row or new columns: rewrite with the new header
            self._rewrite()
            return
        with self.csv.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.cols).writerow(row)

    def flush_json(self) -> None:
        write_json_atomic(self.json, self.rows)
