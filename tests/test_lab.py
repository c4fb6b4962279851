"""JupyterLab for real: start a server on loopback, open a notebook in headless Chromium
(Playwright driving Debian's /usr/bin/chromium, no browser download), run it, and check that the
ipywidgets, the bokeh plot and the leaflet map render — nothing fetched from the internet.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
    "# a bokeh plot through HoloViews (BokehJS inlined: works offline)\nimport holoviews as hv\n"
    "hv.extension('bokeh', logo=False, inline=True)\n"
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


def run_in_lab(url: str, root: Path, name: str, shot: Path) -> dict:
    """Open `name` in JupyterLab, run all cells, save; return DOM counts, texts and console."""
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    failed: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("requestfailed", lambda r: failed.append(r.url[:120]))
            page.goto(url.format(path=name), wait_until="domcontentloaded", timeout=90_000)
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
        finally:
            browser.close()
    result["console"] = console
    result["failed_requests"] = failed
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
    if os.environ.get("FLAIRLAB_KEEP_SCREENSHOT"):
        shutil.copy(tmp_path / "lab.png", f"{os.environ['FLAIRLAB_KEEP_SCREENSHOT']}_{name}.png")
