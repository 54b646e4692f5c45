r"""The estimator base class: particle evaluation, runtime parameters, diagnostics.

Every estimator is called as::

    loss, diagnostics, output = estimator(model, x, backward=False, alpha=0.0, beta=1.0)

* ``x``: a batch ``[B, *x_shape]``; the model is evaluated on ``B*M*K`` expanded copies of it
  (or, for a model with ``supports_particles = True``, called as ``model(x, particles=M*K)``
  and trusted to return the same ``B*M*K`` rows, ordered ``b, m, k``, without redundant work).
* ``loss``: a scalar surrogate, minimised; its gradient is minus the estimate of the bound's
  gradient (plus the gradients of auxiliary objectives for their own parameters).  It is
  averaged over ``B`` and ``M``.
* ``diagnostics``: ``{'loss': {'L_k', 'elbo', 'kl', 'ess', ...}, '<family>': {...}}``, detached
  tensors of shape ``[B]`` (averaged over the outer samples ``M``).
* ``output``: the model's output mapping (on the ``B*M*K`` particles).

The model protocol, and the check of a model's output on an estimator's first call, are those of
:mod:`ovis.models.protocol`; ``help(GradientEstimator.forward)`` documents the call.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from ovis.distributions.utils import detach_distribution, repeated_log_prob
from ovis.estimators.importance import effective_sample_size, iw_bound, log_weights, normalized_weights, renyi_bound
from ovis.models.base import batch_reduce, uses_particles
from ovis.models.protocol import (
    ModelCheckMemo,
    ModelProtocolError,
    check_latent_gradients,
    check_model_output,
    describe_rows,
    explain_input_failure,
    model_checks_enabled,
)

__all__ = ["RuntimeParams", "Particles", "GradientEstimator", "Diagnostics", "compile_estimator",
           "set_distribution_validation", "distribution_validation", "EstimatorArgumentError"]

Diagnostics = Dict[str, Dict[str, Tensor]]

# Argument validation of torch.distributions (support checks of every ``log_prob`` value, parameter
# constraints) costs a third of a score-function step on small models.  The estimators switch it
# off around the model's evaluation by default (the values they pass are the model's own samples);
# ``set_distribution_validation(True)`` keeps torch's default (validation on) for debugging a model.
_VALIDATE_DISTRIBUTIONS = False


def set_distribution_validation(enabled: bool) -> None:
    r"""Validate distribution arguments inside the estimators (default: off, for speed)."""
    global _VALIDATE_DISTRIBUTIONS
    _VALIDATE_DISTRIBUTIONS = bool(enabled)


class distribution_validation:
    r"""Temporarily set torch.distributions' default ``validate_args`` (restored on exit).

    A plain context manager class (not a generator): entered at every estimator call, it only
    touches torch's setting when it differs."""

    __slots__ = ("enabled", "old")

    def __init__(self, enabled: bool) -> None:
        self.enabled = bool(enabled)
        self.old = self.enabled

    def __enter__(self) -> None:
        self.old = torch.distributions.Distribution._validate_args
        if self.old != self.enabled:
            torch.distributions.Distribution.set_default_validate_args(self.enabled)

    def __exit__(self, *exc: Any) -> None:
        if torch.distributions.Distribution._validate_args != self.old:
            torch.distributions.Distribution.set_default_validate_args(self.old)


