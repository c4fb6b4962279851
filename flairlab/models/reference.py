"""IGN's reference MAESTRO checkpoints (github IGNF/MAESTRO) ⇄ flairlab's `MAE`.

`import_reference(path)` reads a checkpoint written by the reference implementation — a Lightning
`.ckpt` (`state_dict` inside, MAE weights under `model.` and their EMA copy under `ema_model.`), a
bare state dict (`.pt` / `.pth` / `.bin`) or safetensors — infers flairlab's `MAEConfig` from the
tensor shapes plus whatever configuration comes with it, maps every tensor through `MAPPING` and
returns a loaded `MAE` with an `ImportReport`. `export_reference(model)` /
`save_reference(model, path)` go back to the reference layout (a round trip is exact).

Nothing is unpickled beyond tensors and plain containers: files are read with
`torch.load(weights_only=True)`; when that refuses a Lightning checkpoint because its
hyper-parameters hold the reference's own classes (its `MaskConfig` dataclass, Lightning's
`AttributeDict`), those names — and only those, listed by
`torch.serialization.get_unsafe_globals_in_checkpoint` — are bound to an inert `Opaque` stand-in
that stores the pickled fields as plain data, and torch's weights-only unpickler runs again. No
class or function of the checkpoint's code is ever imported or called.

Mapping (reference key → flairlab key; `E` / `e` embedding name, `U` / `u` encoder stack, `M` /
`m` modality, `g` band group, `i` block; `d` encoder width, `dd` decoder width, `w` the stack's
width, `h·dh` heads × head width, `C_g` channels of band group g, `p` patch px): see `MAPPING`
(printed by `mapping_table()`). Reference modality names differ in two places: `s1_des` is
flairlab's `s1_desc`, `aerial_rlt` is `rlt`; S2-NAIP's single `s1` series feeds both flairlab S1
keys through one shared embedding (the reference README's own cross-dataset recipe), and the S1
group was called `sen1` before IGNF/MAESTRO@66018a1.

What the weights do not say — image sizes, dates per series, target-normalisation groups, the PE
lattice — comes from the accompanying config (the reference's Hydra layout: `datasets.<name>.<mod>`
with `image_size`, `patch_size.mae`, `bands`, `norm_bands`, `num_dates`, `norm_fac`, `log_scale`,
`rescale_elev`, `name_group`, `name_embed`), else from the reference's dataset defaults
(`REFERENCE_DATASETS`, IGNF/MAESTRO@6a30075 `maestro/conf/dataset/*.py`); the report says which.

Known reference quirk, not reproduced: in group fusion modes the reference decoder re-inserts the
mask tokens of a group at the positions given by an unstable `argsort` of the mask, while the
tokens were gathered in sorted order; in a group mixing modalities with different mask tokens (S1
ascending + descending) a descending-orbit mask token can land on an ascending-orbit position. Only
the S1 decoder input is affected — the encoder, hence fine-tuning, is not. flairlab scatters every
mask token back to its own position.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flairlab.data.errors import DataError
from flairlab.models.mae import MAE
from flairlab.models.mae_config import SIZES, MAEConfig, ModalityConfig

# -- names ----------------------------------------------------------------------------------
REF_TO_FLAIR = {"aerial": "aerial", "aerial_rlt": "rlt", "dem": "dem", "spot": "spot",
                "s2": "s2", "s1_asc": "s1_asc", "s1_des": "s1_desc"}  # fmt: skip
FLAIR_TO_REF = {v: k for k, v in REF_TO_FLAIR.items()}
SPLIT_MODALITIES = {"s1": ("s1_asc", "s1_desc")}  # S2-NAIP: one S1 series → both flairlab S1 keys
UNIT_ALIASES = {"sen1": "s1"}  # S1 group name before IGNF/MAESTRO@66018a1 (2025-12-22)
REF_SIZES = {"tiny": "tiny", "small": "small", "medium": "medium", "base": "medium",
             "large": "large"}  # fmt: skip
REF_DIM_HEAD, REF_DECODER_DIM_HEAD = 64, 32  # every reference size preset
IGNORED_PREFIXES = ("heads.",)  # task heads: untrained in pre-training checkpoints

# -- the mapping table ------------------------------------------------------------------------
SAME, MASK_TOKEN, CONV1X1 = "same", "mask_token", "conv1x1"
MAPPING: tuple[tuple[str, str, str, str, str], ...] = (
    # scope, reference key pattern, flairlab key pattern, shape (reference → flairlab), kind
    ("embed", "patch_embed.{E}.patchify_bands.{g}.conv.weight", "patch_embed.{e}.proj.{g}.weight",
     "(d, C_g, p, p)", SAME),
    ("embed", "patch_embed.{E}.patchify_bands.{g}.conv.bias", "patch_embed.{e}.proj.{g}.bias",
     "(d,)", SAME),
    ("embed", "patch_embed.{E}.patchify_bands.{g}.norm.weight", "patch_embed.{e}.norm.{g}.weight",
     "(d,)", SAME),
    ("embed", "patch_embed.{E}.patchify_bands.{g}.norm.bias", "patch_embed.{e}.norm.{g}.bias",
     "(d,)", SAME),
    ("block", "{S}.layers.{i}.0.norm.weight", "{s}.blocks.{i}.0.norm.weight", "(w,)", SAME),
    ("block", "{S}.layers.{i}.0.norm.bias", "{s}.blocks.{i}.0.norm.bias", "(w,)", SAME),
    ("block", "{S}.layers.{i}.0.to_qkv.weight", "{s}.blocks.{i}.0.qkv.weight",
     "(3·h·dh, w)", SAME),
    ("block", "{S}.layers.{i}.0.to_out.0.weight", "{s}.blocks.{i}.0.proj.weight",
     "(w, h·dh)", SAME),
    ("block", "{S}.layers.{i}.0.to_out.0.bias", "{s}.blocks.{i}.0.proj.bias", "(w,)", SAME),
    ("block", "{S}.layers.{i}.1.net.0.weight", "{s}.blocks.{i}.1.0.weight", "(w,)", SAME),
    ("block", "{S}.layers.{i}.1.net.0.bias", "{s}.blocks.{i}.1.0.bias", "(w,)", SAME),
    ("block", "{S}.layers.{i}.1.net.1.weight", "{s}.blocks.{i}.1.1.weight", "(mlp, w)", SAME),
    ("block", "{S}.layers.{i}.1.net.1.bias", "{s}.blocks.{i}.1.1.bias", "(mlp,)", SAME),
    ("block", "{S}.layers.{i}.1.net.4.weight", "{s}.blocks.{i}.1.3.weight", "(w, mlp)", SAME),
    ("block", "{S}.layers.{i}.1.net.4.bias", "{s}.blocks.{i}.1.3.bias", "(w,)", SAME),
    ("stack", "{S}.norm.weight", "{s}.norm.weight", "(w,)", SAME),
    ("stack", "{S}.norm.bias", "{s}.norm.bias", "(w,)", SAME),
    ("unit", "enc_to_dec.{U}.weight", "enc_to_dec.{u}.weight", "(dd, d), only if d ≠ dd", SAME),
    ("unit", "enc_to_dec.{U}.bias", "enc_to_dec.{u}.bias", "(dd,), only if d ≠ dd", SAME),
    ("modality", "mask_token.{M}", "mask_tokens.{m}", "(1, G, 1, 1, dd) → (G, dd)", MASK_TOKEN),
    ("pixel", "embed_to_rec.{E}.pixelify_bands.{g}.conv.weight", "pixel_heads.{m}.{g}.weight",
     "(p²·C_g, dd, 1, 1) → (p²·C_g, dd)", CONV1X1),
    ("pixel", "embed_to_rec.{E}.pixelify_bands.{g}.conv.bias", "pixel_heads.{m}.{g}.bias",
     "(p²·C_g,)", SAME),
)  # fmt: skip
# stacks of transformer blocks: reference prefix, flairlab prefix (S / s in MAPPING)
STACKS = (
    ("encoder.{U}", "encoders.{u}"),
    ("encoder_inter", "inter"),
    ("decoder.{U}", "decoders.{u}"),
)


def mapping_table() -> str:
    """`MAPPING` and `STACKS` as a Markdown table (for docs and reports)."""
    rows = ["| reference key | flairlab key | shape | conversion |", "|---|---|---|---|"]
    rows += [f"| `{r}` | `{f}` | {s} | {k} |" for _, r, f, s, k in MAPPING]
    rows += ["", "Stacks `{S}` → `{s}`: " + ", ".join(f"`{r}` → `{f}`" for r, f in STACKS)
             + " (w = d for encoders, dd for decoders)."]  # fmt: skip
    return "\n".join(rows)


# -- the reference's dataset defaults ---------------------------------------------------------
@dataclass
class RefInput:
    """One input modality as the reference configures it (field names as in its configs).

    bands: channel count, or nested file-band indices (one list per token band group);
    norm_bands: target-normalisation group lengths (None = one group per token band group)."""

    image_size: int
    patch_size: int
    bands: int | list[list[int]]
    norm_fac: float | None = None
    norm_bands: list[int] | None = None
    num_dates: int = 1
    log_scale: bool = False
    rescale_elev: bool = False
    mask_threshold: float = 0.0
    name_group: str | None = None
    name_embed: str | None = None

    @property
    def file_bands(self) -> list[int]:
        """File band indices in the order the model sees them."""
        if isinstance(self.bands, int):
            return list(range(self.bands))
        return [i for group in self.bands for i in group]


@dataclass
class RefDataset:
    crop_meters: float
    grid_pos_enc: int
    inputs: dict[str, RefInput]


# IGNF/MAESTRO@6a30075 maestro/conf/dataset/flair.py and s2_naip.py (defaults of every field)
REFERENCE_DATASETS: dict[str, RefDataset] = {
    "flair": RefDataset(102.4, 160, {
        "aerial": RefInput(512, 16, [[3, 0, 1, 2]], 255.0, [1, 3]),
        "dem": RefInput(512, 32, 2, 1000.0, rescale_elev=True),
        "spot": RefInput(64, 4, 4, 2000.0),
        "s2": RefInput(10, 2, 10, 5000.0, [4, 4, 2], num_dates=16),
        "s1_asc": RefInput(10, 2, 2, 5.0, [1, 1], num_dates=4, log_scale=True, name_group="s1"),
        "s1_des": RefInput(10, 2, 2, 5.0, [1, 1], num_dates=4, log_scale=True, name_group="s1"),
    }),
    "s2_naip": RefDataset(120.0, 192, {
        "aerial": RefInput(384, 16, [[3, 0, 1, 2]], 255.0, [1, 3]),
        "spot": RefInput(128, 16, 3, 255.0),
        "s2": RefInput(12, 2, 10, 5000.0, [4, 4, 2], num_dates=16),
        "s1": RefInput(12, 2, 2, 20.0, [1, 1], num_dates=4),
    }),
}  # fmt: skip



def preprocessing_differences(modalities: dict[str, str], dataset: str) -> list[str]:
    """Where flairlab's data pipeline prepares a modality differently from the reference run that
    trained the weights. modalities: flairlab key → reference modality; dataset: reference dataset
    (`REFERENCE_DATASETS`). Checked: file band order fed to the model, ln / division scaling,
    the DEM transform [DSM, 30·(DSM − DTM)]. [] means the same inputs."""
    from flairlab.data.catalog import load_catalog
    from flairlab.data.dataset import band_indices

    ref = REFERENCE_DATASETS.get(dataset)
    if ref is None:
        return [f"reference dataset {dataset!r} unknown: input conventions not checked"]
    cat, out = load_catalog(), []
    for key, M in modalities.items():
        spec = ref.inputs.get(M)
        if spec is None:
            out.append(f"{key}: no {dataset} input named {M!r}")
            continue
        order = band_indices(key, cat)
        if order != spec.file_bands:
            out.append(f"{key}: file bands {order} (flairlab) vs {spec.file_bands} ({dataset})")
        sc = cat.modality(key).scaling
        mine = (bool(sc and sc.log), float(sc.divide_by) if sc else 1.0)
        theirs = (spec.log_scale, float(spec.norm_fac or 1.0))
        if mine != theirs:
            out.append(f"{key}: scaling {_scaling(*mine)} (flairlab) vs {_scaling(*theirs)} "
                       f"({dataset})")  # fmt: skip
        if (key == "dem") != spec.rescale_elev:
            out.append(f"{key}: DEM transform {key == 'dem'} (flairlab) vs {spec.rescale_elev}")
    return out


def _scaling(log: bool, div: float) -> str:
    return f"{'ln(x)' if log else 'x'}/{div:g}"

# -- reading files without unpickling code -----------------------------------------------------
class Opaque(dict):
    """Inert stand-in for a class pickled in a checkpoint (never imported): keeps its dict items,
    its pickled state (`__setstate__`) and constructor arguments as plain data."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE: qualname(*args)
        super().__init__()
        self.__dict__["_args"] = list(args) + ([kwargs] if kwargs else [])

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def plain(self) -> Any:
        """Items, then pickled fields (a dataclass's `__dict__`), as one plain dict."""
        state = self.__dict__.get("_state")
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        out = dict(self)
        if isinstance(state, dict):
            out.update(state)
        elif state is not None:
            out["_state"] = state
        if not out and self.__dict__.get("_args"):
            out["_args"] = self.__dict__["_args"]
        return out


