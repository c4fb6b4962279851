"""The floor (per-pixel logistic regression), the measured `precision: auto`, the read cache of the
dataset, and the tables / plot of the pre-training study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flairlab.data.errors import DataError
from flairlab.training import loop
from flairlab.training.baseline import (
    PixelLogistic,
    evaluate_pixel_model,
    feature_names,
    fit_logistic,
    labelled_pixels,
    load_baseline,
    run_baseline,
    save_baseline,
)

torch.set_num_threads(1)


def item(seed: int, size: int = 16) -> dict:
    """A fake evaluation item whose class is decided by the aerial NIR band of each pixel, and an
    S2 series (2 dates) that is pure noise; a border of ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    nir = torch.rand(size, size, generator=g)
    aerial = torch.rand(1, 4, size, size, generator=g)
    aerial[0, 0] = nir
    label = (nir * 3).long().clamp(max=2)  # classes 0, 1, 2 by NIR thirds
    label[0] = 255
    return {"aerial": aerial, "s2": torch.rand(2, 10, 4, 4, generator=g), "cosia": label,
            "patch_id": f"p{seed}"}  # fmt: skip


def test_fit_logistic_learns_a_separable_rule_and_reports_its_floor():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3000, 3, generator=g) * torch.tensor([1.0, 50.0, 0.01]) + 7  # scales differ
    y = (X[:, 0] > 7).long() + 2 * (X[:, 2] > 7).long()  # 4 classes, 2 relevant features
    mean, std, W, b, info = fit_logistic(X, y, n_classes=5, l2=1e-6)
    z = (X - mean) / std
    acc = float(((z @ W.T + b).argmax(1) == y).float().mean())
    assert acc > 0.97
    prior = torch.bincount(y, minlength=5).double() / len(y)
    entropy = float(-(prior[prior > 0] * prior[prior > 0].log()).sum())
    assert info["class_frequency_loss"] == pytest.approx(entropy, rel=1e-6)
    assert info["train_loss"] < 0.3 * entropy
    assert W[4].abs().max() < 1e-3 and b[4] < b[:4].min()  # the absent class is never predicted


def test_run_baseline_on_the_model_inputs_and_round_trip(tmp_path):
    train, test = [item(s) for s in range(4)], [item(s) for s in range(10, 12)]
    model, rec = run_baseline(train, {"test": test}, "cosia", ["aerial", "s2"], 16, seed=0)
    assert rec["n_features"] == 4 + 2 * 10 and rec["features"][:2] == ["aerial.NIR", "aerial.R"]
    assert rec["features"][4] == "s2[0].B02" and rec["n_train_pixels"] == 4 * 15 * 16
    assert rec["test_miou"] > 0.8 and rec["test"]["per_class"]["building"]["support"] > 0
    again = evaluate_pixel_model(model, test, "cosia")
    assert again["miou"] == rec["test_miou"]
    _, rec_few = run_baseline(train, {"test": test}, "cosia", ["aerial"], 16, max_pixels=50)
    assert rec_few["n_train_pixels"] == 50 and rec_few["n_features"] == 4
    X, y = labelled_pixels(train, "cosia", lambda b: b["aerial"][:, 0], 10_000, 0, max_patches=2)
    assert len(y) == 2 * 15 * 16 and X.shape == (2 * 15 * 16, 4)  # 2 of the 4 patches
    X, y = labelled_pixels(train, "cosia", lambda b: b["aerial"][:, 0], 40, 0)
    assert len(y) == 40  # ⌈80 / 4⌉ = 20 pixels from each patch, then 40 of those 80
    path = save_baseline(model, tmp_path / "baseline.safetensors")
    loaded = load_baseline(path)
    batch = {k: torch.stack([it[k] for it in test]) for k in ("aerial", "s2")}
    torch.testing.assert_close(loaded.logits(batch), model.logits(batch))
    assert isinstance(loaded, PixelLogistic) and loaded.modalities == ["aerial", "s2"]
    with pytest.raises(DataError, match="baseline"):
        load_baseline(tmp_path / "missing.safetensors")
    assert feature_names({"dem": torch.zeros(1, 1, 2, 4, 4)}, ["dem"]) == ["dem.DSM", "dem.DTM"]


