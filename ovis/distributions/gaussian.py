r"""A per-pixel Gaussian of grey levels parameterised by unconstrained decoder outputs.

:func:`sigmoid_softplus_normal` maps two unconstrained numbers per pixel ``(a, b)`` to

.. math::  x_i \sim \mathcal N\big(\sigma(a_i),\ (\epsilon + \mathrm{softplus}(b_i))^2\big),
           \qquad \log p(x) = \sum_i \log \mathcal N(x_i; \sigma(a_i), \epsilon + \mathrm{softplus}(b_i)),

the observation model of grey-level images (values in ``[0, 1]``) of the IGR paper's discrete VAE
(Potapczynski et al. 2020, Fashion-MNIST): the mean is squashed into ``(0, 1)`` and the standard
deviation is floored at ``epsilon = 1e-6`` (:data:`GAUSSIAN_STD_FLOOR`).  It is a density (not a
mass), so its log-likelihoods are not comparable with those of a Bernoulli model of binarised data.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Independent, Normal

__all__ = ["GAUSSIAN_STD_FLOOR", "sigmoid_softplus_normal", "softplus_inverse"]

#: the floor ``epsilon`` of the standard deviation ``epsilon + softplus(b)``
GAUSSIAN_STD_FLOOR = 1e-6


def sigmoid_softplus_normal(a: Tensor, b: Tensor, event_dims: int,
                            std_floor: float = GAUSSIAN_STD_FLOOR) -> Independent:
    r"""``Independent(Normal(sigmoid(a), std_floor + softplus(b)), event_dims)`` (module docstring).

    Args:
        a: mean logits ``[*batch, *event]``.
        b: standard-deviation pre-activations, the shape of ``a``.
        event_dims: trailing dimensions of ``a`` forming one observation (``>= 0``).
        std_floor: ``epsilon > 0`` added to ``softplus(b)``.

    Returns:
        a distribution of batch shape ``a.shape[:-event_dims]`` whose ``log_prob(x)`` sums the
        per-pixel Normal log-densities over the event dimensions; ``mean`` is ``sigmoid(a)``.

    Raises:
        ValueError: ``a`` and ``b`` differ in shape, ``event_dims`` is out of range or
            ``std_floor <= 0``.
    """
    if a.shape != b.shape:
        raise ValueError(f"the mean logits and the std pre-activations must have one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if not isinstance(event_dims, int) or not 0 <= event_dims <= a.dim():
        raise ValueError(f"event_dims must be an integer in [0, {a.dim()}], got {event_dims!r}")
    if not std_floor > 0:
        raise ValueError(f"std_floor must be > 0, got {std_floor}")
    return Independent(Normal(torch.sigmoid(a), std_floor + F.softplus(b), validate_args=False), event_dims,
                       validate_args=False)


def softplus_inverse(y: float) -> float:
    r""":math:`\mathrm{softplus}^{-1}(y) = \log(e^y - 1)` for ``y > 0`` (the pre-activation whose softplus
    is ``y``, e.g. to initialise a standard deviation).

    Raises:
        ValueError: ``y <= 0``.
    """
    if not y > 0:
        raise ValueError(f"softplus_inverse needs y > 0, got {y}")
    return y + math.log(-math.expm1(-y))
