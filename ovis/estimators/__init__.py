r"""Gradient estimators of importance-weighted bounds, behind one API.

>>> from ovis.estimators.config import parse_estimator_id
>>> Estimator, config = parse_estimator_id("ovis-gamma1")
>>> estimator = Estimator(mc=1, iw=16, **config)
"""
import inspect
from typing import Any, Optional, Sequence

from ovis.estimators.base import EstimatorArgumentError, GradientEstimator, Particles, RuntimeParams
from ovis.estimators.config import REGISTRY, parse_estimator_id, suggest_estimator_ids, valid_forms
from ovis.models.protocol import ModelProtocolError, set_model_checks

__all__ = [
    "GradientEstimator",
    "Particles",
    "RuntimeParams",
    "REGISTRY",
    "parse_estimator_id",
    "valid_forms",
    "suggest_estimator_ids",
    "build_estimator",
    "EstimatorArgumentError",
    "ModelProtocolError",
    "set_model_checks",
]


def build_estimator(estimator_id: str, mc: int = 1, iw: int = 1, x_shape: Optional[Sequence[int]] = None,
                    **overrides: Any) -> GradientEstimator:
    r"""Parse ``estimator_id`` and build the estimator with ``mc``, ``iw`` and any extra constructor
    arguments.  ``x_shape`` (the data's shape, for the estimators with a baseline network on ``x``,
    e.g. ``reinforce-baseline``, ``nvil``) is passed only to a constructor that takes it, so callers
    may give it for every id.

    Raises:
        ValueError: an unknown id (with the nearest valid ones and the grammar), or arguments the
            estimator refuses (:class:`EstimatorArgumentError`, naming ``iw=...``).
        TypeError: an unknown constructor argument in ``overrides``.
    """
    cls, config = parse_estimator_id(estimator_id)
    config.update(overrides)
    if x_shape is not None and "x_shape" in inspect.signature(cls.__init__).parameters:
        config["x_shape"] = tuple(x_shape)
    return cls(mc=mc, iw=iw, **config)