def test_linear_probe_of_frozen_features_and_reconstruction_quality():
    from flairlab.models.segmodel import build_encoder
    from flairlab.training.probes import linear_probe, reconstruction_quality

    def dated(seed: int) -> dict:
        it = item(seed)
        it["aerial_dates"] = torch.tensor([[2021, 180, 0]])
        it["ref_date"] = torch.tensor([[2021, 180, 0]])
        return it

    torch.manual_seed(0)
    enc, _ = build_encoder(None, ["aerial"], size="nano", image_size={"aerial": 16},
                           patch_size={"aerial": 8})  # fmt: skip
    train, val = [dated(s) for s in range(4)], [dated(s) for s in range(10, 12)]
    r = linear_probe(enc, train, {"val": val}, "cosia", ["aerial"], 16, max_pixels=500)
    assert r["n_features"] == 96 and r["n_train_pixels"] == 500
    assert 0 <= r["val_miou"] <= 1 and r["train_loss"] < r["class_frequency_loss"]
    q = reconstruction_quality(enc, val, seeds=2)
    assert set(q) == {"total", "aerial", "aerial_zero"}
    assert 0.5 < q["aerial_zero"] < 1.0  # E|N(0, 1)| = 0.8 for a patch-normalised target
    assert q["total"] == pytest.approx(q["aerial"])


# -- precision: measured, not assumed ---------------------------------------------------------
def test_auto_precision_picks_the_measured_faster_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAIRLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(loop, "_PRECISION", {})
    calls = []

    def fake(bf16, parts, limit, times={False: 0.010, True: 0.011}):  # noqa: B006
        calls.append(bf16)
        return times[bf16]

    monkeypatch.setattr(loop, "_block_step_seconds", fake)
    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: True)  # flags say bf16: irrelevant
    first = loop.measure_cpu_precision()
    assert first["precision"] == "32-true" and calls  # equal speed: fp32
    assert loop.resolve_precision("auto", "cpu") == "32-true"
    n = len(calls)
    assert loop.measure_cpu_precision() == first and len(calls) == n  # cached in the process
    monkeypatch.setattr(loop, "_PRECISION", {})
    assert loop.measure_cpu_precision() == first and len(calls) == n  # and on the machine
    stored = json.loads((tmp_path / "flairlab" / "precision.json").read_text())
    assert stored[first["key"]]["precision"] == "32-true"

    def faster_bf16(bf16, parts, limit):
        return 0.004 if bf16 else 0.010

    monkeypatch.setattr(loop, "_block_step_seconds", faster_bf16)
    assert loop.measure_cpu_precision(refresh=True)["precision"] == "bf16-mixed"
    assert loop.resolve_precision("32-true", "cpu") == "32-true"  # explicit values are kept


def test_free_cpus_leaves_the_cores_that_other_jobs_use(tmp_path, monkeypatch):
    fake = tmp_path / "loadavg"
    monkeypatch.setattr(loop, "LOADAVG", fake)
    monkeypatch.setattr(loop, "cpu_budget", lambda: 4)
    for running, free in ((1, 4), (2, 3), (4, 1), (9, 1)):  # the reader counts itself
        fake.write_text(f"5.0 5.0 5.0 {running}/120 4242\n")
        assert loop.free_cpus(samples=2) == free
    fake.write_text("garbage")
    assert loop.free_cpus() == 4  # unreadable: the budget
    fake.write_text("0.1 0.1 0.1 1/80 1\n")
    before = torch.get_num_threads()
    try:
        assert loop.set_threads(0) == min(before, 4) and loop.set_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_precision_benchmark_runs_for_real():
    res = loop.measure_cpu_precision(refresh=True)
    assert res["precision"] in ("32-true", "bf16-mixed")
    assert res["fp32_ms"] > 0 and res["bf16_ms"] > 0


