r"""The Dask backend of ``manager.py``: one Dask task per job, the queue stays the record of truth.

``python manager.py --exp EXP --backend dask [--address tcp://HOST:PORT | tls://HOST:PORT | FILE]``

Protocol (manager side, :class:`DaskBackend`)
  1. the manager *claims* a queued job in the queue (status ``running``, host, pid, attempt, a
     fresh claim token) -- only as many as the cluster has free slots, so a claimed job never
     waits long in Dask's own queue (and while it waits the manager heartbeats it);
  2. it submits one task ``execute_job_task(payload)`` (payload: plain strings and numbers --
     job id, claim token, absolute paths), with a ``GPU`` resource of ``1/P`` when the workers
     advertise GPUs (``P`` = ``--processes``);
  3. it watches the futures: a task that erred (``KilledWorker``: its workers kept dying) or a
     re-run that refused to run makes the job ``lost`` (when its executor is gone); lost jobs are
     requeued (at most ``max_attempts`` attempts) and claimed again with a new token.

Protocol (worker side, :func:`execute_job_task`)
  1. FIRST, under the queue's lock, the task checks that the claim token is still the job's, that
     the job is ``running``, and that no other execution of this same claim has started it
     (Dask re-runs a task whose worker died: that re-run finds the claim *adopted* and exits
     without running the job).  It then *adopts* the claim: host, worker pid, device and the Dask
     worker address are recorded, so the manager's ``mark_lost`` sees a dead worker pid (same
     host) or a stale heartbeat (other hosts);
  2. it runs the job with :func:`ovis.experiments.workers.run_claimed_job` (job in its own process
     group, ``PR_SET_PDEATHSIG`` = ``SIGKILL`` so the job dies with the worker, heartbeats, outcome
     judged from the exit code and ``status.json``).  ``manager.py`` stopping (Ctrl-C, SIGTERM)
     writes a stop file in ``<root>/<exp>/.dask/``: the task then sends ``SIGTERM`` to its job and
     records it ``aborted``.

The task function reaches the workers *by value* (:func:`ovis.experiments.dask_bootstrap.run_job`,
registered with :func:`cloudpickle.register_pickle_by_value`: it puts the experiment's snapshot
``<root>/<exp>/.lib_snapshot`` first on ``sys.path`` and imports this module from it):
workers need Dask, PyTorch and the job's dependencies, not an installed ``ovis``.  The jobs
themselves always run from their experiment's snapshot (subprocesses); the task code of a
long-lived worker is the first one it imported (``ovis`` already on its path, or the first
snapshot it saw).  All paths are absolute, so every machine must mount the
shared ``runs/`` and ``data/`` folders at the same paths.

Without ``--address`` a :class:`distributed.LocalCluster` is started on ``127.0.0.1`` (processes;
its scheduler's HTTP server on ``127.0.0.1:0``): one worker per GPU, pinned through
``CUDA_VISIBLE_DEVICES`` and advertising ``GPU=1`` (``P`` threads), or ``P`` one-thread workers on
the CPU.  TLS: pass ``security=`` (:func:`security_from_files`, ``Security.temporary()``) or set
Dask's configuration (``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``, ``..._CLIENT__CERT``,
``..._CLIENT__KEY``, ``DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True``), which
``distributed.security.Security()`` reads; with TLS the local cluster listens on
``tls://127.0.0.1``.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ovis.experiments import dask_bootstrap
from ovis.experiments.backend import Backend, BackendNotAvailable
from ovis.experiments.devices import cpu_threads_per_worker
from ovis.experiments.queue import HOST, JobQueue, QueueError, kill_group, pid_alive, process_start_time
from ovis.experiments.workers import WorkerConfig, run_claimed_job

__all__ = [
    "DaskBackend",
    "execute_job_task",
    "adopt_claim",
    "security_from_files",
    "task_capacity",
    "local_worker_specs",
    "ADOPTED",
]

log = logging.getLogger("ovis.experiments")
ADOPTED = "dask_adopted"  # queue field: the claim token an execution has started (one per claim)
STOP_DIR = ".dask"


# ----------------------------------------------------------------------------------------------
# worker side


def adopt_claim(queue: JobQueue, job_id: str, token: str, worker: str, device: str) -> Tuple[Optional[Dict[str, Any]], str]:
    r"""Atomically take over the manager's claim ``token`` of ``job_id`` for this process.

    Returns ``(record, "")`` when this execution may run the job, else ``(None, reason)``: the
    job is unknown, not ``running``, claimed with another token (requeued, marked lost or
    aborted meanwhile), or already *adopted* by another execution of the same claim (a Dask
    re-run after a worker death).  Adopting records host, worker pid (and start time), device,
    worker name, a fresh heartbeat and ``dask_adopted = token``, all under the queue's lock.
    """
    from tinydb import Query

    with queue.transaction() as db:
        t = db.table("jobs")
        doc = t.get(Query().job_id == job_id)
        if doc is None:
            return None, f"job {job_id} is not in the queue {queue.path}"
        if doc["status"] != "running" or doc["claim_token"] != token:
            return None, (f"the claim is no longer ours (job status {doc['status']!r}, "
                          f"attempt {doc['attempts']}): not run")
        if doc.get(ADOPTED) == token:
            return None, (f"this claim was already started by {doc.get('worker')} (pid {doc.get('worker_pid')} "
                          f"on {doc.get('host')}): a re-run after a worker death does not run the job")
        pid = os.getpid()
        upd = {"host": HOST, "worker_pid": pid, "worker_start": process_start_time(pid), "worker": worker,
               "device": device, "heartbeat": time.time(), ADOPTED: token}
        t.update(upd, doc_ids=[doc.doc_id])
        rec = dict(doc)
        rec.update(upd)
        return rec, ""


def _worker_identity() -> Tuple[str, Optional[int]]:
    r"""The Dask worker's address and thread count (``("pid<N>", None)`` outside a worker)."""
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.address), int(w.state.nthreads)
    except Exception:  # noqa: BLE001 - not inside a Dask worker (direct call in tests)
        return f"pid{os.getpid()}", None


