r"""Tiny models whose latent space can be enumerated, and their exact objectives.

With ``C`` latent configurations and ``K`` particles, the IW bound is an exact finite sum over
the ``C^K`` ordered ``K``-tuples:

.. math::

    \mathcal{L}_K^\alpha(x) = \sum_{(c_1..c_K)} \prod_k q(c_k|x)\;
        \frac{1}{1-\alpha}\log\frac{1}{K}\sum_k w(c_k)^{1-\alpha}

and autograd gives its exact gradient with respect to every parameter.  These models follow the
model protocol (:mod:`ovis.models.base`), so every estimator runs on them unchanged.
"""
from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, OneHotCategorical

from ovis.distributions.bernoulli import bernoulli_log_mass
from ovis.distributions.utils import repeat_distribution
from ovis.models.base import SingleLayerModel

__all__ = [
    "EnumerableModel",
    "BernoulliToyModel",
    "CategoricalToyModel",
    "LinearGaussianModel",
    "TOY_FREEBITS",
    "enumerated_log_weights",
    "exact_bound",
    "exact_gradients",
    "exact_log_evidence",
    "exact_gradient_problem",
    "exact_sleep_phase_objective",
    "exact_tvo_estimator_mean",
]


class EnumerableModel(SingleLayerModel):
    r"""A single-layer model with a finite latent space: subclasses provide
    :meth:`configurations` and the three distributions of :class:`SingleLayerModel`."""

    def configurations(self) -> Tensor:
        r"""Every latent configuration, ``[C, *z_shape]``."""
        raise NotImplementedError

    def enumerate_log_densities(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(log q(c|x), log p(x, c))`` for every configuration ``c``, both ``[B, C]``."""
        log_q, log_px, log_pz = self.enumerate_log_terms(x)
        return log_q, log_px + log_pz

    def enumerate_log_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(log q(c|x), log p(x|c), log p(c))`` for every configuration ``c``, each ``[B, C]``
        (the terms that the KL weight ``beta`` and free bits act on separately)."""
        B = x.shape[0]
        confs = self.configurations()
        C = confs.shape[0]
        z = confs[None].expand(B, *confs.shape).reshape(B * C, *confs.shape[1:])
        x_rep = x[:, None].expand(B, C, *x.shape[1:]).reshape(B * C, *x.shape[1:])
        log_q = self.posterior(x_rep).log_prob(z).view(B, C)
        log_px = self.observation_model(z).log_prob(x_rep).view(B, C)
        log_pz = self.prior(B * C).log_prob(z).view(B, C)
        return log_q, log_px, log_pz


class BernoulliToyModel(EnumerableModel):
    r"""``z in {0,1}^Dz``: ``q(z|x) = Bern(sigmoid(W_q x + b_q))``, ``p(z) = Bern(sigmoid(a))``,
    ``p(x|z) = Bern(sigmoid(W_p z + b_p))`` with ``x in {0,1}^Dx``."""

    def __init__(self, Dx: int = 4, Dz: int = 2, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.Dz = Dz
        self.inference_network = nn.Linear(Dx, Dz)
        self.generative_model = nn.Module()
        self.generative_model.decoder = nn.Linear(Dz, Dx)
        self.generative_model.prior_logits = nn.Parameter(torch.randn(Dz, generator=g) * 0.5)
        with torch.no_grad():
            for p in list(self.inference_network.parameters()) + list(self.generative_model.decoder.parameters()):
                p.copy_(torch.randn(p.shape, generator=g))

    def configurations(self) -> Tensor:
        r"""The ``2^Dz`` binary vectors, ``[2^Dz, Dz]``, in ``itertools.product`` order."""
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=self.Dz)),
                            dtype=self.generative_model.prior_logits.dtype)

    def posterior(self, x: Tensor) -> Distribution:
        r"""``q(z|x) = Bern(sigmoid(W_q x + b_q))``, batch ``[n]``, event ``[Dz]``."""
        return Independent(Bernoulli(logits=self.inference_network(x)), 1)

    def prior(self, n: int) -> Distribution:
        r"""``p(z) = Bern(sigmoid(a))``, batch ``[n]``, event ``[Dz]``."""
        return Independent(Bernoulli(logits=self.generative_model.prior_logits.expand(n, self.Dz)), 1)

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z) = Bern(sigmoid(W_p z + b_p))``, batch ``[n]``, event ``[Dx]``."""
        return Independent(Bernoulli(logits=self.generative_model.decoder(z)), 1)

    # discrete hooks (ovis.estimators.discrete): one layer; relaxed z in [0, 1] allowed
    latent_depth = 1

    def q_logits(self, l: int, h: Tensor) -> Tensor:
        r"""Logits ``[n, Dz]`` of ``q(z|x)`` (``l`` must be 0)."""
        if l != 0:
            raise ValueError(f"BernoulliToyModel has one latent layer, got l={l}")
        return self.inference_network(h)

    def log_joint_at(self, x: Tensor, z: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        r"""``(log p(x|z) [n], log p(z) [n, 1])`` at given, possibly relaxed, ``z = [z_1]``."""
        (z1,) = z
        log_px = bernoulli_log_mass(self.generative_model.decoder(z1), x)
        prior = self.generative_model.prior_logits.expand_as(z1)
        return log_px, bernoulli_log_mass(prior, z1)[:, None]


class CategoricalToyModel(EnumerableModel):
    r"""``N`` categorical latents with ``C`` classes each (one-hot):
    ``q(z|x) = prod_i Cat(softmax(W_q x + b_q)_i)``, ``p(z) = prod_i Cat(softmax(a_i))``,
    ``p(x|z) = Bern(sigmoid(W_p vec(z) + b_p))``.

    ``N = 1`` (the default) keeps the single-variable shapes ``z`` ``[n, C]`` for the model
    protocol; ``N > 1`` gives ``z`` ``[n, N, C]`` (``C^N`` configurations).

    Discrete hooks (:mod:`ovis.estimators.discrete`): ``latent_depth = 1``,
    ``latent_categories = C``, ``q_logits(0, x)`` ``[n, N, C]`` and ``log_joint_at(x, [z])`` with
    ``z`` ``[n, N, C]`` one-hot or on the simplex (the log mass :math:`\sum_c z_c \log
    \mathrm{softmax}(\cdot)_c`, the decoder applied to the relaxed ``z``).
    """

    latent_depth = 1

    def __init__(self, Dx: int = 4, C: int = 3, seed: int = 0, N: int = 1) -> None:
        super().__init__()
        if C < 2 or N < 1 or Dx < 1:
            raise ValueError(f"CategoricalToyModel needs C >= 2, N >= 1, Dx >= 1; got C={C}, N={N}, Dx={Dx}")
        g = torch.Generator().manual_seed(seed)
        self.C, self.N = C, N
        self.z_shape = (C,) if N == 1 else (N, C)
        self.inference_network = nn.Linear(Dx, N * C)
        self.generative_model = nn.Module()
        self.generative_model.decoder = nn.Linear(N * C, Dx)
        self.generative_model.prior_logits = nn.Parameter(torch.randn(*self.z_shape, generator=g) * 0.5)
        with torch.no_grad():
            for p in list(self.inference_network.parameters()) + list(self.generative_model.decoder.parameters()):
                p.copy_(torch.randn(p.shape, generator=g))

    @property
    def latent_categories(self) -> int:
        r"""``C`` (discrete hook: the latents are categorical)."""
        return self.C

    def configurations(self) -> Tensor:
        r"""The ``C^N`` one-hot configurations: ``[C, C]`` for ``N = 1``, else ``[C^N, N, C]``."""
        eye = torch.eye(self.C, dtype=self.generative_model.prior_logits.dtype)
        if self.N == 1:
            return eye
        idx = torch.tensor(list(itertools.product(range(self.C), repeat=self.N)), dtype=torch.long)
        return eye[idx]  # [C^N, N, C]

    def _one_hot(self, logits: Tensor) -> Distribution:
        d = OneHotCategorical(logits=logits)
        return d if self.N == 1 else Independent(d, 1)

    def posterior(self, x: Tensor) -> Distribution:
        r"""``q(z|x) = prod_i Cat(softmax(W_q x + b_q)_i)`` (one-hot), batch ``[n]``, event ``z_shape``."""
        return self._one_hot(self.inference_network(x).view(x.shape[0], *self.z_shape))

    def prior(self, n: int) -> Distribution:
        r"""``p(z) = prod_i Cat(softmax(a_i))`` (one-hot), batch ``[n]``, event ``z_shape``."""
        return self._one_hot(self.generative_model.prior_logits.expand(n, *self.z_shape))

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z) = Bern(sigmoid(W_p vec(z) + b_p))``, batch ``[n]``, event ``[Dx]``."""
        return Independent(Bernoulli(logits=self.generative_model.decoder(z.reshape(z.shape[0], -1))), 1)

    # discrete hooks (ovis.estimators.discrete): one categorical layer; relaxed z on the simplex allowed
    def q_logits(self, l: int, h: Tensor) -> Tensor:
        r"""Logits ``[n, N, C]`` of ``q(z|x)`` (``l`` must be 0)."""
        if l != 0:
            raise ValueError(f"CategoricalToyModel has one latent layer, got l={l}")
        return self.inference_network(h).view(h.shape[0], self.N, self.C)

    def log_joint_at(self, x: Tensor, z: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        r"""``(log p(x|z) [n], log p(z) [n, 1])`` at given, possibly relaxed, ``z = [z_1]``
        (``z_1`` ``[n, N, C]``)."""
        (z1,) = z
        n = z1.shape[0]
        if z1.shape[1:] != (self.N, self.C):
            raise ValueError(f"log_joint_at needs z of shape [n, {self.N}, {self.C}], got {tuple(z1.shape)}")
        px_logits = self.generative_model.decoder(z1.reshape(n, -1))
        log_px = bernoulli_log_mass(px_logits, x)
        log_prior = torch.log_softmax(self.generative_model.prior_logits.reshape(self.N, self.C), dim=-1)
        return log_px, (z1 * log_prior).reshape(n, -1).sum(-1, keepdim=True)


#: free bits that clamp some of the likely configurations of each toy model and not others
#: (per-configuration log q - log p: Bernoulli 0.68 to 1.42 and -2.9 to -2.1; categorical -1.4 to 2.0)
TOY_FREEBITS: Dict[str, float] = {"bernoulli": 1.07, "categorical": 0.5}


class LinearGaussianModel(SingleLayerModel):
    r"""The linear-Gaussian model of Rainforth et al. (2018), with a closed-form ELBO.

    ``p(z) = N(mu, I)``, ``p(x|z) = N(z, I)``, ``q(z|x) = N(A x + b, sigma_q^2 I)`` in ``D``
    dimensions (``A`` diagonal, ``sigma_q`` learned).  ``log p(x) = log N(x; mu, 2I)``.

    Args:
        reparameterised: when false, ``q``'s ``rsample`` is hidden (as Pyro's
            ``NonreparameterizedNormal``), forcing the score-function path.
    """

    def __init__(self, D: int = 3, seed: int = 0, reparameterised: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.D = D
        self.reparameterised = reparameterised
        self.inference_network = nn.Module()
        self.inference_network.A = nn.Parameter(0.5 + 0.3 * torch.randn(D, generator=g))
        self.inference_network.b = nn.Parameter(0.3 * torch.randn(D, generator=g))
        self.inference_network.log_sigma = nn.Parameter(math.log(math.sqrt(2 / 3)) + 0.1 * torch.randn(D, generator=g))
        self.generative_model = nn.Module()
        self.generative_model.mu = nn.Parameter(torch.randn(D, generator=g))

    def posterior(self, x: Tensor) -> Distribution:
        r"""``q(z|x) = N(A x + b, diag sigma_q^2)`` (``A`` diagonal), batch ``[n]``, event ``[D]``; without
        ``reparameterised`` its ``rsample`` is hidden.
        """
        i = self.inference_network
        q = Independent(Normal(i.A * x + i.b, i.log_sigma.exp().expand_as(x)), 1)
        if not self.reparameterised:
            q = _NonReparameterised(q)
        return q

    def prior(self, n: int) -> Distribution:
        r"""``p(z) = N(mu, I)``, batch ``[n]``, event ``[D]``."""
        mu = self.generative_model.mu
        return Independent(Normal(mu.expand(n, self.D), torch.ones_like(mu).expand(n, self.D)), 1)

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z) = N(z, I)``, batch ``[n]``, event ``[D]``."""
        return Independent(Normal(z, torch.ones_like(z)), 1)


    def exact_elbo(self, x: Tensor) -> Tensor:
        r"""The closed-form ELBO ``E_q[log p(x, z) - log q(z|x)]`` per data point, ``[B]``."""
        i, D = self.inference_network, self.D
        m, s2 = i.A * x + i.b, torch.exp(2 * i.log_sigma).expand_as(x)
        mu = self.generative_model.mu
        c = -0.5 * D * math.log(2 * math.pi)
        e_lik = c - 0.5 * ((x - m) ** 2 + s2).sum(-1)
        e_prior = c - 0.5 * ((m - mu) ** 2 + s2).sum(-1)
        entropy = (0.5 * torch.log(2 * math.pi * math.e * s2)).sum(-1)
        return e_lik + e_prior + entropy

    def exact_log_evidence(self, x: Tensor) -> Tensor:
        r"""``log p(x) = log N(x; mu, 2I)``, ``[B]``."""
        mu = self.generative_model.mu
        return Independent(Normal(mu.expand_as(x), math.sqrt(2.0) * torch.ones_like(x)), 1).log_prob(x)


class _NonReparameterised(Distribution):
    r"""Wraps a distribution and hides its ``rsample`` (forces the score-function path)."""

    has_rsample = False

    def __init__(self, base: Distribution) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    # the default torch.Size() is an immutable tuple, as in torch.distributions.Distribution
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        return self.base.sample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value)

    def repeat_rows(self, n: int) -> "_NonReparameterised":
        r"""The wrapped distribution with each batch row repeated ``n`` times
        (:func:`ovis.distributions.utils.repeat_distribution`), still without ``rsample``."""
        return _NonReparameterised(repeat_distribution(self.base, n))


def enumerated_log_weights(model: EnumerableModel, x: Tensor, beta: float = 1.0,
                           freebits: Optional[float] = None) -> tuple[Tensor, Tensor]:
    r"""``(log q(c|x), log w(c))`` for every configuration, ``[B, C]``, with
    :math:`\log w = \log p(x|c) - \beta\max(\log q(c|x) - \log p(c), \lambda)` (the one stochastic
    layer of an enumerable model; ``freebits = None``: no clamp), as
    :func:`~ovis.estimators.importance.log_weights` defines it."""
    return _log_weights(*model.enumerate_log_terms(x), beta, freebits)


def _log_weights(log_q: Tensor, log_px: Tensor, log_pz: Tensor, beta: float,
                 freebits: Optional[float]) -> tuple[Tensor, Tensor]:
    r"""``(log q, log w)`` ``[B, C]`` from the enumerated terms (:func:`enumerated_log_weights`)."""
    kl = log_q - log_pz
    if freebits is not None:
        kl = kl.clamp(min=freebits)
    return log_q, log_px - beta * kl


def exact_bound(model: EnumerableModel, x: Tensor, K: int, alpha: float = 0.0, beta: float = 1.0,
                freebits: Optional[float] = None) -> Tensor:
    r"""The exact :math:`\mathcal{L}_K^\alpha`, averaged over the batch ``x`` (a scalar with a graph),
    with the log-weights of the KL weight ``beta`` and the free bits ``freebits``
    (:func:`enumerated_log_weights`): its autograd gradient is the target of every unbiased
    estimator called with the same ``(alpha, beta, freebits, K)``.

    Sums over all ``C^K`` ordered K-tuples of configurations (keep ``C^K`` small).
    """
    log_q, log_w = enumerated_log_weights(model, x, beta, freebits)
    B, C = log_q.shape
    if C ** K > 200_000:
        raise ValueError(f"C^K = {C}^{K} tuples is too many to enumerate")
    tuples = torch.tensor(list(itertools.product(range(C), repeat=K)), dtype=torch.long)  # [T, K]
    lq = log_q[:, tuples].sum(-1)  # [B, T]
    lw = log_w[:, tuples]  # [B, T, K]
    bound = (torch.logsumexp((1 - alpha) * lw, dim=-1) - math.log(K)) / (1 - alpha)
    return (lq.exp() * bound).sum(-1).mean()


def exact_log_evidence(model: EnumerableModel, x: Tensor) -> Tensor:
    r"""``log p(x)`` by enumeration, averaged over the batch."""
    _, log_joint = model.enumerate_log_densities(x)
    return torch.logsumexp(log_joint, dim=-1).mean()


def exact_gradients(objective: Tensor, params: Sequence[nn.Parameter]) -> Tensor:
    r"""The gradient of a scalar objective w.r.t. ``params``, flattened into one vector."""
    grads = torch.autograd.grad(objective, list(params), allow_unused=True)
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)
    ])


def exact_weighted_score(model: EnumerableModel, x: Tensor, K: int, alpha: float = 0.0, beta: float = 1.0,
                         freebits: Optional[float] = None, kl_coef: bool = True) -> Tensor:
    r"""A scalar whose gradient is :math:`E[\sum_k \beta v_k 1[\mathrm{kl}_k \geq \lambda]\nabla\log
    q(z_k|x)]` (batch-averaged; :math:`E[\sum_k v_k \nabla\log q(z_k|x)]` at ``beta = 1`` without
    free bits).

    This is the exact bias of ``ovis-gamma{g}`` divided by ``g`` (``v_k`` tempered by
    ``1 - alpha``, the log-weights those of ``beta`` and ``freebits``), computed by enumeration
    over the ``C^K`` tuples.  ``kl_coef=False`` drops the factor :math:`\beta 1[\mathrm{kl}_k \geq
    \lambda]`: the gradient is then :math:`E[\sum_k v_k \nabla\log q(z_k|x)]` with the ``v_k`` of
    ``beta`` and ``freebits`` (the wake phase of reweighted wake-sleep).
    """
    log_q, log_px, log_pz = model.enumerate_log_terms(x)
    log_q, log_w = _log_weights(log_q, log_px, log_pz, beta, freebits)
    B, C = log_q.shape
    tuples = torch.tensor(list(itertools.product(range(C), repeat=K)), dtype=torch.long)
    log_w = log_w.detach()
    prob = log_q.detach()[:, tuples].sum(-1).exp()  # [B, T]
    v = torch.softmax((1 - alpha) * log_w[:, tuples], dim=-1)  # [B, T, K]
    if not kl_coef:
        return (prob * (v * log_q[:, tuples]).sum(-1)).sum(-1).mean()
    active = torch.ones_like(log_q) if freebits is None else ((log_q - log_pz) >= freebits).to(log_q.dtype)
    coef = (beta * active).detach()  # [B, C]
    return (prob * (v * coef[:, tuples] * log_q[:, tuples]).sum(-1)).sum(-1).mean()


def exact_sleep_phase_objective(model: EnumerableModel, x_space: Tensor) -> Tensor:
    r"""A scalar whose phi-gradient is the expected phi-gradient of the sleep phase,
    :math:`E_{p(z)p(x|z)}[\nabla_\phi \log q(z|x)]`, by enumeration over the latent
    configurations ``c`` and the given observation space ``x_space`` ``[X, *x_shape]`` (every ``x``
    of positive probability: ``{0, 1}^Dx`` for the toy models).  ``p`` is held fixed."""
    X, C = x_space.shape[0], model.configurations().shape[0]
    x_rep = x_space[:, None].expand(X, C, *x_space.shape[1:]).reshape(X * C, *x_space.shape[1:])
    confs = model.configurations()
    z = confs[None].expand(X, *confs.shape).reshape(X * C, *confs.shape[1:])
    with torch.no_grad():
        log_p = model.prior(X * C).log_prob(z) + model.observation_model(z).log_prob(x_rep)
        total = torch.logsumexp(log_p, 0)
        if abs(float(total)) > 1e-6:
            raise ValueError(f"x_space does not carry the whole mass of p(x) (log mass {float(total):.3g})")
    return (log_p.exp() * model.posterior(x_rep).log_prob(z)).sum()


def exact_tvo_estimator_mean(model: EnumerableModel, x: Tensor, K: int, betas: Tensor, coefs: Tensor,
                             beta: float = 1.0, freebits: Optional[float] = None) -> Tensor:
    r"""A scalar whose gradient is the *expected value* of TVO's covariance gradient estimator with
    ``K`` particles (not the gradient of the TVO integral: the self-normalised estimator is biased
    for finite ``K``), by enumeration over the ``C^K`` tuples.

    For one tuple, with :math:`f_k = \log w_k` (KL weight ``beta``, free bits), the weights
    :math:`\omega_{kj} = \mathrm{softmax}_k(\beta_j f_k)` and :math:`\bar f_j = \sum_k \omega_{kj} f_k`
    held fixed, the estimate is the gradient of
    :math:`\sum_j c_j \sum_k \omega_{kj}\big(f_k + \tfrac{K}{K-1}(f_k - \bar f_j)(\log q(z_k|x)
    + \beta_j f_k)\big)`; the result is that scalar averaged with the tuple's probability (held
    fixed), so its gradient is the estimator's mean.  Written from the formula, independently of
    :mod:`ovis.estimators.tvo`.
    """
    log_q, log_w = enumerated_log_weights(model, x, beta, freebits)
    B, C = log_q.shape
    tuples = torch.tensor(list(itertools.product(range(C), repeat=K)), dtype=torch.long)  # [T, K]
    prob = log_q.detach()[:, tuples].sum(-1).exp()  # [B, T]
    f = log_w[:, tuples]  # [B, T, K] (graph)
    lq = log_q[:, tuples]  # [B, T, K] (graph)
    total = torch.zeros((), dtype=log_w.dtype)
    for b_j, c_j in zip(betas.tolist(), coefs.tolist()):
        omega = torch.softmax(b_j * f.detach(), dim=-1)
        fbar = (omega * f.detach()).sum(-1, keepdim=True)
        per_tuple = (omega * (f + K / (K - 1) * (f.detach() - fbar) * (lq + b_j * f))).sum(-1)  # [B, T]
        total = total + c_j * (prob * per_tuple).sum(-1).mean()
    return total


def exact_tvo_integral(model: EnumerableModel, x: Tensor, betas: Tensor, coefs: Tensor) -> Tensor:
    r""":math:`\sum_j c_j E_{\pi_{\beta_j}}[\log w]` with :math:`\pi_\beta \propto q^{1-\beta} p^\beta`,
    by enumeration (batch-averaged)."""
    log_q, log_joint = model.enumerate_log_densities(x)
    log_w = log_joint - log_q
    total = torch.zeros((), dtype=log_w.dtype)
    for b, c in zip(betas.tolist(), coefs.tolist()):
        pi = torch.softmax(log_q + b * log_w, dim=-1)
        total = total + c * (pi * log_w).sum(-1).mean()
    return total


def exact_elbo(model: EnumerableModel, x: Tensor) -> Tensor:
    r"""The ELBO :math:`E_q[\log w]` by enumeration (batch-averaged)."""
    log_q, log_joint = model.enumerate_log_densities(x)
    return (log_q.exp() * (log_joint - log_q)).sum(-1).mean()


def exact_gradient_problem(model: nn.Module, n: int = 3, dx: int = 4, seed: int = 5
                ) -> tuple[nn.Module, Tensor, List[nn.Parameter], Tensor]:
    r"""The fixed problem of the exact-gradient tests: ``(model, x, params, is_phi)`` with ``n``
    binary observations ``x`` ``[n, dx]`` (fair coins, generator seed ``seed``), the model's
    parameters and the mask ``[P]`` of the flattened coordinates that belong to the inference
    network (``phi``; the rest is ``theta``)."""
    x = torch.bernoulli(torch.full((n, dx), 0.5), generator=torch.Generator().manual_seed(seed))
    params = list(model.parameters())
    is_phi = torch.cat([torch.full((p.numel(),), name.startswith("inference_network"))
                        for name, p in model.named_parameters()])
    return model, x, params, is_phi
