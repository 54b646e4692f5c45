r"""Gradient estimators of importance-weighted bounds, behind one API.

>>> from ovis.estimators.config import parse_estimator_id
>>> Estimator, config = parse_estimator_id("ovis-gamma1")
>>> estimator = Estimator(mc=1, iw=16, **config)
"""
from ovis.estimators.base import GradientEstimator, Particles, RuntimeParams
from ovis.estimators.config import REGISTRY, parse_estimator_id, valid_forms

__all__ = [
    "GradientEstimator",
    "Particles",
    "RuntimeParams",
    "REGISTRY",
    "parse_estimator_id",
    "valid_forms",
    "build_estimator",
]


def build_estimator(estimator_id: str, mc: int = 1, iw: int = 1, **overrides):  # type: ignore[no-untyped-def]
    r"""Parse ``estimator_id`` and build the estimator with ``mc``, ``iw`` (and any extra
    constructor arguments, e.g. ``x_shape`` for ``reinforce-baseline``)."""
    cls, config = parse_estimator_id(estimator_id)
    config.update(overrides)
    return cls(mc=mc, iw=iw, **config)
