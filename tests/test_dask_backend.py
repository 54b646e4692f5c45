"""The Dask backend (issue 7) with real processes: LocalCluster, `dask scheduler` + `dask worker`
CLI processes, TLS, and SIGKILL of a Dask worker mid-job.  Every listener is on 127.0.0.1.

The fake job (``tests/fakes.py``'s ``DASK_JOB``, written into tmp_path) follows the job
contract without run.py; it appends ``start``/``end`` lines with timestamps and its pid to
``$FAKE_COUNT_DIR/times.log`` and writes an output file ``out.json`` (a function of its
arguments) into its run directory, so that runs of the different backends can be compared and
overlapping attempts of one job detected.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from fakes import DASK_JOB
from test_experiments_helpers import PY, REPO, make_src, wait_for

from ovis.experiments.queue import JobQueue, pid_alive

DASK = str(Path(sys.executable).with_name("dask"))

GRID6 = {"args": ["--name alpha", "--name be", "--name gam --code 3"], "parameters": {"mult": [2, 5], "sleep": [0.3]}}


# ----------------------------------------------------------------------------------------------
# helpers


def _src(tmp: Path, name: str, grid: Dict) -> Path:
    return make_src(tmp, name, dict(grid, description="dask test grid", script="fake_job.py"), job=DASK_JOB)


def _env(count_dir: Path, with_repo: bool = True) -> Dict[str, str]:
    env = dict(os.environ)
    env["FAKE_COUNT_DIR"] = str(count_dir)
    env.pop("PYTHONPATH", None)
    if with_repo:
        env["PYTHONPATH"] = str(REPO)
    for k in [k for k in env if k.startswith("DASK_")]:
        del env[k]
    env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
    count_dir.mkdir(parents=True, exist_ok=True)
    return env


def _manager(src: Path, name: str, root: Path, *extra: str) -> List[str]:
    return [PY, str(REPO / "manager.py"), "--exp", name, "--src", str(src), "--root", str(root),
            "--data_root", str(root.parent / "data"), "--heartbeat", "0.5", "--grace", "20", "--poll", "0.2",
            "--term_timeout", "2", "--no_progress", *extra]


def _times(count_dir: Path) -> List[Tuple[str, str, int, float]]:
    f = count_dir / "times.log"
    if not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        w = line.split()
        out.append((w[0], w[1], int(w[2]), float(w[3])))
    return out


def _results(root: Path, name: str) -> Dict[Tuple[str, ...], Tuple[str, Optional[dict]]]:
    r"""Per job (keyed by its arguments): its status and its output file."""
    out = {}
    for d in JobQueue(root / name).all_jobs():
        o = root / name / d["job_id"] / "out.json"
        out[tuple(d["argv"])] = (d["status"], json.loads(o.read_text()) if o.exists() else None)
    return out


def _no_overlap(times: List[Tuple[str, str, int, float]], died: Dict[int, float]) -> None:
    r"""No job has two attempts alive at once: each attempt ends (``end`` line, or its death time
    from ``died``) before the next one of the same job starts."""
    by_job: Dict[str, List[Tuple[float, float]]] = {}
    ends = {(j, pid): t for (w, j, pid, t) in times if w == "end"}
    for w, j, pid, t in times:
        if w != "start":
            continue
        end = ends.get((j, pid), died.get(pid))
        assert end is not None, f"attempt pid {pid} of job {j} never ended and was not killed"
        by_job.setdefault(j, []).append((t, end))
    for j, iv in by_job.items():
        iv.sort()
        for (_s0, e0), (s1, _) in zip(iv, iv[1:]):
            assert s1 >= e0, f"job {j}: an attempt started at {s1} while another ran until {e0}"


def _run(cmd: List[str], env: Dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _local_baseline(tmp: Path, name: str, grid: Dict) -> Dict:
    src = _src(tmp / "local", name, grid)
    root = tmp / "local" / "runs"
    r = _run(_manager(src, name, root, "--processes", "2"), _env(tmp / "local" / "c"))
    assert r.returncode == 1, r.stderr  # the --code 3 jobs fail
    return _results(root, name)


def _loopback_only(text: str) -> None:
    addrs = re.findall(r"(?:tcp|tls)://([0-9A-Za-z_.\-\[\]:]+?):\d+", text)
    assert addrs, "no address in the log (the check proves nothing)"
    assert set(addrs) == {"127.0.0.1"}, f"non-loopback address used: {set(addrs)}"


def _listening_addresses(pids: List[int]) -> List[str]:
    r"""Local addresses of the listening TCP sockets of ``pids`` and their descendants (Linux)."""
    import psutil

    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += [p] + p.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    inodes = set()
    for p in procs:
        try:
            for fd in os.listdir(f"/proc/{p.pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{p.pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                w = line.split()
                if w[3] == "0A" and w[9] in inodes:  # LISTEN
                    hexip = w[1].split(":")[0]
                    if len(hexip) == 8:
                        out.append(".".join(str(int(hexip[i:i + 2], 16)) for i in (6, 4, 2, 0)))
                    else:
                        out.append("::1" if hexip == "0" * 24 + "01000000" else "ipv6:" + hexip)
    return out


def _listeners_on_loopback(pids: List[int]) -> None:
    addrs = _listening_addresses(pids)
    assert len(addrs) >= 3, f"too few listeners found ({addrs}): the check proves nothing"
    assert set(addrs) == {"127.0.0.1"}, f"a listener is not on 127.0.0.1: {addrs}"


class _CliCluster:
    r"""`dask scheduler` + N `dask worker` processes on 127.0.0.1 (killed at exit)."""

    def __init__(self, tmp: Path, env: Dict[str, str], n_workers: int = 2, tls: Optional[Dict[str, str]] = None,
                 worker_cwd: Optional[Path] = None) -> None:
        self.sfile = tmp / "scheduler.json"
        self.procs: List[subprocess.Popen] = []
        self.logs = tmp / "cluster-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        sec: List[str] = []
        if tls:
            sec = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
        proto = ["--protocol", "tls"] if tls else []
        self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                     "127.0.0.1:0", "--scheduler-file", str(self.sfile), *proto, *sec], env, "scheduler")
        assert wait_for(lambda: self.sfile.exists() and self.sfile.stat().st_size > 0, 60), self.log_text()
        for i in range(n_workers):
            self._start([DASK, "worker", "--scheduler-file", str(self.sfile), "--host", "127.0.0.1",
                         "--nthreads", "1", "--no-dashboard", "--name", f"w{i}", "--memory-limit", "0",
                         # the worker's HTTP server starts even with --no-dashboard, on 0.0.0.0
                         # unless its address is given
                         "--dashboard-address", "127.0.0.1:0", *sec],
                        env, f"worker{i}", cwd=worker_cwd)
        self.address = json.loads(self.sfile.read_text())["address"]

    def _start(self, cmd: List[str], env: Dict[str, str], name: str, cwd: Optional[Path] = None) -> None:
        f = open(self.logs / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                                           stdin=subprocess.DEVNULL, start_new_session=True))
        f.close()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def wait_workers(self, n: int, timeout: float = 60) -> None:
        pat = re.compile(r"Registered to:")
        assert wait_for(lambda: sum(bool(pat.search(p.read_text(errors="replace")))
                                    for p in self.logs.glob("worker*.log")) >= n, timeout), self.log_text()

    def close(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


def _openssl_credentials(d: Path) -> Dict[str, str]:
    r"""A self-signed certificate (CN/SAN dask-internal, like ``Security.temporary()``) via openssl."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", "/CN=dask-internal", "-addext",
                        "subjectAltName=DNS:dask-internal"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {"ca": str(cert), "cert": str(cert), "key": str(key)}


