r"""Writing report outputs: figures (PNG + PDF), tables (CSV, Markdown, LaTeX) and ``index.html``.

Every file is written atomically (temporary file in the same folder, flush, fsync,
``os.replace``), so that a report killed half-way never leaves a half-written figure or page.
"""
from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

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
    png: str
    pdf: str
    caption: str
    kind: str = "figure"


@dataclass
class TableItem:
    html: str
    files: Dict[str, str]
    caption: str
    kind: str = "table"


@dataclass
class TextItem:
    text: str
    kind: str = "text"


@dataclass
class Section:
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
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def to_markdown(df: pd.DataFrame, index: bool = False) -> str:
    r"""A GitHub-flavoured Markdown table (no extra dependency)."""
    d = df.reset_index() if index else df
    cols = [str(c) for c in d.columns]
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(esc(_fmt(v)) for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(s: str) -> str:
    s = "".join(_LATEX_ESC.get(ch, ch) for ch in s)
    return s.replace("±", r"$\pm$")


def to_latex(df: pd.DataFrame, caption: str = "", index: bool = False) -> str:
    r"""A ``tabular`` (booktabs) LaTeX table, values escaped."""
    d = df.reset_index() if index else df
    cols = [str(c) for c in d.columns]
    out = [r"\begin{table}[t]", r"\centering"]
    if caption:
        out.append(r"\caption{" + _latex_escape(caption) + "}")
    out += [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
            " & ".join(_latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for row in d.itertuples(index=False):
        out.append(" & ".join(_latex_escape(_fmt(v)) for v in row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def write_table(df: pd.DataFrame, outdir: Union[str, os.PathLike], name: str, caption: str = "",
                display: Optional[pd.DataFrame] = None) -> TableItem:
    r"""Write ``df`` as ``<name>.csv`` (full precision) and ``display`` (``df`` by default; e.g. a
    formatted "mean ± std" pivot) as ``<name>.md`` and ``<name>.tex``."""
    outdir = Path(outdir)
    name = safe_name(name)
    shown = df if display is None else display
    atomic_write_text(outdir / f"{name}.csv", df.to_csv(index=False))
    atomic_write_text(outdir / f"{name}.md", to_markdown(shown))
    atomic_write_text(outdir / f"{name}.tex", to_latex(shown, caption))
    table_html = _html_table(shown)
    return TableItem(html=table_html, files={"CSV": f"{name}.csv", "Markdown": f"{name}.md", "LaTeX": f"{name}.tex"},
                     caption=caption)


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


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
{{ it.html | safe }}
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
