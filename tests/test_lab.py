"""JupyterLab for real: start a server on loopback, open a notebook in headless Chromium
(Playwright driving Debian's /usr/bin/chromium, no browser download), run it, and check that the
ipywidgets, the bokeh plot and the leaflet map render — nothing fetched from the internet.

Executed runs too: `flairlab run` output (signed with the lab user's secret) opened as it is — no
kernel run, no "Trust Notebook" — shows its bokeh plots, the patch browser and the map; the same
notebook altered (so its signature no longer holds) shows the PNG twins instead; no page (a
notebook or an exported map) requests anything from outside the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ERROR_TEXTS = (
    "Error displaying widget",
    "Failed to load model class",
    "model not found",
    "Loading widget...",
    "Javascript Error",
    "Traceback (most recent call last)",
)
CONSOLE_ERRORS = (
    "Bokeh or Panel library is missing",
    "Failed to load model class",
    "Could not create a view",
    "Error rendering",
    "failed to load https://",
)

pytestmark = pytest.mark.slow

SMOKE_CELLS = [
    "# ipywidgets\nimport ipywidgets as widgets\n"
    "slider = widgets.IntSlider(value=3, min=0, max=10, description='lab smoke')\nslider",
    "# a bokeh plot through HoloViews (BokehJS and panel's CSS inlined: works offline)\n"
    "from flairlab.explore.display import load_bokeh\nhv = load_bokeh()\n"
    "hv.Curve([(0, 0), (1, 2), (2, 1)], label='lab smoke').opts(width=320, height=200)",
    "# the leaflet map of flairlab.maps.leaflet (data-URL overlays, split view, legend)\n"
    "import numpy as np\nfrom flairlab.maps.leaflet import Overlay, interactive_map\n"
    "rgba = np.zeros((16, 16, 4), np.uint8)\nrgba[..., 0], rgba[..., 3] = 200, 255\n"
    "bounds = [[48.85, 2.34], [48.86, 2.35]]\n"
    "pred = Overlay('prediction', rgba, bounds, 'classes', [0])\n"
    "truth = Overlay('ground truth', rgba[..., [1, 0, 2, 3]], bounds, 'classes', [1])\n"
    "m = interactive_map([pred, truth])\n"
    "m",
]


def write_smoke_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_markdown_cell("# JupyterLab smoke test")]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in SMOKE_CELLS]
    nbformat.write(nb, path)
    return path


def need_chromium() -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI is set but /usr/bin/chromium is missing (apt-get install chromium)")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """JupyterLab on 127.0.0.1 with a token, its own HOME and config; yields (url, root).

    Its kernels read the session's synthetic sample (FLAIRLAB_SAMPLE_ROOT)."""
    need_chromium()
    tmp_path = tmp_path_factory.mktemp("lab")
    home, root = tmp_path / "home", tmp_path / "root"
    root.mkdir()
    home.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "FLAIRLAB_SAMPLE_ROOT": str(sample_root),
    }
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True", "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"jupyter lab exited ({proc.returncode}):\n{_tail(tmp_path / 'lab.log')}"
                )
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{_tail(tmp_path / 'lab.log')}")
                time.sleep(0.3)
        yield f"{url}/lab/tree/{{path}}?token={token}&reset", root
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


LOCAL_URL = ("http://127.0.0.1:", "ws://127.0.0.1:", "file://", "data:", "blob:", "about:")


def external(urls: list[str]) -> list[str]:
    """The URLs that would leave the machine (anything but loopback, files and inline data)."""
    return [u[:160] for u in urls if not u.startswith(LOCAL_URL)]


def watch(page, console: list[str], failed: list[str], requests: list[str]) -> None:
    """Record console messages, failed requests and every request or websocket of `page`."""
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("requestfailed", lambda r: failed.append(r.url[:120]))
    page.on("request", lambda r: requests.append(r.url))
    page.on("websocket", lambda w: requests.append(w.url))


