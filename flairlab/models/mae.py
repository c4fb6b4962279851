"""MAESTRO-style multimodal masked autoencoder (Labatie et al. 2025; maestro-method.md §3–§6).

Read top to bottom: embeddings → transformer blocks → the MAE (tokenise, mask, encode, decode,
loss). Shapes: B batch, D dates, C bands, H = W image px, p patch px, g = H / p token grid,
N = g² locations, S = G·D token maps ("slices", G token band groups, group-major), d width.

Per modality `m` a sample becomes S_m·N_m tokens `z = PatchEmbed(x) + PE + DateEnc`; the fusion
mode decides which tokens form one encoder sequence (`MAEConfig.units`, `per_date`); masking hides
exactly round(0.75·L) tokens per sequence unit; decoders are per encoder stack; the loss is L1 on
masked pixels against patch-group-wise normalised targets, modalities weighted by token count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flairlab.data.errors import DataError
from flairlab.models.mae_config import DATE_DIM, MAEConfig
from flairlab.models.masking import MaskSpec, random_masking

DAYS_PER_YEAR = 365.25


# -- embeddings ------------------------------------------------------------------------------
def sincos_1d(P: int, n: int) -> Tensor:
    """[sin(iω), cos(iω)] for cells i = 0…P−1, ω_k = 10000^(−k/(n−1)), k < n: (P, 2n) float64."""
    omega = 10000.0 ** (-torch.arange(n, dtype=torch.float64) / (n - 1))
    ang = torch.arange(P, dtype=torch.float64)[:, None] * omega
    return torch.cat([ang.sin(), ang.cos()], -1)


def sincos_grid(P: int, dim: int) -> Tensor:
    """2-D sin-cos PE on a P × P lattice: (P, P, dim) = [sin xω, cos xω, sin yω, cos yω, 0_8],
    n = (dim − 8) / 4 frequencies, x/y the integer cell column/row (spec §3.2)."""
    n = (dim - DATE_DIM) // 4
    e = sincos_1d(P, n)
    x = e[None].expand(P, P, 2 * n)  # varies along columns
    y = e[:, None].expand(P, P, 2 * n)  # varies along rows
    return torch.cat([x, y, torch.zeros(P, P, DATE_DIM, dtype=torch.float64)], -1).float()


def pooled_pe(P: int, g: int, dim: int) -> Tensor:
    """The fine P × P PE averaged over each token's footprint on a g × g grid: (g·g, dim).
    When g does not divide P the fine map is first bilinearly resized to g·round(P/g) (§3.2).

    Computed per axis: the x half of the PE is constant along y (and vice versa), so the 2-D
    bilinear resize + average pooling reduce exactly to 1-D linear resize + 1-D pooling."""
    n = (dim - DATE_DIM) // 4
    e = sincos_1d(P, n).T[None]  # (1, 2n, P)
    k = max(1, round(P / g))
    if g * k != P:
        e = F.interpolate(e, size=g * k, mode="linear", align_corners=False)
    e = F.avg_pool1d(e, k)[0].T  # (g, 2n)
    x = e[None].expand(g, g, 2 * n)
    y = e[:, None].expand(g, g, 2 * n)
    pe = torch.cat([x, y, torch.zeros(g, g, DATE_DIM, dtype=torch.float64)], -1)
    return pe.reshape(g * g, dim).float()


def date_encoding(dates: Tensor, ref: Tensor, dim: int, scale: float = 1.0) -> Tensor:
    """(B, D, 3) (year, day_of_year, hour) and ref (B, 1, 3) → (B, D, dim), zero except the last 8
    channels [Δ, Δ, Δ, Δ, sin φ, cos φ, sin ψ, cos ψ]; Δ in years, φ = 2πJ/365.25, ψ = 2πh/24."""
    d = dates.double()
    r = ref.double()
    delta = (d[..., 0] - r[..., 0]) + (d[..., 1] - r[..., 1]) / DAYS_PER_YEAR
    phi = 2 * math.pi * d[..., 1] / DAYS_PER_YEAR
    psi = 2 * math.pi * d[..., 2] / 24
    tail = torch.stack([delta] * 4 + [phi.sin(), phi.cos(), psi.sin(), psi.cos()], -1)
    out = torch.cat([tail.new_zeros(*tail.shape[:-1], dim - DATE_DIM), tail], -1)
    return (scale * out).float()


class PatchEmbed(nn.Module):
    """One Conv2d(kernel = stride = p) + GroupNorm(1) per token band group.

    (B, D, C, H, W) → (B, G·D, g·g, d), band group outermost. GroupNorm(1) normalises each
    date's whole token map (before masking — the reference behaviour, spec §13.1)."""

    def __init__(self, band_groups: list[list[int]], patch: int, dim: int) -> None:
        super().__init__()
        self.band_groups = band_groups
        self.proj = nn.ModuleList(nn.Conv2d(len(g), dim, patch, patch) for g in band_groups)
        self.norm = nn.ModuleList(nn.GroupNorm(1, dim) for _ in band_groups)

    def forward(self, x: Tensor) -> Tensor:
        B, D = x.shape[:2]
        maps = []
        for idx, proj, norm in zip(self.band_groups, self.proj, self.norm, strict=True):
            y = norm(proj(x[:, :, idx].flatten(0, 1)))  # (B·D, d, g, g)
            maps.append(y.flatten(2).transpose(1, 2).unflatten(0, (B, D)))  # (B, D, N, d)
        return torch.cat(maps, dim=1)


