"""`CachedFlairHubDataset`: a `FlairHubDataset` that decodes every file once per process.

Decoding the GeoTIFFs of a patch is most of the cost of a CPU training step (aerial and DEM are
512 px rasters that the CPU geometry then shrinks to 128 px). Multi-epoch training on a small set
of patches (the embedded sample, a label fraction) reads the same files again and again, so this
subclass keeps what `_read` returns in memory:

* a single-date raster of a model modality or target (aerial, DEM, COSIA / LPIS labels) is kept
  already resized (nearest) to its `image_size`: the item is bit-identical to the uncached one,
  because the nearest resize commutes with band selection, scaling and the label mapping; a label
  raster is validated (`label_target`) in full before it is shrunk, so a bad value anywhere in the
  file is still an error;
* time series and masks are kept as read (they are 10 × 10 px).

Memory: about 0.2 MB per patch at the CPU geometry (128 px), ~3.5 MB at the FLAIR-HUB default
512 px. Each DataLoader worker holds its own cache (use `persistent_workers=True`, or 0 workers).
Items (random date choice, flips) are still drawn afresh every time; only the decoding is reused.
"""

from __future__ import annotations

import numpy as np

from flairlab.data.dataset import TARGETS, FlairHubDataset, label_target, resize_nearest


class CachedFlairHubDataset(FlairHubDataset):
    """`FlairHubDataset` with an in-process cache of decoded (and pre-shrunk) rasters."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._target_of = {TARGETS[t][0]: t for t in self.targets}

    @property
    def cached_bytes(self) -> int:
        return sum(a.nbytes for a in self._cache.values())

    def _read(self, key: str, pid: str) -> np.ndarray:
        hit = self._cache.get((key, pid))
        if hit is not None:
            return hit
        arr = super()._read(key, pid)
        size = self.image_size.get(key)
        single_date = arr.ndim == 3 and (key in self.modalities or key in self._target_of)
        if single_date and size and arr.shape[-1] > size:
            if key in self._target_of:  # validate every pixel before dropping most of them
                name = self.cat.modality(key).name
                label_target(arr, self._target_of[key], self.index.at[pid, name])
            arr = np.ascontiguousarray(resize_nearest(arr, size))
        self._cache[(key, pid)] = arr
        return arr