@contextlib.contextmanager
def lab_page(url: str, name: str) -> Iterator[tuple[Any, dict[str, list[str]]]]:
    """Headless Chromium showing notebook `name` in JupyterLab: yields the page and its log
    (`console`, `failed` requests, every `requests` URL and websocket)."""
    from playwright.sync_api import sync_playwright

    log: dict[str, list[str]] = {"console": [], "failed": [], "requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            watch(page, log["console"], log["failed"], log["requests"])
            page.goto(url.format(path=name), wait_until="domcontentloaded", timeout=90_000)
            yield page, log
        finally:
            browser.close()


def run_in_lab(url: str, root: Path, name: str, shot: Path) -> dict:
    """Open `name` in JupyterLab, run all cells, save; return DOM counts, texts and console."""
    with lab_page(url, name) as (page, log):
        # the panel of *this* notebook (the workspace may restore earlier ones)
        find = (
            "[...(window.jupyterapp?.shell.widgets('main') ?? [])]"
            ".find(w => w.context?.path === n)"
        )
        page.wait_for_function(
            f"(n) => !!{find}?.sessionContext?.session?.kernel", arg=name, timeout=90_000
        )
        page.evaluate(
            f"async (n) => {{ const w = {find}; await w.sessionContext.ready;"
            " window.jupyterapp.shell.activateById(w.id);"
            " await window.jupyterapp.commands.execute('notebook:run-all-cells'); }",
            name,
        )
        page.wait_for_function(
            f"(n) => {{ const w = {find};"
            " const ps = [...w.node.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];"
            " return w.sessionContext.session?.kernel?.status === 'idle'"
            "   && ps.length > 0 && ps.every(e => /\\[\\d+\\]/.test(e.textContent)); }",
            arg=name,
            timeout=240_000,
        )
        page.wait_for_timeout(2500)  # let widget views and BokehJS finish rendering
        page.evaluate(f"async (n) => {{ await {find}.context.save(); }}", name)
        result = {
            "sliders": page.locator(".jp-OutputArea-output .widget-slider").count(),
            "widgets": page.locator(".jp-OutputArea-output .jupyter-widgets").count(),
            "bokeh_roots": page.locator(".jp-OutputArea-output .bk-Figure").count(),
            "bokeh_canvas": page.locator(".jp-OutputArea-output .bk-Figure canvas").count(),
            "leaflet": page.locator(".jp-OutputArea-output .leaflet-container").count(),
            "overlays": page.evaluate(
                "() => [...document.querySelectorAll('img.leaflet-image-layer')]"
                ".map(i => i.complete && i.naturalWidth > 0)"
            ),
            "legend": page.locator(".leaflet-control").filter(has_text="Classes").count(),
            "split": page.locator(".leaflet-sbs-divider").count(),
            "text": page.locator(".jp-NotebookPanel").inner_text(),
        }
        page.screenshot(path=str(shot), full_page=True)
    result["console"] = log["console"]
    result["failed_requests"] = log["failed"]
    result["external_requests"] = external(log["requests"])
    return result


ROOT = Path(__file__).resolve().parents[1]
# notebook -> (parameters for a quick run in the lab, DOM elements that must be there)
REAL = {
    "01_explore_modalities": (
        {"n_patches": 6, "workers": 0, "interactive": True},
        {"widgets": 1, "bokeh_roots": 1, "bokeh_canvas": 1},
    ),
    "05_predict_and_map": (
        {"zone": "D068-2021_UU-S1-2", "device": "cpu", "checkpoint": ""},
        {"widgets": 1, "leaflet": 1, "overlays": 1, "legend": 1},
    ),
}
SMOKE_NEEDS = {"sliders": 2, "widgets": 2, "bokeh_roots": 1, "bokeh_canvas": 1, "leaflet": 1,
               "overlays": 2, "legend": 1, "split": 1}  # fmt: skip


def prepare(name: str, root: Path) -> tuple[str, dict[str, int]]:
    """Copy a notebook into the lab root with its quick parameters injected (papermill, not run)."""
    if name == "lab_smoke":
        write_smoke_notebook(root / "lab_smoke.ipynb")
        return "lab_smoke.ipynb", SMOKE_NEEDS
    import papermill as pm

    src = ROOT / "notebooks" / f"{name}.ipynb"
    if not src.exists():
        pytest.skip(f"{src.name} is not there yet")
    params, needs = REAL[name]
    pm.execute_notebook(src, root / src.name, parameters=params, prepare_only=True,
                        kernel_name="python3", progress_bar=False)  # fmt: skip
    return src.name, needs


CASES = ["lab_smoke", "01_explore_modalities", "05_predict_and_map"]


@pytest.mark.parametrize("name", CASES)
def test_notebook_renders_in_jupyterlab(lab, tmp_path: Path, name: str) -> None:
    """Widgets, bokeh plots and leaflet maps render in a real JupyterLab, offline."""
    url, root = lab
    nb_name, needs = prepare(name, root)
    res = run_in_lab(url, root, nb_name, tmp_path / "lab.png")
    res["overlays_ok"] = all(res["overlays"])
    res["overlays"] = len(res["overlays"])
    info = json.dumps({k: v for k, v in res.items() if k != "text"}, indent=1)[:4000]
    found = [t for t in ERROR_TEXTS if t in res["text"]]
    assert not found, f"error messages on the page: {found}\n{info}"
    bad_console = [m for m in res["console"] if any(e in m for e in CONSOLE_ERRORS)]
    assert not bad_console, f"front-end errors: {bad_console}"
    assert not res["external_requests"], f"requests leaving the machine: {res['external_requests']}"
    missing = {k: (res[k], n) for k, n in needs.items() if res[k] < n}
    assert not missing, f"missing on the page (found, needed): {missing}\n{info}"
    assert res["overlays_ok"], f"an image overlay did not decode\n{info}"
    # what the kernel sent back, as saved by JupyterLab
    saved = nbformat.read(root / nb_name, 4)
    outputs = [o for c in saved.cells if c.cell_type == "code" for o in c.outputs]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert not errors, errors
    mimes = {m for o in outputs for m in o.get("data", {})}
    if needs.get("widgets"):
        assert "application/vnd.jupyter.widget-view+json" in mimes
    if needs.get("bokeh_roots"):
        assert any("holoviews" in m or "bokeh" in m for m in mimes), mimes
    keep(tmp_path / "lab.png", name)


# -- executed runs, opened as they are ------------------------------------------------------------
RUN_STEPS = {  # notebook -> quick parameters (interactive: bokeh plots, the browser, the map)
    "01_explore_modalities": {"n_patches": 6, "workers": 0, "interactive": True},
    "05_predict_and_map": {"zone": "D068-2021_UU-S1-2", "device": "cpu", "checkpoint": ""},
}
# what an opened executed notebook must show (found >= needed), and what it must not show
OPENED_NEEDS = {
    "01_explore_modalities": {"bokeh_canvas": 4, "widgets": 1, "browser_images": 11},
    "05_predict_and_map": {"leaflet": 1, "overlays": 2, "legend": 1, "split": 1},
}
RAW_REPRS = ("VBox(children=", "Map(center=")  # widget reprs instead of widgets
FIRST_FRAME = re.compile(r"(?<![\d.])0%\|")  # a progress bar saved at its first frame


@pytest.fixture(scope="module")
def executed_run(lab, sample_root: Path) -> Path:
    """`flairlab run` of 01 and 05 into the lab's root, signed with the lab user's secret."""
    from flairlab.runs.runner import run_pipeline

    _, root = lab
    steps = "".join(
        f"  - notebook: {nb}.ipynb\n    parameters: {json.dumps(params)}\n"
        for nb, params in RUN_STEPS.items()
    )
    pipe = root / "lab_run.yaml"
    pipe.write_text(f"name: lab\nnotebooks_dir: {ROOT / 'notebooks'}\nsteps:\n{steps}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_DATA_DIR", str(root.parent / "home" / "data"))  # the lab's secret
        mp.setenv("FLAIRLAB_SAMPLE_ROOT", str(sample_root))
        (res,) = run_pipeline(pipe, None, root / "runs")
    assert res.status == "ok", json.loads((res.run_dir / "status.json").read_text())["error"]
    return res.run_dir


def keep(shot: Path, name: str) -> None:
    """Copy a screenshot to `$FLAIRLAB_KEEP_SCREENSHOT_<name>.png` when that variable is set."""
    if os.environ.get("FLAIRLAB_KEEP_SCREENSHOT"):
        shutil.copy(shot, f"{os.environ['FLAIRLAB_KEEP_SCREENSHOT']}_{name}.png")


def open_in_lab(url: str, name: str, needs: dict[str, int], shot: Path) -> dict:
    """Open `name` in JupyterLab without running anything; wait (up to 90 s) until `needs` are
    on the page; return DOM counts, the page text, console and every request made."""
    counts = {
        "bokeh_canvas": ".jp-OutputArea-output .bk-Figure canvas",
        "widgets": ".jp-OutputArea-output .jupyter-widgets",
        "browser_images": ".jp-OutputArea-output .widget-image",
        "leaflet": ".jp-OutputArea-output .leaflet-container",
        "overlays": "img.leaflet-image-layer",
        "split": ".leaflet-sbs-divider",
        "static_twins": ".jp-OutputArea-output .flairlab-static-twin img",
        "images": ".jp-OutputArea-output img",
    }
    with lab_page(url, name) as (page, log):
        page.wait_for_selector(".jp-Notebook .jp-OutputArea-output", state="attached",
                               timeout=90_000)
        deadline = time.monotonic() + 90
        while True:
            found = {k: page.locator(sel).count() for k, sel in counts.items()}
            legend = page.locator(".leaflet-control").filter(has_text="Classes")
            found["legend"] = legend.count()
            if all(found[k] >= n for k, n in needs.items()) or time.monotonic() > deadline:
                break
            page.wait_for_timeout(1000)
        page.wait_for_timeout(1500)
        found["text"] = page.locator(".jp-NotebookPanel").inner_text()
        found["news_prompt"] = page.get_by_text("official Jupyter news").count()
        page.screenshot(path=str(shot), full_page=True)
    return {**found, "console": log["console"], "failed_requests": log["failed"],
            "external_requests": external(log["requests"])}  # fmt: skip


@pytest.mark.parametrize("step", list(RUN_STEPS))
def test_executed_run_renders_as_opened(lab, executed_run: Path, tmp_path: Path, step: str) -> None:
    """No kernel run, no "Trust Notebook": the saved plots, widgets and map render."""
    url, root = lab
    name = (executed_run / f"{step}.ipynb").relative_to(root).as_posix()
    needs = OPENED_NEEDS[step]
    res = open_in_lab(url, name, needs, tmp_path / "opened.png")
    info = json.dumps({k: v for k, v in res.items() if k != "text"}, indent=1)[:3000]
    missing = {k: (res[k], n) for k, n in needs.items() if res[k] < n}
    assert not missing, f"not rendered (found, needed): {missing}\n{info}"
    raw = [r for r in RAW_REPRS if r in res["text"]] + FIRST_FRAME.findall(res["text"])
    assert not raw, f"text stand-ins instead of widgets or finished bars: {raw}\n{info}"
    assert res["static_twins"] == 0, "PNG twins shown next to live bokeh plots"
    assert not res["external_requests"], f"requests leaving the machine: {res['external_requests']}"
    # the environment's settings (Makefile, binder/postBuild) turn JupyterLab's news prompt off
    assert res["news_prompt"] == 0, "JupyterLab asks about news although it must stay offline"
    keep(tmp_path / "opened.png", f"run_{step}")


def test_untrusted_copy_shows_the_png_twins(lab, executed_run: Path, tmp_path: Path) -> None:
    """Someone else's copy (signature no longer valid): scripts stay off, the PNG twins show."""
    url, root = lab
    nb = nbformat.read(executed_run / "01_explore_modalities.ipynb", 4)
    nb.cells[0].source += "\n\n(a copy edited elsewhere)"  # content changed: not trusted
    nbformat.write(nb, executed_run / "01_copy.ipynb")
    name = (executed_run / "01_copy.ipynb").relative_to(root).as_posix()
    res = open_in_lab(url, name, {"static_twins": 4}, tmp_path / "untrusted.png")
    assert res["static_twins"] >= 4 and res["bokeh_canvas"] == 0, {
        k: v for k, v in res.items() if k != "text"}
    assert not res["external_requests"], res["external_requests"]
    keep(tmp_path / "untrusted.png", "untrusted")


def test_exported_map_pages_load_nothing_from_outside(executed_run: Path, tmp_path: Path) -> None:
    """The `*_map.html` pages of the run, opened from disk: title box, layers, no request out."""
    from playwright.sync_api import sync_playwright

    pages = sorted(executed_run.glob("05_predict_and_map/*_map.html"))
    assert pages
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            for html in pages:
                page = browser.new_page(viewport={"width": 1100, "height": 800})
                console: list[str] = []
                failed: list[str] = []
                requests: list[str] = []
                watch(page, console, failed, requests)
                page.goto(html.as_uri(), wait_until="load")
                page.wait_for_timeout(800)
                assert not external(requests), external(requests)
                assert not failed and not [m for m in console if m.startswith("error")], console
                info = page.locator(".flairlab-info").inner_text()
                assert html.name.removesuffix("_map.html") in info and "model" in info
                assert page.title().startswith(html.name.removesuffix("_map.html"))
                assert page.locator("img.leaflet-image-layer").count() >= 3
                page.screenshot(path=str(tmp_path / f"{html.stem}.png"))
                keep(tmp_path / f"{html.stem}.png", html.stem)
        finally:
            browser.close()
