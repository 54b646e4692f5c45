r"""Score-function estimators of the importance-weighted bound: the shared base, ``reinforce``,
``reinforce-baseline`` and ``nvil``.

For a non-reparameterised :math:`q` (Mnih & Rezende 2016; Lievin et al. 2020, eq. 5):

.. math::

    \nabla_\phi \mathcal{L}_K^\alpha = E\Big[\sum_k (d_k - c_k)\, h_k\Big],\quad
    d_k = \mathcal{L}_K^\alpha - v_k,\quad h_k = \nabla_\phi \log q(z_k|x),\quad
    \nabla_\theta \mathcal{L}_K^\alpha = E[\nabla_\theta \mathcal{L}_K^\alpha]

for any control variate :math:`c_k` that does not depend on :math:`z_k` (``v_k`` are the tempered
normalised weights).  The surrogate minimised is

.. math::

    -\sum_k \mathrm{sg}(d_k - c_k)\log q(z_k|x) - \mathcal{L}_K^\alpha

averaged over ``B`` and ``M``, where :math:`\mathcal{L}_K^\alpha` is computed from log-weights
whose :math:`\log q` is detached (it carries no gradient to :math:`\phi` through ``q``).

The term :math:`-v_k` of :math:`d_k` is the derivative of the bound through the :math:`\log q`
inside :math:`\log w_k` at ``beta = 1`` without free bits.  With the KL weight and free bits,
:math:`\log w_k = \log p(x|z_k) - \beta\sum_l\max(\log q_l - \log p_l, \lambda)`, that derivative is
:math:`-\beta v_k 1[\log q_{l,k} - \log p_{l,k} \geq \lambda]` per layer ``l``: the learning signal of
layer ``l`` is :math:`\mathcal{L} - \beta v_k 1[\cdot] - c_k`.  The estimators compute their signal in
the form of ``beta = 1`` and :func:`score_function_surrogate` substitutes that term
(``tests/test_exact_gradients.py`` checks every estimator under ``beta`` in ``{0.3, 1}`` with and
without free bits against the exact gradient).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, GradientEstimator, RuntimeParams
from ovis.estimators.surrogate import linear_surrogate, log_weight_coefficients

__all__ = ["ScoreFunctionEstimator", "Reinforce", "ReinforceBaseline", "NVIL", "baseline_mlp",
           "score_function_surrogate"]


def baseline_mlp(dim: int, hdim: int, like: Optional[Tensor] = None) -> nn.Sequential:
    r"""The input-dependent baseline :math:`b_\psi(x)`: ``dim -> hdim (tanh) -> 1``, on the device
    and dtype of ``like`` when given."""
    net = nn.Sequential(nn.Linear(dim, hdim), nn.Tanh(), nn.Linear(hdim, 1))
    return net if like is None else net.to(device=like.device, dtype=like.dtype)


def score_function_surrogate(signal: Tensor, log_px: Tensor, log_qz: Tensor, log_pz: Tensor, v: Tensor,
                             bound: Tensor, beta: float = 1.0, freebits: Optional[float] = None,
                             direct_weights: Optional[Tensor] = None) -> Tensor:
    r"""The surrogate :math:`-\frac{1}{BM}\sum_{b,m}\big(\sum_{k,l}\mathrm{sg}(s_{k,l})\log q(z_{l,k}|\cdot)
    + \mathcal{L}\big)` of every score-function estimator, as one linear node
    (:mod:`ovis.estimators.surrogate`): the ``phi``-gradient is :math:`\sum_{k,l} s_{k,l}\nabla\log
    q(z_{l,k})`, the ``theta``-gradient that of the bound, :math:`\sum_k v_k\nabla\log w_k`.

    **The KL weight and free bits.**  ``log q`` enters the bound twice: through the sampling
    distribution (the score term, :math:`\mathcal{L}\,h_k`) and inside
    :math:`\log w_k = \log p(x|z_k) - \beta\sum_l\max(\log q_l - \log p_l, \lambda)`, whose
    derivative adds :math:`-\beta\,v_k\,1[\log q_{l,k} - \log p_{l,k} \geq \lambda]` to the
    coefficient of :math:`\log q(z_{l,k})`.  The estimators write their signal in the form of
    ``beta = 1`` without free bits, :math:`s_k = d_k - c_k` with :math:`d_k = \mathcal{L} - v_k`,
    whose term :math:`-u_k` (``u = direct_weights``; ``u = v`` for an untransformed signal) is that
    derivative; here it is replaced by its value under ``(beta, freebits)``:

    .. math::  s_{k,l} = s_k + u_k\,(1 - \beta\,1[\log q_{l,k} - \log p_{l,k} \geq \lambda]).

    Args:
        signal: the learning signal ``[B, M, K']`` (no graph) in the form of ``beta = 1`` without
            free bits; its ``K' <= K`` particles are the first ``K'`` of the bound's (OVIS-MC within
            the budget), the others carry no score term.
        log_px, log_qz, log_pz: the particles' log-densities ``[B, M, K]``, ``[B, M, K, L]`` (graphs).
        v: the tempered normalised weights ``[B, M, K]`` and ``bound`` the bound ``[B, M]`` (no graph).
        beta, freebits: as in :func:`~ovis.estimators.importance.log_weights`.
        direct_weights: ``u`` ``[B, M, K']``, the weights of the signal's term ``-u_k`` that stands for
            the derivative through ``log q`` inside ``log w``; ``None``: ``v`` (``v[..., :K']``).  An
            estimator that scales its signal by ``a`` passes ``a * v``, OVIS~ ``(1 - gamma) v``, and a
            signal that is not a gradient estimate of the bound (the wake phase) passes zeros.
    """
    B, M, K = log_px.shape
    Ks = signal.shape[-1]
    with torch.no_grad():
        scale = -1.0 / (B * M)
        log_q = log_qz.sum(-1)
        value = scale * ((signal * (log_q if Ks == K else log_q[..., :Ks])).sum(-1) + bound).sum()
        d_px, d_pz = log_weight_coefficients(scale * v, log_qz, log_pz, beta, freebits)
        d_qz = (scale * signal)[..., None]
        if Ks > 0 and (beta != 1.0 or freebits is not None):
            u = (v if Ks == K else v[..., :Ks]) if direct_weights is None else direct_weights
            if u.shape != signal.shape:
                raise ValueError(f"direct_weights {tuple(u.shape)} must have the signal's shape {tuple(signal.shape)}")
            active = torch.ones_like(log_qz[..., :Ks, :]) if freebits is None else (
                (log_qz[..., :Ks, :] - log_pz[..., :Ks, :]) >= freebits).to(log_qz.dtype)
            d_qz = d_qz + (scale * u)[..., None] * (1.0 - beta * active)  # [B, M, K', L]
        if Ks < K:
            d_qz = torch.cat([d_qz, d_qz.new_zeros(B, M, K - Ks, d_qz.shape[-1])], dim=2)
    return linear_surrogate(value, log_px, log_qz, log_pz, d_px, d_qz, d_pz)


class ScoreFunctionEstimator(GradientEstimator):
    r"""Base of the score-function estimators of :math:`\mathcal{L}_K^\alpha`.

    Subclasses implement :meth:`control_variate` (``c_k``, ``[B, M, K]``, detached, independent of
    ``z_k`` for an unbiased estimator), or :meth:`learning_signal` directly when ``d_k - c_k`` has
    a cheaper closed form.  The surrogate and the diagnostics (``estimator/cv_mse``: the mean
    squared difference between ``d_k`` and ``c_k``) are built here.
    """

    family = "score-function"

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The score-function estimate: the particles are evaluated without reparameterisation
        (:meth:`~ovis.estimators.base.GradientEstimator.weighted_particles`), the learning signal
        ``d - c`` ``[B, M, K]`` comes from :meth:`learning_signal`, and the surrogate is
        :func:`score_function_surrogate` (plus the control variate's auxiliary loss, if any).

        Returns:
            ``(loss, diagnostics, output)``; ``diagnostics['estimator']`` has ``cv_mse`` and the
            subclass's entries.
        """
        p, log_w, kl, bound, v = self.weighted_particles(model, x, params)
        with torch.no_grad():  # the surrogate's coefficients (its graph is one linear node)
            signal, aux_loss, extra = self.learning_signal(log_w, bound, v, x, params)
            u = self.direct_weights(v)
        loss = score_function_surrogate(signal, p.log_px, p.log_qz, p.log_pz, v, bound, params.beta, params.freebits,
                                        direct_weights=u)
        if aux_loss is not None:
            loss = loss + aux_loss
        diagnostics = self.signal_diagnostics(log_w, kl, p.log_px, bound, v, signal, params.alpha)
        diagnostics["estimator"].update(extra)
        return loss, diagnostics, p.output

    def direct_gain(self) -> Union[float, Tensor]:
        r"""The factor ``a`` (a number or a 0-dim tensor) of the term ``-a v_k`` of the last
        learning signal (:meth:`learning_signal`) that stands for the derivative of the bound
        through ``log q`` inside ``log w`` (``1``: the signal ``d_k - c_k`` with a control variate
        independent of ``v_k``); the surrogate replaces that term by its value under the KL weight
        and free bits (:func:`score_function_surrogate`)."""
        return 1.0

    def direct_weights(self, v: Tensor) -> Optional[Tensor]:
        r"""The ``direct_weights`` ``u = a v`` ``[B, M, K]`` of :func:`score_function_surrogate`, with
        ``a`` = :meth:`direct_gain`; ``None`` (the surrogate then takes ``u = v``) when ``a`` is the
        number ``1``.  A tensor gain is only multiplied, never compared, so no value is read back
        from the device."""
        gain = self.direct_gain()
        return None if isinstance(gain, float) and gain == 1.0 else gain * v

    def signal_diagnostics(self, log_w: Tensor, kl: Tensor, log_px: Tensor, bound: Tensor, v: Tensor,
                           signal: Tensor, alpha: float) -> Diagnostics:
        r""":meth:`base_diagnostics` with ``estimator/cv_mse`` of the learning signal; the bound and
        the weights are those of the diagnostics when ``alpha = 0`` (not recomputed)."""
        untempered = alpha == 0.0
        return self.base_diagnostics(log_w, kl, log_px, iw=bound if untempered else None,
                                     v=v if untempered else None, cv_residual=signal)

    def learning_signal(
        self, log_w: Tensor, bound: Tensor, v: Tensor, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""``(d - c, aux_loss, extra_diagnostics)`` from the detached ``log_w`` ``[B, M, K]``, the
        bound ``[B, M]`` and the tempered normalised weights ``v`` ``[B, M, K]``
        (``d_k = bound - v_k``); called without gradient recording, but ``aux_loss`` may carry
        the graph of the estimator's own parameters."""
        d = bound[..., None] - v
        with torch.enable_grad():
            c, aux_loss, extra = self.control_variate(log_w, d, x, params)
        return d - c.detach(), aux_loss, extra

    def control_variate(
        self, log_w: Tensor, d: Tensor, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        r"""Return ``(c, aux_loss, extra_diagnostics)``; ``c`` has the shape of ``d`` ``[B, M, K]``."""
        raise NotImplementedError


class Reinforce(ScoreFunctionEstimator):
    r"""REINFORCE on the IW bound (``reinforce``): :math:`c_k = 0`."""

    family = "reinforce"

    def learning_signal(
        self, log_w: Tensor, bound: Tensor, v: Tensor, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        return bound[..., None] - v, None, {}


class ReinforceBaseline(ScoreFunctionEstimator):
    r"""REINFORCE with a neural baseline (``reinforce-baseline``): :math:`c_k = b_\psi(x)`.

    ``b_psi`` is an MLP (``D -> hdim -> 1``, tanh) trained by minimising the mean squared error to
    the learning signal :math:`d_k` (the MSE is added to the surrogate; ``d_k`` is detached, so it
    reaches only ``psi``).  Its parameters are this module's parameters: give
    ``estimator.parameters()`` to an optimiser (``run.py`` uses ``--baseline_lr``).

    Args:
        x_shape: shape of one observation; when ``None`` the network is built at the first call,
            so create the optimiser after that call.
        hdim: hidden units of the baseline.
    """

    family = "reinforce-baseline"

    def __init__(self, mc: int = 1, iw: int = 1, x_shape: Optional[Sequence[int]] = None,
                 hdim: int = 100) -> None:
        super().__init__(mc=mc, iw=iw)
        if hdim < 1:
            raise ValueError(f"hdim must be >= 1, got {hdim}")
        self.hdim = hdim
        self.baseline: Optional[nn.Module] = None
        if x_shape is not None:
            self._build(int(math.prod(x_shape)))

    def _build(self, dim: int, like: Optional[Tensor] = None) -> None:
        self.baseline = baseline_mlp(dim, self.hdim, like)

    def control_variate(
        self, log_w: Tensor, d: Tensor, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        flat = x.reshape(x.shape[0], -1)
        if self.baseline is None:
            self._build(flat.shape[1], like=flat)
        b = self.baseline(flat).view(-1, 1, 1)  # [B, 1, 1]
        mse = ((d.detach() - b) ** 2).mean()
        return b.detach().expand_as(d), mse, {"baseline_mse": ((d - b.detach()) ** 2).mean(dim=(1, 2))}


class NVIL(ReinforceBaseline):
    r"""NVIL (Mnih & Gregor 2014): REINFORCE with an input-dependent baseline :math:`b_\psi(x)` and
    running centring and scaling of the learning signal.

    With the score-function learning signal :math:`d_k` of :math:`\mathcal{L}_K`
    (module docstring; ``iw = 1``: the ELBO's ``log w``), the centred signal
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
        x_shape, hdim: as :class:`ReinforceBaseline`.
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
