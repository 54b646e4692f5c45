r"""``report.py``: the figures and tables of one experiment, from its run directories.

``python report.py --exp EXP [--root runs/] [--output reports/] [--keys dataset,estimator,iw]
[--metrics test:loss/L_k,train:grads/snr] [--detailed_metrics ...]
[--pivot_metrics max:test:loss/L_k,last:train:loss/ess] [--include PAT,...] [--exclude PAT,...]
[--ylims metric:lo:hi,...] [--downsample N] [--variance_tracking]``

* learning curves: for each ``split:metric`` of ``--metrics``, one line per configuration (the
  values of ``--keys``), the mean across the configuration's runs (seeds) at each step, with a
  band of +- one standard deviation (``curves-*.csv`` hold the plotted numbers);
* detailed curves: one line per run for each ``--detailed_metrics`` entry;
* pivots: for ``agg:split:metric`` (``agg`` in max, min, last, mean), the run's aggregate over its
  steps, then mean, std and count across seeds per configuration (keys without ``iw``) and ``iw``;
  tables in CSV / Markdown / LaTeX and a figure against ``iw`` (log scale);
* with ``--variance_tracking``: per run that logged them (``run.py --track_variance``), all its
  ``train:variance/<estimator>`` metrics in one figure, one curve per estimator
  (``variance-tracking-<run_id>.png`` / ``.csv``);
* the run table (status of every run directory: success, failed, running, aborted, unfinished,
  corrupt) and ``index.html`` showing everything, in ``<output>/<exp>[-inc=...][-exc=...]/``.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ovis.reporting.outputs import (
    Section,
    TextItem,
    render_index,
    safe_name,
    save_figure,
    write_table,
)
from ovis.reporting.runs import ExperimentData, NoRunsError, read_experiment

__all__ = [
    "ReportArgumentError",
    "MetricSpec",
    "PivotSpec",
    "parse_report_args",
    "parse_metric_spec",
    "parse_pivot_spec",
    "parse_ylims",
    "run_labels",
    "curve_table",
    "pivot_table",
    "report_experiment",
    "output_folder",
    "variance_tracking_table",
    "variance_tracking_items",
    "check_requested_metrics",
    "Styles",
    "plot_curves",
    "main",
]

AGGREGATES = ("max", "min", "last", "mean")


class ReportArgumentError(ValueError):
    r"""An invalid ``report.py`` argument (names the flag and the expected format)."""


@dataclass(frozen=True)
class MetricSpec:
    r"""A logged metric of one split, ``split:metric`` (e.g. ``test:loss/L_k``; :func:`parse_metric_spec`)."""

    split: str
    metric: str

    @property
    def name(self) -> str:
        r"""The text form ``split:metric``."""
        return f"{self.split}:{self.metric}"


@dataclass(frozen=True)
class PivotSpec:
    r"""A pivot-table entry ``agg:split:metric``: the aggregate ``agg`` (one of ``AGGREGATES``: max, min,
    last, mean) of a metric's curve per run (:func:`parse_pivot_spec`).
    """

    agg: str
    split: str
    metric: str

    @property
    def name(self) -> str:
        r"""The text form ``agg:split:metric``."""
        return f"{self.agg}:{self.split}:{self.metric}"


def _csv(value: Optional[str]) -> List[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_metric_spec(text: str, flag: str = "--metrics") -> MetricSpec:
    r"""``split:metric`` (e.g. ``test:loss/L_k``)."""
    if text.count(":") != 1:
        raise ReportArgumentError(f"{flag}: {text!r} is not of the form split:metric (e.g. test:loss/L_k)")
    split, metric = text.split(":")
    if not split or not metric:
        raise ReportArgumentError(f"{flag}: {text!r} is not of the form split:metric (e.g. test:loss/L_k)")
    return MetricSpec(split, metric)


def parse_pivot_spec(text: str) -> PivotSpec:
    r"""``agg:split:metric`` with ``agg`` in max, min, last, mean."""
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise ReportArgumentError(f"--pivot_metrics: {text!r} is not of the form agg:split:metric "
                                  f"(e.g. max:test:loss/L_k)")
    if parts[0] not in AGGREGATES:
        raise ReportArgumentError(f"--pivot_metrics: {text!r}: aggregate {parts[0]!r} is not one of {AGGREGATES}")
    return PivotSpec(*parts)


def parse_ylims(text: Optional[str]) -> Dict[str, Tuple[float, float]]:
    r"""``metric:lo:hi,...`` where ``metric`` is ``split:metric`` or a bare metric name (all splits)."""
    out: Dict[str, Tuple[float, float]] = {}
    for item in _csv(text):
        parts = item.rsplit(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise ReportArgumentError(f"--ylims: {item!r} is not of the form metric:lo:hi (e.g. loss/L_k:-100:-85)")
        try:
            lo, hi = float(parts[1]), float(parts[2])
        except ValueError:
            raise ReportArgumentError(f"--ylims: {item!r}: lo and hi must be numbers") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ReportArgumentError(f"--ylims: {item!r}: need finite lo < hi")
        out[parts[0]] = (lo, hi)
    return out


def build_report_parser() -> argparse.ArgumentParser:
    r"""The argument parser of ``report.py`` (``--exp``, ``--root``, ``--output``, ``--keys``,
    ``--metrics``, ``--pivot_metrics``, ``--include``, ``--exclude``, ...).
    """
    p = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="experiment name (folder <root>/<exp>)")
    p.add_argument("--root", default="runs/", help="root of the run directories (default runs/)")
    p.add_argument("--output", default="reports/", help="where the report folder goes (default reports/)")
    p.add_argument("--keys", default="dataset,estimator,iw",
                   help="configuration keys that define a curve (comma-separated)")
    p.add_argument("--metrics", default="", help="split:metric,... learning curves (default: test:loss/L_k "
                   "when logged, else every logged split:metric)")
    p.add_argument("--detailed_metrics", default="", help="split:metric,... per-run curves (default: --metrics)")
    p.add_argument("--pivot_metrics", default="", help="agg:split:metric,... with agg in max,min,last,mean "
                   "(default: max:test:loss/L_k when logged)")
    p.add_argument("--include", default="", help="keep runs matching any of these patterns (PAT,...)")
    p.add_argument("--exclude", default="", help="drop runs matching any of these patterns (PAT,...)")
    p.add_argument("--ylims", default="", help="metric:lo:hi,... y-axis limits")
    p.add_argument("--downsample", type=int, default=0, help="at most N points per curve (0: all)")
    p.add_argument("--variance_tracking", action="store_true",
                   help="also draw, for every run that logged them (run.py --track_variance), all its "
                        "train:variance/<estimator> metrics in one figure (one curve per estimator)")
    p.add_argument("--experiment_file", default=None,
                   help="the grid, to list the jobs without a finished run (default experiments/<exp>.json "
                        "when it exists; 'none' to skip)")
    return p


def parse_report_args(argv: Sequence[str]) -> argparse.Namespace:
    r"""Parse and validate; raises :class:`ReportArgumentError` on bad input."""
    parser = build_report_parser()
    try:
        args, unknown = parser.parse_known_args(list(argv))
    except SystemExit as e:  # argparse already printed the usage (or the help, for --help)
        if e.code == 0:
            raise
        raise ReportArgumentError(f"invalid report.py arguments: {' '.join(argv)}") from e
    if unknown:
        raise ReportArgumentError(f"unknown report.py arguments: {unknown}")
    if args.downsample < 0:
        raise ReportArgumentError(f"--downsample must be >= 0, got {args.downsample}")
    args.keys = _csv(args.keys)
    args.metrics = [parse_metric_spec(m) for m in _csv(args.metrics)]
    args.detailed_metrics = [parse_metric_spec(m, "--detailed_metrics") for m in _csv(args.detailed_metrics)]
    args.pivot_metrics = [parse_pivot_spec(m) for m in _csv(args.pivot_metrics)]
    args.include = _csv(args.include)
    args.exclude = _csv(args.exclude)
    args.ylims = parse_ylims(args.ylims)
    return args


def output_folder(output: str, exp: str, include: Sequence[str], exclude: Sequence[str]) -> Path:
    r"""The report folder ``<output>/<exp>[-inc=...][-exc=...]`` (made file-name safe), named after the
    run filters so that filtered reports do not overwrite each other.
    """
    name = exp
    if include:
        name += "-inc=" + "+".join(include)
    if exclude:
        name += "-exc=" + "+".join(exclude)
    return Path(output) / safe_name(name)


# ----------------------------------------------------------------------------- tables
def run_labels(data: ExperimentData, keys: Sequence[str]) -> pd.Series:
    r"""The configuration label of each run (``key=value, ...``), indexed by run id."""
    runs = data.runs.set_index("run_id")
    if not keys:
        return pd.Series({r: "all" for r in runs.index})
    return runs.apply(lambda row: ", ".join(f"{k}={_val(row.get(k))}" for k in keys), axis=1)


def _val(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return str(v)


def _select(data: ExperimentData, split: str, metric: str) -> pd.DataFrame:
    r"""The rows of ``split:metric`` of the runs that have a configuration (a run without
    ``config.json`` cannot be grouped: it is listed in the run table only)."""
    m = data.metrics
    ok = set(data.runs.loc[data.runs["has_config"], "run_id"])
    return m[(m["split"] == split) & (m["metric"] == metric) & m["run_id"].isin(ok)]


def _downsample(df: pd.DataFrame, n: int) -> pd.DataFrame:
    if n <= 0:
        return df
    steps = np.sort(df["step"].unique())
    if len(steps) <= n:
        return df
    keep = steps[np.unique(np.linspace(0, len(steps) - 1, n).round().astype(int))]
    return df[df["step"].isin(keep)]


def curve_table(data: ExperimentData, spec: MetricSpec, keys: Sequence[str], downsample: int = 0) -> pd.DataFrame:
    r"""Mean, std (ddof 1; 0 for a single run) and count of ``spec`` across the runs of each
    configuration at each step: columns ``label, step, mean, std, n``."""
    df = _select(data, spec.split, spec.metric)
    if df.empty:
        return pd.DataFrame(columns=["label", "step", "mean", "std", "n"])
    labels = run_labels(data, keys)
    df = df.assign(label=df["run_id"].map(labels))
    # one value per run and step (the last logged, should a step be logged twice)
    df = df.groupby(["label", "run_id", "step"], sort=True)["value"].last().reset_index()
    df = pd.concat([_downsample(g, downsample) for _, g in df.groupby("run_id")]) if downsample else df
    g = df.groupby(["label", "step"])["value"]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.count()}).reset_index()
    return out


def per_run_aggregate(data: ExperimentData, spec: PivotSpec) -> pd.Series:
    r"""``agg`` (max, min, last, mean) of ``split:metric`` over the steps of each run."""
    df = _select(data, spec.split, spec.metric)
    if df.empty:
        return pd.Series(dtype=float)
    df = df.groupby(["run_id", "step"], sort=True)["value"].last().reset_index()
    g = df.sort_values("step").groupby("run_id")["value"]
    return {"max": g.max, "min": g.min, "last": g.last, "mean": g.mean}[spec.agg]()


def pivot_table(data: ExperimentData, spec: PivotSpec, keys: Sequence[str]) -> Tuple[pd.DataFrame, pd.DataFrame]:
    r"""Returns ``(long, wide)``: ``long`` has columns ``label, iw, mean, std, n`` (mean/std/count
    across runs of the per-run aggregate), ``wide`` one row per label and one ``mean ± std (n)``
    column per ``iw`` (``value (1)`` for a single run, whose spread is unknown).  Without an ``iw`` configuration key the ``iw`` column is ``-``."""
    per_run = per_run_aggregate(data, spec)
    if per_run.empty:
        return pd.DataFrame(columns=["label", "iw", "mean", "std", "n"]), pd.DataFrame()
    other = [k for k in keys if k != "iw"]
    labels = run_labels(data, other)
    runs = data.runs.set_index("run_id")
    iw = runs["iw"].map(_val) if "iw" in runs.columns else pd.Series("-", index=runs.index)
    df = pd.DataFrame({"value": per_run, "label": labels.reindex(per_run.index),
                       "iw": iw.reindex(per_run.index)})
    g = df.groupby(["label", "iw"])["value"]
    long = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.count()}).reset_index()
    long["iw"] = long["iw"].map(_val)
    # a single run has no spread: its value alone, never "± 0"
    cell = long.apply(lambda r: f"{r['mean']:.4g} ± {r['std']:.2g} ({int(r['n'])})" if r["n"] > 1
                      else f"{r['mean']:.4g} (1)", axis=1)
    wide = long.assign(cell=cell).pivot(index="label", columns="iw", values="cell")
    try:
        order = sorted(wide.columns, key=lambda c: float(c))
    except ValueError:
        order = list(wide.columns)
    wide = wide[order].reset_index()
    wide.columns = ["configuration"] + [f"iw={c}" for c in order]
    return long, wide.fillna("")


# ----------------------------------------------------------------------------- figures
def _ylim(ax: Any, ylims: Dict[str, Tuple[float, float]], split: str, metric: str) -> None:
    lim = ylims.get(f"{split}:{metric}", ylims.get(metric))
    if lim is not None:
        ax.set_ylim(*lim)


def natural_key(text: str) -> List[Any]:
    r"""Sort key that orders embedded numbers numerically (``iw=5`` before ``iw=10``)."""
    import re

    return [(0, float(t), "") if re.fullmatch(r"-?\d+(?:\.\d+)?", t) else (1, 0.0, t)
            for t in re.split(r"(-?\d+(?:\.\d+)?)", str(text)) if t]


def _legend(ax: Any, n: int) -> None:
    if n > 10:
        ax.legend(fontsize=5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif n:
        ax.legend(fontsize=6, loc="best")


def _palette(n: int) -> List[Any]:
    import seaborn as sns

    return sns.color_palette("tab10" if n <= 10 else "husl", n)


#: one line style per K (in increasing K), cycled beyond
LINESTYLES: Tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 3)))
#: markers that tell apart curves of the same estimator and K (other keys, seeds)
MARKERS: Tuple[Optional[str], ...] = (None, "o", "s", "^", "v", "D", "x", "+", "*", "P")


@dataclass
class Styles:
    r"""One colour per estimator and one line style per K, for every figure of a report.

    Built once from every run of the experiment (:meth:`from_runs`), so that an estimator has the
    same colour and a K the same line style in the learning curves, the per-run curves, the
    pivots and the variance tracking, whatever subset a figure shows.
    """

    colors: Dict[str, Any]
    linestyles: Dict[str, Any]

    @classmethod
    def from_runs(cls, runs: pd.DataFrame, estimators: Sequence[str] = ()) -> "Styles":
        r"""The styles of every estimator (of ``runs`` and ``estimators``) and every K of ``runs``, in
        natural order: colours from the palette, line styles cycling through ``LINESTYLES``.
        """
        ests = [str(e) for e in runs["estimator"].dropna().unique()] if "estimator" in runs.columns else []
        ests = sorted(set(ests) | {str(e) for e in estimators}, key=natural_key)
        iws = [_val(v) for v in runs["iw"].dropna().unique()] if "iw" in runs.columns else []
        iws = sorted(set(iws), key=natural_key)
        return cls(colors=dict(zip(ests, _palette(len(ests)))),
                   linestyles={k: LINESTYLES[i % len(LINESTYLES)] for i, k in enumerate(iws)})

    def color(self, estimator: Any) -> Any:
        r"""The colour of ``estimator`` (grey for an unknown estimator or ``None``)."""
        return self.colors.get(str(estimator), (0.3, 0.3, 0.3)) if estimator is not None else (0.3, 0.3, 0.3)

    def linestyle(self, iw: Any) -> Any:
        r"""The line style of K ``iw`` (solid for an unknown K or ``None``)."""
        return self.linestyles.get(_val(iw), "-") if iw is not None else "-"

    def for_labels(self, labels: pd.Series, runs: pd.DataFrame, use_iw: bool = True) -> Dict[str, Dict[str, Any]]:
        r"""``{label: {"color", "linestyle", "marker"}}`` for the labels of ``labels`` (run id ->
        label): the colour of the label's estimator, the line style of its K (``use_iw``), and a
        marker that differs between labels that would otherwise look the same."""
        cfg = runs.set_index("run_id")
        out: Dict[str, Dict[str, Any]] = {}
        seen: Dict[Tuple[Any, Any], int] = {}
        groups: Dict[str, List[str]] = {}
        for rid, lab in labels.items():
            groups.setdefault(lab, []).append(rid)

        def one(rids: List[str], col: str) -> Any:  # the value of col shared by the runs, else None
            vals = {_val(cfg.at[r, col]) for r in rids} if col in cfg.columns else set()
            return next(iter(vals)) if len(vals) == 1 else None

        for lab in sorted(groups, key=natural_key):
            rids = [r for r in groups[lab] if r in cfg.index]
            color = self.color(one(rids, "estimator"))
            ls = self.linestyle(one(rids, "iw") if use_iw else None)
            key = (str(color), str(ls))
            n = seen.get(key, 0)
            seen[key] = n + 1
            out[lab] = {"color": color, "linestyle": ls, "marker": MARKERS[n % len(MARKERS)]}
        return out


def tracked_estimators(data: ExperimentData) -> List[str]:
    r"""The estimator ids of the runs' ``train:variance/<id>`` metrics (``run.py --track_variance``)."""
    m = data.metrics
    names = m.loc[(m["split"] == "train") & m["metric"].str.startswith("variance/"), "metric"]
    return sorted({n[len("variance/"):] for n in names})


