r"""Variance tracking (``--track_variance ID,...``) as in the REBAR paper (Tucker et al. 2017):
every tracked estimator's gradient is taken at every training step, on the step's minibatch and
at the parameters of the one training trajectory, and its per-coordinate variance is an exponential
moving average (decay ``--track_variance_decay``, 0.999 as the original) over the steps.

* **One trajectory.**  The model is trained by the training estimator only; each tracked
  estimator (a separate instance, in training mode) computes its gradient on the same minibatch
  from its own samples, under an RNG fork seeded by the step (tracking leaves the training
  trajectory unchanged, and a resumed run draws the same values).
* **Shadow training.**  Each tracked estimator's own parameters (NVIL's baseline and running
  statistics, MuProp's and REBAR's baselines and ``eta``'s, dynamic REBAR's temperature, RELAX's
  network) are trained online from its own samples at every step, by its own optimiser with the
  training estimator's settings (Adam, ``--adam_beta2``, the estimator learning rate
  ``lr * --estimator_lr_ratio`` or ``--baseline_lr``): the estimators compared are the adapted
  ones, as in the paper, not their initialisations.
* **The variance.**  For the per-step minibatch gradient ``g`` over ALL the model's parameters
  (``P`` coordinates), the moving averages :math:`m_1 = \mathrm{EMA}[g]`, :math:`m_2 = \mathrm{EMA}[g^2]`
  (debiased by :math:`1 - d^t` as Adam's moments) give :math:`\frac1P\sum_p (m_{2,p} - m_{1,p}^2)`,
  recorded at every evaluation as ``variance/<id>``, a natural log.  NVIL's inference-network
  gradient is multiplied back by the scale it divided it by (``estimator/scale``): NVIL unscaled.
  The training estimator's own gradient (the one the optimiser steps with) is tracked as its id.

:class:`VarianceTracker` holds the shadows and the averages; its :meth:`~VarianceTracker.state_dict`
goes into the run's checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ovis.training.rng import forked_rng

__all__ = ["VarianceTracker", "build_tracked_estimators", "flat_model_gradient", "unscaled_gradient"]


def flat_model_gradient(grads: Sequence[Optional[Tensor]], params: Sequence[nn.Parameter]) -> Tensor:
    r"""The gradients ``grads`` (one per parameter, ``None``: zero) as one float64 vector ``[P]``."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double()
                      for g, p in zip(grads, params)])


def unscaled_gradient(estimator: nn.Module, grads: List[Optional[Tensor]], names: Sequence[str]) -> List[Optional[Tensor]]:
    r"""NVIL's gradient with its inference-network part multiplied back by the scale ``s`` it applied
    (the unbiased estimate); other estimators' gradients are returned as they are.  ``names``: the
    model's parameter names, aligned with ``grads``."""
    from ovis.estimators.score_function import NVIL

    if not isinstance(estimator, NVIL):
        return grads
    s = estimator._applied_scale
    return [g if g is None or not n.startswith("inference_network.") else g * s for g, n in zip(grads, names)]


