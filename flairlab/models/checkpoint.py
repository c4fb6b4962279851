"""Checkpoints: atomic folders of safetensors weights + JSON configs + a weights-only torch state.

Layout of a run's `checkpoints/`:

    step_0000120/model.safetensors   MAE weights (safetensors)
    step_0000120/model.json          MAEConfig (enough to rebuild the model)
    step_0000120/pretrain.json       the whole PretrainConfig of the run
    step_0000120/state.pt            optimizer, scheduler, counters, RNG (torch.load weights_only)
    step_0000120/extra.safetensors   weights of auxiliary modules (e.g. contrastive heads), if any
    latest.json                      {"step": 120, "dir": "step_0000120"}

A folder is written under a temporary name and renamed when complete, and `latest.json` is
replaced atomically afterwards, so an interrupted save never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flairlab.data.errors import DataError
from flairlab.data.results import write_json_atomic
from flairlab.models.mae import MAE
from flairlab.models.mae_config import MAEConfig, architecture_diff

LATEST = "latest.json"
STEP_DIR = re.compile(r"^step_\d{7,}$")  # the only folder names latest.json may point at


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    model: MAE,
    run_config: dict[str, Any],
    state: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write `ckpt_root/step_<step>/` atomically, point `latest.json` at it, keep the newest
    `keep` checkpoints (0 = all). Returns the folder."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = root / name
    if not final.exists():
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-"))
        save_file(_tensors(model.state_dict()), tmp / "model.safetensors", {"format": "pt"})
        if extra:
            save_file(_tensors(extra), tmp / "extra.safetensors", {"format": "pt"})
        write_json_atomic(tmp / "model.json", model.config.to_dict())
        write_json_atomic(tmp / "pretrain.json", run_config)
        torch.save(state, tmp / "state.pt")
        os.replace(tmp, final)
    write_json_atomic(root / LATEST, {"step": step, "dir": name})
    if keep > 0:
        for old in sorted(root.glob("step_*"))[:-keep]:
            shutil.rmtree(old)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from itself, a `checkpoints/` folder or a run folder (latest.json).

    `latest.json` may only name a `step_NNNNNNN` folder beside it (never a path elsewhere)."""
    p = Path(path)
    for cand in (p, p / "checkpoints"):
        if (cand / "model.safetensors").exists():
            return cand
        if (cand / LATEST).exists():
            return _latest_dir(cand)
    raise DataError("no checkpoint found", path=p, expected="model.safetensors or latest.json",
                    found="neither")  # fmt: skip


def _latest_dir(root: Path) -> Path:
    latest = read_json(root / LATEST)
    name = latest.get("dir") if isinstance(latest, dict) else None
    if not isinstance(name, str) or not STEP_DIR.match(name):
        raise DataError('"dir" must name a checkpoint folder beside it', path=root / LATEST,
                        expected='"step_NNNNNNN"', found=repr(name)[:80])  # fmt: skip
    ckpt = root / name
    if not (ckpt / "model.safetensors").is_file():
        raise DataError("checkpoint named by latest.json is missing", path=ckpt,
                        expected="model.safetensors", found="none")  # fmt: skip
    return ckpt


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<missing>"
        d = d[part]
    return d


def describe_diff(names: list[str], saved: dict[str, Any], current: dict[str, Any]) -> str:
    """`field (checkpoint X, config Y)` for each differing dotted field name."""
    return "; ".join(
        f"{n} (checkpoint {_get(saved, n)!r}, config {_get(current, n)!r})" for n in names
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file; DataError naming the file when missing or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("checkpoint file missing", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"not valid JSON ({err})", path=path,
                        expected="a file written by flairlab") from None  # fmt: skip
    if not isinstance(data, dict):
        raise DataError("JSON file", path=path, expected="an object", found=type(data).__name__)
    return data


def load_state(ckpt: Path) -> dict[str, Any]:
    """The optimizer/scheduler/RNG state (loaded with weights_only=True)."""
    path = ckpt / "state.pt"
    if not path.is_file():
        raise DataError("checkpoint file missing", path=path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError
        raise DataError(f"cannot read training state ({_first_line(err)})", path=path,
                        expected="a complete state.pt (truncated or corrupt?)") from None
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "step"} <= set(state):
        raise DataError("training state", path=path, expected="optimizer, scheduler, step",
                        found=sorted(state) if isinstance(state, dict) else type(state).__name__)
    return state


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160] if lines else ''}"


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; DataError naming the file when missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError("weights file missing", path=path)
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError, OSError, ...
        raise DataError(f"cannot read weights ({_first_line(err)})", path=path,
                        expected="a complete safetensors file (truncated or corrupt?)") from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights strictly; DataError naming missing/unexpected/mis-shaped keys."""
    state = read_safetensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise DataError("weights do not fit the model", path=path,
                        expected=f"no differences; missing {missing[:5]}",
                        found=f"unexpected {unexpected[:5]}, shapes {shapes[:5]}")  # fmt: skip
    model.load_state_dict(state)


def load_mae(path: str | Path, config: MAEConfig | dict | None = None) -> MAE:
    """Rebuild a pretrained MAE from a run / checkpoint folder.

    With `config`, the model is built from it (e.g. other image sizes or dates for fine-tuning)
    and must share the checkpoint's architecture; otherwise DataError names the differing fields.
    """
    ckpt = resolve_checkpoint(path)
    saved = MAEConfig.from_dict(read_json(ckpt / "model.json"))
    if config is None:
        config = saved
    elif isinstance(config, dict):
        config = MAEConfig.from_dict(config)
    diff = architecture_diff(saved, config)
    if diff:
        raise DataError(
            "checkpoint does not fit this model configuration; differing fields: "
            + describe_diff(diff, saved.to_dict(), config.to_dict()),
            path=ckpt / "model.json",
        )
    model = MAE(config)
    load_weights(model, ckpt / "model.safetensors")
    return model
