"""Task heads on top of encoder token maps (maestro-method.md §8.3).

The encoder gives, per modality `m`, a token map `(B, D_m, g_m, g_m, E)` (D_m dates, g_m × g_m
tokens). Heads mix modalities and dates late, with attentive pooling:

* `AttentivePooling`: (N, K, E) -> (N, E). LayerNorm → keys/values from one bias-free Linear
  E → 2E split into 8 heads; one learned query (E,), init N(0, 1); softmax over the K tokens;
  heads concatenated → LayerNorm. No output projection.
* `SegmentationHead`: every modality/date token map is bilinearly resampled to the reference
  (aerial) grid G × G; at each cell the K = Σ_m D_m tokens are pooled (weights shared by all
  cells) → Linear E → n_classes·p² → pixel shuffle by p = out_size / G. FLAIR-HUB default:
  K = 26, G = 32, p = 16 → logits (B, 15, 512, 512) at 0.2 m (R5 writes (B, 1, 15, 512, 512);
  flairlab drops the singleton date axis).
* `ClassificationHead`: all tokens of all modalities and dates pooled → Linear E → n_classes.
* `UpsampleHead` (not in MAESTRO; flairlab's CPU default): the same attentive pooling per cell of
  the reference grid, then a light decoder at the label resolution: the pooled map (B, E, G, G) is
  reduced to `dim` channels and bilinearly upsampled to S × S, the model's own inputs resampled to
  S × S (`inputs_on_grid`, every modality / date / band one channel) are normalised and projected
  to `dim` channels, and a per-pixel MLP (two 1 × 1 convolutions) mixes both into logits. Tokens
  of 12.8 m cannot draw a 0.8 m road; the skip gives every pixel its own colour, height and
  time series, the encoder the context. `head = "attentive"` is MAESTRO's head (pixel shuffle).

Option `feature_norm=True` (not in MAESTRO): standardise every token channel with a BatchNorm
without affine parameters before pooling, as the MAE paper does for linear probing — MAE
features have channels of very different scales, which a frozen-feature probe learns slowly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentivePooling(nn.Module):
    """Pool K tokens into one with a learned query: (N, K, E) -> (N, E)."""

    def __init__(self, dim: int, heads: int = 8) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attentive pooling: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_in = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.query = nn.Parameter(torch.randn(dim))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        N, K, E = x.shape
        k, v = self.kv(self.norm_in(x)).chunk(2, dim=-1)  # (N, K, E) each
        k = k.view(N, K, self.heads, E // self.heads).transpose(1, 2)  # (N, h, K, E/h)
        v = v.view(N, K, self.heads, E // self.heads).transpose(1, 2)
        q = self.query.view(1, self.heads, 1, E // self.heads).expand(N, -1, -1, -1)
        out = F.scaled_dot_product_attention(q.to(k.dtype), k, v)  # (N, h, 1, E/h)
        return self.norm_out(out.reshape(N, E))


def tokens_on_grid(features: dict[str, Tensor], grid: int) -> Tensor:
    """Resample every (B, D, g, g, E) map to (grid, grid) bilinearly and stack dates of all
    modalities: -> (B, grid, grid, K, E) with K = Σ D (modalities in dict order)."""
    stacks = []
    for x in features.values():
        B, D, g, g2, E = x.shape
        if g != g2:
            raise ValueError(f"token maps must be square, got {g}x{g2}")
        if g != grid:
            y = x.permute(0, 1, 4, 2, 3).reshape(B * D, E, g, g)
            y = F.interpolate(y, size=(grid, grid), mode="bilinear", align_corners=False)
            x = y.reshape(B, D, E, grid, grid).permute(0, 1, 3, 4, 2)
        stacks.append(x.permute(0, 2, 3, 1, 4))  # (B, grid, grid, D, E)
    return torch.cat(stacks, dim=3)


def pool_cells(
    features: dict[str, Tensor], grid: int, pool: nn.Module, feature_norm: nn.Module | None
) -> Tensor:
    """Every modality's and date's token at each cell of the grid, (optionally) normalised and
    attentive-pooled into one vector: -> (B, grid, grid, E). Shared by the segmentation heads."""
    t = tokens_on_grid(features, grid)  # (B, G, G, K, E)
    B, G, _, K, E = t.shape
    if feature_norm is not None:
        t = feature_norm(t.reshape(-1, E)).view(B, G, G, K, E)
    return pool(t.reshape(B * G * G, K, E)).view(B, G, G, E)


class SegmentationHead(nn.Module):
    """Token maps -> per-pixel logits (B, n_classes, out_size, out_size).

    grid: reference token grid G (aerial: image_size / patch); out_size: label pixels per side
    (512 at 0.2 m); p = out_size / G must be an integer.
    """

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        grid: int,
        out_size: int,
        heads: int = 8,
        feature_norm: bool = False,
    ) -> None:
        super().__init__()
        if out_size % grid:
            raise ValueError(f"label size {out_size} is not a multiple of the token grid {grid}")
        self.grid, self.out_size, self.n_classes = grid, out_size, n_classes
        self.p = out_size // grid
        self.feature_norm = nn.BatchNorm1d(embed_dim, affine=False) if feature_norm else None
        self.pool = AttentivePooling(embed_dim, heads)
        self.proj = nn.Linear(embed_dim, n_classes * self.p * self.p)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        pooled = pool_cells(features, self.grid, self.pool, self.feature_norm)  # (B, G, G, E)
        logits = self.proj(pooled).permute(0, 3, 1, 2)  # (B, n·p², G, G)
        return F.pixel_shuffle(logits, self.p)  # (B, n, G·p, G·p)


def inputs_on_grid(batch: dict, modalities: list[str], size: int) -> Tensor:
    """Model inputs of a batch on a size × size grid: (B, F, size, size) with F = Σ_m D_m·C_m
    (modalities in the given order, then dates, then bands). Coarser rasters are upsampled
    bilinearly, finer ones area-averaged, equal ones kept."""
    maps = []
    for key in modalities:
        x = batch[key].float()  # (B, D, C, H, W)
        b, d, c, h, w = x.shape
        x = x.reshape(b, d * c, h, w)
        if h < size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        elif h > size:
            x = F.adaptive_avg_pool2d(x, size)
        maps.append(x)
    return torch.cat(maps, dim=1)


class UpsampleHead(nn.Module):
    """Token maps + the batch's own inputs -> per-pixel logits (B, n_classes, out_size, out_size).

    grid: reference token grid G; out_size: label pixels per side S (any size ≥ 1);
    in_channels: F of `inputs_on_grid` for `modalities`; dim: decoder width.
    Cost per sample ≈ 2·S²·(F·dim + 3·dim² + dim·n_classes) FLOPs for the decoder (S = 128,
    F = 54, dim = 32: 0.1 GFLOP), on top of the pooling shared with `SegmentationHead`.
    """

    needs_inputs = True

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        grid: int,
        out_size: int,
        in_channels: int,
        modalities: list[str],
        dim: int = 32,
        heads: int = 8,
        feature_norm: bool = False,
    ) -> None:
        super().__init__()
        self.grid, self.out_size, self.n_classes = grid, out_size, n_classes
        self.modalities, self.in_channels, self.dim = list(modalities), in_channels, dim
        self.feature_norm = nn.BatchNorm1d(embed_dim, affine=False) if feature_norm else None
        self.pool = AttentivePooling(embed_dim, heads)
        self.context = nn.Conv2d(embed_dim, dim, 1)
        # input statistics: a cumulative average (momentum None), exact after the first batch —
        # with the default momentum 0.1 the running variance keeps 12 % of its initial 1 after
        # 20 steps, which shrinks inputs of variance 1e-3 (S2 reflectance) tenfold at evaluation
        self.norm = nn.BatchNorm2d(in_channels, momentum=None)
        self.skip = nn.Conv2d(in_channels, dim, 1)
        self.mix = nn.Sequential(nn.GELU(), nn.Conv2d(2 * dim, dim, 1), nn.GELU(),
                                 nn.Conv2d(dim, n_classes, 1))  # fmt: skip

    def forward(self, features: dict[str, Tensor], inputs: dict) -> Tensor:
        pooled = pool_cells(features, self.grid, self.pool, self.feature_norm)
        pooled = pooled.permute(0, 3, 1, 2)  # (B, E, G, G)
        S = self.out_size
        ctx = F.interpolate(self.context(pooled), size=(S, S), mode="bilinear",
                            align_corners=False)  # fmt: skip
        x = self.norm(inputs_on_grid(inputs, self.modalities, S).to(ctx.dtype))
        return self.mix(torch.cat([ctx, self.skip(x)], dim=1))


class ClassificationHead(nn.Module):
    """All tokens of all modalities/dates -> one attentive-pooled vector -> (B, n_classes)."""

    def __init__(self, embed_dim: int, n_classes: int, heads: int = 8) -> None:
        super().__init__()
        self.pool = AttentivePooling(embed_dim, heads)
        self.proj = nn.Linear(embed_dim, n_classes)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        tokens = [x.flatten(1, 3) for x in features.values()]  # (B, D·g·g, E) each
        return self.proj(self.pool(torch.cat(tokens, dim=1)))


def reference_grid(features: dict[str, Tensor], ref: str | None = "aerial") -> int:
    """Token grid of the reference modality (`ref`, else the finest grid present)."""
    if ref is not None and ref in features:
        return int(features[ref].shape[2])
    return max(int(x.shape[2]) for x in features.values())
