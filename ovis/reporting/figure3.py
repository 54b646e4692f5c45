r"""Figure 3 of the OVIS paper: sigmoid belief network training curves of the test ``L_K``.

``python report_figure3.py --figure left|right [--exp sigmoid-belief-network] [--root runs/]
[--output reports/] [--metric test:loss/L_k] [--experiment_file experiments/<exp>.json]``

* ``left``: the runs tagged ``iwbound`` (``run.py --id iwbound``: training on the IW bound);
* ``right``: the runs tagged ``iwrbound`` (Renyi warm-up of the IW bound, and TVO).

One panel per data set and K, one curve per estimator (mean +- std across seeds), and a table of
the last and best value per data set, estimator and K.  The figure works on whatever subset of the
grid exists: the configurations (data set, estimator, K, seed) that the experiment file asks for
and that have no finished run are listed as missing (in the page, ``missing.csv`` and on stderr).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Set, Tuple

import pandas as pd

from ovis.reporting.outputs import Section, TextItem, render_index, save_figure, write_table
from ovis.reporting.report import MetricSpec, _palette, _val, parse_metric_spec
from ovis.reporting.runs import NoRunsError, read_experiment

__all__ = ["TAGS", "PAPER_ESTIMATORS", "expected_configurations", "report_figure3", "main"]

TAGS = {"left": "iwbound", "right": "iwrbound"}
#: the estimators of each panel in the paper's grid (used when no experiment file is found)
PAPER_ESTIMATORS = {
    "iwbound": ["vimco-arithmetic", "ovis-gamma0", "ovis-gamma1", "ovis-S1-exclusive", "ovis-S10-exclusive",
                "ovis-S50-exclusive"],
    "iwrbound": ["tvo-part2-config1", "ovis-gamma1", "ovis-gamma0", "ovis-S1-exclusive", "ovis-S10-exclusive",
                 "ovis-S50-exclusive"],
}
Config = Tuple[str, str, str, str]  # dataset, estimator, iw, seed (as strings)


def _flag(argv: Sequence[str], name: str) -> Optional[str]:
    out = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            out = argv[i + 1]
        elif a.startswith(name + "="):
            out = a.split("=", 1)[1]
    return out


def _norm(v: Any) -> str:
    try:
        f = float(v)
        return str(int(f)) if f.is_integer() else str(f)
    except (TypeError, ValueError):
        return str(v)


def expected_configurations(experiment_file: Optional[Path], tag: str) -> Tuple[Set[Config], str]:
    r"""The ``(dataset, estimator, iw, seed)`` of every job of the experiment file with ``--id tag``,
    and where they came from."""
    if experiment_file is not None and experiment_file.exists():
        from ovis.experiments.grid import load_and_expand

        _, jobs, _ = load_and_expand(experiment_file, validate=False)
        out = set()
        for job in jobs:
            argv = list(job.argv)
            if _flag(argv, "--id") != tag:
                continue
            out.add((str(_flag(argv, "--dataset")), str(_flag(argv, "--estimator")),
                     _norm(_flag(argv, "--iw")), _norm(_flag(argv, "--seed") or 1)))
        return out, str(experiment_file)
    return set(), "no experiment file: missing configurations cannot be listed"


def mean_pm_std(mean: float, std: float) -> str:
    r"""``"mean ± std"`` to two decimals; a single run (``std`` NaN: no spread to estimate) is its mean alone."""
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def report_figure3(root: str, exp: str, output: str, figure: str, metric: MetricSpec,
                   experiment_file: Optional[Path]) -> Tuple[Path, List[Config]]:
    r"""Write one panel set of Figure 3 (see the module docstring) into ``<output>/<exp>-figure3-<figure>``.

    Args:
        root: root of the run directories.
        exp: the experiment name.
        output: where the report folder goes.
        figure: ``"left"`` (runs tagged ``iwbound``) or ``"right"`` (``iwrbound``).
        metric: the ``split:metric`` to draw.
        experiment_file: the grid listing the expected configurations (``None`` or missing: none
            can be listed).

    Returns:
        ``(report folder, missing configurations)``, each configuration a ``(dataset, estimator,
        iw, seed)`` tuple of strings.

    Raises:
        ovis.reporting.runs.NoRunsError: the experiment has no run directory.
    """
    import matplotlib.pyplot as plt

    tag = TAGS[figure]
    data = read_experiment(root, exp)
    runs = data.runs
    if "id" not in runs.columns:
        runs = runs.assign(id="")
    sel = runs[runs["id"] == tag]
    outdir = Path(output) / f"{exp}-figure3-{figure}"
    outdir.mkdir(parents=True, exist_ok=True)
    expected, source = expected_configurations(experiment_file, tag)
    have: Set[Config] = set()
    for _, r in sel.iterrows():
        if r["status"] in ("success", "running"):
            have.add((str(r.get("dataset")), str(r.get("estimator")), _norm(r.get("iw")), _norm(r.get("seed"))))
    missing = sorted(expected - have)
    m = data.metrics
    usable = sel[sel["status"].isin(["success", "running"])]  # failed / corrupt runs are listed, not drawn
    m = m[(m["run_id"].isin(usable["run_id"])) & (m["split"] == metric.split) & (m["metric"] == metric.metric)]
    sections: List[Section] = []
    notes = [f"runs tagged {tag!r}: {len(sel)} of {len(runs)} in {Path(root) / exp}",
             "status: " + ", ".join(f"{k}: {v}" for k, v in sorted(sel['status'].value_counts().to_dict().items())),
             f"expected configurations from {source}: {len(expected)}; missing (no successful or running run): "
             f"{len(missing)}"]
    notes += [f"  missing: dataset={d}, estimator={e}, iw={k}, seed={s}" for d, e, k, s in missing[:200]]
    if len(missing) > 200:
        notes.append(f"  ... and {len(missing) - 200} more (missing.csv)")
    bad = sel[~sel["status"].isin(["success", "running"])]
    notes += [f"  not usable: {r['run_id']} ({r['status']}) {r.get('problems') or ''}" for _, r in bad.iterrows()]
    items: List[Any] = [TextItem("\n".join(notes))]
    items.append(write_table(pd.DataFrame(missing, columns=["dataset", "estimator", "iw", "seed"]), outdir,
                             "missing", "Missing configurations"))
    if m.empty:
        items.append(TextItem(f"no run tagged {tag!r} has logged {metric.name} yet"))
        sections.append(Section(f"Figure 3 ({figure}): {metric.name}", items))
        render_index(outdir, f"Figure 3 ({figure}, --id {tag}): {exp}", sections)
        return outdir, missing
    m = m.groupby(["run_id", "dataset", "estimator", "iw", "step"], dropna=False)["value"].last().reset_index()
    datasets = sorted(m["dataset"].astype(str).unique())
    Ks = sorted(m["iw"].unique(), key=float)
    ests = [e for e in PAPER_ESTIMATORS[tag] if e in set(m["estimator"])]
    ests += sorted(set(m["estimator"]) - set(ests))
    colors = dict(zip(ests, _palette(len(ests))))
    fig, axes = plt.subplots(len(datasets), len(Ks), figsize=(4.5 * len(Ks), 3.4 * len(datasets)), squeeze=False)
    summary = []
    for i, ds in enumerate(datasets):
        for j, K in enumerate(Ks):
            ax = axes[i][j]
            for est in ests:
                t = m[(m["dataset"].astype(str) == ds) & (m["iw"] == K) & (m["estimator"] == est)]
                if t.empty:
                    continue
                g = t.groupby("step")["value"]
                mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
                ax.plot(mean.index, mean.values, color=colors[est], label=est)
                ax.fill_between(mean.index, (mean - std).values, (mean + std).values, color=colors[est], alpha=0.2,
                                linewidth=0)
                per_run = t.sort_values("step").groupby("run_id")["value"]
                summary.append({"dataset": ds, "estimator": est, "iw": _val(K), "runs": per_run.ngroups,
                                "last_mean": per_run.last().mean(), "last_std": per_run.last().std(ddof=1),
                                "max_mean": per_run.max().mean(), "max_std": per_run.max().std(ddof=1)})
            ax.set_title(f"{ds}, K={_val(K)}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(metric.name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.suptitle(f"Figure 3 ({figure}: --id {tag}) {exp}", fontsize=10)
    fig.tight_layout()
    items.append(save_figure(fig, outdir, f"figure3-{figure}", f"{metric.name} vs step per estimator "
                             f"(mean +- std across seeds), runs tagged {tag}"))
    summ = pd.DataFrame(summary)
    disp = summ.assign(last=[mean_pm_std(m, s) for m, s in zip(summ["last_mean"], summ["last_std"])],
                       best=[mean_pm_std(m, s) for m, s in zip(summ["max_mean"], summ["max_std"])])
    items.append(write_table(summ, outdir, f"figure3-{figure}-summary", f"last and best {metric.name} per data set, "
                             f"estimator and K (mean ± std across seeds)",
                             display=disp[["dataset", "estimator", "iw", "runs", "last", "best"]]))
    sections.append(Section(f"Figure 3 ({figure}): {metric.name}", items))
    render_index(outdir, f"Figure 3 ({figure}, --id {tag}): {exp}", sections)
    return outdir, missing


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""``report_figure3.py``: parse the command line and call :func:`report_figure3`; missing
    configurations are listed on ``stderr``.

    Returns:
        The exit code: ``0``; ``1`` when the experiment has no run; ``2`` on invalid arguments.
    """
    p = argparse.ArgumentParser(prog="report_figure3.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--figure", required=True, choices=["left", "right"])
    p.add_argument("--exp", default="sigmoid-belief-network")
    p.add_argument("--root", default="runs/")
    p.add_argument("--output", default="reports/")
    p.add_argument("--metric", default="test:loss/L_k", help="split:metric to draw")
    p.add_argument("--experiment_file", default=None,
                   help="the grid that lists the expected configurations (default experiments/<exp>.json)")
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        metric = parse_metric_spec(args.metric, "--metric")
    except ValueError as e:
        p.error(str(e))
    ef = Path(args.experiment_file) if args.experiment_file else Path("experiments") / f"{args.exp}.json"
    try:
        outdir, missing = report_figure3(args.root, args.exp, args.output, args.figure, metric, ef)
    except NoRunsError as e:
        print(f"report_figure3.py: error: {e}", file=sys.stderr)
        return 1
    if missing:
        print(f"report_figure3.py: {len(missing)} configuration(s) missing (see {outdir / 'missing.csv'})",
              file=sys.stderr)
    print(f"report written to {outdir / 'index.html'}")
    return 0
