r"""The function a Dask worker runs for a job; it reaches the workers *by value*.

:mod:`ovis.experiments.dask_backend` registers this module with
:func:`cloudpickle.register_pickle_by_value`, so that :func:`run_job`'s code travels with each
task and the workers need no installed ``ovis``: the function puts the experiment's snapshot
``<root>/<exp>/.lib_snapshot`` first on ``sys.path``, imports
:mod:`ovis.experiments.dask_backend` from it and calls its
:func:`~ovis.experiments.dask_backend.execute_job_task`.

Contract of this module: standard-library imports only, nothing from ``ovis`` at module level
(whatever :func:`run_job` refers to is pickled with it).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Dict

__all__ = ["run_job"]


def run_job(snapshot: str, payload: Dict[str, Any]) -> Dict[str, Any]:
    r"""Run the job of ``payload`` with the task code of ``snapshot`` (an absolute path).

    The task code of a long-lived worker is the first one it imported (``ovis`` already on its
    path, or the first snapshot it saw): modules are imported once per process.
    """
    if snapshot and snapshot not in sys.path:
        sys.path.insert(0, snapshot)
    mod = importlib.import_module("ovis.experiments.dask_backend")
    return mod.execute_job_task(payload)
