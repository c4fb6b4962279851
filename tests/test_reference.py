"""IGN's reference MAESTRO checkpoints ⇄ flairlab's MAE: key layout and numbers recorded from the
reference implementation itself, round trips in all fusion modes, the restricted loader, error
reports, the S2-NAIP naming, and the reference's input conventions (pinned)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _reference_fixture import (
    flairlab_batch,
    load_golden,
    reference_batch,
    reference_state,
)
from test_model import random_batch, small_config

from flairlab.data.errors import DataError
from flairlab.models.mae import MAE, count_parameters
from flairlab.models.mae_config import (
    FLAIR_GEOMETRY,
    FUSION_MODES,
    MAEConfig,
    ModalityConfig,
    catalog_norm_bands,
    config_diff,
)
from flairlab.models.reference import (
    REFERENCE_DATASETS,
    Opaque,
    ReferenceNaming,
    export_reference,
    import_reference,
    load_torch_file,
    mapping_table,
    preprocessing_differences,
    read_reference,
    save_reference,
)

torch.set_num_threads(1)
FLAIR_NAMES = {"aerial": "aerial", "dem": "dem", "s2": "s2", "s1_asc": "s1_asc",
               "s1_desc": "s1_des"}  # fmt: skip


@pytest.fixture(scope="module")
def golden() -> dict:
    return load_golden()


@pytest.fixture(scope="module")
def golden_ckpt(golden: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Lightning-style checkpoint in the exact key layout of the reference (tiny, group + 3
    inter blocks, FLAIR-HUB inputs), with the deterministic weights the reference was run on."""
    state = reference_state(golden["shapes"])
    path = tmp_path_factory.mktemp("ref") / "pretrain-epoch=0.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()},
                "hyper_parameters": golden["hyper_parameters"], "epoch": 0}, path)  # fmt: skip
    return path


# -- the reference's own layout and numbers -------------------------------------------------------
def test_reference_layout_maps_every_tensor(golden: dict, golden_ckpt: Path) -> None:
    model, report = import_reference(golden_ckpt)
    c = model.config
    assert (c.size, c.fusion_mode, c.inter_depth, c.depth, c.embed_dim) == (
        "tiny", "inter-group", 3, 12, 192)
    assert list(c.units) == ["aerial", "dem", "s2", "s1"]
    assert {k: m.n_dates for k, m in c.modalities.items()} == {
        "aerial": 1, "dem": 1, "s2": 16, "s1_asc": 4, "s1_desc": 4}
    # everything but the (untrained) task head is imported; export gives back the same layout
    assert {k.removeprefix("model.") for k in report.ignored} == {
        k for k in golden["shapes"] if k.startswith("heads.")}
    exported = export_reference(model, report.naming, prefix="")
    shapes = {k: list(v.shape) for k, v in exported.items()}
    assert shapes == {k: v for k, v in golden["shapes"].items() if not k.startswith("heads.")}
    assert count_parameters(model)["encoder"] == golden["encoder_parameters"] == 12_166_848


def test_reference_encoder_outputs_are_reproduced(golden: dict, golden_ckpt: Path) -> None:
    """Features computed by IGNF/MAESTRO itself (tests/fixtures, see _reference_fixture.py) on the
    same weights and batch: flairlab's encoder gives the same numbers."""
    model, _ = import_reference(golden_ckpt)
    with torch.no_grad():
        feats = model.eval().forward_features(flairlab_batch(reference_batch()))
    for ref_key, probe in golden["features"].items():
        key = {"s1_des": "s1_desc"}.get(ref_key, ref_key)
        f = feats[key].flatten(2, 3)
        assert list(f.shape) == golden["feature_shapes"][ref_key]
        N = f.shape[2]
        got = f[0][:, [0, N // 2, N - 1], :8]
        np.testing.assert_allclose(got.numpy(), np.array(probe["tokens"]), atol=2e-4, rtol=0)
        assert f.abs().mean().item() == pytest.approx(probe["mean_abs"], rel=1e-5)


def test_ema_weights_are_chosen_explicitly(golden: dict, tmp_path: Path) -> None:
    shapes = {k: v for k, v in golden["shapes"].items() if not k.startswith("heads.")}
    state = reference_state(shapes, seed=3)
    path = tmp_path / "two.ckpt"
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in state.items()},
                               **{f"ema_model.{k}": v + 1 for k, v in state.items()}},
                "hyper_parameters": golden["hyper_parameters"]}, path)  # fmt: skip
    trained, rep = import_reference(path)
    ema, _ = import_reference(path, weights="ema")
    key = "patch_embed.aerial.proj.0.weight"
    ref = state["patch_embed.aerial.patchify_bands.0.conv.weight"]
    assert torch.equal(trained.state_dict()[key], ref)
    assert torch.equal(ema.state_dict()[key], ref + 1)
    assert all(k.startswith("ema_model.") for k in rep.ignored)
    with pytest.raises(DataError, match="no EMA weights"):
        import_reference(_bare(tmp_path, state), weights="ema")


