r"""A variational auto-encoder with Gaussian latents and a Bernoulli decoder.

``q(z|x) = N(mu_phi(x), sigma_phi(x)^2)`` (diagonal), ``p(z) = N(0, I)`` (optionally learned
mean and scale), ``p(x|z) = Bernoulli(logits_theta(z))``, MLPs of ``nlayers`` hidden layers of
``hdim`` units (tanh).  Observations are flattened: ``x`` of shape ``[N, *x_shape]``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    OneHotCategorical,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
)

from ovis.models.base import SingleLayerModel, TemplateModel

__all__ = ["GaussianVAE", "VAE", "LATENT_PRIORS", "mlp", "init_output_bias", "conv_encoder", "conv_decoder"]


def mlp(in_dim: int, out_dim: int, hdim: int, nlayers: int, act: type = nn.Tanh) -> nn.Sequential:
    r"""``in_dim -> (hdim, act) x nlayers -> out_dim``; ``nlayers = 0`` is a linear map."""
    layers: List[nn.Module] = []
    d = in_dim
    for _ in range(nlayers):
        layers += [nn.Linear(d, hdim), act()]
        d = hdim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def init_output_bias(net: nn.Module, x_mean: Tensor) -> None:
    r"""Set the bias of the last ``nn.Linear`` / ``nn.ConvTranspose2d`` of ``net`` at
    ``logit(x_mean)`` (clamped to ``[1e-3, 1 - 1e-3]``), so that ``p(x|z)`` starts at the data mean.

    For a linear layer the bias is ``[D]`` (``x_mean`` flattened); for a transposed convolution
    it is one value per channel (the mean over the image)."""
    last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))]
    if not last or last[-1].bias is None:
        raise ValueError(f"{type(net).__name__} has no output layer with a bias to initialise")
    layer = last[-1]
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            m = x_mean.reshape(-1)
            if m.numel() != layer.bias.numel():
                raise ValueError(f"x_mean has {m.numel()} values, the output layer {layer.bias.numel()}")
        else:
            m = x_mean.reshape(layer.bias.numel(), -1).mean(1)
        m = m.to(layer.bias.dtype).clamp(1e-3, 1 - 1e-3)
        layer.bias.copy_(torch.log(m) - torch.log1p(-m))


class GaussianVAE(SingleLayerModel):
    r"""VAE with ``N`` Gaussian latents and a Bernoulli observation model.

    Args:
        x_shape: shape of one observation (flattened to ``D = prod(x_shape)``).
        N: number of latent units.
        hdim: hidden units of the MLPs.
        nlayers: hidden layers of each MLP.
        learn_prior: learn the prior's mean and log-scale.
        x_mean: optional training mean of ``x`` (``[D]``) to initialise the output bias at its logit.
    """

    def __init__(self, x_shape: Sequence[int], N: int = 32, hdim: int = 64, nlayers: int = 2,
                 learn_prior: bool = False, x_mean: Tensor | None = None) -> None:
        super().__init__()
        if N < 1 or hdim < 1 or nlayers < 0:
            raise ValueError(f"invalid architecture N={N}, hdim={hdim}, nlayers={nlayers}")
        self._x_shape = torch.Size(x_shape)
        D = int(math.prod(x_shape))
        self.N = N
        self.inference_network = mlp(D, 2 * N, hdim, nlayers)
        self.generative_model = nn.Module()
        self.generative_model.decoder = mlp(N, D, hdim, nlayers)
        self.generative_model.prior_loc = nn.Parameter(torch.zeros(N), requires_grad=learn_prior)
        self.generative_model.prior_log_scale = nn.Parameter(torch.zeros(N), requires_grad=learn_prior)
        if x_mean is not None:
            with torch.no_grad():
                m = x_mean.reshape(-1).clamp(1e-3, 1 - 1e-3)
                self.generative_model.decoder[-1].bias.copy_(torch.log(m) - torch.log1p(-m))

    @property
    def x_shape(self) -> torch.Size:
        return self._x_shape

    def prior(self, n: int) -> Distribution:
        g = self.generative_model
        loc = g.prior_loc.expand(n, self.N)
        return Independent(Normal(loc, g.prior_log_scale.exp().expand(n, self.N)), 1)

    def observation_model(self, z: Tensor) -> Distribution:
        logits = self.generative_model.decoder(z).view(-1, *self._x_shape)
        return Independent(Bernoulli(logits=logits), len(self._x_shape))

    def posterior(self, x: Tensor) -> Distribution:
        h = self.inference_network(x.reshape(x.shape[0], -1))
        loc, log_scale = h.chunk(2, dim=-1)
        return Independent(Normal(loc, log_scale.exp()), 1)



# ---------------------------------------------------------------------------------- general VAE
#: latent families of :class:`VAE` (``--prior``)
LATENT_PRIORS = ("normal", "bernoulli", "categorical", "mog")


class _View(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


def conv_encoder(x_shape: Sequence[int], out_dim: int, hdim: int = 64) -> nn.Sequential:
    r"""``[n, C, 28, 28] -> conv(32, 4, s2) -> conv(64, 4, s2) -> [n, 64*7*7] -> hdim -> out_dim``
    (ELU activations); images must be ``C x 28 x 28``."""
    C, H, W = _check_image(x_shape)
    return nn.Sequential(
        nn.Conv2d(C, 32, 4, 2, 1), nn.ELU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ELU(),
        nn.Flatten(), nn.Linear(64 * 7 * 7, hdim), nn.ELU(), nn.Linear(hdim, out_dim))


def conv_decoder(in_dim: int, x_shape: Sequence[int], hdim: int = 64) -> nn.Sequential:
    r"""``[n, in_dim] -> hdim -> 64*7*7 -> deconv(32, 4, s2) -> deconv(C, 4, s2)`` logits ``[n, C, 28, 28]``."""
    C, H, W = _check_image(x_shape)
    return nn.Sequential(
        nn.Linear(in_dim, hdim), nn.ELU(), nn.Linear(hdim, 64 * 7 * 7), nn.ELU(), _View(64, 7, 7),
        nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ELU(), nn.ConvTranspose2d(32, C, 4, 2, 1))


def _check_image(x_shape: Sequence[int]) -> tuple:
    if len(x_shape) != 3 or tuple(x_shape[1:]) != (28, 28):
        raise ValueError(f"the convolutional VAE needs images of shape [C, 28, 28], got {tuple(x_shape)}")
    return tuple(x_shape)


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

    Args:
        x_shape: shape of one observation.
        prior: one of :data:`LATENT_PRIORS`.
        N: latent variables.
        K: classes per categorical variable (``categorical``) or mixture components (``mog``).
        hdim, nlayers: the tanh MLPs (ignored when ``encoder`` / ``decoder`` are given).
        learn_prior: learn the prior's parameters (``mog``: always learned).
        x_mean: training mean (``x_shape``) to initialise the output bias at its logit.
        encoder: optional network ``[n, *x_shape] -> [n, q-parameters]`` (e.g. :func:`conv_encoder`).
        decoder: optional network ``[n, latent size] -> logits`` reshaped to ``[n, *x_shape]``.

    Parameters: ``inference_network.*`` (encoder) and ``generative_model.{decoder, prior_*}``.
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
        D = int(math.prod(self._x_shape))
        z_dim = N * K if prior == "categorical" else N
        q_dim = {"normal": 2 * N, "mog": 2 * N, "bernoulli": N, "categorical": N * K}[prior]
        self.z_dim = z_dim
        self._flatten_input = encoder is None  # a given encoder receives x as [n, *x_shape]
        self.inference_network = encoder if encoder is not None else mlp(D, q_dim, hdim, nlayers)
        g = nn.Module()
        g.decoder = decoder if decoder is not None else mlp(z_dim, D, hdim, nlayers)
        if prior == "normal":
            g.prior_loc = nn.Parameter(torch.zeros(N), requires_grad=learn_prior)
            g.prior_log_scale = nn.Parameter(torch.zeros(N), requires_grad=learn_prior)
        elif prior == "bernoulli":
            g.prior_logits = nn.Parameter(torch.zeros(N), requires_grad=learn_prior)
        elif prior == "categorical":
            g.prior_logits = nn.Parameter(torch.zeros(N, K), requires_grad=learn_prior)
        else:  # mog: spread the initial means so the components differ
            g.prior_mixture_logits = nn.Parameter(torch.zeros(K))
            g.prior_locs = nn.Parameter(torch.randn(K, N))
            g.prior_log_scales = nn.Parameter(torch.zeros(K, N))
        self.generative_model = g
        if x_mean is not None:
            init_output_bias(g.decoder, x_mean)

    @property
    def x_shape(self) -> torch.Size:
        return self._x_shape

    def _tau(self, kwargs: Dict[str, Any]) -> Tensor:
        tau = kwargs.get("tau")
        tau = self.tau if tau is None else float(tau)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        return torch.tensor(tau)

    def prior(self, n: int, relaxed: bool = False, tau: Tensor | None = None) -> Distribution:
        r"""``p(z)`` with batch shape ``[n]`` (relaxed at temperature ``tau`` when asked)."""
        g = self.generative_model
        if self.prior_family == "normal":
            return Independent(Normal(g.prior_loc.expand(n, self.N),
                                      g.prior_log_scale.exp().expand(n, self.N)), 1)
        if self.prior_family == "mog":
            C = self.K
            mix = Categorical(logits=g.prior_mixture_logits.expand(n, C))
            comp = Independent(Normal(g.prior_locs.expand(n, C, self.N),
                                      g.prior_log_scales.exp().expand(n, C, self.N)), 1)
            return MixtureSameFamily(mix, comp)
        if self.prior_family == "bernoulli":
            logits = g.prior_logits.expand(n, self.N)
            d = RelaxedBernoulli(tau, logits=logits) if relaxed else Bernoulli(logits=logits)
            return Independent(d, 1)
        logits = g.prior_logits.expand(n, self.N, self.K)
        d = RelaxedOneHotCategorical(tau, logits=logits) if relaxed else OneHotCategorical(logits=logits)
        return Independent(d, 1)

    def posterior(self, x: Tensor, relaxed: bool = False, tau: Tensor | None = None) -> Distribution:
        r"""``q(z|x)``, batch ``[n]``."""
        h = self.inference_network(x.reshape(x.shape[0], -1) if self._flatten_input else x)
        if self.prior_family in ("normal", "mog"):
            loc, log_scale = h.chunk(2, dim=-1)
            return Independent(Normal(loc, log_scale.exp()), 1)
        if self.prior_family == "bernoulli":
            d = RelaxedBernoulli(tau, logits=h) if relaxed else Bernoulli(logits=h)
            return Independent(d, 1)
        logits = h.reshape(h.shape[0], self.N, self.K)
        d = RelaxedOneHotCategorical(tau, logits=logits) if relaxed else OneHotCategorical(logits=logits)
        return Independent(d, 1)

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z) = Bernoulli(logits)``, batch ``[n]``, event ``x_shape``."""
        logits = self.generative_model.decoder(z.reshape(z.shape[0], -1)).reshape(-1, *self._x_shape)
        return Independent(Bernoulli(logits=logits), len(self._x_shape))

    def forward(self, x: Tensor, zgrads: bool = False, **kwargs: Any) -> Dict[str, Any]:
        discrete = self.prior_family in ("bernoulli", "categorical")
        relaxed = zgrads and discrete
        tau = self._tau(kwargs).to(x.device) if relaxed else None
        qz = self.posterior(x, relaxed=relaxed, tau=tau)
        z = qz.rsample() if zgrads else qz.sample()
        pz = self.prior(x.shape[0], relaxed=relaxed, tau=tau)
        return {"px": self.observation_model(z), "z": [z], "qz": [qz], "pz": [pz]}

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Distribution]:
        r"""``[q(z|x)]`` (hard, unrelaxed): one layer, independent of the given ``z``."""
        return [self.posterior(x)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        pz = self.prior(bs)
        z = pz.sample()
        return {"px": self.observation_model(z), "z": [z], "pz": [pz]}
