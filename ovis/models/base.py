r"""The model protocol shared by every estimator.

A model is a :class:`torch.nn.Module` with

* ``forward(x, zgrads=False, **kwargs) -> output``: encode ``x`` (shape ``[N, *x_shape]``),
  sample ``z ~ q(z|x)`` for each stochastic layer (``rsample`` when ``zgrads`` is true, else
  ``sample``), decode, and return the mapping
  ``{'px': p(x|z), 'z': [z_1..z_L], 'qz': [q(z_l|...)], 'pz': [p(z_l|...)]}``
  whose distributions are :mod:`torch.distributions` objects with batch shape starting with
  ``N`` (every other dimension is summed as part of the event);
* ``sample_from_prior(bs, **kwargs) -> {'px', 'z', 'pz'}``.

Parameters of the inference network live under a submodule named ``inference_network`` and those
of the generative model under ``generative_model``: gradient analysis (``--grad_key``) and the
estimators select parameters by these names.

Optional hooks, used by the estimators that need them (an estimator calls
:func:`require_hook`, which fails with a clear message when the model lacks one):

* ``infer(x, z) -> [q(z_l|...)]``: the inference distributions evaluated along *given* latents
  ``z`` (reweighted wake-sleep's sleep phase needs ``log q(z|x)`` on ``(z, x) ~ p``).

Estimators evaluate a model on ``B*M*K`` expanded copies of ``x`` (see
:mod:`ovis.estimators.base`): a model needs no knowledge of ``M`` or ``K``.  A model may set the
class attribute ``supports_particles = True`` and accept ``forward(x, particles=n)`` with the
un-expanded batch, returning ``B*n`` rows (row ``b*n + j`` for particle ``j`` of data point
``b``); it then evaluates its encoder once per data point, builds ``q(z|x)`` on its ``B*n``
repeated parameters (:func:`ovis.distributions.utils.repeat_rows` /
:func:`~ovis.distributions.utils.repeat_distribution`) and draws the particles from it.  The
output is that of ``forward`` on the repeated batch (``x`` with each row repeated ``n`` times)
with the same random draws, in distribution and, for the same generator state, in value.  Every
built-in model does (the SBN, :class:`SingleLayerModel` and its subclasses, the VAEs, the discrete
VAE).  :func:`uses_particles` decides: a subclass that overrides ``forward`` without an explicit
``particles`` parameter is given the repeated batch instead (as is a model, or an instance, with
``supports_particles = False``).

A model may also evaluate its own log-densities: with the class attribute
``fused_log_densities = True`` it provides ``particle_log_densities(x, particles=n, **kwargs) ->
(output, log_px [B*n], log_qz [B*n, L], log_pz [B*n, L])``, the output of ``forward(x, particles=n)``
and the values its distributions give at ``x`` (expanded) and ``output['z']``, computed in fewer
kernels (the SBN batches its ``2 L`` Bernoulli layers).  The estimators then use it for every
evaluation without reparameterised latents; a subclass that changes the distributions must set the
attribute back to ``False`` (the conditional SBN does).
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ovis.distributions.utils import repeat_distribution

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
            f"(see ovis.models.base.TemplateModel.{name}); {type(model).__name__} has none"
        )
    return hook


def check_model_output(output: Mapping[str, Any], with_q: bool = True) -> None:
    r"""Validate a model output mapping (keys, list lengths, distribution types)."""
    keys = ("px", "z", "qz", "pz") if with_q else ("px", "z", "pz")
    missing = [k for k in keys if k not in output]
    if missing:
        raise KeyError(
            f"the model output lacks {missing}: forward() must return a mapping with keys "
            f"{list(keys)} (see ovis.models.base.TemplateModel)"
        )
    if not isinstance(output["px"], Distribution):
        raise TypeError("output['px'] must be a torch.distributions.Distribution")
    lists = [output[k] for k in keys[1:]]
    if not all(isinstance(v, (list, tuple)) for v in lists):
        raise TypeError("output['z'], output['qz'] and output['pz'] must be lists (one item per layer)")
    if len({len(v) for v in lists}) != 1 or len(lists[0]) == 0:
        raise ValueError(
            "output['z'], output['qz'] and output['pz'] must have the same, non-zero length "
            f"(got {[len(v) for v in lists]})"
        )


class TemplateModel(nn.Module):
    r"""Base class documenting the model protocol (see the module docstring).

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
    (``rsample`` when ``zgrads``; ``particles``: ``q(z|x)`` encoded once per data point),
    :meth:`infer` and :meth:`sample_from_prior`.  ``q(z|x)`` must be a distribution that
    :func:`~ovis.distributions.utils.repeat_distribution` can repeat (or a subclass overriding
    :meth:`forward` without ``particles`` sets ``supports_particles = False``).
    """

    #: the estimators call ``forward(x, particles=n)`` with the un-expanded batch (module docstring)
    supports_particles = True

    def posterior(self, x: Tensor) -> Distribution:
        raise NotImplementedError

    def prior(self, n: int) -> Distribution:
        raise NotImplementedError

    def observation_model(self, z: Tensor) -> Distribution:
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
        return [self.posterior(x)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        pz = self.prior(bs)
        z = pz.sample()
        return {"px": self.observation_model(z), "z": [z], "pz": [pz]}
