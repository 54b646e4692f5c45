r"""The conditional (structured output prediction) task: predict the bottom half of an image from
its top half (Raiko et al. 2015; MuProp, Gu et al. 2016; REBAR, Tucker et al. 2017; IGR,
Potapczynski et al. 2020).

An observation ``x`` (e.g. a ``[1, 28, 28]`` binarized MNIST digit) is split into its top half
``x_top`` (rows ``0 .. H/2 - 1``, i.e. rows 0-13 of a 28-row image) and its bottom half ``x_bot``
(the remaining rows).  The model is the conditional latent-variable model

.. math::

    p_\theta(x_{bot} | x_{top}) = \sum_z p_\theta(z_L | x_{top})
        \prod_{l=1}^{L-1} p_\theta(z_l | z_{l+1}) \; p_\theta(x_{bot} | z_1),

with ``L >= 1`` stochastic layers in the generative model (the REBAR errata: the original code had
a single stochastic layer there by mistake), fitted with an inference network
``q_phi(z_1 | x) q_phi(z_2 | z_1) ... q_phi(z_L | z_{L-1})`` that sees the whole image ``x =
(x_top, x_bot)``.  The importance-weighted bound

.. math::

    \mathcal{L}_K = E\Big[\log \frac1K \sum_k
        \frac{p(x_{bot} | z^{(k)}_1)\, p(z^{(k)} | x_{top})}{q(z^{(k)} | x)}\Big]
        \le \log p(x_{bot} | x_{top})

is what every estimator of :mod:`ovis.estimators` optimises *without any change*: the data ``x``
stays the full image, the prior of the top layer depends on ``x_top``, and the model output's
``px`` is a :class:`HalfImageBernoulli` whose ``log_prob(x)`` scores only the bottom half of ``x``
(the top half of ``x`` is ignored by the likelihood term).

Difference with the MuProp / REBAR training objective: they sample ``z`` from the conditional prior
itself (``q = p(z | x_top)``, the bound ``E_p[log p(x_bot | z)]``); here ``q`` is a separate
inference network that also sees ``x_bot`` (a tighter bound of the same ``log p(x_bot | x_top)``;
the prior-as-proposal variant is not implemented).  ``wake-sleep`` is refused (no ``infer`` hook:
its sleep phase would draw top halves from ``sample_from_prior``, not from the data).

:class:`ConditionalDiscreteVAE` is the discrete VAE of the IGR paper
(:mod:`ovis.models.discrete_vae`, Gumbel-Softmax or IGR) with the prior ``p(z | x_top)``.
:class:`ConditionalSBN` is the sigmoid belief network of :mod:`ovis.models.sbm` in this setting,
with the discrete hooks ``latent_depth``, ``q_logits`` and ``log_joint_at`` of the REBAR-line
estimators (:mod:`ovis.estimators.discrete`): ``log_joint_at(x, z)`` returns
``log p(x_bot | z_1)`` and ``[log p(z_l | z_{l+1}) ..., log p(z_L | x_top)]``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal, OneHotCategorical, constraints

from ovis.distributions.bernoulli import bernoulli_log_mass
from ovis.distributions.gumbel import GumbelSoftmax
from ovis.distributions.utils import repeat_rows
from ovis.models.discrete_vae import DiscreteVAE, _repeat_params
from ovis.models.sbm import SigmoidBeliefNetwork, sample_bernoulli
from ovis.models.vae import init_output_bias, mlp

__all__ = ["TASKS", "half_image_indices", "HalfImageBernoulli", "ConditionalSBN", "ConditionalDiscreteVAE"]

#: values of ``run.py --task``
TASKS = ("density", "conditional")


def half_image_indices(x_shape: Sequence[int]) -> Tuple[Tensor, Tensor]:
    r"""Indices ``(top, bottom)`` into the flattened observation of shape ``x_shape``.

    For ``x_shape = [..., H, W]`` the top half is the rows ``h < H // 2`` (of every channel), the
    bottom half the other rows (28-row images: rows 0-13 and 14-27).  For a flat ``x_shape = [D]``
    the top half is the first ``D // 2`` entries (the top rows of a row-major image with an even
    number of rows).  Both are sorted ``long`` tensors; together they cover ``0 .. D - 1``.
    """
    shape = torch.Size(x_shape)
    D = int(math.prod(shape))
    if len(shape) == 0 or D < 2:
        raise ValueError(f"the conditional task needs an observation of at least 2 values, got x_shape={tuple(shape)}")
    if len(shape) == 1:
        top = torch.zeros(D, dtype=torch.bool)  # device: construction-time indices, registered as buffers
        top[: D // 2] = True
    else:
        H = shape[-2]
        if H < 2:
            raise ValueError(f"the conditional task splits the rows of the image; x_shape={tuple(shape)} has {H} row")
        # device: construction-time indices, registered as buffers
        rows = torch.arange(H).view(H, 1).expand(*shape[-2:]).expand(shape)
        top = (rows < H // 2).reshape(-1)
    idx = torch.arange(D)  # device: construction-time indices, registered as buffers
    return idx[top], idx[~top]


class HalfImageBernoulli(Distribution):
    r"""``p(x_bot | z)`` as a distribution over *full* images that scores only the bottom half.

    ``log_prob(x)`` for ``x`` of shape ``[n, *x_shape]`` is
    :math:`\sum_{i \in bottom} x_i \log \sigma(\eta_i) + (1 - x_i) \log \sigma(-\eta_i)` (``[n]``):
    the pixels of ``x``'s top half are ignored.  ``mean`` and ``sample()`` are full images
    ``[n, *x_shape]`` whose top half is the conditioning ``x_top`` and whose bottom half is the
    Bernoulli mean / a sample.  This lets the estimators of :mod:`ovis.estimators` (which call
    ``output['px'].log_prob(x)`` on the full data) optimise the conditional bound unchanged.

    Args:
        logits: ``[n, D_bot]`` Bernoulli logits of the bottom half.
        x_top: ``[n, D_top]`` the conditioning top half (values in ``[0, 1]``).
        x_shape: shape of one full observation.
        top, bottom: the indices of :func:`half_image_indices`.
    """

    arg_constraints = {"logits": constraints.real}
    has_rsample = False

    def __init__(self, logits: Tensor, x_top: Tensor, x_shape: Sequence[int], top: Tensor,
                 bottom: Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] != bottom.numel():
            raise ValueError(f"logits must be [n, {bottom.numel()}], got {tuple(logits.shape)}")
        if x_top.shape != (logits.shape[0], top.numel()):
            raise ValueError(f"x_top must be [{logits.shape[0]}, {top.numel()}], got {tuple(x_top.shape)}")
        self.logits, self.x_top = logits, x_top
        self.top, self.bottom = top.to(logits.device), bottom.to(logits.device)
        self._x_shape = torch.Size(x_shape)
        super().__init__(batch_shape=logits.shape[:1], event_shape=self._x_shape, validate_args=False)

    @property
    def bottom_distribution(self) -> Distribution:
        r"""``Independent(Bernoulli(logits), 1)`` over the bottom half only (``[n]``, event ``[D_bot]``)."""
        return Independent(Bernoulli(logits=self.logits, validate_args=False), 1)

    def _assemble(self, bottom_values: Tensor) -> Tensor:
        n = bottom_values.shape[0]
        out = bottom_values.new_empty(n, self.top.numel() + self.bottom.numel())
        out[:, self.top] = self.x_top.to(bottom_values.dtype)
        out[:, self.bottom] = bottom_values
        return out.view(n, *self._x_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""The log-mass of the bottom half of full observations ``value`` ``[n, *x_shape]`` -> ``[n]``
        (the top half is ignored).

        Raises:
            ValueError: ``value`` is not ``[n, *x_shape]`` with this distribution's ``n``.
        """
        n = self.logits.shape[0]
        if value.shape[0] != n or value[0].numel() != self.top.numel() + self.bottom.numel():
            raise ValueError(f"HalfImageBernoulli.log_prob expects full observations [{n}, "
                             f"{tuple(self._x_shape)}], got {tuple(value.shape)}")
        v = value.reshape(n, -1).index_select(1, self.bottom)
        return bernoulli_log_mass(self.logits, v)

    @property
    def mean(self) -> Tensor:
        r"""Full images ``[n, *x_shape]``: the conditioning top half and the Bernoulli means of the bottom."""
        return self._assemble(torch.sigmoid(self.logits))

    # the default torch.Size() is an immutable tuple, as in torch.distributions.Distribution
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        r"""A full image sample ``[n, *x_shape]``: the conditioning top half and a Bernoulli draw of the
        bottom (no gradient).

        Raises:
            NotImplementedError: ``sample_shape`` other than ``()``.
        """
        if len(sample_shape) != 0:
            raise NotImplementedError("HalfImageBernoulli.sample supports sample_shape=() only")
        with torch.no_grad():
            return self._assemble((torch.rand_like(self.logits) < torch.sigmoid(self.logits)).to(self.logits.dtype))


