r"""Entry point of a local worker process: ``python -m ovis.experiments.worker_cli ...``.

Started by :class:`ovis.experiments.local_backend.LocalBackend` (one per slot).  ``SIGTERM`` or
``SIGINT`` make the worker abort its running job (recorded ``aborted``) and exit.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import List, Optional

from ovis.experiments.queue import JobQueue
from ovis.experiments.workers import WorkerConfig, worker_loop


def main(argv: Optional[List[str]] = None) -> int:
    r"""The worker process: parse the options the local backend passes (``--exp``, ``--exp_dir``,
    ``--root``, ``--data_root``, ``--snapshot``, ``--device``, ...), install the ``SIGTERM`` /
    ``SIGINT`` handlers and run :func:`ovis.experiments.workers.worker_loop` until the queue is
    drained, ``--max_jobs`` jobs ran, or a signal arrives.

    Returns:
        ``0``.
    """
    p = argparse.ArgumentParser(prog="ovis.experiments.worker_cli", description=__doc__)
    p.add_argument("--exp", required=True)
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--data_root", required=True)
    p.add_argument("--snapshot", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker", default="w0")
    p.add_argument("--manager", default=None)
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--poll", type=float, default=0.1)
    p.add_argument("--term_timeout", type=float, default=10.0)
    p.add_argument("--max_jobs", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of CPU jobs")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    stop = {"flag": False}

    def _handler(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    cfg = WorkerConfig(exp=a.exp, exp_dir=Path(a.exp_dir).resolve(), root=Path(a.root).resolve(),
                       data_root=Path(a.data_root).resolve(), snapshot=Path(a.snapshot).resolve(),
                       device=a.device, worker=a.worker, manager=a.manager, heartbeat=a.heartbeat,
                       poll=a.poll, term_timeout=a.term_timeout, threads=a.threads)
    worker_loop(cfg, JobQueue(cfg.exp_dir), should_stop=lambda: stop["flag"], max_jobs=a.max_jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
