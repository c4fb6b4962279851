"""Catalog sources made on first use: the synthetic sample and the stores packed from a source.

`ensure_source(name)` is what training calls before reading a catalog source: a source marked
`generate: true` is written when missing — the sample by `flairlab.data.sample`, a store with
`packed_from` by `flairlab.data.pack` (and packed again when unfinished or stale: a generated
store is derived data). Any other source, folder or store location is returned unchanged.
"""

from __future__ import annotations

from pathlib import Path

from flairlab.data.catalog import Catalog, load_catalog
from flairlab.data.errors import DataError
from flairlab.data.store import looks_like_store, open_store


def ensure_source(source: str | Path, catalog: Catalog | None = None) -> str | Path:
    """`source` made ready to read; for a generated catalog source, its location."""
    cat = catalog or load_catalog()
    if not isinstance(source, str) or source not in cat.sources or not cat.sources[source].generate:
        return source
    if cat.sources[source].packed_from is not None:
        return ensure_packed_source(source, cat)
    from flairlab.data.sample import ensure_sample

    return ensure_sample(cat.source_root(source))


def ensure_packed_source(name: str, catalog: Catalog | None = None) -> str:
    """Location of the catalog source `name` (a store with `packed_from`), packed from that
    source first when missing, unfinished or stale."""
    cat = catalog or load_catalog()
    src = cat.sources[name]
    location = cat.source_url(name)
    if src.packed_from is None:
        raise DataError(f"source {name} has no packed_from", path=cat.path)
    if not looks_like_store(location):
        reason = "not packed yet"
    else:
        try:
            open_store(location, cat, verify="auto")
            return location
        except DataError as err:  # unfinished or stale
            reason = str(err).splitlines()[0][:200]
    from flairlab.data.pack import pack

    root = ensure_source(src.packed_from, cat)
    print(f"flairlab: packing source {name!r} from {root} into {location} ({reason})")
    pack(root, location, resample=dict(src.resample) or None, overwrite=True, catalog=cat)
    return location