class VarianceTracker:
    r"""The online variance of several estimators' per-step gradients (module docstring).

    Args:
        estimators: ``{id: estimator}``; the training estimator is the instance the run trains
            with (its gradients are read from the model's ``.grad``), the others are shadows.
        training_estimator: the run's estimator.
        model: the trained model.
        optimizer_factory: builds a shadow's optimiser over its parameter list (``None``: the
            estimator has none).
        decay: of the moving averages, in ``[0, 1)``.
        seed: the run's seed (the shadows' RNG forks are seeded by it and the step).
        device: the run's device.
    """

    def __init__(self, estimators: Mapping[str, nn.Module], training_estimator: nn.Module, model: nn.Module,
                 optimizer_factory: Callable[[List[nn.Parameter]], torch.optim.Optimizer], decay: float = 0.999,
                 seed: int = 0, device: Optional[torch.device] = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"track_variance_decay must lie in [0, 1), got {decay}")
        self.estimators = dict(estimators)
        self.training_estimator = training_estimator
        self.model = model
        self.decay = float(decay)
        self.seed = int(seed)
        self.device = device if device is not None else torch.device("cpu")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        P = sum(p.numel() for p in self.params)
        self.optimizers: Dict[str, Optional[torch.optim.Optimizer]] = {}
        for eid, est in self.estimators.items():
            own = [p for p in est.parameters() if p.requires_grad]
            self.optimizers[eid] = (optimizer_factory(own) if own and est is not training_estimator else None)
        self.m1 = {eid: torch.zeros(P, dtype=torch.float64, device=self.device) for eid in self.estimators}
        self.m2 = {eid: torch.zeros(P, dtype=torch.float64, device=self.device) for eid in self.estimators}
        self.count = 0

    def _accumulate(self, eid: str, g: Tensor) -> None:
        d = self.decay
        self.m1[eid].mul_(d).add_(g, alpha=1 - d)
        self.m2[eid].mul_(d).addcmul_(g, g, value=1 - d)

    def observe(self, x: Tensor, runtime: Mapping[str, Any], step: int) -> None:
        r"""Account for one training step: call after the training estimator's backward (its
        gradient in the model's ``.grad``) and before the optimiser's step.  Each shadow computes
        its gradient on ``x`` from its own samples (an RNG fork seeded by ``seed`` and ``step``)
        and takes one step of its own optimiser."""
        for i, (eid, est) in enumerate(self.estimators.items()):
            if est is self.training_estimator:
                grads = [p.grad for p in self.params]
            else:
                own = [p for p in est.parameters() if p.requires_grad]
                est.train()
                with forked_rng(self.device, (self.seed * 1_000_003 + step * 7_919 + i * 104_729 + 11) % (2 ** 62)):
                    loss, _, _ = est(self.model, x, **runtime)
                    out = torch.autograd.grad(loss, self.params + own, allow_unused=True)
                grads = list(out[:len(self.params)])
                opt = self.optimizers[eid]
                if opt is not None:
                    for p, g in zip(own, out[len(self.params):]):
                        p.grad = None if g is None else g.detach()
                    opt.step()
            grads = unscaled_gradient(est, [None if g is None else g.detach() for g in grads], self.names)
            self._accumulate(eid, flat_model_gradient(grads, self.params))
        self.count += 1

    def log_variances(self) -> Dict[str, float]:
        r"""``{"variance/<id>": natural log of the mean moving-average variance}`` (NaN before the
        first step or when not finite)."""
        out: Dict[str, float] = {}
        for eid in self.estimators:
            if self.count == 0:
                out[f"variance/{eid}"] = math.nan
                continue
            debias = 1.0 - self.decay ** self.count
            m1, m2 = self.m1[eid] / debias, self.m2[eid] / debias
            var = (m2 - m1 * m1).clamp_min(0).mean()
            out[f"variance/{eid}"] = float(torch.log(var.clamp_min(1e-300))) if torch.isfinite(var) else math.nan
        return out

    def state_dict(self) -> Dict[str, Any]:
        r"""The tracker's resumable state (shadows, their optimisers, the moving averages)."""
        return {"count": self.count,
                "m1": {k: v.cpu() for k, v in self.m1.items()}, "m2": {k: v.cpu() for k, v in self.m2.items()},
                "estimators": {k: e.state_dict() for k, e in self.estimators.items()
                               if e is not self.training_estimator},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items() if o is not None}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        r"""Restore :meth:`state_dict` (ids absent from ``state`` keep their fresh state)."""
        self.count = int(state["count"])
        for k in self.estimators:
            if k in state["m1"]:
                self.m1[k] = state["m1"][k].to(self.device)
                self.m2[k] = state["m2"][k].to(self.device)
            if k in state["estimators"]:
                self.estimators[k].load_state_dict(state["estimators"][k])
            if k in state["optimizers"] and self.optimizers.get(k) is not None:
                self.optimizers[k].load_state_dict(state["optimizers"][k])  # type: ignore[union-attr]


def build_tracked_estimators(ids: Sequence[str], training_id: str, training_estimator: torch.nn.Module, *,
                             mc: int, iw: int, x_shape: Sequence[int], seed: int, device: torch.device,
                             model: torch.nn.Module, check_batch: Callable[[], Tensor],
                             runtime: Mapping[str, Any]) -> Dict[str, torch.nn.Module]:
    r"""``{id: estimator}`` for ``ids`` plus the training estimator (``training_id``: the trained
    instance itself), or ``{}`` when ``ids`` is empty.

    Each other estimator is built once with ``mc`` / ``iw`` (and ``x_shape`` where its constructor
    takes one) under an RNG fork seeded by ``seed``, bound to the model (``bind``: per-tensor
    ``eta``'s), then run once in ``eval()`` mode on the batch ``check_batch()`` (a few points, on
    ``device``; drawn inside the fork).

    Raises:
        ValueError: an estimator cannot run on ``model`` (one line naming it and the fix).
    """
    import ovis.estimators as estimators

    if not ids:
        return {}
    out: Dict[str, torch.nn.Module] = {training_id: training_estimator}
    with forked_rng(device, (int(seed) * 15_485_863 + 7) % (2 ** 62)):
        for eid in ids:
            if eid in out:
                continue
            est = estimators.build_estimator(eid, mc=mc, iw=iw, x_shape=x_shape).to(device)
            bind = getattr(est, "bind", None)
            if callable(bind):
                bind(model)
            out[eid] = est
        # fail now, not at the first step, when an estimator cannot run on this model
        x = check_batch()
        for eid, est in out.items():
            if est is training_estimator:
                continue
            was_training = est.training
            est.eval()
            try:
                est(model, x, **runtime)
            except (TypeError, ValueError, NotImplementedError, RuntimeError) as e:
                raise ValueError(f"--track_variance {eid}: this estimator cannot run on model "
                                 f"{type(model).__name__} ({type(e).__name__}: {e}); drop it "
                                 "from --track_variance") from e
            finally:
                est.train(was_training)
    return out
