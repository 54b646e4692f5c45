"""manager.py / workers / dbutils.py with real processes and a fake job script (no run.py needed).

Fault injection: SIGKILL of a worker mid-job, SIGKILL of the manager, SIGTERM of the manager,
two managers on one experiment.  The fake job counts its starts and records a violation if a
second process of the same job is alive when it starts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_experiments_helpers import (
    PY,
    REPO,
    env_with_counts,
    kill9,
    make_src,
    manager_cmd,
    starts,
    violations,
    wait_for,
)

from ovis.experiments.grid import load_and_expand
from ovis.experiments.manager import make_snapshot
from ovis.experiments.queue import JobQueue, pid_alive


def _run(cmd, env, timeout=60):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _dbutils(root: Path, name: str, *extra: str, env=None):
    return _run([PY, str(REPO / "dbutils.py"), "--exp", name, "--root", str(root), *extra], env)


def test_grid_with_a_failing_job_and_check_output(tmp_path: Path) -> None:
    src = make_src(tmp_path, "g", {"args": ["--name ok", "--name bad --code 3"],
                                   "parameters": {"sleep": [0.2], "flag": [True, False]}})
    env = env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"
    r = _run(manager_cmd(src, "g", root, "--processes", "2"), env)
    assert r.returncode == 1, r.stderr  # not every job succeeded
    s = starts(tmp_path / "c")
    assert len(s) == 4 and not violations(tmp_path / "c")
    assert "job " in r.stderr and "runs on" in r.stderr  # the log says which job runs where
    q = JobQueue(root / "g")
    c = q.counts()
    assert (c["success"], c["failed"]) == (2, 2)
    for d in q.all_jobs():
        assert d["run_dir"] == str(root / "g" / d["job_id"])  # found through the job id
        assert d["host"] and d["pid"] and d["device"] == "cpu" and d["attempts"] == 1
    chk = _dbutils(root, "g", "--check", "--error_messages")
    assert chk.returncode == 0, chk.stderr
    rows = dict(line.split() for line in chk.stdout.splitlines()[1:8] if len(line.split()) == 2)
    assert rows["failed"] == "2" and rows["success"] == "2" and rows["total"] == "4"
    assert chk.stdout.count("boom error in job bad: something broke") == 2
    assert "exit code 3" in chk.stdout
    plain = _dbutils(root, "g", "--check")
    assert "boom error" not in plain.stdout
    # requeue failed (level 2) and rerun with --resume: the jobs run again
    r2 = _dbutils(root, "g", "--requeue", "--requeue_level", "2")
    assert r2.stdout.count("-> requeued") == 2
    assert JobQueue(root / "g").counts()["queued"] == 2


@pytest.mark.slow
def test_sigkill_worker_mid_job_lost_requeued_rerun(tmp_path: Path) -> None:
    src = make_src(tmp_path, "k", {"args": ["--name slow"], "parameters": {"sleep": [1.0]}})
    env = env_with_counts(tmp_path / "c")
    root = (tmp_path / "runs").resolve()
    exp, jobs, _ = load_and_expand(src / "experiments" / "k.json")
    exp_dir = root / "k"
    (exp_dir / ".logs").mkdir(parents=True)
    snap = make_snapshot(src, exp_dir, src / "experiments" / "k.json", exp.script, False, False)
    q = JobQueue(exp_dir)
    q.add_jobs(jobs)
    wcmd = [PY, "-m", "ovis.experiments.worker_cli", "--exp", "k", "--exp_dir", str(exp_dir), "--root", str(root),
            "--data_root", str(tmp_path / "data"), "--snapshot", str(snap), "--heartbeat", "0.2"]
    w = subprocess.Popen(wcmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: len(starts(tmp_path / "c")) == 1, 20)
    job_pid = int(starts(tmp_path / "c")[0][1])
    kill9(w)
    # the job's process dies with its worker (it must never run unsupervised)
    assert wait_for(lambda: not pid_alive(job_pid), 5), "job process survived its worker"
    assert q.get(jobs[0].job_id)["status"] == "running"  # nobody has noticed yet
    assert q.mark_lost(grace=60) == [jobs[0].job_id]
    d = q.get(jobs[0].job_id)
    assert d["status"] == "lost" and "dead" in d["error"]
    r = _dbutils(root, "k", "--requeue", "--requeue_level", "1")
    assert r.returncode == 0 and "requeued" in r.stdout
    assert q.get(jobs[0].job_id)["status"] == "queued"
    r = _run(wcmd, env)
    assert r.returncode == 0, r.stdout + r.stderr
    d = q.get(jobs[0].job_id)
    assert d["status"] == "success" and d["attempts"] == 2
    assert len(starts(tmp_path / "c")) == 2 and not violations(tmp_path / "c")


@pytest.mark.slow
def test_sigkill_manager_then_resume_finishes_the_grid(tmp_path: Path) -> None:
    src = make_src(tmp_path, "m", {"args": ["--name a", "--name b", "--name c"], "parameters": {"sleep": [0.6, 0.7]}})
    env = env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"
    m = subprocess.Popen(manager_cmd(src, "m", root, "--processes", "2"), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: len(starts(tmp_path / "c")) >= 2, 30)
    kill9(m)
    q = JobQueue(root / "m")
    worker_pids = {d["worker_pid"] for d in q.all_jobs() if d["worker_pid"]}
    assert worker_pids
    # a second manager without --resume refuses to touch the directory
    r = _run(manager_cmd(src, "m", root), env)
    assert r.returncode == 2 and "--resume" in r.stderr
    # --resume at once: the orphaned workers (SIGTERM on parent death) abort their jobs, the new
    # manager waits for them, requeues the aborted jobs (level 1) and finishes the grid
    r = _run(manager_cmd(src, "m", root, "--resume", "--processes", "2"), env)
    assert r.returncode == 0, r.stderr
    assert not any(pid_alive(p) for p in worker_pids), "orphaned workers still alive"
    c = q.counts()
    assert c["success"] == 6 and sum(c.values()) == 6
    assert max(d["attempts"] for d in q.all_jobs()) == 2  # the interrupted jobs ran again
    assert not violations(tmp_path / "c")
    ids = {s[0] for s in starts(tmp_path / "c")}
    assert len(ids) == 6
    assert q.live_managers(grace=60) == []  # the manager record is removed on exit


@pytest.mark.slow
def test_two_managers_never_run_a_job_twice(tmp_path: Path) -> None:
    src = make_src(tmp_path, "t", {"args": [f"--name n{i}" for i in range(6)], "parameters": {"sleep": [0.6, 0.8]}})
    env = env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"
    a = subprocess.Popen(manager_cmd(src, "t", root, "--processes", "2"), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(starts(tmp_path / "c")) >= 1, 30)  # A has queued the grid and runs
    b = subprocess.run(manager_cmd(src, "t", root, "--processes", "2", "--resume"), env=env,
                       capture_output=True, text=True, timeout=60)
    _, err_a = a.communicate(timeout=60)
    assert a.returncode in (0, 1), err_a
    assert b.returncode in (0, 1), b.stderr
    q = JobQueue(root / "t")
    assert q.counts()["success"] == 12
    s = starts(tmp_path / "c")
    assert sorted(x[0] for x in s) == sorted({x[0] for x in s}), "a job ran twice"
    assert len(s) == 12 and not violations(tmp_path / "c")
    managers = {d["manager"] for d in q.all_jobs()}
    assert len(managers) == 2, "the second manager never got a job (the test proves nothing)"


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_sigterm_or_ctrl_c_aborts_running_jobs_cleanly(tmp_path: Path, how: str) -> None:
    src = make_src(tmp_path, "s", {"args": ["--name a", "--name b"], "parameters": {"sleep": [30]}})
    env = env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"
    m = subprocess.Popen(manager_cmd(src, "s", root, "--processes", "2"), env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(starts(tmp_path / "c")) == 2, 30)
    job_pids = [int(s[1]) for s in starts(tmp_path / "c")]
    t0 = time.monotonic()
    if how == "sigterm":
        m.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C: SIGINT to the whole foreground process group
        os.killpg(m.pid, signal.SIGINT)
    _, err = m.communicate(timeout=30)
    assert m.returncode == 130, err
    assert time.monotonic() - t0 < 15
    assert not any(pid_alive(p) for p in job_pids)
    q = JobQueue(root / "s")
    assert q.counts()["aborted"] == 2 and q.counts()["running"] == 0
    assert all("abort" in d["error"] for d in q.all_jobs())


def test_rf_refused_while_another_manager_is_alive_and_max_jobs(tmp_path: Path) -> None:
    src = make_src(tmp_path, "r", {"args": ["--name a"], "parameters": {"sleep": [0.1, 0.15, 0.2]}})
    env = env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"
    r = _run(manager_cmd(src, "r", root, "--max_jobs", "2"), env)
    assert r.returncode == 1, r.stderr  # one job left queued
    q = JobQueue(root / "r")
    assert q.counts()["success"] == 2 and q.counts()["queued"] == 1
    fake = q.register_manager()  # a live manager (this test process) holds the experiment
    r = _run(manager_cmd(src, "r", root, "--rf"), env)
    assert r.returncode == 2 and "--rf refused" in r.stderr
    assert q.counts()["success"] == 2  # untouched
    q.unregister_manager(fake)
    r = _run(manager_cmd(src, "r", root, "--rf"), env)
    assert r.returncode == 0, r.stderr
    assert JobQueue(root / "r").counts()["success"] == 3
    assert len(starts(tmp_path / "c")) == 5


def test_snapshot_isolates_running_grid_and_update_flags(tmp_path: Path) -> None:
    src = make_src(tmp_path, "u", {"args": ["--name a"], "parameters": {"sleep": [0.1]}})
    env = env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"
    assert _run(manager_cmd(src, "u", root), env).returncode == 0
    snap = root / "u" / ".lib_snapshot"
    assert (snap / "fake_job.py").exists() and (snap / "experiments" / "u.json").exists()
    # edit the grid: without --update_exp the frozen copy is used, nothing new is queued
    g = json.loads((src / "experiments" / "u.json").read_text())
    g["parameters"]["sleep"] = [0.1, 0.12]
    (src / "experiments" / "u.json").write_text(json.dumps(g))
    (src / "fake_job.py").write_text((src / "fake_job.py").read_text().replace("fake job", "NEWLIB job"))
    assert _run(manager_cmd(src, "u", root, "--resume"), env).returncode == 0
    assert sum(JobQueue(root / "u").counts().values()) == 1
    assert _run(manager_cmd(src, "u", root, "--resume", "--update_exp"), env).returncode == 0
    assert JobQueue(root / "u").counts()["success"] == 2
    logs = "".join(p.read_text() for p in (root / "u" / ".logs").glob("*.*.log"))
    assert "NEWLIB" not in logs  # the library was not refreshed
    assert "NEWLIB" in (src / "fake_job.py").read_text()
    assert _run(manager_cmd(src, "u", root, "--resume", "--update_lib", "--requeue_level", "10000"), env).returncode == 0
    logs = "".join(p.read_text() for p in (root / "u" / ".logs").glob("*.*.log"))
    assert "NEWLIB" in logs


def test_invalid_file_nothing_queued_and_backend_usage_error(tmp_path: Path) -> None:
    env = env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"
    src = make_src(tmp_path, "bad", {"args": ["--name a"], "parameters": {"sleep": [0.1]}, "oops": 1})
    r = _run(manager_cmd(src, "bad", root), env)
    assert r.returncode == 2
    assert str(src / "experiments" / "bad.json") in r.stderr and "'oops'" in r.stderr and "unknown key" in r.stderr
    assert not (root / "bad").exists()
    (src / "experiments" / "bad.json").write_text('{"args": ["--iw 3"], ')
    r = _run(manager_cmd(src, "bad", root), env)
    assert r.returncode == 2 and "bad JSON" in r.stderr and not (root / "bad").exists()
    # a run.py job that run.py's parser rejects
    (src / "experiments" / "bad.json").write_text(json.dumps(
        {"description": "", "args": ["--estimator ovis-gamma1"], "global": "", "parameters": {"iw": [5, -3]}}))
    r = _run(manager_cmd(src, "bad", root), env)
    assert r.returncode == 2 and "'parameters.iw'" in r.stderr and not (root / "bad").exists()
    src2 = make_src(tmp_path, "d", {"args": ["--name a"]})
    r = _run(manager_cmd(src2, "d", root, "--address", "tcp://127.0.0.1:1"), env)
    assert r.returncode == 2 and "--address is only meaningful with --backend dask" in r.stderr
    assert not (root / "d").exists()


def test_dbutils_find_update_delete(tmp_path: Path) -> None:
    src = make_src(tmp_path, "f", {"args": ["--name a", "--name b"], "parameters": {"sleep": [0.1]}})
    env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"
    q = JobQueue(root / "f")
    exp, jobs, _ = load_and_expand(src / "experiments" / "f.json")
    q.add_jobs(jobs)
    r = _dbutils(root, "f", "--find", "--name b")
    assert "1 job(s) match" in r.stdout and "--name b" in r.stdout
    r = _dbutils(root, "f", "--find", "status=queued")
    assert "2 job(s) match" in r.stdout
    r = _dbutils(root, "f", "--find", "__import__('os').system('touch PWNED')")
    assert "0 job(s) match" in r.stdout and not Path("PWNED").exists()
    r = _dbutils(root, "f", "--find", "--name a", "--update", "sleep:0.1:0.3")
    assert "updated 1 job(s)" in r.stdout, r.stdout + r.stderr
    argvs = sorted(" ".join(d["argv"]) for d in q.all_jobs())
    assert argvs == ["--name a --sleep 0.3", "--name b --sleep 0.1"]
    from ovis.experiments.grid import job_id_of

    assert all(d["job_id"] == job_id_of(d["script"], d["argv"]) for d in q.all_jobs())
    r = _dbutils(root, "f", "--delete", "--name b")
    assert "delete" in r.stdout and "deleted 1 job(s)" in r.stdout
    assert [d["argv"][1] for d in q.all_jobs()] == ["a"]
    r = _dbutils(root, "f", "--show_all")
    assert "--name a --sleep 0.3" in r.stdout
    assert _dbutils(root, "nope", "--check").returncode == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_end_to_end_with_run_py_on_a_tiny_gmm_grid(tmp_path: Path) -> None:
    """The real job script: manager.py drives run.py on the GMM, outcome from status.json."""
    grid = {"description": "tiny gmm", "args": ["--estimator reinforce", "--estimator ovis-gamma1"],
            "global": "--silent --deterministic --nsteps 30",
            "parameters": {"dataset": ["gmm"], "iw": [5], "bs": [50], "valid_bs": [100], "test_bs": [100],
                           "iw_test": [10], "iw_valid": [10], "max_eval": [100], "eval_freq": [100]}}
    exp_file = tmp_path / "tinygmm.json"
    exp_file.write_text(json.dumps(grid))
    root = tmp_path / "runs"
    env = env_with_counts(tmp_path / "c")
    cmd = manager_cmd(REPO, str(exp_file), root, "--processes", "2")
    cmd[cmd.index("--data_root") + 1] = str(REPO.parent / "shared" / "data")
    r = _run(cmd, env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    q = JobQueue(root / "tinygmm")
    jobs = q.all_jobs()
    assert [d["status"] for d in jobs] == ["success", "success"]
    for d in jobs:
        run_dir = Path(d["run_dir"])
        assert run_dir.parent == root / "tinygmm"
        st = json.loads((run_dir / "status.json").read_text())
        assert st["status"] == "success" and st["job_id"] == d["job_id"]
        assert (run_dir / "metrics.jsonl").exists()
    assert (root / "tinygmm" / ".lib_snapshot" / "ovis" / "experiments" / "queue.py").exists()
    # requeue everything: the finished runs start over (run.py gets --rf)
    r = _dbutils(root, "tinygmm", "--requeue", "--requeue_level", "10000", env=env)
    assert r.stdout.count("-> requeued") == 2
    r = _run(cmd + ["--resume"], env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = q.all_jobs()
    assert all(d["status"] == "success" and d["attempts"] == 2 and not d["fresh"] for d in jobs)
    logs = [p.read_text() for p in (root / "tinygmm" / ".logs").glob("*.2.log")]
    assert len(logs) == 2 and all(" --rf" in text.splitlines()[0] for text in logs)


def _fake_nvidia_smi(tmp_path: Path, lines: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text("#!/bin/sh\ncat <<'EOF'\n" + lines + "EOF\n")
    exe.chmod(0o755)
    return bin_dir


def test_gpu_discovery_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ovis.experiments.workers import discover_gpus

    # index, utilization %, memory used MiB, memory total MiB
    bin_dir = _fake_nvidia_smi(tmp_path, "0, 10, 1000, 80000\n1, 90, 1000, 80000\n2, 5, 70000, 80000\n3, 0, 0, 80000\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert discover_gpus() == ["0", "3"]  # 1 is too loaded, 2 too full
    assert discover_gpus(max_load=0.95, max_memory=0.95) == ["0", "1", "2", "3"]
    assert discover_gpus(max_gpus=1) == ["0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert discover_gpus() == ["3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert discover_gpus() == []


def test_manager_runs_p_workers_per_gpu_with_cuda_visible_devices(tmp_path: Path) -> None:
    src = make_src(tmp_path, "gpu", {"args": ["--name a", "--name b"], "parameters": {"sleep": [0.3, 0.4]}})
    env = env_with_counts(tmp_path / "c")
    bin_dir = _fake_nvidia_smi(tmp_path, "0, 0, 0, 80000\n1, 0, 0, 80000\n")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    r = _run(manager_cmd(src, "gpu", tmp_path / "runs", "--processes", "2", "--max_gpus", "2"), env)
    assert r.returncode == 0, r.stderr
    assert "devices: 0, 1; 4 worker(s)" in r.stderr
    s = starts(tmp_path / "c")
    assert len(s) == 4 and {x[3] for x in s} <= {"0", "1"}  # each job saw its one GPU
    q = JobQueue(tmp_path / "runs" / "gpu")
    assert all(d["device"] == x for d in q.all_jobs() for y, _, _, x in s if y == d["job_id"])


def test_outcome_from_exit_code_and_status_json(tmp_path: Path) -> None:
    from ovis.experiments.workers import judge

    log = tmp_path / "log"
    log.write_text("line1\nTraceback: the error\n")
    assert judge(tmp_path, "j", 0, False, log).status == "success"  # no status.json: the exit code decides
    (tmp_path / "run").mkdir()
    st = tmp_path / "run" / "status.json"
    st.write_text(json.dumps({"status": "failed", "job_id": "j", "error": "nan loss"}))
    o = judge(tmp_path, "j", 0, False, log)
    assert o.status == "failed" and "nan loss" in o.error and o.run_dir == str(tmp_path / "run")
    assert judge(tmp_path, "other", 0, False, log).run_dir is None  # found by job id only
    o = judge(tmp_path, "j", 2, False, log)
    assert o.status == "failed" and "exit code 2" in o.error and "the error" in o.error
    o = judge(tmp_path, "j", -9, False, log)
    assert o.status == "failed" and "SIGKILL" in o.error
    assert judge(tmp_path, "j", -15, True, log).status == "aborted"
    st.write_text(json.dumps({"status": "aborted", "job_id": "j"}))
    assert judge(tmp_path, "j", 1, False, log).status == "aborted"


# ----------------------------------------------------------------------------------------------
# the backend interface: a registry by name, no import cycle between the backends


def _experiments_import_graph(pkg_dir: Path) -> dict:
    r"""``{module: {imported ovis.experiments modules}}`` from every ``import`` statement of the
    package (module level *and* inside functions: a lazy import is still a dependency)."""
    import ast

    pkg = "ovis.experiments"
    names = {p.stem for p in pkg_dir.glob("*.py")}
    graph = {}
    for path in sorted(pkg_dir.glob("*.py")):
        me = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith(pkg + ".")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == pkg:  # `from ovis.experiments import x`: a submodule or the package
                    deps |= {f"{pkg}.{a.name}" if a.name in names else pkg for a in node.names}
                elif node.module.startswith(pkg + "."):
                    deps.add(node.module)
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import; the graph check expects absolute ones")
        graph[me] = deps - {me}
    return graph


def _cycle(graph: dict):
    r"""One import cycle of ``graph`` as a list of modules, or ``None``."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_lazy_import_cycle() -> None:
    # the shape of the old workers.py <-> dask_backend.py dependency (one side imported lazily)
    assert _cycle({"w": {"d"}, "d": {"w", "q"}, "q": set()}) == ["d", "w", "d"]
    assert _cycle({"w": {"q"}, "d": {"w", "q"}, "q": set()}) is None


