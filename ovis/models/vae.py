r"""Variational auto-encoders with one stochastic layer, assembled from components.

A VAE here is three modules (:mod:`ovis.models.cpds`, :mod:`ovis.models.nets`):

* ``inference_network``: a CPD net ``q(z|x)`` (an encoder ``[*batch, *x_shape] -> parameters``
  and a latent family: :class:`~ovis.models.cpds.GaussianMeanFieldCPD`,
  :class:`~ovis.models.cpds.BernoulliCPD`, :class:`~ovis.models.cpds.CategoricalCPD`, or a
  mixture :class:`~ovis.models.cpds.MixtureOfGaussianMeanFieldsCPD`);
* ``generative_model.prior``: a prior net ``p(z)``
  (:class:`~ovis.models.cpds.StandardNormalPrior`, :class:`~ovis.models.cpds.MixtureOfGaussiansPrior`,
  :class:`~ovis.models.cpds.BernoulliPrior`, :class:`~ovis.models.cpds.CategoricalPrior`);
* ``generative_model.observation``: a CPD net ``p(x|z)`` over images (a decoder and
  :class:`~ovis.models.cpds.BernoulliImageCPD` or
  :class:`~ovis.models.cpds.ContinuousBernoulliImageCPD`, :mod:`ovis.models.likelihoods`).

The networks accept any leading batch shape; the estimators give them ``[n, *x_shape]``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ovis.distributions.utils import repeat_distribution
from ovis.models.base import SingleLayerModel, TemplateModel
from ovis.models.cpds import (
    BernoulliCPD,
    BernoulliImageCPD,
    BernoulliPrior,
    CategoricalCPD,
    CategoricalPrior,
    GaussianMeanFieldCPD,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
)
from ovis.models.nets import (
    FFNNDecoder,
    FFNNEncoder,
    StructuredNet,
    conv_decoder,
    conv_encoder,
    init_output_bias,
    mlp,
)

__all__ = ["GaussianVAE", "VAE", "LATENT_PRIORS", "mlp", "init_output_bias", "conv_encoder", "conv_decoder"]


class GaussianVAE(SingleLayerModel):
    r"""VAE with ``N`` Gaussian latents and a Bernoulli observation model:
    ``q(z|x) = N(mu(x), diag sigma(x)^2)``, ``p(z) = N(0, I)`` (mean and log-scale learned with
    ``learn_prior``), ``p(x|z) = Bernoulli(logits(z))``, tanh MLPs.

    Args:
        x_shape: shape of one observation (flattened to ``D = prod(x_shape)`` by the MLPs).
        N: number of latent units.
        hdim: hidden units of the MLPs.
        nlayers: hidden layers of each MLP.
        learn_prior: learn the prior's mean and log-scale.
        x_mean: optional training mean of ``x`` (``x_shape``) to initialise the output bias at its logit.
    """

    def __init__(self, x_shape: Sequence[int], N: int = 32, hdim: int = 64, nlayers: int = 2,
                 learn_prior: bool = False, x_mean: Tensor | None = None) -> None:
        super().__init__()
        if N < 1 or hdim < 1 or nlayers < 0:
            raise ValueError(f"invalid architecture N={N}, hdim={hdim}, nlayers={nlayers}")
        self._x_shape = torch.Size(x_shape)
        self.N = N
        self.inference_network = GaussianMeanFieldCPD(FFNNEncoder(self._x_shape, 2 * N, hdim, nlayers), N)
        self.generative_model = nn.Module()
        self.generative_model.observation = BernoulliImageCPD(FFNNDecoder(N, self._x_shape, hdim, nlayers),
                                                              self._x_shape)
        self.generative_model.prior = StandardNormalPrior(N, learn=learn_prior)
        if x_mean is not None:
            init_output_bias(self.generative_model.observation, x_mean)

    @property
    def x_shape(self) -> torch.Size:
        return self._x_shape

    def prior(self, n: int) -> Distribution:
        r"""``p(z) = N(m, diag s^2)`` (``N(0, I)`` unless ``learn_prior``), batch ``[n]``, event ``[N]``."""
        return self.generative_model.prior(n)

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z) = Bernoulli(logits(z))`` for ``z`` ``[n, N]``: batch ``[n]``, event ``x_shape``."""
        return self.generative_model.observation(z)

    def posterior(self, x: Tensor) -> Distribution:
        r"""``q(z|x) = N(mu(x), diag sigma(x)^2)`` for ``x`` ``[n, *x_shape]``: batch ``[n]``, event ``[N]``."""
        return self.inference_network(x)


