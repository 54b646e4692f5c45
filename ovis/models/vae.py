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
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from ovis.models.base import TemplateModel

__all__ = ["GaussianVAE", "mlp"]


def mlp(in_dim: int, out_dim: int, hdim: int, nlayers: int, act: type = nn.Tanh) -> nn.Sequential:
    r"""``in_dim -> (hdim, act) x nlayers -> out_dim``; ``nlayers = 0`` is a linear map."""
    layers: List[nn.Module] = []
    d = in_dim
    for _ in range(nlayers):
        layers += [nn.Linear(d, hdim), act()]
        d = hdim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class GaussianVAE(TemplateModel):
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

    def forward(self, x: Tensor, zgrads: bool = False, **kwargs: Any) -> Dict[str, Any]:
        qz = self.posterior(x)
        z = qz.rsample() if zgrads else qz.sample()
        return {"px": self.observation_model(z), "z": [z], "qz": [qz], "pz": [self.prior(x.shape[0])]}

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Distribution]:
        return [self.posterior(x)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        pz = self.prior(bs)
        z = pz.sample()
        return {"px": self.observation_model(z), "z": [z], "pz": [pz]}
