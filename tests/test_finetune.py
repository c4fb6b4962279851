"""Fine-tuning: label-fraction subsampling, step budgets, schedules and EMA (R6 and the short-budget
deviations), encoder loading from a pre-training checkpoint, probe freezing, both heads,
fine-tuned checkpoints, and a whole run on the sample."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flairlab.data.errors import DataError
from flairlab.models.heads import SegmentationHead
from flairlab.models.segmodel import (
    SegmentationModel,
    build_encoder,
    class_names,
    load_finetuned,
    predict_logits,
    save_finetuned,
)
from flairlab.training.finetune import BatchStream, FinetuneConfig, subsample_patches, train_phase
from flairlab.training.schedules import ema_momentum, ema_momentum_at, ema_update, one_cycle

torch.set_num_threads(1)
GEOM = dict(size="nano", image_size={"aerial": 32, "s2": 10}, patch_size={"aerial": 8, "s2": 2},
            n_dates={"s2": 3})  # fmt: skip


def fake_batch(B: int = 2, aerial: int = 32, s2_dates: int = 3, label: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    dates = torch.tensor([2021, 100, 0]).repeat(B, s2_dates, 1)
    dates[:, :, 1] += torch.arange(s2_dates) * 30
    return {
        "aerial": torch.rand(B, 1, 4, aerial, aerial, generator=g),
        "aerial_dates": torch.tensor([[[2021, 180, 0]]]).repeat(B, 1, 1),
        "s2": torch.rand(B, s2_dates, 10, 10, 10, generator=g),
        "s2_dates": dates,
        "ref_date": torch.tensor([[[2021, 180, 0]]]).repeat(B, 1, 1),
        "cosia": torch.randint(0, 15, (B, label, label), generator=g),
        "patch_id": [f"p{i}" for i in range(B)],
    }


# -- label fraction ---------------------------------------------------------------------------
def presence_table() -> np.ndarray:
    pres = np.zeros((100, 4), bool)
    pres[:, 0] = True  # everywhere
    pres[::2, 1] = True  # half of the patches
    pres[37, 2] = True  # one patch only
    pres[[5, 80], 3] = True  # two patches
    return pres


def test_label_fraction_reproducible_and_keeps_rare_classes():
    pres = presence_table()
    a = subsample_patches(pres, 0.05, seed=3)
    assert len(a) == 5 and np.array_equal(a, subsample_patches(pres, 0.05, seed=3))
    assert pres[a].any(0).all()  # every class present in the subset
    assert 37 in a and ({5, 80} & set(a.tolist()))
    draws = {tuple(subsample_patches(pres, 0.05, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    for s in range(10):  # every class is kept whatever the seed
        assert pres[subsample_patches(pres, 0.05, seed=s)].any(0).all()
    assert subsample_patches(pres, 0.01, seed=0).tolist() == [37]  # rarest class first
    assert len(subsample_patches(pres, 1.0)) == 100
    with pytest.raises(DataError):
        subsample_patches(pres, 0.0)


# -- optimisation constants -------------------------------------------------------------------
def test_one_cycle_and_ema_constants():
    total = 100
    assert one_cycle(0, total, 1e7) == pytest.approx(1e-3)
    assert one_cycle(20, total, 1e7) == pytest.approx(1.0)  # peak at 20 % of the steps
    assert one_cycle(total - 1, total, 1e7) == pytest.approx(1e-7)
    assert one_cycle(total - 1, total, 2.0) == pytest.approx(0.5)  # fine-tune ends at half
    lrs = [one_cycle(s, total, 2.0) for s in range(total)]
    assert all(a <= b for a, b in itertools.pairwise(lrs[:21]))
    assert ema_momentum(50) == pytest.approx(0.9) and ema_momentum(100) == pytest.approx(0.95)
    assert ema_momentum(10) == pytest.approx(0.5) and ema_momentum(2) == 0.0
    # per-step EMA: horizon 20 % of the phase, warmed up so that short runs are not dragged back
    assert ema_momentum_at(0, 1000) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_momentum_at(10_000, 1000) == pytest.approx(1 - 1 / 200)
    assert ema_momentum_at(5, 4) == 0.0  # a phase shorter than 5 steps: plain copy
    ms = [ema_momentum_at(s, 300) for s in range(300)]
    assert all(a <= b for a, b in itertools.pairwise(ms)) and ms[-1] == pytest.approx(300 / 309)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.5 * a.weight.detach() + 0.5 * b.weight.detach()
    ema_update(a, b, 0.5)
    torch.testing.assert_close(a.weight.detach(), expected)


# -- encoder, probe, checkpoints --------------------------------------------------------------
def test_probe_freezes_encoder_and_finetune_trains_it():
    torch.manual_seed(0)
    enc, info = build_encoder(None, ["aerial", "s2"], **GEOM)
    assert info["pretrained"] is None
    model = SegmentationModel(enc, SegmentationHead(enc.embed_dim, 15, 4, 32), ["aerial", "s2"])
    batch = fake_batch()
    assert model(batch).shape == (2, 15, 32, 32)
    model(batch, frozen=True).logsumexp(1).mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.head.proj.weight.grad is not None
    model.zero_grad()
    model(batch).logsumexp(1).mean().backward()
    assert model.encoder.patch_embed["aerial"].proj[0].weight.grad is not None


def test_pretrained_checkpoint_subset_and_finetuned_roundtrip(tmp_path):
    from flairlab.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    mae, _ = build_encoder(None, ["aerial", "s2"], **GEOM)
    ckpt = save_checkpoint(tmp_path / "ckpt", 5, mae, {"model": mae.config.to_dict()}, {})
    # subset of modalities and another aerial size: encoder weights come from the checkpoint
    enc, info = build_encoder(ckpt, ["aerial"], image_size={"aerial": 64})
    assert info["pretrained"] and enc.config.modalities["aerial"].image_size == 64
    for name, t in enc.state_dict().items():
        if name.startswith(("patch_embed.", "encoders.")):
            torch.testing.assert_close(t, mae.state_dict()[name])
    with pytest.raises(DataError, match="absent"):
        build_encoder(ckpt, ["aerial", "dem"])
    # fine-tuned model: save -> load gives the same logits; predict adapts other geometries
    model = SegmentationModel(enc, SegmentationHead(enc.embed_dim, 15, 8, 64), ["aerial"]).eval()
    path = save_finetuned(model, tmp_path / "ft" / "finetuned.safetensors", {"task": "cosia"})
    loaded, meta = load_finetuned(path)
    assert meta["task"] == "cosia" and meta["label_size"] == 64
    batch = fake_batch(aerial=64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch))
    out = predict_logits(loaded, fake_batch(aerial=512), out_size=512)
    assert out.shape == (2, 15, 512, 512)


def test_short_budget_schedule_spends_its_steps_at_a_useful_rate():
    """50 steps, warm-up 10 %, start 1/25 (finetune's settings): the first step already moves
    the weights, the peak comes at step 5, and every step until the last keeps ≥ 1/100 (probe)
    — with R6's 1/1000 start and 1e7 end a 4-step probe spent ~all of its steps near zero."""
    lrs = [one_cycle(s, 50, 100.0, warm=0.1, start=1 / 25) for s in range(50)]
    assert lrs[0] == pytest.approx(0.04) and max(lrs) == pytest.approx(1.0) == lrs[5]
    assert lrs[-1] == pytest.approx(0.01) and min(lrs) == pytest.approx(0.01)
    assert sum(lr > 0.1 for lr in lrs) >= 40
    four = [one_cycle(s, 4, 100.0, warm=0.1, start=1 / 25) for s in range(4)]
    assert four[0] == pytest.approx(0.04) and four[1] == pytest.approx(1.0)
    assert one_cycle(3, 4, 1e7) == pytest.approx(1e-7)  # R6's probe end, for comparison


class FakeLoader(list):
    """A list of batches that looks like a DataLoader to `BatchStream` (records set_epoch)."""

    def __init__(self, batches):
        super().__init__(batches)
        epochs = self.epochs = []

        class Dataset:
            @staticmethod
            def set_epoch(epoch: int) -> None:
                epochs.append(epoch)

        self.dataset = Dataset()


def test_batch_stream_cycles_epochs_and_train_phase_counts_optimiser_steps():
    loader = FakeLoader([fake_batch(), fake_batch(), fake_batch()])
    stream = BatchStream(loader)
    got = [next(stream)["patch_id"] for _ in range(7)]
    assert len(got) == 7 and loader.epochs == [0, 1, 2]  # 3 batches an epoch -> 3 epochs begun
    torch.manual_seed(0)
    enc, _ = build_encoder(None, ["aerial", "s2"], **GEOM)
    model = SegmentationModel(enc, SegmentationHead(enc.embed_dim, 15, 4, 32), ["aerial", "s2"])
    cfg = FinetuneConfig(modalities=["aerial", "s2"], probe_steps=5, finetune_steps=0,
                         eval_every=2)  # fmt: skip
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    res = train_phase(model, BatchStream(loader), loader, cfg, "probe", torch.device("cpu"))
    assert [h["step"] for h in res.history] == [2, 4, 5]  # every 2 steps and at the end
    assert [r["step"] for r in res.log] == [1, 2, 3, 4, 5] and res.stopped_at == 5
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_miou"] <= 1 for h in res.history)
    assert {"train_miou", "val_loss", "data_seconds", "compute_seconds"} <= set(res.history[0])
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())
    # fine-tuning continues the global step count; patience stops it and keeps the best weights
    cfg = FinetuneConfig(modalities=["aerial", "s2"], finetune_steps=40, eval_every=1,
                         patience=2, finetune_lr=0.0, head_lr=0.0)  # fmt: skip
    res = train_phase(model, BatchStream(loader), loader, cfg, "finetune", torch.device("cpu"),
                      step0=5)  # fmt: skip
    assert res.log[0]["step"] == 6 and res.stopped_at == 8  # lr 0: no better check after step 6
    assert res.best is not None and res.best_step == 6


