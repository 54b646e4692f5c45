r"""The model protocol: what a model gives the estimators, and the check of it at the door.

Every estimator of :mod:`ovis.estimators` trains a model that follows this protocol; the built-in
models (:mod:`ovis.models`) and a user's own ``torch.nn.Module`` alike.

The model
---------
A model is a :class:`torch.nn.Module` with two submodules, ``inference_network`` (the parameters
``phi`` of ``q(z|x)``) and ``generative_model`` (the parameters ``theta`` of ``p(x, z)``): the
gradient analysis (``run.py --grad_key``) selects parameters by these names, and the check below
asks that a reparameterised ``z`` reach ``inference_network``'s parameters.

``forward(x, zgrads=False, **kwargs) -> output``
    ``x``: a batch ``[N, *x_shape]`` in the dtype and on the device of the model's parameters
    (``x.float()`` for 0/1 images read as integers).  For each stochastic layer ``l = 1..L``,
    draw ``z_l ~ q(z_l | x, z_{<l})``, **with** ``qz.rsample()`` **when** ``zgrads`` **is true**
    (the pathwise estimators, ``pathwise-vae``, ``pathwise-iwae``, ``stl``, ``dreg``, ask for it:
    their gradient flows through ``z`` into ``phi``) **and** ``qz.sample()`` **when it is false**
    (the score-function estimators differentiate ``log q(z|x)`` at a fixed ``z``; a ``z`` that
    carries a gradient would add a pathwise term and bias them).  Then decode, and return the
    mapping::

        {"px": p(x | z),             # a torch.distributions.Distribution
         "z":  [z_1, ..., z_L],      # tensors, z_l of shape [N, *z_l_shape]
         "qz": [q(z_1|x), ...],      # one Distribution per layer
         "pz": [p(z_1|z_2), ..., p(z_L)]}   # one Distribution per layer (the prior last)

    Shapes (``sample_shape + batch_shape + event_shape`` as in :mod:`torch.distributions`): every
    distribution has a batch shape starting with ``N``, one row per particle, and every other
    dimension, batch or event, is summed (:func:`~ovis.models.base.batch_reduce`) as part of one
    particle's log-density: ``px``'s full shape ``batch_shape + event_shape`` is ``x``'s ``[N, *x_shape]``,
    and ``qz[l]``'s and ``pz[l]``'s are ``z[l].shape``.  A prior built without the batch
    dimension (``Normal(torch.zeros(D), 1)``, batch ``[]``) must be expanded:
    ``Independent(Normal(torch.zeros(D), 1), 1).expand([N])``.  The README's example
    (``## The estimator API on your own model``) is a complete model.

    ``**kwargs``: the runtime temperature ``tau=`` of relaxed models, passed when the caller set it
    (``estimator(model, x, tau=0.5)``); a model without relaxation may ignore it.

``sample_from_prior(bs, **kwargs) -> {'px', 'z', 'pz'}``
    Ancestral samples of ``p(x, z)`` on ``bs`` rows (the same shapes as ``forward``'s output
    without ``qz``): the report's samples, and reweighted wake-sleep's sleep phase (``wake-sleep``).

``infer(x, z) -> [q(z_1|x), q(z_2|z_1), ...]`` (needed by ``wake-sleep`` only)
    The inference distributions conditioned along GIVEN latents ``z = [z_1..z_L]`` (not sampled):
    the sleep phase evaluates ``log q(z|x)`` at pairs ``(z, x) ~ p(x, z)`` drawn by
    ``sample_from_prior``.  An estimator that needs a hook calls
    :func:`~ovis.models.base.require_hook`, which names it when the model lacks it.

How the estimators call a model
-------------------------------
An estimator with ``mc = M`` outer samples and ``iw = K`` particles evaluates the model on
``B*M*K`` rows for a batch of ``B`` data points, ordered ``b, m, k`` (row ``(b*M + m)*K + k``):

* by default, ``forward(x_expanded, zgrads=...)`` with ``x`` repeated: ``[B*M*K, *x_shape]``;
  a model needs no knowledge of ``M`` or ``K``;
* a model with the class attribute ``supports_particles = True`` whose ``forward`` has an explicit
  ``particles`` parameter (every built-in model: the SBN and its conditional version,
  :class:`~ovis.models.base.SingleLayerModel` and its subclasses, the VAEs with every prior, the
  convolutional and discrete VAEs, the GMM and the Gaussian toy) is called
  ``forward(x, zgrads=..., particles=M*K)`` with the un-expanded ``[B, *x_shape]`` and returns the
  same ``B*M*K`` rows (row ``b*n + j`` for particle ``j`` of data point ``b``, ``n = M*K``): it
  evaluates its encoder once per data point, builds ``q(z|x)`` on its ``B*n`` repeated parameters
  (:func:`ovis.distributions.utils.repeat_rows`, :func:`ovis.distributions.utils.repeat_distribution`)
  and draws the particles from it, so that its output is that of ``forward`` on the repeated batch
  with the same random draws (in distribution and, for the same generator state, in value);
  ``px``'s full shape is still that of the expanded ``x``, ``[B*M*K, *x_shape]``.
  :func:`ovis.models.base.uses_particles` decides: a subclass that overrides ``forward`` without
  a ``particles`` parameter (or sets ``supports_particles = False``) is given the repeated batch;
* a model with ``fused_log_densities = True`` also provides ``particle_log_densities(x,
  particles=n, **kwargs) -> (output, log_px [B*n], log_qz [B*n, L], log_pz [B*n, L])``: the output
  of ``forward(x, particles=n)`` and the values its distributions give at ``x`` (expanded) and
  ``output['z']``, computed in fewer kernels (the SBN batches its ``2 L`` Bernoulli layers); the
  estimators then use it for every evaluation without reparameterised latents.  A subclass that
  changes the distributions must set the attribute back to ``False`` (the conditional SBN does).

Extra hooks of some estimator families
--------------------------------------
* The estimators of the REBAR line for discrete latents (``arm``, ``disarm``, ``muprop``,
  ``simple-muprop``, ``rebar``, ``dynamic-rebar``, ``relax``, ``concrete``, ``gumbel-softmax``,
  ``straight-through``; not ``nvil``, which calls ``forward``) do not call ``forward``; they need
  Bernoulli or categorical latents and the *discrete hooks*
  ``latent_depth``, ``latent_categories`` (optional), ``q_logits(l, h)`` and
  ``log_joint_at(x, z) -> (log_px [n], log_pz [n, L])``, specified in
  :mod:`ovis.estimators.discrete`.
* ``hybrid-mixture`` samples a mixture-of-Gaussians ``q`` itself and needs ``posterior(x)`` (a
  ``MixtureSameFamily`` of ``Independent(Normal)``), ``prior(n)`` and ``observation_model(z)``,
  the three methods of :class:`~ovis.models.base.SingleLayerModel`, which builds ``forward``,
  ``infer`` and ``sample_from_prior`` from them.

The check at the door
---------------------
The first time an estimator calls a model (per estimator and model, and per call form: ``zgrads``
true or false, expanded or ``particles``, fused), it checks the output with
:func:`check_model_output` (keys, types, list lengths, the batch shapes ``[B*M*K]`` and the full
shapes above) and :func:`check_latent_gradients` (under ``zgrads=True`` every ``z_l`` whose
``q`` has ``rsample`` must carry a gradient path to ``inference_network``'s parameters; under
``zgrads=False`` none may), and raises :class:`ModelProtocolError`, one line naming the output
key, what was found and the fix.  A failure of the model's own code (at any call) is explained
when ``x``'s dtype or device differs from the model's parameters'.  Later calls cost a
dictionary look-up (``benchmarks/bench_step.py --only check`` measures it).  The check is on by
default; :func:`set_model_checks` (``False``) switches it off, for a model known to be right.
The discrete hooks' values are checked at every call (their shapes only: no synchronisation).
"""
from __future__ import annotations

