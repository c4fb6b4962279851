"""MAE pre-training step speed on this machine: FLOP/s vs the matmul rate, bf16 vs fp32.

For each model size (default tiny and small) at the chosen geometry, in a fresh subprocess (so that
the peak RSS belongs to that configuration alone), measured side by side in one run:

* the fp32 (and bf16) matmul rate of a 2048² GEMM — the machine's practical peak;
* a full training step (masking, forward, backward, fused AdamW) in fp32 and under bf16 autocast:
  model FLOPs from the per-layer count of `flairlab.models.flops` (matmuls, convolutions,
  attention; torch's FlopCounterMode misses the CPU flash-attention kernel), step time,
  samples/s; peak resident memory.

Prints achieved-FLOP/s ÷ fp32-matmul-rate (goal ≥ 0.7) and bf16/fp32 step time (goal ≤ 0.6 on
CPUs with AVX512-BF16 or AMX).

    .venv/bin/python benchmarks/bench_train.py [--sizes tiny small] [--geometry flair|cpu]
        [--batch 2] [--steps 3] [--threads 0]

On a machine shared with other jobs use `--threads 1`: with more OpenMP threads than free cores
every small op waits for a descheduled thread and steps get 5-20x slower (measured here).
Results are also written to benchmarks/results/bench_train_<geometry>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from flairlab.models.flops import pretrain_flops
from flairlab.models.mae import MAE
from flairlab.models.mae_config import MAEConfig, flair_modalities
from flairlab.training.pretrain import cpu_supports_bf16

ROOT = Path(__file__).resolve().parents[1]


def geometry(name: str) -> dict:
    if name == "flair":  # spec R1: 1880 tokens per sample
        return flair_modalities()
    if name == "cpu":  # configs/pretrain_cpu.yaml: 280 tokens per sample
        return flair_modalities(image_size={"aerial": 128, "dem": 128},
                                n_dates={"s2": 4, "s1_asc": 2, "s1_desc": 2})  # fmt: skip
    raise SystemExit(f"unknown geometry {name!r}")


def random_batch(cfg: MAEConfig, B: int) -> dict:
    batch = {"ref_date": torch.tensor([[[2021, 180, 0]]] * B)}
    for k, m in cfg.modalities.items():
        batch[k] = torch.rand(B, m.n_dates, m.in_chans, m.image_size, m.image_size)
        d = torch.zeros(B, m.n_dates, 3, dtype=torch.int64)
        d[..., 0], d[..., 1] = 2021, torch.randint(1, 366, (B, m.n_dates))
        batch[f"{k}_dates"] = d
    return batch


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def time_steps(model: MAE, batch: dict, opt, bf16: bool, steps: int) -> tuple[float, float]:
    """(median seconds per step, FLOPs per step)."""

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    B = next(iter(batch.values())).shape[0]
    return sorted(times)[len(times) // 2], float(pretrain_flops(model.config, B).total)


def one(size: str, geom: str, B: int, steps: int) -> dict:
    torch.manual_seed(0)
    cfg = MAEConfig(modalities=geometry(geom), size=size)
    model = MAE(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), fused=True)
    batch = random_batch(cfg, B)
    res = {"size": size, "geometry": geom, "batch": B, "tokens": cfg.n_tokens(),
           "visible": cfg.n_visible(), "threads": torch.get_num_threads()}  # fmt: skip
    res["matmul_fp32"] = matmul_rate(torch.float32)
    res["matmul_bf16"] = matmul_rate(torch.bfloat16)
    for name, bf16 in (("fp32", False), ("bf16", True)):
        t, flops = time_steps(model, batch, opt, bf16, steps)
        res[f"{name}_step_s"], res[f"{name}_flops"] = t, flops
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def report(r: dict) -> None:
    fp32, bf16 = r["fp32_step_s"], r["bf16_step_s"]
    ach32 = r["fp32_flops"] / fp32
    ach16 = r["bf16_flops"] / bf16
    print(f"\n== {r['size']} @ {r['geometry']} geometry ({r['tokens']} tokens, {r['visible']} "
          f"visible), batch {r['batch']}, {r['threads']} threads")  # fmt: skip
    print(f"  matmul rate         fp32 {r['matmul_fp32'] / 1e9:7.1f} GFLOP/s   "
          f"bf16 {r['matmul_bf16'] / 1e9:7.1f} GFLOP/s")  # fmt: skip
    print(f"  step FLOPs          {r['fp32_flops'] / 1e9:7.1f} GFLOP "
          f"({r['fp32_flops'] / 1e9 / r['batch']:.1f} per sample)")  # fmt: skip
    print(f"  step time           fp32 {fp32:7.3f} s   bf16 {bf16:7.3f} s")
    print(f"  samples/s           fp32 {r['batch'] / fp32:7.2f}     bf16 {r['batch'] / bf16:7.2f}")
    print(f"  achieved / fp32 matmul rate: fp32 {ach32 / r['matmul_fp32']:.2f}   "
          f"bf16 {ach16 / r['matmul_fp32']:.2f}   (goal >= 0.7)")  # fmt: skip
    print(f"  achieved bf16 / bf16 matmul rate: {ach16 / r['matmul_bf16']:.2f}")
    print(f"  bf16 / fp32 step time: {bf16 / fp32:.2f}   (goal <= 0.6 with native bf16)")
    print(f"  peak RSS            {r['peak_rss_mb']:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--geometry", default="flair", choices=["flair", "cpu"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per precision (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(args.one, args.geometry, args.batch, args.steps)))
        return
    print(f"CPU native bf16: {cpu_supports_bf16()}; torch {torch.__version__}")
    results = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", size, "--geometry", args.geometry,
               "--batch", str(args.batch), "--steps", str(args.steps),
               "--threads", str(args.threads)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        report(results[-1])
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench_train_{args.geometry}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
