r"""What every paper's part of ``docs/reproduction.md`` shares: verdicts, the :class:`FigureSection`
a part is made of, the :class:`Paper` a part is described by, figure and table helpers, and the
marked blocks (``<!-- paper:KEY -->`` ... ``<!-- /paper:KEY -->``) that let one paper's part be
rewritten while the others are kept as they are."""
from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ovis.reporting.runs import NoRunsError, read_experiment
from ovis.utils.files import atomic_write_bytes

_TEN = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_COLORS = {"reinforce": "#7f7f7f", "vimco-arithmetic": "#d62728", "tvo-part5-beta2": "#9467bd",
           "tvo-part5-config2": "#9467bd", "tvo-part2-config1": "#9467bd", "wake-wake": "#8c564b",
           "ovis-gamma0": "#17becf", "ovis-gamma1": "#1f77b4", "ovis-S1-exclusive": "#bcbd22",
           "ovis-S10-exclusive": "#2ca02c", "ovis-S50-exclusive": "#006400", "pathwise-iwae": "#ff7f0e",
           "stl": "#e377c2", "dreg": "#000000"}


def estimator_color(estimator: str) -> str:
    r"""One colour per estimator id, the same in every figure of the document."""
    if estimator in _COLORS:
        return _COLORS[estimator]
    return _TEN[sum(map(ord, estimator)) % len(_TEN)]




# --------------------------------------------------------------------------------------------
# grids and run bookkeeping
# --------------------------------------------------------------------------------------------

def _drop_flag(tokens: List[str], flag: str) -> List[str]:
    out, skip = [], False
    for t in tokens:
        if skip:
            skip = False
            continue
        if t == flag:
            skip = True
            continue
        out.append(t)
    return out



def _add_time(root: Path, key: str, seconds: float) -> None:
    path = root / "reproduction-times.json"
    try:
        times = json.loads(path.read_text())
    except (OSError, ValueError):
        times = {}
    times[key] = float(times.get(key, 0.0)) + seconds
    atomic_write_bytes(path, (json.dumps(times, indent=1, sort_keys=True) + "\n").encode())


# --------------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------------

#: the verdicts, from the best to the least informative (the worst of two is the later one)
VERDICTS = ("reproduced", "same ordering", "not reproduced", "no result yet")


@dataclass
class Comparison:
    r"""The outcome of comparing our orderings (or slopes) with the paper's."""

    verdict: str  # "reproduced" | "same ordering" | "not reproduced" | "no result yet"
    details: List[str] = field(default_factory=list)


def ordering_verdict(paper: Mapping[str, float], ours: pd.DataFrame, higher_is_better: bool,
                     tolerance: Optional[float] = None) -> Comparison:
    r"""Compare our ordering of the estimators with the paper's.

    ``ours``: indexed by estimator, columns ``mean``, ``std`` (NaN with one seed) and ``n``.  A pair
    ``(a, b)`` is *discordant* when the paper ranks ``a`` above ``b`` and our means the other way;
    it is *separated* when the difference of our means exceeds twice its standard error
    (``sqrt(std_a^2 / n_a + std_b^2 / n_b)``; any difference counts as separated with one seed).
    Verdict: ``reproduced`` when no pair is discordant and, if ``tolerance`` is given, every mean
    is within ``tolerance`` (relative) of the paper's value; ``same ordering`` when no pair is
    discordant, or only pairs that our seeds do not separate; ``not reproduced`` otherwise."""
    common = [e for e in paper if e in ours.index and np.isfinite(ours.loc[e, "mean"])]
    if len(common) < 2:
        return Comparison("no result yet", ["fewer than two estimators have finished runs"])
    sign = 1.0 if higher_is_better else -1.0
    details: List[str] = []
    separated = 0
    unseparated = 0
    for i, a in enumerate(common):
        for b in common[i + 1:]:
            pa, pb = sign * paper[a], sign * paper[b]
            if pa == pb:
                continue
            hi, lo = (a, b) if pa > pb else (b, a)
            diff = sign * (ours.loc[hi, "mean"] - ours.loc[lo, "mean"])
            if diff >= 0:
                continue
            se = math.sqrt(sum((ours.loc[e, "std"] ** 2) / max(1, ours.loc[e, "n"])
                               for e in (hi, lo) if np.isfinite(ours.loc[e, "std"])))
            is_sep = se == 0 or abs(diff) > 2 * se
            separated += is_sep
            unseparated += not is_sep
            details.append(f"the paper ranks {hi} above {lo}; here {lo} is ahead by {abs(diff):.4g}"
                           + (f" (more than twice its standard error {se:.2g}: separated)" if is_sep and se > 0 else
                              " (one seed each: not tested)" if se == 0 else
                              f" (within twice its standard error {se:.2g}: not separated by our seeds)"))
    if separated:
        return Comparison("not reproduced", details)
    if tolerance is not None and not unseparated:
        off = [e for e in common if abs(ours.loc[e, "mean"] - paper[e]) > tolerance * abs(paper[e])]
        if not off:
            return Comparison("reproduced", details or ["every estimator in the paper's order, values within "
                                                        f"{tolerance:.0%} of the paper's"])
        details.append("values differ from the paper's by more than " f"{tolerance:.0%} for " + ", ".join(off))
    if unseparated:
        return Comparison("same ordering", details + ["every swapped pair is within our seeds' spread"])
    return Comparison("same ordering", details or ["every pair of estimators in the paper's order"])


