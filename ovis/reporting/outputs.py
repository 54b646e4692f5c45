r"""Writing report outputs: figures (PNG + PDF), tables (CSV, Markdown, LaTeX) and ``index.html``.

Every file is written atomically (temporary file in the same folder, flush, fsync,
``os.replace``), so that a report killed half-way never leaves a half-written figure or page.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ovis.utils.files import atomic_write_bytes, atomic_write_text  # noqa: E402

__all__ = [
    "safe_name",
    "atomic_write_text",
    "atomic_write_bytes",
    "save_figure",
    "write_table",
    "to_markdown",
    "to_latex",
    "FigureItem",
    "TableItem",
    "TextItem",
    "Section",
    "render_index",
]


def safe_name(text: str) -> str:
    r"""A file-name-safe version of ``text`` (``test:loss/L_k`` -> ``test-loss_L_k``)."""
    s = text.replace(":", "-").replace("/", "_")
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "_", s)
    return s.strip("_") or "unnamed"


@dataclass
class FigureItem:
    r"""A figure on the page: the ``png`` and ``pdf`` file names (relative to the report folder) and its
    ``caption`` (:func:`save_figure` returns one).
    """

    png: str
    pdf: str
    caption: str
    kind: str = "figure"


@dataclass
class TableItem:
    r"""A table on the page: ``header`` (column labels) and ``rows`` (one list of cell texts per row,
    as long as ``header``), both plain text that the page's template escapes; ``files`` maps a
    format's name to the written file."""

    header: List[str]
    rows: List[List[str]]
    files: Dict[str, str]
    caption: str
    kind: str = "table"


@dataclass
class TextItem:
    r"""A paragraph of plain text on the page (escaped by the page's template)."""

    text: str
    kind: str = "text"


@dataclass
class Section:
    r"""A titled section of ``index.html``: its ``items`` (:class:`FigureItem`, :class:`TableItem`,
    :class:`TextItem`) in order.
    """

    title: str
    items: List[Any] = field(default_factory=list)


def save_figure(fig: "plt.Figure", outdir: Union[str, os.PathLike], name: str, caption: str = "") -> FigureItem:
    r"""Save ``fig`` as ``<outdir>/<name>.png`` (150 dpi) and ``.pdf``; closes the figure."""
    import io

    outdir = Path(outdir)
    name = safe_name(name)
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150 if ext == "png" else None, bbox_inches="tight")
        atomic_write_bytes(outdir / f"{name}.{ext}", buf.getvalue())
    plt.close(fig)
    return FigureItem(png=f"{name}.png", pdf=f"{name}.pdf", caption=caption)


