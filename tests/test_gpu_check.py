"""Ready for a lent GPU machine: no GDAL needed on the model/training path, synthetic tensors,
bench_gpu and gpu_check.sh (politely idle without CUDA; simulated on CPU), the carried tree size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from flairlab.data.catalog import load_catalog
from flairlab.data.dataset import TARGETS, FlairHubDataset, collate
from flairlab.data.errors import DataError
from flairlab.data.index import parse_patch_id
from flairlab.data.synthetic_tensors import (
    N_CLASSES,
    SyntheticTensorDataset,
    open_dataset,
    split_sizes,
)

ROOT = Path(__file__).resolve().parents[1]
GPU_SIM = ROOT / "benchmarks" / "gpu_sim"  # its sitecustomize blocks what the GPU machine lacks
CUDA = torch.cuda.is_available()


def run(args: list[str], env: dict | None = None, timeout: int = 600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


# -- the model and training path without GDAL ---------------------------------------------------
WITHOUT_GDAL = textwrap.dedent(
    """
    import importlib, sys, tempfile
    for name in ("rasterio", "pyogrio", "geopandas"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        sys.exit(f"{name} is importable: the blocker did not work")
    import flairlab.models.mae, flairlab.training.finetune, flairlab.training.pretrain
    from flairlab.training.finetune import FinetuneConfig, run_finetune
    from flairlab.training.pretrain import pretrain

    out = tempfile.mkdtemp()
    geometry = {"aerial": {"image_size": 32, "patch_size": 8}, "dem": {"image_size": 32},
                "s2": {"n_dates": 2}, "s1_asc": {"n_dates": 2}, "s1_desc": {"n_dates": 2}}
    model = {"size": "nano", "depth": 2, "inter_depth": 1, "decoder_dim": 64,
             "modalities": geometry}
    summary = pretrain({"model": model, "data": {"source": "synthetic:4"}, "output_dir": out,
                        "train": {"epochs": 1, "batch_size": 2, "precision": "32-true"}},
                       progress=False)
    res = run_finetune(FinetuneConfig(source="synthetic:4", checkpoint=out, probe_steps=1,
                                      finetune_steps=1, eval_every=0, batch_size=2,
                                      label_size=32),
                       out + "/finetune")
    loaded = [m for m in ("rasterio", "pyogrio", "geopandas") if sys.modules.get(m) is not None]
    print("STEPS", summary["step"], len(res["history"]), res["compiled"], loaded)
    """
)


def test_model_and_training_run_without_the_gdal_stack():
    """As on the lent GPU machine: rasterio / pyogrio / geopandas absent; import the model and
    both training loops, pre-train 2 steps and fine-tune from that checkpoint on synthetic data."""
    proc = run([sys.executable, "-c", WITHOUT_GDAL], {"PYTHONPATH": f"{GPU_SIM}:{ROOT}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STEPS 2 2 False []" in proc.stdout


# -- synthetic tensors ----------------------------------------------------------------------------
GEO = dict(image_size={"aerial": 32, "dem": 32, "cosia": 32, "lpis": 16},
           n_dates={"s2": 3, "s1_asc": 2, "s1_desc": 2})  # fmt: skip


def test_synthetic_items_follow_the_batch_contract(sample_root):
    """Same keys, dtypes and shapes as FlairHubDataset on real-format GeoTIFFs."""
    real = FlairHubDataset(sample_root, "train", targets=("cosia", "lpis"), train=False, **GEO)
    fake = SyntheticTensorDataset("synthetic", "train", targets=("cosia", "lpis"), **GEO)
    a, b = real[0], fake[0]
    assert list(a) == list(b)
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert (b[k].dtype, b[k].shape) == (v.dtype, v.shape), k
        else:
            assert isinstance(b[k], type(v)), k
    parse_patch_id(b["patch_id"])
    assert b["roi"] == b["patch_id"].rsplit("_", 1)[0]
    batch = collate([fake[i] for i in range(3)])
    days = batch["s2_dates"][0, :, 1]
    assert batch["s2"].shape == (3, 3, 10, 10, 10) and torch.equal(days, days.sort().values)


def test_synthetic_labels_are_learnable_and_presence_is_exact():
    ds = SyntheticTensorDataset("synthetic:8", "valid", targets=("cosia", "lpis"), **GEO)
    assert len(ds) == 2 and split_sizes("synthetic") == {"train": 64, "valid": 16, "test": 16}
    for target in ("cosia", "lpis"):
        assert N_CLASSES[target] == len(load_catalog().nomenclature(TARGETS[target][2])
                                        .evaluated_ids)  # fmt: skip
        presence = ds.class_presence(target)
        for i in range(len(ds)):
            y = ds[i][target].numpy()
            assert np.array_equal(np.flatnonzero(presence[i]), np.unique(y))
    item = ds[0]  # class means differ: the aerial spectrum separates classes
    y = torch.nn.functional.interpolate(item["cosia"][None, None].float(), size=32)[0, 0].long()
    x = item["aerial"][0]  # (C, H, W)
    means = torch.stack([x[:, y == c].mean(1) for c in y.unique()])
    assert torch.cdist(means, means).fill_diagonal_(1e9).min() > 0.3
    assert torch.equal(ds[1]["aerial"], ds[1]["aerial"])  # a function of (seed, split, index)
    other = SyntheticTensorDataset("synthetic:8", "valid", seed=1, **GEO)
    assert not torch.equal(other[1]["aerial"], ds[1]["aerial"])


def test_synthetic_source_names_and_errors(tmp_path):
    assert isinstance(open_dataset("synthetic:4", "test", **GEO), SyntheticTensorDataset)
    with pytest.raises(DataError, match="synthetic"):
        open_dataset("synthetic:lots", "train")
    with pytest.raises(DataError, match="split"):
        open_dataset("synthetic", "holdout")
    with pytest.raises(DataError, match="patch ids"):
        open_dataset("synthetic:4", "train", patch_ids=["D000-2021_SYN-TR-9_1-1"])
    sub = open_dataset("synthetic:4", "train", patch_ids=["D000-2021_SYN-TR-1_1-2"], **GEO)
    assert torch.equal(sub[0]["aerial"], open_dataset("synthetic:4", "train", **GEO)[1]["aerial"])
    with pytest.raises(DataError):  # anything else is a folder for FlairHubDataset
        open_dataset(str(tmp_path / "missing"), "train")


# -- bench_gpu and gpu_check.sh -------------------------------------------------------------------
@pytest.mark.skipif(CUDA, reason="checks the behaviour without CUDA")
def test_bench_and_check_say_no_cuda_and_exit_0(tmp_path):
    bench = run([sys.executable, "benchmarks/bench_gpu.py"])
    assert bench.returncode == 0 and "no CUDA device" in bench.stdout
    check = run(["bash", "benchmarks/gpu_check.sh"], {"PYTHON": sys.executable,
                                                      "OUT": str(tmp_path)})  # fmt: skip
    assert check.returncode == 0 and "no CUDA device" in check.stdout
    assert not list(tmp_path.iterdir())  # nothing written


def test_bench_gpu_on_cpu_exercises_every_case(tmp_path):
    out = tmp_path / "bench.json"
    proc = run([sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--quick",
                "--sizes", "tiny", "--finetune-sizes", "tiny", "--workers", "0",
                "--json", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    kinds = {(r["case"], r.get("size"), r.get("mode"), r["status"]) for r in rows}
    assert ("pretrain", "tiny", "fp32", "ok") in kinds and (
        "finetune",
        "tiny",
        "fp32",
        "ok",
    ) in kinds
    check = next(r for r in rows if r["case"] == "flop-check")
    assert check["ratio"] == 1.0  # torch's counter agrees with the per-layer count
    data = {r["source"]: r["status"] for r in rows if r["case"] == "data"}
    assert data["synthetic"] == "ok" and data["store"].startswith("skipped")
    pre = next(r for r in rows if r["case"] == "pretrain")
    assert pre["samples_per_s"] > 0 and pre["mfu"] is None  # no bf16 peak for a CPU
    assert "flop-check tiny" in proc.stdout and "samples/s" in proc.stdout


@pytest.mark.slow
def test_gpu_check_simulated_on_cpu(tmp_path):
    """The whole script as the lent machine would run it, on CPU: GDAL & co blocked, CLI smokes
    (pre-train, stop, resume; fine-tune), a 2-process DDP smoke, bench_gpu --quick."""
    proc = run(["bash", "benchmarks/gpu_check.sh", "--cpu-simulate"],
               {"PYTHON": sys.executable, "OUT": str(tmp_path)}, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_gpu.json", "gpu_check.json",
                                                          "gpu_check.log"]  # fmt: skip
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["step"]: s["status"] for s in summary["steps"]}
    names = ["environment", "import-without-gdal", "pretrain-stop", "pretrain-resume",
             "finetune", "ddp", "bench"]  # fmt: skip
    assert steps == dict.fromkeys(names, "ok")
    assert summary["pretrain"]["step"] == 8 and summary["pretrain"]["compiled"] is True
    assert summary["finetune"]["compiled"] is True and summary["finetune"]["device"] == "cpu"
    assert summary["ddp"]["world_size"] == 2 and summary["ddp"]["ranks_in_sync"] is True
    assert "rasterio     absent" in proc.stdout


def test_the_tree_that_travels_to_the_gpu_machine_is_small():
    """The device tool sends tracked + untracked-not-ignored files (+ carried .whl/): ≤ 64 MiB."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / f for f in listed.decode().split("\0") if f]
    size = sum(f.stat().st_size for f in files if f.is_file())
    size += sum(f.stat().st_size for f in (ROOT / ".whl").glob("*.whl"))
    assert size < 48 * 2**20, f"{size / 2**20:.1f} MiB travel (limit 64 MiB, keep a margin)"