def slope_verdict(paper: Mapping[str, float], ours: Mapping[str, float], tolerance: float = 0.2) -> Comparison:
    r"""``reproduced`` when every slope is within ``tolerance`` of the paper's, ``same ordering``
    when the signs agree (a slope within ``tolerance`` of 0 counts as flat on both sides),
    ``not reproduced`` otherwise."""
    common = [e for e in paper if e in ours and math.isfinite(ours[e])]
    if not common:
        return Comparison("no result yet", ["no slope could be fitted"])

    def kind(v: float) -> int:
        return 0 if abs(v) <= tolerance else (1 if v > 0 else -1)

    details = [f"{e}: {ours[e]:+.2f} (paper {paper[e]:+.1f})" for e in common]
    if all(abs(ours[e] - paper[e]) <= tolerance for e in common):
        return Comparison("reproduced", details)
    if all(kind(ours[e]) == kind(paper[e]) for e in common):
        return Comparison("same ordering", details)
    return Comparison("not reproduced", details)


# --------------------------------------------------------------------------------------------
# the document
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# the document's parts
# --------------------------------------------------------------------------------------------

@dataclass
class FigureSection:
    r"""One figure of the document: its Markdown and its verdict."""

    key: str
    title: str
    verdict: str
    markdown: str
    ours: str = "no result yet"  # our result in one line (the summary's "ours" column)




#: ``(repo, root, data_root, scale, log) -> {name: exit code}``: a paper's runs that are not a grid
#: (e.g. a measurement script), called after its grids are drained; resumable like them
ExtraRuns = Callable[[Path, Path, Path, str, Callable[[str], None]], Dict[str, int]]


@dataclass(frozen=True)
class Paper:
    r"""One paper's part of ``docs/reproduction.md``.

    Attributes:
        key: the part's name on the command line (``reproduce.py --papers KEY``) and in its markers.
        title: the part's heading (a level-2 heading of the document).
        intro: the paragraph under the heading: the paper, what its numbers are, how ours are made.
        experiments: figure key -> grid name (``experiments/<name>.json``), in the order they run.
        shrink: ``(grid, figure key) -> grid``: the tiny version of a grid (``--scale tiny``).
        sections: ``(root, fig_dir, scale) -> [FigureSection]``: the part's figures from the runs
            under ``root`` (whatever subset has finished), their PNGs written to ``fig_dir``.
        claims: figure key -> the paper's claim in one line (the summary's ``paper`` column).
        extra_runs: the part's runs that are not grids (see :data:`ExtraRuns`), or ``None``.
    """

    key: str
    title: str
    intro: str
    experiments: Mapping[str, str]
    shrink: Callable[[Mapping[str, Any], str], Dict[str, Any]]
    sections: Callable[[Path, Path, str], List[FigureSection]]
    claims: Mapping[str, str]
    extra_runs: Optional[ExtraRuns] = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]+", self.key):
            raise ValueError(f"Paper.key must be lower-case letters and digits, got {self.key!r}")


def block_markers(key: str) -> Tuple[str, str]:
    r"""The opening and closing HTML comments around paper ``key``'s part of the document."""
    return f"<!-- paper:{key} -->", f"<!-- /paper:{key} -->"


def existing_blocks(text: str) -> Dict[str, str]:
    r"""``{key: block}`` of every marked part of a document's ``text`` (markers included)."""
    out: Dict[str, str] = {}
    for m in re.finditer(r"<!-- paper:([a-z0-9]+) -->.*?<!-- /paper:\1 -->", text, flags=re.S):
        out[m.group(1)] = m.group(0)
    return out


