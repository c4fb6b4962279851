"""One exception family for everything flairlab finds wrong with data or configuration."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Malformed or missing input. The message names the file (or field) and what was expected.

    >>> raise DataError("band count", path="a.tif", expected=4, found=3)
    Traceback (most recent call last):
    flairlab.data.errors.DataError: a.tif: band count: expected 4, found 3
    """

    def __init__(
        self,
        what: str,
        *,
        path: str | Path | None = None,
        expected: object = None,
        found: object = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.what = what
        self.expected = expected
        self.found = found
        msg = what
        if expected is not None:
            msg += f": expected {expected}" + ("" if found is None else f", found {found}")
        elif found is not None:
            msg += f": found {found}"
        if self.path:
            msg = f"{self.path}: {msg}"
        super().__init__(msg)


class CatalogError(DataError):
    """`data_catalog.yaml` is invalid; the message names the YAML field."""


class UnknownNameError(CatalogError, KeyError):
    """A modality, nomenclature or source name the catalog does not know (still a KeyError for
    callers that look names up, but reported like every other DataError)."""

    __str__ = BaseException.__str__


class DataWarning(UserWarning):
    """Input that is used, but not as written (e.g. NaN / inf values read as 0); names the file."""
