r"""Variance tracking (``--track_variance ID,...``): the gradient variance of several estimators at
the trained model's parameters (REBAR's variance-tracking mode, Tucker et al. 2017).

At each evaluation, on the gradient-analysis batch ``x``, ``draws`` independent draws of each
estimator's gradient w.r.t. the parameters selected by ``grad_key`` give the per-coordinate
variance :math:`\mathrm{Var}[g_p]`; the value recorded as ``variance/<id>`` is
:math:`\log_{10}\big(\frac1P\sum_p \mathrm{Var}[g_p]\big)` (a variance of exactly 0 is floored at
1e-300, a non-finite one is NaN).  Each estimator runs in ``eval()`` mode (no running-statistics
update, no control-variate step) under its own RNG fork with the same seed, so tracking changes
neither the training trajectory nor the other metrics, and every estimator sees the same stream.
The tracked estimators' own parameters (NVIL's baseline network, RELAX's control-variate network,
dynamic REBAR's eta / temperature) are not trained: they keep their initial values.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ovis.training.rng import forked_rng

__all__ = ["build_tracked_estimators", "tracked_log_variances"]


def build_tracked_estimators(ids: Sequence[str], training_id: str, training_estimator: torch.nn.Module, *,
                             mc: int, iw: int, x_shape: Sequence[int], seed: int, device: torch.device,
                             model: torch.nn.Module, check_batch: Callable[[], Tensor],
                             runtime: Mapping[str, Any]) -> Dict[str, torch.nn.Module]:
    r"""``{id: estimator}`` for ``ids`` plus the training estimator (``training_id``: the trained
    instance itself), or ``{}`` when ``ids`` is empty.

    Each other estimator is built once with ``mc`` / ``iw`` (and ``x_shape`` where its constructor
    takes one) under an RNG fork seeded by ``seed``, then run once in ``eval()`` mode on the batch
    ``check_batch()`` (a few points, on ``device``; drawn inside the fork).

    Raises:
        ValueError: an estimator cannot run on ``model`` (one line naming it and the fix).
    """
    import ovis.estimators as estimators

    if not ids:
        return {}
    out: Dict[str, torch.nn.Module] = {training_id: training_estimator}
    with forked_rng(device, (int(seed) * 15_485_863 + 7) % (2 ** 62)):
        for eid in ids:
            if eid in out:
                continue
            out[eid] = estimators.build_estimator(eid, mc=mc, iw=iw, x_shape=x_shape).to(device)
        # fail now, not at the first evaluation, when an estimator cannot run on this model
        x = check_batch()
        for eid, est in out.items():
            if est is training_estimator:
                continue
            was_training = est.training
            est.eval()
            try:
                est(model, x, **runtime)
            except (TypeError, ValueError, NotImplementedError, RuntimeError) as e:
                raise ValueError(f"--track_variance {eid}: this estimator cannot run on model "
                                 f"{type(model).__name__} ({type(e).__name__}: {e}); drop it "
                                 "from --track_variance") from e
            finally:
                est.train(was_training)
    return out


def tracked_log_variances(tracked: Mapping[str, torch.nn.Module], model: torch.nn.Module, x: Tensor, draws: int,
                          grad_key: str, runtime: Mapping[str, Any], seed: int, device: torch.device,
                          stop_check: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    r"""``{"variance/<id>": log10 mean gradient variance}`` of every estimator of ``tracked`` on
    ``x`` (``draws`` draws each, every one under an RNG fork seeded by ``seed``; see the module
    docstring); ``stop_check`` is called before each estimator."""
    from ovis.analysis.gradients import select_parameters
    from ovis.analysis.variance_tracking import mean_gradient_variance

    if not tracked:
        return {}
    if draws < 2:
        raise ValueError(f"mc_samples must be >= 2 to estimate a variance, got {draws}")
    params = [p for _, p in select_parameters(model, grad_key)]
    out: Dict[str, float] = {}
    for eid, est in tracked.items():
        if stop_check is not None:
            stop_check()
        with forked_rng(device, seed):
            var = mean_gradient_variance(est, model, x, params, draws, **runtime)
        out[f"variance/{eid}"] = float(torch.log10(var.clamp_min(1e-300))) if torch.isfinite(var) else math.nan
    return out