import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["ModelProtocolError", "check_model_output", "check_latent_gradients", "check_discrete_values",
           "explain_input_failure", "set_model_checks", "model_checks_enabled", "ModelCheckMemo",
           "inference_parameters", "describe_rows"]

_CHECKS_ENABLED = True


class ModelProtocolError(TypeError, ValueError):
    r"""A model's output breaks the protocol (module docstring): one line naming the output key,
    what was found and the fix.  Both a ``TypeError`` and a ``ValueError`` (wrong types and wrong
    shapes alike)."""


def set_model_checks(enabled: bool) -> None:
    r"""Switch the check of a model's output at the estimators' first call on (default) or off.

    Off, the estimators trust the model (no key, shape or gradient-path check); the check costs
    nothing after the first call of each estimator on each model, so there is little to gain.
    """
    global _CHECKS_ENABLED
    _CHECKS_ENABLED = bool(enabled)


def model_checks_enabled() -> bool:
    r"""Whether the estimators check a model's output on their first call (:func:`set_model_checks`)."""
    return _CHECKS_ENABLED


def _shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _full_shape(d: Distribution) -> Tuple[int, ...]:
    return tuple(d.batch_shape) + tuple(d.event_shape)


def _describe(d: Distribution) -> str:
    return f"{type(d).__name__} of batch shape {_shape(d.batch_shape)} and event shape {_shape(d.event_shape)}"


