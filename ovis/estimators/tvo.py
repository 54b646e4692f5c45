r"""The thermodynamic variational objective (Masrani, Le & Wood, NeurIPS 2019): ``tvo*``.

With the path :math:`\pi_\beta(z) \propto q(z|x)^{1-\beta} p(x,z)^\beta` and
:math:`f = \log w`, :math:`\log p(x) = \int_0^1 E_{\pi_\beta}[f]\,d\beta`; the TVO is a Riemann sum
over a partition :math:`0 = \beta_0 < \dots < \beta_n = 1` (left: a lower bound; right: an upper
bound; trapezoid).  Each expectation is a self-normalised importance-sampling estimate with
weights :math:`\omega_k \propto w_k^\beta` on the ``K`` particles of ``q``, and its gradient is
the covariance estimator

.. math::

    \nabla E_{\pi_\beta}[f] = E_{\pi_\beta}[\nabla f]
        + \mathrm{Cov}_{\pi_\beta}(f, \nabla\log q + \beta\nabla f)

with the ``K/(K-1)`` correction of the covariance (self-normalised, so biased for finite K;
with one partition ``{0, 1}`` and left integration it is unbiased for the ELBO's gradient).

Partition: ``-part{n}``: ``n = 1`` is ``{0, 1}``; otherwise ``0`` followed by ``n`` points
log-spaced from ``beta_1`` to 1, with ``beta_1 = 10^-m`` (``-beta{m}``, default ``m = 10``),
or from ``K`` with ``-config1`` (TVO fig. 3: 0.05 for K < 10, 0.2 for K < 30, else 0.3) or
``-config2`` (TVO fig. 6: 0.01, 0.02, 0.03).  TVO rejects ``alpha != 0``.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn

from ovis.estimators.base import Diagnostics, GradientEstimator, RuntimeParams
from ovis.estimators.importance import log_weights
from ovis.estimators.surrogate import linear_surrogate, log_weight_coefficients

__all__ = ["ThermodynamicVO", "tvo_partition"]

_SCHEDULES = ("log", "config1", "config2")
_INTEGRATIONS = ("left", "right", "trapz")


def tvo_partition(K: int, partitions: int = 2, log_beta_min: float = 10.0, schedule: str = "log") -> Tensor:
    r"""The partition :math:`0 = \beta_0 < \beta_1 < \dots < \beta_n = 1` (float64, ``[n + 1]``)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
    if partitions == 1:
        # device: the partition, a buffer (moved by .to())
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    if schedule == "log":
        if log_beta_min <= 0:
            raise ValueError(f"-beta{{m}} needs m > 0 (beta_1 = 10^-m < 1), got {log_beta_min}")
        beta1 = 10.0 ** (-log_beta_min)
    else:
        table = (0.05, 0.2, 0.3) if schedule == "config1" else (0.01, 0.02, 0.03)
        beta1 = table[0] if K < 10 else table[1] if K < 30 else table[2]
    # device: the partition, a buffer (moved by .to())
    pts = torch.logspace(torch.log10(torch.tensor(beta1, dtype=torch.float64)).item(), 0.0,
                         partitions, dtype=torch.float64)
    # device: the partition, a buffer (moved by .to())
    return torch.cat([torch.zeros(1, dtype=torch.float64), pts])