def execute_job_task(payload: Dict[str, Any]) -> Dict[str, Any]:
    r"""The Dask task: check the claim, adopt it, run the job, return a summary (JSON-able).

    ``payload``: ``job_id``, ``token``, ``exp``, ``exp_dir``, ``root``, ``data_root``, ``snapshot``
    (absolute paths), ``heartbeat``, ``poll``, ``term_timeout``, ``gpu`` (bool: the job gets this
    worker's GPU, the first entry of its ``CUDA_VISIBLE_DEVICES``), ``threads`` (optional),
    ``stop_file`` (when it exists the job is aborted).
    Returns ``{"ran": bool, "status": ..., "exit_code": ..., "reason": ..., "worker": ...}``.
    """
    addr, _ = _worker_identity()
    queue = JobQueue(payload["exp_dir"])
    device = "cpu"
    if payload.get("gpu"):
        vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        device = vis if vis else "0"
    try:
        rec, why = adopt_claim(queue, payload["job_id"], payload["token"], f"dask:{addr}", device)
    except QueueError as e:
        return {"ran": False, "status": "", "exit_code": None, "reason": f"queue error: {e}", "worker": addr}
    if rec is None:
        return {"ran": False, "status": "", "exit_code": None, "reason": why, "worker": addr}
    cfg = WorkerConfig(exp=payload["exp"], exp_dir=Path(payload["exp_dir"]), root=Path(payload["root"]),
                       data_root=Path(payload["data_root"]), snapshot=Path(payload["snapshot"]), device=device,
                       worker=f"dask:{addr}", manager=payload.get("manager"),
                       heartbeat=float(payload["heartbeat"]), poll=float(payload["poll"]),
                       term_timeout=float(payload["term_timeout"]), python=sys.executable,
                       threads=payload.get("threads"))
    stop_file = Path(payload["stop_file"])
    out = run_claimed_job(queue, rec, cfg, should_stop=stop_file.exists)
    return {"ran": True, "status": out.status, "exit_code": out.exit_code, "reason": out.error or "",
            "worker": addr}


