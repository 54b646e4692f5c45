r"""z-scores of every unbiased estimator against the exact gradient under the runtime parameters.

For each estimator and setting ``(beta, alpha, K, freebits)`` the script draws ``N`` gradient
estimates (each the mean of ``mc`` outer samples) on an enumerable toy model and prints
``max_j |mean_j - exact_j| / stderr_j`` over the gradient coordinates ``j`` (phi and theta
separately), where ``exact`` is the autograd gradient of the enumerated objective under the same
parameters (:func:`ovis.testing.exact_bound`).  DReG has no enumerable model: it is compared with
``pathwise-iwae`` (autograd through the same bound) on the linear-Gaussian model, with Welch's
statistic.  A correct estimator stays below the Student-t threshold printed in the header (failure
rate 1e-3 per row, Bonferroni over the coordinates); a wrong one is tens to hundreds of standard
errors away.

    python benchmarks/gradient_zscores.py                    # the whole matrix (a few minutes)
    python benchmarks/gradient_zscores.py --only reinforce,dreg --betas 0.3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovis.estimators import build_estimator  # noqa: E402
from ovis.testing import (  # noqa: E402
    TOY_FREEBITS,
    BernoulliToyModel,
    CategoricalToyModel,
    LinearGaussianModel,
    exact_bound,
    exact_gradient_problem,
    exact_gradients,
    gradient_draws,
    t_threshold,
    z_scores,
)

SCORE_FUNCTION = ["reinforce", "reinforce-baseline", "nvil", "vimco-arithmetic", "vimco-geometric", "ovis-gamma0",
                  "ovis-gamma0-geometric", "ovis-S1-exclusive", "ovis-S3-exclusive"]
DISCRETE = ["muprop", "simple-muprop", "rebar", "dynamic-rebar", "relax", "arm", "disarm"]


def build(eid: str, K: int, mc: int):
    extra = {"x_shape": (4,)} if eid in ("reinforce-baseline", "nvil") else {}
    if eid == "nvil":
        extra["freeze"] = True  # running statistics frozen at (0, 1): scale s = 1, unbiased
    return build_estimator(eid, mc=mc, iw=K, **extra)


def enumerable_rows(eids: List[str], model_name: str, betas, alphas, Ks, freebits_on, n_draws: int, mc: int):
    model_cls = {"bernoulli": BernoulliToyModel, "categorical": CategoricalToyModel}[model_name]
    model, x, params, is_phi = exact_gradient_problem(model_cls())
    for eid in eids:
        discrete = eid in DISCRETE
        for beta in betas:
            for alpha in ([0.0] if discrete else alphas):
                for K in Ks:
                    for fb in ([None, TOY_FREEBITS[model_name]] if freebits_on else [None]):
                        torch.manual_seed(0)
                        exact = exact_gradients(exact_bound(model, x, K, alpha, beta, fb), params)
                        runtime: Dict[str, object] = {"alpha": alpha, "beta": beta, "freebits": fb}
                        if discrete:
                            runtime = {"beta": beta, "freebits": fb, "tau": 0.3}
                        try:
                            draws = gradient_draws(build(eid, K, mc // 3 if discrete else mc), model, x, params,
                                                   n_draws, **runtime)
                        except (ValueError, TypeError) as e:
                            yield (eid, model_name, beta, alpha, K, fb, None, None, f"refused: {e}"[:60])
                            continue
                        z = z_scores(draws, exact).abs()
                        yield (eid, model_name, beta, alpha, K, fb, float(z[is_phi].max()), float(z[~is_phi].max()), "")


def dreg_rows(betas, alphas, Ks, n_draws: int, mc: int):
    model = LinearGaussianModel(D=2, seed=1)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3)) * 2
    params = list(model.parameters())
    is_phi = torch.cat([torch.full((p.numel(),), n.startswith("inference_network"))
                        for n, p in model.named_parameters()])
    for beta in betas:
        for alpha in alphas:
            for K in Ks:
                torch.manual_seed(0)
                runtime = {"alpha": alpha, "beta": beta}
                ref = gradient_draws(build_estimator("pathwise-iwae", mc=mc, iw=K), model, x, params, n_draws, **runtime)
                dreg = gradient_draws(build_estimator("dreg", mc=mc, iw=K), model, x, params, n_draws, **runtime)
                se = (ref.var(0) / n_draws + dreg.var(0) / n_draws).sqrt()
                z = ((dreg.mean(0) - ref.mean(0)) / se).abs()
                yield ("dreg", "gaussian", beta, alpha, K, None, float(z[is_phi].max()), float(z[~is_phi].max()),
                       "vs pathwise-iwae")


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated estimator ids (default: all)")
    ap.add_argument("--models", default="bernoulli", help="bernoulli,categorical")
    ap.add_argument("--betas", default="0.3,1")
    ap.add_argument("--alphas", default="0,0.5")
    ap.add_argument("--ks", default="2,3,5")
    ap.add_argument("--no_freebits", action="store_true")
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--mc", type=int, default=500)
    a = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    only = [s for s in a.only.split(",") if s]
    betas = [float(s) for s in a.betas.split(",")]
    alphas = [float(s) for s in a.alphas.split(",")]
    Ks = [int(s) for s in a.ks.split(",")]
    eids = [e for e in SCORE_FUNCTION + DISCRETE if not only or e in only]
    thr = t_threshold(1e-3, 30, a.draws - 1)
    print(f"# {a.draws} draws x mc={a.mc}; a correct estimator stays below about {thr:.2f} (t, 1e-3, 30 coords)")
    print(f"{'estimator':24s} {'model':11s} {'beta':>4s} {'alpha':>5s} {'K':>2s} {'fb':>5s} {'phi|z|':>8s} "
          f"{'theta|z|':>8s}  note")
    t0 = time.perf_counter()
    rows = []
    for model_name in a.models.split(","):
        rows.append(enumerable_rows(eids, model_name, betas, alphas, Ks, not a.no_freebits, a.draws, a.mc))
    if not only or "dreg" in only:
        rows.append(dreg_rows(betas, alphas, Ks, a.draws, a.mc))
    def fmt(v: Optional[float]) -> str:
        return f"{v:8.1f}" if v is not None else f"{'-':>8s}"

    for gen in rows:
        for eid, m, beta, alpha, K, fb, zp, zt, note in gen:
            print(f"{eid:24s} {m:11s} {beta:4.1f} {alpha:5.1f} {K:2d} {('-' if fb is None else f'{fb:.2f}'):>5s} "
                  f"{fmt(zp)} {fmt(zt)}  {note}", flush=True)
    print(f"# {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
