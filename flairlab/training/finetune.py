"""Fine-tuning and evaluation: attentive probe, then full fine-tuning (maestro-method.md §8).

One run = **probe** (encoder frozen, features detached, only the head trains) → **fine-tune**
(everything trains; evaluation uses an EMA copy of the weights) → test on the held-out split.
A run without a checkpoint is the **from-scratch baseline**: same architecture, same phases, the
encoder starts from random weights. Tasks: `cosia` (15 evaluated classes, 15-18 ignored) and
`lpis` (level 1, 23 classes); any subset of modalities.

Optimisation (§8.2, R6): AdamW β = (0.9, 0.99), weight decay 0.01,
`lr_max = base_lr · sqrt(batch / 3)`, per-step one-cycle schedule (start lr_max/1000, cosine
rise over the first 20 % of steps, cosine decay to lr_max/1e7 for the probe and lr_max/2 for
fine-tuning). EMA updated once per fine-tuning epoch with `m = max(0, 1 − 1/(0.2·E))`.
Deviations: base learning rates default to values that move in a few epochs on a small sample
(the paper's 1e-5 is for 15-100 epochs over 241 k tiles); the EMA copy starts from the model at
the start of fine-tuning (the reference starts it at random init, quirk §13.7).

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
from flairlab.data.errors import DataError
from flairlab.data.results import save_results, start_run
from flairlab.data.synthetic_tensors import open_dataset
from flairlab.models.heads import SegmentationHead
from flairlab.models.segmodel import (
    SegmentationModel,
    autocast,
    build_encoder,
    class_names,
    n_classes_of,
    pick_device,
    save_finetuned,
    to_device,
)
from flairlab.training.compiling import compile_module, compile_setting
from flairlab.training.metrics import evaluate, segmentation_loss
from flairlab.training.schedules import ema_momentum, ema_update, one_cycle

FINAL_FACTOR = {"probe": 1e7, "finetune": 2.0}


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
    probe_epochs: int = 2
    finetune_epochs: int = 4
    batch_size: int = 4
    probe_lr: float = 1e-3  # base lr; lr_max = base · sqrt(batch / 3)
    finetune_lr: float = 2e-4
    weight_decay: float = 0.01
    use_ema: bool = True
    feature_norm: bool = False  # BatchNorm (no affine) on tokens before the head (MAE-style probe)
    seed: int = 0
    subset_seed: int = -1  # -1 = seed
    source: str = "sample"
    root: str = ""  # dataset folder (overrides source)
    train_split: str = "train"
    val_split: str = "valid"
    test_split: str = "test"
    device: str = "auto"
    num_workers: int = 0
    eval_every: int = 1  # validation every N epochs (and after the last one)
    max_steps_per_epoch: int = 0  # 0 = whole epoch (CI / smoke runs use a few)
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
        generator=g,
        drop_last=False,
        pin_memory=torch.cuda.is_available(),
    )


def train_phase(
    model: SegmentationModel,
    loader: DataLoader,
    val_loader: DataLoader,
    cfg: FinetuneConfig,
    phase: str,
    device: torch.device,
    ema: SegmentationModel | None = None,
) -> list[dict]:
    """Probe (head only, frozen detached features) or fine-tune (all encoder + head weights)."""
    epochs = cfg.probe_epochs if phase == "probe" else cfg.finetune_epochs
    frozen = phase == "probe"
    for p in model.encoder.parameters():
        p.requires_grad_(not frozen)
    decoder = ("decoders.", "enc_to_dec.", "mask_tokens.", "pixel_heads.")
    params = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and not n.removeprefix("encoder.").startswith(decoder)
    ]
    base = cfg.probe_lr if frozen else cfg.finetune_lr
    lr_max = base * math.sqrt(cfg.batch_size / 3)
    opt = torch.optim.AdamW(params, lr=lr_max, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    steps = (
        len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)
    )
    total = max(1, epochs * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: one_cycle(s, total, FINAL_FACTOR[phase])
    )
    m = ema_momentum(epochs)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        loader.dataset.set_epoch(epoch + (0 if frozen else cfg.probe_epochs))
        losses = []
        for step, batch in enumerate(
            tqdm(loader, desc=f"{phase} {epoch + 1}/{epochs}", leave=False)
        ):
            if step >= steps:
                break
            batch = to_device(batch, device)
            with autocast(device):
                logits = model(batch, frozen=frozen)
            loss = segmentation_loss(logits, batch[cfg.task])
            lr = opt.param_groups[0]["lr"]
            if loss is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            sched.step()
        if ema is not None:
            ema_update(ema, model, m)
        val = {"miou": float("nan"), "oa": float("nan")}
        if (epoch + 1) % max(1, cfg.eval_every) == 0 or epoch + 1 == epochs:
            val = evaluate(ema if ema is not None else model, val_loader, cfg.task, device,
                           cfg.max_steps_per_epoch)  # fmt: skip
        history.append(
            {
                "phase": phase,
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "val_miou": val["miou"],
                "val_oa": val["oa"],
                "seconds": time.perf_counter() - t0,
            }
        )
    return history


def _warm_up(model: SegmentationModel, loader: DataLoader, task: str, device: torch.device) -> None:
    """One probe and one fine-tuning step (forward + backward) on a first batch: compiles both
    graphs before training (validation data: reading it advances no training random stream)."""
    batch = to_device(next(iter(loader)), device)
    for frozen in (True, False):
        with autocast(device):
            loss = segmentation_loss(model(batch, frozen=frozen), batch[task])
        if loss is not None:
            loss.backward()


# -- one run ------------------------------------------------------------------------------------
def run_finetune(
    cfg: FinetuneConfig, output_dir: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Probe → fine-tune → test; writes `results.json` and `finetuned.safetensors` (+ `.json`)
    to `output_dir` and returns the results dict. `output_dir` must be empty or new unless
    `overwrite` (the results of another run are never merged in)."""
    start_run(output_dir, overwrite)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
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
    root = cfg.root or cfg.source
    if not cfg.root:  # a generated source (the sample, its store) is made on first use
        from flairlab.data.sources import ensure_source

        root = ensure_source(cfg.source)
    ds_args = dict(modalities=tuple(mods), targets=(task,), seed=cfg.seed, **geometry)
    full_train = open_dataset(root, cfg.train_split, train=True, **ds_args)
    presence = class_presence(full_train, task)
    keep = subsample_patches(
        presence, cfg.label_fraction, cfg.seed if cfg.subset_seed < 0 else cfg.subset_seed
    )
    train_ids = [full_train.patch_ids[i] for i in keep]
    train_ds = open_dataset(root, cfg.train_split, train=True, patch_ids=train_ids, **ds_args)
    val_ds = open_dataset(root, cfg.val_split, train=False, **ds_args)
    test_ds = open_dataset(root, cfg.test_split, train=False, **ds_args)

    ref = "aerial" if "aerial" in mods else max(mods, key=mc.token_grid)
    head = SegmentationHead(
        mc.embed_dim,
        n_classes_of(task),
        mc.token_grid(ref),
        label_size,
        feature_norm=cfg.feature_norm,
    )
    model = SegmentationModel(encoder, head, mods).to(device)
    train_loader, val_loader = _loader(train_ds, cfg, True), _loader(val_ds, cfg, False)
    warm_up = lambda: _warm_up(model, val_loader, task, device)  # noqa: E731
    compiled = compile_module(model, cfg.compile, device, warm_up)
    history = train_phase(model, train_loader, val_loader, cfg, "probe", device)
    ema = None
    if cfg.use_ema and cfg.finetune_epochs > 0:
        ema = copy.deepcopy(model)
        for p in ema.parameters():
            p.requires_grad_(False)
    history += train_phase(model, train_loader, val_loader, cfg, "finetune", device, ema)
    final = ema if ema is not None else model
    test = evaluate(final, _loader(test_ds, cfg, False), task, device)
    val = evaluate(final, val_loader, task, device)

    out = Path(output_dir)
    save_finetuned(
        final,
        out / "finetuned.safetensors",
        {"task": task, "reference": ref, "geometry": geometry, "finetune": asdict(cfg)},
    )
    names = class_names(task)
    results = {
        "task": task,
        "modalities": mods,
        "label_fraction": cfg.label_fraction,
        "seed": cfg.seed,
        "pretrained": bool(cfg.checkpoint),
        "config": asdict(cfg),
        "model": info,
        "device": str(device),
        "compiled": compiled,
        "n_train_patches": len(train_ids),
        "n_train_total": len(full_train),
        "train_patch_ids": train_ids,
        "classes_in_train_subset": [names[c] for c in np.flatnonzero(presence[keep].any(0))],
        "classes_in_full_train": [names[c] for c in np.flatnonzero(presence.any(0))],
        "history": history,
        "val": val,
        "test": test,
        "test_miou": test["miou"],
        "test_oa": test["oa"],
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
        f"test mIoU {res['test_miou']:.4f}, OA {res['test_oa']:.4f} "
        f"({res['n_train_patches']} train patches) -> {Path(args.output_dir) / 'results.json'}"
    )
    return 0