class _ByValue:
    r"""Wraps a task function so that it always pickles as ``cloudpickle.loads(<its code>)``.

    Dask pickles a task graph with the standard :mod:`pickle` and turns to ``cloudpickle`` only
    for a *top-level* object of a by-value module, so a function inside a task would travel by
    reference; this wrapper makes it travel by value.  Its module must be registered with
    :func:`cloudpickle.register_pickle_by_value` (else its code is not shipped).  The receiving
    side gets the plain function (it never needs this class).

    Trust: the bytes are this manager's own ``cloudpickle.dumps`` of :mod:`ovis.experiments.dask_bootstrap`,
    sent over Dask's channel, which unpickles every task it carries anyway; no user-supplied file or
    record reaches ``loads``.  A cluster reachable beyond loopback must use TLS (:func:`security_from_files`).
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> Tuple[Any, Tuple[bytes]]:
        import cloudpickle

        return cloudpickle.loads, (cloudpickle.dumps(self.fn),)


def task_function() -> Callable[[str, Dict[str, Any]], Dict[str, Any]]:
    r"""The function submitted for each job: :func:`ovis.experiments.dask_bootstrap.run_job`, by value
    (workers need no installed ``ovis``)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(dask_bootstrap)
    return _ByValue(dask_bootstrap.run_job)


# ----------------------------------------------------------------------------------------------
# cluster helpers


def security_from_files(ca_file: str, cert: str, key: str, require_encryption: bool = True):
    r"""A :class:`distributed.security.Security` using one CA and one cert/key for every role.

    ``ca_file``, ``cert``, ``key``: PEM file paths (or PEM contents).  The same certificate
    serves the client, the scheduler and the workers, which is what a private cluster needs;
    anything that does not present a certificate signed by ``ca_file`` is refused.
    """
    from distributed.security import Security

    for name, v in (("ca_file", ca_file), ("cert", cert), ("key", key)):
        if not v:
            raise ValueError(f"security_from_files: {name} is empty; give a PEM file path")
        if "-----BEGIN" not in str(v) and not Path(v).is_file():
            raise FileNotFoundError(f"security_from_files: {name} {v!r} is not a file")
    return Security(require_encryption=require_encryption, tls_ca_file=str(ca_file),
                    tls_client_cert=str(cert), tls_client_key=str(key),
                    tls_scheduler_cert=str(cert), tls_scheduler_key=str(key),
                    tls_worker_cert=str(cert), tls_worker_key=str(key))


def _has_tls(security: Any) -> bool:
    return bool(security is not None and (security.require_encryption or security.tls_ca_file
                                          or security.tls_client_cert))


def per_gpu_processes(slots: Sequence[str]) -> int:
    r"""``P`` from the manager's slots (each GPU repeated ``P`` times, or ``P`` ``"cpu"``)."""
    if not slots:
        raise ValueError("no slots: the manager gives at least one slot")
    return slots.count(slots[0])


