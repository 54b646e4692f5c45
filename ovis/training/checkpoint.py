r"""Checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint is a plain mapping of tensors, numbers, strings, lists and dicts (no pickled
objects), so that loading never executes code:

* ``model``, ``estimator``, ``optimizer``: ``state_dict()`` of each;
* ``step``, ``epoch``, ``last_eval_step``, ``elapsed``, ``best``, ``train_sums``: the loop state;
* ``rng``: the random states as tensors / plain types: torch CPU (``ByteTensor``), every CUDA
  device, numpy's MT19937 (keys as an ``int64`` tensor + position and Gaussian cache) and Python's
  ``random`` (the 625-word state as an ``int64`` tensor).

Restoring all of them makes a resumed run draw exactly what an uninterrupted run draws.

**Keeping the previous good checkpoint.**  :func:`save_checkpoint` with ``keep_previous=True``
writes the new checkpoint to a temporary file first (flushed, fsynced), then moves the current
one, when it is a complete archive, to :func:`previous_path` (``last.pt -> last.prev.pt``) and the
new one in its place (``os.replace`` both).  A kill at any instant leaves at least one complete
checkpoint.  :func:`load_resume_checkpoint` loads ``last.pt``, else (missing, empty, truncated,
not an ovis checkpoint) ``last.prev.pt`` with a one-line warning naming the bad file; when neither
is good it raises :class:`CheckpointError`, one line naming the file and the fix (``--rf``).

**The state of a run.**  :func:`run_state` gathers what a resumed run needs (the mapping above);
:func:`restore_run_state` loads it into the run's model, estimator, optimiser, running sums and
RNGs and returns the loop counters; :func:`check_run_id` rejects another run's checkpoint.
"""
from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ovis.training.rundir import atomic_torch_save
from ovis.training.sums import RunningSums
from ovis.utils.files import fsync_dir

__all__ = ["get_rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "load_resume_checkpoint",
           "previous_path", "CheckpointError", "CHECKPOINT_VERSION", "run_state", "restore_run_state",
           "check_run_id"]

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


class CheckpointError(ValueError):
    r"""A checkpoint cannot be used (unreadable, truncated, empty, or not an ovis checkpoint).

    The message is one line naming the file and the fix.
    """


def previous_path(path: os.PathLike | str) -> Path:
    r"""Where the previous good checkpoint of ``path`` is kept: ``last.pt -> last.prev.pt``."""
    p = Path(path)
    return p.with_name(p.stem + ".prev" + p.suffix)


def _complete(path: Path) -> bool:
    r"""Whether ``path`` is a complete ``torch.save`` archive (a zip whose central directory,
    at the end of the file, is intact); cheap: reads the end of the file only."""
    try:
        return path.is_file() and path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def save_checkpoint(path: os.PathLike | str, state: Mapping[str, Any], keep_previous: bool = False) -> None:
    r"""Save a checkpoint atomically (``torch.save`` to a temporary file, then ``os.replace``).

    With ``keep_previous``, the current file, when complete, becomes :func:`previous_path` just
    before the new one takes its place, so that a good checkpoint survives a bad write.
    """
    obj = {"version": CHECKPOINT_VERSION, **state}
    path = Path(path)
    if not keep_previous:
        atomic_torch_save(obj, path)
        return
    staged = path.with_name(path.name + ".new")
    atomic_torch_save(obj, staged)  # complete and fsynced before anything moves
    if _complete(path):
        os.replace(path, previous_path(path))
    os.replace(staged, path)
    fsync_dir(path.parent)


def load_checkpoint(path: os.PathLike | str, map_location: Any = "cpu") -> Dict[str, Any]:
    r"""Load a checkpoint with ``weights_only=True`` (no code is executed).

    Raises:
        CheckpointError: the file is empty, truncated, unreadable or not an ovis checkpoint of
            this version (one line naming the file).
    """
    try:
        if Path(path).stat().st_size == 0:
            raise CheckpointError(f"{path}: empty checkpoint file")
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ...
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt: "
                              f"{type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: not an ovis checkpoint of version {CHECKPOINT_VERSION}; delete the run with --rf"
        )
    return ckpt