def _bare(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "bare.pt"
    torch.save(state, path)
    return path


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", FUSION_MODES)
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_round_trip_in_every_fusion_mode(mode: str, suffix: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MAE(small_config(fusion_mode=mode)).eval()
    back, report = import_reference(save_reference(model, tmp_path / f"m{suffix}"))
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert config_diff(model.config.to_dict(), back.config.to_dict()) == []
    assert list(back.config.modalities) == list(model.config.modalities)
    batch = random_batch(model.config)
    with torch.no_grad():
        fa, fb = model.forward_features(batch), back.eval().forward_features(batch)
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert report.provenance["fusion_mode"] == "checkpoint"


def test_s2_naip_naming_single_s1_and_old_group_name(tmp_path: Path) -> None:
    """S2-NAIP's one `s1` series (group `sen1` before 2025-12) feeds flairlab's s1_asc and s1_desc
    through one embedding; geometry comes from the reference's S2-NAIP defaults when no config
    is given (and the report says it was assumed)."""
    mods = {"aerial": ModalityConfig(384, 16), "s2": ModalityConfig(12, 2, 16),
            "s1_asc": ModalityConfig(12, 2, 4, embed="s1", group="s1"),
            "s1_desc": ModalityConfig(12, 2, 4, embed="s1", group="s1")}  # fmt: skip
    torch.manual_seed(0)
    model = MAE(MAEConfig(modalities=mods, size="tiny", depth=2, inter_depth=1, decoder_dim=64))
    naming = ReferenceNaming(
        modalities={"aerial": "aerial", "s2": "s2", "s1_asc": "s1", "s1_desc": "s1"},
        embeds={"aerial": "aerial", "s2": "s2", "s1": "s1"},
        units={"aerial": "aerial", "s2": "s2", "s1": "sen1"}, dataset="s2_naip")
    state = export_reference(model, naming, prefix="")
    assert "encoder.sen1.norm.weight" in state and "mask_token.s1" in state
    back, report = import_reference(_bare(tmp_path, state))  # no config, no hyper-parameters
    assert back.config.fusion_mode == "inter-group"
    assert back.config.modalities["s1_desc"].embed == "s1" and list(back.config.units) == [
        "aerial", "s2", "s1"]
    assert back.config.modalities["aerial"].image_size == 384
    assert "assumed" in report.provenance["modalities.s1_asc"]
    a, b = model.state_dict(), back.state_dict()
    shared = ("mask_tokens.s1_desc", "pixel_heads.s1_desc.")  # one tensor in the reference
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith(shared))
    assert torch.equal(b["mask_tokens.s1_desc"], a["mask_tokens.s1_asc"])


# -- errors ---------------------------------------------------------------------------------------
def test_mismatch_lists_unmapped_missing_and_misshaped_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MAE(small_config())
    state = export_reference(model, prefix="")
    del state["encoder.aerial.layers.0.0.to_qkv.weight"]
    state["encoder.aerial.extra_gate.weight"] = torch.zeros(3)
    state["decoder.s2.norm.bias"] = torch.zeros(5)
    hp = {"fusion_mode": "group", "inter_depth": 1, "model_size": "nano"}
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()},
                "hyper_parameters": hp}, path)  # fmt: skip
    with pytest.raises(DataError) as err:
        import_reference(path)
    msg = str(err.value)
    assert "unmapped reference keys (1): encoder.aerial.extra_gate.weight" in msg
    assert "missing reference keys (1): encoder.aerial.layers.0.0.to_qkv.weight" in msg
    assert "mis-shaped (1): decoder.s2.norm.bias (5,) → decoders.s2.norm.bias (64,)" in msg


def test_mod_and_monotemp_need_the_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MAE(small_config(fusion_mode="monotemp", size="tiny", decoder_dim=64))
    path = _bare(tmp_path, export_reference(model, prefix=""))
    with pytest.raises(DataError, match="fusion mode ambiguous"):
        import_reference(path)
    back, _ = import_reference(path, config={"model": {"fusion_mode": "monotemp"}})
    assert back.config.fusion_mode == "monotemp"


def test_not_a_reference_checkpoint(tmp_path: Path) -> None:
    path = _bare(tmp_path, {"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(DataError, match="no reference MAE weights"):
        import_reference(path)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"junk\.ckpt"):
        read_reference(tmp_path / "junk.ckpt")


# -- the restricted loader ------------------------------------------------------------------------
SIDE_EFFECTS: list[str] = []


def leave_a_trace(tag: str) -> str:  # what a malicious pickle would call on load
    SIDE_EFFECTS.append(tag)
    return tag


class Planted:
    def __reduce__(self):
        return (leave_a_trace, ("called",))


class HyperParams:  # stands for the reference's MaskConfig dataclass
    def __init__(self) -> None:
        self.mask_ratio = 0.6


def test_restricted_loader_rebuilds_only_tensors_and_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "mixed.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3.0)},
                "hyper_parameters": {"mask": HyperParams(), "planted": Planted()}}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    obj = load_torch_file(path)
    assert SIDE_EFFECTS == []  # the pickled callable was never looked up nor called
    assert torch.equal(obj["state_dict"]["w"], torch.arange(3.0))
    mask, planted = obj["hyper_parameters"]["mask"], obj["hyper_parameters"]["planted"]
    assert isinstance(mask, Opaque) and mask.plain() == {"mask_ratio": 0.6}
    assert isinstance(planted, Opaque) and planted.qualname.endswith("leave_a_trace")
    assert planted.plain() == {"_args": ["called"]}


