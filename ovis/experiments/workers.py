r"""Workers: claim a job, run its script in a subprocess, heartbeat, record the outcome.

The *job contract* (``experiments.md``): from the snapshot folder, run
``python SCRIPT <global> <arg> <parameters> --exp EXP --root ABS_ROOT --data_root ABS_DATA_ROOT``
with ``OVIS_JOB_ID`` set to the job id and ``CUDA_VISIBLE_DEVICES`` to its device.  The outcome is
judged from the exit code and the run's own ``status.json`` (the run directory is the one under
``<root>/<exp>/`` whose ``status.json`` carries this ``job_id``).

Everything a backend needs is here and backend-neutral:

* :func:`run_claimed_job` runs one *already claimed* job to completion (the local backend's
  workers call it in a loop; a Dask task would call :meth:`JobQueue.claim` with ``job_id=`` or
  :meth:`JobQueue.verify_claim` first, then this);
* :func:`worker_loop` is the local worker: claim, run, repeat until nothing is queued;
* :class:`Backend` is the interface the manager drives; :class:`LocalBackend` starts worker
  processes (``python -m ovis.experiments.worker_cli``), one per slot (device).

Process hygiene: a job runs in its own session / process group (so it can be killed with all its
children) and receives ``SIGKILL`` if its worker dies (Linux ``PR_SET_PDEATHSIG``); a local worker
receives ``SIGTERM`` if its manager dies, and then aborts its job cleanly.  A job is therefore
never left running without a worker that heartbeats for it.
"""
from __future__ import annotations

import abc
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ovis.experiments.devices import cpu_threads_per_worker, discover_gpus  # noqa: F401 - discover_gpus re-exported
from ovis.experiments.queue import JobQueue, QueueError, kill_group

