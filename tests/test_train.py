"""Pre-training loop: schedule, checkpoints, exact resume, config checks, DDP, CLI, plots."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from flairlab.data.errors import DataError
from flairlab.models.checkpoint import load_mae, load_state, resolve_checkpoint
from flairlab.models.mae_config import MAEConfig
from flairlab.training.pretrain import (
    EpochBatchSampler,
    PretrainConfig,
    TrainConfig,
    load_config,
    lr_max,
    pretrain,
)
from flairlab.training.schedules import one_cycle_scheduler

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

MODEL = {
    "size": "nano",
    "depth": 2,
    "inter_depth": 1,
    "decoder_dim": 64,
    "modalities": {
        "aerial": {"image_size": 32, "patch_size": 8},
        "s2": {"n_dates": 2},
        "s1_asc": {"n_dates": 2},
        "s1_desc": {"n_dates": 2},
    },
}


def config(out: Path, **train) -> dict:
    t = {"epochs": 3, "batch_size": 2, "base_lr": 2e-3, "precision": "32-true", **train}
    return {"model": MODEL, "train": t, "output_dir": str(out), "seed": 0}


class Synth(Dataset):
    """In-memory items of the batch contract: smooth random fields (learnable), random dates."""

    def __init__(self, cfg: MAEConfig, n: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            item = {
                "patch_id": f"D001-2021_AA-S1-1_1-{i + 1}",
                "ref_date": torch.tensor([[2021, 180, 0]]),
            }
            for k, m in cfg.modalities.items():
                coarse = torch.rand(m.n_dates, m.in_chans, 3, 3, generator=g)
                x = torch.nn.functional.interpolate(coarse, size=m.image_size, mode="bilinear")
                item[k] = x + 0.01 * torch.randn(x.shape, generator=g)
                dates = torch.zeros(m.n_dates, 3, dtype=torch.int64)
                dates[:, 0] = 2021
                dates[:, 1] = torch.randint(1, 366, (m.n_dates,), generator=g)
                item[f"{k}_dates"] = dates
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


@pytest.fixture(scope="module")
def synth() -> Synth:
    return Synth(PretrainConfig.from_dict(config(Path("x"))).model)


# -- schedule and sampler ------------------------------------------------------------------
def test_lr_scaling_and_one_cycle_endpoints():
    tc = TrainConfig(batch_size=32)
    assert math.isclose(lr_max(tc, 1), 9.8e-5, rel_tol=2e-3)
    assert math.isclose(lr_max(tc, 4), 1.96e-4, rel_tol=2e-3)
    peak = 1e-3
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = one_cycle_scheduler(opt, 100, tc.final_factor, tc.warmup_frac)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(99):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert math.isclose(lrs[0], peak / 1000, rel_tol=1e-6)
    assert max(range(100), key=lrs.__getitem__) in (19, 20) and math.isclose(max(lrs), peak)
    assert math.isclose(lrs[-1], peak / 1e7, rel_tol=1e-3)


def test_epoch_sampler_splits_global_batches_across_ranks():
    s0, s1 = (EpochBatchSampler(10, 2, seed=1, rank=r, world=2) for r in (0, 1))
    b0, b1 = list(s0), list(s1)
    assert len(b0) == len(b1) == 2 == len(s0)
    flat = [i for b in b0 + b1 for i in b]
    assert len(set(flat)) == 8  # disjoint, last incomplete global batch dropped
    s0.set_epoch(1)
    assert list(s0) != b0
    s0.set_epoch(0, start=1)
    assert list(s0) == b0[1:]
    with pytest.raises(DataError, match="global batch"):
        EpochBatchSampler(3, 2, seed=0, world=2)


def test_config_file_overrides_and_errors(tmp_path):
    data = load_config(
        ROOT / "configs" / "pretrain_cpu.yaml", ["train.epochs=2", "model.size=tiny"]
    )
    cfg = PretrainConfig.from_dict(data)
    assert cfg.train.epochs == 2 and cfg.model.embed_dim == 192
    full = PretrainConfig.from_dict(load_config(ROOT / "configs" / "pretrain_full.yaml"))
    assert full.model.n_tokens() == 1880 and full.model.n_visible() == 470
    assert full.model.size == "medium" and full.train.batch_size == 32
    with pytest.raises(DataError, match="train: unknown fields"):
        PretrainConfig.from_dict({"train": {"epoch": 3}})
    with pytest.raises(DataError, match="key=value"):
        load_config(None, ["train.epochs"])


# -- training runs -------------------------------------------------------------------------
def test_overfit_smoke_loss_falls_below_the_zero_prediction_baseline(tmp_path):
    cfg = config(tmp_path / "fit", epochs=40, base_lr=1e-2, ckpt_every=1000)
    pretrain(cfg, Synth(PretrainConfig.from_dict(cfg).model, n=2), progress=False)
    loss = [r["loss_mae"] for r in json.loads((tmp_path / "fit" / "metrics.json").read_text())]
    assert len(loss) == 40
    first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
    # predicting 0 for a normalised target scores E|N(0, 1)| = 0.80; learning must beat it
    assert last < 0.85 * first and last < 0.75, (first, last)


def test_pretrain_writes_metrics_and_checkpoints(tmp_path, synth):
    out = tmp_path / "run"
    summary = pretrain(config(out, epochs=4, keep_checkpoints=2), synth, progress=False)
    assert summary["step"] == summary["total_steps"] == 4 * 3
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(math.isfinite(r["loss_mae"]) and r["samples_per_s"] > 0 for r in rows)
    peak = summary["lr_max"]  # the logged lr is the one each step used: OneCycle endpoints
    assert math.isclose(rows[0]["lr"], peak / 1000) and math.isclose(rows[-1]["lr"], peak / 1e7)
    assert math.isclose(max(r["lr"] for r in rows), peak, rel_tol=0.05)
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 13 and csv_lines[0].startswith(
        "step,epoch,lr,loss,loss_mae,loss_aerial"
    )
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert ckpts == ["step_0000009", "step_0000012"]  # one per epoch, newest two kept
    assert not list((out / "checkpoints").glob(".tmp-*"))
    ck = resolve_checkpoint(out)
    assert ck.name == "step_0000012"
    state = load_state(ck)  # weights_only=True
    assert state["step"] == 12 and "optimizer" in state and "rng" in state
    model = load_mae(out)
    weights = load_file(ck / "model.safetensors")
    assert torch.equal(model.state_dict()["mask_tokens.s2"], weights["mask_tokens.s2"])
    with pytest.raises(DataError, match="not overwritten"):
        pretrain(config(out, epochs=4), synth, progress=False)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, synth):
    full, cut = tmp_path / "full", tmp_path / "cut"
    cfg = config(full, ckpt_every=2, precision="bf16-mixed")
    pretrain(cfg, synth, progress=False)
    cfg_cut = config(cut, ckpt_every=2, precision="bf16-mixed", stop_at_step=5)
    assert pretrain(cfg_cut, synth, progress=False)["step"] == 5
    with (cut / "metrics.csv").open("a") as f:  # rows of a crashed run after its checkpoint
        f.write("6,1,0.1,9,9,9,9,9,9,1\n")
    shutil.rmtree(cut / "checkpoints" / "step_0000005")  # crash before the step-5 save
    (cut / "checkpoints" / "latest.json").write_text('{"step": 4, "dir": "step_0000004"}')
    resumed = {**cfg_cut, "resume": True, "train": {**cfg_cut["train"], "stop_at_step": 0}}
    summary = pretrain(resumed, synth, progress=False)
    assert summary["step"] == 9
    a = load_file(resolve_checkpoint(full) / "model.safetensors")
    b = load_file(resolve_checkpoint(cut) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((p / "metrics.json").read_text()) for p in (full, cut))
    for r in ra + rb:
        r.pop("samples_per_s")
    assert ra == rb  # same losses and learning rates at every step; the crashed row is gone


# a child process pre-training on a real-format sample; it slows down after the checkpoint at
# KILL_AT so that the parent reliably SIGKILLs it between that checkpoint and the next one
CHILD = """
import json, sys, time
from pathlib import Path
from flairlab.data.dataset import collate
from flairlab.training.loop import set_epoch
from flairlab.training.pretrain import pretrain
from flairlab.training.pretrain_config import PretrainConfig, build_dataset

