"""flairlab: explore FLAIR-HUB, pretrain a multimodal MAE on it, and map the predictions."""

from flairlab.catalog import Catalog, load_catalog
from flairlab.errors import CatalogError, DataError
from flairlab.index import index_patches, modality_path, parse_patch_id
from flairlab.reader import cosia_target, lpis_target, open_patch, read_dates, read_raster

__all__ = [
    "Catalog",
    "CatalogError",
    "DataError",
    "cosia_target",
    "index_patches",
    "load_catalog",
    "lpis_target",
    "modality_path",
    "open_patch",
    "parse_patch_id",
    "read_dates",
    "read_raster",
]
__version__ = "0.1.0"
