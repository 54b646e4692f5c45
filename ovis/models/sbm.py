r"""Sigmoid belief networks (Neal 1992), as in the VIMCO / TVO / OVIS papers.

``depth = L`` stochastic layers of ``N`` Bernoulli units ``z_l in {0, 1}^N`` (float tensors):

* generative model: ``p(z_L) = Bernoulli(sigmoid(b))`` with learned logits ``b`` (the top-layer
  prior), ``p(z_{l-1} | z_l) = Bernoulli(sigmoid(f_l(2 z_l - 1)))`` and
  ``p(x | z_1) = Bernoulli(sigmoid(f_0(2 z_1 - 1)))``;
* inference network: ``q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})``, each
  ``Bernoulli(sigmoid(g_l(2 h - 1)))``;

each ``f``, ``g`` is linear (``nlayers = 0``) or an MLP of ``nlayers`` hidden layers of ``hdim``
tanh units.  Inputs of every map are fed as ``2 v - 1`` (in ``{-1, 1}``).  The bias of ``p(x|z_1)``
is initialised at the logit of the training mean (Mnih & Gregor 2014; Masrani et al. 2019).

Lists of the model output are ordered by layer: ``z = [z_1, ..., z_L]``,
``qz = [q(z_1|x), q(z_2|z_1), ...]``, ``pz = [p(z_1|z_2), ..., p(z_{L-1}|z_L), p(z_L)]``.

Discrete-latent hooks (used by the REBAR-line estimators, :mod:`ovis.estimators.discrete`):
``latent_depth`` (``L``), ``q_logits(l, h)`` (the logits of ``q(z_{l+1} | h)``, ``h = x`` for
``l = 0``, else ``z_l``, possibly relaxed) and ``log_joint_at(x, z)`` (``log p(x|z_1)`` ``[n]`` and
``log p(z_l|z_{l+1})`` ``[n, L]`` at given, possibly relaxed, ``z``: the Bernoulli log mass
``z log sigmoid(eta) + (1 - z) log sigmoid(-eta)`` is evaluated at ``z`` in ``[0, 1]``; the maps
receive ``2 z - 1`` as for hard samples).  The mean-field pass of MuProp is ``log_joint_at`` at
the means.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

from ovis.distributions.bernoulli import BITS24, BernoulliLogits, bernoulli_log_mass, random_bits24
from ovis.models.base import TemplateModel
from ovis.models.vae import init_output_bias, mlp

__all__ = ["SigmoidBeliefNetwork", "sample_bernoulli", "BATCHED_TERMS_MAX_ELEMENTS"]

#: the largest ``n * 2 L * N`` for which :meth:`SigmoidBeliefNetwork.particle_log_densities` batches
#: its latent log masses into one tensor (above it, layer by layer)
BATCHED_TERMS_MAX_ELEMENTS = 1 << 19


def sample_bernoulli(dist: Distribution) -> Tensor:
    r"""A sample of an ``Independent(Bernoulli)`` as ``1[u < p]`` with ``u ~ U(0, 1)``.

    The same distribution as ``dist.sample()`` (no gradient flows through it).
    """
    base = dist.base_dist if isinstance(dist, Independent) else dist
    with torch.no_grad():
        probs = base.probs
        return (torch.rand_like(probs) < probs).to(probs.dtype)


class SigmoidBeliefNetwork(TemplateModel):
    r"""A ``depth``-layer sigmoid belief network (see the module docstring).

    Args:
        x_shape: shape of one binary observation (flattened to ``D``).
        N: Bernoulli units per stochastic layer.
        depth: number of stochastic layers ``L >= 1``.
        nlayers: hidden layers of each deterministic map (``0``: linear).
        hdim: hidden units of those maps.
        x_mean: training mean of ``x`` (``x_shape``) to initialise the output bias at its logit.

    Parameters: ``inference_network.layers.{l}`` (``q``), ``generative_model.layers.{l}``
    (``p(z_{l}|z_{l+1})`` for ``l >= 1``, ``layers.0`` is ``p(x|z_1)``) and
    ``generative_model.prior_logits`` (``[N]``).
    """

    def __init__(self, x_shape: Sequence[int], N: int = 200, depth: int = 1, nlayers: int = 0,
                 hdim: int = 200, x_mean: Optional[Tensor] = None) -> None:
        super().__init__()
        if N < 1 or depth < 1 or nlayers < 0 or hdim < 1:
            raise ValueError(f"invalid SBN N={N}, depth={depth}, nlayers={nlayers}, hdim={hdim}")
        self._x_shape = torch.Size(x_shape)
        self.D = int(math.prod(self._x_shape))
        self.N, self.depth = N, depth
        self.inference_network = nn.Module()
        self.inference_network.layers = nn.ModuleList(
            [mlp(self.D if l == 0 else N, N, hdim, nlayers) for l in range(depth)])
        self.generative_model = nn.Module()
        # layers[0]: z_1 -> x ; layers[l]: z_{l+1} -> z_l
        self.generative_model.layers = nn.ModuleList(
            [mlp(N, self.D if l == 0 else N, hdim, nlayers) for l in range(depth)])
        self.generative_model.prior_logits = nn.Parameter(torch.zeros(N))
        if x_mean is not None:
            init_output_bias(self.generative_model.layers[0], x_mean)

    @property
    def x_shape(self) -> torch.Size:
        return self._x_shape

    @staticmethod
    def _bernoulli(logits: Tensor) -> Distribution:
        return BernoulliLogits(logits, 1)

    def prior(self, n: int) -> Distribution:
        r"""``p(z_L)``, batch ``[n]``, event ``[N]``."""
        return self._bernoulli(self.generative_model.prior_logits.expand(n, self.N))

    def observation_model(self, z1: Tensor) -> Distribution:
        r"""``p(x | z_1)``, batch ``[n]``, event ``x_shape``."""
        logits = self.generative_model.layers[0](2 * z1 - 1).view(-1, *self._x_shape)
        return BernoulliLogits(logits, len(self._x_shape))

    def _q(self, l: int, h: Tensor) -> Distribution:
        return self._bernoulli(self.inference_network.layers[l](2 * h - 1))

    def _p(self, l: int, z_above: Tensor) -> Distribution:
        r"""``p(z_l | z_{l+1})`` for ``l = 1..L-1`` (1-based layer index)."""
        return self._bernoulli(self.generative_model.layers[l](2 * z_above - 1))

    def _generative(self, z: List[Tensor]) -> List[Distribution]:
        n = z[0].shape[0]
        return [self._p(l + 1, z[l + 1]) for l in range(self.depth - 1)] + [self.prior(n)]

    #: the estimators may call ``forward(x, particles=n)`` with the un-expanded batch (see forward)
    supports_particles = True

    def forward(self, x: Tensor, zgrads: bool = False, particles: int = 1, **kwargs: Any) -> Dict[str, Any]:
        r"""Sample ``z ~ q(z|x)`` layer by layer (Bernoulli latents have no ``rsample``: with
        ``zgrads=True`` the samples carry no gradient and the estimators report it).

        ``particles = n``: ``x`` is the un-expanded batch ``[B, *x_shape]`` and the output has
        ``B * n`` rows (row ``b * n + j`` is particle ``j`` of data point ``b``): the first
        inference layer is evaluated once per data point and its logits repeated, which saves
        ``n - 1`` of ``n`` evaluations of the largest map (784 x N) and of its weight gradient.
        """
        q_logits, z, _, p_logits, px_logits = self._particle_logits(x, particles)
        return self._output(q_logits, z, p_logits, px_logits)

    def _posterior_samples(self, x: Tensor, particles: int) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        r"""``(logits, z, signs)``, lists over the layers of ``q(z_l | ...)``'s logits ``[n, N]``,
        its samples ``z_l`` and their signs ``2 z_l - 1`` (the input of the next map), on
        ``n = B * particles`` rows (row ``b * particles + j``).  The first layer is evaluated once
        per data point; ``z_l = 1[b_l / 2^24 < sigmoid(a_l)]`` with uniform 24-bit integers ``b``
        for all layers drawn in one call (:func:`~ovis.distributions.bernoulli.random_bits24`: the
        law of ``torch.rand() < p``; the division by ``2^24`` is exact)."""
        if particles < 1:
            raise ValueError(f"particles must be >= 1, got {particles}")
        B = x.shape[0]
        h = 2 * x.reshape(B, -1) - 1
        # uniforms u = bits / 2^24 (exact): u < sigmoid(a) is bits < sigmoid(a) 2^24, the same draws
        u = random_bits24((self.depth, B * particles, self.N), device=h.device).to(h.dtype).mul_(1.0 / BITS24)
        logits: List[Tensor] = []
        z: List[Tensor] = []
        signs: List[Tensor] = []
        for l, layer in enumerate(self.inference_network.layers):
            a = layer(h)
            if l == 0 and particles > 1:
                a = a.repeat_interleave(particles, 0)
            with torch.no_grad():  # 4 kernels: the comparison writes the float sample itself
                zl = torch.lt(u[l], torch.sigmoid(a), out=torch.empty_like(a))
                h = torch.mul(zl, 2).sub_(1)
            logits.append(a)
            z.append(zl)
            signs.append(h)
        return logits, z, signs

    def _particle_logits(self, x: Tensor, particles: int
                         ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor], Tensor]:
        r"""``(q_logits, z, signs, p_logits, px_logits)`` of ``B * particles`` particles: the
        posterior samples of :meth:`_posterior_samples`, the logits ``[n, N]`` of
        ``p(z_l | z_{l+1})`` (``l = 1..L-1``) and of the prior (expanded), and those of
        ``p(x | z_1)`` ``[n, D]``; the one pass behind :meth:`forward` and
        :meth:`particle_log_densities`."""
        q_logits, z, signs = self._posterior_samples(x, particles)
        n = z[0].shape[0]
        p_logits = [self.generative_model.layers[l + 1](signs[l + 1]) for l in range(self.depth - 1)]
        p_logits.append(self.generative_model.prior_logits.expand(n, self.N))
        return q_logits, z, signs, p_logits, self.generative_model.layers[0](signs[0])

    def _output(self, q_logits: List[Tensor], z: List[Tensor], p_logits: List[Tensor],
                px_logits: Tensor) -> Dict[str, Any]:
        r"""The model output mapping (``px``, ``z``, ``qz``, ``pz``) from :meth:`_particle_logits`."""
        return {"px": BernoulliLogits(px_logits.view(-1, *self._x_shape), len(self._x_shape)), "z": z,
                "qz": [self._bernoulli(a) for a in q_logits], "pz": [self._bernoulli(a) for a in p_logits]}

    def sample_posterior(self, x: Tensor, particles: int = 1) -> Tuple[List[Tensor], List[Distribution]]:
        r"""``([z_1..z_L], [q(z_1|x), q(z_2|z_1), ...])`` on ``B * particles`` rows (row
        ``b * particles + j``); the first layer is evaluated once per data point."""
        logits, z, _ = self._posterior_samples(x, particles)
        return z, [self._bernoulli(a) for a in logits]

    #: ``particle_log_densities`` evaluates ``forward``'s log-densities itself (ovis.models.base)
    fused_log_densities = True

    def particle_log_densities(self, x: Tensor, particles: int = 1,
                               **kwargs: Any) -> Tuple[Dict[str, Any], Tensor, Tensor, Tensor]:
        r"""``forward(x, particles=particles)`` and its log-densities in one batched pass:
        ``(output, log_px [n], log_qz [n, L], log_pz [n, L])`` with ``n = B * particles`` rows, the
        values of ``output['px'].log_prob(x)`` (``x`` expanded), ``output['qz'][l].log_prob(z_l)``
        and ``output['pz'][l].log_prob(z_l)``.

        With the signs ``s = 2 z - 1`` of a sample, the Bernoulli log mass is ``log sigmoid(s a)``
        (one kernel instead of ``z a - softplus(a)``, and exact on both tails), and the ``2 L``
        latent terms are one ``[n, 2, L, N]`` evaluation up to :data:`BATCHED_TERMS_MAX_ELEMENTS`
        elements, layer by layer above (large batches stay in the cache one layer at a time).
        ``log p(x|z_1)`` is ``log sigmoid(a) + (x - 1) a``, the continuous extension of
        :func:`bernoulli_log_mass` for grey ``x`` too.  ``tests/test_speed_paths.py`` checks the
        values and gradients against evaluating the distributions one by one.
        """
        q_logits, z, signs, p_logits, px_logits = self._particle_logits(x, particles)
        B, n, N = x.shape[0], z[0].shape[0], self.N
        if n * 2 * self.depth * N <= BATCHED_TERMS_MAX_ELEMENTS:  # few kernels for small batches
            logits = torch.cat(q_logits + p_logits, dim=-1).view(n, 2, self.depth * N)
            terms = F.logsigmoid(logits * torch.cat(signs, dim=-1)[:, None]).view(n, 2, self.depth, N).sum(-1)
            log_qz, log_pz = terms.unbind(1)
        else:  # layer by layer: each pass stays in the cache
            log_qz = torch.stack([F.logsigmoid(a * s).sum(-1) for a, s in zip(q_logits, signs)], dim=-1)
            log_pz = torch.stack([F.logsigmoid(a * s).sum(-1) for a, s in zip(p_logits, signs)], dim=-1)
        # x a - softplus(a) = log sigmoid(a) + (x - 1) a: one formula for binary and grey x, no sync
        a = px_logits.view(B, particles, -1)
        log_px = torch.addcmul(F.logsigmoid(a), x.reshape(B, 1, -1) - 1, a).sum(-1).view(n)
        return self._output(q_logits, z, p_logits, px_logits), log_px, log_qz, log_pz

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Distribution]:
        r"""``[q(z_1|x), q(z_2|z_1), ...]`` evaluated along the given ``z`` (wake-sleep)."""
        if len(z) != self.depth:
            raise ValueError(f"infer() needs {self.depth} latent layers, got {len(z)}")
        inputs = [x.reshape(x.shape[0], -1)] + list(z[:-1])
        return [self._q(l, h) for l, h in enumerate(inputs)]

    # ------------------------------------------------------------------ discrete hooks
    @property
    def latent_depth(self) -> int:
        r"""The number ``L`` of stochastic layers (discrete hook)."""
        return self.depth

    def q_logits(self, l: int, h: Tensor) -> Tensor:
        r"""Logits ``[n, N]`` of ``q(z_{l+1} | h)`` (``l`` 0-based; ``h``: ``x`` ``[n, *x_shape]`` for
        ``l = 0``, else the possibly relaxed ``z_l`` ``[n, N]``)."""
        if not 0 <= l < self.depth:
            raise ValueError(f"q_logits: layer index l must lie in [0, {self.depth}), got {l}")
        return self.inference_network.layers[l](2 * h.reshape(h.shape[0], -1) - 1)

    def log_joint_at(self, x: Tensor, z: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        r"""``(log p(x|z_1) [n], log p(z_l|z_{l+1}) [n, L])`` at given (possibly relaxed) ``z``."""
        if len(z) != self.depth:
            raise ValueError(f"log_joint_at needs {self.depth} latent layers, got {len(z)}")

        n = z[0].shape[0]
        log_px = bernoulli_log_mass(self.generative_model.layers[0](2 * z[0] - 1), x.reshape(n, -1))
        log_pz = [bernoulli_log_mass(self.generative_model.layers[l + 1](2 * z[l + 1] - 1), z[l])
                  for l in range(self.depth - 1)]
        log_pz.append(bernoulli_log_mass(self.generative_model.prior_logits.expand(n, self.N), z[-1]))
        return log_px, torch.stack(log_pz, dim=-1)

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        r"""Ancestral sampling: ``z_L ~ p(z_L)``, then ``z_l ~ p(z_l | z_{l+1})`` down to ``z_1``;
        returns ``{'px': p(x|z_1), 'z': [z_1..z_L], 'pz': [p(z_l|z_{l+1})..p(z_L)]}``, batch ``[bs]``.
        """
        zl = sample_bernoulli(self.prior(bs))
        z = [zl]
        for l in range(self.depth - 1, 0, -1):
            z.insert(0, sample_bernoulli(self._p(l, z[0])))
        return {"px": self.observation_model(z[0]), "z": z, "pz": self._generative(z)}
