r"""The discrete-latent model protocol (the *discrete hooks*) and the helpers shared by the
estimators of the REBAR line (:mod:`~ovis.estimators.discrete_base`, :mod:`~ovis.estimators.arm`,
:mod:`~ovis.estimators.muprop`, :mod:`~ovis.estimators.relaxed`, :mod:`~ovis.estimators.rebar`).

Model protocol (the *discrete hooks*)
-------------------------------------
Implemented by :class:`ovis.models.sbm.SigmoidBeliefNetwork`, :class:`ovis.testing.BernoulliToyModel`
(Bernoulli), :class:`ovis.models.discrete_vae.DiscreteVAE` with ``relaxation="gs"`` and
:class:`ovis.testing.CategoricalToyModel` (categorical).

* ``model.latent_depth -> int``: the number ``L`` of stochastic layers.
* ``model.latent_categories -> int | None`` (optional; absent or ``None``: Bernoulli latents):
  ``C >= 2`` when every stochastic layer is made of categorical variables of ``C`` classes.
* ``model.q_logits(l, h) -> Tensor``: the logits of :math:`q(z_{l+1} | h)` (``l`` 0-based), where
  ``h`` is the observation batch ``[n, *x_shape]`` for ``l = 0`` and the (possibly relaxed,
  continuous) sample ``z_l`` otherwise.  Bernoulli: ``[n, N_l]``, :math:`q(z=1) = \sigma(a)`;
  categorical: ``[n, N_l, C]``, :math:`q(z = e_c) = \mathrm{softmax}(a)_c` (unnormalised logits).
* ``model.log_joint_at(x, z) -> (log_px [n], log_pz [n, L])``: :math:`\log p(x|z_1)` and
  :math:`\log p(z_l | z_{l+1})` (the prior for the top layer) at GIVEN ``z = [z_1..z_L]``, which
  may be relaxed values.  Bernoulli: ``z_l`` ``[n, N_l]`` in ``[0, 1]``, the log mass extended
  continuously as :math:`z \log\sigma(\eta) + (1-z)\log\sigma(-\eta)` (as REBAR's relaxed forward
  pass); categorical: ``z_l`` ``[n, N_l, C]``, one-hot or a point of the simplex, the log mass
  extended as :math:`\sum_c z_c \log\mathrm{softmax}(\eta)_c`.

:math:`\log q(z|x)` at given ``z`` is computed by the estimators from ``q_logits`` with the same
extension (:func:`bernoulli_log_prob`, :func:`categorical_log_prob`).  A model without a hook
raises a ``TypeError`` naming it (:func:`check_discrete_model`).  Every layer of a model has the
same kind (all Bernoulli, or all categorical with ``C`` classes; the number of variables ``N_l``
may differ).

Categorical latents (``latent_categories = C``)
------------------------------------------------
===========================================  ==========================================================
estimator                                    categorical support
===========================================  ==========================================================
``concrete`` / ``gumbel-softmax``            any depth: :math:`y = \mathrm{softmax}((a + g)/\tau)`
``straight-through``                         any depth: :math:`b + y - \mathrm{sg}(y)`, ``b`` one-hot argmax
``rebar``, ``dynamic-rebar``, ``relax``      any depth: categorical REBAR (:mod:`ovis.estimators.rebar`)
``muprop``, ``simple-muprop``                any depth: mean-field point :math:`\mathrm{softmax}(a)`
``nvil``                                     any depth (generic score function through ``forward``)
``arm``, ``disarm``                          refused: binary only (the categorical extension, ARSM of
                                             Yin et al. 2019, is not implemented)
===========================================  ==========================================================

Deeper models are handled layer-wise
(:meth:`~ovis.estimators.discrete_base.DiscreteLatentEstimator.layerwise_smooth`; Gumbel noise in
place of the logistic noise for categorical latents).

Objective
---------
Every estimator of the REBAR line targets the importance-weighted bound
:math:`\mathcal{L}_K = E_{b_{1..K} \sim q}[f(b)]`, :math:`f(b) = \log \frac{1}{K}\sum_k w(b_k)`
(``alpha = 0`` only; with ``iw = 1``, the papers' setting, this is the ELBO), where ``log w`` is
built from the hooks at the given ``z`` under the KL weight and free bits (:func:`bound_at`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovis.distributions.bernoulli import bernoulli_log_mass
from ovis.distributions.utils import repeat_rows
from ovis.estimators.base import RuntimeParams
from ovis.estimators.importance import log_mean_exp, log_weights
from ovis.models.base import require_hook, uses_particles
from ovis.models.protocol import check_discrete_values

__all__ = ["first_layer_logits", "bernoulli_log_prob", "categorical_log_prob", "discrete_log_prob", "check_discrete_model",
           "check_latent_categories", "uniform_noise", "logistic_noise", "gumbel_noise", "one_hot_argmax",
           "BoundAt", "bound_at"]


def first_layer_logits(model: nn.Module, x: Tensor, n: int) -> Tensor:
    r"""``model.q_logits(0, .)`` on the ``B*n`` particles of ``x`` ``[B, *x_shape]`` (row ``b*n + j``).

    A model that takes particles (:func:`ovis.models.base.uses_particles`) is encoded once per data
    point and its logits repeated (:func:`~ovis.distributions.utils.repeat_rows`; the gradient of
    the copies is summed into the one evaluation); any other model gets ``x`` repeated ``n`` times.
    The values are the same: ``q_logits`` is a row-wise map.
    """
    if uses_particles(model):
        return repeat_rows(model.q_logits(0, x), n)
    return model.q_logits(0, repeat_rows(x, n))


def bernoulli_log_prob(logits: Tensor, z: Tensor) -> Tensor:
    r""":math:`\sum_i z_i \log\sigma(a_i) + (1-z_i)\log\sigma(-a_i)`, ``[n, N] -> [n]``; defined
    (and differentiable) for relaxed ``z`` in ``[0, 1]`` too."""
    n = z.shape[0]
    return bernoulli_log_mass(logits.reshape(n, -1), z.reshape(n, -1))


def categorical_log_prob(logits: Tensor, z: Tensor) -> Tensor:
    r""":math:`\sum_{i,c} z_{ic} \log\mathrm{softmax}(a_i)_c`, ``[n, N, C] -> [n]``; defined (and
    differentiable) for relaxed ``z`` on the simplex too (the continuous extension of the
    categorical log mass used by the relaxed estimators)."""
    return (z * torch.log_softmax(logits, dim=-1)).reshape(z.shape[0], -1).sum(-1)


def discrete_log_prob(logits: Tensor, z: Tensor, categorical: bool) -> Tensor:
    r""":func:`categorical_log_prob` if ``categorical`` else :func:`bernoulli_log_prob`, ``[n]``."""
    return categorical_log_prob(logits, z) if categorical else bernoulli_log_prob(logits, z)


def uniform_noise(shape: Sequence[int], like: Tensor) -> Tensor:
    r""":math:`u \sim U(0, 1)` of ``shape`` on ``like``'s dtype and device, clamped to
    ``[eps, 1 - eps]`` (``eps`` the dtype's machine epsilon) so that ``log u`` and ``log(1 - u)``
    are finite."""
    eps = torch.finfo(like.dtype).eps
    return torch.rand(*shape, dtype=like.dtype, device=like.device).clamp(eps, 1 - eps)


def logistic_noise(shape: Sequence[int], like: Tensor) -> Tensor:
    r"""Standard logistic noise :math:`\log u - \log(1 - u)`, ``u`` from :func:`uniform_noise`
    (``1[a + noise > 0] \sim \mathrm{Bern}(\sigma(a))``)."""
    w = uniform_noise(shape, like)
    return torch.log(w) - torch.log1p(-w)


def gumbel_noise(shape: Sequence[int], like: Tensor) -> Tensor:
    r"""Standard Gumbel noise :math:`-\log(-\log u)`, ``u`` from :func:`uniform_noise`
    (``argmax_c (a + noise)_c \sim \mathrm{Cat}(\mathrm{softmax}(a))``)."""
    return -torch.log(-torch.log(uniform_noise(shape, like)))


def one_hot_argmax(z: Tensor) -> Tensor:
    r"""``onehot(argmax_c z_c)`` ``[..., C]`` in ``z``'s dtype (the hard categorical sample of the
    Gumbel-max trick when ``z = a + Gumbel``)."""
    return F.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype)


def check_latent_categories(model: nn.Module, family: str) -> Optional[int]:
    r"""The model's ``latent_categories`` (module docstring): ``None`` for Bernoulli latents, else
    the number ``C >= 2`` of classes of its categorical latents.

    Raises:
        TypeError: ``latent_categories`` is neither ``None`` nor an int ``>= 2``.
    """
    C = getattr(model, "latent_categories", None)
    if C is None:
        return None
    if isinstance(C, bool) or not isinstance(C, int) or C < 2:
        raise TypeError(
            f"estimator {family!r}: {type(model).__name__}.latent_categories must be None (Bernoulli "
            f"latents) or an int >= 2 (categorical latents of that many classes), got {C!r}"
        )
    return C


def check_discrete_model(model: nn.Module, family: str, max_depth: Optional[int] = None) -> int:
    r"""Check the discrete hooks (module docstring) and return the depth ``L``.

    Raises:
        TypeError: a hook is missing.
        ValueError: ``L > max_depth``.
    """
    depth = getattr(model, "latent_depth", None)
    if not isinstance(depth, int) or depth < 1:
        raise TypeError(
            f"estimator {family!r} needs discrete (Bernoulli or categorical) latents and the model "
            f"attribute latent_depth (and the methods q_logits(l, h), log_joint_at(x, z); see "
            f"ovis.estimators.discrete); {type(model).__name__} has none (latent_depth={depth!r})"
        )
    require_hook(model, "q_logits", family)
    require_hook(model, "log_joint_at", family)
    if max_depth is not None and depth > max_depth:
        raise ValueError(
            f"{family} supports models of at most {max_depth} stochastic layer(s) "
            f"(got latent_depth={depth}); use an estimator that supports deeper models "
            "(every estimator of the REBAR line does, layer-wise, and the score-function ones)"
        )
    return depth


class BoundAt(NamedTuple):
    r"""The objective at given latents (:func:`bound_at`)."""

    #: :math:`f = \log\frac1K\sum_k w_k` ``[B, M]``
    value: Tensor
    #: the log-weights ``[B, M, K]``
    log_w: Tensor
    #: the per-particle KL term of :func:`~ovis.estimators.importance.log_weights` ``[B, M, K]``
    kl: Tensor
    #: :math:`\log p(x|z_1)` ``[B, M, K]``
    log_px: Tensor


def bound_at(model: nn.Module, x: Tensor, z: Sequence[Tensor], logits: Sequence[Tensor],
             shape: Tuple[int, int, int], params: RuntimeParams, categorical: bool = False) -> BoundAt:
    r"""The objective :math:`f(z) = \log\frac1K\sum_k w(z_k)` at GIVEN latents, through the hooks.

    Args:
        model: a model with the discrete hooks.
        x: the expanded observations ``[B*M*K, *x_shape]``.
        z: the latents ``[z_1..z_L]`` (hard or relaxed), each ``[B*M*K, N_l]`` (Bernoulli) or
            ``[B*M*K, N_l, C]`` (categorical).
        logits: the logits of :math:`q(z_l|\cdot)` at which :math:`\log q(z_l)` is evaluated, one per
            layer (their graph decides what reaches ``phi`` through the ``-log q`` inside ``w``).
        shape: ``(B, M, K)``.
        params: the runtime parameters (``beta``, ``freebits`` of
            :func:`~ovis.estimators.importance.log_weights`).
        categorical: the latents are categorical.

    Returns:
        :class:`BoundAt` ``(value [B, M], log_w, kl, log_px [B, M, K])``.
    """
    B, M, K = shape
    depth = len(z)
    lq = torch.stack([discrete_log_prob(a, zl, categorical) for a, zl in zip(logits, z)], -1)
    log_px, log_pz = model.log_joint_at(x, list(z))
    check_discrete_values(model, log_px, log_pz, B * M * K, depth)
    log_w, kl = log_weights(log_px.view(B, M, K), lq.view(B, M, K, depth), log_pz.view(B, M, K, depth),
                            params.beta, params.freebits)
    return BoundAt(log_mean_exp(log_w, -1), log_w, kl, log_px.view(B, M, K))
