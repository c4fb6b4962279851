"""Notebook contract helpers: the `parameters` cell, output stripping checks, executed notebooks.

Every flairlab notebook has exactly one code cell tagged `parameters` holding flat, annotated,
commented scalars (`n_patches: int = 8  # how many patches`). `notebook_parameters` parses that cell
with `ast` (papermill's own parser drops `str | None` annotations), `Param.check` validates a value
against the declared type before anything runs.

`finish_executed` prepares a notebook the runner executed for its readers: no jupytext pairing
(JupyterLab would write a `.py` beside it on save), progress bars as the text of where they ended
(not the "0%" of their first frame), BokehJS stored once instead of twice, and a signature with the
user's own Jupyter secret so JupyterLab shows its plots, widgets and maps without "Trust Notebook".
"""

from __future__ import annotations

import ast
import html
import io
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from flairlab.data.errors import DataError

SCALAR_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class Param:
    """One declared notebook parameter: `name: type = default  # help`."""

    name: str
    type_name: str  # "int" | "float" | "str" | "bool", optionally followed by " | None"
    default: Any
    help: str
    line: int  # 1-based line in the parameters cell

    @property
    def base_type(self) -> str:
        return self.type_name.split(" | ")[0]

    @property
    def optional(self) -> bool:
        return self.type_name.endswith(" | None")

    def check(self, value: Any, *, where: str | Path, from_string: bool = False) -> Any:
        """Return `value` converted to the declared type, or raise DataError naming `where`.

        Strings from the command line (`from_string=True`) are parsed (`"3"` -> 3 for an int);
        values from YAML must already have the right type (an int is accepted for a float).
        """
        what = f"parameter {self.name!r}"
        if value is None or (from_string and self.optional and value in ("None", "null")):
            if self.optional:
                return None
            raise DataError(what, path=where, expected=self.type_name, found="None")
        base = self.base_type
        if from_string and isinstance(value, str):
            return _parse_string(value, base, what=what, where=where)
        if base == "bool" and isinstance(value, bool):
            return value
        if base == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base == "str" and isinstance(value, str):
            return value
        found = f"{type(value).__name__} {value!r}"
        raise DataError(what, path=where, expected=self.type_name, found=found)


def _parse_string(raw: str, base: str, *, what: str, where: str | Path) -> Any:
    try:
        if base == "int":
            return int(raw)
        if base == "float":
            return float(raw)
    except ValueError:
        raise DataError(what, path=where, expected=base, found=f"str {raw!r}") from None
    if base == "bool":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise DataError(what, path=where, expected="bool (true/false)", found=f"str {raw!r}")
    return raw


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """Read an `.ipynb` (nbformat 4); DataError if missing or not a notebook."""
    path = Path(path)
    if not path.is_file():
        raise DataError("notebook not found", path=path)
    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # nbformat raises several unrelated types
        raise DataError(f"not a readable notebook ({err})", path=path) from None


