r"""The REBAR paper's part of ``docs/reproduction.md`` (Tucker, Mnih, Maddison, Lawson, Sohl-Dickstein,
"REBAR: Low-variance, unbiased gradient estimates for discrete latent variable models", NeurIPS 2017).

Two claims, each from its grid (drained by ``manager.py``):

* *variance* (``experiments/rebar-reproduce-variance.json``): REBAR's gradient log-variance is
  below MuProp's and NVIL's on the 2-layer linear and the 1-layer nonlinear sigmoid belief
  network (the paper's Figure 2): one trajectory trained with REBAR, the other estimators tracked
  online with their own parameters trained in shadow (``run.py --track_variance``,
  :mod:`ovis.training.variance`); the verdict compares the last logged log-variances.
* *convergence* (``experiments/rebar-reproduce-convergence.json``): the training ELBO curves of
  NVIL, MuProp, REBAR, dynamic REBAR and Concrete (the paper's Figure 3 / its training-ELBO
  table): REBAR and dynamic REBAR train at least as well as NVIL and MuProp; the verdict compares
  the last training ELBO.

The paper's statements are paraphrased (:data:`CLAIMS_TEXT`; the exact wording could not be
checked here, and the part says so); its numbers are not restated.  Everything else comes from runs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import pandas as pd

from ovis.reporting.reproduction.common import (
    VERDICTS,
    Comparison,
    FigureSection,
    Paper,
    _drop_flag,
    _read,
    _save,
    _seeds_cell,
    _status_line,
    _summary,
    _verdict_md,
    estimator_color,
    ordering_verdict,
)

#: figure key -> grid name
EXPERIMENTS: Dict[str, str] = {"variance": "rebar-reproduce-variance", "convergence": "rebar-reproduce-convergence"}

#: the two model configurations of the grids: (grid ``args`` entry) -> the label used in the part
CONFIGS: Dict[str, str] = {"--depth 2 --nlayers 0": "2-layer linear SBN", "--depth 1 --nlayers 2": "1-layer nonlinear SBN"}


def shrink_grid(grid: Mapping[str, Any], figure: str) -> Dict[str, Any]:
    r"""A tiny version of a figure's grid (one configuration per figure kept small: N = 8 units, one
    seed, a few steps, small evaluations; the convergence grid keeps two estimators): the same
    chain at a small size, for smoke tests.  ``figure``: a key of :data:`EXPERIMENTS`.

    Raises:
        ValueError: an unknown figure key.
    """
    if figure not in EXPERIMENTS:
        raise ValueError(f"figure must be one of {sorted(EXPERIMENTS)}, got {figure!r}")
    g = json.loads(json.dumps(grid))
    g["description"] = "tiny smoke-test version of: " + str(grid.get("description", ""))
    g["global"] = " ".join(_drop_flag(str(grid.get("global", "")).split(), "--nsteps")) + " --nsteps 8"
    p = g["parameters"]
    p.update(seed=[1], N=[8], hdim=[8], iw_valid=[4], iw_test=[4], max_eval=[10], bs=[100])
    if figure == "convergence":
        p["estimator"] = ["nvil", "rebar"]
    return g


#: lower ranks first: the ordering each claim makes (estimators with equal ranks are not compared)
RANKS: Dict[str, Dict[str, int]] = {
    "variance": {"rebar": 0, "dynamic-rebar": 0, "muprop": 1, "nvil": 1},
    "convergence": {"rebar": 0, "dynamic-rebar": 0, "muprop": 1, "nvil": 1},
}

#: the paper's statements, paraphrased (the wording could not be checked against the paper here)
CLAIMS_TEXT: Dict[str, str] = {
    "variance": ("REBAR's (and dynamic REBAR's) gradient log-variance is below MuProp's and NVIL's over training, on the "
                 "2-layer linear and the 1-layer nonlinear SBN on binarized MNIST (Figure 2; paraphrased)"),
    "convergence": ("REBAR and dynamic REBAR train faster and reach a training ELBO at least as good as NVIL's and "
                    "MuProp's; Concrete, biased, is competitive on some models (Figure 3 and its training-ELBO table; "
                    "paraphrased)"),
}

#: the summary's ``paper`` column
CLAIMS: Dict[str, str] = {
    "variance": "log-variance: REBAR, dynamic REBAR < MuProp, NVIL (both SBNs)",
    "convergence": "training ELBO: REBAR, dynamic REBAR >= MuProp, NVIL",
}


def claim_verdict(ranks: Mapping[str, int], ours: pd.DataFrame, higher_is_better: bool) -> Comparison:
    r"""The verdict of an ordering claim that has no published numbers: ``reproduced`` when every pair
    the claim orders is in its order, ``same ordering`` when only pairs our seeds do not separate are
    swapped, ``not reproduced`` when a pair is swapped beyond twice its standard error,
    ``no result yet`` with fewer than two of the claim's estimators (``ours``: ``mean``, ``std``,
    ``n`` per estimator).  ``reproduced`` also needs each such pair separated by more than twice
    the standard error of the difference of its means (one seed each: not tested)."""
    # a rank is a score: higher_is_better means a lower rank is a higher value
    paper = {e: (-float(r) if higher_is_better else float(r)) for e, r in ranks.items()}
    c = ordering_verdict(paper, ours, higher_is_better=higher_is_better)
    if c.verdict == "same ordering" and not any(d.startswith("the paper ranks") for d in c.details):
        # every ordered pair in order: reproduced when each is separated by more than twice its
        # standard error (or there is one seed each), else the same ordering within our seeds' spread
        close = []
        for a in ranks:
            for b in ranks:
                if ranks[a] < ranks[b] and a in ours.index and b in ours.index:
                    diff = abs(float(ours.loc[a, "mean"]) - float(ours.loc[b, "mean"]))
                    se = math.sqrt(sum(float(ours.loc[e, "std"]) ** 2 / max(1, int(ours.loc[e, "n"]))
                                       for e in (a, b) if np.isfinite(ours.loc[e, "std"])))
                    if se > 0 and diff <= 2 * se:
                        close.append(f"{a} vs {b}: in the claim's order by {diff:.3g}, within twice its standard "
                                     f"error {se:.2g}")
        if close:
            return Comparison("same ordering", ["every pair the claim orders is in its order, not all separated "
                                                "by our seeds"] + close)
        return Comparison("reproduced", ["every pair the claim orders is in its order, each by more than twice "
                                         "its standard error"])
    return c


def _worst(verdicts: List[str]) -> str:
    return max(verdicts, key=VERDICTS.index) if verdicts else "no result yet"


def _config_of(m: pd.DataFrame) -> pd.Series:
    r"""The grid configuration (:data:`CONFIGS` key) of each metric row."""
    depth = pd.to_numeric(m["depth"], errors="coerce").astype("Int64").astype(str)
    nlayers = pd.to_numeric(m["nlayers"], errors="coerce").astype("Int64").astype(str)
    return "--depth " + depth + " --nlayers " + nlayers


def variance_table(m: pd.DataFrame) -> pd.DataFrame:
    r"""The tracked log-variances of the variance runs as a long table: ``config``, ``estimator``
    (the tracked id), ``run_id``, ``status``, ``step``, ``value`` (train ``variance/<id>`` rows)."""
    v = m[(m["split"] == "train") & m["metric"].str.startswith("variance/")].copy()
    v["config"] = _config_of(v)
    v["estimator"] = v["metric"].str.slice(len("variance/"))
    return v[["config", "estimator", "run_id", "status", "step", "value", "split", "metric"]]


def last_per_run(t: pd.DataFrame) -> pd.Series:
    r"""The last logged value of each ``(estimator, run_id)`` of the finished runs of ``t``."""
    done = t[t["status"] == "success"].sort_values("step")
    return done.groupby(["estimator", "run_id"])["value"].last()


def _panel_figure(t: pd.DataFrame, ylabel: str, name: str, fig_dir: Path, title: str) -> str:
    r"""One panel per configuration (mean over seeds, band min-max, one colour per estimator)."""
    import matplotlib.pyplot as plt

    configs = [c for c in CONFIGS if c in set(t["config"])]
    fig, axes = plt.subplots(1, max(1, len(configs)), figsize=(6.0 * max(1, len(configs)), 4.0), squeeze=False)
    for ax, cfg in zip(axes[0], configs):
        sub = t[t["config"] == cfg].copy()
        sub["metric"] = "value"
        sub["split"] = "train"
        for est, g in sub.groupby("estimator", sort=True):
            piv = g.pivot_table(index="step", columns="run_id", values="value")
            color = estimator_color(str(est))
            ax.plot(piv.index, piv.mean(axis=1), color=color, label=str(est), marker="o", markersize=3)
            if piv.shape[1] > 1:
                ax.fill_between(piv.index, piv.min(axis=1), piv.max(axis=1), color=color, alpha=0.15, linewidth=0)
        ax.set_title(CONFIGS[cfg])
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, fig_dir, name)


def _claim_tables(ours_by_config: Mapping[str, pd.DataFrame], ranks: Mapping[str, int], label: str,
                  claim: str, extra: List[str]) -> str:
    from ovis.reporting.outputs import to_markdown

    rows = []
    for cfg, ours in ours_by_config.items():
        for est in list(ranks) + [e for e in extra if e not in ranks]:
            if est not in ranks:
                role = "not ranked by the claim"
            elif claim == "variance":
                role = "lower than MuProp's and NVIL's" if ranks[est] == 0 else "higher than REBAR's"
            else:
                role = "at least MuProp's and NVIL's" if ranks[est] == 0 else "at most REBAR's"
            o = _seeds_cell(ours.loc[est], ".3f", ".3f") if est in ours.index else "not run"
            rows.append({"model": CONFIGS.get(cfg, cfg), "estimator": est, "paper (claim)": role, f"ours {label}": o})
    return to_markdown(pd.DataFrame(rows))


def _per_config(t: pd.DataFrame, claim: str, higher_is_better: bool, digits: int
                ) -> Tuple[Dict[str, pd.DataFrame], str, List[str], List[str]]:
    r"""The last value per run of ``t`` (column ``config``) summarised per model configuration, each
    judged by :data:`RANKS` ``[claim]``: ``(ours by config, the worst verdict, the details, our
    one-line results best first with ``digits`` decimals)``."""
    ours_by_config: Dict[str, pd.DataFrame] = {}
    verdicts: List[str] = []
    details: List[str] = []
    ours_line: List[str] = []
    for cfg in CONFIGS:
        sub = t[t["config"] == cfg]
        ours = _summary(last_per_run(sub)) if not sub.empty else pd.DataFrame(columns=["mean", "std", "n"])
        ours_by_config[cfg] = ours
        c = claim_verdict(RANKS[claim], ours, higher_is_better=higher_is_better)
        verdicts.append(c.verdict)
        details += [f"{CONFIGS[cfg]}: {c.verdict}"] + [f"{CONFIGS[cfg]}: {d}" for d in c.details]
        if not ours.empty:
            ours_line.append(CONFIGS[cfg] + ": " + ", ".join(
                f"{e} {r['mean']:.{digits}f}" for e, r in ours.sort_values("mean", ascending=not higher_is_better).iterrows()))
    return ours_by_config, _worst(verdicts), details, ours_line


def _variance(root: Path, fig_dir: Path) -> FigureSection:
    exp = EXPERIMENTS["variance"]
    title = "Figure 2: gradient log-variance during training"
    head = (f"**The paper**: {CLAIMS_TEXT['variance']}. Its variance is that of the per-step minibatch gradient "
            "over all the model's parameters, an exponential moving average (decay 0.999) along one training "
            "trajectory, every estimator's own parameters (NVIL's and MuProp's baselines and eta's, REBAR's eta's "
            "and baseline, dynamic REBAR's temperature) trained online at 10x the learning rate, reported as a "
            "natural log.\n\n"
            f"**This scale** (`experiments/{exp}.json`): the same measurement (`run.py --track_variance`, "
            "`ovis/training/variance.py`): each SBN is trained with REBAR; NVIL, MuProp and dynamic REBAR take their "
            "gradient on every step's minibatch from their own samples, their parameters trained in shadow; NVIL's "
            "gradient multiplied back by its variance normaliser. The verdict compares the last logged "
            "log-variance per run (3 seeds, each seed one trajectory).")
    data, err = _read(root, exp)
    if data is None or data.metrics.empty:
        md = head + f"\n\nNo results yet ({err or _status_line(data)}).\n\n**Verdict: no result yet.**"
        return FigureSection("variance", title, "no result yet", md)
    t = variance_table(data.metrics)
    ours_by_config, verdict, details, ours_line = _per_config(t, "variance", higher_is_better=False, digits=2)
    nsteps = int(pd.to_numeric(data.runs.get("nsteps"), errors="coerce").max())
    rel = _panel_figure(t, "log Var (natural log, moving average)", "rebar_variance", fig_dir, title)
    md = "\n\n".join([
        head, _status_line(data) + f" {nsteps} steps per run.",
        _claim_tables(ours_by_config, RANKS["variance"], "last log-variance", "variance", []),
        f"![{title}]({rel})\n\n*Log-variance of the per-step minibatch gradient (moving average, natural log) vs "
        "step, one line per estimator (mean over seeds; band: min-max).*",
        _verdict_md(Comparison(verdict, details))])
    return FigureSection("variance", title, verdict, md, "; ".join(ours_line) or "no result yet")


def _convergence(root: Path, fig_dir: Path) -> FigureSection:
    exp = EXPERIMENTS["convergence"]
    title = "Figure 3: training ELBO"
    head = (f"**The paper**: {CLAIMS_TEXT['convergence']}. It trains for 2M steps and reports the training ELBO.\n\n"
            f"**This scale** (`experiments/{exp}.json`): one run per estimator and seed, the training ELBO (the mean "
            "of the minibatch ELBOs since the previous evaluation) against the step; the verdict compares the last "
            "value per run. After so few steps the ELBOs are far from the paper's; the question is whether the "
            "ordering is already there.")
    data, err = _read(root, exp)
    if data is None or data.metrics.empty:
        md = head + f"\n\nNo results yet ({err or _status_line(data)}).\n\n**Verdict: no result yet.**"
        return FigureSection("convergence", title, "no result yet", md)
    m = data.metrics
    t = m[(m["split"] == "train") & (m["metric"] == "loss/elbo")].copy()
    t["config"] = _config_of(t)
    t = t[t["step"] > 0]  # the step-0 evaluation has no training ELBO yet
    ours_by_config, verdict, details, ours_line = _per_config(t, "convergence", higher_is_better=True, digits=1)
    nsteps = int(pd.to_numeric(data.runs.get("nsteps"), errors="coerce").max())
    rel = _panel_figure(t, "training ELBO", "rebar_convergence", fig_dir, title)
    md = "\n\n".join([
        head, _status_line(data) + f" {nsteps} steps per run.",
        _claim_tables(ours_by_config, RANKS["convergence"], "last training ELBO", "convergence", ["concrete"]),
        f"![{title}]({rel})\n\n*Training ELBO vs step, one line per estimator (mean over seeds; band: min-max).*",
        _verdict_md(Comparison(verdict, details))])
    return FigureSection("convergence", title, verdict, md, "; ".join(ours_line) or "no result yet")


def sections(root: Path, fig_dir: Path, scale: str = "full") -> List[FigureSection]:
    r"""The REBAR paper's figure sections from the runs under ``root`` (figures into ``fig_dir``)."""
    return [_variance(root, fig_dir), _convergence(root, fig_dir)]


