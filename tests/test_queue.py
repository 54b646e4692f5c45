"""The job queue: crash-safe writes (SIGKILL 200 times mid-write), atomic claims, lost/requeue rules."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import pytest

from ovis.experiments.queue import HOST, JobQueue, QueueError, pid_alive, process_start_time, statuses_for_level
from ovis.experiments.workers import WorkerConfig, build_command


@dataclass(frozen=True)
class J:
    job_id: str
    script: str = "run.py"
    argv: Tuple[str, ...] = ("--estimator", "ovis-gamma1", "--iw", "5")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    ctx = mp.get_context("fork")
    p = ctx.Process(target=os._exit, args=(0,))
    p.start()
    p.join()
    return p.pid


# ------------------------------------------------------------------------------------------------
# crash safety


def _writer(exp_dir: str, wfd: int, tag: str) -> None:
    """Child: add jobs and claim/finish them in a loop, reporting each committed change."""
    q = JobQueue(exp_dir, lock_timeout=10)
    i = 0
    while True:
        jid = f"{tag}-{i}"
        q.add_jobs([J(jid, argv=tuple(f"--a{k} {k}" for k in range(20)))])
        os.write(wfd, f"A {jid}\n".encode())
        if i % 3 == 0:
            rec = q.claim("w", "cpu")
            if rec is not None and q.finish(rec["job_id"], rec["claim_token"], "success", 0):
                os.write(wfd, f"F {rec['job_id']}\n".encode())
        i += 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_of_writer_200_times_leaves_a_parseable_complete_database(tmp_path: Path) -> None:
    exp_dir = tmp_path / "exp"
    q = JobQueue(exp_dir, lock_timeout=5)
    # a database big enough for a write to take a while (kills land mid-write)
    q.add_jobs([J(f"pre-{i}", argv=tuple(f"--p{k} {k}" for k in range(30))) for i in range(100)])
    added, finished = set(), set()
    rng = random.Random(0)
    tmp_seen = 0
    for r in range(200):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(rfd)
            try:
                _writer(str(exp_dir), wfd, f"r{r}")
            finally:
                os._exit(0)
        os.close(wfd)
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        data = b""
        while True:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            data += chunk
        os.close(rfd)
        for line in data.decode().splitlines():
            kind, jid = line.split()
            (added if kind == "A" else finished).add(jid)
        tmp_seen += (exp_dir / "queue.json.tmp").exists()
        # the database parses and holds every committed change; the dead holder's lock is free
        raw = json.loads((exp_dir / "queue.json").read_text())
        ids = {d["job_id"]: d for d in raw["jobs"].values()}
        assert added <= set(ids), f"round {r}: committed jobs missing: {sorted(added - set(ids))[:5]}"
        for jid in finished:
            assert ids[jid]["status"] == "success", f"round {r}: finished job {jid} is {ids[jid]['status']}"
    assert len(added) > 50, "the writer committed too little for the test to mean anything"
    assert tmp_seen > 0, "no kill landed during a write (the test did not exercise mid-write kills)"
    t0 = time.monotonic()
    assert JobQueue(exp_dir, lock_timeout=2).counts()["queued"] > 0
    assert time.monotonic() - t0 < 2


def test_lock_of_a_killed_holder_does_not_block(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "e", lock_timeout=3)
    q.add_jobs([J("a")])
    pid = os.fork()
    if pid == 0:
        q2 = JobQueue(tmp_path / "e")
        q2._lock.acquire()
        time.sleep(60)
        os._exit(0)
    time.sleep(0.3)
    with pytest.raises(QueueError, match="lock not acquired"):
        JobQueue(tmp_path / "e", lock_timeout=0.2).counts()  # held by a live process: blocks
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert JobQueue(tmp_path / "e", lock_timeout=2).counts()["queued"] == 1


def test_corrupt_database_is_reported_not_overwritten(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "e")
    q.add_jobs([J("a")])
    q.path.write_text('{"jobs": {"1": ')
    with pytest.raises(QueueError, match="does not parse"):
        q.counts()
    assert q.path.read_text() == '{"jobs": {"1": '


# ------------------------------------------------------------------------------------------------
# claims


def _claimer(exp_dir: str, out) -> None:
    q = JobQueue(exp_dir)
    got = []
    while True:
        rec = q.claim(f"w{os.getpid()}", "cpu")
        if rec is None:
            break
        got.append(rec["job_id"])
        time.sleep(0.01)  # "run" the job: lets the others in
        q.finish(rec["job_id"], rec["claim_token"], "success", 0)
    out.put(got)


def test_concurrent_claims_hand_out_each_job_once(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "e")
    ids = [f"j{i}" for i in range(60)]
    assert q.add_jobs([J(i) for i in ids]) == ids
    assert q.add_jobs([J(i) for i in ids]) == []  # the same job queued twice is one job
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(tmp_path / "e"), out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    flat = [j for r in results for j in r]
    assert sorted(flat) == sorted(ids), "a job was claimed twice or never"
    assert sum(1 for r in results if r) >= 2, "only one process ever claimed"
    assert q.counts()["success"] == 60


def test_claim_records_owner_and_token_guards_updates(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "e")
    q.add_jobs([J("a"), J("b")])
    rec = q.claim("w0", "1", job_id="b")
    assert rec["job_id"] == "b" and rec["status"] == "running" and rec["attempts"] == 1
    assert rec["host"] == HOST and rec["worker_pid"] == os.getpid() and rec["device"] == "1"
    assert rec["worker_start"] == process_start_time(os.getpid()) and len(rec["claim_token"]) == 32
    assert q.claim("w1", job_id="b") is None  # not queued any more
    assert not q.heartbeat("b", "wrong-token")
    assert not q.finish("b", "wrong-token", "success", 0)
    assert q.verify_claim("b", rec["claim_token"])
    assert q.set_pid("b", rec["claim_token"], 12345)
    assert q.finish("b", rec["claim_token"], "failed", 3, "boom")
    assert not q.heartbeat("b", rec["claim_token"])  # finished: the claim is over
    d = q.get("b")
    assert (d["status"], d["exit_code"], d["error"], d["pid"]) == ("failed", 3, "boom", 12345)
    with pytest.raises(ValueError, match="finish status"):
        q.finish("a", "t", "running")


def test_max_jobs_budget_of_a_manager(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "e")
    q.add_jobs([J(f"j{i}") for i in range(5)])
    m = q.register_manager(max_jobs=2)
    assert q.claim("w", manager=m) is not None
    assert q.claim("w", manager=m) is not None
    assert q.claim("w", manager=m) is None
    assert q.claim("w") is not None  # another manager's budget is its own


# ------------------------------------------------------------------------------------------------
# lost and requeue


def test_mark_lost_dead_worker_and_stale_heartbeat(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "e")
    q.add_jobs([J("dead"), J("stale"), J("alive")])
    q.claim("w", worker_pid=_dead_pid(), job_id="dead")  # claimed, process never started
    q.claim("w", job_id="stale")
    q.claim("w", job_id="alive")
    assert q.mark_lost(grace=60) == ["dead"]
    time.sleep(1.0)
    tok = q.get("alive")["claim_token"]
    assert q.heartbeat("alive", tok)
    assert sorted(q.mark_lost(grace=0.6)) == ["stale"]
    d = q.get("dead")
    assert d["status"] == "lost" and "dead" in d["error"]
    assert q.get("alive")["status"] == "running"


def test_mark_lost_kills_a_leftover_job_process_group(tmp_path: Path) -> None:
    import subprocess
    import sys

    q = JobQueue(tmp_path / "e")
    q.add_jobs([J("a")])
    rec = q.claim("w", worker_pid=_dead_pid(), job_id="a")
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    assert q.set_pid("a", rec["claim_token"], p.pid)
    assert q.mark_lost(grace=60) == ["a"]
    assert p.wait(10) == -signal.SIGKILL


def _set_status(q: JobQueue, jid: str, status: str, worker_pid: int) -> None:
    rec = q.claim("w", worker_pid=worker_pid, job_id=jid)
    if status != "running":
        assert q.finish(jid, rec["claim_token"], status, 0)


def test_requeue_levels(tmp_path: Path) -> None:
    statuses = ["queued", "success", "failed", "aborted", "lost", "running", "running_dead"]
    assert statuses_for_level(0) == ()
    assert set(statuses_for_level(1)) == {"aborted", "lost"}
    assert set(statuses_for_level(2)) == {"aborted", "lost", "failed"}
    assert statuses_for_level(50) == statuses_for_level(2)
    with pytest.raises(ValueError):
        statuses_for_level(-1)
    expected = {0: set(), 1: {"aborted", "lost"}, 2: {"aborted", "lost", "failed"},
                100: {"aborted", "lost", "failed", "running_dead"},
                10000: {"aborted", "lost", "failed", "running_dead", "success"}}
    dead = _dead_pid()
    for level, exp in expected.items():
        q = JobQueue(tmp_path / f"l{level}")
        q.add_jobs([J(s) for s in statuses])
        for s in statuses[1:]:
            _set_status(q, s, "running" if s.startswith("running") else s,
                        dead if s == "running_dead" else os.getpid())
        assert set(q.requeue(level, grace=60)) == exp, level
        for s in statuses:
            want = "queued" if s in exp or s == "queued" else ("running" if s.startswith("running") else s)
            assert q.get(s)["status"] == want, (level, s)
        if level == 10000:
            assert q.get("success")["fresh"] and not q.get("failed")["fresh"]
    # --force: a live running job is requeued too
    q = JobQueue(tmp_path / "force")
    q.add_jobs([J("r")])
    _set_status(q, "r", "running", os.getpid())
    assert q.requeue(100, grace=60) == []
    assert q.requeue(100, force=True, grace=60) == ["r"]


def test_requeued_success_reruns_from_scratch(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "e")
    q.add_jobs([J("a")])
    rec = q.claim("w", job_id="a")
    q.finish("a", rec["claim_token"], "success", 0)
    cfg = WorkerConfig("e", tmp_path / "e", tmp_path, tmp_path, tmp_path / "snap")
    assert "--rf" not in build_command(q.get("a"), cfg)
    assert q.requeue(10000) == ["a"]
    rec = q.claim("w", job_id="a")
    cmd = build_command(rec, cfg)
    assert cmd[-1] == "--rf" and cmd[1] == str(tmp_path / "snap" / "run.py")
    assert cmd[cmd.index("--root") + 1] == str(tmp_path)
    q.finish("a", rec["claim_token"], "success", 0)
    assert q.get("a")["fresh"] is False and q.get("a")["attempts"] == 2


def test_live_managers(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "e")
    m = q.register_manager()
    assert [x["manager"] for x in q.live_managers(grace=10)] == [m]
    assert q.live_managers(grace=10, exclude=m) == []
    time.sleep(0.3)
    assert q.live_managers(grace=0.1) == []  # stale heartbeat
    q.manager_heartbeat(m)
    assert len(q.live_managers(grace=2.0)) == 1
    q.unregister_manager(m)
    assert q.live_managers(grace=10) == []
    assert pid_alive(os.getpid()) and not pid_alive(_dead_pid())
    assert not pid_alive(os.getpid(), start_time=(process_start_time(os.getpid()) or 0) + 1)


def _proc_stat_starttime(pid: int) -> int:
    """Field 22 (``starttime``, clock ticks since boot) of ``/proc/PID/stat``: what queues written
    before ``psutil`` store as ``worker_start`` / ``pid_start``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[19])


def test_start_time_is_procs_starttime_and_pid_alive_spots_zombies_and_reuse() -> None:
    """Linux: psutil gives the same start times as ``/proc`` did, so existing queues stay valid."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        st = process_start_time(child.pid)
        assert st == _proc_stat_starttime(child.pid)  # the unit stays the one stored in existing queues
        assert process_start_time(os.getpid()) == _proc_stat_starttime(os.getpid())
        assert pid_alive(child.pid) and pid_alive(child.pid, st)
        assert not pid_alive(child.pid, st - 1) and not pid_alive(child.pid, st + 1)  # a recycled pid
        child.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert not pid_alive(child.pid) and not pid_alive(child.pid, st)  # a zombie is dead
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid) and process_start_time(child.pid) is None
    assert process_start_time(0) is None and process_start_time(-3) is None
    assert not pid_alive(0) and not pid_alive(None) and not pid_alive(-3)