# -- the read cache ------------------------------------------------------------------------------
def test_cached_dataset_gives_identical_items_and_still_validates_labels(sample_root, tmp_path):
    import shutil

    import rasterio

    from flairlab.data.dataset import FlairHubDataset
    from flairlab.data.dataset_cache import CachedFlairHubDataset

    kw = dict(modalities=("aerial", "dem", "s2"), targets=("cosia",), n_dates={"s2": 2},
              image_size={"aerial": 32, "dem": 32, "cosia": 32}, train=True, seed=4)  # fmt: skip
    plain = FlairHubDataset(sample_root, "train", **kw)
    cached = CachedFlairHubDataset(sample_root, "train", **kw)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(plain)):
            a, b = plain[i], cached[i]
            assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert 0 < cached.cached_bytes < len(plain) * 300_000  # 512-px rasters: 3.5 MB a patch
    # a bad label value in a pixel that the 32-px grid never samples is still an error
    root = tmp_path / "copy"
    shutil.copytree(sample_root, root)
    ds = CachedFlairHubDataset(root, "train", **kw)
    path = Path(ds.index.at[ds.patch_ids[0], "AERIAL_LABEL-COSIA"])
    with rasterio.open(path, "r+") as f:
        arr = f.read()
        arr[0, 1, 1] = 77
        f.write(arr)
    with pytest.raises(DataError):
        ds[0]


# -- the study's table and plot --------------------------------------------------------------
def study() -> dict:
    return {"metric": "test_miou",
            "arms": {"scratch": {"0.1": [0.50, 0.52, 0.51], "1.0": [0.8, 0.81, 0.8]},
                     "mae": {"0.1": [0.60, 0.61, 0.62], "1.0": [0.8, 0.8, 0.81]},
                     "contrastive": {"0.1": [0.5, 0.56, 0.52], "1.0": [0.79, 0.8, 0.8]}},
            "steps": {}, "pipeline": "benchmarks/ssl_study.py", "commit": "abc"}  # fmt: skip


def test_study_table_pairs_seeds_and_applies_the_two_std_rule(tmp_path):
    from flairlab.runs.study import load_study, markdown_table, plot_study, study_table

    floors = {"0.1": [0.7, 0.7, 0.71], "1.0": [0.8, 0.8, 0.8]}
    t = study_table(study(), floors)
    assert t.loc["MAE pre-training", "> 2 std at 10%"] is True
    assert t.loc["contrastive pre-training", "> 2 std at 10%"] is False
    assert t.loc["MAE pre-training", "Δ vs scratch 10% (paired)"] == "+0.100 ± 0.010"
    assert t.loc["floor: per-pixel logistic regression", "labels 10%"].startswith("0.703")
    md = markdown_table(t)
    assert md.count("\n") == len(t) + 1 and "| MAE pre-training |" in md
    fig = plot_study(study(), floors)
    assert len(fig.axes) == 2
    path = tmp_path / "ssl_study.json"
    path.write_text(json.dumps(study()))
    loaded, details = load_study(path)
    assert loaded == study() and details is None
    path.write_text(json.dumps({"metric": "test_miou"}))
    with pytest.raises(DataError, match="lacks"):
        load_study(path)


def test_committed_study_has_the_issue_shape():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reported" / "ssl_study.json"
    s = json.loads(path.read_text())  # committed: benchmarks/ssl_study.py wrote it
    assert set(s) == {"metric", "arms", "steps", "pipeline", "commit"}
    assert s["metric"] == "test_miou" and set(s["arms"]) == {"scratch", "mae", "contrastive"}
    for arm in s["arms"].values():
        assert set(arm) == {"0.1", "1.0"}
        assert all(len(v) == 3 and all(0 <= x <= 1 for x in v) for v in arm.values())
    assert np.isfinite(list(s["steps"]["pretrain"].values())).all()
