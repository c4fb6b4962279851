"""flairlab: explore FLAIR-HUB, pretrain a multimodal MAE on it, and map the predictions.

The package is built in floors; each imports only from the floors below it (a test checks it):

    data/      catalog, patch index, GeoTIFF reader, `check`, the synthetic sample, torch Dataset
    explore/   streaming band statistics, band groups, the patch browser, exploration plots
    models/    the MAESTRO-style MAE, masking, heads, segmentation model, contrastive losses
    training/  pre-training (MAE / contrastive), fine-tuning, metrics, schedules, their plots
    maps/      zone prediction, mosaics as COGs, leafmap maps, offline HTML maps
    runs/      the papermill runner, pipelines, provenance, run comparison

The public API below is imported lazily, so `import flairlab` itself loads nothing heavy (the
model and training floors import without the GDAL stack).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_API: dict[str, str] = {
    "Catalog": "flairlab.data.catalog",
    "load_catalog": "flairlab.data.catalog",
    "CatalogError": "flairlab.data.errors",
    "DataError": "flairlab.data.errors",
    "index_patches": "flairlab.data.index",
    "modality_path": "flairlab.data.index",
    "parse_patch_id": "flairlab.data.index",
    "cosia_target": "flairlab.data.reader",
    "lpis_target": "flairlab.data.reader",
    "open_patch": "flairlab.data.reader",
    "read_dates": "flairlab.data.reader",
    "read_raster": "flairlab.data.reader",
    "load_pretrained": "flairlab.models.pretrained",
}
__all__ = sorted(_API)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flairlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
