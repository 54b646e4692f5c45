r"""Checks the manager makes before it queues anything (``manager.py``).

The experiment file itself is validated by :func:`ovis.experiments.grid.load_and_expand`: every
job's command line goes through its script's parser, so an estimator / ``K`` combination the
estimator refuses (``GradientEstimator.check_arguments``, e.g. VIMCO with ``K = 1``) is already an
:class:`~ovis.experiments.grid.ExperimentError`.  What the parser cannot know is the machine:
:func:`check_data` looks for the data sets the jobs need under the manager's ``--data_root``
(the files are found as the loaders find them, not read), so that a missing data root fails once,
in one line, instead of failing every job after it started.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence

from ovis.experiments.grid import Experiment, Job, _parsed_jobs, _validator_for

__all__ = ["PreflightError", "check_data", "preflight"]


class PreflightError(RuntimeError):
    r"""A grid that cannot run on this machine; the message is one line naming the input and the fix."""


def _datasets_of(exp: Experiment, jobs: Sequence[Job]) -> Dict[str, List[Job]]:
    r"""``{data set name: jobs that read it}`` for the jobs whose script takes ``--dataset``."""
    validator, _ = _validator_for(exp.script)
    if validator is None:
        return {}
    out: Dict[str, List[Job]] = {}
    for job, ns, error in _parsed_jobs(exp, jobs, validator):
        if error is not None:  # the grid validation reports these
            continue
        name = getattr(ns, "dataset", None)
        if isinstance(name, str):
            out.setdefault(name, []).append(job)
    return out


def check_data(exp: Experiment, jobs: Sequence[Job], data_root: os.PathLike | str) -> None:
    r"""Raise :class:`PreflightError` when a data set some job needs is not under ``data_root``.

    Generated data sets (``gmm``, ``gaussian-toy``, ``shapes``) need no file.  The message names the
    data set, how many jobs need it, the folders searched, the files to place there and the flag
    to change (``--data_root``); when several are missing, one line names them all and the one
    fetch command that gets them (``python -m ovis.datasets fetch A B ... --data_root DIR``).
    """
    from ovis.datasets import DatasetNotFoundError, locate_dataset
    from ovis.datasets.errors import FETCHABLE, fetch_command

    missing: List[tuple] = []
    for name, users in sorted(_datasets_of(exp, jobs).items()):
        try:
            locate_dataset(name, data_root)
        except DatasetNotFoundError as e:
            missing.append((name, users, e))
        except ValueError:  # an unknown name: the job script's parser refuses it
            continue
    if len(missing) == 1:
        name, users, e = missing[0]
        raise PreflightError(
            f"data set {name!r}, needed by {len(users)} job(s) of {exp.path}, is not under --data_root "
            f"{Path(data_root)}: {e}")
    if missing:
        names = [m[0] for m in missing]
        n_jobs = sum(len(m[1]) for m in missing)
        fetchable = [n for n in names if n in FETCHABLE]
        how = f"fetch them with: {fetch_command(fetchable, data_root)}; " if fetchable else ""
        raise PreflightError(
            f"data sets {', '.join(map(repr, names))}, needed by {n_jobs} job(s) of {exp.path}, are not under "
            f"--data_root {Path(data_root)}: {how}the first: {missing[0][2]}")


def preflight(exp: Experiment, jobs: Sequence[Job], data_root: os.PathLike | str) -> None:
    r"""Every machine-dependent check before queueing (:func:`check_data`)."""
    check_data(exp, jobs, data_root)
