"""Pre-training objectives mae | contrastive | both (training.pretrainer, pretrain, config)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from safetensors.torch import load_file
from test_train import MODEL, ROOT, Synth, config

from flairlab.data.errors import DataError
from flairlab.models.checkpoint import load_state, resolve_checkpoint
from flairlab.models.mae import MAE
from flairlab.training.objective_plots import objective_results, training_curves
from flairlab.training.pretrain import EpochBatchSampler, pretrain
from flairlab.training.pretrain_config import PretrainConfig, load_config, notebook_config
from flairlab.training.pretrainer import DECODER, build_pretrainer, param_groups

torch.set_num_threads(1)
PAIRS = {"pairs": ["aerial:s2", "s2:s1_asc"], "mask_same_roi": False}  # Synth: one ROI


class Domains(Synth):
    """Synth items spread over 3 domains (2 patches each), so that CCL-K(domain) has partners."""

    def __init__(self, cfg, n: int = 6) -> None:
        super().__init__(cfg, n)
        for i, item in enumerate(self.items):
            item["patch_id"] = f"D00{1 + i % 3}-2021_AA-S1-{i}_1-1"


def objective_config(out: Path, objective: str, **contrastive) -> dict:
    w = {"contrastive_weight": 0.5} if objective == "both" else {}
    cfg = config(out, epochs=1, objective=objective, **w)
    if objective != "mae":
        cfg["train"]["contrastive"] = {**PAIRS, **contrastive}
    return cfg


def run(cfg: dict, dataset=None) -> tuple[dict, list[dict]]:
    ds = dataset or Synth(PretrainConfig.from_dict(cfg).model)
    summary = pretrain(cfg, ds, progress=False)
    return summary, json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())


@pytest.mark.parametrize("objective", ["mae", "contrastive", "both"])
def test_each_objective_trains_with_finite_loss_and_prefixed_logs(tmp_path, objective):
    cfg = objective_config(tmp_path / objective, objective)
    summary, rows = run(cfg)
    assert summary["objective"] == objective and summary["step"] == 3 == len(rows)
    assert all(math.isfinite(r["loss"]) for r in rows)
    # the notebook's figures and results for this objective
    figs = training_curves(rows, objective)
    want = {"mae": ["loss_curve"], "contrastive": ["contrastive_curve"],
            "both": ["loss_curve", "contrastive_curve"]}[objective]  # fmt: skip
    assert list(figs) == want
    if "contrastive_curve" in figs:  # loss: mean + 2 pairs; retrieval: 2 pairs + chance
        ax_loss, ax_acc = figs["contrastive_curve"].axes[:2]
        assert len(ax_loss.lines) == 3 and len(ax_acc.lines) == 3
    res = objective_results(summary, rows, PretrainConfig.from_dict(cfg))
    assert res["objective"] == objective and res["total_loss_last_step"] == rows[-1]["loss"]
    assert ("contrastive_last_step" in res) == (objective != "mae")
    plt.close("all")
    keys = set(rows[-1])
    mae_keys = {"loss_mae", "loss_aerial", "loss_s2", "loss_s1_asc", "loss_s1_desc"}
    assert (mae_keys <= keys) == (objective != "contrastive")
    if objective == "contrastive":  # no MAE pass at all
        assert not any(k.startswith("loss_") for k in keys)
    con = {k for k in keys if k.startswith("contrastive_")}
    if objective == "mae":
        assert not con
        assert rows[-1]["loss"] == rows[-1]["loss_mae"]
        return
    # contrastive logs are prefixed: no collision with the MAE's loss_<modality> keys
    assert {"contrastive_loss", "contrastive_loss_aerial_s2", "contrastive_loss_s2_s1_asc",
            "contrastive_acc_aerial_s2", "contrastive_temperature"} <= con  # fmt: skip
    assert "loss_contrastive" not in keys and "loss_aerial_s2" not in keys
    last = rows[-1]
    if objective == "both":
        assert mae_keys <= keys
        assert last["loss"] == pytest.approx(last["loss_mae"] + 0.5 * last["contrastive_loss"])
    else:
        assert last["loss"] == pytest.approx(last["contrastive_loss"])
    assert summary["final_contrastive_loss"] == pytest.approx(last["contrastive_loss"])


def test_contrastive_only_leaves_decoder_and_fusion_blocks_unchanged(tmp_path):
    cfg = objective_config(tmp_path / "c", "contrastive")
    summary, _ = run(cfg)
    torch.manual_seed(0)  # the run's initialisation (seed 0)
    init = MAE(PretrainConfig.from_dict(cfg).model).state_dict()
    trained = load_file(resolve_checkpoint(tmp_path / "c") / "model.safetensors")
    frozen = [k for k in init if k.startswith((*DECODER, "inter."))]
    assert any(k.startswith("decoders.") for k in frozen) and any("inter." in k for k in frozen)
    assert all(torch.equal(init[k], trained[k]) for k in frozen)
    # the per-group encoders and the patch embeddings of paired modalities did train
    moved = [k for k in init if k not in frozen and not torch.equal(init[k], trained[k])]
    assert any(k.startswith("encoders.") for k in moved)
    assert any(k.startswith("patch_embed.") for k in moved)
    # frozen parameters are out of the optimizer (and so out of weight decay)
    module = build_pretrainer(PretrainConfig.from_dict(cfg))
    in_opt = {id(p) for g in param_groups(module, 0.01) for p in g["params"]}
    named = dict(module.mae.named_parameters())
    assert all((id(p) in in_opt) != k.startswith((*DECODER, "inter.")) for k, p in named.items())
    n_frozen = sum(init[k].numel() for k in frozen)
    n_heads = sum(p.numel() for p in module.contrastive.parameters())
    assert summary["n_trained_parameters"] == summary["n_parameters"] - n_frozen + n_heads


def test_temperature_is_out_of_weight_decay(tmp_path):
    cfg = objective_config(tmp_path / "b", "both")
    module = build_pretrainer(PretrainConfig.from_dict(cfg))
    groups = param_groups(module, weight_decay=0.5)
    scale = module.contrastive.logit_scale
    assert [len(g["params"]) for g in groups][1] == 1 and groups[1]["params"][0] is scale
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.5
    assert all(p is not scale for p in groups[0]["params"])
    # one AdamW step with zero gradients: only weight decay acts
    opt = torch.optim.AdamW(groups, lr=0.1)
    for g in groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    w = module.contrastive.heads["aerial"].weight
    before_w, before_s = w.detach().clone(), scale.detach().clone()
    opt.step()
    assert torch.allclose(w, before_w * (1 - 0.1 * 0.5))
    assert torch.equal(scale.detach(), before_s)
    # the optimizer of a real run has the same two groups
    run(cfg)
    saved = load_state(resolve_checkpoint(tmp_path / "b"))["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in saved] == [0.01, 0.0] and len(saved[1]["params"]) == 1


def test_cclk_logs_weight_mass_every_step(tmp_path):
    cfg = objective_config(tmp_path / "k", "contrastive", kind="cclk", variant="fair")
    cfg["train"]["batch_size"] = 3
    _, rows = run(cfg, Domains(PretrainConfig.from_dict(cfg).model))
    assert len(rows) == 2
    # indicator kernel, λ = 0.01: W0[i, j] = 1 / (m + λ) for the m − 1 others of i's domain, so
    # an anchor with one same-domain partner in the batch puts 1 / 2.01 on it, others 0
    batches = list(EpochBatchSampler(6, 3, seed=0))
    for r, idx in zip(rows, batches, strict=True):
        domains = [i % 3 for i in idx]
        paired = [domains.count(d) == 2 for d in domains]
        assert math.isfinite(r["loss"]) and r["contrastive_cclk_active"] == 1.0
        mass = sum(paired) / 3 / 2.01
        assert r["contrastive_w_offdiag_mass"] == pytest.approx(mass, rel=1e-5)
        assert r["contrastive_w_orphan_frac"] == pytest.approx(1 - sum(paired) / 3)
    assert any(r["contrastive_w_offdiag_mass"] > 0 for r in rows)


def test_resume_with_the_contrastive_heads_is_exact(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    cfg = objective_config(full, "both")
    cfg["train"] |= {"epochs": 2, "ckpt_every": 2}
    ds = Synth(PretrainConfig.from_dict(cfg).model)
    pretrain(cfg, ds, progress=False)
    cfg_cut = {**cfg, "output_dir": str(cut), "train": {**cfg["train"], "stop_at_step": 2}}
    pretrain(cfg_cut, ds, progress=False)
    resumed = {**cfg_cut, "resume": True, "train": {**cfg_cut["train"], "stop_at_step": 0}}
    assert pretrain(resumed, ds, progress=False)["step"] == 6
    for name in ("model.safetensors", "extra.safetensors"):
        a, b = (load_file(resolve_checkpoint(p) / name) for p in (full, cut))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert "logit_scale" in load_file(resolve_checkpoint(full) / "extra.safetensors")


# -- configuration errors ----------------------------------------------------------------------
def test_bad_objective_settings_raise_dataerror_naming_the_field():
    def make(train: dict, model: dict | None = None) -> PretrainConfig:
        return PretrainConfig.from_dict({"model": model or MODEL, "train": train})

    with pytest.raises(DataError, match=r"train\.objective: expected .*'both'.*found mea"):
        make({"objective": "mea"})
    with pytest.raises(DataError, match=r"train\.contrastive settings.*found \['kind'\]"):
        make({"contrastive": {"kind": "cclk"}})  # objective defaults to mae
    with pytest.raises(DataError, match=r"train\.contrastive_weight is only used by .*both"):
        make({"contrastive_weight": 0.5})
    with pytest.raises(DataError, match=r"train\.contrastive_weight is only used by .*both"):
        make({"objective": "contrastive", "contrastive_weight": 0.5})
    with pytest.raises(DataError, match=r"train\.contrastive_weight \(objective 'both'\)"):
        make({"objective": "both"})
    with pytest.raises(DataError, match=r"train\.contrastive: contrastive config keys"):
        make({"objective": "contrastive", "contrastive": {"temprature": 0.1}})
    with pytest.raises(DataError, match=r"train\.contrastive: contrastive config kind"):
        make({"objective": "contrastive", "contrastive": {"kind": "simclr"}})
    with pytest.raises(DataError, match=r"train\.contrastive\.pairs.*found \['dem'\]"):
        make({"objective": "contrastive", "contrastive": {"pairs": "aerial:dem"}})
    ok = make({"objective": "both", "contrastive_weight": 1.0})
    assert ok.train.uses_mae and ok.train.uses_contrastive
    assert ok.train.contrastive_config().pairs == ("aerial:s2", "aerial:s1_asc", "s2:s1_asc")


def test_objective_from_cli_overrides_and_notebook_parameters():
    data = load_config(
        ROOT / "configs" / "pretrain_cpu.yaml",
        ["train.objective=contrastive", "train.contrastive.kind=cclk",
         "train.contrastive.pairs=aerial:s2,aerial:dem"],
    )  # fmt: skip
    cfg = PretrainConfig.from_dict(data)
    assert cfg.train.objective == "contrastive"
    # YAML 1.1 reads `3e-4` as a string: float fields convert it, other mistakes are named
    lr = load_config(None, ["train.base_lr=3e-4"])
    assert PretrainConfig.from_dict(lr).train.base_lr == 3e-4
    with pytest.raises(DataError, match=r"train\.epochs: expected int, found float 2\.5"):
        PretrainConfig.from_dict(load_config(None, ["train.epochs=2.5"]))
    with pytest.raises(DataError, match=r"train\.base_lr: expected float, found str 'fast'"):
        PretrainConfig.from_dict(load_config(None, ["train.base_lr=fast"]))
    assert cfg.train.contrastive_config().pairs == ("aerial:s2", "aerial:dem")
    nb = notebook_config("cpu", objective="both", contrastive_weight=0.5,
                         contrastive_kind="cclk", cclk_variant="weak")  # fmt: skip
    cc = nb.train.contrastive_config()
    assert nb.train.contrastive_weight == 0.5 and (cc.kind, cc.variant) == ("cclk", "weak")
    plain = notebook_config("cpu")  # defaults: plain MAE, no contrastive settings
    assert plain.train.objective == "mae" and plain.train.contrastive == {}
    with pytest.raises(DataError, match="cclk_variant needs contrastive_kind"):
        notebook_config("cpu", objective="contrastive", cclk_variant="fair")
    with pytest.raises(DataError, match=r"train\.contrastive settings"):
        notebook_config("cpu", contrastive_kind="infonce")  # objective mae
    with pytest.raises(DataError, match=r"train\.contrastive_weight \(objective 'both'\)"):
        notebook_config("cpu", objective="both")


def test_cli_trains_contrastive_only_on_a_real_format_tree(tmp_path):
    from _flairtree import make_tree

    from flairlab.cli import main

    root = make_tree(tmp_path / "tree")  # 2 training patches of one ROI: no same-ROI mask
    out = tmp_path / "cli"
    sets = [f"data.source={root}", "train.epochs=2", "train.batch_size=2",
            "model.modalities.aerial.image_size=32", "model.modalities.dem.image_size=64",
            "model.depth=2", "train.objective=contrastive", "train.contrastive.kind=cclk",
            "train.contrastive.pairs=aerial:dem,aerial:s2", "train.contrastive.mask_same_roi=false",
            "train.base_lr=3e-4"]  # fmt: skip
    args = ["pretrain", "--config", str(ROOT / "configs" / "pretrain_cpu.yaml"),
            "--output-dir", str(out), "--no-progress"]  # fmt: skip
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "contrastive" and summary["step"] == 2
    assert math.isfinite(summary["final_loss"]) and summary["final_loss_mae"] is None
    rows = json.loads((out / "metrics.json").read_text())
    assert all("contrastive_w_offdiag_mass" in r for r in rows)
    saved = json.loads((out / "pretrain_config.json").read_text())["train"]
    assert saved["contrastive"]["pairs"] == "aerial:dem,aerial:s2"
