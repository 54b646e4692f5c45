r"""The experiment system: experiment files (grids), a crash-safe job queue, workers, backends.

Backends (``--backend local|dask``) are registered by name in :mod:`ovis.experiments.backend`.
``manager.py`` and ``dbutils.py`` are thin front-ends to :func:`manager_main` and
:func:`dbutils_main`.  See ``experiments.md`` for the file format and the job contract.
"""
from ovis.experiments.backend import Backend, BackendNotAvailable, backend_names, make_backend, register_backend
from ovis.experiments.grid import (
    DEFAULT_SCRIPT,
    Experiment,
    ExperimentError,
    Job,
    expand_grid,
    job_id_of,
    load_and_expand,
    load_experiment,
    validate_jobs,
)
from ovis.experiments.local_backend import LocalBackend
from ovis.experiments.queue import (
    FINAL_STATUSES,
    REQUEUE_LEVELS,
    STATUSES,
    AtomicJSONStorage,
    JobQueue,
    QueueError,
    statuses_for_level,
)
from ovis.experiments.workers import (
    JobOutcome,
    WorkerConfig,
    discover_gpus,
    find_run_status,
    run_claimed_job,
    worker_loop,
)

__all__ = [
    "DEFAULT_SCRIPT", "Experiment", "ExperimentError", "Job", "expand_grid", "job_id_of",
    "load_and_expand", "load_experiment", "validate_jobs",
    "FINAL_STATUSES", "REQUEUE_LEVELS", "STATUSES", "AtomicJSONStorage", "JobQueue", "QueueError",
    "statuses_for_level",
    "Backend", "BackendNotAvailable", "JobOutcome", "LocalBackend", "WorkerConfig", "discover_gpus",
    "find_run_status", "make_backend", "run_claimed_job", "worker_loop", "backend_names", "register_backend",
    "manager_main", "dbutils_main",
]


def manager_main(argv=None) -> int:
    r"""``manager.py``'s entry point (imported lazily)."""
    from ovis.experiments.manager import manager_main as _m

    return _m(argv)


def dbutils_main(argv=None) -> int:
    r"""``dbutils.py``'s entry point (imported lazily)."""
    from ovis.experiments.dbutils import dbutils_main as _m

    return _m(argv)
