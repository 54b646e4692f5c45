r"""MuProp (Gu et al. 2016): ``muprop`` and ``simple-muprop``, for Bernoulli and categorical latents.

The model protocol and the objective are those of :mod:`ovis.estimators.discrete`, the
single-layer estimation, the layer-wise scheme and the surrogate those of
:mod:`ovis.estimators.discrete_base`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ovis.estimators.discrete import check_latent_categories, gumbel_noise, one_hot_argmax
from ovis.estimators.discrete_base import DiscreteLatentEstimator, LearnedControlVariates, SplitScore

__all__ = ["MuProp"]


class MuProp(DiscreteLatentEstimator):
    r"""MuProp (Gu et al. 2016) for Bernoulli and categorical latents (multi-layer:
    :meth:`compute_layerwise`).

    With the mean-field point :math:`\bar\mu = \mathbb{E}_q[b]` (Bernoulli :math:`\sigma(a)`,
    categorical :math:`\mathrm{softmax}(a)` per variable: the deterministic mean-field forward pass,
    the model evaluated at the means through :meth:`log_joint_at`) and :math:`\bar f'(\bar\mu)` its
    gradient, the first-order Taylor control variate
    :math:`h(b) = \bar f(\bar\mu) + \bar f'(\bar\mu)^\top (b - \bar\mu)` (with :math:`\bar\mu` held
    fixed) has the analytic mean gradient :math:`J^\top \bar f'(\bar\mu)`, ``J`` the Jacobian of
    :math:`E_q[b]` in ``a``:

    .. math::

        g_a = \big(\bar f(b) - h(b)\big)\,\nabla_a\log q(b) + J^\top \bar f'(\bar\mu),

    Bernoulli: :math:`\nabla_a\log q(b) = b - \sigma(a)`, :math:`J^\top v = \sigma(a)(1-\sigma(a))\,v`;
    categorical (one-hot ``b``, :math:`\theta = \mathrm{softmax}(a)` per variable):
    :math:`\nabla_a\log q(b) = b - \theta`, :math:`(J^\top v)_c = \theta_c (v_c - \sum_{c'}\theta_{c'} v_{c'})`.
    Unbiased.  ``simple-muprop`` (as in the REBAR code): the mean-field value only, as a baseline:
    :math:`g_a = (\bar f(b) - \bar f(\bar\mu))\,\nabla_a\log q(b)`.

    **As in the REBAR paper** (Tucker et al. 2017, whose code runs MuProp with a learned baseline and
    eta's): the estimate for the parameter tensor ``p`` of the inference network is
    :math:`J_p^\top\big[(\bar f(b) - b_\psi(x))\nabla_a\log q(b) + \eta_p\,(J^\top\bar f'(\bar\mu)
    - h(b)\nabla_a\log q(b))\big]` (simple: :math:`h(b) = \bar f(\bar\mu)`, no mean term), one
    ``eta`` per tensor and an input-dependent baseline
    (:class:`~ovis.estimators.discrete_base.LearnedControlVariates`); unbiased for any of their
    values (``eta = 1`` and no baseline is the formula above).  They minimise the squared norm of
    the minibatch gradient estimate in training mode
    (:meth:`~ovis.estimators.discrete_base.DiscreteLatentEstimator.score_surrogate`).

    Args:
        simple: the simple variant.
        eta_init: the initial ``eta``'s.
        adapt: train the ``eta``'s and the baseline (``False``: keep them fixed).
        baseline_hdim: hidden units of the baseline (0: none).
        x_shape: shape of one observation (the baseline's input; ``None``: built at the first call).
    """

    family = "muprop"

    def __init__(self, mc: int = 1, iw: int = 1, simple: bool = False, eta_init: float = 1.0,
                 adapt: bool = True, baseline_hdim: int = 100, x_shape: Optional[Sequence[int]] = None) -> None:
        super().__init__(mc=mc, iw=iw)
        self.simple = bool(simple)
        if self.simple:
            self.family = "simple-muprop"
        self.adapt = bool(adapt)
        self.cv = LearnedControlVariates(eta_init=eta_init, hdim=baseline_hdim, x_shape=x_shape)

    def compute_layerwise(self, model, x, params, depth):  # type: ignore[no-untyped-def]
        r"""Layer-wise MuProp for ``L > 1`` layers
        (:meth:`~ovis.estimators.discrete_base.DiscreteLatentEstimator.layerwise_smooth`): the
        Taylor expansion for layer ``l`` is that of the mean-field pass of the layers below it
        (``y_m = sigmoid(a_m(y_{m-1}))``, categorical ``softmax(a_m(y_{m-1}))``) around
        :math:`\bar\mu_l`; unbiased for any such choice."""
        if check_latent_categories(model, self.family) is not None:
            return self.layerwise_smooth(model, x, params, depth, lambda a_m, omega_m: torch.softmax(a_m, -1))
        return self.layerwise_smooth(model, x, params, depth, lambda a_m, omega_m: torch.sigmoid(a_m))

    def score_gradient(self, fbar, a, shape, params, fsmooth=None):  # type: ignore[no-untyped-def]
        r"""As :meth:`DiscreteLatentEstimator.score_gradient`, the estimate split as a
        :class:`~ovis.estimators.discrete_base.SplitScore` (``fixed``: :math:`\bar f(b)` times the
        score; ``scaled``: the Taylor control variate's correction)."""
        fsmooth = fbar if fsmooth is None else fsmooth
        categorical = a.dim() == 3
        if categorical:
            theta = torch.softmax(a, dim=-1)
            b = one_hot_argmax(a + gumbel_noise(a.shape, a))
        else:
            theta = torch.sigmoid(a)
            b = torch.bernoulli(theta)
        with torch.no_grad():
            fb = fbar(b)
        score = b - theta
        fixed = self.per_unit(fb, shape, a) * score
        if self.simple:
            with torch.no_grad():
                fm = fsmooth(theta)
            scaled = -self.per_unit(fm, shape, a) * score
            return SplitScore(fixed, scaled, score), [b], None, {"signal_abs": (fb - fm).abs().mean(1)}
        with torch.enable_grad():
            mu = theta.clone().requires_grad_(True)
            fm_t = fsmooth(mu)
            (fprime,) = torch.autograd.grad(fm_t.sum(), mu)
        fm = fm_t.detach()
        B, M, K = shape
        taylor = (fprime * (b - theta)).view(B, M, -1).sum(-1)
        if categorical:
            mean_term = theta * (fprime - (theta * fprime).sum(-1, keepdim=True))
        else:
            mean_term = fprime * theta * (1 - theta)
        scaled = mean_term - self.per_unit(fm + taylor, shape, a) * score
        return SplitScore(fixed, scaled, score), [b], None, {"signal_abs": (fb - fm - taylor).abs().mean(1)}
