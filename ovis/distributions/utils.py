r"""Helpers on :mod:`torch.distributions` objects."""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
from torch import Tensor
from torch import distributions as D
from torch.distributions import Distribution
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.distributions.utils import _standard_normal, broadcast_all

from ovis.distributions.bernoulli import BernoulliLogits

__all__ = ["detach_distribution", "repeat_rows", "repeat_distribution", "repeated_log_prob", "RowRepeatedNormal"]


def repeat_rows(t: Tensor, n: int) -> Tensor:
    r"""Repeat each row of ``t`` ``n`` times: ``[B, *rest] -> [B*n, *rest]``, row ``b*n + j`` a copy
    of row ``b`` (``torch.repeat_interleave(t, n, 0)``; ``t`` itself for ``n = 1``).

    The one expansion of the particles protocol (:mod:`ovis.models.base`): a model that encodes
    ``x`` once per data point repeats the parameters of ``q(z|x)`` with it, so that particle ``j``
    of point ``b`` sits at row ``b*n + j`` (the ``[B, M, K]`` views of the estimators).  The
    gradient of the copies flows back to ``t`` (summed over the ``n`` copies).

    Raises:
        ValueError: ``n < 1`` or ``t`` is a 0-d tensor.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"repeat_rows: the number of copies n must be an integer >= 1, got {n!r}")
    if t.dim() == 0:
        raise ValueError("repeat_rows needs a tensor with a leading batch dimension, got a 0-d tensor")
    if n == 1:
        return t
    B = t.shape[0]
    return t.unsqueeze(1).expand(B, n, *t.shape[1:]).reshape(B * n, *t.shape[1:])


def repeated_log_prob(dist: Distribution, x: Tensor, n: int) -> Tensor:
    r"""``dist.log_prob(repeat_rows(x, n))`` for ``dist`` of batch ``[B*n]`` and ``x`` ``[B, *event]``:
    the log-density of particle row ``b*n + j`` at ``x[b]`` (the likelihood term of the particles
    protocol), ``[B*n]``.

    A distribution class with a method ``log_prob_repeated(x, n)`` computes it without the ``[B*n,
    *event]`` copy of ``x`` (:class:`~ovis.distributions.bernoulli.BernoulliLogits`); the others are
    given the copy.
    """
    own = getattr(dist, "log_prob_repeated", None)
    if callable(own):
        return own(x, n)
    return dist.log_prob(repeat_rows(x, n))


def _repeat_param(p: Tensor, n: int, B: int, name: str, dist: Distribution) -> Tensor:
    if p.dim() == 0:  # a scalar shared by every row (a temperature)
        return p
    if p.shape[0] != B:
        raise TypeError(f"repeat_distribution: parameter {name!r} of {type(dist).__name__} has shape "
                        f"{tuple(p.shape)}, expected a leading batch dimension of {B} rows")
    return repeat_rows(p, n)


def repeat_distribution(dist: Distribution, n: int) -> Distribution:
    r"""``dist`` (batch shape ``[B, *rest]``) with each row repeated ``n`` times: batch
    ``[B*n, *rest]``, row ``b*n + j`` the distribution of row ``b`` (:func:`repeat_rows` on every
    parameter; ``dist`` itself for ``n = 1``).

    The distribution is rebuilt on the repeated parameters, so that sampling it draws the noise a
    distribution built on ``n`` repeated inputs would draw (same shape, same order), ``rsample``
    carries the gradient back through the copies, ``log_prob`` of ``[B*n]`` values is that of the
    row-wise distribution, and :func:`detach_distribution` detaches the repeated parameters.
    Supports ``Independent``, ``MixtureSameFamily``, :class:`~ovis.distributions.bernoulli.BernoulliLogits`,
    ``OneHotCategorical``, the relaxed (concrete) distributions and the distributions
    parameterised through ``arg_constraints`` (Normal, Bernoulli, Categorical, ...); any other
    distribution class may define a method ``repeat_rows(n)`` that returns its repeated copy.

    Raises:
        TypeError: a distribution whose parameters cannot be found or have no batch dimension.
        ValueError: ``n < 1`` or a distribution without batch dimension.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"repeat_distribution: n must be an integer >= 1, got {n!r}")
    if n == 1:
        return dist
    if len(dist.batch_shape) == 0:
        raise ValueError(f"repeat_distribution needs a batch dimension, {type(dist).__name__} has batch shape ()")
    B = dist.batch_shape[0]
    own = getattr(dist, "repeat_rows", None)
    if callable(own):  # a distribution class that knows how to repeat itself
        return own(n)
    if isinstance(dist, D.Independent):
        return D.Independent(repeat_distribution(dist.base_dist, n), dist.reinterpreted_batch_ndims,
                             validate_args=False)
    if isinstance(dist, BernoulliLogits):
        return BernoulliLogits(repeat_rows(dist.logits, n), dist.event_dims)
    if type(dist) is D.Normal:  # broadcast, not copied (RowRepeatedNormal)
        return RowRepeatedNormal(dist.loc, dist.scale, n)
    if isinstance(dist, D.MixtureSameFamily):
        return D.MixtureSameFamily(repeat_distribution(dist.mixture_distribution, n),
                                   repeat_distribution(dist.component_distribution, n), validate_args=False)
    if isinstance(dist, D.OneHotCategorical):
        return type(dist)(logits=repeat_rows(dist.logits, n), validate_args=False)
    if isinstance(dist, (D.RelaxedOneHotCategorical, D.RelaxedBernoulli)):
        return type(dist)(dist.temperature, logits=repeat_rows(dist.logits, n), validate_args=False)
    kwargs: Dict[str, Tensor] = {}
    for name in dist.arg_constraints:
        if name in dist.__dict__:
            kwargs[name] = _repeat_param(dist.__dict__[name], n, B, name, dist)
    if not kwargs:
        raise TypeError(f"repeat_distribution: cannot find the parameters of {type(dist).__name__}")
    if "probs" in kwargs and "logits" in kwargs:
        del kwargs["probs"]
    try:
        return type(dist)(**kwargs, validate_args=False)
    except TypeError as e:
        raise TypeError(f"repeat_distribution: cannot rebuild {type(dist).__name__}: {e}") from None


