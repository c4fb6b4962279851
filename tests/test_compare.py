"""`flairlab.runs.compare` on fake run folders, and notebook 06 run on them through the runner."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import matplotlib
import pytest

from flairlab.data.errors import DataError
from flairlab.runs import compare

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]


def fake_run(runs: Path, name: str, steps: dict, status: str = "ok", bad: set = frozenset()):
    """A run folder as `flairlab run` writes it: params.json, status.json, <step>/results.json."""
    d = runs / name
    d.mkdir(parents=True)
    params = {"pipeline": "fake", "run": name, "sweep": None, "steps": []}
    st = {
        "status": status,
        "started": f"2026-01-01T00:00:{len(list(runs.iterdir())):02d}",
        "steps": [],
    }
    for step, (p, results) in steps.items():
        params["steps"].append(
            {"name": step, "notebook": f"{step.split('+')[0]}.ipynb", "parameters": p}
        )
        st["steps"].append({"name": step, "status": "failed" if step in bad else "ok"})
        if results is not None:
            (d / step).mkdir()
            (d / step / "results.json").write_text(json.dumps(results))
    (d / "params.json").write_text(json.dumps(params))
    (d / "status.json").write_text(json.dumps(st))
    return d


def miou(pre: bool, frac: float, fusion: str, w: float) -> float:
    return 0.3 + 0.2 * pre + 0.1 * frac + 0.05 * (fusion == "group") + 0.02 * (w > 0)


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """16 runs: fusion × contrastive weight × label fraction × (pretrained, scratch)."""
    runs = tmp_path / "runs"
    grid = itertools.product(["group", "shared"], [0.0, 0.5], [0.1, 1.0], [True, False])
    for i, (fusion, w, frac, pre) in enumerate(grid):
        pt = {"fusion_mode": fusion, "contrastive_weight": w, "output_dir": "x"}
        ft = {"checkpoint": "ckpt" if pre else "", "label_fraction": frac, "output_dir": "y"}
        res = {
            "pretrained": pre,
            "test_miou": miou(pre, frac, fusion, w),
            "test": {"oa": 0.9},
            "history": [1, 2],
            "model": {"config": {"fusion_mode": fusion}},  # as 04_finetune writes it
        }
        fake_run(
            runs,
            f"2026-{i:02d}-fake",
            {"03_pretrain_mae": (pt, {"loss": 1.0}), "04_finetune": (ft, res)},
        )
    # a failed fine-tuning step, a sweep index folder and a broken folder: none may count
    fake_run(
        runs,
        "2026-97-failed",
        {"04_finetune": ({"label_fraction": 0.1}, None)},
        "failed",
        {"04_finetune"},
    )
    (runs / "2026-98-sweep").mkdir()
    (runs / "2026-98-sweep" / "sweep.json").write_text("{}")
    (runs / "2026-99-broken").mkdir()
    (runs / "2026-99-broken" / "params.json").write_text("{not json")
    return runs


def test_load_runs_rows_columns_and_skips(runs: Path) -> None:
    df = compare.load_runs(runs)
    assert len(df) == 16 * 2 + 1
    assert df["run"].nunique() == 17  # the sweep folder is not a run, the broken one is skipped
    (skipped,) = df.attrs["skipped"]
    assert "2026-99-broken" in skipped and "unreadable run record" in skipped
    ft = compare.step_table(df, "04_finetune")
    assert len(ft) == 16 and set(ft["step_status"]) == {"ok"}
    assert {
        "param.label_fraction",
        "result.test_miou",
        "result.test.oa",
        "03_pretrain_mae.fusion_mode",
    } <= set(ft.columns)
    assert "result.history" not in ft.columns  # lists are not table cells
    assert compare.column(ft, "fusion_mode") == "03_pretrain_mae.fusion_mode"
    assert compare.column(ft, "test_miou") == "result.test_miou"
    with pytest.raises(DataError, match="column 'nope' not found"):
        compare.column(ft, "nope")
    with pytest.raises(DataError, match="ambiguous"):
        compare.column(ft.assign(**{"x.fusion_mode": 1}), "fusion_mode")


def test_summaries_match_the_generating_formula(runs: Path) -> None:
    ft = compare.finetune_table(compare.load_runs(runs))
    by_pre = compare.summarize(ft, "pretrained", "test_miou")
    # mean over fraction {0.1, 1}, fusion {group, shared}, w {0, 0.5}: 0.3 + 0.055 + 0.025 + 0.01
    assert by_pre.loc[False, "mean"] == pytest.approx(0.39)
    assert by_pre.loc[True, "mean"] == pytest.approx(0.59)
    assert by_pre["runs"].tolist() == [8, 8]
    fusion = compare.summarize(compare.only_true(ft, "pretrained"), "fusion_mode", "test_miou")
    assert fusion.loc["group", "mean"] - fusion.loc["shared", "mean"] == pytest.approx(0.05)
    assert fusion["runs"].tolist() == [4, 4]
    curves = compare.label_efficiency(ft, "test_miou", "label_fraction", by="pretrained")
    assert curves.loc[1.0, True] - curves.loc[0.1, True] == pytest.approx(0.09)
    assert curves.loc[0.1, True] - curves.loc[0.1, False] == pytest.approx(0.2)
    methods = compare.summarize(ft, "pretraining", "test_miou")
    assert set(methods.index) == {"scratch", "MAE", "MAE + contrastive (w=0.5)"}
    assert methods.loc["MAE + contrastive (w=0.5)", "mean"] - methods.loc[
        "MAE", "mean"
    ] == pytest.approx(0.02)
    assert compare.varies(ft, "label_fraction") and not compare.varies(ft, "test.oa")


def test_plots_and_records(runs: Path, tmp_path: Path) -> None:
    ft = compare.finetune_table(compare.load_runs(runs))
    s = compare.compare_factor(
        ft, "pretrained", "test_miou", title="t", output_dir=tmp_path, name="p"
    )
    assert (tmp_path / "figures" / "p.png").stat().st_size > 1000
    assert compare.records(s)[0] == {"pretrained": False, **{k: s.iloc[0][k] for k in s.columns}}
    assert compare.compare_factor(ft, "test.oa", "test_miou", title="t") is None  # constant
    fig = compare.plot_runs(ft, "test_miou", label="pretraining")
    assert len(fig.axes[0].patches) == 16
    assert compare.pick(ft, ["run", "label_fraction", "nope"]).columns.tolist() == [
        "run",
        "label_fraction",
    ]


def test_empty_and_missing_runs_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="runs folder not found"):
        compare.load_runs(tmp_path / "nothing")
    (tmp_path / "runs").mkdir()
    df = compare.load_runs(tmp_path / "runs")
    assert df.empty and compare.step_table(df, "04_finetune").empty
    assert compare.run_overview(df).empty


@pytest.mark.slow
def test_notebook_06_through_the_runner(runs: Path, tmp_path: Path) -> None:
    from flairlab.runs.runner import run_pipeline

    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        f"name: compare\nnotebooks_dir: {ROOT / 'notebooks'}\nsteps:\n"
        f"  - notebook: 06_compare_runs.ipynb\n    parameters: {{runs_dir: '{runs}'}}\n"
    )
    (res,) = run_pipeline(pipe, None, tmp_path / "out_runs")
    assert res.status == "ok", json.loads((res.run_dir / "status.json").read_text())["error"]
    out = json.loads((res.run_dir / "06_compare_runs" / "results.json").read_text())
    assert out["n_runs"] == 17 and out["n_finetune_results"] == 16
    by_pre = {r["pretrained"]: r["mean"] for r in out["pretrained_vs_scratch"]}
    assert by_pre[True] == pytest.approx(0.59) and by_pre[False] == pytest.approx(0.39)
    assert {r["model.config.fusion_mode"] for r in out["fusion_modes"]} == {"group", "shared"}
    assert len(out["label_efficiency"]) == 2 and len(out["mae_vs_contrastive"]) == 2
    figures = {p.stem for p in (res.run_dir / "06_compare_runs" / "figures").glob("*.png")}
    assert figures == {
        "all_runs",
        "pretrained_vs_scratch",
        "fusion_modes",
        "label_efficiency",
        "mae_vs_contrastive",
        "ssl_study",  # the committed pre-training study (benchmarks/reported/ssl_study.json)
    }
    committed = json.loads((ROOT / "benchmarks" / "reported" / "ssl_study.json").read_text())
    assert out["ssl_study"] == committed["arms"] and out["ssl_study_steps"] == committed["steps"]
