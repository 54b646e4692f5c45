r"""The base classes of the models: :class:`TemplateModel` and :class:`SingleLayerModel`, and the
helpers :func:`batch_reduce` and :func:`require_hook`.

The model protocol itself (the keys and shapes of ``forward``'s output, ``zgrads``, ``particles``,
``infer``, the hooks of the REBAR line) is written once, in :mod:`ovis.models.protocol`, with the
check that the estimators run on a model's first call (:func:`check_model_output`, re-exported
here).
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ovis.distributions.utils import repeat_distribution
from ovis.models.protocol import check_model_output

__all__ = ["TemplateModel", "SingleLayerModel", "batch_reduce", "require_hook", "check_model_output",
           "uses_particles"]

_FORWARD_TAKES_PARTICLES: Dict[type, bool] = {}


def uses_particles(model: nn.Module) -> bool:
    r"""Whether the estimators call ``model(x, particles=n)`` with the un-expanded batch (the
    particles protocol, module docstring): ``model.supports_particles`` is true (a class or an
    instance attribute) and the class's ``forward`` has an explicit ``particles`` parameter (a
    subclass overriding ``forward`` without it is given the repeated batch; checked once per class).
    """
    if not getattr(model, "supports_particles", False):
        return False
    cls = type(model)
    takes = _FORWARD_TAKES_PARTICLES.get(cls)
    if takes is None:
        try:
            takes = "particles" in inspect.signature(cls.forward).parameters
        except (TypeError, ValueError):
            takes = False
        _FORWARD_TAKES_PARTICLES[cls] = takes
    return takes


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

    **Particles.**  A subclass that sets ``supports_particles = True`` implements
    ``forward(x, zgrads=False, particles=1, **kwargs)``: ``x`` is the un-expanded batch ``[B,
    *x_shape]`` and the output has ``B * particles`` rows, row ``b * particles + j`` particle ``j``
    of data point ``b``, drawn from ``q(z|x)`` evaluated once per data point and repeated
    (:func:`~ovis.distributions.utils.repeat_rows` /
    :func:`~ovis.distributions.utils.repeat_distribution`): the output of ``forward`` on ``x``
    repeated ``particles`` times, on the same random draws (module docstring, :func:`uses_particles`).
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
    (``rsample`` when ``zgrads``; ``particles``: ``q(z|x)`` encoded once per data point),
    :meth:`infer` and :meth:`sample_from_prior`.  ``q(z|x)`` must be a distribution that
    :func:`~ovis.distributions.utils.repeat_distribution` can repeat (or a subclass overriding
    :meth:`forward` without ``particles`` sets ``supports_particles = False``).
    """

    #: the estimators call ``forward(x, particles=n)`` with the un-expanded batch (module docstring)
    supports_particles = True

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

    def forward(self, x: Tensor, zgrads: bool = False, particles: int = 1, **kwargs: Any) -> Dict[str, Any]:
        r"""Encode ``x`` ``[B, *x_shape]`` once, repeat ``q(z|x)`` to ``B * particles`` rows (row
        ``b * particles + j`` is particle ``j`` of data point ``b``), draw ``z`` from it (``rsample``
        when ``zgrads``) and decode: the protocol's output mapping on ``B * particles`` rows, equal
        to ``forward`` of ``x`` repeated ``particles`` times on the same random draws."""
        qz = repeat_distribution(self.posterior(x), particles)
        z = qz.rsample() if zgrads else qz.sample()
        return {"px": self.observation_model(z), "z": [z], "qz": [qz],
                "pz": [self.prior(x.shape[0] * particles)]}

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Distribution]:
        r"""``[q(z|x)]``: the posterior does not depend on ``z`` for a single layer (``z`` is ignored)."""
        return [self.posterior(x)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        r"""``z ~ prior(bs)``; returns ``{'px': observation_model(z), 'z': [z], 'pz': [prior]}``."""
        pz = self.prior(bs)
        z = pz.sample()
        return {"px": self.observation_model(z), "z": [z], "pz": [pz]}