# -- input conventions of the reference weights (model-card facts) --------------------------------
def test_reference_input_conventions_are_pinned_and_flairlabs() -> None:
    """IGNF/MAESTRO@6a30075 maestro/conf/dataset/flair.py, as constants: file bands fed to the
    model, divisor, ln, DEM transform, image px, patch px, dates, target-normalisation groups."""
    pinned = {
        "aerial": ([3, 0, 1, 2], 255.0, False, False, 512, 16, 1, [1, 3]),
        "dem": ([0, 1], 1000.0, False, True, 512, 32, 1, None),
        "spot": ([0, 1, 2, 3], 2000.0, False, False, 64, 4, 1, None),
        "s2": (list(range(10)), 5000.0, False, False, 10, 2, 16, [4, 4, 2]),
        "s1_asc": ([0, 1], 5.0, True, False, 10, 2, 4, [1, 1]),
        "s1_des": ([0, 1], 5.0, True, False, 10, 2, 4, [1, 1]),
    }
    ref = REFERENCE_DATASETS["flair"]
    assert (ref.crop_meters, ref.grid_pos_enc) == (102.4, 160)
    got = {k: (v.file_bands, v.norm_fac, v.log_scale, v.rescale_elev, v.image_size, v.patch_size,
               v.num_dates, v.norm_bands) for k, v in ref.inputs.items()}  # fmt: skip
    assert got == pinned
    # flairlab's pipeline prepares every FLAIR-HUB modality the same way
    names = {**FLAIR_NAMES, "spot": "spot"}
    assert preprocessing_differences(names, "flair") == []
    for key, M in names.items():
        spec = ref.inputs[M]
        assert FLAIR_GEOMETRY[key] == (spec.image_size, spec.patch_size, spec.num_dates)
        lengths = spec.norm_bands or [len(spec.file_bands)]
        assert [len(g) for g in catalog_norm_bands(key)] == lengths, key
    # ... and S2-NAIP weights on FLAIR-HUB inputs are flagged, not silently accepted
    diffs = preprocessing_differences({"s1_asc": "s1", "aerial": "aerial"}, "s2_naip")
    assert diffs == ["s1_asc: scaling ln(x)/5 (flairlab) vs x/20 (s2_naip)"]


def test_flairlab_items_equal_the_reference_formulas(sample_root: Path) -> None:
    """An item of flairlab's dataset = the reference loader's arithmetic on the raw GeoTIFFs:
    aerial bands [3, 0, 1, 2] / 255; DEM [DSM, 30·(DSM − DTM)] / 1000; S1 ln(max(x, 1e-10)) / 5
    at the selected dates."""
    from flairlab.data.dataset import FlairHubDataset
    from flairlab.data.index import modality_path
    from flairlab.data.reader import read_raster

    ds = FlairHubDataset(sample_root, split=None, modalities=("aerial", "dem", "s1_asc"),
                         train=False)
    item = ds[0]
    pid = item["patch_id"]
    raw = {k: read_raster(modality_path(sample_root, pid, k), k).astype(np.float64)
           for k in ("aerial", "dem")}  # fmt: skip
    aerial = raw["aerial"][[3, 0, 1, 2]] / 255.0
    np.testing.assert_allclose(item["aerial"][0].numpy(), aerial, rtol=1e-6, atol=1e-6)
    dsm, dtm = raw["dem"][0] / 1000.0, raw["dem"][1] / 1000.0
    np.testing.assert_allclose(item["dem"][0, 0].numpy(), dsm, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(item["dem"][0, 1].numpy(), 30 * (dsm - dtm), rtol=1e-5, atol=1e-3)
    s1 = read_raster(modality_path(sample_root, pid, "s1_asc"), "s1_asc").astype(np.float64)
    want = np.log(np.maximum(s1, 1e-10)) / 5.0
    got = item["s1_asc"].numpy()  # (D, 2, H, W) at D selected dates
    for d in range(got.shape[0]):  # every selected date is one of the acquisitions, scaled
        assert min(np.abs(want[t] - got[d]).max() for t in range(len(want))) < 1e-5


def test_mapping_table_lists_every_kind_of_tensor() -> None:
    table = mapping_table()
    for ref_key in ("patch_embed.{E}.patchify_bands.{g}.conv.weight",
                    "{S}.layers.{i}.0.to_qkv.weight", "mask_token.{M}",
                    "embed_to_rec.{E}.pixelify_bands.{g}.conv.weight"):
        assert f"`{ref_key}`" in table
    assert "`encoder_inter` → `inter`" in table
