"""Packed store vs GeoTIFFs: FlairHubDataset samples/s, pack throughput, size, and GPU feeding.

One run, one thread, the same items for every reader, interleaved item by item so that all see
the same machine load; prints patches/s and ratios to the bare-rasterio floor (open + read of the
files an item needs) and to the GeoTIFF dataset. Geometries:

* cpu  — configs/pretrain_cpu.yaml: aerial/DEM 128 px, S2 4 dates, S1 2 + 2, COSIA 128 px;
* full — MAESTRO FLAIR-HUB: aerial/DEM/COSIA 512 px, S2 16 dates, S1 4 + 4.

Readers: the GeoTIFF folder, a full-resolution store, and (cpu only) a store resampled at pack
time to 128 px. Goals (issue 14): store >= 10x the GeoTIFF path for cpu, >= 5x for full.
Then the patches/s one core feeds is compared with what one GPU consumes for the tiny and base
MAE at full geometry, from the FLOPs of one training step (`flairlab.models.flops`) at 40 % MFU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_store.py [--n 24] [--passes 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
import torch

from flairlab.data.catalog import load_catalog
from flairlab.data.dataset import FlairHubDataset
from flairlab.data.pack import pack

CPU = dict(
    image_size={"aerial": 128, "dem": 128, "cosia": 128},
    n_dates={"s2": 4, "s1_asc": 2, "s1_desc": 2},
)
FULL: dict = dict(image_size={}, n_dates={})
CPU_RESAMPLE = {"aerial": 128, "dem": 128, "cosia": 128}
GPUS = {"A100": "NVIDIA A100-SXM4-80GB", "H100": "NVIDIA H100 80GB HBM3"}  # for the peak table
MFU = 0.4  # sustained model-FLOP utilisation assumed for bf16 training (a good run: 35-50 %)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and ".zarr" not in str(p))


def time_readers(readers: dict, n: int, passes: int) -> dict[str, float]:
    """Seconds per item of each reader (sum over passes), interleaved item by item."""
    spent = dict.fromkeys(readers, 0.0)
    for fn in readers.values():  # warm-up: date tables, zarr metadata, OS cache
        fn(0)
    for _ in range(passes):
        for i in range(n):
            for label, fn in readers.items():
                t = time.perf_counter()
                fn(i)
                spent[label] += time.perf_counter() - t
    return {k: v / (n * passes) for k, v in spent.items()}


def bare_floor(ds: FlairHubDataset):
    cat = ds.cat
    cols = [cat.modality(k).name for k in ds.modalities] + ["SENTINEL2_MSK-SC"]
    cols += [cat.modality(t).name for t in ds.targets]

    def read(i: int) -> None:
        for c in cols:
            with rasterio.open(ds.index.at[ds.patch_ids[i], c]) as src:
                src.read()

    return read


def train_step_flops(size: str) -> float:
    """FLOPs of one MAE pre-training step on one full-geometry sample (forward + backward,
    matrix products only: `flairlab.models.flops`, equal to torch's FlopCounterMode)."""
    from flairlab.models.flops import pretrain_flops
    from flairlab.models.mae_config import MAEConfig

    return pretrain_flops(MAEConfig(size=size)).per_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="", help="FLAIR-HUB folder (default: a fresh sample)")
    ap.add_argument("--n", type=int, default=24, help="patches of the generated sample")
    ap.add_argument("--passes", type=int, default=3, help="passes over the items")
    ap.add_argument("--pack-workers", type=int, default=2, help="processes for the timed pack")
    ap.add_argument("--no-flops", action="store_true", help="skip the GPU feeding estimate")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        import numcodecs.blosc

        numcodecs.blosc.use_threads = False
    except ImportError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    root = Path(args.root) if args.root else tmp / "sample"
    if not args.root:
        from flairlab.data.sample import make_sample

        make_sample(root, n_patches=args.n, seed=0, progress=False)
    cat = load_catalog()

    print(f"source: {root}  ({tree_bytes(root) / 1e6:.1f} MB GeoTIFF tree incl. metadata)")
    stores = {}
    for label, kw in [("full", {}), ("cpu128", {"resample": CPU_RESAMPLE})]:
        out = tmp / f"{label}.zarr"
        rep = pack(root, out, workers=0, progress=False, catalog=cat, **kw)
        print(f"pack {label:6s} in this process: {rep.rate:5.1f} patches/s once planned, "
              f"{rep.packed / rep.seconds:.1f} end to end ({rep.seconds:.1f} s); store "
              f"{rep.store_bytes / 1e6:.1f} MB = {rep.store_bytes / rep.source_bytes:.2f}x its "
              f"{rep.source_bytes / 1e6:.1f} MB of source files")  # fmt: skip
        stores[label] = out
    if args.pack_workers > 1:  # the CLI as a user runs it (a process pool of --workers)
        cmd = [sys.executable, "-m", "flairlab.cli", "pack", str(root), str(tmp / "pool.zarr"),
               "--workers", str(args.pack_workers), "--quiet"]  # fmt: skip
        t = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
        print(f"pack full   `flairlab pack --workers {args.pack_workers}` "
              f"({time.perf_counter() - t:.1f} s with start-up): {out}")  # fmt: skip
    zstd = pack(root, tmp / "zstd.zarr", workers=0, codec="zstd", progress=False, catalog=cat)
    print(f"pack codec=zstd: store {zstd.store_bytes / 1e6:.1f} MB = "
          f"{zstd.store_bytes / zstd.source_bytes:.2f}x the source files")  # fmt: skip

    rates = {}
    for geom, kw in [("cpu", CPU), ("full", FULL)]:
        common = dict(split=None, targets=("cosia",), train=True, seed=0, catalog=cat, **kw)
        tif = FlairHubDataset(root, **common)
        readers = {"rasterio floor": bare_floor(tif), "GeoTIFF dataset": tif.__getitem__}
        readers["store dataset"] = FlairHubDataset(stores["full"], **common).__getitem__
        if geom == "cpu":
            readers["store, 128 px"] = FlairHubDataset(stores["cpu128"], **common).__getitem__
        per_item = time_readers(readers, len(tif), args.passes)
        floor, geo = per_item["rasterio floor"], per_item["GeoTIFF dataset"]
        print(f"\n{geom} geometry, {len(tif)} patches x {args.passes} passes, 1 thread")
        print(f"  {'reader':18s} {'patches/s':>10s} {'÷ floor':>8s} {'÷ GeoTIFF':>10s}")
        for label, s in per_item.items():
            print(f"  {label:18s} {1 / s:10.1f} {floor / s:8.2f} {geo / s:10.2f}")
        rates[geom] = {k: 1 / v for k, v in per_item.items()}

    if not args.no_flops:
        from flairlab.models.flops import peak_bf16_flops

        store, tif = rates["full"]["store dataset"], rates["full"]["GeoTIFF dataset"]
        print(
            f"\nfeeding one GPU, full geometry: one core reads {store:.0f} samples/s from the "
            f"store, {tif:.0f} from GeoTIFFs; a GPU at {MFU:.0%} MFU of its bf16 peak eats"
        )
        for size in ("tiny", "base"):
            flops = train_step_flops(size)
            for gpu, device_name in GPUS.items():
                eats = peak_bf16_flops(device_name) * MFU / flops
                print(f"  MAE {size:4s} {flops / 1e9:6.1f} GFLOP/sample/step, {gpu}: "
                      f"{eats:6.0f} samples/s = {eats / store:5.1f} cores from the store, "
                      f"{eats / tif:5.1f} from GeoTIFFs")  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
