"""How flairlab figures reach a notebook: BokehJS once, nothing from a CDN, a PNG where no JS runs.

* `setup_plots(interactive)` — the first cell of every exploration notebook: when `interactive`,
  the HoloViews bokeh extension with BokehJS inlined (works offline). Two fixes
  on top of `hv.extension`:

  - panel gives every plot `ImportedStyleSheet` links to `cdn.holoviz.org` (4 CSS files fetched
    per page, failing offline); a panel pre-processing hook swaps them for the packaged CSS;
  - `hv.extension` imports `nbformat` only for HoloViews' notebook-archive feature, which pulls
    `jsonschema` → `rfc3987_syntax`, compiling 38 Lark grammars (≈ 3 s of a ≈ 9 s cell on a
    2-core machine, `benchmarks/bench_first_picture.py`); flairlab does not use the archive, so
    the extension is loaded without it when `nbformat` is not imported yet;
  - HoloViews draws with WebGL by default, one WebGL context per plot; browsers keep about 16
    per page and drop the oldest, so notebook 02 (≈ 50 histogram panels) showed empty axes.
    flairlab's plots are small: they are drawn on a plain canvas.

* `html_with_static_twin(html, png)` — a plot's HTML with its PNG twin in front of it and a script
  that removes the PNG once BokehJS is there. Where no script runs (an untrusted notebook, GitHub,
  a mail client), the PNG stays and the figure still reads; where BokehJS runs, only the live plot
  shows. `flairlab.explore.plots.ExplorePlot` displays every interactive plot this way.
"""

from __future__ import annotations

import base64
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

_TWIN_SCRIPT = (
    "<script>(function (s) {"  # s: this script element; its parent holds the twin and the plot
    " var n = 0; function done() {"
    " if (window.Bokeh && s.parentNode) {"
    " var t = s.parentNode.querySelector('.flairlab-static-twin'); if (t) t.remove();"
    " } else if (n++ < 600) { setTimeout(done, 100); } }"
    " done(); })(document.currentScript);</script>"
)


def html_with_static_twin(html: str, png: bytes, alt: str = "figure") -> str:
    """`html` (a bokeh plot) preceded by `png` as a `data:` image that a script removes when
    BokehJS is loaded; without scripts the image stays. Returns the new HTML."""
    import html as html_lib

    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    twin = (
        f'<div class="flairlab-static-twin"><img src="{uri}" alt="{html_lib.escape(alt)}"'
        ' style="max-width:100%"></div>'
    )
    return twin + html + _TWIN_SCRIPT


@contextlib.contextmanager
def _without_optional_module(name: str) -> Iterator[None]:
    """Make `import name` raise ImportError inside the block, unless it is already imported
    (libraries that treat it as optional skip the feature that needs it)."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]  # import -> ImportError
    try:
        yield
    finally:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


def _inline_panel_stylesheets(viewable: Any, root: Any) -> None:
    """panel pre-processing hook: replace `cdn.holoviz.org` stylesheet links of every model of
    `root` with the same CSS from panel's package, inlined (what `pn.config.inline` does for
    panel's own display path, which HoloViews' renderer bypasses)."""
    from bokeh.models import UIElement
    from panel.io.notebook import patch_inline_stylesheets

    for model in root.select({"type": UIElement}):
        patch_inline_stylesheets(model)


def bokeh_backend() -> Any:
    """HoloViews with the bokeh plotting backend registered (element options validate), without
    sending BokehJS anywhere; returns `hv`."""
    import holoviews as hv

    if "bokeh" not in hv.Store.loaded_backends():
        import holoviews.plotting.bokeh  # registers the backend and its options

        hv.Store.set_current_backend("bokeh")
    hv.Store.renderers["bokeh"].webgl = False  # canvas: see the module docstring
    return hv


_notebook_loaded = False  # BokehJS sent to this kernel's notebook (once per kernel)


def load_bokeh() -> Any:
    """HoloViews' bokeh notebook extension, offline: BokehJS inlined once per kernel, panel CSS
    inlined instead of CDN links, canvas instead of WebGL (idempotent); returns `hv`."""
    global _notebook_loaded
    import holoviews as hv

    if not _notebook_loaded:
        with _without_optional_module("nbformat"):
            hv.extension("bokeh", logo=False, inline=True)  # BokehJS inlined: works offline
        _notebook_loaded = True
    from panel.viewable import Viewable

    if _inline_panel_stylesheets not in Viewable._preprocessing_hooks:
        Viewable._preprocessing_hooks.append(_inline_panel_stylesheets)
    return bokeh_backend()


def setup_plots(interactive: bool = True) -> None:
    """First cell of a notebook with flairlab figures: bokeh (`load_bokeh`) when `interactive`;
    static runs (`interactive=False`, PNG twins only) never import panel or bokeh."""
    if interactive:
        load_bokeh()
