"""Notebooks are tested like code.

* every committed notebook is clean (no outputs), has exactly one `parameters` cell of flat, typed,
  commented scalars with `output_dir`, and is the jupytext pair of its percent-format source
  `notebooks/NN_name.py` (same cells, same tags; the source is what people edit);
* the pipelines cover every notebook and pass the runner's parameter checks;
* CI executes every notebook through the runner (`pipelines/ci.yaml`, smallest parameters) on
  the session's synthetic sample, exports each executed notebook to HTML (nbconvert) and opens it
  in headless Chromium: no cell errored and the figures are there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from flairlab.runs.notebooks import (
    count_images,
    error_outputs,
    export_html,
    notebook_parameters,
    output_problems,
    read_notebook,
)
from flairlab.runs.pipeline import load_pipeline, plan_runs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))
NO_DATA_SOURCE = {"06_compare_runs"}  # reads runs/, not the dataset
CHROMIUM = Path("/usr/bin/chromium")


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_is_committed_clean(path: Path) -> None:
    nb = read_notebook(path)
    assert not output_problems(nb), f"{path.name}: {output_problems(nb)} (strip outputs)"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_parameters_cell_is_flat_typed_and_commented(path: Path) -> None:
    params = notebook_parameters(path)  # exactly one cell; `name: type = literal` only
    undocumented = [p.name for p in params.values() if not p.help]
    assert not undocumented, f"{path.name}: parameters without a `# comment`: {undocumented}"
    out = params.get("output_dir")
    assert out is not None and out.type_name == "str", f"{path.name}: needs `output_dir: str`"
    assert out.default == f"outputs/{path.stem}"
    if path.stem not in NO_DATA_SOURCE:
        assert "source" in params and params["source"].default == "sample"


def _cells(nb: nbformat.NotebookNode) -> list[tuple]:
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_is_the_jupytext_pair_of_its_source(path: Path) -> None:
    import jupytext

    source = path.with_suffix(".py")
    assert source.is_file(), f"{path.name} has no jupytext source {source.name}"
    text = jupytext.read(source)  # percent format, with the pairing in its header
    committed = read_notebook(path)
    for nb in (text, committed):
        assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    assert _cells(text) == _cells(committed), (
        f"{path.name} and {source.name} differ: run `jupytext --sync {source.relative_to(ROOT)}`"
    )
    tagged = [c for c in committed.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"


def test_every_notebook_source_has_its_notebook() -> None:
    sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert [s.stem for s in sources] == ids(NOTEBOOKS)
    assert not (ROOT / "notebooks" / "_build").exists()


def test_ci_and_demo_pipelines_cover_every_notebook() -> None:
    names = {p.name for p in NOTEBOOKS}
    for pipeline in ("ci", "demo"):
        pipe = load_pipeline(ROOT / "pipelines" / f"{pipeline}.yaml")
        used = {pipe.notebook_path(i).name for i in range(len(pipe.steps))}
        assert names <= used, f"{pipeline}.yaml misses {sorted(names - used)}"
        order = [pipe.notebook_path(i).name for i in range(len(pipe.steps))]
        assert order == sorted(order), f"{pipeline}.yaml runs the notebooks out of order"


@pytest.mark.parametrize("path", PIPELINES, ids=ids(PIPELINES))
def test_pipelines_pass_the_parameter_checks(path: Path) -> None:
    plans = plan_runs(load_pipeline(path))  # raises DataError on any unknown name or bad type
    assert plans and all(plan.steps for plan in plans)


# -- execution through the runner ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ci_run(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`flairlab run pipelines/ci.yaml` on the session sample; returns the run folder."""
    from flairlab.runs.runner import run_pipeline

    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLAIRLAB_SAMPLE_ROOT", str(sample_root))
        (result,) = run_pipeline(ROOT / "pipelines" / "ci.yaml", None, runs)
    status = json.loads((result.run_dir / "status.json").read_text())
    if result.status != "ok":
        err = status["error"]
        pytest.fail(
            f"step {err['step']} failed in cell {err['cell_index']}: {err['ename']}: "
            f"{err['evalue']}\n" + "\n".join(err["traceback"][-8:])
        )
    return result.run_dir


