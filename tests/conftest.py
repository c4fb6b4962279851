"""Shared fixtures: a small embedded sample written once per test session (real GeoTIFFs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's read-only reference folder (`../shared`); tests using it skip without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not available")
    return SHARED


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic FLAIR-HUB tree in the exact on-disk format (one per test session)."""
    from flairlab.data.sample import make_sample

    out = tmp_path_factory.mktemp("flairhub-sample")
    make_sample(out, n_patches=12, seed=0)
    return out


@pytest.fixture(scope="session", autouse=True)
def jupyter_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The runner signs executed notebooks with the Jupyter secret of `JUPYTER_DATA_DIR`: tests
    sign into a session folder, never into the developer's own data directory."""
    old = os.environ.get("JUPYTER_DATA_DIR")
    path = tmp_path_factory.mktemp("jupyter-data")
    os.environ["JUPYTER_DATA_DIR"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("JUPYTER_DATA_DIR", None)
        else:
            os.environ["JUPYTER_DATA_DIR"] = old
