"""The `compile` option (flairlab.training.compiling): settings, warm-up, fallback, equivalence."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch
from test_model import random_batch
from test_train import Synth, config

from flairlab.data.errors import DataError
from flairlab.models.checkpoint import load_mae
from flairlab.models.mae import MAE
from flairlab.models.mae_config import MAEConfig, flair_modalities
from flairlab.training.compiling import compile_module, compile_setting, wants_compile
from flairlab.training.finetune import FinetuneConfig
from flairlab.training.pretrain import PretrainConfig, pretrain

torch.set_num_threads(1)


def test_settings_are_normalised_and_checked():
    assert compile_setting(True) == "true" and compile_setting(False) == "false"
    assert compile_setting(" Auto ") == "auto" and compile_setting("inductor") == "true"
    assert compile_setting("aot_eager") == "aot_eager"  # any torch.compile backend
    with pytest.raises(DataError, match=r"train\.compile"):
        compile_setting("fast", "train.compile")
    cfg = PretrainConfig.from_dict({"train": {"compile": False}})  # YAML `compile: false`
    assert cfg.train.compile == "false" and PretrainConfig().train.compile == "auto"
    with pytest.raises(DataError, match="compile"):
        FinetuneConfig(compile="yes please")
    assert wants_compile("auto", "cuda") and not wants_compile("auto", "cpu")
    assert wants_compile("true", "cpu") and wants_compile("eager", "cpu")
    assert not wants_compile("false", "cuda")


def bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))


def test_auto_falls_back_to_eager_when_the_warm_up_fails():
    """auto on CUDA: a failing warm-up (no Triton, a dynamo error...) leaves an eager module,
    without gradients and with its buffers as before; true / a backend: the error is raised."""
    model = bn_model()
    before = copy.deepcopy(model.state_dict())

    def failing_warm_up() -> None:
        model[1].running_mean.add_(1.0)  # what a forward in training mode does to BatchNorm
        model[0].weight.grad = torch.ones_like(model[0].weight)
        raise RuntimeError("no working Triton for this GPU")

    with pytest.warns(RuntimeWarning, match="training eagerly"):
        assert compile_module(model, "auto", "cuda", failing_warm_up) is False
    assert model._compiled_call_impl is None
    assert model[0].weight.grad is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="no working Triton"):
        compile_module(bn_model(), "true", "cpu", failing_warm_up)
    assert compile_module(bn_model(), "auto", "cpu", failing_warm_up) is False  # never tried


def test_warm_up_compiles_and_leaves_no_trace():
    model = bn_model()
    x = torch.randn(16, 4)
    before = copy.deepcopy(model.state_dict())
    warm_up = lambda: model(x).square().mean().backward()  # noqa: E731
    assert compile_module(model, "eager", "cpu", warm_up) is True
    assert model._compiled_call_impl is not None
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert list(model.state_dict()) == list(before)  # names unchanged: checkpoints unaffected
    twin = copy.deepcopy(model)  # e.g. the fine-tuning EMA copy: eager, its own weights
    assert twin._compiled_call_impl is None
    twin[0].weight.data.add_(1.0)
    assert not torch.equal(twin(x), model(x))


@pytest.mark.slow
def test_compiled_mae_gives_the_eager_loss_and_gradients():
    """inductor (CPU C++ code generation, one .so per graph via cpp_wrapper) on a tiny MAE: same
    masks, loss and gradients as eager from the same seed. ~1-3 min on 2 busy cores."""
    import torch._inductor.config as inductor_config

    mods = flair_modalities(("aerial", "s2"), image_size={"aerial": 32}, patch_size={"aerial": 8},
                            n_dates={"s2": 2})  # fmt: skip
    cfg = MAEConfig(modalities=mods, size="nano", depth=2, inter_depth=1, decoder_dim=64)
    torch.manual_seed(0)
    model = MAE(cfg)
    batch = random_batch(cfg, B=2)

    def step(seed: int):
        torch.manual_seed(seed)
        out = model(batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out.loss.detach(), out.masks, grads

    eager = [step(s) for s in (1, 2)]
    t = time.perf_counter()
    with inductor_config.patch(cpp_wrapper=True):
        assert compile_module(model, "true", "cpu", warm_up=lambda: step(1))
        compiled = [step(s) for s in (1, 2)]
    print(f"inductor compile + 3 steps: {time.perf_counter() - t:.0f} s")
    for (le, me, ge), (lc, mc, gc) in zip(eager, compiled, strict=True):
        assert all(torch.equal(me[k], mc[k]) for k in me)  # masking stays eager: same masks
        torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-6)
        assert set(gc) == set(ge)
        for n in ge:
            torch.testing.assert_close(gc[n], ge[n], rtol=1e-4, atol=1e-6)


def test_compiled_pretraining_equals_eager_pretraining(tmp_path: Path):
    """train.compile through the loop (dynamo with its eager backend: no code generation): the
    warm-up step leaves no trace, so weights after training equal an eager run's."""
    data = config(tmp_path / "eager", epochs=1)
    ds = Synth(PretrainConfig.from_dict(data).model)
    eager = pretrain(data, dataset=ds, progress=False)
    compiled = pretrain({**config(tmp_path / "compiled", epochs=1),
                         "train": {**data["train"], "compile": "eager"}},
                        dataset=ds, progress=False)  # fmt: skip
    assert (eager["compiled"], compiled["compiled"]) == (False, True)
    assert compiled["final_loss"] == eager["final_loss"]
    a, b = load_mae(eager["checkpoint"]), load_mae(compiled["checkpoint"])
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
