"""Which pre-training objective helps most at 10 % labels? (issue 7, item 4)

Arms (each pre-trained with the same budget: same preset, steps, batch, learning rate, seed;
``--base-lr`` 3e-4 because the cpu preset's 1e-3 made contrastive-only training collapse to
constant embeddings, while the MAE reaches the same loss at either rate on the sample):

* ``mae``        MAESTRO masked autoencoder only;
* ``infonce``    cross-modal InfoNCE only (aerial↔S2, aerial↔S1-asc, S2↔S1-asc; no masking);
* ``cclk_fair``  CCL-K fair, conditioned on the domain (indicator kernel), only;
* ``both``       MAE + w·InfoNCE (w = ``--weight``) on the visible tokens of the masked pass;
* ``scratch``    no pre-training (same architecture), as the reference.

Each pre-trained encoder is then fine-tuned with `flairlab.training.finetune.run_finetune` (probe,
then full fine-tuning, EMA) on the same class-stratified ``--label-fraction`` of the labelled
training
patches, with the same settings; test mIoU / OA over ``--seeds`` (each seed re-runs the
pre-training and the fine-tuning) are written to ``results_<tag>.json`` / ``.md``, tag =
fine-tuning settings (``p10-f30-lr0.0002``): several fine-tuning schedules share the pre-trained
encoders of one ``--out``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/objective_comparison.py \\
        --out outputs/objective_comparison [--root /tmp/cmp_sample] [--seeds 0,1,2]

Finished pre-training runs and fine-tuning results in ``--out`` are reused (interrupted runs
resume), so the script can be re-run to add seeds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: 2 shared cores

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flairlab.data.errors import DataError
from flairlab.data.results import write_json_atomic
from flairlab.training.finetune import FinetuneConfig, run_finetune
from flairlab.training.pretrain_config import preset_config

PAIRS = ["aerial:s2", "aerial:s1_asc", "s2:s1_asc"]
ARMS: dict[str, dict[str, Any] | None] = {
    "mae": {"objective": "mae"},
    "infonce": {"objective": "contrastive", "contrastive": {"kind": "infonce", "pairs": PAIRS}},
    "cclk_fair": {
        "objective": "contrastive",
        "contrastive": {"kind": "cclk", "variant": "fair", "condition": "domain", "pairs": PAIRS},
    },
    "both": {"objective": "both", "contrastive": {"kind": "infonce", "pairs": PAIRS}},
    "scratch": None,
}
DIAGNOSTICS = ("loss", "loss_mae", "contrastive_loss", "contrastive_acc_aerial_s2",
               "contrastive_temperature", "contrastive_w_offdiag_mass",
               "contrastive_w_orphan_frac")  # fmt: skip


def summarise(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "values": a.tolist()}  # fmt: skip


def pretrain_arm(arm: str, seed: int, root: Path, out: Path, args: argparse.Namespace) -> dict:
    """Pre-train one arm (or reuse the finished run in `out`); returns summary + diagnostics."""
    from flairlab.training.pretrain import pretrain

    spec = ARMS[arm]
    cfg = preset_config(args.preset)
    train = {**cfg.get("train", {}), "epochs": args.pretrain_epochs, "precision": "32-true",
             "threads": 1, "batch_size": args.batch_size, "base_lr": args.base_lr,
             "objective": spec["objective"],
             "contrastive": spec.get("contrastive", {})}  # fmt: skip
    if spec["objective"] == "both":
        train["contrastive_weight"] = args.weight
    cfg.update(output_dir=str(out), seed=seed, train=train, resume=(out / "checkpoints").exists())
    cfg["data"] = {**cfg.get("data", {}), "source": str(root), "split": "train"}
    t0 = time.perf_counter()
    summary = pretrain(cfg, progress=False)  # a finished run only checks the settings fit
    seconds = time.perf_counter() - t0
    bench = out / "bench_pretrain.json"
    if bench.exists():
        return json.loads(bench.read_text())
    rows = json.loads((out / "metrics.json").read_text())
    first, last = rows[0], rows[-1]
    result = {
        "summary": summary,
        "seconds": seconds,
        "first_step": {k: first[k] for k in DIAGNOSTICS if k in first},
        "last_step": {k: last[k] for k in DIAGNOSTICS if k in last},
        "mean_last_epoch": {
            k: float(np.mean([r[k] for r in rows if r["epoch"] == last["epoch"]]))
            for k in DIAGNOSTICS
            if k in last
        },
    }
    write_json_atomic(bench, result)
    return result


def finetune_arm(checkpoint: str, scratch_like: str, seed: int, root: Path, out: Path,
                 args: argparse.Namespace) -> dict:  # fmt: skip
    cfg = FinetuneConfig(
        task=args.task, root=str(root), seed=seed, label_fraction=args.label_fraction,
        checkpoint=checkpoint, scratch_like=scratch_like, probe_epochs=args.probe_epochs,
        finetune_epochs=args.finetune_epochs, label_size=args.label_size, device="cpu",
        finetune_lr=args.finetune_lr, eval_every=args.eval_every,
    )  # fmt: skip
    done = out / "results.json"
    if done.exists():
        res = json.loads(done.read_text())
        if res.get("config") != json.loads(json.dumps(asdict(cfg))):
            raise DataError("fine-tuning results made with other settings (not overwritten)",
                            path=done, expected="the same settings or a new --out")  # fmt: skip
        return res
    return run_finetune(cfg, out)


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"# Pre-training objectives at {s['label_fraction']:.0%} labels ({s['task']})",
        "",
        f"Sample `{s['root']}` ({s['n_train_total']} train patches, {s['n_train_labelled']} "
        f"labelled in fine-tuning); seeds {s['seeds']}; pre-training: preset `{s['preset']}`, "
        f"{s['pretrain_steps']} steps ({s['pretrain_epochs']} epochs × batch {s['batch_size']}, "
        f"base lr {s['base_lr']:g}); "
        f"fine-tuning: probe {s['probe_epochs']} + fine-tune {s['finetune_epochs']} epochs "
        f"(fine-tune base lr {s['finetune_lr']:g}), batch 4, "
        f"labels {s['label_size']} px. Mean ± std over seeds (std = 0 with one seed).",
        "",
        "| arm | objective | test mIoU | test OA | Δ mIoU vs scratch (paired) | probe val mIoU |"
        " pretrain s / seed | last-epoch pretrain loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, m in result["summary"].items():

        def f(key: str, m=m) -> str:
            return f"{m[key]['mean']:.4f} ± {m[key]['std']:.4f}"

        loss = m.get("final_pretrain_loss")
        delta = "–"
        if "delta_test_miou_vs_scratch" in m:
            d = m["delta_test_miou_vs_scratch"]
            delta = f"{d['mean']:+.4f} ± {d['std']:.4f}"
        lines.append(
            f"| {arm} | {m['objective']} | {f('test_miou')} | {f('test_oa')} | {delta} | "
            f"{f('probe_val_miou')} | {m.get('pretrain_seconds', 0):.0f} | "
            f"{'–' if loss is None else f'{loss:.4f}'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/objective_comparison")
    ap.add_argument("--root", default="/tmp/cmp_sample", help="sample folder (made if missing)")
    ap.add_argument("--n-patches", type=int, default=40)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--base-lr", type=float, default=3e-4, help="all arms (see above)")
    ap.add_argument("--weight", type=float, default=1.0, help="w of the 'both' arm")
    ap.add_argument("--label-fraction", type=float, default=0.1)
    ap.add_argument("--probe-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=30)
    ap.add_argument("--finetune-lr", type=float, default=2e-4)
    ap.add_argument("--eval-every", type=int, default=1, help="validation every N epochs")
    ap.add_argument("--label-size", type=int, default=128)
    ap.add_argument("--task", default="cosia")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out, root = Path(args.out), Path(args.root)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise DataError("--arms", expected=list(ARMS), found=bad)
    from flairlab.data.sample import ensure_sample

    ensure_sample(root, n_patches=args.n_patches, progress=False)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    tag = f"p{args.probe_epochs}-f{args.finetune_epochs}-lr{args.finetune_lr:g}"
    t0 = time.perf_counter()
    runs = []
    for seed in seeds:
        arch = ""  # scratch copies the architecture of a pre-trained arm of the same seed
        for arm in arms:
            pre = None
            if ARMS[arm] is not None:
                pre = pretrain_arm(arm, seed, root, out / f"seed{seed}" / f"pretrain_{arm}", args)
                arch = pre["summary"]["checkpoint"]
            elif not arch:
                raise DataError("--arms: scratch needs a pre-trained arm before it", found=arms)
            ckpt = str(out / f"seed{seed}" / f"pretrain_{arm}") if pre else ""
            res = finetune_arm(ckpt, "" if pre else arch, seed, root,
                               out / f"seed{seed}" / f"finetune_{arm}_{tag}", args)  # fmt: skip
            probe = [h for h in res["history"] if h["phase"] == "probe"]
            runs.append({
                "arm": arm, "seed": seed,
                "objective": ARMS[arm]["objective"] if pre else "none (scratch)",
                "test_miou": res["test_miou"], "test_oa": res["test_oa"],
                "probe_val_miou": probe[-1]["val_miou"] if probe else float("nan"),
                "final_val_miou": res["history"][-1]["val_miou"],
                "n_train_patches": res["n_train_patches"], "n_train_total": res["n_train_total"],
                "train_patch_ids": res["train_patch_ids"], "finetune_seconds": res["seconds"],
                "pretrain": pre,
            })  # fmt: skip
            print(f"seed {seed} {arm:10s} test mIoU {res['test_miou']:.4f} "
                  f"OA {res['test_oa']:.4f}", flush=True)  # fmt: skip

    summary = {}
    for arm in arms:
        rows = [r for r in runs if r["arm"] == arm]
        m = {k: summarise([r[k] for r in rows])
             for k in ("test_miou", "test_oa", "probe_val_miou")}  # fmt: skip
        m["objective"] = rows[0]["objective"]
        if rows[0]["pretrain"] is not None:
            m["pretrain_seconds"] = float(np.mean([r["pretrain"]["seconds"] for r in rows]))
            m["final_pretrain_loss"] = float(
                np.mean([r["pretrain"]["mean_last_epoch"]["loss"] for r in rows])
            )
        if "scratch" in arms and arm != "scratch":  # paired by seed (same labelled subset)
            base = {r["seed"]: r["test_miou"] for r in runs if r["arm"] == "scratch"}
            m["delta_test_miou_vs_scratch"] = summarise(
                [r["test_miou"] - base[r["seed"]] for r in rows]
            )
        summary[arm] = m
    first = runs[0]
    steps = next((r["pretrain"]["summary"]["total_steps"] for r in runs if r["pretrain"]), 0)
    settings = {**{k: v for k, v in vars(args).items()}, "root": str(root), "seeds": seeds,
                "arms": {a: ARMS[a] for a in arms}, "pretrain_steps": steps,
                "n_train_total": first["n_train_total"],
                "n_train_labelled": first["n_train_patches"], "torch_threads": 1}  # fmt: skip
    result = {"settings": settings, "summary": summary, "runs": runs,
              "seconds": time.perf_counter() - t0}  # fmt: skip
    write_json_atomic(out / f"results_{tag}.json", result)
    (out / f"results_{tag}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
