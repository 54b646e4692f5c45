r"""Score-function estimators for discrete latents of the REBAR line: ``nvil``, ``muprop``,
``simple-muprop``, ``arm``, ``disarm``; and the discrete-latent model protocol they share with
:mod:`ovis.estimators.relaxed` and :mod:`ovis.estimators.rebar`.

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
raises a ``TypeError`` naming it.

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

Deeper categorical models are handled layer-wise as the Bernoulli ones
(:meth:`BernoulliEstimator.layerwise_smooth`, Gumbel noise in place of the logistic noise); tested
on one- and two-layer enumerable models.  Every layer of a model has the same kind (all Bernoulli,
or all categorical with ``C`` classes; the number of variables ``N_l`` may differ).

Objective
---------
All estimators here (and in ``relaxed``/``rebar``) target the importance-weighted bound
:math:`\mathcal{L}_K = E_{b_{1..K} \sim q}[f(b)]`, :math:`f(b) = \log \frac{1}{K}\sum_k w(b_k)`
(``alpha = 0`` only); with ``iw = 1`` (the papers' setting) this is the ELBO.  The gradient is split
into the direct term :math:`E[\nabla f(b)]` (``theta``, and ``phi`` through the ``-log q`` inside
``w``; computed by autograd at the sample) and the score part
:math:`\nabla_a E_{b \sim q_a}[\bar f(b)]` with respect to the logits ``a`` of
``q`` (``\bar f``: ``f`` with its parameters held fixed), which each estimator estimates as a tensor
``g_a`` of the logits' shape (``[B*M*K, N]``, categorical ``[B*M*K, N, C]``; the gradient for each
particle's logits).  The surrogate loss is

.. math::  -\frac{1}{BM}\sum \mathrm{sg}(g_a)\, a \;-\; \mathrm{mean}_{B,M}\, f(b)

so that its gradient is minus the estimate.  The ARM-family estimators treat the ``K*N`` bits of
one outer sample jointly (they are independent Bernoullis for a single-layer model).  Models with
``L > 1`` layers are handled layer-wise (ARM/DisARM, Bernoulli only: :meth:`ARM.compute_layerwise`;
MuProp, REBAR, RELAX: :meth:`BernoulliEstimator.layerwise_smooth`), as the papers do.

Tests: ``tests/test_discrete_estimators.py`` (exact gradients on the Bernoulli toy model and a
2-layer SBN, relaxation bias, variance vs ``reinforce``), ``tests/test_categorical_estimators.py``
(the same on the categorical toy model and a two-layer categorical model, a replay of one
categorical REBAR draw, training the Gumbel-softmax discrete VAE) and ``tests/test_discrete_estimators_training.py`` (binarized MNIST).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovis.distributions.bernoulli import bernoulli_log_mass
from ovis.estimators.base import Diagnostics, GradientEstimator, RuntimeParams
from ovis.estimators.importance import log_mean_exp, log_weights
from ovis.estimators.score_function import ReinforceBaseline
from ovis.models.base import require_hook

__all__ = ["bernoulli_log_prob", "categorical_log_prob", "check_discrete_model", "check_latent_categories",
           "BernoulliEstimator", "ARM", "MuProp", "NVIL", "log_gradient_variances"]


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


def gumbel_noise(shape: Sequence[int], like: Tensor) -> Tensor:
    r"""Standard Gumbel noise :math:`-\log(-\log u)`, ``u ~ U(0, 1)`` clamped away from 0 and 1."""
    return -torch.log(-torch.log(_uniform(shape, like)))


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


def _uniform(shape: Sequence[int], like: Tensor) -> Tensor:
    eps = torch.finfo(like.dtype).eps
    return torch.rand(*shape, dtype=like.dtype, device=like.device).clamp(eps, 1 - eps)


class BernoulliEstimator(GradientEstimator):
    r"""Base of the discrete-latent estimators ARM, DisARM, MuProp, REBAR, RELAX.

    Subclasses implement :meth:`score_gradient` (one layer; Bernoulli logits ``[n, N]`` or
    categorical logits ``[n, N, C]``) and, for ``latent_depth > 1``, :meth:`compute_layerwise`
    (with ``max_depth = None``).  Categorical models (``latent_categories = C``) are accepted
    (:meth:`check_categorical`, which ARM/DisARM override to refuse them).  Requires ``alpha = 0``.
    """

    family = "bernoulli"
    supports_alpha = False
    #: the deepest model supported (``None``: any, through :meth:`compute_layerwise`)
    max_depth: Optional[int] = 1

    def check_categorical(self, depth: int, C: int) -> None:
        r"""Called for a categorical model (``C`` classes, ``depth`` layers) before estimation;
        accepts it (ARM/DisARM override it to refuse)."""

    @staticmethod
    def per_unit(v: Tensor, shape: Tuple[int, int, int], like: Tensor) -> Tensor:
        r"""Broadcast a per-outer-sample value ``[B, M]`` to the logits' shape ``like``
        (``[B*M*K, N]`` or ``[B*M*K, N, C]``)."""
        B, M, K = shape
        return v[:, :, None].expand(B, M, K).reshape(B * M * K, *([1] * (like.dim() - 1))).expand_as(like)

    def compute_layerwise(
        self, model: nn.Module, x: Tensor, params: RuntimeParams, depth: int
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        raise NotImplementedError  # pragma: no cover - guarded by max_depth

    def layerwise_smooth(self, model, x, params, depth, downstream):  # type: ignore[no-untyped-def]
        r"""Layer-wise estimation for ``L > 1`` stochastic layers with a smooth surrogate of the
        layers below (used by REBAR/RELAX: relaxed; MuProp: mean-field).

        A main sample :math:`b \sim q` is drawn layer by layer with noises
        :math:`\omega_1..\omega_L`: Bernoulli, logistic noise ``omega_m = logit(w)``, ``w ~ U(0, 1)``,
        and ``b_m = 1[a_m(b_{m-1}) + omega_m > 0]``; categorical, Gumbel noise and
        ``b_m = onehot(argmax(a_m(b_{m-1}) + omega_m))``.  For layer ``l``,
        with :math:`b_{<l}` from the main sample and :math:`\omega_{>l}` held fixed (independent of
        the layer's own noise), :math:`\bar f_l(b_l)` is ``f`` at :math:`(b_{<l}, b_l, b_{>l})`, the
        layers below completed from :math:`\omega_{>l}` (a sample of ``q`` given ``b_l``); its
        smooth version (``fsmooth``, used at relaxed or mean values of ``y_l``) evaluates ``f`` at
        :math:`(b_{<l}, y_l, y_{>l})` with ``y_m = downstream(a_m(y_{m-1}), omega_m)``, a smooth
        function of :math:`y_l`.  The single-layer :meth:`score_gradient` (called with ``fsmooth=``)
        then estimates :math:`\nabla_{a_l} E[\bar f_l]`, unbiased for every layer whatever the
        smooth version; the direct term is taken at the main sample, the auxiliary losses of the
        layers are summed and their diagnostics averaged over the layers.
        """
        B, M, K = x.shape[0], self.mc, self.iw
        shape = (B, M, K)
        x_exp = self.expand(x, M, K)
        categorical = check_latent_categories(model, self.family) is not None

        def hard(pre: Tensor) -> Tensor:
            r"""The hard sample at ``pre = a_m + omega_m``."""
            return one_hot_argmax(pre) if categorical else (pre > 0).to(pre.dtype)

        def f_at(z: List[Tensor], logits: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
            lq = torch.stack([discrete_log_prob(a, zl, categorical) for a, zl in zip(logits, z)], -1)
            log_px, log_pz = model.log_joint_at(x_exp, z)
            log_w, kl = log_weights(log_px.view(B, M, K), lq.view(B, M, K, depth),
                                    log_pz.view(B, M, K, depth), params.beta, params.freebits)
            return log_mean_exp(log_w, -1), log_w, kl, log_px.view(B, M, K)

        omegas: List[Tensor] = []
        main: List[Tensor] = []
        with torch.no_grad():
            h = x_exp
            for l in range(depth):
                a_l = model.q_logits(l, h)
                if a_l.dim() != (3 if categorical else 2):
                    raise ValueError(f"{type(model).__name__}.q_logits({l}, h) must return "
                                     f"{'[n, N, C]' if categorical else '[n, N]'}, got {tuple(a_l.shape)}")
                if categorical:
                    omegas.append(gumbel_noise(a_l.shape, a_l))
                else:
                    w = _uniform(a_l.shape, a_l)
                    omegas.append(torch.log(w) - torch.log1p(-w))
                main.append(hard(a_l + omegas[-1]))
                h = main[-1]
        logits_main = [model.q_logits(l, x_exp if l == 0 else main[l - 1]) for l in range(depth)]  # attached
        fmain, log_w, kl, log_px = f_at(main, logits_main)

        def layer_function(l: int, relaxed: bool):  # type: ignore[no-untyped-def]
            def fl(zl: Tensor) -> Tensor:
                z = main[:l] + [zl]
                logits = [a.detach() for a in logits_main[:l + 1]]
                for m in range(l + 1, depth):
                    a_m = model.q_logits(m, z[-1])
                    z.append(downstream(a_m, omegas[m]) if relaxed else hard(a_m + omegas[m]))
                    logits.append(a_m)
                return f_at(z, logits)[0]
            return fl

        surrogate = torch.zeros((), dtype=fmain.dtype, device=fmain.device)
        aux: Optional[Tensor] = None
        extras: List[Dict[str, Tensor]] = []
        for l in range(depth):
            g, _, aux_l, extra = self.score_gradient(layer_function(l, False), logits_main[l].detach(), shape,
                                                     params, fsmooth=layer_function(l, True))
            surrogate = surrogate + (g.detach() * logits_main[l]).sum()
            if aux_l is not None:
                aux = aux_l if aux is None else aux + aux_l
            extras.append(extra)
        loss = -surrogate / (B * M) - fmain.mean()
        if aux is not None:
            loss = loss + aux
        diagnostics = self.base_diagnostics(log_w.detach(), kl.detach(), log_px.detach())
        diagnostics["estimator"] = {k: torch.stack([e[k].detach() for e in extras], 0).mean(0)
                                    for k in extras[0]}
        return loss, diagnostics, {"z": main, "q_logits": logits_main}

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        depth = check_discrete_model(model, self.family, max_depth=None)
        C = check_latent_categories(model, self.family)
        if C is not None:
            self.check_categorical(depth, C)
        check_discrete_model(model, self.family, max_depth=self.max_depth)
        if depth > 1:
            return self.compute_layerwise(model, x, params, depth)
        B, M, K = x.shape[0], self.mc, self.iw
        x_exp = self.expand(x, M, K)
        a = model.q_logits(0, x_exp)  # [n, N] or [n, N, C], attached to phi
        categorical = C is not None
        if (a.dim() != (3 if categorical else 2) or a.shape[0] != B * M * K
                or (categorical and a.shape[-1] != C)):
            expected = f"[n, N, C={C}] (categorical)" if categorical else "[n, N] (Bernoulli)"
            raise ValueError(f"{type(model).__name__}.q_logits(0, x) must return {expected} with n = "
                             f"{B * M * K}, got {tuple(a.shape)}")
        a_fixed = a.detach()

        def f(z: Tensor, logits: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
            r"""``f(z)`` ``[B, M]`` at ``z`` (the logits' shape) (and ``log_w``, ``kl``, ``log_px``,
            ``[B, M, K]``); ``logits``: those of ``log q`` (default: fixed, no gradient to ``phi``)."""
            lq = discrete_log_prob(a_fixed if logits is None else logits, z, categorical)
            log_px, log_pz = model.log_joint_at(x_exp, [z])
            log_w, kl = log_weights(log_px.view(B, M, K), lq.view(B, M, K, 1), log_pz.view(B, M, K, 1),
                                    params.beta, params.freebits)
            return log_mean_exp(log_w, -1), log_w, kl, log_px.view(B, M, K)

        def fbar(z: Tensor) -> Tensor:
            return f(z)[0]

        g_a, samples, aux_loss, extra = self.score_gradient(fbar, a_fixed, (B, M, K), params)
        # the direct term, averaged over the (marginally q-distributed) samples the estimator used
        direct, first = 0.0, None
        for b in samples:
            out = f(b, logits=a)
            direct = direct + out[0].mean() / len(samples)
            first = out if first is None else first
        loss = -(g_a.detach() * a).sum() / (B * M) - direct
        if aux_loss is not None:
            loss = loss + aux_loss
        assert first is not None
        _, log_w, kl, log_px = first
        diagnostics = self.base_diagnostics(log_w.detach(), kl.detach(), log_px.detach())
        with torch.no_grad():
            diagnostics["estimator"] = {k: v.detach() for k, v in extra.items()}
        return loss, diagnostics, {"z": [samples[0]], "q_logits": [a]}

    @staticmethod
    def per_bit(v: Tensor, shape: Tuple[int, int, int], N: int) -> Tensor:
        r"""Broadcast a per-outer-sample value ``[B, M]`` to the bits ``[B*M*K, N]``."""
        B, M, K = shape
        return v[:, :, None, None].expand(B, M, K, N).reshape(B * M * K, N)

    def score_gradient(
        self, fbar: Callable[[Tensor], Tensor], a: Tensor, shape: Tuple[int, int, int], params: RuntimeParams
    ) -> Tuple[Tensor, List[Tensor], Optional[Tensor], Dict[str, Tensor]]:
        r"""Return ``(g_a, samples, aux_loss, extra_diagnostics)``: the estimate ``g_a`` (``a``'s
        shape) of :math:`\nabla_a E_{b\sim q_a}[\bar f(b)]`, the samples ``b`` (``a``'s shape) at
        which the direct term is averaged, an auxiliary loss (or ``None``) and diagnostics.
        ``a`` is ``[n, N]`` (Bernoulli, :math:`q_a = \mathrm{Bern}(\sigma(a))`) or ``[n, N, C]``
        (categorical, :math:`q_a = \mathrm{Cat}(\mathrm{softmax}(a))`, one-hot samples)."""
        raise NotImplementedError


class ARM(BernoulliEstimator):
    r"""ARM (Yin & Zhou 2019) and DisARM (Dong et al. 2020) for Bernoulli latents.

    With :math:`u \sim U(0,1)^{KN}`, :math:`b = 1[u < \sigma(a)]` and the antithetic
    :math:`\tilde b = 1[u > \sigma(-a)]` (both :math:`\sim q`):

    * ARM: :math:`g_a = (\bar f(\tilde b) - \bar f(b))(u - \tfrac12)`;
    * DisARM: :math:`g_a = \tfrac12(\bar f(b) - \bar f(\tilde b))\,(-1)^{\tilde b}\,
      1[b \neq \tilde b]\,\sigma(|a|)` (ARM Rao-Blackwellised over ``u`` given ``(b, b~)``).

    Both are unbiased; the direct term is averaged over ``b`` and ``b~``.  With ``iw = 1`` the
    objective is the ELBO, as in both papers; with ``iw = K`` the bits of the ``K`` particles
    are treated jointly and the objective is :math:`\mathcal{L}_K`.

    Multi-layer models (``latent_depth = L > 1``), layer-wise as in both papers: one main sample
    :math:`b = (b_1..b_L) \sim q` is drawn with uniforms :math:`u_l`; for each layer ``l`` the
    antithetic :math:`\tilde b_l = 1[u_l > \sigma(-a_l)]` (``a_l`` the logits given the main
    :math:`b_{l-1}`) is completed by a fresh sample of the layers below it from ``q``, and the
    per-layer estimate uses :math:`\bar f` at the main sample and at that branch (one extra
    evaluation per layer; unbiased, since each branch's completion is a sample of ``q`` given
    :math:`\tilde b_l`).  The direct term is taken at the main sample.

    Args:
        disarm: DisARM instead of ARM.
    """

    family = "arm"
    max_depth = None

    def __init__(self, mc: int = 1, iw: int = 1, disarm: bool = False) -> None:
        super().__init__(mc=mc, iw=iw)
        self.disarm = bool(disarm)
        if self.disarm:
            self.family = "disarm"

    def check_categorical(self, depth: int, C: int) -> None:
        r"""ARM and DisARM are defined for binary latents only: always raises ``TypeError``."""
        raise TypeError(
            f"{self.family} is defined for binary (Bernoulli) latents only, and this model has categorical "
            f"latents (latent_categories={C}); the categorical extension of ARM is ARSM (Yin, Yue & Zhou "
            "2019, augment-REINFORCE-swap-merge), which is not implemented: use rebar, dynamic-rebar, relax, "
            "muprop, nvil (unbiased) or gumbel-softmax / straight-through (relaxed)"
        )

    def score_gradient(self, fbar, a, shape, params):  # type: ignore[no-untyped-def]
        u = _uniform(a.shape, a)
        b = (u < torch.sigmoid(a)).to(a.dtype)
        bt = (u > torch.sigmoid(-a)).to(a.dtype)
        with torch.no_grad():
            fb, fbt = fbar(b), fbar(bt)
        N = a.shape[1]
        if self.disarm:
            sign = 1.0 - 2.0 * bt
            g = 0.5 * self.per_bit(fb - fbt, shape, N) * sign * (b != bt).to(a.dtype) * torch.sigmoid(a.abs())
        else:
            g = self.per_bit(fbt - fb, shape, N) * (u - 0.5)
        return g, [b, bt], None, {"f_diff_abs": (fb - fbt).abs().mean(1)}

    def _layer_gradient(self, fb: Tensor, fbt: Tensor, u: Tensor, a: Tensor, b: Tensor, bt: Tensor,
                        shape: Tuple[int, int, int]) -> Tensor:
        N = a.shape[1]
        if self.disarm:
            return (0.5 * self.per_bit(fb - fbt, shape, N) * (1.0 - 2.0 * bt) * (b != bt).to(a.dtype)
                    * torch.sigmoid(a.abs()))
        return self.per_bit(fbt - fb, shape, N) * (u - 0.5)

    def compute_layerwise(self, model, x, params, depth):  # type: ignore[no-untyped-def]
        B, M, K = x.shape[0], self.mc, self.iw
        shape = (B, M, K)
        x_exp = self.expand(x, M, K)

        def complete(prefix: List[Tensor], logits: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
            r"""Sample the layers below ``prefix`` from ``q`` (no gradient); ``logits`` are those of
            the prefix's layers, and the returned logits those of all the layers."""
            z, logits = list(prefix), list(logits)
            with torch.no_grad():
                while len(z) < depth:
                    logits.append(model.q_logits(len(z), z[-1]))
                    z.append(torch.bernoulli(torch.sigmoid(logits[-1])))
            return z, logits

        def f(z: List[Tensor], logits: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
            lq = torch.stack([bernoulli_log_prob(a, zl) for a, zl in zip(logits, z)], -1)
            log_px, log_pz = model.log_joint_at(x_exp, z)
            log_w, kl = log_weights(log_px.view(B, M, K), lq.view(B, M, K, depth),
                                    log_pz.view(B, M, K, depth), params.beta, params.freebits)
            return log_mean_exp(log_w, -1), log_w, kl, log_px.view(B, M, K)

        # the main sample, layer by layer, keeping each layer's uniforms and its logits (attached to
        # phi); the first layer's logits are those of each data point, repeated over its M*K copies
        main: List[Tensor] = []
        us: List[Tensor] = []
        logits: List[Tensor] = []
        for l in range(depth):
            a_l = (model.q_logits(0, x).repeat_interleave(M * K, 0) if l == 0
                   else model.q_logits(l, main[-1]))
            with torch.no_grad():
                u = _uniform(a_l.shape, a_l)
                main.append((u < torch.sigmoid(a_l)).to(a_l.dtype))
            us.append(u)
            logits.append(a_l)
        fmain, log_w, kl, log_px = f(main, logits)
        surrogate = torch.zeros((), dtype=fmain.dtype, device=fmain.device)
        diffs = []
        for l in range(depth):
            a_l = logits[l].detach()
            bt = (us[l] > torch.sigmoid(-a_l)).to(a_l.dtype)
            with torch.no_grad():
                # the antithetic sample shares the main sample's layers above l, so their logits;
                # the layers below are drawn given bt, their logits computed once for both uses
                fbt = f(*complete(main[:l] + [bt], [a.detach() for a in logits[:l + 1]]))[0]
                g = self._layer_gradient(fmain.detach(), fbt, us[l], a_l, main[l], bt, shape)
            surrogate = surrogate + (g * logits[l]).sum()
            diffs.append((fmain.detach() - fbt).abs().mean(1))
        loss = -surrogate / (B * M) - fmain.mean()
        diagnostics = self.base_diagnostics(log_w.detach(), kl.detach(), log_px.detach())
        diagnostics["estimator"] = {"f_diff_abs": torch.stack(diffs, 0).mean(0)}
        return loss, diagnostics, {"z": main, "q_logits": logits}


class MuProp(BernoulliEstimator):
    r"""MuProp (Gu et al. 2016) for Bernoulli and categorical latents (multi-layer:
    :meth:`compute_layerwise`).

    With the mean-field point :math:`\bar\mu = \mathbb{E}_q[b]` (Bernoulli :math:`\sigma(a)`,
    categorical :math:`\mathrm{softmax}(a)` per variable: the deterministic mean-field forward pass,
    the model evaluated at the means through :meth:`log_joint_at`) and :math:`\bar f'(\bar\mu)` its
    gradient, the first-order Taylor control variate
    :math:`h(b) = \bar f(\bar\mu) + \bar f'(\bar\mu)^\top (b - \bar\mu)` (with :math:`\bar\mu` held
    fixed) has the analytic mean gradient :math:`J^\top \bar f'(\bar\mu)`, ``J`` the Jacobian of
    :math:`E_q[b]` in ``a``:

    .. math::

        g_a = \big(\bar f(b) - h(b)\big)\,\nabla_a\log q(b) + J^\top \bar f'(\bar\mu),

    Bernoulli: :math:`\nabla_a\log q(b) = b - \sigma(a)`, :math:`J^\top v = \sigma(a)(1-\sigma(a))\,v`;
    categorical (one-hot ``b``, :math:`\theta = \mathrm{softmax}(a)` per variable):
    :math:`\nabla_a\log q(b) = b - \theta`, :math:`(J^\top v)_c = \theta_c (v_c - \sum_{c'}\theta_{c'} v_{c'})`.
    Unbiased.  ``simple-muprop`` (as in the REBAR code): the mean-field value only, as a baseline:
    :math:`g_a = (\bar f(b) - \bar f(\bar\mu))\,\nabla_a\log q(b)`.

    Args:
        simple: the simple variant.
    """

    family = "muprop"
    max_depth = None

    def __init__(self, mc: int = 1, iw: int = 1, simple: bool = False) -> None:
        super().__init__(mc=mc, iw=iw)
        self.simple = bool(simple)
        if self.simple:
            self.family = "simple-muprop"

    def compute_layerwise(self, model, x, params, depth):  # type: ignore[no-untyped-def]
        r"""Layer-wise MuProp for ``L > 1`` layers (:meth:`BernoulliEstimator.layerwise_smooth`):
        the Taylor expansion for layer ``l`` is that of the mean-field pass of the layers below it
        (``y_m = sigmoid(a_m(y_{m-1}))``, categorical ``softmax(a_m(y_{m-1}))``) around
        :math:`\bar\mu_l`; unbiased for any such choice."""
        if check_latent_categories(model, self.family) is not None:
            return self.layerwise_smooth(model, x, params, depth, lambda a_m, omega_m: torch.softmax(a_m, -1))
        return self.layerwise_smooth(model, x, params, depth, lambda a_m, omega_m: torch.sigmoid(a_m))

    def score_gradient(self, fbar, a, shape, params, fsmooth=None):  # type: ignore[no-untyped-def]
        fsmooth = fbar if fsmooth is None else fsmooth
        categorical = a.dim() == 3
        if categorical:
            theta = torch.softmax(a, dim=-1)
            b = one_hot_argmax(a + gumbel_noise(a.shape, a))
        else:
            theta = torch.sigmoid(a)
            b = torch.bernoulli(theta)
        with torch.no_grad():
            fb = fbar(b)
        if self.simple:
            with torch.no_grad():
                fm = fsmooth(theta)
            g = self.per_unit(fb - fm, shape, a) * (b - theta)
            return g, [b], None, {"signal_abs": (fb - fm).abs().mean(1)}
        with torch.enable_grad():
            mu = theta.clone().requires_grad_(True)
            fm_t = fsmooth(mu)
            (fprime,) = torch.autograd.grad(fm_t.sum(), mu)
        fm = fm_t.detach()
        B, M, K = shape
        taylor = (fprime * (b - theta)).view(B, M, -1).sum(-1)
        signal = fb - fm - taylor
        if categorical:
            mean_term = theta * (fprime - (theta * fprime).sum(-1, keepdim=True))
        else:
            mean_term = fprime * theta * (1 - theta)
        g = self.per_unit(signal, shape, a) * (b - theta) + mean_term
        return g, [b], None, {"signal_abs": signal.abs().mean(1)}


class NVIL(ReinforceBaseline):
    r"""NVIL (Mnih & Gregor 2014): REINFORCE with an input-dependent baseline :math:`b_\psi(x)` and
    running centring and scaling of the learning signal.

    With the score-function learning signal :math:`d_k` of :math:`\mathcal{L}_K`
    (:mod:`ovis.estimators.score_function`; ``iw = 1``: the ELBO's ``log w``), the centred signal
    :math:`r = d_k - b_\psi(x) - \mu` and running estimates :math:`\mu` (mean of
    :math:`d_k - b_\psi(x)`) and :math:`\sigma^2` (its variance), updated with momentum
    ``momentum`` (0.8 in the paper) in training mode, the ``phi``-estimate is
    :math:`\sum_k (r / s)\, h_k` with :math:`s = \max(1, \sigma)`.  The statistics applied at a
    call are those of the earlier calls (they are updated after use), so they do not depend on the
    call's own particles: the ``phi``-estimate is the unbiased estimate divided by the ``s`` it
    reports (diagnostics ``estimator/scale``), in training mode too; ``theta``'s gradient is not
    scaled.  With ``freeze = True`` (or in ``eval()`` mode) the running statistics are not updated.
    Under a KL weight and free bits the signal's term ``-v_k`` becomes
    ``-beta v_k 1[kl_l >= lambda]`` per layer, divided by ``s`` like the rest
    (:meth:`direct_gain`).
    ``b_psi`` (an MLP as in ``reinforce-baseline``) is trained by MSE to :math:`d_k - \mu`.
    Works for any depth and ``K``, and for any latents the model samples in ``forward`` (Bernoulli,
    categorical, ...: it needs no discrete hooks; tested on the categorical toy model too).

    Args:
        x_shape, hdim: as :class:`~ovis.estimators.score_function.ReinforceBaseline`.
        momentum: of the running statistics, in ``[0, 1)``.
        freeze: do not update the running statistics.
    """

    family = "nvil"

    def __init__(self, mc: int = 1, iw: int = 1, x_shape: Optional[Sequence[int]] = None,
                 hdim: int = 100, momentum: float = 0.8, freeze: bool = False) -> None:
        super().__init__(mc=mc, iw=iw, x_shape=x_shape, hdim=hdim)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"nvil: momentum must lie in [0, 1), got {momentum}")
        self.momentum = momentum
        self.freeze = bool(freeze)
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_var", torch.ones(()))
        #: training calls that updated the statistics (0: none yet, see :meth:`control_variate`)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._applied_scale: Union[float, Tensor] = 1.0

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # type: ignore
                              unexpected_keys, error_msgs):
        # checkpoints written before ``updates`` existed: their statistics were trained already
        if prefix + "running_mean" in state_dict and prefix + "updates" not in state_dict:
            state_dict[prefix + "updates"] = torch.ones((), dtype=torch.long,
                                                        device=state_dict[prefix + "running_mean"].device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @property
    def scale(self) -> float:
        r"""The current scale :math:`s = \max(1, \sqrt{\mathrm{running\ var}})`."""
        return max(1.0, float(self.running_var.sqrt()))

    def direct_gain(self) -> Union[float, Tensor]:
        r"""``1 / s``: the whole signal, its term ``-v_k`` included, is divided by the scale ``s``
        applied at the last call (a 0-dim tensor, so that no value is read back from the device)."""
        return 1.0 / self._applied_scale

    def control_variate(self, log_w, d, x, params):  # type: ignore[no-untyped-def]
        r"""The centred, scaled signal ``(d - b_psi(x) - mu) / s`` with the running ``mu`` and ``s``
        of the earlier calls; the running statistics are updated *after* they are applied (in
        training mode, unless frozen), so the signal of a call does not depend on its own ``z_k``.
        The very first training call has no earlier statistics: it starts them from its own batch
        (the initial ``mu = 0``, ``s = 1`` would leave the first step unnormalised, a gradient
        hundreds of times the later ones that an adaptive optimiser remembers for many steps)."""
        flat = x.reshape(x.shape[0], -1)
        if self.baseline is None:
            self._build(flat.shape[1], like=flat)
        b = self.baseline(flat).view(-1, 1, 1)  # [B, 1, 1]
        with torch.no_grad():
            centred = d - b
            update = self.training and not self.freeze
            if update:  # the first call starts the statistics from its batch (tensors: no host sync)
                fresh = self.updates == 0
                batch_mean, batch_var = centred.mean(), centred.var(unbiased=False)
                self.running_mean.copy_(torch.where(fresh, batch_mean, self.running_mean))
                self.running_var.copy_(torch.where(fresh, batch_var, self.running_var))
            mean = self.running_mean.clone()
            s = self.running_var.sqrt().clamp(min=1.0)  # the scale applied, a tensor: no host sync
            self._applied_scale = s
            signal = (centred - mean) / s
            if update:
                m = self.momentum
                self.running_mean.mul_(m).add_((1 - m) * batch_mean)
                self.running_var.mul_(m).add_((1 - m) * batch_var)
                self.updates.add_(1)
        mse = ((d.detach() - mean - b) ** 2).mean()
        c = d - signal  # so that d - c is the centred, scaled signal
        return c, mse, {"baseline_mse": ((d - mean - b.detach()) ** 2).mean(dim=(1, 2)),
                        "scale": s.to(d.dtype).expand(x.shape[0])}


def log_gradient_variances(
    model: nn.Module,
    x: Tensor,
    estimators: Dict[str, GradientEstimator],
    n_draws: int = 20,
    key_filter: str = "inference_network",
    **runtime: Any,
) -> Dict[str, float]:
    r"""The log-variance of each estimator's gradient at the same model parameters (the building
    block of REBAR's variance-tracking mode: call it every few steps of one training run, with the
    estimators keyed by id, and log the result).

    For each estimator, ``n_draws`` independent draws of the gradient (minus the gradient of its
    surrogate loss) w.r.t. the model parameters whose name contains ``key_filter`` are taken on the
    batch ``x``; the value is :math:`\log` of the mean over those coordinates of the per-coordinate
    variance.  Estimators are put in ``eval()`` mode for the draws (no running-statistics update,
    no control-variate training) and restored; the model's ``.grad`` are not touched.

    Returns:
        ``{"gradvar/<id>": log variance}``.
    """
    if n_draws < 2:
        raise ValueError(f"n_draws must be >= 2, got {n_draws}")
    params = [p for n, p in model.named_parameters() if key_filter in n and p.requires_grad]
    if not params:
        raise ValueError(f"no model parameter name contains key_filter={key_filter!r}")
    out: Dict[str, float] = {}
    for eid, est in estimators.items():
        was_training = est.training
        est.eval()
        try:
            draws = []
            for _ in range(n_draws):
                loss, _, _ = est(model, x, **runtime)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                draws.append(torch.cat([(-g if g is not None else torch.zeros_like(p)).reshape(-1)
                                        for g, p in zip(grads, params)]))
        finally:
            est.train(was_training)
        var = torch.stack(draws).double().var(0, unbiased=True).mean()
        out[f"gradvar/{eid}"] = float(torch.log(var.clamp_min(1e-300)))
    return out
