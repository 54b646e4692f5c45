r"""VIMCO (Mnih & Rezende 2016): ``vimco-arithmetic`` and ``vimco-geometric``.

The control variate replaces :math:`w_k` in the bound by an estimate built from the other
particles:

.. math::

    c_k = \frac{1}{1-\alpha}\log\frac{1}{K}\Big(\sum_{l\neq k}\tilde w_l + \hat{\tilde w}_{-k}\Big),
    \qquad \tilde w_l = w_l^{1-\alpha}

with :math:`\hat{\tilde w}_{-k}` the arithmetic mean of the other (tempered) weights or their
geometric mean :math:`\exp(\frac{1}{K-1}\sum_{l\neq k}\log\tilde w_l)`.  ``c_k`` does not depend on
``z_k``: the estimator is unbiased for :math:`\nabla\mathcal{L}_K^\alpha`.  The leave-one-out sums
use the exact leave-one-out log-sum-exp (a masked ``K x K`` one up to ``K = 16``, ``O(K)`` memory
above: :func:`~ovis.estimators.importance.leave_one_out_logsumexp`).  Needs ``K >= 2``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ovis.estimators.base import RuntimeParams
from ovis.estimators.importance import leave_one_out_logsumexp
from ovis.estimators.score_function import ScoreFunctionEstimator

__all__ = ["Vimco", "leave_one_out_log_estimate"]

_MEANS = ("arithmetic", "geometric")


def leave_one_out_log_estimate(log_w: Tensor, mean: str, loo: Optional[Tensor] = None) -> Tensor:
    r""":math:`\log \frac1K(\sum_{l\neq k} w_l + \hat w_{-k})` for every ``k`` (``[B, M, K]``).

    ``log_w`` are the (already tempered) log-weights; ``mean`` is ``"arithmetic"`` or
    ``"geometric"``; ``loo`` may be passed when already computed.
    """
    K = log_w.shape[-1]
    if mean not in _MEANS:
        raise ValueError(f"mean must be one of {_MEANS}, got {mean!r}")
    if loo is None:
        loo = leave_one_out_logsumexp(log_w, dim=-1)
    if mean == "arithmetic":
        # log (1/K)(S_k + S_k / (K - 1)) with S_k = sum_{l != k} w_l is exactly log(S_k / (K - 1))
        return loo - math.log(K - 1)
    log_hat = (log_w.sum(-1, keepdim=True) - log_w) / (K - 1)
    return torch.logaddexp(loo, log_hat) - math.log(K)


class Vimco(ScoreFunctionEstimator):
    r"""VIMCO with the arithmetic or geometric leave-one-out estimate.

    Args:
        mean: ``"arithmetic"`` or ``"geometric"``.
    """

    family = "vimco"
    min_iw = 2

    def __init__(self, mc: int = 1, iw: int = 2, mean: str = "arithmetic") -> None:
        super().__init__(mc=mc, iw=iw)
        if mean not in _MEANS:
            raise ValueError(f"mean must be one of {_MEANS}, got {mean!r}")
        self.mean = mean
        self.family = f"vimco-{mean}"

    def control_variate(
        self, log_w: Tensor, d: Tensor, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        if params.alpha == 0.0:
            return leave_one_out_log_estimate(log_w, self.mean), None, {}
        t = 1.0 - params.alpha
        return leave_one_out_log_estimate(t * log_w, self.mean) / t, None, {}