def local_worker_specs(slots: Sequence[str], security: Any = None, protocol: str = "tcp://",
                       cpu_count: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    r"""Worker specs of the local cluster (SpecCluster format ``{name: {"cls", "options"}}``).

    GPU slots: one worker per distinct GPU, ``CUDA_VISIBLE_DEVICES`` pinned in its environment,
    ``resources={"GPU": 1}`` and ``P`` threads (tasks ask ``GPU = 1/P``).  CPU slots: ``P``
    one-thread workers, each job getting ``cpu_count // P`` OpenMP/MKL threads.
    Every worker and nanny listens on 127.0.0.1 only, without a dashboard and without a memory
    limit (the jobs are subprocesses that the nanny does not measure).
    """
    from distributed import Nanny

    P = per_gpu_processes(slots)
    base = {"host": "127.0.0.1", "protocol": protocol, "security": security, "dashboard": False,
            "dashboard_address": None, "memory_limit": 0, "silence_logs": logging.WARNING}
    specs: Dict[str, Dict[str, Any]] = {}
    if all(s == "cpu" for s in slots):
        threads = cpu_threads_per_worker(P, cpu_count)
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
        for i in range(P):
            specs[f"cpu-{i}"] = {"cls": Nanny, "options": dict(base, nthreads=1, env=dict(env), name=f"cpu-{i}")}
        return specs
    for g in dict.fromkeys(slots):
        specs[f"gpu-{g}"] = {"cls": Nanny, "options": dict(base, nthreads=P, resources={"GPU": 1},
                                                           env={"CUDA_VISIBLE_DEVICES": str(g)},
                                                           name=f"gpu-{g}")}
    return specs


def task_capacity(workers: Dict[str, Dict[str, Any]], gpu_share: Optional[float]) -> int:
    r"""How many job tasks the cluster can run at once.

    ``workers``: ``Client.scheduler_info()["workers"]``.  Without GPU (``gpu_share None``):
    the total of the workers' threads.  With GPU tasks asking ``gpu_share`` of a ``GPU``
    resource: per worker ``min(threads, floor(GPU / gpu_share))`` (workers without GPU count 0).
    """
    n = 0
    for w in workers.values():
        threads = int(w.get("nthreads", 1))
        if gpu_share is None:
            n += threads
        else:
            gpu = float((w.get("resources") or {}).get("GPU", 0))
            n += min(threads, int(math.floor(gpu / gpu_share + 1e-9)))
    return n


# ----------------------------------------------------------------------------------------------
# manager side


@dataclass
class _Inflight:
    job_id: str
    token: str
    attempt: int
    future: Any
    submitted: float
    done: bool = False  # the future ended but the queue still says running (executor gone?)
    started: bool = False  # its adoption was logged


@dataclass
class DaskBackend(Backend):
    r"""Run the queue's jobs as Dask tasks (see the module docstring for the protocol).

    Args:
        cfg: the manager's worker configuration (paths, heartbeat, manager id).
        address: a scheduler address (``tcp://HOST:PORT``, ``tls://HOST:PORT``) or a scheduler
            file (``--scheduler-file`` of ``dask scheduler``); ``None`` starts a local cluster
            on 127.0.0.1.
        security: a :class:`distributed.security.Security`; ``None`` reads Dask's configuration.
        dashboard_address: where the local scheduler's HTTP server (dashboard, health, metrics)
            listens; the scheduler starts one in any case, so it must name the interface
            (default ``"127.0.0.1:0"``: loopback, a free port; ``":8787"`` would mean every
            interface).
        grace: seconds without heartbeat after which a job counts as lost (the manager's ``--grace``).
        requeue_lost: requeue jobs that end ``lost`` (``--requeue_level >= 1``).
        max_attempts: a job lost this many times is left ``lost`` (a job that kills its worker).
        connect_timeout: seconds to reach the scheduler.
    """

    cfg: WorkerConfig
    address: Optional[str] = None
    security: Any = None
    dashboard_address: str = "127.0.0.1:0"
    grace: float = 60.0
    requeue_lost: bool = True
    max_attempts: int = 3
    connect_timeout: float = 30.0
    client: Any = field(default=None, init=False, repr=False)
    cluster: Any = field(default=None, init=False, repr=False)
    inflight: Dict[str, _Inflight] = field(default_factory=dict, init=False, repr=False)
    lost_wait: Dict[str, float] = field(default_factory=dict, init=False, repr=False)
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:12], init=False)
    _slots: List[str] = field(default_factory=list, init=False, repr=False)
    _capacity: int = field(default=0, init=False, repr=False)
    _cap_checked: float = field(default=-1e9, init=False, repr=False)
    _hb: float = field(default=-1e9, init=False, repr=False)
    _no_worker_log: float = field(default=0.0, init=False, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False)
    _gpu_share: Optional[float] = field(default=None, init=False, repr=False)
    _exhausted: bool = field(default=False, init=False, repr=False)

    @classmethod
    def from_cli(cls, cfg: WorkerConfig, *, address: Optional[str], grace: float,
                 requeue_lost: bool) -> "DaskBackend":
        return cls(cfg, address, grace=grace, requeue_lost=requeue_lost)

    def __post_init__(self) -> None:
        try:
            import distributed  # noqa: F401
        except ImportError as e:
            raise BackendNotAvailable(f"--backend dask needs the `distributed` package ({e}); "
                                      "install it with `pip install .[dask]`") from None
        if self.address is not None:
            a = str(self.address)
            if "://" in a:
                if not a.startswith(("tcp://", "tls://")):
                    raise BackendNotAvailable(f"--address {a!r}: use tcp://HOST:PORT or tls://HOST:PORT "
                                              "(or the path of a scheduler file)")
            elif not Path(a).is_file():
                raise BackendNotAvailable(f"--address {a!r} is neither tcp://HOST:PORT, tls://HOST:PORT "
                                          "nor an existing scheduler file")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.security is None:
            from distributed.security import Security

            self.security = Security()  # Dask's configuration (DASK_DISTRIBUTED__COMM__TLS__...)
        if str(self.address or "").startswith("tls://") and not _has_tls(self.security):
            raise BackendNotAvailable(f"--address {self.address}: TLS needs credentials; set "
                                      "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT "
                                      "and DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY (Dask's configuration), "
                                      "or pass security=")

    # -- paths -----------------------------------------------------------------------------------
    @property
    def stop_file(self) -> Path:
        r"""The file whose existence tells this session's tasks to stop (``<exp_dir>/<STOP_DIR>/stop-<session>``)."""
        return self.cfg.exp_dir / STOP_DIR / f"stop-{self.session}"

    @property
    def scheduler_address(self) -> Optional[str]:
        r"""The connected scheduler's address, ``None`` before :meth:`start`."""
        return None if self.client is None else self.client.scheduler.address

    # -- Backend API -----------------------------------------------------------------------------
    def start(self, slots: Sequence[str]) -> None:
        r"""Start a local cluster on 127.0.0.1 (one worker per slot; TLS when credentials are configured)
        or connect to ``address``, then submit the first tasks.

        Raises:
            ValueError: ``dashboard_address`` names no interface.
        """
        from distributed import Client

        self._slots = list(slots)
        sec = self.security
        (self.cfg.exp_dir / STOP_DIR).mkdir(parents=True, exist_ok=True)
        if self.address is None:
            from distributed import LocalCluster

            protocol = "tls://" if _has_tls(sec) else "tcp://"
            if protocol == "tls://" and not (sec.tls_scheduler_cert and sec.tls_worker_cert):
                # only client credentials configured: the local scheduler and workers use them too
                sec = self.security = security_from_files(sec.tls_ca_file, sec.tls_client_cert, sec.tls_client_key)
            if not str(self.dashboard_address).split(":")[0]:
                raise ValueError(f"dashboard_address {self.dashboard_address!r} names no interface "
                                 "(it would listen on all of them); use e.g. 127.0.0.1:0")
            self.cluster = LocalCluster(n_workers=0, host="127.0.0.1", processes=True, protocol=protocol,
                                        security=sec, dashboard_address=self.dashboard_address,
                                        scheduler_port=0, silence_logs=logging.WARNING)
            self.cluster.worker_spec.update(local_worker_specs(self._slots, sec, protocol))
            self.cluster.scale(len(self.cluster.worker_spec))
            self.client = Client(self.cluster, security=sec, timeout=self.connect_timeout)
            self.client.wait_for_workers(len(self.cluster.worker_spec), timeout=self.connect_timeout * 4)
            log.info("dask: local cluster %s, %d worker(s), dashboard %s", self.client.scheduler.address,
                     len(self.cluster.worker_spec), self.client.dashboard_link)
        else:
            a = str(self.address)
            if "://" in a:
                self.client = Client(a, security=sec, timeout=self.connect_timeout)
            else:
                self.client = Client(scheduler_file=a, security=sec, timeout=self.connect_timeout)
            log.info("dask: connected to %s", self.client.scheduler.address)
        self._refresh_capacity(force=True)  # sets the GPU share when a worker advertises a GPU
        self._tick()

    def running(self) -> bool:
        r"""Advance the protocol (collect finished tasks, submit new ones, requeue lost jobs), then
        whether tasks are in flight or waiting, or jobs are still queued.
        """
        if self._stopped:
            return False
        self._tick()
        if self.inflight or self.lost_wait:
            return True
        if self._exhausted:
            return False
        return self.cfg_queue().counts()["queued"] > 0

    def stop(self, timeout: float) -> None:
        r"""Ask the tasks to stop (the stop file), wait up to ``timeout`` seconds for the adopted ones,
        cancel the rest, mark this session's running jobs ``aborted`` and close the client and cluster
        (idempotent).
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.inflight:
                self.stop_file.parent.mkdir(parents=True, exist_ok=True)
                self.stop_file.touch()
                deadline = time.monotonic() + max(1.0, timeout)
                while time.monotonic() < deadline and any(
                        f.future.status == "pending" and self._adopted(f) for f in self.inflight.values()):
                    time.sleep(0.1)
                for f in self.inflight.values():
                    try:
                        f.future.cancel()
                    except Exception:  # noqa: BLE001
                        pass
            toks = {f.token for f in self.inflight.values()}
            if toks:
                ab = self.cfg_queue().abort_running(lambda d: d.get("claim_token") in toks,
                                                    "aborted: the manager stopped (dask backend)")
                if ab:
                    log.info("dask: aborted %s", ", ".join(ab))
        finally:
            self._close()
            try:
                self.stop_file.unlink()
            except OSError:
                pass

    # -- internals -------------------------------------------------------------------------------
    def cfg_queue(self) -> JobQueue:
        r"""A :class:`~ovis.experiments.queue.JobQueue` on the experiment's directory."""
        return JobQueue(self.cfg.exp_dir)

    def _close(self) -> None:
        for obj in (self.client, self.cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception as e:  # noqa: BLE001
                    log.debug("dask: close: %s", e)
        self.client = self.cluster = None

    def _adopted(self, f: _Inflight) -> bool:
        d = self.cfg_queue().get(f.job_id)
        return bool(d and d.get("claim_token") == f.token and d["status"] == "running")

    def _refresh_capacity(self, force: bool = False) -> bool:
        r"""Re-read the workers (every 2 s); returns whether some worker advertises a GPU."""
        now = time.monotonic()
        if not force and now - self._cap_checked < 2.0:
            return self._gpu_share is not None
        self._cap_checked = now
        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]  # all workers (not the first 5)
        except TypeError:  # older distributed
            workers = self.client.scheduler_info()["workers"]
        gpu = any(float((w.get("resources") or {}).get("GPU", 0)) > 0 for w in workers.values())
        if gpu and self._gpu_share is None and not self.inflight and self._slots:
            self._gpu_share = 1.0 / per_gpu_processes(self._slots)  # GPU workers joined after start
        # GPU mode is sticky: once tasks ask for a GPU share, workers without GPU count 0
        self._capacity = task_capacity(workers, self._gpu_share)
        self._worker_addrs = set(workers)
        if self._capacity == 0 and now - self._no_worker_log > 60:
            self._no_worker_log = now
            log.warning("dask: no worker can take a job yet (%d worker(s) connected); waiting", len(workers))
        return gpu

    def _payload(self, rec: Dict[str, Any]) -> Dict[str, Any]:
        c = self.cfg
        return {"job_id": rec["job_id"], "token": rec["claim_token"], "exp": c.exp, "exp_dir": str(c.exp_dir),
                "root": str(c.root), "data_root": str(c.data_root), "snapshot": str(c.snapshot),
                "heartbeat": c.heartbeat, "poll": c.poll, "term_timeout": c.term_timeout,
                "gpu": self._gpu_share is not None, "threads": c.threads, "manager": c.manager,
                "stop_file": str(self.stop_file)}

    def _submit(self, queue: JobQueue) -> None:
        while len(self.inflight) < self._capacity and not self._stopped:
            rec = queue.claim("dask", "dask", os.getpid(), manager=self.cfg.manager)
            if rec is None:
                self._exhausted = queue.counts()["queued"] > 0  # queued jobs but the --max_jobs budget is spent
                return
            kw: Dict[str, Any] = {"key": f"ovis-job-{rec['job_id']}-{rec['attempts']}-{rec['claim_token'][:8]}",
                                  "pure": False, "retries": 0}
            if self._gpu_share is not None:
                kw["resources"] = {"GPU": self._gpu_share}
            fut = self.client.submit(task_function(), str(self.cfg.snapshot), self._payload(rec), **kw)
            self.inflight[rec["job_id"]] = _Inflight(rec["job_id"], rec["claim_token"], rec["attempts"], fut,
                                                     time.monotonic())
            log.info("dask: job %s attempt %d submitted (%s)", rec["job_id"], rec["attempts"], kw["key"])

    def _tick(self) -> None:
        queue = self.cfg_queue()
        now = time.monotonic()
        if self.client is None:
            return
        self._refresh_capacity()
        jobs = {d["job_id"]: d for d in queue.all_jobs()}
        heartbeat_due = now - self._hb >= self.cfg.heartbeat
        if heartbeat_due:
            self._hb = now
        for jid, f in list(self.inflight.items()):
            d = jobs.get(jid)
            ours = d is not None and d["claim_token"] == f.token
            if not ours or d["status"] != "running":
                # the attempt is over in the queue (success/failed/aborted, or lost/requeued elsewhere)
                if ours and d["status"] == "lost":
                    self._on_lost(jid, d)
                if f.future.status == "pending":
                    f.future.cancel()  # a pending re-run would refuse to run anyway
                del self.inflight[jid]
                continue
            adopted = d.get(ADOPTED) == f.token
            if adopted and not f.started:
                f.started = True
                log.info("dask: job %s attempt %d started on %s (host %s, worker pid %s, device %s)", jid,
                         f.attempt, d.get("worker"), d.get("host"), d.get("worker_pid"), d.get("device"))
            st = f.future.status
            if st == "pending":
                if not adopted and heartbeat_due:
                    queue.heartbeat(jid, f.token)  # claimed, waiting for a Dask thread
                continue
            # the task ended (finished / error / cancelled / lost) while the queue still says running
            why = self._why_ended(f)
            if not adopted:
                if queue.finish(jid, f.token, "lost", None, f"lost: the Dask task ended before starting the job ({why})"):
                    log.warning("dask: job %s lost: %s", jid, why)
                    self._on_lost(jid, dict(d, status="lost"))
                del self.inflight[jid]
                continue
            if self._executor_gone(d):
                if d["host"] == HOST and d.get("pid"):
                    kill_group(d["pid"], signal.SIGKILL)
                if queue.finish(jid, f.token, "lost", None, f"lost: its Dask worker {d.get('worker')} died ({why})"):
                    log.warning("dask: job %s lost: worker %s died (%s)", jid, d.get("worker"), why)
                    self._on_lost(jid, dict(d, status="lost"))
                del self.inflight[jid]
            elif not f.done:
                f.done = True
                log.info("dask: job %s: task ended (%s) but its executor may live; waiting for its "
                         "heartbeat (grace %.0f s)", jid, why, self.grace)
        lost = queue.mark_lost(self.grace)
        for jid in lost:
            if jid in self.inflight:
                log.warning("dask: job %s lost (no heartbeat / dead worker)", jid)
                self._on_lost(jid, queue.get(jid) or {})
                f = self.inflight.pop(jid)
                if f.future.status == "pending":
                    f.future.cancel()
        self._requeue_due(queue)
        self._submit(queue)

    def _why_ended(self, f: _Inflight) -> str:
        st = f.future.status
        if st == "finished":
            try:
                r = f.future.result(timeout=5)
                return str(r.get("reason") or r.get("status") or "finished")
            except Exception as e:  # noqa: BLE001
                return f"result unavailable: {type(e).__name__}"
        if st == "error":
            try:
                e = f.future.exception(timeout=5)
            except Exception as e2:  # noqa: BLE001
                return f"error ({type(e2).__name__})"
            try:
                return f"{type(e).__name__}: {e}"
            except Exception:  # noqa: BLE001 - an exception whose str() fails
                return type(e).__name__
        return st

    def _executor_gone(self, d: Dict[str, Any]) -> bool:
        r"""Whether the execution that adopted the claim is certainly dead."""
        if d["host"] == HOST:
            return not pid_alive(d.get("worker_pid"), d.get("worker_start"))
        w = str(d.get("worker") or "")
        addr = w[len("dask:"):] if w.startswith("dask:") else w
        # Dask removed that worker (it died or lost the scheduler: it then closes itself)
        return addr not in getattr(self, "_worker_addrs", set())

    def _on_lost(self, jid: str, d: Dict[str, Any]) -> None:
        r"""Schedule the requeue of a lost job (after a quarantine when its host is remote)."""
        if not self.requeue_lost:
            return
        if int(d.get("attempts") or 0) >= self.max_attempts:
            log.warning("dask: job %s lost %d times: left lost (see its log)", jid, d.get("attempts"))
            return
        # a remote executor that is only partitioned sees its claim gone at its next heartbeat
        # and kills its job: wait for that before the job can start elsewhere
        wait = 0.0 if d.get("host") == HOST else self.cfg.heartbeat + 2.0
        self.lost_wait[jid] = time.monotonic() + wait

    def _requeue_due(self, queue: JobQueue) -> None:
        now = time.monotonic()
        for jid, t in list(self.lost_wait.items()):
            if now < t:
                continue
            del self.lost_wait[jid]
            d = queue.get(jid)
            if d is not None and d["status"] == "lost":
                if queue.requeue(1, job_ids=[jid]):
                    log.info("dask: job %s requeued after being lost (attempt %d)", jid, d["attempts"])
