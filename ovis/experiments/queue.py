r"""The job queue of one experiment: a TinyDB database guarded by an OS file lock.

Layout: ``<root>/<exp>/queue.json`` (the database) and ``<root>/<exp>/queue.json.lock``.

Crash safety
  * every read-modify-write happens under one :class:`filelock.FileLock` (``flock`` on Unix: the
    kernel releases it when its holder dies, so a killed process never blocks the queue);
  * every write is atomic (:class:`AtomicJSONStorage`: a temporary file in the same folder,
    flush, fsync, ``os.replace``, fsync of the folder): a process killed at any instant leaves the
    previous or the new database, never a half-written one;
  * the database is opened afresh for each operation (no cache can go stale between processes).

Job life cycle (``status``)::

    queued --claim--> running --finish--> success | failed | aborted
                         |--mark_lost--> lost          (worker vanished / heartbeat too old)
    aborted, lost (level 1), failed (2), running (100), success (10000) --requeue--> queued

A claim records host, worker pid (and its start time), device, attempt number and a fresh claim
token *before* the job's process starts; :meth:`JobQueue.heartbeat` and :meth:`JobQueue.finish`
only act while the caller's token is still the job's token, so a worker whose job was taken away
(requeued with ``--force``, marked lost) can never overwrite the new attempt's record.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import psutil
from filelock import FileLock, Timeout
from tinydb import Query, TinyDB
from tinydb.storages import Storage
from tinydb.table import Document

__all__ = [
    "AtomicJSONStorage",
    "JobQueue",
    "QueueError",
    "STATUSES",
    "FINAL_STATUSES",
    "REQUEUE_LEVELS",
    "statuses_for_level",
    "pid_alive",
    "process_start_time",
    "HOST",
]

STATUSES = ("queued", "running", "success", "failed", "aborted", "lost")
FINAL_STATUSES = ("success", "failed", "aborted", "lost")
REQUEUE_LEVELS = {0: (), 1: ("aborted", "lost"), 2: ("aborted", "lost", "failed"),
                  100: ("aborted", "lost", "failed", "running"),
                  10000: ("aborted", "lost", "failed", "running", "success")}
HOST = socket.gethostname()
JOBS = "jobs"
MANAGERS = "managers"


class QueueError(RuntimeError):
    r"""A queue that cannot be used (lock timeout, unreadable database)."""


def statuses_for_level(level: int) -> Tuple[str, ...]:
    r"""The statuses requeued at ``level`` (0, 1, 2, 100, 10000; in-between values round down)."""
    if level < 0:
        raise ValueError(f"requeue level must be >= 0, got {level}")
    best = max(k for k in REQUEUE_LEVELS if k <= level)
    return REQUEUE_LEVELS[best]


# ----------------------------------------------------------------------------------------------
# processes


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _start_ticks(proc: psutil.Process) -> int:
    r"""``proc``'s start in clock ticks since boot: ``round((create_time - boot_time) * SC_CLK_TCK)``.

    On Linux this is exactly the ``starttime`` field of ``/proc/PID/stat`` (``psutil`` computes
    ``create_time = starttime / SC_CLK_TCK + boot_time``): a count that a wall-clock step does not
    change, unlike ``create_time`` itself.
    """
    return int(round((proc.create_time() - psutil.boot_time()) * _CLOCK_TICKS))


def process_start_time(pid: int) -> Optional[int]:
    r"""The start time of ``pid`` in clock ticks since boot (``1/SC_CLK_TCK`` s), or ``None``.

    Stored with a pid (``worker_start``, ``pid_start``) so that :func:`pid_alive` can tell a
    recycled pid from the original process.
    """
    if not pid or pid <= 0:
        return None
    try:
        return _start_ticks(psutil.Process(pid))
    except (psutil.Error, ValueError, OSError):  # no such process, access denied, invalid pid
        return None


def pid_alive(pid: Optional[int], start_time: Optional[int] = None) -> bool:
    r"""Whether ``pid`` is a live (non-zombie) process on this host.

    With ``start_time`` (from :func:`process_start_time`), a recycled pid counts as dead.  A
    process that exists but cannot be inspected (access denied) counts as alive.
    """
    if not pid or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return False
            if start_time is not None and _start_ticks(proc) != start_time:
                return False
    except psutil.NoSuchProcess:  # includes psutil.ZombieProcess
        return False
    except (psutil.AccessDenied, OSError):
        return True
    return True


def kill_group(pgid: Optional[int], sig: int = signal.SIGKILL) -> bool:
    r"""Send ``sig`` to the process group ``pgid``; ``True`` if it existed."""
    if not pgid or pgid <= 1:
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# ----------------------------------------------------------------------------------------------
# storage


class AtomicJSONStorage(Storage):
    r"""TinyDB storage writing atomically: tmp file in the same folder, flush, fsync, ``os.replace``.

    Only ever written under the queue's lock, so one fixed temporary name suffices (a leftover from
    a killed writer is simply overwritten).  A storage object lives for one locked transaction,
    so it keeps what it read or wrote last (nobody else can write meanwhile): one parse per
    transaction instead of one per TinyDB call.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._cache: Optional[Dict[str, Dict[str, Any]]] = None

    def read(self) -> Optional[Dict[str, Dict[str, Any]]]:
        r"""The database mapping (``{table: {doc_id: record}}``), parsed once per transaction; ``None`` for a
        missing or empty file.

        Raises:
            QueueError: the file does not parse as JSON (it is left untouched).
        """
        if self._cache is not None:
            return self._cache
        self._cache = self._read()
        return self._cache

    def _read(self) -> Optional[Dict[str, Dict[str, Any]]]:
        try:
            with open(self.path, "r", encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise QueueError(f"{self.path}: the queue database does not parse ({e}); it was not written by "
                             "this library's atomic storage (left as it is): restore it, or start the "
                             "experiment over with manager.py --rf (the run folders are deleted too)") from None

    def write(self, data: Dict[str, Dict[str, Any]]) -> None:
        r"""Replace the file atomically with ``data``: write a temporary file in the same folder, flush,
        ``fsync``, ``os.replace``, then ``fsync`` the folder (best effort).
        """
        text = json.dumps(data, separators=(",", ":"))
        with open(self.tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        self._cache = data
        try:
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def close(self) -> None:
        r"""Nothing to release: every write is complete when :meth:`write` returns."""
        pass


# ----------------------------------------------------------------------------------------------
# queue


def _now() -> float:
    return time.time()


class JobQueue:
    r"""The queue of one experiment directory (created on first use).

    Args:
        exp_dir: ``<root>/<exp>``.
        lock_timeout: seconds to wait for the lock before raising :class:`QueueError`.
    """

    def __init__(self, exp_dir: os.PathLike | str, lock_timeout: float = 120.0) -> None:
        self.exp_dir = Path(exp_dir).resolve()
        self.path = self.exp_dir / "queue.json"
        self.lock_path = self.exp_dir / "queue.json.lock"
        self.lock_timeout = float(lock_timeout)
        self._lock = FileLock(str(self.lock_path), timeout=self.lock_timeout)

    # -- plumbing -------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[TinyDB]:
        r"""Hold the lock and an open database for one read-modify-write."""
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(poll_interval=0.005)
        except Timeout:
            raise QueueError(f"{self.lock_path}: lock not acquired within {self.lock_timeout:.0f} s; "
                             "another process holds it (on a network file system that lost a "
                             "lock, use --purge_lock)") from None
        try:
            db = TinyDB(str(self.path), storage=AtomicJSONStorage)
            try:
                yield db
            finally:
                db.close()
        finally:
            self._lock.release()

    def exists(self) -> bool:
        r"""Whether the queue's database file exists."""
        return self.path.exists()

    def purge_lock(self) -> bool:
        r"""Delete the lock file (only needed where the file system does not release locks)."""
        try:
            self.lock_path.unlink()
            return True
        except FileNotFoundError:
            return False

    # -- jobs -----------------------------------------------------------------------------------
    def add_jobs(self, jobs: Iterable[Any]) -> List[str]:
        r"""Insert jobs (``grid.Job`` objects) not yet in the queue; return the new ids."""
        jobs = list(jobs)
        with self.transaction() as db:
            t = db.table(JOBS)
            have = {d["job_id"] for d in t.all()}
            new = []
            now = _now()
            for j in jobs:
                if j.job_id in have:
                    continue
                have.add(j.job_id)
                new.append(self._new_record(j.job_id, j.script, list(j.argv), now))
            if new:
                t.insert_multiple(new)
        return [r["job_id"] for r in new]

    @staticmethod
    def _new_record(job_id: str, script: str, argv: List[str], now: float) -> Dict[str, Any]:
        return {"job_id": job_id, "script": script, "argv": argv, "status": "queued",
                "attempts": 0, "created": now, "fresh": False, "host": None, "worker_pid": None,
                "worker_start": None, "worker": None, "pid": None, "device": None,
                "started": None, "heartbeat": None, "ended": None, "exit_code": None,
                "error": None, "claim_token": None, "run_dir": None, "manager": None}

    def all_jobs(self) -> List[Dict[str, Any]]:
        r"""Every job record (copies, as dicts), in insertion order, read under the lock."""
        with self.transaction() as db:
            return [dict(d) for d in db.table(JOBS).all()]

    def get(self, job_id: str) -> Optional[Dict[str, Any]]:
        r"""The record of ``job_id`` (a copy), or ``None`` when there is no such job."""
        with self.transaction() as db:
            d = db.table(JOBS).get(Query().job_id == job_id)
            return dict(d) if d else None

    def counts(self) -> Dict[str, int]:
        r"""The number of jobs in each status, ``{status: count}``, every status of ``STATUSES`` present."""
        out = {s: 0 for s in STATUSES}
        for d in self.all_jobs():
            out[d["status"]] = out.get(d["status"], 0) + 1
        return out

    def claim(self, worker: str, device: str = "cpu", worker_pid: Optional[int] = None,
              job_id: Optional[str] = None, manager: Optional[str] = None) -> Optional[Dict[str, Any]]:
        r"""Atomically take a queued job (the first one, or ``job_id``): ``queued -> running``.

        Records host, worker pid and start time, device, attempt number and a fresh claim token
        before the job's process exists.  With ``manager``, respects that manager's
        ``max_jobs`` budget.  Returns the claimed record, or ``None``.
        """
        wpid = worker_pid if worker_pid is not None else os.getpid()
        with self.transaction() as db:
            t = db.table(JOBS)
            if manager is not None:
                mt = db.table(MANAGERS)
                m = mt.get(Query().manager == manager)
                if m is not None and m.get("max_jobs") is not None and m["claimed"] >= m["max_jobs"]:
                    return None
            if job_id is not None:
                doc = t.get((Query().job_id == job_id) & (Query().status == "queued"))
            else:
                doc = next((d for d in t.all() if d["status"] == "queued"), None)
            if doc is None:
                return None
            now = _now()
            upd = {"status": "running", "attempts": doc["attempts"] + 1, "claim_token": uuid.uuid4().hex,
                   "host": HOST, "worker_pid": wpid, "worker_start": process_start_time(wpid),
                   "worker": worker, "pid": None, "device": device, "started": now, "heartbeat": now,
                   "ended": None, "exit_code": None, "error": None, "manager": manager}
            t.update(upd, doc_ids=[doc.doc_id])
            if manager is not None:
                mt = db.table(MANAGERS)
                m = mt.get(Query().manager == manager)
                if m is not None:
                    mt.update({"claimed": m["claimed"] + 1}, doc_ids=[m.doc_id])
            rec = dict(doc)
            rec.update(upd)
            return rec

    def _owned(self, t, job_id: str, token: str) -> Optional[Document]:
        doc = t.get(Query().job_id == job_id)
        if doc is None or doc["claim_token"] != token or doc["status"] != "running":
            return None
        return doc

    def verify_claim(self, job_id: str, token: str) -> bool:
        r"""Whether ``token`` is still the running claim of ``job_id`` (a Dask re-run checks this)."""
        with self.transaction() as db:
            return self._owned(db.table(JOBS), job_id, token) is not None

    def set_pid(self, job_id: str, token: str, pid: int) -> bool:
        r"""Record the job process's pid (also its process group id); ``False`` if not ours."""
        with self.transaction() as db:
            t = db.table(JOBS)
            doc = self._owned(t, job_id, token)
            if doc is None:
                return False
            t.update({"pid": pid, "heartbeat": _now()}, doc_ids=[doc.doc_id])
            return True

    def heartbeat(self, job_id: str, token: str) -> bool:
        r"""Refresh the heartbeat; ``False`` when the claim is no longer ours (stop the job)."""
        with self.transaction() as db:
            t = db.table(JOBS)
            doc = self._owned(t, job_id, token)
            if doc is None:
                return False
            t.update({"heartbeat": _now()}, doc_ids=[doc.doc_id])
            return True

    def finish(self, job_id: str, token: str, status: str, exit_code: Optional[int] = None,
               error: Optional[str] = None, run_dir: Optional[str] = None) -> bool:
        r"""Record the outcome of the claimed attempt; ``False`` when the claim is not ours."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish status must be one of {FINAL_STATUSES}, got {status!r}")
        with self.transaction() as db:
            t = db.table(JOBS)
            doc = self._owned(t, job_id, token)
            if doc is None:
                return False
            t.update({"status": status, "ended": _now(), "exit_code": exit_code, "error": error,
                      "run_dir": run_dir, "fresh": False if status == "success" else doc.get("fresh", False)},
                     doc_ids=[doc.doc_id])
            return True

    def _gone(self, doc: Dict[str, Any], grace: float, now: float) -> Optional[str]:
        r"""Why a running job is gone (``None`` when it may be alive)."""
        if doc["host"] == HOST and not pid_alive(doc["worker_pid"], doc.get("worker_start")):
            return f"worker pid {doc['worker_pid']} on {HOST} is dead"
        hb = doc["heartbeat"] or doc["started"] or 0.0
        if now - hb > grace:
            return f"no heartbeat for {now - hb:.0f} s (grace {grace:.0f} s)"
        return None

    def mark_lost(self, grace: float) -> List[str]:
        r"""Mark ``lost`` every running job whose worker vanished; return their ids.

        A job is gone when its worker's pid is dead on this host (this includes a job claimed
        whose process never started) or its heartbeat is older than ``grace`` seconds.  A job
        process left on this host is killed (its process group), so it cannot run twice.
        """
        lost = []
        with self.transaction() as db:
            t = db.table(JOBS)
            now = _now()
            for doc in t.search(Query().status == "running"):
                why = self._gone(doc, grace, now)
                if why is None:
                    continue
                if doc["host"] == HOST and doc["pid"]:
                    kill_group(doc["pid"], signal.SIGKILL)
                t.update({"status": "lost", "ended": now, "error": f"lost: {why}"}, doc_ids=[doc.doc_id])
                lost.append(doc["job_id"])
        return lost

    def requeue(self, level: int, force: bool = False, grace: float = 60.0,
                job_ids: Optional[Sequence[str]] = None) -> List[str]:
        r"""Put jobs back to ``queued`` by level; return their ids.

        Level 0: nothing; 1: aborted and lost; 2: also failed; 100: also running, only those whose
        process is confirmed gone (see :meth:`mark_lost`) unless ``force`` (a forced running job's
        process on this host is killed); 10000: everything, success included.  A requeued
        ``success`` is marked ``fresh``: its next attempt starts the run over (``--rf``).
        """
        statuses = statuses_for_level(level)
        out = []
        with self.transaction() as db:
            t = db.table(JOBS)
            now = _now()
            for doc in t.all():
                if doc["status"] not in statuses:
                    continue
                if job_ids is not None and doc["job_id"] not in job_ids:
                    continue
                if doc["status"] == "running":
                    if self._gone(doc, grace, now) is None:
                        if not force:
                            continue
                    if doc["host"] == HOST and doc["pid"]:
                        kill_group(doc["pid"], signal.SIGKILL)
                t.update({"status": "queued", "claim_token": None,
                          "fresh": bool(doc.get("fresh")) or doc["status"] == "success"},
                         doc_ids=[doc.doc_id])
                out.append(doc["job_id"])
        return out

    def abort_running(self, predicate: Callable[[Dict[str, Any]], bool], reason: str) -> List[str]:
        r"""Mark ``aborted`` the running jobs matching ``predicate`` (their processes are killed)."""
        out = []
        with self.transaction() as db:
            t = db.table(JOBS)
            for doc in t.search(Query().status == "running"):
                if not predicate(dict(doc)):
                    continue
                if doc["host"] == HOST and doc["pid"]:
                    kill_group(doc["pid"], signal.SIGKILL)
                t.update({"status": "aborted", "ended": _now(), "error": reason}, doc_ids=[doc.doc_id])
                out.append(doc["job_id"])
        return out

    def update_jobs(self, job_ids: Sequence[str], fields: Dict[str, Any]) -> int:
        r"""Set ``fields`` on the records of ``job_ids`` in one transaction; returns the number updated."""
        with self.transaction() as db:
            t = db.table(JOBS)
            return len(t.update(fields, Query().job_id.one_of(list(job_ids))))

    def delete_jobs(self, job_ids: Sequence[str]) -> int:
        r"""Remove the records of ``job_ids`` in one transaction; returns the number removed."""
        with self.transaction() as db:
            t = db.table(JOBS)
            return len(t.remove(Query().job_id.one_of(list(job_ids))))

    # -- managers -------------------------------------------------------------------------------
    def register_manager(self, max_jobs: Optional[int] = None) -> str:
        r"""Record a live manager (host, pid, heartbeat); returns its id."""
        mid = uuid.uuid4().hex[:12]
        now = _now()
        with self.transaction() as db:
            mt = db.table(MANAGERS)
            dead = [m.doc_id for m in mt.all() if m["host"] == HOST and not pid_alive(m["pid"], m.get("pid_start"))]
            if dead:
                mt.remove(doc_ids=dead)
            mt.insert({"manager": mid, "host": HOST, "pid": os.getpid(),
                                       "pid_start": process_start_time(os.getpid()),
                                       "started": now, "heartbeat": now,
                                       "max_jobs": max_jobs, "claimed": 0})
        return mid

    def manager_heartbeat(self, manager: str) -> None:
        r"""Refresh the heartbeat time of the live manager ``manager`` (an id of :meth:`register_manager`)."""
        with self.transaction() as db:
            db.table(MANAGERS).update({"heartbeat": _now()}, Query().manager == manager)

    def unregister_manager(self, manager: str) -> None:
        r"""Remove the manager ``manager`` from the table of live managers (at its exit)."""
        with self.transaction() as db:
            db.table(MANAGERS).remove(Query().manager == manager)

    def live_managers(self, grace: float, exclude: Optional[str] = None) -> List[Dict[str, Any]]:
        r"""Managers whose heartbeat is fresh (and whose pid lives, when on this host)."""
        now = _now()
        out = []
        with self.transaction() as db:
            for m in db.table(MANAGERS).all():
                if m["manager"] == exclude:
                    continue
                if m["host"] == HOST and not pid_alive(m["pid"], m.get("pid_start")):
                    continue
                if now - m["heartbeat"] > grace:
                    continue
                out.append(dict(m))
        return out