def parameters_cell_indices(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of the code cells tagged `parameters`."""
    return [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])
    ]


def _annotation_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name) and node.id in SCALAR_TYPES:
        return node.id
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.BitOr)
        and isinstance(node.right, ast.Constant)
        and node.right.value is None
    ):
        inner = _annotation_name(node.left)
        if inner is not None and "|" not in inner:
            return f"{inner} | None"
    return None


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return False, None
    return isinstance(value, (int, float, str, bool, type(None))), value


def _comments(source: str) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def parse_parameters(source: str, *, where: str | Path = "<parameters cell>") -> dict[str, Param]:
    """Parse a parameters cell: only `name: type = literal  # help` statements are allowed."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise DataError(
            f"parameters cell is not valid Python ({err.msg}, line {err.lineno})", path=where
        ) from None
    comments = _comments(source)
    params: dict[str, Param] = {}
    for stmt in tree.body:
        line = stmt.lineno
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            raise DataError(
                f"parameters cell line {line}",
                path=where,
                expected="`name: int|float|str|bool = literal  # help`",
                found=ast.get_source_segment(source, stmt),
            )
        name = stmt.target.id
        type_name = _annotation_name(stmt.annotation)
        if type_name is None:
            found = ast.get_source_segment(source, stmt.annotation)
            raise DataError(
                f"parameter {name!r} annotation",
                path=where,
                expected="int, float, str or bool",
                found=found,
            )
        ok, default = _literal(stmt.value) if stmt.value is not None else (False, None)
        if not ok:
            found = (
                ast.get_source_segment(source, stmt.value) if stmt.value is not None else "nothing"
            )
            raise DataError(
                f"parameter {name!r} default", path=where, expected="a scalar literal", found=found
            )
        param = Param(name, type_name, default, comments.get(line, ""), line)
        param.check(default, where=where)  # the default itself must match the annotation
        if name in params:
            raise DataError(f"parameter {name!r} declared twice", path=where)
        params[name] = param
    return params


def notebook_parameters(nb_or_path: str | Path | nbformat.NotebookNode) -> dict[str, Param]:
    """Declared parameters of a notebook (DataError unless one cell is tagged `parameters`)."""
    if isinstance(nb_or_path, (str, Path)):
        where: str | Path = nb_or_path
        nb = read_notebook(nb_or_path)
    else:
        where, nb = "<notebook>", nb_or_path
    idx = parameters_cell_indices(nb)
    if len(idx) != 1:
        raise DataError("code cells tagged 'parameters'", path=where, expected=1, found=len(idx))
    return parse_parameters(nb.cells[idx[0]].source, where=where)


def output_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Why a notebook is not 'committed without outputs' (empty list when it is clean)."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has execution_count {cell.execution_count}")
    if "papermill" in nb.metadata or "widgets" in nb.metadata:
        problems.append("notebook metadata holds execution state (papermill/widgets)")
    return problems


