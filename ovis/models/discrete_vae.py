r"""The discrete VAE of the IGR paper (Potapczynski et al., NeurIPS 2020): GS vs the IGR family.

``num_of_discrete_var`` (``N``) relaxed categorical latents with ``n_required`` (``K``) categories,
a Bernoulli or Gaussian decoder (*Likelihoods* below), a dense (tanh MLPs), nonlinear (the original's
``dense_nonlinear`` ReLU networks) or convolutional (:func:`ovis.models.vae.conv_encoder` /
:func:`ovis.models.vae.conv_decoder`, 28x28 images) architecture (*Architectures* below), and one of the relaxations

* ``gs``: Gumbel-Softmax. ``q(z|x) = GS(logits(x), tau)``, ``p(z) = GS(0, prior_tau)`` (uniform
  categorical relaxed), ``z`` of shape ``[n, N, K]`` on the simplex.  With ``zgrads=True`` the
  latent the estimators see is its logarithm, ``output['z'] = [log z]`` with ``qz`` / ``pz`` the
  ``ExpRelaxedCategorical`` (ExpConcrete) distributions: ``log q - log p`` is the same as on the
  simplex (common Jacobian) and stays finite at low temperatures, where float32 coordinates of
  ``z`` underflow to 0; ``output['z_relaxed'] = [z]``.  ``forward(x, zgrads=False)``
  draws hard one-hot samples from the exact ``OneHotCategorical`` distributions (as
  :class:`ovis.models.vae.VAE` does), for score-function estimators and evaluation.
* ``igr-i``, ``igr-planar``, ``igr-sb``: Gaussian noise ``y`` of ``d = K-1`` coordinates per variable,
  ``q(y|x) = N(mu(x), sigma(x)^2)``, ``p(y) = N(m, I)`` (``m`` fitted so that the induced categorical is uniform, see
  *Priors* below; ``prior="standard"``: ``m = 0``), relaxed sample ``z = g_tau(y)`` through
  the IGR map (:mod:`ovis.distributions.igr`; IGR-SB with ``max_categories = K`` and the given
  ``threshold``; IGR-Planar with ``num_flows`` planar flows whose parameters are shared by ``q``
  and ``p`` and live in ``generative_model.flow_*``).

**Likelihoods** (``likelihood``, one of :data:`LIKELIHOODS`).  ``bernoulli``: ``p(x|z) =
Bernoulli(sigmoid(f(z)))`` per pixel (binarised images).  ``gaussian``: the IGR paper's model of
grey levels (Fashion-MNIST intensities / 255 in ``[0, 1]``): the decoder outputs two numbers per
pixel ``(a, b)`` and ``p(x|z) = prod_i N(x_i; sigmoid(a_i), (1e-6 + softplus(b_i))^2)``
(:func:`ovis.distributions.gaussian.sigmoid_softplus_normal`, a density: its bounds are not
comparable with Bernoulli ones).  Layout: the decoder's output ``[n, 2 * prod(x_shape)]`` (dense,
nonlinear; ``[n, 2C, 28, 28]`` for conv) is read as ``[n, 2, *x_shape]``, ``a`` first.  Its output
bias (``dense``, ``conv``; ``nonlinear`` is initialised as the original, *Architectures*) starts at ``a = logit(x_mean)`` (clamped to ``[1e-3, 1 - 1e-3]``, the channel mean for conv;
untouched without ``x_mean``) and ``b = softplus^{-1}(0.2)`` (:data:`GAUSSIAN_INIT_STD`: every
standard deviation starts near 0.2, a scale of grey-level noise).  Deliberate difference: the
original puts an ELU on the decoder's output layer for Fashion-MNIST (``determine_activation_from_case``),
which bounds ``a >= -1`` and so the mean below by ``sigmoid(-1) ~ 0.27`` (the black background of
Fashion-MNIST cannot be matched); ours is linear.  Every use of the decoder goes through
:meth:`DiscreteVAE.observation_model` (training, the discrete hooks, the one-hot evaluation, the
``px.mean`` of the image helpers), so the likelihood applies everywhere.

**Architectures** (``architecture``, one of :data:`ARCHITECTURES`).  ``dense``: tanh MLPs of
``nlayers`` hidden layers of ``hdim`` units; ``conv``: :func:`ovis.models.vae.conv_encoder` /
:func:`ovis.models.vae.conv_decoder`; ``nonlinear``: the original's ``dense_nonlinear`` networks,
encoder ``D -> 512 -> 256 -> q`` and decoder ``N K -> 256 -> 512 -> out`` with ReLU hidden layers and
linear outputs (:data:`NONLINEAR_ENCODER_UNITS`, :data:`NONLINEAR_DECODER_UNITS`; ``hdim`` and
``nlayers`` are ignored), initialised as the original's Keras layers (:func:`keras_default_init`:
Glorot-uniform weights, zero biases) and *not* at the data mean (``x_mean`` is unused: the Bernoulli
output starts at 1/2; the Gaussian one at mean 1/2 and standard deviation ``softplus(0) = 0.69``).
This is part of the protocol, not a detail: with PyTorch's default initialisation, or with the output
bias at the data mean, the Gumbel-Softmax model of thresholded MNIST collapses in its first epoch (the
encoder's logits go to a constant, KL 0, bound about -200 nats), while from the original's
initialisation it learns.

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

**Priors (matched).**  GS: the uniform categorical, relaxed at ``prior_tau`` (default ``tau``; the
IGR paper fixes it at 0.5).  IGR (``prior="uniform"``, the default): the noise prior whose
*induced categorical* (the ``tau -> 0`` limit of its relaxed samples,
:meth:`ovis.distributions.igr.IGRBase.categorical_log_probs`) is the uniform over the ``K``
categories, :func:`ovis.distributions.igr.uniform_prior_params` (closed form: the IGR paper fits
these parameters numerically); ``prior="standard"`` keeps ``N(0, I)`` (IGR-I's induced
categorical then puts about 0.2% on the last category for K = 10, IGR-SB's is geometric).

**Closed-form KL in training** (``closed_form_kl=True``, IGR only, what the IGR paper trains with):
in training mode with reparameterised latents, ``output['pz']`` is replaced by a distribution whose
``log_prob(y)`` is ``log q(y|x) - KL(q(y|x) || p(y))`` (the registered Gaussian KL), so that the
estimators' ``log p(x|z) + log p(z) - log q(z|x)`` is :math:`\log p(x|z) - KL` exactly: the ELBO
with the analytic KL.  Valid for single-sample objectives only (``pathwise-vae``, ``iw = 1``): with
``K > 1`` particles the average of :math:`p(x|z_k)e^{-KL}` is not a bound.

**Evaluation: one-hot latents for every relaxation** (``evaluation="one-hot"``, the default; the
IGR paper's ``test_with_one_hot``).  :meth:`evaluation_log_weights` (used by
:func:`ovis.training.evaluation.evaluate_bound` for ``loss/L_k`` and the other bound statistics)
scores the *discrete* model: ``N`` categorical latents with the uniform prior
:math:`p(z) = K^{-N}`, the decoder applied to one-hot ``z``, and
:math:`q(z|x) = \prod_i \mathrm{Cat}(z_i; \pi_i(x))` where :math:`\pi_i(x)` is the categorical the
relaxation of ``q`` relaxes: ``softmax(logits)`` for GS, the induced categorical of the IGR
distribution for IGR (exact for IGR-I by quadrature and IGR-SB in closed form, a Monte Carlo
estimate from ``categorical_samples`` draws for IGR-Planar, which is itself a categorical and
gives a valid bound).  GS and IGR are scored by the same code from their ``log pi`` ``[B, N, K]``:
``z ~ Cat(pi)``, :math:`\log w = \log p(x|z) + \log p(z) - \log q(z|x)`, the importance-weighted
bound :math:`\log\frac1S\sum_s w_s` over the evaluation's particles.  ``evaluation="relaxed"``
scores the relaxed model instead (the continuous ``z``, densities in noise space for IGR): the
number that is not comparable across relaxations.  With ``relaxed_iw > 0``, :meth:`extra_metrics`
also logs the relaxed model's bound with ``relaxed_iw`` particles as ``discrete-vae/relaxed_L_k``.

**ELBO with the closed-form / estimated KL.**  :meth:`DiscreteVAE.elbo` returns
:math:`E_q[\log p(x|z)] - KL(q\|p)` with one reparameterised sample for the first term and the KL
registered with :func:`torch.distributions.kl_divergence` for IGR (the Gaussian KL, exact for
IGR-I / IGR-Planar, an upper bound with IGR-SB's truncation) or the Monte Carlo estimate
the Monte Carlo estimate of :func:`ovis.distributions.gumbel_softmax_kl` (in log space) for GS.  :meth:`extra_metrics` logs it at
evaluation as ``discrete-vae/elbo_kl`` (and ``discrete-vae/kl``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import (
    Distribution,
    Independent,
    Normal,
    OneHotCategorical,
    kl_divergence,
)
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from ovis.distributions.bernoulli import BernoulliLogits
from ovis.distributions.gaussian import sigmoid_softplus_normal, softplus_inverse
from ovis.distributions.igr import IGRI, IGRSB, IGRBase, IGRPlanar, uniform_prior_params
from ovis.distributions.utils import repeat_rows
from ovis.models.base import TemplateModel
from ovis.models.vae import conv_decoder, conv_encoder, init_output_bias, mlp

__all__ = ["DiscreteVAE", "RELAXATIONS", "ARCHITECTURES", "LIKELIHOODS", "IGR_PRIORS", "EVALUATIONS",
           "NONLINEAR_ENCODER_UNITS", "NONLINEAR_DECODER_UNITS", "GAUSSIAN_INIT_STD", "relu_mlp",
           "keras_default_init"]


def _repeat_params(params: Any, n: int) -> Any:
    r""":func:`~ovis.distributions.utils.repeat_rows` of a parameter tensor or of each tensor of a tuple."""
    if isinstance(params, tuple):
        return tuple(repeat_rows(p, n) for p in params)
    return repeat_rows(params, n)


#: ``--relaxation`` values
RELAXATIONS = ("gs", "igr-i", "igr-planar", "igr-sb")
#: ``--architecture`` values (module docstring)
ARCHITECTURES = ("dense", "conv", "nonlinear")
#: ``--likelihood`` values of the discrete VAE: binarised pixels, or grey levels (module docstring)
LIKELIHOODS = ("bernoulli", "gaussian")
#: hidden units of the ``nonlinear`` architecture's encoder (the original's ``dense_nonlinear``)
NONLINEAR_ENCODER_UNITS = (512, 256)
#: hidden units of the ``nonlinear`` architecture's decoder (the original's ``dense_nonlinear``)
NONLINEAR_DECODER_UNITS = (256, 512)
#: the Gaussian decoder's initial standard deviation ``softplus(b)`` (its output bias)
GAUSSIAN_INIT_STD = 0.2
#: ``prior`` values of the IGR models: the uniform-fitted noise prior, or N(0, I)
IGR_PRIORS = ("uniform", "standard")
#: ``evaluation`` values: one-hot latents (the discrete model) or the relaxed model
EVALUATIONS = ("one-hot", "relaxed")


def relu_mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    r"""``[n, in_dim] -> (Linear, ReLU) per entry of hidden -> Linear -> [n, out_dim]`` (linear output).

    Raises:
        ValueError: a non-positive size.
    """
    sizes = [int(in_dim), *(int(h) for h in hidden), int(out_dim)]
    if any(d < 1 for d in sizes):
        raise ValueError(f"relu_mlp needs positive sizes, got {sizes}")
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def keras_default_init(net: nn.Module) -> None:
    r"""Initialise every ``nn.Linear`` of ``net`` as a Keras ``Dense`` layer by default: weights
    Glorot-uniform, :math:`U(\pm\sqrt{6 / (\mathrm{fan\_in} + \mathrm{fan\_out})})`, biases zero (in
    place; the ``nonlinear`` architecture's networks, as the original initialises them)."""
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _init_gaussian_output_bias(net: nn.Module, x_mean: Optional[Tensor], std: float) -> None:
    r"""The output bias of a two-parameter decoder (``[2, ...]`` layout, module docstring): the mean
    half at ``logit(x_mean)`` (clamped; channel means for a transposed convolution; kept without
    ``x_mean``), the std half at ``softplus^{-1}(std - floor)``."""
    from ovis.distributions.gaussian import GAUSSIAN_STD_FLOOR

    last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))]
    if not last or last[-1].bias is None:
        raise ValueError(f"{type(net).__name__} has no output layer with a bias to initialise")
    layer = last[-1]
    bias = layer.bias.view(2, -1)
    with torch.no_grad():
        if x_mean is not None:
            if isinstance(layer, nn.Linear):
                m = x_mean.reshape(-1)
                if m.numel() != bias.shape[1]:
                    raise ValueError(f"x_mean has {m.numel()} values, the decoder {bias.shape[1]} pixels")
            else:
                m = x_mean.reshape(bias.shape[1], -1).mean(1)
            m = m.to(bias.dtype).clamp(1e-3, 1 - 1e-3)
            bias[0].copy_(torch.log(m) - torch.log1p(-m))
        bias[1].fill_(softplus_inverse(std - GAUSSIAN_STD_FLOOR))


