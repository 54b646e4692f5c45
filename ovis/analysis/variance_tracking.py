r"""The log-variance of several estimators' gradients at FIXED model parameters, from repeated draws
on one batch (:func:`log_gradient_variances`, :func:`mean_gradient_variance`): a snapshot measurement
with the estimators' own parameters as they are.

The REBAR paper's variance comparison is not this: it follows one training trajectory with every
estimator's own parameters trained online and a moving average of the per-step gradients; that is
``run.py --track_variance`` (:mod:`ovis.training.variance`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Sequence

import torch
from torch import Tensor, nn

from ovis.analysis.gradients import parameter_gradient_draws

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from ovis.estimators.base import GradientEstimator

__all__ = ["log_gradient_variances", "mean_gradient_variance"]


def mean_gradient_variance(estimator: "GradientEstimator", model: nn.Module, x: Tensor,
                           params: Sequence[nn.Parameter], n_draws: int, **runtime: Any) -> Tensor:
    r""":math:`\frac1P\sum_p \mathrm{Var}[g_p]`, a float64 scalar: the per-coordinate variance (unbiased)
    of ``n_draws`` draws of the estimator's gradient w.r.t. ``params`` on ``x``
    (:func:`~ovis.analysis.gradients.parameter_gradient_draws`), averaged over the ``P`` coordinates.
    The estimator runs in ``eval()`` mode (no running-statistics update, no control-variate step)
    and is restored; the model's ``.grad`` are not touched."""
    was_training = estimator.training
    estimator.eval()
    try:
        draws = parameter_gradient_draws(estimator, model, x, params, n_draws, **runtime)
    finally:
        estimator.train(was_training)
    return draws.double().var(0, unbiased=True).mean()


def log_gradient_variances(
    model: nn.Module,
    x: Tensor,
    estimators: Dict[str, "GradientEstimator"],
    n_draws: int = 20,
    key_filter: str = "inference_network",
    **runtime: Any,
) -> Dict[str, float]:
    r"""The log-variance of each estimator's gradient at the same model parameters (call it every
    few steps of one training run, with the estimators keyed by id, and log the result).

    For each estimator, ``n_draws`` independent draws of the gradient (minus the gradient of its
    surrogate loss) w.r.t. the model parameters whose name contains ``key_filter`` are taken on the
    batch ``x`` (:func:`~ovis.analysis.gradients.parameter_gradient_draws`); the value is
    :math:`\log` of the mean over those coordinates of the per-coordinate variance (unbiased, in
    float64).  Estimators are put in ``eval()`` mode for the draws (no running-statistics update,
    no control-variate training) and restored; the model's ``.grad`` are not touched.

    Returns:
        ``{"gradvar/<id>": log variance}``.

    Raises:
        ValueError: ``n_draws < 2``, or no parameter name contains ``key_filter``.
    """
    if n_draws < 2:
        raise ValueError(f"n_draws must be >= 2, got {n_draws}")
    params = [p for n, p in model.named_parameters() if key_filter in n and p.requires_grad]
    if not params:
        raise ValueError(f"no model parameter name contains key_filter={key_filter!r}")
    out: Dict[str, float] = {}
    for eid, est in estimators.items():
        var = mean_gradient_variance(est, model, x, params, n_draws, **runtime)
        out[f"gradvar/{eid}"] = float(torch.log(var.clamp_min(1e-300)))
    return out