_KEYS = ("px", "z", "qz", "pz")
_WHAT = {"px": "p(x|z)", "qz": "q(z_{l}|...)", "pz": "p(z_{l}|...)"}
_SEE = "(see ovis.models.protocol)"


def check_model_output(output: Mapping[str, Any], with_q: bool = True, *, rows: Optional[int] = None,
                       x_shape: Optional[Sequence[int]] = None, rows_note: str = "",
                       source: str = "the model output") -> None:
    r"""Check a model output mapping against the protocol (module docstring).

    Always: the keys (``px``, ``z``, ``pz`` and, with ``with_q``, ``qz``), the types (``px`` a
    ``Distribution``; ``z`` a list of tensors; ``qz`` and ``pz`` lists of distributions), equal
    non-zero list lengths, and shapes consistent within the output: every distribution has a
    non-empty batch shape whose first dimension is the number of rows of ``z``, and ``qz[l]``,
    ``pz[l]`` have the full shape (batch + event) of ``z[l]``.

    Args:
        output: the mapping returned by ``forward`` (or ``sample_from_prior`` with ``with_q=False``).
        with_q: whether ``qz`` is expected.
        rows: the number ``N`` of rows (particles) the caller expects (``B*M*K`` for an estimator);
            ``None``: the rows of ``output['z'][0]``.
        x_shape: the shape of one observation; given, ``px``'s full shape must be ``[N, *x_shape]``.
        rows_note: how ``rows`` was counted, for the message (e.g. ``"B*M*K = 8*1*16"``).
        source: what produced the output, for the message (e.g. ``"MyModel.forward(x, zgrads=True)"``).

    Raises:
        ModelProtocolError: one line naming the key, what was found and the fix.
    """
    def fail(msg: str) -> None:
        raise ModelProtocolError(f"{source}: {msg} {_SEE}")

    keys = _KEYS if with_q else ("px", "z", "pz")
    if not isinstance(output, Mapping):
        fail(f"returned a {type(output).__name__}; it must return a mapping with the keys {list(keys)}")
    missing = [k for k in keys if k not in output]
    if missing:
        fail(f"the output lacks {missing}: return a mapping with the keys {list(keys)}")
    if not isinstance(output["px"], Distribution):
        fail(f"output['px'] is a {type(output['px']).__name__}; it must be a torch.distributions.Distribution "
             "(p(x|z), e.g. Independent(Bernoulli(logits=...), 1))")
    list_keys = keys[1:]
    for k in list_keys:
        if not isinstance(output[k], (list, tuple)):
            fail(f"output[{k!r}] is a {type(output[k]).__name__}; output['z'], output['qz'] and output['pz'] must "
                 f"be lists with one item per stochastic layer (e.g. [z], [qz], [pz])")
    lengths = [len(output[k]) for k in list_keys]
    if len(set(lengths)) != 1 or lengths[0] == 0:
        fail(f"output{list(list_keys)} have lengths {lengths}; they must have the same, non-zero length "
             "(one item per stochastic layer)")
    for l, z in enumerate(output["z"]):
        if not isinstance(z, Tensor):
            fail(f"output['z'][{l}] is a {type(z).__name__}; it must be the sampled tensor z_{l + 1}")
    for k in list_keys[1:]:
        for l, d in enumerate(output[k]):
            if not isinstance(d, Distribution):
                fail(f"output[{k!r}][{l}] is a {type(d).__name__}, not a torch.distributions.Distribution: put the "
                     f"distribution {_WHAT[k].format(l=l + 1)} itself in the list (its sample goes in output['z'])")
    n = rows
    note = f" ({rows_note}, one row per particle)" if rows_note else " (one row per particle)"
    if n is None:
        z0 = output["z"][0]
        n = int(z0.shape[0]) if z0.dim() > 0 else None
        note = " (the rows of output['z'][0])"
    for l, z in enumerate(output["z"]):
        if z.dim() == 0 or (n is not None and z.shape[0] != n):
            fail(f"output['z'][{l}] has shape {_shape(z.shape)}; expected {n} rows first{note}, "
                 f"[{n}, ...]: is it transposed, or drawn without the batch dimension?")
    px = output["px"]
    if n is not None and (len(px.batch_shape) == 0 or px.batch_shape[0] != n):
        fail(f"output['px'] is a {_describe(px)}; expected a batch shape starting with {n}{note}: build it from "
             "the batch of z (a distribution without the batch dimension would broadcast silently)")
    if x_shape is not None and n is not None and _full_shape(px) != (n, *x_shape):
        fail(f"output['px'] is a {_describe(px)}, full shape {_shape(_full_shape(px))}; expected the shape of x, "
             f"{_shape((n, *x_shape))}: p(x|z) must score every dimension of x, no more")
    for k in list_keys[1:]:
        for l, (d, z) in enumerate(zip(output[k], output["z"])):
            if n is not None and (len(d.batch_shape) == 0 or d.batch_shape[0] != n):
                hint = (f"; expand it: .expand([{n}])" if len(d.batch_shape) == 0 else "")
                fail(f"output[{k!r}][{l}] is a {_describe(d)}; expected a batch shape starting with {n}{note}"
                     f"{hint} (a distribution without the batch dimension would broadcast silently)")
            if _full_shape(d) != tuple(z.shape):
                fail(f"output[{k!r}][{l}] is a {_describe(d)}, full shape {_shape(_full_shape(d))}, but "
                     f"output['z'][{l}] has shape {_shape(z.shape)}; they must be equal ({_WHAT[k].format(l=l + 1)} "
                     f"is the distribution of z_{l + 1})")


