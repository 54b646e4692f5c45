r"""Workers: claim a job, run its script in a subprocess, heartbeat, record the outcome.

The *job contract* (``experiments.md``): from the snapshot folder, run
``python SCRIPT <global> <arg> <parameters> --exp EXP --root ABS_ROOT --data_root ABS_DATA_ROOT``
with ``OVIS_JOB_ID`` set to the job id and ``CUDA_VISIBLE_DEVICES`` to its device.  The outcome is
judged from the exit code and the run's own ``status.json`` (the run directory is the one under
``<root>/<exp>/`` whose ``status.json`` carries this ``job_id``).

Everything here is backend-neutral (backends: :mod:`ovis.experiments.backend`):

* :func:`run_claimed_job` runs one *already claimed* job to completion (the local backend's
  workers call it in a loop; a Dask task calls it after adopting the manager's claim);
* :func:`worker_loop` is the local worker: claim, run, repeat until nothing is queued.

Process hygiene: a job runs in its own session / process group (so it can be killed with all its
children) and receives ``SIGKILL`` if its worker dies (Linux ``PR_SET_PDEATHSIG``); a local worker
receives ``SIGTERM`` if its manager dies, and then aborts its job cleanly.  A job is therefore
never left running without a worker that heartbeats for it.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ovis.experiments.devices import discover_gpus
from ovis.experiments.queue import JobQueue, QueueError, kill_group

__all__ = [
    "WorkerConfig",
    "JobOutcome",
    "run_claimed_job",
    "worker_loop",
    "find_run_status",
    "discover_gpus",  # from ovis.experiments.devices
    "die_with_parent",
]

log = logging.getLogger("ovis.experiments")


# ----------------------------------------------------------------------------------------------
# process helpers


def die_with_parent(sig: int = signal.SIGKILL, new_session: bool = False) -> Optional[Callable[[], None]]:
    r"""A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None

    def _pre() -> None:
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), sig)

    return _pre


def _tail(path: Path, nbytes: int = 3000, nlines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-nlines:])


def find_run_status(exp_dir: Path, job_id: str) -> Tuple[Optional[Path], Optional[Dict[str, Any]]]:
    r"""The run directory of ``job_id`` under ``exp_dir`` and its ``status.json`` (or ``None``)."""
    best: Tuple[float, Optional[Path], Optional[Dict[str, Any]]] = (-1.0, None, None)
    for st in Path(exp_dir).glob("*/status.json"):
        try:
            data = json.loads(st.read_text())
            mtime = st.stat().st_mtime
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("job_id") == job_id and mtime > best[0]:
            best = (mtime, st.parent, data)
    return best[1], best[2]


# ----------------------------------------------------------------------------------------------
# running one job


@dataclass
class WorkerConfig:
    r"""Where a worker runs jobs from and how it reports."""

    exp: str
    exp_dir: Path  # <root>/<exp> (absolute)
    root: Path  # absolute
    data_root: Path  # absolute
    snapshot: Path  # <root>/<exp>/.lib_snapshot
    device: str = "cpu"  # "cpu" or a GPU index
    worker: str = "w0"
    manager: Optional[str] = None
    heartbeat: float = 10.0  # seconds between heartbeats
    poll: float = 0.1  # seconds between checks of the job process
    term_timeout: float = 10.0  # SIGTERM -> SIGKILL delay when aborting
    python: str = sys.executable
    threads: Optional[int] = None  # OMP/MKL threads of a CPU job (unless set in the environment)


@dataclass
class JobOutcome:
    r"""How a claimed job ended (:func:`run_claimed_job`).

    Attributes:
        status: ``success``, ``failed`` or ``aborted``; ``""`` when the claim was lost (nothing
            recorded).
        exit_code: the process's exit code (``None`` when it did not run to an exit).
        error: the error text recorded in the queue, or ``None``.
        run_dir: the run directory the job reported, or ``None``.
    """

    status: str  # success | failed | aborted | "" (claim lost: nothing recorded)
    exit_code: Optional[int]
    error: Optional[str]
    run_dir: Optional[str]


def build_command(rec: Dict[str, Any], cfg: WorkerConfig) -> List[str]:
    r"""The job's command line (the job contract)."""
    argv = list(rec["argv"]) + ["--exp", cfg.exp, "--root", str(cfg.root), "--data_root", str(cfg.data_root)]
    if rec.get("fresh") and Path(rec["script"]).name == "run.py":
        argv.append("--rf")  # a requeued success starts over
    return [cfg.python, str(cfg.snapshot / rec["script"])] + argv


def job_env(rec: Dict[str, Any], cfg: WorkerConfig) -> Dict[str, str]:
    r"""The environment of a job's process: this process's, plus ``OVIS_JOB_ID``,
    ``CUDA_VISIBLE_DEVICES`` (empty on the CPU, else the device), ``PYTHONPATH`` starting with the
    code snapshot, ``PYTHONUNBUFFERED=1`` and, for CPU jobs with ``cfg.threads``, the OMP/MKL thread
    counts (unless already set).
    """
    env = dict(os.environ)
    env["OVIS_JOB_ID"] = rec["job_id"]
    env["CUDA_VISIBLE_DEVICES"] = "" if cfg.device == "cpu" else str(cfg.device)
    env["PYTHONPATH"] = str(cfg.snapshot) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    if cfg.device == "cpu" and cfg.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(cfg.threads))
    return env


