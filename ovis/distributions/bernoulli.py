r"""A product of independent Bernoulli variables parameterised by logits, with a direct log mass.

:class:`BernoulliLogits` is the hot-path distribution of the sigmoid belief networks: the same
distribution as ``Independent(Bernoulli(logits=a), event_dims)`` with

.. math::  \log p(z) = \sum_i z_i a_i - \mathrm{softplus}(a_i)

computed in one expression (no ``broadcast_all``, no argument validation, no per-call
``Independent`` wrapper, no ``binary_cross_entropy_with_logits``), and defined for relaxed ``z`` in
``[0, 1]`` too (the continuous extension REBAR's relaxed forward pass uses).  ``sample()`` compares
uniforms with the probabilities, ``1[u < \sigma(a)]``: the same law as ``torch.bernoulli``.  It is a
:class:`torch.distributions.Distribution` (``batch_shape`` is ``logits.shape[:-event_dims]``,
``event_shape`` the rest), so every estimator uses it unchanged; ``tests/test_speed_paths.py``
checks it against torch's ``Bernoulli``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["BernoulliLogits", "bernoulli_log_mass", "random_bits24", "BITS24"]


def bernoulli_log_mass(logits: Tensor, value: Tensor, event_dims: int = 1) -> Tensor:
    r""":math:`\sum_{event} z a - \mathrm{softplus}(a)` over the last ``event_dims`` dimensions (the
    Bernoulli log mass, continuously extended to relaxed ``z`` in ``[0, 1]``; ``logits`` and
    ``value`` broadcast), as two reductions (no third ``[n, D]`` temporary, no
    ``binary_cross_entropy_with_logits``).  The one
    implementation used by :class:`BernoulliLogits`, the SBNs' ``log_joint_at`` and the discrete
    estimators."""
    def reduce(t: Tensor) -> Tensor:
        return t.flatten(t.dim() - event_dims).sum(-1) if event_dims else t

    return reduce(value * logits) - reduce(F.softplus(logits))


#: ``2 ** 24``: ``1[random_bits24() < p * BITS24]`` is a Bernoulli(p) sample
BITS24 = float(1 << 24)


def random_bits24(shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    r"""Independent uniform integers in ``[0, 2^24)`` (``int32``), two from every 64-bit draw of
    torch's generator (its low and high words, masked to 24 bits).

    ``1[bits < p * 2^24]`` has probability ``ceil(p 2^24) / 2^24``: the law of ``torch.rand() < p``
    for float32, whose uniforms are the same 24-bit grid.  Float64 probabilities are
    resolved to ``2^-24`` too (torch.rand would give 53 bits).

    Under ``torch.compile`` the words come from ``torch.randint(0, 2^62)`` (``random_`` breaks the
    graph): the same law; its low 62 bits, and so the 24-bit values, are those of ``random_`` from
    the same generator state (``torch._inductor.config.fallback_random = True``), while by default
    the compiled graph draws them from inductor's own generator.
    """
    numel = math.prod(shape)
    n = (numel + 1) // 2
    if torch.compiler.is_compiling():
        words = torch.randint(0, 1 << 62, (n,), dtype=torch.int64, device=device)
    else:  # eager: random_ fills the 64-bit words in place
        words = torch.empty(n, dtype=torch.int64, device=device).random_()
    return words.view(torch.int32)[:numel].view(*shape) & 0xFFFFFF


class BernoulliLogits(Distribution):
    r"""``Independent(Bernoulli(logits), event_dims)`` with a direct ``log_prob`` (module docstring).

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
        r"""``{0, 1}`` per unit, ``event_dims`` of them forming one event (``log_prob`` also accepts
        relaxed values in ``[0, 1]``)."""
        return constraints.independent(constraints.boolean, self.event_dims)

    @property
    def probs(self) -> Tensor:
        r""":math:`\sigma(a)`, the probabilities of ``1``, ``[*batch, *event]``."""
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        r"""The mean, equal to :attr:`probs` (``[*batch, *event]``)."""
        return self.probs

    @property
    def variance(self) -> Tensor:
        r""":math:`p(1 - p)` per unit, ``[*batch, *event]``."""
        p = self.probs
        return p * (1 - p)

    def expand(self, batch_shape: torch.Size, _instance=None) -> "BernoulliLogits":  # type: ignore[override]
        r"""The same distribution with the logits expanded to ``batch_shape + event_shape`` (no copy)."""
        shape = torch.Size(batch_shape) + self.event_shape
        return BernoulliLogits(self.logits.expand(shape), self.event_dims)

    def _reduce(self, t: Tensor) -> Tensor:
        return t.flatten(t.dim() - self.event_dims).sum(-1) if self.event_dims else t

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\sum_{event} z a - \mathrm{softplus}(a)`, shape ``batch_shape`` (broadcast)."""
        return bernoulli_log_mass(self.logits, value, self.event_dims)

    def log_prob_repeated(self, x: Tensor, n: int) -> Tensor:
        r"""``log_prob`` of ``x`` ``[B, *event]`` with each row repeated ``n`` times, ``[B*n]`` (batch
        ``[B*n]``): ``x_b . a_{b,j} - sum softplus(a_{b,j})``, ``x`` broadcast over the ``n`` copies
        instead of copied (:func:`~ovis.distributions.utils.repeated_log_prob`)."""
        B = x.shape[0]
        if (len(self.batch_shape) != 1 or self.batch_shape[0] != B * n or self.event_dims == 0
                or tuple(x.shape[1:]) != tuple(self.event_shape)):
            return self.log_prob(x.unsqueeze(1).expand(B, n, *x.shape[1:]).reshape(B * n, *x.shape[1:]))
        a = self.logits.reshape(B, n, -1)
        xa = (a * x.reshape(B, 1, -1).to(a.dtype)).sum(-1)
        return (xa - F.softplus(a).sum(-1)).reshape(B * n)

    # the default torch.Size() is an immutable tuple, as in torch.distributions.Distribution
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        r"""``1[u < sigmoid(a)]`` with uniforms ``u`` (no gradient), shape ``sample_shape + logits.shape``,
        in the logits' dtype.
        """
        with torch.no_grad():
            p = self.probs.expand(torch.Size(sample_shape) + self.logits.shape)
            return (torch.rand_like(p) < p).to(p.dtype)

    def entropy(self) -> Tensor:
        r""":math:`\sum_{event} \mathrm{softplus}(a) - \sigma(a)\,a`, shape ``batch_shape``."""
        p = self.probs
        return self._reduce(F.softplus(self.logits) - p * self.logits)
