r"""Helpers on :mod:`torch.distributions` objects."""
from __future__ import annotations

from typing import Dict

from torch import Tensor
from torch import distributions as D
from torch.distributions import Distribution

from ovis.distributions.bernoulli import BernoulliLogits

__all__ = ["detach_distribution", "repeat_rows", "repeat_distribution", "repeated_log_prob"]


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


def detach_distribution(dist: Distribution) -> Distribution:
    r"""A copy of ``dist`` whose parameters are detached from the autograd graph.

    Used by the estimators that evaluate ``log q(z|x)`` as a function of ``z`` only
    (STL, DReG: "``q``'s parameters are detached inside ``log q``").  Supports the distributions
    parameterised through ``arg_constraints`` (Normal, Bernoulli, Categorical, ...) and
    ``Independent`` wrappers of them.
    """
    if isinstance(dist, BernoulliLogits):
        return BernoulliLogits(dist.logits.detach(), dist.event_dims)
    if isinstance(dist, D.Independent):
        return D.Independent(detach_distribution(dist.base_dist), dist.reinterpreted_batch_ndims)
    if isinstance(dist, D.RelaxedOneHotCategorical):
        return D.RelaxedOneHotCategorical(dist.temperature, logits=dist.logits.detach())
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
