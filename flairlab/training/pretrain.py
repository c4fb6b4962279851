"""MAESTRO pre-training: a plain loop on Lightning Fabric (one process or DDP under torchrun).

    flairlab pretrain --config configs/pretrain_cpu.yaml --set train.epochs=2
    torchrun --nproc_per_node=4 -m flairlab.training.pretrain --config configs/pretrain_full.yaml
    pretrain({"model": {...}, "train": {...}}, dataset=my_dataset)      # from a notebook

Optimisation per spec R6: AdamW β = (0.9, 0.99), weight decay 0.01 on all parameters (except
the contrastive temperature `contrastive.logit_scale`), lr_max = base_lr·sqrt(B_total / 3) with
B_total = batch × devices × nodes × grad_accum, OneCycle (start lr_max/1000, cosine warm-up to
lr_max over `warmup_frac` of the steps, cosine decay to lr_max/final_factor). Precision `auto` =
bf16 autocast on CUDA and on CPUs with native bf16.

Objectives (`train.objective`: mae | contrastive | both): see `flairlab.training.pretrainer`.
Metric keys: `loss` (the optimised total), `loss_mae`, `loss_<modality>` (MAE), and the
contrastive logs as `contrastive_<key>` (`contrastive_loss`, `contrastive_acc_<a>_<b>`,
`contrastive_temperature`, CCL-K `contrastive_w_offdiag_mass` = weight mass on other samples…).

Reproducibility: the data order comes from (seed, epoch), `FlairHubDataset`'s random draws
(dates, offsets, flips) from (seed, epoch, sample index) and the masking RNG is reseeded from
(seed, rank, micro-step), so resuming from any checkpoint — mid-epoch included, after a kill -9 —
continues exactly where the run stopped: the final weights equal an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from flairlab.data.errors import DataError
from flairlab.data.results import write_json_atomic
from flairlab.models.checkpoint import (
    describe_diff,
    load_state,
    load_weights,
    read_json,
    resolve_checkpoint,
    save_checkpoint,
)
from flairlab.models.mae import MAE
from flairlab.models.mae_config import config_diff
from flairlab.training.compiling import compile_module
from flairlab.training.loop import (
    EpochBatchSampler,
    MetricLog,
    collate_fn,
    cpu_supports_bf16,
    resolve_precision,
    rng_state,
    set_epoch,
    set_rng_state,
    set_threads,
    step_seed,
)
from flairlab.training.pretrain_config import (
    RUN_CONTROL,
    DataConfig,
    PretrainConfig,
    TrainConfig,
    build_dataset,
    load_config,
    notebook_config,
)
from flairlab.training.pretrainer import DECODER, Pretrainer, build_pretrainer, param_groups
from flairlab.training.schedules import one_cycle_scheduler

__all__ = [
    "DECODER",
    "DataConfig",
    "EpochBatchSampler",
    "PretrainConfig",
    "Pretrainer",
    "TrainConfig",
    "build_pretrainer",
    "cpu_supports_bf16",
    "load_config",
    "notebook_config",
    "param_groups",
    "pretrain",
]


# -- devices and precision -------------------------------------------------------------------
def make_fabric(tc: TrainConfig):  # -> lightning.fabric.Fabric
    from lightning.fabric import Fabric

    devices, nodes = tc.devices, 1
    if "LOCAL_WORLD_SIZE" in os.environ:  # torchrun / torchelastic
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        nodes = int(os.environ.get("WORLD_SIZE", devices)) // devices
    strategy = "auto"
    if devices * nodes > 1:  # contrastive-only: modalities outside the pairs get no gradient
        strategy = "ddp_find_unused_parameters_true" if tc.objective == "contrastive" else "ddp"
    precision = resolve_precision(tc.precision, tc.accelerator)
    fabric = Fabric(accelerator=tc.accelerator, devices=devices, num_nodes=nodes,
                    strategy=strategy, precision=precision)  # fmt: skip
    fabric.launch()
    return fabric


def lr_max(tc: TrainConfig, world: int) -> float:
    return tc.base_lr * math.sqrt(tc.batch_size * world * tc.grad_accum / 3)


# -- the loop --------------------------------------------------------------------------------
def pretrain(
    config: dict | PretrainConfig,
    dataset: Dataset | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Pre-train (or resume) and return a summary dict (also written to `summary.json`).

    Writes to `output_dir`: `metrics.csv` / `metrics.json` (one row per logged step),
    `checkpoints/step_*/` (see flairlab.models.checkpoint), `summary.json`."""
    cfg = config if isinstance(config, PretrainConfig) else PretrainConfig.from_dict(config)
    tc = cfg.train
    set_threads(tc.threads)  # 0: the free cores (affinity, cgroup quota, other running jobs)
    fabric = make_fabric(tc)
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    ckpt, err = None, None
    if fabric.global_rank == 0:
        try:
            ckpt = _resume_point(cfg, ckpt_root)
        except DataError as e:
            err = str(e)
    ckpt, err = fabric.broadcast((ckpt, err), src=0)
    if err:
        raise DataError(err)

    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    module = build_pretrainer(cfg)
    model, contrastive = module.mae, module.contrastive
    world = fabric.world_size
    peak = lr_max(tc, world)
    fused = fabric.device.type in ("cpu", "cuda")  # one fused kernel instead of a per-tensor loop
    opt = torch.optim.AdamW(param_groups(module, tc.weight_decay), lr=peak, betas=tc.betas,
                            fused=fused)  # fmt: skip

    if dataset is None:
        if fabric.global_rank == 0:
            from flairlab.data.sources import ensure_source

            ensure_source(cfg.data.source)  # generated once, before the other ranks read it
        fabric.barrier()
        dataset = build_dataset(cfg)
    sampler = EpochBatchSampler(len(dataset), tc.batch_size, cfg.seed, fabric.global_rank, world)
    steps_per_epoch = sampler.per_epoch // tc.grad_accum
    if steps_per_epoch < 1:
        raise DataError("train.grad_accum", expected=f"≤ {sampler.per_epoch} (batches per epoch)",
                        found=tc.grad_accum)  # fmt: skip
    sampler.per_epoch = steps_per_epoch * tc.grad_accum  # no partial accumulation at epoch end
    total = tc.steps or steps_per_epoch * tc.epochs
    sched = one_cycle_scheduler(opt, total, tc.final_factor, tc.warmup_frac)

    step = 0
    if ckpt is not None:
        load_weights(model, Path(ckpt) / "model.safetensors")
        if contrastive is not None:
            load_weights(contrastive, Path(ckpt) / "extra.safetensors")
    module, opt = fabric.setup(module, opt)
    if ckpt is not None:  # after setup, so that the optimizer state lands on the device
        state = load_state(Path(ckpt))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        set_rng_state(state["rng"])
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=collate_fn(dataset),
                        generator=torch.Generator().manual_seed(cfg.seed))  # fmt: skip
    loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
    warm_up = lambda: fabric.backward(module(next(iter(loader)))[0])  # noqa: E731
    compiled = compile_module(module.module, tc.compile, fabric.device, warm_up)

    rank0 = fabric.global_rank == 0
    log = MetricLog(out, step) if rank0 else None
    if rank0:
        write_json_atomic(out / "pretrain_config.json", cfg.to_dict())
    last_step = min(total, tc.stop_at_step) if tc.stop_at_step else total
    bar = tqdm(total=total, initial=step, desc="pretrain", disable=not (progress and rank0))
    t_last, n_last = time.perf_counter(), step
    logs: dict[str, Tensor] = {}
    vals: dict[str, float] = {}
    while step < last_step:
        epoch, start = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, start * tc.grad_accum)
        set_epoch(dataset, epoch)
        micro = 0
        for batch in loader:
            micro_step = step * tc.grad_accum + micro
            torch.manual_seed(step_seed(cfg.seed, fabric.global_rank, micro_step))
            accumulating = micro + 1 < tc.grad_accum
            with fabric.no_backward_sync(module, enabled=accumulating):
                loss, logs = module(batch)
                fabric.backward(loss / tc.grad_accum)
            if accumulating:
                micro += 1
                continue
            micro = 0
            if tc.grad_clip > 0:
                fabric.clip_gradients(module, opt, max_norm=tc.grad_clip)
            lr = opt.param_groups[0]["lr"]  # the rate this step used
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step < total:
                sched.step()
            bar.update(1)
            if step % tc.log_every == 0 or step == last_step:
                vec = fabric.all_reduce(
                    torch.stack([v.float() for v in logs.values()]), reduce_op="mean"
                )
                vals = dict(zip(logs, vec.tolist(), strict=True))
                dt = time.perf_counter() - t_last
                rate = (step - n_last) * tc.batch_size * tc.grad_accum * world / max(dt, 1e-9)
                t_last, n_last = time.perf_counter(), step
                if rank0:
                    log.add({"step": step, "epoch": epoch, "lr": lr, **vals,
                             "samples_per_s": rate})  # fmt: skip
                    bar.set_postfix(loss=f"{vals['loss']:.4f}")
            end_of_epoch = step % steps_per_epoch == 0
            due = step % tc.ckpt_every == 0 if tc.ckpt_every else end_of_epoch
            if due or step == last_step:
                _checkpoint(
                    fabric, ckpt_root, step, epoch, model, contrastive, cfg, opt, sched, log
                )
            if step == last_step or end_of_epoch:
                break
    bar.close()
    summary = {
        "step": step,
        "total_steps": total,
        "epochs": total / steps_per_epoch,
        "world_size": world,
        "precision": resolve_precision(tc.precision, tc.accelerator),
        "device": str(fabric.device),
        "compiled": compiled,
        "lr_max": peak,
        "objective": tc.objective,
        "final_loss": vals.get("loss"),  # optimised total, mean over ranks at the last logged step
        "final_loss_mae": vals.get("loss_mae"),
        "final_contrastive_loss": vals.get("contrastive_loss"),
        "ranks_in_sync": _ranks_in_sync(fabric, model),
        "checkpoint": str(resolve_checkpoint(ckpt_root)) if ckpt_root.exists() else None,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_trained_parameters": sum(p.numel() for g in opt.param_groups for p in g["params"]),
    }
    if rank0:
        write_json_atomic(out / "summary.json", summary)
    fabric.barrier()
    return summary