def _fmt(v: Any) -> str:
    r"""The text of one table cell: floats to 6 significant digits, ``None`` / NaN empty, else ``str``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _text(df: pd.DataFrame, index: bool = False) -> Tuple[List[str], List[List[str]]]:
    r"""``(header, rows)``: the column labels of ``df`` (its index first when ``index``) through
    ``str`` and every cell through ``_fmt``, one list per row. The Markdown, LaTeX and HTML
    tables all show these strings."""
    d = df.reset_index() if index else df
    return [str(c) for c in d.columns], [[_fmt(v) for v in row] for row in d.itertuples(index=False)]


def _markdown_cell(s: str) -> str:
    r"""A cell that cannot break the Markdown row: ``|`` escaped, newlines as spaces."""
    return s.replace("|", r"\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, index: bool = False) -> str:
    r"""A GitHub-flavoured Markdown table (pandas' ``DataFrame.to_markdown``, i.e. tabulate's
    ``github`` format), the cells as written by ``_fmt``, unaligned and not re-parsed as numbers."""
    header, rows = _text(df, index)
    cells = pd.DataFrame([[_markdown_cell(v) for v in row] for row in rows],
                         columns=[_markdown_cell(c) for c in header], dtype=object)
    return cells.to_markdown(index=False, tablefmt="github", stralign=None, numalign=None,
                             disable_numparse=True) + "\n"


def _latex_pm(s: str) -> str:
    r"""``±`` as ``$\pm$`` in a cell already escaped for LaTeX."""
    return s.replace("±", r"$\pm$")


def _latex_text(text: str) -> str:
    r"""``text`` escaped for LaTeX by the rule of the table's cells (pandas' ``escape="latex"``)."""
    one = pd.DataFrame([[text]]).style.hide(axis="index").hide(axis="columns")
    return one.format(escape="latex", formatter=_latex_pm).to_string(delimiter="").rstrip("\n")


def to_latex(df: pd.DataFrame, caption: str = "", index: bool = False) -> str:
    r"""A ``table`` float holding a booktabs ``tabular`` (``l`` columns), written by pandas'
    ``Styler.to_latex``; column labels, cells and caption escaped (``escape="latex"``)."""
    header, rows = _text(df, index)
    styler = (pd.DataFrame(rows, columns=header, dtype=object).style.hide(axis="index")
              .format(escape="latex", formatter=_latex_pm)
              .format_index(escape="latex", formatter=_latex_pm, axis="columns"))
    return styler.to_latex(environment="table", position="t", position_float="centering", hrules=True,
                           column_format="l" * len(header), caption=_latex_text(caption) if caption else None)


def write_table(df: pd.DataFrame, outdir: Union[str, os.PathLike], name: str, caption: str = "",
                display: Optional[pd.DataFrame] = None) -> TableItem:
    r"""Write ``df`` as ``<name>.csv`` (full precision) and ``display`` (``df`` by default; e.g. a
    formatted "mean ± std" pivot) as ``<name>.md`` and ``<name>.tex``; the returned item shows
    ``display`` on the page (escaped by the page's template)."""
    outdir = Path(outdir)
    name = safe_name(name)
    shown = df if display is None else display
    atomic_write_text(outdir / f"{name}.csv", df.to_csv(index=False))
    atomic_write_text(outdir / f"{name}.md", to_markdown(shown))
    atomic_write_text(outdir / f"{name}.tex", to_latex(shown, caption))
    header, rows = _text(shown)
    return TableItem(header=header, rows=rows,
                     files={"CSV": f"{name}.csv", "Markdown": f"{name}.md", "LaTeX": f"{name}.tex"},
                     caption=caption)


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: left; }
th { background: #eee; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 640px; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; max-width: 640px; }
.text { white-space: pre-wrap; font-family: monospace; font-size: 0.85em; }
</style>
<script>
// marks on <body> how many images loaded (for headless-browser checks of the page)
window.addEventListener("load", function () {
  var ok = 0, broken = [];
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (img.complete && img.naturalWidth > 0) { ok++; } else { broken.push(img.getAttribute("src")); }
  }
  document.body.setAttribute("data-images-total", String(document.images.length));
  document.body.setAttribute("data-images-ok", String(ok));
  document.body.setAttribute("data-images-broken", broken.join(" "));
});
</script>
</head>
<body>
<h1>{{ title }}</h1>
{% for s in sections %}
<section>
<h2>{{ s.title }}</h2>
{% for it in s.items %}
{% if it.kind == "figure" %}
<figure><a href="{{ it.pdf }}"><img src="{{ it.png }}" alt="{{ it.caption }}"></a>
<figcaption>{{ it.caption }} (<a href="{{ it.png }}">PNG</a>, <a href="{{ it.pdf }}">PDF</a>)</figcaption></figure>
{% elif it.kind == "table" %}
<p>{{ it.caption }} {% for k, f in it.files.items() %}<a href="{{ f }}">{{ k }}</a> {% endfor %}</p>
<table><thead><tr>{% for c in it.header %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{%- for row in it.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% else %}
<p class="text">{{ it.text }}</p>
{% endif %}
{% endfor %}
</section>
{% endfor %}
</body>
</html>
"""


def render_index(outdir: Union[str, os.PathLike], title: str, sections: Sequence[Section]) -> Path:
    r"""Write ``<outdir>/index.html`` showing every figure and table (relative links)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string(_TEMPLATE).render(title=title, sections=list(sections))
    path = Path(outdir) / "index.html"
    atomic_write_text(path, page)
    return path
