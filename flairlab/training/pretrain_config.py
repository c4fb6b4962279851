"""Pre-training configuration: dataclasses, YAML files with `--set` overrides, presets, data.

A run is `PretrainConfig` = model (`MAEConfig`) + data + train + seed / output_dir / resume,
stored as `pretrain_config.json` in the run folder and in every checkpoint. Presets are the YAML
files `configs/pretrain_<name>.yaml` of the project (`cpu`: 2-core demo; `full`: FLAIR-HUB R1
geometry, medium = paper "Base", GPUs).

The objective is `train.objective`: `mae` (masked reconstruction), `contrastive` (cross-modal
InfoNCE / CCL-K of `flairlab.training.contrastive` on unmasked tokens, no decoder) or `both`
(L = L_MAE + w·L_contrastive, w = `train.contrastive_weight`); `train.contrastive` holds the
`ContrastiveConfig` fields. Settings an objective does not use are rejected, not ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from torch.utils.data import Dataset, Subset

from flairlab.data.errors import DataError
from flairlab.models.mae_config import MAEConfig
from flairlab.training.compiling import compile_setting

_PACKAGE = Path(__file__).resolve().parents[1]  # flairlab/
# presets: configs/ of a source checkout, or a copy shipped inside the package
CONFIG_DIR = next((p for p in (_PACKAGE.parent / "configs", _PACKAGE / "configs") if p.is_dir()),
                  _PACKAGE.parent / "configs")  # fmt: skip


@dataclass
class DataConfig:
    source: str = "sample"  # catalog source ("sample", "flairhub"), a folder, or synthetic[:N]
    split: str = "train"
    n_patches: int = 0  # use only the first n patches (0 = all)
    num_workers: int = 0
    cache: bool = False  # keep decoded rasters in memory (~0.2 MB a patch at 128 px)


OBJECTIVES = ("mae", "contrastive", "both")


@dataclass
class TrainConfig:
    epochs: int = 10  # used when steps = 0
    steps: int = 0  # optimiser steps (the budget; 0: epochs × batches per epoch)
    batch_size: int = 4  # per device
    grad_accum: int = 1
    base_lr: float = 3e-5  # lr_max = base_lr·sqrt(B_total/3)
    warmup_frac: float = 0.2
    final_factor: float = 1e7
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 0.0  # max grad norm (0 = off)
    precision: str = "auto"  # auto | bf16-mixed | 16-mixed | 32-true
    accelerator: str = "auto"  # auto | cpu | cuda
    devices: int = 1  # per node; under torchrun the launcher's values win
    threads: int = 0  # torch threads (0: the free cores: affinity / cgroup quota − running jobs)
    log_every: int = 1  # optimizer steps between metric rows
    ckpt_every: int = 0  # optimizer steps between checkpoints (0 = at each epoch end)
    keep_checkpoints: int = 2
    stop_at_step: int = 0  # stop after this step (the schedule still spans all epochs); 0 = off
    objective: str = "mae"  # mae | contrastive | both
    contrastive_weight: float = 0.0  # w in L = L_MAE + w·L_contrastive (objective both: > 0)
    contrastive: dict[str, Any] = field(default_factory=dict)  # ContrastiveConfig fields
    compile: str | bool = "auto"  # torch.compile: auto (CUDA) | true | false (training.compiling)

    @property
    def uses_mae(self) -> bool:
        return self.objective in ("mae", "both")

    @property
    def uses_contrastive(self) -> bool:
        return self.objective in ("contrastive", "both")

    def __post_init__(self) -> None:
        if self.steps < 0 or (self.steps == 0 and self.epochs < 1):
            raise DataError("train.steps / train.epochs", expected="steps > 0, or epochs > 0",
                            found=f"steps {self.steps}, epochs {self.epochs}")  # fmt: skip
        self.compile = compile_setting(self.compile, "train.compile")
        if self.objective not in OBJECTIVES:
            raise DataError("train.objective", expected=OBJECTIVES, found=self.objective)
        w = self.contrastive_weight
        if self.objective == "both" and not w > 0:
            raise DataError("train.contrastive_weight (objective 'both')", expected="> 0", found=w)
        if self.objective != "both" and w != 0:
            raise DataError(
                "train.contrastive_weight is only used by objective 'both'",
                expected="0 or objective 'both'", found=f"{w} with objective {self.objective!r}",
            )  # fmt: skip
        if self.objective == "mae" and self.contrastive:
            raise DataError(
                "train.contrastive settings need objective 'contrastive' or 'both'",
                expected="no train.contrastive with objective 'mae'",
                found=sorted(self.contrastive),
            )

    def contrastive_config(self):  # -> flairlab.training.contrastive.ContrastiveConfig | None
        """The validated contrastive settings (None for objective 'mae')."""
        if not self.uses_contrastive:
            return None
        from flairlab.training.contrastive import ContrastiveConfig

        try:
            return ContrastiveConfig.from_dict(self.contrastive or {})
        except DataError as err:
            raise DataError(f"train.contrastive: {err}") from None


# fields that may change between a run and its resumption
RUN_CONTROL = {"output_dir", "resume", "data.num_workers", "data.cache"} | {
    f"train.{n}" for n in ("accelerator", "devices", "threads", "log_every", "ckpt_every",
                           "keep_checkpoints", "stop_at_step", "precision", "compile")
}  # fmt: skip


@dataclass
class PretrainConfig:
    model: MAEConfig = field(default_factory=MAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    output_dir: str = "runs/pretrain"
    resume: bool = False  # continue from output_dir's latest checkpoint

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["train"]["betas"] = list(self.train.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        data = dict(_mapping("config", data))
        _check_keys("", data, cls)
        for f in fields(cls):
            if f.name in ("model", "data", "train"):
                data[f.name] = _mapping(f.name, data.get(f.name))
            elif f.name in data:
                data[f.name] = _scalar(f.name, str(f.type), data[f.name])
        sub = {
            "model": MAEConfig.from_dict(data.pop("model", {}) or {}),
            "data": _sub(DataConfig, "data", data.pop("data", {})),
            "train": _sub(TrainConfig, "train", data.pop("train", {})),
        }
        cfg = cls(**sub, **data)
        cfg.train.betas = tuple(cfg.train.betas)
        return cfg

    def __post_init__(self) -> None:
        cc = self.train.contrastive_config()
        if cc is not None:
            missing = [m for m in cc.modalities if m not in self.model.modalities]
            if missing:
                raise DataError(
                    "train.contrastive.pairs: modalities absent from model.modalities",
                    expected=list(self.model.modalities), found=missing,
                )  # fmt: skip


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(name, expected="a section (mapping of fields)",
                        found=f"{type(value).__name__} {value!r}"[:80])  # fmt: skip
    return value


def _check_keys(prefix: str, data: dict[str, Any], cls: type) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DataError(f"{prefix or 'config'}: unknown fields", expected=sorted(known),
                        found=unknown)  # fmt: skip


def _sub(cls: type, name: str, data: dict[str, Any] | None) -> Any:
    data = dict(data or {})
    _check_keys(name, data, cls)
    for f in fields(cls):
        if f.name in data:
            data[f.name] = _scalar(f"{name}.{f.name}", str(f.type), data[f.name])
    return cls(**data)


def _scalar(field_name: str, type_name: str, value: Any) -> Any:
    """Check a scalar field's type; a float written `3e-4` (a string in YAML 1.1) becomes 3e-4."""
    if type_name == "float":
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif type_name in ("bool", "str"):
        if isinstance(value, bool if type_name == "bool" else str):
            return value
    else:
        return value
    raise DataError(field_name, expected=type_name, found=f"{type(value).__name__} {value!r}")


