r"""The discrete VAE of the IGR paper (Potapczynski et al., NeurIPS 2020): GS vs the IGR family.

``num_of_discrete_var`` (``N``) relaxed categorical latents with ``n_required`` (``K``) categories,
a Bernoulli decoder, a dense (tanh MLPs) or convolutional (:func:`ovis.models.vae.conv_encoder` /
:func:`ovis.models.vae.conv_decoder`, 28x28 images) architecture, and one of the relaxations

* ``gs``: Gumbel-Softmax. ``q(z|x) = GS(logits(x), tau)``, ``p(z) = GS(0, tau)`` (uniform
  categorical relaxed), ``z`` of shape ``[n, N, K]`` on the simplex.  ``forward(x, zgrads=False)``
  draws hard one-hot samples from the exact ``OneHotCategorical`` distributions (as
  :class:`ovis.models.vae.VAE` does), for score-function estimators and evaluation.
* ``igr-i``, ``igr-planar``, ``igr-sb``: Gaussian noise ``y`` of ``d = K-1`` coordinates per variable,
  ``q(y|x) = N(mu(x), sigma(x)^2)``, ``p(y) = N(0, I)``, relaxed sample ``z = g_tau(y)`` through
  the IGR map (:mod:`ovis.distributions.igr`; IGR-SB with ``max_categories = K`` and the given
  ``threshold``; IGR-Planar with ``num_flows`` planar flows whose parameters are shared by ``q``
  and ``p`` and live in ``generative_model.flow_*``).

**What the IGR models return (the choice, for the estimators).**  ``output['z'] = [y]`` (the
Gaussian noise, ``[n, N, K-1]``), ``output['qz'] = [q(y|x)]`` and ``output['pz'] = [p(y)]``
(``Independent(Normal)``, event ``[N, K-1]``), and ``output['px'] = p(x | g_tau(y))``; the relaxed
sample itself is ``output['z_relaxed'] = [z]`` (``[n, N, K]``).  Reason: the density of the simplex
sample is :math:`q_y(g^{-1}(z))\,|\det \partial g^{-1}/\partial z|`, and the Jacobian factor is the
*same* for ``q`` and ``p`` (same map), so :math:`\log q(z) - \log p(z) = \log q(y) - \log p(y)`
and every importance weight :math:`p(x, z)/q(z|x)` is computed exactly and stably in ``y``-space
(no numerical inverse of a simplex point whose coordinates underflowed, and IGR-SB's truncated
map, which has no density on the simplex, is handled too).  Hence every pathwise estimator
(``pathwise-vae``, ``pathwise-iwae``, ``stl``, ``dreg``: ``q`` is a plain Gaussian) and every
score-function estimator (``zgrads=False`` draws ``y`` without gradient) applies unchanged.  For
IGR-SB with truncation, the weights are those of the model ``p(x|g(y)) p(y)`` over ``y`` (the
truncated map is a deterministic part of the decoder).

**Discrete hooks (``relaxation="gs"`` only).**  The Gumbel-softmax model is a categorical latent
variable model (``N`` variables of ``K`` classes, uniform prior) and carries the discrete hooks
of the REBAR-line estimators (:mod:`ovis.estimators.discrete`): ``latent_depth = 1``,
``latent_categories = K``, ``q_logits(0, x)`` (the encoder's logits ``[n, N, K]``) and
``log_joint_at(x, [z])`` (``log p(x|z)`` with the decoder applied to ``z`` ``[n, N, K]``, one-hot
or on the simplex, and the categorical log prior mass :math:`\sum_c z_c \log\mathrm{softmax}(\cdot)_c`),
so ``--model discrete-vae --relaxation gs --estimator rebar`` (``relax``, ``muprop``,
``gumbel-softmax``, ``straight-through``, ...) trains it on the exact discrete objective.  The IGR
models have Gaussian noise latents and no discrete hooks (``latent_depth`` is ``None``), nor
does a subclass that replaces :meth:`observation_model` without its own ``observation_at``
(the conditional model has one: ``p(x_bot | z)`` given the top half).

**ELBO with the closed-form / estimated KL.**  :meth:`DiscreteVAE.elbo` returns
:math:`E_q[\log p(x|z)] - KL(q\|p)` with one reparameterised sample for the first term and the KL
registered with :func:`torch.distributions.kl_divergence` for IGR (the Gaussian KL, exact for
IGR-I / IGR-Planar, an upper bound with IGR-SB's truncation) or the Monte Carlo estimate
:func:`ovis.distributions.gumbel_softmax_kl` for GS.  :meth:`extra_metrics` logs it at
evaluation as ``discrete-vae/elbo_kl`` (and ``discrete-vae/kl``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, OneHotCategorical, kl_divergence

from ovis.distributions.bernoulli import BernoulliLogits
from ovis.distributions.gumbel import GumbelSoftmax, gumbel_softmax_kl
from ovis.distributions.igr import IGRI, IGRSB, IGRBase, IGRPlanar
from ovis.distributions.utils import repeat_rows
from ovis.models.base import TemplateModel
from ovis.models.vae import conv_decoder, conv_encoder, init_output_bias, mlp

__all__ = ["DiscreteVAE", "RELAXATIONS", "ARCHITECTURES"]

def _repeat_params(params: Any, n: int) -> Any:
    r""":func:`~ovis.distributions.utils.repeat_rows` of a parameter tensor or of each tensor of a tuple."""
    if isinstance(params, tuple):
        return tuple(repeat_rows(p, n) for p in params)
    return repeat_rows(params, n)


#: ``--relaxation`` values
RELAXATIONS = ("gs", "igr-i", "igr-planar", "igr-sb")
ARCHITECTURES = ("dense", "conv")


class DiscreteVAE(TemplateModel):
    r"""Discrete VAE relaxed with Gumbel-Softmax or IGR (see the module docstring).

    Args:
        x_shape: shape of one observation (``[C, 28, 28]`` for ``conv``).
        num_of_discrete_var: ``N`` categorical latent variables.
        n_required: ``K >= 2`` categories per variable.
        relaxation: one of :data:`RELAXATIONS`.
        tau: default temperature (``forward(..., tau=)`` overrides it, for schedules).
        threshold: IGR-SB precision in ``(0, 1]``.
        num_flows: planar flows (``igr-planar``).
        delta: the ``softmax++`` constant.
        architecture: ``dense`` (tanh MLPs, ``nlayers`` x ``hdim``) or ``conv``.
        x_mean: training mean (``x_shape``) to initialise the output bias at its logit.

    Parameters: ``inference_network.*`` (encoder) and ``generative_model.{decoder, flow_*}``.
    """

    def __init__(self, x_shape: Sequence[int], num_of_discrete_var: int = 20, n_required: int = 10,
                 relaxation: str = "igr-i", tau: float = 0.5, threshold: float = 0.99,
                 num_flows: int = 2, delta: float = 1.0, architecture: str = "dense",
                 hdim: int = 200, nlayers: int = 2, x_mean: Tensor | None = None) -> None:
        super().__init__()
        if relaxation not in RELAXATIONS:
            raise ValueError(f"unknown relaxation {relaxation!r}; valid: {list(RELAXATIONS)}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; valid: {list(ARCHITECTURES)}")
        N, K = int(num_of_discrete_var), int(n_required)
        if N < 1 or K < 2:
            raise ValueError(f"need num_of_discrete_var >= 1 and n_required >= 2, got N={N}, K={K}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold (IGR-SB precision) must be in (0, 1], got {threshold}")
        if relaxation == "igr-planar" and num_flows < 1:
            raise ValueError(f"igr-planar needs num_flows >= 1, got {num_flows}")
        if not delta > 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self._x_shape = torch.Size(x_shape)
        self.N, self.K, self.relaxation, self.tau = N, K, relaxation, float(tau)
        self.threshold, self.delta, self.architecture = float(threshold), float(delta), architecture
        self.noise_dim = K - 1
        q_dim = N * K if relaxation == "gs" else 2 * N * self.noise_dim
        z_dim = N * K
        D = int(math.prod(self._x_shape))
        if architecture == "conv":
            self.inference_network = conv_encoder(self._x_shape, q_dim, hdim)
            decoder = conv_decoder(z_dim, self._x_shape, hdim)
        else:
            self.inference_network = mlp(D, q_dim, hdim, nlayers)
            decoder = mlp(z_dim, D, hdim, nlayers)
        g = nn.Module()
        g.decoder = decoder
        if relaxation == "igr-planar":
            g.flow_u = nn.Parameter(0.01 * torch.randn(num_flows, self.noise_dim))
            g.flow_w = nn.Parameter(0.01 * torch.randn(num_flows, self.noise_dim))
            g.flow_b = nn.Parameter(torch.zeros(num_flows))
        self.generative_model = g
        if x_mean is not None:
            init_output_bias(g.decoder, x_mean)

    @property
    def x_shape(self) -> torch.Size:
        return self._x_shape

    @property
    def is_igr(self) -> bool:
        return self.relaxation != "gs"

    def _tau(self, kwargs: Dict[str, Any]) -> float:
        tau = kwargs.get("tau")
        tau = self.tau if tau is None else float(tau)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        return tau

    # ------------------------------------------------------------------ distributions
    def _encode(self, x: Tensor) -> Tensor:
        inp = x if self.architecture == "conv" else x.reshape(x.shape[0], -1)
        return self.inference_network(inp)

    def relaxed(self, loc: Tensor, scale: Tensor, tau: float) -> IGRBase:
        r"""The IGR distribution of this model's kind for noise ``N(loc, scale)`` (``[n, N, K-1]``)."""
        if self.relaxation == "igr-i":
            return IGRI(loc, scale, tau, self.delta, validate_args=False)
        if self.relaxation == "igr-sb":
            return IGRSB(loc, scale, tau, self.threshold, self.delta, validate_args=False)
        g = self.generative_model
        return IGRPlanar(loc, scale, tau, g.flow_u, g.flow_w, g.flow_b, self.delta, validate_args=False)

    def posterior_params(self, x: Tensor) -> Any:
        h = self._encode(x)
        if not self.is_igr:
            return h.reshape(h.shape[0], self.N, self.K)
        loc, log_scale = h.reshape(h.shape[0], self.N, 2 * self.noise_dim).chunk(2, dim=-1)
        return loc, log_scale.exp()

    def prior_params(self, n: int, like: Tensor) -> Any:
        if not self.is_igr:
            return torch.zeros(n, self.N, self.K, dtype=like.dtype, device=like.device)
        loc = torch.zeros(n, self.N, self.noise_dim, dtype=like.dtype, device=like.device)
        return loc, torch.ones_like(loc)

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z) = Bernoulli(logits(z))`` for a relaxed (or one-hot) ``z`` of shape ``[n, N, K]``."""
        logits = self.generative_model.decoder(z.reshape(z.shape[0], -1)).reshape(-1, *self._x_shape)
        return BernoulliLogits(logits, len(self._x_shape))

    # ------------------------------------------------------------------ protocol
    #: the estimators call ``forward(x, particles=n)`` with the un-expanded batch (see forward)
    supports_particles = True

    def forward(self, x: Tensor, zgrads: bool = False, particles: int = 1, **kwargs: Any) -> Dict[str, Any]:
        r"""The protocol's output mapping (:mod:`ovis.models.base`, module docstring) on
        ``B * particles`` rows: ``x`` ``[B, *x_shape]`` is encoded once, the parameters of ``q`` are
        repeated to ``B * particles`` rows (:func:`~ovis.distributions.utils.repeat_rows`; row
        ``b * particles + j`` is particle ``j`` of point ``b``) and the particles drawn from them:
        ``forward`` of ``x`` repeated ``particles`` times, on the same random draws."""
        tau = self._tau(kwargs)
        n = x.shape[0] * particles
        if not self.is_igr:
            logits = _repeat_params(self.posterior_params(x), particles)
            prior_logits = self.prior_params(n, x)
            if zgrads:
                qz = Independent(GumbelSoftmax(torch.tensor(tau, device=x.device, dtype=logits.dtype), logits=logits), 1)
                pz = Independent(GumbelSoftmax(torch.tensor(tau, device=x.device, dtype=prior_logits.dtype), logits=prior_logits), 1)
                z = qz.rsample()
            else:
                qz = Independent(OneHotCategorical(logits=logits), 1)
                pz = Independent(OneHotCategorical(logits=prior_logits), 1)
                z = qz.sample()
            return {"px": self.observation_model(z), "z": [z], "qz": [qz], "pz": [pz], "z_relaxed": [z]}
        loc, scale = _repeat_params(self.posterior_params(x), particles)
        qz = Independent(Normal(loc, scale), 2)
        p_loc, p_scale = self.prior_params(n, x)
        pz = Independent(Normal(p_loc, p_scale), 2)
        y = qz.rsample() if zgrads else qz.sample()
        z = self.relaxed(loc, scale, tau).transform(y)
        return {"px": self.observation_model(z), "z": [y], "qz": [qz], "pz": [pz], "z_relaxed": [z]}

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Distribution]:
        r"""``[q(.|x)]``: the noise Gaussian (IGR) or the hard ``OneHotCategorical`` (GS)."""
        if not self.is_igr:
            return [Independent(OneHotCategorical(logits=self.posterior_params(x)), 1)]
        loc, scale = self.posterior_params(x)
        return [Independent(Normal(loc, scale), 2)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        tau = self._tau(kwargs)
        like = next(self.parameters())
        if not self.is_igr:
            pz = Independent(OneHotCategorical(logits=self.prior_params(bs, like)), 1)
            z = pz.sample()
            return {"px": self.observation_model(z), "z": [z], "pz": [pz], "z_relaxed": [z]}
        loc, scale = self.prior_params(bs, like)
        pz = Independent(Normal(loc, scale), 2)
        y = pz.sample()
        z = self.relaxed(loc, scale, tau).transform(y)
        return {"px": self.observation_model(z), "z": [y], "pz": [pz], "z_relaxed": [z]}

    # ------------------------------------------------------------------ discrete hooks
    def _has_discrete_hooks(self) -> bool:
        own_likelihood = type(self).observation_model is DiscreteVAE.observation_model
        own_hooks = (type(self).log_joint_at is not DiscreteVAE.log_joint_at
                     or type(self).observation_at is not DiscreteVAE.observation_at)
        return not self.is_igr and (own_likelihood or own_hooks)

    def observation_at(self, x: Tensor, z: Tensor) -> Distribution:
        r"""``p(x|z)`` for the observations ``x`` at a given one-hot or relaxed ``z`` ``[n, N, K]``
        (what :meth:`log_joint_at` scores ``x`` with; a subclass whose likelihood needs ``x``,
        like the conditional model's ``p(x_bot | z)``, overrides it)."""
        return self.observation_model(z)

    @property
    def latent_depth(self) -> Optional[int]:
        r"""``1`` for the Gumbel-softmax model (discrete hook), ``None`` otherwise (module docstring)."""
        return 1 if self._has_discrete_hooks() else None

    @property
    def latent_categories(self) -> Optional[int]:
        r"""``K``, the number of classes of each categorical latent (``gs`` only; discrete hook)."""
        return self.K if self._has_discrete_hooks() else None

    def q_logits(self, l: int, h: Tensor) -> Tensor:
        r"""The logits ``[n, N, K]`` of ``q(z|x)`` (``l`` must be 0, ``h = x``; ``gs`` only)."""
        if not self._has_discrete_hooks():
            raise TypeError(f"{type(self).__name__} with relaxation {self.relaxation!r} has no categorical "
                            "latents of its own (discrete hooks need relaxation 'gs')")
        if l != 0:
            raise ValueError(f"DiscreteVAE has one stochastic layer: q_logits needs l = 0, got {l}")
        return self.posterior_params(h)

    def log_joint_at(self, x: Tensor, z: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        r"""``(log p(x|z) [n], log p(z) [n, 1])`` at a given one-hot or relaxed ``z = [z_1]``,
        ``z_1`` ``[n, N, K]`` (``gs`` only; the prior log mass :math:`\sum_{i,c} z_{ic}\log\pi_{ic}`)."""
        if not self._has_discrete_hooks():
            raise TypeError(f"{type(self).__name__} with relaxation {self.relaxation!r} has no discrete hooks")
        (z1,) = z
        n = z1.shape[0]
        if z1.shape[1:] != (self.N, self.K):
            raise ValueError(f"log_joint_at needs z of shape [n, {self.N}, {self.K}], got {tuple(z1.shape)}")
        log_px = self.observation_at(x, z1).log_prob(x)
        log_prior = torch.log_softmax(self.prior_params(n, x), dim=-1)
        return log_px, (z1 * log_prior).reshape(n, -1).sum(-1, keepdim=True)

    # ------------------------------------------------------------------ ELBO with the KL
    def kl(self, x: Tensor, tau: float | None = None, num_samples: int = 1) -> Tensor:
        r"""``KL(q(z|x) || p(z))`` summed over the ``N`` variables, ``[n]``: registered closed form
        (IGR) or Monte Carlo with ``num_samples`` draws (GS)."""
        tau = self.tau if tau is None else float(tau)
        n = x.shape[0]
        if not self.is_igr:
            logits = self.posterior_params(x)
            t = torch.tensor(tau, device=x.device, dtype=logits.dtype)
            q = GumbelSoftmax(t, logits=logits)
            p = GumbelSoftmax(t, logits=self.prior_params(n, x))
            return gumbel_softmax_kl(q, p, num_samples).sum(-1)
        loc, scale = self.posterior_params(x)
        p_loc, p_scale = self.prior_params(n, x)
        return kl_divergence(self.relaxed(loc, scale, tau), self.relaxed(p_loc, p_scale, tau)).sum(-1)

    def elbo(self, x: Tensor, tau: float | None = None, num_samples: int = 1) -> Tensor:
        r"""``E_q[log p(x|z)] - KL(q || p)`` (one reparameterised sample; the KL of :meth:`kl`), ``[n]``."""
        tau = self.tau if tau is None else float(tau)
        out = self.forward(x, zgrads=True, tau=tau)
        log_px = out["px"].log_prob(x)
        return log_px - self.kl(x, tau=tau, num_samples=num_samples)

    @torch.no_grad()
    def extra_metrics(self, x: Tensor) -> Dict[str, float]:
        r"""``discrete-vae/elbo_kl`` (:meth:`elbo`) and ``discrete-vae/kl``, batch means."""
        return {"discrete-vae/elbo_kl": float(self.elbo(x).mean()),
                "discrete-vae/kl": float(self.kl(x).mean())}
