"""What every notebook and run writes to its output folder: `results.json` and figures (PNG).

`results.json` holds the results of one run: the first `save_results` of a process on a folder
replaces a file left there by another run (never merges with it), later calls add keys. Commands
that write many artefacts claim their folder with `start_run`, which refuses a non-empty one
unless told to overwrite.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from flairlab.data.errors import DataError


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON via a temporary file + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(_jsonable(data), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


_RUN_DIRS: set[Path] = set()  # output folders whose results.json this process has started


def start_run(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Claim `output_dir` (created if missing) for a new run: a folder that already holds files
    is a DataError unless `overwrite` (then its `results.json` is removed, other files are
    replaced as the run writes them). Returns the folder."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError("output folder is a file", path=out, expected="a folder", found="a file")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise DataError(
            "output folder is not empty (nothing overwritten)",
            path=out,
            expected="an empty or new folder, or overwrite (--overwrite)",
            found=", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if entries[4:] else ""),
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)
    _RUN_DIRS.add(out.resolve())
    return out


def save_results(output_dir: str | Path, results: dict[str, Any]) -> Path:
    """Add `results` to `<output_dir>/results.json` and return its path: the process's first
    call on a folder starts the file afresh, later ones merge into it (one run, one file)."""
    path = Path(output_dir) / "results.json"
    key = Path(output_dir).resolve()
    current: dict[str, Any] = {}
    if key in _RUN_DIRS and path.exists():
        current = json.loads(path.read_text(encoding="utf-8"))
    _RUN_DIRS.add(key)
    current.update(_jsonable(results))
    return write_json_atomic(path, current)


def save_figure(fig: Any, output_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as `<output_dir>/figures/<name>.png` and return the path."""
    out = Path(output_dir) / "figures" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    return out
