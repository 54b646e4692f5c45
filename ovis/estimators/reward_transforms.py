r"""Composable reward transforms for score-function training, and REINFORCE with a chain of them.

The score-function estimator of the IW bound (:mod:`ovis.estimators.score_function`) weights the
score :math:`h_k = \nabla_\phi \log q(z_k|x)` by the learning signal
:math:`d_k = \mathcal{L}_K^\alpha - v_k` (Lievin et al. 2020, eq. 5; for ``K = 1`` and
``alpha = 0``, :math:`d_1 = \log w_1 - 1`, the "reward").  A *reward transform* maps the signal
``r`` (``[B, M, K]``) to a new one before it multiplies the score:

.. list-table::
   :header-rows: 1

   * - name
     - transform (``r -> r'``)
     - unbiased?
   * - ``centred``
     - :math:`r - \bar m`, :math:`\bar m` the running mean of ``r``
     - yes
   * - ``scaled``
     - :math:`r / \max(\bar s, 1)`, :math:`\bar s` the running std of ``r``
     - up to the positive factor :math:`1/\max(\bar s,1)`
   * - ``self-critic``
     - :math:`r - r^\star`, :math:`r^\star` the signal of a fresh, independent set of ``K``
       particles for the same ``x``
     - yes
   * - ``baseline``
     - :math:`r - b_\psi(x)`, an MLP trained by MSE to ``r``
     - yes

**Order.**  The chain applies the transforms *in the order given*, each to the output of the
previous one (``("centred", "scaled")`` is :math:`(d - \bar m)/\max(\bar s, 1)`, the usual
"normalised reward"; the running statistics of ``scaled`` are then those of the centred signal,
and a ``baseline`` placed after ``scaled`` regresses the scaled signal).  ``self-critic``
subtracts the fresh particles' signal *passed through the transforms before it* with their
statistics frozen, so that e.g. ``centred,self-critic`` is exactly :math:`d - d^\star`.

**Unbiasedness.**  Every statistic used at a call was computed from *earlier* calls (the running
statistics are updated after they are applied) or from independent particles, so it does not
depend on :math:`z_k`; hence :math:`E[(r - c)\,h_k] = E[r\, h_k]` since :math:`E[h_k] = 0`.
``scaled`` divides the :math:`\phi`-gradient by the positive factor :math:`\max(\bar s, 1)`
(a change of step size, not of direction in expectation); the :math:`\theta`-gradient
(:math:`\nabla_\theta \mathcal{L}_K^\alpha`) is never transformed.

**Modes.**  Running statistics are updated only in training mode (``estimator.train()``); in
``eval()`` mode they are frozen.  They are buffers (saved in ``state_dict``).  The baseline's
parameters are the estimator's parameters (``run.py`` trains them with ``--baseline_lr``).

``run.py --estimator reinforce --reward_transforms centred,scaled`` builds
:class:`ReinforceTransformed`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, RuntimeParams
from ovis.estimators.score_function import Reinforce, baseline_mlp, score_function_surrogate

__all__ = [
    "REWARD_TRANSFORMS",
    "RewardContext",
    "RewardTransform",
    "CentredReward",
    "ScaledReward",
    "SelfCriticReward",
    "BaselineReward",
    "RewardTransformChain",
    "parse_reward_transforms",
    "ReinforceTransformed",
]

#: the valid transform names, in the order they are documented
REWARD_TRANSFORMS = ("centred", "scaled", "self-critic", "baseline")


@dataclass
class RewardContext:
    r"""What a transform may look at besides the signal.

    Attributes:
        x: the batch ``[B, *x_shape]``.
        fresh: returns the (raw, detached) learning signal ``[B, M, K]`` of a fresh independent set
            of particles for the same ``x``; evaluated at most once per call (cached).
    """

    x: Tensor
    fresh: Callable[[], Tensor]


class RewardTransform(nn.Module):
    r"""One transform: ``apply(r, ctx, update) -> (r', aux_loss or None, diagnostics)``.

    ``r`` is detached, ``[B, M, K]``.  With ``update=False`` the transform is applied with its
    state frozen and returns no auxiliary loss (used for the fresh signal of ``self-critic``).
    """

    name: str = "identity"

    def apply(self, r: Tensor, ctx: RewardContext, update: bool) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""Transform the detached learning signal.

        Args:
            r: the signal ``[B, M, K]`` (detached).
            ctx: the batch and the fresh-signal callback (:class:`RewardContext`).
            update: update the transform's state and return its auxiliary loss (``False``: frozen).

        Returns:
            ``(r', aux_loss, diagnostics)``: ``r'`` ``[B, M, K]``, an auxiliary loss (or ``None``) and
            diagnostics ``[B]`` each.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError


class _RunningMoments(RewardTransform):
    r"""Bias-corrected exponential moving averages of the mean and the second moment of the
    signal (``decay`` per call; ``weight`` is :math:`1 - \mathrm{decay}^n` after ``n`` updates)."""

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
            raise ValueError(f"{self.name}: decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.register_buffer("m1", torch.zeros((), dtype=torch.float64))
        self.register_buffer("m2", torch.zeros((), dtype=torch.float64))
        self.register_buffer("weight", torch.zeros((), dtype=torch.float64))

    def _weight(self) -> Tuple[Tensor, Tensor]:
        r"""``(seen, w)``: whether an update happened, and the weight with 1 in place of 0 (no
        branch on the value: the moments stay on their device without a host sync)."""
        seen = self.weight > 0
        return seen, torch.where(seen, self.weight, torch.ones_like(self.weight))

    def running_mean(self) -> Tensor:
        r"""The bias-corrected running mean of the signal (0-dim; ``0`` before any update)."""
        seen, w = self._weight()
        return torch.where(seen, self.m1 / w, torch.zeros_like(self.m1))

    def running_std(self) -> Tensor:
        r"""The bias-corrected running standard deviation (0-dim; ``0`` before any update)."""
        seen, w = self._weight()
        mean = self.m1 / w
        return torch.where(seen, (self.m2 / w - mean ** 2).clamp_min(0.0).sqrt(), torch.zeros_like(self.m1))

    def _update(self, r: Tensor) -> None:
        with torch.no_grad():
            r64 = r.detach().double()
            a = 1.0 - self.decay
            self.m1.mul_(self.decay).add_(a * r64.mean())
            self.m2.mul_(self.decay).add_(a * (r64 ** 2).mean())
            self.weight.mul_(self.decay).add_(a)


class CentredReward(_RunningMoments):
    r"""``centred``: :math:`r' = r - \bar m` with :math:`\bar m` the running mean of ``r`` over
    previous training calls (0 before the first)."""

    name = "centred"

    def apply(self, r: Tensor, ctx: RewardContext, update: bool) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""``r - mean`` with the running mean of previous calls; updates it when ``update`` and training.
        Diagnostics: ``centred_mean`` ``[B]``.
        """
        m = self.running_mean().to(r.dtype)
        out = r - m
        if update and self.training:
            self._update(r)
        return out, None, {"centred_mean": m.expand(r.shape[0])}


class ScaledReward(_RunningMoments):
    r"""``scaled``: :math:`r' = r / \max(\bar s, 1)` with :math:`\bar s` the running standard
    deviation of ``r`` over previous training calls (1 before the first).  :meth:`scale` is the
    divisor used at the next call."""

    name = "scaled"

    def scale(self) -> Tensor:
        r"""The divisor of the next call: ``max(running std, 1)`` (0-dim)."""
        return self.running_std().clamp_min(1.0)

    def apply(self, r: Tensor, ctx: RewardContext, update: bool) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""``r / scale()``; updates the moments when ``update`` and training.  Diagnostics:
        ``scaled_scale`` ``[B]``.
        """
        s = self.scale().to(r.dtype)
        if update:
            self.applied_scale = s.detach().clone()  # a tensor: no value read back from the device
        out = r / s
        if update and self.training:
            self._update(r)
        return out, None, {"scaled_scale": s.expand(r.shape[0])}


class SelfCriticReward(RewardTransform):
    r"""``self-critic``: :math:`r' = r - r^\star`, the signal of a fresh independent set of ``K``
    particles for the same ``x`` (same index ``k``), passed through the preceding transforms with
    their state frozen (done by :class:`RewardTransformChain`).  Costs one more model evaluation."""

    name = "self-critic"

    def apply(self, r: Tensor, ctx: RewardContext, update: bool) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""Not callable on its own.

        Raises:
            RuntimeError: always; :class:`RewardTransformChain` applies ``self-critic`` (it needs the
                preceding transforms).
        """
        raise RuntimeError("self-critic is applied by RewardTransformChain (it needs the preceding transforms)")


class BaselineReward(RewardTransform):
    r"""``baseline``: :math:`r' = r - b_\psi(x)`, ``b_psi`` an MLP (``D -> hdim -> 1``, tanh)
    trained by minimising :math:`E[(r - b_\psi(x))^2]` (added to the surrogate; ``r`` is detached,
    so the loss reaches only :math:`\psi`).

    Args:
        x_shape: shape of one observation (the network is built at construction, so an optimiser
            created afterwards sees its parameters); ``None`` builds it at the first call.
        hdim: hidden units.
    """

    name = "baseline"

    def __init__(self, x_shape: Optional[Sequence[int]] = None, hdim: int = 100) -> None:
        super().__init__()
        if isinstance(hdim, bool) or not isinstance(hdim, int) or hdim < 1:
            raise ValueError(f"baseline: hdim must be an integer >= 1, got {hdim!r}")
        self.hdim = hdim
        self.net: Optional[nn.Module] = None
        if x_shape is not None:
            self._build(int(math.prod(x_shape)))

    def _build(self, dim: int, like: Optional[Tensor] = None) -> None:
        self.net = baseline_mlp(dim, self.hdim, like)

    def apply(self, r: Tensor, ctx: RewardContext, update: bool) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""``r - b(x)`` (``b(x)`` ``[B, 1, 1]``, detached); with ``update`` also the baseline's
        loss :math:`E[(r - b_\psi(x))^2]` and the diagnostic ``baseline_mse`` ``[B]``.  The network is
        built at the first call when ``x_shape`` was not given.
        """
        flat = ctx.x.reshape(ctx.x.shape[0], -1)
        if self.net is None:
            self._build(flat.shape[1], like=flat)
        assert self.net is not None
        b = self.net(flat).view(-1, 1, 1).to(r.dtype)  # [B, 1, 1]
        out = r - b.detach()
        if not update:
            return out, None, {}
        mse = ((r.detach() - b) ** 2).mean()
        return out, mse, {"baseline_mse": ((r - b.detach()) ** 2).mean(dim=(1, 2))}


def parse_reward_transforms(spec: Any) -> Tuple[str, ...]:
    r"""``"centred,scaled"`` or a sequence of names -> a tuple of valid names (whitespace dropped).

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or a repeated one.
    """
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = tuple(str(t).strip() for t in items if str(t).strip())
    for n in names:
        if n not in REWARD_TRANSFORMS:
            raise ValueError(f"unknown reward transform {n!r}; valid names: {', '.join(REWARD_TRANSFORMS)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"reward transform(s) {dup} given more than once in {names}")
    return names


class RewardTransformChain(nn.Module):
    r"""Transforms applied in the given order (see the module docstring).

    Args:
        names: transform names (:data:`REWARD_TRANSFORMS`), or a comma-separated string.
        x_shape: observation shape for ``baseline``.
        decay: decay of the running statistics of ``centred`` and ``scaled``.
        hdim: hidden units of ``baseline``.
    """

    def __init__(self, names: Any = (), x_shape: Optional[Sequence[int]] = None, decay: float = 0.99,
                 hdim: int = 100) -> None:
        super().__init__()
        self.names = parse_reward_transforms(names)
        mods: List[RewardTransform] = []
        for n in self.names:
            if n == "centred":
                mods.append(CentredReward(decay))
            elif n == "scaled":
                mods.append(ScaledReward(decay))
            elif n == "self-critic":
                mods.append(SelfCriticReward())
            else:
                mods.append(BaselineReward(x_shape, hdim))
        self.transforms = nn.ModuleList(mods)
        #: ``r' = gain * r + const`` at the last call (see :meth:`forward`)
        self.gain = 1.0

    def __len__(self) -> int:
        return len(self.transforms)

    def _frozen(self, r: Tensor, ctx: RewardContext, upto: int) -> Tensor:
        for t in list(self.transforms)[:upto]:
            if isinstance(t, SelfCriticReward):
                continue  # a self-critic before a self-critic: its fresh term is dropped for r*
            r, _, _ = t.apply(r, ctx, update=False)
        return r

    def forward(self, r: Tensor, ctx: RewardContext) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""``(r', aux_loss or None, diagnostics)`` for the detached signal ``r`` ``[B, M, K]``.

        Every transform is affine in ``r`` with coefficients that do not depend on it, so
        ``r' = gain * r + const``; :attr:`gain` (the product of the ``1 / s`` of the ``scaled``
        transforms applied at this call) is what multiplies the signal's term ``-v_k``."""
        r = r.detach()
        aux: Optional[Tensor] = None
        diag: Dict[str, Tensor] = {}
        self.gain = 1.0
        for i, t in enumerate(self.transforms):
            if isinstance(t, SelfCriticReward):
                fresh = self._frozen(ctx.fresh().detach(), ctx, i)
                r = r - fresh
                continue
            r, loss, d = t.apply(r, ctx, update=True)
            if isinstance(t, ScaledReward):
                self.gain = self.gain / t.applied_scale
            diag.update(d)
            if loss is not None:
                aux = loss if aux is None else aux + loss
        return r.detach(), aux, diag


class ReinforceTransformed(Reinforce):
    r"""REINFORCE on the IW bound whose learning signal goes through a chain of reward transforms.

    The surrogate is :math:`-\sum_k \mathrm{sg}(T(d)_k)\log q(z_k|x) - \mathcal{L}_K^\alpha`
    (+ the baseline's MSE), ``T`` the :class:`RewardTransformChain`; with no transform it equals
    ``reinforce``.  Diagnostics: the base ones, ``estimator/cv_mse`` (mean of :math:`T(d)^2`) and
    the transforms' own entries (``centred_mean``, ``scaled_scale``, ``baseline_mse``).

    Args:
        mc, iw: outer samples ``M`` and particles ``K``.
        reward_transforms: names, applied in order (e.g. ``("centred", "scaled")`` or
            ``"centred,scaled"``).
        x_shape: observation shape (builds the ``baseline`` network at construction).
        decay: decay of the running statistics.
        hdim: hidden units of the ``baseline``.
    """

    family = "reinforce"

    def __init__(self, mc: int = 1, iw: int = 1, reward_transforms: Any = (),
                 x_shape: Optional[Sequence[int]] = None, decay: float = 0.99, hdim: int = 100) -> None:
        super().__init__(mc=mc, iw=iw)
        self.chain = RewardTransformChain(reward_transforms, x_shape=x_shape, decay=decay, hdim=hdim)

    def extra_repr(self) -> str:
        r"""``mc``, ``iw`` and the transforms' names, for ``repr(estimator)``."""
        return f"mc={self.mc}, iw={self.iw}, reward_transforms={','.join(self.chain.names) or '()'}"

    def direct_gain(self) -> Union[float, Tensor]:
        r"""The chain's :attr:`RewardTransformChain.gain` at its last call (``1`` or a 0-dim tensor):
        the factor of the signal's term ``-v_k`` after the transforms."""
        return self.chain.gain

    def compute(self, model: nn.Module, x: Tensor, params: RuntimeParams) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""REINFORCE with the signal ``d = L - v`` (``[B, M, K]``) passed through the chain; the fresh
        particles of ``self-critic`` are drawn lazily, at most once per call, without a graph.

        Returns:
            ``(loss, diagnostics, output)``; ``diagnostics['estimator']`` has ``cv_mse`` and the
            transforms' entries.
        """
        p, log_w, kl, bound, v = self.weighted_particles(model, x, params)
        cache: Dict[str, Tensor] = {}

        def fresh() -> Tensor:
            if "d" not in cache:
                with torch.no_grad():
                    _, _, _, bound2, v2 = self.weighted_particles(model, x, params)
                    cache["d"] = bound2[..., None] - v2
            return cache["d"]

        signal, aux_loss, extra = self.chain(bound[..., None] - v, RewardContext(x=x, fresh=fresh))
        # the transforms act on the signal of beta = 1 (d = L - v); its term -v_k, scaled by the chain's
        # gain, becomes -beta v_k 1[kl_l >= lambda] in the surrogate (score_function_surrogate)
        loss = score_function_surrogate(signal.detach(), p.log_px, p.log_qz, p.log_pz, v, bound, params.beta,
                                        params.freebits, direct_weights=self.direct_weights(v))
        if aux_loss is not None:
            loss = loss + aux_loss
        diagnostics = self.signal_diagnostics(log_w, kl, p.log_px, bound, v, signal, params.alpha)
        diagnostics["estimator"].update(extra)
        return loss, diagnostics, p.output
