r"""The experiment system: experiment files (grids), a crash-safe job queue, workers, backends.

``manager.py`` and ``dbutils.py`` are thin front-ends to :func:`manager_main` and
:func:`dbutils_main`.  See ``experiments.md`` for the file format and the job contract.
"""
from ovis.experiments.grid import (DEFAULT_SCRIPT, Experiment, ExperimentError, Job, expand_grid,
                                   job_id_of, load_and_expand, load_experiment, validate_jobs)
from ovis.experiments.queue import (FINAL_STATUSES, REQUEUE_LEVELS, STATUSES, AtomicJSONStorage,
                                    JobQueue, QueueError, statuses_for_level)
from ovis.experiments.workers import (Backend, BackendNotAvailable, JobOutcome, LocalBackend,
                                      WorkerConfig, discover_gpus, find_run_status, make_backend,
                                      run_claimed_job, worker_loop)

__all__ = [
    "DEFAULT_SCRIPT", "Experiment", "ExperimentError", "Job", "expand_grid", "job_id_of",
    "load_and_expand", "load_experiment", "validate_jobs",
    "FINAL_STATUSES", "REQUEUE_LEVELS", "STATUSES", "AtomicJSONStorage", "JobQueue", "QueueError",
    "statuses_for_level",
    "Backend", "BackendNotAvailable", "JobOutcome", "LocalBackend", "WorkerConfig", "discover_gpus",
    "find_run_status", "make_backend", "run_claimed_job", "worker_loop",
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
