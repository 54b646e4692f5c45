r"""The approximation experiment of the IGR paper (Potapczynski et al. 2020, section 5.1): learn the
parameters of a relaxed distribution so that its samples approximate a discrete target with
countably infinite support, a Poisson(50) and a negative binomial NegBin(r = 50, p = 0.6)
(``P(k) = C(k + r - 1, k) p^r (1 - p)^k``, mean 33.3, scipy's ``nbinom(50, 0.6)``), with IGR-SB
(which needs no number of categories in advance: the stick-breaking stops at the ``threshold``,
at most ``max_categories``) against Gumbel-Softmax with 20, 40 and 100 categories (which must be
told the support: the target's mass beyond its last category cannot be reached).

Method (the original's ``approximations/`` scripts, cunningham-lab/igr).  The parameters (IGR-SB:
the noise ``N(mu, diag(sigma^2))`` of ``M - 1`` coordinates; GS: ``K`` logits) are learned with Adam
(lr 1e-2) from the average relaxed sample :math:`\bar z = \frac1S\sum_s z_s`:

* ``loss="kl"`` (default of the fitting functions): :math:`\sum_k \pi_k \log(\pi_k / \bar z_k)`, the
  forward KL between the target (restricted to the categories the model has) and the mean relaxed
  sample;
* ``loss="squared"``: :math:`\sum_k (\bar z_k - \pi_k)^2`, the original's loss for IGR
  (``run_kl=False``);
* ``loss="reverse-kl"``: :math:`\sum_k \bar z_k \log(\bar z_k / \pi_k)`, the original's loss for GS
  (``run_kl=True``).

:func:`run_experiment` uses the original's pair (:data:`EXPERIMENT_LOSSES` ``"original"``: squared
for IGR-SB, reverse KL for GS) with its 10,000 relaxed samples a step, or the forward KL for both
(``"kl"``).

**Initialisation.**  GS: the logits of the uniform over its ``K`` categories (the original's).
IGR-SB: the original initialises every stick at ``sigmoid(mu) = 1/(M-1)`` (``mu = logit(1/(M-1))``,
scale 1) for its sticks ``v = sigmoid(y)`` (temperature applied after the stick-breaking).  Our
sticks are ``v = sigmoid(y / tau)`` (:class:`~ovis.distributions.igr.IGRSB`), whose break
probability at a small ``tau`` is ``P(y > 0) = Phi(mu / sigma)``; the same initial distribution
(every stick broken with probability ``1/(M-1)``, a geometric start spread over the categories) is
``mu = sigma * Phi^{-1}(1/(M-1))`` with ``sigma = 1``: ``init="paper"`` (default).  ``init="zero"``
(``mu = 0``: every stick broken with probability 1/2, the mass on the first few categories) is what
this module did before: with the paper's ``tau = 0.01`` the gradient through ``sigmoid(y/tau)``
comes from the few samples within ``tau`` of 0, the Poisson(50)'s categories get no mass and no
gradient, and the fit fails (total variation 0.999).

Error.  The total variation between the target (its full support) and the frequencies of the
argmax category of ``num_eval`` fresh samples, :math:`\frac12\sum_k |\hat f_k - \pi_k|`; with
``num_eval`` draws the sampling noise alone contributes about
:math:`\frac12\sum_k\sqrt{2\pi_k/(\pi\,n)}` (a few 1e-3).

``python -m ovis.distributions.igr_approximation`` prints the errors (``--help`` for options);
``--experiment OUT.json`` runs the paper's whole experiment (:func:`run_experiment`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ovis.distributions.gumbel import GumbelSoftmax
from ovis.distributions.igr import IGRSB

__all__ = ["ApproximationResult", "poisson_target", "binomial_target", "negative_binomial_target",
           "fit_igr_sb", "fit_gs", "run_experiment", "PAPER_SETTING", "LOSSES", "EXPERIMENT_LOSSES", "main"]

#: the fitting losses (module docstring)
LOSSES = ("kl", "squared", "reverse-kl")
#: the losses of :func:`run_experiment`, ``{name: {"igr-sb": loss, "gs": loss}}``: the original's pair, or
#: the forward KL for both
EXPERIMENT_LOSSES: Dict[str, Dict[str, str]] = {"original": {"igr-sb": "squared", "gs": "reverse-kl"},
                                                "kl": {"igr-sb": "kl", "gs": "kl"}}

#: the paper's setting of the experiment (section 5.1 and the original's scripts)
PAPER_SETTING: Dict[str, Any] = {
    "targets": {"poisson": {"rate": 50.0}, "negative-binomial": {"r": 50, "p": 0.6}},
    "igr_sb": {"tau": 0.01, "threshold": 0.9, "max_categories": 100},
    "gs": {"tau": 0.1, "categories": [20, 40, 100]},
    "seeds": [1, 2, 3, 4, 5],
    "lr": 1e-2,
    "steps": 200,
    "num_samples": 10000,
}


def poisson_target(rate: float, max_categories: int) -> Tensor:
    r"""Poisson(rate) probabilities of ``0 .. M-2`` and the tail ``P(X >= M-1)`` last, float64 ``[M]``."""
    if not rate > 0 or max_categories < 2:
        raise ValueError(f"need rate > 0 and max_categories >= 2, got {rate}, {max_categories}")
    k = torch.arange(max_categories - 1, dtype=torch.float64)
    p = torch.exp(k * math.log(rate) - rate - torch.lgamma(k + 1))
    return torch.cat([p, (1.0 - p.sum()).clamp_min(0.0).reshape(1)])


def negative_binomial_target(r: float, p: float, max_categories: int) -> Tensor:
    r"""NegBin(r, p) probabilities (failures before the ``r``-th success of probability ``p``:
    ``C(k+r-1, k) p^r (1-p)^k``, scipy's ``nbinom(r, p)``) of ``0 .. M-2`` and the tail last,
    float64 ``[M]``."""
    if not r > 0 or not 0.0 < p < 1.0 or max_categories < 2:
        raise ValueError(f"need r > 0, 0 < p < 1 and max_categories >= 2, got {r}, {p}, {max_categories}")
    k = torch.arange(max_categories - 1, dtype=torch.float64)
    log_pmf = (torch.lgamma(k + r) - torch.lgamma(k + 1) - math.lgamma(r) + r * math.log(p)
               + k * math.log1p(-p))
    pmf = log_pmf.exp()
    return torch.cat([pmf, (1.0 - pmf.sum()).clamp_min(0.0).reshape(1)])


def binomial_target(n: int, prob: float) -> Tensor:
    r"""Binomial(n, prob) probabilities of ``0 .. n``, float64 ``[n + 1]``."""
    if n < 1 or not 0.0 < prob < 1.0:
        raise ValueError(f"need n >= 1 and 0 < prob < 1, got {n}, {prob}")
    return torch.distributions.Binomial(n, torch.tensor(prob, dtype=torch.float64)).log_prob(
        torch.arange(n + 1, dtype=torch.float64)).exp()


@dataclass
class ApproximationResult:
    r"""The result of a fit: total variation of the argmax frequencies against the full target,
    final loss, the rate at which the maximum number of categories truncated (IGR-SB; 0 for GS),
    the frequencies and the target (both padded to the longer of the two)."""

    name: str
    total_variation: float
    final_kl: float
    max_truncation_rate: float
    frequencies: List[float]
    target: List[float]


def _check_target(target: Tensor) -> Tensor:
    target = torch.as_tensor(target, dtype=torch.float64)
    if target.dim() != 1 or target.numel() < 2 or (target < 0).any() or abs(float(target.sum()) - 1) > 1e-6:
        raise ValueError("target must be a probability vector of at least 2 categories")
    return target


def _loss(target: Tensor, zbar: Tensor, loss: str) -> Tensor:
    r"""The fitting loss between ``target[:C]`` and the mean relaxed sample ``zbar`` ``[C]``."""
    C = zbar.numel()
    t = target[:C]
    if loss == "squared":
        return ((zbar - t) ** 2).sum()
    if loss == "reverse-kl":  # a category with no target mass gets log(1e-300): pushed to 0, finitely
        z = zbar.clamp_min(1e-12)
        return (z * (z.log() - t.clamp_min(1e-300).log())).sum()
    pos = t > 0
    zbar = zbar.clamp_min(1e-12)
    return (t[pos] * (t[pos].log() - zbar[pos].log())).sum()


def _tv(target: Tensor, freq: Tensor) -> tuple:
    n = max(target.numel(), freq.numel())
    t = torch.nn.functional.pad(target, (0, n - target.numel()))
    f = torch.nn.functional.pad(freq, (0, n - freq.numel()))
    return 0.5 * float((f - t).abs().sum()), f, t


def _check_fit_args(steps: int, num_samples: int, num_eval: int, lr: float, loss: str) -> None:
    if steps < 0 or num_samples < 1 or num_eval < 1 or not lr > 0:
        raise ValueError(f"need steps >= 0, num_samples >= 1, num_eval >= 1 and lr > 0, got {steps}, "
                         f"{num_samples}, {num_eval}, {lr}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")


def fit_igr_sb(target: Tensor, tau: float = 0.05, threshold: float = 0.99, steps: int = 1000,
               num_samples: int = 1000, lr: float = 0.05, num_eval: int = 50000,
               seed: int = 0, name: str = "target", init: str = "paper", loss: str = "kl",
               max_categories: Optional[int] = None) -> ApproximationResult:
    r"""Learn IGR-SB noise parameters approximating ``target`` (see the module docstring).

    Args:
        target: ``[T]`` probabilities (sums to 1).
        tau, threshold: the IGR-SB temperature and precision.
        steps, num_samples, lr: Adam steps, relaxed samples per step, learning rate.
        num_eval: fresh samples for the argmax frequencies.
        seed: the fit's torch seed (the global RNG state is restored afterwards).
        init: ``"paper"`` (every stick broken with probability ``1/(M-1)``) or ``"zero"``.
        loss: one of :data:`LOSSES` (module docstring).
        max_categories: ``M`` (default ``T``); the target's categories beyond ``M`` cannot be reached.

    Returns:
        :class:`ApproximationResult` (total variation against the whole target).

    Raises:
        ValueError: an invalid target, option or size.
    """
    target = _check_target(target)
    _check_fit_args(steps, num_samples, num_eval, lr, loss)
    if init not in ("paper", "zero"):
        raise ValueError(f"init must be 'paper' or 'zero', got {init!r}")
    M = target.numel() if max_categories is None else int(max_categories)
    if M < 2:
        raise ValueError(f"max_categories must be >= 2, got {M}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        mu0 = 0.0 if init == "zero" else float(torch.special.ndtri(torch.tensor(1.0 / max(M - 1, 2),
                                                                                 dtype=torch.float64)))
        loc = torch.full((M - 1,), mu0, dtype=torch.float64, requires_grad=True)
        log_scale = torch.zeros(M - 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([loc, log_scale], lr=lr)
        value = torch.tensor(float("nan"))
        for _ in range(steps):
            d = IGRSB(loc, log_scale.exp(), tau, threshold, validate_args=False)
            value = _loss(target, d.rsample((num_samples,)).mean(0), loss)
            opt.zero_grad()
            value.backward()
            opt.step()
        with torch.no_grad():
            d = IGRSB(loc, log_scale.exp(), tau, threshold, validate_args=False)
            z = d.rsample((num_eval,))
            freq = torch.bincount(z.argmax(-1), minlength=M).to(torch.float64) / num_eval
            tv, f, t = _tv(target, freq)
            rate = d.max_truncations / max(d.num_samples, 1)
        return ApproximationResult(name, tv, float(value.detach()), rate, f.tolist(), t.tolist())
    finally:
        torch.random.set_rng_state(gen_state)


def fit_gs(target: Tensor, categories: int, tau: float = 0.1, steps: int = 1000,
           num_samples: int = 1000, lr: float = 0.05, num_eval: int = 50000, seed: int = 0,
           name: str = "target", loss: str = "kl") -> ApproximationResult:
    r"""Learn the ``categories`` logits of a Gumbel-Softmax (initialised uniform) approximating
    ``target`` (its first ``categories`` entries; the rest cannot be reached).  Arguments and result
    as :func:`fit_igr_sb` (``max_truncation_rate`` is 0)."""
    target = _check_target(target)
    _check_fit_args(steps, num_samples, num_eval, lr, loss)
    if categories < 2:
        raise ValueError(f"categories must be >= 2, got {categories}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        logits = torch.zeros(categories, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=lr)
        t = torch.tensor(tau, dtype=torch.float64)
        value = torch.tensor(float("nan"))
        for _ in range(steps):
            zbar = GumbelSoftmax(t, logits=logits).rsample((num_samples,)).mean(0)
            value = _loss(target, zbar, loss)
            opt.zero_grad()
            value.backward()
            opt.step()
        with torch.no_grad():
            z = GumbelSoftmax(t, logits=logits).rsample((num_eval,))
            freq = torch.bincount(z.argmax(-1), minlength=categories).to(torch.float64) / num_eval
            tv, f, tt = _tv(target, freq)
        return ApproximationResult(name, tv, float(value.detach()), 0.0, f.tolist(), tt.tolist())
    finally:
        torch.random.set_rng_state(gen_state)


def run_experiment(out: Path, seeds: Sequence[int] = (1, 2, 3, 4, 5), steps: int = 200,
                   num_samples: int = 10000, num_eval: int = 20000, losses: str = "original",
                   log: Any = print) -> Dict[str, Any]:
    r"""The paper's experiment (:data:`PAPER_SETTING`): Poisson(50) and NegBin(50, 0.6), IGR-SB
    (``tau = 0.01``, threshold 0.9, at most 100 categories) against GS (``tau = 0.1``) with 20, 40
    and 100 categories, one fit per seed, ``steps`` Adam steps of ``num_samples`` relaxed samples
    (the original: 200 of 10,000) with the losses :data:`EXPERIMENT_LOSSES` ``[losses]``; writes
    ``out`` (JSON, atomically) and returns it: ``{"setting": ..., "results": [{"target", "method",
    "seed", "total_variation", "frequencies", "target_probs", "max_truncation_rate"}]}``.

    Raises:
        ValueError: ``losses`` is not a key of :data:`EXPERIMENT_LOSSES`.
    """
    if losses not in EXPERIMENT_LOSSES:
        raise ValueError(f"losses must be one of {sorted(EXPERIMENT_LOSSES)}, got {losses!r}")
    pair = EXPERIMENT_LOSSES[losses]
    from ovis.utils.files import atomic_write_bytes

    s = PAPER_SETTING
    M = int(s["igr_sb"]["max_categories"])
    targets = {"poisson": poisson_target(s["targets"]["poisson"]["rate"], M),
               "negative-binomial": negative_binomial_target(s["targets"]["negative-binomial"]["r"],
                                                             s["targets"]["negative-binomial"]["p"], M)}
    rows: List[Dict[str, Any]] = []
    for tname, target in targets.items():
        for seed in seeds:
            for method in ["igr-sb"] + [f"gs-{c}" for c in s["gs"]["categories"]]:
                if method == "igr-sb":
                    r = fit_igr_sb(target, s["igr_sb"]["tau"], s["igr_sb"]["threshold"], steps, num_samples,
                                   s["lr"], num_eval, seed, tname, loss=pair["igr-sb"])
                else:
                    r = fit_gs(target, int(method[3:]), s["gs"]["tau"], steps, num_samples, s["lr"], num_eval,
                               seed, tname, loss=pair["gs"])
                log(f"[igr-approximation] {tname} {method} seed {seed}: total variation {r.total_variation:.4f}")
                rows.append({"target": tname, "method": method, "seed": int(seed),
                             "total_variation": r.total_variation, "final_loss": r.final_kl,
                             "max_truncation_rate": r.max_truncation_rate, "frequencies": r.frequencies,
                             "target_probs": r.target})
    result = {"setting": dict(s, steps=steps, num_samples=num_samples, num_eval=num_eval, seeds=list(seeds),
                              losses=losses, loss=dict(pair)),
              "results": rows}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(result) + "\n").encode())
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Fit a Poisson and a binomial (or ``--experiment OUT.json``: the paper's experiment); print
    the total variation errors (and ``--json`` details); returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m ovis.distributions.igr_approximation",
                                description="IGR-SB approximation of a Poisson and a binomial")
    p.add_argument("--rate", type=float, default=5.0, help="Poisson rate")
    p.add_argument("--max_categories", type=int, default=30, help="IGR-SB categories for the Poisson")
    p.add_argument("--binom_n", type=int, default=12)
    p.add_argument("--binom_p", type=float, default=0.3)
    p.add_argument("--tau", type=float, default=0.05)
    p.add_argument("--threshold", type=float, default=0.99)
    p.add_argument("--steps", type=int, default=None,
                   help="Adam steps (default 1000; with --experiment the original's 200)")
    p.add_argument("--samples", type=int, default=None,
                   help="relaxed samples a step (default 1000; with --experiment the original's 10000)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--init", choices=["paper", "zero"], default="paper", help="IGR-SB initialisation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experiment", default=None, metavar="OUT.json",
                   help="run the paper's experiment (Poisson(50), NegBin(50, 0.6), IGR-SB vs GS 20/40/100, "
                   "5 seeds; --steps, --samples, --losses apply; the original: --steps 200 --samples 10000) and "
                   "write its results to OUT.json")
    p.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds of --experiment")
    p.add_argument("--losses", choices=sorted(EXPERIMENT_LOSSES), default="original",
                   help="--experiment's losses: original (squared for IGR-SB, reverse KL for GS) or kl (forward KL "
                        "for both)")
    p.add_argument("--json", action="store_true", help="print the full results as JSON")
    a = p.parse_args(argv)
    if a.experiment:
        try:
            seeds = [int(t) for t in a.seeds.split(",") if t.strip()]
        except ValueError:
            p.error(f"--seeds must be comma-separated integers, got {a.seeds!r}")
        if not seeds:
            p.error("--seeds needs at least one seed")
        steps = PAPER_SETTING["steps"] if a.steps is None else a.steps
        samples = PAPER_SETTING["num_samples"] if a.samples is None else a.samples
        run_experiment(Path(a.experiment), seeds=seeds, steps=steps, num_samples=samples, losses=a.losses)
        return 0
    a.steps = 1000 if a.steps is None else a.steps
    a.samples = 1000 if a.samples is None else a.samples
    results = [
        fit_igr_sb(poisson_target(a.rate, a.max_categories), a.tau, a.threshold, a.steps, a.samples, a.lr,
                   seed=a.seed, name=f"poisson(rate={a.rate}, M={a.max_categories})", init=a.init),
        fit_igr_sb(binomial_target(a.binom_n, a.binom_p), a.tau, a.threshold, a.steps, a.samples, a.lr,
                   seed=a.seed, name=f"binomial(n={a.binom_n}, p={a.binom_p})", init=a.init),
    ]
    for r in results:
        print(f"{r.name}: total variation {r.total_variation:.4f}, loss {r.final_kl:.4f}, "
              f"max-categories truncation rate {r.max_truncation_rate:.4f}")
    if a.json:
        json.dump([asdict(r) for r in results], sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