def part_markdown(paper: Paper, sections: Sequence[FigureSection], times: Mapping[str, float]) -> str:
    r"""Paper ``paper``'s marked block: heading, intro, a summary table (the paper's claim, ours and
    the verdict of each figure), the wall time of its runs, then each figure's section (level-3
    headings).  ``times``: seconds per experiment name (``reproduction-times.json``)."""
    from ovis.reporting.outputs import to_markdown

    summary = to_markdown(pd.DataFrame([{"figure": s.title, "paper": paper.claims.get(s.key, ""), "ours": s.ours,
                                         "verdict": s.verdict} for s in sections]))
    mine = {k: float(v) for k, v in times.items() if k in set(paper.experiments.values()) or k.startswith(
        f"{paper.key}-") or (paper.key == "ovis" and k == "efficiency")}
    total = sum(mine.values())
    timing = ("Wall time of the runs (all calls of `make reproduce` added up): "
              + (f"{total / 60:.0f} min (" + ", ".join(f"{k} {v / 60:.1f} min" for k, v in sorted(mine.items()))
                 + ")." if mine else "not recorded."))
    begin, end = block_markers(paper.key)
    return "\n\n".join([begin, f"## {paper.title}", paper.intro, "### Summary", summary, timing,
                        *[f"### {s.title}\n\n{s.markdown}" for s in sections], end])


def _ranking(ours: pd.DataFrame, higher_is_better: bool, digits: int = 3) -> str:
    r"""Our estimators from best to worst with their means (one line)."""
    if ours.empty:
        return "no result yet"
    o = ours.sort_values("mean", ascending=not higher_is_better)
    return (" > " if higher_is_better else " < ").join(f"{e} {r['mean']:.{digits}g}" for e, r in o.iterrows())


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "not run"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _seeds_cell(r: Mapping[str, Any], mean_fmt: str, std_fmt: str) -> str:
    r"""A :func:`_summary` row as a table cell: ``mean ± std (n seeds)``, or ``mean (1 seed)`` when
    ``n <= 1``; ``mean_fmt`` / ``std_fmt`` are format specs (``".3g"``, ``".2f"``)."""
    if r["n"] > 1:
        return f"{r['mean']:{mean_fmt}} ± {r['std']:{std_fmt}} ({int(r['n'])} seeds)"
    return f"{r['mean']:{mean_fmt}} (1 seed)"


def _summary(per_run: pd.Series) -> pd.DataFrame:
    r"""``per_run`` indexed by ``(estimator, run_id)`` -> ``mean``, ``std``, ``n`` per estimator."""
    g = per_run.groupby(level=0)
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})


def _read(root: Path, exp: str) -> Tuple[Optional[Any], str]:
    try:
        data = read_experiment(root, exp)
    except NoRunsError as e:
        return None, str(e)
    return data, ""


def _status_line(data: Any) -> str:
    counts = data.runs["status"].value_counts().to_dict()
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    failed = data.runs[data.runs["status"].isin(["failed", "corrupt"])]
    reasons = [f"`{r.run_id}`: {r.error or r.problems}" for r in failed.itertuples()]
    return f"Runs: {len(data.runs)} ({text})." + (" Failures: " + "; ".join(reasons) + "." if reasons else "")


def _save(fig: Any, fig_dir: Path, name: str) -> str:
    r"""Write ``fig`` atomically as ``fig_dir/name.png`` (110 dpi, tight box), close it, return the
    document's relative link.  Figures use the Agg backend that :mod:`ovis.reporting.outputs`
    selects on import (the document is written headless)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    atomic_write_bytes(fig_dir / f"{name}.png", buf.getvalue())
    return f"figures/{name}.png"


def _verdict_md(c: Comparison) -> str:
    lines = [f"**Verdict: {c.verdict}.**"]
    lines += [f"- {d}" for d in c.details]
    return "\n".join(lines)


def _curves(ax: Any, table: pd.DataFrame, split: str, metric: str, label_fmt: str = "{est}") -> None:
    r"""Mean over seeds (line) and range (band) of ``metric`` vs step, one colour per estimator
    (every run, finished or not)."""
    t = table[(table["split"] == split) & (table["metric"] == metric)]
    for est, g in t.groupby("estimator", sort=False):
        piv = g.pivot_table(index="step", columns="run_id", values="value")
        color = estimator_color(str(est))
        style = dict(marker="o", markersize=4) if len(piv) == 1 else {}
        ax.plot(piv.index, piv.mean(axis=1), color=color, label=label_fmt.format(est=est), **style)
        if piv.shape[1] > 1:
            ax.fill_between(piv.index, piv.min(axis=1), piv.max(axis=1), color=color, alpha=0.15, linewidth=0)


