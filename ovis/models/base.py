r"""The base classes of the models: :class:`TemplateModel` and :class:`SingleLayerModel`, and the
helpers :func:`batch_reduce` and :func:`require_hook`.

The model protocol itself (the keys and shapes of ``forward``'s output, ``zgrads``, ``particles``,
``infer``, the hooks of the REBAR line) is written once, in :mod:`ovis.models.protocol`, with the
check that the estimators run on a model's first call (:func:`check_model_output`, re-exported
here).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ovis.models.protocol import check_model_output

__all__ = ["TemplateModel", "SingleLayerModel", "batch_reduce", "require_hook", "check_model_output"]


def batch_reduce(t: Tensor) -> Tensor:
    r"""Sum every dimension but the first: ``[N, ...] -> [N]``."""
    return t.reshape(t.shape[0], -1).sum(1)


def require_hook(model: nn.Module, name: str, estimator: str) -> Any:
    r"""Return ``model.<name>``, or raise a ``TypeError`` naming the estimator and the hook."""
    hook = getattr(model, name, None)
    if hook is None or not callable(hook):
        raise TypeError(
            f"estimator {estimator!r} needs the model method {name}() "
            f"(see ovis.models.protocol); {type(model).__name__} has none"
        )
    return hook


class TemplateModel(nn.Module):
    r"""Base class of the models of the protocol (:mod:`ovis.models.protocol`).

    Subclasses define ``inference_network`` and ``generative_model`` submodules and implement
    :meth:`forward` and :meth:`sample_from_prior`; optionally ``infer(x, z)`` (a list of
    ``q(z_l|...)`` conditioned along the given latents), for the estimators that need it.
    """

    def forward(self, x: Tensor, zgrads: bool = False, **kwargs: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        raise NotImplementedError

    @property
    def x_shape(self) -> torch.Size:
        r"""The shape of one observation (used to build baselines)."""
        raise NotImplementedError

    def compile(self, *args: Any, **kwargs: Any) -> None:
        r"""``torch.compile`` the model's hot path in place: its ``forward``
        (:meth:`torch.nn.Module.compile`) and, for a model with ``fused_log_densities``, its
        ``particle_log_densities``, which the estimators call instead of ``forward`` (without it
        ``model.compile()`` would compile nothing they run).  Parameter names and so checkpoints
        are those of the eager model; ``args``/``kwargs`` go to ``torch.compile``.  ``run.py
        --compile`` compiles the whole estimation instead
        (:func:`ovis.estimators.base.compile_estimator`)."""
        super().compile(*args, **kwargs)
        if getattr(self, "fused_log_densities", False):
            # an instance attribute: it shadows the method for this model only
            self.particle_log_densities = torch.compile(self.particle_log_densities, *args, **kwargs)


class SingleLayerModel(TemplateModel):
    r"""A model with one stochastic layer, defined by three distributions.

    Subclasses implement ``posterior(x) -> q(z|x)``, ``prior(n) -> p(z)`` (batch ``n``) and
    ``observation_model(z) -> p(x|z)``; this class provides the protocol's :meth:`forward`
    (``rsample`` when ``zgrads``), :meth:`infer` and :meth:`sample_from_prior`.
    """

    def posterior(self, x: Tensor) -> Distribution:
        raise NotImplementedError

    def prior(self, n: int) -> Distribution:
        raise NotImplementedError

    def observation_model(self, z: Tensor) -> Distribution:
        raise NotImplementedError

    def forward(self, x: Tensor, zgrads: bool = False, **kwargs: Any) -> Dict[str, Any]:
        qz = self.posterior(x)
        z = qz.rsample() if zgrads else qz.sample()
        return {"px": self.observation_model(z), "z": [z], "qz": [qz], "pz": [self.prior(x.shape[0])]}

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Distribution]:
        return [self.posterior(x)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        pz = self.prior(bs)
        z = pz.sample()
        return {"px": self.observation_model(z), "z": [z], "pz": [pz]}
