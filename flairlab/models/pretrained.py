"""One entry point for pretrained MAE weights, whatever their origin.

`load_pretrained(source)` → a flairlab `MAE` (eval mode) and `pretrained_state(source)` →
(state dict, MAEConfig dict, provenance) accept

* a Hugging Face Hub name, `IGNF/MAESTRO_FLAIR-HUB_base[@revision]` (`flairlab.models.hub`:
  downloaded once, verified, converted once, offline afterwards);
* a checkpoint of IGN's reference implementation: Lightning `.ckpt`, bare state dict
  (`.pt` / `.pth` / `.bin`) or safetensors in the reference layout (`flairlab.models.reference`);
* a flairlab pre-training checkpoint: a run / checkpoint folder (`flairlab.models.checkpoint`), or
  a `X.safetensors` file with its `X.json` config beside it.

When the weights come from the reference, the input conventions it trained with (band order,
scaling, DEM transform — `reference.REFERENCE_DATASETS`) are compared with flairlab's data
pipeline and every difference is reported in a warning (none for FLAIR-HUB weights on FLAIR-HUB).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flairlab.data.errors import DataError
from flairlab.models.mae import MAE
from flairlab.models.mae_config import MAEConfig


def source_kind(source: str | Path) -> str:
    """"flairlab", "reference" or "hub" (DataError when none fits)."""
    from flairlab.models.checkpoint import LATEST
    from flairlab.models.hub import is_hub_name

    p = Path(source)
    if p.is_dir():
        if any((c / n).exists() for c in (p, p / "checkpoints") for n in ("model.safetensors",
                                                                           LATEST)):
            return "flairlab"
        raise DataError("folder is not a flairlab checkpoint or run", path=p,
                        expected="model.safetensors or latest.json (a reference checkpoint: "
                        "give the file)", found=sorted(x.name for x in p.iterdir())[:10])
    if p.is_file():
        flair = p.suffix == ".safetensors" and p.with_suffix(".json").is_file()
        return "flairlab" if flair else "reference"
    if is_hub_name(str(source)):
        return "hub"
    raise DataError("pretrained weights not found", path=p,
                    expected="a checkpoint file / folder, or a Hugging Face name such as "
                    "IGNF/MAESTRO_FLAIR-HUB_base", found="nothing at this path")  # fmt: skip


def _flairlab_state(p: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    from flairlab.models.checkpoint import read_json, read_safetensors, resolve_checkpoint
    from flairlab.models.hub import read_reference_json

    if p.is_file():
        weights, cfg_path = p, p.with_suffix(".json")
    else:
        ckpt = resolve_checkpoint(p)
        weights, cfg_path = ckpt / "model.safetensors", ckpt / "model.json"
    if not cfg_path.is_file():
        raise DataError("checkpoint has no JSON model config beside it", path=weights,
                        expected=cfg_path.name, found="none")  # fmt: skip
    cfg = read_json(cfg_path)
    if "model_config" in cfg:
        raise DataError("this is a fine-tuned model, not a pre-training checkpoint", path=weights,
                        expected="a pre-training run folder or its model.safetensors",
                        found="finetuned weights")  # fmt: skip
    return read_safetensors(weights), cfg.get("model", cfg), read_reference_json(weights.parent)


def pretrained_state(
    source: str | Path, *, weights: str = "model", config: str | Path | dict | None = None
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """(flairlab state dict, MAEConfig dict, reference provenance or {}) of any `source` above.
    weights: "model" or "ema" (reference checkpoints); config: a reference config (Hydra layout)
    overriding the one found with a reference checkpoint."""
    kind = source_kind(source)
    if kind == "hub":
        from flairlab.models.hub import fetch_pretrained

        out = _flairlab_state(fetch_pretrained(str(source), weights=weights))
    elif kind == "flairlab":
        out = _flairlab_state(Path(source))
    else:
        from flairlab.models.reference import import_reference

        model, report = import_reference(source, weights=weights, config=config)
        out = (model.state_dict(), model.config.to_dict(), report.reference_json())
    warn_preprocessing(out[2])
    return out


def load_pretrained(
    source: str | Path,
    *,
    weights: str = "model",
    config: str | Path | dict | None = None,
    device: str | torch.device = "cpu",
) -> MAE:
    """A pretrained flairlab `MAE` (eval mode) from a Hub name, a reference checkpoint or a
    flairlab checkpoint (see the module docstring). `model.pretrained_info` says where it came
    from (repo, commit, file, sha256, inferred fields) for reference weights.

    >>> model = load_pretrained("IGNF/MAESTRO_FLAIR-HUB_base")  # doctest: +SKIP
    """
    if source_kind(source) == "reference":
        from flairlab.models.reference import import_reference

        model, report = import_reference(source, weights=weights, config=config)
        info = report.reference_json()
        warn_preprocessing(info)
    else:
        state, cfg, info = pretrained_state(source, weights=weights, config=config)
        model = MAE(MAEConfig.from_dict(cfg))
        model.load_state_dict(state, strict=True)
    model.pretrained_info = {"source": str(source), **info}
    return model.to(device).eval()


def warn_preprocessing(info: dict[str, Any]) -> None:
    """Warn about every input convention of the reference weights flairlab's pipeline differs on."""
    if not info.get("modalities"):
        return
    from flairlab.models.reference import preprocessing_differences

    diffs = preprocessing_differences(info["modalities"], info.get("dataset", ""))
    if diffs:
        warnings.warn("these weights were trained on inputs prepared differently from flairlab's "
                      "pipeline (fine-tuning adapts; features used as is may suffer): "
                      + "; ".join(diffs), stacklevel=3)  # fmt: skip
