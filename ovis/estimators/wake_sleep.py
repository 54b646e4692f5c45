r"""Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019): ``wake-wake``, ``wake-sleep``.

* theta: maximise :math:`\mathcal{L}_K^\alpha` (the gradient :math:`\sum_k v_k\nabla_\theta\log w_k`,
  unbiased for :math:`\nabla_\theta\mathcal{L}_K^\alpha`);
* phi, wake phase (``wake-wake``): minimise :math:`-\sum_k \mathrm{sg}(v_k)\log q(z_k|x)`, a
  self-normalised estimate of :math:`\nabla_\phi KL(p(z|x)\,\|\,q(z|x))`;
* phi, sleep phase (``wake-sleep``): minimise :math:`-\log q(z|x)` on :math:`(z, x)\sim p`
  (needs the model hook ``infer(x, z)``).

The phi-gradient does not follow :math:`\mathcal{L}_K` (it is biased for it by design).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, GradientEstimator, Particles, RuntimeParams
from ovis.estimators.score_function import score_function_surrogate
from ovis.models.base import batch_reduce, require_hook
from ovis.models.protocol import check_model_output, describe_rows

__all__ = ["WakeWake", "WakeSleep"]


class _ReweightedWakeSleep(GradientEstimator):
    family = "rws"

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        p, log_w, kl, bound, v = self.weighted_particles(model, x, params)
        loss, phi_loss = self.surrogate(model, x, p, v, bound, params)
        diagnostics = self.base_diagnostics(log_w, kl, p.log_px)
        diagnostics["estimator"] = {"phi_loss": phi_loss.detach().expand(x.shape[0])}
        return loss, diagnostics, p.output

    def surrogate(self, model: nn.Module, x: Tensor, p: Particles, v: Tensor, bound: Tensor,
                  params: RuntimeParams) -> Tuple[Tensor, Tensor]:
        r"""``(loss, phi_loss)``: the surrogate (``-bound`` for theta plus the phi phase) and the
        phi phase's value."""
        raise NotImplementedError


class WakeWake(_ReweightedWakeSleep):
    r"""Reweighted wake-sleep with the wake phase for ``phi`` (``wake-wake``).

    The surrogate :math:`-\frac{1}{BM}\sum(\mathcal{L} + \sum_k \mathrm{sg}(v_k)\log q(z_k|x))` is
    that of a score-function estimator whose learning signal is ``v`` (one linear node).

    Needs ``K >= 2``: at ``K = 1``, ``v_1 = 1`` and the phi-gradient is :math:`\nabla_\phi\log q(z|x)`
    with :math:`z \sim q`, whose expectation is zero (pure noise)."""

    family = "wake-wake"
    min_iw = 2
    min_iw_hint = (": at K = 1 its phi-gradient grad log q(z|x), z ~ q, has mean zero (pure noise); "
                   "use {fix} or more, or wake-sleep (whose sleep phase needs no particles)")

    def surrogate(self, model: nn.Module, x: Tensor, p: Particles, v: Tensor, bound: Tensor,
                  params: RuntimeParams) -> Tuple[Tensor, Tensor]:
        with torch.no_grad():
            phi_loss = -(v * p.log_qz.sum(-1)).sum(-1).mean()
        # the wake phase's signal v is not a gradient estimate of the bound: no term of it stands for
        # the derivative through log q inside log w (direct_weights = 0), whatever beta and free bits
        loss = score_function_surrogate(v, p.log_px, p.log_qz, p.log_pz, v, bound, params.beta, params.freebits,
                                        direct_weights=torch.zeros_like(v))
        return loss, phi_loss


class WakeSleep(_ReweightedWakeSleep):
    r"""Reweighted wake-sleep with the sleep phase for ``phi`` (``wake-sleep``).

    ``B*M*K`` pairs ``(z, x) ~ p`` are drawn with ``model.sample_from_prior`` and
    ``log q(z|x)`` is evaluated with ``model.infer(x, z)``.
    """

    family = "wake-sleep"

    def surrogate(self, model: nn.Module, x: Tensor, p: Particles, v: Tensor, bound: Tensor,
                  params: RuntimeParams) -> Tuple[Tensor, Tensor]:
        infer = require_hook(model, "infer", self.family)
        B, M, K = v.shape
        with torch.no_grad():
            kwargs = {} if params.tau is None else {"tau": params.tau}
            prior = model.sample_from_prior(B * M * K, **kwargs)
            xs = prior["px"].sample()
            zs = [z.detach() for z in prior["z"]]
        qz = infer(xs, zs)
        if self._model_checks.needed(model, ("sleep",)):  # the protocol check, on the first call only
            name = type(model).__name__
            check_model_output(prior, with_q=False, rows=B * M * K, x_shape=tuple(x.shape[1:]),
                               rows_note=describe_rows(B, M, K),
                               source=f"{self.family}: {name}.sample_from_prior({B * M * K})")
            check_model_output({"px": prior["px"], "z": zs, "qz": qz, "pz": prior["pz"]}, rows=B * M * K,
                               source=f"{self.family}: {name}.infer(x, z) (its list checked as output['qz'])")
            self._model_checks.done(model, ("sleep",))
        log_q_sleep = sum(batch_reduce(q.log_prob(z)) for q, z in zip(qz, zs))
        phi_loss = -log_q_sleep.mean()
        no_score = v.new_zeros(B, M, 0)  # the wake phase carries no phi term
        theta_loss = score_function_surrogate(no_score, p.log_px, p.log_qz, p.log_pz, v, bound, params.beta,
                                              params.freebits)
        return theta_loss + phi_loss, phi_loss
