r"""The backend interface of the manager and the registry of backends by name.

A *backend* decides where the queue's jobs are claimed and run; the queue
(:class:`ovis.experiments.queue.JobQueue`) stays the record of truth for every backend.

Built-in backends (``manager.py --backend NAME``):

* ``local``: :class:`ovis.experiments.local_backend.LocalBackend`, one worker process per slot;
* ``dask``: :class:`ovis.experiments.dask_backend.DaskBackend`, one Dask task per job.

The registry maps a name to a backend class or to the ``"module:Class"`` path of one; a path is
imported only when that backend is asked for (so ``distributed`` is needed only for ``dask``).
This module imports no backend: each backend module imports it, never the other way round.
"""
from __future__ import annotations

import abc
import importlib
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Type, Union

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from ovis.experiments.workers import WorkerConfig

__all__ = [
    "Backend",
    "BackendNotAvailable",
    "register_backend",
    "backend_names",
    "backend_class",
    "make_backend",
]


class BackendNotAvailable(RuntimeError):
    r"""The requested backend cannot run here (not implemented, or its package is missing)."""


class Backend(abc.ABC):
    r"""How the manager gets queued jobs executed.

    The queue is the record of truth for every backend: a backend only decides *where* claims
    are made and jobs run.  ``start`` launches execution for the given slots (one device string
    per concurrent job), ``running`` says whether any executor is still active, ``stop`` ends
    them (their jobs end ``aborted``), ``executor_pids`` lists local executor pids (for the
    manager's bookkeeping; empty for remote executors).
    """

    @classmethod
    @abc.abstractmethod
    def from_cli(cls, cfg: "WorkerConfig", *, address: Optional[str], grace: float,
                 requeue_lost: bool) -> "Backend":
        r"""The backend for the manager's options: ``--address``, ``--grace`` and
        ``--requeue_level >= 1`` (``requeue_lost``).  Raises :class:`BackendNotAvailable` when
        the options do not fit this backend."""

    @abc.abstractmethod
    def start(self, slots: Sequence[str]) -> None:
        r"""Launch execution: one concurrent job per slot, ``slots`` the device strings (e.g.
        ``["cpu", "cpu"]`` or ``["cuda:0", "cuda:1"]``); returns at once, the executors claim jobs
        from the queue until it is drained or :meth:`stop` is called."""

    @abc.abstractmethod
    def running(self) -> bool:
        r"""Whether any executor is still active (claiming or running jobs)."""

    @abc.abstractmethod
    def stop(self, timeout: float) -> None:
        r"""End the executors, waiting up to ``timeout`` seconds; their running jobs end ``aborted``."""

    def executor_pids(self) -> List[int]:
        r"""The process ids of the local executors (the manager's bookkeeping); empty for remote ones."""
        return []


_REGISTRY: Dict[str, Union[str, Type[Backend]]] = {
    "local": "ovis.experiments.local_backend:LocalBackend",
    "dask": "ovis.experiments.dask_backend:DaskBackend",
}


def register_backend(name: str, backend: Union[str, Type[Backend]]) -> None:
    r"""Register ``backend`` (a :class:`Backend` subclass or its ``"module:Class"`` path) as ``name``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"backend name {name!r} must be an identifier (e.g. 'local')")
    if isinstance(backend, str):
        if backend.count(":") != 1:
            raise ValueError(f"backend path {backend!r} must read 'package.module:Class'")
    elif not (isinstance(backend, type) and issubclass(backend, Backend)):
        raise TypeError(f"backend {backend!r} for {name!r} must be a Backend subclass or a 'module:Class' path")
    _REGISTRY[name] = backend


def backend_names() -> Tuple[str, ...]:
    r"""The registered backend names, in registration order (built-ins first: ``local``, ``dask``)."""
    return tuple(_REGISTRY)


def backend_class(name: str) -> Type[Backend]:
    r"""The class registered as ``name`` (imported now when registered by path)."""
    target = _REGISTRY.get(name)
    if target is None:
        raise BackendNotAvailable(f"unknown backend {name!r} (valid: {', '.join(_REGISTRY)})")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise BackendNotAvailable(f"backend {name!r}: cannot import {module} ({e})") from None
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise BackendNotAvailable(f"backend {name!r}: {target} is not a Backend subclass")
        _REGISTRY[name] = target = cls
    return target


def make_backend(name: str, cfg: "WorkerConfig", address: Optional[str] = None, grace: float = 60.0,
                 requeue_lost: bool = True) -> Backend:
    r"""The backend called ``name`` (``local`` or ``dask``; :class:`BackendNotAvailable` otherwise).

    ``grace`` (the manager's ``--grace``) and ``requeue_lost`` (``--requeue_level >= 1``) are
    passed to every backend: each requeues the jobs its executors lost (at most 3 attempts), and
    the local one also replaces its dead worker processes.
    """
    return backend_class(name).from_cli(cfg, address=address, grace=grace, requeue_lost=requeue_lost)