def test_experiments_package_has_no_import_cycle() -> None:
    import ovis.experiments

    graph = _experiments_import_graph(Path(ovis.experiments.__file__).parent)
    assert {"ovis.experiments.backend", "ovis.experiments.local_backend", "ovis.experiments.dask_backend",
            "ovis.experiments.workers"} <= set(graph)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    # the interface imports no backend; each backend imports the interface
    assert not graph["ovis.experiments.backend"] & {"ovis.experiments.local_backend", "ovis.experiments.dask_backend"}
    for b in ("local_backend", "dask_backend"):
        assert "ovis.experiments.backend" in graph[f"ovis.experiments.{b}"], b
    assert graph["ovis.experiments.dask_bootstrap"] == set()  # shipped by value: nothing of ovis at import


@pytest.mark.parametrize("order", [
    ("ovis.experiments.backend",), ("ovis.experiments.workers",), ("ovis.experiments.local_backend",),
    ("ovis.experiments.dask_backend",), ("ovis.experiments.dask_bootstrap",), ("ovis.experiments.manager",),
    ("ovis.experiments.worker_cli",),
    ("ovis.experiments.dask_backend", "ovis.experiments.workers", "ovis.experiments.local_backend"),
    ("ovis.experiments.local_backend", "ovis.experiments.workers", "ovis.experiments.dask_backend"),
    ("ovis.experiments.workers", "ovis.experiments.dask_backend", "ovis.experiments.backend"),
])
def test_each_module_imports_alone_in_a_fresh_interpreter(order) -> None:
    code = ("import importlib, sys\n"
            f"for m in {list(order)!r}:\n"
            "    importlib.import_module(m)\n"
            "print('distributed' in sys.modules)\n")
    r = subprocess.run([PY, "-c", code], cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"  # `distributed` is imported only when a Dask backend starts


def test_backend_registry_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ovis.experiments import backend as B
    from ovis.experiments.dask_backend import DaskBackend
    from ovis.experiments.local_backend import LocalBackend
    from ovis.experiments.manager import build_manager_parser
    from ovis.experiments.workers import WorkerConfig

    monkeypatch.setattr(B, "_REGISTRY", dict(B._REGISTRY))
    assert B.backend_names() == ("local", "dask")
    assert B.backend_class("local") is LocalBackend and B.backend_class("dask") is DaskBackend
    cfg = WorkerConfig("e", tmp_path / "e", tmp_path, tmp_path / "data", tmp_path / "e" / ".lib_snapshot")
    b = B.make_backend("local", cfg, grace=7.0, requeue_lost=False)
    assert isinstance(b, LocalBackend) and b.grace == 7.0 and not b.requeue_lost and b.procs == []
    with pytest.raises(B.BackendNotAvailable, match=r"unknown backend 'ray' \(valid: local, dask\)"):
        B.make_backend("ray", cfg)
    with pytest.raises(B.BackendNotAvailable, match="only meaningful with --backend dask"):
        B.make_backend("local", cfg, "tcp://127.0.0.1:1")

    class Inline(B.Backend):
        def __init__(self, cfg, grace):
            self.cfg, self.grace = cfg, grace

        @classmethod
        def from_cli(cls, cfg, *, address, grace, requeue_lost):
            return cls(cfg, grace)

        def start(self, slots):
            pass

        def running(self):
            return False

        def stop(self, timeout):
            pass

    B.register_backend("inline", Inline)
    got = B.make_backend("inline", cfg, grace=3.0)
    assert isinstance(got, Inline) and got.grace == 3.0 and got.executor_pids() == []
    assert B.backend_names() == ("local", "dask", "inline")
    assert build_manager_parser().parse_args(["--exp", "x", "--backend", "inline"]).backend == "inline"
    B.register_backend("broken", "ovis.experiments.no_such_module:Nope")
    with pytest.raises(B.BackendNotAvailable, match="cannot import ovis.experiments.no_such_module"):
        B.make_backend("broken", cfg)
    with pytest.raises(TypeError, match="Backend subclass"):
        B.register_backend("bad", dict)
    with pytest.raises(ValueError, match="module:Class"):
        B.register_backend("bad", "ovis.experiments.local_backend.LocalBackend")
    with pytest.raises(ValueError, match="identifier"):
        B.register_backend("no way", Inline)
