"""Hostile strings in every HTML export: nothing executes, the text shows literally.

Class names (from the catalog), the legend title and layer names are set to template-injection
(`{{7*7}}`, `{% raw %}`, a Jinja payload that would create a folder), script-injection
(`</script><script>…`) and attribute-injection (`"><img onerror>`) strings; the pages are opened
in headless Chromium (Playwright driving Debian's /usr/bin/chromium), which must run no injected
code, and whose visible text must hold every string as written.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from test_lab import CHROMIUM, need_chromium

from flairlab.data.catalog import load_catalog
from flairlab.maps.leaflet import Overlay

ROOT = Path(__file__).resolve().parents[1]


def hostile_strings(canary: Path) -> list[str]:
    """Each one, if interpreted, sets `window.__pwned`, opens a dialog, prints 49 or creates
    `canary` (a Jinja payload with access to `os`)."""
    return [
        "{{7*7}} class",
        "{% raw %}unclosed",
        "</script><script>window.__pwned = 'script';alert(1)</script>",
        '"><img src=x onerror="window.__pwned=\'img\'">',
        "{{ cycler.__init__.__globals__.os.mkdir('" + str(canary) + "') }}",
        "<b>bold?</b> & 'quotes' \u2028 line sep",
    ]


def open_in_chromium(page_file: Path) -> dict:
    """Load a page; return its visible text, `window.__pwned`, dialogs and page errors."""
    from playwright.sync_api import sync_playwright

    dialogs: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_file.resolve().as_uri(), wait_until="load", timeout=60_000)
            page.wait_for_timeout(500)
            return {
                "text": page.evaluate("document.body.innerText"),
                "pwned": page.evaluate("window.__pwned === undefined ? null : window.__pwned"),
                "dialogs": dialogs,
                "errors": errors,
                "images": page.evaluate("document.querySelectorAll('img[src=\"x\"]').length"),
            }
        finally:
            browser.close()


def hostile_catalog(tmp_path: Path, names: list[str]):
    """The project's catalog with the first COSIA class names replaced by `names`."""
    data = yaml.safe_load((ROOT / "data_catalog.yaml").read_text(encoding="utf-8"))
    for cls, name in zip(data["nomenclatures"]["cosia"]["classes"], names, strict=False):
        cls["name"] = name
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_catalog(path)


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def overlay(name: str, kind: str, values: list[int], colors: dict, shift: float) -> Overlay:
    """An 8×8 overlay in stripes of `values`, near Paris."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    for j, v in enumerate(np.resize(values, 8)):
        rgba[:, j] = (*colors[int(v)], 255)
    s, w = 48.85 + shift, 2.35
    return Overlay(name, rgba, [[s, w], [s + 0.001, w + 0.0015]], kind, sorted(values))


def test_map_export_with_hostile_strings_runs_nothing_and_shows_text(tmp_path: Path) -> None:
    from flairlab.maps.html_map import export_html
    from flairlab.maps.leaflet import ERROR_LEGEND

    need_chromium()
    canary = tmp_path / "pwned-by-template"
    strings = hostile_strings(canary)
    cat = hostile_catalog(tmp_path, strings)
    colors = cat.nomenclature("cosia").colors()
    err_colors = {k: _rgb(c) for k, (_, c) in ERROR_LEGEND.items()}
    layers = [
        overlay(strings[2], "classes", [0, 1, 2], colors, 0.0),  # layer names: script, attribute
        overlay(strings[3], "classes", [3, 4, 5], colors, 0.0),
        overlay(strings[0], "error", [0, 1], err_colors, 0.001),  # and template injection
    ]
    page = export_html(layers, tmp_path / "map.html", split=(strings[2], strings[3]),
                       title=strings[1] + " " + strings[4], catalog=cat)  # fmt: skip
    assert not canary.exists()  # no template ran during the export
    seen = open_in_chromium(page)
    assert seen["pwned"] is None and seen["dialogs"] == [] and seen["images"] == 0, seen
    assert seen["errors"] == [], seen["errors"]
    text = seen["text"]
    # legend (class names, title), layer control and opacity sliders (layer names), literally
    for s in strings:
        shown = s.replace("\u2028", "").split()  # innerText folds whitespace / line separators
        assert all(part in text for part in shown), (s, text)
    assert text.count(strings[2]) >= 2 and text.count(strings[3]) >= 2  # control + slider
    assert "49" not in text  # {{7*7}} was not evaluated


def test_interactive_map_escapes_layer_and_class_names(tmp_path: Path) -> None:
    """ipyleaflet shows layer names and the legend as HTML in JupyterLab: both escaped."""
    pytest.importorskip("leafmap")
    from flairlab.maps.leaflet import interactive_map

    strings = hostile_strings(tmp_path / "canary")
    cat = hostile_catalog(tmp_path, strings)
    colors = cat.nomenclature("cosia").colors()
    layers = [overlay(strings[3], "classes", [0, 1, 2, 3], colors, 0.0)]
    m = interactive_map(layers, split=None, legend_title=strings[2], catalog=cat)
    names = [lyr.name for lyr in m.layers if lyr.name and "img" in lyr.name]
    assert names == ["&quot;&gt;&lt;img src=x onerror=&quot;window.__pwned=&#x27;img&#x27;&quot;"
                     "&gt;"]  # fmt: skip
    legend = m.legend_widget.value
    assert "</script><script>" not in legend and "&lt;/script&gt;&lt;script&gt;" in legend
    assert "<img" not in legend and "{{7*7}} class" in legend


def test_notebook_html_export_shows_hostile_outputs_as_text(tmp_path: Path) -> None:
    """`flairlab.runs.notebooks.export_html` (nbconvert) of a run whose outputs hold the strings."""
    from flairlab.runs.notebooks import export_html

    need_chromium()
    strings = hostile_strings(tmp_path / "canary")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(names)")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="\n".join(strings) + "\n"),
        nbformat.v4.new_output(
            "execute_result", data={"text/plain": repr(strings)}, execution_count=1
        ),
    ]
    nb.cells = [cell]
    ipynb = tmp_path / "run.ipynb"
    nbformat.write(nb, ipynb)
    seen = open_in_chromium(export_html(ipynb))
    assert seen["pwned"] is None and seen["dialogs"] == [] and seen["images"] == 0, seen
    for s in strings[:5]:
        assert s in seen["text"], s


def test_patch_browser_legend_escapes_class_names(tmp_path: Path) -> None:
    """The exploration browser's legend is an ipywidgets HTML widget: names are text there."""
    from flairlab.explore.browser import _legend_html

    strings = hostile_strings(tmp_path / "canary")
    markup = _legend_html([(i, s, "#123456") for i, s in enumerate(strings)], strings[2])
    assert "<script>" not in markup and "<img" not in markup and "<b>bold?" not in markup
    assert "&lt;/script&gt;&lt;script&gt;" in markup and "{{7*7}} class" in markup
