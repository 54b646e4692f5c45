r"""Reparameterised (pathwise) estimators: ``pathwise-vae``, ``pathwise-iwae``, ``stl``, ``dreg``.

They need a model whose ``q(z|x)`` has ``rsample`` (the model is called with ``zgrads=True``).

* ``pathwise-vae`` (Kingma & Welling 2014): the ELBO :math:`\frac1K\sum_k \log w_k`.
* ``pathwise-iwae`` (Burda et al. 2016): the IW bound, or the Renyi bound
  :math:`\mathcal{L}_K^\alpha` (Li & Turner 2016) when ``alpha > 0``.
* ``stl`` (Roeder et al. 2017): ``pathwise-iwae`` with ``q``'s parameters detached inside
  ``log q(z|x)`` (the score term is dropped).  Unbiased for the ELBO at ``K = 1``; for ``K > 1``
  its phi-gradient is biased for :math:`\nabla\mathcal{L}_K` (Tucker et al. 2019): the bias is
  :math:`+E[\sum_k (v_k - v_k^2)\,\partial_z \log w_k\,\partial_\phi z_k] = E[\sum_k v_k h_k]` (estimate minus
  truth), measured in ``tests/test_pathwise.py``: on the linear-Gaussian toy model (D = 2) it is
  tens of standard errors at K = 2 and grows with K (e.g. about -0.5, -1.0, -1.5 on the first
  coordinate of ``A`` at K = 2, 5, 20, with an exact IW gradient of norm about 1).
* ``dreg`` (Tucker et al. 2019): phi-gradient
  :math:`\sum_k v_k\,(1 - \beta(1-\alpha)(1 - v_k))\,\partial_z \log w_k\,\partial_\phi z_k` with
  ``q``'s parameters detached in ``log q`` (at ``beta = 1``, ``alpha = 0`` this is the paper's
  ``v_k^2``; see :class:`DoublyReparameterised`); theta-gradient as IWAE.  Unbiased for
  :math:`\nabla\mathcal{L}_K^\alpha` under any KL weight ``beta``; free bits are refused.

``stl`` and ``dreg`` support models with one stochastic layer: with several layers, detaching
``q``'s parameters would also drop the path through the conditioning of the upper layers.
``dreg`` reweights the gradient reaching ``z`` through a tensor hook, so the model must return
the sampled tensor itself in ``output['z']`` (the built-in models do).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, GradientEstimator, RuntimeParams
from ovis.estimators.importance import log_weights, normalized_weights, renyi_bound

__all__ = ["PathwiseVAE", "PathwiseIWAE", "StickingTheLanding", "DoublyReparameterised"]


class PathwiseVAE(GradientEstimator):
    r"""Reparameterised ELBO, averaged over the ``K`` particles (``pathwise-vae``)."""

    family = "pathwise-vae"
    reparameterised = True
    supports_alpha = False

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The surrogate ``-mean(log w)`` over ``B, M, K`` with reparameterised ``z`` (``[B, M, K]`` log-weights)."""
        p = self.evaluate(model, x, params)
        log_w, kl = log_weights(p.log_px, p.log_qz, p.log_pz, params.beta, params.freebits)
        loss = -log_w.mean()
        return loss, self.base_diagnostics(log_w, kl, p.log_px), p.output


class PathwiseIWAE(GradientEstimator):
    r"""Reparameterised IW / Renyi bound (``pathwise-iwae``).

    Subclasses set ``detach_q`` to evaluate ``log q(z|x)`` with ``q``'s parameters detached
    (STL, DReG: single-layer models only) and may hook the sampled ``z`` (:meth:`hook_latent`).
    """

    family = "pathwise-iwae"
    reparameterised = True
    detach_q = False

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The surrogate ``-mean(L_K^alpha)`` over ``B, M`` with reparameterised ``z``, ``q``'s parameters
        detached in ``log q`` when ``detach_q`` is set; :meth:`hook_latent` sees the latents first.

        Raises:
            ValueError: ``detach_q`` (STL, DReG) with a model of more than one stochastic layer.
        """
        p = self.evaluate(model, x, params, detach_qz_params=self.detach_q)
        if self.detach_q and len(p.output["z"]) != 1:
            raise ValueError(
                f"{self.family} supports models with one stochastic layer (got {len(p.output['z'])}); "
                "use pathwise-iwae or a score-function estimator for hierarchical models"
            )
        log_w, kl = log_weights(p.log_px, p.log_qz, p.log_pz, params.beta, params.freebits)
        self.hook_latent(p.output["z"], log_w, params)
        loss = -renyi_bound(log_w, params.alpha).mean()
        return loss, self.base_diagnostics(log_w, kl, p.log_px), p.output

    def hook_latent(self, z: Any, log_w: Tensor, params: RuntimeParams) -> None:
        r"""Called with the sampled latents before the backward pass (nothing by default)."""


class StickingTheLanding(PathwiseIWAE):
    r"""Sticking the landing (``stl``): ``q``'s parameters detached inside ``log q(z|x)``."""

    family = "stl"
    detach_q = True


