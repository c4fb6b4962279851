"""Does MAE pre-training beat training from scratch when labels are scarce? (issue 6, item 5)

1. pre-train the MAE (configs/pretrain_cpu.yaml unless `--pretrain-config`) on the unlabelled
   training patches of the sample;
2. for each seed: fine-tune the pretrained encoder and a from-scratch copy of the same
   architecture on the same `--label-fraction` of the labelled training patches (same stratified
   subset for both), same probe + fine-tune schedule;
3. report test mIoU / OA (mean ± standard deviation over seeds) and the probe-only validation
   mIoU (frozen features: pretrained vs random) as a diagnostic; write everything to JSON.

    .venv/bin/python benchmarks/ssl_vs_scratch.py --out outputs/ssl_vs_scratch \
        [--root DIR | --n-patches 40] [--pretrain-epochs 30] [--seeds 0,1,2] [--label-fraction 0.1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from flairlab.data.results import write_json_atomic
from flairlab.training.finetune import FinetuneConfig, run_finetune

REPO = Path(__file__).resolve().parents[1]


def summarise(values: list[float]) -> dict[str, float | list[float]]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "values": a.tolist()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/ssl_vs_scratch")
    ap.add_argument("--root", default="", help="dataset folder (default: generate a sample)")
    ap.add_argument("--n-patches", type=int, default=40, help="patches of a generated sample")
    ap.add_argument("--pretrain-config", default=str(REPO / "configs" / "pretrain_cpu.yaml"))
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--checkpoint", default="", help="reuse a pre-training run instead")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--label-fraction", type=float, default=0.1)
    ap.add_argument("--probe-epochs", type=int, default=60)
    ap.add_argument("--finetune-epochs", type=int, default=60)
    ap.add_argument("--probe-lr", type=float, default=3e-3)
    ap.add_argument("--finetune-lr", type=float, default=5e-4)
    ap.add_argument("--feature-norm", type=int, default=1, help="1: BatchNorm before the head")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--label-size", type=int, default=128)
    ap.add_argument("--task", default="cosia")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()

    root = Path(args.root) if args.root else out / "sample"
    if not args.root and not root.exists():
        from flairlab.data.sample import make_sample

        make_sample(root, n_patches=args.n_patches, seed=0)

    pre_summary = None
    checkpoint = args.checkpoint
    if not checkpoint:
        from flairlab.training.pretrain import pretrain

        cfg = yaml.safe_load(Path(args.pretrain_config).read_text(encoding="utf-8"))
        cfg["output_dir"] = str(out / "pretrain")
        cfg["data"] = {**cfg.get("data", {}), "source": str(root), "split": "train"}
        cfg["train"] = {**cfg.get("train", {}), "epochs": args.pretrain_epochs}
        cfg["resume"] = (out / "pretrain" / "checkpoints").exists()
        pre_summary = pretrain(cfg)
        checkpoint = str(out / "pretrain")

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = []
    for seed in seeds:
        for arm in ("pretrained", "scratch"):
            cfg = FinetuneConfig(
                task=args.task, root=str(root), seed=seed, label_fraction=args.label_fraction,
                checkpoint=checkpoint if arm == "pretrained" else "",
                scratch_like=checkpoint if arm == "scratch" else "",
                probe_epochs=args.probe_epochs, finetune_epochs=args.finetune_epochs,
                probe_lr=args.probe_lr, finetune_lr=args.finetune_lr,
                feature_norm=bool(args.feature_norm), eval_every=args.eval_every,
                label_size=args.label_size,
            )  # fmt: skip
            res = run_finetune(cfg, out / f"{arm}_seed{seed}")
            probe = [h for h in res["history"] if h["phase"] == "probe"]
            runs.append({
                "arm": arm, "seed": seed, "test_miou": res["test_miou"], "test_oa": res["test_oa"],
                "probe_val_miou": probe[-1]["val_miou"] if probe else None,
                "final_val_miou": res["history"][-1]["val_miou"],
                "n_train_patches": res["n_train_patches"], "n_train_total": res["n_train_total"],
                "train_patch_ids": res["train_patch_ids"], "seconds": res["seconds"],
            })  # fmt: skip
            print(
                f"seed {seed} {arm:10s} test mIoU {res['test_miou']:.4f} "
                f"OA {res['test_oa']:.4f} probe-val mIoU {runs[-1]['probe_val_miou']:.4f}"
            )

    summary = {}
    for arm in ("pretrained", "scratch"):
        rows = [r for r in runs if r["arm"] == arm]
        summary[arm] = {k: summarise([r[k] for r in rows])
                        for k in ("test_miou", "test_oa", "probe_val_miou")}  # fmt: skip
    deltas = [p["test_miou"] - s["test_miou"] for p, s in
              zip(runs[0::2], runs[1::2], strict=True)]  # fmt: skip
    summary["delta_test_miou"] = summarise(deltas)
    result = {
        "question": "pretrained vs scratch, same architecture, same labelled subset",
        "label_fraction": args.label_fraction, "seeds": seeds, "task": args.task,
        "root": str(root), "checkpoint": checkpoint, "pretrain": pre_summary,
        "protocol": {k: getattr(args, k) for k in ("probe_epochs", "finetune_epochs", "probe_lr",
                                                    "finetune_lr", "feature_norm", "label_size")},
        "summary": summary, "runs": runs, "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    write_json_atomic(out / "results.json", result)
    for arm in ("pretrained", "scratch"):
        m = summary[arm]["test_miou"]
        print(f"{arm:10s}: test mIoU {m['mean']:.4f} ± {m['std']:.4f} over {len(seeds)} seeds")
    d = summary["delta_test_miou"]
    print(f"pretrained − scratch: {d['mean']:+.4f} ± {d['std']:.4f}  -> {out / 'results.json'}")


if __name__ == "__main__":
    main()