def code_outputs(nb: nbformat.NotebookNode) -> Iterator[tuple[int, nbformat.NotebookNode]]:
    """`(cell index, output)` for every output of every code cell."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                yield i, out


def error_outputs(nb: nbformat.NotebookNode) -> list[tuple[int, str, str]]:
    """`(cell index, ename, evalue)` of every error output in an executed notebook."""
    return [
        (i, out.get("ename", ""), out.get("evalue", ""))
        for i, out in code_outputs(nb)
        if out.get("output_type") == "error"
    ]


def count_images(nb: nbformat.NotebookNode) -> int:
    """Number of `image/png` / `image/jpeg` / `image/svg+xml` outputs (rendered figures)."""
    kinds = ("image/png", "image/jpeg", "image/svg+xml")
    return sum(any(k in out.get("data", {}) for k in kinds) for _, out in code_outputs(nb))


def export_html(ipynb: str | Path, html: str | Path | None = None) -> Path:
    """Export an executed notebook to a self-contained HTML file (images inlined) via nbconvert."""
    from nbconvert import HTMLExporter

    ipynb = Path(ipynb)
    html = Path(html) if html is not None else ipynb.with_suffix(".html")
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(read_notebook(ipynb))
    html.write_text(body, encoding="utf-8")
    return html


def slowest_cells(executed: str | Path, k: int = 3) -> list[dict[str, Any]]:
    """The `k` slowest code cells of a papermill-executed notebook (index, seconds, first line)."""
    nb = read_notebook(executed)
    cells = [
        {
            "cell": i,
            "duration_s": round(c.metadata.papermill.get("duration") or 0.0, 2),
            "first_line": (c.source.splitlines() or [""])[0][:80],
        }
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and "papermill" in c.metadata
    ]
    return sorted(cells, key=lambda c: -c["duration_s"])[:k]


# -- executed notebooks --------------------------------------------------------------------------
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
HOLOVIEWS_LOAD = "application/vnd.holoviews_load.v0+json"
JAVASCRIPT = "application/javascript"


def _widget_states(nb: nbformat.NotebookNode) -> dict[str, Any]:
    return nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def progress_text(states: dict[str, Any], model_id: str, width: int = 10) -> str | None:
    """tqdm-style text of a saved tqdm.notebook bar (`HBox[HTML, Progress, HTML]`), e.g.
    `"band statistics: 100%|██████████| 40/40 [00:02<00:00, 15.2patch/s]"`; None otherwise."""
    box = states.get(model_id, {})
    is_box = box.get("model_name") == "HBoxModel"
    children = box.get("state", {}).get("children", []) if is_box else []
    ids = [c.removeprefix("IPY_MODEL_") for c in children if isinstance(c, str)]
    kids = [states.get(i, {}) for i in ids]
    names = [k.get("model_name") for k in kids]
    if len(kids) != 3 or names[0] != "HTMLModel" or names[2] != "HTMLModel" or names[1] not in (
        "FloatProgressModel", "IntProgressModel"
    ):
        return None
    left, bar, right = (k.get("state", {}) for k in kids)
    total = float(bar.get("max") or 0)
    frac = min(max(float(bar.get("value") or 0) / total, 0.0), 1.0) if total > 0 else 0.0
    filled = round(frac * width)
    drawn = "█" * filled + " " * (width - filled)
    before, after = (html.unescape(str(part.get("value", ""))) for part in (left, right))
    text = f"{before}|{drawn}|{after}"
    return text.replace("\u2007", " ").strip()


def finish_progress_bars(nb: nbformat.NotebookNode) -> int:
    """Replace every saved progress bar — a widget view whose text fallback is its first frame,
    "0%", and which JupyterLab shows as a disconnected widget — by the text of its final state
    (`progress_text`); returns how many were replaced."""
    states, n = _widget_states(nb), 0
    for _, out in code_outputs(nb):
        view = out.get("data", {}).get(WIDGET_VIEW)
        text = progress_text(states, view.get("model_id", "")) if view else None
        if text is not None:
            out["data"] = nbformat.from_dict({"text/plain": text})
            n += 1
    return n


def drop_duplicate_scripts(nb: nbformat.NotebookNode) -> int:
    """HoloViews sends BokehJS (~3 MB) twice in one output, as `application/javascript` and as its
    own load MIME type; keep the standard one (JupyterLab, VS Code and nbconvert all run it).
    Returns the number of characters removed."""
    removed = 0
    for _, out in code_outputs(nb):
        data = out.get("data", {})
        if HOLOVIEWS_LOAD in data and data.get(JAVASCRIPT) == data[HOLOVIEWS_LOAD]:
            removed += len(data.pop(HOLOVIEWS_LOAD))
    return removed


def sign_notebook(path: str | Path) -> None:
    """Sign `path` with the user's notebook secret (nbformat's `NotebookNotary`, the one Jupyter
    servers check), so its outputs are trusted when this user opens it in JupyterLab."""
    from nbformat.sign import NotebookNotary

    with NotebookNotary() as notary:
        notary.sign(read_notebook(path))


def finish_executed(path: str | Path, *, trust: bool = True) -> dict[str, Any]:
    """Prepare an executed notebook for its readers (see the module docstring) and sign it when
    `trust`; returns what was done."""
    path = Path(path)
    nb = read_notebook(path)
    unpaired = bool(nb.metadata.get("jupytext", {}).pop("formats", None))
    if "jupytext" in nb.metadata and not nb.metadata["jupytext"]:
        del nb.metadata["jupytext"]
    done = {"unpaired": unpaired, "progress_bars": finish_progress_bars(nb),
            "script_chars_removed": drop_duplicate_scripts(nb), "signed": False}  # fmt: skip
    nbformat.write(nb, path)
    if trust:
        sign_notebook(path)
        done["signed"] = True
    return done
