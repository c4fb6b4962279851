"""`load_pretrained("IGNF/MAESTRO_FLAIR-HUB_base")` through huggingface_hub, without network: a
local fake Hub (tests/_fake_hub.py) serves a reference-layout checkpoint written here; the code
under test runs in subprocesses with HF_ENDPOINT / HF_HUB_OFFLINE / cache variables set, as a
user's would (huggingface_hub reads them at import)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from _fake_hub import COMMIT, FakeHub
from test_model import random_batch, small_config

from flairlab.data.errors import DataError
from flairlab.models.hub import is_hub_name, parse_hub_name, pick_weights, verify
from flairlab.models.mae import MAE
from flairlab.models.mae_config import config_diff
from flairlab.models.pretrained import source_kind
from flairlab.models.reference import export_reference, reference_config

REPO = "IGNF/MAESTRO_FLAIR-HUB_base"
ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import json, sys, time
import torch
sys.path.insert(0, {tests!r})
from test_model import random_batch
import flairlab
from flairlab.data.errors import DataError
from flairlab.models.segmodel import build_encoder
out = {{}}
try:
    t = time.perf_counter()
    model = flairlab.load_pretrained({name!r})
    out["seconds"] = time.perf_counter() - t
    with torch.no_grad():
        f = model.forward_features(random_batch(model.config))
    out["features"] = {{k: v.double().sum().item() for k, v in f.items()}}
    out["config"] = model.config.to_dict()
    out["info"] = {{k: model.pretrained_info.get(k) for k in
                   ("commit", "filename", "verified", "method", "sha256", "config_file")}}
    enc, info = build_encoder({name!r}, ["aerial", "s2"], image_size={{"aerial": 64}})
    out["encoder_tensors"] = info["loaded_tensors"]
    out["encoder_image_size"] = enc.config.modalities["aerial"].image_size
except DataError as err:
    out["error"] = str(err)
print("RESULT" + json.dumps(out))
"""


@dataclass
class MaskConfig:  # stands for maestro.conf.mask.MaskConfig
    mask_ratio: float
    mask_scale: float
    mask_mod: float | None
    mask_bands: float | None
    mask_dates: float | None
    mask_loc: float | None


def run_flairlab(env: dict[str, str], name: str = REPO) -> dict:
    code = DRIVER.format(tests=str(ROOT / "tests"), name=name)
    full = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", **env}
    for k in ("HF_HUB_OFFLINE", "HF_ENDPOINT"):
        if k not in env:
            full.pop(k, None)
    r = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                       timeout=300, cwd=ROOT)  # fmt: skip
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, f"no result (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MAE]:
    """A model repository as IGN's README describes it: a Lightning checkpoint in the reference
    layout (from a randomly initialised model at CPU geometry), its Hydra config beside it,
    a model card and dataset splits (which must not be downloaded)."""
    repo = tmp_path_factory.mktemp("hub-repo")
    torch.manual_seed(0)
    config = small_config(size="tiny", depth=2, inter_depth=1, mask_ratio=0.6, mask_loc=0.1)
    model = MAE(config).eval()  # mask values differ from the defaults: they must be read back
    cfg = reference_config(model)
    # like the reference's, the hyper-parameters hold a class of the training code (never imported
    # by the loader: the subprocess cannot even import this test module's class)
    hp = {**cfg["model"], "mask": MaskConfig(**cfg["mask"]), "use_ema": True}
    state = export_reference(model)
    state.update({k.replace("model.", "ema_model.", 1): v + 1 for k, v in state.items()})
    torch.save({"state_dict": state, "hyper_parameters": hp, "epoch": 99},
               repo / "pretrain-epoch=99.ckpt")  # fmt: skip
    geometry = {k: v for k, v in cfg.items() if k != "mask"}  # the mask: from the checkpoint
    (repo / "config.yaml").write_text(yaml.safe_dump(geometry), encoding="utf-8")
    (repo / "README.md").write_text("# MAESTRO (fake card for tests)\n", encoding="utf-8")
    (repo / "dataset_splits").mkdir()
    (repo / "dataset_splits" / "train.csv").write_text("patch_id\nD0_Z1\n", encoding="utf-8")
    return repo, model


def expected_features(model: MAE) -> dict[str, float]:
    with torch.no_grad():
        f = model.forward_features(random_batch(model.config))
    return {k: v.double().sum().item() for k, v in f.items()}


