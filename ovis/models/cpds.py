r"""Prior nets and conditional-distribution (CPD) nets: ``nn.Module``\ s that return
``torch.distributions`` objects, the components a one-layer VAE is assembled from.

**Prior nets** ``forward(batch_shape=()) -> p(z)`` with batch shape ``batch_shape`` and the
latent's event shape:

* :class:`StandardNormalPrior`: :math:`p(z) = \mathcal{N}(0, I_N)`; with ``learn=True`` the mean
  :math:`m` and log-scale :math:`\log s` are parameters (initialised at 0).
* :class:`MixtureOfGaussiansPrior`: :math:`p(z) = \sum_{c=1}^C \pi_c\,\mathcal{N}(z; m_c,
  \mathrm{diag}\,s_c^2)`, :math:`\pi = \mathrm{softmax}(\ell)`, every parameter learned
  (``MixtureSameFamily``; the means start at :math:`\mathcal{N}(0, I)` draws so the components
  differ).
* :class:`BernoulliPrior` (``z in {0,1}^N``) and :class:`CategoricalPrior` (``N`` one-hot
  variables of ``K`` classes), uniform unless ``learn``; relaxed (concrete / Gumbel-softmax,
  Maddison et al. 2017; Jang et al. 2017) at temperature ``tau`` when ``relaxed=True``.

**CPD nets** ``forward(h) -> p(y|h)``: a network ``net`` (:mod:`ovis.models.nets`) maps the
conditioning input ``h = [*batch, *in_shape]`` to the distribution's parameters
``[*batch, *param_shape]`` (or ``[*batch, prod(param_shape)]``); the distribution has batch shape
``batch`` and the event shape of one ``y``:

* over latents: :class:`GaussianMeanFieldCPD` (:math:`\mathcal{N}(\mu(h), \mathrm{diag}\,
  \sigma(h)^2)`, ``net`` output ``2N``: ``(mu, log sigma)``), :class:`MixtureOfGaussianMeanFieldsCPD`
  (``C`` such components and their logits, ``net`` output ``C (1 + 2N)``: ``C`` logits then
  ``C`` blocks ``(mu_c, log sigma_c)``; no ``rsample``), :class:`BernoulliCPD`,
  :class:`CategoricalCPD` (relaxed on request);
* over images ``x_shape``: :class:`BernoulliImageCPD` (:math:`\prod_i \mathrm{Bern}(x_i;
  \sigma(\eta_i(h)))`, binary images) and :class:`ContinuousBernoulliImageCPD`
  (:math:`\prod_i C(\lambda_i)\lambda_i^{x_i}(1-\lambda_i)^{1-x_i}`, grey levels in ``[0, 1]``;
  Loaiza-Ganem & Cunningham 2019).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    ContinuousBernoulli,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    OneHotCategorical,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
)

from ovis.distributions.bernoulli import BernoulliLogits

__all__ = [
    "PriorNet",
    "StandardNormalPrior",
    "MixtureOfGaussiansPrior",
    "BernoulliPrior",
    "CategoricalPrior",
    "CPDNet",
    "GaussianMeanFieldCPD",
    "MixtureOfGaussianMeanFieldsCPD",
    "BernoulliCPD",
    "CategoricalCPD",
    "BernoulliImageCPD",
    "ContinuousBernoulliImageCPD",
]


def _batch_shape(batch_shape: int | Sequence[int]) -> Tuple[int, ...]:
    if isinstance(batch_shape, bool):
        raise TypeError(f"batch_shape must be an int or a sequence of ints, got {batch_shape!r}")
    out = (int(batch_shape),) if isinstance(batch_shape, int) else tuple(int(b) for b in batch_shape)
    if any(b < 0 for b in out):
        raise ValueError(f"batch_shape must have sizes >= 0, got {out}")
    return out


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _relaxation(relaxed: bool, tau: Optional[Tensor | float], like: Tensor) -> Optional[Tensor]:
    r"""The temperature as a tensor on ``like``'s device (``None`` when not ``relaxed``).

    A number is checked (> 0) and made a ``like.dtype`` scalar; a tensor is moved to the device and
    checked only when it lives on the CPU (a check of a GPU tensor would stop the host at every
    pass: its maker checks it, e.g. ``VAE._tau``, or keeps it positive, e.g. ``exp`` of a learned
    log-temperature).
    """
    if not relaxed:
        return None
    if tau is None:
        raise ValueError("relaxed=True needs a temperature tau > 0")
    if isinstance(tau, Tensor):
        if tau.device.type == "cpu" and not bool((tau > 0).all()):
            raise ValueError(f"the temperature tau must be > 0, got {tau}")
        return tau.to(device=like.device, dtype=like.dtype)
    if not float(tau) > 0:
        raise ValueError(f"the temperature tau must be > 0, got {tau}")
    return torch.tensor(float(tau), dtype=like.dtype, device=like.device)


# ------------------------------------------------------------------------------- prior nets
class PriorNet(nn.Module):
    r"""A prior :math:`p(z)`: ``forward(batch_shape) -> Distribution`` with batch shape
    ``batch_shape`` and event shape ``event_shape``."""

    event_shape: torch.Size

    def forward(self, batch_shape: int | Sequence[int] = ()) -> Distribution:  # pragma: no cover
        r"""The prior with batch shape ``batch_shape`` (an int or a sequence) and event shape
        ``event_shape`` (every subclass implements it).
        """
        raise NotImplementedError


class StandardNormalPrior(PriorNet):
    r"""``N(0, I_N)``; with ``learn`` the mean ``loc`` and ``log_scale`` (``[N]``) are learned."""

    def __init__(self, N: int, learn: bool = False) -> None:
        super().__init__()
        self.N = _positive(N, "N")
        self.event_shape = torch.Size([self.N])
        self.loc = nn.Parameter(torch.zeros(self.N), requires_grad=bool(learn))
        self.log_scale = nn.Parameter(torch.zeros(self.N), requires_grad=bool(learn))

    def forward(self, batch_shape: int | Sequence[int] = ()) -> Distribution:
        r"""``Independent(Normal(loc, exp(log_scale)), 1)`` with batch shape ``batch_shape``, event ``[N]``."""
        shape = (*_batch_shape(batch_shape), self.N)
        return Independent(Normal(self.loc.expand(shape), self.log_scale.exp().expand(shape)), 1)


class MixtureOfGaussiansPrior(PriorNet):
    r"""A learned mixture of ``C`` diagonal Gaussians in ``N`` dimensions (``MixtureSameFamily``):
    ``logits [C]`` (0), ``locs [C, N]`` (standard normal draws), ``log_scales [C, N]`` (0)."""

    def __init__(self, N: int, C: int) -> None:
        super().__init__()
        self.N, self.C = _positive(N, "N"), _positive(C, "C (mixture components)")
        self.event_shape = torch.Size([self.N])
        self.logits = nn.Parameter(torch.zeros(self.C))
        self.locs = nn.Parameter(torch.randn(self.C, self.N))
        self.log_scales = nn.Parameter(torch.zeros(self.C, self.N))

    def forward(self, batch_shape: int | Sequence[int] = ()) -> Distribution:
        r"""The ``MixtureSameFamily`` of the ``C`` diagonal Gaussians, batch shape ``batch_shape``, event ``[N]``."""
        b = _batch_shape(batch_shape)
        mix = Categorical(logits=self.logits.expand(*b, self.C))
        comp = Independent(Normal(self.locs.expand(*b, self.C, self.N),
                                  self.log_scales.exp().expand(*b, self.C, self.N)), 1)
        return MixtureSameFamily(mix, comp)


class BernoulliPrior(PriorNet):
    r"""``N`` independent Bernoulli latents, logits ``[N]`` (0: uniform; learned with ``learn``);
    ``forward(batch_shape, relaxed=True, tau=t)`` gives the ``RelaxedBernoulli`` at temperature t."""

    def __init__(self, N: int, learn: bool = False) -> None:
        super().__init__()
        self.N = _positive(N, "N")
        self.event_shape = torch.Size([self.N])
        self.logits = nn.Parameter(torch.zeros(self.N), requires_grad=bool(learn))

    def forward(self, batch_shape: int | Sequence[int] = (), relaxed: bool = False,
                tau: Optional[Tensor | float] = None) -> Distribution:
        r"""``Independent(Bernoulli(logits), 1)`` with batch shape ``batch_shape`` and event ``[N]``.

        Args:
            batch_shape: the batch shape (an int or a sequence).
            relaxed: return the ``RelaxedBernoulli`` at temperature ``tau`` instead.
            tau: the temperature (``> 0``), required when ``relaxed``.

        Raises:
            ValueError: ``relaxed`` without a temperature, or ``tau <= 0``.
        """
        logits = self.logits.expand(*_batch_shape(batch_shape), self.N)
        t = _relaxation(relaxed, tau, logits)
        return Independent(RelaxedBernoulli(t, logits=logits) if t is not None else Bernoulli(logits=logits), 1)


class CategoricalPrior(PriorNet):
    r"""``N`` one-hot categorical latents of ``K`` classes, logits ``[N, K]`` (0: uniform; learned
    with ``learn``); event shape ``[N, K]``; relaxed (``RelaxedOneHotCategorical``) on request."""

    def __init__(self, N: int, K: int, learn: bool = False) -> None:
        super().__init__()
        self.N, self.K = _positive(N, "N"), _positive(K, "K")
        if self.K < 2:
            raise ValueError(f"a categorical latent needs K >= 2 classes, got K={K}")
        self.event_shape = torch.Size([self.N, self.K])
        self.logits = nn.Parameter(torch.zeros(self.N, self.K), requires_grad=bool(learn))

    def forward(self, batch_shape: int | Sequence[int] = (), relaxed: bool = False,
                tau: Optional[Tensor | float] = None) -> Distribution:
        r"""``Independent(OneHotCategorical(logits), 1)`` with batch shape ``batch_shape`` and event
        ``[N, K]``.

        Args:
            batch_shape: the batch shape (an int or a sequence).
            relaxed: return the ``RelaxedOneHotCategorical`` at temperature ``tau`` instead.
            tau: the temperature (``> 0``), required when ``relaxed``.

        Raises:
            ValueError: ``relaxed`` without a temperature, or ``tau <= 0``.
        """
        logits = self.logits.expand(*_batch_shape(batch_shape), self.N, self.K)
        t = _relaxation(relaxed, tau, logits)
        d = RelaxedOneHotCategorical(t, logits=logits) if t is not None else OneHotCategorical(logits=logits)
        return Independent(d, 1)


# --------------------------------------------------------------------------------- CPD nets
class CPDNet(nn.Module):
    r"""A conditional distribution ``p(y|h)``: ``net(h)`` gives the parameters
    ``[*batch, *param_shape]`` (or ``[*batch, prod(param_shape)]``), :meth:`distribution` turns
    them into a distribution of batch shape ``batch``.

    Args:
        net: a network ``[*batch, *in_shape] -> [*batch, ...]`` (:mod:`ovis.models.nets`).
    """

    param_shape: Tuple[int, ...]

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        self.net = net

    def params(self, h: Tensor) -> Tensor:
        r"""``net(h)`` reshaped to ``[*batch, *param_shape]``."""
        out = self.net(h)
        k, p = len(self.param_shape), math.prod(self.param_shape)
        if out.dim() >= k and tuple(out.shape[out.dim() - k:]) == self.param_shape:
            return out
        if out.dim() >= 1 and out.shape[-1] == p:
            return out.reshape(*out.shape[:-1], *self.param_shape)
        raise ValueError(f"{type(self).__name__}: the network returned {tuple(out.shape)}; expected "
                         f"[*batch, {', '.join(map(str, self.param_shape))}] or [*batch, {p}] parameters")

    def forward(self, h: Tensor) -> Distribution:
        r"""``p(y|h)``: :meth:`distribution` of :meth:`params` (``h`` ``[*batch, *in_shape]``; batch shape
        ``batch``)."""
        return self.distribution(self.params(h))

    def distribution(self, params: Tensor) -> Distribution:  # pragma: no cover
        r"""The distribution of parameters ``[*batch, *param_shape]``, batch shape ``batch`` (every subclass
        implements it).
        """
        raise NotImplementedError


class GaussianMeanFieldCPD(CPDNet):
    r"""``N(mu(h), diag sigma(h)^2)`` over ``[N]``; ``net`` output ``2N`` = ``(mu, log sigma)``."""

    def __init__(self, net: nn.Module, N: int) -> None:
        super().__init__(net)
        self.N = _positive(N, "N")
        self.param_shape = (2 * self.N,)

    def distribution(self, params: Tensor) -> Distribution:
        r"""``Independent(Normal(mu, exp(log sigma)), 1)`` from parameters ``[*batch, 2N]``; event ``[N]``."""
        loc, log_scale = params.chunk(2, dim=-1)
        return Independent(Normal(loc, log_scale.exp()), 1)


class MixtureOfGaussianMeanFieldsCPD(CPDNet):
    r"""``sum_c pi_c(h) N(mu_c(h), diag sigma_c(h)^2)`` over ``[N]`` (``MixtureSameFamily``, no
    ``rsample``); ``net`` output ``C (1 + 2N)``: ``C`` logits, then ``C`` blocks ``(mu_c, log sigma_c)``."""

    def __init__(self, net: nn.Module, N: int, C: int) -> None:
        super().__init__(net)
        self.N, self.C = _positive(N, "N"), _positive(C, "C (mixture components)")
        self.param_shape = (self.C * (1 + 2 * self.N),)

    def distribution(self, params: Tensor) -> Distribution:
        r"""The ``MixtureSameFamily`` from parameters ``[*batch, C (1 + 2N)]`` (``C`` logits, then ``C`` blocks
        ``(mu_c, log sigma_c)``); event ``[N]``.
        """
        C, N = self.C, self.N
        logits, rest = params[..., :C], params[..., C:].reshape(*params.shape[:-1], C, 2 * N)
        loc, log_scale = rest.chunk(2, dim=-1)
        return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, log_scale.exp()), 1))


class BernoulliCPD(CPDNet):
    r"""``N`` Bernoulli latents with logits ``net(h)`` (``[N]``); ``forward(h, relaxed=True, tau=t)``
    gives the ``RelaxedBernoulli`` at temperature t."""

    def __init__(self, net: nn.Module, N: int) -> None:
        super().__init__(net)
        self.N = _positive(N, "N")
        self.param_shape = (self.N,)

    def forward(self, h: Tensor, relaxed: bool = False, tau: Optional[Tensor | float] = None) -> Distribution:
        r"""``p(z|h)``: ``Independent(Bernoulli(logits=net(h)), 1)``, event ``[N]``.

        Args:
            h: the conditioning input ``[*batch, *in_shape]``.
            relaxed: return the ``RelaxedBernoulli`` at temperature ``tau`` instead.
            tau: the temperature (``> 0``), required when ``relaxed``.

        Raises:
            ValueError: ``relaxed`` without a temperature, ``tau <= 0``, or a network output of the
                wrong shape.
        """
        return self.distribution(self.params(h), relaxed, tau)

    def distribution(self, params: Tensor, relaxed: bool = False,
                     tau: Optional[Tensor | float] = None) -> Distribution:
        r"""The (relaxed, with ``relaxed`` and ``tau``) Bernoulli of logits ``params`` ``[*batch, N]``,
        event ``[N]``."""
        t = _relaxation(relaxed, tau, params)
        return Independent(RelaxedBernoulli(t, logits=params) if t is not None else Bernoulli(logits=params), 1)


class CategoricalCPD(CPDNet):
    r"""``N`` one-hot categorical latents of ``K`` classes, logits ``net(h)`` (``[N, K]``); event
    ``[N, K]``; relaxed (``RelaxedOneHotCategorical``) on request."""

    def __init__(self, net: nn.Module, N: int, K: int) -> None:
        super().__init__(net)
        self.N, self.K = _positive(N, "N"), _positive(K, "K")
        if self.K < 2:
            raise ValueError(f"a categorical latent needs K >= 2 classes, got K={K}")
        self.param_shape = (self.N, self.K)

    def forward(self, h: Tensor, relaxed: bool = False, tau: Optional[Tensor | float] = None) -> Distribution:
        r"""``p(z|h)``: ``Independent(OneHotCategorical(logits=net(h)), 1)``, event ``[N, K]``.

        Args:
            h: the conditioning input ``[*batch, *in_shape]``.
            relaxed: return the ``RelaxedOneHotCategorical`` at temperature ``tau`` instead.
            tau: the temperature (``> 0``), required when ``relaxed``.

        Raises:
            ValueError: ``relaxed`` without a temperature, ``tau <= 0``, or a network output of the
                wrong shape.
        """
        return self.distribution(self.params(h), relaxed, tau)

    def distribution(self, params: Tensor, relaxed: bool = False,
                     tau: Optional[Tensor | float] = None) -> Distribution:
        r"""The (relaxed, with ``relaxed`` and ``tau``) one-hot categorical of logits ``params``
        ``[*batch, N, K]``, event ``[N, K]``.
        """
        t = _relaxation(relaxed, tau, params)
        d = RelaxedOneHotCategorical(t, logits=params) if t is not None else OneHotCategorical(logits=params)
        return Independent(d, 1)


class _ImageCPD(CPDNet):
    def __init__(self, net: nn.Module, x_shape: Sequence[int]) -> None:
        super().__init__(net)
        self.x_shape = torch.Size(int(s) for s in x_shape)
        if len(self.x_shape) == 0 or any(s < 1 for s in self.x_shape):
            raise ValueError(f"x_shape must be a non-empty shape of positive sizes, got {tuple(x_shape)}")
        self.param_shape = tuple(self.x_shape)


class BernoulliImageCPD(_ImageCPD):
    r"""``prod_i Bern(x_i; sigmoid(eta_i(h)))`` over ``x_shape`` (binary images); ``net(h)`` the logits."""

    def distribution(self, params: Tensor) -> Distribution:
        r"""``BernoulliLogits(params)`` over the last ``len(x_shape)`` dimensions: the distribution of
        ``Independent(Bernoulli(logits=params))`` with the direct log mass
        (:func:`~ovis.distributions.bernoulli.bernoulli_log_mass`: two passes over the logits instead
        of ``binary_cross_entropy_with_logits``'s five, the largest term of a VAE's likelihood)."""
        return BernoulliLogits(params, len(self.x_shape))


class ContinuousBernoulliImageCPD(_ImageCPD):
    r"""``prod_i CB(x_i; lambda_i(h))`` over ``x_shape``, ``x_i in [0, 1]`` (grey levels), with the
    normalising constant; ``net(h)`` the logits of ``lambda``.  Its ``mean`` is not ``lambda``."""

    def distribution(self, params: Tensor) -> Distribution:
        r"""``Independent(ContinuousBernoulli(logits=params), len(x_shape))`` for logits ``[*batch, *x_shape]``."""
        return Independent(ContinuousBernoulli(logits=params), len(self.x_shape))
