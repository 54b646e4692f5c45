r"""The approximation experiment of the IGR paper (Potapczynski et al. 2020, section 5.1): learn the
parameters of an IGR-SB distribution so that its relaxed samples approximate a discrete target, one
with countably infinite support (a Poisson, truncated by the stick-breaking threshold and the
maximum number of categories) and one with finite support (a binomial).

Method.  The noise ``N(mu, diag(sigma^2))`` (``M - 1`` coordinates for ``M = max_categories``) is
learned with Adam by minimising the forward KL between the target ``pi`` and the average relaxed
sample, :math:`\sum_k \pi_k \log(\pi_k / \bar z_k)` with :math:`\bar z = \frac1S\sum_s z_s`,
:math:`z_s \sim` IGR-SB (``rsample``; at a low temperature :math:`\bar z` is close to the
frequencies of the argmax category).  A Poisson's tail beyond the last category is folded into the
last category (its mass is below ``1e-9`` with the defaults).

Error.  The total variation between the target and the frequencies of the argmax category of
``num_eval`` fresh samples, :math:`\frac12\sum_k |\hat f_k - \pi_k|`; with ``num_eval`` draws the
sampling noise alone contributes about :math:`\frac12\sum_k\sqrt{2\pi_k/(\pi\,n)}` (a few 1e-3).

``python -m ovis.distributions.igr_approximation`` prints the errors (``--help`` for options).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from ovis.distributions.igr import IGRSB

__all__ = ["ApproximationResult", "poisson_target", "binomial_target", "fit_igr_sb", "main"]


def poisson_target(rate: float, max_categories: int) -> Tensor:
    r"""Poisson(rate) probabilities of ``0 .. M-2`` and the tail ``P(X >= M-1)`` last, float64 ``[M]``."""
    if not rate > 0 or max_categories < 2:
        raise ValueError(f"need rate > 0 and max_categories >= 2, got {rate}, {max_categories}")
    k = torch.arange(max_categories - 1, dtype=torch.float64)
    p = torch.exp(k * math.log(rate) - rate - torch.lgamma(k + 1))
    return torch.cat([p, (1.0 - p.sum()).clamp_min(0.0).reshape(1)])


def binomial_target(n: int, prob: float) -> Tensor:
    r"""Binomial(n, prob) probabilities of ``0 .. n``, float64 ``[n + 1]``."""
    if n < 1 or not 0.0 < prob < 1.0:
        raise ValueError(f"need n >= 1 and 0 < prob < 1, got {n}, {prob}")
    return torch.distributions.Binomial(n, torch.tensor(prob, dtype=torch.float64)).log_prob(
        torch.arange(n + 1, dtype=torch.float64)).exp()


@dataclass
class ApproximationResult:
    r"""The result of :func:`fit_igr_sb`: total variation of the argmax frequencies, final loss,
    the rate at which the maximum number of categories truncated, and the frequencies."""

    name: str
    total_variation: float
    final_kl: float
    max_truncation_rate: float
    frequencies: List[float]
    target: List[float]


def fit_igr_sb(target: Tensor, tau: float = 0.05, threshold: float = 0.99, steps: int = 1000,
               num_samples: int = 1000, lr: float = 0.05, num_eval: int = 50000,
               seed: int = 0, name: str = "target") -> ApproximationResult:
    r"""Learn IGR-SB noise parameters approximating ``target`` (``[M]``, sums to 1); see the module."""
    target = torch.as_tensor(target, dtype=torch.float64)
    if target.dim() != 1 or target.numel() < 2 or (target < 0).any() or abs(float(target.sum()) - 1) > 1e-6:
        raise ValueError("target must be a probability vector of at least 2 categories")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        M = target.numel()
        loc = torch.zeros(M - 1, dtype=torch.float64, requires_grad=True)
        log_scale = torch.zeros(M - 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([loc, log_scale], lr=lr)
        pos = target > 0
        kl = torch.tensor(float("nan"))
        for _ in range(steps):
            d = IGRSB(loc, log_scale.exp(), tau, threshold, validate_args=False)
            zbar = d.rsample((num_samples,)).mean(0).clamp_min(1e-12)
            kl = (target[pos] * (target[pos].log() - zbar[pos].log())).sum()
            opt.zero_grad()
            kl.backward()
            opt.step()
        with torch.no_grad():
            d = IGRSB(loc, log_scale.exp(), tau, threshold, validate_args=False)
            z = d.rsample((num_eval,))
            freq = torch.bincount(z.argmax(-1), minlength=M).to(torch.float64) / num_eval
            tv = 0.5 * float((freq - target).abs().sum())
            rate = d.max_truncations / max(d.num_samples, 1)
        return ApproximationResult(name, tv, float(kl.detach()), rate, freq.tolist(), target.tolist())
    finally:
        torch.random.set_rng_state(gen_state)


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Fit a Poisson and a binomial; print the total variation errors (and ``--json`` details)."""
    p = argparse.ArgumentParser(prog="python -m ovis.distributions.igr_approximation",
                                description="IGR-SB approximation of a Poisson and a binomial")
    p.add_argument("--rate", type=float, default=5.0, help="Poisson rate")
    p.add_argument("--max_categories", type=int, default=30, help="IGR-SB categories for the Poisson")
    p.add_argument("--binom_n", type=int, default=12)
    p.add_argument("--binom_p", type=float, default=0.3)
    p.add_argument("--tau", type=float, default=0.05)
    p.add_argument("--threshold", type=float, default=0.99)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the full results as JSON")
    a = p.parse_args(argv)
    results = [
        fit_igr_sb(poisson_target(a.rate, a.max_categories), a.tau, a.threshold, a.steps, a.samples,
                   seed=a.seed, name=f"poisson(rate={a.rate}, M={a.max_categories})"),
        fit_igr_sb(binomial_target(a.binom_n, a.binom_p), a.tau, a.threshold, a.steps, a.samples,
                   seed=a.seed, name=f"binomial(n={a.binom_n}, p={a.binom_p})"),
    ]
    for r in results:
        print(f"{r.name}: total variation {r.total_variation:.4f}, KL(target || mean z) "
              f"{r.final_kl:.4f}, max-categories truncation rate {r.max_truncation_rate:.4f}")
    if a.json:
        json.dump([asdict(r) for r in results], sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