class _ClosedFormKLPrior(Distribution):
    r"""``log_prob(y) = q.log_prob(y) - kl``: makes ``log p - log q`` the closed-form ``-KL``
    (see the module docstring); ``q``: ``Independent(Normal)`` over ``[N, K-1]``, ``kl`` ``[n]``."""

    arg_constraints: Dict[str, Any] = {}

    def __init__(self, q: Distribution, kl: Tensor) -> None:
        self.q, self.kl = q, kl
        super().__init__(q.batch_shape, q.event_shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.q.log_prob(value) - self.kl

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        raise NotImplementedError("the closed-form-KL prior is a device for log p - log q; sample the real prior")


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
        architecture: ``dense`` (tanh MLPs, ``nlayers`` x ``hdim``), ``conv`` or ``nonlinear`` (ReLU
            512-256 / 256-512, ``hdim`` and ``nlayers`` ignored); module docstring.
        hdim, nlayers: hidden units and layers of the ``dense`` MLPs (``hdim``: the conv networks'
            dense layer); unused by ``nonlinear``.
        x_mean: training mean (``x_shape``) to initialise the output bias at its logit (not with
            ``nonlinear``, initialised as the original).
        likelihood: ``p(x|z)``, one of :data:`LIKELIHOODS` (module docstring).
        prior: IGR noise prior, one of :data:`IGR_PRIORS` (module docstring).
        prior_tau: the GS prior's temperature (default ``tau``).
        closed_form_kl: train IGR with the closed-form KL (module docstring).
        evaluation: one of :data:`EVALUATIONS` (module docstring).
        categorical_samples: draws of IGR-Planar's induced categorical estimate.
        relaxed_iw: particles of the relaxed bound :meth:`extra_metrics` logs (0: not logged).

    Parameters: ``inference_network.*`` (encoder) and ``generative_model.{decoder, flow_*}``.

    Raises:
        ValueError: an unknown relaxation, architecture, likelihood, prior or evaluation, or an
            out-of-range number (module docstring).
    """

    def __init__(self, x_shape: Sequence[int], num_of_discrete_var: int = 20, n_required: int = 10,
                 relaxation: str = "igr-i", tau: float = 0.5, threshold: float = 0.99,
                 num_flows: int = 2, delta: float = 1.0, architecture: str = "dense",
                 hdim: int = 200, nlayers: int = 2, x_mean: Tensor | None = None,
                 prior: str = "uniform", prior_tau: Optional[float] = None, closed_form_kl: bool = False,
                 evaluation: str = "one-hot", categorical_samples: int = 1000, relaxed_iw: int = 0,
                 likelihood: str = "bernoulli") -> None:
        super().__init__()
        if relaxation not in RELAXATIONS:
            raise ValueError(f"unknown relaxation {relaxation!r}; valid: {list(RELAXATIONS)}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; valid: {list(ARCHITECTURES)}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; valid: {list(LIKELIHOODS)}")
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
        if prior not in IGR_PRIORS:
            raise ValueError(f"unknown prior {prior!r}; valid: {list(IGR_PRIORS)}")
        if evaluation not in EVALUATIONS:
            raise ValueError(f"unknown evaluation {evaluation!r}; valid: {list(EVALUATIONS)}")
        if prior_tau is not None and not prior_tau > 0:
            raise ValueError(f"prior_tau must be > 0, got {prior_tau}")
        if prior_tau is not None and relaxation != "gs":
            raise ValueError("prior_tau is the Gumbel-Softmax prior's temperature: only with relaxation 'gs' "
                             f"(got {relaxation!r}); the IGR prior shares q's map and temperature")
        if closed_form_kl and relaxation == "gs":
            raise ValueError("closed_form_kl is for the IGR relaxations (the Gaussian KL in noise space); "
                             "the Gumbel-Softmax KL has no closed form")
        if categorical_samples < 1 or relaxed_iw < 0:
            raise ValueError(f"need categorical_samples >= 1 and relaxed_iw >= 0, got {categorical_samples}, "
                             f"{relaxed_iw}")
        self.prior, self.prior_tau, self.closed_form_kl = prior, prior_tau, bool(closed_form_kl)
        self.evaluation, self.categorical_samples, self.relaxed_iw = evaluation, int(categorical_samples), int(relaxed_iw)
        self._x_shape = torch.Size(x_shape)
        self.N, self.K, self.relaxation, self.tau = N, K, relaxation, float(tau)
        self.threshold, self.delta, self.architecture = float(threshold), float(delta), architecture
        self.likelihood = likelihood
        P = 2 if likelihood == "gaussian" else 1  # decoder outputs per pixel
        self.noise_dim = K - 1
        q_dim = N * K if relaxation == "gs" else 2 * N * self.noise_dim
        z_dim = N * K
        D = int(math.prod(self._x_shape))
        if architecture == "conv":
            self.inference_network = conv_encoder(self._x_shape, q_dim, hdim)
            out_shape = self._x_shape if P == 1 else (P * self._x_shape[0], *self._x_shape[1:])
            decoder = conv_decoder(z_dim, out_shape, hdim)
        elif architecture == "nonlinear":
            self.inference_network = relu_mlp(D, NONLINEAR_ENCODER_UNITS, q_dim)
            decoder = relu_mlp(z_dim, NONLINEAR_DECODER_UNITS, P * D)
        else:
            self.inference_network = mlp(D, q_dim, hdim, nlayers)
            decoder = mlp(z_dim, P * D, hdim, nlayers)
        g = nn.Module()
        g.decoder = decoder
        if relaxation == "igr-planar":
            g.flow_u = nn.Parameter(0.01 * torch.randn(num_flows, self.noise_dim))
            g.flow_w = nn.Parameter(0.01 * torch.randn(num_flows, self.noise_dim))
            g.flow_b = nn.Parameter(torch.zeros(num_flows))
        self.generative_model = g
        if architecture == "nonlinear":  # the original's Keras initialisation, x_mean unused (module docstring)
            keras_default_init(self.inference_network)
            keras_default_init(g.decoder)
        elif likelihood == "gaussian":
            _init_gaussian_output_bias(g.decoder, x_mean, GAUSSIAN_INIT_STD)
        elif x_mean is not None:
            init_output_bias(g.decoder, x_mean)

    @property
    def x_shape(self) -> torch.Size:
        return self._x_shape

    @property
    def is_igr(self) -> bool:
        r"""Whether the relaxation is one of the IGR family (``igr-i``, ``igr-sb``, ``igr-planar``), not ``gs``."""
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
        r"""The encoder's parameters of ``q(.|x)`` for ``x`` ``[n, *x_shape]``.

        Returns:
            ``gs``: the logits ``[n, N, K]``; IGR: ``(loc, scale)``, each ``[n, N, K-1]``, of the
            Gaussian noise that the IGR transform maps to the simplex.
        """
        h = self._encode(x)
        if not self.is_igr:
            return h.reshape(h.shape[0], self.N, self.K)
        loc, log_scale = h.reshape(h.shape[0], self.N, 2 * self.noise_dim).chunk(2, dim=-1)
        return loc, log_scale.exp()

    def prior_params(self, n: int, like: Tensor) -> Any:
        r"""The prior's parameters for ``n`` samples, on ``like``'s dtype and device.

        Returns:
            ``gs``: zero logits ``[n, N, K]`` (uniform); IGR: ``(loc, scale)``, each ``[n, N, K-1]``,
            of the prior noise: ``(zeros, ones)`` with ``prior="standard"``, else the Gaussian fitted
            so that the relaxation is close to the uniform
            (:func:`ovis.distributions.igr.uniform_prior_params`).
        """
        if not self.is_igr:
            return torch.zeros(n, self.N, self.K, dtype=like.dtype, device=like.device)
        if self.prior == "standard":
            loc = torch.zeros(n, self.N, self.noise_dim, dtype=like.dtype, device=like.device)
            return loc, torch.ones_like(loc)
        loc, scale = uniform_prior_params(self.relaxation, self.K, like.dtype)
        shape = (n, self.N, self.noise_dim)
        return loc.to(like.device).expand(shape), scale.to(like.device).expand(shape)

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z)`` for a relaxed (or one-hot) ``z`` of shape ``[n, N, K]``: ``Bernoulli(logits(z))``
        (:class:`~ovis.distributions.bernoulli.BernoulliLogits`) or, with ``likelihood="gaussian"``,
        ``N(sigmoid(a(z)), (1e-6 + softplus(b(z)))^2)`` per pixel
        (:func:`~ovis.distributions.gaussian.sigmoid_softplus_normal`); batch ``[n]``, event ``x_shape``."""
        out = self.generative_model.decoder(z.reshape(z.shape[0], -1))
        if self.likelihood == "gaussian":
            a, b = out.reshape(-1, 2, *self._x_shape).unbind(1)
            return sigmoid_softplus_normal(a, b, len(self._x_shape))
        return BernoulliLogits(out.reshape(-1, *self._x_shape), len(self._x_shape))

    # ------------------------------------------------------------------ protocol
    #: the estimators call ``forward(x, particles=n)`` with the un-expanded batch (see forward)
    supports_particles = True

    def forward(self, x: Tensor, zgrads: bool = False, particles: int = 1, **kwargs: Any) -> Dict[str, Any]:
        r"""The protocol's output mapping (:mod:`ovis.models.base`, module docstring) on
        ``B * particles`` rows: ``x`` ``[B, *x_shape]`` is encoded once, the parameters of ``q`` are
        repeated to ``B * particles`` rows (:func:`~ovis.distributions.utils.repeat_rows`; row
        ``b * particles + j`` is particle ``j`` of point ``b``) and the particles drawn from them:
        ``forward`` of ``x`` repeated ``particles`` times, on the same random draws.

        The mapping also has ``z_relaxed``, what the decoder sees.  ``gs`` with ``zgrads``: ``z``
        ``[n, N, K]`` is the log of a Gumbel-softmax sample, ``qz``/``pz`` the matching
        ``ExpRelaxedCategorical`` (the prior at ``prior_tau``) and ``z_relaxed`` its exponential;
        without ``zgrads``: a hard one-hot sample, ``qz``/``pz`` ``OneHotCategorical``.  IGR: ``z``
        is the Gaussian noise ``[n, N, K-1]`` (``qz``/``pz`` Gaussians) and ``z_relaxed``
        ``[n, N, K]`` its image on the simplex.  ``tau=``: the temperature (default: the
        constructor's); ``ValueError`` when it is not ``> 0``.
        """
        tau = self._tau(kwargs)
        n = x.shape[0] * particles
        if not self.is_igr:
            logits = _repeat_params(self.posterior_params(x), particles)
            prior_logits = self.prior_params(n, x)
            if zgrads:
                # log space (the ExpConcrete of log z): a float32 sample at a low temperature has coordinates that
                # underflow to 0, where the simplex density's log z is -inf; the Jacobian of z = exp(s) is
                # common to q and p, so log q - log p is the same in both spaces
                qz = Independent(ExpRelaxedCategorical(torch.tensor(tau, device=x.device, dtype=logits.dtype),
                                                       logits=logits), 1)
                p_tau = tau if self.prior_tau is None else self.prior_tau
                pz = Independent(ExpRelaxedCategorical(torch.tensor(p_tau, device=x.device, dtype=prior_logits.dtype),
                                                       logits=prior_logits), 1)
                s_log = qz.rsample()
                z = s_log.exp()
                return {"px": self.observation_model(z), "z": [s_log], "qz": [qz], "pz": [pz], "z_relaxed": [z]}
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
        if zgrads and self.closed_form_kl and self.training:
            pz = _ClosedFormKLPrior(qz, kl_divergence(qz, pz))
        return {"px": self.observation_model(z), "z": [y], "qz": [qz], "pz": [pz], "z_relaxed": [z]}

    # ------------------------------------------------------------------ one-hot evaluation
    def category_log_probs(self, x: Tensor, tau: Optional[float] = None) -> Tensor:
        r"""``log pi(x)`` ``[n, N, K]``: the categorical ``q`` relaxes (GS: ``log_softmax(logits)``;
        IGR: the induced categorical of ``q``'s IGR distribution, see the module docstring)."""
        if not self.is_igr:
            return torch.log_softmax(self.posterior_params(x), dim=-1)
        loc, scale = self.posterior_params(x)
        tau = self.tau if tau is None else float(tau)
        return self.relaxed(loc, scale, tau).categorical_log_probs(self.categorical_samples)

    def one_hot_log_weights(self, x: Tensor, k: int, tau: Optional[float] = None) -> tuple:
        r"""``(log_w, kl)`` ``[B, k]`` of ``k`` one-hot particles per data point of the discrete model
        (module docstring): ``z ~ Cat(pi(x))``, ``log w = log p(x|z) - N log K - log Cat(z; pi(x))``,
        ``kl = log q - log p``; ``pi`` computed once per data point."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        from ovis.estimators.base import distribution_validation

        with distribution_validation(False):  # the model's own samples (as the estimators' evaluation)
            return self._one_hot_log_weights(x, k, tau)

    def _one_hot_log_weights(self, x: Tensor, k: int, tau: Optional[float]) -> tuple:
        log_pi = self.category_log_probs(x, tau)                       # [B, N, K]
        B = x.shape[0]
        idx = torch.distributions.Categorical(logits=log_pi, validate_args=False).sample((k,)).transpose(0, 1)  # [B, k, N]
        z = torch.nn.functional.one_hot(idx, self.K).to(log_pi.dtype)  # [B, k, N, K]
        log_q = log_pi.unsqueeze(1).expand(B, k, self.N, self.K).gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1)
        log_p = -self.N * math.log(self.K)
        x_exp = x.unsqueeze(1).expand(B, k, *x.shape[1:]).reshape(B * k, *x.shape[1:])
        log_px = self.observation_model(z.reshape(B * k, self.N, self.K)).log_prob(x_exp).view(B, k)
        kl = log_q - log_p
        return log_px - kl, kl

    def evaluation_log_weights(self, x: Tensor, k: int, tau: Optional[float] = None) -> Optional[tuple]:
        r"""The hook of :func:`ovis.training.evaluation.model_log_weights`: :meth:`one_hot_log_weights`
        with ``evaluation="one-hot"`` on this class's own model; ``None`` (the generic relaxed-model
        evaluation) with ``evaluation="relaxed"`` or in a subclass with its own likelihood or forward."""
        own = (type(self).forward is DiscreteVAE.forward
               and type(self).observation_model is DiscreteVAE.observation_model)
        if self.evaluation != "one-hot" or not own:
            return None
        return self.one_hot_log_weights(x, k, tau)

    def relaxed_bound(self, x: Tensor, k: int, tau: Optional[float] = None) -> Tensor:
        r"""The relaxed model's importance-weighted bound with ``k`` particles, ``[B]`` (GS: concrete
        densities with the prior at ``prior_tau``; IGR: noise-space densities)."""
        tau = self.tau if tau is None else float(tau)
        B = x.shape[0]
        x_exp = x.unsqueeze(1).expand(B, k, *x.shape[1:]).reshape(B * k, *x.shape[1:])
        from ovis.estimators.base import distribution_validation

        was = self.closed_form_kl
        self.closed_form_kl = False
        try:  # the model's own samples (a float32 GS sample may round off the simplex's tolerance)
            with distribution_validation(False):
                out = self.forward(x_exp, zgrads=True, tau=tau)
                (z,), (qz,), (pz,) = out["z"], out["qz"], out["pz"]
                log_w = (out["px"].log_prob(x_exp) + pz.log_prob(z).reshape(B * k)
                         - qz.log_prob(z).reshape(B * k))
        finally:
            self.closed_form_kl = was
        return torch.logsumexp(log_w.view(B, k).double(), dim=1) - math.log(k)

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Distribution]:
        r"""``[q(.|x)]``: the noise Gaussian (IGR) or the hard ``OneHotCategorical`` (GS)."""
        if not self.is_igr:
            return [Independent(OneHotCategorical(logits=self.posterior_params(x)), 1)]
        loc, scale = self.posterior_params(x)
        return [Independent(Normal(loc, scale), 2)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        r"""``bs`` samples of the generative model: ``z ~ p(z)`` (one-hot for ``gs``; Gaussian noise mapped
        to the simplex at temperature ``tau`` for IGR), then ``p(x|z)``.

        Returns:
            ``{'px', 'z', 'pz', 'z_relaxed'}`` with batch shape ``[bs]``.

        Raises:
            ValueError: ``tau <= 0``.
        """
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
            t_p = t if self.prior_tau is None else torch.tensor(self.prior_tau, device=x.device, dtype=logits.dtype)
            # the Monte Carlo KL of gumbel_softmax_kl, in log space (see forward)
            q = ExpRelaxedCategorical(t, logits=logits)
            p = ExpRelaxedCategorical(t_p, logits=self.prior_params(n, x))
            s_log = q.rsample((num_samples,))
            return (q.log_prob(s_log) - p.log_prob(s_log)).mean(0).sum(-1)
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
        r"""``discrete-vae/elbo_kl`` (:meth:`elbo`) and ``discrete-vae/kl``, batch means, and with
        ``relaxed_iw > 0`` the relaxed model's bound ``discrete-vae/relaxed_L_k`` (:meth:`relaxed_bound`)."""
        out = {"discrete-vae/elbo_kl": float(self.elbo(x).mean()),
               "discrete-vae/kl": float(self.kl(x).mean())}
        if self.relaxed_iw > 0:
            out["discrete-vae/relaxed_L_k"] = float(self.relaxed_bound(x, self.relaxed_iw).mean())
        return out