def _stand_in(qualname: str) -> type[Opaque]:
    return type(qualname.rsplit(".", 1)[-1], (Opaque,), {"qualname": qualname})


def to_plain(obj: Any) -> Any:
    """Replace every `Opaque` (recursively) by plain data; tensors are kept."""
    if isinstance(obj, Opaque):
        return to_plain(obj.plain())
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj


def load_torch_file(path: str | Path) -> Any:
    """`torch.load(weights_only=True)`; if the file holds non-tensor classes, the same
    weights-only unpickler with those names bound to inert `Opaque` stand-ins. Returns the object
    with stand-ins (use `to_plain`)."""
    import pickle

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as first:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as err:  # e.g. a legacy (non-zip) torch file
            raise DataError(f"cannot read checkpoint with weights_only=True ({first}) and "
                            f"cannot list its classes ({err})", path=path) from err  # fmt: skip
        stand_ins = [(_stand_in(n), n) for n in names]
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise DataError(f"not a readable torch checkpoint ({err})", path=path) from err


@dataclass
class ReferenceCheckpoint:
    """Reference-layout weights with the wrapper prefix removed, plus what came with them."""

    state: dict[str, Tensor]
    hparams: dict[str, Any]  # Lightning `hyper_parameters` as plain data ({} if none)
    config: dict[str, Any]  # an embedded reference config ({} if none)
    source: str
    prefix: str  # "model.", "ema_model." or "" (bare)
    ignored: list[str]  # keys deliberately not imported