def _data_note() -> str:
    r"""The data difference: the Larochelle binarisation when its files are there, else ours."""
    return ("Data: binarized MNIST is our fixed-seed binarisation of MNIST (`--dataset binmnist`), not the "
            "Larochelle files the paper used (they are not shipped here); bounds are therefore not comparable to "
            "the paper's in value.")


INTRO = (
    "Tucker, Mnih, Maddison, Lawson and Sohl-Dickstein, *REBAR: Low-variance, unbiased gradient estimates for "
    "discrete latent variable models*, NeurIPS 2017. The estimators are run as the paper and its code "
    "(tensorflow/models, `research/rebar`) define them: MuProp and simple MuProp with a learned input-dependent "
    "baseline and eta's; REBAR and dynamic REBAR with one eta per parameter tensor of the inference network, the "
    "learned baseline and the modified relaxation sigma(((l^2 + l + 1)/(l + 1) a + logit u)/l); the estimators' own "
    "parameters minimise the squared norm of the minibatch gradient estimate, at 10x the learning rate; Adam with "
    "beta2 = 0.99999; learning rate 3e-4, batch 24, the ELBO. The paper's statements are paraphrased (the exact "
    "wording could not be checked here) and it publishes curves, not numbers we restate: the verdicts test the "
    "orderings it claims. " + _data_note() + " Other differences: the inference network's input is 2x - 1 (the "
    "original centres it on the training mean), the baselines are trained by the same variance objective as the "
    "eta's (NVIL's by its squared error), and the scale: the document's runs use --mini binarized MNIST (1000 "
    "training images), 50 units per layer (the paper: 200), 360 steps (the paper: 2M) and 3 seeds, sized to well under an "
    "hour on a shared 2-core machine (the wall time is below), so they test the early part of training only. The structured-output "
    "(conditional) task of `experiments/rebar-conditional-*.json` is not part of this document: it differs from the "
    "original (see `ovis/models/conditional.py`), so its numbers are not the paper's.")

#: the REBAR paper's part of the document
REBAR_PAPER = Paper(key="rebar", title="The REBAR paper (Tucker et al., NeurIPS 2017)", intro=INTRO,
                    experiments=EXPERIMENTS, shrink=shrink_grid, sections=sections, claims=CLAIMS)
