r"""ARM (Yin & Zhou 2019) and DisARM (Dong et al. 2020): ``arm``, ``disarm``, for Bernoulli latents.

The model protocol and the objective are those of :mod:`ovis.estimators.discrete`, the
single-layer estimation and the surrogate those of :mod:`ovis.estimators.discrete_base`.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from ovis.estimators.discrete import bound_at, first_layer_logits, uniform_noise
from ovis.estimators.discrete_base import DiscreteLatentEstimator

__all__ = ["ARM"]


class ARM(DiscreteLatentEstimator):
    r"""ARM (Yin & Zhou 2019) and DisARM (Dong et al. 2020) for Bernoulli latents.

    With :math:`u \sim U(0,1)^{KN}`, :math:`b = 1[u < \sigma(a)]` and the antithetic
    :math:`\tilde b = 1[u > \sigma(-a)]` (both :math:`\sim q`):

    * ARM: :math:`g_a = (\bar f(\tilde b) - \bar f(b))(u - \tfrac12)`;
    * DisARM: :math:`g_a = \tfrac12(\bar f(b) - \bar f(\tilde b))\,(-1)^{\tilde b}\,
      1[b \neq \tilde b]\,\sigma(|a|)` (ARM Rao-Blackwellised over ``u`` given ``(b, b~)``).

    Both are unbiased; the direct term is averaged over ``b`` and ``b~``.  With ``iw = 1`` the
    objective is the ELBO, as in both papers; with ``iw = K`` the bits of the ``K`` particles
    are treated jointly and the objective is :math:`\mathcal{L}_K`.

    Multi-layer models (``latent_depth = L > 1``), layer-wise as in both papers: one main sample
    :math:`b = (b_1..b_L) \sim q` is drawn with uniforms :math:`u_l`; for each layer ``l`` the
    antithetic :math:`\tilde b_l = 1[u_l > \sigma(-a_l)]` (``a_l`` the logits given the main
    :math:`b_{l-1}`) is completed by a fresh sample of the layers below it from ``q``, and the
    per-layer estimate uses :math:`\bar f` at the main sample and at that branch (one extra
    evaluation per layer; unbiased, since each branch's completion is a sample of ``q`` given
    :math:`\tilde b_l`).  The direct term is taken at the main sample.

    Args:
        disarm: DisARM instead of ARM.
    """

    family = "arm"

    def __init__(self, mc: int = 1, iw: int = 1, disarm: bool = False) -> None:
        super().__init__(mc=mc, iw=iw)
        self.disarm = bool(disarm)
        if self.disarm:
            self.family = "disarm"

    def check_categorical(self, depth: int, C: int) -> None:
        r"""ARM and DisARM are defined for binary latents only: always raises ``TypeError``."""
        raise TypeError(
            f"{self.family} is defined for binary (Bernoulli) latents only, and this model has categorical "
            f"latents (latent_categories={C}); the categorical extension of ARM is ARSM (Yin, Yue & Zhou "
            "2019, augment-REINFORCE-swap-merge), which is not implemented: use rebar, dynamic-rebar, relax, "
            "muprop, nvil (unbiased) or gumbel-softmax / straight-through (relaxed)"
        )

    def antithetic_gradient(self, fb: Tensor, fbt: Tensor, u: Tensor, a: Tensor, b: Tensor, bt: Tensor,
                            shape: Tuple[int, int, int]) -> Tensor:
        r"""The ARM or DisARM estimate ``g_a`` ``[n, N]`` (class docstring) from the uniforms ``u``,
        the logits ``a``, the pair ``(b, b~)`` (``[n, N]`` each) and :math:`\bar f` at them
        (``[B, M]`` each)."""
        if self.disarm:
            return (0.5 * self.per_unit(fb - fbt, shape, a) * (1.0 - 2.0 * bt) * (b != bt).to(a.dtype)
                    * torch.sigmoid(a.abs()))
        return self.per_unit(fbt - fb, shape, a) * (u - 0.5)

    def score_gradient(self, fbar, a, shape, params):  # type: ignore[no-untyped-def]
        u = uniform_noise(a.shape, a)
        b = (u < torch.sigmoid(a)).to(a.dtype)
        bt = (u > torch.sigmoid(-a)).to(a.dtype)
        with torch.no_grad():
            fb, fbt = fbar(b), fbar(bt)
        g = self.antithetic_gradient(fb, fbt, u, a, b, bt, shape)
        return g, [b, bt], None, {"f_diff_abs": (fb - fbt).abs().mean(1)}

    def compute_layerwise(self, model, x, params, depth):  # type: ignore[no-untyped-def]
        B, M, K = x.shape[0], self.mc, self.iw
        shape = (B, M, K)
        x_exp = self.expand(x, M, K)

        def complete(prefix: List[Tensor], logits: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
            r"""Sample the layers below ``prefix`` from ``q`` (no gradient); ``logits`` are those of
            the prefix's layers, and the returned logits those of all the layers."""
            z, logits = list(prefix), list(logits)
            with torch.no_grad():
                while len(z) < depth:
                    logits.append(model.q_logits(len(z), z[-1]))
                    z.append(torch.bernoulli(torch.sigmoid(logits[-1])))
            return z, logits

        # the main sample, layer by layer, keeping each layer's uniforms and its logits (attached to
        # phi); the first layer's logits are those of each data point, repeated over its M*K copies
        main: List[Tensor] = []
        us: List[Tensor] = []
        logits: List[Tensor] = []
        for l in range(depth):
            a_l = first_layer_logits(model, x, M * K) if l == 0 else model.q_logits(l, main[-1])
            with torch.no_grad():
                u = uniform_noise(a_l.shape, a_l)
                main.append((u < torch.sigmoid(a_l)).to(a_l.dtype))
            us.append(u)
            logits.append(a_l)
        fmain, log_w, kl, log_px = bound_at(model, x_exp, main, logits, shape, params)
        surrogate = torch.zeros((), dtype=fmain.dtype, device=fmain.device)
        diffs = []
        for l in range(depth):
            a_l = logits[l].detach()
            bt = (us[l] > torch.sigmoid(-a_l)).to(a_l.dtype)
            with torch.no_grad():
                # the antithetic sample shares the main sample's layers above l, so their logits;
                # the layers below are drawn given bt, their logits computed once for both uses
                fbt = bound_at(model, x_exp, *complete(main[:l] + [bt], [a.detach() for a in logits[:l + 1]]),
                               shape, params).value
                g = self.antithetic_gradient(fmain.detach(), fbt, us[l], a_l, main[l], bt, shape)
            surrogate = surrogate + (g * logits[l]).sum()
            diffs.append((fmain.detach() - fbt).abs().mean(1))
        loss = -surrogate / (B * M) - fmain.mean()
        diagnostics = self.base_diagnostics(log_w.detach(), kl.detach(), log_px.detach())
        diagnostics["estimator"] = {"f_diff_abs": torch.stack(diffs, 0).mean(0)}
        return loss, diagnostics, {"z": main, "q_logits": logits}
