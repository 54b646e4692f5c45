"""Helpers for the experiment-system tests: a fake source tree, runners.

The fake job script (``tests/fakes.py``, written into tmp_path) follows the job contract without
run.py: it reads ``OVIS_JOB_ID``, writes ``<root>/<exp>/<job_id>/status.json``, sleeps ``--sleep``
seconds, exits with ``--code``; the default variant logs every start to
``$FAKE_COUNT_DIR/starts.log`` and records a violation in ``$FAKE_COUNT_DIR/violations.log`` if
another process of the same job is alive when it starts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from fakes import LOCAL_JOB

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

def make_src(tmp: Path, name: str, grid: Dict, script: str = "fake_job.py", job: str = LOCAL_JOB) -> Path:
    r"""A fake source tree: the fake job script ``job`` (a variant of ``tests/fakes.py``'s, named
    ``script``) and ``experiments/<name>.json``."""
    src = tmp / "src"
    (src / "experiments").mkdir(parents=True, exist_ok=True)
    (src / script).write_text(job)
    g = dict(grid)
    g.setdefault("description", "test grid")
    g.setdefault("global", "")
    g.setdefault("script", script)
    (src / "experiments" / f"{name}.json").write_text(json.dumps(g))
    return src


def env_with_counts(count_dir: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["FAKE_COUNT_DIR"] = str(count_dir)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    count_dir.mkdir(parents=True, exist_ok=True)
    return env


def manager_cmd(src: Path, name: str, root: Path, *extra: str) -> List[str]:
    return [PY, str(REPO / "manager.py"), "--exp", name, "--src", str(src), "--root", str(root),
            "--data_root", str(root.parent / "data"), "--heartbeat", "0.3", "--grace", "3", "--poll", "0.1",
            "--term_timeout", "2", "--no_progress", *extra]


def starts(count_dir: Path) -> List[List[str]]:
    f = count_dir / "starts.log"
    return [line.split() for line in f.read_text().splitlines()] if f.exists() else []


def violations(count_dir: Path) -> str:
    f = count_dir / "violations.log"
    return f.read_text() if f.exists() else ""


def wait_for(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
