r"""A mixture-of-Gaussians variational distribution and its hybrid ELBO gradient estimator.

.. math::

    q_\phi(z) = \sum_{c=1}^C \pi_c\, \mathcal{N}(z; \mu_c, \mathrm{diag}\,\sigma_c^2),\qquad
    \pi = \mathrm{softmax}(\ell)

has no reparameterisation of the component choice.  Sampling in two stages,
:math:`c \sim \mathrm{Cat}(\pi)` then :math:`z = \mu_c + \sigma_c \odot \epsilon`,
:math:`\epsilon \sim \mathcal{N}(0, I)`, the gradient of :math:`E_q[f_\phi(z)]` (with
:math:`f_\phi(z) = \log p(x, z) - \log q_\phi(z)`, the ELBO integrand) is

.. math::

    \nabla_\phi E_q[f_\phi(z)] = E_{c,\epsilon}\Big[(f_\phi(z) - b)\,\nabla_\phi \log \pi_c
        + \nabla_\phi f_\phi(\mu_c + \sigma_c\odot\epsilon)\Big]

(score function for ``c``, reparameterisation for the component, and the direct dependence of
:math:`\log q_\phi` on every parameter in the total derivative of the second term) for any
control variate :math:`b` independent of the sample's ``c`` and :math:`\epsilon`.  With ``S``
samples, :func:`hybrid_elbo_surrogate` uses the leave-one-out mean
:math:`b_s = \frac{1}{S-1}\sum_{s' \ne s} f(z_{s'})` (detached), as in VIMCO / RLOO.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

__all__ = ["DiagonalGaussianMixture", "hybrid_elbo_surrogate", "trapezoid_elbo_1d"]


class DiagonalGaussianMixture:
    r"""A mixture of ``C`` diagonal Gaussians in ``D`` dimensions, batched.

    Args:
        logits: mixture logits ``[*batch, C]``.
        loc: component means ``[*batch, C, D]``.
        scale: component standard deviations ``[*batch, C, D]``, ``> 0``.
    """

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor) -> None:
        if loc.dim() < 2 or loc.shape != scale.shape or logits.shape != loc.shape[:-1]:
            raise ValueError(
                f"DiagonalGaussianMixture: expected logits [*batch, C], loc and scale [*batch, C, D]; "
                f"got logits {tuple(logits.shape)}, loc {tuple(loc.shape)}, scale {tuple(scale.shape)}")
        self.logits, self.loc, self.scale = logits, loc, scale

    @property
    def components(self) -> int:
        r"""``C``, the number of mixture components."""
        return int(self.loc.shape[-2])

    def distribution(self) -> MixtureSameFamily:
        r"""The torch ``MixtureSameFamily`` (event shape ``[D]``)."""
        return MixtureSameFamily(Categorical(logits=self.logits), Independent(Normal(self.loc, self.scale), 1))

    def log_prob(self, z: Tensor) -> Tensor:
        r"""``log q(z)``: ``z`` ``[*sample, *batch, D]`` -> ``[*sample, *batch]``."""
        return self.distribution().log_prob(z)

    def hybrid_sample(self, n: int) -> Tuple[Tensor, Tensor, Tensor]:
        r"""``n`` samples ``(z [n, *batch, D], c [n, *batch], log_pi_c [n, *batch])``: the component
        ``c`` is drawn without gradient; ``z = loc_c + scale_c * eps`` carries the gradient of the
        chosen component's parameters; ``log_pi_c`` carries the gradient of the logits."""
        log_pi = torch.log_softmax(self.logits, dim=-1)  # [*batch, C]
        with torch.no_grad():
            c = Categorical(logits=self.logits.detach()).sample((n,))  # [n, *batch]
        D = self.loc.shape[-1]
        loc = self.loc.expand(n, *self.loc.shape)
        scale = self.scale.expand(n, *self.scale.shape)
        idx = c[..., None, None].expand(*c.shape, 1, D)
        mu_c = loc.gather(-2, idx).squeeze(-2)
        sd_c = scale.gather(-2, idx).squeeze(-2)
        z = mu_c + sd_c * torch.randn_like(mu_c)
        log_pi_c = log_pi.expand(n, *log_pi.shape).gather(-1, c[..., None]).squeeze(-1)
        return z, c, log_pi_c


def hybrid_elbo_surrogate(
    log_joint: Callable[[Tensor], Tensor],
    q: DiagonalGaussianMixture,
    samples: int = 4,
    control_variate: str = "loo",
) -> Tuple[Tensor, Tensor]:
    r"""A surrogate loss whose negative gradient is an unbiased estimate of :math:`\nabla` ELBO.

    Args:
        log_joint: ``z [S, *batch, D] -> log p(x, z) [S, *batch]``.
        q: the mixture posterior (batch shape ``[*batch]``).
        samples: ``S`` samples per batch element (``>= 2`` for the leave-one-out control variate).
        control_variate: ``"loo"`` (leave-one-out mean of the other samples' ``f``) or ``"none"``.

    Returns:
        ``(loss, elbo)``: the scalar surrogate (averaged over samples and batch) and the
        per-element ELBO estimate ``[*batch]`` (detached).
    """
    if control_variate not in ("loo", "none"):
        raise ValueError(f"control_variate must be 'loo' or 'none', got {control_variate!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < (2 if control_variate == "loo" else 1):
        raise ValueError(f"samples must be an integer >= {2 if control_variate == 'loo' else 1} "
                         f"(control_variate={control_variate!r}), got {samples!r}")
    z, _, log_pi_c = q.hybrid_sample(samples)
    f = log_joint(z) - q.log_prob(z)  # [S, *batch], pathwise + direct gradients
    if f.shape != log_pi_c.shape:
        raise ValueError(f"log_joint must map z {tuple(z.shape)} to {tuple(log_pi_c.shape)}, got {tuple(f.shape)}")
    with torch.no_grad():
        if control_variate == "loo":
            b = (f.sum(0, keepdim=True) - f) / (samples - 1)
        else:
            b = torch.zeros_like(f)
        signal = f - b
    loss = -(signal * log_pi_c + f).mean()
    return loss, f.detach().mean(0)


def trapezoid_elbo_1d(log_joint: Callable[[Tensor], Tensor], q: DiagonalGaussianMixture,
                      lo: float = -12.0, hi: float = 12.0, n: int = 20001) -> Tensor:
    r"""The ELBO :math:`\int q(z)(\log p(x,z) - \log q(z))\,dz` of a one-dimensional ``q`` (batch
    shape ``[]``, ``D = 1``) by the trapezoid rule on ``n`` points of ``[lo, hi]`` (differentiable).
    ``log_joint`` maps ``z [n, 1]`` to ``[n]``."""
    if q.loc.shape[-1] != 1 or q.loc.dim() != 2:
        raise ValueError(f"trapezoid_elbo_1d needs an unbatched one-dimensional mixture, got loc {tuple(q.loc.shape)}")
    grid = torch.linspace(lo, hi, n, dtype=q.loc.dtype, device=q.loc.device)[:, None]
    log_q = q.log_prob(grid)
    integrand = log_q.exp() * (log_joint(grid) - log_q)
    return torch.trapezoid(integrand, grid[:, 0])

