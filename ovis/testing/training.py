r"""A short training run used by the "trains on real data" tests of every estimator family.

:func:`elbo_gain` trains ``model`` with one estimator for a fixed number of Adam steps on
mini-batches drawn with a seeded generator and returns the ELBO of a fixed set of points before
and after, estimated with ``judge_mc`` samples each (``reinforce``'s diagnostics: the ELBO of hard
samples, whatever the estimator trains).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from ovis.estimators import build_estimator

__all__ = ["elbo_gain"]


def elbo_gain(model: nn.Module, estimator: nn.Module, xs: Tensor, steps: int = 200, batch_size: int = 24,
              lr: float = 3e-3, estimator_lr: float = 1e-3, judge_points: int = 300, judge_mc: int = 4,
              seed: int = 1, **runtime: object) -> Tuple[float, float]:
    r"""``(ELBO before, ELBO after)`` of ``xs[:judge_points]`` around ``steps`` Adam steps.

    Args:
        model: the model (its parameters at learning rate ``lr``).
        estimator: a built estimator; its own parameters (baselines, control variates) get
            ``estimator_lr``.
        xs: training points ``[n, *x_shape]``.
        runtime: runtime parameters of every estimator call (e.g. ``tau=0.5``).

    Raises:
        AssertionError: a non-finite surrogate loss.
    """
    if steps < 1 or batch_size < 1 or judge_points < 1:
        raise ValueError(f"steps, batch_size and judge_points must be >= 1, got {steps}, {batch_size}, "
                         f"{judge_points}")
    groups = [{"params": list(model.parameters()), "lr": lr}]
    if list(estimator.parameters()):
        groups.append({"params": list(estimator.parameters()), "lr": estimator_lr})
    opt = torch.optim.Adam(groups)
    judge = build_estimator("reinforce", mc=judge_mc, iw=1)
    x_eval = xs[:judge_points]

    def elbo() -> float:
        with torch.no_grad():
            return float(judge(model, x_eval)[1]["loss"]["elbo"].mean())

    before = elbo()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(xs), (batch_size,), generator=g)
        opt.zero_grad()
        loss, _, _ = estimator(model, xs[idx], backward=True, **runtime)
        assert torch.isfinite(loss), f"non-finite surrogate loss {loss.item()}"
        opt.step()
    return before, elbo()
