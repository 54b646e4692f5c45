r"""Helpers on :mod:`torch.distributions` objects."""
from __future__ import annotations

from torch import distributions as D
from torch.distributions import Distribution
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from ovis.distributions.bernoulli import BernoulliLogits

__all__ = ["detach_distribution"]


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