class DoublyReparameterised(PathwiseIWAE):
    r"""Doubly reparameterised gradient estimator (``dreg``).

    With :math:`\log w_k = \log p(x|z_k) - \beta(\log q_\phi(z_k|x) - \log p(z_k))`, the bound's
    phi-gradient has a path term :math:`\sum_k v_k\,\partial_z\log w_k\,\partial_\phi z_k` and a
    direct term :math:`-\beta\sum_k v_k\,\partial_\phi\log q_\phi(z_k|x)` (``q``'s parameters
    only).  The reparameterisation identity :math:`E_q[f(z)\,\partial_\phi\log q_\phi(z)] =
    E_\epsilon[\partial_z f(z)\,\partial_\phi z]` with :math:`f = v_k` and
    :math:`\partial v_k/\partial\log w_k = (1-\alpha)v_k(1 - v_k)` turns the direct term into
    :math:`-\beta(1-\alpha)\sum_k v_k(1-v_k)\,\partial_z\log w_k\,\partial_\phi z_k`, so the
    phi-gradient is

    .. math::  \sum_k v_k\,\big(1 - \beta(1-\alpha)(1 - v_k)\big)\,\partial_z\log w_k\,\partial_\phi z_k

    (``beta = 1``: :math:`v_k(\alpha + (1-\alpha)v_k)`, the paper's :math:`v_k^2` at ``alpha = 0``).
    One forward and one backward pass: the surrogate is the (Renyi) bound computed with ``q``'s
    parameters detached in ``log q``; its gradient reaching ``z_k`` is
    :math:`v_k\,\partial_z\log w_k`, and a hook on ``z`` multiplies it by
    :math:`1 - \beta(1-\alpha)(1-v_k)`, which turns the phi-gradient into DReG's while the
    theta-gradient (which does not pass through ``z``) stays IWAE's.

    Free bits are refused: with the clamp :math:`\max(\log q - \log p, \lambda)` the direct term
    carries :math:`1[\log q - \log p \geq \lambda]`, a step function of ``z``, and the identity
    above (which differentiates ``f`` in ``z``) no longer holds.
    """

    family = "dreg"
    detach_q = True

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r""":meth:`ovis.estimators.pathwise.PathwiseIWAE.compute` with the DReG hook (:meth:`hook_latent`).

        Raises:
            ValueError: free bits are set (they make the identity behind DReG invalid).
        """
        if params.freebits is not None:
            raise ValueError(
                f"dreg does not support free bits (got freebits={params.freebits}): the clamp makes its "
                "doubly reparameterised identity invalid; use freebits=None, or pathwise-iwae with free bits"
            )
        return super().compute(model, x, params)

    def hook_latent(self, z: Any, log_w: Tensor, params: RuntimeParams) -> None:
        r"""Register on ``z`` (``[B*M*K, ...]``) the hook that multiplies its gradient by
        :math:`1 - \beta(1-\alpha)(1 - v_k)` (``v`` from the detached ``log_w`` ``[B, M, K]``).
        """
        z = z[0]
        if z.requires_grad:
            with torch.no_grad():
                v = normalized_weights(log_w, params.alpha)
                scale = (1.0 - params.beta * (1.0 - params.alpha) * (1.0 - v)).reshape(-1)
            scale = scale.view(-1, *([1] * (z.dim() - 1)))
            z.register_hook(lambda g: g * scale)