# -- transformer -----------------------------------------------------------------------------
class Attention(nn.Module):
    """Pre-norm multi-head self-attention; qkv without bias, output projection with bias."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.proj = nn.Linear(heads * dim_head, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, dim) → (B, L, dim)
        B, L, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(B, L, 3, self.heads, self.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, h, L, dh) each
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, L, self.heads * self.dim_head))


class MLP(nn.Sequential):
    """Pre-norm LayerNorm → Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                         nn.Linear(hidden, dim))  # fmt: skip


class Transformer(nn.Module):
    """`depth` pre-norm residual blocks then a final LayerNorm: (B, L, dim) → (B, L, dim)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_hidden: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head), MLP(dim, mlp_hidden)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        for attn, mlp in self.blocks:
            x = x + attn(x)
            x = x + mlp(x)
        return self.norm(x)


# -- targets ---------------------------------------------------------------------------------
def patchify(x: Tensor, p: int) -> Tensor:
    """(B, D, C, H, W) → (B, D, N, p·p, C); pixel index = row_in_patch·p + col_in_patch."""
    B, D, C, H, _ = x.shape
    g = H // p
    x = x.reshape(B, D, C, g, p, g, p).permute(0, 1, 3, 5, 4, 6, 2)
    return x.reshape(B, D, g * g, p * p, C)


def unpatchify(x: Tensor, p: int) -> Tensor:
    """(B, D, N, p·p, C) → (B, D, C, H, W), the inverse of `patchify`."""
    B, D, N, _, C = x.shape
    g = math.isqrt(N)
    x = x.reshape(B, D, g, g, p, p, C).permute(0, 1, 6, 2, 4, 3, 5)
    return x.reshape(B, D, C, g * p, g * p)


def patch_stats(x: Tensor, groups: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance per (date, patch, band group) of patchified x (B, D, N, P, C):
    returns μ, σ² of shape (B, D, N, 1, C), each band holding its group's statistics."""
    mu, var = torch.empty_like(x[..., :1, :]), torch.empty_like(x[..., :1, :])
    for g in groups:
        vals = x[..., g].flatten(-2)  # (B, D, N, P·|g|)
        mu[..., g] = vals.mean(-1)[..., None, None]
        v = vals.var(-1, unbiased=True) if vals.shape[-1] > 1 else torch.zeros_like(vals[..., 0])
        var[..., g] = v[..., None, None]
    return mu, var


@dataclass
class MAEOutput:
    """Pre-training forward. Patch layouts are (B, D, N, p·p, C); masks (B, S, g, g) bool with
    True = hidden from the encoder; `features` (when requested) (B, S, g, g, d), zero at masked
    tokens. `reconstructions` / `targets` are the image-layout views (B, D, C, H, W)."""

    loss: Tensor
    per_modality_loss: dict[str, Tensor]
    pred_patches: dict[str, Tensor]
    target_patches: dict[str, Tensor]
    masks: dict[str, Tensor]
    patch_sizes: dict[str, int]
    features: dict[str, Tensor] | None = None

    @cached_property
    def reconstructions(self) -> dict[str, Tensor]:
        return {k: unpatchify(v, self.patch_sizes[k]) for k, v in self.pred_patches.items()}

    @cached_property
    def targets(self) -> dict[str, Tensor]:
        return {k: unpatchify(v, self.patch_sizes[k]) for k, v in self.target_patches.items()}


