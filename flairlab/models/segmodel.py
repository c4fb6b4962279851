"""Segmentation models for fine-tuning: MAE encoder + attentive head, checkpoints in and out.

* `build_encoder`: a pretrained MAE — from a flairlab pre-training checkpoint (`X.safetensors` +
  JSON config, or a run folder), a reference MAESTRO checkpoint, or a Hugging Face name such as
  `IGNF/MAESTRO_FLAIR-HUB_base` (`flairlab.models.pretrained`); the geometry — image sizes,
  dates — may change, the architecture may not — restricted to the requested modalities, or a
  fresh random one with the same construction (scratch).
* `SegmentationModel`: `forward(batch) -> logits (B, n_classes, S, S)` (its loss and
  evaluation live in `flairlab.training.metrics`);
* task helpers: `n_classes_of`, `class_names`; `autocast` (bf16 on CUDA);
* `save_finetuned` / `load_finetuned`: a fine-tuned model as `finetuned.safetensors` + `.json`
  (everything needed to rebuild it); `predict_logits` adapts any evaluation batch (other image
  sizes, e.g. the FLAIR-HUB defaults) to the model geometry and returns logits at `out_size`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flairlab.data.catalog import load_catalog
from flairlab.data.dataset import TARGETS
from flairlab.data.errors import DataError
from flairlab.data.results import write_json_atomic
from flairlab.models.heads import SegmentationHead, UpsampleHead

HEADS = ("upsample", "attentive")  # flairlab's CPU default, MAESTRO's head


class SegmentationModel(nn.Module):
    """Encoder (`forward_features(batch) -> {key: (B, D, g, g, E)}`) + segmentation head
    (`SegmentationHead` or `UpsampleHead`, which also reads the batch's inputs).
    `forward(batch) -> logits (B, n_classes, S, S)`; `frozen=True` detaches the features."""

    def __init__(self, encoder: nn.Module, head: nn.Module, modalities: list[str]) -> None:
        super().__init__()
        self.encoder, self.head, self.modalities = encoder, head, list(modalities)

    def features(self, batch: dict[str, Any], frozen: bool = False) -> dict[str, Tensor]:
        if frozen:
            with torch.no_grad():
                feats = self.encoder.forward_features(batch)
            feats = {k: v.detach() for k, v in feats.items()}
        else:
            feats = self.encoder.forward_features(batch)
        return {k: feats[k] for k in self.modalities if k in feats}

    def forward(self, batch: dict[str, Any], frozen: bool = False) -> Tensor:
        if getattr(self.head, "needs_inputs", False):
            return self.head(self.features(batch, frozen), batch)
        return self.head(self.features(batch, frozen))


def reference_modality(config: Any, modalities: Iterable[str]) -> str:
    """The modality whose token grid the heads and the label grid follow: aerial when it is an
    input, else the one with the finest token grid."""
    mods = list(modalities)
    return "aerial" if "aerial" in mods else max(mods, key=config.token_grid)


def build_head(
    kind: str,
    config: Any,
    modalities: list[str],
    n_classes: int,
    label_size: int,
    *,
    dim: int = 32,
    feature_norm: bool = False,
) -> nn.Module:
    """Segmentation head on the reference grid of an encoder `config` (`MAEConfig`): aerial when
    it is an input, else the finest token grid. `kind`: "upsample" (`UpsampleHead`, width `dim`)
    or "attentive" (MAESTRO's `SegmentationHead`)."""
    mods = list(modalities)
    grid = config.token_grid(reference_modality(config, mods))
    if kind == "attentive":
        return SegmentationHead(config.embed_dim, n_classes, grid, label_size,
                                feature_norm=feature_norm)  # fmt: skip
    if kind == "upsample":
        in_ch = sum(config.modalities[k].n_dates * config.modalities[k].in_chans for k in mods)
        return UpsampleHead(config.embed_dim, n_classes, grid, label_size, in_ch, mods, dim=dim,
                            feature_norm=feature_norm)  # fmt: skip
    raise DataError("segmentation head", expected=HEADS, found=kind)


def head_meta(head: nn.Module) -> dict[str, Any]:
    """What `build_head` needs to rebuild `head` (stored beside fine-tuned weights)."""
    kind = "upsample" if isinstance(head, UpsampleHead) else "attentive"
    return {"head": kind, "head_dim": getattr(head, "dim", 0)}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# -- building ----------------------------------------------------------------------------------
def build_encoder(
    checkpoint: str | Path | None,
    modalities: list[str],
    *,
    size: str = "nano",
    image_size: dict[str, int] | None = None,
    patch_size: dict[str, int] | None = None,
    n_dates: dict[str, int] | None = None,
    fusion_mode: str = "inter-group",
    load_weights: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """MAE encoder for `modalities`: pretrained from `checkpoint` (its architecture; geometry
    overrides allowed) or a fresh random one (scratch). `load_weights=False` copies only the
    checkpoint's architecture (a scratch baseline that matches a pretrained model). Returns
    (model, info)."""
    from flairlab.models.mae import MAE
    from flairlab.models.mae_config import MAEConfig, flair_modalities
    from flairlab.models.pretrained import pretrained_state

    if checkpoint:
        state, cfg, reference = pretrained_state(checkpoint)
        saved = MAEConfig.from_dict(cfg)
        missing = [k for k in modalities if k not in saved.modalities]
        if missing:
            raise DataError(
                "modalities absent from the pretrained model",
                path=checkpoint,
                expected=list(saved.modalities),
                found=missing,
            )
        mods = {}
        for k in modalities:
            m = copy.deepcopy(saved.modalities[k])
            m.image_size = (image_size or {}).get(k, m.image_size)
            m.n_dates = (n_dates or {}).get(k, m.n_dates)
            mods[k] = m
        config = MAEConfig.from_dict(
            {**saved.to_dict(), "modalities": {k: asdict(m) for k, m in mods.items()}}
        )
        model = MAE(config)
        info = {"pretrained": None, "architecture_from": str(checkpoint), "loaded_tensors": 0,
                "reference": reference}
        if load_weights:
            own = model.state_dict()
            usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            enc_keys = [k for k in own if k.startswith(("patch_embed.", "encoders.", "inter."))]
            lacking = [k for k in enc_keys if k not in usable]
            if lacking:
                raise DataError(
                    "checkpoint does not fit the encoder",
                    path=checkpoint,
                    expected="all encoder weights",
                    found=f"missing {lacking[:3]}",
                )
            model.load_state_dict(usable, strict=False)
            info.update(pretrained=str(checkpoint), loaded_tensors=len(usable))
    else:
        config = MAEConfig(
            modalities=flair_modalities(tuple(modalities), image_size, patch_size, n_dates),
            size=size,
            fusion_mode=fusion_mode,
        )
        model = MAE(config)
        info = {"pretrained": None, "architecture_from": None, "loaded_tensors": 0}
    info["config"] = config.to_dict()
    return model, info


# -- tasks ------------------------------------------------------------------------------------
def n_classes_of(target: str) -> int:
    """Logits per pixel: COSIA 15 (evaluated ids 0-14), LPIS level 1: 23."""
    nom = load_catalog().nomenclature(TARGETS[target][2])
    return len(nom.evaluated_ids)


def class_names(target: str) -> list[str]:
    nom = load_catalog().nomenclature(TARGETS[target][2])
    return [nom.names[i] for i in nom.evaluated_ids]


# -- precision --------------------------------------------------------------------------------
def autocast(device: torch.device, precision: str | None = None):
    """Autocast for a resolved Lightning-style `precision` ("bf16-mixed", "16-mixed", "32-true");
    None: bf16 on CUDA, a no-op elsewhere."""
    if precision is None:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    dtype = torch.float16 if precision.startswith("16") else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "32-true")


# -- fine-tuned checkpoints -----------------------------------------------------------------------
DECODER_PREFIXES = ("encoder.decoders.", "encoder.enc_to_dec.", "encoder.mask_tokens.",
                    "encoder.pixel_heads.")  # fmt: skip


# the .json fields that define the model: saved in the weights file too, and checked on load
MODEL_FIELDS = ("model_config", "modalities", "n_classes", "feature_norm", "grid", "label_size",
                "task", "geometry", "head", "head_dim")  # fmt: skip
META_KEY = "flairlab_model"  # safetensors header entry holding those fields (JSON)


def save_finetuned(model: SegmentationModel, path: str | Path, meta: dict[str, Any]) -> Path:
    """Weights (without the unused MAE decoder) as safetensors + `<path>.json` describing the
    model (`model_config`, `task`, `modalities`, `n_classes`, `grid`, `label_size`, …). The
    model-defining fields are also stored in the safetensors header, so an edited `.json` is
    caught by `load_finetuned`."""
    from safetensors.torch import save_file

    from flairlab.data.results import _jsonable

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not k.startswith(DECODER_PREFIXES)}  # fmt: skip
    info = _jsonable({
        "model_config": model.encoder.config.to_dict(), "modalities": model.modalities,
        "n_classes": model.head.n_classes,
        "feature_norm": model.head.feature_norm is not None, "grid": model.head.grid,
        "label_size": model.head.out_size, **head_meta(model.head), **meta,
    })  # fmt: skip
    header = {k: info[k] for k in MODEL_FIELDS if k in info}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), {"format": "pt", META_KEY: json.dumps(header, sort_keys=True)})
    tmp.replace(path)
    write_json_atomic(path.with_suffix(".json"), info)
    return path


