"""Configuration of the MAESTRO masked autoencoder: sizes, per-modality geometry, fusion, masking.

Everything the model builds from lives in `MAEConfig` (a plain dataclass, JSON round-trippable with
`to_dict` / `from_dict`). Sizes follow maestro-method.md §7 (`medium` = the paper's "Base"):

| size   | embed | depth | heads × 64 | MLP ratio | decoder depth |
|--------|-------|-------|------------|-----------|---------------|
| nano   |    96 |     4 |      3 × 32|         2 | 1 (width 128) |
| tiny   |   192 |    12 |          3 |         2 | 1             |
| small  |   384 |    12 |          6 |         2 | 2             |
| medium |   768 |    12 |         12 |         4 | 3             |
| large  |  1024 |    24 |         16 |         4 | 4             |

The decoder is 512 wide with 16 heads × 32 and MLP hidden = 4 × the *encoder* width (a reference
quirk), except `nano`, flairlab's CPU demo size (not in the paper).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from flairlab.data.catalog import load_catalog
from flairlab.data.dataset import MODEL_BANDS
from flairlab.data.errors import DataError

FUSION_MODES = ("shared", "monotemp", "mod", "group", "inter-mod", "inter-group")
LOSSES = ("l1_norm", "l2_norm", "l1", "l2")
DATE_DIM = 8  # last channels of every token hold the date encoding (§3.3)

SIZES: dict[str, dict[str, int]] = {
    "nano": dict(embed_dim=96, depth=4, num_heads=3, dim_head=32, mlp_ratio=2, decoder_dim=128,
                 decoder_depth=1, decoder_heads=4, decoder_dim_head=32, inter_depth=1),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=2, decoder_depth=1),
    "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=2, decoder_depth=2),
    "medium": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, decoder_depth=3),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, decoder_depth=4),
}  # fmt: skip
SIZES["base"] = SIZES["medium"]  # the paper's name for `medium`
_SIZE_DEFAULTS = dict(dim_head=64, decoder_dim=512, decoder_heads=16, decoder_dim_head=32,
                      inter_depth=3)  # fmt: skip

# fields that do not change parameters or activations of the encoder: a checkpoint still "fits"
# a configuration that differs only in these (e.g. fine-tuning with another image size).
GEOMETRY_FIELDS = ("image_size", "n_dates", "norm_bands", "tile_m", "pe_grid")
TRAINING_FIELDS = (
    "mask_ratio", "mask_scale", "mask_mod", "mask_bands", "mask_dates", "mask_loc", "loss",
    "norm_eps",
)  # fmt: skip

# FLAIR-HUB default geometry (spec R1): (image_size, patch_size, n_dates)
FLAIR_GEOMETRY: dict[str, tuple[int, int, int]] = {
    "aerial": (512, 16, 1),
    "dem": (512, 32, 1),
    "spot": (64, 4, 1),
    "rlt": (256, 8, 1),
    "s2": (10, 2, 16),
    "s1_asc": (10, 2, 4),
    "s1_desc": (10, 2, 4),
}
DEFAULT_GROUPS = {"s1_asc": "s1", "s1_desc": "s1"}


@dataclass
class ModalityConfig:
    """Geometry of one model modality (key = catalog alias).

    image_size: px per side after the dataset's resize; patch_size: px per token side;
    n_dates: D; in_chans: channels (0 → len(MODEL_BANDS[key])); group: encoder group
    ("" → key, s1_asc/s1_desc → "s1"); embed: patch-embedding name ("" → key; equal names share
    weights); bands: token band groups as model-order index lists (None = one joint token);
    norm_bands: target-normalisation band groups (None = the catalog's `band_groups`).
    """

    image_size: int
    patch_size: int
    n_dates: int = 1
    in_chans: int = 0
    group: str = ""
    embed: str = ""
    bands: list[list[int]] | None = None
    norm_bands: list[list[int]] | None = None

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def band_groups(self) -> list[list[int]]:
        """Token band groups (one group of all channels for joint tokens)."""
        return self.bands or [list(range(self.in_chans))]

    @property
    def n_slices(self) -> int:
        """Token maps per sample: band groups × dates (group-major)."""
        return len(self.band_groups) * self.n_dates

    @property
    def n_tokens(self) -> int:
        return self.n_slices * self.grid**2


def catalog_norm_bands(key: str) -> list[list[int]]:
    """MAESTRO target-normalisation groups of `key` as indices in the *model* band order.

    The catalog lists groups by band name; the model order is `MODEL_BANDS[key]` (aerial: NIR, R,
    G, B while the file is R, G, B, NIR), so aerial [[NIR], [R, G, B]] → [[0], [1, 2, 3]].
    """
    mod = load_catalog().modality(key)
    groups = mod.band_groups or [mod.band_names]
    return [[MODEL_BANDS[key].index(b) for b in g] for g in groups]


def flair_modalities(
    keys: tuple[str, ...] = ("aerial", "dem", "s2", "s1_asc", "s1_desc"),
    image_size: dict[str, int] | None = None,
    patch_size: dict[str, int] | None = None,
    n_dates: dict[str, int] | None = None,
) -> dict[str, ModalityConfig]:
    """FLAIR-HUB default geometry (spec R1) for `keys`, with per-key overrides."""
    out = {}
    for k in keys:
        if k not in FLAIR_GEOMETRY:
            raise DataError("unknown model modality", expected=sorted(FLAIR_GEOMETRY), found=k)
        size, patch, dates = FLAIR_GEOMETRY[k]
        out[k] = ModalityConfig(
            image_size=(image_size or {}).get(k, size),
            patch_size=(patch_size or {}).get(k, patch),
            n_dates=(n_dates or {}).get(k, dates),
        )
    return out


@dataclass
class MAEConfig:
    """The whole model. Width/depth fields left at 0 are filled from `size` (see module doc)."""

    modalities: dict[str, ModalityConfig] = field(default_factory=flair_modalities)
    size: str = "tiny"
    fusion_mode: str = "inter-group"
    inter_depth: int = -1  # shared blocks after the per-group stacks (inter-* modes); -1 = size
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    dim_head: int = 0
    mlp_ratio: float = 0
    decoder_dim: int = 0
    decoder_depth: int = 0
    decoder_heads: int = 0
    decoder_dim_head: int = 0
    decoder_mlp_hidden: int = 0  # 0 → 4 × embed_dim (reference quirk)
    tile_m: float = 102.4  # ground extent of the model input, metres
    pe_grid: int = 160  # fine positional-encoding lattice cells per side (0.64 m on FLAIR-HUB)
    use_date_enc: bool = True
    mask_ratio: float = 0.75
    mask_scale: float = 0.0
    mask_mod: float = 0.25
    mask_bands: float = 0.0
    mask_dates: float = 0.25
    mask_loc: float = 0.25
    loss: str = "l1_norm"
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise DataError("model.size", expected=sorted(SIZES), found=self.size)
        preset = {**_SIZE_DEFAULTS, **SIZES[self.size]}
        for name, value in preset.items():
            if getattr(self, name) == (-1 if name == "inter_depth" else 0):
                setattr(self, name, value)
        if not self.is_inter:
            self.inter_depth = 0  # only inter-* modes have shared blocks
        if not self.decoder_mlp_hidden:
            self.decoder_mlp_hidden = 4 * self.embed_dim
        mods = {}
        for key, m in self.modalities.items():
            mods[key] = m if isinstance(m, ModalityConfig) else _modality_from_dict(key, m)
        self.modalities = mods
        for key, m in mods.items():
            if key not in MODEL_BANDS:
                raise DataError("model.modalities", expected=sorted(MODEL_BANDS), found=key)
            m.in_chans = m.in_chans or len(MODEL_BANDS[key])
            m.group = m.group or DEFAULT_GROUPS.get(key, key)
            m.embed = m.embed or key
            if m.norm_bands is None and m.in_chans == len(MODEL_BANDS[key]):
                m.norm_bands = catalog_norm_bands(key)
        self.validate()

    # -- checks ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise DataError naming the first inconsistent field."""
        f = "model."
        if self.fusion_mode not in FUSION_MODES:
            raise DataError(f + "fusion_mode", expected=FUSION_MODES, found=self.fusion_mode)
        if self.loss not in LOSSES:
            raise DataError(f + "loss", expected=LOSSES, found=self.loss)
        if self.is_inter and not 0 < self.inter_depth < self.depth:
            raise DataError(f + "inter_depth", expected=f"1..{self.depth - 1}",
                            found=self.inter_depth)  # fmt: skip
        for name, dim in (("embed_dim", self.embed_dim), ("decoder_dim", self.decoder_dim)):
            if dim % 4 or (dim - DATE_DIM) // 4 < 2:
                raise DataError(f + name, expected="a multiple of 4, ≥ 16", found=dim)
        if not self.modalities:
            raise DataError(f + "modalities", expected="at least one", found="none")
        for key, m in self.modalities.items():
            p = f"{f}modalities.{key}."
            if m.image_size <= 0 or m.patch_size <= 0 or m.image_size % m.patch_size:
                raise DataError(p + "patch_size", expected=f"a divisor of {m.image_size}",
                                found=m.patch_size)  # fmt: skip
            if m.n_dates < 1:
                raise DataError(p + "n_dates", expected="≥ 1", found=m.n_dates)
            for name in ("bands", "norm_bands"):
                groups = getattr(m, name) or [list(range(m.in_chans))]
                if sorted(i for g in groups for i in g) != list(range(m.in_chans)):
                    raise DataError(p + name, expected=f"each of 0..{m.in_chans - 1} once",
                                    found=groups)  # fmt: skip
        embeds: dict[str, tuple] = {}
        for key, m in self.modalities.items():
            sig = (m.in_chans, m.patch_size, m.bands)
            if embeds.setdefault(m.embed, sig) != sig:
                raise DataError(f"model.modalities.{key}.embed",
                                expected=f"modalities sharing {m.embed!r} to match in channels, "
                                "patch size and bands", found=sig)  # fmt: skip

    # -- derived structure -----------------------------------------------------------------
    @property
    def is_inter(self) -> bool:
        return self.fusion_mode.startswith("inter-")

    @property
    def per_date(self) -> bool:
        """shared / monotemp: every date of every modality is its own sequence."""
        return self.fusion_mode in ("shared", "monotemp")

    def encoder_of(self, key: str) -> str:
        """Name of the encoder (and decoder) stack that sees modality `key`."""
        if self.fusion_mode == "shared":
            return "shared"
        if self.fusion_mode in ("group", "inter-group"):
            return self.modalities[key].group
        return key

    @property
    def units(self) -> dict[str, list[str]]:
        """Encoder stack name → its modalities, in config order."""
        out: dict[str, list[str]] = {}
        for key in self.modalities:
            out.setdefault(self.encoder_of(key), []).append(key)
        return out

    @property
    def encoder_depth(self) -> int:
        """Blocks per modality/group stack (depth − inter_depth in inter-* modes)."""
        return self.depth - self.inter_depth if self.is_inter else self.depth

    def token_grid(self, key: str) -> int:
        return self.modalities[key].grid

    def n_tokens(self) -> int:
        """All tokens of one sample (1880 for the FLAIR-HUB default geometry)."""
        return sum(m.n_tokens for m in self.modalities.values())

    def mask_units(self) -> list[tuple[str, list[tuple[int, int, int]], int]]:
        """Per masking unit: (name, layout [(G, D, N) per modality], sequences per sample)."""
        if self.per_date:
            return [(k, [(1, 1, m.grid**2)], m.n_slices) for k, m in self.modalities.items()]
        return [
            (u, [(len(self.modalities[k].band_groups), self.modalities[k].n_dates,
                  self.modalities[k].grid**2) for k in keys], 1)
            for u, keys in self.units.items()
        ]  # fmt: skip

    def n_visible(self) -> int:
        """Tokens the encoder sees per sample in pre-training (470 for FLAIR-HUB defaults)."""
        from flairlab.models.masking import MaskSpec, n_masked

        spec = MaskSpec(ratio=self.mask_ratio, scale=self.mask_scale)
        total = 0
        for _, layout, reps in self.mask_units():
            L = sum(G * D * N for G, D, N in layout)
            total += reps * (L - n_masked(L, sum(G * D for G, D, _ in layout), spec))
        return total

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError("model config: unknown fields", expected=sorted(known), found=unknown)
        data = dict(data)
        if "modalities" in data:
            data["modalities"] = {
                k: _modality_from_dict(k, v) for k, v in (data["modalities"] or {}).items()
            }
        return cls(**data)


def _modality_from_dict(key: str, data: dict[str, Any] | ModalityConfig) -> ModalityConfig:
    if isinstance(data, ModalityConfig):
        return data
    if not isinstance(data, dict):
        raise DataError(f"model.modalities.{key}", expected="a mapping", found=data)
    data = dict(data)
    base = FLAIR_GEOMETRY.get(key)
    if base is not None:  # unspecified geometry falls back to the FLAIR-HUB defaults
        data.setdefault("image_size", base[0])
        data.setdefault("patch_size", base[1])
        data.setdefault("n_dates", base[2])
    known = {f.name for f in dataclasses.fields(ModalityConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DataError(f"model.modalities.{key}: unknown fields", expected=sorted(known),
                        found=unknown)  # fmt: skip
    return ModalityConfig(**data)


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields where two nested config dicts differ."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        name = f"{prefix}{k}"
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


def architecture_diff(saved: MAEConfig, current: MAEConfig) -> list[str]:
    """Fields that make weights of `saved` unusable for `current` (geometry/training ignored)."""
    skip = set(GEOMETRY_FIELDS) | set(TRAINING_FIELDS)
    return [
        name
        for name in config_diff(saved.to_dict(), current.to_dict())
        if name.rsplit(".", 1)[-1] not in skip
    ]