# ---------------------------------------------------------------------------------- general VAE
#: latent families of :class:`VAE` (``--prior``)
LATENT_PRIORS = ("normal", "bernoulli", "categorical", "mog")


class VAE(TemplateModel):
    r"""A one-layer VAE with a Bernoulli decoder and a choice of latent family (``prior``).

    * ``normal``: ``q(z|x) = N(mu(x), sigma(x)^2)``, ``p(z) = N(m, s^2)`` (``m = 0``, ``s = 1``
      unless ``learn_prior``), ``z in R^N``.
    * ``bernoulli``: ``q(z|x) = Bernoulli(sigmoid(g(x)))``, ``p(z) = Bernoulli(sigmoid(b))``
      (``b = 0`` unless ``learn_prior``), ``z in {0, 1}^N``.
    * ``categorical``: ``N`` one-hot variables of ``K`` classes, ``z`` of shape ``[n, N, K]``;
      ``p(z)`` uniform unless ``learn_prior``.
    * ``mog``: Gaussian ``q``; ``p(z) = sum_c pi_c N(z; m_c, diag(s_c^2))`` with ``C = K``
      components, always learned (``MixtureSameFamily``).

    Discrete latents have no ``rsample``: ``forward(x, zgrads=True, tau=...)`` then uses the
    concrete / Gumbel-softmax relaxation (Maddison et al. 2017; Jang et al. 2017) for *both*
    ``q`` and ``p`` (``RelaxedOneHotCategorical`` / ``RelaxedBernoulli`` at temperature ``tau``,
    default 0.5), so that pathwise estimators optimise the relaxed bound; ``zgrads=False`` draws
    hard samples (``OneHotCategorical`` / ``Bernoulli``), for score-function estimators and for
    evaluation.

    The model is assembled from components (see the module docstring): ``inference_network`` (a
    CPD net), ``generative_model.prior`` (a prior net) and ``generative_model.observation`` (an
    image CPD net).

    Args:
        x_shape: shape of one observation.
        prior: one of :data:`LATENT_PRIORS`.
        N: latent variables.
        K: classes per categorical variable (``categorical``) or mixture components (``mog``).
        hdim, nlayers: the tanh MLPs (:class:`~ovis.models.nets.FFNNEncoder` /
            :class:`~ovis.models.nets.FFNNDecoder`; ignored when ``encoder`` / ``decoder`` are given).
        learn_prior: learn the prior's parameters (``mog``: always learned).
        x_mean: training mean (``x_shape``) to initialise the output bias at its logit.
        encoder: optional network ``[n, *x_shape] -> [n, q-parameters]`` (e.g. :func:`conv_encoder`,
            or a :class:`~ovis.models.nets.StructuredNet` such as :class:`~ovis.models.nets.CNNEncoder`).
        decoder: optional network ``[n, latent size] -> logits`` (``n`` rows of ``prod(x_shape)``).
        tau: the default relaxation temperature.
    """

    def __init__(self, x_shape: Sequence[int], prior: str = "normal", N: int = 32, K: int = 8,
                 hdim: int = 64, nlayers: int = 2, learn_prior: bool = False,
                 x_mean: Tensor | None = None, encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None, tau: float = 0.5) -> None:
        super().__init__()
        if prior not in LATENT_PRIORS:
            raise ValueError(f"unknown prior {prior!r}; valid priors are {list(LATENT_PRIORS)}")
        if N < 1 or K < 1 or hdim < 1 or nlayers < 0:
            raise ValueError(f"invalid architecture N={N}, K={K}, hdim={hdim}, nlayers={nlayers}")
        if prior == "categorical" and K < 2:
            raise ValueError(f"a categorical prior needs K >= 2 classes, got K={K}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self._x_shape = torch.Size(x_shape)
        self.prior_family, self.N, self.K, self.tau = prior, N, K, float(tau)
        self.hdim, self.nlayers = int(hdim), int(nlayers)
        latent_shape = (N, K) if prior == "categorical" else (N,)
        self.z_dim = int(math.prod(latent_shape))
        q_dim = {"normal": 2 * N, "mog": 2 * N, "bernoulli": N, "categorical": N * K}[prior]
        self._custom_encoder = encoder is not None
        if encoder is None:
            enc: nn.Module = FFNNEncoder(self._x_shape, q_dim, hdim, nlayers)
        elif isinstance(encoder, StructuredNet):
            enc = encoder
        else:  # a network of a flat batch [n, *x_shape]
            enc = StructuredNet(encoder, self._x_shape, (q_dim,))
        if decoder is None:
            dec: nn.Module = FFNNDecoder(latent_shape, self._x_shape, hdim, nlayers)
        elif isinstance(decoder, StructuredNet):
            dec = decoder
        else:  # a network of flat latents [n, z_dim]
            dec = StructuredNet(decoder, latent_shape, self._x_shape, flatten_input=True)
        if prior in ("normal", "mog"):
            self.inference_network: nn.Module = GaussianMeanFieldCPD(enc, N)
        elif prior == "bernoulli":
            self.inference_network = BernoulliCPD(enc, N)
        else:
            self.inference_network = CategoricalCPD(enc, N, K)
        g = nn.Module()
        g.observation = BernoulliImageCPD(dec, self._x_shape)
        if prior == "normal":
            g.prior = StandardNormalPrior(N, learn=learn_prior)
        elif prior == "bernoulli":
            g.prior = BernoulliPrior(N, learn=learn_prior)
        elif prior == "categorical":
            g.prior = CategoricalPrior(N, K, learn=learn_prior)
        else:  # mog: always learned; the means start at N(0, I) draws so the components differ
            g.prior = MixtureOfGaussiansPrior(N, K)
        self.generative_model = g
        if x_mean is not None:
            init_output_bias(g.observation, x_mean)

    @property
    def x_shape(self) -> torch.Size:
        return self._x_shape

    @property
    def discrete(self) -> bool:
        r"""Discrete latents (``bernoulli``, ``categorical``): relaxed when ``zgrads``."""
        return self.prior_family in ("bernoulli", "categorical")

    def _tau(self, kwargs: Dict[str, Any]) -> float:
        r"""The temperature (``tau=`` of the call, else the model's), checked > 0; the CPDs make it
        a tensor on their parameters' device and dtype."""
        tau = kwargs.get("tau")
        tau = self.tau if tau is None else float(tau)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        return tau

    def prior(self, n: int, relaxed: bool = False, tau: Tensor | float | None = None) -> Distribution:
        r"""``p(z)`` with batch shape ``[n]`` (relaxed at temperature ``tau`` when asked)."""
        if self.discrete:
            return self.generative_model.prior(n, relaxed=relaxed, tau=tau)
        return self.generative_model.prior(n)

    def posterior(self, x: Tensor, relaxed: bool = False, tau: Tensor | float | None = None) -> Distribution:
        r"""``q(z|x)``, batch ``[n]`` for ``x = [n, *x_shape]``."""
        if self.discrete:
            return self.inference_network(x, relaxed=relaxed, tau=tau)
        return self.inference_network(x)

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z)``, batch ``[n]``, event ``x_shape``."""
        return self.generative_model.observation(z)

    #: the estimators call ``forward(x, particles=n)`` with the un-expanded batch (see forward)
    supports_particles = True

    def forward(self, x: Tensor, zgrads: bool = False, particles: int = 1, **kwargs: Any) -> Dict[str, Any]:
        r"""The protocol's output mapping (:mod:`ovis.models.base`) on ``B * particles`` rows.

        ``x`` ``[B, *x_shape]`` is encoded once; ``q(z|x)`` is repeated to ``B * particles`` rows
        (:func:`~ovis.distributions.utils.repeat_distribution`; row ``b * particles + j`` is
        particle ``j`` of data point ``b``) and the particles are drawn from it (``rsample``, relaxed
        for discrete latents, when ``zgrads``; ``tau=`` the temperature): the output of ``forward``
        on ``x`` repeated ``particles`` times, on the same random draws, without ``particles - 1``
        of ``particles`` encoder passes."""
        relaxed = zgrads and self.discrete
        tau = self._tau(kwargs) if relaxed else None
        qz = repeat_distribution(self.posterior(x, relaxed=relaxed, tau=tau), particles)
        z = qz.rsample() if zgrads else qz.sample()
        pz = self.prior(x.shape[0] * particles, relaxed=relaxed, tau=tau)
        return {"px": self.observation_model(z), "z": [z], "qz": [qz], "pz": [pz]}

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Distribution]:
        r"""``[q(z|x)]`` (hard, unrelaxed): one layer, independent of the given ``z``."""
        return [self.posterior(x)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        r"""``z ~ p(z)`` (hard samples), then ``{'px': p(x|z), 'z': [z], 'pz': [p(z)]}``, batch ``[bs]``."""
        pz = self.prior(bs)
        z = pz.sample()
        return {"px": self.observation_model(z), "z": [z], "pz": [pz]}
