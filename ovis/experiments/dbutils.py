r"""Inspect and edit an experiment's queue (``dbutils.py``).

``python dbutils.py --exp EXP [--root runs/] [--check] [--error_messages] [--requeue --requeue_level L]
[--show_all] [--find PATTERN] [--update key:old:new,...] [--delete PATTERN] [--force]``

* ``--check``: counts per status (vanished running jobs are first marked ``lost``); with
  ``--error_messages`` the error tail of each failed / lost / aborted job.
* ``--find PATTERN``: ``field=value`` (exact, on a record field such as ``status=failed``,
  ``job_id=...``, ``device=0``) or a plain substring of the job id or command line.  Nothing is
  ever evaluated as code.
* ``--requeue --requeue_level L``: 0 nothing, 1 aborted+lost, 2 +failed, 100 +running whose process
  is gone (all running with ``--force``), 10000 everything (a requeued success starts over).
* ``--update key:old:new,...``: in the matched jobs (``--find``, else all), replace the value of
  ``--key`` ``old`` by ``new``: the rewritten job is a new job (id recomputed, status ``queued``,
  no attempt, the old outcome dropped); running jobs only with ``--force`` (their process is killed).
* ``--delete PATTERN``: delete the matching jobs; running and succeeded ones only with ``--force``.

Changes are printed before they are made.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ovis.experiments.grid import job_id_of
from ovis.experiments.queue import STATUSES, JobQueue, QueueError, statuses_for_level

__all__ = ["build_dbutils_parser", "dbutils_main", "match_jobs", "parse_updates"]

FIELDS = ("job_id", "script", "status", "attempts", "host", "worker", "worker_pid", "pid", "device",
          "exit_code", "claim_token", "run_dir", "manager", "fresh")


def build_dbutils_parser() -> argparse.ArgumentParser:
    r"""The argument parser of ``dbutils.py`` (``--exp``, ``--root``, ``--check``, ``--requeue``,
    ``--find``, ``--update``, ``--delete``, ...).
    """
    p = argparse.ArgumentParser(prog="dbutils.py", description="Inspect and edit an experiment's job queue.")
    p.add_argument("--exp", required=True, help="experiment name (the folder <root>/<exp>)")
    p.add_argument("--root", default="runs/")
    p.add_argument("--check", action="store_true", help="counts per status")
    p.add_argument("--error_messages", action="store_true", help="with --check: error tails")
    p.add_argument("--requeue", action="store_true", help="requeue jobs by --requeue_level")
    p.add_argument("--requeue_level", type=int, default=1)
    p.add_argument("--show_all", action="store_true", help="list every job")
    p.add_argument("--find", default=None, metavar="PATTERN", help="field=value or a substring")
    p.add_argument("--update", default=None, metavar="key:old:new,...")
    p.add_argument("--delete", default=None, metavar="PATTERN")
    p.add_argument("--force", action="store_true")
    p.add_argument("--grace", type=float, default=60.0, help="heartbeat age after which a job is lost")
    return p


def _cmd(d: Dict[str, Any]) -> str:
    return " ".join(shlex.quote(t) for t in d["argv"])


def match_jobs(jobs: Sequence[Dict[str, Any]], pattern: str) -> List[Dict[str, Any]]:
    r"""Jobs matching ``field=value`` (exact, ``field`` a record field) or a plain substring."""
    if "=" in pattern:
        field, value = pattern.split("=", 1)
        field = field.strip()
        if field in FIELDS:
            return [d for d in jobs if str(d.get(field)) == value.strip()]
    return [d for d in jobs if pattern in d["job_id"] or pattern in _cmd(d)]


def parse_updates(spec: str) -> List[Tuple[str, str, str]]:
    r"""``"iw:5:10,lr:0.001:0.0003"`` -> ``[("iw", "5", "10"), ("lr", "0.001", "0.0003")]``."""
    out = []
    for part in spec.split(","):
        bits = part.split(":")
        if len(bits) != 3 or not bits[0]:
            raise ValueError(f"--update: expected key:old:new, got {part!r}")
        out.append((bits[0].lstrip("-"), bits[1], bits[2]))
    return out


def _apply_updates(argv: List[str], updates: List[Tuple[str, str, str]]) -> List[str]:
    argv = list(argv)
    for key, old, new in updates:
        for i in range(len(argv) - 1):
            if argv[i] == f"--{key}" and argv[i + 1] == old:
                argv[i + 1] = new
    return argv


def _fmt_time(t: Optional[float]) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def dbutils_main(argv: Optional[Sequence[str]] = None, out=None) -> int:
    r"""``dbutils.py``: inspect and edit an experiment's job queue.

    Marks the jobs of vanished workers ``lost`` first, then applies the requested actions in order
    (``--requeue``, ``--update``, ``--delete``, ``--find``, ``--show_all``) and prints the counts per
    status with ``--check`` or when nothing else was asked.

    Args:
        argv: the command line (``None``: ``sys.argv[1:]``).
        out: where the report goes (default ``sys.stdout``).

    Returns:
        The exit code: ``0``; ``2`` when the queue does not exist or an action fails (a one-line
        error on ``stderr``).
    """
    out = out or sys.stdout
    a = build_dbutils_parser().parse_args(argv)
    exp_dir = Path(a.root) / a.exp
    q = JobQueue(exp_dir)
    if not q.exists():
        print(f"no queue at {q.path} (run manager.py --exp {a.exp} --root {a.root} first)", file=sys.stderr)
        return 2
    try:
        lost = q.mark_lost(a.grace)
        if lost:
            print(f"marked lost (worker vanished): {', '.join(lost)}", file=out)
        acted = False
        if a.requeue:
            acted = True
            statuses = statuses_for_level(a.requeue_level)
            cand = [d for d in q.all_jobs() if d["status"] in statuses]
            print(f"requeue level {a.requeue_level} ({', '.join(statuses) or 'nothing'}): "
                  f"{len(cand)} candidate(s)", file=out)
            done = q.requeue(a.requeue_level, force=a.force, grace=a.grace)
            for d in cand:
                mark = "requeued" if d["job_id"] in done else "kept (running and alive; --force to requeue)"
                print(f"  {d['job_id']} {d['status']} -> {mark}: {_cmd(d)}", file=out)
        if a.update:
            acted = True
            updates = parse_updates(a.update)
            jobs = q.all_jobs()
            targets = match_jobs(jobs, a.find) if a.find else jobs
            existing = {d["job_id"] for d in jobs}
            n = 0
            for d in targets:
                new_argv = _apply_updates(d["argv"], updates)
                if new_argv == list(d["argv"]):
                    continue
                if d["status"] == "running" and not a.force:
                    print(f"  skip running {d['job_id']} (use --force)", file=out)
                    continue
                new_id = job_id_of(d["script"], new_argv)
                if new_id in existing:
                    print(f"  skip {d['job_id']}: the updated job already exists as {new_id}", file=out)
                    continue
                print(f"  update {d['job_id']} ({d['status']} -> queued) -> {new_id}:\n    {_cmd(d)}\n"
                      f"    {' '.join(map(shlex.quote, new_argv))}", file=out)
                if d["status"] == "running":  # (--force) its process is killed: the old arguments stop
                    q.requeue(100, force=True, grace=a.grace, job_ids=[d["job_id"]])
                # a rewritten job is a new job: queued, no attempt, nothing of the old outcome kept
                q.update_jobs([d["job_id"]], JobQueue._new_record(new_id, d["script"], new_argv, time.time()))
                existing.add(new_id)
                n += 1
            print(f"updated {n} job(s)", file=out)
        if a.delete:
            acted = True
            jobs = match_jobs(q.all_jobs(), a.delete)
            protected = ("running", "success")  # a live job, a finished result: only with --force
            dele = [d for d in jobs if d["status"] not in protected or a.force]
            for d in jobs:
                tag = "delete" if d in dele else f"skip {d['status']} (use --force)"
                print(f"  {tag} {d['job_id']} {d['status']}: {_cmd(d)}", file=out)
            q.delete_jobs([d["job_id"] for d in dele])
            print(f"deleted {len(dele)} job(s)", file=out)
        if a.find and not a.update:
            acted = True
            found = match_jobs(q.all_jobs(), a.find)
            _print_jobs(found, out)
            print(f"{len(found)} job(s) match {a.find!r}", file=out)
        if a.show_all:
            acted = True
            _print_jobs(q.all_jobs(), out)
        if a.check or not acted:
            _print_check(q.all_jobs(), a.error_messages, out)
    except (QueueError, ValueError, OSError) as e:  # one line (a full disk, an unreadable queue, ...)
        print(f"dbutils: error: {e}", file=sys.stderr)
        return 2
    return 0


def _print_jobs(jobs: Sequence[Dict[str, Any]], out) -> None:
    for d in jobs:
        print(f"{d['job_id']}  {d['status']:<8} attempts {d['attempts']}  device {d['device'] or '-'}  "
              f"host {d['host'] or '-'}  started {_fmt_time(d['started'])}  ended {_fmt_time(d['ended'])}  "
              f"exit {d['exit_code'] if d['exit_code'] is not None else '-'}\n    {d['script']} {_cmd(d)}", file=out)


def _print_check(jobs: Sequence[Dict[str, Any]], errors: bool, out) -> None:
    counts = {s: 0 for s in STATUSES}
    for d in jobs:
        counts[d["status"]] = counts.get(d["status"], 0) + 1
    w = max(len(s) for s in counts)
    print(f"{'status':<{w}}  count", file=out)
    for s, c in counts.items():
        print(f"{s:<{w}}  {c:>5}", file=out)
    print(f"{'total':<{w}}  {len(jobs):>5}", file=out)
    if errors:
        for d in jobs:
            if d["status"] in ("failed", "lost", "aborted") and d.get("error"):
                print(f"\n--- {d['status']} {d['job_id']} (exit {d['exit_code']}, attempt {d['attempts']}): {_cmd(d)}",
                      file=out)
                print(d["error"], file=out)