def _line_kw(style: Dict[str, Any], npoints: int) -> Dict[str, Any]:
    r"""Plot keywords of a curve: a curve of one point gets a visible marker (a lone point of a
    line without marker is not drawn)."""
    kw = dict(style)
    if kw.get("marker") is None and npoints < 30:
        kw["marker"] = "o" if npoints <= 1 else "."
    if npoints <= 1:
        kw["markersize"] = 6
    return kw


def plot_curves(table: pd.DataFrame, title: str, ylabel: str, ylims: Dict[str, Tuple[float, float]],
                split: str, metric: str, styles: Optional[Dict[str, Dict[str, Any]]] = None) -> Any:
    r"""Mean curves (with a +- std band) per label of ``table`` (:func:`curve_table`); ``styles``
    maps a label to its colour / line style / marker (:meth:`Styles.for_labels`)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = sorted(dict.fromkeys(table["label"]), key=natural_key)
    default = {lab: {"color": c} for c, lab in zip(_palette(len(labels)), labels)}
    for label in labels:
        st = (styles or {}).get(label, default[label])
        t = table[table["label"] == label].sort_values("step")
        ax.plot(t["step"], t["mean"], label=label, **_line_kw(st, len(t)))
        ax.fill_between(t["step"], t["mean"] - t["std"], t["mean"] + t["std"], color=st["color"], alpha=0.2,
                        linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _ylim(ax, ylims, split, metric)
    _legend(ax, len(labels))
    return fig


def check_requested_metrics(args: argparse.Namespace, logged: Sequence[Tuple[str, str]]) -> None:
    r"""Raise :class:`ReportArgumentError` (one line: the flag, the entry, the closest logged names)
    when a ``--metrics`` / ``--detailed_metrics`` / ``--pivot_metrics`` entry is logged by no run
    while some metrics are logged (a typo would otherwise give empty figures and exit 0)."""
    import difflib

    if not logged:
        return
    names = [f"{sp}:{m}" for sp, m in logged]
    for flag, specs in (("--metrics", args.metrics), ("--detailed_metrics", args.detailed_metrics),
                        ("--pivot_metrics", args.pivot_metrics)):
        for spec in specs:
            sm = f"{spec.split}:{spec.metric}"
            if sm in names:
                continue
            close = difflib.get_close_matches(sm, names, n=3, cutoff=0.6)
            hint = (f"did you mean {', '.join(close)}?" if close else
                    f"logged: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")
            raise ReportArgumentError(f"{flag}: {spec.name} is logged by no run of {args.exp!r}; {hint}")


def report_experiment(args: argparse.Namespace) -> Path:
    r"""Build the whole report for parsed ``args``; returns the output folder."""
    import matplotlib.pyplot as plt

    data = read_experiment(args.root, args.exp, args.include, args.exclude)
    logged = sorted(set(zip(data.metrics["split"], data.metrics["metric"])))
    check_requested_metrics(args, logged)
    outdir = output_folder(args.output, args.exp, args.include, args.exclude)
    outdir.mkdir(parents=True, exist_ok=True)
    missing_keys = [k for k in args.keys if k not in data.config_columns]
    keys = [k for k in args.keys if k in data.config_columns]
    styles = Styles.from_runs(data.runs, estimators=tracked_estimators(data))
    metrics = list(args.metrics)
    if not metrics:
        metrics = ([MetricSpec("test", "loss/L_k")] if ("test", "loss/L_k") in logged
                   else [MetricSpec(s, m) for s, m in logged[:12]])
    detailed = list(args.detailed_metrics) or metrics
    pivots = list(args.pivot_metrics)
    if not pivots and ("test", "loss/L_k") in logged:
        pivots = [PivotSpec("max", "test", "loss/L_k")]
    notes: List[str] = []
    if missing_keys:
        notes.append(f"keys not in any run's configuration (ignored): {missing_keys}")

    # runs and their status
    runs = data.runs.copy()
    if "error" in runs.columns:  # the reason of a failure, in one line (status.json's error)
        runs["error"] = runs["error"].map(_first_line)
    status_cols = ["run_id", "status", *keys, *(["seed"] if "seed" in runs.columns and "seed" not in keys else []),
                   "lines", "last_step", "error", "problems"]
    status_cols = [c for c in status_cols if c in runs.columns]
    sections = [Section("Runs", [TextItem(_status_summary(runs)),
                                 write_table(runs, outdir, "runs", "Every run directory and its status.",
                                             display=runs[status_cols])])]
    if notes:
        sections[0].items.insert(0, TextItem("\n".join(notes)))
    sections[0].items += grid_items(args.experiment_file, args.exp, data, outdir)

    curves = Section("Learning curves (mean +- std across runs of a configuration)")
    curve_styles = styles.for_labels(run_labels(data, keys), data.runs)
    for spec in metrics:
        table = curve_table(data, spec, keys, args.downsample)
        if table.empty:
            curves.items.append(TextItem(f"{spec.name}: not logged by any run"))
            continue
        name = f"curves-{spec.split}-{spec.metric}"
        write_table(table, outdir, name, f"Learning curve data of {spec.name}")
        curves.items.append(save_figure(plot_curves(table, f"{args.exp}: {spec.name}", spec.metric, args.ylims,
                                                    spec.split, spec.metric, curve_styles), outdir, name,
                                        f"{spec.name} vs step, grouped by {', '.join(keys) or 'nothing'}"))
    detail = Section("Detailed curves (one line per run)")
    labels = run_labels(data, [*keys, *(["seed"] if "seed" in data.config_columns and "seed" not in keys else [])])
    for spec in detailed:
        df = _select(data, spec.split, spec.metric)
        if df.empty:
            detail.items.append(TextItem(f"{spec.name}: not logged by any run"))
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        run_ids = sorted(dict.fromkeys(df["run_id"]), key=lambda r: natural_key(f"{labels.get(r, r)} {r}"))
        per_run = styles.for_labels(pd.Series({r: f"{labels.get(r, r)} [{r[:10]}]" for r in run_ids}), data.runs)
        for rid in run_ids:
            t = df[df["run_id"] == rid].groupby("step")["value"].last().reset_index()
            t = _downsample(t, args.downsample)
            lab = f"{labels.get(rid, rid)} [{rid[:10]}]"
            ax.plot(t["step"], t["value"], label=lab, linewidth=1, **_line_kw(per_run[lab], len(t)))
        ax.set_xlabel("step")
        ax.set_ylabel(spec.metric)
        ax.set_title(f"{args.exp}: {spec.name} per run", fontsize=9)
        ax.grid(alpha=0.3)
        _ylim(ax, args.ylims, spec.split, spec.metric)
        _legend(ax, len(run_ids))
        detail.items.append(save_figure(fig, outdir, f"detailed-{spec.split}-{spec.metric}",
                                        f"{spec.name} of every run"))
    pivot_sec = Section("Pivot summaries (per-run aggregate; mean ± std (n) across runs)")
    pivot_styles = styles.for_labels(run_labels(data, [k for k in keys if k != "iw"]), data.runs, use_iw=False)
    for spec in pivots:
        long, wide = pivot_table(data, spec, keys)
        if long.empty:
            pivot_sec.items.append(TextItem(f"{spec.name}: not logged by any run"))
            continue
        name = f"pivot-{spec.agg}-{spec.split}-{spec.metric}"
        pivot_sec.items.append(write_table(long, outdir, name, f"{spec.name} per configuration and iw", display=wide))
        fig, ax = plt.subplots(figsize=(6, 4))
        labs = sorted(dict.fromkeys(long["label"]), key=natural_key)
        numeric = pd.to_numeric(long["iw"], errors="coerce")
        palette = _palette(len(labs))  # the colour of a label without a style
        for i, lab in enumerate(labs):
            st = dict(pivot_styles.get(lab, {"color": palette[i]}))
            st["marker"] = st.get("marker") or "o"
            t = long[long["label"] == lab].assign(x=numeric).sort_values("x")
            x = t["x"] if t["x"].notna().all() else pd.Series(np.arange(len(t)), index=t.index)
            dodge = 0.025 * (i - (len(labs) - 1) / 2)  # small offset so that error bars do not overlap
            x = x * np.exp(dodge) if (numeric > 0).all() else x + dodge
            yerr = t["std"].where(t["n"] > 1)  # no bar for a single run (its spread is unknown)
            ax.errorbar(x, t["mean"], yerr=yerr, label=lab, capsize=3, **st)
        if numeric.notna().all() and (numeric > 0).all():
            ax.set_xscale("log")
            ticks = sorted(numeric.unique())
            ax.set_xticks(ticks)
            ax.set_xticklabels([_val(float(t)) for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel("iw (K)")
        ax.set_ylabel(f"{spec.agg} {spec.split} {spec.metric}")
        ax.set_title(f"{args.exp}: {spec.name}", fontsize=9)
        ax.grid(alpha=0.3)
        _ylim(ax, args.ylims, spec.split, spec.metric)
        _legend(ax, len(labs))
        pivot_sec.items.append(save_figure(fig, outdir, name, f"{spec.name} vs iw"))
    sections += [curves, detail, pivot_sec]
    if getattr(args, "variance_tracking", False):
        sections.append(Section("Gradient variance tracking (log10 of the mean gradient variance of every "
                                "estimator at the same parameters, run.py --track_variance)",
                                variance_tracking_items(data, outdir, args.exp, labels, styles)))
    render_index(outdir, f"Report: {args.exp}", sections)
    return outdir


def variance_tracking_table(data: ExperimentData, run_id: str) -> pd.DataFrame:
    r"""The ``train:variance/<id>`` metrics of run ``run_id`` (``run.py --track_variance``):
    columns ``estimator, step, value`` (the last value logged at a step), sorted."""
    m = data.metrics
    df = m[(m["run_id"] == run_id) & (m["split"] == "train") & m["metric"].str.startswith("variance/")]
    if df.empty:
        return pd.DataFrame(columns=["estimator", "step", "value"])
    df = df.groupby(["metric", "step"], sort=True)["value"].last().reset_index()
    df = df.assign(estimator=df["metric"].str.slice(len("variance/")))
    return df[["estimator", "step", "value"]].sort_values(["estimator", "step"]).reset_index(drop=True)


def variance_tracking_items(data: ExperimentData, outdir: Path, exp: str, labels: pd.Series,
                            styles: Optional["Styles"] = None) -> List[Any]:
    r"""One figure (and its CSV, ``variance-tracking-<run_id>``) per run that logged
    ``train:variance/*``: the log-variance (natural log) of the moving-average per-step gradient of
    every tracked estimator along the run's one trajectory against the step, one curve per estimator,
    as the REBAR paper's Figure 2 (Tucker et al. 2017; :mod:`ovis.training.variance`)."""
    import matplotlib.pyplot as plt

    m = data.metrics
    has = m[(m["split"] == "train") & m["metric"].str.startswith("variance/")]
    run_ids = sorted(dict.fromkeys(has["run_id"]), key=natural_key)
    if not run_ids:
        return [TextItem("no run logged train:variance/* metrics (run.py --track_variance ID,...)")]
    cfg = data.runs.set_index("run_id")
    items: List[Any] = []
    styles = styles or Styles.from_runs(data.runs, estimators=tracked_estimators(data))
    for rid in run_ids:
        table = variance_tracking_table(data, rid)
        name = f"variance-tracking-{rid}"
        items.append(write_table(table, outdir, name, f"log gradient variance (natural log, moving average over the steps) per estimator of run {rid}"))
        trained = cfg.at[rid, "estimator"] if "estimator" in cfg.columns and rid in cfg.index else None
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ests = sorted(dict.fromkeys(table["estimator"]), key=natural_key)
        for est in ests:
            t = table[table["estimator"] == est]
            ax.plot(t["step"], t["value"], label=est + (" (trained)" if est == trained else ""),
                    **_line_kw({"color": styles.color(est)}, len(t)),
                    linewidth=2.0 if est == trained else 1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("log Var (natural log, moving average)")
        ax.set_title(f"{exp}: {labels.get(rid, rid)} [{rid[:10]}]", fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax, len(ests))
        items.append(save_figure(fig, outdir, name, f"gradient variance of every estimator along run {rid} "
                                                    f"(trained with {trained or '?'})"))
    return items


def grid_items(experiment_file: Optional[str], exp: str, data: ExperimentData, outdir: Path) -> List[Any]:
    r"""The page items listing the grid's jobs without a successful run (``grid.csv``)."""
    from ovis.reporting.grid import grid_status

    if experiment_file == "none":
        return []
    path = Path(experiment_file) if experiment_file else Path("experiments") / f"{exp}.json"
    if not path.exists():
        if experiment_file:
            return [TextItem(f"experiment file {path} not found: missing configurations not listed")]
        return []
    try:
        grid = grid_status(path, exp, data)
    except (ValueError, OSError) as e:
        return [TextItem(f"experiment file {path} could not be read ({e}): missing configurations not listed")]
    pending = grid[grid["status"] != "success"]
    counts = grid["status"].value_counts().to_dict()
    text = (f"grid {path}: {len(grid)} job(s): " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            + ("" if pending.empty else f"; {len(pending)} without a successful run (listed below)"))
    if not pending.empty:
        print(text, file=sys.stderr)
    # every job, those without a successful run first (the table is never empty)
    order = pd.concat([pending, grid[grid["status"] == "success"]])
    return [TextItem(text), write_table(grid, outdir, "grid", "Every job of the grid and the status of its run "
                                        "(those without a successful run first)", display=order)]


def _status_summary(runs: pd.DataFrame) -> str:
    counts = runs["status"].value_counts().to_dict()
    lines = [f"{len(runs)} run(s): " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))]
    for _, r in runs.iterrows():
        if r["status"] != "success" or r["problems"]:
            err = _first_line(r.get("error"))
            lines.append(f"  {r['run_id']}: {r['status']}" + (f": {err}" if err else "")
                         + (f" ({r['problems']})" if r["problems"] else ""))
    return "\n".join(lines)


def _first_line(v: Any) -> str:
    r"""The first line of a run's ``status.json`` error (``""`` when none)."""
    if not isinstance(v, str) or not v.strip():
        return ""
    return v.strip().splitlines()[0][:300]


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""``report.py``'s entry point; returns the exit code (2: bad arguments, including a requested
    metric that no run logged; 1: no runs)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_report_args(argv)
    except ReportArgumentError as e:
        print(f"report.py: error: {e}", file=sys.stderr)
        return 2
    try:
        outdir = report_experiment(args)
    except ReportArgumentError as e:  # a requested metric that no run logged (a typo)
        print(f"report.py: error: {e}", file=sys.stderr)
        return 2
    except NoRunsError as e:
        print(f"report.py: error: {e}", file=sys.stderr)
        return 1
    print(f"report written to {outdir / 'index.html'}")
    return 0
