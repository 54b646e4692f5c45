"""Helpers for the experiment-system tests: a fake job script, a fake source tree, runners.

The fake job (written into tmp_path) follows the job contract without run.py: it reads
``OVIS_JOB_ID``, writes ``<root>/<exp>/<job_id>/status.json``, sleeps ``--sleep`` seconds, exits
with ``--code``, logs every start to ``$FAKE_COUNT_DIR/starts.log`` and records a violation in
``$FAKE_COUNT_DIR/violations.log`` if another process of the same job is alive when it starts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

FAKE_JOB = r'''
import argparse, json, os, sys, time
p = argparse.ArgumentParser()
p.add_argument("--sleep", type=float, default=0.2)
p.add_argument("--code", type=int, default=0)
p.add_argument("--name", default="x")
p.add_argument("--flag", action="store_true")
p.add_argument("--exp", required=True)
p.add_argument("--root", required=True)
p.add_argument("--data_root", required=True)
p.add_argument("--rf", action="store_true")
a = p.parse_args()
assert os.path.isabs(a.root) and os.path.isabs(a.data_root), "paths must be absolute"
jid = os.environ["OVIS_JOB_ID"]
cdir = os.environ["FAKE_COUNT_DIR"]
live = os.path.join(cdir, "live")
os.makedirs(live, exist_ok=True)
for f in os.listdir(live):
    j, pid = f.rsplit(".", 1)
    if j == jid:
        try:
            os.kill(int(pid), 0)
            st = open("/proc/%s/stat" % pid).read().split(")")[-1].split()[0]
            if st not in ("Z", "X"):
                with open(os.path.join(cdir, "violations.log"), "a") as v:
                    v.write("%s %s alive while %d starts\n" % (jid, pid, os.getpid()))
        except (ProcessLookupError, FileNotFoundError):
            pass
open(os.path.join(live, "%s.%d" % (jid, os.getpid())), "w").close()
with open(os.path.join(cdir, "starts.log"), "a") as f:
    f.write("%s %d %s %s\n" % (jid, os.getpid(), a.name, os.environ.get("CUDA_VISIBLE_DEVICES")))
run = os.path.join(a.root, a.exp, jid)
os.makedirs(run, exist_ok=True)
def status(s, err=None):
    tmp = os.path.join(run, "status.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"status": s, "job_id": jid, "error": err}, f)
    os.replace(tmp, os.path.join(run, "status.json"))
status("running")
print("fake job", a.name, "starting", flush=True)
time.sleep(a.sleep)
if a.code:
    print("boom error in job %s: something broke" % a.name, file=sys.stderr, flush=True)
    status("failed", "boom")
else:
    status("success")
os.remove(os.path.join(live, "%s.%d" % (jid, os.getpid())))
sys.exit(a.code)
'''


def make_src(tmp: Path, name: str, grid: Dict, script: str = "fake_job.py") -> Path:
    r"""A fake source tree: the fake job script and ``experiments/<name>.json``."""
    src = tmp / "src"
    (src / "experiments").mkdir(parents=True, exist_ok=True)
    (src / script).write_text(FAKE_JOB)
    g = dict(grid)
    g.setdefault("description", "test grid")
    g.setdefault("global", "")
    g.setdefault("script", script)
    (src / "experiments" / f"{name}.json").write_text(json.dumps(g))
    return src


def env_with_counts(count_dir: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["FAKE_COUNT_DIR"] = str(count_dir)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    count_dir.mkdir(parents=True, exist_ok=True)
    return env


def manager_cmd(src: Path, name: str, root: Path, *extra: str) -> List[str]:
    return [PY, str(REPO / "manager.py"), "--exp", name, "--src", str(src), "--root", str(root),
            "--data_root", str(root.parent / "data"), "--heartbeat", "0.3", "--grace", "3", "--poll", "0.1",
            "--term_timeout", "2", "--no_progress", *extra]


def starts(count_dir: Path) -> List[List[str]]:
    f = count_dir / "starts.log"
    return [line.split() for line in f.read_text().splitlines()] if f.exists() else []


def violations(count_dir: Path) -> str:
    f = count_dir / "violations.log"
    return f.read_text() if f.exists() else ""


def wait_for(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
