"""GPU benchmark: MAE pre-training and fine-tuning steps — time, samples/s, memory, FLOP/s, MFU.

    python benchmarks/bench_gpu.py [--sizes tiny,medium] [--batch 32] [--json out.json]
    python benchmarks/bench_gpu.py --device cpu --quick     # exercise the code on CPU (no numbers)

Without a CUDA device (and without `--device cpu`) it prints "no CUDA device" and exits 0.

Cases, in this order (most wanted first, so that a time budget cuts the least wanted):

1. `matmul`: an 8192³ bf16 matrix product, the measured ceiling (METHOD.md: use it beside the
   datasheet peak);
2. `pretrain`: for each size (`tiny`; `medium` = the paper's "Base"), inter-group, at the FLAIR-HUB
   default geometry (1880 tokens, 470 visible), one training step = masking, forward, backward,
   fused AdamW, in `bf16` (autocast), `bf16-compile` (+ torch.compile through
   `flairlab.training.compiling`) and `fp32` (TF32 off, torch's default);
3. `finetune`: encoder + attentive segmentation head at 512-px COSIA labels (bf16, bf16-compile);
4. `flop-check`: torch's FlopCounterMode on one eager step against the per-layer count;
5. `data`: samples/s of the data path with N workers against the measured training samples/s —
   synthetic tensors (always), GeoTIFF (rasterio importable and a dataset: the embedded sample or
   `--geotiff-root`), packed store (`--store`; "skipped: no store" / "no zarr" otherwise).

Step time is the median of `--steps` steps timed with CUDA events after `--warmup` steps (the
first of which includes compilation: `first_step_s`). FLOPs per step come from
`flairlab.models.flops` (model FLOPs, 3 × forward matmuls); MFU = FLOP/s ÷ the datasheet dense
bf16 peak of the device (`--peak-tflops` to override); `of_matmul` = FLOP/s ÷ the measured
matmul rate. Peak memory = `torch.cuda.max_memory_allocated` over the timed steps.
One table is printed; `--json` writes every number.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from flairlab.data.dataset import collate
from flairlab.data.synthetic_tensors import SyntheticTensorDataset
from flairlab.models.flops import mfu, peak_bf16_flops, pretrain_flops, segmentation_flops
from flairlab.models.heads import SegmentationHead
from flairlab.models.mae import MAE
from flairlab.models.mae_config import MAEConfig, flair_modalities
from flairlab.models.segmodel import SegmentationModel
from flairlab.training.compiling import compile_module
from flairlab.training.metrics import segmentation_loss

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "no CUDA device: nothing to measure here (run on a GPU machine, or --device cpu)"
QUICK_GEOMETRY = dict(image_size={"aerial": 64, "dem": 64},
                      n_dates={"s2": 4, "s1_asc": 2, "s1_desc": 2})  # fmt: skip
N_CLASSES, LABEL_SIZE = 15, 512  # COSIA, 0.2 m labels


# -- set-up ----------------------------------------------------------------------------------
def model_config(size: str, quick: bool) -> MAEConfig:
    mods = flair_modalities(**QUICK_GEOMETRY) if quick else flair_modalities()
    return MAEConfig(modalities=mods, size=size, fusion_mode="inter-group")


def device_batch(cfg: MAEConfig, batch: int, device: torch.device, label_size: int) -> dict:
    """`batch` synthetic items at the model geometry (with COSIA labels), on `device`."""
    mods = cfg.modalities
    ds = SyntheticTensorDataset(
        f"synthetic:{batch}", "train", modalities=tuple(mods),
        image_size={**{k: m.image_size for k, m in mods.items()}, "cosia": label_size},
        n_dates={k: m.n_dates for k, m in mods.items()}, targets=("cosia",),
    )  # fmt: skip
    items = collate([ds[i] for i in range(batch)])
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in items.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict:
    """First-step seconds (compilation), median step seconds, peak memory of the timed steps."""
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"first_step_s": first, "step_s": statistics.median(times),
            "step_s_min": min(times), "step_s_max": max(times), "peak_gib": peak}  # fmt: skip


def autocast(device: torch.device, mode: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.startswith("bf16"))


def free(device: torch.device) -> None:
    """Drop compiled graphs (they hold the last case's model) and cached GPU memory."""
    import torch._dynamo

    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- cases -----------------------------------------------------------------------------------
def matmul_case(device: torch.device, n: int) -> dict:
    """bf16 n×n×n product rate (mean of 10 after 3 warm-ups, random data)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    dt = (time.perf_counter() - t) / 10
    return {"case": "matmul", "dtype": str(dtype).removeprefix("torch."), "n": n,
            "tflops": 2 * n**3 / dt / 1e12}  # fmt: skip


def pretrain_case(size: str, mode: str, args, device: torch.device) -> dict:
    cfg = model_config(size, args.quick)
    torch.manual_seed(0)
    model = MAE(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = device_batch(cfg, args.batch, device, LABEL_SIZE if not args.quick else 64)
    if mode.endswith("compile"):
        compile_module(model, "true", device, mode=args.compile_mode)
    counter = iter(range(10**9))

    def step() -> None:
        torch.manual_seed(next(counter))
        with autocast(device, mode):
            loss = model(batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = pretrain_flops(cfg, args.batch)
    res = time_steps(step, device, args.warmup, args.steps)
    return {"case": "pretrain", "size": size, "mode": mode, "batch": args.batch,
            "tokens": cfg.n_tokens(), "visible": cfg.n_visible(),
            "gflop_per_sample": flops.per_sample / 1e9, "flop_per_step": flops.total,
            **res}  # fmt: skip


def segmentation_model(cfg: MAEConfig, label_size: int) -> SegmentationModel:
    head = SegmentationHead(cfg.embed_dim, N_CLASSES, cfg.token_grid("aerial"), label_size)
    return SegmentationModel(MAE(cfg), head, list(cfg.modalities))


def finetune_case(size: str, mode: str, args, device: torch.device) -> dict:
    cfg = model_config(size, args.quick)
    label_size = LABEL_SIZE if not args.quick else 64
    torch.manual_seed(0)
    model = segmentation_model(cfg, label_size).to(device)
    decoder = ("encoder.decoders.", "encoder.enc_to_dec.", "encoder.mask_tokens.",
               "encoder.pixel_heads.")  # fmt: skip
    params = [p for n, p in model.named_parameters() if not n.startswith(decoder)]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    batch = device_batch(cfg, args.batch, device, label_size)
    if mode.endswith("compile"):
        compile_module(model, "true", device, mode=args.compile_mode)

    def step() -> None:
        with autocast(device, mode):
            loss = segmentation_loss(model(batch), batch["cosia"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = segmentation_flops(cfg, N_CLASSES, cfg.token_grid("aerial"), label_size, args.batch)
    res = time_steps(step, device, args.warmup, args.steps)
    return {"case": "finetune", "size": size, "mode": mode, "batch": args.batch,
            "label_size": label_size, "gflop_per_sample": flops.per_sample / 1e9,
            "flop_per_step": flops.total, **res}  # fmt: skip


def flop_check_case(size: str, args, device: torch.device) -> dict:
    """torch's own count of one eager step vs the per-layer count (ratio 1.0 expected; on CPU
    attention must take the math path, whose matmuls the counter sees)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model_config(size, args.quick)
    model = MAE(cfg).to(device)
    batch = device_batch(cfg, args.batch, device, 64)
    math_only = sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
    with math_only, FlopCounterMode(display=False) as counter:
        with autocast(device, "bf16" if device.type == "cuda" else "fp32"):
            loss = model(batch).loss
        loss.backward()
    expected = pretrain_flops(cfg, args.batch).total
    return {"case": "flop-check", "size": size, "batch": args.batch,
            "counted": counter.get_total_flops(), "expected": expected,
            "ratio": counter.get_total_flops() / expected}  # fmt: skip


