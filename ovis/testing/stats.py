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
from scipy.stats import t as student_t
from torch import Tensor, nn

from ovis.analysis.gradients import parameter_gradient_draws

__all__ = ["gradient_draws", "compare_with_exact", "compare_two_samples", "Comparison", "z_threshold",
           "t_threshold", "z_scores", "total_variance", "VarianceComparison", "compare_variances"]


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
    r"""Two-sided normal threshold so that ``n_coords`` tests fail together at ``failure_rate``
    (Bonferroni).  For a mean of ``n`` draws divided by their own standard error use
    :func:`t_threshold` (the statistic is Student-t, not normal)."""
    return NormalDist().inv_cdf(1.0 - failure_rate / (2.0 * max(n_coords, 1)))


def t_threshold(failure_rate: float, n_coords: int, dof: float) -> float:
    r"""Two-sided Student-t threshold with ``dof`` degrees of freedom so that ``n_coords`` tests
    fail together at most at ``failure_rate`` (Bonferroni): the threshold of
    :math:`(\bar g - g)/(s/\sqrt n)`, which is t-distributed with ``n - 1`` degrees of freedom for
    normal draws (the draws here are means of ``mc`` outer samples, close to normal).  With 40
    draws, 1e-3 and 30 coordinates it is 4.69 where the normal quantile says 4.15 (whose real
    failure rate is 5e-3, five times the declared one)."""
    if not dof > 0:
        raise ValueError(f"dof must be > 0, got {dof!r}")
    return float(student_t.ppf(1.0 - failure_rate / (2.0 * max(n_coords, 1)), dof))


def z_scores(draws: Tensor, target: Tensor) -> Tensor:
    r"""``(mean(draws) - target) / stderr`` per coordinate, ``[P]`` (``draws`` ``[N, P]``); a
    coordinate with zero spread is ``0`` where it matches ``target`` (to ``1e-9``), else ``inf``."""
    draws = draws.double()
    target = target.detach().double()
    n = draws.shape[0]
    stderr = draws.std(0, unbiased=True) / math.sqrt(n)
    diff = draws.mean(0) - target
    safe = torch.where(stderr > 0, stderr, torch.ones_like(stderr))
    exact_mismatch = torch.where(diff.abs() > 1e-9, torch.full_like(diff, math.inf), torch.zeros_like(diff))
    return torch.where(stderr > 0, diff / safe, exact_mismatch)


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
        r"""The largest ``|z|`` over the coordinates (compared with ``threshold``)."""
        return float(self.z.abs().max())

    def summary(self) -> str:
        r"""One line for assertion messages: the number of draws, ``max|z|`` against the threshold and
        the norms of the exact gradient and of the standard errors.
        """
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
        failure_rate: the probability that a correct estimator fails (all coordinates together):
            Bonferroni over the coordinates of the Student-t quantile with ``N - 1`` degrees of
            freedom (:func:`t_threshold`).
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
    z = z_scores(draws, target)
    thr = t_threshold(failure_rate, int(z.numel()), n - 1)
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


def compare_two_samples(draws: Tensor, reference: Tensor, failure_rate: float = 1e-3,
                        power: Optional[float] = 0.25) -> Comparison:
    r"""Assert that two independent sets of draws ``[N1, P]``, ``[N2, P]`` have the same mean (e.g.
    DReG against the autograd gradient of the same bound, when no exact value is available).

    Welch's statistic per coordinate with the Welch-Satterthwaite degrees of freedom (the smallest
    over the coordinates, which is conservative), Bonferroni over the coordinates, so that equal
    means fail at most at ``failure_rate``.  ``power``: assert that the combined standard error is
    at most ``power`` times the norm of the reference mean.
    """
    a, b = draws.double(), reference.double()
    na, nb = a.shape[0], b.shape[0]
    va, vb = a.var(0, unbiased=True) / na, b.var(0, unbiased=True) / nb
    se = (va + vb).sqrt()
    diff = a.mean(0) - b.mean(0)
    safe = torch.where(se > 0, se, torch.ones_like(se))
    z = torch.where(se > 0, diff / safe, torch.where(diff.abs() > 1e-9, math.inf, 0.0))
    dof = ((va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1)).clamp_min(1e-300))
    dof = float(dof[se > 0].min()) if bool((se > 0).any()) else float(min(na, nb) - 1)
    thr = t_threshold(failure_rate, int(z.numel()), max(dof, 1.0))
    result = Comparison(mean=a.mean(0), exact=b.mean(0), stderr=se, z=z, threshold=thr, n_draws=na)
    if power is not None:
        assert float(se.norm()) <= power * float(b.mean(0).norm()), (
            f"the comparison lacks power: |stderr| = {float(se.norm()):.3g} > "
            f"{power} * |reference| = {power * float(b.mean(0).norm()):.3g}; use more draws"
        )
    assert result.max_abs_z <= thr, (
        f"the two estimators disagree in expectation: {result.summary()}\nz = {z.tolist()}"
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
