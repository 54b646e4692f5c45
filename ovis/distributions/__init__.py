r"""Distributions and distribution helpers."""
from ovis.distributions.utils import detach_distribution

__all__ = ["detach_distribution"]
