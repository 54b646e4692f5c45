r"""The fake job script of the experiment-system tests: a stand-in for ``run.py``, in one place.

The script follows the job contract (``experiments.md``) without training anything: it takes
``--exp --root --data_root`` (absolute paths) and ``--rf``, reads ``OVIS_JOB_ID``, writes
``<root>/<exp>/<job_id>/status.json`` (``running``, then ``success`` or ``failed``), prints
``fake job NAME starting``, sleeps ``--sleep`` seconds and exits with ``--code`` (after printing
``boom error in job NAME: something broke`` on stderr when the code is not 0).  Its own
arguments: ``--sleep --code --name --flag --mult``.  What it records goes to
``$FAKE_COUNT_DIR``, per variant:

* ``overlap_check`` (the local-backend tests): every start is appended to ``starts.log``
  (``JOB_ID PID NAME CUDA_VISIBLE_DEVICES``) and a line to ``violations.log`` when another live
  process of the same job exists when it starts;
* ``timeline`` (the Dask tests): ``start``/``end`` lines with timestamps are appended to
  ``times.log`` (``start|end JOB_ID PID TIME CUDA_VISIBLE_DEVICES``); when the file ``fast``
  exists in ``$FAKE_COUNT_DIR`` it sleeps at most 0.3 s (a test's switch for reruns);
* ``output`` (the Dask tests): ``out.json`` = ``{"name", "value": len(name) * mult, "code"}`` in
  its run directory, so that the runs of different backends can be compared.
"""
from __future__ import annotations

_HEAD = r'''
import argparse, json, os, sys, time
p = argparse.ArgumentParser()
p.add_argument("--sleep", type=float, default=0.2)
p.add_argument("--code", type=int, default=0)
p.add_argument("--name", default="x")
p.add_argument("--flag", action="store_true")
p.add_argument("--mult", type=int, default=1)
p.add_argument("--exp", required=True)
p.add_argument("--root", required=True)
p.add_argument("--data_root", required=True)
p.add_argument("--rf", action="store_true")
a = p.parse_args()
assert os.path.isabs(a.root) and os.path.isabs(a.data_root), "paths must be absolute"
jid = os.environ["OVIS_JOB_ID"]
cdir = os.environ["FAKE_COUNT_DIR"]
'''

_OVERLAP_START = r'''
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
'''

_TIMELINE_START = r'''
def log(what):
    with open(os.path.join(cdir, "times.log"), "a") as f:
        f.write("%s %s %d %.6f %s\n" % (what, jid, os.getpid(), time.time(), os.environ.get("CUDA_VISIBLE_DEVICES")))
        f.flush()
        os.fsync(f.fileno())
log("start")
if os.path.exists(os.path.join(cdir, "fast")):  # a test's switch: reruns need not wait
    a.sleep = min(a.sleep, 0.3)
'''

_RUN = r'''
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
'''

_OUTPUT = r'''
with open(os.path.join(run, "out.json"), "w") as f:
    json.dump({"name": a.name, "value": len(a.name) * a.mult, "code": a.code}, f)
'''

_END = r'''
if a.code:
    print("boom error in job %s: something broke" % a.name, file=sys.stderr, flush=True)
    status("failed", "boom")
else:
    status("success")
'''

_OVERLAP_END = r'''
os.remove(os.path.join(live, "%s.%d" % (jid, os.getpid())))
'''

_TIMELINE_END = r'''
log("end")
'''


def fake_job_script(*, overlap_check: bool = True, timeline: bool = False, output: bool = False) -> str:
    r"""The source of the fake job with the chosen records (see the module docstring)."""
    parts = [_HEAD]
    if overlap_check:
        parts.append(_OVERLAP_START)
    if timeline:
        parts.append(_TIMELINE_START)
    parts.append(_RUN)
    if output:
        parts.append(_OUTPUT)
    parts.append(_END)
    if overlap_check:
        parts.append(_OVERLAP_END)
    if timeline:
        parts.append(_TIMELINE_END)
    parts.append("sys.exit(a.code)\n")
    return "".join(parts)


#: the local-backend tests' job (``tests/test_experiments_helpers.py``: starts and overlaps)
LOCAL_JOB = fake_job_script()
#: the Dask tests' job (``tests/test_dask_backend.py``: timeline and output file)
DASK_JOB = fake_job_script(overlap_check=False, timeline=True, output=True)
