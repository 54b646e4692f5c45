r"""ovis: gradient estimators for importance-weighted bounds, models, data and experiments.

Importing ``ovis`` has no side effects.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