def test_curves_by_step_and_predictions_with_a_class_legend():
    import matplotlib

    matplotlib.use("Agg")
    from flairlab.training.baseline import run_baseline
    from flairlab.training.finetune_plots import floor_table, plot_curves, plot_predictions

    history = [
        {"phase": "probe", "step": 20, "train_loss": 1.7, "train_miou": 0.15, "val_loss": 1.0,
         "val_miou": 0.22},
        {"phase": "finetune", "step": 45, "train_loss": 1.0, "train_miou": 0.3, "val_loss": 0.7,
         "val_miou": 0.39},
    ]  # fmt: skip
    log = [{"step": s, "phase": "probe" if s <= 20 else "finetune", "lr": 1e-3, "loss": 3 / s}
           for s in range(1, 46)]  # fmt: skip
    fig = plot_curves(history, log, {"val_miou": 0.74}, title="t")
    loss_ax, miou_ax = fig.axes
    assert loss_ax.get_xlabel() == miou_ax.get_xlabel() == "optimiser step"
    assert len(loss_ax.lines[0].get_xdata()) == 45  # every step of the training loss
    assert any("floor" in t.get_text() for t in miou_ax.get_legend().get_texts())
    torch.manual_seed(0)
    enc, _ = build_encoder(None, ["aerial", "s2"], **GEOM)
    model = SegmentationModel(enc, SegmentationHead(enc.embed_dim, 15, 4, 32), ["aerial", "s2"])
    items = [{k: v[0] for k, v in fake_batch(B=1).items()} for _ in range(2)]
    floor, _ = run_baseline(items, {}, "cosia", ["aerial", "s2"], 32)
    fig = plot_predictions(model, items, "cosia", n=2, baseline=floor)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["aerial (R, G, B)", "ground truth",
                                                        "model", "floor: per-pixel logistic"]
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names and set(names) <= set(class_names("cosia")) and "building" in names
    res = {"val": {"miou": 0.4}, "test_miou": 0.5, "test_oa": 0.9, "n_train_patches": 3,
           "steps": {"total": 45}, "baseline": {"val_miou": 0.7, "test_miou": 0.8,
           "test_oa": 0.95, "n_train_pixels": 900, "n_features": 34}}  # fmt: skip
    assert list(floor_table(res).index) == ["model", "floor: per-pixel logistic regression"]


