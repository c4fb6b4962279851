"""Does self-supervised pre-training beat training from scratch? The study of issue 13.

On the 250-patch toy sample (`flairlab sample --all-toy`: 150 train, 50 valid, 50 test patches):

1. **pre-train** the CPU model (configs/pretrain_cpu.yaml geometry) on the unlabelled training
   patches twice — MAESTRO's masked autoencoder (`mae`) and cross-modal InfoNCE (`contrastive`,
   base lr 3e-4) — for `--pretrain-steps` (`--contrastive-steps`) optimiser steps; while the loss
   has not plateaued (its drop over the last 10 % of the steps is ≥ `--plateau` of its drop
   since the first 10 %) again with twice the steps, up to 8×;
2. **fine-tune** from each encoder and from random weights of the same architecture (`scratch`)
   at label fractions 0.1 and 1.0, three seeds each (the seed also draws the labelled subset,
   identical for the three arms), with the fine-tuning protocol of notebook 04 (probe, then
   fine-tuning with EMA, head `upsample`): every arm runs until its validation mIoU has
   plateaued — validation every `--eval-every` steps, stop after `--patience` checks without a
   better one (at most `--max-steps`), the best validation weights are tested;
3. **diagnose**: linear probes of frozen features (pre-trained vs random init, the same pixel
   subset) and the reconstruction loss per modality of the MAE on the validation split;
4. **report** `benchmarks/reported/ssl_study.json` (the issue's exact shape), `ssl_study.md`,
   `ssl_study.png` and `ssl_study_details.json` (every run's scores, steps, floors, probes).

    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/ssl_study.py > ssl_study.log 2>&1 &

Runs are kept in `--work` (default `outputs/ssl_study/`); finished pre-training and fine-tuning
runs are reused, so an interrupted study continues where it stopped. Target: ≤ 2 h on 2 cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: 2 shared cores
os.environ.setdefault("TQDM_DISABLE", "1")  # a log file, not a terminal

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flairlab.data.results import write_json_atomic
from flairlab.runs.provenance import git_info
from flairlab.training.finetune import FinetuneConfig, run_finetune
from flairlab.training.pretrain_config import preset_config

REPO = Path(__file__).resolve().parents[1]
ARMS = ("scratch", "mae", "contrastive")
FRACTIONS = ("0.1", "1.0")
PAIRS = ["aerial:s2", "aerial:s1_asc", "s2:s1_asc"]
PRETRAIN = {
    "mae": {"objective": "mae"},
    "contrastive": {"objective": "contrastive", "base_lr": 3e-4,
                    "contrastive": {"kind": "infonce", "pairs": PAIRS}},
}  # fmt: skip


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def plateau(metrics: list[dict[str, float]], key: str = "loss") -> dict[str, float]:
    """How flat the end of a loss curve is: the drop of the mean `key` between the 10 % of the
    steps before the last 10 % and the last 10 %, as a share of the whole drop since the first
    10 % (a loss that keeps falling towards 0, as a contrastive loss memorising 150 patches
    does, plateaus when its last drops are small next to what it has already fallen)."""
    vals = np.array([r[key] for r in metrics if key in r], float)
    n = max(1, len(vals) // 10)
    first, before, last = vals[:n].mean(), vals[-2 * n : -n].mean(), vals[-n:].mean()
    return {"first": float(first), "before": float(before), "last": float(last),
            "relative_change": float((before - last) / max(abs(first - last), 1e-12))}  # fmt: skip


def pretrain_arm(name: str, root: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train with `--pretrain-steps`; while the loss has not plateaued, again with twice the
    steps (a new run: the one-cycle schedule spans the whole budget), up to 8× the start."""
    from flairlab.training.pretrain import pretrain

    start = steps = args.pretrain_steps if name == "mae" else args.contrastive_steps
    key = "loss_mae" if name == "mae" else "contrastive_loss"
    while True:
        out = work / f"pretrain_{name}_{steps}"
        if (out / "summary.json").exists():
            summary = json.loads((out / "summary.json").read_text())
        else:
            cfg = preset_config("cpu")
            cfg["output_dir"] = str(out)
            cfg["seed"] = 0
            cfg["resume"] = (out / "checkpoints" / "latest.json").exists()
            cfg["data"] = {**cfg["data"], "source": str(root), "split": "train", "n_patches": 0,
                           "cache": True}  # fmt: skip
            cfg["train"] = {**cfg["train"], "steps": steps, "epochs": 0,
                            "batch_size": args.pretrain_batch, "threads": args.threads,
                            "precision": "32-true", "log_every": 5, "ckpt_every": 250,
                            **PRETRAIN[name]}  # fmt: skip
            log(f"pre-training {name}: {steps} steps")
            summary = pretrain(cfg, progress=False)
        rows = json.loads((out / "metrics.json").read_text())
        flat = plateau(rows, key)
        log(f"pre-training {name}, {steps} steps: {flat}")
        if flat["relative_change"] < args.plateau or steps >= 8 * start:
            return {"run": str(out), "summary": summary, "plateau": flat,
                    "plateaued": flat["relative_change"] < args.plateau,
                    "curve": [(r["step"], r[key]) for r in rows]}  # fmt: skip
        steps *= 2


