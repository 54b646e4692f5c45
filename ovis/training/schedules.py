r"""Schedules of a training run, as pure functions of the step (hence exact on resume).

Renyi warm-up (``--warmup W --alpha_init a0 --warmup_mode linear|log --warmup_offset o``), with
progress :math:`x = \mathrm{clip}((t - o) / W, 0, 1)` at step ``t`` and target ``alpha`` (``--alpha``):

* ``linear``: :math:`\alpha(x) = a_0 + x(\alpha - a_0)`;
* ``log``: :math:`1 - \alpha(x) = (1 - a_0)^{1 - x} (1 - \alpha)^{x}`, i.e. :math:`1-\alpha` is
  interpolated geometrically; with the usual target ``alpha = 0`` this is the reference code's
  :math:`\alpha(x) = 1 - (1 - a_0)^{1 - x}` (fast at first, slow near the IW bound).

Learning-rate reductions (``--lr_reduce_steps n --lr_reduce_factor f``): the rate is multiplied by
``f`` at each of the ``n`` evenly spaced steps ``floor(T * i / (n + 1))``, ``i = 1..n`` (``T`` the run
length), so ``lr(t) = lr * f^{#{i : t >= floor(T i / (n+1))}}``; the reference code halved it
(``f = 0.5``, the default).

The events of the loop (evaluations, progress records, checkpoints): :class:`EventSchedule`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["alpha_at", "lr_factor_at", "lr_reduction_steps", "EventSchedule"]


def alpha_at(step: int, alpha: float, warmup: int = 0, alpha_init: float = 0.0,
             mode: str = "linear", offset: int = 0) -> float:
    r"""The Renyi ``alpha`` at ``step`` (see the module docstring); ``warmup = 0``: ``alpha``."""
    if warmup <= 0:
        return float(alpha)
    if mode not in ("linear", "log"):
        raise ValueError(f"warmup mode must be 'linear' or 'log', got {mode!r}")
    x = min(max((step - offset) / warmup, 0.0), 1.0)
    if mode == "linear":
        return float(alpha_init + x * (alpha - alpha_init))
    # geometric interpolation of (1 - alpha); clamp below 1 for the estimators' [0, 1) check
    one_minus = math.exp((1.0 - x) * math.log1p(-alpha_init) + x * math.log1p(-alpha))
    return float(min(max(1.0 - one_minus, 0.0), math.nextafter(1.0, 0.0)))


def lr_reduction_steps(total_steps: int, n: int) -> list:
    r"""The steps at which the learning rate is reduced: ``floor(T i / (n + 1))``, ``i = 1..n``."""
    return [(total_steps * i) // (n + 1) for i in range(1, n + 1)]


def lr_factor_at(step: int, total_steps: int, n: int, factor: float = 0.5) -> float:
    r"""The multiplier of the base learning rate at ``step``."""
    if n <= 0:
        return 1.0
    k = sum(1 for s in lr_reduction_steps(total_steps, n) if step >= s)
    return float(factor ** k)


@dataclass(frozen=True)
class EventSchedule:
    r"""When a run of ``total_steps`` steps evaluates, logs its progress and saves a checkpoint.

    The step ``t`` counts the optimisation steps done (``0`` before the first).

    * evaluation at ``t`` when ``t == total_steps`` or ``t > 0`` and ``t % eval_period == 0``
      (so a run shorter than one period evaluates once, at its end); each evaluation also writes
      the sample grids and the tracked gradient variances, and saves ``last.pt``;
    * progress record after step ``t`` when ``t % log_period == 0``;
    * checkpoint after step ``t`` when ``t % checkpoint_steps == 0`` (``0``: never by step) or
      ``checkpoint_every > 0`` seconds have passed since the last one, unless ``t`` evaluates (the
      evaluation saves one).

    All are functions of the step (and the clock for ``checkpoint_every``), hence the same after a
    resume; :meth:`evaluation_due` skips an evaluation that the checkpoint already holds.
    """

    total_steps: int
    eval_period: int
    log_period: int = 1
    checkpoint_steps: int = 0
    checkpoint_every: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps < 0 or self.eval_period < 1 or self.log_period < 1 or self.checkpoint_steps < 0:
            raise ValueError(f"EventSchedule needs total_steps >= 0 and positive periods, got {self}")

    def evaluates_at(self, step: int) -> bool:
        r"""Whether the run evaluates at ``step``."""
        return step == self.total_steps or (step > 0 and step % self.eval_period == 0)

    def evaluation_due(self, step: int, last_eval_step: int) -> bool:
        r"""Whether to evaluate now: ``step`` evaluates and the last evaluation was before it."""
        return self.evaluates_at(step) and last_eval_step < step

    def progress_due(self, step: int) -> bool:
        r"""Whether to record the progress after ``step``."""
        return step % self.log_period == 0

    def checkpoint_due(self, step: int, seconds_since_checkpoint: float) -> bool:
        r"""Whether to save ``last.pt`` after ``step`` (besides the evaluations)."""
        by_step = bool(self.checkpoint_steps) and step % self.checkpoint_steps == 0
        by_time = self.checkpoint_every > 0 and seconds_since_checkpoint >= self.checkpoint_every
        return (by_step or by_time) and not self.evaluates_at(step)
