"""Plumbing of the pre-training loop: devices and precision, data order, RNG state, metric log.

Kept apart from `flairlab.training.pretrain` so that the loop itself reads top to bottom.
"""

from __future__ import annotations

import csv
import os
import random
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


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    if accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


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