def _tls_credentials(d: Path) -> Dict[str, str]:
    r"""Temporary credentials as PEM files: ``Security.temporary()`` when ``cryptography`` is
    installed (written out so that CLI processes can read them), else ``openssl``."""
    try:
        from distributed.security import Security

        sec = Security.temporary()
    except ImportError:
        return _openssl_credentials(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cert.pem").write_text(sec.tls_client_cert)
    (d / "key.pem").write_text(sec.tls_client_key)
    return {"ca": str(d / "cert.pem"), "cert": str(d / "cert.pem"), "key": str(d / "key.pem")}


def _raw_tls(host: str, port: int, ca: str, cert: Optional[str] = None, key: Optional[str] = None) -> str:
    r"""Open TLS to ``host:port`` trusting ``ca`` (showing the client certificate ``cert`` if
    given) and wait 3 s for the server: ``"refused"`` when it ends the connection (TLS alert or
    EOF), ``"accepted"`` when it keeps it open waiting for the client to talk."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection((host, port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                s.settimeout(3)
                return "refused" if s.recv(16) == b"" else "accepted"
        except (ssl.SSLError, ConnectionError):
            return "refused"
        except socket.timeout:
            return "accepted"


def _tls_env(env: Dict[str, str], creds: Dict[str, str]) -> Dict[str, str]:
    env = dict(env)
    env.update({"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": creds["ca"],
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": creds["cert"],
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": creds["key"],
                "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": creds["cert"],
                "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": creds["key"],
                "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": creds["cert"],
                "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": creds["key"],
                "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"})
    return env


# ----------------------------------------------------------------------------------------------
# quick tests (no cluster)


def _claimed(tmp: Path, name: str = "q") -> Tuple[JobQueue, Dict, Dict]:
    from ovis.experiments.grid import load_and_expand
    from ovis.experiments.manager import make_snapshot

    src = _src(tmp, name, {"args": ["--name a"], "parameters": {"sleep": [0.05]}})
    root = (tmp / "runs").resolve()
    exp, jobs, _ = load_and_expand(src / "experiments" / f"{name}.json")
    exp_dir = root / name
    (exp_dir / ".logs").mkdir(parents=True)
    snap = make_snapshot(src, exp_dir, src / "experiments" / f"{name}.json", exp.script, False, False)
    q = JobQueue(exp_dir)
    q.add_jobs(jobs)
    rec = q.claim("dask", "dask", os.getpid())
    payload = {"job_id": rec["job_id"], "token": rec["claim_token"], "exp": name, "exp_dir": str(exp_dir),
               "root": str(root), "data_root": str(tmp / "data"), "snapshot": str(snap), "heartbeat": 0.2,
               "poll": 0.05, "term_timeout": 1.0, "gpu": False, "threads": 1, "manager": None,
               "stop_file": str(exp_dir / ".dask" / "stop-test")}
    return q, rec, payload


def test_task_checks_its_claim_first_and_runs_each_claim_once(tmp_path: Path, monkeypatch) -> None:
    from ovis.experiments.dask_backend import ADOPTED, execute_job_task

    cdir = tmp_path / "c"
    cdir.mkdir()
    monkeypatch.setenv("FAKE_COUNT_DIR", str(cdir))
    q, rec, payload = _claimed(tmp_path)
    # a stale token (the job was requeued / claimed again since): nothing runs
    bad = dict(payload, token="0" * 32)
    r = execute_job_task(bad)
    assert r["ran"] is False and "no longer ours" in r["reason"] and _times(cdir) == []
    assert q.get(rec["job_id"])["status"] == "running" and not q.get(rec["job_id"]).get(ADOPTED)
    # the real execution: adopts the claim, runs the job once, records success
    r = execute_job_task(payload)
    assert r["ran"] is True and r["status"] == "success", r
    d = q.get(rec["job_id"])
    assert d["status"] == "success" and d["worker_pid"] == os.getpid() and d[ADOPTED] == rec["claim_token"]
    assert [t[0] for t in _times(cdir)] == ["start", "end"]
    # a Dask re-run of the same task (same token): refuses, the job is not run again
    r = execute_job_task(payload)
    assert r["ran"] is False and _times(cdir)[2:] == []
    # requeued and claimed again: a re-run of the *old* task still refuses; the new claim runs once
    assert q.requeue(10000) == [rec["job_id"]]
    rec2 = q.claim("dask", "dask", os.getpid())
    assert execute_job_task(payload)["ran"] is False
    # a claim adopted by an execution that died (re-run after a worker death) is not run either
    q.update_jobs([rec2["job_id"]], {ADOPTED: rec2["claim_token"], "worker_pid": 999999})
    r = execute_job_task(dict(payload, token=rec2["claim_token"]))
    assert r["ran"] is False and "already started" in r["reason"] and len(_times(cdir)) == 2


_UNPICKLE_WITHOUT_OVIS = r"""
import importlib.abc, pickle, sys
class NoOvis(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ovis" or name.startswith("ovis."):
            raise ImportError("no ovis on this worker: " + name)
        return None
blocker = NoOvis()
sys.meta_path.insert(0, blocker)
task = pickle.loads(open(sys.argv[1], "rb").read())  # what a Dask worker does with the task
assert not any(m == "ovis" or m.startswith("ovis.") for m in sys.modules), "unpickling imported ovis"
sys.meta_path.remove(blocker)
print(task()["from"])
"""


def test_task_function_travels_by_value_and_imports_from_the_snapshot(tmp_path: Path) -> None:
    r"""The submitted task unpickles where ``ovis`` cannot be imported (its code travels by value,
    through ``cloudpickle.register_pickle_by_value``) and then runs the snapshot's task code."""
    from dask._task_spec import Task
    from distributed.protocol.pickle import dumps

    from ovis.experiments.dask_backend import task_function

    snap = tmp_path / "exp" / ".lib_snapshot"
    (snap / "ovis" / "experiments").mkdir(parents=True)
    (snap / "ovis" / "__init__.py").write_text("")
    (snap / "ovis" / "experiments" / "__init__.py").write_text("")
    (snap / "ovis" / "experiments" / "dask_backend.py").write_text(
        "def execute_job_task(payload):\n    return dict(payload, **{'from': __file__})\n")
    blob = tmp_path / "task.pkl"
    blob.write_bytes(dumps(Task("ovis-job-x", task_function(), str(snap), {"job_id": "x"})))
    r = subprocess.run([PY, "-c", _UNPICKLE_WITHOUT_OVIS, str(blob)], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(snap / "ovis" / "experiments" / "dask_backend.py")


def test_capacity_resources_and_local_specs() -> None:
    from ovis.experiments.dask_backend import local_worker_specs, per_gpu_processes, task_capacity

    workers = {"a": {"nthreads": 2, "resources": {"GPU": 1}}, "b": {"nthreads": 2, "resources": {"GPU": 1}},
               "c": {"nthreads": 4, "resources": {}}}
    assert task_capacity(workers, None) == 8
    assert task_capacity(workers, 0.5) == 4  # 2 per GPU worker, CPU-only workers take no GPU task
    assert task_capacity(workers, 1.0) == 2
    assert task_capacity({"a": {"nthreads": 3, "resources": {"GPU": 1}}}, 1 / 3) == 3  # float shares
    assert per_gpu_processes(["0", "0", "1", "1"]) == 2 and per_gpu_processes(["cpu"] * 3) == 3
    specs = local_worker_specs(["0", "0", "3", "3"])
    assert sorted(specs) == ["gpu-0", "gpu-3"]
    o = specs["gpu-3"]["options"]
    assert o["env"]["CUDA_VISIBLE_DEVICES"] == "3" and o["resources"] == {"GPU": 1} and o["nthreads"] == 2
    assert o["host"] == "127.0.0.1" and o["dashboard_address"] is None
    cpu = local_worker_specs(["cpu"] * 2, cpu_count=8)
    assert len(cpu) == 2 and all(s["options"]["nthreads"] == 1 for s in cpu.values())
    assert all(s["options"]["env"]["OMP_NUM_THREADS"] == "4" for s in cpu.values())
    assert all(s["options"]["host"] == "127.0.0.1" for s in cpu.values())


class _FakeFuture:
    def __init__(self, status: str = "pending", result=None, exc: Optional[BaseException] = None) -> None:
        self.status, self._result, self._exc, self.cancelled = status, result, exc, False

    def result(self, timeout=None):
        return self._result

    def exception(self, timeout=None):
        return self._exc

    def cancel(self) -> None:
        self.cancelled = True


class _FakeClient:
    def __init__(self, workers: Dict[str, Dict]) -> None:
        self.workers, self.submitted = workers, []

    def scheduler_info(self, n_workers: int = -1) -> Dict:
        return {"workers": self.workers}

    def submit(self, fn, *args, **kw) -> _FakeFuture:
        self.submitted.append((args, kw))
        return _FakeFuture()


def test_manager_side_lost_detection_and_requeue_with_a_fake_cluster(tmp_path: Path, monkeypatch, caplog) -> None:
    from distributed.scheduler import KilledWorker

    from ovis.experiments.dask_backend import ADOPTED

    b, q, _ = _direct_backend(tmp_path, "f", {"args": ["--name a", "--name b", "--name c"]}, monkeypatch)
    b.client = _FakeClient({"tcp://127.0.0.1:1": {"nthreads": 2, "resources": {}},
                            "tcp://10.0.0.9:1": {"nthreads": 1, "resources": {}}})
    b._slots = ["cpu"]
    b._refresh_capacity(force=True)
    b._tick()
    assert len(b.inflight) == 3 and q.counts()["running"] == 3 and len(b.client.submitted) == 3
    assert all(kw["pure"] is False and "resources" not in kw for _, kw in b.client.submitted)
    ja, jb, jc = list(b.inflight)
    # (a) adopted on this host by a process that died, task erred with KilledWorker -> lost, requeued, resubmitted
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    q.update_jobs([ja], {ADOPTED: b.inflight[ja].token, "worker_pid": dead.pid, "worker_start": None,
                         "worker": "dask:tcp://127.0.0.1:1"})
    b.inflight[ja].future = _FakeFuture("error", exc=KilledWorker("k", "w", 3))
    # (b) adopted by a remote worker that Dask still knows; its re-run refused -> keep waiting (heartbeat)
    q.update_jobs([jb], {ADOPTED: b.inflight[jb].token, "host": "elsewhere", "worker": "dask:tcp://10.0.0.9:1"})
    b.inflight[jb].future = _FakeFuture("finished", {"ran": False, "reason": "already started"})
    # (c) the task ended before adopting the claim (cancelled) -> lost, requeued
    b.inflight[jc].future = _FakeFuture("cancelled")
    b._tick()
    assert q.get(jb)["status"] == "running" and jb in b.inflight
    for j in (ja, jc):
        d = q.get(j)
        assert d["status"] == "running" and d["attempts"] == 2, d  # lost -> requeued -> claimed again
    assert "KilledWorker" in caplog.text
    assert len(b.client.submitted) == 5
    # (b') the remote worker left the cluster: lost now, requeued only after a quarantine (its
    # executor, if merely partitioned, must first see its claim gone and kill the job)
    del b.client.workers["tcp://10.0.0.9:1"]
    b.client.workers["tcp://127.0.0.1:2"] = {"nthreads": 1, "resources": {}}  # a new worker joins
    b._refresh_capacity(force=True)
    b._tick()
    assert q.get(jb)["status"] == "lost" and "died" in q.get(jb)["error"] and jb in b.lost_wait
    assert b.running() and q.get(jb)["status"] == "lost"
    time.sleep(b.cfg.heartbeat + 2.1)
    b._tick()
    assert q.get(jb)["status"] == "running" and q.get(jb)["attempts"] == 2
    # max_attempts: a job lost that many times stays lost
    b.max_attempts = 2
    b.inflight[jb].future = _FakeFuture("error", exc=KilledWorker("k", "w", 3))
    b._tick()
    assert q.get(jb)["status"] == "lost" and jb not in b.lost_wait


def test_make_backend_dask_is_lazy_and_validates_the_address(tmp_path: Path) -> None:
    from ovis.experiments.backend import BackendNotAvailable, make_backend
    from ovis.experiments.dask_backend import DaskBackend
    from ovis.experiments.workers import WorkerConfig

    cfg = WorkerConfig("e", tmp_path / "e", tmp_path, tmp_path / "data", tmp_path / "e" / ".lib_snapshot")
    b = make_backend("dask", cfg, None)
    assert isinstance(b, DaskBackend) and b.client is None and not (tmp_path / "e").exists()  # nothing started
    assert isinstance(make_backend("dask", cfg, "tcp://127.0.0.1:1"), DaskBackend)
    with pytest.raises(BackendNotAvailable, match="tcp://HOST:PORT"):
        make_backend("dask", cfg, "http://127.0.0.1:1")
    with pytest.raises(BackendNotAvailable, match="scheduler file"):
        make_backend("dask", cfg, str(tmp_path / "missing.json"))


# ----------------------------------------------------------------------------------------------
# real clusters


@pytest.mark.slow
def test_local_cluster_grid_equals_local_backend(tmp_path: Path) -> None:
    base = _local_baseline(tmp_path, "g", GRID6)
    assert len(base) == 6 and sum(s == "success" for s, _ in base.values()) == 4
    src = _src(tmp_path / "dask", "g", GRID6)
    root = tmp_path / "dask" / "runs"
    cdir = tmp_path / "dask" / "c"
    r = _run(_manager(src, "g", root, "--processes", "2", "--backend", "dask"), _env(cdir))
    assert r.returncode == 1, r.stderr
    assert _results(root, "g") == base
    _loopback_only(r.stderr)
    assert "local cluster tls://" not in r.stderr and "local cluster tcp://127.0.0.1:" in r.stderr
    for d in JobQueue(root / "g").all_jobs():
        assert d["attempts"] == 1 and d["worker"].startswith("dask:tcp://127.0.0.1:") and d["device"] == "cpu"
        assert d["worker_pid"] != r.args and d["pid"]
    t = _times(cdir)
    assert len([x for x in t if x[0] == "start"]) == 6
    _no_overlap(t, {})


@pytest.mark.slow
def test_cli_scheduler_and_workers_grid_equals_local_backend(tmp_path: Path) -> None:
    base = _local_baseline(tmp_path, "g", GRID6)
    src = _src(tmp_path / "dask", "g", GRID6)
    root = tmp_path / "dask" / "runs"
    cdir = tmp_path / "dask" / "c"
    # the workers have no `ovis` on their path (cwd elsewhere, no PYTHONPATH): the task code
    # reaches them by value and runs from the experiment's snapshot
    wenv = _env(cdir, with_repo=False)
    (tmp_path / "wcwd").mkdir()
    cl = _CliCluster(tmp_path / "cl", wenv, n_workers=2, worker_cwd=tmp_path / "wcwd")
    try:
        cl.wait_workers(2)
        _listeners_on_loopback([p.pid for p in cl.procs])
        r = _run(_manager(src, "g", root, "--processes", "2", "--backend", "dask", "--address", cl.address),
                 _env(cdir))
        assert r.returncode == 1, r.stderr + cl.log_text()
        assert _results(root, "g") == base
        assert cl.address.startswith("tcp://127.0.0.1:")
        _loopback_only(r.stderr + cl.log_text())
        jobs = JobQueue(root / "g").all_jobs()
        assert {d["worker"] for d in jobs} <= {f"dask:{a}" for a in re.findall(r"tcp://127\.0\.0\.1:\d+", cl.log_text())}
        assert len({d["worker_pid"] for d in jobs}) == 2  # both workers got jobs
        # the scheduler file works as --address too
        r2 = _run(_manager(src, "g", root, "--backend", "dask", "--address", str(cl.sfile), "--resume",
                           "--requeue_level", "2"), _env(cdir))
        assert r2.returncode == 1, r2.stderr
        assert all(d["attempts"] == (2 if "3" in d["argv"] else 1) for d in JobQueue(root / "g").all_jobs())
    finally:
        cl.close()
    _no_overlap(_times(cdir), {})


@pytest.mark.slow
def test_sigkill_dask_worker_mid_job_lost_requeued_then_succeeds(tmp_path: Path) -> None:
    grid = {"args": ["--name a", "--name b"], "parameters": {"sleep": [4]}}
    src = _src(tmp_path, "k", grid)
    root = tmp_path / "runs"
    cdir = tmp_path / "c"
    env = _env(cdir)
    cl = _CliCluster(tmp_path / "cl", env, n_workers=2)
    try:
        cl.wait_workers(2)
        m = subprocess.Popen(_manager(src, "k", root, "--processes", "2", "--backend", "dask", "--address",
                                      cl.address), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        assert wait_for(lambda: len(_times(cdir)) >= 2, 60), cl.log_text()
        _, job, job_pid, _ = _times(cdir)[0]
        with open(f"/proc/{job_pid}/stat") as f:
            worker_pid = int(f.read().rsplit(")", 1)[1].split()[1])  # the job's parent: the Dask worker
        d = JobQueue(root / "k").get(job)
        assert d["worker_pid"] == worker_pid and d["pid"] == job_pid and d["status"] == "running"
        os.kill(worker_pid, signal.SIGKILL)
        t_kill = time.time()
        # the job's process dies with its worker, within seconds
        assert wait_for(lambda: not pid_alive(job_pid), 5), "the job survived its Dask worker"
        died = {job_pid: time.time()}
        _, err = m.communicate(timeout=120)
        assert m.returncode == 0, err + cl.log_text()
    finally:
        cl.close()
    assert re.search(rf"lost.*{job}|{job} lost", err), err  # the job became lost ...
    assert f"job {job} requeued" in err  # ... was requeued ...
    q = JobQueue(root / "k")
    d = q.get(job)
    assert d["status"] == "success" and d["attempts"] == 2  # ... and succeeded
    other = [x for x in q.all_jobs() if x["job_id"] != job][0]
    assert other["status"] == "success"
    t = _times(cdir)
    starts = [x for x in t if x[0] == "start"]
    assert len([x for x in starts if x[1] == job]) == 2 and len(starts) == 3
    assert min(x[3] for x in starts if x[1] == job and x[2] != job_pid) > t_kill
    _no_overlap(t, died)


@pytest.mark.slow
def test_tls_local_cluster_runs_a_grid_and_refuses_clients_without_credentials(tmp_path: Path, monkeypatch) -> None:
    import logging

    from distributed import Client

    from ovis.experiments.dask_backend import security_from_files

    creds = _tls_credentials(tmp_path / "tls")
    sec = security_from_files(creds["ca"], creds["cert"], creds["key"])
    grid = {"args": ["--name x", "--name yy"], "parameters": {"mult": [3], "sleep": [0.2]}}
    b, q, cdir = _direct_backend(tmp_path, "t", grid, monkeypatch, security=sec)
    exp_dir = b.cfg.exp_dir
    try:
        b.start(["cpu", "cpu"])
        addr = b.scheduler_address
        assert addr.startswith("tls://127.0.0.1:"), addr
        info = b.client.scheduler_info()
        assert len(info["workers"]) == 2 and all(w.startswith("tls://127.0.0.1:") for w in info["workers"])
        _listeners_on_loopback([os.getpid()])  # scheduler, nannies, workers, HTTP servers
        end = time.monotonic() + 90
        while b.running() and time.monotonic() < end:
            time.sleep(0.1)
        assert q.counts()["success"] == 2, q.all_jobs()
        assert {json.loads((exp_dir / d["job_id"] / "out.json").read_text())["value"] for d in q.all_jobs()} == {3, 6}
        # clients without the cluster's credentials are refused, within a few seconds
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        t0 = time.monotonic()
        with pytest.raises((OSError, TimeoutError)):  # plain TCP to the TLS port
            Client(addr.replace("tls://", "tcp://"), timeout=3)
        other = _openssl_credentials(tmp_path / "other")  # valid TLS, not signed by the cluster's CA
        with pytest.raises((OSError, TimeoutError)):
            Client(addr, security=security_from_files(other["ca"], other["cert"], other["key"]), timeout=3)
        assert time.monotonic() - t0 < 20
        host, port = addr[len("tls://"):].rsplit(":", 1)
        assert _raw_tls(host, int(port), creds["ca"]) == "refused"  # TLS without a client certificate
        assert _raw_tls(host, int(port), creds["ca"], creds["cert"], creds["key"]) == "accepted"  # control
        # with the credentials the same address works
        with Client(addr, security=sec, timeout=10) as c:
            assert c.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
    finally:
        b.stop(5)
    assert b.client is None


@pytest.mark.slow
def test_tls_cli_cluster_through_manager_and_tls_needs_credentials(tmp_path: Path) -> None:
    creds = _tls_credentials(tmp_path / "tls")
    grid = {"args": ["--name x", "--name yy"], "parameters": {"mult": [3], "sleep": [0.2]}}
    src = _src(tmp_path, "s", grid)
    root = tmp_path / "runs"
    cdir = tmp_path / "c"
    env = _env(cdir)
    cl = _CliCluster(tmp_path / "cl", env, n_workers=1, tls=creds)
    try:
        assert cl.address.startswith("tls://127.0.0.1:"), cl.address
        cl.wait_workers(1)
        _listeners_on_loopback([p.pid for p in cl.procs])
        # without credentials the manager refuses to start (clear message, nothing queued)
        r = _run(_manager(src, "s", root, "--backend", "dask", "--address", cl.address), env)
        assert r.returncode == 2 and "TLS needs credentials" in r.stderr and not (root / "s").exists(), r.stderr
        r = _run(_manager(src, "s", root, "--backend", "dask", "--address", cl.address), _tls_env(env, creds))
        assert r.returncode == 0, r.stderr + cl.log_text()
    finally:
        cl.close()
    q = JobQueue(root / "s")
    assert q.counts()["success"] == 2
    assert all(d["worker"].startswith("dask:tls://127.0.0.1:") for d in q.all_jobs())
    _loopback_only(r.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_sigterm_or_ctrl_c_manager_aborts_dask_jobs_cleanly(tmp_path: Path, how: str) -> None:
    src = _src(tmp_path, "a", {"args": ["--name a", "--name b"], "parameters": {"sleep": [60]}})
    root = tmp_path / "runs"
    cdir = tmp_path / "c"
    m = subprocess.Popen(_manager(src, "a", root, "--processes", "2", "--backend", "dask"), env=_env(cdir),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: len(_times(cdir)) == 2, 60)
        job_pids = [x[2] for x in _times(cdir)]
        t0 = time.monotonic()
        if how == "sigterm":
            m.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C: SIGINT to the whole foreground process group (workers included)
            os.killpg(m.pid, signal.SIGINT)
        _, err = m.communicate(timeout=60)
    finally:
        if m.poll() is None:
            os.killpg(m.pid, signal.SIGKILL)
    assert m.returncode == 130, err
    assert time.monotonic() - t0 < 30
    assert not any(pid_alive(p) for p in job_pids)
    q = JobQueue(root / "a")
    assert q.counts()["aborted"] == 2 and q.counts()["running"] == 0, q.all_jobs()
    # recorded by the tasks themselves (job sent SIGTERM), not by the manager's fallback
    assert all("aborted by the manager (SIGTERM" in d["error"] for d in q.all_jobs()), q.all_jobs()


def _direct_backend(tmp: Path, name: str, grid: Dict, monkeypatch, **kw):
    r"""A queue with the grid and a DaskBackend driven from this process (no manager)."""
    from ovis.experiments.dask_backend import DaskBackend
    from ovis.experiments.grid import load_and_expand
    from ovis.experiments.manager import make_snapshot
    from ovis.experiments.workers import WorkerConfig

    src = _src(tmp, name, grid)
    cdir = tmp / "c"
    cdir.mkdir()
    monkeypatch.setenv("FAKE_COUNT_DIR", str(cdir))
    root = (tmp / "runs").resolve()
    exp, jobs, _ = load_and_expand(src / "experiments" / f"{name}.json")
    exp_dir = root / name
    (exp_dir / ".logs").mkdir(parents=True)
    snap = make_snapshot(src, exp_dir, src / "experiments" / f"{name}.json", exp.script, False, False)
    q = JobQueue(exp_dir)
    q.add_jobs(jobs)
    cfg = WorkerConfig(name, exp_dir, root, tmp / "data", snap, heartbeat=0.5, poll=0.05, term_timeout=2)
    return DaskBackend(cfg, None, grace=20, **kw), q, cdir


@pytest.mark.slow
def test_local_cluster_gpu_slots_pin_devices_and_share_gpus(tmp_path: Path, monkeypatch) -> None:
    # GPU plumbing without a GPU: slots for GPUs 0 and 1 with --processes 2 -> one worker per GPU
    # (CUDA_VISIBLE_DEVICES pinned, GPU=1 advertised, 2 threads), each task asking GPU=0.5
    grid = {"args": ["--name a", "--name b", "--name c", "--name d", "--name e", "--name f"],
            "parameters": {"sleep": [0.8]}}
    b, q, cdir = _direct_backend(tmp_path, "gpu", grid, monkeypatch)
    try:
        b.start(["0", "0", "1", "1"])
        info = b.client.scheduler_info()["workers"]
        assert sorted((w["name"], w["resources"].get("GPU"), w["nthreads"]) for w in info.values()) == \
            [("gpu-0", 1, 2), ("gpu-1", 1, 2)]
        assert b._gpu_share == 0.5 and b._capacity == 4
        end = time.monotonic() + 90
        while b.running() and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        b.stop(5)
    jobs = q.all_jobs()
    assert q.counts()["success"] == 6, jobs
    t = _times(cdir)
    dev_of = {(x[1], x[2]): line.split()[4] for x, line in
              zip(t, (cdir / "times.log").read_text().splitlines())}
    for d in jobs:  # the job saw the device the queue records, its worker's GPU
        assert d["device"] in ("0", "1") and d["worker"].startswith("dask:tcp://127.0.0.1:")
        assert dev_of[(d["job_id"], d["pid"])] == d["device"]
    assert {d["device"] for d in jobs} == {"0", "1"}
    # at most P = 2 jobs at once per GPU
    for dev in ("0", "1"):
        iv = [(s, e) for (w, j, pid, s) in t if w == "start" and dev_of[(j, pid)] == dev
              for (w2, j2, pid2, e) in t if w2 == "end" and pid2 == pid]
        for s, _ in iv:
            assert sum(1 for s2, e2 in iv if s2 <= s < e2) <= 2, f"more than 2 jobs at once on GPU {dev}"
    _no_overlap(t, {})


@pytest.mark.slow
def test_sigkill_manager_local_cluster_leaves_no_orphans_and_resume_finishes(tmp_path: Path) -> None:
    src = _src(tmp_path, "o", {"args": ["--name a", "--name b", "--name c"], "parameters": {"sleep": [30]}})
    root = tmp_path / "runs"
    cdir = tmp_path / "c"
    env = _env(cdir)
    m = subprocess.Popen(_manager(src, "o", root, "--processes", "2", "--backend", "dask"), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: len(_times(cdir)) == 2, 60)
        job_pids = [x[2] for x in _times(cdir)]
        q = JobQueue(root / "o")
        worker_pids = {d["worker_pid"] for d in q.all_jobs() if d["status"] == "running"}
        assert len(worker_pids) == 2 and m.pid not in worker_pids
        os.kill(m.pid, signal.SIGKILL)
        m.wait()
        # the LocalCluster's workers die with the manager, and the jobs with their workers
        assert wait_for(lambda: not any(pid_alive(p) for p in worker_pids | set(job_pids)), 20), \
            "orphaned Dask workers or jobs"
    finally:
        try:
            os.killpg(m.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    died = {p: time.time() for p in job_pids}
    (cdir / "fast").touch()  # the rerun's jobs sleep 0.3 s
    r = _run(_manager(src, "o", root, "--processes", "2", "--backend", "dask", "--resume"), env)
    assert r.returncode == 0, r.stderr
    c = JobQueue(root / "o").counts()
    assert c["success"] == 3 and sum(c.values()) == 3
    assert sorted(d["attempts"] for d in JobQueue(root / "o").all_jobs()) == [1, 2, 2]  # the killed two reran
    _no_overlap(_times(cdir), died)