class ThermodynamicVO(GradientEstimator):
    r"""TVO with the covariance gradient estimator.

    With ``omega`` and the centring held fixed, the surrogate is linear in the particles'
    log-densities: it is one :func:`~ovis.estimators.surrogate.linear_surrogate` node whose
    coefficients are computed without a graph (``tests/test_surrogate.py`` checks them against
    the estimator written with autograd).

    Args:
        partitions: ``n``, the number of points after ``0``.
        log_beta_min: ``m`` with ``beta_1 = 10^-m`` (``schedule="log"``).
        schedule: ``"log"``, ``"config1"`` or ``"config2"``.
        integration: ``"left"``, ``"right"`` or ``"trapz"``.
    """

    family = "tvo"
    supports_alpha = False
    min_iw = 2  # the covariance estimator needs two particles

    def __init__(self, mc: int = 1, iw: int = 1, partitions: int = 2, log_beta_min: float = 10.0,
                 schedule: str = "log", integration: str = "left") -> None:
        super().__init__(mc=mc, iw=iw)
        if integration not in _INTEGRATIONS:
            raise ValueError(f"integration must be one of {_INTEGRATIONS}, got {integration!r}")
        self.integration = integration
        self.register_buffer("partition", tvo_partition(iw, partitions, log_beta_min, schedule),
                             persistent=False)

    def extra_repr(self) -> str:
        r"""``mc``, ``iw``, the partition points and the integration rule, for ``repr(estimator)``."""
        return f"{super().extra_repr()}, partition={self.partition.tolist()}, integration={self.integration}"

    def riemann_weights(self) -> Tuple[Tensor, Tensor]:
        r"""``(betas, coefficients)``: the integral is ``sum_j coef_j * E_{pi_{beta_j}}[f]``."""
        b = self.partition
        delta = b[1:] - b[:-1]
        if self.integration == "left":
            return b[:-1], delta
        if self.integration == "right":
            return b[1:], delta
        coef = torch.zeros_like(b)
        coef[:-1] += delta / 2
        coef[1:] += delta / 2
        return b, coef

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The TVO surrogate with the covariance estimator: for each point :math:`\beta_j` of the
        partition, the self-normalised weights :math:`\omega_{kj} \propto w_k^{\beta_j}` (``[B, M, K, P]``)
        estimate :math:`E_{\pi_{\beta_j}}[f]` (``f = log w``) and its covariance gradient; the Riemann
        sum of :meth:`riemann_weights` combines them.  Diagnostics add ``estimator/tvo`` ``[B]``, the
        value of the integral.

        Returns:
            ``(loss, diagnostics, output)`` as :meth:`ovis.estimators.base.GradientEstimator.forward`.
        """
        p = self.evaluate(model, x, params, zgrads=False)
        B, M, K = p.log_px.shape
        betas, coef = self.riemann_weights()
        with torch.no_grad():  # the surrogate is linear in the log-densities: only its coefficients
            log_w, kl = log_weights(p.log_px, p.log_qz, p.log_pz, params.beta, params.freebits)  # [B, M, K]
            betas = betas.to(log_w)
            coef = coef.to(log_w)
            f = log_w[..., None]  # [B, M, K, 1]
            omega = torch.softmax(betas * f, dim=2)  # [B, M, K, P]
            e_f = (omega * f).sum(2)  # [B, M, P]: the estimates of E_pi[f]
            cov = (K / (K - 1)) * omega * (f - e_f[:, :, None])  # [B, M, K, P]: the covariance weights
            log_q = p.log_qz.sum(-1)  # [B, M, K]
            # surrogate per (b, m): sum_j coef_j (E[f]_j + sum_k cov_kj (log q_k + beta_j f_k))
            per_point = ((e_f + (cov * (log_q[..., None] + betas * f)).sum(2)) * coef).sum(-1)  # [B, M]
            scale = -1.0 / (B * M)
            value = scale * per_point.sum()
            # coefficients of f = log w (omega and the centring held fixed) and of log q
            d_f = scale * ((omega + cov * betas) * coef).sum(-1)  # [B, M, K]
            d_log_q = scale * (cov * coef).sum(-1)  # [B, M, K]
            # log w = log p(x|z) - beta sum_l max(log q_l - log p_l, lambda): log q enters it too
            d_px, d_pz = log_weight_coefficients(d_f, p.log_qz, p.log_pz, params.beta, params.freebits)
            d_qz = d_log_q[..., None] - d_pz
        loss = linear_surrogate(value, p.log_px, p.log_qz, p.log_pz, d_px, d_qz, d_pz)
        diagnostics = self.base_diagnostics(log_w, kl, p.log_px)
        diagnostics["estimator"] = {"tvo": (e_f * coef).sum(-1).mean(1)}
        return loss, diagnostics, p.output