def inference_parameters(model: nn.Module) -> List[Tensor]:
    r"""The parameters of ``model.inference_network`` that require a gradient (all the model's
    parameters that do when it has no such submodule)."""
    net = getattr(model, "inference_network", None)
    source = net if isinstance(net, nn.Module) else model
    return [p for p in source.parameters() if p.requires_grad]


def _reaches(t: Tensor, targets: Set[int]) -> bool:
    r"""Whether ``t``'s autograd graph reaches one of the leaf tensors whose ``id`` is in ``targets``
    (a walk over ``grad_fn.next_functions``: no computation, no hook fired)."""
    if not t.requires_grad:
        return False
    if t.grad_fn is None:
        return id(t) in targets
    stack: List[Any] = [t.grad_fn]
    seen: Set[Any] = set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)  # AccumulateGrad: a leaf
        if var is not None and id(var) in targets:
            return True
        stack.extend(f for f, _ in fn.next_functions)
    return False


def check_latent_gradients(model: nn.Module, output: Mapping[str, Any], zgrads: bool,
                           source: str = "the model output") -> None:
    r"""Check that ``forward`` honoured ``zgrads`` (module docstring).

    Under ``zgrads=True``, every ``z_l`` whose ``q(z_l|...)`` has ``rsample`` must carry a gradient
    path to the parameters of ``model.inference_network`` (else a pathwise estimator's encoder
    gradient is silently wrong, or missing); under ``zgrads=False``, no ``z_l`` may (else a
    score-function estimator gets an extra pathwise term).  Skipped where no gradient can be
    recorded: under ``torch.no_grad`` / inference mode, or when no parameter of the inference
    network requires a gradient.

    Raises:
        ModelProtocolError: one line naming the layer, what was found and the fix.
    """
    if not torch.is_grad_enabled():
        return
    params = inference_parameters(model)
    if not params:
        return
    targets = {id(p) for p in params}
    where = "inference_network" if isinstance(getattr(model, "inference_network", None), nn.Module) else "model"
    for l, (z, q) in enumerate(zip(output["z"], output["qz"])):
        reaches = _reaches(z, targets)
        if zgrads and q.has_rsample and not reaches:
            found = ("does not require a gradient" if not z.requires_grad
                     else f"has no gradient path to the {where}'s parameters")
            raise ModelProtocolError(
                f"{source}: output['z'][{l}] {found}, though the estimator asked for reparameterised latents "
                f"(zgrads=True) and q(z_{l + 1}|...) has rsample: draw z with qz.rsample() when zgrads is true "
                f"(qz.sample() when false); without it the {where}'s pathwise gradient is wrong or missing {_SEE}")
        if not zgrads and reaches:
            raise ModelProtocolError(
                f"{source}: output['z'][{l}] carries a gradient to the {where}'s parameters, though the estimator "
                f"called forward with zgrads=False: draw z with qz.sample() when zgrads is false (qz.rsample() when "
                f"true); score-function estimators differentiate log q(z|x) at a fixed z, and a reparameterised z "
                f"adds a pathwise term that biases them {_SEE}")