# -- configuration files ---------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """YAML config (or {}) with `a.b.c=value` overrides (values parsed as YAML scalars).
    `train.epochs=N` without `train.steps` sets `train.steps` to 0: the budget is then N epochs
    (the cpu preset's budget is in steps)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise DataError("config file not found", path=path) from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise DataError(f"not valid YAML{at}: {problem}", path=path) from None
        if not isinstance(data, dict):
            raise DataError("config file", path=path, expected="a mapping (key: value lines)",
                            found=type(data).__name__)  # fmt: skip
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise DataError("--set override", expected="key=value", found=item)
        node = data
        *parents, leaf = parts
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise DataError(f"--set {item}: {'.'.join(parts[: i + 1])} is a value, not a "
                                "section", expected="a section such as train.epochs",
                                found=f"{'.'.join(parts[: i + 1])} = {node!r}")  # fmt: skip
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise DataError(f"--set {item}: value is not valid YAML ({err.problem})") from None
    keys = {item.partition("=")[0].strip() for item in overrides or []}
    if "train.epochs" in keys and "train.steps" not in keys and isinstance(data.get("train"), dict):
        data["train"]["steps"] = 0  # a budget in epochs given on the command line wins
    return data


def build_dataset(cfg: PretrainConfig, split: str | None = None, train: bool = True) -> Dataset:
    """FlairHubDataset for the model's modalities and geometry (pre-training needs no labels)."""
    from flairlab.data.catalog import load_catalog
    from flairlab.data.dataset_cache import CachedFlairHubDataset
    from flairlab.data.synthetic_tensors import is_synthetic, open_dataset

    cat = load_catalog()
    root = cfg.data.source
    if root in cat.sources:  # a source name: the dataset resolves it, and a generated
        from flairlab.data.sources import ensure_source  # one (the sample, its store) is made

        root = ensure_source(root, cat)
    mods = cfg.model.modalities
    cached = cfg.data.cache and not is_synthetic(root)
    ds = (CachedFlairHubDataset if cached else open_dataset)(
        root,
        split=split or cfg.data.split,
        modalities=tuple(mods),
        image_size={k: m.image_size for k, m in mods.items()},
        n_dates={k: m.n_dates for k, m in mods.items() if m.n_dates > 1},
        targets=(),
        train=train,
        seed=cfg.seed,
    )
    if cfg.data.n_patches:
        ds = Subset(ds, range(min(cfg.data.n_patches, len(ds))))
    return ds


def preset_config(name: str = "cpu") -> dict[str, Any]:
    """The preset `configs/pretrain_<name>.yaml` (or a YAML path) as a plain dict."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIG_DIR / f"pretrain_{name}.yaml"
    if not path.exists():
        presets = sorted(p.stem.removeprefix("pretrain_") for p in CONFIG_DIR.glob("pretrain_*"))
        raise DataError("pre-training preset", path=path, expected=presets, found=name)
    return load_config(path)


def parse_mapping(text: str, cast: type = int) -> dict[str, Any]:
    """`"aerial:128, dem:128"` → {"aerial": 128, "dem": 128} (empty string → {})."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition(":")
        if not sep:
            raise DataError("mapping item", expected="key:value", found=item)
        out[key.strip()] = cast(value)
    return out


def notebook_config(
    preset: str = "cpu",
    *,
    modalities: str = "",
    image_size: str = "",
    patch_size: str = "",
    n_dates: str = "",
    device: str = "auto",
    contrastive_kind: str = "",
    contrastive_pairs: str = "",
    cclk_variant: str = "",
    **overrides: Any,
) -> PretrainConfig:
    """A preset with the notebook's flat parameters applied; empty strings / zeros keep the preset.

    `overrides` are `size`, `fusion_mode`, `mask_ratio` (model), `steps`, `epochs` (a budget in
    epochs replaces the preset's steps unless `steps` is given too), `batch_size`,
    `base_lr`, `precision`, `objective`, `contrastive_weight` (train), `n_patches`, `source`
    (data), `seed`, `output_dir`, `resume`. `contrastive_kind` (infonce | cclk),
    `contrastive_pairs` ("aerial:s2,aerial:dem") and `cclk_variant` (fair | weak | hard) go to
    `train.contrastive` (then the objective must use them).
    """
    data = preset_config(preset)
    model, train, dat = (data.setdefault(k, {}) for k in ("model", "train", "data"))
    kind = contrastive_kind or (train.get("contrastive") or {}).get("kind", "infonce")
    if cclk_variant and kind != "cclk":
        raise DataError("cclk_variant needs contrastive_kind", expected="cclk", found=kind)
    options = {"kind": contrastive_kind, "pairs": contrastive_pairs, "variant": cclk_variant}
    options = {k: v for k, v in options.items() if v}
    if options:
        train["contrastive"] = {**(train.get("contrastive") or {}), **options}
    mods = dict(model.get("modalities") or {})
    if modalities:
        keys = [k.strip() for k in modalities.split(",") if k.strip()]
        mods = {k: dict(mods.get(k) or {}) for k in keys}
    for name, mapping in (("image_size", image_size), ("patch_size", patch_size),
                          ("n_dates", n_dates)):  # fmt: skip
        for k, v in parse_mapping(mapping).items():
            if k not in mods:
                raise DataError(f"{name}: modality not selected", expected=list(mods), found=k)
            mods[k][name] = v
    model["modalities"] = mods
    if device != "auto":
        train["accelerator"] = device
    if overrides.get("epochs") and not overrides.get("steps"):
        train["steps"] = 0  # an explicit budget in epochs wins over the preset's steps
    where = {"size": model, "fusion_mode": model, "mask_ratio": model, "epochs": train,
             "steps": train,
             "batch_size": train, "base_lr": train, "precision": train, "objective": train,
             "contrastive_weight": train, "n_patches": dat, "source": dat, "seed": data,
             "output_dir": data, "resume": data}  # fmt: skip
    zero_keeps = ("epochs", "steps", "batch_size", "base_lr", "contrastive_weight")
    for k, v in overrides.items():
        if k not in where:
            raise DataError("notebook parameter", expected=sorted(where), found=k)
        if v not in ("", None) and not (v == 0 and k in zero_keeps):
            where[k][k] = v
    return PretrainConfig.from_dict(data)


def eval_batch(cfg: PretrainConfig, split: str = "valid", n: int = 2) -> dict:
    """`n` patches of `split` at the model geometry, evaluation mode (no flips, median dates)."""
    from flairlab.data.dataset import collate

    ds = build_dataset(cfg, split=split, train=False)
    return collate([ds[i] for i in range(min(n, len(ds)))])
