r"""The experiment manager (``manager.py``): expand a grid, queue it, drain the queue.

``python manager.py --exp EXP [--processes P] [--max_gpus G] [--root runs/] [--data_root data/]
[--resume] [--rf] [--update_exp] [--update_lib] [--max_jobs N] [--requeue_level L] [--purge_lock]
[--max_load F] [--max_memory F] [--script run.py] [--backend local|dask] [--address tcp://HOST:PORT]``

Steps: validate the experiment file (nothing is touched when it is invalid), refuse an existing
experiment directory without ``--resume``/``--rf``, make the snapshot ``<root>/<exp>/.lib_snapshot``
(the library, the top-level scripts and the experiment file, copied once), insert the jobs not yet
queued, mark vanished jobs ``lost``, requeue by level, then run ``P`` workers per usable GPU (or
``P`` on the CPU) until nothing is queued.  ``SIGINT``/``SIGTERM`` stop the workers; their running
jobs end ``aborted``.  Exit code: 0 when every job of the queue succeeded, 1 when some did not,
2 for a usage error (invalid file, a data set missing under ``--data_root``, existing directory,
...) or a known failure (unusable queue, full disk: one line, no traceback), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from ovis.experiments.backend import BackendNotAvailable, backend_names, make_backend
from ovis.experiments.devices import plan_workers
from ovis.experiments.grid import ExperimentError, load_and_expand
from ovis.experiments.preflight import PreflightError, preflight
from ovis.experiments.queue import FINAL_STATUSES, JobQueue, QueueError
from ovis.experiments.workers import WorkerConfig

__all__ = ["build_manager_parser", "manager_main", "make_snapshot", "SNAPSHOT"]

log = logging.getLogger("ovis.experiments")
SNAPSHOT = ".lib_snapshot"
REPO_ROOT = Path(__file__).resolve().parents[2]
# the source tree: the checkout this package lives in, else (an installed package) the current folder
DEFAULT_SRC = REPO_ROOT if (REPO_ROOT / "experiments").is_dir() else Path.cwd()


def build_manager_parser() -> argparse.ArgumentParser:
    r"""The argument parser of ``manager.py`` (``--exp``, ``--processes``, ``--max_gpus``, ``--root``,
    ``--backend``, ...).
    """
    p = argparse.ArgumentParser(prog="manager.py", description="Run an experiment grid from experiments/<exp>.json.")
    p.add_argument("--exp", required=True, help="experiment name (experiments/<exp>.json) or path to a .json file")
    p.add_argument("--processes", type=int, default=1, help="worker processes per GPU (or on the CPU)")
    p.add_argument("--max_gpus", type=int, default=None, help="use at most this many GPUs")
    p.add_argument("--root", default="runs/", help="where experiments and runs go")
    p.add_argument("--data_root", default="data/", help="where data sets are")
    p.add_argument("--resume", action="store_true", help="continue an existing experiment: add new jobs, requeue per level")
    p.add_argument("--rf", action="store_true", help="delete the experiment directory and start over")
    p.add_argument("--update_exp", action="store_true", help="refresh the snapshot's experiment file")
    p.add_argument("--update_lib", action="store_true", help="refresh the snapshot's library and scripts")
    p.add_argument("--max_jobs", type=int, default=None, help="claim at most this many jobs")
    p.add_argument("--requeue_level", type=int, default=1,
                   help="0 nothing; 1 aborted+lost; 2 +failed; 100 +running (gone); 10000 everything")
    p.add_argument("--force", action="store_true", help="with --requeue_level 100: requeue live running jobs too")
    p.add_argument("--purge_lock", action="store_true", help="delete the queue's lock file first")
    p.add_argument("--max_load", type=float, default=0.5, help="use GPUs whose load is below this")
    p.add_argument("--max_memory", type=float, default=0.5, help="use GPUs whose memory use is below this")
    p.add_argument("--script", default=None, help="job script (overrides the file's `script`, default run.py)")
    p.add_argument("--backend", default="local", choices=backend_names())
    p.add_argument("--address", default=None, help="Dask scheduler address (with --backend dask)")
    p.add_argument("--src", default=str(DEFAULT_SRC), help="source tree to snapshot (ovis/, scripts, experiments/)")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between job heartbeats")
    p.add_argument("--grace", type=float, default=60.0, help="a job without heartbeat for this long is lost")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between the manager's checks of the queue")
    p.add_argument("--term_timeout", type=float, default=10.0, help="SIGTERM -> SIGKILL delay for jobs")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def _exp_file(src: Path, exp: str) -> Path:
    if exp.endswith(".json") or os.sep in exp:
        return Path(exp).resolve()
    return src / "experiments" / f"{exp}.json"


def make_snapshot(src: Path, exp_dir: Path, exp_file: Path, script: str, update_lib: bool,
                  update_exp: bool) -> Path:
    r"""Create or refresh ``<exp_dir>/.lib_snapshot``: ``ovis/``, top-level scripts, the file."""
    snap = exp_dir / SNAPSHOT
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    if not snap.exists() or update_lib:
        tmp = exp_dir / f"{SNAPSHOT}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if (src / "ovis").is_dir():
            shutil.copytree(src / "ovis", tmp / "ovis", ignore=ignore)
        for f in src.glob("*.py"):
            shutil.copy2(f, tmp / f.name)
        if (src / script).is_file() and not (tmp / script).exists():
            (tmp / script).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / script, tmp / script)
        old_exp = snap / "experiments"
        if old_exp.is_dir():
            shutil.copytree(old_exp, tmp / "experiments")
        if snap.exists():
            old = exp_dir / f"{SNAPSHOT}.old-{os.getpid()}"
            os.replace(snap, old)
            os.replace(tmp, snap)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, snap)
    target = snap / "experiments" / exp_file.name
    if not target.exists() or update_exp:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(exp_file, str(target) + ".tmp")
        os.replace(str(target) + ".tmp", target)
    if not (snap / script).is_file():
        raise FileNotFoundError(f"job script {script!r} not found in {src} (nor in the snapshot {snap})")
    return snap


def manager_main(argv: Optional[Sequence[str]] = None) -> int:
    r"""``manager.py``: load the experiment, fill its queue and drain it with the chosen backend.

    Args:
        argv: the command line (``None``: ``sys.argv[1:]``).

    Returns:
        The exit code: ``0`` when every job succeeded, ``1`` when some did not, ``2`` on invalid
        arguments or a failure the user can fix (an unusable queue, a full disk: one line, no
        traceback), ``130`` when interrupted.
    """
    a = build_manager_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s manager: %(message)s", stream=sys.stderr)
    logging.raiseExceptions = False  # a full disk must not turn each log line into a traceback
    try:
        return _manager_main(a)
    except (QueueError, OSError) as e:
        return _known_failure(e)


def _known_failure(e: BaseException) -> int:
    r"""One line for a failure the user can fix (unusable queue, full disk, ...) instead of a
    traceback; the queue's data are never half-written (atomic writes), so fixing the cause and
    running again with ``--resume`` continues.  Returns the exit code (2)."""
    if isinstance(e, OSError) and not isinstance(e, QueueError):
        where = f"{e.filename}: " if e.filename else ""
        what = e.strerror or str(e)
        fix = ("free some disk space" if e.errno == errno.ENOSPC else
               "check the permissions" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else
               "fix the cause")
        log.error("%s%s (errno %s); nothing was half-written: %s, then run again with --resume",
                  where, what, e.errno, fix)
    else:
        log.error("%s", e)
    return 2


def _manager_main(a: argparse.Namespace) -> int:
    if a.processes < 1:
        log.error("--processes must be >= 1, got %d", a.processes)
        return 2
    if a.max_gpus is not None and a.max_gpus < 0:
        log.error("--max_gpus must be >= 0 (0: the CPU only), got %d", a.max_gpus)
        return 2
    if a.rf and a.resume:
        log.error("--rf and --resume are exclusive: --rf deletes the experiment, --resume continues it")
        return 2
    src = Path(a.src).resolve()
    exp_file = _exp_file(src, a.exp)
    root = Path(a.root).resolve()
    data_root = Path(a.data_root).resolve()
    exp_name = exp_file.stem
    exp_dir = root / exp_name
    snap_file = exp_dir / SNAPSHOT / "experiments" / exp_file.name
    # the grid comes from the snapshot when resuming (the experiment is frozen) unless --update_exp
    grid_file = snap_file if (a.resume and snap_file.exists() and not a.update_exp) else exp_file
    try:
        exp, jobs, warnings = load_and_expand(grid_file)
        if a.script is not None and a.script != exp.script:
            from dataclasses import replace

            from ovis.experiments.grid import expand_grid, validate_jobs

            exp = replace(exp, script=a.script)
            jobs = expand_grid(exp)
            warnings = validate_jobs(exp, jobs)
    except ExperimentError as e:
        log.error("invalid experiment file: %s (nothing queued)", e)
        return 2
    for w in warnings:
        log.warning("%s", w)
    if grid_file == snap_file:
        log.info("grid read from the snapshot %s (use --update_exp to take %s)", snap_file, exp_file)
    try:
        backend_check = make_backend(a.backend, WorkerConfig(exp_name, exp_dir, root, data_root, exp_dir / SNAPSHOT),
                                     a.address)
        del backend_check
    except BackendNotAvailable as e:
        log.error("%s", e)
        return 2
    try:  # the machine-dependent checks (data sets under --data_root): nothing queued on failure
        preflight(exp, jobs, data_root)
    except PreflightError as e:
        log.error("%s (nothing queued)", e)
        return 2

    queue = JobQueue(exp_dir)
    if exp_dir.exists() and any(exp_dir.iterdir()):
        if a.rf:
            if a.purge_lock:
                queue.purge_lock()
            try:
                live = queue.live_managers(a.grace) if queue.exists() else []
            except QueueError as e:  # an unreadable queue names no manager: --rf is the way out
                log.warning("%s", e)
                live = []
            if live:
                m = live[0]
                log.error("--rf refused: manager pid %s on %s is still running %s (heartbeat %.0f s ago)",
                          m["pid"], m["host"], exp_dir, time.time() - m["heartbeat"])
                return 2
            log.info("--rf: deleting %s", exp_dir)
            shutil.rmtree(exp_dir)
        elif not a.resume:
            log.error("%s exists: use --resume to continue it or --rf to delete it and start over", exp_dir)
            return 2
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / ".logs").mkdir(exist_ok=True)
    if a.purge_lock and queue.purge_lock():
        log.warning("deleted the lock file %s", queue.lock_path)
    fh = logging.FileHandler(exp_dir / "manager.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
    logging.getLogger().addHandler(fh)

    with queue._lock:  # one manager at a time creates / refreshes the snapshot
        try:
            snap = make_snapshot(src, exp_dir, exp_file if grid_file == exp_file else snap_file, exp.script,
                                 a.update_lib, a.update_exp)
        except (OSError, FileNotFoundError) as e:
            log.error("snapshot failed: %s", e)
            return 2
    mid = queue.register_manager(a.max_jobs)
    stop = {"signal": None}

    def _handler(signum: int, frame: object) -> None:
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    backend = None
    try:
        new = queue.add_jobs(jobs)
        log.info("experiment %s: %d jobs in the grid, %d new in the queue %s", exp_name, len(jobs), len(new), queue.path)
        _wait_for_orphans(queue, mid, a.term_timeout + 10, stop)
        lost = queue.mark_lost(a.grace)
        if lost:
            log.info("marked lost: %s", ", ".join(lost))
        req = queue.requeue(a.requeue_level, force=a.force, grace=a.grace)
        if req:
            log.info("requeued (level %d): %d jobs", a.requeue_level, len(req))
        plan = plan_workers(a.processes, a.max_gpus, a.max_load, a.max_memory)
        if plan.warning:
            log.warning("%s", plan.warning)
        slots = plan.slots
        log.info("devices: %s; %d worker(s) (%s)", ", ".join(plan.gpus) or "cpu", len(slots), plan.describe())
        cfg = WorkerConfig(exp=exp_name, exp_dir=exp_dir, root=root, data_root=data_root, snapshot=snap,
                           manager=mid, heartbeat=a.heartbeat, poll=min(0.2, a.poll), term_timeout=a.term_timeout)
        backend = make_backend(a.backend, cfg, a.address, grace=a.grace, requeue_lost=a.requeue_level >= 1)
        backend.start(slots)
        _drain(queue, backend, mid, a, stop)
    except (QueueError, OSError) as e:
        return _known_failure(e)
    finally:
        try:
            if backend is not None:
                backend.stop(a.term_timeout + 5)
                pids = set(backend.executor_pids())
                ab = queue.abort_running(lambda d: d.get("manager") == mid and d.get("worker_pid") in pids,
                                         "aborted: the manager stopped")
                if ab:
                    log.info("aborted: %s", ", ".join(ab))
            queue.unregister_manager(mid)
        except (QueueError, OSError) as e:  # reported once, by manager_main, if nothing else was
            log.warning("while stopping: %s", e)
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
    counts = queue.counts()
    log.info("queue: %s", ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    if stop["signal"] is not None:
        log.info("stopped by %s", signal.Signals(stop["signal"]).name)
        return 130
    return 0 if counts["success"] == sum(counts.values()) else 1


def _wait_for_orphans(queue: JobQueue, mid: str, timeout: float, stop: Dict) -> None:
    r"""Wait (up to ``timeout`` s) for the jobs of a dead manager's workers on this host to stop.

    A manager killed with SIGKILL leaves its workers, which get SIGTERM and abort their jobs
    (run.py saves a checkpoint first): waiting lets ``--resume`` requeue those jobs at once.
    """
    from ovis.experiments.queue import HOST, pid_alive

    deadline = time.monotonic() + timeout
    announced = False
    while stop["signal"] is None:
        live = {m["manager"] for m in queue.live_managers(grace=float("inf"))}
        orphans = [d for d in queue.all_jobs() if d["status"] == "running" and d["host"] == HOST
                   and d.get("manager") and d["manager"] not in live and d["manager"] != mid
                   and pid_alive(d["worker_pid"], d.get("worker_start"))]
        if not orphans or time.monotonic() > deadline:
            return
        if not announced:
            log.info("waiting for %d job(s) of a dead manager to stop: %s", len(orphans),
                     ", ".join(d["job_id"] for d in orphans))
            announced = True
        time.sleep(0.2)


def _drain(queue: JobQueue, backend, mid: str, a: argparse.Namespace, stop: Dict) -> None:
    r"""Wait for the backend while showing progress and logging where each job runs."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread (children are started with preexec_fn)
    jobs = queue.all_jobs()
    bar = tqdm(total=len(jobs), desc="jobs", unit="job", disable=a.no_progress, file=sys.stderr)
    seen: Dict[str, int] = {}
    last_hb = 0.0
    try:
        while stop["signal"] is None:
            alive = backend.running()
            now = time.monotonic()
            if now - last_hb > min(a.heartbeat, a.grace / 3):
                queue.manager_heartbeat(mid)
                lost = queue.mark_lost(a.grace)
                if lost:
                    log.warning("lost (worker vanished): %s", ", ".join(lost))
                last_hb = now
            jobs = queue.all_jobs()
            for d in jobs:
                if d["status"] == "running" and seen.get(d["job_id"]) != d["attempts"]:
                    seen[d["job_id"]] = d["attempts"]
                    bar.clear()
                    log.info("job %s attempt %d runs on %s device %s worker %s: %s", d["job_id"], d["attempts"],
                             d["host"], d["device"], d["worker"], " ".join(d["argv"]))
            done = sum(1 for d in jobs if d["status"] in FINAL_STATUSES)
            bar.total = len(jobs)
            bar.n = done
            bar.set_postfix_str(", ".join(f"{s} {sum(1 for d in jobs if d['status'] == s)}"
                                          for s in ("running", "success", "failed") ), refresh=False)
            bar.refresh()
            if not alive:
                break
            time.sleep(a.poll)
    finally:
        bar.close()
