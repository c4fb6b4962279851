"""FLAIR-HUB-shaped samples made of seeded random tensors: no files, no GDAL, any geometry.

For smoke runs and speed measurements where no dataset (or no GDAL stack) is at hand — e.g. a
lent GPU machine: `flairlab pretrain --set data.source=synthetic`, `flairlab finetune --source
synthetic`. Never for results: the content is trivially learnable and nothing like real imagery.

`SyntheticTensorDataset` follows the batch contract of `flairlab.data.dataset` (same keys, dtypes
and shapes at the requested geometry, patch ids of the FLAIR-HUB form `D000-2021_SYN-TR-1_1-1`).
Each patch has an 8 × 8 block map of COSIA classes (0-14; the LPIS level-1 label is a fixed map
of it onto 0-22); every modality and date is a class-dependent spectrum (fixed per seed) plus
Gaussian noise (σ = 0.5), resized to its image size, so labels can be predicted from the inputs
and the MAE has structure to reconstruct.
Items depend only on (seed, split, index): identical in every epoch and worker.

`open_dataset(root, split, **kw)` gives this dataset for the source name `synthetic` (64 training,
16 validation and 16 test patches) or `synthetic:N` (N training patches, max(2, N // 4) for the
other splits), and a `FlairHubDataset` for anything else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flairlab.data.dataset import (
    DEFAULT_MODALITIES,
    DEFAULT_N_DATES,
    MODEL_BANDS,
    SPLIT_ALIASES,
    FlairHubDataset,
    resize_nearest,
    set_geometry,
)
from flairlab.data.errors import DataError

SYNTHETIC = "synthetic"
BLOCKS = 8  # class map of BLOCKS × BLOCKS cells per patch
N_CLASSES = {"cosia": 15, "lpis": 23}  # evaluated classes (catalog nomenclatures)
SPLIT_CODES = {"train": "TR", "valid": "VA", "test": "TE"}
NOISE = 0.5
YEAR, REF_DAY, HOUR = 2021, 180, 11


def is_synthetic(root: object) -> bool:
    """Whether `root` names the synthetic source (`synthetic` or `synthetic:N`)."""
    return isinstance(root, str) and (root == SYNTHETIC or root.startswith(SYNTHETIC + ":"))


def split_sizes(root: str) -> dict[str, int]:
    """Patches per split of a synthetic source name."""
    n = 64
    if root != SYNTHETIC:
        text = root.removeprefix(SYNTHETIC + ":")
        if not text.isdigit() or int(text) < 1:
            raise DataError("synthetic source", expected="synthetic or synthetic:N (N ≥ 1)",
                            found=root)  # fmt: skip
        n = int(text)
    small = max(2, n // 4)
    return {"train": n, "valid": small, "test": small}


def synthetic_patch_id(split: str, i: int) -> str:
    """FLAIR-HUB-form id of item i: 16 patches (4 × 4) per ROI."""
    roi, pos = divmod(i, 16)
    return f"D000-{YEAR}_SYN-{SPLIT_CODES[split]}-{roi + 1}_{pos // 4 + 1}-{pos % 4 + 1}"


def open_dataset(root: str | Path, split: str | None = "train", **kwargs) -> Dataset:
    """`SyntheticTensorDataset` for a synthetic source name, else `FlairHubDataset` (same args)."""
    if is_synthetic(root):
        return SyntheticTensorDataset(str(root), split or "train", **kwargs)
    return FlairHubDataset(root, split, **kwargs)


class SyntheticTensorDataset(Dataset):
    """Random FLAIR-HUB-shaped items (module doc); arguments as `FlairHubDataset`'s (`train` is
    recorded but changes nothing: items are the same in training and evaluation)."""

    def __init__(
        self,
        root: str = SYNTHETIC,
        split: str = "train",
        modalities: tuple[str, ...] | list[str] = DEFAULT_MODALITIES,
        image_size: dict[str, int] | None = None,
        n_dates: dict[str, int] | None = None,
        targets: tuple[str, ...] | list[str] = ("cosia",),
        train: bool = True,
        seed: int = 0,
        patch_ids: list[str] | None = None,
    ) -> None:
        self.split = SPLIT_ALIASES.get(split, split)
        sizes = split_sizes(root)
        if self.split not in sizes:
            raise DataError("synthetic split", expected=sorted(sizes), found=split)
        set_geometry(self, modalities, targets, image_size, n_dates, train, seed)
        all_ids = [synthetic_patch_id(self.split, i) for i in range(sizes[self.split])]
        if patch_ids is not None:
            missing = sorted(set(patch_ids) - set(all_ids))
            if missing:
                raise DataError("patch ids not in the synthetic split", path=root,
                                expected=f"ids of {self.split}", found=missing[:5])  # fmt: skip
        self.patch_ids = list(patch_ids) if patch_ids is not None else all_ids
        self._item_of = {pid: i for i, pid in enumerate(all_ids)}
        table = np.random.default_rng([self.seed, 7])  # class spectra: shared by all splits
        self._spectra = {k: table.normal(0.0, 1.0, (N_CLASSES["cosia"], len(MODEL_BANDS[k])))
                         .astype(np.float32)
                         for k in MODEL_BANDS}  # fmt: skip
        self._lpis_of_cosia = table.integers(0, N_CLASSES["lpis"], N_CLASSES["cosia"])

    def __len__(self) -> int:
        return len(self.patch_ids)

    def set_epoch(self, epoch: int) -> None:
        """Items do not depend on the epoch (kept for the `FlairHubDataset` interface)."""
        self.epoch = int(epoch)

    def _rng(self, pid: str, stream: int) -> np.random.Generator:
        split = list(SPLIT_CODES).index(self.split)
        return np.random.default_rng([self.seed, split, self._item_of[pid], stream])

    def _blocks(self, pid: str, target: str) -> np.ndarray:
        """(BLOCKS, BLOCKS) int64 class map of one target."""
        cosia = self._rng(pid, 1).integers(0, N_CLASSES["cosia"], (BLOCKS, BLOCKS))
        return cosia if target == "cosia" else self._lpis_of_cosia[cosia]

    def _dates(self, key: str, rng: np.random.Generator) -> np.ndarray:
        D = self.n_dates[key] if key in DEFAULT_N_DATES else 1
        if D == 1:
            return np.array([[YEAR, REF_DAY, HOUR]], np.int64)
        day = np.clip(np.linspace(10, 355, D).astype(np.int64) + rng.integers(-5, 6, D), 1, 365)
        return np.stack([np.full(D, YEAR), day, np.full(D, 10)], -1)

    def __getitem__(self, i: int) -> dict:
        pid = self.patch_ids[i]
        rng = self._rng(pid, 0)
        cosia = self._blocks(pid, "cosia")
        ref = np.array([[YEAR, REF_DAY, HOUR]], np.int64)
        item: dict = {
            "patch_id": pid,
            "roi": pid.rsplit("_", 1)[0],
            "ref_date": torch.from_numpy(ref),
        }
        for key in self.modalities:
            dates = self._dates(key, rng)
            size = self.image_size[key]
            base = self._spectra[key][cosia].transpose(2, 0, 1)  # (C, BLOCKS, BLOCKS)
            x = rng.standard_normal((len(dates), len(base), size, size), dtype=np.float32)
            x *= NOISE
            x += resize_nearest(base, size)
            item[key] = torch.from_numpy(x)
            item[f"{key}_dates"] = torch.from_numpy(dates)
        for t in self.targets:
            blocks = cosia if t == "cosia" else self._lpis_of_cosia[cosia]
            item[t] = torch.from_numpy(resize_nearest(blocks, self.image_size[t]).astype(np.int64))
        return item

    def class_presence(self, target: str) -> np.ndarray:
        """(N, n_classes) bool: which classes occur in each item's label map."""
        out = np.zeros((len(self), N_CLASSES[target]), bool)
        for row, pid in enumerate(self.patch_ids):
            blocks = self._blocks(pid, target)
            out[row, np.unique(resize_nearest(blocks, self.image_size[target]))] = True
        return out
