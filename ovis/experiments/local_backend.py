r"""The ``local`` backend: one worker process per slot on this machine.

Each worker is ``python -m ovis.experiments.worker_cli`` (:func:`ovis.experiments.workers.worker_loop`):
it claims queued jobs and runs them until none is left.  A worker receives ``SIGTERM`` if the
manager dies (Linux ``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

from ovis.experiments.backend import Backend, BackendNotAvailable
from ovis.experiments.devices import cpu_threads_per_worker
from ovis.experiments.queue import JobQueue, QueueError
from ovis.experiments.workers import WorkerConfig, die_with_parent

__all__ = ["LocalBackend"]

log = logging.getLogger("ovis.experiments")


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
    queue: Optional[JobQueue] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")

    @classmethod
    def from_cli(cls, cfg: WorkerConfig, *, address: Optional[str], grace: float,
                 requeue_lost: bool) -> "LocalBackend":
        if address:
            raise BackendNotAvailable("--address is only meaningful with --backend dask")
        return cls(cfg, grace=grace, requeue_lost=requeue_lost)

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
        r"""Spawn one worker process per slot (device string), each with that device."""
        self.slots = list(slots)
        self.current = [None] * len(self.slots)
        self.restarts = [0] * len(self.slots)
        self.queue = JobQueue(self.cfg.exp_dir)
        for i in range(len(self.slots)):
            self._spawn(i)

    def supervise(self) -> None:
        r"""Mark the jobs of dead workers lost, requeue lost jobs within the attempt cap, replace
        dead workers (see the class docstring).  Queue errors are logged, never raised."""
        if self.stopping or not self.slots:
            return
        died = [i for i, p in enumerate(self.current) if p is not None and p.poll() not in (None, 0)]
        queue = self.queue if self.queue is not None else JobQueue(self.cfg.exp_dir)
        try:
            if died:
                for i in died:
                    log.warning("worker %d (pid %d, device %s) died (%s)", i, self.current[i].pid, self.slots[i],
                                _exit_text(self.current[i].returncode))
                lost = queue.mark_lost(self.grace)
                if lost:
                    log.warning("lost (worker died): %s", ", ".join(lost))
            # one read of the queue (after mark_lost) serves both the requeue and ``waiting``
            jobs = queue.all_jobs() if self.requeue_lost or died else []
            requeued = self._requeue_lost(queue, jobs) if self.requeue_lost else []
            waiting = requeued or (died and any(d["status"] == "queued" for d in jobs))
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

    def _requeue_lost(self, queue: JobQueue, jobs: Sequence[Dict[str, Any]]) -> List[str]:
        r"""Requeue the ``lost`` jobs of ``jobs`` (a read of ``queue``) claimed under this manager with
        fewer than ``max_attempts`` attempts, in one :meth:`JobQueue.requeue`, which requeues only
        those still ``lost`` (or ``aborted``) under its lock; returns the ids it requeued."""
        eligible: Dict[str, Any] = {}
        for d in jobs:
            if d["status"] != "lost" or d.get("manager") != self.cfg.manager or d["job_id"] in self.given_up:
                continue
            if int(d.get("attempts") or 0) >= self.max_attempts:
                log.warning("job %s lost %d times: left lost (see %s)", d["job_id"], d["attempts"],
                            self.cfg.exp_dir / ".logs" / f"{d['job_id']}.{d['attempts']}.log")
                self.given_up.add(d["job_id"])
                continue
            eligible[d["job_id"]] = d["attempts"]
        if not eligible:
            return []
        out = queue.requeue(1, job_ids=list(eligible))
        for job_id in out:
            log.info("job %s requeued after being lost (attempt %d of %d)", job_id, eligible[job_id],
                     self.max_attempts)
        return out

    def running(self) -> bool:
        r"""Supervise (:meth:`supervise`), then whether any worker process is alive."""
        self.supervise()
        return any(p.poll() is None for p in self.procs)

    def stop(self, timeout: float) -> None:
        r"""Send ``SIGTERM`` to the live workers (they abort their jobs), wait up to ``timeout`` seconds in
        all, then ``SIGKILL`` the ones still running.
        """
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
        r"""The pids of every worker process started (replacements included)."""
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
