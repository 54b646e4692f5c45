r"""Statistical comparison of estimator draws with an exact gradient.

:func:`gradient_draws` collects independent gradient draws of an estimator;
:func:`compare_with_exact` compares their mean with the exact value using their own standard
error, with a declared failure rate (Bonferroni over the coordinates), and checks that the
comparison has power (the standard error is small relative to the gradient);
:func:`compare_variances` tests that one estimator's gradient variance is below another's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ovis.analysis.gradients import parameter_gradient_draws

__all__ = ["gradient_draws", "compare_with_exact", "Comparison", "z_threshold", "total_variance",
           "VarianceComparison", "compare_variances"]


def gradient_draws(
    estimator: Callable[..., Any],
    model: nn.Module,
    x: Tensor,
    params: Sequence[nn.Parameter],
    n_draws: int,
    **runtime: Any,
) -> Tensor:
    r"""``n_draws`` independent draws of ``-grad loss`` (the estimate of the bound's gradient)
    w.r.t. ``params``, flattened: ``[n_draws, P]``
    (:func:`ovis.analysis.gradients.parameter_gradient_draws`).

    Each draw averages the estimator's own ``mc`` outer samples, so a draw with ``mc = M`` is the
    mean of ``M`` i.i.d. draws: use a large ``mc`` and fewer draws for speed.
    """
    return parameter_gradient_draws(estimator, model, x, params, n_draws, **runtime)


def z_threshold(failure_rate: float, n_coords: int) -> float:
    r"""Two-sided normal threshold so that ``n_coords`` tests fail together at ``failure_rate``."""
    return NormalDist().inv_cdf(1.0 - failure_rate / (2.0 * max(n_coords, 1)))


@dataclass
class Comparison:
    r"""Result of :func:`compare_with_exact`."""

    mean: Tensor
    exact: Tensor
    stderr: Tensor
    z: Tensor
    threshold: float
    n_draws: int

    @property
    def max_abs_z(self) -> float:
        return float(self.z.abs().max())

    def summary(self) -> str:
        return (f"draws={self.n_draws} max|z|={self.max_abs_z:.2f} (threshold {self.threshold:.2f}), "
                f"|exact|={float(self.exact.norm()):.4g}, |stderr|={float(self.stderr.norm()):.3g}")


def compare_with_exact(
    draws: Tensor,
    exact: Tensor,
    failure_rate: float = 1e-3,
    power: Optional[float] = 0.25,
    offset: Optional[Tensor] = None,
) -> Comparison:
    r"""Assert that the mean of ``draws`` ``[N, P]`` equals ``exact + offset`` ``[P]``.

    Args:
        failure_rate: the probability that a correct estimator fails (all coordinates together).
        power: when set, also assert ``||stderr|| <= power * ||exact||``, so that a wrong
            estimator cannot pass for lack of draws.
        offset: a known bias to add to ``exact`` (for biased estimators).

    Raises:
        AssertionError: with the z-scores, when the comparison fails.
    """
    draws = draws.double()
    exact = exact.detach().double()
    target = exact if offset is None else exact + offset.detach().double()
    n = draws.shape[0]
    mean = draws.mean(0)
    stderr = draws.std(0, unbiased=True) / math.sqrt(n)
    # coordinates with zero spread (e.g. parameters the estimator cannot reach) compare exactly
    diff = mean - target
    safe = torch.where(stderr > 0, stderr, torch.ones_like(stderr))
    exact_mismatch = torch.where(diff.abs() > 1e-9, torch.full_like(diff, math.inf), torch.zeros_like(diff))
    z = torch.where(stderr > 0, diff / safe, exact_mismatch)
    thr = z_threshold(failure_rate, int(z.numel()))
    result = Comparison(mean=mean, exact=target, stderr=stderr, z=z, threshold=thr, n_draws=n)
    if power is not None:
        assert float(stderr.norm()) <= power * float(exact.norm()), (
            f"the comparison lacks power: |stderr| = {float(stderr.norm()):.3g} > "
            f"{power} * |exact| = {power * float(exact.norm()):.3g}; use more draws"
        )
    assert result.max_abs_z <= thr, (
        f"estimate disagrees with the exact gradient: {result.summary()}\n"
        f"mean  = {mean.tolist()}\nexact = {target.tolist()}\nz     = {z.tolist()}"
    )
    return result


def total_variance(draws: Tensor) -> tuple[float, float]:
    r"""The total variance (trace of the covariance) of gradient draws ``[n, P]`` and its standard
    error: the mean of :math:`\|g_i - \bar g\|^2` over the draws and the standard error of that
    mean from the spread of the squared deviations."""
    if draws.dim() != 2 or draws.shape[0] < 2:
        raise ValueError(f"draws must be [n >= 2, P], got {tuple(draws.shape)}")
    s = ((draws - draws.mean(0)) ** 2).sum(1)
    return float(s.mean()), float(s.std() / len(s) ** 0.5)


@dataclass(frozen=True)
class VarianceComparison:
    r"""Total gradient variances of a reference estimator and a candidate, their standard errors,
    the one-sided z statistic of ``reference > candidate`` and the ratio ``reference / candidate``."""

    reference: float
    reference_se: float
    candidate: float
    candidate_se: float
    z: float
    ratio: float


def compare_variances(reference: Callable[..., Any], candidate: Callable[..., Any], model: nn.Module,
                      x: Tensor, params: Sequence[nn.Parameter], n_draws: int,
                      **runtime: Any) -> VarianceComparison:
    r"""Gradient variances of two estimators at the same model, data and parameters
    (:func:`total_variance` of ``n_draws`` draws each).  A test asserts ``z >`` the one-sided normal
    quantile of its declared failure rate (e.g. 3.09 for 1e-3) and, when the method promises a
    large reduction, a minimum ``ratio``."""
    v_r, se_r = total_variance(gradient_draws(reference, model, x, params, n_draws, **runtime))
    v_c, se_c = total_variance(gradient_draws(candidate, model, x, params, n_draws, **runtime))
    z = (v_r - v_c) / math.sqrt(se_r ** 2 + se_c ** 2)
    return VarianceComparison(v_r, se_r, v_c, se_c, z, v_r / v_c)