__all__ = [
    "WorkerConfig",
    "JobOutcome",
    "run_claimed_job",
    "worker_loop",
    "find_run_status",
    "discover_gpus",  # from ovis.experiments.devices
    "Backend",
    "LocalBackend",
    "DaskBackend",
    "BackendNotAvailable",
    "make_backend",
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


# ----------------------------------------------------------------------------------------------
# backends


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

    @abc.abstractmethod
    def start(self, slots: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def running(self) -> bool: ...

    @abc.abstractmethod
    def stop(self, timeout: float) -> None: ...

    def executor_pids(self) -> List[int]:
        return []


@dataclass
class LocalBackend(Backend):
    r"""One worker process per slot on this machine (``python -m ovis.experiments.worker_cli``).

    Supervision, done at every :meth:`running` call (the manager polls it): a worker that died
    (non-zero exit: killed, crashed) has its running jobs marked ``lost`` at once (its pid is dead),
    and a ``lost`` job claimed under this manager is requeued while it has had fewer than
    ``max_attempts`` attempts (``requeue_lost``: the manager's ``--requeue_level >= 1``), as the
    Dask backend does.  The dead worker is replaced, at most ``max_restarts`` times per slot (a
    worker that cannot start is not restarted forever); a worker is also started on an idle slot
    when requeued jobs wait and no worker is alive.
    """

    cfg: WorkerConfig
    grace: float = 60.0
    requeue_lost: bool = True
    max_attempts: int = 3
    max_restarts: int = 3
    procs: List[subprocess.Popen] = field(default_factory=list)
    slots: List[str] = field(default_factory=list, init=False)
    current: List[Optional[subprocess.Popen]] = field(default_factory=list, init=False)
    restarts: List[int] = field(default_factory=list, init=False)
    stopping: bool = field(default=False, init=False)
    given_up: Set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")

    def _spawn(self, i: int) -> subprocess.Popen:
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        c, dev = self.cfg, self.slots[i]
        cmd = [c.python, "-m", "ovis.experiments.worker_cli", "--exp", c.exp, "--exp_dir", str(c.exp_dir),
               "--root", str(c.root), "--data_root", str(c.data_root), "--snapshot", str(c.snapshot),
               "--device", dev, "--worker", f"w{i}@{dev}", "--heartbeat", str(c.heartbeat),
               "--poll", str(c.poll), "--term_timeout", str(c.term_timeout)]
        if dev == "cpu":  # CPU jobs share the cores
            cmd += ["--threads", str(c.threads or cpu_threads_per_worker(len(self.slots)))]
        if c.manager:
            cmd += ["--manager", c.manager]
        logf = open(c.exp_dir / ".logs" / f"worker-{i}.log", "ab")
        try:
            p = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(signal.SIGTERM))
        finally:
            logf.close()
        self.procs.append(p)
        self.current[i] = p
        return p

    def start(self, slots: Sequence[str]) -> None:
        self.slots = list(slots)
        self.current = [None] * len(self.slots)
        self.restarts = [0] * len(self.slots)
        for i in range(len(self.slots)):
            self._spawn(i)

    def supervise(self) -> None:
        r"""Mark the jobs of dead workers lost, requeue lost jobs within the attempt cap, replace
        dead workers (see the class docstring).  Queue errors are logged, never raised."""
        if self.stopping or not self.slots:
            return
        died = [i for i, p in enumerate(self.current) if p is not None and p.poll() not in (None, 0)]
        queue = JobQueue(self.cfg.exp_dir)
        try:
            if died:
                for i in died:
                    log.warning("worker %d (pid %d, device %s) died (%s)", i, self.current[i].pid, self.slots[i],
                                _exit_text(self.current[i].returncode))
                lost = queue.mark_lost(self.grace)
                if lost:
                    log.warning("lost (worker died): %s", ", ".join(lost))
            requeued = self._requeue_lost(queue) if self.requeue_lost else []
            waiting = requeued or (died and any(d["status"] == "queued" for d in queue.all_jobs()))
        except QueueError as e:
            log.warning("%s", e)
            return
        for i in died:
            if self.restarts[i] >= self.max_restarts:
                log.warning("worker %d died %d times: not restarted", i, self.restarts[i] + 1)
                self.current[i] = None
                continue
            self.restarts[i] += 1
            p = self._spawn(i)
            log.info("worker %d replaced (pid %d, restart %d of %d)", i, p.pid, self.restarts[i], self.max_restarts)
        if waiting and not any(p is not None and p.poll() is None for p in self.current):
            idle = [i for i, p in enumerate(self.current) if p is not None]  # exited normally
            if idle:
                p = self._spawn(idle[0])
                log.info("worker %d restarted for the requeued jobs (pid %d)", idle[0], p.pid)

    def _requeue_lost(self, queue: JobQueue) -> List[str]:
        r"""Requeue the ``lost`` jobs claimed under this manager with fewer than ``max_attempts`` attempts."""
        out: List[str] = []
        for d in queue.all_jobs():
            if d["status"] != "lost" or d.get("manager") != self.cfg.manager or d["job_id"] in self.given_up:
                continue
            if int(d.get("attempts") or 0) >= self.max_attempts:
                log.warning("job %s lost %d times: left lost (see %s)", d["job_id"], d["attempts"],
                            self.cfg.exp_dir / ".logs" / f"{d['job_id']}.{d['attempts']}.log")
                self.given_up.add(d["job_id"])
                continue
            if queue.requeue(1, job_ids=[d["job_id"]]):
                log.info("job %s requeued after being lost (attempt %d of %d)", d["job_id"], d["attempts"],
                         self.max_attempts)
                out.append(d["job_id"])
        return out

    def running(self) -> bool:
        self.supervise()
        return any(p.poll() is None for p in self.procs)

    def stop(self, timeout: float) -> None:
        self.stopping = True
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def executor_pids(self) -> List[int]:
        return [p.pid for p in self.procs]


def _exit_text(rc: Optional[int]) -> str:
    if rc is None:
        return "running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


class DaskBackend(Backend):
    r"""One Dask task per job: :class:`ovis.experiments.dask_backend.DaskBackend` (issue 7).

    Imported lazily, so that ``distributed`` is needed only with ``--backend dask``; constructing
    this class returns the implementation (``DaskBackend(cfg, address=None, security=None, ...)``).
    """

    def __new__(cls, *a: Any, **k: Any) -> "Backend":  # type: ignore[misc]
        try:
            from ovis.experiments.dask_backend import DaskBackend as _Impl
        except ImportError as e:  # pragma: no cover - distributed missing
            raise BackendNotAvailable(f"--backend dask needs the `distributed` package ({e}); "
                                      "install it with `pip install .[dask]`") from None
        return _Impl(*a, **k)

    def start(self, slots: Sequence[str]) -> None:  # pragma: no cover - never instantiated
        raise BackendNotAvailable("dask")

    def running(self) -> bool:  # pragma: no cover
        return False

    def stop(self, timeout: float) -> None:  # pragma: no cover
        pass


def make_backend(name: str, cfg: WorkerConfig, address: Optional[str] = None, grace: float = 60.0,
                 requeue_lost: bool = True) -> Backend:
    r"""The backend called ``name`` (``local`` or ``dask``; :class:`BackendNotAvailable` otherwise).

    ``grace`` (the manager's ``--grace``) and ``requeue_lost`` (``--requeue_level >= 1``) are
    passed to both backends: each requeues the jobs its executors lost (at most 3 attempts), and
    the local one also replaces its dead worker processes.
    """
    if name == "local":
        if address:
            raise BackendNotAvailable("--address is only meaningful with --backend dask")
        return LocalBackend(cfg, grace=grace, requeue_lost=requeue_lost)
    if name == "dask":
        return DaskBackend(cfg, address, grace=grace, requeue_lost=requeue_lost)
    raise BackendNotAvailable(f"unknown backend {name!r} (valid: local, dask)")