def test_upsample_head_reads_the_inputs_and_round_trips(tmp_path):
    from flairlab.models.heads import UpsampleHead, inputs_on_grid
    from flairlab.models.segmodel import build_head

    torch.manual_seed(0)
    enc, _ = build_encoder(None, ["aerial", "s2"], **GEOM)
    batch = fake_batch()
    grid = inputs_on_grid(batch, ["aerial", "s2"], 32)
    assert grid.shape == (2, 4 + 3 * 10, 32, 32)  # aerial 4 bands, s2 3 dates × 10 bands
    torch.testing.assert_close(grid[:, :4], batch["aerial"][:, 0])  # same size: kept as is
    head = build_head("upsample", enc.config, ["aerial", "s2"], 15, 32, dim=8)
    assert isinstance(head, UpsampleHead) and head.in_channels == 34 and head.grid == 4
    model = SegmentationModel(enc, head, ["aerial", "s2"]).eval()
    out = model(batch)
    assert out.shape == (2, 15, 32, 32)
    changed = dict(batch, aerial=batch["aerial"].clone())
    changed["aerial"][0, 0, :, 5, 7] += 1.0  # one aerial pixel
    diff = (model(changed) - out).abs().sum(1)
    assert diff[0, 5, 7] > 0 and diff[1].max() == 0  # the pixel itself, not the other sample
    path = save_finetuned(model, tmp_path / "ft.safetensors", {"task": "cosia"})
    loaded, meta = load_finetuned(path)
    assert meta["head"] == "upsample" and meta["head_dim"] == 8
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), out)
    with pytest.raises(DataError, match="head"):
        build_head("unet", enc.config, ["aerial"], 15, 32)


