"""What `flairlab.training.pretrain` optimises: the MAE and/or the contrastive term
(`train.objective`).

* `mae`: the masked autoencoder loss;
* `both`: L_MAE + w·L_contrastive, the contrastive term on the visible tokens of the same masked
  pass (CROMA), read before the inter-* fusion blocks;
* `contrastive`: the contrastive term alone on all tokens (no masking) before fusion — the
  decoder and the inter-* fusion blocks get no gradient and are frozen (out of the optimizer).

Before fusion because after the shared blocks every modality's tokens have attended to the
others, and matching them across modalities would be trivial (contrastive-methods.md §3.2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flairlab.data.errors import DataError
from flairlab.models.mae import MAE
from flairlab.training.pretrain_config import PretrainConfig

DECODER = ("enc_to_dec.", "decoders.", "mask_tokens.", "pixel_heads.")
NO_DECAY = ("contrastive.logit_scale",)  # the learnable temperature


def pre_fusion_features(mae: MAE, batch: dict) -> dict[str, Tensor]:
    """All tokens (no masking) through the per-modality/group stacks only, i.e. before the
    inter-* fusion blocks (= `mae.forward_features` in other modes): {key: (B, S, g, g, d)}."""
    tokens = mae.embed(batch)
    B = next(iter(tokens.values())).shape[0]
    pre = {u: mae.encoders[mae._stack(u)](x) for u, x in mae._to_units(tokens).items()}
    out = mae._from_units(pre, B)
    return {k: v.unflatten(2, (mae.token_grid(k),) * 2) for k, v in out.items()}


class Pretrainer(nn.Module):
    """The MAE and the contrastive objective as one module, so that DDP wraps them together.

    forward(batch) → (loss, logs {name: 0-d tensor}) for `objective` mae | contrastive | both."""

    def __init__(
        self,
        mae: MAE,
        objective: str = "mae",
        contrastive: nn.Module | None = None,
        weight: float = 0.0,
    ) -> None:
        super().__init__()
        if (contrastive is None) != (objective == "mae"):
            raise DataError("Pretrainer contrastive module", expected=f"one for {objective!r}",
                            found=type(contrastive).__name__)  # fmt: skip
        self.mae, self.contrastive = mae, contrastive
        self.objective, self.weight = objective, weight

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        logs: dict[str, Tensor] = {}
        if self.objective == "contrastive":
            loss, c_logs = self.contrastive(pre_fusion_features(self.mae, batch), batch)
        else:
            both = self.objective == "both"
            out = self.mae(batch, return_features="pre_fusion" if both else None)
            loss = out.loss
            logs["loss_mae"] = out.loss.detach()
            logs |= {f"loss_{k}": v.detach() for k, v in out.per_modality_loss.items()}
            if both:  # on the visible tokens of the same pass (CROMA)
                c_loss, c_logs = self.contrastive(out.features, batch, masked=out.masks)
                loss = loss + self.weight * c_loss
        if self.contrastive is not None:
            logs |= {f"contrastive_{k}": torch.as_tensor(float(v), device=loss.device)
                     for k, v in c_logs.items()}  # fmt: skip
        return loss, {"loss": loss.detach(), **logs}


def build_pretrainer(cfg: PretrainConfig) -> Pretrainer:
    """MAE (+ contrastive objective) for `cfg.train.objective`; in contrastive-only runs the
    parameters that get no gradient (decoder; inter-* fusion blocks) are frozen."""
    from flairlab.training.contrastive import ContrastiveObjective

    model = MAE(cfg.model)
    tc = cfg.train
    cc = tc.contrastive_config()
    contrastive = ContrastiveObjective(cc, model.embed_dim) if cc is not None else None
    if tc.objective == "contrastive":
        for name, p in model.named_parameters():
            if name.startswith((*DECODER, "inter.")):
                p.requires_grad_(False)
    return Pretrainer(model, tc.objective, contrastive, tc.contrastive_weight)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters for AdamW: weight decay on all but `NO_DECAY` (temperature)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith(NO_DECAY) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    return groups + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])