@dataclass(frozen=True)
class RuntimeParams:
    r"""Parameters that may change at every call (schedules).

    Attributes:
        alpha: Renyi parameter in ``[0, 1)`` (``0``: the IW bound).
        beta: KL weight ``>= 0``.
        freebits: free bits per layer (``None``: off), ``>= 0``.
        tau: relaxation temperature ``> 0`` (passed to the model as ``tau=`` when set).
    """

    alpha: float = 0.0
    beta: float = 1.0
    freebits: Optional[float] = None
    tau: Optional[float] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha < 1.0):
            raise ValueError(f"runtime parameter alpha must lie in [0, 1), got {self.alpha!r}")
        if not (isinstance(self.beta, (int, float)) and self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"runtime parameter beta must be a finite number >= 0, got {self.beta!r}")
        if self.freebits is not None and not (
            isinstance(self.freebits, (int, float)) and self.freebits >= 0
        ):
            raise ValueError(f"runtime parameter freebits must be None or >= 0, got {self.freebits!r}")
        if self.tau is not None and not (isinstance(self.tau, (int, float)) and self.tau > 0):
            raise ValueError(f"runtime parameter tau must be None or > 0, got {self.tau!r}")

    @classmethod
    def from_kwargs(cls, estimator: str, kwargs: Mapping[str, Any]) -> "RuntimeParams":
        r"""Validated parameters from keyword arguments (tensors are read as floats).  The last
        few distinct sets of plain numbers are cached: every training step passes the same ones."""
        key = tuple(kwargs.items())
        if all(v is None or type(v) in (int, float) for _, v in key):
            hit = _RUNTIME_CACHE.get(key)
            if hit is not None:
                return hit
        else:
            key = None  # type: ignore[assignment]
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(
                f"{estimator}: unknown runtime parameter(s) {unknown}; valid names are {valid}"
            )
        params = cls(**{k: (float(v) if isinstance(v, Tensor) else v) for k, v in kwargs.items()})
        if key is not None:
            if len(_RUNTIME_CACHE) >= 64:
                _RUNTIME_CACHE.clear()
            _RUNTIME_CACHE[key] = params
        return params


_RUNTIME_CACHE: Dict[tuple, RuntimeParams] = {}


class EstimatorArgumentError(ValueError):
    r"""An estimator argument refused by :meth:`GradientEstimator.check_arguments` (e.g. VIMCO with
    ``iw=1``), whose fix names an argument: the message names it as the Python API spells it
    (``use iw=2 or more``), :meth:`for_command_line` as ``run.py``'s flag (``use --iw 2 or more``).

    Args:
        template: the message, with a ``{field}`` for each argument named (other braces doubled).
        **arguments: ``field=(argument name, value)``, e.g. ``fix=("iw", 2)``.
    """

    def __init__(self, template: str, **arguments: Tuple[str, Any]) -> None:
        self.template = template
        self.arguments = arguments
        super().__init__(self.render())

    def render(self, command_line: bool = False) -> str:
        r"""The message with each argument as ``name=value`` (Python) or ``--name value``
        (``command_line``)."""
        if not self.arguments:
            return self.template
        def spell(name: str, value: Any) -> str:
            return f"--{name} {value}" if command_line else f"{name}={value!r}"
        return self.template.format(**{k: spell(*v) for k, v in self.arguments.items()})

    def for_command_line(self) -> str:
        r"""The message with ``run.py``'s flag names (``--iw 2``)."""
        return self.render(command_line=True)


def command_line_message(error: BaseException) -> str:
    r"""``error``'s message as a command line shows it: an :class:`EstimatorArgumentError` names the
    flags (``--iw 2``), any other error keeps its text."""
    return error.for_command_line() if isinstance(error, EstimatorArgumentError) else str(error)


def _spent_loss_hook(grad: Tensor) -> Tensor:
    raise RuntimeError(
        "this loss was returned by estimator(model, x, backward=True), which already ran its backward "
        "pass (the gradients are in the parameters' .grad); call loss.backward() only after "
        "estimator(model, x, backward=False), or drop the second backward")


def _spent(loss: Tensor) -> Tensor:
    r"""``loss`` after its backward pass: a detached leaf whose ``.backward()`` raises a clear error
    (instead of autograd's "Trying to backward through the graph a second time")."""
    out = loss.detach().requires_grad_()
    # what Tensor.register_hook stores, without its handle (a sixth of the cost: about 3 us a step);
    # tests/test_model_protocol.py checks that the hook fires
    out._backward_hooks = {0: _spent_loss_hook}
    return out


