r"""A product of independent Bernoulli variables parameterised by logits, with a fused log mass.

:class:`BernoulliLogits` is the hot-path distribution of the sigmoid belief networks: the same
distribution as ``Independent(Bernoulli(logits=a), event_dims)`` with

.. math::  \log p(z) = \sum_i z_i a_i - \mathrm{softplus}(a_i)

computed in one expression (no ``broadcast_all``, no argument validation, no per-call
``Independent`` wrapper), and defined for relaxed ``z`` in ``[0, 1]`` too (the continuous
extension REBAR's relaxed forward pass uses).  ``sample()`` compares uniforms with the
probabilities, ``1[u < \sigma(a)]``: the same law as ``torch.bernoulli``, about 3x faster on the CPU
for the SBN's layers.  It is a :class:`torch.distributions.Distribution` (``batch_shape`` is
``logits.shape[:-event_dims]``, ``event_shape`` the rest), so every estimator uses it unchanged;
``tests/test_speed_paths.py`` checks it against torch's ``Bernoulli``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["BernoulliLogits", "bernoulli_log_mass"]


class _BernoulliLogMass(torch.autograd.Function):
    r"""``sum_{last dim} z a - softplus(a)`` for ``a, z`` ``[n, D]`` with a hand-written backward:
    ``d/da = g (z - sigmoid(a))``, ``d/dz = g a``.  One pass over ``[n, D]`` forward and one
    backward instead of autograd's chain of ``mul``/``softplus``/``sub``/``sum`` nodes (about 25%
    faster for the SBN's 784-unit output layer on the CPU).  ``softplus(a) = relu(a) +
    log(1 + exp(-|a|))`` (``log`` of ``1 + e`` with ``e <= 1``: absolute error below float
    epsilon per unit, and vectorised, unlike ``log1p`` / ``F.softplus`` on the CPU)."""

    @staticmethod
    def forward(ctx, a: Tensor, z: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(a, z)
        return (z * a - a.clamp(min=0) - torch.log(1 + torch.exp(-a.abs()))).sum(-1)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        a, z = ctx.saved_tensors
        g = g.unsqueeze(-1)
        ga = g * (z - torch.sigmoid(a)) if ctx.needs_input_grad[0] else None
        gz = g * a if ctx.needs_input_grad[1] else None
        return ga, gz


def bernoulli_log_mass(logits: Tensor, value: Tensor, event_dims: int = 1) -> Tensor:
    r""":math:`\sum_{event} z a - \mathrm{softplus}(a)` over the last ``event_dims`` dimensions of
    ``logits`` / ``value`` (same shape; ``value`` in ``[0, 1]``, relaxed values allowed), with the
    fused forward and backward of :class:`_BernoulliLogMass`."""
    if logits.shape != value.shape:
        logits, value = torch.broadcast_tensors(logits, value)
    if event_dims == 0:
        return _BernoulliLogMass.apply(logits.unsqueeze(-1), value.to(logits.dtype).unsqueeze(-1))
    batch = logits.shape[:logits.dim() - event_dims]
    flat_a = logits.reshape(*batch, -1)
    flat_z = value.reshape(*batch, -1).to(logits.dtype)
    return _BernoulliLogMass.apply(flat_a, flat_z)


class BernoulliLogits(Distribution):
    r"""``Independent(Bernoulli(logits), event_dims)`` with a fused ``log_prob`` (module docstring).

    Args:
        logits: ``[*batch, *event]``.
        event_dims: the number of trailing dimensions that form one event (``>= 0``).
    """

    arg_constraints = {"logits": constraints.real}
    has_rsample = False

    def __init__(self, logits: Tensor, event_dims: int = 1, validate_args: bool | None = None) -> None:
        if not isinstance(event_dims, int) or not 0 <= event_dims <= logits.dim():
            raise ValueError(f"event_dims must be an integer in [0, {logits.dim()}], got {event_dims!r}")
        self.logits = logits
        self.event_dims = event_dims
        split = logits.dim() - event_dims
        super().__init__(logits.shape[:split], logits.shape[split:], validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.boolean, self.event_dims)

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return p * (1 - p)

    def expand(self, batch_shape: torch.Size, _instance=None) -> "BernoulliLogits":  # type: ignore[override]
        shape = torch.Size(batch_shape) + self.event_shape
        return BernoulliLogits(self.logits.expand(shape), self.event_dims)

    def _reduce(self, t: Tensor) -> Tensor:
        return t.flatten(t.dim() - self.event_dims).sum(-1) if self.event_dims else t

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\sum_{event} z a - \mathrm{softplus}(a)`, shape ``batch_shape`` (broadcast)."""
        return bernoulli_log_mass(self.logits, value, self.event_dims)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            p = self.probs.expand(torch.Size(sample_shape) + self.logits.shape)
            return (torch.rand_like(p) < p).to(p.dtype)

    def entropy(self) -> Tensor:
        p = self.probs
        a = self.logits
        return self._reduce(a.clamp(min=0) + torch.log(1 + torch.exp(-a.abs())) - p * a)
