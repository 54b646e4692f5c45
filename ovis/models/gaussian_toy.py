r"""The Gaussian model of Rainforth et al. (2018), "Tighter variational bounds are not
necessarily better" (the OVIS paper's Figure 1).

.. math::

    z \sim \mathcal{N}(\mu, I_D),\qquad x \mid z \sim \mathcal{N}(z, I_D),\qquad
    q(z \mid x) = \mathcal{N}(A x + b, \tfrac{2}{3} I_D)

so that ``p(x) = N(x; mu, 2 I)`` and ``p(z|x) = N((x + mu)/2, I/2)``.  For a data set
``x_1..x_n`` the optimum is known in closed form: ``mu* = mean(x)``, ``A* = I/2``,
``b* = mu*/2`` (the mean of ``q`` is then the posterior mean, which is optimal for the ELBO and
every IW bound since the variance of ``q`` is fixed).

Parameters: ``inference_network.A`` (``[D, D]``), ``inference_network.b`` (``[D]``) -- selected
by ``--grad_key A,b`` -- and ``generative_model.mu`` (``[D]``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from ovis.models.base import SingleLayerModel

__all__ = ["GaussianToyModel"]

Q_VARIANCE = 2.0 / 3.0


class GaussianToyModel(SingleLayerModel):
    r"""Rainforth et al. (2018)'s linear Gaussian model (see the module docstring).

    Args:
        D: dimension of ``x`` and ``z``.
        init_scale: parameters start at ``N(0, init_scale^2)`` draws (torch's global RNG).
        optimum: optional ``{"mu_star", "A_star", "b_star"}`` (e.g. the data set's
            ``ground_truth``), used by :meth:`set_optimum`.
    """

    def __init__(self, D: int = 20, init_scale: float = 0.1,
                 optimum: Mapping[str, Tensor] | None = None) -> None:
        super().__init__()
        if D < 1:
            raise ValueError(f"D must be >= 1, got {D}")
        self.D = D
        self.inference_network = nn.Module()
        self.inference_network.A = nn.Parameter(init_scale * torch.randn(D, D))
        self.inference_network.b = nn.Parameter(init_scale * torch.randn(D))
        self.generative_model = nn.Module()
        self.generative_model.mu = nn.Parameter(init_scale * torch.randn(D))
        self._optimum = dict(optimum) if optimum is not None else None

    @classmethod
    def from_data(cls, data: Any) -> "GaussianToyModel":
        r"""Build from a ``gaussian-toy`` :class:`~ovis.datasets.DataSplits`."""
        truth = getattr(data, "ground_truth", None)
        if not truth or "mu_star" not in truth:
            raise ValueError("the gaussian-toy model needs the data set 'gaussian-toy' "
                             "(its ground_truth holds the closed-form optimum)")
        return cls(D=int(data.x_shape[0]), optimum=truth)

    @property
    def x_shape(self) -> torch.Size:
        return torch.Size([self.D])

    @staticmethod
    def optimum_of(x: Tensor) -> Dict[str, Tensor]:
        r"""The closed-form optimum for the data ``x`` ``[n, D]``: ``mu* = mean(x)``,
        ``A* = I/2``, ``b* = mu*/2``."""
        mu = x.to(torch.float64).mean(0).to(x.dtype)
        return {"mu_star": mu, "A_star": 0.5 * torch.eye(x.shape[1], dtype=x.dtype, device=x.device), "b_star": mu / 2}

    @torch.no_grad()
    def set_optimum(self, x: Tensor | None = None, perturbation: float = 0.0,
                    generator: torch.Generator | None = None) -> None:
        r"""Set ``(mu, A, b)`` at the closed-form optimum (of ``x`` when given, else of the data
        set the model was built from), plus ``N(0, perturbation^2)`` noise on every entry (the
        "perturbed optimum" of Rainforth et al. 2018 / OVIS Figure 1)."""
        if x is not None:
            opt = self.optimum_of(x)
        elif self._optimum is not None:
            opt = self._optimum
        else:
            raise ValueError("set_optimum() needs x: this model was built without a data set")
        for p, key in ((self.generative_model.mu, "mu_star"), (self.inference_network.A, "A_star"),
                       (self.inference_network.b, "b_star")):
            v = torch.as_tensor(opt[key], dtype=p.dtype, device=p.device)
            if perturbation > 0:
                noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)  # device: the CPU generator's draw, moved below
                v = v + perturbation * noise.to(p.device)
            p.copy_(v)

    def posterior(self, x: Tensor) -> Distribution:
        r"""``q(z|x) = N(A x + b, (2/3) I)``, batch ``[n]``, event ``[D]`` (``x``: ``[n, D]``)."""
        A, b = self.inference_network.A, self.inference_network.b
        loc = x @ A.T + b
        return Independent(Normal(loc, math.sqrt(Q_VARIANCE) * torch.ones_like(loc)), 1)

    def prior(self, n: int) -> Distribution:
        r"""``p(z) = N(mu, I)``, batch ``[n]``, event ``[D]``."""
        mu = self.generative_model.mu.expand(n, self.D)
        return Independent(Normal(mu, torch.ones_like(mu)), 1)

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z) = N(z, I)``, batch ``[n]``, event ``[D]`` (``z``: ``[n, D]``)."""
        return Independent(Normal(z, torch.ones_like(z)), 1)


    def log_evidence(self, x: Tensor) -> Tensor:
        r"""Exact ``log p(x) = log N(x; mu, 2 I)``, ``[n]`` (differentiable in ``mu``)."""
        mu = self.generative_model.mu
        return Independent(Normal(mu.expand_as(x), math.sqrt(2.0) * torch.ones_like(x)), 1).log_prob(x)

    def exact_elbo(self, x: Tensor) -> Tensor:
        r"""The ELBO in closed form, ``[n]`` (differentiable in ``A``, ``b``, ``mu``).

        With ``m = A x + b``, ``s^2 = 2/3``:
        ``E_q log N(x; z, I) = -D/2 log 2pi - (||x - m||^2 + D s^2)/2``,
        ``E_q log N(z; mu, I) = -D/2 log 2pi - (||m - mu||^2 + D s^2)/2``,
        ``H[q] = D/2 log(2 pi e s^2)``.
        """
        A, b, mu = self.inference_network.A, self.inference_network.b, self.generative_model.mu
        m = x @ A.T + b
        D, s2, log2pi = self.D, Q_VARIANCE, math.log(2 * math.pi)
        e_lik = -0.5 * D * log2pi - 0.5 * (((x - m) ** 2).sum(-1) + D * s2)
        e_prior = -0.5 * D * log2pi - 0.5 * (((m - mu) ** 2).sum(-1) + D * s2)
        entropy = 0.5 * D * (log2pi + 1 + math.log(s2))
        return e_lik + e_prior + entropy