@dataclass
class Particles:
    r"""The model evaluated on ``B*M*K`` particles.

    Attributes:
        output: the model's output mapping.
        log_px: ``log p(x|z_k)``, ``[B, M, K]``.
        log_qz: ``log q(z_{l,k}|...)``, ``[B, M, K, L]`` (``q``'s parameters attached).
        log_pz: ``log p(z_{l,k}|...)``, ``[B, M, K, L]``.
    """

    output: Dict[str, Any]
    log_px: Tensor
    log_qz: Tensor
    log_pz: Tensor

    @property
    def shape(self) -> Tuple[int, int, int]:
        r"""``(B, M, K)``: batch size, outer samples and particles, read from ``log_px``."""
        B, M, K = self.log_px.shape
        return B, M, K


def compile_estimator(estimator: "GradientEstimator", model: nn.Module, **compile_kwargs: Any
                      ) -> Callable[..., Tuple[Tensor, Diagnostics, Dict[str, Any]]]:
    r"""``torch.compile`` of one estimation: ``call(x, **runtime) -> (loss, diagnostics, output)``,
    ``estimator(model, x, **runtime)`` without the backward, which the caller runs
    (``loss.backward()`` goes through the compiled backward graph); ``run.py --compile``.

    The model's pass, the estimator's maths and the surrogate are traced as one graph (the SBN
    with a score-function estimator has no graph break), which inductor fuses into a few loops
    (``benchmarks/bench_step.py --only compile`` compares it with eager).  The SBN draws its
    samples from inductor's generator inside the graph (the same law as the eager draws,
    :func:`~ovis.distributions.bernoulli.random_bits24`).  A new batch shape, a new estimator or a
    runtime number that changes a branch (e.g. ``alpha`` leaving 0) compiles again.  The model's
    output is checked against the protocol before the first compiled call
    (:meth:`GradientEstimator.check_model`), not inside the graph.
    """
    def call(x: Tensor, **runtime: Any) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        return estimator(model, x, backward=False, **runtime)

    compiled = torch.compile(call, **compile_kwargs)
    first = [True]

    def checked_call(x: Tensor, **runtime: Any) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        if first[0]:  # the protocol check cannot run inside the graph: once, eagerly, draws unchanged
            estimator.check_model(model, x, **runtime)
            first[0] = False
        return compiled(x, **runtime)

    return checked_call