def run_claimed_job(queue: JobQueue, rec: Dict[str, Any], cfg: WorkerConfig,
                    should_stop: Callable[[], bool] = lambda: False) -> JobOutcome:
    r"""Run the claimed job ``rec`` to its end and record the outcome in ``queue``.

    ``should_stop()`` is polled: when it turns true the job's process group gets ``SIGTERM``
    (``SIGKILL`` after ``cfg.term_timeout``) and the job is recorded ``aborted``.  If the claim
    token stops being the job's (requeued by force, marked lost), the job is killed and nothing
    is recorded.
    """
    job_id, token = rec["job_id"], rec["claim_token"]
    logs = cfg.exp_dir / ".logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{job_id}.{rec['attempts']}.log"
    cmd = build_command(rec, cfg)
    with open(log_path, "ab") as logf:
        logf.write(("$ " + " ".join(cmd) + "\n").encode())
        logf.flush()
        try:
            proc = subprocess.Popen(cmd, cwd=str(cfg.snapshot), env=job_env(rec, cfg), stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=die_with_parent(signal.SIGKILL))
        except OSError as e:
            queue.finish(job_id, token, "failed", None, f"cannot start {cmd[1]}: {e}", None)
            return JobOutcome("failed", None, str(e), None)
    if not _safe(lambda: queue.set_pid(job_id, token, proc.pid), True):
        _kill(proc, 0.0)
        return JobOutcome("", None, "claim lost", None)
    aborted = False
    last_hb = time.monotonic()
    while True:
        rc = proc.poll()
        if rc is not None:
            break
        if should_stop():
            aborted = True
            rc = _kill(proc, cfg.term_timeout)
            break
        if time.monotonic() - last_hb >= cfg.heartbeat:
            last_hb = time.monotonic()
            if not _safe(lambda: queue.heartbeat(job_id, token), True):
                _kill(proc, 0.0)
                log.warning("job %s: claim lost (requeued or marked lost elsewhere); killed", job_id)
                return JobOutcome("", proc.returncode, "claim lost", None)
        time.sleep(cfg.poll)
    kill_group(proc.pid, signal.SIGKILL)  # children the script left behind
    out = judge(cfg.exp_dir, job_id, rc, aborted, log_path)
    for attempt in range(5):  # the outcome must reach the queue: retry a lock timeout
        try:
            if not queue.finish(job_id, token, out.status, out.exit_code, out.error, out.run_dir):
                log.warning("job %s finished (%s) but its claim was no longer ours: not recorded", job_id, out.status)
            break
        except QueueError as e:
            log.warning("recording job %s (attempt %d): %s", job_id, attempt + 1, e)
    return out


def _safe(fn: Callable[[], bool], default: bool) -> bool:
    r"""Call a queue operation; on a lock timeout keep going with ``default``."""
    try:
        return fn()
    except QueueError as e:
        log.warning("%s", e)
        return default


def _kill(proc: subprocess.Popen, timeout: float) -> int:
    r"""SIGTERM the job's group, SIGKILL it after ``timeout`` s; return the exit code."""
    if timeout > 0:
        kill_group(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc.pid, signal.SIGKILL)
    return proc.wait()


def judge(exp_dir: Path, job_id: str, rc: int, aborted: bool, log_path: Path) -> JobOutcome:
    r"""The outcome from the exit code, the run's ``status.json`` and the log tail."""
    run_dir, st = find_run_status(exp_dir, job_id)
    run_status = st.get("status") if st else None
    rd = str(run_dir) if run_dir else None
    if aborted:
        return JobOutcome("aborted", rc, "aborted by the manager (SIGTERM / Ctrl-C)", rd)
    if rc == 0:
        if run_status in (None, "success"):
            return JobOutcome("success", 0, None, rd)
        return JobOutcome("failed", 0, f"exit code 0 but status.json says {run_status!r}: "
                          f"{st.get('error') if st else ''}\n{_tail(log_path)}", rd)
    if run_status == "aborted":
        return JobOutcome("aborted", rc, f"the run reports aborted (exit {rc})\n{_tail(log_path)}", rd)
    why = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
    err = (st or {}).get("error")
    return JobOutcome("failed", rc, f"{why}" + (f"; status.json error: {err}" if err else "")
                      + "\n" + _tail(log_path), rd)


def worker_loop(cfg: WorkerConfig, queue: Optional[JobQueue] = None,
                should_stop: Callable[[], bool] = lambda: False, max_jobs: Optional[int] = None) -> int:
    r"""Claim and run jobs until none is queued (or ``should_stop``); return the number run."""
    queue = queue or JobQueue(cfg.exp_dir)
    n = 0
    while not should_stop() and (max_jobs is None or n < max_jobs):
        rec = queue.claim(cfg.worker, cfg.device, os.getpid(), manager=cfg.manager)
        if rec is None:
            break
        log.info("worker %s (pid %d, device %s): job %s attempt %d: %s", cfg.worker, os.getpid(),
                 cfg.device, rec["job_id"], rec["attempts"], " ".join(rec["argv"]))
        out = run_claimed_job(queue, rec, cfg, should_stop)
        log.info("worker %s: job %s -> %s", cfg.worker, rec["job_id"], out.status or "claim lost")
        n += 1
    return n
