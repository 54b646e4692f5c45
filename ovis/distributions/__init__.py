r"""Distributions and distribution helpers.

* :class:`BernoulliLogits`: independent Bernoullis with a direct log mass, the SBNs' hot path
  (``ovis.distributions.bernoulli``);
* :class:`OneHotCategoricalCDF` and :func:`categorical_indices`: categorical draws by the inverse
  CDF (``ovis.distributions.categorical``);
* :func:`detach_distribution`, :func:`repeat_rows` and :func:`repeat_distribution` (the particles
  expansion of the model protocol) (``ovis.distributions.utils``);
* the IGR family (Potapczynski et al. 2020) :class:`IGRI`, :class:`IGRPlanar`, :class:`IGRSB`
  with closed-form KLs registered with :mod:`torch.distributions.kl` (``ovis.distributions.igr``);
* :func:`sigmoid_softplus_normal`: the per-pixel Gaussian of grey levels, mean ``sigmoid(a)``, std
  ``1e-6 + softplus(b)`` (``ovis.distributions.gaussian``);
* the Gumbel-Softmax baseline :class:`GumbelSoftmax` and its Monte Carlo KL
  :func:`gumbel_softmax_kl` (``ovis.distributions.gumbel``).
"""
from ovis.distributions.bernoulli import BernoulliLogits, bernoulli_log_mass
from ovis.distributions.categorical import OneHotCategoricalCDF, categorical_indices
from ovis.distributions.gaussian import sigmoid_softplus_normal
from ovis.distributions.gumbel import GumbelSoftmax, gumbel_softmax_kl
from ovis.distributions.igr import IGRI, IGRSB, IGRBase, IGRPlanar, softmax_pp, softmax_pp_inverse
from ovis.distributions.utils import detach_distribution, repeat_distribution, repeat_rows

__all__ = [
    "BernoulliLogits",
    "bernoulli_log_mass",
    "OneHotCategoricalCDF",
    "categorical_indices",
    "detach_distribution",
    "repeat_rows",
    "repeat_distribution",
    "IGRBase",
    "IGRI",
    "IGRPlanar",
    "IGRSB",
    "softmax_pp",
    "softmax_pp_inverse",
    "GumbelSoftmax",
    "gumbel_softmax_kl",
    "sigmoid_softplus_normal",
]