def check_discrete_values(model: nn.Module, log_px: Tensor, log_pz: Tensor, rows: int, depth: int) -> None:
    r"""Check the values of the discrete hook ``model.log_joint_at(x, z)``: ``log_px`` ``[n]`` and
    ``log_pz`` ``[n, L]`` (:mod:`ovis.estimators.discrete`); shapes only (no synchronisation).

    Raises:
        ModelProtocolError: naming the value, its shape and the expected one.
    """
    name = f"{type(model).__name__}.log_joint_at(x, z)"
    if not isinstance(log_px, Tensor) or tuple(log_px.shape) not in ((rows,), (rows, 1)):
        raise ModelProtocolError(
            f"{name} returned log_px of shape {_shape(getattr(log_px, 'shape', ()))}; expected [{rows}] (one "
            f"log p(x|z_1) per row: sum over the dimensions of x) (see ovis.estimators.discrete)")
    if not isinstance(log_pz, Tensor) or tuple(log_pz.shape) not in ((rows, depth),) + (((rows,),) if depth == 1 else ()):
        raise ModelProtocolError(
            f"{name} returned log_pz of shape {_shape(getattr(log_pz, 'shape', ()))}; expected [{rows}, {depth}] "
            f"(one log p(z_l|z_(l+1)) per row and layer, latent_depth = {depth}) (see ovis.estimators.discrete)")


def explain_input_failure(model: nn.Module, x: Tensor, error: BaseException, call: str) -> None:
    r"""Called when the model's own code raised on ``x``: raise a :class:`ModelProtocolError` (from
    ``error``) naming ``x``'s dtype or device when they differ from the model's parameters'; return
    (the caller re-raises ``error``) otherwise."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None or not isinstance(x, Tensor):
        return
    if x.dtype != param.dtype:
        raise ModelProtocolError(
            f"{call} failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}) on x of "
            f"dtype {x.dtype}, while the parameters of {type(model).__name__} are {param.dtype}: pass "
            f"x.to({param.dtype}) (0/1 images read as integers: x.float()) {_SEE}") from error
    if x.device != param.device:
        raise ModelProtocolError(
            f"{call} failed ({type(error).__name__}) on x on {x.device}, while the parameters of "
            f"{type(model).__name__} are on {param.device}: pass x.to({str(param.device)!r}) {_SEE}") from error


class ModelCheckMemo:
    r"""Which (model, call form) pairs an estimator has checked: the check runs on the first call
    of each and costs one dictionary look-up afterwards.  Models are held weakly (a model that is
    garbage-collected is forgotten, so a new one at the same address is checked again)."""

    def __init__(self) -> None:
        self._seen: "weakref.WeakKeyDictionary[nn.Module, Set[Tuple[Any, ...]]]" = weakref.WeakKeyDictionary()

    def needed(self, model: nn.Module, form: Tuple[Any, ...]) -> bool:
        r"""Whether ``form`` still has to be checked for ``model`` (always ``False`` when the checks
        are off, :func:`set_model_checks`)."""
        if not _CHECKS_ENABLED:
            return False
        try:
            return form not in self._seen.get(model, ())
        except TypeError:  # a model that cannot be weakly referenced: checked at every call
            return True

    def done(self, model: nn.Module, form: Tuple[Any, ...]) -> None:
        r"""Record that ``form`` passed for ``model``."""
        try:
            self._seen.setdefault(model, set()).add(form)
        except TypeError:
            pass

    def __deepcopy__(self, memo: Dict[int, Any]) -> "ModelCheckMemo":
        return ModelCheckMemo()  # a copy of an estimator checks again

    def __getstate__(self) -> Dict[str, Any]:
        return {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


def describe_rows(B: int, M: int, K: int) -> str:
    r"""How an estimator counts its rows, for messages: ``"B*M*K = 8*1*16"``."""
    return f"B*M*K = {B}*{M}*{K}"
