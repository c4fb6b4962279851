"""flairlab: explore FLAIR-HUB, pretrain a multimodal MAE on it, and map the predictions."""

from flairlab.catalog import Catalog, load_catalog
from flairlab.errors import CatalogError, DataError

__all__ = ["Catalog", "CatalogError", "DataError", "load_catalog"]
__version__ = "0.1.0"
