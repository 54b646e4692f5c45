r"""The Gaussian mixture model of Le et al. (2019), "Revisiting Reweighted Wake-Sleep".

Generative model (``C`` components, only the mixing logits ``theta`` are learned):

.. math::

    z \sim \mathrm{Cat}(\mathrm{softmax}(\theta)),\qquad x \mid z = c \sim \mathcal{N}(10c, 5^2)

with true mixing weights ``pi_c ∝ 5 + c``.  Inference network (``phi``):
``q(z|x) = Cat(softmax(W_2 tanh(W_1 x + b_1) + b_2))``, ``1 -> hdim (16) -> C``.

The latent ``z`` is a one-hot float vector ``[n, C]``.  Metrics (:meth:`extra_metrics`), as in
Le et al.: the L2 distance (not squared) between the learned and the true posterior mixing
weights, ``|| q(.|x) - p_true(.|x) ||_2`` averaged over data points (``gmm/posterior_mse``), and
between the learned and the true prior weights, ``|| softmax(theta) - pi ||_2``
(``gmm/prior_mse``).

Parameters: ``inference_network.phi.*`` (selected by ``--grad_key phi``) and
``generative_model.mixture_logits``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, OneHotCategorical

from ovis.distributions.categorical import OneHotCategoricalCDF, categorical_indices
from ovis.distributions.utils import repeat_rows
from ovis.models.base import SingleLayerModel

__all__ = ["GaussianMixtureModel"]


class GaussianMixtureModel(SingleLayerModel):
    r"""Le et al. (2019)'s GMM (see the module docstring).

    Args:
        C: number of components.
        hdim: hidden units of the inference network.
        true_parameters: the true model (``mixture_probs`` [C], ``locs`` [C], ``scale``), by
            default :func:`ovis.datasets.synthetic.gmm_true_parameters` (C).
    """

    def __init__(self, C: int = 20, hdim: int = 16,
                 true_parameters: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if C < 2 or hdim < 1:
            raise ValueError(f"the GMM needs C >= 2 and hdim >= 1, got C={C}, hdim={hdim}")
        if true_parameters is None:
            from ovis.datasets.synthetic import gmm_true_parameters

            true_parameters = gmm_true_parameters(C)
        probs = torch.as_tensor(true_parameters["mixture_probs"], dtype=torch.float32)  # device: a buffer
        locs = torch.as_tensor(true_parameters["locs"], dtype=torch.float32)  # device: a buffer
        if probs.shape != (C,) or locs.shape != (C,):
            raise ValueError(f"true parameters for C={C} components expected, got mixture_probs "
                             f"{tuple(probs.shape)} and locs {tuple(locs.shape)}")
        self.C = C
        self.inference_network = nn.Module()
        self.inference_network.phi = nn.Sequential(nn.Linear(1, hdim), nn.Tanh(), nn.Linear(hdim, C))
        self.generative_model = nn.Module()
        self.generative_model.mixture_logits = nn.Parameter(torch.zeros(C))
        self.register_buffer("locs", locs)
        self.register_buffer("scale", torch.as_tensor(float(true_parameters["scale"])))
        self.register_buffer("true_mixture_probs", probs)

    @classmethod
    def from_data(cls, data: Any, hdim: int = 16) -> "GaussianMixtureModel":
        r"""Build from a ``gmm`` :class:`~ovis.datasets.DataSplits` (its ``ground_truth``)."""
        truth = getattr(data, "ground_truth", None)
        if not truth or "mixture_probs" not in truth:
            raise ValueError("the gmm model needs the data set 'gmm' (its ground_truth holds the "
                             "true mixture parameters)")
        return cls(C=int(truth["C"]), hdim=hdim, true_parameters=truth)

    @property
    def x_shape(self) -> torch.Size:
        return torch.Size([1])

    def set_true_prior(self) -> None:
        r"""Set the learned mixing logits at the truth (``log pi``)."""
        with torch.no_grad():
            self.generative_model.mixture_logits.copy_(self.true_mixture_probs.log())

    def posterior_logits(self, x: Tensor) -> Tensor:
        r"""``log q(z|x)`` up to a constant, ``[n, C]`` (``x``: ``[n, 1]``)."""
        return self.inference_network.phi(x.reshape(-1, 1))

    def posterior(self, x: Tensor) -> Distribution:
        r"""``q(z|x)``, batch ``[n]``: a one-hot categorical sampled by the inverse CDF
        (:class:`~ovis.distributions.categorical.OneHotCategoricalCDF`, the law of ``OneHotCategorical``)."""
        return OneHotCategoricalCDF(logits=self.posterior_logits(x), validate_args=False)

    def prior(self, n: int) -> Distribution:
        r"""``p(z) = Cat(softmax(theta))``, batch ``[n]``, one-hot ``[C]``."""
        return OneHotCategorical(logits=self.generative_model.mixture_logits.expand(n, self.C), validate_args=False)

    #: ``particle_log_densities`` evaluates ``forward``'s log-densities itself (ovis.models.base)
    fused_log_densities = True

    def particle_log_densities(self, x: Tensor, particles: int = 1,
                               **kwargs: Any) -> Tuple[Dict[str, Any], Tensor, Tensor, Tensor]:
        r"""``forward(x, particles=particles)`` and its log-densities, ``(output, log_px [n],
        log_qz [n, 1], log_pz [n, 1])`` on ``n = B * particles`` rows (row ``b * particles + j``).

        Every term is computed once per data point and component, ``[B, C]`` (the normalised
        logits of ``q`` and of the prior, ``log N(x; locs_c, scale^2)``), then gathered at the
        sampled components: ``O(B C + n)`` work instead of ``O(n C)``.  The particles are drawn by
        the inverse CDF with the uniforms ``forward`` draws (:func:`categorical_indices`), so the
        output, values and gradients are those of ``forward`` on the same generator state
        (``tests/test_particles.py``)."""
        B, C = x.shape[0], self.C
        logits = self.posterior_logits(x)  # [B, C], attached to phi
        log_q = logits - logits.logsumexp(-1, keepdim=True)  # as torch.distributions.Categorical
        idx = categorical_indices(log_q.detach().softmax(-1), particles)  # [B, particles]
        theta = self.generative_model.mixture_logits
        log_prior = theta - theta.logsumexp(-1, keepdim=True)
        log_lik = Normal(self.locs, self.scale).log_prob(x.reshape(B, 1))  # [B, C]
        log_qz = log_q.gather(1, idx).reshape(-1, 1)
        log_px = log_lik.gather(1, idx).reshape(-1)
        flat = idx.reshape(-1)
        log_pz = log_prior[flat].reshape(-1, 1)
        n = flat.shape[0]
        z = F.one_hot(flat, C).to(logits.dtype)
        loc = self.locs[flat][:, None]
        # the distributions of forward's output, built from the per-point normalised logits
        output = {"px": Independent(Normal(loc, self.scale.expand_as(loc), validate_args=False), 1),
                  "z": [z], "qz": [OneHotCategoricalCDF.from_log_probs(repeat_rows(log_q, particles))],
                  "pz": [OneHotCategoricalCDF.from_log_probs(log_prior.expand(n, C))]}
        return output, log_px, log_qz, log_pz

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z) = N(z . locs, scale^2)``, batch ``[n]``, event ``[1]``."""
        loc = (z @ self.locs)[:, None]
        return Independent(Normal(loc, self.scale.expand_as(loc)), 1)

    def true_posterior(self, x: Tensor) -> Tensor:
        r"""The true posterior weights ``p(z = c | x) ∝ pi_c N(x; 10c, 5^2)``, ``[n, C]``."""
        log_joint = self.true_mixture_probs.log() + Normal(self.locs, self.scale).log_prob(x.reshape(-1, 1))
        return log_joint.softmax(-1)

    @torch.no_grad()
    def extra_metrics(self, x: Tensor) -> Dict[str, float]:
        r"""``{"gmm/posterior_mse": mean_x ||q(.|x) - p_true(.|x)||_2,
        "gmm/prior_mse": ||softmax(theta) - pi||_2}`` (see the module docstring)."""
        q = self.posterior_logits(x).softmax(-1)
        post = (q - self.true_posterior(x)).norm(dim=-1).mean()
        prior = (self.generative_model.mixture_logits.softmax(-1) - self.true_mixture_probs).norm()
        return {"gmm/posterior_mse": float(post), "gmm/prior_mse": float(prior)}