cfg = PretrainConfig.from_dict(json.loads(sys.argv[1]))
latest = Path(cfg.output_dir) / "checkpoints" / "latest.json"

class Slow:
    def __init__(self, ds):
        self.ds, self.collate_fn = ds, collate
    def __len__(self):
        return len(self.ds)
    def set_epoch(self, e):
        set_epoch(self.ds, e)
    def __getitem__(self, i):
        if latest.exists():
            time.sleep(2.0)  # after the first checkpoint: wait to be killed
        return self.ds[i]

pretrain(cfg, Slow(build_dataset(cfg)), progress=False)
"""


def test_kill_9_at_a_mid_epoch_checkpoint_then_resume_is_bit_exact(tmp_path, sample_root):
    """Pre-training on FlairHubDataset (random date choice, bin offsets, flips: the draws come
    from (seed, epoch, sample index)) is killed with SIGKILL right after a checkpoint in the
    middle of an epoch; the resumed run ends with exactly the weights of an uninterrupted run."""
    from flairlab.training.pretrain_config import build_dataset

    def cfg(out: Path, **kw) -> dict:
        c = config(out, epochs=2, batch_size=2, ckpt_every=2, threads=1, **kw)
        c["data"] = {"source": str(sample_root), "split": "train", "n_patches": 6}
        return c

    full, cut = tmp_path / "full", tmp_path / "cut"
    pretrain(cfg(full), build_dataset(PretrainConfig.from_dict(cfg(full))), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg(cut))], env=env,
                            stderr=subprocess.PIPE)  # fmt: skip
    latest = cut / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    step = json.loads(latest.read_text())["step"]
    assert step == 2 and step % 3 != 0  # 3 steps per epoch: the checkpoint is mid-epoch
    pretrain({**cfg(cut), "resume": True}, progress=False)
    a = load_file(resolve_checkpoint(full) / "model.safetensors")
    b = load_file(resolve_checkpoint(cut) / "model.safetensors")
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert diff == 0.0, f"resumed weights differ by up to {diff:.3g}"
    ra, rb = (json.loads((p / "metrics.json").read_text()) for p in (full, cut))
    for r in ra + rb:
        r.pop("samples_per_s")
    assert ra == rb


def test_a_half_written_metrics_row_is_dropped_on_resume(tmp_path):
    from flairlab.training.loop import MetricLog

    log = MetricLog(tmp_path, 0)
    log.add({"step": 1, "loss": 0.5})
    log.add({"step": 2, "loss": 0.4})
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("1")  # killed in the middle of writing the row of step 12
    assert MetricLog(tmp_path, 2).rows == [{"step": 1.0, "loss": 0.5}, {"step": 2.0, "loss": 0.4}]


def test_checkpoint_that_does_not_fit_is_rejected_by_field(tmp_path, synth):
    out = tmp_path / "run"
    pretrain(config(out, epochs=1), synth, progress=False)
    other = config(out, epochs=1, batch_size=3)
    other["resume"] = True
    other["model"] = {**MODEL, "fusion_mode": "group"}
    with pytest.raises(DataError, match=r"model\.fusion_mode.*train\.batch_size") as err:
        pretrain(other, synth, progress=False)
    assert "checkpoint 'inter-group'" in str(err.value)
    bigger = MAEConfig.from_dict({**MODEL, "embed_dim": 128})
    with pytest.raises(DataError, match=r"embed_dim \(checkpoint 96, config 128\)"):
        load_mae(out, bigger)
    # geometry-only changes (other image size / dates) still fit the weights
    moved = MAEConfig.from_dict(
        {**MODEL, "modalities": {**MODEL["modalities"], "s2": {"n_dates": 5}}}
    )
    assert load_mae(out, moved).config.modalities["s2"].n_dates == 5


# -- entry points ----------------------------------------------------------------------------
def test_cli_pretrains_on_a_real_format_tree(tmp_path):
    from _flairtree import make_tree

    root = make_tree(tmp_path / "tree")
    from flairlab.cli import main

    out = tmp_path / "cli"
    args = [
        "pretrain",
        "--config",
        str(ROOT / "configs" / "pretrain_cpu.yaml"),
        "--output-dir",
        str(out),
        "--no-progress",
        "--set",
        f"data.source={root}",
        "--set",
        "train.epochs=2",
        "--set",
        "train.batch_size=2",
        "--set",
        "model.modalities.aerial.image_size=32",
        "--set",
        "model.modalities.dem.image_size=64",
        "--set",
        "model.depth=2",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 2 and math.isfinite(summary["final_loss"])
    assert resolve_checkpoint(out).name == "step_0000002"


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mae", "contrastive"])
def test_two_process_ddp_on_cpu_with_torchrun(tmp_path, objective):
    """`torchrun -m flairlab.training.pretrain` with 2 gloo processes on a real-format tree
    (contrastive: negatives gathered across ranks; modality encoders outside the pairs get no
    gradient)."""
    from _flairtree import make_tree

    root = make_tree(tmp_path / "tree")  # 2 training patches → 1 global batch of 2 per epoch
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "flairlab.training.pretrain",
        "--config",
        str(ROOT / "configs" / "pretrain_cpu.yaml"),
        "--output-dir",
        str(out),
        "--no-progress",
        "--set",
        f"data.source={root}",
        "--set",
        "train.epochs=2",
        "--set",
        "train.batch_size=1",
        "--set",
        "train.threads=1",
        "--set",
        "model.modalities.aerial.image_size=32",
        "--set",
        "model.modalities.dem.image_size=64",
        "--set",
        "model.depth=2",
    ]
    if objective == "contrastive":  # one ROI in the tree: keep its patches as negatives
        for s in ("objective=contrastive", "contrastive.pairs=aerial:dem",
                  "contrastive.mask_same_roi=false"):  # fmt: skip
            cmd += ["--set", f"train.{s}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        raise
    assert proc.returncode == 0, stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["ranks_in_sync"] is True
    assert s["step"] == 2 and math.isfinite(s["final_loss"]) and s["objective"] == objective
    if objective == "contrastive":  # the global batch of 2 is gathered from the 2 ranks
        rows = json.loads((out / "metrics.json").read_text())
        assert all(r["contrastive_global_batch"] == 2 for r in rows)
    assert math.isclose(s["lr_max"], 1e-3 * math.sqrt(2 / 3))  # B_total = 1 × 2 processes
    assert resolve_checkpoint(out).name == "step_0000002"


# -- notebook helpers, plots and the notebook --------------------------------------------------
def test_notebook_config_applies_flat_parameters_over_the_preset():
    from flairlab.training.pretrain_config import notebook_config

    cfg = notebook_config(
        "cpu",
        modalities="aerial,s2",
        image_size="aerial:64",
        n_dates="s2:3",
        size="",
        epochs=0,
        batch_size=2,
        fusion_mode="group",
        resume=True,
    )
    assert list(cfg.model.modalities) == ["aerial", "s2"]
    assert cfg.model.modalities["aerial"].image_size == 64
    assert cfg.model.modalities["aerial"].patch_size == 16  # kept from the preset
    assert cfg.model.modalities["s2"].n_dates == 3 and cfg.model.size == "nano"
    assert cfg.train.steps == 300 and cfg.train.batch_size == 2 and cfg.resume is True
    assert cfg.model.fusion_mode == "group"
    full = notebook_config("full")
    assert full.model.n_tokens() == 1880 and full.model.size == "medium"
    with pytest.raises(DataError, match="modality not selected"):
        notebook_config("cpu", modalities="aerial", n_dates="s2:3")
    with pytest.raises(DataError, match="preset"):
        notebook_config("gpu")


def test_plots_show_visible_tokens_and_reconstructions(synth):
    import numpy as np

    from flairlab.data.dataset import collate
    from flairlab.models.mae import MAE
    from flairlab.training.pretrain_plots import (
        MASK_FILL,
        panel_images,
        plot_loss_curve,
        plot_reconstructions,
        reconstruct,
    )

    rows = [
        {"step": s, "epoch": 0, "lr": 1e-3 / s, "loss_mae": 1 / s, "loss_s2": 2 / s}
        for s in range(1, 6)
    ]
    fig = plot_loss_curve(rows)
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 1
    model = MAE(PretrainConfig.from_dict(config(Path("x"))).model)
    batch = collate([synth[0], synth[1]])
    out = reconstruct(model, batch, seed=3)
    again = reconstruct(model, batch, seed=3)
    assert torch.equal(out.masks["s2"], again.masks["s2"])  # reproducible masks
    p = panel_images(model, batch, out, "aerial", sample=1)
    hidden = out.masks["aerial"][1, 0].repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()
    assert hidden.any() and (~hidden).any()
    assert (p["visible tokens"][hidden] == MASK_FILL).all()
    assert np.array_equal(p["visible tokens"][~hidden], p["input"][~hidden])
    assert np.array_equal(p["reconstruction"][~hidden], p["input"][~hidden])
    assert not np.array_equal(p["reconstruction"][hidden], p["input"][hidden])
    rgb = out.targets["aerial"][1, 0, [1, 2, 3]].permute(1, 2, 0).numpy()  # R, G, B of NIR,R,G,B
    assert np.allclose(p["normalised target"], np.clip((rgb + 2.5) / 5, 0, 1), atol=1e-6)
    fig = plot_reconstructions(model, batch, out, sample=0)
    assert len(fig.axes) == 4 * 5


NOTEBOOK = ROOT / "notebooks" / "03_pretrain_mae.ipynb"


def test_notebook_03_parameters_and_clean():
    from flairlab.runs.notebooks import notebook_parameters, output_problems, read_notebook

    nb = read_notebook(NOTEBOOK)
    assert not output_problems(nb)
    params = notebook_parameters(nb)
    for name in (
        "fusion_mode",
        "size",
        "mask_ratio",
        "epochs",
        "image_size",
        "batch_size",
        "device",
        "output_dir",
        "resume",
        "source",
        "preset",
    ):
        assert name in params


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mae", "contrastive"])
def test_notebook_03_runs_with_papermill(sample_root, tmp_path, monkeypatch, objective):
    import papermill as pm

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel shares 2 cores with other work
    out = tmp_path / "out"
    params = dict(
        source=str(sample_root),
        epochs=3,
        batch_size=2,
        image_size="aerial:64,dem:64",
        output_dir=str(out),
        n_show=1,
        objective=objective,
    )
    if objective == "contrastive":  # CCL-K fair (domain) on two pairs
        params |= dict(contrastive_kind="cclk", cclk_variant="fair",
                       contrastive_pairs="aerial:s2,aerial:dem")  # fmt: skip
    pm.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "03.ipynb"),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
        parameters=params,
    )
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == json.loads((out / "summary.json").read_text())["total_steps"] > 0
    assert res["objective"] == objective
    for fig in res["figures"]:
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    if objective == "mae":
        assert res["tokens_per_patch"] == 16 + 4 + 100 + 50 + 50
        assert math.isfinite(res["valid_loss"]) and res["loss_last_step"] < res["loss_first_step"]
        assert res["figures"] == ["loss_curve", "reconstruction_0"]
        return
    assert res["figures"] == ["contrastive_curve"]  # no decoder trained: no reconstructions
    assert res["contrastive_config"]["kind"] == "cclk" and "valid_loss" not in res
    last = res["contrastive_last_step"]
    assert math.isfinite(last["loss"]) and 0 <= last["w_offdiag_mass"] < 1
