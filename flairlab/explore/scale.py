"""Band statistics over many patches: per-patch work, chunked onto any executor, merged in order.

>>> idx = select_patches("sample", n_patches=8)
>>> st = compute_stats(idx, workers=2)                     # process pool (default)
>>> from dask.distributed import Client                    # or a dask cluster:
>>> st = compute_stats(idx, executor=Client(...).get_executor())

Patches are cut into chunks (one task each); at most `2 × workers` tasks are in flight and the
partial `DatasetStats` are merged in chunk order, so memory stays flat however many patches there
are, and the result does not depend on the scheduling (serial, pool and dask agree; counts and
histograms exactly, moments to float64 rounding).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError
from flairlab.data.reader import read_dates
from flairlab.explore.patch_stats import (
    IMAGE_MODALITIES,
    S1,
    S2,
    S2_MASK,
    DatasetStats,
    StatsConfig,
    _catalog,
    new_stats,
    patch_stats,
)

__all__ = [
    "IMAGE_MODALITIES",
    "DatasetStats",
    "StatsConfig",
    "compute_stats",
    "ensure_sample",
    "resolve_root",
    "run_ordered",
    "select_patches",
    "stats_chunk",
]


def stats_chunk(
    rows: list[dict[str, Any]], dates: list[dict[str, np.ndarray]], config: StatsConfig
) -> DatasetStats:
    """One task: the merged statistics of a few patches (module-level, so it pickles)."""
    out = new_stats(config)
    for row, d in zip(rows, dates, strict=True):
        patch_stats(row, d, config, out)
    return out


def _date_modalities(config: StatsConfig) -> list[str]:
    mods = []
    if config.clouds or config.profiles:
        mods.append(S2_MASK)
    if config.profiles:
        mods += [S2, *S1.values()]
    return mods


def _tasks(index: pd.DataFrame, config: StatsConfig, chunk_size: int) -> Iterator[tuple]:
    cat = _catalog(config)
    root = index.attrs.get("root")
    date_tables = {}
    for name in _date_modalities(config):
        if name in index.columns and index[name].notna().any():
            if root is None:
                raise DataError("index has no attrs['root'] to find GLOBAL_ALL_MTD dates")
            date_tables[name] = read_dates(root, name, cat)
    cols = [c for c in cat.modality_names if c in index.columns]
    for start in range(0, len(index), chunk_size):
        part = index.iloc[start : start + chunk_size]
        rows, dates = [], []
        for pid, rec in part.iterrows():
            row = {c: (None if pd.isna(rec[c]) else str(rec[c])) for c in cols}
            row.update(
                patch_id=pid,
                domain=rec["domain"],
                split=None if pd.isna(rec.get("split", pd.NA)) else rec["split"],
            )
            rows.append(row)
            dates.append({n: t[pid] for n, t in date_tables.items() if row.get(n)})
        yield rows, dates, config


def run_ordered(
    fn: Callable[..., Any],
    tasks: Iterable[tuple],
    executor: Executor,
    merge: Callable[[Any, Any], Any],
    max_in_flight: int,
    on_done: Callable[[Any], None] | None = None,
) -> Any:
    """Submit `fn(*task)` with at most `max_in_flight` pending; merge results in task order."""
    it = enumerate(tasks)
    pending: dict[Future, int] = {}
    ready: dict[int, Any] = {}
    acc, nxt = None, 0

    def fill() -> None:
        while len(pending) < max_in_flight:
            try:
                i, task = next(it)
            except StopIteration:
                return
            pending[executor.submit(fn, *task)] = i

    fill()
    try:
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in done:
                ready[pending.pop(f)] = f.result()
            while nxt in ready:
                res = ready.pop(nxt)
                if on_done is not None:
                    on_done(res)
                acc = res if acc is None else merge(acc, res)
                nxt += 1
            fill()
    finally:
        for f in pending:
            f.cancel()
    return acc


def compute_stats(
    index: pd.DataFrame,
    config: StatsConfig | None = None,
    *,
    executor: Executor | None = None,
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    **overrides: Any,
) -> DatasetStats:
    """Statistics of every patch of `index` (from `flairlab.data.index.index_patches`).

    `executor`: any `concurrent.futures.Executor` (e.g. `dask.distributed.Client.get_executor()`).
    Without one, `workers` processes (default: all cores) run a `ProcessPoolExecutor`;
    `workers=0` or `1` runs serially in this process. `overrides` replace `config` fields.
    """
    config = replace(config or StatsConfig(), **overrides)
    if len(index) == 0:
        raise DataError("no patches to compute statistics on")
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if executor is None and n_workers <= 1:
        size = chunk_size or 16
    else:
        size = chunk_size or max(1, min(32, -(-len(index) // (4 * max(n_workers, 2)))))
    tasks = _tasks(index, config, size)
    bar = tqdm(total=len(index), desc="band statistics", unit="patch", disable=not progress)
    try:
        if executor is None and n_workers <= 1:
            out = new_stats(config)
            for rows, dates, cfg in tasks:
                out.merge(stats_chunk(rows, dates, cfg))
                bar.update(len(rows))
            return out
        own = executor is None
        ex = executor or ProcessPoolExecutor(max_workers=n_workers)
        try:
            return run_ordered(
                stats_chunk,
                tasks,
                ex,
                lambda a, b: a.merge(b),
                max_in_flight=2 * max(n_workers, 2),
                on_done=lambda r: bar.update(r.n_patches),
            )
        finally:
            if own:
                ex.shutdown(cancel_futures=True)
    finally:
        bar.close()


def ensure_sample(
    catalog: Catalog | None = None,
    source: str = "sample",
    n_patches: int | None = None,
    seed: int = 0,
    zone: int | None = None,
) -> Path:
    """Root of a catalog source. A `generate: true` source (the sample) is written by
    `flairlab.data.sample` when missing or unfinished (`n_patches=None`: its default subset;
    `zone=None`: its default zone of extra patches)."""
    cat = catalog or load_catalog()
    root = cat.source_root(source)
    src = cat.sources[source]
    if not src.generate:
        from flairlab.data.index import split_csvs

        if root.is_dir() and (split_csvs(root, src.splits) or any(root.glob("*_AERIAL_RGBI"))):
            return root
        raise DataError(
            f"data source {source!r} not found; download FLAIR-HUB there or set "
            f"${src.env or 'the source path'}",
            path=root,
            expected="split CSVs or <DOMAIN>_<MODALITY> folders",
            found="nothing",
        )
    from flairlab.data import sample

    n = sample.DEFAULT_N_PATCHES if n_patches is None else n_patches
    z = sample.DEFAULT_ZONE if zone is None else zone
    return sample.ensure_sample(root, n_patches=n, seed=seed, zone=z)


def resolve_root(
    source: str | Path = "sample",
    sample_patches: int | None = None,
    catalog: Catalog | None = None,
    sample_zone: int | None = None,
) -> Path:
    """Dataset folder of a catalog source name (the sample is generated when missing) or of a
    path given directly."""
    cat = catalog or load_catalog()
    if isinstance(source, str) and source in cat.sources:
        return ensure_sample(cat, source, n_patches=sample_patches, zone=sample_zone)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(
            "dataset folder not found",
            path=root,
            expected=f"a folder or a catalog source ({', '.join(cat.sources)})",
            found="nothing",
        )
    return root


def select_patches(
    source_or_root: str | Path = "sample",
    *,
    split: str | None = None,
    n_patches: int | None = None,
    seed: int = 0,
    catalog: Catalog | None = None,
) -> pd.DataFrame:
    """Patch index of a catalog source name or a dataset folder, optionally one split and a
    seeded random subset of `n_patches` (kept in patch-id order)."""
    from flairlab.data.index import index_dataset, source_index

    cat = catalog or load_catalog()
    if isinstance(source_or_root, str) and source_or_root in cat.sources:
        resolve_root(source_or_root, catalog=cat)
        df = source_index(source_or_root, cat)
    else:
        df = index_dataset(resolve_root(source_or_root, catalog=cat), cat)
    if split:
        if "split" not in df.columns:
            raise DataError("index has no split column", expected=split, found="no splits")
        df = df[df["split"] == split]
        if df.empty:
            raise DataError(f"no patches in split {split!r}")
    if n_patches is not None and n_patches < len(df):
        df = df.sample(n=n_patches, random_state=seed).sort_index()
    return df
