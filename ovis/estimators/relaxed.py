r"""Relaxed (biased) estimators for Bernoulli latents: ``concrete`` (alias ``gumbel-softmax``) and
``straight-through`` (Maddison et al. 2017; Jang et al. 2017; Bengio et al. 2013).

Uses the discrete hooks of :mod:`ovis.estimators.discrete` (``latent_depth``, ``q_logits``,
``log_joint_at``) and works for any depth.  Layer by layer, with :math:`u \sim U(0,1)`,

.. math::  \zeta_l = a_l + \log\frac{u}{1-u},\qquad y_l = \sigma(\zeta_l / \tau),\qquad b_l = 1[\zeta_l > 0]

(``b_l ~ q`` exactly), where ``a_l = q_logits(l, h_{l-1})`` and ``h_{l-1}`` is the previous layer's
value (``x`` for the first).

* ``concrete``: every layer is the relaxed ``y_l`` and the objective is the integrand of the
  discrete objective evaluated at the relaxed sample,
  :math:`\log\frac1K\sum_k \exp(\log p(x, y_k) - \log q(y_k|x))` with the continuously extended
  Bernoulli log mass (as REBAR's relaxation; not the Concrete-density ELBO).  Its pathwise
  gradient is biased for the discrete objective :math:`\mathcal{L}_K`; the bias shrinks as ``tau``
  falls (tested), at the price of variance.
* ``straight-through``: the forward pass uses the hard ``b_l``; the backward pass uses the gradient
  of ``y_l``: ``b_l + y_l - sg(y_l)``.  Biased at every temperature (measured in the tests).

The temperature is the runtime parameter ``tau`` (default 0.5 when not given).  The reported
diagnostics (``L_k``, ``elbo``, ...) are those of the hard samples ``b`` (the discrete objective).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, GradientEstimator, RuntimeParams
from ovis.estimators.discrete import _uniform, bernoulli_log_prob, check_discrete_model
from ovis.estimators.importance import log_mean_exp, log_weights

__all__ = ["Concrete", "StraightThrough", "DEFAULT_TAU"]

DEFAULT_TAU = 0.5


class Concrete(GradientEstimator):
    r"""The Concrete / Gumbel-Softmax relaxation of Bernoulli latents (see the module docstring).

    ``straight_through = True`` gives :class:`StraightThrough`.
    """

    family = "concrete"
    supports_alpha = False
    straight_through = False

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        depth = check_discrete_model(model, self.family)
        tau = DEFAULT_TAU if params.tau is None else params.tau
        B, M, K = x.shape[0], self.mc, self.iw
        x_exp = self.expand(x, M, K)
        h: Tensor = x_exp
        zs: List[Tensor] = []
        hard: List[Tensor] = []
        log_q: List[Tensor] = []
        logits: List[Tensor] = []
        for l in range(depth):
            a = model.q_logits(l, h)
            u = _uniform(a.shape, a)
            zeta = a + torch.log(u) - torch.log1p(-u)
            y = torch.sigmoid(zeta / tau)
            b = (zeta > 0).to(a.dtype)
            if self.straight_through:
                y = b + y - y.detach()
            zs.append(y)
            hard.append(b)
            logits.append(a)
            log_q.append(bernoulli_log_prob(a, y))
            h = y
        log_px, log_pz = model.log_joint_at(x_exp, zs)
        lq = torch.stack(log_q, -1).view(B, M, K, depth)
        log_w, kl = log_weights(log_px.view(B, M, K), lq, log_pz.view(B, M, K, depth), params.beta,
                                params.freebits)
        loss = -log_mean_exp(log_w, -1).mean()
        with torch.no_grad():
            if self.straight_through:
                hw, hkl, hpx = log_w, kl, log_px.view(B, M, K)
            else:  # the discrete objective at the hard samples b (q evaluated along b)
                hq = [bernoulli_log_prob(model.q_logits(l, x_exp if l == 0 else hard[l - 1]), hard[l])
                      for l in range(depth)]
                hpx, hpz = model.log_joint_at(x_exp, hard)
                hpx = hpx.view(B, M, K)
                hw, hkl = log_weights(hpx, torch.stack(hq, -1).view(B, M, K, depth),
                                      hpz.view(B, M, K, depth), params.beta, params.freebits)
            diagnostics = self.base_diagnostics(hw, hkl, hpx)
            diagnostics["estimator"] = {
                "tau": torch.full((B,), float(tau), dtype=log_w.dtype, device=log_w.device),
                "relaxed_bound": log_mean_exp(log_w, -1).mean(1),
            }
        return loss, diagnostics, {"z": hard, "z_relaxed": zs, "q_logits": logits}


class StraightThrough(Concrete):
    r"""Straight-through Gumbel estimator: hard samples forward, relaxed gradient backward
    (module docstring)."""

    family = "straight-through"
    straight_through = True
