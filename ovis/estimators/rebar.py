r"""REBAR (Tucker et al. 2017), dynamic REBAR, and RELAX (Grathwohl et al. 2018) for Bernoulli
and categorical latents (the formulas below are for one layer).

Multi-layer models are handled layer-wise (:meth:`Rebar.compute_layerwise`).

Uses the discrete hooks and the objective of :mod:`ovis.estimators.discrete` (:math:`\mathcal{L}_K`;
``iw = 1``: the ELBO, as in the papers) and the estimation of :mod:`ovis.estimators.discrete_base`.

**Bernoulli** (one layer).  For the logits ``a`` of the ``K*N`` bits of one outer sample, with
:math:`\theta = \sigma(a)`, :math:`u, v \sim U(0,1)`:

* :math:`z = a + \mathrm{logit}(u)`, :math:`b = H(z) = 1[z > 0] \sim q`;
* the conditional relaxed sample :math:`\tilde z \sim p(z | b)`: :math:`\tilde z = a +
  \mathrm{logit}(u')` with :math:`u' = (1-\theta) + v\theta` if ``b = 1`` and :math:`u' = v(1-\theta)`
  if ``b = 0`` (reparameterised in ``a`` with ``b``, ``v`` held fixed);
* the relaxation :math:`\sigma_\lambda(z) = \sigma(z/\lambda)` and the score :math:`b - \theta`.

**Categorical** (Tucker et al. 2017, appendix; Grathwohl et al. 2018).  Per variable, logits
``a`` ``[C]``, :math:`\theta = \mathrm{softmax}(a)`, :math:`u, v \sim U(0,1)^C`:

* :math:`z = \log\theta + g`, :math:`g_c = -\log(-\log u_c)` (Gumbel), :math:`b = \arg\max_c z_c
  \sim \mathrm{Cat}(\theta)` (one-hot);
* the conditional sample :math:`\tilde z \sim p(z | b)`: :math:`\tilde z_b = -\log(-\log v_b)` and
  :math:`\tilde z_i = -\log\big(-\frac{\log v_i}{\theta_i} - \log v_b\big)` for :math:`i \neq b`
  (the max of the Gumbels is a standard Gumbel independent of the argmax; the others are Gumbels of
  location :math:`\log\theta_i` truncated below it), reparameterised in ``a`` with ``b``, ``v`` fixed;
* the relaxation :math:`\sigma_\lambda(z) = \mathrm{softmax}(z/\lambda)` and the score
  :math:`\nabla_a \log q(b) = \mathrm{onehot}(b) - \theta`.

In both cases the estimate of :math:`\nabla_a E[\bar f(b)]` is

.. math::

    g_a = \big(\bar f(b) - c(\tilde z)\big)\,\nabla_a\log q(b) + \nabla_a c(z) - \nabla_a c(\tilde z),

unbiased for any control variate ``c`` (:math:`\nabla_a E[c(z)] = E[c(\tilde z)\nabla_a\log q(b)]
+ E[\nabla_a c(\tilde z)]`).  REBAR: :math:`c(z) = \eta\,\bar f(\sigma_\lambda(z))` (the
objective's integrand at the relaxed sample, with the continuously extended log mass), with the
paper's *modified* relaxation for Bernoulli latents,
:math:`\sigma_\lambda(z) = \sigma\big((\frac{\lambda^2+\lambda+1}{\lambda+1} a + \mathrm{logit}\,u)/\lambda\big)`
for :math:`z = a + \mathrm{logit}\,u` (the original code's ``muprop_relaxation``; ``rebar-plain``:
:math:`\sigma(z/\lambda)`).  RELAX: :math:`c(z) = \eta\,\bar f(\sigma_\lambda(z)) + \sum_{j}
r_\psi(\sigma_\lambda(z)_j, \alpha_j)`, ``r_psi`` a small MLP shared by all units ``j`` (bits; for
categorical latents, the classes of every variable, with :math:`\alpha = \log\theta`; Bernoulli:
:math:`\alpha = a`), dimension-free, so it is built at construction (Grathwohl et al. use an MLP on
the whole ``z``), with the plain relaxation.

**As the REBAR paper defines them** (Tucker et al. 2017 and its code): ``eta`` is one scalar per
parameter tensor of the inference network and a learned input-dependent baseline
:math:`b_\psi(x)` is subtracted from :math:`\bar f(b)`
(:class:`~ovis.estimators.discrete_base.LearnedControlVariates`; the estimate is returned as a
:class:`~ovis.estimators.discrete_base.SplitScore` and combined per tensor by
:meth:`~ovis.estimators.discrete_base.DiscreteLatentEstimator.score_surrogate`); unbiased for any of
their values.  The estimator's own parameters (``eta``'s, baseline; ``log_tau`` for
``dynamic-rebar`` and ``relax``; ``psi``) are ``estimator.parameters()`` (``run.py`` binds the
estimator to the model, then optimises them at ``lr * --estimator_lr_ratio`` or ``--baseline_lr``)
and minimise the squared norm of the minibatch estimate of the inference network's gradient (the
paper's variance objective: its mean does not depend on them).

``rebar`` uses the runtime temperature ``tau`` (default 0.5); ``dynamic-rebar`` also adapts the
temperature (``log_tau``, initialised at ``tau_init``; the runtime ``tau`` is then ignored).
``relax`` adapts ``eta``'s, ``log_tau`` and ``psi``.

Tests: ``tests/test_discrete_estimators.py`` (exact gradients on the Bernoulli and categorical toy
models and on two-layer models of both kinds, a replay of one categorical draw against the formula
written with explicit loops, variance against ``reinforce``).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ovis.estimators.base import RuntimeParams
from ovis.estimators.discrete import one_hot_argmax, uniform_noise
from ovis.estimators.discrete_base import DiscreteLatentEstimator, LearnedControlVariates, SplitScore
from ovis.estimators.relaxed import DEFAULT_TAU

__all__ = ["Rebar", "Relax"]


#: the relaxations of Bernoulli latents (:meth:`Rebar.relax`)
RELAXATIONS = ("modified", "plain")


class Rebar(DiscreteLatentEstimator):
    r"""REBAR and dynamic REBAR as Tucker et al. (2017) define them (see the module docstring).

    The estimate for the parameter tensor ``p`` of the inference network is
    :math:`J_p^\top\big[(\bar f(b) - b_\psi(x))\nabla_a\log q(b) + \eta_p\,(\nabla_a c(z) -
    \nabla_a c(\tilde z) - c(\tilde z)\nabla_a\log q(b))\big]` with
    :math:`c(z) = \bar f(\sigma_\lambda(z))`: one ``eta`` per parameter tensor and a learned
    input-dependent baseline :math:`b_\psi(x)`
    (:class:`~ovis.estimators.discrete_base.LearnedControlVariates`), unbiased for any of their
    values; they (and dynamic REBAR's temperature) minimise the squared norm of the minibatch
    gradient estimate (:meth:`~ovis.estimators.discrete_base.DiscreteLatentEstimator.score_surrogate`).

    Args:
        dynamic: adapt the temperature too (``dynamic-rebar``).
        eta_init: initial ``eta``'s.
        tau_init: initial temperature of ``dynamic-rebar`` (and of ``relax``).
        adapt: train the estimator's parameters (``False``: keep them fixed; unbiased in both cases).
        relaxation: of Bernoulli latents: ``"modified"`` (the paper's,
            :math:`\sigma\big((\frac{\lambda^2+\lambda+1}{\lambda+1} a + \mathrm{logit}\,u)/\lambda\big)`,
            the original code's ``muprop_relaxation``) or ``"plain"`` (:math:`\sigma(z/\lambda)`);
            categorical latents always use ``softmax(z / tau)``.
        baseline_hdim: hidden units of the baseline (0: none).
        x_shape: shape of one observation (the baseline's input; ``None``: built at the first call).
    """

    family = "rebar"

    def __init__(self, mc: int = 1, iw: int = 1, dynamic: bool = False, eta_init: float = 1.0,
                 tau_init: float = DEFAULT_TAU, adapt: bool = True, relaxation: str = "modified",
                 baseline_hdim: int = 100, x_shape: Optional[Sequence[int]] = None) -> None:
        super().__init__(mc=mc, iw=iw)
        if not (math.isfinite(eta_init)):
            raise ValueError(f"eta_init must be finite, got {eta_init}")
        if not tau_init > 0:
            raise ValueError(f"tau_init must be > 0, got {tau_init}")
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        self.dynamic = bool(dynamic)
        if self.dynamic:
            self.family = "dynamic-rebar"
        self.adapt = bool(adapt)
        self.relaxation = relaxation
        self.cv = LearnedControlVariates(eta_init=eta_init, hdim=baseline_hdim, x_shape=x_shape)
        self.log_tau: Optional[nn.Parameter] = (
            nn.Parameter(torch.tensor(math.log(tau_init))) if self.dynamic else None)

    # --------------------------------------------------------------- control variate
    def temperature(self, params: RuntimeParams, like: Optional[Tensor] = None) -> Tensor:
        r"""The temperature :math:`\lambda`: ``exp(log_tau)`` when adapted, else the runtime ``tau``
        (default 0.5), a 0-dim tensor (on ``like``'s device and dtype when given)."""
        if self.log_tau is not None:
            return self.log_tau.exp()
        value = DEFAULT_TAU if params.tau is None else params.tau
        return torch.tensor(value) if like is None else like.new_tensor(value)  # device: like, when given

    def relax(self, z: Tensor, tau: Tensor, a: Optional[Tensor] = None) -> Tensor:
        r""":math:`\sigma_\lambda(z)`: categorical (``[n, N, C]``), ``softmax(z / tau)`` over the
        last axis; Bernoulli (``[n, N]``), ``sigmoid(z / tau)`` (``"plain"``, or ``a`` not given)
        or, ``"modified"``, with ``z = a + logit u``,
        :math:`\sigma\big((z + (\frac{\lambda^2+\lambda+1}{\lambda+1} - 1)\,a)/\lambda\big)`."""
        tau = tau.to(z.dtype)
        if z.dim() == 3:
            return torch.softmax(z / tau, dim=-1)
        if self.relaxation == "modified" and a is not None:
            gain = (tau * tau + tau + 1) / (tau + 1)
            return torch.sigmoid((z + (gain - 1) * a) / tau)
        return torch.sigmoid(z / tau)

    def control_variate(self, fbar: Any, z: Tensor, a: Tensor, tau: Tensor,
                        logits: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        r"""``(c_eta, c_fixed)`` per outer sample ``[B, M]``: the part scaled by ``eta``,
        :math:`\bar f(\sigma_\lambda(z))`, and a part that is not (``None`` for REBAR).  ``a``:
        the fixed logits (Bernoulli) or log-probabilities (categorical), ``logits``: the logits
        of the modified relaxation (differentiable), with ``z``'s shape."""
        return fbar(self.relax(z, tau, logits)), None

    # --------------------------------------------------------------- multi-layer
    def compute_layerwise(self, model, x, params, depth):  # type: ignore[no-untyped-def]
        r"""Layer-wise REBAR / RELAX for ``L > 1`` stochastic layers
        (:meth:`~ovis.estimators.discrete_base.DiscreteLatentEstimator.layerwise_smooth`): the
        layers below layer ``l`` are relaxed in the control variate, :math:`y_m =
        \sigma_\lambda(a_m(y_{m-1}) + \omega_m)` (logistic noise and the (modified) relaxation,
        or Gumbel noise and the softmax), a smooth function of the relaxed :math:`y_l`.

        The temperature is taken afresh in every relaxation: with an adapted temperature (dynamic
        REBAR, RELAX) no graph node (e.g. one ``exp(log_tau)``) is shared between the layers."""
        return self.layerwise_smooth(model, x, params, depth,
                                     lambda a_m, omega_m: self.relax(a_m + omega_m, self.temperature(params, a_m), a_m))

    # --------------------------------------------------------------- estimator
    def score_gradient(self, fbar, a, shape, params, fsmooth=None):  # type: ignore[no-untyped-def]
        r"""As :meth:`DiscreteLatentEstimator.score_gradient` (``a``: ``[n, N]`` Bernoulli or ``[n, N, C]``
        categorical logits), the estimate split as a
        :class:`~ovis.estimators.discrete_base.SplitScore`; ``fsmooth`` (default ``fbar``) is the
        function evaluated at relaxed samples in the control variate."""
        fsmooth = fbar if fsmooth is None else fsmooth
        categorical = a.dim() == 3
        tau = self.temperature(params, a)
        u, v = uniform_noise(a.shape, a), uniform_noise(a.shape, a)
        with torch.no_grad():
            if categorical:
                b = one_hot_argmax(torch.log_softmax(a, -1) - torch.log(-torch.log(u)))
            else:
                b = (a + torch.log(u) - torch.log1p(-u) > 0).to(a.dtype)
            fb = fbar(b)
        train_cv = self.adapt and self.training and torch.is_grad_enabled() and bool(self.cv_parameters())
        with torch.enable_grad():
            a_leaf = a.detach().requires_grad_(True)
            if categorical:
                z, zt, theta, alpha = self._categorical_pair(a_leaf, u, v, b)
            else:
                theta = torch.sigmoid(a_leaf)
                z = a_leaf + torch.log(u) - torch.log1p(-u)
                up = torch.where(b > 0, (1 - theta) + v * theta, v * (1 - theta))
                eps = torch.finfo(a.dtype).eps
                up = up.clamp(eps, 1 - eps)
                zt = a_leaf + torch.log(up) - torch.log1p(-up)
                alpha = a
            ce_z, cf_z = self.control_variate(fsmooth, z, alpha, tau, a_leaf)
            ce_zt, cf_zt = self.control_variate(fsmooth, zt, alpha, tau, a_leaf)
            score = (b - theta).detach()
            (dce,) = torch.autograd.grad((ce_z - ce_zt).sum(), a_leaf, create_graph=train_cv,
                                         retain_graph=train_cv or cf_z is not None)  # (relax: shared nodes)
            scaled = dce - self.per_unit(ce_zt, shape, a) * score
            fixed = self.per_unit(fb, shape, a) * score
            if cf_z is not None and cf_zt is not None:
                (dcf,) = torch.autograd.grad((cf_z - cf_zt).sum(), a_leaf, create_graph=train_cv)
                fixed = fixed + dcf - self.per_unit(cf_zt, shape, a) * score
        if not train_cv:
            fixed, scaled = fixed.detach(), scaled.detach()
        extra = {"tau": tau.detach().to(a.dtype).expand(shape[0])}
        return SplitScore(fixed, scaled, score), [b], None, extra

    @staticmethod
    def _categorical_pair(a: Tensor, u: Tensor, v: Tensor, b: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""The categorical ``(z, z~, theta, log theta (detached))`` of the module docstring, ``[n, N, C]``
        each, differentiable in ``a`` (``u``, ``v`` uniforms, ``b`` the one-hot argmax of ``z``)."""
        log_theta = torch.log_softmax(a, dim=-1)
        theta = log_theta.exp()
        z = log_theta - torch.log(-torch.log(u))
        e = torch.log(-torch.log(v))  # log(-log v), [n, N, C]
        e_b = (e * b).sum(-1, keepdim=True)  # log(-log v_b), [n, N, 1]
        zt_b = -e_b  # a standard Gumbel: independent of a
        # Gumbel(log theta_i) truncated below z~_b: -log(-log v_i / theta_i - log v_b), in log space
        # (stable when theta_i underflows)
        zt_other = -torch.logaddexp(e - log_theta, e_b)
        zt = torch.where(b > 0, zt_b.expand_as(zt_other), zt_other)
        return z, zt, theta, log_theta.detach()


class Relax(Rebar):
    r"""RELAX: REBAR's control variate plus a learned network ``r_psi`` (module docstring); the
    ``eta``'s scale REBAR's part only, ``r_psi``'s part is not scaled; the plain relaxation.

    Args:
        hdim: hidden units of ``r_psi`` (input: the relaxed unit and its logit, or for categorical
            latents the relaxed class probability and its log-probability; tanh).
        eta_init, tau_init, adapt, baseline_hdim, x_shape: as :class:`Rebar` (``eta``'s and
            ``log_tau`` are adapted).
    """

    family = "relax"

    def __init__(self, mc: int = 1, iw: int = 1, hdim: int = 16, eta_init: float = 1.0,
                 tau_init: float = DEFAULT_TAU, adapt: bool = True, baseline_hdim: int = 100,
                 x_shape: Optional[Sequence[int]] = None) -> None:
        super().__init__(mc=mc, iw=iw, dynamic=True, eta_init=eta_init, tau_init=tau_init, adapt=adapt,
                         relaxation="plain", baseline_hdim=baseline_hdim, x_shape=x_shape)
        self.family = "relax"
        if hdim < 1:
            raise ValueError(f"hdim must be >= 1, got {hdim}")
        self.net = nn.Sequential(nn.Linear(2, hdim), nn.Tanh(), nn.Linear(hdim, 1))
        self._shape: Tuple[int, int, int] = (0, 0, 0)

    def control_variate(self, fbar: Any, z: Tensor, a: Tensor, tau: Tensor,
                        logits: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        r"""``(f(sigma(z)), sum_j r_psi(sigma(z)_j, alpha_j))`` per outer sample ``[B, M]``: REBAR's part
        (scaled by the ``eta``'s) and the network's part (not scaled); the plain relaxation."""
        y = self.relax(z, tau)
        w = self.net[0].weight
        r = self.net(torch.stack([y, a.detach()], dim=-1).to(w.dtype)).squeeze(-1).to(y.dtype)  # z's shape
        return fbar(y), self._group_sum(r)

    def _group_sum(self, r: Tensor) -> Tensor:
        r"""``[B*M*K, N(, C)] -> [B, M]`` (sum over the units of each outer sample)."""
        B, M, K = self._shape
        return r.reshape(B, M, -1).sum(-1)

    def score_gradient(self, fbar, a, shape, params, fsmooth=None):  # type: ignore[no-untyped-def]
        r"""As :meth:`Rebar.score_gradient` (records ``shape`` for the network's per-sample sums)."""
        self._shape = shape
        return super().score_gradient(fbar, a, shape, params, fsmooth)
