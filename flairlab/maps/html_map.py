"""Offline HTML export of prediction maps: a self-contained folium page, nothing fetched.

Leaflet 1.9.4 and leaflet-side-by-side 2.2.0 are inlined from `flairlab/resources/leaflet/` (see
its README; CSS images become `data:` URIs), with a shim so the split view clips ImageOverlay
panes, a fixed legend, a layer control and opacity sliders. `offline_problems` lists any remote
reference left in a page. The `Overlay` layers come from `flairlab.maps.leaflet`.

Escaping discipline (every string that comes from data — layer names, class names, titles, zone
or model names, metrics — goes through exactly one of these, by context):

* into markup: `html_text(s)` (HTML-escaped text, quotes included; defined in `maps.leaflet`),
* into a `<script>`: `js_value(obj)` (JSON with `<`, `>`, `&`, `'` as `\\uXXXX`, so `</script>`
  cannot close the block);
* onto the page: `Verbatim(markup)` / `VerbatimScript(js)` (`verbatim_elements()`), branca
  elements that emit their text unchanged.
  Nothing built from data is ever handed to `branca.element.Element(...)`, `Template(...)` or
  any other Jinja compiler: those compile their argument, so `{{ ... }}` in a class name would
  run as template code.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path

from flairlab.data.catalog import Catalog
from flairlab.data.errors import DataError
from flairlab.maps.leaflet import (
    Overlay,
    html_text,
    legend_entries,
    split_layers,
    union_bounds,
)

_JS_NAME = re.compile(r"^[A-Za-z_$][\w$]*$")  # a JavaScript identifier (folium's layer names)
ASSETS = Path(__file__).resolve().parents[1] / "resources" / "leaflet"
# a remote resource: src=/href= pointing at http(s) or protocol-relative URLs, or CSS url(http…)
_REMOTE = re.compile(
    r"""(?:\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|url\(\s*["']?(?:https?:)?//""",
    re.IGNORECASE,
)
_ANCHOR = re.compile(r"<a\b[^>]*>", re.IGNORECASE)


# -- escaping --------------------------------------------------------------------------------------
def js_value(value: object) -> str:
    """`value` as a JavaScript literal that is safe inside an HTML `<script>` block."""
    from jinja2.utils import htmlsafe_json_dumps

    return str(htmlsafe_json_dumps(value))


def _js_name(name: str) -> str:
    if not _JS_NAME.match(name):
        raise DataError("JavaScript variable name", expected="an identifier", found=name)
    return name


def verbatim_elements() -> tuple[type, type]:
    """(Verbatim, VerbatimScript): branca elements that put `text` on the page unchanged.

    branca compiles the string given to `Element(...)`, and re-compiles the output of every
    `MacroElement` macro as a new template; these two never do: `Verbatim`'s template only
    *inserts* its text, and `VerbatimScript` hands a `Verbatim` to the page's script section
    instead of going through a macro. (branca is imported lazily: only the export needs it.)"""
    from branca.element import Element, Template

    class Verbatim(Element):
        _template = Template("{{ this.text }}")

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class VerbatimScript(Element):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

        def render(self, **kwargs: object) -> None:
            self.get_root().script.add_child(Verbatim(self.text), name=self.get_name())

    return Verbatim, VerbatimScript


def _color(value: str) -> str:
    return value if re.fullmatch(r"#[0-9a-fA-F]{6}", value or "") else "#808080"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _inline_css(path: Path) -> str:
    css = path.read_text(encoding="utf-8")
    return re.sub(
        r"url\((images/[\w.-]+\.png|range-icon\.png)\)",
        lambda m: f"url({_data_uri(path.parent / m[1])})",
        css,
    )


def offline_assets(split: bool) -> str:
    """`<style>`/`<script>` tags for Leaflet (+ side-by-side and the pane shim when `split`)."""
    parts = [
        f"<style>{_inline_css(ASSETS / 'leaflet.css')}</style>",
        f"<script>{(ASSETS / 'leaflet.js').read_text(encoding='utf-8')}</script>",
    ]
    if split:
        sbs = ASSETS / "side-by-side"
        for css in ("layout.css", "range.css"):
            parts.append(f"<style>{_inline_css(sbs / css)}</style>")
        js = (sbs / "index.js").read_text(encoding="utf-8")
        parts.append(  # CommonJS module: hand it the global L and a no-op require for its CSS
            "<script>(function (module) { var require = function (n) { "
            "return n === 'leaflet' ? window.L : {}; };\n" + js + "\n})({exports: {}});\n"
            # side-by-side clips layer.getContainer(); an ImageOverlay's container is its pane
            "L.ImageOverlay.include({getContainer: function () {"
            " return this._map.getPane(this.options.pane); }});</script>"
        )
    return "\n".join(parts)


def _legend_html(entries: dict[str, str], title: str) -> str:
    """Legend markup: names and title as escaped text, colours only as `#rrggbb`."""
    rows = "".join(
        f'<div><i style="background:{_color(c)}"></i>{html_text(k)}</div>'
        for k, c in entries.items()
    )
    return (
        f'<div class="flairlab-legend"><b>{html_text(title)}</b>{rows}</div>'
        "<style>.flairlab-legend{position:absolute;z-index:1000;right:10px;bottom:20px;"
        "background:rgba(255,255,255,.9);padding:6px 8px;font:12px sans-serif;"
        "border-radius:4px;box-shadow:0 0 4px rgba(0,0,0,.3)}.flairlab-legend i{display:"
        "inline-block;width:12px;height:12px;margin-right:6px;vertical-align:middle;"
        "border:1px solid #555}</style>"
    )


def _info_html(heading: str, info: dict[str, str]) -> str:
    """The page's title box (top left): heading and `label: value` rows, every string
    HTML-escaped (it is inserted as a value, never compiled as a template)."""
    rows = "".join(
        f"<div><span>{html_text(k)}</span> {html_text(v)}</div>"
        for k, v in info.items()
    )
    return (
        f'<div class="flairlab-info"><b>{html_text(heading)}</b>{rows}</div>'
        "<style>.flairlab-info{position:absolute;z-index:1000;left:54px;top:10px;"
        "max-width:45%;background:rgba(255,255,255,.92);padding:6px 10px;font:12px sans-serif;"
        "border-radius:4px;box-shadow:0 0 4px rgba(0,0,0,.3)}.flairlab-info b{font-size:14px}"
        ".flairlab-info span{color:#555}</style>"
    )


def offline_problems(page: str) -> list[str]:
    """Remote references (http(s) `src`/`href`/CSS `url(`) outside `<a>` attribution links."""
    hits = []
    for m in _REMOTE.finditer(page):
        tag_start = page.rfind("<", 0, m.start())
        if not _ANCHOR.match(page, tag_start):
            hits.append(page[max(0, m.start() - 40) : m.end() + 60])
    return hits


def export_html(
    overlays: Sequence[Overlay],
    path: str | Path,
    *,
    split: Sequence[str] | None = ("prediction", "ground truth"),
    nomenclature: str = "cosia",
    title: str = "Classes",
    catalog: Catalog | None = None,
    heading: str | None = None,
    info: dict[str, str] | None = None,
) -> Path:
    """Self-contained HTML map (folium + inlined Leaflet, nothing fetched), opened fitted to the
    layers. `heading` (page title and title box) and `info` (`label: value` rows under it, e.g.
    zone, model, metrics; see `flairlab.maps.leaflet.zone_info`) are HTML-escaped. Raises
    DataError if a remote resource slipped into the page."""
    import folium

    Verbatim, VerbatimScript = verbatim_elements()
    panes = split_layers(overlays, split if split and len(overlays) > 1 else None)
    m = folium.Map(tiles=None, control_scale=True, zoom_control=True, prefer_canvas=False)
    m.default_js, m.default_css = [], []  # no CDN links: Leaflet is inlined below
    root = m.get_root()
    root.header.add_child(Verbatim(offline_assets(bool(panes))), name="flairlab_leaflet")
    for pane in panes.values():
        folium.map.CustomPane(pane, z_index=450).add_to(m)
    layers = {}
    for i, ov in enumerate(overlays):
        if ov.kind not in ("rgb", "classes", "error"):
            raise DataError(f"layer {ov.name!r}: kind", expected="rgb, classes or error",
                            found=ov.kind)  # fmt: skip
        layer = folium.raster_layers.ImageOverlay(
            ov.data_url(),
            bounds=ov.bounds,
            name=f"layer{i}",  # names reach the page only through js_value below
            opacity=ov.opacity,
            show=ov.show,
            pane=panes.get(ov.name, "overlayPane"),
            className=f"flairlab-{ov.kind}",
        )
        layer.add_to(m)
        layers[ov.name] = layer
    names = {n: _js_name(layers[n].get_name()) for n in layers}
    map_name = _js_name(m.get_name())
    # Leaflet's layer control shows names as HTML: escaped text, then a JS string
    control = ", ".join(f"{js_value(html_text(n))}: {names[n]}" for n in layers)
    js = [f"L.control.layers(null, {{{control}}}, {{collapsed: false}}).addTo({map_name});"]
    if panes:
        left, right = (names[n] for n in panes)
        js.append(f"L.control.sideBySide({left}, {right}).addTo({map_name});")
    sliders = js_value([[n, names[n]] for n in layers])  # names shown as text nodes
    js.append(f"""(function (map) {{
  var c = L.control({{position: 'topright'}});
  c.onAdd = function () {{
    var d = L.DomUtil.create('div', 'leaflet-bar flairlab-opacity');
    d.style.background = 'white'; d.style.padding = '4px 6px'; d.style.font = '12px sans-serif';
    {sliders}.forEach(function (p) {{
      var layer = window[p[1]], row = L.DomUtil.create('div', '', d);
      row.style.display = 'flex'; row.style.justifyContent = 'space-between';
      row.style.alignItems = 'center'; row.style.gap = '6px';
      row.appendChild(document.createTextNode(p[0]));
      var s = L.DomUtil.create('input', '', row);
      s.type = 'range'; s.min = 0; s.max = 1; s.step = 0.05; s.value = layer.options.opacity;
      s.oninput = function () {{ layer.setOpacity(parseFloat(s.value)); }};
    }});
    L.DomEvent.disableClickPropagation(d);
    return d;
  }};
  c.addTo(map);
}})({map_name});""")
    m.add_child(VerbatimScript("\n".join(js)))
    entries = legend_entries(overlays, nomenclature, catalog)
    if entries:
        root.html.add_child(Verbatim(_legend_html(entries, title)))
    root.header.add_child(
        Verbatim("<style>.flairlab-classes,.flairlab-error{image-rendering:pixelated}</style>")
    )
    if heading or info:
        root.title = html_text(heading or "flairlab map")  # branca inserts it unescaped
        root.html.add_child(Verbatim(_info_html(heading or "", info or {})), name="flairlab_info")
    m.fit_bounds(union_bounds(overlays))
    page = root.render()
    bad = offline_problems(page)
    if bad:
        raise DataError("exported map would fetch remote resources", expected="none", found=bad[:3])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