# -- the model -------------------------------------------------------------------------------
class MAE(nn.Module):
    """MAESTRO masked autoencoder. `model(batch)` → MAEOutput (pre-training);
    `model.forward_features(batch)` → {key: (B, S, g, g, d)} with all tokens (fine-tuning)."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed_dim = d = c.embed_dim
        dd = c.decoder_dim
        self.keys = list(c.modalities)
        mods = c.modalities
        self.patch_embed = nn.ModuleDict()
        for m in mods.values():
            if m.embed not in self.patch_embed:
                self.patch_embed[m.embed] = PatchEmbed(m.band_groups, m.patch_size, d)
        enc_mlp = int(d * c.mlp_ratio)
        self.encoders = nn.ModuleDict({
            u: Transformer(d, c.encoder_depth, c.num_heads, c.dim_head, enc_mlp) for u in c.units
        })  # fmt: skip
        self.inter = (Transformer(d, c.inter_depth, c.num_heads, c.dim_head, enc_mlp)
                      if c.is_inter else None)  # fmt: skip
        self.enc_to_dec = nn.ModuleDict(
            {u: nn.Linear(d, dd) if d != dd else nn.Identity() for u in c.units}
        )
        self.decoders = nn.ModuleDict({
            u: Transformer(dd, c.decoder_depth, c.decoder_heads, c.decoder_dim_head,
                           c.decoder_mlp_hidden) for u in c.units
        })  # fmt: skip
        self.mask_tokens = nn.ParameterDict(
            {k: nn.Parameter(torch.randn(len(m.band_groups), dd)) for k, m in mods.items()}
        )
        self.pixel_heads = nn.ModuleDict({
            k: nn.ModuleList(nn.Linear(dd, m.patch_size**2 * len(g)) for g in m.band_groups)
            for k, m in mods.items()
        })  # fmt: skip
        for k, m in mods.items():  # fixed (not learned, not saved) positional encodings
            self.register_buffer(f"pe_enc_{k}", pooled_pe(c.pe_grid, m.grid, d), persistent=False)
            self.register_buffer(f"pe_dec_{k}", pooled_pe(c.pe_grid, m.grid, dd), persistent=False)

    def token_grid(self, key: str) -> int:
        return self.config.token_grid(key)

    # -- tokens ----------------------------------------------------------------------------
    def _check(self, batch: dict, key: str) -> Tensor:
        m = self.config.modalities[key]
        if key not in batch:
            raise DataError("batch lacks a model modality", expected=self.keys, found=key)
        x = batch[key]
        want = (m.n_dates, m.in_chans, m.image_size, m.image_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise DataError(f"batch[{key!r}] shape", expected=("B", *want), found=tuple(x.shape))
        return x

    def _date_enc(self, batch: dict, key: str, dim: int) -> Tensor:
        """(B, S, dim) date encoding of each token map (repeated over band groups)."""
        m = self.config.modalities[key]
        dates = batch.get(f"{key}_dates")
        if dates is None or "ref_date" not in batch:
            raise DataError("batch lacks dates", expected=[f"{key}_dates", "ref_date"],
                            found=sorted(k for k in batch if "date" in k))  # fmt: skip
        enc = date_encoding(dates, batch["ref_date"], dim, float(self.config.use_date_enc))
        return enc.to(batch[key].device).repeat(1, len(m.band_groups), 1)

    def embed(self, batch: dict) -> dict[str, Tensor]:
        """Token embeddings per modality: (B, S, N, d) = PatchEmbed(x) + PE + DateEnc."""
        out = {}
        for k in self.keys:
            x = self._check(batch, k)
            z = self.patch_embed[self.config.modalities[k].embed](x)
            pe = getattr(self, f"pe_enc_{k}")
            out[k] = z + pe + self._date_enc(batch, k, self.embed_dim)[:, :, None]
        return out

    def _to_units(self, per_mod: dict[str, Tensor]) -> dict[str, Tensor]:
        """Modality tensors (B, S, N, ·) → one sequence batch per unit: per-date modes
        (B·S, N, ·) keyed by modality; otherwise (B, Σ S·N, ·) keyed by encoder stack."""
        if self.config.per_date:
            return {k: per_mod[k].flatten(0, 1) for k in self.keys}
        return {
            u: torch.cat([per_mod[k].flatten(1, 2) for k in keys], 1)
            for u, keys in self.config.units.items()
        }

    def _from_units(self, seqs: dict[str, Tensor], B: int) -> dict[str, Tensor]:
        """Inverse of `_to_units`: → {key: (B, S, N, ·)}."""
        mods = self.config.modalities
        if self.config.per_date:
            return {k: seqs[k].unflatten(0, (B, mods[k].n_slices)) for k in self.keys}
        out = {}
        for u, keys in self.config.units.items():
            parts = seqs[u].split([mods[k].n_tokens for k in keys], dim=1)
            for k, t in zip(keys, parts, strict=True):
                out[k] = t.unflatten(1, (mods[k].n_slices, mods[k].grid ** 2))
        return out

    def _stack(self, unit: str) -> str:
        return self.config.encoder_of(unit) if self.config.per_date else unit

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, seqs: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-unit stacks, then (inter-* modes) `inter_depth` blocks over the concatenation of all
        units' tokens. Returns (final, pre_fusion) sequences, shapes as the input."""
        pre = {u: self.encoders[self._stack(u)](x) for u, x in seqs.items()}
        if self.inter is None:
            return pre, pre
        lens = [x.shape[1] for x in pre.values()]
        fused = self.inter(torch.cat(list(pre.values()), dim=1)).split(lens, dim=1)
        return dict(zip(pre, fused, strict=True)), pre

    def forward_features(self, batch: dict) -> dict[str, Tensor]:
        """All tokens through the full encoder (no masking): {key: (B, S, g, g, d)}; S = D for
        joint tokens (band-group tokens: G·D, group-major)."""
        tokens = self.embed(batch)
        B = next(iter(tokens.values())).shape[0]
        final, _ = self.encode(self._to_units(tokens))
        out = self._from_units(final, B)
        return {k: v.unflatten(2, (self.token_grid(k),) * 2) for k, v in out.items()}

    # -- pre-training ----------------------------------------------------------------------
    @torch.compiler.disable  # data-dependent redraws; eager draws: compiled runs mask identically
    def mask(self, B: int, device: torch.device) -> dict[str, tuple[Tensor, Tensor]]:
        """Draw masks: {unit: (mask (B', L) bool, keep (B', L_vis) int64)} (global torch RNG)."""
        c = self.config
        spec = MaskSpec(c.mask_ratio, c.mask_scale, c.mask_mod, c.mask_bands, c.mask_dates,
                        c.mask_loc)  # fmt: skip
        return {
            u: random_masking(layout, B * reps, spec, structured=not c.per_date, device=device)
            for u, layout, reps in c.mask_units()
        }

    def forward(self, batch: dict, return_features: str | None = None) -> MAEOutput:
        """Mask, encode the visible tokens, decode every token, loss on the masked ones.

        return_features: None, "final" or "pre_fusion" (before the inter-group blocks) — dense
        (B, S, g, g, d) encoder outputs with zeros at masked tokens, e.g. for a contrastive term.
        """
        c, dd = self.config, self.config.decoder_dim
        tokens = self.embed(batch)
        B = next(iter(tokens.values())).shape[0]
        device = next(iter(tokens.values())).device
        seqs = self._to_units(tokens)
        masks = self.mask(B, device)

        def gather(x: Tensor, keep: Tensor) -> Tensor:
            return x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))

        visible = {u: gather(x, masks[u][1]) for u, x in seqs.items()}
        final, pre = self.encode(visible)

        # decoder input: mask tokens everywhere, visible tokens scattered back, + PE + date
        dec_base, dec_add = {}, {}
        for k in self.keys:
            m = c.modalities[k]
            mt = self.mask_tokens[k].repeat_interleave(m.n_dates, dim=0)  # (S, dd)
            dec_base[k] = mt[None, :, None].expand(B, -1, m.grid**2, -1)
            dec_add[k] = getattr(self, f"pe_dec_{k}") + self._date_enc(batch, k, dd)[:, :, None]
        base, add = self._to_units(dec_base), self._to_units(dec_add)
        decoded = {}
        for u, x in final.items():
            keep = masks[u][1][..., None].expand(-1, -1, dd)
            y = self.enc_to_dec[self._stack(u)](x)
            full = base[u].to(y.dtype).scatter(1, keep, y) + add[u]
            decoded[u] = self.decoders[self._stack(u)](full)
        decoded = self._from_units(decoded, B)  # {k: (B, S, N, dd)}
        token_masks = self._from_units({u: mk[..., None] for u, (mk, _) in masks.items()}, B)

        preds, targets, losses = {}, {}, {}
        for k in self.keys:
            preds[k], targets[k], losses[k] = self._modality_loss(
                k, batch[k], decoded[k], token_masks[k][..., 0]
            )
        w = {k: float(c.modalities[k].n_tokens) for k in self.keys}
        loss = sum(w[k] * losses[k] for k in self.keys) / sum(w.values())
        g = {k: c.modalities[k].grid for k in self.keys}
        features = None
        if return_features is not None:
            src = {"final": final, "pre_fusion": pre}[return_features]
            dense = {}
            for u, x in src.items():
                keep = masks[u][1][..., None].expand(-1, -1, x.shape[-1])
                dense[u] = x.new_zeros(*masks[u][0].shape, x.shape[-1]).scatter(1, keep, x)
            features = {k: v.unflatten(2, (g[k], g[k]))
                        for k, v in self._from_units(dense, B).items()}  # fmt: skip
        return MAEOutput(
            loss=loss,
            per_modality_loss=losses,
            pred_patches=preds,
            target_patches=targets,
            masks={k: v[..., 0].unflatten(2, (g[k], g[k])) for k, v in token_masks.items()},
            patch_sizes={k: c.modalities[k].patch_size for k in self.keys},
            features=features,
        )

    def _modality_loss(
        self, key: str, x: Tensor, dec: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pixelify the decoded tokens (B, S, N, dd) of `key` and compare with the target of the
        masked tokens (mask (B, S, N)). Returns pred, target (B, D, N, p·p, C) and the loss."""
        m, c = self.config.modalities[key], self.config
        P, D = m.patch_size**2, m.n_dates
        preds, elem = [], []
        for gi, (idx, head) in enumerate(zip(m.band_groups, self.pixel_heads[key], strict=True)):
            sl = slice(gi * D, (gi + 1) * D)
            preds.append(head(dec[:, sl]).unflatten(-1, (P, len(idx))))  # (B, D, N, P, |g|)
            elem.append(mask[:, sl, :, None, None].expand(-1, -1, -1, 1, len(idx)))
        order = torch.tensor([i for g in m.band_groups for i in g], device=dec.device).argsort()
        pred = torch.cat(preds, -1)[..., order].float()  # model band order
        elem_mask = torch.cat(elem, -1)[..., order]  # (B, D, N, 1, C)
        with torch.autocast(x.device.type, enabled=False):
            target = patchify(x.float(), m.patch_size)
            if c.loss.endswith("_norm"):
                mu, var = patch_stats(target, m.norm_bands)
                target = (target - mu) / torch.sqrt(var + c.norm_eps)
            err = (pred - target).abs() if c.loss.startswith("l1") else (pred - target) ** 2
            weight = elem_mask.to(err.dtype)
            loss = (err * weight).sum() / (weight.sum() * P).clamp_min(1.0)
        return pred, target, loss

    def unnormalise(self, key: str, x: Tensor, pred: Tensor) -> Tensor:
        """Map a normalised prediction (B, D, N, p·p, C) back to image values using the
        statistics of the input x (B, D, C, H, W): → (B, D, C, H, W)."""
        m, c = self.config.modalities[key], self.config
        if not c.loss.endswith("_norm"):
            return unpatchify(pred, m.patch_size)
        mu, var = patch_stats(patchify(x.float(), m.patch_size), m.norm_bands)
        return unpatchify(pred * torch.sqrt(var + c.norm_eps) + mu, m.patch_size)


def count_parameters(model: MAE) -> dict[str, int]:
    """Parameters of the encoder side (patch embeddings + encoders + inter blocks) and of the
    decoder side (enc_to_dec, mask tokens, decoders, pixel heads)."""

    def n(mods: list[nn.Module | nn.Parameter]) -> int:
        return sum(p.numel() for x in mods for p in ([x] if isinstance(x, Tensor) else
                                                     x.parameters()))  # fmt: skip

    enc = [model.patch_embed, model.encoders] + ([model.inter] if model.inter else [])
    dec = [model.enc_to_dec, model.decoders, model.pixel_heads, *model.mask_tokens.values()]
    return {"encoder": n(enc), "decoder": n(dec)}
