"""Cross-modal contrastive pretraining objectives (contrastive-methods.md §1.3, §3.2, §3.3).

Two modalities of the same patch are a positive pair (Jain et al.-style cross-sensor InfoNCE; our
defaults, not paper defaults). Per modality, encoder tokens (B, ..., E) are pooled (mean or
learned-query attention), projected (linear or MLP head) and L2-normalised; similarities are
scaled by a learnable inverse temperature (log-parametrised, clamped to [1/τ_max, 1/τ_min]).

* ``infonce``: symmetric CLIP loss summed over modality pairs, or MIL-NCE over several modalities
  (``multi_positive``: all other modalities of the patch are positives; with 2 modalities it equals
  the symmetric loss);
* ``cclk``: CCL-K (`flairlab.models.ccl_kernel`) on the same pairs, fair / weak / hard variants.

Negatives are gathered across DDP ranks with autograd (the local rows receive the gradients of
every rank's loss); each rank returns its share of the global mean so that DDP's gradient average
gives exactly the gradient of the single-process loss on the concatenated batch. Other patches of
the same ROI (``DOMAIN_ROI``) are likely false negatives and are removed from the denominators.
The DDP helpers and the pure loss rows live in `flairlab.models.contrastive_losses`.

Use with the MAE (one pass, visible tokens): ``out = mae(batch, return_features="final")``, then
``L = out.loss + w · objective(out.features, batch, masked=out.masks)[0]``; contrastive only:
``ContrastivePretrainer(mae, cfg)(batch)`` (``mae.forward_features``: all tokens, no masking).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flairlab.data.errors import DataError
from flairlab.models import ccl_kernel as ck
from flairlab.models.contrastive_losses import (
    gather_rows,
    global_mean,
    multi_positive_rows,
    nce_rows,
    pair_exclusion,
    reduce_logs,
    same_roi_pairs,
)

MODALITY_KEYS = ("aerial", "dem", "s2", "s1_asc", "s1_desc", "spot", "rlt")
_LABEL_CLASSES = {"cosia": ("cosia", True), "lpis": ("lpis_l1", False)}  # (nomenclature, evaluated)


@dataclass
class ContrastiveConfig:
    """Contrastive objective settings (our defaults; see the spec for the reference values)."""

    kind: str = "infonce"  # "infonce" | "cclk"
    pairs: tuple[str, ...] = ("aerial:s2", "aerial:s1_asc", "s2:s1_asc")  # "a:b" positives
    multi_positive: bool = False  # MIL-NCE over the modalities named in `pairs` (infonce only)
    pooling: str = "mean"  # "mean" | "attentive"
    pool_heads: int = 4  # attentive pooling heads (must divide the embed dim)
    head: str = "linear"  # "linear" | "mlp" (Linear → BN → ReLU → Linear)
    proj_dim: int = 128
    hidden_dim: int = 512  # mlp head only
    temperature: float = 0.07  # initial τ
    learn_temperature: bool = True
    temperature_min: float = 0.01  # clamp of the learnable τ
    temperature_max: float = 1.0
    mask_same_roi: bool = True  # drop other patches of the same DOMAIN_ROI from the negatives
    variant: str = "fair"  # cclk: "fair" | "weak" | "hard"
    condition: str | None = None  # cclk: domain|doy|position|labels|embedding; None = per variant
    lam: float | None = None  # cclk ridge λ; None = 100 for hard, else 0.01
    bandwidth: float | None = None  # doy: days (30); position: metres; embedding: None = median
    label_key: str = "cosia"  # labels condition: batch key ("cosia" | "lpis"), train split only
    min_mass: float = 0.05  # anchors whose W0 row mass is below this have no partner
    orphans: str = "infonce"  # partner-less anchors: plain InfoNCE row ("infonce") or "exclude"
    infonce_weight: float = 0.0  # cclk: add this × plain InfoNCE on the same pairs

    def __post_init__(self) -> None:
        if isinstance(self.pairs, str):
            self.pairs = tuple(p.strip() for p in self.pairs.split(",") if p.strip())
        self.pairs = tuple(self.pairs)
        choices = {
            "kind": ("infonce", "cclk"), "pooling": ("mean", "attentive"),
            "head": ("linear", "mlp"), "variant": ck.VARIANTS, "orphans": ("infonce", "exclude"),
            "label_key": tuple(_LABEL_CLASSES),
        }  # fmt: skip
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise DataError(
                    f"contrastive config {name}", expected=ok, found=getattr(self, name)
                )
        if not self.pairs:
            raise DataError("contrastive config pairs", expected="at least one 'a:b'", found="[]")
        seen = set()
        for p in self.pairs:
            ab = tuple(p.split(":"))
            if len(ab) != 2 or ab[0] == ab[1] or not set(ab) <= set(MODALITY_KEYS):
                raise DataError(
                    "contrastive config pair", expected=f"'a:b', a != b in {MODALITY_KEYS}", found=p
                )
            if frozenset(ab) in seen:
                raise DataError("contrastive config pairs", expected="no duplicates", found=p)
            seen.add(frozenset(ab))
        if self.kind == "cclk" and self.multi_positive:
            raise DataError("contrastive config", expected="multi_positive with kind infonce")
        if not 0 < self.temperature_min <= self.temperature <= self.temperature_max:
            raise DataError(
                "contrastive config temperature", expected="0 < min <= temperature <= max",
                found=(self.temperature_min, self.temperature, self.temperature_max),
            )  # fmt: skip
        if self.condition is None:
            self.condition = {"fair": "domain", "weak": "labels", "hard": "embedding"}[self.variant]
        if self.condition not in ck.CONDITIONS:
            raise DataError(
                "contrastive config condition", expected=ck.CONDITIONS, found=self.condition
            )
        if (self.variant == "hard") != (self.condition == "embedding"):
            raise DataError(
                "contrastive config condition", expected="'embedding' iff variant 'hard'",
                found=f"variant={self.variant}, condition={self.condition}",
            )  # fmt: skip
        if self.lam is None:
            self.lam = 100.0 if self.variant == "hard" else 0.01
        if not self.lam > 0:
            raise DataError("contrastive config lam", expected="> 0", found=self.lam)

    @classmethod
    def from_dict(cls, d: Mapping) -> ContrastiveConfig:
        """Build from a dict (YAML, notebook parameters); unknown keys raise DataError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DataError("contrastive config keys", expected=sorted(names), found=unknown)
        return cls(**dict(d))

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities named in `pairs`, in order of first appearance."""
        return tuple(dict.fromkeys(m for p in self.pairs for m in p.split(":")))


def roi_codes(batch: dict) -> Tensor:
    """Float64 (B,) codes of each patch's DOMAIN_ROI (exact in float64, equal across ranks)."""
    return torch.tensor([float(ck.stable_code(p.roi_key)) for p in ck._patch_ids(batch)])


