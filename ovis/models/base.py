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
        r"""Encode ``x``, sample the latents of every stochastic layer and decode (the model protocol).

        Args:
            x: observations ``[N, *x_shape]`` (for the estimators, ``N = B*M*K`` expanded copies; a
                model with ``supports_particles = True`` also accepts ``particles=n`` and the un-expanded
                batch, returning ``B*n`` rows).
            zgrads: draw ``z ~ q(z|x)`` with ``rsample`` (reparameterised) instead of ``sample``.
            **kwargs: model-specific options (e.g. ``tau``, the relaxation temperature).

        Returns:
            ``{'px': p(x|z), 'z': [z_1..z_L], 'qz': [q(z_l|...)], 'pz': [p(z_l|...)]}``: distributions
            with batch shape starting with ``N``, one list item per stochastic layer.

        Raises:
            NotImplementedError: in the base class, or (some models) ``zgrads=True`` without ``rsample``.
        """
        raise NotImplementedError

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        r"""Draw ``bs`` samples from the generative model: ``z ~ p(z)`` layer by layer, then ``p(x|z)``.

        Args:
            bs: the number of samples ``N``.
            **kwargs: model-specific options.

        Returns:
            ``{'px': p(x|z), 'z': [z_1..z_L], 'pz': [p(z_l|...)]}`` with batch shape ``[bs]``.

        Raises:
            NotImplementedError: in the base class.
        """
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
        r"""The inference distribution ``q(z|x)`` for ``x`` ``[n, *x_shape]``, batch shape ``[n]``
        (every subclass implements it).
        """
        raise NotImplementedError

    def prior(self, n: int) -> Distribution:
        r"""The prior ``p(z)`` with batch shape ``[n]`` (every subclass implements it)."""
        raise NotImplementedError

    def observation_model(self, z: Tensor) -> Distribution:
        r"""The likelihood ``p(x|z)`` for latents ``z`` ``[n, ...]``, batch shape ``[n]`` (every subclass
        implements it).
        """
        raise NotImplementedError

    def forward(self, x: Tensor, zgrads: bool = False, **kwargs: Any) -> Dict[str, Any]:
        r"""``z ~ posterior(x)`` (``rsample`` when ``zgrads``), then the protocol's mapping
        ``{'px', 'z', 'qz', 'pz'}`` with one layer (see :meth:`TemplateModel.forward`).
        """
        qz = self.posterior(x)
        z = qz.rsample() if zgrads else qz.sample()
        return {"px": self.observation_model(z), "z": [z], "qz": [qz], "pz": [self.prior(x.shape[0])]}

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Distribution]:
        r"""``[q(z|x)]``: the posterior does not depend on ``z`` for a single layer (``z`` is ignored)."""
        return [self.posterior(x)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        r"""``z ~ prior(bs)``; returns ``{'px': observation_model(z), 'z': [z], 'pz': [prior]}``."""
        pz = self.prior(bs)
        z = pz.sample()
        return {"px": self.observation_model(z), "z": [z], "pz": [pz]}
