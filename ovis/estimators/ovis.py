r"""Optimised Variance Reduction with Importance Sampling (Lievin et al., NeurIPS 2020).

``ovis-gamma{g}`` (OVIS~, the asymptotic control variate, paper eq. 17):

.. math::

    c_k = \frac{\log Z_{-k} + (1-\gamma)\log(1 - 1/K)}{1-\alpha} - \gamma v_k,
    \qquad Z_{-k} = \frac{1}{K-1}\sum_{l\neq k}\tilde w_l

(the ``z_k``-independent part is divided by ``1 - alpha`` like the bound), so that the learning
signal is

.. math::

    d_k - c_k = \frac{\gamma\log(1-1/K) - \log(1 - v_k)}{1-\alpha} - (1-\gamma) v_k

with :math:`\log(1-v_k) = \mathrm{loo}_k - \mathrm{logsumexp}_l \log\tilde w_l` (no ``log1p(-v)``,
which is ``-inf`` in float32 when one weight dominates; no ``K x K`` matrix).  ``gamma = 0`` is
unbiased.  For ``gamma > 0`` the control variate depends on ``z_k`` through ``v_k``: the
phi-gradient estimate is biased by exactly :math:`+\gamma E[\sum_k v_k h_k]` (estimate minus
truth), and this bias does **not** vanish as K grows (it tends to
:math:`\gamma\nabla_\phi E_{p(z|x)}[\log q(z|x)]`).  The ``-arithmetic``/``-geometric`` forms take
:math:`\log Z_{-k}` from VIMCO's leave-one-out estimate
:math:`\log\frac1K(\sum_{l\ne k}\tilde w_l + \hat{\tilde w}_{-k})` (the arithmetic form equals
the exact one, since then the estimate is :math:`\log\frac{1}{K-1}\sum_{l\neq k}\tilde w_l`).

``ovis-S{n}`` / ``ovis-S{r}`` (OVIS-MC, the Monte Carlo control variate, paper eq. 12):

.. math::

    c_k = \frac1S\sum_{s=1}^S d_k(z^{(s)}, z_{-k}),\qquad
    \log Z^{(s)}_{k} = \mathrm{logaddexp}(\mathrm{loo}_k, \log\tilde w^{(s)}) - \log K

with ``S`` auxiliary particles :math:`z^{(s)}\sim q`; the ``S`` substitutions are accumulated over
chunks, so memory is ``O(B*M*(K + chunk*K))`` with a bounded chunk, never ``S x K x K``.
With ``exclusive``, ``K + S`` particles are drawn and the auxiliary ones stay out of the bound
(unbiased); they are drawn in a second pass, after the ``K`` particles of the bound, without an
autograd graph (the backward pass is that of ``K`` particles).  Without it the budget is ``K``,
``S <= K - 1``: the first ``K - S`` particles carry the score term (the phi-gradient targets
:math:`\mathcal{L}_{K-S}`) and the theta-gradient uses all ``K``.  An integer ``n`` is ``S = n``; a fraction ``r`` is ``S = max(1, floor(r*K))``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, EstimatorArgumentError, RuntimeParams
from ovis.estimators.importance import (
    leave_one_out_logsumexp,
    log_weights,
    normalized_weights,
    renyi_bound,
)
from ovis.estimators.score_function import ScoreFunctionEstimator, score_function_surrogate
from ovis.estimators.vimco import leave_one_out_log_estimate

__all__ = ["OvisAsymptotic", "OvisMonteCarlo", "ovis_mc_control_variate"]

_LOO = ("exact", "arithmetic", "geometric")


class OvisAsymptotic(ScoreFunctionEstimator):
    r"""OVIS~ (``ovis-gamma{g}[-arithmetic|-geometric]``).

    Args:
        gamma: the coefficient ``g >= 0`` (``0``: unbiased).
        loo: ``"exact"`` (``Z_{-k}``), ``"arithmetic"`` or ``"geometric"`` (VIMCO's estimates).
    """

    family = "ovis-gamma"
    min_iw = 2

    def __init__(self, mc: int = 1, iw: int = 2, gamma: float = 1.0, loo: str = "exact") -> None:
        super().__init__(mc=mc, iw=iw)
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        if loo not in _LOO:
            raise ValueError(f"loo must be one of {_LOO}, got {loo!r}")
        self.gamma = float(gamma)
        self.loo = loo

    def extra_repr(self) -> str:
        r"""``mc``, ``iw``, ``gamma`` and ``loo``, for ``repr(estimator)``."""
        return f"{super().extra_repr()}, gamma={self.gamma}, loo={self.loo}"

    def direct_gain(self) -> float:
        r"""``1 - gamma``: the control variate's term ``-gamma v_k`` cancels that part of the signal's
        ``-v_k``.  Under a KL weight ``beta`` and free bits the remaining ``-(1 - gamma) v_k`` becomes
        ``-(1 - gamma) beta v_k 1[kl_l >= lambda]`` per layer (:func:`score_function_surrogate`): the
        control variate's ``z_k``-dependent term is ``-gamma beta v_k 1[kl_l >= lambda]``, the
        same share of the derivative through ``log q`` inside ``log w``, so ``gamma = 0`` stays
        unbiased and the bias for ``gamma > 0`` is ``+gamma beta E[sum_{k,l} v_k 1[kl_l >= lambda]
        h_{k,l}]`` (``+gamma E[sum_k v_k h_k]`` at ``beta = 1`` without free bits)."""
        return 1.0 - self.gamma

    def learning_signal(
        self, log_w: Tensor, bound: Tensor, v: Tensor, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""``d_k - c_k`` in the closed form of the module docstring (``log(1 - v_k)`` from the
        leave-one-out log-sum-exp and the bound: ``lse = (1 - alpha) bound + log K``)."""
        t = 1.0 - params.alpha
        g = self.gamma
        K = log_w.shape[-1]
        lw = log_w if t == 1.0 else t * log_w
        loo = leave_one_out_logsumexp(lw, dim=-1)
        lse = (bound if t == 1.0 else t * bound)[..., None] + math.log(K)
        log_1mK = math.log(1.0 - 1.0 / K)
        if self.loo == "exact":
            log_1mv = loo - lse  # log(1 - v_k)
        else:  # log(1 - v_k) generalised: log Z_{-k}-estimate relative to log Z
            # log Z_{-k} := VIMCO's estimate; log(1 - v_k) = log Z_{-k} + log K + log(1 - 1/K) - lse
            log_1mv = leave_one_out_log_estimate(lw, self.loo, loo=loo) + (math.log(K) + log_1mK) - lse
        signal = g * log_1mK - log_1mv
        if t != 1.0:
            signal = signal / t
        if g != 1.0:
            signal = signal - (1.0 - g) * v
        return signal, None, {}


def ovis_mc_control_variate(
    log_w: Tensor, log_w_aux: Tensor, alpha: float = 0.0, max_elements: int = 2 ** 21
) -> Tensor:
    r"""OVIS-MC control variate :math:`c_k = \frac1S\sum_s d_k(z^{(s)}, z_{-k})`.

    Args:
        log_w: log-weights of the particles carrying the score term, ``[B, M, K]``.
        log_w_aux: log-weights of the ``S`` auxiliary particles, ``[B, M, S]``.
        alpha: Renyi parameter (weights tempered by ``1 - alpha``).
        max_elements: the largest ``B*M*K*chunk`` tensor built (memory bound).

    Returns:
        ``c``, ``[B, M, K]`` (no graph).
    """
    t = 1.0 - alpha
    B, M, K = log_w.shape
    S = log_w_aux.shape[-1]
    with torch.no_grad():
        loo = leave_one_out_logsumexp(t * log_w, dim=-1)[..., None]  # [B, M, K, 1]
        aux = (t * log_w_aux)[:, :, None, :]  # [B, M, 1, S]
        chunk = max(1, min(S, max_elements // max(1, B * M * K)))
        total = torch.zeros_like(log_w)
        for s0 in range(0, S, chunk):
            a = aux[..., s0:s0 + chunk]
            lz = torch.logaddexp(loo, a)  # log sum of the K substituted tempered weights
            bound = (lz - math.log(K)) / t
            v = torch.exp(a - lz)
            total += (bound - v).sum(-1)
        return total / S


class OvisMonteCarlo(ScoreFunctionEstimator):
    r"""OVIS-MC (``ovis-S{n}[-exclusive]``, ``ovis-S{r}[-exclusive]``).

    Args:
        n_aux: number ``S`` of auxiliary particles (exclusive with ``aux_fraction``).
        aux_fraction: ``r`` in ``(0, 1)``: ``S = max(1, floor(r*K))``.
        exclusive: draw ``K + S`` particles and keep the auxiliary ones out of the bound.
    """

    family = "ovis-mc"
    min_iw = 2

    def __init__(self, mc: int = 1, iw: int = 2, n_aux: Optional[int] = None,
                 aux_fraction: Optional[float] = None, exclusive: bool = False) -> None:
        super().__init__(mc=mc, iw=iw)
        self.n_aux = self.auxiliary_count(iw, n_aux, aux_fraction, exclusive)
        self.exclusive = bool(exclusive)

    @staticmethod
    def auxiliary_count(iw: int, n_aux: Optional[int] = None, aux_fraction: Optional[float] = None,
                        exclusive: bool = False) -> int:
        r"""The number ``S`` of auxiliary particles for ``K = iw``; ``ValueError`` when impossible.

        ``S = n_aux``, or ``S = max(1, floor(aux_fraction * K))``; without ``exclusive`` the
        ``S`` particles come from the budget ``K``, so ``S <= K - 1``.
        """
        if (n_aux is None) == (aux_fraction is None):
            raise ValueError("give exactly one of n_aux (an integer S) and aux_fraction (0 < r < 1)")
        if n_aux is not None:
            if isinstance(n_aux, bool) or not isinstance(n_aux, int) or n_aux < 1:
                raise ValueError(f"n_aux must be an integer >= 1, got {n_aux!r}")
            S = n_aux
        else:
            if not (isinstance(aux_fraction, (int, float)) and 0.0 < aux_fraction < 1.0):
                raise ValueError(f"aux_fraction must lie in (0, 1), got {aux_fraction!r}")
            S = max(1, int(math.floor(aux_fraction * iw)))
        if not exclusive and S >= iw:
            raise EstimatorArgumentError(
                f"ovis-S without -exclusive takes its S={S} auxiliary particles from the budget "
                f"K={iw}, so it needs S <= K-1; use {{fix}} or more, or the -exclusive form", fix=("iw", S + 1)
            )
        return S

    @classmethod
    def check_arguments(cls, mc: int = 1, iw: int = 1, **config: Any) -> None:
        r"""The base checks, then the auxiliary count against ``K`` (see :meth:`auxiliary_count`)."""
        super().check_arguments(mc=mc, iw=iw)
        cls.auxiliary_count(iw, config.get("n_aux"), config.get("aux_fraction"),
                            bool(config.get("exclusive", False)))

    def extra_repr(self) -> str:
        r"""``mc``, ``iw``, ``S`` and ``exclusive``, for ``repr(estimator)``."""
        return f"{super().extra_repr()}, S={self.n_aux}, exclusive={self.exclusive}"

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The OVIS-MC estimate: the signal ``d_k = L - v_k`` of the ``K - S`` score particles (all ``K``
        with ``exclusive``) minus the control variate :func:`ovis_mc_control_variate` built from the
        ``S`` auxiliary particles (the last ``S`` of the budget, or ``S`` extra ones drawn without a
        graph with ``exclusive``).

        Returns:
            ``(loss, diagnostics, output)`` as :meth:`ovis.estimators.base.GradientEstimator.forward`.
        """
        K, S = self.iw, self.n_aux
        n_score = K if self.exclusive else K - S
        p, log_w, kl, bound, v = self.weighted_particles(model, x, params)  # the bound's K particles
        with torch.no_grad():
            if self.exclusive:
                # the S auxiliary particles enter only the control variate: drawn in a second
                # pass without an autograd graph, so the backward pass is that of K particles
                pa = self.evaluate(model, x, params, K=S, zgrads=False)
                log_w_aux, _ = log_weights(pa.log_px, pa.log_qz, pa.log_pz, params.beta, params.freebits)
            else:
                log_w_aux = log_w[..., K - S:]
            if n_score == K:  # (exclusive) the score particles are the bound's
                log_w_score, score_bound, v_score = log_w, bound, v
            else:
                log_w_score = log_w[..., :n_score]
                score_bound = renyi_bound(log_w_score, params.alpha)
                v_score = normalized_weights(log_w_score, params.alpha)
            d = score_bound[..., None] - v_score
            signal = d - ovis_mc_control_variate(log_w_score, log_w_aux, params.alpha)
        loss = score_function_surrogate(signal, p.log_px, p.log_qz, p.log_pz, v, bound, params.beta, params.freebits,
                                        direct_weights=v_score)
        return loss, self.signal_diagnostics(log_w, kl, p.log_px, bound, v, signal, params.alpha), p.output