def ci_steps() -> list[str]:
    pipe = load_pipeline(ROOT / "pipelines" / "ci.yaml")
    return [pipe.step_name(i) for i in range(len(pipe.steps))]


@pytest.mark.slow
@pytest.mark.parametrize("step", ci_steps())
def test_ci_step_ran_and_wrote_results(ci_run: Path, step: str) -> None:
    status = json.loads((ci_run / "status.json").read_text())
    (rec,) = [s for s in status["steps"] if s["name"] == step]
    assert rec["status"] == "ok"
    nb = read_notebook(ci_run / f"{step}.ipynb")
    assert not error_outputs(nb)
    assert [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    results = json.loads((ci_run / step / "results.json").read_text())
    assert isinstance(results, dict) and results, f"{step}: empty results.json"
    pngs = list((ci_run / step / "figures").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs), f"{step}: no figures saved"
    env = json.loads((ci_run / "environment.json").read_text())
    assert env["data"]["sample"]["exists"] and env["data"]["sample"]["n_files"] > 0


def _need_chromium() -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI is set but /usr/bin/chromium is missing (apt-get install chromium)")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright")


def html_problems(pages: list[tuple[str, Path, int]]) -> list[str]:
    """Open each exported page in headless Chromium: error outputs, missing or broken images."""
    from playwright.sync_api import sync_playwright

    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            for step, html, n_images in pages:
                page.goto(html.as_uri(), wait_until="load")
                imgs = page.evaluate(
                    "() => [...document.querySelectorAll('.jp-OutputArea-output img')]"
                    ".map(i => i.complete && i.naturalWidth > 0)"
                )
                errors = page.locator(
                    ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                ).filter(has_text="Traceback")
                cells = page.locator(".jp-Cell").count()
                if n_images == 0 or len(imgs) < n_images or not all(imgs):
                    problems.append(f"{step}: {n_images} figures in the notebook, img {imgs}")
                if errors.count():
                    problems.append(f"{step}: error output {errors.first.inner_text()[:300]}")
                if cells < 3:
                    problems.append(f"{step}: only {cells} cells rendered")
        finally:
            browser.close()
    return problems


def test_html_check_catches_errors_and_broken_figures(tmp_path: Path) -> None:
    """The browser check itself: a notebook with a traceback and an undecodable PNG fails it."""
    _need_chromium()
    nb = nbformat.v4.new_notebook()
    err = nbformat.v4.new_output(
        "error",
        ename="ValueError",
        evalue="bad",
        traceback=["Traceback (most recent call last)", "ValueError: bad"],
    )
    png = nbformat.v4.new_output(
        "display_data", data={"image/png": "bm90IGEgcG5n", "text/plain": "fig"}
    )
    nb.cells = [
        nbformat.v4.new_code_cell("1/0", outputs=[err]),
        nbformat.v4.new_code_cell("plot()", outputs=[png]),
        nbformat.v4.new_markdown_cell("end"),
    ]
    nbformat.write(nb, tmp_path / "bad.ipynb")
    problems = html_problems([("bad", export_html(tmp_path / "bad.ipynb"), count_images(nb))])
    assert any("error output" in p for p in problems), problems
    assert any("img [False]" in p for p in problems), problems


@pytest.mark.slow
def test_executed_notebooks_render_in_chromium(ci_run: Path) -> None:
    """HTML export of every executed notebook: no error output, every figure decoded."""
    _need_chromium()
    pages = []
    for step in ci_steps():
        nb = read_notebook(ci_run / f"{step}.ipynb")
        pages.append((step, export_html(ci_run / f"{step}.ipynb"), count_images(nb)))
    problems = html_problems(pages)
    assert not problems, "\n".join(problems)
