r"""Running sums of a run's training diagnostics (:class:`RunningSums`)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["RunningSums"]


class RunningSums:
    r"""Running sums of the training diagnostics (float64), one vector for all of them.

    :meth:`add` takes the ``(names, means)`` of a step (:meth:`step_means`: each diagnostic,
    ``[B]`` per data point or a scalar, enters as its mean); :meth:`means` divides by the number of
    steps added.  :meth:`state` is a ``{name: scalar tensor}`` mapping (the checkpoint format);
    ``loss/kl_q_p`` is derived as ``loss/L_k - loss/elbo`` when the means are read, never summed.
    """

    def __init__(self) -> None:
        self.names: Tuple[str, ...] = ()
        self.values: Optional[Tensor] = None
        self.count = 0

    @staticmethod
    def step_means(diagnostics: Mapping[str, Mapping[str, Any]]) -> Tuple[Tuple[str, ...], Optional[Tensor]]:
        r"""``(names, means)`` of a step's diagnostics ``{group: {name: tensor}}``: names
        ``<group>/<name>``, ``means`` float64 ``[n]`` without graph (``None`` when there is none)."""
        names, cols = [], []
        for group, d in diagnostics.items():
            for k, v in d.items():
                if isinstance(v, Tensor):
                    names.append(f"{group}/{k}")
                    cols.append(v.detach().reshape(-1))
        if not cols:
            return (), None
        with torch.no_grad():
            if len({c.numel() for c in cols}) == 1:
                means = torch.stack(cols).to(torch.float64).mean(1)
            else:
                means = torch.stack([c.to(torch.float64).mean() for c in cols])
        return tuple(names), means

    def add(self, names: Tuple[str, ...], means: Optional[Tensor]) -> None:
        r"""Add one step (``means`` of ``names``; ``None``: a step without diagnostics)."""
        self.count += 1
        if means is None:
            return
        if names == self.names and self.values is not None:
            self.values += means
            return
        merged = self.state()  # the names changed (a resumed run, another estimator): by name
        for name, v in zip(names, means.unbind(0)):
            merged[name] = merged[name] + v if name in merged else v.clone()
        self._set(merged)

    def _set(self, state: Mapping[str, Tensor]) -> None:
        self.names = tuple(state)
        self.values = torch.stack([v.to(torch.float64).reshape(()) for v in state.values()]) if state else None

    def state(self) -> Dict[str, Tensor]:
        r"""``{name: sum}`` (the checkpoint format)."""
        if self.values is None:
            return {}
        return dict(zip(self.names, self.values.detach().unbind(0)))

    def load(self, state: Mapping[str, Tensor], count: int, device: torch.device) -> None:
        r"""Restore :meth:`state` and the step count (an old checkpoint's summed ``loss/kl_q_p`` is dropped)."""
        self._set({k: v.to(device) for k, v in state.items() if k != "loss/kl_q_p"})
        self.count = int(count)

    def means(self) -> Dict[str, float]:
        r"""``{name: sum / count}`` plus the derived ``loss/kl_q_p``; ``{}`` before any step."""
        if not self.count or self.values is None:
            return {}
        out = dict(zip(self.names, (self.values / self.count).tolist()))
        if "loss/L_k" in out and "loss/elbo" in out:
            out["loss/kl_q_p"] = out["loss/L_k"] - out["loss/elbo"]
        return out
