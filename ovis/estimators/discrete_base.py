r"""The base of the layer-wise estimators for discrete latents (Bernoulli or categorical):
:class:`DiscreteLatentEstimator`, extended by ARM/DisARM (:mod:`~ovis.estimators.arm`), MuProp
(:mod:`~ovis.estimators.muprop`), REBAR and RELAX (:mod:`~ovis.estimators.rebar`).

The model protocol (the discrete hooks) and the objective
:math:`\mathcal{L}_K = E_{b_{1..K} \sim q}[f(b)]` are those of :mod:`ovis.estimators.discrete`
(``alpha = 0`` only).  The gradient is split into the direct term :math:`E[\nabla f(b)]`
(``theta``, and ``phi`` through the ``-log q`` inside ``w``; computed by autograd at the sample)
and the score part :math:`\nabla_a E_{b \sim q_a}[\bar f(b)]` with respect to the logits ``a`` of
``q`` (``\bar f``: ``f`` with its parameters held fixed), which each estimator estimates as a
tensor ``g_a`` of the logits' shape (``[B*M*K, N]``, categorical ``[B*M*K, N, C]``; the gradient
for each particle's logits).  The surrogate loss is

.. math::  -\frac{1}{BM}\sum \mathrm{sg}(g_a)\, a \;-\; \mathrm{mean}_{B,M}\, f(b)

so that its gradient is minus the estimate.  The ``K*N`` units of one outer sample are treated
jointly (they are independent for a single-layer model).  Models with ``L > 1`` layers are
handled layer-wise, as the papers do (ARM/DisARM, Bernoulli only:
:meth:`~ovis.estimators.arm.ARM.compute_layerwise`; MuProp, REBAR, RELAX:
:meth:`DiscreteLatentEstimator.layerwise_smooth`).

Tests: ``tests/test_discrete_estimators.py`` (exact gradients by enumeration on Bernoulli and
categorical models of one and two layers, biases of the relaxations, variance against
``reinforce``) and ``tests/test_discrete_estimators_training.py`` (binarized MNIST).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, GradientEstimator, RuntimeParams
from ovis.estimators.discrete import (
    BoundAt,
    bound_at,
    check_discrete_model,
    check_latent_categories,
    first_layer_logits,
    gumbel_noise,
    logistic_noise,
    one_hot_argmax,
)

__all__ = ["DiscreteLatentEstimator"]


class DiscreteLatentEstimator(GradientEstimator):
    r"""Base of the estimators for discrete (Bernoulli or categorical) latents that estimate the
    score part layer by layer: ARM, DisARM, MuProp, REBAR, RELAX (module docstring).

    Subclasses implement :meth:`score_gradient` (one layer; Bernoulli logits ``[n, N]`` or
    categorical logits ``[n, N, C]``) and, for ``latent_depth > 1``, :meth:`compute_layerwise`.
    Categorical models (``latent_categories = C``) are accepted
    (:meth:`check_categorical`, which ARM/DisARM override to refuse them).  Requires ``alpha = 0``.
    """

    family = "discrete"
    supports_alpha = False

    def check_categorical(self, depth: int, C: int) -> None:
        r"""Called for a categorical model (``C`` classes, ``depth`` layers) before estimation;
        accepts it (ARM/DisARM override it to refuse)."""

    @staticmethod
    def per_unit(v: Tensor, shape: Tuple[int, int, int], like: Tensor) -> Tensor:
        r"""Broadcast a per-outer-sample value ``[B, M]`` to the logits' shape ``like``
        (``[B*M*K, N]`` or ``[B*M*K, N, C]``)."""
        B, M, K = shape
        return v[:, :, None].expand(B, M, K).reshape(B * M * K, *([1] * (like.dim() - 1))).expand_as(like)

    def score_gradient(
        self, fbar: Callable[[Tensor], Tensor], a: Tensor, shape: Tuple[int, int, int], params: RuntimeParams
    ) -> Tuple[Tensor, List[Tensor], Optional[Tensor], Dict[str, Tensor]]:
        r"""Return ``(g_a, samples, aux_loss, extra_diagnostics)``: the estimate ``g_a`` (``a``'s
        shape) of :math:`\nabla_a E_{b\sim q_a}[\bar f(b)]`, the samples ``b`` (``a``'s shape) at
        which the direct term is averaged, an auxiliary loss (or ``None``) and diagnostics
        (``[B]`` each).  ``a`` is ``[n, N]`` (Bernoulli, :math:`q_a = \mathrm{Bern}(\sigma(a))`)
        or ``[n, N, C]`` (categorical, :math:`q_a = \mathrm{Cat}(\mathrm{softmax}(a))`, one-hot
        samples); ``fbar`` maps a sample of ``a``'s shape to :math:`\bar f` ``[B, M]``.  Layer-wise
        estimators also take ``fsmooth=`` (:meth:`layerwise_smooth`)."""
        raise NotImplementedError

    def compute_layerwise(
        self, model: nn.Module, x: Tensor, params: RuntimeParams, depth: int
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The estimation for ``depth > 1`` layers (every subclass implements it)."""
        raise NotImplementedError  # pragma: no cover - ARM, MuProp and Rebar all override it

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        depth = check_discrete_model(model, self.family, max_depth=None)
        C = check_latent_categories(model, self.family)
        if C is not None:
            self.check_categorical(depth, C)
        if depth > 1:
            return self.compute_layerwise(model, x, params, depth)
        B, M, K = x.shape[0], self.mc, self.iw
        shape = (B, M, K)
        x_exp = self.expand(x, M, K)
        a = first_layer_logits(model, x, M * K)  # [n, N] or [n, N, C], attached to phi
        categorical = C is not None
        if (a.dim() != (3 if categorical else 2) or a.shape[0] != B * M * K
                or (categorical and a.shape[-1] != C)):
            expected = f"[n, N, C={C}] (categorical)" if categorical else "[n, N] (Bernoulli)"
            raise ValueError(f"{type(model).__name__}.q_logits(0, x) must return {expected} with n = "
                             f"{B * M * K}, got {tuple(a.shape)}")
        a_fixed = a.detach()

        def fbar(z: Tensor) -> Tensor:
            r""":math:`\bar f(z)` ``[B, M]`` (``log q`` at the fixed logits: no gradient to ``phi``)."""
            return bound_at(model, x_exp, [z], [a_fixed], shape, params, categorical).value

        g_a, samples, aux_loss, extra = self.score_gradient(fbar, a_fixed, shape, params)
        # the direct term, averaged over the (marginally q-distributed) samples the estimator used
        direct, first = 0.0, None
        for b in samples:
            out = bound_at(model, x_exp, [b], [a], shape, params, categorical)
            direct = direct + out.value.mean() / len(samples)
            first = out if first is None else first
        loss = -(g_a.detach() * a).sum() / (B * M) - direct
        if aux_loss is not None:
            loss = loss + aux_loss
        assert first is not None
        diagnostics = self.base_diagnostics(first.log_w.detach(), first.kl.detach(), first.log_px.detach())
        with torch.no_grad():
            diagnostics["estimator"] = {k: v.detach() for k, v in extra.items()}
        return loss, diagnostics, {"z": [samples[0]], "q_logits": [a]}

    def layerwise_smooth(
        self, model: nn.Module, x: Tensor, params: RuntimeParams, depth: int,
        downstream: Callable[[Tensor, Tensor], Tensor],
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""Layer-wise estimation for ``L > 1`` stochastic layers with a smooth surrogate of the
        layers below (used by REBAR/RELAX: relaxed; MuProp: mean-field).

        A main sample :math:`b \sim q` is drawn layer by layer with noises
        :math:`\omega_1..\omega_L`: Bernoulli, logistic noise ``omega_m = logit(w)``, ``w ~ U(0, 1)``,
        and ``b_m = 1[a_m(b_{m-1}) + omega_m > 0]``; categorical, Gumbel noise and
        ``b_m = onehot(argmax(a_m(b_{m-1}) + omega_m))``.  For layer ``l``,
        with :math:`b_{<l}` from the main sample and :math:`\omega_{>l}` held fixed (independent of
        the layer's own noise), :math:`\bar f_l(b_l)` is ``f`` at :math:`(b_{<l}, b_l, b_{>l})`, the
        layers below completed from :math:`\omega_{>l}` (a sample of ``q`` given ``b_l``); its
        smooth version (``fsmooth``, used at relaxed or mean values of ``y_l``) evaluates ``f`` at
        :math:`(b_{<l}, y_l, y_{>l})` with ``y_m = downstream(a_m(y_{m-1}), omega_m)``, a smooth
        function of :math:`y_l`.  The single-layer :meth:`score_gradient` (called with ``fsmooth=``)
        then estimates :math:`\nabla_{a_l} E[\bar f_l]`, unbiased for every layer whatever the
        smooth version; the direct term is taken at the main sample, the auxiliary losses of the
        layers are summed and their diagnostics averaged over the layers.
        """
        B, M, K = x.shape[0], self.mc, self.iw
        shape = (B, M, K)
        x_exp = self.expand(x, M, K)
        categorical = check_latent_categories(model, self.family) is not None

        def hard(pre: Tensor) -> Tensor:
            r"""The hard sample at ``pre = a_m + omega_m``."""
            return one_hot_argmax(pre) if categorical else (pre > 0).to(pre.dtype)

        def f_at(z: List[Tensor], logits: List[Tensor]) -> BoundAt:
            return bound_at(model, x_exp, z, logits, shape, params, categorical)

        omegas: List[Tensor] = []
        main: List[Tensor] = []
        with torch.no_grad():
            h = x_exp
            for l in range(depth):
                a_l = first_layer_logits(model, x, M * K) if l == 0 else model.q_logits(l, h)
                if a_l.dim() != (3 if categorical else 2):
                    raise ValueError(f"{type(model).__name__}.q_logits({l}, h) must return "
                                     f"{'[n, N, C]' if categorical else '[n, N]'}, got {tuple(a_l.shape)}")
                omegas.append(gumbel_noise(a_l.shape, a_l) if categorical else logistic_noise(a_l.shape, a_l))
                main.append(hard(a_l + omegas[-1]))
                h = main[-1]
        logits_main = [first_layer_logits(model, x, M * K) if l == 0 else model.q_logits(l, main[l - 1])
                       for l in range(depth)]  # attached
        fmain, log_w, kl, log_px = f_at(main, logits_main)

        def layer_function(l: int, relaxed: bool) -> Callable[[Tensor], Tensor]:
            def fl(zl: Tensor) -> Tensor:
                z = main[:l] + [zl]
                logits = [a.detach() for a in logits_main[:l + 1]]
                for m in range(l + 1, depth):
                    a_m = model.q_logits(m, z[-1])
                    z.append(downstream(a_m, omegas[m]) if relaxed else hard(a_m + omegas[m]))
                    logits.append(a_m)
                return f_at(z, logits).value
            return fl

        surrogate = torch.zeros((), dtype=fmain.dtype, device=fmain.device)
        aux: Optional[Tensor] = None
        extras: List[Dict[str, Tensor]] = []
        for l in range(depth):
            g, _, aux_l, extra = self.score_gradient(layer_function(l, False), logits_main[l].detach(), shape,
                                                     params, fsmooth=layer_function(l, True))
            surrogate = surrogate + (g.detach() * logits_main[l]).sum()
            if aux_l is not None:
                aux = aux_l if aux is None else aux + aux_l
            extras.append(extra)
        loss = -surrogate / (B * M) - fmain.mean()
        if aux is not None:
            loss = loss + aux
        diagnostics = self.base_diagnostics(log_w.detach(), kl.detach(), log_px.detach())
        diagnostics["estimator"] = {k: torch.stack([e[k].detach() for e in extras], 0).mean(0)
                                    for k in extras[0]}
        return loss, diagnostics, {"z": main, "q_logits": logits_main}
