r"""MuProp (Gu et al. 2016): ``muprop`` and ``simple-muprop``, for Bernoulli and categorical latents.

The model protocol and the objective are those of :mod:`ovis.estimators.discrete`, the
single-layer estimation, the layer-wise scheme and the surrogate those of
:mod:`ovis.estimators.discrete_base`.
"""
from __future__ import annotations

import torch

from ovis.estimators.discrete import check_latent_categories, gumbel_noise, one_hot_argmax
from ovis.estimators.discrete_base import DiscreteLatentEstimator

__all__ = ["MuProp"]


class MuProp(DiscreteLatentEstimator):
    r"""MuProp (Gu et al. 2016) for Bernoulli and categorical latents (multi-layer:
    :meth:`compute_layerwise`).

    With the mean-field point :math:`\bar\mu = \mathbb{E}_q[b]` (Bernoulli :math:`\sigma(a)`,
    categorical :math:`\mathrm{softmax}(a)` per variable: the deterministic mean-field forward pass,
    the model evaluated at the means through ``log_joint_at``) and :math:`\bar f'(\bar\mu)` its
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

    Args:
        simple: the simple variant.
    """

    family = "muprop"

    def __init__(self, mc: int = 1, iw: int = 1, simple: bool = False) -> None:
        super().__init__(mc=mc, iw=iw)
        self.simple = bool(simple)
        if self.simple:
            self.family = "simple-muprop"

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
        if self.simple:
            with torch.no_grad():
                fm = fsmooth(theta)
            g = self.per_unit(fb - fm, shape, a) * (b - theta)
            return g, [b], None, {"signal_abs": (fb - fm).abs().mean(1)}
        with torch.enable_grad():
            mu = theta.clone().requires_grad_(True)
            fm_t = fsmooth(mu)
            (fprime,) = torch.autograd.grad(fm_t.sum(), mu)
        fm = fm_t.detach()
        B, M, K = shape
        taylor = (fprime * (b - theta)).view(B, M, -1).sum(-1)
        signal = fb - fm - taylor
        if categorical:
            mean_term = theta * (fprime - (theta * fprime).sum(-1, keepdim=True))
        else:
            mean_term = fprime * theta * (1 - theta)
        g = self.per_unit(signal, shape, a) * (b - theta) + mean_term
        return g, [b], None, {"signal_abs": signal.abs().mean(1)}
