r"""Queue overhead per job: 4 worker processes drain N trivial jobs through the queue API.

Each job costs what a worker does for a real job, minus the job itself: ``claim`` (queued ->
running, claim token), ``set_pid``, one ``heartbeat``, ``finish``.  Prints ms/job (wall time of
the whole drain / N, i.e. the queue's throughput with 4 workers contending for its lock) and the
mean latency of each operation seen by a worker.

``python benchmarks/bench_queue.py [--jobs 1000] [--workers 4] [--argv_tokens 60]``
(the paper's run.py jobs have about 60 argv tokens).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovis.experiments.queue import JobQueue  # noqa: E402


@dataclass(frozen=True)
class _Job:
    job_id: str
    script: str
    argv: Tuple[str, ...]


def _worker(exp_dir: str, out: "mp.Queue") -> None:
    q = JobQueue(exp_dir)
    times: Dict[str, List[float]] = {"claim": [], "set_pid": [], "heartbeat": [], "finish": []}
    n = 0
    while True:
        t = time.perf_counter()
        rec = q.claim(f"bench-{os.getpid()}", "cpu")
        times["claim"].append(time.perf_counter() - t)
        if rec is None:
            break
        jid, tok = rec["job_id"], rec["claim_token"]
        for name, fn in (("set_pid", lambda jid=jid, tok=tok: q.set_pid(jid, tok, os.getpid())),
                         ("heartbeat", lambda jid=jid, tok=tok: q.heartbeat(jid, tok)),
                         ("finish", lambda jid=jid, tok=tok: q.finish(jid, tok, "success", 0))):
            t = time.perf_counter()
            assert fn(), name
            times[name].append(time.perf_counter() - t)
        n += 1
    out.put((n, times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--argv_tokens", type=int, default=60)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        q = JobQueue(tmp)
        jobs = [_Job(f"{i:016x}", "run.py", tuple(f"--flag{k % 30} value{k}" for k in range(a.argv_tokens // 2)))
                for i in range(a.jobs)]
        t = time.perf_counter()
        q.add_jobs(jobs)
        t_insert = time.perf_counter() - t
        size = q.path.stat().st_size
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(tmp, out)) for _ in range(a.workers)]
        t = time.perf_counter()
        for pr in procs:
            pr.start()
        results = [out.get() for _ in procs]
        wall = time.perf_counter() - t
        for pr in procs:
            pr.join()
        done = sum(r[0] for r in results)
        counts = q.counts()
        assert done == a.jobs and counts["success"] == a.jobs, (done, counts)
        print(f"queue: {a.jobs} jobs ({size / 1e6:.2f} MB database, {a.argv_tokens} argv tokens/job), "
              f"{a.workers} worker processes, {os.cpu_count()} CPUs")
        print(f"insert of the grid: {t_insert * 1e3:.0f} ms")
        print(f"drain: {wall:.1f} s wall -> {wall / a.jobs * 1e3:.1f} ms/job (claim + set_pid + heartbeat + finish)")
        per_worker = [r[0] for r in results]
        print(f"jobs per worker: {per_worker}")
        for name in ("claim", "set_pid", "heartbeat", "finish"):
            vals = [v for r in results for v in r[1][name]]
            print(f"  {name:<9} mean latency {sum(vals) / len(vals) * 1e3:7.1f} ms  (max {max(vals) * 1e3:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
