r"""Image likelihoods of the VAE (``--likelihood``): Bernoulli and Continuous Bernoulli.

* ``bernoulli``: :math:`p(x|z) = \prod_i \mathrm{Bern}(x_i; \sigma(\eta_i(z)))`, for binary images.
* ``cbernoulli``: the Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019),
  :math:`p(x|z) = \prod_i C(\lambda_i)\,\lambda_i^{x_i}(1-\lambda_i)^{1-x_i}`, ``x_i in [0, 1]``,
  with the normalising constant :math:`C(\lambda)` that the Bernoulli "likelihood" of grey levels
  omits (``torch.distributions.ContinuousBernoulli``; its ``mean`` is not :math:`\lambda`).

:class:`LikelihoodVAE` is :class:`ovis.models.vae.VAE` (any ``--prior``, e.g. a learned mixture of
Gaussians, ``mog``) with a choice of likelihood (the maths of each is in :mod:`ovis.models.cpds`).
Grey-level data: ``--dataset fashion-grey`` / ``mnist-grey`` (:func:`ovis.datasets.load_grey_levels`).
"""
from __future__ import annotations

from typing import Any

from ovis.datasets.mnist import load_grey_levels  # re-exported: the loader lives in ovis.datasets
from ovis.models.cpds import ContinuousBernoulliImageCPD, MixtureOfGaussianMeanFieldsCPD
from ovis.models.nets import FFNNEncoder
from ovis.models.utilities import image_grid  # re-exported: the grid lives in ovis.models.utilities
from ovis.models.vae import VAE

__all__ = ["LIKELIHOODS", "POSTERIORS", "LikelihoodVAE", "load_grey_levels", "image_grid"]

#: valid ``--likelihood`` values
LIKELIHOODS = ("bernoulli", "cbernoulli")
#: valid ``--posterior`` values
POSTERIORS = ("normal", "mog")


class LikelihoodVAE(VAE):
    r"""A :class:`~ovis.models.vae.VAE` whose observation model is ``likelihood``, optionally with a
    mixture-of-Gaussians posterior.

    * ``likelihood="cbernoulli"``: ``generative_model.observation`` is a
      :class:`~ovis.models.cpds.ContinuousBernoulliImageCPD` on the VAE's decoder.
    * ``posterior="mog"``: :math:`q(z|x) = \sum_c \pi_c(x)\,\mathcal{N}(z; \mu_c(x),
      \mathrm{diag}\,\sigma_c(x)^2)` with ``posterior_components`` components
      (:class:`~ovis.models.cpds.MixtureOfGaussianMeanFieldsCPD`; the MLP encoder outputs
      ``C (1 + 2N)`` numbers).  It has no ``rsample``: train it with a score-function estimator
      (``reinforce``, ``vimco-*``, ``ovis-*``) or ``hybrid-mixture``; a pathwise estimator is
      refused with a clear error.

    Args:
        likelihood: ``bernoulli`` or ``cbernoulli`` (see the module docstring).
        posterior: ``normal`` or ``mog`` (needs ``prior`` ``normal`` or ``mog`` and the MLP encoder).
        posterior_components: ``C >= 1`` for ``posterior="mog"``.
        \*args, \*\*kwargs: those of :class:`~ovis.models.vae.VAE` (``prior="mog"`` with ``K``
            components gives a learned mixture prior).
    """

    def __init__(self, *args: Any, likelihood: str = "bernoulli", posterior: str = "normal",
                 posterior_components: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; valid likelihoods are {list(LIKELIHOODS)}")
        if posterior not in POSTERIORS:
            raise ValueError(f"unknown posterior {posterior!r}; valid posteriors are {list(POSTERIORS)}")
        self.likelihood = likelihood
        self.posterior_family = posterior
        self.posterior_components = int(posterior_components)
        if likelihood == "cbernoulli":  # the same decoder, a normalised likelihood of grey levels
            g = self.generative_model
            g.observation = ContinuousBernoulliImageCPD(g.observation.net, self.x_shape)
        if posterior == "mog":
            if self.prior_family not in ("normal", "mog"):
                raise ValueError(f"a mixture-of-Gaussians posterior needs Gaussian latents (--prior normal "
                                 f"or mog), got --prior {self.prior_family}")
            if self._custom_encoder:
                raise ValueError("a mixture-of-Gaussians posterior is built with the MLP encoder only")
            if self.posterior_components < 1:
                raise ValueError(f"posterior_components must be >= 1, got {posterior_components}")
            C, N = self.posterior_components, self.N
            self.inference_network = MixtureOfGaussianMeanFieldsCPD(
                FFNNEncoder(self.x_shape, C * (1 + 2 * N), self.hdim, self.nlayers), N, C)
