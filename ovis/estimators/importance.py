r"""The importance-weighted core: the maths every estimator shares, written once.

Shapes (asserted):

* ``[B, M, K]``: one value per data point ``b``, outer Monte Carlo sample ``m`` (``mc``) and
  particle ``k`` (``iw``);
* ``[B, M, K, L]``: the same, per stochastic layer ``l``;
* ``[B, M]``: one value per data point and outer sample (a bound, an ESS).

Definitions (Burda et al. 2016; Li & Turner 2016 for the Renyi bound; Lievin et al. 2020):

.. math::

    \log w_k = \log p(x|z_k) - \beta \sum_l \max(\log q(z_{l,k}|\cdot) - \log p(z_{l,k}|\cdot), \lambda)

    \mathcal{L}_K^\alpha = \frac{1}{1-\alpha} \log \frac{1}{K}\sum_k w_k^{1-\alpha},\qquad
    v_k = \mathrm{softmax}_k((1-\alpha)\log w_k),\qquad
    \mathrm{ESS} = \frac{(\sum_k w_k)^2}{\sum_k w_k^2}

and the leave-one-out log-sum-exp :math:`\log \sum_{l \neq k} w_l` computed for every ``k`` in
``O(K)`` time and memory from exclusive prefix and suffix log-cumulative-sum-exps: no ``K x K``
matrix and no subtraction, hence exact (no cancellation) even when one weight dominates.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "check_particles",
    "log_weights",
    "log_mean_exp",
    "iw_bound",
    "renyi_bound",
    "normalized_weights",
    "effective_sample_size",
    "leave_one_out_logsumexp",
    "log_one_minus_normalized_weights",
]


def check_particles(t: Tensor, name: str, ndim: int = 3) -> None:
    r"""Assert that ``t`` has the particle shape ``[B, M, K]`` (``ndim=3``) or ``[B, M, K, L]``."""
    if t.dim() != ndim:
        shape = "[B, M, K]" if ndim == 3 else "[B, M, K, L]"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def log_weights(
    log_px: Tensor,
    log_qz: Tensor,
    log_pz: Tensor,
    beta: float = 1.0,
    freebits: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Log importance weights and the per-particle KL term.

    Args:
        log_px: ``log p(x|z_k)``, shape ``[B, M, K]``.
        log_qz: ``log q(z_{l,k}|...)`` per layer, shape ``[B, M, K, L]``.
        log_pz: ``log p(z_{l,k}|...)`` per layer, shape ``[B, M, K, L]``.
        beta: the KL weight :math:`\beta \geq 0`.
        freebits: free bits :math:`\lambda` per layer: each layer's KL term
            ``log q - log p`` is clamped from below at ``lambda`` (``None``: no clamp).

    Returns:
        ``(log_w, kl)``, both ``[B, M, K]``: ``log_w = log_px - beta * kl`` and
        ``kl = sum_l max(log q_l - log p_l, lambda)``.
    """
    check_particles(log_px, "log_px", 3)
    check_particles(log_qz, "log_qz", 4)
    check_particles(log_pz, "log_pz", 4)
    if log_qz.shape != log_pz.shape or log_qz.shape[:3] != log_px.shape:
        raise ValueError(
            f"inconsistent shapes: log_px {tuple(log_px.shape)}, log_qz {tuple(log_qz.shape)}, "
            f"log_pz {tuple(log_pz.shape)}"
        )
    kl_layers = log_qz - log_pz
    if freebits is not None:
        kl_layers = kl_layers.clamp(min=freebits)
    kl = kl_layers.sum(-1)
    return (log_px - kl if beta == 1.0 else log_px - beta * kl), kl  # (no kernel for a product by 1)


