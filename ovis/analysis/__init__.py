r"""Gradient analysis."""
from ovis.analysis.gradients import (
    get_gradients_statistics,
    gradient_samples,
    gradient_statistics,
    select_parameters,
)

__all__ = ["get_gradients_statistics", "gradient_samples", "gradient_statistics", "select_parameters"]