class GradientEstimator(nn.Module):
    r"""Base class of every gradient estimator.

    Called as ``loss, diagnostics, output = estimator(model, x, backward=False, **runtime)``
    (:meth:`forward` documents the arguments, ``backward=True`` and the returned values); the model
    follows the protocol of :mod:`ovis.models.protocol`, checked on the first call.

    Subclasses implement :meth:`compute`.  Constructor arguments are explicit and validated
    (:meth:`check_arguments`); runtime parameters (:class:`RuntimeParams`) are validated at every
    call, and an unknown name is an error.

    Args:
        mc: number of outer Monte Carlo samples ``M >= 1``.
        iw: number of importance samples (particles) ``K >= 1``.
    """

    #: the identifier family (for error messages and diagnostics)
    family: ClassVar[str] = "base"
    #: whether the estimator needs reparameterised samples (``model(x, zgrads=True)``)
    reparameterised: ClassVar[bool] = False
    #: whether Renyi ``alpha > 0`` is supported
    supports_alpha: ClassVar[bool] = True
    #: the smallest K the estimator accepts
    min_iw: ClassVar[int] = 1
    #: why, and what to use instead (appended to the error for ``iw < min_iw``; ``{fix}`` is
    #: ``iw=<min_iw>``, or ``--iw <min_iw>`` on the command line: :class:`EstimatorArgumentError`)
    min_iw_hint: ClassVar[str] = ""

    def __init__(self, mc: int = 1, iw: int = 1) -> None:
        super().__init__()
        self._check_mc_iw(mc, iw)
        self.mc = mc
        self.iw = iw

    @classmethod
    def check_arguments(cls, mc: int = 1, iw: int = 1, **config: Any) -> None:
        r"""Check ``mc`` / ``iw`` (and, in subclasses, the id's ``config``) before building.

        The one source of truth for an estimator's constraints on its arguments: the
        constructor calls it, and ``run.py`` / the experiment manager call it at parse time, so
        that an impossible combination (e.g. VIMCO with ``K = 1``) is refused before anything is
        written.  ``config`` is what :func:`ovis.estimators.config.parse_estimator_id` returns for
        the id (ignored here, checked by subclasses that depend on it).

        Raises:
            EstimatorArgumentError: (a ``ValueError``) one line naming the argument, the constraint
                and the fix, as the Python API spells it (``use iw=2 or more``); ``run.py`` shows
                :meth:`EstimatorArgumentError.for_command_line` (``use --iw 2 or more``).
        """
        cls._check_mc_iw(mc, iw)

    @classmethod
    def _check_mc_iw(cls, mc: int, iw: int) -> None:
        for name, v in (("mc", mc), ("iw", iw)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EstimatorArgumentError(f"{cls.family}: {name} must be an integer >= 1, got {{got}}",
                                             got=(name, v))
        if iw < cls.min_iw:
            raise EstimatorArgumentError(f"{cls.family} needs iw (K) >= {cls.min_iw}, got {{got}}"
                                         + (cls.min_iw_hint or "; use {fix} or more"),
                                         got=("iw", iw), fix=("iw", cls.min_iw))

    def extra_repr(self) -> str:
        r"""The constructor arguments shown by ``repr(estimator)`` (``mc=..., iw=...``)."""
        return f"mc={self.mc}, iw={self.iw}"

    # ------------------------------------------------------------------ calling
    def forward(
        self, model: nn.Module, x: Tensor, backward: bool = False, **runtime: Any
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""Estimate the gradient of the bound on the batch ``x``: ``estimator(model, x, ...)``.

        Args:
            model: a model of the protocol of :mod:`ovis.models.protocol`.  On the first call of
                this estimator on ``model`` its output is checked (keys, types, shapes, and that
                ``forward`` honours ``zgrads``): a break raises
                :class:`~ovis.models.protocol.ModelProtocolError`, one line naming the output key
                and the fix; later calls cost nothing (:func:`~ovis.models.protocol.set_model_checks`
                switches the check off).
            x: a batch ``[B, *x_shape]``, in the dtype and on the device of the model's parameters;
                the model is evaluated on ``B*M*K`` particles (``M = mc``, ``K = iw``).
            backward: run the backward pass here.  ``True``: ``loss.backward()`` is called, the
                gradients are accumulated into the ``.grad`` of the parameters (the model's, and the
                estimator's own, e.g. a baseline network's: give both to the optimiser), and the
                returned ``loss`` is detached, its graph spent: calling ``loss.backward()`` on it
                raises a ``RuntimeError`` saying so.  ``False`` (default): nothing is differentiated;
                call ``loss.backward()`` (or ``torch.autograd.grad(loss, params)``) yourself.
            **runtime: the runtime parameters of :class:`RuntimeParams`, which may change at every
                call: ``alpha`` (Renyi, in ``[0, 1)``; default 0, the IW bound), ``beta`` (KL weight,
                default 1), ``freebits`` (default ``None``), ``tau`` (relaxation temperature, passed
                to the model as ``tau=``); any other name is a ``TypeError``.

        Returns:
            ``(loss, diagnostics, output)``: ``loss`` a scalar surrogate, minimised, whose gradient
            is minus the estimate of the bound's gradient (averaged over ``B`` and ``M``);
            ``diagnostics`` detached ``[B]`` tensors, ``{'loss': {'L_k', 'elbo', 'kl', 'log_px',
            'ess'}, 'estimator': {...}}``; ``output`` the model's output mapping on the particles.

        Raises:
            TypeError: an unknown runtime parameter; a model without a hook the estimator needs
                (e.g. ``rsample`` for a pathwise estimator, ``infer`` for ``wake-sleep``).
            ValueError: a runtime parameter out of range or unsupported (``alpha > 0`` where the
                estimator has no Renyi form); ``x`` not a batch.
            ModelProtocolError: the model's output breaks the protocol (first call), or the model
                failed on an ``x`` whose dtype or device is not that of its parameters.
        """
        params = RuntimeParams.from_kwargs(self.family, runtime)
        if params.alpha > 0 and not self.supports_alpha:
            raise ValueError(f"{self.family} does not support alpha != 0 (got alpha={params.alpha})")
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"x must be a batch tensor [B, *x_shape], got {getattr(x, 'shape', x)!r}")
        with distribution_validation(_VALIDATE_DISTRIBUTIONS):
            try:
                loss, diagnostics, output = self.compute(model, x, params)
            except ModelProtocolError:
                raise
            except Exception as e:  # the model's own code failed: explain an x of the wrong dtype / device
                if model_checks_enabled():
                    explain_input_failure(model, x, e, f"{self.family}: {type(model).__name__}")
                raise
        if loss.dim() != 0:
            raise RuntimeError(f"{self.family}: the surrogate loss must be a scalar")
        if backward:
            loss.backward()
            loss = _spent(loss)
        return loss, diagnostics, output

    def check_model(self, model: nn.Module, x: Tensor, **runtime: Any) -> None:
        r"""Check ``model``'s output against the protocol now, as the first call of this estimator
        would (:meth:`evaluate` on the first data point of ``x``, the random number generators'
        state restored afterwards, so that the next draws are unchanged); :func:`compile_estimator`
        calls it before the first compiled call, inside which the check cannot run.  A no-op for the
        estimators that do not call ``forward`` (the REBAR line, ``hybrid-mixture``), or when the
        checks are off.

        Raises:
            ModelProtocolError: as :meth:`forward`.
        """
        if not model_checks_enabled() or type(self).evaluate is not GradientEstimator.evaluate:
            return
        params = RuntimeParams.from_kwargs(self.family, runtime)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                self.evaluate(model, x[:1], params, K=min(self.iw, 2))
            except ModelProtocolError:
                raise
            except Exception as e:
                explain_input_failure(model, x, e, f"{self.family}: {type(model).__name__}")
                raise

    def compute(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Tensor, Diagnostics, Dict[str, Any]]:
        r"""The estimation proper, called by :meth:`forward` with validated runtime parameters (every
        subclass implements it).

        Args:
            model: the model.
            x: a batch ``[B, *x_shape]``.
            params: the validated runtime parameters.

        Returns:
            ``(loss, diagnostics, output)`` as :meth:`forward` returns them; ``loss`` is a scalar,
            averaged over ``B`` and ``M``.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def expand(x: Tensor, M: int, K: int) -> Tensor:
        r"""``[B, *x_shape] -> [B*M*K, *x_shape]`` (index order ``b, m, k``)."""
        B = x.shape[0]
        return x[:, None, None].expand(B, M, K, *x.shape[1:]).reshape(B * M * K, *x.shape[1:])

    def evaluate(
        self,
        model: nn.Module,
        x: Tensor,
        params: RuntimeParams,
        K: Optional[int] = None,
        zgrads: Optional[bool] = None,
        detach_qz_params: bool = False,
    ) -> Particles:
        r"""Run the model on ``B*M*K`` copies of ``x`` and gather the log-densities.

        ``detach_qz_params``: evaluate ``log q(z|x)`` with ``q``'s parameters detached
        (a function of ``z`` only), as STL and DReG require.

        The model's output is checked against the protocol (:mod:`ovis.models.protocol`) on the
        first call of this estimator on ``model`` in each call form (``zgrads``; expanded ``x``,
        ``particles=`` or ``particle_log_densities``; gradients recorded or not).

        Raises:
            ModelProtocolError: the output breaks the protocol (first call of a form).
            TypeError: ``zgrads`` and a ``q(z_l|...)`` without ``rsample``.
        """
        B, M = x.shape[0], self.mc
        K = self.iw if K is None else K
        zgrads = self.reparameterised if zgrads is None else zgrads
        kwargs = {} if params.tau is None else {"tau": params.tau}
        # the same distribution validation as in forward(), also when evaluate() is called directly
        # (the chunked evaluation; on a GPU each support check would stop the host): a distribution
        # built without validate_args reads torch's default when log_prob runs
        with distribution_validation(_VALIDATE_DISTRIBUTIONS):
            fused = not zgrads and not detach_qz_params and getattr(model, "fused_log_densities", False)
            particles = not fused and uses_particles(model)
            # the protocol check, once per (estimator, model, call form); not inside torch.compile
            # (compile_estimator checks eagerly first): later calls cost one look-up
            form = ("fused" if fused else "particles" if particles else "expanded", zgrads, torch.is_grad_enabled())
            check = not torch.compiler.is_compiling() and self._model_checks.needed(model, form)
            if fused:
                # the model evaluates its own log-densities in one pass (ovis.models.protocol)
                output, log_px, log_qz, log_pz = model.particle_log_densities(x, particles=M * K, **kwargs)
                if check:
                    self._check_output(model, output, x, (B, M, K), zgrads, form,
                                       f"particle_log_densities(x, particles={M * K})", (log_px, log_qz, log_pz))
                return Particles(output=output, log_px=log_px.view(B, M, K), log_qz=log_qz.view(B, M, K, -1),
                                 log_pz=log_pz.view(B, M, K, -1))
            x_exp = None if particles else self.expand(x, M, K)
            try:
                if particles:  # the model encodes x once and repeats q(z|x) itself
                    output = model(x, zgrads=zgrads, particles=M * K, **kwargs)
                else:
                    output = model(x_exp, zgrads=zgrads, **kwargs)
            except NotImplementedError as e:
                if zgrads:
                    raise TypeError(self._rsample_hint()) from e
                raise
            if check:
                call = (f"forward(x, zgrads={zgrads}, particles={M * K})" if particles
                        else f"forward(x, zgrads={zgrads})")
                self._check_output(model, output, x, (B, M, K), zgrads, form, call)
            elif zgrads and any(not q.has_rsample for q in output["qz"]):
                raise TypeError(f"{self._rsample_hint()} ({[type(q).__name__ for q in output['qz']]})")
            qz = output["qz"]
            if detach_qz_params:
                qz = [detach_distribution(q) for q in qz]
            if x_exp is None:  # log p(x_b | z_{b,j}) without the [B*M*K, *x_shape] copy of x
                log_px = batch_reduce(repeated_log_prob(output["px"], x, M * K)).view(B, M, K)
            else:
                log_px = batch_reduce(output["px"].log_prob(x_exp)).view(B, M, K)
            log_qz = torch.stack(
                [batch_reduce(q.log_prob(z)) for q, z in zip(qz, output["z"])], dim=-1
            ).view(B, M, K, -1)
            log_pz = torch.stack(
                [batch_reduce(p.log_prob(z)) for p, z in zip(output["pz"], output["z"])], dim=-1
            ).view(B, M, K, -1)
            return Particles(output=output, log_px=log_px, log_qz=log_qz, log_pz=log_pz)

    # ------------------------------------------------------------------ the protocol check
    @property
    def _model_checks(self) -> ModelCheckMemo:
        r"""The (model, call form) pairs this estimator has checked (:mod:`ovis.models.protocol`)."""
        memo = self.__dict__.get("_model_check_memo")
        if memo is None:
            memo = self.__dict__["_model_check_memo"] = ModelCheckMemo()
        return memo

    def _rsample_hint(self) -> str:
        return (f"{self.family} needs reparameterised latents (rsample), but the model's q(z|x) has none: use a "
                "score-function estimator (e.g. reinforce, vimco-arithmetic, ovis-gamma1)")

    def _check_output(self, model: nn.Module, output: Any, x: Tensor, shape: Tuple[int, int, int], zgrads: bool,
                      form: Tuple[Any, ...], call: str, fused: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> None:
        r"""The first-call check of :meth:`evaluate` (:mod:`ovis.models.protocol`): the output's keys,
        types and shapes (``B*M*K`` rows; ``px`` of ``x``'s shape), the fused log-densities' shapes,
        ``rsample`` under ``zgrads``, and the latents' gradient paths; then ``form`` is recorded as
        checked for ``model``."""
        B, M, K = shape
        n = B * M * K
        source = f"{self.family}: {type(model).__name__}.{call}"
        check_model_output(output, rows=n, x_shape=tuple(x.shape[1:]), rows_note=describe_rows(B, M, K),
                           source=source)
        if fused is not None:
            L = len(output["z"])
            for name, t, expected in zip(("log_px", "log_qz", "log_pz"), fused, ((n,), (n, L), (n, L))):
                if not isinstance(t, Tensor) or tuple(t.shape) != expected:
                    raise ModelProtocolError(
                        f"{source}: returned {name} of shape {list(getattr(t, 'shape', ()))}; expected "
                        f"{list(expected)} ({describe_rows(B, M, K)} rows, L = {L} layers) (see ovis.models.protocol)")
        if zgrads and any(not q.has_rsample for q in output["qz"]):
            raise TypeError(f"{self._rsample_hint()} ({[type(q).__name__ for q in output['qz']]})")
        check_latent_gradients(model, output, zgrads, source)
        self._model_checks.done(model, form)

    def weighted_particles(
        self, model: nn.Module, x: Tensor, params: RuntimeParams
    ) -> Tuple[Particles, Tensor, Tensor, Tensor, Tensor]:
        r"""``(particles, log_w, kl, bound, v)``: :meth:`evaluate` without reparameterised latents,
        then, without a graph, the log-weights ``[B, M, K]`` and KL ``[B, M, K]``, the Renyi bound
        ``[B, M]`` and the tempered normalised weights ``[B, M, K]`` (the coefficients of the
        score-function and reweighted wake-sleep surrogates; only the particles carry graphs)."""
        p = self.evaluate(model, x, params, zgrads=False)
        with torch.no_grad():
            log_w, kl = log_weights(p.log_px, p.log_qz, p.log_pz, params.beta, params.freebits)
            bound = renyi_bound(log_w, params.alpha)
            v = normalized_weights(log_w, params.alpha)
        return p, log_w, kl, bound, v

    @staticmethod
    def base_diagnostics(log_w: Tensor, kl: Tensor, log_px: Tensor, iw: Optional[Tensor] = None,
                         v: Optional[Tensor] = None, cv_residual: Optional[Tensor] = None) -> Diagnostics:
        r"""``L_k`` (IW bound, alpha = 0), ``elbo``, ``kl``, ``log_px``, ``ess``, each ``[B]``.

        ``iw`` (the IW bound ``[B, M]``) and ``v`` (the normalised weights ``[B, M, K]``, alpha = 0)
        may be passed when the estimator has computed them already; with ``cv_residual``
        (``d - c``, ``[B, M, K]``) the mapping also has ``estimator/cv_mse``, its mean square.
        All the means are one stacked reduction (a score-function step at K = 5 is mostly
        per-kernel overhead).
        """
        with torch.no_grad():
            B, M, K = log_w.shape
            L_k = iw_bound(log_w) if iw is None else iw
            ess = effective_sample_size(log_w) if v is None else (v * v).sum(-1).reciprocal()
            columns = [log_w, kl, log_px, L_k[..., None].expand(B, M, K), ess[..., None].expand(B, M, K)]
            # (OVIS-MC within the budget has a residual on its K - S score particles only)
            stacked_cv = cv_residual is not None and cv_residual.shape == log_w.shape
            if stacked_cv:
                columns.append(cv_residual * cv_residual)
            means = torch.stack(columns).detach().mean(dim=(2, 3)).unbind(0)
            out: Diagnostics = {"loss": {"L_k": means[3], "elbo": means[0], "kl": means[1], "log_px": means[2],
                                         "ess": means[4]}}
            if cv_residual is not None:
                out["estimator"] = {"cv_mse": means[5] if stacked_cv else (cv_residual.detach() ** 2).mean(dim=(1, 2))}
            return out