def finetune_arm(
    arm: str, fraction: str, seed: int, root: Path, work: Path, checkpoints: dict[str, str],
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    out = work / "finetune" / f"{arm}_f{fraction}_s{seed}"
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text())
    cfg = FinetuneConfig(
        root=str(root), seed=seed, label_fraction=float(fraction),
        checkpoint=checkpoints[arm] if arm != "scratch" else "",
        scratch_like=checkpoints["mae"] if arm == "scratch" else "",
        image_size={"aerial": 128, "dem": 128}, n_dates={"s2": 4, "s1_asc": 2, "s1_desc": 2},
        label_size=128, head=args.head, probe_steps=args.probe_steps,
        finetune_steps=args.max_steps, eval_every=args.eval_every, patience=args.patience,
        threads=args.threads, precision="32-true", baseline=arm == "scratch",
    )  # fmt: skip
    t0 = time.perf_counter()
    res = run_finetune(cfg, out, overwrite=True)  # no results.json: an interrupted attempt
    log(f"{arm:12s} f={fraction} seed {seed}: test mIoU {res['test_miou']:.4f} "
        f"(steps {res['steps']}, {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return res


def diagnostics(root: Path, checkpoints: dict[str, str], work: Path) -> dict[str, Any]:
    """Linear probes of frozen features (each pre-trained encoder and a random one) fitted on
    the 10 % subset of seed 0 and on all training patches; MAE reconstruction per modality."""
    from flairlab.data.dataset_cache import CachedFlairHubDataset
    from flairlab.models.checkpoint import load_mae
    from flairlab.models.segmodel import build_encoder
    from flairlab.training.probes import linear_probe, reconstruction_quality

    path = work / "diagnostics.json"
    if path.exists():
        return json.loads(path.read_text())
    mods = ["aerial", "dem", "s2", "s1_asc", "s1_desc"]
    kw = dict(modalities=mods, targets=("cosia",), train=False,
              image_size={"aerial": 128, "dem": 128, "cosia": 128},
              n_dates={"s2": 4, "s1_asc": 2, "s1_desc": 2})  # fmt: skip
    full = CachedFlairHubDataset(root, "train", **kw)
    subset = json.loads((work / "finetune" / "scratch_f0.1_s0" / "results.json").read_text())
    small = CachedFlairHubDataset(root, "train", patch_ids=subset["train_patch_ids"], **kw)
    val = CachedFlairHubDataset(root, "valid", **kw)
    test = CachedFlairHubDataset(root, "test", **kw)
    out: dict[str, Any] = {"linear_probe": {}}
    for name in ("random", *PRETRAIN):
        torch.manual_seed(0)
        enc, _ = build_encoder(checkpoints["mae" if name == "random" else name], mods,
                               load_weights=name != "random")  # fmt: skip
        out["linear_probe"][name] = {
            frac: linear_probe(enc, ds, {"val": val, "test": test}, "cosia", mods, 128)
            for frac, ds in (("0.1", small), ("1.0", full))
        }
        log(f"linear probe {name}: " + ", ".join(
            f"{f} test {r['test_miou']:.3f}" for f, r in out["linear_probe"][name].items()))
    out["reconstruction"] = reconstruction_quality(load_mae(checkpoints["mae"]), val)
    torch.manual_seed(0)
    random_mae, _ = build_encoder(checkpoints["mae"], mods, load_weights=False)
    out["reconstruction_random_init"] = reconstruction_quality(random_mae, val)
    write_json_atomic(path, out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(REPO / "data" / "flairhub-toy250"))
    ap.add_argument("--work", default=str(REPO / "outputs" / "ssl_study"))
    ap.add_argument("--report", default=str(REPO / "benchmarks" / "reported" / "ssl_study"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pretrain-steps", type=int, default=1000, help="MAE, first budget")
    ap.add_argument("--contrastive-steps", type=int, default=2000, help="first budget")
    ap.add_argument("--pretrain-batch", type=int, default=8)
    ap.add_argument("--head", default="upsample")
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--plateau", type=float, default=0.005)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.commit = git_commit()  # the code that runs (recorded at the start)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    root, work = Path(args.root), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not (root / ".flairlab-sample.json").exists():
        from flairlab.data.sample import make_sample

        log(f"generating the 250-patch toy sample in {root}")
        make_sample(root, all_toy=True, progress=False)

    pre = {name: pretrain_arm(name, root, work, args) for name in PRETRAIN}
    checkpoints = {name: p["run"] for name, p in pre.items()}
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict[str, dict[str, list[dict]]] = {a: {f: [] for f in FRACTIONS} for a in ARMS}
    for fraction in FRACTIONS:
        for seed in seeds:
            for arm in ARMS:
                res = finetune_arm(arm, fraction, seed, root, work, checkpoints, args)
                runs[arm][fraction].append(res)
    diag = diagnostics(root, checkpoints, work)
    spent = work / "seconds.json"  # summed over the invocations of an interrupted study
    earlier = json.loads(spent.read_text())["seconds"] if spent.exists() else 0.0
    seconds = earlier + time.perf_counter() - t_start
    write_json_atomic(spent, {"seconds": seconds})
    write_report(runs, pre, diag, seeds, args, seconds)
    return 0


def git_commit() -> str:
    """HEAD, with `+dirty` when tracked files differ from it."""
    info = git_info(REPO)
    return "unknown" if info is None else info["commit"] + ("+dirty" if info["dirty"] else "")


def write_report(runs, pre, diag, seeds, args, seconds: float) -> None:
    from flairlab.runs.study import markdown_table, plot_study, study_table

    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ssl_study.py " + " ".join(sys.argv[1:])

    def per_run(fn) -> dict[str, dict[str, list]]:
        return {a: {f: [fn(r) for r in runs[a][f]] for f in FRACTIONS} for a in ARMS}

    study = {
        "metric": "test_miou",
        "arms": per_run(lambda r: r["test_miou"]),
        "steps": {
            "pretrain": {name: p["summary"]["step"] for name, p in pre.items()},
            "finetune": per_run(lambda r: r["steps"]["total"]),
            "selected": per_run(lambda r: r["steps"]["selected"]),
        },
        "pipeline": cmd.strip(),
        "commit": args.commit,
    }
    write_json_atomic(report.with_suffix(".json"), study)
    floors = {f: [r["baseline"]["test_miou"] for r in runs["scratch"][f]] for f in FRACTIONS}
    details = {
        "seeds": seeds, "arguments": vars(args), "seconds": seconds,
        "floor_test_miou": floors,
        "pretrain": {k: {kk: v[kk] for kk in ("run", "plateau", "plateaued", "summary", "curve")}
                     for k, v in pre.items()},
        "diagnostics": diag,
        "runs": {a: {f: [{k: r[k] for k in ("seed", "test_miou", "test_oa", "steps",
                                            "n_train_patches", "train_patch_ids", "seconds")}
                         | {"val_miou": r["val"]["miou"],
                            "history": [(h["step"], h["val_miou"]) for h in r["history"]]}
                         for r in runs[a][f]] for f in FRACTIONS} for a in ARMS},
    }  # fmt: skip
    write_json_atomic(report.parent / f"{report.name}_details.json", details)
    table = study_table(study, floors)
    fig = plot_study(study, floors)
    fig.savefig(report.with_suffix(".png"), dpi=120, bbox_inches="tight")
    lines = [
        "# Pre-training study: MAE, contrastive and random init (test mIoU, 3 seeds)", "",
        f"Command: `{study['pipeline']}` at commit `{study['commit'][:10]}`, "
        f"{seconds / 3600:.1f} h. 250-patch toy sample (150 train / 50 valid / 50 test); "
        f"pre-training on the 150 unlabelled training patches; fine-tuning at 10 % (15 "
        "patches, the same subset for the three arms of a seed) and 100 % of the labels, "
        "until the validation mIoU plateaued. Floor: per-pixel logistic regression on the "
        "same pixels.", "", markdown_table(table), "",
    ]  # fmt: skip
    (report.with_suffix(".md")).write_text("\n".join(lines), encoding="utf-8")
    log(f"report -> {report.with_suffix('.json')}\n{table}")


if __name__ == "__main__":
    sys.exit(main())
