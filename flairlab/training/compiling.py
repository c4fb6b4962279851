"""`torch.compile` for the training loops: the `compile` option of pre-training and fine-tuning.

Values (`train.compile` in pre-training configs, `--compile` of `flairlab finetune`):

* `auto` (default): compiled on CUDA once a warm-up step has run compiled (if the warm-up fails,
  e.g. no Triton for this GPU, training goes on eagerly with a warning); eager on CPU, where
  inductor needs a C compiler and spends minutes compiling for little gain on small models;
* `true`: compiled on any device; a failing warm-up is an error;
* `false`: eager;
* the name of another `torch.compile` backend (`aot_eager`, `eager`, `cudagraphs`, ...): compiled
  with it, as `true` otherwise — for bisecting a compile problem.

The module is compiled in place (`nn.Module.compile`): parameter names, state dicts and
checkpoints do not change, and `copy.deepcopy` gives an eager copy (torch drops the compiled call
when copying). `MAE.mask` (a data-dependent loop of random draws) is excluded from compilation, so
a compiled run draws exactly the masks of an eager run with the same seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from flairlab.data.errors import DataError

CHOICES = ("auto", "true", "false")


def compile_setting(value: str | bool, field: str = "compile") -> str:
    """Normalise a compile option (YAML may give a bool) to auto | true | false | a backend."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text in CHOICES:
        return text
    if text == "inductor":
        return "true"
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if text not in backends:
        raise DataError(field, expected=[*CHOICES, *backends], found=value)
    return text


def wants_compile(setting: str | bool, device: torch.device | str) -> bool:
    """Whether `setting` compiles on `device` (auto: CUDA only)."""
    s = compile_setting(setting)
    return s != "false" and (s != "auto" or torch.device(device).type == "cuda")


def compile_module(
    module: nn.Module,
    setting: str | bool,
    device: torch.device | str,
    warm_up: Callable[[], object] | None = None,
    mode: str | None = None,
) -> bool:
    """Compile `module` in place as `setting` says; returns whether it runs compiled.

    `warm_up` runs one training step (forward + backward) through the compiled module; it is
    where compilation happens and where a failure shows. Afterwards gradients are cleared and
    buffers (e.g. BatchNorm statistics) restored, so the warm-up leaves no trace in training.
    `mode` is passed to `torch.compile` (e.g. "max-autotune-no-cudagraphs")."""
    s = compile_setting(setting)
    if not wants_compile(s, device):
        return False
    backend = "inductor" if s in CHOICES else s
    module.compile(backend=backend, mode=mode)
    if warm_up is None:
        return True
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    compiled = True
    try:
        warm_up()
    except Exception as err:  # any compile failure: dynamo, inductor, a missing C compiler ...
        if s != "auto":
            raise
        module._compiled_call_impl = None  # back to the eager forward
        compiled = False
        warnings.warn(
            f"torch.compile failed its warm-up step on {device} "
            f"({type(err).__name__}: {str(err)[:300]}); training eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
    finally:
        for p in module.parameters():
            p.grad = None
        with torch.no_grad():
            for name, b in module.named_buffers():
                b.copy_(buffers[name])
    return compiled
