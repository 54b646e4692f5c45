r"""Relaxed (biased) estimators for discrete latents: ``concrete`` (alias ``gumbel-softmax``) and
``straight-through`` (Maddison et al. 2017; Jang et al. 2017; Bengio et al. 2013).

Uses the discrete hooks of :mod:`ovis.estimators.discrete` (``latent_depth``, ``q_logits``,
``log_joint_at``, ``latent_categories``) and works for any depth, for Bernoulli and for
categorical latents.  Layer by layer, where ``a_l = q_logits(l, h_{l-1})`` and ``h_{l-1}`` is the
previous layer's value (``x`` for the first):

* Bernoulli (``a_l`` ``[n, N]``), with :math:`u \sim U(0,1)`:

  .. math::  \zeta_l = a_l + \log\frac{u}{1-u},\qquad y_l = \sigma(\zeta_l / \tau),\qquad b_l = 1[\zeta_l > 0]

* categorical (``a_l`` ``[n, N, C]``), with Gumbel noise :math:`g_c = -\log(-\log u_c)`:

  .. math::  \zeta_l = a_l + g,\qquad y_l = \mathrm{softmax}(\zeta_l / \tau),\qquad
             b_l = \mathrm{onehot}(\arg\max_c \zeta_{l,c})

(``b_l ~ q`` exactly in both cases).

* ``concrete``: every layer is the relaxed ``y_l`` and the objective is the integrand of the
  discrete objective evaluated at the relaxed sample,
  :math:`\log\frac1K\sum_k \exp(\log p(x, y_k) - \log q(y_k|x))` with the continuously extended
  Bernoulli / categorical log mass (as REBAR's relaxation; not the Concrete-density ELBO).  Its
  pathwise gradient is biased for the discrete objective :math:`\mathcal{L}_K`; the bias shrinks as
  ``tau`` falls (tested), at the price of variance.
* ``straight-through``: the forward pass uses the hard ``b_l``; the backward pass uses the gradient
  of ``y_l``: ``b_l + y_l - sg(y_l)``.  Biased at every temperature (measured in the tests).

Measured biases for categorical latents (``tests/test_discrete_estimators.py``):
``CategoricalToyModel(N=2, C=3)`` with its decoder weights multiplied by 4 (strongly non-linear),
``K = 1``, the norm of (mean of 30 draws of ``mc = 4000`` minus the exact gradient), whose norm is
4.06; standard error of the mean in brackets:

================  =============  =============  =============  =============  =============
tau               1.0            0.5            0.3            0.1            0.03
================  =============  =============  =============  =============  =============
concrete          1.02 (0.005)   0.58 (0.009)   0.34 (0.013)   0.08 (0.025)   0.03 (0.04)
straight-through  1.88 (0.006)   1.31 (0.008)   0.99 (0.013)   0.74 (0.024)   0.61 (0.04)
================  =============  =============  =============  =============  =============

Concrete's bias falls to the noise level as ``tau`` falls; straight-through's plateaus (15-18%
of the gradient's norm).  With the unscaled decoder (norm 1.89) the biases are smaller: concrete
0.28, 0.12, 0.06, 0.03 and straight-through 0.33, 0.19, 0.11, 0.04 at tau 1, 0.5, 0.3, 0.1.  On a
two-layer categorical model (both layers relaxed; gradient norm 1.75): concrete 0.63, 0.28, 0.14,
0.04 and straight-through 0.48, 0.21, 0.09, 0.08 at tau 1, 0.5, 0.3, 0.1.

The temperature is the runtime parameter ``tau`` (default 0.5 when not given).  The reported
diagnostics (``L_k``, ``elbo``, ...) are those of the hard samples ``b`` (the discrete objective).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, GradientEstimator, RuntimeParams
from ovis.estimators.discrete import (
    bound_at,
    check_discrete_model,
    check_latent_categories,
    discrete_log_prob,
    first_layer_logits,
    gumbel_noise,
    one_hot_argmax,
    uniform_noise,
)
from ovis.estimators.importance import log_mean_exp, log_weights
from ovis.models.protocol import check_discrete_values

__all__ = ["Concrete", "StraightThrough", "DEFAULT_TAU"]

DEFAULT_TAU = 0.5


class Concrete(GradientEstimator):
    r"""The Concrete / Gumbel-Softmax relaxation of Bernoulli or categorical latents (see the module
    docstring).

    ``straight_through = True`` gives :class:`StraightThrough`.
    """

    family = "concrete"
    supports_alpha = False
    straight_through = False

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The relaxed IW bound at temperature ``tau`` (runtime, default ``DEFAULT_TAU``): each layer's
        sample is ``sigmoid((a + logistic noise) / tau)`` (Bernoulli) or ``softmax((a + Gumbel noise)
        / tau)`` (categorical), hardened in the forward pass when ``straight_through``; the surrogate
        is minus its mean over ``B, M``.  The diagnostics are those of the discrete bound at the hard
        samples, plus ``estimator/tau`` and ``estimator/relaxed_bound`` (each ``[B]``).

        Returns:
            ``(loss, diagnostics, output)``; ``output`` has ``z`` (hard samples), ``z_relaxed`` and
            ``q_logits``, one entry per layer.

        Raises:
            TypeError: the model lacks the discrete hooks (``latent_depth``, ``q_logits``,
                ``log_joint_at``) or has an invalid ``latent_categories``.
            ValueError: ``q_logits`` of a categorical model does not return ``[n, N, C]``.
        """
        depth = check_discrete_model(model, self.family)
        categorical = check_latent_categories(model, self.family) is not None
        tau = DEFAULT_TAU if params.tau is None else params.tau
        B, M, K = x.shape[0], self.mc, self.iw
        shape = (B, M, K)
        x_exp = self.expand(x, M, K)
        h: Tensor = x_exp
        zs: List[Tensor] = []
        hard: List[Tensor] = []
        logits: List[Tensor] = []
        log_q: List[Tensor] = []
        for l in range(depth):
            a = first_layer_logits(model, x, M * K) if l == 0 else model.q_logits(l, h)
            if categorical:
                if a.dim() != 3:
                    raise ValueError(f"{type(model).__name__}.q_logits({l}, h) must return categorical logits "
                                     f"[n, N, C] (latent_categories is set), got {tuple(a.shape)}")
                zeta = a + gumbel_noise(a.shape, a)
                y = torch.softmax(zeta / tau, dim=-1)
                b = one_hot_argmax(zeta)
            else:
                u = uniform_noise(a.shape, a)
                zeta = a + torch.log(u) - torch.log1p(-u)
                y = torch.sigmoid(zeta / tau)
                b = (zeta > 0).to(a.dtype)
            if self.straight_through:
                y = b + y - y.detach()
            zs.append(y)
            hard.append(b)
            logits.append(a)
            # log q along the relaxed sample, layer by layer (the order of the graph's nodes, hence of
            # the gradients' accumulation, is that of the sampling)
            log_q.append(discrete_log_prob(a, y, categorical))
            h = y
        log_px, log_pz = model.log_joint_at(x_exp, zs)
        check_discrete_values(model, log_px, log_pz, B * M * K, depth)
        log_w, kl = log_weights(log_px.view(B, M, K), torch.stack(log_q, -1).view(B, M, K, depth),
                                log_pz.view(B, M, K, depth), params.beta, params.freebits)
        log_px = log_px.view(B, M, K)
        relaxed_bound = log_mean_exp(log_w, -1)
        loss = -relaxed_bound.mean()
        with torch.no_grad():
            if self.straight_through:
                hw, hkl, hpx = log_w, kl, log_px
            else:  # the discrete objective at the hard samples b (q evaluated along b)
                hard_logits = [logits[0] if l == 0 else model.q_logits(l, hard[l - 1]) for l in range(depth)]
                _, hw, hkl, hpx = bound_at(model, x_exp, hard, hard_logits, shape, params, categorical)
            diagnostics = self.base_diagnostics(hw, hkl, hpx)
            diagnostics["estimator"] = {
                "tau": torch.full((B,), float(tau), dtype=log_w.dtype, device=log_w.device),
                "relaxed_bound": relaxed_bound.mean(1),
            }
        return loss, diagnostics, {"z": hard, "z_relaxed": zs, "q_logits": logits}


class StraightThrough(Concrete):
    r"""Straight-through Gumbel estimator: hard samples forward, relaxed gradient backward
    (module docstring)."""

    family = "straight-through"
    straight_through = True
