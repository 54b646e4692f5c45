r"""``hybrid-mixture``: the ELBO of a model whose :math:`q(z|x)` is a mixture of diagonal Gaussians,
with the component choice by score function and the component by reparameterisation.

For each data point, ``K >= 2`` particles :math:`c_k \sim \mathrm{Cat}(\pi(x))`,
:math:`z_k = \mu_{c_k}(x) + \sigma_{c_k}(x)\odot\epsilon_k`, :math:`f_k = \log w_k =
\log p(x|z_k) + \log p(z_k) - \log q(z_k|x)` (:math:`\beta`, free bits as in
:func:`ovis.estimators.importance.log_weights`).  The surrogate minimised is

.. math::

    -\frac1K\sum_k \Big[\mathrm{sg}(f_k - b_k)\,\log\pi_{c_k}(x) + f_k\Big],\qquad
    b_k = \frac{1}{K-1}\sum_{l\neq k} f_l

whose negative gradient is an unbiased estimate of :math:`\nabla` ELBO for every parameter (the
leave-one-out control variate does not depend on particle ``k``; :math:`f_k` carries the pathwise
gradient through :math:`z_k` and the direct one through :math:`\log q` and the generative model).
See :mod:`ovis.distributions.mixture`.  The objective is the ELBO (``K`` particles average, they
are not importance-weighted); ``alpha`` must be 0.

The model must expose ``posterior(x)`` returning a ``MixtureSameFamily`` of
``Independent(Normal)`` components (e.g. ``--model vae --posterior mog``,
:class:`ovis.models.likelihoods.LikelihoodVAE`), ``prior(n)`` and ``observation_model(z)``.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn
from torch.distributions import Independent, MixtureSameFamily, Normal

from ovis.distributions.mixture import DiagonalGaussianMixture
from ovis.distributions.utils import repeat_distribution
from ovis.estimators.base import Diagnostics, GradientEstimator, RuntimeParams
from ovis.estimators.importance import log_weights
from ovis.models.base import batch_reduce, uses_particles
from ovis.models.protocol import check_model_output, describe_rows

__all__ = ["HybridMixtureELBO"]


class HybridMixtureELBO(GradientEstimator):
    r"""The hybrid (score function + reparameterisation) ELBO estimator of a mixture posterior.

    Diagnostics: the base ones and ``estimator/cv_mse`` (mean of :math:`(f_k - b_k)^2`).
    """

    family = "hybrid-mixture"
    reparameterised = False  # it samples through the mixture itself, not model(zgrads=True)
    supports_alpha = False
    min_iw = 2

    def compute(self, model: nn.Module, x: Tensor, params: RuntimeParams) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The ELBO estimate with ``K`` particles per outer sample: ``z_k`` is drawn from the mixture
        ``q(z|x)`` with a reparameterised Gaussian part, and the component choice ``c_k`` is handled by
        the score function :math:`\log \pi_{c_k}` with the leave-one-out baseline
        :math:`b_k = \frac{1}{K-1}\sum_{j\neq k} f_j` (``f = log w``, ``[B, M, K]``).

        Returns:
            ``(loss, diagnostics, output)``; ``output`` has ``px``, ``z``, ``qz`` and ``pz``.

        Raises:
            TypeError: the model lacks the hooks ``posterior(x)``, ``prior(n)``, ``observation_model(z)``,
                or its ``q(z|x)`` is not a ``MixtureSameFamily`` of diagonal Gaussians.
            ovis.models.protocol.ModelProtocolError: the model's distributions break the protocol
                (checked on the first call).
        """
        for hook in ("posterior", "prior", "observation_model"):
            if not callable(getattr(model, hook, None)):
                raise TypeError(f"{self.family} needs the model hooks posterior(x), prior(n), "
                                f"observation_model(z); {type(model).__name__} has no {hook}()")
        B, M, K = x.shape[0], self.mc, self.iw
        x_exp = self.expand(x, M, K)
        # encoded once per data point for a model with the particles protocol (ovis.models.base)
        q = (repeat_distribution(model.posterior(x), M * K) if uses_particles(model)
             else model.posterior(x_exp))
        comp = getattr(q, "component_distribution", None)
        if not (isinstance(q, MixtureSameFamily) and isinstance(comp, Independent)
                and isinstance(comp.base_dist, Normal) and comp.reinterpreted_batch_ndims == 1):
            raise TypeError(f"{self.family} needs q(z|x) = MixtureSameFamily(Categorical, Independent(Normal, 1)) "
                            "(e.g. ovis.models.likelihoods.LikelihoodVAE(posterior='mog'), run.py --model vae --posterior "
                            f"mog), got {type(q).__name__}")
        mix = DiagonalGaussianMixture(q.mixture_distribution.logits, comp.base_dist.loc, comp.base_dist.scale)
        z, _, log_pi_c = mix.hybrid_sample(1)
        z, log_pi_c = z[0], log_pi_c[0]
        n = z.shape[0]
        px = model.observation_model(z)
        pz = model.prior(n)
        output = {"px": px, "z": [z], "qz": [q], "pz": [pz]}
        if self._model_checks.needed(model, ("hybrid",)):  # the protocol's shapes, on the first call only
            check_model_output(output, rows=B * M * K, x_shape=tuple(x.shape[1:]), rows_note=describe_rows(B, M, K),
                               source=f"{self.family}: {type(model).__name__}.posterior/prior/observation_model")
            self._model_checks.done(model, ("hybrid",))
        log_px = batch_reduce(px.log_prob(x_exp)).view(B, M, K)
        log_qz = mix.log_prob(z).view(B, M, K, 1)
        log_pz = batch_reduce(pz.log_prob(z)).view(B, M, K, 1)
        f, kl = log_weights(log_px, log_qz, log_pz, params.beta, params.freebits)
        with torch.no_grad():
            b = (f.sum(-1, keepdim=True) - f) / (K - 1)
            signal = f - b
        loss = -(signal * log_pi_c.view(B, M, K) + f).mean()
        diagnostics = self.base_diagnostics(f.detach(), kl.detach(), log_px.detach())
        with torch.no_grad():
            diagnostics["estimator"] = {"cv_mse": (signal ** 2).mean(dim=(1, 2))}
        return loss, diagnostics, output