def load_resume_checkpoint(path: os.PathLike | str, map_location: Any = "cpu",
                           check: Optional[Callable[[Dict[str, Any]], None]] = None,
                           warn: Callable[[str], None] = lambda msg: None
                           ) -> Tuple[Optional[Dict[str, Any]], Optional[Path]]:
    r"""The checkpoint to resume from: ``path``, else its previous good one (:func:`previous_path`).

    ``check(ckpt)`` may reject a loadable checkpoint by raising ``ValueError`` (e.g. another
    run's).  Returns ``(None, None)`` when neither file exists (a fresh run), ``(ckpt, file)``
    otherwise; ``warn`` receives one line when ``path`` is bad and the previous one is used.

    Raises:
        CheckpointError: a checkpoint exists but none is good; one line naming the file(s) and
            the fix (``--rf`` starts the run over).
    """
    path = Path(path)
    prev = previous_path(path)
    if not path.exists() and not prev.exists():
        return None, None
    errors = []
    for i, p in enumerate((path, prev)):
        if not p.exists():
            if i == 0:
                errors.append(f"{p}: missing")
            continue
        try:
            ckpt = load_checkpoint(p, map_location=map_location)
            if check is not None:
                check(ckpt)
        except (CheckpointError, ValueError) as e:
            errors.append(str(e).split("; delete the run")[0])
            continue
        if i == 1:
            warn(f"{errors[0]}; resuming from the previous good checkpoint {p}")
        return ckpt, p
    raise CheckpointError(f"no usable checkpoint to resume from ({'; '.join(errors)}); start the run over "
                          "with --rf (or put a good last.pt back)")


def run_state(*, model: torch.nn.Module, estimator: torch.nn.Module, optimizer: torch.optim.Optimizer,
              step: int, last_eval_step: int, best: Mapping[str, Any], elapsed: float, sums: RunningSums,
              log_sums: RunningSums, run_id: str) -> Dict[str, Any]:
    r"""The resumable state of a run (with the current RNG states), ready for :func:`save_checkpoint`.

    ``sums`` are the training sums since the last evaluation, ``log_sums`` since the last progress
    record; ``elapsed`` the training seconds so far; ``best`` ``{"value", "step"[, "test"]}``.
    """
    return {
        "model": model.state_dict(),
        "estimator": estimator.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "last_eval_step": int(last_eval_step),
        "best": dict(best),
        "elapsed": float(elapsed),
        "sums": {k: v.cpu() for k, v in sums.state().items()},
        "count": int(sums.count),
        "log_sums": {k: v.cpu() for k, v in log_sums.state().items()},
        "log_count": int(log_sums.count),
        "rng": get_rng_state(),
        "run_id": run_id,
    }


def check_run_id(ckpt: Mapping[str, Any], run_id: str, path: os.PathLike | str) -> None:
    r"""Raise ``ValueError`` (one line naming ``path`` and the fix) when ``ckpt`` is not run ``run_id``'s."""
    if ckpt.get("run_id") != run_id:
        raise ValueError(f"{path} belongs to run {ckpt.get('run_id')!r}, not {run_id!r}; delete the run with --rf")


def restore_run_state(ckpt: Mapping[str, Any], *, model: torch.nn.Module, estimator: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, sums: RunningSums, log_sums: RunningSums,
                      device: torch.device) -> Dict[str, Any]:
    r"""Load a :func:`run_state` checkpoint into the given objects and the global RNGs; return the
    loop counters ``{"step", "last_eval_step", "best", "elapsed"}``."""
    model.load_state_dict(ckpt["model"])
    estimator.load_state_dict(ckpt["estimator"])
    optimizer.load_state_dict(ckpt["optimizer"])
    sums.load(ckpt["sums"], ckpt["count"], device)
    log_sums.load(ckpt["log_sums"], ckpt["log_count"], device)
    set_rng_state(ckpt["rng"])
    return {"step": int(ckpt["step"]), "last_eval_step": int(ckpt["last_eval_step"]), "best": dict(ckpt["best"]),
            "elapsed": float(ckpt["elapsed"])}
