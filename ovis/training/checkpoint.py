r"""Checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint is a plain mapping of tensors, numbers, strings, lists and dicts (no pickled
objects), so that loading never executes code:

* ``model``, ``estimator``, ``optimizer``: ``state_dict()`` of each;
* ``step``, ``epoch``, ``last_eval_step``, ``elapsed``, ``best``, ``train_sums``: the loop state;
* ``rng``: the random states as tensors / plain types: torch CPU (``ByteTensor``), every CUDA
  device, numpy's MT19937 (keys as an ``int64`` tensor + position and Gaussian cache) and Python's
  ``random`` (the 625-word state as an ``int64`` tensor).

Restoring all of them makes a resumed run draw exactly what an uninterrupted run draws.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Mapping

import numpy as np
import torch

from ovis.training.rundir import atomic_torch_save

__all__ = ["get_rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


def get_rng_state() -> Dict[str, Any]:
    r"""The torch / CUDA / numpy / python RNG states as ``weights_only``-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    r"""Restore the states saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"].tolist()),
                     p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: os.PathLike | str, state: Mapping[str, Any]) -> None:
    r"""Save a checkpoint atomically (``torch.save`` to a temporary file, then ``os.replace``)."""
    atomic_torch_save({"version": CHECKPOINT_VERSION, **state}, path)


def load_checkpoint(path: os.PathLike | str, map_location: Any = "cpu") -> Dict[str, Any]:
    r"""Load a checkpoint with ``weights_only=True`` (no code is executed)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: not an ovis checkpoint of version {CHECKPOINT_VERSION}; delete the run with --rf"
        )
    return ckpt