def _resolve_finetuned(path: Path) -> Path:
    """The `finetuned.safetensors` of a file or folder; a pre-training checkpoint is refused."""
    if path.is_dir():
        if (path / "finetuned.safetensors").is_file():
            return path / "finetuned.safetensors"
        if any((d / n).exists() for d in (path, path / "checkpoints")
               for n in ("model.safetensors", "latest.json")):  # fmt: skip
            raise DataError("this is a pre-training checkpoint, not a fine-tuned model", path=path,
                            expected="finetuned.safetensors (written by `flairlab finetune`)",
                            found="a pre-training run")  # fmt: skip
        raise DataError("no fine-tuned model in this folder", path=path,
                        expected="finetuned.safetensors", found="none")  # fmt: skip
    return path


def _model_meta_diff(saved: Any, meta: Any, prefix: str = "") -> list[str]:
    """Dotted fields where the `.json` (meta) differs from the copy in the weights (saved)."""
    if isinstance(saved, dict) and isinstance(meta, dict):
        return [d for k in sorted(set(saved) | set(meta))
                for d in _model_meta_diff(saved.get(k, "<missing>"), meta.get(k, "<missing>"),
                                          f"{prefix}{k}.")]  # fmt: skip
    return [] if saved == meta else [f"{prefix[:-1]} (weights {saved!r}, json {meta!r})"]


