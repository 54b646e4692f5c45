r"""The Gumbel-Softmax / concrete relaxation (Jang et al. 2017; Maddison et al. 2017), the baseline
IGR is compared with (Potapczynski et al. 2020).

:class:`GumbelSoftmax` is :class:`torch.distributions.RelaxedOneHotCategorical`
(``z = softmax((logits + g) / tau)``, ``g`` i.i.d. Gumbel(0, 1); ``rsample`` on the simplex, density
of the concrete distribution) with the exact categorical it relaxes exposed as :attr:`categorical`
(the argmax of ``z`` is distributed as ``Categorical(logits)`` at every temperature).

The KL between two concrete distributions has no closed form: :func:`gumbel_softmax_kl` estimates
it by Monte Carlo,

.. math:: \widehat{KL}(q\|p) = \frac1S\sum_{s=1}^S \log q(z_s) - \log p(z_s),\qquad z_s \sim q
          \text{ (rsample)},

unbiased for :math:`KL(q_\tau\|p_\tau)` (the relaxed densities), reparameterised (differentiable
in both distributions' parameters).  The densities are evaluated in log space
(:class:`torch.distributions.ExpRelaxedCategorical` on ``log z``, minus ``sum log z``), which is
what ``RelaxedOneHotCategorical.log_prob`` does.  Deliberately *not* registered with
:func:`torch.distributions.kl.register_kl`: ``kl_divergence`` promises an exact value.
"""
from __future__ import annotations

from torch import Tensor
from torch.distributions import Categorical, RelaxedOneHotCategorical

__all__ = ["GumbelSoftmax", "gumbel_softmax_kl"]


class GumbelSoftmax(RelaxedOneHotCategorical):
    r"""Gumbel-Softmax at temperature ``temperature`` (``logits`` or ``probs``, ``[*batch, K]``)."""

    @property
    def categorical(self) -> Categorical:
        r"""The categorical distribution relaxed (``P(argmax z = k) = softmax(logits)_k``)."""
        return Categorical(logits=self.logits)


def gumbel_softmax_kl(q: RelaxedOneHotCategorical, p: RelaxedOneHotCategorical,
                      num_samples: int = 1) -> Tensor:
    r"""Monte Carlo estimate of ``KL(q || p)`` with ``num_samples`` reparameterised draws from ``q``
    (see the module docstring); shape ``q.batch_shape``.  Both must share the temperature."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not isinstance(q, RelaxedOneHotCategorical) or not isinstance(p, RelaxedOneHotCategorical):
        raise TypeError("gumbel_softmax_kl needs two RelaxedOneHotCategorical / GumbelSoftmax distributions")
    z = q.rsample((num_samples,))
    return (q.log_prob(z) - p.log_prob(z)).mean(0)
