"""The fault suite: each fault planted in a copy of a real-format tree (or a config, checkpoint,
split CSV), then the clear error — naming the file or field — or the fixed behaviour asserted.

Silent wrong results (wrong dtype / size / CRS / footprint accepted, NaN read as 0 unnoticed,
an unvalidated date, an empty or misspelt split CSV, `../` resolved against the wrong folder,
outputs overwritten or results merged, an edited fine-tuned config), raw or misleading errors
(tracebacks from the CLIs, the healthy neighbour blamed, KeyError / SafetensorError /
RuntimeError / JSONDecodeError / ParserError / TypeError without a path) and a `latest.json`
pointing outside its folder. The HTML (template / script injection) faults are in
test_html_escaping.py, crash-safe resume in test_train.py, sparse-zone memory in
test_predict_maps.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from flairlab.cli import main as cli_main
from flairlab.data.catalog import load_catalog
from flairlab.data.errors import DataError, DataWarning

sys.path.insert(0, str(Path(__file__).parent))
from _flairtree import PATCHES, make_tree, split_csvs

CAT = load_catalog()
TRAIN = [p for p, s in PATCHES.items() if s == "train"]  # two side-by-side patches (1-1, 1-2)
SMALL = {"aerial": 32, "dem": 32, "cosia": 32}  # model geometry: fast items
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("clean") / "FLAIR-HUB")


@pytest.fixture
def tree(clean_tree: Path, tmp_path: Path) -> Path:
    """A fresh copy of the clean tree, to plant one fault in."""
    return Path(shutil.copytree(clean_tree, tmp_path / "FLAIR-HUB"))


def path_of(root: Path, pid: str, modality: str) -> Path:
    from flairlab.data.index import modality_path

    return modality_path(root, pid, modality)


def rewrite(path: Path, data: np.ndarray | None = None, **profile) -> Path:
    """Rewrite a GeoTIFF with other pixels (any dtype / shape) and/or profile fields."""
    with rasterio.open(path) as src:
        prof, arr = src.profile, src.read()
    arr = arr if data is None else data
    prof.update(count=arr.shape[0], height=arr.shape[1], width=arr.shape[2], dtype=arr.dtype.name)
    prof.update(profile)
    prof.pop("nodata", None)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr)
    return path


def dataset(root: Path, modalities=("aerial", "dem"), targets=("cosia",), train=True):
    from flairlab.data.dataset import FlairHubDataset

    return FlairHubDataset(root, split="train", modalities=modalities, targets=targets,
                           image_size=SMALL, train=train)  # fmt: skip


def cli(args: list[str], capsys) -> tuple[int, str]:
    """Exit code and the error lines the command printed (log lines of libraries left out)."""
    code = cli_main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, "\n".join(ln for ln in err.splitlines() if ln.startswith("flairlab "))


# -- the dataset path refuses what `check` refuses -------------------------------------------------
def test_aerial_as_uint16_radiometry_is_refused_but_uint16_holding_bytes_is_read(tree: Path):
    path = path_of(tree, TRAIN[0], "AERIAL_RGBI")
    with rasterio.open(path) as src:
        orig = src.read()
    ds = dataset(tree)
    reference = ds[0]["aerial"]
    rewrite(path, orig.astype(np.uint16))  # same values, wider type: same meaning
    assert torch.equal(dataset(tree)[0]["aerial"], reference)
    rewrite(path, orig.astype(np.uint16) * 257)  # 16-bit radiometry: /255 would be wrong
    with pytest.raises(DataError, match=r"AERIAL_RGBI dtype.*uint8.*uint16.*values") as err:
        dataset(tree)[0]
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "fault, match",
    [
        ("bands", r"AERIAL_RGBI bands: expected 4 bands, found 3"),
        ("size", r"AERIAL_RGBI size: expected 512x512 px, found 256x256"),
        ("crs", r"AERIAL_RGBI crs: expected EPSG:2154, found EPSG:32631"),
        ("footprint", r"AERIAL_RGBI footprint: covers 204.800 x 204.800 m"),
    ],
)
def test_wrong_bands_size_crs_footprint_are_refused_by_dataset_and_open_patch(
    tree: Path, fault: str, match: str
):
    from flairlab.data.reader import open_patch

    path = path_of(tree, TRAIN[0], "AERIAL_RGBI")
    with rasterio.open(path) as src:
        arr, tr = src.read(), src.transform
    if fault == "bands":
        rewrite(path, arr[:3])
    elif fault == "size":  # same ground at 0.4 m: pretraining used to resize it silently
        rewrite(path, arr[:, ::2, ::2], transform=Affine(0.4, 0, tr.c, 0, -0.4, tr.f))
    elif fault == "crs":
        rewrite(path, crs="EPSG:32631")
    else:
        rewrite(path, transform=Affine(0.4, 0, tr.c, 0, -0.4, tr.f))
    for read in (lambda: dataset(tree)[0], lambda: open_patch(tree, TRAIN[0], "aerial")):
        with pytest.raises(DataError, match=match) as err:
            read()
        assert str(path) in str(err.value)


@pytest.mark.parametrize("fault", ["shifted", "swapped"])
def test_misregistered_raster_is_refused_where_modalities_are_combined(tree: Path, fault: str):
    """A shifted geotransform, or the neighbour patch's file under this patch's name."""
    path = path_of(tree, TRAIN[0], "AERIAL_RGBI")
    if fault == "shifted":
        with rasterio.open(path) as src:
            tr = src.transform
        rewrite(path, transform=Affine(tr.a, 0, tr.c + 50.0, 0, tr.e, tr.f))
    else:
        shutil.copy(path_of(tree, TRAIN[1], "AERIAL_RGBI"), path)
    with pytest.raises(DataError, match="covers other ground than its") as err:
        dataset(tree)[0]
    assert err.value.path == str(path)  # the odd one out, not the DEM or the label
    from flairlab.maps.predict import predict

    with pytest.raises(DataError, match="covers other ground") as err:
        predict(lambda b: None, tree, TRAIN, tree.parent / "out")
    assert err.value.path == str(path) and not (tree.parent / "out").exists()


def test_predict_names_the_faulty_patch_not_its_healthy_neighbour(tree: Path, capsys):
    bad = path_of(tree, TRAIN[0], "AERIAL_RGBI")  # the first patch of the zone
    rewrite(bad, crs="EPSG:32631")
    code, err = cli(["predict", "--root", str(tree), "--patches", ",".join(TRAIN),
                     "--out", str(tree.parent / "out")], capsys)  # fmt: skip
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"flairlab predict: error: {bad}:") and "crs" in err
    assert TRAIN[1] not in err


def test_all_nan_and_inf_sentinel1_are_counted_reported_and_flagged_by_check(tree: Path):
    from flairlab.data.check import check_dataset

    path = path_of(tree, TRAIN[0], "SENTINEL1-ASC_TS")
    with rasterio.open(path) as src:
        arr = src.read()
    arr[:] = np.nan
    arr[0, 0, :3] = np.inf
    rewrite(path, arr)
    ds = dataset(tree, modalities=("aerial", "s1_asc"), targets=())
    with pytest.warns(DataWarning, match=rf"{re.escape(str(path))}: {arr.size} NaN/inf value"):
        item = ds[0]
    assert ds.nonfinite == {str(path): arr.size}
    assert torch.isfinite(item["s1_asc"]).all()  # still read as 0 (documented), but not silently
    problems = check_dataset(tree, progress=False)
    nonfinite = problems[problems["kind"] == "nonfinite"]
    assert list(nonfinite["path"]) == [str(path)]


def test_check_validates_mono_temporal_dates(tree: Path, capsys):
    import geopandas as gpd

    gpkg = tree / "GLOBAL_ALL_MTD" / "GLOBAL_AERIAL_MTD_DATES.gpkg"
    df = gpd.read_file(gpkg)
    df.loc[df["patch_id"] == TRAIN[0], "date"] = "2020-06-09"
    df.to_file(gpkg)
    assert cli_main(["check", str(tree), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "dates" in out and "2020-06-09" in out and TRAIN[0] in out


def test_header_only_split_csv_is_an_error(tree: Path, capsys):
    csv = split_csvs(tree)[0]
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    assert cli_main(["check", str(tree), "--split", str(csv), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "no patch rows" in out and str(csv) in out and "OK" not in out


def test_misspelt_modality_column_is_an_error_not_24_missing_files(tree: Path, capsys):
    csv = split_csvs(tree)[0]
    csv.write_text(csv.read_text().replace("SENTINEL2_TS", "SENTINEL2-TS", 1))
    assert cli_main(["check", str(tree), "--split", str(csv), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "'SENTINEL2-TS'" in out and "did you mean 'SENTINEL2_TS'" in out and "missing" not in out


def test_split_csv_one_folder_below_the_root_resolves_like_ign(tree: Path):
    from flairlab.data.index import index_patches

    sub = tree / "splits"
    sub.mkdir()
    csv = shutil.move(split_csvs(tree)[0], sub / "train.csv")
    df = index_patches(csv)  # `../X` read literally from the CSV's folder
    assert df.attrs["root"] == str(tree)
    assert df[CAT.modality_names].map(lambda p: Path(p).is_file()).all().all()
    df = index_patches(shutil.move(csv, tree / "train.csv"))  # the toy layout: CSV in the root
    assert df.attrs["root"] == str(tree)
    lost = tree.parent / "elsewhere" / "train.csv"
    lost.parent.mkdir()
    shutil.move(tree / "train.csv", lost)
    with pytest.raises(DataError, match="not found next to it") as err:
        index_patches(lost)
    assert "missing" in str(err.value) and str(lost) in str(err.value)


# -- outputs are never overwritten or merged silently ----------------------------------------------
def test_predict_refuses_a_non_empty_output_folder(tree: Path, capsys):
    out = tree.parent / "out"
    out.mkdir()
    (out / "keep.tif").write_bytes(b"earlier run")
    code, err = cli(["predict", "--root", str(tree), "--patches", TRAIN[0], "--out", str(out)],
                    capsys)  # fmt: skip
    assert code == 2 and "not empty" in err and "keep.tif" in err and "--overwrite" in err
    assert (out / "keep.tif").read_bytes() == b"earlier run"
    assert cli_main(["predict", "--root", str(tree), "--patches", TRAIN[0], "--out", str(out),
                     "--overwrite"]) == 0  # fmt: skip
    assert json.loads((out / "predictions.json").read_text())["D006-2020_FF-S1-14"]["patch_ids"]


def test_finetune_refuses_a_non_empty_output_folder(tree: Path, capsys):
    out = tree.parent / "ft"
    out.mkdir()
    (out / "results.json").write_text('{"test_miou": 0.9}')
    code, err = cli(["finetune", "--root", str(tree), "--output-dir", str(out)], capsys)
    assert code == 2 and "not empty" in err and len(err.splitlines()) == 1
    assert json.loads((out / "results.json").read_text()) == {"test_miou": 0.9}


def test_results_of_another_run_are_never_merged(tmp_path: Path):
    from flairlab.data.results import save_results, start_run

    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"stale": 1}')
    code = f"from flairlab.data.results import save_results; save_results({str(out)!r}, {{'a': 1}})"
    subprocess.run([sys.executable, "-c", code], check=True)  # a new run (process)
    assert json.loads((out / "results.json").read_text()) == {"a": 1}
    save_results(out, {"b": 2})  # this process's first call: a new run again
    save_results(out, {"c": 3})  # the same run: keys are added
    assert json.loads((out / "results.json").read_text()) == {"b": 2, "c": 3}
    start_run(out, overwrite=True)
    assert not (out / "results.json").exists()


# -- checkpoints, models and configs ---------------------------------------------------------------
@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flairlab.models.heads import SegmentationHead
    from flairlab.models.segmodel import SegmentationModel, build_encoder, save_finetuned

    torch.manual_seed(0)
    enc, _ = build_encoder(None, ["aerial"], size="nano", image_size={"aerial": 32},
                           patch_size={"aerial": 8})  # fmt: skip
    model = SegmentationModel(enc, SegmentationHead(enc.embed_dim, 15, 4, 32), ["aerial"])
    out = tmp_path_factory.mktemp("ft") / "finetuned.safetensors"
    return save_finetuned(model, out, {"task": "cosia", "geometry": {"image_size": {"aerial": 32}}})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flairlab.models.checkpoint import save_checkpoint
    from flairlab.models.segmodel import build_encoder

    mae, _ = build_encoder(None, ["aerial"], size="nano", image_size={"aerial": 32},
                           patch_size={"aerial": 8})  # fmt: skip
    root = tmp_path_factory.mktemp("pre") / "checkpoints"
    save_checkpoint(root, 3, mae, {"model": mae.config.to_dict()}, {"optimizer": {},
                    "scheduler": {}, "step": 3})  # fmt: skip
    return root.parent


def test_edited_finetuned_json_is_checked_against_the_weights(finetuned: Path, tmp_path: Path):
    from flairlab.models.segmodel import load_finetuned

    load_finetuned(finetuned)  # as written: fine
    for edit, field in [
        (lambda m: m["model_config"]["modalities"]["aerial"].update(image_size=64),
         "model_config.modalities.aerial.image_size (weights 32, json 64)"),
        (lambda m: m.update(label_size=512), "label_size (weights 32, json 512)"),
        (lambda m: m["model_config"].update(depth=7), "model_config.depth"),
    ]:  # fmt: skip
        copy = tmp_path / "edited.safetensors"
        shutil.copy(finetuned, copy)
        meta = json.loads(finetuned.with_suffix(".json").read_text())
        edit(meta)
        copy.with_suffix(".json").write_text(json.dumps(meta))
        with pytest.raises(DataError, match="does not match the weights") as err:
            load_finetuned(copy)
        assert field in str(err.value) and str(copy.with_suffix(".json")) in str(err.value)


def test_truncated_or_corrupt_checkpoint_files_name_the_file(
    finetuned: Path, pretrained: Path, tmp_path: Path
):
    from flairlab.models.checkpoint import load_mae, load_state, resolve_checkpoint
    from flairlab.models.segmodel import load_finetuned

    run = Path(shutil.copytree(pretrained, tmp_path / "run"))
    ckpt = resolve_checkpoint(run)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cannot read weights.*truncated or corrupt") as err:
        load_mae(run)
    assert str(weights) in str(err.value)
    state = ckpt / "state.pt"
    state.write_bytes(state.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot read training state") as err:
        load_state(ckpt)
    assert str(state) in str(err.value)
    ft = tmp_path / "ft" / "finetuned.safetensors"
    ft.parent.mkdir()
    shutil.copy(finetuned.with_suffix(".json"), ft.with_suffix(".json"))
    ft.write_bytes(finetuned.read_bytes()[:500])
    with pytest.raises(DataError, match="cannot read weights") as err:
        load_finetuned(ft)
    assert str(ft) in str(err.value)


@pytest.mark.parametrize(
    "latest, match",
    [
        ("{not json", "not valid JSON"),
        ('{"step": 3, "dir": "../../elsewhere"}', '"dir" must name a checkpoint folder'),
        ('{"step": 3, "dir": "/etc"}', '"dir" must name a checkpoint folder'),
        ('{"step": 3}', '"dir" must name a checkpoint folder'),
        ('{"step": 9, "dir": "step_0000009"}', "checkpoint named by latest.json is missing"),
    ],
)
def test_latest_json_is_confined_and_parsed(pretrained: Path, tmp_path: Path, latest, match):
    from flairlab.models.checkpoint import resolve_checkpoint

    run = Path(shutil.copytree(pretrained, tmp_path / "run"))
    (run / "checkpoints" / "latest.json").write_text(latest)
    with pytest.raises(DataError, match=match) as err:
        resolve_checkpoint(run)
    assert "latest.json" in str(err.value) or "step_0000009" in str(err.value)


def test_pretraining_checkpoint_given_to_predict_is_named(pretrained: Path, tree, capsys):
    for given in (pretrained, pretrained / "checkpoints" / "step_0000003" / "model.safetensors"):
        args = ["predict", "--root", str(tree), "--patches", TRAIN[0], "--checkpoint", str(given),
                "--out", str(tree.parent / "o")]  # fmt: skip
        code, err = cli(args, capsys)
        assert code == 2 and "pre-training checkpoint" in err and len(err.splitlines()) == 1


def test_pretrain_config_errors_name_the_file_or_field(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  size: [nano\ntrain: {epochs: 2}\n")
    code, err = cli(["pretrain", "--config", str(bad), "--output-dir", str(tmp_path / "o")],
                    capsys)  # fmt: skip
    assert code == 2 and str(bad) in err and "not valid YAML at line 3" in err
    good = tmp_path / "good.yaml"
    good.write_text("seed: 0\ntrain: {epochs: 1}\n")
    code, err = cli(["pretrain", "--config", str(good), "--set", "seed.x=1"], capsys)
    assert code == 2 and "seed is a value, not a section" in err
    code, err = cli(["pretrain", "--set", "train=5", "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "train: expected a section" in err
    with pytest.raises(DataError):  # --debug: the traceback instead of one line
        cli_main(["--debug", "pretrain", "--config", str(bad)])


def test_pretrain_cli_reports_a_bad_file_in_one_line(tree: Path, tmp_path: Path, capsys):
    path = path_of(tree, TRAIN[0], "AERIAL_RGBI")
    rewrite(path, crs="EPSG:32631")
    args = ["pretrain", "--no-progress", "--output-dir", str(tmp_path / "run"),
            "--set", f"data.source={tree}", "--set", "train.batch_size=1",
            "--set", "train.precision=32-true",
            "--set", "model.modalities={aerial: {image_size: 32, patch_size: 8}}"]  # fmt: skip
    code, err = cli(args, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and str(path) in err and "crs" in err


def test_unknown_modality_and_lpis_range_errors(tree: Path):
    from flairlab.data.reader import lpis_target, open_patch

    with pytest.raises(DataError, match=r"unknown modality.*found SENTINEL3"):
        open_patch(tree, TRAIN[0], "SENTINEL3")
    path = path_of(tree, TRAIN[0], "ALL_LABEL-LPIS")
    da = open_patch(tree, TRAIN[0], "lpis")
    da[0] = 99
    with pytest.raises(DataError, match="LPIS level 1 label values out of range") as err:
        lpis_target(da, level=1)
    assert str(path) in str(err.value)


def test_data_warning_is_once_per_file(tree: Path):
    path = path_of(tree, TRAIN[0], "SENTINEL1-ASC_TS")
    with rasterio.open(path) as src:
        arr = src.read()
    arr[0, 0, 0] = np.nan
    rewrite(path, arr)
    ds = dataset(tree, modalities=("s1_asc",), targets=(), train=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        ds[0], ds[0]
    assert len([w for w in seen if issubclass(w.category, DataWarning)]) == 1