# -- modules ---------------------------------------------------------------------------------------
class AttentivePool(nn.Module):
    """Learned-query multi-head attention pooling: tokens (B, N, E) → (B, E)."""

    def __init__(self, dim: int, num_heads: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise DataError(
                "attentive pooling heads", expected=f"a divisor of {dim}", found=num_heads
            )
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, num_heads, 1, dim // num_heads))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """x (B, N, E); keep (B, N) bool: tokens that may be attended (each row needs one)."""
        B, N, E = x.shape
        k, v = self.kv(self.norm(x)).view(B, N, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if keep is None else keep[:, None, None, :]
        out = F.scaled_dot_product_attention(self.query.expand(B, -1, -1, -1), k, v, mask)
        return self.proj(out.reshape(B, E))


def _head(cfg: ContrastiveConfig, dim: int) -> nn.Module:
    if cfg.head == "linear":
        return nn.Linear(dim, cfg.proj_dim)
    return nn.Sequential(
        nn.Linear(dim, cfg.hidden_dim), nn.BatchNorm1d(cfg.hidden_dim), nn.ReLU(),
        nn.Linear(cfg.hidden_dim, cfg.proj_dim),
    )  # fmt: skip


class ContrastiveObjective(nn.Module):
    """Pool → project → contrast. `embed_dim`: encoder width (int or per-modality mapping).

    forward(features, batch) → (loss, logs): features map modality keys to tokens (B, ..., E)
    (e.g. (B, D, g, g, E) or visible tokens (B, N, E)); batch carries "patch_id" (and, per
    condition, "ref_date", "position", "cosia"/"lpis"). Logs are floats averaged over ranks."""

    def __init__(self, cfg: ContrastiveConfig, embed_dim: int | Mapping[str, int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = cfg.modalities
        self.index = {m: i for i, m in enumerate(self.modalities)}
        dims = {
            m: embed_dim if isinstance(embed_dim, int) else embed_dim[m] for m in self.modalities
        }
        self.pool = nn.ModuleDict(
            {m: AttentivePool(d, cfg.pool_heads) for m, d in dims.items()}
            if cfg.pooling == "attentive"
            else {}
        )
        self.heads = nn.ModuleDict({m: _head(cfg, d) for m, d in dims.items()})
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1 / cfg.temperature)), requires_grad=cfg.learn_temperature
        )
        self.n_label_classes = 0
        if cfg.kind == "cclk" and cfg.condition == "labels":
            from flairlab.data.catalog import load_catalog

            name, evaluated = _LABEL_CLASSES[cfg.label_key]
            nom = load_catalog().nomenclature(name)
            self.n_label_classes = len(nom.evaluated_ids) if evaluated else nom.n_classes

    def scale(self) -> Tensor:
        """Clamped 1/τ."""
        lo, hi = math.log(1 / self.cfg.temperature_max), math.log(1 / self.cfg.temperature_min)
        return self.logit_scale.clamp(lo, hi).exp()

    def embed(
        self, features: Mapping[str, Tensor], masked: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Pooled, projected, L2-normalised embeddings (B, M, proj_dim) (at least float32, order
        of `self.modalities`) and validity (B, M): False where every token of a modality is
        `masked` (masked[key] (B, ...) bool, True = hidden, e.g. MAEOutput.masks)."""
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise DataError(
                "contrastive features", expected=self.modalities, found=sorted(features)
            )
        out, valid = [], []
        for m in self.modalities:
            t = features[m]
            t = t.reshape(t.shape[0], -1, t.shape[-1])
            keep = torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
            if masked is not None and m in masked:
                if masked[m].numel() != keep.numel():
                    raise DataError(f"contrastive mask of {m!r}", expected=tuple(t.shape[:2]),
                                    found=tuple(masked[m].shape))  # fmt: skip
                keep = ~masked[m].reshape(keep.shape).to(t.device)
            ok = keep.any(1)
            if m in self.pool:
                pooled = self.pool[m](t, keep | ~ok[:, None])
            else:
                w = keep.to(t.dtype)[..., None]
                pooled = (t * w).sum(1) / w.sum(1).clamp_min(1)
            h = self.heads[m](pooled)
            h = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
            out.append(F.normalize(h, dim=-1))
            valid.append(ok)
        if len({o.shape[0] for o in out}) > 1:
            found = {m: o.shape[0] for m, o in zip(self.modalities, out, strict=True)}
            raise DataError("contrastive features batch size", expected="equal", found=found)
        return torch.stack(out, 1), torch.stack(valid, 1)

    def forward(
        self,
        features: Mapping[str, Tensor],
        batch: dict,
        masked: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """(loss, logs); `masked` as in `embed` (pool only the visible tokens). Similarities and
        losses run in float32/64 with autocast off (logits up to 1/τ_min = 100)."""
        z, valid = self.embed(features, masked)
        with torch.autocast(z.device.type, enabled=False):
            return self._loss(z, valid, batch)

    def _loss(self, z: Tensor, valid: Tensor, batch: dict) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        n = z.shape[0]
        packed, offset = gather_rows(torch.cat([z, valid[..., None].to(z.dtype)], -1), grad=True)
        z_all, valid_all = packed[..., :-1], packed[..., -1] > 0.5
        b = z_all.shape[0]
        scale = self.scale()
        logs: dict[str, Tensor] = {"temperature": 1 / scale.detach(),
                                   "global_batch": z.new_tensor(b),
                                   "empty_frac": (~valid).to(z.dtype).mean()}  # fmt: skip
        exclude = torch.zeros(n, b, dtype=torch.bool, device=z.device)
        if cfg.mask_same_roi:
            codes = roi_codes(batch).to(z.device)
            exclude = same_roi_pairs(codes, gather_rows(codes, grad=False)[0], offset)
            logs["masked_pair_frac"] = exclude.float().sum() / max(n * (b - 1), 1)
        cclk_on = cfg.kind == "cclk" and not (cfg.condition == "labels" and not self.training)
        if cfg.kind == "cclk":
            logs["cclk_active"] = z.new_tensor(float(cclk_on))
        ctx = (z, valid, z_all, valid_all, scale, offset, exclude)
        if cfg.multi_positive:
            rows, ok = multi_positive_rows(z, z_all, scale, offset, exclude, valid_all)
            loss = global_mean(rows.flatten(), ok.flatten())
        else:
            W = None
            if cclk_on and cfg.variant != "hard":
                W = self._condition_weights(batch, z.device)
            losses = []
            for pair in cfg.pairs:
                a, c = (self.index[m] for m in pair.split(":"))
                key = pair.replace(":", "_")
                ok = valid[:, a] & valid[:, c]
                ex = pair_exclusion(exclude, valid_all[:, c], offset)
                hit = (scale * z[:, a] @ z_all[:, c].T).masked_fill(ex, float("-inf")).argmax(1)
                hit = (hit == offset + torch.arange(n, device=z.device)) & ok
                logs[f"acc_{key}"] = hit.sum() / ok.sum().clamp_min(1)
                if cclk_on:
                    pl = 0.5 * (self._cclk(a, c, ctx, W, logs) + self._cclk(c, a, ctx, W, logs))
                    if cfg.infonce_weight:
                        pl = pl + cfg.infonce_weight * self._infonce(a, c, ctx)
                else:
                    pl = self._infonce(a, c, ctx)
                logs[f"loss_{key}"] = pl.detach()
                losses.append(pl)
            loss = torch.stack(losses).mean()
            for k in ("w_diag", "w_offdiag_mass", "w_neg_frac", "w_orphan_frac"):
                if k in logs:
                    logs[k] = logs[k] / (2 * len(cfg.pairs))
        logs["loss"] = loss.detach()
        if cclk_on:
            logs["cclk_lam"] = z.new_tensor(cfg.lam)
        return loss, reduce_logs(logs)

    def _infonce(self, a: int, c: int, ctx: tuple) -> Tensor:
        """Symmetric InfoNCE of modalities a, c (global mean over rows with both embeddings)."""
        z, valid, z_all, valid_all, scale, offset, exclude = ctx
        r_ac = nce_rows(scale * z[:, a] @ z_all[:, c].T, offset,
                        pair_exclusion(exclude, valid_all[:, c], offset))  # fmt: skip
        r_ca = nce_rows(scale * z[:, c] @ z_all[:, a].T, offset,
                        pair_exclusion(exclude, valid_all[:, a], offset))  # fmt: skip
        return global_mean(0.5 * (r_ac + r_ca), valid[:, a] & valid[:, c])

    def _condition_weights(self, batch: dict, device: torch.device) -> Tensor:
        cfg = self.cfg
        if cfg.condition == "labels" and "split" in batch:
            bad = sorted({s for s in batch["split"] if s != "train"})
            if bad:
                raise DataError("label-conditioned CCL-K batch split", expected="train", found=bad)
        zc = ck.condition_values(batch, cfg.condition, label_key=cfg.label_key,
                                 n_label_classes=self.n_label_classes)  # fmt: skip
        zc_all = gather_rows(zc.to(device), grad=False)[0]
        return ck.ridge_weights(ck.condition_kernel(zc_all, cfg.condition, cfg.bandwidth), cfg.lam)

    def _cclk(self, x: int, y: int, ctx: tuple, W: Tensor | None, logs: dict) -> Tensor:
        """One direction (anchors in modality x, views y) of a CCL-K pair loss; adds W stats."""
        cfg = self.cfg
        z, valid, z_all, valid_all, scale, offset, exclude = ctx
        if W is None:  # hard: the anchor's own (stop-grad) embedding is the condition
            K = ck.condition_kernel(z_all[:, x].detach(), "embedding", cfg.bandwidth)
            W = ck.ridge_weights(K, cfg.lam)
        cols_ok = valid_all[:, x] & valid_all[:, y]
        ex = pair_exclusion(exclude, cols_ok, offset)
        # fair/hard: same-ROI patches are never weighted negatives; weak: they may be positives
        w_ex = ex if cfg.variant != "weak" else pair_exclusion(exclude & False, cols_ok, offset)
        w0, stats = ck.anchor_weights(W, offset, z.shape[0], w_ex)
        s_xy = scale * z[:, x] @ z_all[:, y].T
        s_xx = scale * z[:, x] @ z_all[:, x].T
        rows = ck.cclk_rows(s_xy, s_xx, w0, cfg.variant, offset, ex)
        orphan = w0.sum(1) < cfg.min_mass
        stats["w_orphan_frac"] = orphan.to(torch.float64).mean()
        for k, v in stats.items():
            logs[k] = logs.get(k, 0.0) + v
        ok = valid[:, x] & valid[:, y]
        if cfg.orphans == "exclude":
            return global_mean(rows, ok & ~orphan)
        return global_mean(torch.where(orphan, nce_rows(s_xy, offset, ex), rows), ok)


def build_contrastive(options: Mapping, embed_dim: int | Mapping[str, int]) -> ContrastiveObjective:
    """`ContrastiveObjective` from a plain options dict (YAML `train.contrastive`, notebook)."""
    return ContrastiveObjective(ContrastiveConfig.from_dict(options), embed_dim)


class ContrastivePretrainer(nn.Module):
    """Contrastive-only pretraining: `encoder.forward_features(batch)` (no masking) → objective.
    forward(batch) → (loss, logs)."""

    def __init__(self, encoder: nn.Module, cfg: ContrastiveConfig, embed_dim: int | None = None):
        super().__init__()
        self.encoder = encoder
        dim = embed_dim if embed_dim is not None else getattr(encoder, "embed_dim", None)
        if dim is None:
            raise DataError("ContrastivePretrainer embed_dim", expected="int", found="none")
        self.objective = ContrastiveObjective(cfg, dim)

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        return self.objective(self.encoder.forward_features(batch), batch)
