"""Pretrained MAESTRO weights from the Hugging Face Hub, converted once to flairlab's format.

`fetch_pretrained("IGNF/MAESTRO_FLAIR-HUB_base")` downloads the repository's weights and config
files with `huggingface_hub` into its cache (`HF_HUB_CACHE`, default ~/.cache/huggingface/hub;
the repository's `dataset_splits/` are not downloaded), verifies the weight file against the
Hub's content hash (the LFS sha256 the cache names its blob after), imports it with
`flairlab.models.reference` and writes flairlab's checkpoint folder

    <FLAIRLAB_CACHE: ~/.cache/flairlab>/pretrained/IGNF--MAESTRO_FLAIR-HUB_base/<commit>/<weights>/
        model.safetensors   flairlab MAE weights
        model.json          its MAEConfig (flairlab.models.checkpoint layout: `load_mae` reads it)
        reference.json      where it came from: repo, commit, file, sha256, naming, provenance

Later calls reuse that folder; with `HF_HUB_OFFLINE=1` (or no network) everything is read from
the caches. A name may pin a revision: `IGNF/MAESTRO_FLAIR-HUB_base@<commit or tag>`. Nothing
touches the network at import time (huggingface_hub itself is imported on first use).

What the released repositories hold is not documented here beyond IGN's README (January 2026):
"pre-trained weights and configuration" plus `dataset_splits/`. The weight file is found by its
suffix (`.ckpt` first, then `.safetensors`, `.pt`, `.pth`, `.bin`; pass `filename=` when a
repository holds several), a reference config by content (a YAML/JSON file with `datasets`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from flairlab.data.errors import DataError

KNOWN_MODELS: dict[str, str] = {
    "IGNF/MAESTRO_FLAIR-HUB_base": "MAESTRO base (medium), pre-trained on FLAIR-HUB",
    "IGNF/MAESTRO_S2-NAIP-urban_base": "MAESTRO base (medium), pre-trained on S2-NAIP urban",
}
WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
ALLOW_PATTERNS = [f"*{s}" for s in WEIGHT_SUFFIXES + CONFIG_SUFFIXES] + ["README.md"]
IGNORE_PATTERNS = ["dataset_splits/*"]
CACHE_ENV = "FLAIRLAB_CACHE"
_NAME = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


def is_hub_name(name: str | Path) -> bool:
    """`owner/name[@revision]` that is not an existing local path."""
    s = str(name)
    return bool(_NAME.match(s)) and not Path(s).exists() and not s.startswith((".", "/"))


def parse_hub_name(name: str) -> tuple[str, str | None]:
    m = _NAME.match(name)
    if not m:
        raise DataError("Hugging Face model name", expected="owner/name or owner/name@revision",
                        found=name)  # fmt: skip
    return m.group("repo"), m.group("rev")


def flairlab_cache() -> Path:
    """Root of flairlab's own cache: $FLAIRLAB_CACHE, else $XDG_CACHE_HOME/flairlab, else
    ~/.cache/flairlab."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flairlab"


def _converted_dir(repo_id: str) -> Path:
    return flairlab_cache() / "pretrained" / repo_id.replace("/", "--")


