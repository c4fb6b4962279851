"""Provenance of a run: run folders that never collide, environment snapshot, data fingerprint.

Used by `flairlab.runs.runner`; nothing here imports torch (the GPU list comes from `nvidia-smi`),
so a run's own process stays small and the kernel is the only heavy process.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from flairlab.data.catalog import load_catalog
from flairlab.data.errors import DataError

KEY_PACKAGES = (
    "flairlab",
    "torch",
    "lightning",
    "torchmetrics",
    "safetensors",
    "numpy",
    "pandas",
    "scipy",
    "xarray",
    "rioxarray",
    "rasterio",
    "pyogrio",
    "geopandas",
    "shapely",
    "pydantic",
    "pyyaml",
    "matplotlib",
    "holoviews",
    "hvplot",
    "bokeh",
    "ipywidgets",
    "leafmap",
    "folium",
    "ipyleaflet",
    "papermill",
    "nbclient",
    "nbformat",
    "nbconvert",
    "ipykernel",
    "jupyterlab",
)
SMALL_FILE_BYTES = 1 << 20  # files up to 1 MiB are hashed by content, larger ones by size + mtime
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def utc_stamp(now: datetime | None = None) -> str:
    """`20260101T120000Z`: sortable, filesystem-safe UTC timestamp."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def utc_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).isoformat(timespec="milliseconds")


def create_run_dir(runs_dir: str | Path, name: str, *, stamp: str | None = None) -> Path:
    """Create `runs_dir/<UTC stamp>-<name>[-N]/` atomically and return it.

    `os.mkdir` fails if the folder exists, so two processes asking at the same second get
    different folders (`…-name`, `…-name-2`, …) and an existing run is never reused.
    """
    if not _SAFE_NAME.match(name):
        raise ValueError(f"run name {name!r} must match {_SAFE_NAME.pattern}")
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = f"{stamp or utc_stamp()}-{name}"
    for n in range(1, 10_000):
        path = runs_dir / (base if n == 1 else f"{base}-{n}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a run folder {base}-N under {runs_dir}")


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_info(path: str | Path) -> dict[str, Any] | None:
    """Commit, branch and dirty flag of the git checkout holding `path` (None outside one)."""
    if shutil.which("git") is None:
        return None
    cwd = Path(path).resolve()
    cwd = cwd if cwd.is_dir() else cwd.parent
    commit = _run(["git", "rev-parse", "HEAD"], cwd)
    if commit is None:
        return None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd)
    return {
        "commit": commit,
        "branch": _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd),
        "dirty": bool(status),
        "root": _run(["git", "rev-parse", "--show-toplevel"], cwd),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


def gpu_info() -> list[dict[str, str]]:
    """GPUs reported by `nvidia-smi` (empty without an NVIDIA driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    q = "name,memory.total,driver_version"
    out = _run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"])
    gpus = []
    for line in (out or "").splitlines():
        name, mem, driver = (s.strip() for s in [*line.split(","), "", ""][:3])
        gpus.append({"name": name, "memory": mem, "driver": driver})
    return gpus


def environment_info(project_dir: str | Path) -> dict[str, Any]:
    """What produced a run: python, key package versions, git state, platform, CPU/GPU."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "packages": package_versions(),
        "git": git_info(project_dir),
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "hostname": platform.node(),
        },
        "cpu": {
            "model": _cpu_model(),
            "count": os.cpu_count(),
            "usable": len(affinity) if affinity is not None else None,
            "memory_gib": _memory_gib(),
        },
        "gpus": gpu_info(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def data_fingerprint(root: str | Path) -> dict[str, Any]:
    """Hash of a data tree: relative paths + sizes, and contents (≤ 1 MiB) or mtimes (larger files).

    Hidden files and folders (`.name`) are skipped. Returns `{"root", "exists", "n_files",
    "total_bytes", "sha256"}`; the same files give the same hash wherever the tree lives.
    """
    root = Path(root)
    info: dict[str, Any] = {"root": str(root), "exists": root.is_dir()}
    if not root.is_dir():
        return info
    h = hashlib.sha256()
    n_files = total = 0
    stack = [root]
    files: list[tuple[str, os.DirEntry]] = []
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    files.append((Path(entry.path).relative_to(root).as_posix(), entry))
    for rel, entry in sorted(files, key=lambda t: t[0]):
        st = entry.stat(follow_symlinks=True)
        n_files += 1
        total += st.st_size
        h.update(f"{rel}\0{st.st_size}\0".encode())
        if st.st_size <= SMALL_FILE_BYTES:
            with open(entry.path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        else:
            h.update(str(st.st_mtime_ns).encode())
    info.update(n_files=n_files, total_bytes=total, sha256=h.hexdigest())
    return info


def source_roots(sources: set[str]) -> dict[str, Path | str]:
    """Data folder of each `source` parameter value: a catalog source name, else a path."""
    roots: dict[str, Path | str] = {}
    for source in sorted(sources):
        try:
            roots[source] = load_catalog().source_root(source)
        except (KeyError, DataError) as err:
            p = Path(source).expanduser()
            roots[source] = p.resolve() if p.exists() else f"unresolved: {err}"
    return roots


def source_fingerprints(roots: dict[str, Path | str]) -> dict[str, Any]:
    """`data_fingerprint` of every resolved root (unresolved ones are recorded as missing)."""
    return {
        name: data_fingerprint(root) if isinstance(root, Path) else {"root": root, "exists": False}
        for name, root in roots.items()
    }
