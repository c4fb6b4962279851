"""data_catalog.yaml validation: every mistake names its YAML field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from flairlab.data.catalog import load_catalog, parse_catalog
from flairlab.data.errors import CatalogError

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "data_catalog.yaml").read_text(encoding="utf-8"))


def _broken(edit) -> dict:
    data = copy.deepcopy(RAW)
    edit(data)
    return data


def test_project_catalog_is_valid():
    cat = load_catalog(ROOT / "data_catalog.yaml")
    assert len(cat.modalities) == 10
    assert cat.modality("SENTINEL2_TS").band_group_indices == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert cat.modality("aerial").band_group_indices == [[3], [0, 1, 2]]
    cosia = cat.nomenclature("cosia")
    assert cosia.n_classes == 19 and cosia.ignored_ids == [15, 16, 17, 18]
    assert cosia.colors()[0] == (0xDB, 0x0E, 0x9A)
    assert [cat.nomenclature(f"lpis_l{i}").n_classes for i in (1, 2, 3)] == [23, 31, 46]
    assert cat.modality("s1_desc").name == "SENTINEL1-DESC_TS"


@pytest.mark.parametrize(
    ("edit", "field", "why"),
    [
        (lambda d: d["modalities"]["AERIAL_RGBI"].update(colour="red"),
         "modalities.AERIAL_RGBI.colour", "Extra inputs"),
        (lambda d: d["modalities"]["SENTINEL2_TS"].update(n_bands=12),
         "modalities.SENTINEL2_TS", "bands lists 10 entries but n_bands is 12"),
        (lambda d: d["nomenclatures"]["cosia"]["classes"][3].update(color="#12345"),
         "nomenclatures.cosia.classes.3.color", "'#rrggbb'"),
        (lambda d: d["modalities"]["SENTINEL1-ASC_TS"].update(band_groups=[["VV"], ["HH"]]),
         "modalities.SENTINEL1-ASC_TS", "unknown bands ['HH']"),
        (lambda d: d["modalities"]["SPOT_RGBI"].update(size_px=60),
         "modalities.SPOT_RGBI", "expected patch_size_m"),
        (lambda d: d["modalities"]["DEM_ELEV"]["stats"].update(mean=[1.0]),
         "modalities.DEM_ELEV", "stats.mean has 1 values"),
        (lambda d: d["sources"]["sample"].pop("path"), "sources.sample.path", "Field required"),
        (lambda d: d["modalities"]["AERIAL_RGBI"].update(dtype="uint9"),
         "modalities.AERIAL_RGBI.dtype", "uint8"),
    ],
)
def test_invalid_catalog_names_field(edit, field, why):
    with pytest.raises(CatalogError) as err:
        parse_catalog(_broken(edit), Path("my_catalog.yaml"))
    msg = str(err.value)
    assert msg.startswith("my_catalog.yaml: invalid catalog")
    assert field in msg and why in msg


def test_bad_yaml_and_missing_file(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("modalities: [unclosed\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(p)
    with pytest.raises(CatalogError, match="catalog file not found"):
        load_catalog(tmp_path / "nope.yaml")


def test_source_env_override(monkeypatch, tmp_path: Path):
    cat = load_catalog(ROOT / "data_catalog.yaml")
    assert cat.source_root("sample") == (ROOT / "data" / "flairhub-sample").resolve()
    monkeypatch.setenv("FLAIRHUB_ROOT", str(tmp_path))
    assert cat.source_root("flairhub") == tmp_path.resolve()
    with pytest.raises(KeyError, match="unknown source"):
        cat.source_root("nas")