def load_finetuned(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[SegmentationModel, dict[str, Any]]:
    """Rebuild a model written by `save_finetuned` (eval mode). Returns (model, metadata).

    The `.json` must agree with the weights: with the model fields stored in the weights header
    (files written since that header exists) and, always, with every tensor's name and shape."""
    from safetensors import safe_open

    from flairlab.models.checkpoint import read_json, read_safetensors
    from flairlab.models.mae import MAE
    from flairlab.models.mae_config import MAEConfig

    path = _resolve_finetuned(Path(path))
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise DataError("fine-tuned model needs its .safetensors and .json", path=path)
    meta = read_json(meta_path)
    state = read_safetensors(path)
    if "model_config" not in meta:
        kind = "a pre-training checkpoint" if "modalities" in meta else "not a fine-tuned model"
        raise DataError(f"{kind}: its .json has no model_config", path=meta_path,
                        expected="finetuned.safetensors + .json written by `flairlab finetune`",
                        found=sorted(meta)[:6])  # fmt: skip
    with safe_open(str(path), "pt") as f:
        header = (f.metadata() or {}).get(META_KEY)
    if header is not None:
        saved = json.loads(header)
        diff = _model_meta_diff(saved, {k: meta.get(k, "<missing>") for k in saved})
        if diff:
            raise DataError("the .json does not match the weights it describes (edited?): "
                            + "; ".join(diff[:5]), path=meta_path)  # fmt: skip
    try:
        encoder = MAE(MAEConfig.from_dict(meta["model_config"]))
        head = build_head(meta.get("head", "attentive"), encoder.config, meta["modalities"],
                          meta["n_classes"], meta["label_size"], dim=meta.get("head_dim", 32),
                          feature_norm=meta.get("feature_norm", False))  # fmt: skip
        model = SegmentationModel(encoder, head, meta["modalities"])
    except (KeyError, TypeError) as err:
        raise DataError(f"fine-tuned model description: {type(err).__name__} {err}",
                        path=meta_path) from None  # fmt: skip
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(DECODER_PREFIXES)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: weights {tuple(state[k].shape)}, json {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise DataError("fine-tuned weights do not fit their .json", path=path,
                        expected="the tensors the .json describes",
                        found=f"missing {missing[:3]}, unexpected {unexpected[:3]}, "
                        f"shapes {shapes[:3]}")  # fmt: skip
    model.load_state_dict(state, strict=False)
    return model.to(device).eval(), meta


def adapt_batch(model: SegmentationModel, batch: dict[str, Any]) -> dict[str, Any]:
    """Bring a batch to the model geometry: nearest resize per date to the configured image size;
    if a series has another number of dates, D evenly spaced ones are kept (documented; read the
    data with the model's `n_dates` instead where possible: the upsample head reads each date
    slot as its own input channel, so other dates change what it sees)."""
    out = dict(batch)
    for key in model.modalities:
        m = model.encoder.config.modalities[key]
        x, dates = batch[key], batch[f"{key}_dates"]
        if x.shape[1] != m.n_dates:
            idx = torch.linspace(0, x.shape[1] - 1, m.n_dates).round().long()
            x, dates = x[:, idx.to(x.device)], dates[:, idx.to(dates.device)]
        if x.shape[-1] != m.image_size:
            h = x.shape[-1]
            src = ((torch.arange(m.image_size) + 0.5) * h / m.image_size).long().clamp(max=h - 1)
            src = src.to(x.device)
            x = x[..., src[:, None], src[None, :]]
        out[key], out[f"{key}_dates"] = x, dates
    return out


@torch.no_grad()
def predict_logits(
    model: SegmentationModel, batch: dict[str, Any], out_size: int | None = None
) -> Tensor:
    """Logits (B, n_classes, S, S) for any evaluation batch; bilinearly resized to `out_size`."""
    logits = model(adapt_batch(model, batch)).float()
    if out_size and logits.shape[-1] != out_size:
        logits = F.interpolate(logits, size=(out_size, out_size), mode="bilinear",
                               align_corners=False)  # fmt: skip
    return logits


def load_segmentation_model(checkpoint: str | Path, device: str = "cpu", out_size: int = 512):
    """For `flairlab predict`: (predict_fn(batch) -> logits (B, K, out_size, out_size),
    modalities) from a fine-tuned `finetuned.safetensors`."""
    if not checkpoint:
        raise DataError("predict needs a fine-tuned model", expected="finetuned.safetensors",
                        found="none")  # fmt: skip
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))  # fmt: skip
    model, meta = load_finetuned(checkpoint, dev)

    def predict_fn(batch: dict[str, Any]) -> Tensor:
        batch = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in batch.items()}
        return predict_logits(model, batch, out_size)

    # read series with the model's own date bins (the upsample head reads date slots as channels)
    predict_fn.n_dates = (meta.get("geometry") or {}).get("n_dates")
    return predict_fn, list(model.modalities)