class RowRepeatedNormal(D.Normal):
    r"""``Normal(repeat_rows(loc, n), repeat_rows(scale, n))`` (batch ``[B*n, *rest]`` for ``loc``,
    ``scale`` ``[B, *rest]``) that keeps the ``B`` rows: ``rsample`` / ``sample`` compute
    ``loc_b + eps * scale_b`` with the noise ``eps`` ``[B*n, *rest]`` the repeated ``Normal`` draws
    (so the same values for the same generator state) and ``log_prob`` of ``[B*n, ...]`` values
    broadcasts ``loc_b``, ``scale_b`` (``log scale`` on ``B`` rows) instead of copying them; the
    attributes ``loc`` and ``scale`` are the repeated tensors, made on access (``mean``, ``entropy``,
    the KL of two normals).  Built by :func:`repeat_distribution`; :func:`detach_distribution`
    detaches its ``B``-row parameters.

    Args:
        loc, scale: ``[B, *rest]`` (broadcast together).
        n: copies of each row, ``>= 1``.
    """

    def __init__(self, loc: Tensor, scale: Tensor, n: int, validate_args: Any = None) -> None:
        loc, scale = broadcast_all(loc, scale)
        if loc.dim() == 0:
            raise ValueError("RowRepeatedNormal needs parameters with a batch dimension")
        self._loc_rows, self._scale_rows, self.rows_repeat = loc, scale, int(n)
        B = loc.shape[0]
        Distribution.__init__(self, torch.Size((B * self.rows_repeat, *loc.shape[1:])), validate_args=False)

    @property
    def loc(self) -> Tensor:  # type: ignore[override]
        r"""The repeated means ``[B*n, *rest]`` (a copy, made on access)."""
        return repeat_rows(self._loc_rows, self.rows_repeat)

    @property
    def scale(self) -> Tensor:  # type: ignore[override]
        r"""The repeated standard deviations ``[B*n, *rest]`` (a copy, made on access)."""
        return repeat_rows(self._scale_rows, self.rows_repeat)

    def expand(self, batch_shape: Any, _instance: Any = None) -> D.Normal:
        r"""A plain :class:`~torch.distributions.Normal` on the repeated parameters, expanded."""
        return D.Normal(self.loc, self.scale, validate_args=False).expand(batch_shape)

    def _draw(self, sample_shape: Any) -> Tensor:
        B, n = self._loc_rows.shape[0], self.rows_repeat
        rest = self._loc_rows.shape[1:]
        eps = _standard_normal(self.batch_shape, dtype=self._loc_rows.dtype, device=self._loc_rows.device)
        z = self._loc_rows.unsqueeze(1) + eps.view(B, n, *rest) * self._scale_rows.unsqueeze(1)
        return z.view(self.batch_shape)

    # the default torch.Size() is an immutable tuple, as in torch.distributions.Distribution
    def rsample(self, sample_shape: Any = torch.Size()) -> Tensor:  # noqa: B008
        r"""``loc_b + eps * scale_b`` on ``[B*n, *rest]`` rows (the repeated ``Normal``'s noise)."""
        if len(sample_shape) > 0:
            return super().rsample(sample_shape)
        return self._draw(sample_shape)

    def sample(self, sample_shape: Any = torch.Size()) -> Tensor:  # noqa: B008
        r""":meth:`rsample` without a graph."""
        if len(sample_shape) > 0:
            return super().sample(sample_shape)
        with torch.no_grad():
            return self._draw(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""``Normal.log_prob`` of values ``[B*n, ...]``, ``loc_b`` / ``scale_b`` broadcast over the copies."""
        B, n = self._loc_rows.shape[0], self.rows_repeat
        if value.dim() < 1 or value.shape[0] != B * n:
            return super().log_prob(value)
        v = value.reshape(B, n, *value.shape[1:])
        loc, scale = self._loc_rows.unsqueeze(1), self._scale_rows.unsqueeze(1)
        # torch.distributions.Normal.log_prob's expression, broadcast over the n copies
        out = -((v - loc) ** 2) / (2 * scale**2) - scale.log() - math.log(math.sqrt(2 * math.pi))
        return out.reshape(B * n, *out.shape[2:])


def detach_distribution(dist: Distribution) -> Distribution:
    r"""A copy of ``dist`` whose parameters are detached from the autograd graph.

    Used by the estimators that evaluate ``log q(z|x)`` as a function of ``z`` only
    (STL, DReG: "``q``'s parameters are detached inside ``log q``").  Supports the distributions
    parameterised through ``arg_constraints`` (Normal, Bernoulli, Categorical, ...) and
    ``Independent`` wrappers of them.
    """
    if isinstance(dist, BernoulliLogits):
        return BernoulliLogits(dist.logits.detach(), dist.event_dims)
    if isinstance(dist, RowRepeatedNormal):
        return RowRepeatedNormal(dist._loc_rows.detach(), dist._scale_rows.detach(), dist.rows_repeat)
    if isinstance(dist, D.Independent):
        return D.Independent(detach_distribution(dist.base_dist), dist.reinterpreted_batch_ndims)
    if isinstance(dist, D.RelaxedOneHotCategorical):
        return D.RelaxedOneHotCategorical(dist.temperature, logits=dist.logits.detach())
    if isinstance(dist, ExpRelaxedCategorical):
        return ExpRelaxedCategorical(dist.temperature, logits=dist.logits.detach())
    if isinstance(dist, D.RelaxedBernoulli):
        return D.RelaxedBernoulli(dist.temperature, logits=dist.logits.detach())
    kwargs = {}
    for name in dist.arg_constraints:
        if name in dist.__dict__:
            kwargs[name] = dist.__dict__[name].detach()
    if not kwargs:
        raise TypeError(f"cannot detach the parameters of {type(dist).__name__}")
    if "probs" in kwargs and "logits" in kwargs:
        del kwargs["probs"]
    try:
        return type(dist)(**kwargs, validate_args=False)
    except TypeError as e:
        raise TypeError(f"cannot detach the parameters of {type(dist).__name__}: {e}") from None
