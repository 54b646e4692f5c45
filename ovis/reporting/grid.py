r"""Which jobs of an experiment grid have a finished run, and which are missing.

Every job of ``experiments/<exp>.json`` is mapped to the run directory it writes: for ``run.py``
through the deterministic run id (``ovis.training.rundir.compute_run_id`` of the parsed job
arguments), for ``asymptotic_variance.py`` through ``ovis.analysis.asymptotic.run_id``; a run
directory whose ``config.json`` records the job's id (``OVIS_JOB_ID``) also counts.  A job is
``missing`` when no run directory exists, else it has the run's report status (success, failed,
running, unfinished, corrupt, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pandas as pd

from ovis.reporting.runs import ExperimentData

__all__ = ["grid_status"]


def _run_id_function(script: str) -> Optional[Callable[[List[str]], str]]:
    name = Path(script).name
    if name == "run.py":
        from ovis.training.arguments import parse_run_args
        from ovis.training.rundir import compute_run_id

        return lambda argv: compute_run_id(parse_run_args(argv))
    if name == "asymptotic_variance.py":
        from ovis.analysis.asymptotic import parse_args, run_id

        return lambda argv: run_id(parse_args(argv))
    return None


def grid_status(experiment_file: Path, exp: str, data: ExperimentData) -> pd.DataFrame:
    r"""One row per job of the grid: ``job_id, command, run_id, status`` (``missing`` when the job
    has no run directory).  Raises ``ValueError`` (from the experiment loader) on a bad file."""
    from ovis.experiments.grid import load_and_expand

    e, jobs, _ = load_and_expand(experiment_file, validate=False)
    to_id = _run_id_function(e.script)
    status = dict(zip(data.runs["run_id"], data.runs["status"]))
    by_job: Dict[Any, str] = {}
    for rec in data.records:
        jid = rec.config.get("job_id") or rec.status_info.get("job_id")
        if jid:
            by_job[jid] = rec.run_id
    rows = []
    for job in jobs:
        rid = None
        if to_id is not None:
            try:
                rid = to_id(list(job.argv) + ["--exp", exp, "--root", str(data.root), "--data_root", "data/"])
            except (ValueError, SystemExit):
                rid = None
        if rid not in status:
            rid = by_job.get(job.job_id, rid)
        rows.append({"job_id": job.job_id, "command": job.command, "run_id": rid,
                     "status": status.get(rid, "missing") if rid else "missing"})
    return pd.DataFrame(rows, columns=["job_id", "command", "run_id", "status"])