def data_rate(dataset, batch: int, workers: int, n_batches: int) -> dict:
    """Samples/s of a DataLoader over `dataset` (worker start-up and first batch excluded)."""
    from torch.utils.data import DataLoader, RandomSampler

    sampler = RandomSampler(dataset, replacement=True, num_samples=batch * (n_batches + 1))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        collate_fn=collate, pin_memory=torch.cuda.is_available(),
                        prefetch_factor=4 if workers else None)  # fmt: skip
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    dt = time.perf_counter() - t
    return {"samples_per_s": n_batches * batch / dt, "workers": workers}


def data_cases(args, cfg: MAEConfig) -> list[dict]:
    mods = cfg.modalities
    geo = dict(modalities=tuple(mods), image_size={k: m.image_size for k, m in mods.items()},
               n_dates={k: m.n_dates for k, m in mods.items()}, targets=())  # fmt: skip
    out = []

    def attempt(source: str, make: Callable[[], object] | None, why: str = "") -> None:
        row = {"case": "data", "source": source}
        if make is None:
            out.append({**row, "status": f"skipped: {why}"})
            return
        try:
            rate = data_rate(make(), args.batch, args.workers, args.data_batches)
            out.append({**row, "status": "ok", **rate})
        except Exception as err:  # a missing store format, a bad path...: report, go on
            out.append({**row, "status": f"error: {type(err).__name__}: {err}"[:300]})

    n = args.batch * (args.data_batches + 1)
    attempt("synthetic", lambda: SyntheticTensorDataset(f"synthetic:{n}", "train", **geo))
    gdal = all(importlib.util.find_spec(m) for m in ("rasterio", "pyogrio"))
    root = args.geotiff_root or sample_root()
    if not gdal:
        attempt("geotiff", None, "no rasterio/pyogrio (GDAL stack) here")
    elif root is None:
        attempt("geotiff", None, "no dataset (`make sample`, or --geotiff-root)")
    else:
        from flairlab.data.dataset import FlairHubDataset

        attempt("geotiff", lambda: FlairHubDataset(root, "train", **geo))
    if not args.store:
        attempt("store", None, "no store (--store PATH, from `flairlab pack`)")
    elif importlib.util.find_spec("zarr") is None:
        attempt("store", None, "no zarr")
    elif not (args.store.startswith(("memory://", "s3://", "gs://")) or Path(args.store).exists()):
        attempt("store", None, f"no store at {args.store}")
    else:
        from flairlab.data.dataset import FlairHubDataset

        attempt("store", lambda: FlairHubDataset(args.store, "train", **geo))
    return out