def read_reference(path: str | Path, weights: str = "model") -> ReferenceCheckpoint:
    """Read a reference checkpoint: Lightning `.ckpt` (`state_dict` inside), bare state dict
    or safetensors. `weights`: "model" (the trained weights) or "ema" (Lightning `ema_model.`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint file not found", path=path)
    if weights not in ("model", "ema"):
        raise DataError("weights", expected=["model", "ema"], found=weights)
    hparams: dict[str, Any] = {}
    config: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
            meta = f.metadata() or {}
        if "reference_config" in meta:
            config = json.loads(meta["reference_config"])
    else:
        obj = to_plain(load_torch_file(path))
        if not isinstance(obj, dict):
            raise DataError("checkpoint content", path=path, expected="a dict of tensors",
                            found=type(obj).__name__)  # fmt: skip
        raw = obj.get("state_dict", obj)
        hparams = obj.get("hyper_parameters") or {}
        config = obj.get("reference_config") or {}
    tensors = {k: v for k, v in raw.items() if isinstance(v, Tensor)}
    if not tensors:
        raise DataError("checkpoint holds no tensors", path=path)
    prefix = _weights_prefix(tensors, weights, path)
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    ignored = sorted(k for k in tensors if not k.startswith(prefix))
    ignored += sorted(prefix + k for k in state if k.startswith(IGNORED_PREFIXES))
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    return ReferenceCheckpoint(state, hparams, config, str(path), prefix, ignored)


def _weights_prefix(tensors: dict[str, Tensor], weights: str, path: Path) -> str:
    starts = {k.split("patch_embed.", 1)[0] for k in tensors if "patch_embed." in k}
    if weights == "ema":
        if "ema_model." not in starts:
            raise DataError("no EMA weights in checkpoint", path=path, expected="ema_model.* keys",
                            found=sorted(starts))  # fmt: skip
        return "ema_model."
    if "model." in starts:
        return "model."
    if "" in starts:
        return ""
    if len(starts) == 1:
        return starts.pop()
    raise DataError("no reference MAE weights (patch_embed.*) in checkpoint", path=path,
                    expected="keys model.patch_embed.* or patch_embed.*", found=sorted(starts))


# -- accompanying configuration -------------------------------------------------------------------
@dataclass
class RefConfig:
    """What a reference configuration says (all optional): dataset name and inputs, model and mask
    fields. `given` lists the dotted fields that came from a file rather than defaults."""

    dataset: str = ""
    inputs: dict[str, RefInput] = field(default_factory=dict)
    grid_pos_enc: int | None = None
    crop_meters: float | None = None
    model: dict[str, Any] = field(default_factory=dict)
    mask: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # flairlab-only fields (head widths)
    given: list[str] = field(default_factory=list)


def parse_reference_config(cfg: dict[str, Any], hparams: dict[str, Any] | None = None) -> RefConfig:
    """Read the reference's Hydra layout (`datasets` / `model` / `mask`) and Lightning
    hyper-parameters (`fusion_mode`, `inter_depth`, `model_size`, `loss`, `use_date_enc`,
    `mask`). Input fields missing from the file fall back to `REFERENCE_DATASETS`."""
    out = RefConfig()
    hp = dict(hparams or {})
    model = {**{k: hp[k] for k in ("fusion_mode", "inter_depth", "model_size", "loss",
                                   "use_date_enc") if k in hp},
             **(cfg.get("model") or {})}  # fmt: skip
    out.model = model
    out.mask = {**(hp.get("mask") or {}), **(cfg.get("mask") or {})}
    out.extra = dict(cfg.get("flairlab") or {})
    out.given = [f"model.{k}" for k in model] + [f"mask.{k}" for k in out.mask]
    ds = cfg.get("datasets") or {}
    name = ds.get("name_dataset", "")
    dcfg = ds.get(name) or {}
    out.dataset = name
    base = REFERENCE_DATASETS.get(name)
    out.grid_pos_enc = dcfg.get("grid_pos_enc", base.grid_pos_enc if base else None)
    out.crop_meters = dcfg.get("crop_meters", base.crop_meters if base else None)
    names = dcfg.get("filter_inputs") or [k for k, v in dcfg.items() if _looks_like_input(v)]
    for key in names:
        spec = dcfg.get(key) or {}
        default = base.inputs.get(key) if base else None
        if not spec and default is None:
            raise DataError(f"reference config: input {key!r} has no settings",
                            expected=f"datasets.{name}.{key}", found="nothing")  # fmt: skip
        vals = dict(vars(default)) if default is not None else {}
        for f_name in RefInput.__dataclass_fields__:
            if f_name in spec:
                v = spec[f_name]
                vals[f_name] = v.get("mae") if f_name == "patch_size" and isinstance(v, dict) else v
                out.given.append(f"datasets.{name}.{key}.{f_name}")
        try:
            out.inputs[key] = RefInput(**vals)
        except TypeError as err:
            raise DataError(f"reference config: input {key!r} incomplete ({err})",
                            expected="image_size, patch_size.mae, bands") from err  # fmt: skip
    return out


def _looks_like_input(v: Any) -> bool:
    return isinstance(v, dict) and "image_size" in v and "bands" in v


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A reference config file: YAML (`yaml.safe_load`) or JSON."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise DataError(f"unreadable reference config ({err})", path=path) from err
    if not isinstance(data, dict):
        raise DataError("reference config", path=path, expected="a mapping",
                        found=type(data).__name__)  # fmt: skip
    return data


CONFIG_NAMES = ("config.yaml", "config.yml", "config.json", ".hydra/config.yaml")


def find_config(ckpt: Path) -> Path | None:
    """A reference config beside (or one folder above) a checkpoint, if any."""
    for folder in (ckpt.parent, ckpt.parent.parent):
        for name in CONFIG_NAMES:
            p = folder / name
            if p.is_file() and "datasets" in read_config_file(p):
                return p
    return None


# -- inferring flairlab's configuration ---------------------------------------------------------
@dataclass
class ReferenceNaming:
    """flairlab name → reference name, per modality key, embedding and encoder stack."""

    modalities: dict[str, str]
    embeds: dict[str, str]
    units: dict[str, str]
    dataset: str = ""

    @classmethod
    def default(cls, config: MAEConfig) -> ReferenceNaming:
        def ref(name: str) -> str:
            return FLAIR_TO_REF.get(name, name)

        return cls(
            {k: ref(k) for k in config.modalities},
            {m.embed: ref(m.embed) for m in config.modalities.values()},
            {u: ref(u) for u in config.units},
        )


def _layers(state: dict[str, Tensor], stack: str) -> int:
    pat = re.compile(rf"^{re.escape(stack)}\.layers\.(\d+)\.")
    idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def _dim(state: dict[str, Tensor], pattern: str, default: int) -> int:
    """First dimension of the first tensor whose key matches `pattern` (`default` if none)."""
    pat = re.compile(pattern)
    return next((int(v.shape[0]) for k, v in state.items() if pat.match(k)), default)


def _names(state: dict[str, Tensor], pattern: str) -> list[str]:
    pat = re.compile(pattern)
    out: list[str] = []
    for k in state:
        m = pat.match(k)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def infer_config(
    ck: ReferenceCheckpoint, ref: RefConfig
) -> tuple[MAEConfig, ReferenceNaming, dict[str, str]]:
    """flairlab `MAEConfig` + naming from reference weights (shapes) and config.

    Returns (config, naming, provenance: field → "weights" / "checkpoint" / "config" /
    "default <dataset> geometry (assumed)")."""
    s, prov = ck.state, {}
    mods = _names(s, r"^mask_token\.([^.]+)$")
    embeds = _names(s, r"^patch_embed\.([^.]+)\.patchify_bands\.")
    units = _names(s, r"^encoder\.([^.]+)\.layers\.")
    if not mods or not embeds or not units:
        raise DataError("not a reference MAE state dict", path=ck.source,
                        expected="mask_token.*, patch_embed.*, encoder.* keys",
                        found=f"{len(mods)} mask tokens, {len(embeds)} embeddings, "
                        f"{len(units)} encoders")  # fmt: skip
    dataset = ref.dataset or ("s2_naip" if "s1" in mods else "flair")
    prov["dataset"] = "config" if ref.dataset else f"modality names → {dataset} (assumed)"
    defaults = REFERENCE_DATASETS[dataset].inputs if dataset in REFERENCE_DATASETS else {}
    # the reference's input order (its state dicts list modalities alphabetically)
    order = list(ref.inputs or defaults)
    mods.sort(key=lambda M: order.index(M) if M in order else len(order))

    # widths and depths (weights)
    d = s[f"patch_embed.{embeds[0]}.patchify_bands.0.conv.weight"].shape[0]
    dd = s[f"mask_token.{mods[0]}"].shape[-1]
    n_enc = max(_layers(s, f"encoder.{u}") for u in units)
    n_inter = _layers(s, "encoder_inter")
    n_dec = max(_layers(s, f"decoder.{u}") for u in units)
    inner = _dim(s, r"^encoder\.[^.]+\.layers\.\d+\.0\.to_qkv\.weight$", 0) // 3
    hidden = _dim(s, r"^encoder\.[^.]+\.layers\.\d+\.1\.net\.1\.weight$", 0)
    dec_inner = _dim(s, r"^decoder\.[^.]+\.layers\.\d+\.0\.to_qkv\.weight$", 0) // 3
    dec_hidden = _dim(s, r"^decoder\.[^.]+\.layers\.\d+\.1\.net\.1\.weight$", 4 * d)
    model_size = str(ref.model.get("model_size", ""))
    size_name = REF_SIZES.get(model_size) or (model_size if model_size in SIZES else "")
    prov["size"] = "checkpoint" if size_name else "embed width (assumed)"
    if not size_name:
        size_name = next((k for k in ("tiny", "small", "medium", "large")
                          if SIZES[k]["embed_dim"] == d), "tiny")  # fmt: skip
    preset = SIZES[size_name]  # head widths: flairlab extras, else the size preset (ref: 64 / 32)
    dh = int(ref.extra.get("dim_head") or preset.get("dim_head", REF_DIM_HEAD))
    ddh = int(ref.extra.get("decoder_dim_head") or preset.get("decoder_dim_head",
                                                              REF_DECODER_DIM_HEAD))  # fmt: skip
    if inner % dh or (dec_inner and dec_inner % ddh):
        raise DataError("attention width is not a multiple of the head width", path=ck.source,
                        expected=f"{dh}·heads / {ddh}·heads", found=(inner, dec_inner))
    hp_inter = ref.model.get("inter_depth")
    if hp_inter is not None and int(hp_inter) != n_inter:
        raise DataError("inter_depth of the config does not match the weights", path=ck.source,
                        expected=f"{n_inter} encoder_inter layers", found=hp_inter)  # fmt: skip

    # fusion mode
    hp_mode = ref.model.get("fusion_mode")
    if units == ["shared"]:
        base = "shared"
    elif hp_mode:
        base = str(hp_mode)
    elif any(u not in mods for u in units) or n_inter:
        base = "group"  # with one modality per group, group ≡ mod
    else:
        raise DataError("fusion mode ambiguous from the weights alone (mod or monotemp: same "
                        "tensors)", path=ck.source, expected="fusion_mode in the checkpoint's "
                        "hyper-parameters or the reference config", found="neither")  # fmt: skip
    if base not in ("shared", "monotemp", "mod", "group") or (n_inter and base not in
                                                              ("mod", "group")):  # fmt: skip
        raise DataError("reference fusion mode", expected="shared, monotemp, mod, group "
                        "(inter layers only with mod / group)", found=(base, n_inter))  # fmt: skip
    mode = f"inter-{base}" if n_inter else base
    prov["fusion_mode"] = "checkpoint" if hp_mode else "weights (encoder names)"

    # modalities
    modalities: dict[str, ModalityConfig] = {}
    naming = ReferenceNaming({}, {}, {}, dataset)
    for M in mods:
        spec = ref.inputs.get(M) or defaults.get(M)
        src = "config" if M in ref.inputs else f"default {dataset} geometry (assumed)"
        E = (spec.name_embed if spec and spec.name_embed else M)
        if E not in embeds:
            raise DataError(f"no patch embedding for reference modality {M!r}", path=ck.source,
                            expected=f"name_embed in the config, one of {embeds}",
                            found=E)  # fmt: skip
        G = s[f"mask_token.{M}"].shape[1]
        chans = [s[f"patch_embed.{E}.patchify_bands.{g}.conv.weight"].shape[1] for g in range(G)]
        p = s[f"patch_embed.{E}.patchify_bands.0.conv.weight"].shape[-1]
        if spec is None:
            raise DataError(f"image size and dates of reference modality {M!r} unknown",
                            path=ck.source, expected=f"datasets.<name>.{M} in the config",
                            found="nothing")  # fmt: skip
        if spec.patch_size != p:
            src += f"; patch {p} from the weights (config said {spec.patch_size})"
        bands = _contiguous(chans)
        norm = _contiguous(spec.norm_bands) if spec.norm_bands else bands  # ref default
        if sum(len(g) for g in norm) != sum(chans):
            raise DataError(f"norm_bands of reference modality {M!r}", expected=f"{sum(chans)} "
                            "channels in all", found=spec.norm_bands)  # fmt: skip
        group = _unit_of(M, spec, base, units, ck.source)
        keys = SPLIT_MODALITIES.get(M) if M not in REF_TO_FLAIR else (REF_TO_FLAIR[M],)
        if keys is None:
            raise DataError("reference modality without a flairlab counterpart", path=ck.source,
                            expected=sorted([*REF_TO_FLAIR, *SPLIT_MODALITIES]), found=M)
        if len(keys) > 1 and base in ("mod", "monotemp"):
            raise DataError(f"reference modality {M!r} has its own encoder in mode {base!r}; "
                            f"flairlab's {list(keys)} would need one each", path=ck.source)
        e = REF_TO_FLAIR.get(E, E)
        u = UNIT_ALIASES.get(group, REF_TO_FLAIR.get(group, group))
        for k in keys:
            modalities[k] = ModalityConfig(
                image_size=spec.image_size, patch_size=p, n_dates=spec.num_dates,
                in_chans=sum(chans), group=u if base in ("group",) else "",
                embed=e, bands=bands if G > 1 else None, norm_bands=norm,
            )  # fmt: skip
            naming.modalities[k] = M
            prov[f"modalities.{k}"] = src
        naming.embeds[e] = E
        naming.units[u if base != "shared" else "shared"] = group
    for u_ref in units:
        naming.units.setdefault(REF_TO_FLAIR.get(u_ref, UNIT_ALIASES.get(u_ref, u_ref)), u_ref)
    mask = ref.mask
    tile = REFERENCE_DATASETS.get(dataset, REFERENCE_DATASETS["flair"])  # crop and PE lattice
    config = MAEConfig(
        modalities=modalities, size=size_name, fusion_mode=mode, inter_depth=n_inter,
        embed_dim=d, depth=n_enc + n_inter, num_heads=inner // dh, dim_head=dh,
        mlp_ratio=hidden / d, decoder_dim=dd, decoder_depth=n_dec,
        decoder_heads=max(dec_inner // ddh, 1), decoder_dim_head=ddh,
        decoder_mlp_hidden=dec_hidden,
        tile_m=float(ref.crop_meters or tile.crop_meters),
        pe_grid=int(ref.grid_pos_enc or tile.grid_pos_enc),
        use_date_enc=bool(ref.model.get("use_date_enc", True)),
        loss=str(ref.model.get("loss", "l1_norm")),
        mask_ratio=float(mask.get("mask_ratio", 0.75)),
        mask_scale=float(mask.get("mask_scale", 0.0)),
        mask_mod=float(mask.get("mask_mod") or 0.0) if mask else 0.25,
        mask_bands=float(mask.get("mask_bands") or 0.0),
        mask_dates=float(mask.get("mask_dates") or 0.0) if mask else 0.25,
        mask_loc=float(mask.get("mask_loc") or 0.0) if mask else 0.25,
    )  # fmt: skip
    prov["pe_grid"] = "config" if ref.grid_pos_enc and ref.dataset else (
        f"default {dataset} geometry (assumed)")  # fmt: skip
    prov["mask"] = "checkpoint" if mask else "reference defaults (assumed)"
    return config, naming, prov


def _contiguous(lengths: list[int]) -> list[list[int]]:
    out, start = [], 0
    for n in lengths:
        out.append(list(range(start, start + int(n))))
        start += int(n)
    return out


def _unit_of(M: str, spec: RefInput | None, base: str, units: list[str], source: str) -> str:
    """Reference encoder stack that sees modality M."""
    if base == "shared":
        return "shared"
    if base in ("mod", "monotemp"):
        return M
    want = (spec.name_group if spec is not None else None) or M
    if want in units:
        return want
    for alias, name in UNIT_ALIASES.items():  # S1 group named "sen1" in older checkpoints
        if name == want and alias in units:
            return alias
    raise DataError(f"cannot tell the encoder group of reference modality {M!r}", path=source,
                    expected=f"name_group in the config, one of {units}",
                    found=spec.name_group if spec else None)  # fmt: skip


# -- mapping tensors --------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyPair:
    ref: str
    flair: str
    kind: str


def key_pairs(config: MAEConfig, naming: ReferenceNaming) -> list[KeyPair]:
    """Every (reference key, flairlab key) of a model, expanded from `MAPPING`."""
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for scope, r, f, _, kind in MAPPING:
        rows.setdefault(scope, []).append((r, f, kind))
    out: list[KeyPair] = []

    def add(scope: str, **names: Any) -> None:
        out.extend(KeyPair(r.format(**names), f.format(**names), k) for r, f, k in rows[scope])

    seen: set[str] = set()
    for m in config.modalities.values():
        if m.embed not in seen:
            seen.add(m.embed)
            for g in range(len(m.band_groups)):
                add("embed", E=naming.embeds[m.embed], e=m.embed, g=g)
    stacks = [(STACKS[0][0].format(U=naming.units[u]), STACKS[0][1].format(u=u),
               config.encoder_depth) for u in config.units]  # fmt: skip
    if config.is_inter:
        stacks.append((STACKS[1][0], STACKS[1][1], config.inter_depth))
    stacks += [(STACKS[2][0].format(U=naming.units[u]), STACKS[2][1].format(u=u),
                config.decoder_depth) for u in config.units]  # fmt: skip
    for S, s_, depth in stacks:
        for i in range(depth):
            add("block", S=S, s=s_, i=i)
        add("stack", S=S, s=s_)
    if config.embed_dim != config.decoder_dim:
        for u in config.units:
            add("unit", U=naming.units[u], u=u)
    for k, m in config.modalities.items():
        add("modality", M=naming.modalities[k], m=k)
        for g in range(len(m.band_groups)):
            add("pixel", E=naming.embeds[m.embed], m=k, g=g)
    return out


def _to_flair(t: Tensor, kind: str) -> Tensor:
    if kind == MASK_TOKEN:
        return t.reshape(t.shape[1], t.shape[-1]) if t.ndim == 5 else t
    if kind == CONV1X1:
        return t.reshape(t.shape[:2]) if t.ndim == 4 and t.shape[2:] == (1, 1) else t
    return t


def _to_ref(t: Tensor, kind: str) -> Tensor:
    if kind == MASK_TOKEN:
        return t.reshape(1, t.shape[0], 1, 1, t.shape[1])
    if kind == CONV1X1:
        return t.reshape(*t.shape, 1, 1)
    return t


def map_state(
    ref_state: dict[str, Tensor], model: MAE, naming: ReferenceNaming, source: str = ""
) -> dict[str, Tensor]:
    """Reference tensors → flairlab state dict for `model`; DataError listing unmapped,
    missing and mis-shaped keys (all of them, grouped) when anything does not fit."""
    own = model.state_dict()
    pairs = key_pairs(model.config, naming)
    used = {p.ref for p in pairs}
    unmapped = sorted(set(ref_state) - used)
    missing = sorted({p.ref for p in pairs if p.ref not in ref_state})
    out, shapes = {}, []
    for p in pairs:
        if p.ref not in ref_state:
            continue
        t = _to_flair(ref_state[p.ref], p.kind)
        want = own[p.flair].shape
        if t.shape != want:
            shapes.append(f"{p.ref} {tuple(ref_state[p.ref].shape)} → {p.flair} {tuple(want)}")
            continue
        out[p.flair] = t.to(own[p.flair].dtype)  # load_state_dict copies
    if unmapped or missing or shapes:
        raise DataError(_problems(unmapped, missing, shapes), path=source or None)
    return out


def _problems(unmapped: list[str], missing: list[str], shapes: list[str], n: int = 12) -> str:
    def part(title: str, items: list[str]) -> str:
        more = f" … (+{len(items) - n})" if len(items) > n else ""
        return f"{title} ({len(items)}): " + ", ".join(items[:n]) + more

    parts = [part(t, i) for t, i in (("unmapped reference keys", unmapped),
             ("missing reference keys", missing), ("mis-shaped", shapes)) if i]  # fmt: skip
    return "reference weights do not fit flairlab's MAE — " + "; ".join(parts)


# -- import / export ----------------------------------------------------------------------------
@dataclass
class ImportReport:
    """What an import did: source, weight set, inferred fields and where each came from."""

    source: str
    weights: str
    n_tensors: int
    n_parameters: int
    provenance: dict[str, str]
    ignored: list[str]
    naming: ReferenceNaming
    config_file: str = ""

    def reference_json(self) -> dict[str, Any]:
        """The part saved next to a converted model (JSON)."""
        return {
            "source": self.source, "weights": self.weights, "config_file": self.config_file,
            "dataset": self.naming.dataset, "modalities": self.naming.modalities,
            "embeds": self.naming.embeds, "units": self.naming.units,
            "provenance": self.provenance, "ignored_keys": self.ignored[:50],
            "n_ignored_keys": len(self.ignored),
        }  # fmt: skip


def import_reference(
    path: str | Path, *, weights: str = "model", config: str | Path | dict | None = None
) -> tuple[MAE, ImportReport]:
    """A flairlab `MAE` loaded from a reference checkpoint (see the module docstring).

    config: a reference config (file or dict, Hydra layout) that overrides the one embedded in the
    checkpoint or found beside it (`config.yaml`, `.hydra/config.yaml`, ...)."""
    ck = read_reference(path, weights)
    cfg_file = ""
    if isinstance(config, dict):
        cfg = config
    elif config:
        cfg, cfg_file = read_config_file(config), str(config)
    elif ck.config:
        cfg, cfg_file = ck.config, "embedded"
    else:
        found = find_config(Path(path))
        cfg, cfg_file = (read_config_file(found), str(found)) if found else ({}, "")
    ref = parse_reference_config(cfg, ck.hparams)
    mae_cfg, naming, prov = infer_config(ck, ref)
    model = MAE(mae_cfg)
    state = map_state(ck.state, model, naming, ck.source)
    model.load_state_dict(state, strict=True)
    report = ImportReport(
        source=ck.source, weights=weights, n_tensors=len(ck.state),
        n_parameters=sum(v.numel() for v in state.values()), provenance=prov,
        ignored=ck.ignored, naming=naming, config_file=cfg_file,
    )  # fmt: skip
    return model, report


def export_reference(
    model: MAE, naming: ReferenceNaming | None = None, prefix: str = "model."
) -> dict[str, Tensor]:
    """flairlab `MAE` → reference-layout state dict (keys `prefix` + reference key). Where several
    flairlab tensors map to one reference tensor (S2-NAIP's shared S1), the first is written."""
    naming = naming or ReferenceNaming.default(model.config)
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for p in key_pairs(model.config, naming):
        key = prefix + p.ref
        if key not in out:
            out[key] = _to_ref(own[p.flair].detach().cpu(), p.kind).contiguous()
    return out


def reference_config(model: MAE, naming: ReferenceNaming | None = None) -> dict[str, Any]:
    """The reference Hydra-layout config (`datasets`, `model`, `mask`) describing `model`."""
    c = model.config
    naming = naming or ReferenceNaming.default(c)
    name = naming.dataset or "flair"
    base = REFERENCE_DATASETS.get(name, REFERENCE_DATASETS["flair"]).inputs
    inputs: dict[str, Any] = {}
    for k, m in c.modalities.items():
        M = naming.modalities[k]
        if M in inputs:
            continue
        default = base.get(M)
        lengths = _lengths(m.band_groups, f"modalities.{k}.bands")
        norm = _lengths(m.norm_bands or [list(range(m.in_chans))], f"modalities.{k}.norm_bands")
        unit = naming.units.get(c.encoder_of(k), c.encoder_of(k))
        inputs[M] = {
            "image_size": m.image_size, "patch_size": {"mae": m.patch_size},
            "bands": _ref_bands(default, lengths), "norm_bands": norm,
            "num_dates": m.n_dates,
            "norm_fac": default.norm_fac if default else None,
            "log_scale": default.log_scale if default else False,
            "rescale_elev": default.rescale_elev if default else False,
            "name_group": unit if c.fusion_mode in ("group", "inter-group") and unit != M
            else None,
            "name_embed": naming.embeds[m.embed] if naming.embeds[m.embed] != M else None,
        }  # fmt: skip
    size = "medium" if c.size == "base" else c.size  # the reference builds no "base"
    return {
        "datasets": {"name_dataset": name, name: {
            "filter_inputs": list(inputs), "grid_pos_enc": c.pe_grid, "crop_meters": c.tile_m,
            **inputs}},
        "model": {"fusion_mode": c.fusion_mode.removeprefix("inter-"),
                  "inter_depth": c.inter_depth, "model": "mae", "model_size": size,
                  "loss": c.loss, "use_date_enc": c.use_date_enc},
        "mask": {"mask_ratio": c.mask_ratio, "mask_scale": c.mask_scale,
                 "mask_mod": c.mask_mod or None, "mask_bands": c.mask_bands or None,
                 "mask_dates": c.mask_dates or None, "mask_loc": c.mask_loc or None},
        # not read by the reference (its sizes fix 64 / 32); lets any flairlab size round-trip
        "flairlab": {"dim_head": c.dim_head, "decoder_dim_head": c.decoder_dim_head},
    }  # fmt: skip


def _lengths(groups: list[list[int]], field_name: str) -> list[int]:
    """Sizes of band groups, which the reference can only express as consecutive channels."""
    if [i for g in groups for i in g] != list(range(sum(len(g) for g in groups))):
        raise DataError(f"model.{field_name}: the reference splits channels in order",
                        expected="consecutive groups such as [[0], [1, 2, 3]]", found=groups)
    return [len(g) for g in groups]


def _ref_bands(default: RefInput | None, lengths: list[int]) -> int | list[list[int]]:
    """The reference's `bands`: its default when the group sizes match (it carries the file-band
    order, e.g. aerial [[3, 0, 1, 2]]), else a channel count (one group) or consecutive groups."""
    if default is not None:
        b = default.bands
        if ([b] if isinstance(b, int) else [len(g) for g in b]) == lengths:
            return b
    return lengths[0] if len(lengths) == 1 else _contiguous(lengths)

def save_reference(
    model: MAE, path: str | Path, naming: ReferenceNaming | None = None
) -> Path:
    """Write `model` as a Lightning-style reference checkpoint (`.ckpt`, plain containers only:
    `state_dict` with `model.` keys, `hyper_parameters`, `reference_config`) or, for a
    `.safetensors` path, the bare reference state dict with the config in its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = reference_config(model, naming)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(export_reference(model, naming, prefix=""), str(tmp),
                  {"format": "pt", "reference_config": json.dumps(cfg)})  # fmt: skip
    else:
        hp = {**cfg["model"], "mask": cfg["mask"], "type_head": "attentive",
              "interpolate": "nearest", "use_ema": False}  # fmt: skip
        torch.save({"state_dict": export_reference(model, naming), "hyper_parameters": hp,
                    "reference_config": cfg,
                    # Lightning's load_from_checkpoint requires it: the reference's locked version
                    "pytorch-lightning_version": "2.5.1"}, tmp)  # fmt: skip
    tmp.replace(path)
    return path


__all__ = [
    "MAPPING", "REFERENCE_DATASETS", "ImportReport", "ReferenceNaming", "export_reference",
    "import_reference", "mapping_table", "read_reference", "save_reference",
]  # fmt: skip
