"""Fine-tuning and evaluation: probe, then full fine-tuning (maestro-method.md §8), beside a floor.

One run = **probe** (encoder frozen, features detached, only the head trains) → **fine-tune**
(everything trains; evaluation uses an EMA copy of the weights) → test on the held-out split,
next to **the floor**: a per-pixel logistic regression fitted on the same training pixels
(`flairlab.training.baseline`). A run without a checkpoint is the **from-scratch baseline**: same
architecture, same phases, the encoder starts from random weights. Tasks: `cosia` (15 evaluated
classes, 15-18 ignored) and `lpis` (level 1, 23 classes); any subset of modalities.

**Budgets are optimiser steps** (`probe_steps`, `finetune_steps`; batches are drawn from
successive shuffled epochs), validation every `eval_every` steps; `patience` > 0 stops a phase
after that many validations without a better validation mIoU and keeps the best weights.

Heads: `head = "upsample"` (default; `UpsampleHead`, a light decoder at the label resolution that
also reads the inputs) or `"attentive"` (MAESTRO's head: attentive pooling per token cell, pixel
shuffle). Optimisation (§8.2, R6): AdamW β = (0.9, 0.99), weight decay 0.01,
`lr_max = base_lr · sqrt(batch / 3)` with base `head_lr` for the head (new weights) and
`finetune_lr` for the encoder, per-step one-cycle schedule (cosine warm-up over `warmup`
of the phase's steps from lr_max/25, cosine decay to lr_max/100 for the probe and lr_max/2 for
fine-tuning), EMA of the weights updated every step (horizon 20 % of the phase, warmed up).
Deviations from R6, for budgets of tens to hundreds of steps: the warm-up starts at 1/25 instead
of 1/1000 and lasts 10 % instead of 20 %; the probe ends at 1/100 instead of 1e-7; the EMA is
per step (per epoch in the reference) and starts from the weights at the start of fine-tuning
(random init in the reference, quirk §13.7); base learning rates are larger than the paper's
1e-5 (which is for 15-100 epochs over 241 k tiles).

`label_fraction` keeps a reproducible, class-stratified subset of the labelled training patches
(`subsample_patches`): rarest classes are covered first, the rest is filled at random.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from flairlab.data.catalog import IGNORE_INDEX
from flairlab.data.dataset import (
    DEFAULT_IMAGE_SIZE,
    TARGETS,
    FlairHubDataset,
    collate,
    label_target,
)
from flairlab.data.dataset_cache import CachedFlairHubDataset
from flairlab.data.errors import DataError
from flairlab.data.results import save_results, start_run
from flairlab.data.synthetic_tensors import is_synthetic, open_dataset
from flairlab.models.segmodel import (
    HEADS,
    SegmentationModel,
    autocast,
    build_encoder,
    build_head,
    class_names,
    n_classes_of,
    pick_device,
    reference_modality,
    save_finetuned,
    to_device,
)
from flairlab.training.baseline import run_baseline, save_baseline
from flairlab.training.compiling import compile_module, compile_setting
from flairlab.training.loop import resolve_precision, set_epoch, set_threads
from flairlab.training.metrics import SegmentationMetrics, evaluate, segmentation_loss
from flairlab.training.schedules import ema_momentum_at, ema_update, one_cycle_scheduler

FINAL_FACTOR = {"probe": 100.0, "finetune": 2.0}  # lr_max / lr at the last step of a phase
WARM_START = 1 / 25  # lr multiplier of the first warm-up step


# -- label subsampling --------------------------------------------------------------------------
def class_presence(ds: FlairHubDataset, target: str) -> np.ndarray:
    """(N, n_classes) bool: which evaluated classes occur in each patch's label raster."""
    if hasattr(ds, "class_presence"):  # datasets that know their labels without reading files
        return ds.class_presence(target)
    alias = TARGETS[target][0]
    name = ds.cat.modality(alias).name
    n = n_classes_of(target)
    out = np.zeros((len(ds), n), bool)
    for i, pid in enumerate(ds.patch_ids):
        y = label_target(ds.raw(alias, pid), target, ds.index.at[pid, name])
        ids = np.unique(y)
        out[i, ids[ids != IGNORE_INDEX]] = True
    return out


