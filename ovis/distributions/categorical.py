r"""Categorical sampling by the inverse CDF: one uniform per draw instead of ``torch.multinomial``.

``P(c = k) = p_k`` is sampled as ``c = #{k : F_k <= u}`` with ``u ~ U[0, 1)`` and the cumulative
sums ``F_k = p_0 + ... + p_k`` (a binary search, :func:`torch.searchsorted`), the index clamped to
``C - 1`` against a last cumulative sum rounded below 1.  The law is that of
:class:`torch.distributions.Categorical` up to the float resolution of ``u`` (``2^-24`` in
float32, as ``torch.multinomial``'s own uniforms); ``tests/test_exact_gradients.py`` checks the
estimators on it against exact gradients.  On the CPU it is an order of magnitude faster than
``torch.multinomial`` for many short rows (the Gaussian mixture model's ``K x 20`` logits per point).

The uniforms of ``n`` draws from each of ``R`` rows are one ``torch.rand(R, n)`` call: row-major,
the same numbers as one draw from each of the ``R * n`` rows of the repeated distribution
(``torch.rand(R * n, 1)``), so that encoding once per data point and repeating ``q(z|x)`` draws
the same particles for the same generator state (:mod:`ovis.models.base`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, OneHotCategorical

__all__ = ["categorical_indices", "OneHotCategoricalCDF"]


def categorical_indices(probs: Tensor, n: int) -> Tensor:
    r"""``n`` draws from each row of ``probs`` ``[R, C]`` (rows summing to 1), ``[R, n]`` long
    indices, by the inverse CDF (module docstring); no gradient.

    Raises:
        ValueError: ``probs`` is not 2-d or ``n < 1``.
    """
    if probs.dim() != 2:
        raise ValueError(f"categorical_indices needs probabilities [R, C], got {tuple(probs.shape)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"categorical_indices: n must be an integer >= 1, got {n!r}")
    with torch.no_grad():
        cdf = probs.cumsum(-1)
        u = torch.rand(probs.shape[0], n, dtype=probs.dtype, device=probs.device)
        return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)


class _NormalisedCategorical(Categorical):
    r"""A :class:`~torch.distributions.Categorical` built from log-probabilities that are already
    normalised (``logsumexp = 0`` on the last dimension): no second normalisation, no validation."""

    def __init__(self, log_probs: Tensor) -> None:
        if log_probs.dim() < 1:
            raise ValueError("log_probs must have at least one dimension (the categories)")
        self.logits = log_probs
        self._param = log_probs
        self._num_events = log_probs.shape[-1]
        Distribution.__init__(self, log_probs.shape[:-1], validate_args=False)


class OneHotCategoricalCDF(OneHotCategorical):
    r""":class:`torch.distributions.OneHotCategorical` whose :meth:`sample` draws by the inverse CDF
    (:func:`categorical_indices`): the same law and ``log_prob``, one uniform per draw."""

    @classmethod
    def from_log_probs(cls, log_probs: Tensor) -> "OneHotCategoricalCDF":
        r"""The distribution of normalised log-probabilities ``log_probs`` ``[*batch, C]``
        (``log_softmax`` of logits, e.g. an expanded view), built without normalising them again
        (the constructor's ``logsumexp`` over every row) and without validation."""
        d = cls.__new__(cls)
        d._categorical = _NormalisedCategorical(log_probs)
        Distribution.__init__(d, log_probs.shape[:-1], log_probs.shape[-1:], validate_args=False)
        return d

    # the default torch.Size() is an immutable tuple, as in torch.distributions.Distribution
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        r"""One-hot samples ``[*sample_shape, *batch_shape, C]`` (float, no gradient); for
        ``sample_shape = ()`` the uniforms are drawn in the row-major order of the batch."""
        shape = torch.Size(sample_shape)
        probs = self._categorical.probs
        C = probs.shape[-1]
        flat = probs.reshape(-1, C)
        S = math.prod(shape)
        with torch.no_grad():
            if S == 1:
                idx = categorical_indices(flat, 1).view(*shape, *self.batch_shape)
            else:  # u [S, R] -> draws for each of the S samples of every row
                cdf = flat.cumsum(-1)
                u = torch.rand(S, flat.shape[0], dtype=flat.dtype, device=flat.device)
                idx = torch.searchsorted(cdf, u.t().contiguous(), right=True).clamp_(max=C - 1).t()
                idx = idx.reshape(*shape, *self.batch_shape)
            return torch.nn.functional.one_hot(idx, C).to(probs.dtype)
