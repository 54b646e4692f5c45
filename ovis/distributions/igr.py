r"""Invertible Gaussian Reparameterization (IGR; Potapczynski, Loaiza-Ganem & Cunningham, NeurIPS 2020).

A relaxed categorical variable on the simplex :math:`\Delta^{K-1}` is built from Gaussian noise
:math:`y = \mu + \sigma\,\epsilon \in \mathbb{R}^{K-1}`, :math:`\epsilon \sim N(0, I)`, pushed through an
invertible map at temperature :math:`\tau`:

* **IGR-I** (:class:`IGRI`): the invertible ``softmax++``

  .. math:: g_k(y) = \frac{\exp(y_k/\tau)}{\sum_{j<K}\exp(y_j/\tau) + \delta}\quad (k < K),
            \qquad g_K(y) = 1 - \sum_{k<K} g_k(y) = \frac{\delta}{\sum_{j<K}\exp(y_j/\tau) + \delta},

  i.e. ``softmax([y/tau, log(delta)])`` (computed that way, which keeps the last coordinate exact
  in floating point).  Inverse: :math:`y_k = \tau(\log z_k - \log z_K + \log\delta)`.  Jacobian of
  :math:`y \mapsto z_{1:K-1}`: :math:`\tau^{-1}(\mathrm{diag}(z) - zz^\top)`, so
  :math:`\log|\det| = -(K-1)\log\tau + \sum_{k=1}^{K}\log z_k` (matrix determinant lemma).
* **IGR-Planar** (:class:`IGRPlanar`): ``L`` planar flows
  :math:`f(y) = y + \hat u\,\tanh(w^\top y + b)` (Rezende & Mohamed 2015, with
  :math:`\hat u = u + (m(w^\top u) - w^\top u)\,w/\|w\|^2`, :math:`m(a) = -1 + \mathrm{softplus}(a)`,
  which keeps :math:`w^\top\hat u \ge -1`: invertible) before ``softmax++``.  The inverse solves the
  scalar equation :math:`w^\top y' = a + w^\top\hat u\tanh(a + b)` for :math:`a = w^\top y` by
  bisection (monotone), then :math:`y = y' - \hat u\tanh(a + b)`.
* **IGR-SB** (:class:`IGRSB`): stick-breaking over ``M = max_categories`` categories with
  :math:`M-1` sticks :math:`v_k = \mathrm{sigmoid}(y_k/\tau)`,
  :math:`z_k = v_k\prod_{j<k}(1 - v_j)`; truncated as soon as the remaining stick
  :math:`\prod_{j\le k}(1-v_j)` falls to ``1 - threshold`` or below (the ``precision`` of the
  paper, default 0.99): the next category receives the whole remaining stick and the later ones
  are 0.  When the ``M-1`` sticks do not reach the threshold the maximum number of categories
  truncates (category ``M`` receives the rest): this is *reported* by
  :attr:`IGRSB.max_truncations` (a running count of such samples) and
  :meth:`IGRSB.truncated_by_max` (a boolean tensor for given noise).  Without truncation
  (``threshold = 1``) the map is invertible:
  :math:`v_k = z_k / (1 - \sum_{j<k} z_j)`, :math:`y_k = \tau\,\mathrm{logit}(v_k)`.

**KL divergence.** The map is the same invertible function for ``q`` and ``p`` (same temperature,
``delta`` and flow), and KL divergence is invariant under a common invertible change of variables, so
:math:`KL(q_z \| p_z) = KL(q_y \| p_y)`: the closed-form KL of the diagonal Gaussians, registered with
:func:`torch.distributions.kl.register_kl` for two distributions of the same kind.  For IGR-SB with
truncation the map is not injective; the Gaussian KL is then an *upper bound* of the KL of the
truncated pushforwards (data-processing inequality), equal to it when ``threshold = 1``.
Distributions that do not share the map raise ``ValueError``.

**Densities.** ``log_prob(z)`` of IGR-I and IGR-Planar is the density on the simplex w.r.t. the
Lebesgue measure on the first ``K-1`` coordinates: :math:`\log N(g^{-1}(z);\mu,\sigma^2) -
\log|\det \partial g/\partial y|`.  A sample's noise is cached (by identity of the returned tensor,
like :class:`torch.distributions.transforms.Transform`'s cache) so that ``log_prob`` of one's own
``rsample`` does not go through the numerical inverse.  IGR-SB has a density only without
truncation (``threshold = 1``); otherwise ``log_prob`` raises.  Models that need ``log q - log p``
(the importance weights) compute it in ``y``-space instead (see :mod:`ovis.models.discrete_vae`):
the Jacobian term is common to ``q`` and ``p`` and cancels.

**The categorical an IGR relaxes.**  As ``tau -> 0`` a relaxed sample becomes a vertex of the
simplex (a one-hot ``z``), so each IGR distribution relaxes a categorical distribution, the
*induced categorical* :meth:`IGRBase.categorical_log_probs` (what the discrete model is scored
with in a one-hot evaluation, :mod:`ovis.models.discrete_vae`):

* IGR-I: ``argmax([y, 0])`` (``softmax++`` at ``tau -> 0``; ``tau log delta -> 0``):
  :math:`P(K) = \prod_j \Phi(-\mu_j/\sigma_j)` and, for :math:`k < K`,
  :math:`P(k) = \int_0^\infty N(t; \mu_k, \sigma_k^2)\prod_{j \ne k}\Phi((t - \mu_j)/\sigma_j)\,dt`,
  computed by Gauss-Legendre quadrature after the change of variables that makes the truncated
  normal uniform (:func:`igr_i_categorical_log_probs`; about 1e-3 from the exact value at worst with the default 32 nodes, 2e-4 with 64; normalised, so the
  one-hot bound drawn from it is valid whatever the quadrature error);
* IGR-SB: the first ``k`` with ``y_k > 0`` (the last category when there is none):
  :math:`P(k) = \Phi(\mu_k/\sigma_k)\prod_{j<k}\Phi(-\mu_j/\sigma_j)` (exact; the threshold does
  not matter at ``tau -> 0``);
* IGR-Planar: ``argmax([flow(y), 0])``, no closed form: the argmax frequencies of ``num_samples``
  draws (a Monte Carlo estimate, itself a categorical distribution).

:func:`uniform_prior_params` gives the noise prior whose induced categorical is the uniform over the
``K`` categories (closed form for IGR-I and IGR-SB; IGR-Planar uses IGR-I's, uniform at the flow's
near-identity initialisation): the prior the IGR paper fits to the uniform.

Shapes: parameters ``loc``, ``scale`` are ``[*batch, K-1]`` (``[*batch, M-1]`` for IGR-SB);
samples are ``[*sample, *batch, K]`` (``[..., M]``), ``event_shape = (K,)``.  The Gaussian noise is
:attr:`IGRBase.noise` (``Independent(Normal(loc, scale), 1)``, event ``(K-1,)``).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, constraints
from torch.distributions.kl import kl_divergence, register_kl

__all__ = ["IGRBase", "IGRI", "IGRPlanar", "IGRSB", "softmax_pp", "softmax_pp_inverse",
           "igr_i_categorical_log_probs", "igr_sb_categorical_log_probs", "uniform_prior_params"]


def _as_tensor(value: Any, like: Tensor, name: str, positive: bool = False) -> Tensor:
    r"""``value`` as a tensor of ``like``'s dtype and device, checked finite (and > 0 with
    ``positive``) when it is a number or a CPU tensor; a tensor on another device is not checked
    (that would stop the host at every construction: its maker checks it)."""
    # device: a number checked on the CPU, then moved
    t = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=like.dtype)
    if t.device.type == "cpu":
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if positive and not bool((t > 0).all()):
            raise ValueError(f"{name} must be > 0, got {value!r}")
    return t.to(dtype=like.dtype, device=like.device)


def softmax_pp(y: Tensor, tau: Tensor, delta: Tensor) -> Tensor:
    r"""``softmax++``: ``[..., K-1] -> [..., K]``, ``softmax([y/tau, log delta])`` (see the module)."""
    pad = (torch.log(delta) + torch.zeros_like(y[..., :1])).expand(*y.shape[:-1], 1)
    return torch.softmax(torch.cat([y / tau, pad], dim=-1), dim=-1)


def _log_softmax_pp(y: Tensor, tau: Tensor, delta: Tensor) -> Tensor:
    pad = (torch.log(delta) + torch.zeros_like(y[..., :1])).expand(*y.shape[:-1], 1)
    return torch.log_softmax(torch.cat([y / tau, pad], dim=-1), dim=-1)


def softmax_pp_inverse(z: Tensor, tau: Tensor, delta: Tensor) -> Tensor:
    r"""Inverse of :func:`softmax_pp`: ``y_k = tau (log z_k - log z_K + log delta)``, ``[..., K] -> [..., K-1]``.

    Needs ``z_k > 0`` (interior of the simplex); a coordinate that underflowed to 0 gives ``-inf``."""
    log_z = torch.log(z)
    return tau * (log_z[..., :-1] - log_z[..., -1:] + torch.log(delta))


class IGRBase(Distribution):
    r"""Common part of the IGR distributions (Gaussian noise, temperature, sampling, caching).

    Args:
        loc: noise mean, ``[*batch, d]``.
        scale: noise standard deviation (> 0), same shape.
        temperature: ``tau > 0`` (scalar or broadcastable to the batch).
        delta: the ``softmax++`` constant (> 0, default 1).
    """

    has_rsample = True
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive,
                       "temperature": constraints.positive, "delta": constraints.positive}

    def __init__(self, loc: Tensor, scale: Tensor, temperature: Any, delta: Any = 1.0,
                 validate_args: Optional[bool] = None) -> None:
        if not isinstance(loc, Tensor) or loc.dim() < 1 or loc.shape[-1] < 1:
            raise ValueError("loc must be a tensor of shape [*batch, d] with d >= 1 "
                             "(d = K-1 noise coordinates for K categories)")
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        loc, scale = torch.broadcast_tensors(loc, scale)
        self.loc, self.scale = loc, scale
        self.temperature = _as_tensor(temperature, loc, "temperature", positive=True)
        self.delta = _as_tensor(delta, loc, "delta", positive=True)
        self._cache: Optional[tuple] = None
        super().__init__(loc.shape[:-1], torch.Size([self.event_size]), validate_args=validate_args)

    # -- the map ---------------------------------------------------------------------------
    @property
    def noise_dim(self) -> int:
        r"""``d``, the dimension of the Gaussian noise (``K-1``; ``M-1`` for IGR-SB)."""
        return int(self.loc.shape[-1])

    @property
    def event_size(self) -> int:
        r"""``d + 1``, the number of categories ``K`` (the sample's last dimension)."""
        return self.noise_dim + 1

    @property
    def noise(self) -> Distribution:
        r"""The Gaussian noise distribution of ``y``: ``Independent(Normal(loc, scale), 1)``."""
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        r"""The probability simplex over the ``d + 1`` categories."""
        return constraints.simplex

    def transform(self, y: Tensor) -> Tensor:
        r"""The invertible map ``y [..., d] -> z [..., d+1]`` on the simplex."""
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:
        r"""The inverse map ``z -> y``."""
        raise NotImplementedError

    def log_abs_det_jacobian(self, y: Tensor) -> Tensor:
        r"""``log |det d z_{1:d} / d y|`` at ``y``, shape ``y.shape[:-1]``."""
        raise NotImplementedError

    def same_map(self, other: "IGRBase") -> bool:
        r"""Whether ``other`` pushes its noise through the same map (same kind, tau, delta, ...)."""
        return (type(self) is type(other) and self.noise_dim == other.noise_dim
                and torch.equal(self.temperature, other.temperature.to(self.temperature))
                and torch.equal(self.delta, other.delta.to(self.delta)))

    # -- sampling --------------------------------------------------------------------------
    # the default torch.Size() is an immutable tuple, as in torch.distributions.Distribution
    def rsample_noise(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        r"""A reparameterised draw of the Gaussian noise ``y = loc + scale * eps``."""
        shape = self._extended_shape(sample_shape)[:-1] + (self.noise_dim,)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    # the default torch.Size() is an immutable tuple, as in torch.distributions.Distribution
    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        r"""A reparameterised sample ``z = transform(loc + scale * eps)``, ``[*sample_shape, *batch, d+1]``;
        its noise is cached so that ``log_prob(z)`` of this very tensor skips the numerical inverse.
        """
        y = self.rsample_noise(torch.Size(sample_shape))
        z = self.transform(y)
        self._cache = (z, y)
        return z

    # the default torch.Size() is an immutable tuple, as in torch.distributions.Distribution
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        r""":meth:`rsample` without gradient."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def _noise_of(self, z: Tensor) -> Tensor:
        if self._cache is not None and self._cache[0] is z:
            return self._cache[1]
        return self.inverse(z)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Density on the simplex (Lebesgue measure on the first ``K-1`` coordinates)."""
        if self._validate_args:
            self._validate_sample(value)
        y = self._noise_of(value)
        return self.noise.log_prob(y) - self.log_abs_det_jacobian(y)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> "IGRBase":
        r"""The same distribution with ``loc`` and ``scale`` expanded to ``batch_shape`` (no copy)."""
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + (self.noise_dim,)
        return self._rebuild(self.loc.expand(shape), self.scale.expand(shape))

    def _rebuild(self, loc: Tensor, scale: Tensor) -> "IGRBase":
        return type(self)(loc, scale, self.temperature, self.delta, validate_args=False)

    @property
    def mean(self) -> Tensor:
        r"""Not available.

        Raises:
            NotImplementedError: always: IGR distributions have no closed-form mean; average ``rsample()``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no closed-form mean; average rsample()")

    def _pre_softmax(self, y: Tensor) -> Tensor:
        r"""What ``softmax++`` is applied to (``y``; IGR-Planar: ``flow(y)``)."""
        return y

    def categorical_log_probs(self, num_samples: int = 1000) -> Tensor:
        r"""Log-probabilities ``[*batch, K]`` of the categorical this distribution relaxes (the
        ``tau -> 0`` limit of its samples; see the module docstring).  ``num_samples``: draws of
        the Monte Carlo estimate where there is no closed form (IGR-Planar)."""
        y = self._pre_softmax(self.rsample_noise(torch.Size([num_samples])).detach())
        cat = torch.cat([y, torch.zeros_like(y[..., :1])], dim=-1).argmax(-1)
        counts = F.one_hot(cat, self.event_size).to(self.loc.dtype).mean(0)
        return torch.log(counts)


class IGRI(IGRBase):
    r"""IGR-I: ``z = softmax++((loc + scale * eps) / tau)`` (see the module docstring)."""

    def transform(self, y: Tensor) -> Tensor:
        return softmax_pp(y, self.temperature, self.delta)

    def inverse(self, z: Tensor) -> Tensor:
        return softmax_pp_inverse(z, self.temperature, self.delta)

    def log_abs_det_jacobian(self, y: Tensor) -> Tensor:
        d = y.shape[-1]
        log_z = _log_softmax_pp(y, self.temperature, self.delta)
        return log_z.sum(-1) - d * torch.log(self.temperature)

    def categorical_log_probs(self, num_samples: int = 1000) -> Tensor:
        r"""The induced categorical of ``argmax([y, 0])`` by quadrature (``num_samples`` unused)."""
        return igr_i_categorical_log_probs(self.loc, self.scale)


class IGRPlanar(IGRBase):
    r"""IGR-Planar: ``L`` planar flows, then ``softmax++`` (see the module docstring).

    Args:
        loc, scale, temperature, delta: as :class:`IGRBase`.
        flow_u, flow_w: ``[L, d]`` flow vectors (shared by the whole batch).
        flow_b: ``[L]`` flow offsets.
    """

    arg_constraints = dict(IGRBase.arg_constraints, flow_u=constraints.real,
                           flow_w=constraints.real, flow_b=constraints.real)

    def __init__(self, loc: Tensor, scale: Tensor, temperature: Any, flow_u: Tensor,
                 flow_w: Tensor, flow_b: Tensor, delta: Any = 1.0,
                 validate_args: Optional[bool] = None) -> None:
        d = loc.shape[-1]
        if flow_u.dim() != 2 or flow_u.shape != flow_w.shape or flow_u.shape[1] != d \
                or flow_b.shape != flow_u.shape[:1]:
            raise ValueError(f"planar flow parameters must be flow_u, flow_w of shape [L, {d}] and "
                             f"flow_b of shape [L]; got {tuple(flow_u.shape)}, {tuple(flow_w.shape)}, "
                             f"{tuple(flow_b.shape)}")
        self.flow_u, self.flow_w, self.flow_b = flow_u, flow_w, flow_b
        super().__init__(loc, scale, temperature, delta, validate_args=validate_args)

    def _rebuild(self, loc: Tensor, scale: Tensor) -> "IGRPlanar":
        return IGRPlanar(loc, scale, self.temperature, self.flow_u, self.flow_w, self.flow_b,
                         self.delta, validate_args=False)

    @property
    def num_flows(self) -> int:
        r"""``L``, the number of planar flows."""
        return int(self.flow_u.shape[0])

    def _u_hat(self, l: int) -> Tensor:
        u, w = self.flow_u[l], self.flow_w[l]
        wu = (w * u).sum()
        return u + (F.softplus(wu) - 1.0 - wu) * w / (w * w).sum().clamp_min(1e-12)

    def flow(self, y: Tensor) -> Tensor:
        r"""The planar flows ``y -> y'`` (same shape)."""
        for l in range(self.num_flows):
            y = y + self._u_hat(l) * torch.tanh(y @ self.flow_w[l] + self.flow_b[l]).unsqueeze(-1)
        return y

    def flow_inverse(self, y: Tensor, iters: int = 64) -> Tensor:
        r"""Inverse of :meth:`flow` (bisection on ``a = w^T y`` per layer, then one Newton step
        with gradients so that the result is differentiable in ``y`` and the parameters)."""
        for l in reversed(range(self.num_flows)):
            u, w, b = self._u_hat(l), self.flow_w[l], self.flow_b[l]
            wu = (w * u).sum()
            target = y @ w  # = a + wu * tanh(a + b), monotone non-decreasing in a
            with torch.no_grad():
                lo = target.detach() - wu.detach().abs() - 1.0
                hi = target.detach() + wu.detach().abs() + 1.0
                for _ in range(iters):
                    mid = 0.5 * (lo + hi)
                    above = mid + wu.detach() * torch.tanh(mid + b.detach()) > target.detach()
                    hi = torch.where(above, mid, hi)
                    lo = torch.where(above, lo, mid)
                a0 = 0.5 * (lo + hi)
            # one Newton step carries the gradient (implicit function theorem at the root)
            resid = a0 + wu * torch.tanh(a0 + b) - target
            a = a0 - resid / (1.0 + wu * (1.0 - torch.tanh(a0 + b) ** 2))
            y = y - u * torch.tanh(a + b).unsqueeze(-1)
        return y

    def transform(self, y: Tensor) -> Tensor:
        return softmax_pp(self.flow(y), self.temperature, self.delta)

    def _pre_softmax(self, y: Tensor) -> Tensor:
        with torch.no_grad():
            return self.flow(y)

    def inverse(self, z: Tensor) -> Tensor:
        return self.flow_inverse(softmax_pp_inverse(z, self.temperature, self.delta))

    def log_abs_det_jacobian(self, y: Tensor) -> Tensor:
        total = torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
        for l in range(self.num_flows):
            u, w, b = self._u_hat(l), self.flow_w[l], self.flow_b[l]
            t = torch.tanh(y @ w + b)
            total = total + torch.log((1.0 + (1.0 - t ** 2) * (w * u).sum()).abs())
            y = y + u * t.unsqueeze(-1)
        d = y.shape[-1]
        log_z = _log_softmax_pp(y, self.temperature, self.delta)
        return total + log_z.sum(-1) - d * torch.log(self.temperature)

    def same_map(self, other: IGRBase) -> bool:
        return (super().same_map(other) and isinstance(other, IGRPlanar)
                and all(torch.equal(a, c.to(a)) for a, c in ((self.flow_u, other.flow_u),
                                                             (self.flow_w, other.flow_w),
                                                             (self.flow_b, other.flow_b))))


class IGRSB(IGRBase):
    r"""IGR-SB: stick-breaking with ``threshold`` truncation (see the module docstring).

    ``loc``/``scale`` have ``M-1`` coordinates for ``M = max_categories`` categories.

    Args:
        threshold: the precision in ``(0, 1]`` (default 0.99); ``1`` disables the threshold
            truncation (only the maximum truncates, and the map is invertible).

    Attributes:
        max_truncations: number of samples drawn so far (``rsample`` / ``sample``) in which the
            ``M-1`` sticks did not reach the threshold, i.e. the maximum number of categories
            truncated the stick-breaking (the last category took the rest).  A large count means
            ``max_categories`` is too small for the distribution.
        num_samples: number of samples drawn so far (for the rate ``max_truncations / num_samples``).
    """

    arg_constraints = dict(IGRBase.arg_constraints, threshold=constraints.unit_interval)

    def __init__(self, loc: Tensor, scale: Tensor, temperature: Any, threshold: Any = 0.99,
                 delta: Any = 1.0, validate_args: Optional[bool] = None) -> None:
        # device: a number checked on the CPU
        thr = threshold if isinstance(threshold, Tensor) else torch.as_tensor(threshold, dtype=loc.dtype)
        if thr.dim() != 0 or (thr.device.type == "cpu" and not 0.0 < float(thr) <= 1.0):
            raise ValueError(f"threshold (the IGR-SB precision) must be a number in (0, 1], got {threshold!r}")
        self.threshold = _as_tensor(thr, loc, "threshold")
        # whether the stick-breaking is never truncated, known on the host (no sync per sample)
        self._untruncated = bool(thr >= 1.0) if thr.device.type == "cpu" else bool((thr >= 1.0).item())
        self._truncations: Optional[Tensor] = None  # a device counter, read by max_truncations
        self.num_samples = 0
        super().__init__(loc, scale, temperature, delta, validate_args=validate_args)

    def _rebuild(self, loc: Tensor, scale: Tensor) -> "IGRSB":
        return IGRSB(loc, scale, self.temperature, self.threshold, self.delta, validate_args=False)

    @property
    def max_categories(self) -> int:
        r"""``M``, the maximum number of categories (``noise_dim + 1``)."""
        return self.event_size

    @property
    def max_truncations(self) -> int:
        r"""Samples drawn so far in which ``max_categories`` truncated the stick-breaking (the
        count lives on the samples' device; reading it waits for them)."""
        return 0 if self._truncations is None else int(self._truncations)

    def _sticks(self, y: Tensor) -> tuple:
        log_v = F.logsigmoid(y / self.temperature)
        log_1mv = F.logsigmoid(-y / self.temperature)
        log_rem = torch.cumsum(log_1mv, dim=-1)  # log prod_{j<=k}(1 - v_j), k = 1..M-1
        log_rem_prev = torch.cat([torch.zeros_like(log_rem[..., :1]), log_rem[..., :-1]], dim=-1)
        return log_v, log_rem, log_rem_prev

    def truncated_by_max(self, y: Tensor) -> Tensor:
        r"""For noise ``y`` ``[..., M-1]``: whether the maximum number of categories truncates
        (the remaining stick after the ``M-1`` sticks is still above ``1 - threshold``)."""
        _, log_rem, _ = self._sticks(y)
        return log_rem[..., -1].exp() > 1.0 - self.threshold

    def transform(self, y: Tensor) -> Tensor:
        log_v, log_rem, log_rem_prev = self._sticks(y)
        stick = torch.exp(log_v + log_rem_prev)              # v_k prod_{j<k}(1-v_j), k < M
        rem_prev = torch.exp(log_rem_prev)
        if self._untruncated:
            return torch.cat([stick, torch.exp(log_rem[..., -1:])], dim=-1)
        eps = 1.0 - self.threshold
        active = rem_prev > eps                                # stick k is broken (prefix mask)
        active_prev = torch.cat([torch.ones_like(active[..., :1]), active[..., :-1]], dim=-1)
        last = active_prev & ~active                           # first inactive: takes the rest
        zero = torch.zeros_like(stick)
        z_head = torch.where(active, stick, zero) + torch.where(last, rem_prev, zero)
        all_active = active[..., -1:]
        z_last = torch.where(all_active, torch.exp(log_rem[..., -1:]), torch.zeros_like(z_head[..., :1]))
        return torch.cat([z_head, z_last], dim=-1)

    # the default torch.Size() is an immutable tuple, as in torch.distributions.Distribution
    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        r""":meth:`IGRBase.rsample`, also counting the samples that ``max_categories`` truncated
        (:attr:`max_truncations`) and the samples drawn (``num_samples``).
        """
        y = self.rsample_noise(torch.Size(sample_shape))
        z = self.transform(y)
        with torch.no_grad():
            n = self.truncated_by_max(y).sum()
            self._truncations = n if self._truncations is None else self._truncations + n
            self.num_samples += int(y[..., 0].numel())
        self._cache = (z, y)
        return z

    def inverse(self, z: Tensor) -> Tensor:
        r"""Inverse of the *untruncated* stick-breaking: ``v_k = z_k / (1 - sum_{j<k} z_j)``."""
        head = z[..., :-1]
        rem_prev = 1.0 - torch.cumsum(head, dim=-1) + head
        v = head / rem_prev
        return self.temperature * (torch.log(v) - torch.log1p(-v))

    def log_abs_det_jacobian(self, y: Tensor) -> Tensor:
        log_v, log_rem, log_rem_prev = self._sticks(y)
        log_1mv = F.logsigmoid(-y / self.temperature)
        d = y.shape[-1]
        return (log_v + log_1mv + log_rem_prev).sum(-1) - d * torch.log(self.temperature)

    def log_prob(self, value: Tensor) -> Tensor:
        if not self._untruncated:
            raise NotImplementedError(
                "IGR-SB with threshold < 1 truncates the stick-breaking (not injective): it has no "
                "density on the simplex; use threshold=1, or compute log q - log p in noise space "
                "with .noise (the Jacobian is common to q and p)")
        return super().log_prob(value)

    def categorical_log_probs(self, num_samples: int = 1000) -> Tensor:
        r"""The induced categorical (first positive stick), exact (``num_samples`` unused)."""
        return igr_sb_categorical_log_probs(self.loc, self.scale)

    def same_map(self, other: IGRBase) -> bool:
        return (super().same_map(other) and isinstance(other, IGRSB)
                and torch.equal(self.threshold, other.threshold.to(self.threshold)))


_LEGENDRE: dict = {}


def _legendre(n: int, like: Tensor) -> tuple:
    r"""Gauss-Legendre nodes and weights on ``(0, 1)`` (float64, cached)."""
    if n not in _LEGENDRE:
        import numpy as np

        x, w = np.polynomial.legendre.leggauss(n)
        # device: cached on the CPU once, moved to the caller's device below
        _LEGENDRE[n] = (torch.as_tensor((x + 1) / 2, dtype=torch.float64),
                        torch.as_tensor(w / 2, dtype=torch.float64))  # device: as above
    x, w = _LEGENDRE[n]
    return x.to(like.device), w.to(like.device)


def igr_i_categorical_log_probs(loc: Tensor, scale: Tensor, nodes: int = 32) -> Tensor:
    r"""Log-probabilities ``[*batch, K]`` of ``argmax([y, 0])`` for independent
    ``y_k ~ N(loc_k, scale_k^2)`` (``[*batch, K-1]``): the categorical IGR-I relaxes.

    :math:`P(k) = \Phi(\mu_k/\sigma_k)\,E[\prod_{j\ne k}\Phi((\mu_k + \sigma_k u - \mu_j)/\sigma_j)]`
    over the normal ``u`` truncated to ``u > -mu_k/sigma_k``, written
    ``u = -Phi^{-1}(Phi(mu_k/sigma_k)(1 - s))`` with ``s`` uniform and integrated by ``nodes``-point
    Gauss-Legendre in float64; the last category is :math:`\prod_j\Phi(-\mu_j/\sigma_j)`.  The result
    is normalised (a proper distribution whatever the quadrature error); computed in the input's
    dtype on return.  Differentiable in ``loc`` and ``scale``."""
    dtype = loc.dtype
    mu, sd = torch.broadcast_tensors(loc.to(torch.float64), scale.to(torch.float64))
    s, w = _legendre(nodes, mu)
    log_up = torch.special.log_ndtr(mu / sd)                        # log P(y_k > 0)   [..., d]
    # u at each node: [..., d, n]
    p_tail = (log_up.unsqueeze(-1) + torch.log1p(-s)).exp().clamp_min(1e-300)
    u = -torch.special.ndtri(p_tail)
    t = mu.unsqueeze(-1) + sd.unsqueeze(-1) * u                    # the winner's value t > 0
    # log Phi((t_k - mu_j) / sd_j) for every pair (k, j): [..., d(k), n, d(j)]
    lphi = torch.special.log_ndtr((t.unsqueeze(-1) - mu.unsqueeze(-2).unsqueeze(-2))
                                  / sd.unsqueeze(-2).unsqueeze(-2))
    d = mu.shape[-1]
    eye = torch.eye(d, dtype=torch.bool, device=mu.device).unsqueeze(-2)  # [d(k), 1, d(j)]
    lprod = torch.where(eye, torch.zeros_like(lphi), lphi).sum(-1)       # [..., d, n]
    log_k = log_up + torch.logsumexp(lprod + torch.log(w), dim=-1)
    log_last = torch.special.log_ndtr(-mu / sd).sum(-1, keepdim=True)
    out = torch.cat([log_k, log_last], dim=-1)
    return (out - torch.logsumexp(out, dim=-1, keepdim=True)).to(dtype)


def igr_sb_categorical_log_probs(loc: Tensor, scale: Tensor) -> Tensor:
    r"""Log-probabilities ``[*batch, M]`` of the first ``k`` with ``y_k > 0`` (``M`` when none):
    :math:`\log\Phi(\mu_k/\sigma_k) + \sum_{j<k}\log\Phi(-\mu_j/\sigma_j)`: the categorical IGR-SB
    relaxes (exact)."""
    up = torch.special.log_ndtr(loc / scale)
    down = torch.special.log_ndtr(-loc / scale)
    before = torch.cumsum(down, dim=-1)
    prev = torch.cat([torch.zeros_like(before[..., :1]), before[..., :-1]], dim=-1)
    return torch.cat([up + prev, before[..., -1:]], dim=-1)


def uniform_prior_params(kind: str, categories: int, dtype: torch.dtype = torch.float32) -> tuple:
    r"""``(loc, scale)`` ``[K-1]`` of the noise prior whose induced categorical is uniform over
    ``categories = K`` (scale 1):

    * ``igr-i`` / ``igr-planar``: every ``loc_k = -Phi^{-1}(K^{-1/(K-1)})``, so that
      ``P(all y_k < 0) = Phi(-mu)^{K-1} = 1/K`` and, by symmetry, every other category has ``1/K``;
    * ``igr-sb``: ``loc_k = Phi^{-1}(1/(K-k+1))`` (stick ``k`` breaks with probability
      ``1/(K-k+1)``), so that every category has ``1/K``.

    Raises:
        ValueError: an unknown ``kind`` or ``categories < 2``.
    """
    K = int(categories)
    if K < 2:
        raise ValueError(f"categories must be >= 2, got {categories}")
    # device: a few numbers computed on the CPU in float64, returned there (the caller moves them)
    if kind in ("igr-i", "igr-planar"):
        q = torch.tensor(float(K) ** (-1.0 / (K - 1)), dtype=torch.float64)  # device: as above
        loc = torch.full((K - 1,), -float(torch.special.ndtri(q)), dtype=torch.float64)  # device: as above
    elif kind == "igr-sb":
        k = torch.arange(1, K, dtype=torch.float64)  # device: as above
        loc = torch.special.ndtri(1.0 / (K - k + 1))
    else:
        raise ValueError(f"kind must be igr-i, igr-planar or igr-sb, got {kind!r}")
    return loc.to(dtype), torch.ones(K - 1, dtype=dtype)  # device: as above


def _kl_igr(p: IGRBase, q: IGRBase) -> Tensor:
    if not p.same_map(q):
        raise ValueError(
            f"KL({type(p).__name__} || {type(q).__name__}) is the Gaussian KL only when both push "
            "their noise through the same invertible map (same kind, temperature, delta, flow, "
            "threshold); build both with the same map parameters")
    return kl_divergence(p.noise, q.noise)


@register_kl(IGRI, IGRI)
def _kl_igr_i(p: IGRI, q: IGRI) -> Tensor:
    r"""Closed form: the KL of the Gaussian noise distributions (invariant under softmax++)."""
    return _kl_igr(p, q)


@register_kl(IGRPlanar, IGRPlanar)
def _kl_igr_planar(p: IGRPlanar, q: IGRPlanar) -> Tensor:
    r"""Closed form: the KL of the Gaussian noise distributions (same flow for both)."""
    return _kl_igr(p, q)


@register_kl(IGRSB, IGRSB)
def _kl_igr_sb(p: IGRSB, q: IGRSB) -> Tensor:
    r"""The Gaussian KL (exact without truncation, an upper bound with it)."""
    return _kl_igr(p, q)