def subsample_patches(presence: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of `max(1, round(fraction·N))` patches out of N, reproducible for a seed.

    Stratified: classes are visited from the rarest (fewest patches) up; a class not yet present
    in the subset gets one random patch containing it, while the budget lasts; the remainder is
    drawn uniformly from the other patches. fraction >= 1 keeps everything.
    """
    N = presence.shape[0]
    if not fraction > 0:
        raise DataError("label_fraction", expected="> 0", found=fraction)
    if fraction >= 1 or N == 0:
        return np.arange(N)
    n_keep = max(1, round(fraction * N))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    covered = np.zeros(presence.shape[1], bool)
    counts = presence.sum(0)
    for c in sorted(np.flatnonzero(counts), key=lambda c: (counts[c], c)):
        if len(chosen) >= n_keep:
            break
        if covered[c]:
            continue
        candidates = np.setdiff1d(np.flatnonzero(presence[:, c]), chosen)
        i = int(rng.choice(candidates))
        chosen.append(i)
        covered |= presence[i]
    rest = np.setdiff1d(np.arange(N), chosen)
    extra = rng.choice(rest, n_keep - len(chosen), replace=False) if n_keep > len(chosen) else []
    return np.sort(np.concatenate([np.array(chosen, int), np.asarray(extra, int)]))


# -- configuration ------------------------------------------------------------------------------
@dataclass
class FinetuneConfig:
    """One fine-tuning run. `checkpoint` "" = scratch baseline (built from size/geometry)."""

    task: str = "cosia"
    modalities: list[str] = field(
        default_factory=lambda: ["aerial", "dem", "s2", "s1_asc", "s1_desc"]
    )
    checkpoint: str = ""
    scratch_like: str = ""  # scratch baseline copying this checkpoint's architecture (no weights)
    size: str = "nano"
    fusion_mode: str = "inter-group"
    image_size: dict[str, int] = field(default_factory=dict)
    patch_size: dict[str, int] = field(default_factory=dict)
    n_dates: dict[str, int] = field(default_factory=dict)
    label_size: int = 0  # label pixels per side (0 = native 512, i.e. 0.2 m)
    label_fraction: float = 1.0
    head: str = "upsample"  # upsample (light decoder + input skip) | attentive (MAESTRO)
    head_dim: int = 32  # width of the upsample head's decoder
    probe_steps: int = 30  # optimiser steps with the encoder frozen
    finetune_steps: int = 200  # optimiser steps training everything
    batch_size: int = 4
    head_lr: float = 1e-2  # base lr of the head (probe and fine-tuning); lr_max = base·√(batch/3)
    finetune_lr: float = 1e-3  # base lr of the encoder in fine-tuning
    warmup: float = 0.1  # share of each phase's steps spent warming up
    weight_decay: float = 0.01
    use_ema: bool = True
    feature_norm: bool = False  # BatchNorm (no affine) on tokens before the head (MAE-style probe)
    eval_every: int = 50  # validation every N optimiser steps (0: at the end of each phase only)
    patience: int = 0  # stop a phase after N validations without a better val mIoU (0: off)
    baseline: bool = True  # fit and report the per-pixel logistic-regression floor
    precision: str = "auto"  # auto (measured: fp32 or bf16 autocast), 32-true, bf16-mixed
    threads: int = 0  # torch CPU threads (0: the free cores: CPU quota minus other running jobs)
    cache: bool = True  # keep decoded rasters in memory (CachedFlairHubDataset)
    seed: int = 0
    subset_seed: int = -1  # -1 = seed
    source: str = "sample"
    root: str = ""  # dataset folder (overrides source)
    train_split: str = "train"
    val_split: str = "valid"
    test_split: str = "test"
    device: str = "auto"
    num_workers: int = 0
    compile: str = "auto"  # torch.compile: auto (CUDA) | true | false (training.compiling)

    def __post_init__(self) -> None:
        if isinstance(self.modalities, str):
            self.modalities = [m.strip() for m in self.modalities.split(",") if m.strip()]
        if self.task not in TARGETS:
            raise DataError("finetune task", expected=sorted(TARGETS), found=self.task)
        if not self.modalities:
            raise DataError("finetune modalities", expected="at least one", found="none")
        if not 0 < self.label_fraction <= 1:
            raise DataError("label_fraction", expected="in (0, 1]", found=self.label_fraction)
        if self.head not in HEADS:
            raise DataError("finetune head", expected=HEADS, found=self.head)
        for name in ("probe_steps", "finetune_steps", "eval_every", "patience"):
            if getattr(self, name) < 0:
                raise DataError(f"finetune {name}", expected=">= 0", found=getattr(self, name))
        if self.probe_steps + self.finetune_steps == 0:
            raise DataError("finetune budget", expected="probe_steps + finetune_steps > 0",
                            found=0)  # fmt: skip
        if not 0 <= self.warmup < 1:
            raise DataError("finetune warmup", expected="in [0, 1)", found=self.warmup)
        self.compile = compile_setting(self.compile)


# -- training -----------------------------------------------------------------------------------
def _loader(ds: FlairHubDataset, cfg: FinetuneConfig, shuffle: bool) -> DataLoader:
    g = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        generator=g,
        drop_last=False,
        pin_memory=torch.cuda.is_available(),
    )


class BatchStream:
    """Endless batches from successive shuffled epochs of a DataLoader (`set_epoch` per epoch),
    timing how long the caller waits for data (`wait_s`)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.epoch, self.wait_s = loader, 0, 0.0
        self._it = None

    def __next__(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        while True:
            if self._it is None:
                set_epoch(self.loader.dataset, self.epoch)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
                break
            except StopIteration:
                self._it, self.epoch = None, self.epoch + 1
        self.wait_s += time.perf_counter() - t0
        return batch


@dataclass
class PhaseResult:
    history: list[dict]  # one row per validation
    log: list[dict]  # one row per optimiser step: step, phase, lr, loss
    best: dict[str, Tensor] | None  # state dict of the best validation (patience > 0)
    best_step: int
    stopped_at: int
    compute_seconds: float  # forward, backward and optimiser steps (not data, not validation)


def train_phase(
    model: SegmentationModel,
    stream: BatchStream,
    val_loader: DataLoader,
    cfg: FinetuneConfig,
    phase: str,
    device: torch.device,
    ema: SegmentationModel | None = None,
    *,
    precision: str = "32-true",
    step0: int = 0,
) -> PhaseResult:
    """Probe (head only, frozen detached features) or fine-tune (encoder + head) for the phase's
    budget of optimiser steps. `step0`: optimiser steps already taken (global step numbers)."""
    steps = cfg.probe_steps if phase == "probe" else cfg.finetune_steps
    frozen = phase == "probe"
    for p in model.encoder.parameters():
        p.requires_grad_(not frozen)
    decoder = ("decoders.", "enc_to_dec.", "mask_tokens.", "pixel_heads.")
    encoder = [
        p
        for n, p in model.encoder.named_parameters()
        if p.requires_grad and not n.startswith(decoder)
    ]
    scale = math.sqrt(cfg.batch_size / 3)
    groups = [{"params": list(model.head.parameters()), "lr": cfg.head_lr * scale}]
    if encoder:
        groups.append({"params": encoder, "lr": cfg.finetune_lr * scale})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    sched = one_cycle_scheduler(opt, max(1, steps), FINAL_FACTOR[phase], cfg.warmup, WARM_START)
    evaluated = ema if ema is not None else model
    n_cls = n_classes_of(cfg.task)
    train_metrics = SegmentationMetrics(n_cls, class_names(cfg.task))
    history, log, losses = [], [], []
    best, best_miou, best_step, waited = None, -1.0, step0, 0
    t0, wait0, compute_s, step = time.perf_counter(), stream.wait_s, 0.0, 0
    bar = tqdm(total=steps, desc=phase, leave=False)
    for step in range(1, steps + 1):
        batch = to_device(next(stream), device)
        tc = time.perf_counter()
        model.train()
        with autocast(device, precision):
            logits = model(batch, frozen=frozen)
        loss = segmentation_loss(logits, batch[cfg.task])
        lr = opt.param_groups[-1]["lr"]  # the encoder's (the head's in the probe)
        if loss is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            train_metrics.update(logits.detach().float(), batch[cfg.task])
        sched.step()
        if ema is not None:
            ema_update(ema, model, ema_momentum_at(step - 1, steps))
        compute_s += time.perf_counter() - tc
        log.append({"step": step0 + step, "phase": phase, "lr": lr,
                    "loss": losses[-1] if loss is not None else float("nan")})  # fmt: skip
        bar.update(1)
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == steps:
            val = evaluate(evaluated, val_loader, cfg.task, device, precision=precision)
            train = train_metrics.compute()
            train_metrics.reset()
            history.append({
                "phase": phase, "step": step0 + step, "phase_step": step, "lr": lr,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "train_miou": train["miou"], "val_loss": val["loss"], "val_miou": val["miou"],
                "val_oa": val["oa"], "seconds": time.perf_counter() - t0,
                "data_seconds": stream.wait_s - wait0, "compute_seconds": compute_s,
            })  # fmt: skip
            losses = []
            bar.set_postfix(val_miou=f"{val['miou']:.3f}")
            if cfg.patience:
                if val["miou"] > best_miou:
                    best_miou, best_step, waited = val["miou"], step0 + step, 0
                    best = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
                else:
                    waited += 1
                    if waited >= cfg.patience:
                        break
    bar.close()
    return PhaseResult(history, log, best, best_step, step0 + step, compute_s)


def _warm_up(model: SegmentationModel, loader: DataLoader, task: str, device: torch.device,
             precision: str | None = None) -> None:  # fmt: skip
    """One probe and one fine-tuning step (forward + backward) on a first batch: compiles both
    graphs before training (validation data: reading it advances no training random stream)."""
    batch = to_device(next(iter(loader)), device)
    for frozen in (True, False):
        with autocast(device, precision):
            loss = segmentation_loss(model(batch, frozen=frozen), batch[task])
        if loss is not None:
            loss.backward()


# -- one run ------------------------------------------------------------------------------------
def make_datasets(cfg: FinetuneConfig, geometry: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Train (augmented), train-eval (same patches, evaluation mode, for the floor), val and
    test datasets of a run, and the class presence of the full training split. With
    `cfg.cache`, folder and store sources are read through `CachedFlairHubDataset`."""
    root = cfg.root or cfg.source
    if not cfg.root:  # a generated source (the sample, its store) is made on first use
        from flairlab.data.sources import ensure_source

        root = ensure_source(cfg.source)
    cached = cfg.cache and not is_synthetic(root)

    def dataset(split: str, **kw: Any):
        if cached:
            return CachedFlairHubDataset(root, split, **kw)
        return open_dataset(root, split, **kw)

    ds_args = dict(modalities=tuple(cfg.modalities), targets=(cfg.task,), seed=cfg.seed,
                   **geometry)  # fmt: skip
    full_train = dataset(cfg.train_split, train=False, **ds_args)
    presence = class_presence(full_train, cfg.task)
    keep = subsample_patches(
        presence, cfg.label_fraction, cfg.seed if cfg.subset_seed < 0 else cfg.subset_seed
    )
    ids = [full_train.patch_ids[i] for i in keep]
    out = {
        "train": dataset(cfg.train_split, train=True, patch_ids=ids, **ds_args),
        "train_eval": dataset(cfg.train_split, train=False, patch_ids=ids, **ds_args),
        "val": dataset(cfg.val_split, train=False, **ds_args),
        "test": dataset(cfg.test_split, train=False, **ds_args),
    }
    if cached:  # decoded rasters are the same whatever the mode: one cache for the split
        out["train"]._cache = out["train_eval"]._cache = full_train._cache
    return {**out, "presence": presence, "keep": keep, "ids": ids, "n_total": len(full_train)}


def run_finetune(
    cfg: FinetuneConfig, output_dir: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Probe → fine-tune → test, and the floor; writes `results.json`, `finetuned.safetensors`
    (+ `.json`) and `baseline.safetensors` to `output_dir` and returns the results dict.
    `output_dir` must be empty or new unless `overwrite` (the results of another run are never
    merged in)."""
    start_run(output_dir, overwrite)
    t_start = time.perf_counter()
    set_threads(cfg.threads)  # 0: the free cores (affinity, cgroup quota, other running jobs)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device.type)
    task, mods = cfg.task, list(cfg.modalities)
    encoder, info = build_encoder(
        cfg.checkpoint or cfg.scratch_like or None,
        mods,
        load_weights=bool(cfg.checkpoint),
        size=cfg.size,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        n_dates=cfg.n_dates,
        fusion_mode=cfg.fusion_mode,
    )
    mc = encoder.config
    label_size = cfg.label_size or DEFAULT_IMAGE_SIZE[task]
    geometry = {
        "image_size": {**{k: mc.modalities[k].image_size for k in mods}, task: label_size},
        "n_dates": {k: mc.modalities[k].n_dates for k in mods},
    }
    data = make_datasets(cfg, geometry)
    head = build_head(cfg.head, mc, mods, n_classes_of(task), label_size, dim=cfg.head_dim,
                      feature_norm=cfg.feature_norm)  # fmt: skip
    model = SegmentationModel(encoder, head, mods).to(device)
    stream = BatchStream(_loader(data["train"], cfg, True))
    val_loader = _loader(data["val"], cfg, False)
    warm_up = lambda: _warm_up(model, val_loader, task, device, precision)  # noqa: E731
    compiled = compile_module(model, cfg.compile, device, warm_up)
    probe = train_phase(model, stream, val_loader, cfg, "probe", device, precision=precision)
    ema = None
    if cfg.use_ema and cfg.finetune_steps > 0:
        ema = copy.deepcopy(model)
        for p in ema.parameters():
            p.requires_grad_(False)
    fine = train_phase(model, stream, val_loader, cfg, "finetune", device, ema,
                       precision=precision, step0=probe.stopped_at)  # fmt: skip
    last = fine if cfg.finetune_steps else probe
    final = ema if ema is not None else model
    if last.best is not None:
        final.load_state_dict(last.best)
    test_loader = _loader(data["test"], cfg, False)
    test = evaluate(final, test_loader, task, device, precision=precision)
    val = evaluate(final, val_loader, task, device, precision=precision)

    out = Path(output_dir)
    ref = reference_modality(mc, mods)
    save_finetuned(
        final,
        out / "finetuned.safetensors",
        {"task": task, "reference": ref, "geometry": geometry, "finetune": asdict(cfg)},
    )
    floor = None
    if cfg.baseline:
        pixel_model, floor = run_baseline(
            data["train_eval"], {"val": data["val"], "test": data["test"]}, task, mods,
            label_size, seed=cfg.seed,
        )  # fmt: skip
        save_baseline(pixel_model, out / "baseline.safetensors")
    names = class_names(task)
    presence, keep = data["presence"], data["keep"]
    history = probe.history + fine.history
    results = {
        "task": task,
        "modalities": mods,
        "label_fraction": cfg.label_fraction,
        "seed": cfg.seed,
        "pretrained": bool(cfg.checkpoint),
        "config": asdict(cfg),
        "model": info,
        "head": cfg.head,
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "compiled": compiled,
        "n_train_patches": len(data["ids"]),
        "n_train_total": data["n_total"],
        "train_patch_ids": data["ids"],
        "classes_in_train_subset": [names[c] for c in np.flatnonzero(presence[keep].any(0))],
        "classes_in_full_train": [names[c] for c in np.flatnonzero(presence.any(0))],
        "steps": {
            "probe": probe.stopped_at,
            "finetune": fine.stopped_at - probe.stopped_at,
            "total": fine.stopped_at,
            "selected": last.best_step if last.best is not None else last.stopped_at,
        },
        "history": history,
        "train_log": probe.log + fine.log,
        "val": val,
        "test": test,
        "test_miou": test["miou"],
        "test_oa": test["oa"],
        "baseline": floor,
        "baseline_test_miou": floor["test_miou"] if floor else None,
        "data_seconds": stream.wait_s,
        "compute_seconds": probe.compute_seconds + fine.compute_seconds,
        "seconds": time.perf_counter() - t_start,
    }
    save_results(out, results)
    return results


def parse_mapping(text: str) -> dict[str, int]:
    """`"aerial=64,dem=64"` (or `aerial:64`) -> {"aerial": 64, "dem": 64}; "" -> {}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.replace(":", "=").partition("=")
        if not key.strip() or not value.strip().isdigit():
            raise DataError("mapping entry", expected="key=int or key:int", found=part)
        out[key.strip()] = int(value)
    return out


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="probe + fine-tune a (pretrained or scratch) MAE encoder "
        "for COSIA / LPIS segmentation",
    )
    defaults = FinetuneConfig()
    for f in fields(FinetuneConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            p.add_argument(
                flag,
                type=lambda s: s.lower() in ("1", "true", "yes"),
                default=value,
                help=f"true/false (default {value})",
            )
        elif isinstance(value, (list, dict)):
            shown = ",".join(value) if isinstance(value, list) else "key=int,..."
            p.add_argument(flag, default=None, help=f"comma-separated (default {shown})")
        else:
            p.add_argument(flag, type=type(value), default=value, help=f"(default {value!r})")
    p.add_argument("--output-dir", default="outputs/finetune", help="results + weights folder")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output dir")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    kw: dict[str, Any] = {}
    for f in fields(FinetuneConfig):
        value = getattr(args, f.name)
        if value is None:
            continue
        if f.name in ("image_size", "patch_size", "n_dates"):
            value = parse_mapping(value)
        kw[f.name] = value
    res = run_finetune(FinetuneConfig(**kw), args.output_dir, overwrite=args.overwrite)
    print(
        f"{res['task']} {'pretrained' if res['pretrained'] else 'scratch'}: "
        f"test mIoU {res['test_miou']:.4f}, OA {res['test_oa']:.4f} after "
        f"{res['steps']['total']} steps ({res['n_train_patches']} train patches)"
    )
    if res["baseline"]:
        b = res["baseline"]
        print(f"floor (per-pixel logistic regression, same pixels): test mIoU "
              f"{b['test_miou']:.4f}, OA {b['test_oa']:.4f}")  # fmt: skip
    print(f"-> {Path(args.output_dir) / 'results.json'}")
    return 0