def _resume_point(cfg: PretrainConfig, ckpt_root: Path) -> str | None:
    """Checkpoint folder to resume from, after checking the run configuration still fits it."""
    has = (ckpt_root / "latest.json").exists()
    if not cfg.resume:
        if has:
            raise DataError(
                "output_dir already holds a run (not overwritten)",
                path=ckpt_root,
                expected="resume=true or a new output_dir",
                found="checkpoints",
            )
        return None
    if not has:
        return None
    ckpt = resolve_checkpoint(ckpt_root)
    saved = read_json(ckpt / "pretrain.json")
    current = cfg.to_dict()
    diff = [n for n in config_diff(saved, current) if n not in RUN_CONTROL]
    if diff:
        raise DataError(
            "checkpoint does not fit this configuration; differing fields: "
            + describe_diff(diff, saved, current),
            path=ckpt / "pretrain.json",
        )
    return str(ckpt)


def _checkpoint(fabric, root, step, epoch, model, contrastive, cfg, opt, sched, log) -> None:
    if fabric.global_rank == 0:
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                 "epoch": epoch, "rng": rng_state()}  # fmt: skip
        extra = contrastive.state_dict() if contrastive is not None else None
        save_checkpoint(root, step, model, cfg.to_dict(), state, extra, cfg.train.keep_checkpoints)
        log.flush_json()
    fabric.barrier()


def _ranks_in_sync(fabric, model: MAE) -> bool:
    """Whether every rank holds the same weights (a DDP sanity check)."""
    if fabric.world_size == 1:
        return True
    import torch.distributed as dist

    vec = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(fabric.device)
    lo, hi = vec.clone(), vec.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


# -- command line ----------------------------------------------------------------------------
def _parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", help="YAML file (configs/pretrain_cpu.yaml, pretrain_full.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. --set train.epochs=2 --set model.size=small",
    )
    p.add_argument("--output-dir", help="shortcut for --set output_dir=...")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    data = load_config(args.config, args.set)
    if args.output_dir:
        data["output_dir"] = args.output_dir
    if args.resume:
        data["resume"] = True
    summary = pretrain(data, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print({k: summary[k] for k in ("step", "final_loss", "world_size", "checkpoint")})
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    _parser(sub.add_parser("pretrain", help="pre-train the MAESTRO masked autoencoder"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flairlab.training.pretrain")
    return _run(_parser(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
