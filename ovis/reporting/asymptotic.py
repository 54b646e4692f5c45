r"""Figure 1 of the OVIS paper, from the runs of ``asymptotic_variance.py``.

``python report_asymptotic_variance.py --exp asymptotic-variance [--root runs/] [--output reports/]
[--params b|A|all]``

* ``figure1``: four log-log panels (variance, SNR, DSNR and ``|E[g]|`` of the gradient w.r.t. the
  chosen parameters vs K; ``--params b``, the encoder bias, as in the paper, by default), one line
  per estimator, with reference slopes ``K^{+1/2}`` and ``K^{-1/2}`` on the SNR and DSNR panels,
  ``1/K`` on the ``|E[g]|`` panel, and the Monte Carlo floor (``sqrt(2 / (pi N))`` for the SNR
  with ``N`` draws); points within twice the floor are drawn hollow;
* ``distributions``: the distributions of the saved gradient coordinates (one panel per
  estimator, one histogram per K);
* ``slopes``: the least-squares log-log slope of every statistic vs K per estimator, through
  the points clear of the floor (CSV, Markdown, LaTeX), and ``statistics`` (every estimator x K row);
* the runs and their status (failed / running / unfinished runs are listed), and ``index.html``.

Several experiments can be combined: ``--exp asymptotic-variance,asymptotic-variance-extended``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ovis.analysis.asymptotic import GROUP_COLUMNS, GROUPS, STATISTICS, above_floor, fit_slope, snr_floor
from ovis.reporting.outputs import Section, TextItem, render_index, safe_name, save_figure, write_table
from ovis.reporting.runs import NoRunsError, read_experiment

__all__ = ["load_statistics", "statistic_columns", "slopes_table", "figure1", "report_asymptotic", "main"]

LABELS = {"variance": "variance", "snr": "SNR", "dsnr": "DSNR", "magnitude": "|E[g]|"}


def load_statistics(root: str, exps: Sequence[str]) -> Tuple[pd.DataFrame, pd.DataFrame, Dict[Tuple[str, int], Path]]:
    r"""Rows ``(exp, run_id, estimator, iw, variance, snr, dsnr, magnitude, ...)`` of every run's
    ``statistics.json``, the runs table (status of every run directory) and the paths of the saved
    samples keyed by ``(estimator, iw)``."""
    rows: List[Dict[str, Any]] = []
    runs: List[pd.DataFrame] = []
    samples: Dict[Tuple[str, int], Path] = {}
    for exp in exps:
        data = read_experiment(root, exp)
        r = data.runs.copy()
        r = r.drop(columns=["exp"], errors="ignore")
        r.insert(0, "exp", exp)
        notes = []
        for rec in data.records:
            path = rec.path / "statistics.json"
            if not path.exists():
                notes.append("no statistics.json")
                continue
            try:
                stats = json.loads(path.read_text())
                ok_rows = [x for x in stats["rows"] if all(k in x for k in ("estimator", "iw", *STATISTICS))]
            except (OSError, ValueError, KeyError, TypeError) as e:
                notes.append(f"statistics.json unreadable: {e}")
                continue
            notes.append("")
            for x in ok_rows:
                rows.append({"exp": exp, "run_id": rec.run_id, **{k: x[k] for k in ("estimator", "iw", *STATISTICS)},
                             **{k: x[k] for k in GROUP_COLUMNS if k in x}, "mc_samples": x.get("mc_samples")})
                f = rec.path / "samples" / f"{x['estimator']}-K{x['iw']}.npy"
                if f.exists():
                    samples[(x["estimator"], int(x["iw"]))] = f
        r["statistics"] = notes
        # asymptotic_variance.py writes statistics.json, not metrics.jsonl: not a problem here
        r["problems"] = r["problems"].map(
            lambda t: "; ".join(x for x in str(t).split("; ") if x and x != "metrics.jsonl missing"))
        runs.append(r)
    present = [c for c in GROUP_COLUMNS if any(c in r for r in rows)]
    stats = pd.DataFrame(rows, columns=["exp", "run_id", "estimator", "iw", *STATISTICS, *present, "mc_samples"])
    # one row per (estimator, iw): the last run read wins should two runs hold the same pair
    stats = stats.drop_duplicates(["estimator", "iw"], keep="last").sort_values(["estimator", "iw"])
    return stats.reset_index(drop=True), pd.concat(runs, ignore_index=True), samples


def statistic_columns(stats: pd.DataFrame, group: str) -> Dict[str, str]:
    r"""The column of each statistic for a parameter group: ``all`` (every coordinate of ``(A, b)``:
    ``snr``, ...) or one of :data:`ovis.analysis.asymptotic.GROUPS` (``snr_b``, ...)."""
    if group != "all" and group not in GROUPS:
        raise ValueError(f"--params must be 'all' or one of {list(GROUPS)}, got {group!r}")
    cols = {s: s if group == "all" else f"{s}_{group}" for s in STATISTICS}
    missing = [c for c in cols.values() if c not in stats.columns]
    if missing:
        raise ValueError(f"the runs have no statistics {missing} for --params {group} (runs of an older "
                         "asymptotic_variance.py): rerun them, or report --params all")
    return cols


def _keep(stats: pd.DataFrame, cols: Mapping[str, str]) -> pd.Series:
    r"""Rows clear of the Monte Carlo floor (:func:`ovis.analysis.asymptotic.above_floor`)."""
    n = stats["mc_samples"].fillna(0)
    return pd.Series([n_ > 0 and above_floor(float(v), float(n_)) for v, n_ in zip(stats[cols["snr"]], n)],
                     index=stats.index, dtype=bool)


def slopes_table(stats: pd.DataFrame, group: str = "all") -> pd.DataFrame:
    r"""The log-log slope of each statistic vs K per estimator (``ovis.analysis.asymptotic.fit_slope``),
    through the points clear of the Monte Carlo floor only (``K_values``; the others in ``K_floor``)."""
    cols = statistic_columns(stats, group)
    keep = _keep(stats, cols)
    out = []
    for est, g in stats.groupby("estimator", sort=False):
        k = keep[g.index]
        fit = g[k]
        row: Dict[str, Any] = {"estimator": est, "params": group,
                               "K_values": " ".join(str(int(v)) for v in fit["iw"]),
                               "K_floor": " ".join(str(int(v)) for v in g["iw"][~k])}
        for s in STATISTICS:
            row[f"slope_{s}"] = fit_slope(list(fit["iw"]), list(fit[cols[s]]))
        out.append(row)
    return pd.DataFrame(out)


def figure1(stats: pd.DataFrame, group: str = "b", colors: Optional[Mapping[str, Any]] = None,
            paper_snr: Optional[Mapping[str, Tuple[Sequence[float], Sequence[float]]]] = None) -> Any:
    r"""Four log-log panels (variance, SNR, DSNR, ``|E g|`` of the gradient w.r.t. ``group`` vs K),
    one colour per estimator; hollow markers for points on the Monte Carlo floor; reference slopes
    +-1/2 on the SNR and DSNR panels, 1/K on the ``|E g|`` panel, the floors in grey; optional
    crosses ``paper_snr[estimator] = (K, snr)`` on the SNR panel."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    cols = statistic_columns(stats, group)
    keep = _keep(stats, cols)
    ests = list(dict.fromkeys(stats["estimator"]))
    if colors is None:
        colors = dict(zip(ests, sns.color_palette("tab10" if len(ests) <= 10 else "husl", len(ests))))
    what = "(A, b)" if group == "all" else group
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    K = stats["iw"].to_numpy(float)
    ks = np.array([K.min(), K.max()])
    n = float(stats["mc_samples"].min()) if stats["mc_samples"].notna().any() else float("nan")
    for ax, s in zip(axes, STATISTICS):
        for est in ests:
            g = stats[stats["estimator"] == est].sort_values("iw")
            k = keep[g.index].to_numpy(bool)
            ax.plot(g["iw"], g[cols[s]], color=colors[est], label=est)
            ax.scatter(g["iw"][k], g[cols[s]][k], color=colors[est], s=18)
            ax.scatter(g["iw"][~k], g[cols[s]][~k], facecolors="none", edgecolors=colors[est], s=18)
            if s == "snr" and paper_snr and est in paper_snr:
                ax.scatter(*paper_snr[est], marker="x", color=colors[est], s=28)
        vals = stats[cols[s]][(stats[cols[s]] > 0) & keep]
        if s in ("snr", "dsnr") and len(vals):
            anchor = float(np.exp(np.log(vals).median()))
            ax.plot(ks, anchor * (ks / ks[0]) ** 0.5, "k--", linewidth=0.8, label="slope +1/2")
            ax.plot(ks, anchor * (ks / ks[0]) ** -0.5, "k:", linewidth=0.8, label="slope -1/2")
        if s == "magnitude" and len(vals):
            ax.plot(ks, float(vals.max()) * (ks / ks[0]) ** -1.0, "k-.", linewidth=0.8, label="slope -1 (1/K)")
        if math.isfinite(n) and n > 0:
            if s == "snr":
                ax.axhline(snr_floor(n), color="grey", linewidth=0.8, alpha=0.7, label="MC floor sqrt(2/(pi N))")
            if s == "magnitude":
                g = stats.sort_values("iw")
                ax.scatter(g["iw"], snr_floor(n) * np.sqrt(g[cols["variance"]]), marker="_", color="grey",
                           label="MC floor of |E g|")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (particles)")
        ax.set_title(f"{LABELS[s]} of dL/d{what}")
        ax.grid(alpha=0.3, which="both")
    handles, names = [], []
    for ax in axes:
        for h, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(h)
                names.append(name)
    fig.legend(handles, names, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def _distributions(stats: pd.DataFrame, samples: Dict[Tuple[str, int], Path], coord: int = 0) -> Optional[Any]:
    import matplotlib.pyplot as plt
    import seaborn as sns

    ests = [e for e in dict.fromkeys(stats["estimator"]) if any(k[0] == e for k in samples)]
    if not ests:
        return None
    fig, axes = plt.subplots(1, len(ests), figsize=(3.6 * len(ests), 3.4), squeeze=False)
    for ax, est in zip(axes[0], ests):
        Ks = sorted(k for e, k in samples if e == est)
        colors = sns.color_palette("viridis", len(Ks))
        for color, K in zip(colors, Ks):
            arr = np.load(samples[(est, K)], allow_pickle=False)
            if arr.ndim != 2 or arr.shape[1] <= coord:
                continue
            v = arr[:, coord].astype(np.float64)
            sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            if not sd > 0:
                continue
            ax.hist(v / sd, bins=40, density=True, histtype="step", color=color,
                    label=f"K={K} (std {sd:.2g}, mean/std {v.mean() / sd:+.2f})")
        ax.axvline(0.0, color="k", linewidth=0.6)
        ax.set_title(est, fontsize=9)
        ax.set_xlabel("draw of dL/dA[0,0] / its std at this K")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def report_asymptotic(root: str, exps: Sequence[str], output: str, experiment_files: Optional[str] = None,
                      group: str = "b") -> Path:
    r"""Write the Figure 1 report of the experiments ``exps`` under ``root`` (see the module docstring):
    the runs table and grid status, ``figure1``, the slopes and statistics tables, the distributions
    of the saved gradient coordinates, and ``index.html``.

    Args:
        root: root of the run directories.
        exps: experiment names, combined into one report.
        output: where the report folder (named after the experiments) goes.
        experiment_files: grid files, comma-separated in the order of ``exps``, to list missing jobs.
        group: the parameters whose statistics are drawn: ``"b"``, ``"A"`` or ``"all"``.

    Returns:
        The report folder.

    Raises:
        ovis.reporting.runs.NoRunsError: an experiment has no run directory.
    """
    stats, runs, samples = load_statistics(root, exps)
    outdir = Path(output) / safe_name("+".join(exps))
    outdir.mkdir(parents=True, exist_ok=True)
    statuses = runs["status"].value_counts().to_dict()
    summary = [f"{len(runs)} run(s): " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))]
    for _, r in runs.iterrows():
        if r["status"] != "success" or r["statistics"]:
            summary.append(f"  {r['exp']}/{r['run_id']}: {r['status']} {r['statistics']} {r['problems']}".rstrip())
    cols = [c for c in ("exp", "run_id", "status", "estimators", "mc_samples", "npoints", "D", "seed", "statistics",
                        "problems") if c in runs.columns]
    sections = [Section("Runs", [TextItem("\n".join(summary)),
                                 write_table(runs, outdir, "runs", "Run directories", display=runs[cols])])]
    from ovis.reporting.report import grid_items
    from ovis.reporting.runs import read_experiment as _read

    files = [f.strip() for f in (experiment_files or "").split(",") if f.strip()]
    for i, exp in enumerate(exps):
        ef = files[i] if i < len(files) else None
        items = grid_items(ef, exp, _read(root, exp), outdir)
        for it in items:  # one grid table per experiment
            if hasattr(it, "files") and len(exps) > 1:
                it.caption = f"{exp}: {it.caption}"
        sections[0].items += items if len(exps) == 1 else [x for x in items if not hasattr(x, "files")]
    if stats.empty:
        sections.append(Section("Figure 1", [TextItem("no statistics yet: no run has finished")]))
        render_index(outdir, "Figure 1: asymptotic variance", sections)
        return outdir
    slopes = slopes_table(stats, group)
    disp = slopes.copy()
    for c in disp.columns:
        if c.startswith("slope_"):
            disp[c] = disp[c].map(lambda v: f"{v:+.3f}" if math.isfinite(v) else "n/a")
    what = "all of (A, b)" if group == "all" else f"the parameter group {group}"
    n = stats["mc_samples"].min()
    fig1 = Section(f"Figure 1: gradient statistics w.r.t. {what} vs K", [
        save_figure(figure1(stats, group), outdir, "figure1",
                    f"Variance, SNR, DSNR and |E[g]| of the gradient w.r.t. {what} (per-coordinate statistics "
                    "averaged over its coordinates) vs K, per estimator; dashed/dotted: slopes +-1/2 (SNR, DSNR); "
                    "dash-dot: 1/K (|E g|); grey: the Monte Carlo floor; hollow markers: points within twice the "
                    "floor, left out of the slopes"),
        write_table(slopes, outdir, "slopes", f"Least-squares log-log slopes vs K ({what}), through the points "
                    f"clear of the Monte Carlo floor (twice sqrt(2/(pi N)), N = {n} draws); K_floor: left out",
                    display=disp),
        write_table(stats, outdir, "statistics", "Every estimator and K"),
    ])
    sections.append(fig1)
    dist = _distributions(stats, samples)
    if dist is not None:
        sections.append(Section("Distributions of gradient samples",
                                [save_figure(dist, outdir, "distributions",
                                             ("Histograms of the draws of one gradient coordinate (dL/dA[0,0]) for each K, divided by "
                                              "their standard deviation: the shift away from 0 is the coordinate SNR"))]))
    render_index(outdir, "Figure 1: asymptotic variance", sections)
    return outdir


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""``report_asymptotic_variance.py``: parse the command line and call :func:`report_asymptotic`.

    Returns:
        The exit code: ``0``; ``1`` when an experiment has no run; ``2`` on invalid arguments.
    """
    p = argparse.ArgumentParser(prog="report_asymptotic_variance.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", default="asymptotic-variance", help="experiment(s), comma-separated")
    p.add_argument("--root", default="runs/")
    p.add_argument("--output", default="reports/")
    p.add_argument("--experiment_file", default=None,
                   help="grid file(s), comma-separated in the order of --exp, to list missing jobs "
                        "(default experiments/<exp>.json when it exists; 'none' to skip)")
    p.add_argument("--params", default="b", choices=["all", *GROUPS],
                   help="the parameters whose gradient statistics are drawn: b (the encoder bias, as in the "
                        "paper; default), A, or all of (A, b)")
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    exps = [e.strip() for e in args.exp.split(",") if e.strip()]
    try:
        outdir = report_asymptotic(args.root, exps, args.output, args.experiment_file, args.params)
    except ValueError as e:
        print(f"report_asymptotic_variance.py: error: {e}", file=sys.stderr)
        return 2
    except NoRunsError as e:
        print(f"report_asymptotic_variance.py: error: {e}", file=sys.stderr)
        return 1
    print(f"report written to {outdir / 'index.html'}")
    return 0
