"""Fine-tuning requirements (memory, time from FLOPs): the numbers notebook 04 states for IGN's
base model come from `flairlab.training.requirements` and stay in sync with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flairlab.models.mae_config import MAEConfig
from flairlab.training.requirements import activation_bytes, estimate, finetune_requirements

MODS = ["aerial", "dem", "s2", "s1_asc", "s1_desc"]
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_finetune.py"


def test_base_model_estimate_adds_up() -> None:
    r = estimate(MAEConfig(size="medium"), MODS, batch_size=32, n_train=10_000)
    assert r.trained_parameters < r.parameters
    assert r.parameters == pytest.approx(336.5e6, rel=1e-3)  # 278.8 M encoder + decoder + head
    assert r.weights_gb == pytest.approx(4 * r.parameters / 1e9)
    assert r.training_state_gb == pytest.approx(16 * r.trained_parameters / 1e9)
    assert r.activations_gb == pytest.approx(
        32 * activation_bytes(MAEConfig(size="medium"), MODS, 32, 512, 15) / 1e9)
    assert r.steps_per_epoch == 313
    # time = FLOPs / (peak × MFU); the probe (frozen encoder) is cheaper
    t = r.seconds_per_epoch()
    assert t == pytest.approx(r.gflops_per_step * 1e9 * 313 / (989.4e12 * 0.35))
    assert r.seconds_per_epoch(probe=True) < t
    half = estimate(MAEConfig(size="medium"), MODS, batch_size=16, n_train=10_000)
    assert half.activations_gb == pytest.approx(r.activations_gb / 2)


def test_notebook_states_the_estimates() -> None:
    text = NOTEBOOK.read_text(encoding="utf-8")
    cfg = MAEConfig(size="medium")
    b32 = estimate(cfg, MODS, batch_size=32, n_train=10_000, gpu="NVIDIA H100")
    b8 = estimate(cfg, MODS, batch_size=8, n_train=10_000, gpu="NVIDIA L4")
    a100 = estimate(cfg, MODS, batch_size=32, n_train=10_000, gpu="NVIDIA A100-SXM4-40GB")
    stated = [
        f"≈ {b32.memory_gb:.0f} GB", f"≈ {b8.memory_gb:.0f} GB",
        f"{b32.gflops_per_step / 32 / 1000:.2f} TFLOP",
        f"H100 ≈ {b32.seconds_per_epoch():.0f} s",
        f"A100 ≈ {a100.seconds_per_epoch() / 60:.1f} min",
        f"L4 ≈ {b8.seconds_per_epoch() / 60:.1f} min",
    ]  # fmt: skip
    for s in stated:
        assert s in text, s


def test_finetune_requirements_table(sample_root: Path) -> None:
    from flairlab.training.finetune import FinetuneConfig

    cfg = FinetuneConfig(root=str(sample_root), batch_size=2, size="nano", label_size=128,
                         image_size={"aerial": 64, "dem": 64},
                         n_dates={"s2": 2, "s1_asc": 2, "s1_desc": 2})  # fmt: skip
    table = finetune_requirements(cfg, gpu="NVIDIA A100")
    run, base = table.columns
    assert table.loc["batch", run] == 2 and table.loc["batch", base] == 32
    from flairlab.data.dataset import dataset_index

    n_train = int((dataset_index(sample_root)["split"] == "train").sum())
    assert run == f"this run ({n_train} training patches)"
    assert table.loc["steps per epoch", run] == -(-n_train // 2)
    assert table.loc["fine-tune GFLOP / step", base] > table.loc["fine-tune GFLOP / step", run]
    assert table.loc["GPU memory, activations (GB)", base] > table.loc[
        "GPU memory, activations (GB)", run]
