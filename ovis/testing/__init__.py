r"""Test harness reused by every estimator family: enumerable models, exact objectives, and the
statistical comparison of estimator draws with exact gradients, and a short training run
(:func:`elbo_gain`)."""
from ovis.testing.enumerable import (
    BernoulliToyModel,
    CategoricalToyModel,
    EnumerableModel,
    LinearGaussianModel,
    exact_bound,
    exact_elbo,
    exact_tvo_integral,
    exact_weighted_score,
    exact_gradients,
    exact_log_evidence,
    exact_gradient_problem,
)
from ovis.testing.stats import (
    Comparison,
    VarianceComparison,
    compare_variances,
    compare_with_exact,
    gradient_draws,
    total_variance,
    z_threshold,
)
from ovis.testing.training import elbo_gain

__all__ = [
    "BernoulliToyModel",
    "CategoricalToyModel",
    "EnumerableModel",
    "LinearGaussianModel",
    "exact_bound",
    "exact_elbo",
    "exact_tvo_integral",
    "exact_weighted_score",
    "exact_gradients",
    "exact_log_evidence",
    "exact_gradient_problem",
    "Comparison",
    "compare_with_exact",
    "gradient_draws",
    "z_threshold",
    "total_variance",
    "VarianceComparison",
    "compare_variances",
    "elbo_gain",
]