def test_config_validation():
    assert FinetuneConfig(modalities="aerial, s2").modalities == ["aerial", "s2"]
    with pytest.raises(DataError):
        FinetuneConfig(task="landcover")
    with pytest.raises(DataError):
        FinetuneConfig(label_fraction=1.5)
    with pytest.raises(DataError, match="budget"):
        FinetuneConfig(probe_steps=0, finetune_steps=0)
    with pytest.raises(DataError, match="head"):
        FinetuneConfig(head="fpn")
    with pytest.raises(DataError, match="eval_every"):
        FinetuneConfig(eval_every=-1)


# -- a whole run on the embedded sample: CLI and notebook -------------------------------------
@pytest.mark.slow
def test_cli_finetune_on_sample(sample_root, tmp_path, capsys):
    from flairlab.cli import main

    out = tmp_path / "run"
    args = ["finetune", "--root", str(sample_root), "--modalities", "aerial,s2", "--size", "nano",
            "--image-size", "aerial=32", "--patch-size", "aerial=8", "--n-dates", "s2=3",
            "--label-size", "32", "--probe-steps", "2", "--finetune-steps", "3",
            "--eval-every", "0", "--label-fraction", "0.5", "--output-dir", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "test mIoU" in printed and "floor (per-pixel logistic regression" in printed
    res = json.loads((out / "results.json").read_text())
    assert [h["phase"] for h in res["history"]] == ["probe", "finetune"]
    assert [h["step"] for h in res["history"]] == [2, 5] and len(res["train_log"]) == 5
    assert res["steps"] == {"probe": 2, "finetune": 3, "total": 5, "selected": 5}
    floor = res["baseline"]
    assert floor["n_features"] == 4 + 3 * 10 and 0 <= floor["test_miou"] <= 1
    assert floor["n_train_pixels"] > 0 and res["baseline_test_miou"] == floor["test_miou"]
    assert (out / "baseline.safetensors").is_file()
    assert res["n_train_patches"] == max(1, round(0.5 * res["n_train_total"]))
    assert set(res["classes_in_train_subset"]) <= set(res["classes_in_full_train"])
    assert 0.0 <= res["test_miou"] <= 1.0 and res["pretrained"] is False
    cm = np.array(res["test"]["confusion"])
    assert cm.shape == (15, 15) and cm.sum() > 0
    model, meta = load_finetuned(out / "finetuned.safetensors")
    assert meta["task"] == "cosia" and model.head.out_size == 32


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_finetune.ipynb"


def test_notebook_04_parameters_and_clean():
    from flairlab.runs.notebooks import notebook_parameters, output_problems, read_notebook

    nb = read_notebook(NOTEBOOK)
    assert not output_problems(nb)
    params = notebook_parameters(nb)
    for name in ("checkpoint", "task", "modalities", "label_fraction", "probe_steps",
                 "finetune_steps", "eval_every", "head", "baseline", "seed", "output_dir",
                 "source"):  # fmt: skip
        assert name in params


@pytest.mark.slow
def test_notebook_04_runs_with_papermill(sample_root, tmp_path):
    import papermill as pm

    out = tmp_path / "out"
    pm.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "04.ipynb"), kernel_name="python3", progress_bar=False,
        cwd=str(tmp_path),
        parameters=dict(source=str(sample_root), modalities="aerial,dem,s2", probe_steps=2,
                        finetune_steps=2, eval_every=1, image_size="aerial:32,dem:32",
                        patch_size="aerial:8,dem:16", n_dates="s2:2", label_size=32,
                        label_fraction=0.5, n_show=2, output_dir=str(out)),
    )  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    for fig in ("curves", "confusion", "predictions"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    assert len(res["per_class_test"]) == 15 and 0.0 <= res["test_miou"] <= 1.0
    assert "floor_iou" in res["per_class_test"][0] and res["baseline"]["test_miou"] >= 0
