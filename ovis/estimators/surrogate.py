r"""Surrogate losses that are linear in the particles' log-densities: one autograd node.

The surrogate of a score-function estimator (REINFORCE, its baselines, VIMCO, OVIS, reweighted
wake-wake, TVO's covariance estimator) is, as a function of the parameters, a linear combination
of the log-densities of the particles with coefficients that carry no gradient:

.. math::

    \ell = -\frac{1}{BM}\sum_{b,m}\Big(\sum_k \mathrm{sg}(s_k)\sum_l \log q(z_{l,k}|\cdot)
           + \mathcal{L}\Big),\qquad
    \nabla_\theta\mathcal{L} = \sum_k v_k \nabla_\theta \log w_k

(``v = softmax((1 - alpha) log w)``, the gradient of the Renyi bound, alpha = 0 the IW bound).
Written with autograd this is a log-sum-exp and a dozen small kernels forward and backward; here the
gradients are the known coefficients and :func:`linear_surrogate` is a single node whose backward
multiplies them by the incoming gradient.  Its value is the surrogate's usual value, computed without
a graph.  ``tests/test_exact_gradients.py`` checks every estimator built on it against exact
gradients.

:func:`log_weight_coefficients` turns the coefficient of ``log w_k`` into those of ``log p(x|z_k)``
and ``log p(z_{l,k}|\cdot)`` (``log w = log p(x|z) - beta sum_l max(log q - log p, lambda)``).  The
derivative of the bound through the ``log q`` inside ``log w``,
:math:`-\beta v_k 1[\log q_{l,k} - \log p_{l,k} \geq \lambda]`, is part of the coefficient of
``log q(z_{l,k})`` (:func:`ovis.estimators.score_function.score_function_surrogate`, TVO's own
coefficients), not of ``log p``.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["linear_surrogate", "log_weight_coefficients"]


class _LinearSurrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, value: Tensor, log_px: Tensor, log_qz: Tensor, log_pz: Tensor,  # type: ignore[override]
                d_px: Tensor, d_qz: Tensor, d_pz: Tensor) -> Tensor:
        ctx.save_for_backward(d_px, d_qz, d_pz)
        ctx.shapes = (log_px.shape, log_qz.shape, log_pz.shape)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        d_px, d_qz, d_pz = ctx.saved_tensors
        s_px, s_qz, s_pz = ctx.shapes
        return (None, (g * d_px).expand(s_px), (g * d_qz).expand(s_qz), (g * d_pz).expand(s_pz),
                None, None, None)


def linear_surrogate(value: Tensor, log_px: Tensor, log_qz: Tensor, log_pz: Tensor,
                     d_px: Tensor, d_qz: Tensor, d_pz: Tensor) -> Tensor:
    r"""A scalar equal to ``value`` whose gradient is ``sum(d_px * grad log_px) + sum(d_qz * grad
    log_qz) + sum(d_pz * grad log_pz)``.

    Args:
        value: the surrogate's value (a scalar, no graph).
        log_px: ``[B, M, K]``; ``log_qz``, ``log_pz``: ``[B, M, K, L]`` (the particles' log-densities).
        d_px, d_qz, d_pz: the derivatives of the surrogate with respect to them (no graph), each
            broadcastable to its tensor's shape.

    Raises:
        ValueError: a coefficient that does not broadcast to its tensor, or a non-scalar ``value``.
    """
    if value.dim() != 0:
        raise ValueError(f"linear_surrogate: value must be a scalar, got shape {tuple(value.shape)}")
    for name, d, t in (("d_px", d_px, log_px), ("d_qz", d_qz, log_qz), ("d_pz", d_pz, log_pz)):
        if d.dim() > t.dim() or any(a not in (1, b) for a, b in zip(reversed(d.shape), reversed(t.shape))):
            raise ValueError(f"linear_surrogate: {name} {tuple(d.shape)} does not broadcast to {tuple(t.shape)}")
        if d.requires_grad:
            raise ValueError(f"linear_surrogate: {name} must carry no gradient (detach it)")
    return _LinearSurrogate.apply(value, log_px, log_qz, log_pz, d_px, d_qz, d_pz)


def log_weight_coefficients(d_log_w: Tensor, log_qz: Tensor, log_pz: Tensor, beta: float = 1.0,
                            freebits: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    r"""The coefficients of ``log p(x|z_k)`` ``[B, M, K]`` and ``log p(z_{l,k}|.)`` ``[B, M, K, L]`` (or
    ``[B, M, K, 1]``, broadcast) in ``sum_k d_log_w[k] * log w_k`` with ``log q`` held fixed.

    ``d log w / d log p(z_l) = beta`` where the free-bits clamp is inactive (``log q - log p >=
    lambda``, as torch's ``clamp`` differentiates), else ``0``.
    """
    with torch.no_grad():
        d_pz = d_log_w[..., None] if beta == 1.0 else beta * d_log_w[..., None]
        if freebits is not None:
            d_pz = d_pz * ((log_qz - log_pz) >= freebits).to(d_pz.dtype)
        return d_log_w, d_pz