def sample_root() -> str | None:
    """The embedded sample's folder if it was generated (never generated here)."""
    try:
        from flairlab.data.catalog import load_catalog

        root = load_catalog().source_root("sample")
    except Exception:
        return None
    return str(root) if (root / "GLOBAL_ALL_MTD").is_dir() else None


# -- report ----------------------------------------------------------------------------------
def add_rates(row: dict, peak: float | None, matmul_tflops: float | None) -> dict:
    if row.get("status", "ok") != "ok" or "step_s" not in row:
        return row
    row["samples_per_s"] = row["batch"] / row["step_s"]
    row["tflops"] = row["flop_per_step"] / row["step_s"] / 1e12
    row["mfu"] = mfu(row["flop_per_step"], row["step_s"], peak)
    row["of_matmul"] = row["tflops"] / matmul_tflops if matmul_tflops else None
    return row


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'case':<10} {'size':<7} {'mode':<13} {'batch':>5} {'1st s':>7} {'step ms':>8} "
            f"{'samples/s':>10} {'GiB':>6} {'TFLOP/s':>8} {'MFU %':>6} {'÷matmul':>7}  "
            "status")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        status = r.get("status", "ok")
        if status != "ok":
            what = r.get("source", "") if r["case"] == "data" else r.get("size", "")
            lines.append(f"{r['case']:<10} {what:<7} {r.get('mode', ''):<13} {status}")
        elif r["case"] in ("pretrain", "finetune"):
            lines.append(
                f"{r['case']:<10} {r['size']:<7} {r['mode']:<13} {r['batch']:>5} "
                f"{r['first_step_s']:7.1f} {r['step_s'] * 1e3:8.1f} {r['samples_per_s']:10.1f} "
                f"{fmt(r['peak_gib'], '6.1f')} {r['tflops']:8.1f} "
                f"{fmt(r['mfu'] * 100 if r['mfu'] is not None else None, '6.1f')} "
                f"{fmt(r['of_matmul'], '7.2f')}  ok"
            )
        elif r["case"] == "matmul":
            lines.append(f"matmul     {r['dtype']:<7} {r['n']}³{'':<8} {'':>5} {'':>7} {'':>8} "
                         f"{'':>10} {'':>6} {r['tflops']:8.1f}")  # fmt: skip
        elif r["case"] == "flop-check":
            lines.append(f"flop-check {r['size']:<7} torch counter / per-layer count = "
                         f"{r['ratio']:.4f} ({r['counted']:.3e} / {r['expected']:.3e})")
        elif r["case"] == "data":
            keeps = "".join(f"; keeps up with {k}: {v}" for k, v in r.get("keeps_up", {}).items())
            lines.append(f"data       {r['source']:<10} {r['samples_per_s']:10.1f} samples/s "
                         f"with {r['workers']} workers{keeps}")  # fmt: skip
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (code check only)")
    p.add_argument("--sizes", default="tiny,medium")
    p.add_argument("--modes", default="", help="default: bf16,bf16-compile,fp32 (cpu: fp32)")
    p.add_argument("--finetune-sizes", default="tiny,medium")
    p.add_argument("--finetune-modes", default="", help="default: bf16,bf16-compile (cpu: fp32)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: none)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="override the bf16 peak")
    p.add_argument("--matmul-n", type=int, default=8192)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--data-batches", type=int, default=8)
    p.add_argument("--geotiff-root", default="", help="FLAIR-HUB folder for the GeoTIFF path")
    p.add_argument("--store", default="", help="packed store for the store path")
    p.add_argument("--no-data", action="store_true", help="skip the data-path cases")
    p.add_argument("--budget", type=float, default=0.0, help="seconds; later cases are skipped")
    p.add_argument("--quick", action="store_true", help="small geometry, batch 2, 2 steps")
    p.add_argument("--json", default="", help="write all results here")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.warmup, args.steps, args.matmul_n = 2, 1, 2, 512
        args.data_batches = 2
    cpu = args.device == "cpu"
    args.modes = args.modes or ("fp32" if cpu else "bf16,bf16-compile,fp32")
    args.finetune_modes = args.finetune_modes or ("fp32" if cpu else "bf16,bf16-compile")
    return args


def plan(args) -> list[tuple[str, Callable[[], dict | list[dict]]]]:
    """(label, thunk) per case, most wanted first: matmul, flop check, the first size's
    pre-training modes, the data path, the other sizes, fine-tuning."""
    device = torch.device(args.device)
    sizes = [s for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    ft_sizes = [s for s in args.finetune_sizes.split(",") if s]
    ft_modes = [m for m in args.finetune_modes.split(",") if m]
    out: list[tuple[str, Callable[[], dict | list[dict]]]] = [
        ("matmul", lambda: matmul_case(device, args.matmul_n))
    ]
    if sizes:
        out.append(("flop-check", lambda: flop_check_case(sizes[0], args, device)))
    for i, size in enumerate(sizes):
        out += [(f"pretrain {size} {m}", lambda s=size, m=m: pretrain_case(s, m, args, device))
                for m in modes]  # fmt: skip
        if i == 0 and not args.no_data:
            out.append(("data", lambda: data_cases(args, model_config("tiny", args.quick))))
    for size in ft_sizes:
        out += [(f"finetune {size} {m}", lambda s=size, m=m: finetune_case(s, m, args, device))
                for m in ft_modes]  # fmt: skip
    return out


def keeps_up(rows: list[dict]) -> None:
    """Data-path rate ÷ the best pre-training samples/s of each size, on the data rows."""
    best: dict[str, float] = {}
    for r in rows:
        if r["case"] == "pretrain" and r.get("samples_per_s"):
            best[r["size"]] = max(best.get(r["size"], 0.0), r["samples_per_s"])
    for d in rows:
        if d["case"] == "data" and d.get("samples_per_s"):
            d["keeps_up"] = {k: f"{d['samples_per_s'] / v:.2f}×" for k, v in best.items()}


def label_fields(label: str) -> dict:
    """{"case", "size", "mode"} of a plan label such as "pretrain tiny bf16"."""
    parts = [*label.split(), "", ""]
    return {"case": parts[0], "size": parts[1], "mode": parts[2]}


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    for m in (args.modes + "," + args.finetune_modes).split(","):
        if m and m not in ("fp32", "bf16", "bf16-compile", "fp32-compile"):
            raise SystemExit(f"unknown mode {m!r}: fp32, bf16, bf16-compile, fp32-compile")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_bf16_flops(name)
    info = {"device": name, "torch": torch.__version__, "python": sys.version.split()[0],
            "peak_bf16_tflops": peak / 1e12 if peak else None,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "batch": args.batch, "quick": args.quick}  # fmt: skip
    print(f"bench_gpu: {name}, torch {torch.__version__}, bf16 peak "
          f"{fmt(info['peak_bf16_tflops'], '.1f')} TFLOP/s (datasheet), batch {args.batch}",
          flush=True)  # fmt: skip
    start = time.perf_counter()
    rows: list[dict] = []
    matmul = None
    for label, thunk in plan(args):
        if args.budget and time.perf_counter() - start > args.budget:
            rows.append({**label_fields(label), "status": "skipped: budget"})
            print(f"  {label}: skipped (budget)", flush=True)
            continue
        t = time.perf_counter()
        try:
            got = thunk()
        except torch.OutOfMemoryError:
            got = {"status": "out of memory"}
        except Exception as err:  # keep measuring the other cases; the traceback goes to the log
            traceback.print_exc()
            got = {"status": f"error: {type(err).__name__}: {err}"[:300]}
        for row in got if isinstance(got, list) else [got]:
            row = {**label_fields(label), "status": "ok", **row}
            if row["case"] == "matmul" and "tflops" in row:
                matmul = row["tflops"]
            rows.append(add_rates(row, peak, matmul))
            print(f"  {label}: {row['status']} ({time.perf_counter() - t:.0f} s)", flush=True)
        free(device)
        keeps_up(rows)
        if args.json:  # after every case: a run cut short still leaves its numbers
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(table(rows))
    print(f"bench_gpu: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