def download(repo_id: str, revision: str | None = None) -> Path:
    """The repository snapshot folder in the Hugging Face cache (downloaded when needed).
    DataError with what to do when the Hub is unreachable and nothing is cached."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                      ignore_patterns=IGNORE_PATTERNS))  # fmt: skip
    except LocalEntryNotFoundError as err:
        offline = constants.HF_HUB_OFFLINE
        why = ("HF_HUB_OFFLINE=1 is set" if offline else
               f"the Hub ({constants.ENDPOINT}) could not be reached")  # fmt: skip
        raise DataError(
            f"{repo_id}: no local path of that name, and not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); "
            f"{why}. Download it once with network access (or copy a Hugging Face cache that "
            "holds it and point HF_HUB_CACHE at it); afterwards HF_HUB_OFFLINE=1 works. "
            f"[{type(err).__name__}: {str(err).splitlines()[0]}]"
        ) from err
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as err:
        raise DataError(f"{repo_id}: {type(err).__name__}: {str(err).splitlines()[0]}",
                        expected=sorted(KNOWN_MODELS)) from err  # fmt: skip
    except HfHubHTTPError as err:
        raise DataError(f"{repo_id}: Hugging Face Hub error: {str(err).splitlines()[0]}") from err


def pick_weights(folder: Path, filename: str | None = None) -> Path:
    """The weight file of a snapshot: `filename`, else the only file with the highest-priority
    suffix (.ckpt > .safetensors > .pt / .pth / .bin; names containing "pretrain" first)."""
    if filename:
        p = folder / filename
        if not p.is_file():
            raise DataError("weight file not in the repository snapshot", path=folder,
                            expected=filename, found=_listing(folder))  # fmt: skip
        return p
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and
             p.suffix in WEIGHT_SUFFIXES and "dataset_splits" not in p.parts]  # fmt: skip
    if not files:
        raise DataError("no weight file in the repository snapshot", path=folder,
                        expected=list(WEIGHT_SUFFIXES), found=_listing(folder))  # fmt: skip
    for suffix in (".ckpt", ".safetensors", (".pt", ".pth", ".bin")):
        best = [p for p in files if p.suffix in (suffix if isinstance(suffix, tuple) else
                                                  (suffix,))]  # fmt: skip
        pre = [p for p in best if "pretrain" in p.name.lower()]
        best = pre or best
        if len(best) == 1:
            return best[0]
        if best:
            raise DataError("several weight files; pass filename=", path=folder,
                            expected="one of " + ", ".join(str(p.relative_to(folder))
                                                           for p in best), found="none chosen")
    raise AssertionError("unreachable")


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())[:20]


def verify(path: Path) -> dict[str, Any]:
    """Check a cached file against the hash the Hub gave it (the blob's name in the cache:
    LFS sha256, or the git blob sha1). {"sha256", "verified", "method"}; DataError on mismatch."""
    from tqdm.auto import tqdm

    real = path.resolve()
    expected = real.name if real != path.absolute() else ""
    size = real.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with real.open("rb") as f, tqdm(total=size, unit="B", unit_scale=True, leave=False,
                                    desc=f"verify {path.name}", disable=size < 2**28) as bar:
        while chunk := f.read(1 << 23):
            sha256.update(chunk)
            sha1.update(chunk)
            bar.update(len(chunk))
    got = {64: sha256.hexdigest(), 40: sha1.hexdigest()}
    if re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{40}", expected):
        if got[len(expected)] != expected:
            raise DataError(f"corrupted download: delete {real} and retry", path=path,
                            expected=expected, found=got[len(expected)])  # fmt: skip
        return {"sha256": got[64], "verified": True,
                "method": "lfs sha256" if len(expected) == 64 else "git blob sha1"}
    return {"sha256": got[64], "verified": False, "method": "no Hub hash (not a cache blob)"}


def _find_config(folder: Path) -> Path | None:
    from flairlab.models.reference import read_config_file

    found = [p for p in sorted(folder.rglob("*")) if p.suffix in CONFIG_SUFFIXES and p.is_file()
             and "dataset_splits" not in p.parts and "datasets" in read_config_file(p)]
    return found[0] if found else None


def fetch_pretrained(
    name: str, *, filename: str | None = None, weights: str = "model", force: bool = False
) -> Path:
    """flairlab checkpoint folder (model.safetensors + model.json + reference.json) of a Hub model,
    converted on first use. `weights`: "model" or "ema" (the reference's EMA copy)."""
    repo_id, revision = parse_hub_name(name)
    root = _converted_dir(repo_id)
    try:
        snapshot = download(repo_id, revision)
    except DataError:
        done = sorted(root.glob(f"*/{weights}/model.safetensors"), key=lambda p: p.stat().st_mtime)
        if not done or revision:
            raise
        warnings.warn(f"{repo_id}: Hub and Hugging Face cache unavailable; using the converted "
                      f"copy {done[-1].parent}", stacklevel=2)  # fmt: skip
        return done[-1].parent
    out = root / snapshot.name / weights  # snapshot folder name = commit hash
    if (out / "model.safetensors").is_file() and not force:
        return out
    return _convert(snapshot, out, repo_id, revision, filename, weights)


def _convert(snapshot: Path, out: Path, repo_id: str, revision: str | None,
             filename: str | None, weights: str) -> Path:  # fmt: skip
    from safetensors.torch import save_file

    from flairlab.data.results import write_json_atomic
    from flairlab.models.reference import import_reference

    src = pick_weights(snapshot, filename)
    check = verify(src)
    cfg = _find_config(snapshot)
    model, report = import_reference(src, weights=weights, config=cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{weights}-"))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), {"format": "pt"})
    write_json_atomic(tmp / "model.json", model.config.to_dict())
    write_json_atomic(tmp / "reference.json", {
        "repo_id": repo_id, "revision": revision, "commit": snapshot.name,
        "filename": str(src.relative_to(snapshot)), **check, **report.reference_json(),
    })  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def read_reference_json(folder: Path) -> dict[str, Any]:
    p = folder / "reference.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
