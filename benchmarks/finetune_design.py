"""Which fine-tuning model fits a CPU? Side-by-side variants, scored by step, beside the floor.

Every variant fine-tunes from scratch on the same data (default: the embedded 40-patch sample,
all labels, 128-px labels at 0.8 m) for the same number of optimiser steps, one torch thread,
with cached reads; validation every `--eval-every` steps. Reported per variant: validation mIoU
by step, test mIoU / OA of the final (EMA) weights, model compute and data wait per step. The
floor (per-pixel logistic regression on the same training pixels) is fitted once.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/finetune_design.py \\
        [--out benchmarks/reported/finetune_design] [--variants attentive_p16,...] [--steps 300]

Writes `<out>.json` and `<out>.md` (a table). Variants are `VARIANTS` below: geometry (aerial /
DEM token size), head, learning rate, EMA.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from flairlab.data.results import write_json_atomic
from flairlab.training.finetune import FinetuneConfig, make_datasets, run_finetune

RUNS = Path(__file__).resolve().parents[1] / "outputs" / "finetune_design"  # weights: not committed
CPU = dict(image_size={"aerial": 128, "dem": 128}, n_dates={"s2": 4, "s1_asc": 2, "s1_desc": 2},
           label_size=128)  # fmt: skip
P16 = {"aerial": 16, "dem": 32}  # 12.8 m aerial tokens, 25.6 m DEM tokens (8 × 8, 4 × 4)
P8 = {"aerial": 8, "dem": 16}  # 6.4 m / 12.8 m (16 × 16, 8 × 8)
UP, ATT = dict(head="upsample", patch_size=P16), dict(head="attentive", patch_size=P16)
VARIANTS: dict[str, dict] = {  # lr: base learning rates (× sqrt(batch / 3)) of head / encoder
    "attentive_p16_lr1e-3": dict(ATT, head_lr=1e-3, finetune_lr=1e-3),
    "attentive_p16": dict(ATT, head_lr=1e-2, finetune_lr=1e-3),
    "attentive_p8": dict(ATT, patch_size=P8, head_lr=1e-2, finetune_lr=1e-3),
    "upsample_p16_lr1e-3": dict(UP, head_lr=1e-3, finetune_lr=1e-3),
    "upsample_p16_lr3e-3": dict(UP, head_lr=3e-3, finetune_lr=3e-3),
    "upsample_p16_head3e-3": dict(UP, head_lr=3e-3, finetune_lr=1e-3),
    "upsample_p16": dict(UP, head_lr=1e-2, finetune_lr=1e-3),  # the CPU default
    "upsample_p16_head3e-2": dict(UP, head_lr=3e-2, finetune_lr=1e-3),
    "upsample_p16_enc3e-3": dict(UP, head_lr=1e-2, finetune_lr=3e-3),
    "upsample_p16_dim16": dict(UP, head_lr=1e-2, finetune_lr=1e-3, head_dim=16),
    "upsample_p16_noema": dict(UP, head_lr=1e-2, finetune_lr=1e-3, use_ema=False),
    "upsample_p16_bf16": dict(UP, head_lr=1e-2, finetune_lr=1e-3, precision="bf16-mixed"),
    "upsample_p8": dict(UP, patch_size=P8, head_lr=1e-2, finetune_lr=1e-3),
    "upsample_p16_900_steps": dict(UP, head_lr=1e-2, finetune_lr=1e-3, finetune_steps=900),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/reported/finetune_design")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--root", default="", help="dataset folder (default: the embedded sample)")
    ap.add_argument("--label-fraction", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    path = out.with_suffix(".json")
    report = json.loads(path.read_text()) if path.exists() else {"variants": {}}
    common = dict(CPU, probe_steps=0, finetune_steps=args.steps, eval_every=args.eval_every,
                  threads=1, root=args.root, label_fraction=args.label_fraction,
                  seed=args.seed)  # fmt: skip
    if "baseline" not in report:
        from flairlab.models.segmodel import build_encoder
        from flairlab.training.baseline import run_baseline

        cfg = FinetuneConfig(**common)
        enc, _ = build_encoder(None, cfg.modalities, size="nano", patch_size=P16, **{
            k: cfg.__dict__[k] for k in ("image_size", "n_dates")})  # fmt: skip
        mc = enc.config
        geometry = {"image_size": {**{k: mc.modalities[k].image_size for k in cfg.modalities},
                                   "cosia": 128},
                    "n_dates": {k: mc.modalities[k].n_dates for k in cfg.modalities}}  # fmt: skip
        data = make_datasets(cfg, geometry)
        _, rec = run_baseline(data["train_eval"], {"val": data["val"], "test": data["test"]},
                              "cosia", cfg.modalities, 128)  # fmt: skip
        report["baseline"] = {k: rec[k] for k in ("val_miou", "test_miou", "test_oa",
                                                  "n_train_pixels", "fit_seconds")}  # fmt: skip
        write_json_atomic(path, report)
    for name in [v for v in args.variants.split(",") if v]:
        if name in report["variants"]:
            continue
        t0 = time.perf_counter()
        cfg = FinetuneConfig(**{**common, **VARIANTS[name], "baseline": False})
        res = run_finetune(cfg, RUNS / name, overwrite=True)
        steps = res["steps"]["total"]
        report["variants"][name] = {
            "settings": VARIANTS[name],
            "val_miou_by_step": {h["step"]: h["val_miou"] for h in res["history"]},
            "train_miou_by_step": {h["step"]: h["train_miou"] for h in res["history"]},
            "test_miou": res["test_miou"], "test_oa": res["test_oa"],
            "compute_ms_per_step": 1e3 * res["compute_seconds"] / steps,
            "data_ms_per_step": 1e3 * res["data_seconds"] / steps,
            "n_parameters": sum(t.numel() for t in load_file(
                str(RUNS / name / "finetuned.safetensors")).values()),
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        write_json_atomic(path, report)
        v = report["variants"][name]
        curve = [round(x, 3) for x in v["val_miou_by_step"].values()]
        print(f"{name:24s} test mIoU {v['test_miou']:.3f}  val {curve}  "
              f"compute {v['compute_ms_per_step']:.0f} ms/step", flush=True)
    write_table(report, out.with_suffix(".md"), args)


def write_table(report: dict, path: Path, args: argparse.Namespace) -> None:
    b = report["baseline"]
    lines = [f"# Fine-tuning design on CPU (from scratch, {args.steps} steps unless named, "
             "batch 4, "
             "1 thread)", "", "Command: `OMP_NUM_THREADS=1 .venv/bin/python "
             "benchmarks/finetune_design.py`; embedded 40-patch sample (24 train / 8 valid / 8 "
             "test patches), all labels, 128-px labels (0.8 m). Timings on a shared 2-core "
             "machine (other jobs running): compare them within the table only.",
             "", f"Floor (per-pixel logistic regression, same training pixels): test mIoU "
             f"{b['test_miou']:.3f}, OA {b['test_oa']:.3f}.", "",
             "| variant | val mIoU by step | test mIoU | test OA | compute ms/step | "
             "data ms/step | parameters |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, v in report["variants"].items():
        curve = " → ".join(f"{x:.2f}" for x in v["val_miou_by_step"].values())
        lines.append(f"| {name} | {curve} | {v['test_miou']:.3f} | {v['test_oa']:.3f} | "
                     f"{v['compute_ms_per_step']:.0f} | {v['data_ms_per_step']:.0f} | "
                     f"{v['n_parameters'] / 1e6:.2f} M |")  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
