r"""The base of the layer-wise estimators for discrete latents (Bernoulli or categorical):
:class:`DiscreteLatentEstimator`, extended by ARM/DisARM (:mod:`~ovis.estimators.arm`), MuProp
(:mod:`~ovis.estimators.muprop`), REBAR and RELAX (:mod:`~ovis.estimators.rebar`).

The model protocol (the discrete hooks) and the objective
:math:`\mathcal{L}_K = E_{b_{1..K} \sim q}[f(b)]` are those of :mod:`ovis.estimators.discrete`
(``alpha = 0`` only).  The gradient is split into the direct term :math:`E[\nabla f(b)]`
(``theta``, and ``phi`` through the ``-log q`` inside ``w``; computed by autograd at the sample)
and the score part :math:`\nabla_a E_{b \sim q_a}[\bar f(b)]` with respect to the logits ``a`` of
``q`` (``\bar f``: ``f`` with its parameters held fixed), which each estimator estimates as a
tensor ``g_a`` of the logits' shape (``[B*M*K, N]``, categorical ``[B*M*K, N, C]``; the gradient
for each particle's logits).  The surrogate loss is

.. math::  -\frac{1}{BM}\sum \mathrm{sg}(g_a)\, a \;-\; \mathrm{mean}_{B,M}\, f(b)

so that its gradient is minus the estimate.  The ``K*N`` units of one outer sample are treated
jointly (they are independent for a single-layer model).  Models with ``L > 1`` layers are
handled layer-wise, as the papers do (ARM/DisARM, Bernoulli only:
:meth:`~ovis.estimators.arm.ARM.compute_layerwise`; MuProp, REBAR, RELAX:
:meth:`DiscreteLatentEstimator.layerwise_smooth`).

Tests: ``tests/test_discrete_estimators.py`` (exact gradients by enumeration on Bernoulli and
categorical models of one and two layers, biases of the relaxations, variance against
``reinforce``) and ``tests/test_discrete_estimators_training.py`` (binarized MNIST).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, GradientEstimator, RuntimeParams
from ovis.estimators.discrete import (
    BoundAt,
    bound_at,
    check_discrete_model,
    check_latent_categories,
    first_layer_logits,
    gumbel_noise,
    logistic_noise,
    one_hot_argmax,
)

__all__ = ["DiscreteLatentEstimator", "SplitScore", "LearnedControlVariates", "inference_parameters"]


class SplitScore(NamedTuple):
    r"""A score-part estimate split for per-tensor ``eta``'s (:class:`LearnedControlVariates`).

    The estimate of :math:`\nabla_a E[\bar f(b)]` for the parameter tensor ``p`` of the inference
    network is :math:`J_p^\top(\mathrm{fixed} - b_\psi(x)\,\mathrm{score} + \eta_p\,\mathrm{scaled})`,
    unbiased for any :math:`\eta_p` and baseline :math:`b_\psi(x)` (``E[scaled] = 0``,
    ``E[score] = 0``).

    Attributes:
        fixed: the part not scaled by ``eta`` (``a``'s shape; may carry a graph to the estimator's
            parameters, e.g. RELAX's network).
        scaled: the part multiplied by ``eta_p`` (``a``'s shape; a zero-mean correction, may carry a
            graph to the temperature).
        score: :math:`\nabla_a\log q(b)` (``a``'s shape, no graph), the baseline's coefficient.
    """

    fixed: Tensor
    scaled: Tensor
    score: Tensor


def inference_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    r"""``[(name, parameter)]`` of the model's inference network (the parameters named
    ``inference_network.*`` that require a gradient; all trainable parameters when the model has no
    ``inference_network``), in ``named_parameters`` order: the tensors that get one ``eta`` each."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    phi = [(n, p) for n, p in named if n.startswith("inference_network.")]
    return phi if phi else named


class LearnedControlVariates(nn.Module):
    r"""The learned parts of the REBAR paper's estimators (Tucker et al. 2017): one ``eta`` per
    parameter tensor of the inference network and an input-dependent baseline :math:`b_\psi(x)`
    (an MLP ``D -> hdim (tanh) -> 1``, as NVIL's).

    ``eta``'s are created by :meth:`bind` (one per tensor of :func:`inference_parameters`; ``run.py``
    binds before it builds the optimiser; a call with an unbound model binds it), keyed by the
    parameter's name with ``.`` written ``__``.  The baseline is built from ``x_shape`` or at the
    first call.

    Args:
        eta_init: the initial ``eta``'s.
        hdim: hidden units of the baseline (0: no baseline).
        x_shape: shape of one observation (``None``: the baseline is built at the first call).
    """

    def __init__(self, eta_init: float = 1.0, hdim: int = 100, x_shape: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if not math.isfinite(eta_init):
            raise ValueError(f"eta_init must be finite, got {eta_init}")
        if hdim < 0:
            raise ValueError(f"baseline hdim must be >= 0 (0: no baseline), got {hdim}")
        self.eta_init = float(eta_init)
        self.hdim = int(hdim)
        self.etas = nn.ParameterDict()
        self.baseline: Optional[nn.Module] = None
        if x_shape is not None and self.hdim > 0:
            self._build_baseline(int(math.prod(x_shape)))

    def _build_baseline(self, dim: int, like: Optional[Tensor] = None) -> None:
        from ovis.estimators.score_function import baseline_mlp

        self.baseline = baseline_mlp(dim, self.hdim, like)

    @staticmethod
    def key(name: str) -> str:
        r"""The ``etas`` key of the model parameter ``name``."""
        return name.replace(".", "__")

    def bind(self, model: nn.Module) -> None:
        r"""Create the missing ``eta``'s, one per inference-network tensor of ``model`` (existing
        ones, e.g. restored from a checkpoint, are kept)."""
        for name, p in inference_parameters(model):
            k = self.key(name)
            if k not in self.etas:
                self.etas[k] = nn.Parameter(torch.tensor(self.eta_init, dtype=p.dtype, device=p.device))

    def baseline_value(self, x: Tensor) -> Optional[Tensor]:
        r""":math:`b_\psi(x)` ``[B]`` for the observations ``x`` ``[B, *x_shape]`` (``None``: no baseline)."""
        if self.hdim == 0:
            return None
        flat = x.reshape(x.shape[0], -1)
        if self.baseline is None:
            self._build_baseline(flat.shape[1], like=flat)
        assert self.baseline is not None
        w = self.baseline[0].weight
        return self.baseline(flat.to(w.dtype)).squeeze(-1).to(x.dtype if x.is_floating_point() else w.dtype)


class DiscreteLatentEstimator(GradientEstimator):
    r"""Base of the estimators for discrete (Bernoulli or categorical) latents that estimate the
    score part layer by layer: ARM, DisARM, MuProp, REBAR, RELAX (module docstring).

    Subclasses implement :meth:`score_gradient` (one layer; Bernoulli logits ``[n, N]`` or
    categorical logits ``[n, N, C]``) and, for ``latent_depth > 1``, :meth:`compute_layerwise`.
    Categorical models (``latent_categories = C``) are accepted
    (:meth:`check_categorical`, which ARM/DisARM override to refuse them).  Requires ``alpha = 0``.
    """

    family = "discrete"
    supports_alpha = False

    def check_categorical(self, depth: int, C: int) -> None:
        r"""Called for a categorical model (``C`` classes, ``depth`` layers) before estimation;
        accepts it (ARM/DisARM override it to refuse)."""

    @staticmethod
    def per_unit(v: Tensor, shape: Tuple[int, int, int], like: Tensor) -> Tensor:
        r"""Broadcast a per-outer-sample value ``[B, M]`` to the logits' shape ``like``
        (``[B*M*K, N]`` or ``[B*M*K, N, C]``)."""
        B, M, K = shape
        return v[:, :, None].expand(B, M, K).reshape(B * M * K, *([1] * (like.dim() - 1))).expand_as(like)

    def score_gradient(
        self, fbar: Callable[[Tensor], Tensor], a: Tensor, shape: Tuple[int, int, int], params: RuntimeParams
    ) -> Tuple[Tensor, List[Tensor], Optional[Tensor], Dict[str, Tensor]]:
        r"""Return ``(g_a, samples, aux_loss, extra_diagnostics)``: the estimate ``g_a`` (``a``'s
        shape) of :math:`\nabla_a E_{b\sim q_a}[\bar f(b)]`, the samples ``b`` (``a``'s shape) at
        which the direct term is averaged, an auxiliary loss (or ``None``) and diagnostics
        (``[B]`` each).  ``a`` is ``[n, N]`` (Bernoulli, :math:`q_a = \mathrm{Bern}(\sigma(a))`)
        or ``[n, N, C]`` (categorical, :math:`q_a = \mathrm{Cat}(\mathrm{softmax}(a))`, one-hot
        samples); ``fbar`` maps a sample of ``a``'s shape to :math:`\bar f` ``[B, M]``.  Layer-wise
        estimators also take ``fsmooth=`` (:meth:`layerwise_smooth`)."""
        raise NotImplementedError

    def compute_layerwise(
        self, model: nn.Module, x: Tensor, params: RuntimeParams, depth: int
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The estimation for ``depth > 1`` layers (every subclass implements it)."""
        raise NotImplementedError  # pragma: no cover - ARM, MuProp and Rebar all override it

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The estimation for a discrete-latent model (``depth = 1``; ``depth > 1`` goes to
        :meth:`compute_layerwise`).

        The logits ``a = model.q_logits(0, x)`` (``[B*M*K, N]``, or ``[B*M*K, N, C]``) are detached,
        :meth:`score_gradient` estimates the gradient ``g_a`` of the bound's expectation in them, and the
        surrogate is the score part of :meth:`score_surrogate` (:math:`-\langle \mathrm{sg}(g_a),
        a\rangle / (BM)` for a plain estimate) minus the bound at the estimator's samples (its direct,
        pathwise part), plus the estimator's auxiliary losses.

        Returns:
            ``(loss, diagnostics, output)``; ``output`` has ``z`` (the first samples) and ``q_logits``.

        Raises:
            TypeError: the model lacks the discrete hooks (``latent_depth``, ``q_logits``,
                ``log_joint_at``), has an invalid ``latent_categories``, or has categorical latents
                that the estimator refuses (:meth:`check_categorical`).
            ValueError: ``q_logits`` returns logits of the wrong shape (the message gives the expected one).
        """
        depth = check_discrete_model(model, self.family, max_depth=None)
        C = check_latent_categories(model, self.family)
        if C is not None:
            self.check_categorical(depth, C)
        if depth > 1:
            return self.compute_layerwise(model, x, params, depth)
        B, M, K = x.shape[0], self.mc, self.iw
        shape = (B, M, K)
        x_exp = self.expand(x, M, K)
        a = first_layer_logits(model, x, M * K)  # [n, N] or [n, N, C], attached to phi
        categorical = C is not None
        if (a.dim() != (3 if categorical else 2) or a.shape[0] != B * M * K
                or (categorical and a.shape[-1] != C)):
            expected = f"[n, N, C={C}] (categorical)" if categorical else "[n, N] (Bernoulli)"
            raise ValueError(f"{type(model).__name__}.q_logits(0, x) must return {expected} with n = "
                             f"{B * M * K}, got {tuple(a.shape)}")
        a_fixed = a.detach()

        def fbar(z: Tensor) -> Tensor:
            r""":math:`\bar f(z)` ``[B, M]`` (``log q`` at the fixed logits: no gradient to ``phi``)."""
            return bound_at(model, x_exp, [z], [a_fixed], shape, params, categorical).value

        g_a, samples, aux_loss, extra = self.score_gradient(fbar, a_fixed, shape, params)
        # the direct term, averaged over the (marginally q-distributed) samples the estimator used
        direct: Any = 0.0
        first = None
        for b in samples:
            out = bound_at(model, x_exp, [b], [a], shape, params, categorical)
            direct = direct + out.value.mean() / len(samples)
            first = out if first is None else first
        score_loss, cv_aux, cv_extra = self.score_surrogate(model, x, [(g_a, a)], direct, shape)
        loss = score_loss - direct
        for term in (aux_loss, cv_aux):
            if term is not None:
                loss = loss + term
        assert first is not None
        diagnostics = self.base_diagnostics(first.log_w.detach(), first.kl.detach(), first.log_px.detach())
        with torch.no_grad():
            diagnostics["estimator"] = {k: v.detach() for k, v in {**extra, **cv_extra}.items()}
        return loss, diagnostics, {"z": [samples[0]], "q_logits": [a]}

    # ------------------------------------------------------------------ learned control variates
    #: train the estimator's own parameters (the variance objective) in training mode
    adapt: bool = True

    def bind(self, model: nn.Module) -> None:
        r"""Create the parameters that depend on the model (one ``eta`` per inference-network
        tensor) before an optimiser is built over ``estimator.parameters()``; a no-op for the
        estimators without learned ``eta``'s."""
        cv = self._modules.get("cv")
        if isinstance(cv, LearnedControlVariates):
            cv.bind(model)

    def cv_parameters(self) -> List[nn.Parameter]:
        r"""The estimator's own trainable parameters (``eta``'s, baseline, temperature, network)."""
        return [p for p in self.parameters() if p.requires_grad]

    def score_surrogate(self, model: nn.Module, x: Tensor, pairs: Sequence[Tuple[Union[Tensor, SplitScore], Tensor]],
                        direct: Any, shape: Tuple[int, int, int]
                        ) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""The score part of the surrogate loss and the estimator's auxiliary loss.

        Args:
            model: the model (its inference-network tensors get one ``eta`` each).
            x: the observations ``[B, *x_shape]`` (the baseline's input).
            pairs: ``(g, a)`` per stochastic layer: ``a`` the logits (attached to ``phi``), ``g`` a
                plain estimate (``a``'s shape, no ``eta``) or a :class:`SplitScore`.
            direct: the direct term (a scalar whose gradient is the direct part of the estimate).
            shape: ``(B, M, K)``.

        Returns:
            ``(score_loss, aux, extra)``.  Plain estimates: ``-sum(sg(g) a) / (BM)``, no auxiliary
            loss.  Split estimates: per inference-network tensor ``p``,
            :math:`G_p = J_p^\top(\mathrm{fixed} - b_\psi(x)\,\mathrm{score}) + \eta_p J_p^\top
            \mathrm{scaled}` summed over the layers and the surrogate :math:`-\sum_p \langle
            \mathrm{sg}(G_p), p\rangle / (BM)`; in training mode (and ``adapt``) the auxiliary
            loss has the value 0 and the gradient :math:`\nabla V` w.r.t. the estimator's own
            parameters, :math:`V = \sum_p \|D_p + G_p / (BM)\|^2` the squared norm of the
            minibatch estimate of the inference network's gradient (``D_p`` the direct term's),
            the variance objective of Tucker et al. 2017 (its mean does not depend on these
            parameters); ``extra``: ``grad_sq_norm`` (``V``), ``eta`` (mean ``eta``), ``baseline``
            (mean :math:`b_\psi(x)`), ``[B]`` each.
        """
        B, M, K = shape
        if not any(isinstance(g, SplitScore) for g, _ in pairs):
            total = sum((g.detach() * a).sum() for g, a in pairs)
            return -total / (B * M), None, {}
        cv = self._modules.get("cv")  # the learned eta's and baseline (LearnedControlVariates)
        if not isinstance(cv, LearnedControlVariates):  # pragma: no cover - every splitting estimator has one
            raise TypeError(f"{self.family}: a split estimate needs learned control variates (self.cv)")
        cv.bind(model)
        named = inference_parameters(model)
        phi = [p for _, p in named]
        etas = [cv.etas[cv.key(n)] for n, _ in named]
        train = bool(self.adapt and self.training and torch.is_grad_enabled() and self.cv_parameters())
        bx = cv.baseline_value(x)
        if not all(a.requires_grad for _, a in pairs):  # called without a graph (e.g. under no_grad)
            ref = pairs[0][1]
            extra = {"grad_sq_norm": torch.full((B,), math.nan, dtype=ref.dtype, device=ref.device),
                     "eta": torch.stack([e.detach() for e in etas]).mean().expand(B)}
            if bx is not None:
                extra["baseline"] = bx.detach()
            return torch.zeros((), dtype=ref.dtype, device=ref.device), None, extra
        with torch.enable_grad():
            logits: List[Tensor] = []
            fixeds: List[Tensor] = []
            scaleds: List[Tensor] = []
            for g, a in pairs:
                if not isinstance(g, SplitScore):
                    raise TypeError(f"{self.family}: every layer must give a SplitScore or none")
                fixed = g.fixed
                if bx is not None:
                    fixed = fixed - self.per_unit(bx[:, None].expand(B, M), shape, a) * g.score
                scaled = g.scaled
                if not train:
                    fixed, scaled = fixed.detach(), scaled.detach()
                logits.append(a)
                fixeds.append(fixed)
                scaleds.append(scaled)

            def vjp(vectors: List[Tensor]) -> List[Tensor]:
                r""":math:`J_p^\top v` summed over the layers, per tensor ``p``; differentiable in the
                vectors' graphs (the estimator's parameters) when training them, never through their
                own dependence on ``phi`` (the estimate's value is what is differentiated)."""
                out = torch.autograd.grad(logits, phi, grad_outputs=vectors, retain_graph=True,
                                          create_graph=train, allow_unused=True)
                return [torch.zeros_like(p) if o is None else o for p, o in zip(phi, out)]

            G1, G2 = vjp(fixeds), vjp(scaleds)
            if isinstance(direct, Tensor) and direct.requires_grad:
                D = [torch.zeros_like(p) if o is None else o for p, o in zip(
                    phi, torch.autograd.grad(direct, phi, retain_graph=True, allow_unused=True))]
            else:
                D = [torch.zeros_like(p) for p in phi]
            G = [g1 + (eta if train else eta.detach()) * g2 for g1, g2, eta in zip(G1, G2, etas)]
            V = sum(((d + g / (B * M)) ** 2).sum() for d, g in zip(D, G))
            aux: Optional[Tensor] = None
            if train:
                cvp = self.cv_parameters()
                dV = torch.autograd.grad(V, cvp, allow_unused=True)
                terms = [(p * d.detach()).sum() for p, d in zip(cvp, dV) if d is not None]
                if terms:
                    aux = sum(terms)  # type: ignore[assignment]
                    aux = aux - aux.detach()  # value 0, gradient dV / d(estimator parameters)
        score_loss = -sum((g.detach() * p).sum() for g, p in zip(G, phi)) / (B * M)
        with torch.no_grad():
            extra = {"grad_sq_norm": V.detach().expand(B),
                     "eta": torch.stack([e.detach() for e in etas]).mean().expand(B)}
            if bx is not None:
                extra["baseline"] = bx.detach()
        return score_loss, aux, extra

    def layerwise_smooth(
        self, model: nn.Module, x: Tensor, params: RuntimeParams, depth: int,
        downstream: Callable[[Tensor, Tensor], Tensor],
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
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

        def f_at(z: List[Tensor], logits: List[Tensor]) -> BoundAt:
            return bound_at(model, x_exp, z, logits, shape, params, categorical)

        omegas: List[Tensor] = []
        main: List[Tensor] = []
        with torch.no_grad():
            h = x_exp
            for l in range(depth):
                a_l = first_layer_logits(model, x, M * K) if l == 0 else model.q_logits(l, h)
                if a_l.dim() != (3 if categorical else 2):
                    raise ValueError(f"{type(model).__name__}.q_logits({l}, h) must return "
                                     f"{'[n, N, C]' if categorical else '[n, N]'}, got {tuple(a_l.shape)}")
                omegas.append(gumbel_noise(a_l.shape, a_l) if categorical else logistic_noise(a_l.shape, a_l))
                main.append(hard(a_l + omegas[-1]))
                h = main[-1]
        logits_main = [first_layer_logits(model, x, M * K) if l == 0 else model.q_logits(l, main[l - 1])
                       for l in range(depth)]  # attached
        fmain, log_w, kl, log_px = f_at(main, logits_main)

        def layer_function(l: int, relaxed: bool) -> Callable[[Tensor], Tensor]:
            def fl(zl: Tensor) -> Tensor:
                z = main[:l] + [zl]
                logits = [a.detach() for a in logits_main[:l + 1]]
                for m in range(l + 1, depth):
                    a_m = model.q_logits(m, z[-1])
                    z.append(downstream(a_m, omegas[m]) if relaxed else hard(a_m + omegas[m]))
                    logits.append(a_m)
                return f_at(z, logits).value
            return fl

        pairs: List[Tuple[Union[Tensor, SplitScore], Tensor]] = []
        aux: Optional[Tensor] = None
        extras: List[Dict[str, Tensor]] = []
        for l in range(depth):
            g, _, aux_l, extra = self.score_gradient(layer_function(l, False), logits_main[l].detach(), shape,
                                                     params, fsmooth=layer_function(l, True))
            pairs.append((g, logits_main[l]))
            if aux_l is not None:
                aux = aux_l if aux is None else aux + aux_l
            extras.append(extra)
        direct = fmain.mean()
        score_loss, cv_aux, cv_extra = self.score_surrogate(model, x, pairs, direct, shape)
        loss = score_loss - direct
        for term in (aux, cv_aux):
            if term is not None:
                loss = loss + term
        diagnostics = self.base_diagnostics(log_w.detach(), kl.detach(), log_px.detach())
        diagnostics["estimator"] = {k: torch.stack([e[k].detach() for e in extras], 0).mean(0)
                                    for k in extras[0]}
        diagnostics["estimator"].update({k: v.detach() for k, v in cv_extra.items()})
        return loss, diagnostics, {"z": main, "q_logits": logits_main}