@pytest.mark.slow
def test_download_verify_convert_then_offline(fake_repo, tmp_path: Path) -> None:
    repo, model = fake_repo
    caches = {"HF_HUB_CACHE": str(tmp_path / "hf"), "FLAIRLAB_CACHE": str(tmp_path / "fl")}
    with FakeHub({REPO: repo}) as hub:
        first = run_flairlab({**caches, "HF_ENDPOINT": hub.url})
        requested = list(hub.requests)
    assert "error" not in first, first
    assert first["features"] == pytest.approx(expected_features(model), rel=1e-6)
    assert first["info"] == {**first["info"], "commit": COMMIT, "verified": True,
                             "method": "lfs sha256", "filename": "pretrain-epoch=99.ckpt"}
    assert first["info"]["config_file"].endswith("config.yaml")  # geometry came from it
    assert config_diff(first["config"], json.loads(json.dumps(model.config.to_dict()))) == []
    assert first["encoder_tensors"] > 0 and first["encoder_image_size"] == 64
    assert not any("dataset_splits" in r for r in requested), requested
    converted = tmp_path / "fl" / "pretrained" / "IGNF--MAESTRO_FLAIR-HUB_base" / COMMIT / "model"
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    ref_json = json.loads((converted / "reference.json").read_text())
    assert ref_json["repo_id"] == REPO and len(ref_json["sha256"]) == 64

    # the Hub is gone: offline, everything comes from the caches, nothing is converted again
    again = run_flairlab({**caches, "HF_HUB_OFFLINE": "1"})
    assert "error" not in again, again
    assert again["features"] == first["features"]
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp

    # the Hugging Face cache is gone too: the converted copy is used (with a warning)
    converted_only = run_flairlab({"HF_HUB_CACHE": str(tmp_path / "hf-empty"),
                                   "FLAIRLAB_CACHE": str(tmp_path / "fl"), "HF_HUB_OFFLINE": "1"})
    assert converted_only.get("features") == first["features"], converted_only

    # a corrupted blob in the Hugging Face cache is caught before conversion
    bad = tmp_path / "hf-bad"
    shutil.copytree(tmp_path / "hf", bad, symlinks=True)
    blob = max((bad / "models--IGNF--MAESTRO_FLAIR-HUB_base" / "blobs").iterdir(),
               key=lambda p: p.stat().st_size)  # fmt: skip
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    broken = run_flairlab({"HF_HUB_CACHE": str(bad), "FLAIRLAB_CACHE": str(tmp_path / "fl2"),
                           "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert "corrupted download" in broken.get("error", ""), broken


@pytest.mark.slow
def test_clear_messages_without_hub_or_cache(tmp_path: Path) -> None:
    caches = {"HF_HUB_CACHE": str(tmp_path / "hf"), "FLAIRLAB_CACHE": str(tmp_path / "fl")}
    offline = run_flairlab({**caches, "HF_HUB_OFFLINE": "1"})
    assert "no local path of that name, and not in the local Hugging Face cache" in offline[
        "error"]
    assert "HF_HUB_OFFLINE=1 is set" in offline["error"]
    unreachable = run_flairlab({**caches, "HF_ENDPOINT": "http://127.0.0.1:9"})  # nothing there
    assert "could not be reached" in unreachable["error"]
    assert "HF_HUB_OFFLINE=1 works" in unreachable["error"]


def test_import_does_not_touch_the_network() -> None:
    code = ("import socket, sys\n"
            "def no(*a, **k): raise RuntimeError('network at import')\n"
            "socket.socket.connect = no\n"
            "import flairlab, flairlab.models.hub, flairlab.models.pretrained\n"
            "print('huggingface_hub' in sys.modules)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"  # huggingface_hub itself is only imported on first use


def test_names_and_kinds(tmp_path: Path) -> None:
    assert is_hub_name(REPO) and is_hub_name(f"{REPO}@v1.0")
    assert parse_hub_name(f"{REPO}@abc123") == (REPO, "abc123")
    assert source_kind("no_such_runs/pretrain") == "hub"  # the error then says: no such path
    assert source_kind(REPO) == "hub"
    (tmp_path / "x.ckpt").write_bytes(b"")
    assert source_kind(tmp_path / "x.ckpt") == "reference"
    (tmp_path / "m.safetensors").write_bytes(b"")
    (tmp_path / "m.json").write_text("{}")
    assert source_kind(tmp_path / "m.safetensors") == "flairlab"
    with pytest.raises(DataError, match="not a flairlab checkpoint"):
        source_kind(tmp_path)
    with pytest.raises(DataError, match="IGNF/MAESTRO_FLAIR-HUB_base"):
        source_kind(tmp_path / "missing" / "nothing.ckpt")


def test_pick_weights_and_verify(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    (snap / "dataset_splits").mkdir(parents=True)
    (snap / "dataset_splits" / "x.pt").write_bytes(b"0")
    (snap / "finetune-epoch=3.ckpt").write_bytes(b"1")
    (snap / "pretrain-epoch=99.ckpt").write_bytes(b"2")
    (snap / "model.safetensors").write_bytes(b"3")
    assert pick_weights(snap).name == "pretrain-epoch=99.ckpt"  # .ckpt first, pre-training first
    (snap / "pretrain-epoch=49.ckpt").write_bytes(b"4")
    with pytest.raises(DataError, match="several weight files"):
        pick_weights(snap)
    assert pick_weights(snap, "model.safetensors").name == "model.safetensors"
    # a cache blob is named after the Hub's hash: verified; a plain file cannot be
    import hashlib

    data = b"weights"
    blob = tmp_path / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir()
    blob.write_bytes(data)
    link = tmp_path / "w.ckpt"
    link.symlink_to(blob)
    assert verify(link)["verified"] is True
    blob.write_bytes(b"weightz")
    with pytest.raises(DataError, match="corrupted download"):
        verify(link)
    assert verify(snap / "model.safetensors")["verified"] is False
