r"""The optimisers of ``run.py``: :func:`build_optimizer` and :class:`LeanFusedAdam`.

Adam and SGD use torch's fused kernels (one kernel over all parameters, on the CPU and on CUDA).
Adam's ``step`` on the 3-layer SBN of the speed benchmark falls from about 1.7 ms (the
per-parameter loop) to 0.40 ms (``torch.optim.Adam(fused=True)``), and to 0.32 ms with
:class:`LeanFusedAdam` (measured alternately), which calls the same fused kernel without
``Adam.step``'s per-step bookkeeping in Python (type checks, state initialisation, grouping by
device and dtype) and increments the step counts in one kernel; the rest is the kernel itself,
bound by memory traffic (7 floats read or written per parameter).  The
update rule is Adam's; the fused and loop forms differ only by rounding, the lean and plain fused
steps not at all (``tests/test_speed_paths.py``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from ovis.training.arguments import OPTIMIZERS

__all__ = ["LeanFusedAdam", "build_optimizer"]

# Adam.step without the profiling / hook wrapper that torch.optim puts around every ``step``
_ADAM_STEP: Callable[..., Any] = getattr(torch.optim.Adam.step, "__wrapped__", torch.optim.Adam.step)

_LeanLists = Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor], List[Tensor]]


class LeanFusedAdam(torch.optim.Adam):
    r"""``torch.optim.Adam(params, fused=True, ...)`` whose ``step`` calls the fused kernel directly.

    Every step of ``torch.optim.Adam`` re-checks each parameter in Python (its state, dtype,
    sparsity, complex-ness, the capture settings) and regroups the tensors by device and dtype:
    0.1 to 0.17 ms of a 6 ms training step of the benchmark's SBN at K = 5 (measured alternately).  The lean step does this
    work only while it can matter: it takes the fused kernel ``torch._fused_adam_`` itself when
    every parameter group is plain (float ``lr`` and betas, no ``amsgrad``, ``maximize``,
    ``capturable``, ``differentiable``, decoupled weight decay or closure), every parameter with
    a gradient already has its state (the first step goes through ``Adam.step``, which creates
    it), the gradients are dense and all tensors share one device and dtype.  Otherwise, and
    whenever a step hook is registered, it runs ``Adam.step`` unchanged.  The state (``step``,
    ``exp_avg``, ``exp_avg_sq`` per parameter) and so the checkpoints are those of
    ``torch.optim.Adam``.

    Raises:
        RuntimeError: where torch has no fused Adam for the parameters' device or dtype (as
            ``torch.optim.Adam(fused=True)`` does).
    """

    def __init__(self, params: Any, **kwargs: Any) -> None:
        if "fused" in kwargs:
            raise ValueError("LeanFusedAdam is always fused: do not pass fused=")
        super().__init__(params, fused=True, **kwargs)
        # the step counts of the parameters stepped last, as views of one tensor: one kernel
        # increments them all (torch's _foreach_add_ over 0-dim CPU tensors costs ~8 us each)
        self._steps: Optional[Tensor] = None
        self._step_views: List[Tensor] = []

    def _increment_steps(self, steps: List[Tensor]) -> List[Tensor]:
        r"""Add 1 to the step counts ``steps`` (one 0-dim tensor per parameter stepped, in order);
        returns them.  When they are the views of :attr:`_steps` (the same parameters as the last
        step: the usual case) it is one kernel; otherwise the counts are gathered into a new
        tensor whose views replace them in the optimiser's state (same values, same format)."""
        views = self._step_views
        if len(views) == len(steps) and all(a is b for a, b in zip(views, steps)):
            assert self._steps is not None
            self._steps.add_(1)
            return steps
        buffer = torch.stack(steps).add_(1)
        new_views = list(buffer.unbind(0))
        by_id = {id(t): v for t, v in zip(steps, new_views)}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and id(state.get("step")) in by_id:
                    state["step"] = by_id[id(state["step"])]
        self._steps, self._step_views = buffer, new_views
        return new_views

    def _lean_lists(self) -> Optional[List[Tuple[Dict[str, Any], _LeanLists]]]:
        r"""Per parameter group, ``(group, (params, grads, exp_avgs, exp_avg_sqs, steps))`` of
        the parameters with a gradient, or ``None`` when the step must go through ``Adam.step``."""
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks):
            return None
        out: List[Tuple[Dict[str, Any], _LeanLists]] = []
        device, dtype = None, None
        for group in self.param_groups:
            if (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]
                    or group.get("decoupled_weight_decay", False) or not group["fused"]
                    or isinstance(group["lr"], Tensor)
                    or any(isinstance(b, Tensor) for b in group["betas"])):
                return None
            lists: _LeanLists = ([], [], [], [], [])
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                state = self.state.get(p)
                if not state or "step" not in state or g.is_sparse or g.dtype != p.dtype:
                    return None
                if device is None:
                    device, dtype = p.device, p.dtype
                elif p.device != device or p.dtype != dtype:
                    return None
                for lst, t in zip(lists, (p, g, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    lst.append(t)
            if lists[0]:
                out.append((group, lists))
        return out

    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        r"""One Adam step (see the class docstring for when the fused kernel is called directly)."""
        groups = None if closure is not None else self._lean_lists()
        if groups is None:
            return _ADAM_STEP(self, closure)
        with torch.no_grad():
            steps = self._increment_steps([t for _, lists in groups for t in lists[4]])
            for group, (params, grads, exp_avgs, exp_avg_sqs, _) in groups:
                group_steps, steps = steps[:len(params)], steps[len(params):]
                beta1, beta2 = group["betas"]
                torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], group_steps, amsgrad=False,
                                   lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                                   weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                                   maximize=False, grad_scale=None, found_inf=None)
        return None


def build_optimizer(name: str, groups: List[Dict[str, Any]]) -> torch.optim.Optimizer:
    r"""The optimiser ``name`` (one of :data:`OPTIMIZERS`) over parameter ``groups``.

    Adam is :class:`LeanFusedAdam` and SGD ``torch.optim.SGD(fused=True)`` where torch has a
    fused kernel for the parameters' device and dtype, the per-parameter loop otherwise.  Same
    update rule; the values differ from the loop only by rounding.
    """
    classes = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop,
               "adamax": torch.optim.Adamax}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    try:
        if name == "adam":
            return LeanFusedAdam(groups)
        if name == "sgd":
            return torch.optim.SGD(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device/dtype without a fused kernel
        pass
    return classes[name](groups)
