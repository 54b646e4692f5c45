r"""The optimisers of ``run.py``: :func:`build_optimizer`.

Adam and SGD are torch's fused forms (``fused=True``: one kernel over all parameters, on the CPU
and on CUDA) where torch has a fused kernel for the parameters' device and dtype, the
per-parameter loop otherwise; the update rule is the same, the values differ only by rounding.
The optimiser state, and so the checkpoints, are those of ``torch.optim.Adam`` / ``SGD`` in
either form.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from ovis.training.arguments import OPTIMIZERS

__all__ = ["build_optimizer"]

def build_optimizer(name: str, groups: List[Dict[str, Any]], adam_beta2: float = 0.999) -> torch.optim.Optimizer:
    r"""The optimiser ``name`` (one of :data:`OPTIMIZERS`) over parameter ``groups``; ``adam_beta2``
    is Adam's (and Adamax's) second-moment decay (torch's default 0.999; the REBAR paper's code
    0.99999).

    Adam and SGD are ``torch.optim.Adam(fused=True)`` / ``torch.optim.SGD(fused=True)`` where torch
    has a fused kernel for the parameters' device and dtype, the per-parameter loop otherwise.  Same
    update rule; the values differ from the loop only by rounding.
    """
    classes = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop,
               "adamax": torch.optim.Adamax}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if not 0.0 <= adam_beta2 < 1.0:
        raise ValueError(f"adam_beta2 must lie in [0, 1), got {adam_beta2}")
    kwargs: Dict[str, Any] = {"betas": (0.9, float(adam_beta2))} if name in ("adam", "adamax") else {}
    try:
        if name == "adam":
            return torch.optim.Adam(groups, fused=True, **kwargs)
        if name == "sgd":
            return torch.optim.SGD(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device/dtype without a fused kernel
        pass
    return classes[name](groups, **kwargs)