def log_mean_exp(x: Tensor, dim: int = -1) -> Tensor:
    r""":math:`\log \frac{1}{K} \sum_k e^{x_k}` along ``dim`` (stable)."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def iw_bound(log_w: Tensor) -> Tensor:
    r"""The importance-weighted bound estimate :math:`\log Z = \log \frac{1}{K}\sum_k w_k`.

    ``[B, M, K] -> [B, M]``.
    """
    check_particles(log_w, "log_w")
    return log_mean_exp(log_w, dim=-1)


def renyi_bound(log_w: Tensor, alpha: float = 0.0) -> Tensor:
    r"""The Renyi bound estimate :math:`\frac{1}{1-\alpha}\log\frac{1}{K}\sum_k w_k^{1-\alpha}`.

    ``alpha = 0`` is the IW bound.  ``[B, M, K] -> [B, M]``.
    """
    check_particles(log_w, "log_w")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
    if alpha == 0.0:
        return log_mean_exp(log_w, dim=-1)
    return log_mean_exp((1.0 - alpha) * log_w, dim=-1) / (1.0 - alpha)


def normalized_weights(log_w: Tensor, alpha: float = 0.0) -> Tensor:
    r"""The (tempered) normalised weights :math:`v_k = \mathrm{softmax}_k((1-\alpha)\log w_k)`."""
    check_particles(log_w, "log_w")
    return torch.softmax(log_w if alpha == 0.0 else (1.0 - alpha) * log_w, dim=-1)


def effective_sample_size(log_w: Tensor) -> Tensor:
    r"""ESS :math:`(\sum_k w_k)^2 / \sum_k w_k^2`, in log space.  ``[B, M, K] -> [B, M]``."""
    check_particles(log_w, "log_w")
    return torch.exp(2.0 * torch.logsumexp(log_w, dim=-1) - torch.logsumexp(2.0 * log_w, dim=-1))


#: up to this ``K`` the leave-one-out log-sum-exp is one masked ``K x K`` log-sum-exp (fewer kernels);
#: above, the O(K) prefix/suffix form
LOO_MASKED_MAX_K = 16

_LOO_MASKS: dict = {}


def _loo_mask(K: int, like: Tensor) -> Tensor:
    r"""``[K, K]`` zeros with ``-inf`` on the diagonal (cached per size, dtype and device)."""
    key = (K, like.dtype, like.device)
    mask = _LOO_MASKS.get(key)
    if mask is None:
        if len(_LOO_MASKS) >= 64:
            _LOO_MASKS.clear()
        mask = _LOO_MASKS[key] = torch.zeros(K, K, dtype=like.dtype, device=like.device).fill_diagonal_(-math.inf)
    return mask


def leave_one_out_logsumexp(x: Tensor, dim: int = -1) -> Tensor:
    r"""For every ``k``: :math:`\log \sum_{l \neq k} e^{x_l}` along ``dim``, without subtracting
    exponentials (so it is exact when one term dominates: the dominant term's own leave-one-out
    value is the log-sum-exp of the others, not a difference of two huge numbers).  ``K = 1``
    gives ``-inf``.

    Up to :data:`LOO_MASKED_MAX_K` terms, one log-sum-exp over a ``K x K`` matrix whose diagonal is
    masked with ``-inf``; above, in ``O(K)`` memory, ``logaddexp(prefix_{k-1}, suffix_{k+1})`` from
    exclusive prefix and suffix ``logcumsumexp`` (no ``K x K`` matrix: K = 5000 would need 2.4 GB).
    """
    dim = dim % x.dim()
    n = x.shape[dim]
    if n == 1:
        return torch.full_like(x, -math.inf)
    if n <= LOO_MASKED_MAX_K:
        last = x.movedim(dim, -1)
        return torch.logsumexp(last.unsqueeze(-2) + _loo_mask(n, x), dim=-1).movedim(-1, dim)
    inclusive = torch.logcumsumexp(x, dim=dim)
    suffix = torch.logcumsumexp(x.flip(dim), dim=dim).flip(dim)
    neg_inf = torch.full_like(x.narrow(dim, 0, 1), -math.inf)
    prefix_excl = torch.cat([neg_inf, inclusive.narrow(dim, 0, n - 1)], dim=dim)
    suffix_excl = torch.cat([suffix.narrow(dim, 1, n - 1), neg_inf], dim=dim)
    return torch.logaddexp(prefix_excl, suffix_excl)


def log_one_minus_normalized_weights(log_w: Tensor, loo: Optional[Tensor] = None) -> Tensor:
    r""":math:`\log(1 - v_k)` computed as ``loo_k - logsumexp_l(log w_l)``.

    Not ``log1p(-v_k)``, which is ``-inf`` in float32 as soon as one weight dominates.
    ``loo`` may be passed when already computed (it is :func:`leave_one_out_logsumexp` of
    ``log_w`` along the particle axis).
    """
    check_particles(log_w, "log_w")
    if loo is None:
        loo = leave_one_out_logsumexp(log_w, dim=-1)
    return loo - torch.logsumexp(log_w, dim=-1, keepdim=True)