class _HalfImageConditioning:
    r"""The top / bottom split shared by :class:`ConditionalSBN` and :class:`ConditionalDiscreteVAE`:
    the buffers ``top_index``, ``bottom_index`` (:func:`half_image_indices`) and ``default_x_top``
    (the top half of the training mean, or 0.5: the conditioning input of ``sample_from_prior``),
    and :meth:`split`.  Mixed in before the ``nn.Module`` model class."""

    x_shape: torch.Size
    D: int

    def _register_halves(self, x_mean: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        r"""Register the buffers; return ``(top, bottom, flat_x_mean or None)``.

        Raises:
            ValueError: ``x_mean`` does not have one value per pixel.
        """
        top, bottom = half_image_indices(self.x_shape)
        self.register_buffer("top_index", top, persistent=False)  # type: ignore[attr-defined]
        self.register_buffer("bottom_index", bottom, persistent=False)  # type: ignore[attr-defined]
        self.D = top.numel() + bottom.numel()
        flat = None
        if x_mean is not None:
            if x_mean.numel() != self.D:
                raise ValueError(f"x_mean must have {self.D} values (x_shape={tuple(self.x_shape)}), got {x_mean.numel()}")
            flat = x_mean.detach().reshape(-1).float()
        # device: a buffer
        default = flat[top].clone() if flat is not None else torch.full((top.numel(),), 0.5)
        self.register_buffer("default_x_top", default, persistent=False)  # type: ignore[attr-defined]
        return top, bottom, flat

    def split(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        r"""``x [n, *x_shape] -> (x_top [n, D_top], x_bot [n, D_bot])``."""
        h = x.reshape(x.shape[0], -1)
        if h.shape[1] != self.D:
            raise ValueError(f"expected observations of shape {tuple(self.x_shape)}, got {tuple(x.shape)}")
        return h.index_select(1, self.top_index), h.index_select(1, self.bottom_index)


class ConditionalSBN(_HalfImageConditioning, SigmoidBeliefNetwork):
    r"""A ``depth``-layer sigmoid belief network for ``p(x_bot | x_top)`` (module docstring).

    * generative model: ``p(z_L | x_top) = Bernoulli(sigmoid(c(2 x_top - 1)))``,
      ``p(z_{l-1} | z_l) = Bernoulli(sigmoid(f_l(2 z_l - 1)))``,
      ``p(x_bot | z_1) = Bernoulli(sigmoid(f_0(2 z_1 - 1)))`` (:class:`HalfImageBernoulli`);
    * inference network: as :class:`SigmoidBeliefNetwork`, ``q(z_1 | x)`` on the full image.

    Every map is linear (``nlayers = 0``) or an MLP of ``nlayers`` tanh layers of ``hdim`` units.

    Args: as :class:`SigmoidBeliefNetwork` (``x_mean`` initialises the bias of ``p(x_bot|z_1)`` at
    the logit of the bottom half of the training mean; its top half is also the default
    conditioning input of :meth:`sample_from_prior`).

    Parameters: ``inference_network.layers.{l}``, ``generative_model.layers.{l}`` (``layers.0``:
    ``z_1 -> x_bot``) and ``generative_model.prior_net`` (``x_top -> `` logits of ``z_L``).
    """

    def __init__(self, x_shape: Sequence[int], N: int = 200, depth: int = 1, nlayers: int = 0,
                 hdim: int = 200, x_mean: Optional[Tensor] = None) -> None:
        super().__init__(x_shape, N=N, depth=depth, nlayers=nlayers, hdim=hdim, x_mean=None)
        top, bottom, flat_mean = self._register_halves(x_mean)
        self.D_top, self.D_bot = top.numel(), bottom.numel()
        del self.generative_model.prior_logits
        self.generative_model.layers[0] = mlp(N, self.D_bot, hdim, nlayers)
        self.generative_model.prior_net = mlp(self.D_top, N, hdim, nlayers)
        if flat_mean is not None:
            init_output_bias(self.generative_model.layers[0], flat_mean[bottom])

    #: no ``infer`` hook: the sleep phase of ``wake-sleep`` draws ``(z, x)`` from
    #: ``sample_from_prior(n)``, which cannot see the data's top halves here (it would fit ``q`` on
    #: images whose top half is the training mean); ``wake-sleep`` is refused with a clear error
    #: (``wake-wake`` works)
    infer = None  # type: ignore[assignment]
    #: its prior and observation model differ from the SBN's: the generic evaluation path
    fused_log_densities = False

    # ------------------------------------------------------------------ pieces
    def prior_logits_given(self, x_top: Tensor) -> Tensor:
        r"""Logits ``[n, N]`` of ``p(z_L | x_top)`` for ``x_top [n, D_top]``."""
        return self.generative_model.prior_net(2 * x_top - 1)

    def prior(self, n: int) -> Distribution:  # type: ignore[override]
        raise TypeError("ConditionalSBN has no unconditional prior: p(z_L | x_top) needs the top half "
                        "(use conditional_prior(x_top))")

    def conditional_prior(self, x_top: Tensor) -> Distribution:
        r"""``p(z_L | x_top)``, batch ``[n]``, event ``[N]``."""
        return self._bernoulli(self.prior_logits_given(x_top))

    def observation_model(self, z1: Tensor, x_top: Optional[Tensor] = None) -> Distribution:  # type: ignore[override]
        r"""``p(x_bot | z_1)`` as a :class:`HalfImageBernoulli` (top half: ``x_top`` ``[n, D_top]``)."""
        if x_top is None:
            raise TypeError("ConditionalSBN.observation_model needs x_top (the conditioning top half)")
        logits = self.generative_model.layers[0](2 * z1 - 1)
        return HalfImageBernoulli(logits, x_top, self.x_shape, self.top_index, self.bottom_index)

    def _generative_given(self, z: List[Tensor], prior_logits: Tensor) -> List[Distribution]:
        return ([self._p(l + 1, z[l + 1]) for l in range(self.depth - 1)]
                + [self._bernoulli(prior_logits)])

    # ------------------------------------------------------------------ protocol
    def forward(self, x: Tensor, zgrads: bool = False, particles: int = 1, **kwargs: Any) -> Dict[str, Any]:
        r"""``z ~ q(z | x)`` on the full image; ``pz[-1] = p(z_L | x_top)``; ``px`` scores ``x_bot``.

        ``particles = n``: as :meth:`SigmoidBeliefNetwork.forward` (``x`` un-expanded, ``B * n``
        rows, row ``b * n + j``); the prior network is also evaluated once per data point.
        """
        z, qz = self.sample_posterior(x, particles)
        x_top, _ = self.split(x)
        prior_logits = self.prior_logits_given(x_top)
        if particles > 1:
            prior_logits = prior_logits.repeat_interleave(particles, 0)
            x_top = x_top.repeat_interleave(particles, 0)
        return {"px": self.observation_model(z[0], x_top), "z": z, "qz": qz,
                "pz": self._generative_given(z, prior_logits)}

    def log_joint_at(self, x: Tensor, z: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        r"""``(log p(x_bot | z_1) [n], log p(z_l | z_{l+1}), ..., log p(z_L | x_top) [n, L])`` at
        given (possibly relaxed) ``z`` (discrete hook; ``x`` is the full image ``[n, *x_shape]``)."""
        if len(z) != self.depth:
            raise ValueError(f"log_joint_at needs {self.depth} latent layers, got {len(z)}")

        x_top, x_bot = self.split(x)
        log_px = bernoulli_log_mass(self.generative_model.layers[0](2 * z[0] - 1), x_bot)
        log_pz = [bernoulli_log_mass(self.generative_model.layers[l + 1](2 * z[l + 1] - 1), z[l])
                  for l in range(self.depth - 1)]
        log_pz.append(bernoulli_log_mass(self.prior_logits_given(x_top), z[-1]))
        return log_px, torch.stack(log_pz, dim=-1)

    def sample_from_prior(self, bs: int, x: Optional[Tensor] = None, **kwargs: Any) -> Dict[str, Any]:
        r"""Ancestral samples of ``p(z | x_top) p(x_bot | z_1)``.

        ``x``: ``[bs, *x_shape]`` images whose top halves condition the samples; left out, every
        sample is conditioned on the top half of the training mean (``0.5`` when unknown).
        ``px.mean`` / ``px.sample()`` are full images with that top half.
        """
        if x is None:
            x_top = self.default_x_top.expand(bs, self.D_top)
        else:
            if x.shape[0] != bs:
                raise ValueError(f"sample_from_prior: x has {x.shape[0]} rows, bs={bs}")
            x_top, _ = self.split(x)
        prior_logits = self.prior_logits_given(x_top)
        z = [sample_bernoulli(self._bernoulli(prior_logits))]
        for l in range(self.depth - 1, 0, -1):
            z.insert(0, sample_bernoulli(self._p(l, z[0])))
        return {"px": self.observation_model(z[0], x_top), "z": z,
                "pz": self._generative_given(z, prior_logits)}



class ConditionalDiscreteVAE(_HalfImageConditioning, DiscreteVAE):
    r"""The discrete VAE of the IGR paper (:class:`ovis.models.discrete_vae.DiscreteVAE`) for
    ``p(x_bot | x_top)`` (structured output prediction, IGR paper section 5.2).

    * prior conditioned on the top half: GS: ``p(z | x_top)`` relaxes
      ``Categorical(softmax(c(2 x_top - 1)))`` (``[N, K]`` logits); IGR:
      ``p(y | x_top) = N(mu(x_top), sigma(x_top)^2)`` (the IGR noise, ``[N, K-1]``);
      ``c`` / ``(mu, log sigma)`` is ``generative_model.prior_net``, an MLP of ``x_top``;
    * ``q(z | x)`` sees the whole image (as in :class:`DiscreteVAE`);
    * ``px`` is a :class:`HalfImageBernoulli`: the decoder (dense or conv) still outputs a full
      image of logits, of which only the bottom half is used (the top rows of its output layer
      receive no gradient).

    One stochastic layer (``N`` categorical variables), as in the IGR paper.  Same arguments as
    :class:`DiscreteVAE`, by keyword, except ``likelihood`` (``bernoulli`` only: ``NotImplementedError``
    otherwise; ``architecture="nonlinear"`` applies to the encoder and decoder, not to ``prior_net``) (``hdim`` / ``nlayers`` also size ``prior_net``); :meth:`DiscreteVAE.elbo` / :meth:`DiscreteVAE.kl` use the conditional
    prior (the KL is then ``KL(q(z|x) || p(z|x_top))``).
    """

    #: no ``infer`` hook (see :attr:`ConditionalSBN.infer`): ``wake-sleep`` is refused
    infer = None  # type: ignore[assignment]

    def __init__(self, x_shape: Sequence[int], **kwargs: Any) -> None:
        likelihood = kwargs.get("likelihood", "bernoulli")
        if likelihood != "bernoulli":
            raise NotImplementedError(
                f"ConditionalDiscreteVAE: likelihood {likelihood!r} is not implemented for --task conditional "
                "(p(x_bot | z) is a HalfImageBernoulli of binarised pixels); use --likelihood bernoulli with a "
                "binarised --dataset, or --task density for the Gaussian decoder of grey levels")
        super().__init__(x_shape, **kwargs)
        top, _, _ = self._register_halves(kwargs.get("x_mean"))
        hdim = int(kwargs.get("hdim", 200))
        nlayers = int(kwargs.get("nlayers", 2))
        out_dim = self.N * self.K if not self.is_igr else 2 * self.N * self.noise_dim
        self.generative_model.prior_net = mlp(top.numel(), out_dim, hdim, nlayers)

    def prior_given(self, x_top: Tensor) -> Any:
        r"""GS: prior logits ``[n, N, K]``; IGR: ``(loc, scale)`` ``[n, N, K-1]``, from ``x_top``."""
        h = self.generative_model.prior_net(2 * x_top - 1)
        if not self.is_igr:
            return h.reshape(h.shape[0], self.N, self.K)
        loc, log_scale = h.reshape(h.shape[0], self.N, 2 * self.noise_dim).chunk(2, dim=-1)
        return loc, log_scale.exp()

    def prior_params(self, n: int, like: Tensor) -> Any:
        r"""The conditional prior's parameters; ``like`` must be the observations ``[n, *x_shape]``
        (as :meth:`DiscreteVAE.forward` / :meth:`DiscreteVAE.kl` pass them)."""
        if like.dim() < 1 or like.shape[0] != n or like[0].numel() != self.D:
            raise TypeError("ConditionalDiscreteVAE.prior_params needs the observations x "
                            f"[{n}, {tuple(self.x_shape)}] (their top half), got {tuple(like.shape)}")
        return self.prior_given(self.split(like)[0])

    def observation_model(self, z: Tensor, x_top: Optional[Tensor] = None) -> Distribution:  # type: ignore[override]
        r"""``p(x_bot | z)`` as a :class:`HalfImageBernoulli` (``x_top`` ``[n, D_top]`` required)."""
        if x_top is None:
            raise TypeError("ConditionalDiscreteVAE.observation_model needs x_top (the conditioning top half)")
        logits = self.generative_model.decoder(z.reshape(z.shape[0], -1)).reshape(z.shape[0], -1)
        return HalfImageBernoulli(logits.index_select(1, self.bottom_index), x_top, self.x_shape,
                                  self.top_index, self.bottom_index)

    def observation_at(self, x: Tensor, z: Tensor) -> Distribution:
        r"""``p(x_bot | z)`` conditioned on the top half of ``x`` (discrete hook of
        :meth:`DiscreteVAE.log_joint_at`, with the prior :meth:`prior_params` given ``x_top``), so
        the REBAR-line estimators train the conditional model on its exact discrete objective."""
        return self.observation_model(z, self.split(x)[0])

    def _sample(self, x_top: Tensor, post: Any, prior: Any, zgrads: bool, tau: float,
                from_prior: bool) -> Dict[str, Any]:
        if not self.is_igr:
            t = torch.tensor(tau, device=x_top.device, dtype=prior.dtype)
            if zgrads:
                pz = Independent(GumbelSoftmax(t, logits=prior), 1)
                qz = None if post is None else Independent(GumbelSoftmax(t, logits=post), 1)
            else:
                pz = Independent(OneHotCategorical(logits=prior), 1)
                qz = None if post is None else Independent(OneHotCategorical(logits=post), 1)
            src = pz if from_prior else qz
            z = src.rsample() if zgrads else src.sample()
            out = {"px": self.observation_model(z, x_top), "z": [z], "pz": [pz], "z_relaxed": [z]}
        else:
            pz = Independent(Normal(*prior), 2)
            qz = None if post is None else Independent(Normal(*post), 2)
            src, params = (pz, prior) if from_prior else (qz, post)
            y = src.rsample() if zgrads else src.sample()
            z = self.relaxed(params[0], params[1], tau).transform(y)
            out = {"px": self.observation_model(z, x_top), "z": [y], "pz": [pz], "z_relaxed": [z]}
        if qz is not None:
            out["qz"] = [qz]
        return out

    def forward(self, x: Tensor, zgrads: bool = False, particles: int = 1, **kwargs: Any) -> Dict[str, Any]:
        r"""As :meth:`DiscreteVAE.forward`, with ``p(z | x_top)`` and ``px`` scoring ``x_bot``;
        ``particles = n``: ``q`` and the conditional prior are evaluated once per data point and
        their parameters (and ``x_top``) repeated to ``B * n`` rows (row ``b * n + j``)."""
        x_top, _ = self.split(x)
        post, prior = self.posterior_params(x), self.prior_given(x_top)
        if particles != 1:
            post, prior = _repeat_params(post, particles), _repeat_params(prior, particles)
            x_top = repeat_rows(x_top, particles)
        return self._sample(x_top, post, prior, zgrads, self._tau(kwargs), from_prior=False)

    def sample_from_prior(self, bs: int, x: Optional[Tensor] = None, **kwargs: Any) -> Dict[str, Any]:
        r"""Samples of ``p(z | x_top) p(x_bot | z)``: ``x`` ``[bs, *x_shape]`` gives the top halves
        (default: the top half of the training mean); ``px.mean`` is a full image."""
        if x is None:
            x_top = self.default_x_top.expand(bs, self.default_x_top.numel())
        else:
            if x.shape[0] != bs:
                raise ValueError(f"sample_from_prior: x has {x.shape[0]} rows, bs={bs}")
            x_top = self.split(x)[0]
        return self._sample(x_top, None, self.prior_given(x_top), False, self._tau(kwargs), from_prior=True)
