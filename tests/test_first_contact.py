"""First contact and failure handling (issue 20): the user's own commands work, or say clearly why not.

One test (or more) per case of the issue: the README's commands in the installed environment, the
manager's checks before queueing (data sets, estimator / K), run.py's parse-time estimator
constraints, a SIGKILLed local worker (replaced, its job retried within the attempt cap),
truncated / empty checkpoints, dbutils ``--update`` / ``--delete``, report.py (a metric typo,
failure reasons, the grid table, single runs, styles, single points), a corrupt queue and a full
disk.  Processes are real where the case is about processes; every wait is bounded.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from html import unescape
from pathlib import Path

import pytest
import torch
from test_experiments_helpers import PY, REPO, env_with_counts, make_src, manager_cmd, starts, violations, wait_for

from ovis.experiments.queue import JobQueue

README = REPO / "README.md"


def _run(cmd, env, timeout=90):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str):
    return [ln for ln in stderr.strip().splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- README / packaging
def test_readme_says_how_to_run_the_scripts_in_the_installed_environment():
    text = README.read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]  # still exactly two set-up commands
    assert ".venv/bin/python manager.py" in section
    assert "source .venv/bin/activate" in section
    assert "ModuleNotFoundError" in section  # what a bare `python` gives, so that users recognise it


def test_pyproject_declares_ranges_while_requirements_keep_the_pins():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {ln.split("==")[0]: ln.split("==")[1] for ln in (REPO / "requirements.txt").read_text().splitlines()
            if "==" in ln and not ln.startswith("#")}
    from packaging.requirements import Requirement

    reqs = {Requirement(d).name: Requirement(d) for d in deps}
    assert set(pins) <= set(reqs)
    for name, version in pins.items():
        spec = reqs[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} is pinned in pyproject.toml: {spec}"
        assert spec.contains(version), f"{name}: the pinned {version} is outside the range {spec}"
    assert str(reqs["torch"].specifier)  # torch too has a declared range


# ----------------------------------------------------------------------------- estimator constraints
@pytest.mark.parametrize("argv, needle", [
    (["--estimator", "vimco-arithmetic", "--iw", "1"], "--iw 2 or more"),
    (["--estimator", "ovis-gamma1", "--iw", "1"], "--iw 2 or more"),
    (["--estimator", "ovis-S5", "--iw", "3"], "-exclusive"),
    (["--estimator", "reinforce", "--iw", "1", "--track_variance", "vimco-geometric"], "--iw 2 or more"),
])
def test_run_py_refuses_an_estimator_k_combination_at_parse_time(tmp_path, capsys, argv, needle):
    from ovis.training.run import main

    root = tmp_path / "runs"
    code = main(["--root", str(root), "--exp", "t", "--dataset", "gmm", "--mini", "--nsteps", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = _error_lines(err)
    assert len(lines) == 1, err  # one line, no usage dump, no traceback
    assert lines[0].startswith("run.py: error: argument --") and needle in lines[0]
    assert not root.exists()  # nothing written


@pytest.mark.parametrize("eid", ["reinforce", "vimco-arithmetic", "vimco-geometric", "ovis-gamma1",
                                 "ovis-S1", "ovis-S2", "ovis-S2-exclusive", "ovis-S0.5", "wake-wake",
                                 "tvo", "pathwise-iwae", "stl", "hybrid-mixture"])
def test_check_arguments_is_the_constructor_constraint(eid):
    r"""One source of truth: the class's ``check_arguments`` refuses exactly what it cannot be built with."""
    from ovis.estimators import build_estimator
    from ovis.estimators.config import parse_estimator_id

    cls, cfg = parse_estimator_id(eid)
    for K in (1, 2, 3, 5):
        try:
            build_estimator(eid, mc=1, iw=K)
            builds = True
        except ValueError:
            builds = False
        try:
            cls.check_arguments(mc=1, iw=K, **cfg)
            accepted = True
        except ValueError:
            accepted = False
        assert builds == accepted, (eid, K)


# ----------------------------------------------------------------------------- manager preflight
def test_manager_refuses_a_grid_whose_data_set_is_missing_nothing_queued(tmp_path):
    # the fake job script is named run.py: the grid is validated with run.py's own parser
    src = make_src(tmp_path, "sbn", {"args": ["--estimator reinforce", "--estimator vimco-arithmetic"],
                                     "global": "--dataset binmnist --model sbm --prior bernoulli --nsteps 1",
                                     "parameters": {"iw": [5, 10], "seed": [1, 2]}}, script="run.py")
    env = env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"  # manager_cmd's --data_root is tmp_path/data, which does not exist
    t0 = time.monotonic()
    r = _run(manager_cmd(src, "sbn", root, "--processes", "2", "--max_gpus", "2"), env)
    assert r.returncode == 2, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert "'binmnist'" in lines[0] and "--data_root" in lines[0] and str(tmp_path / "data") in lines[0]
    assert f"fetch it with: python -m ovis.datasets fetch binmnist --data_root {tmp_path / 'data'}" in lines[0]
    assert "8 job(s)" in lines[0] and "nothing queued" in lines[0]
    assert not root.exists() and not starts(tmp_path / "c")  # nothing queued, nothing started
    assert time.monotonic() - t0 < 60


def test_manager_refuses_an_estimator_k_combination_before_queueing(tmp_path):
    src = make_src(tmp_path, "vk", {"args": ["--estimator vimco-arithmetic", "--estimator reinforce"],
                                    "global": "--dataset gmm --mini --nsteps 1",
                                    "parameters": {"iw": [1, 5]}}, script="run.py")
    env = env_with_counts(tmp_path / "c")
    root = tmp_path / "runs"
    r = _run(manager_cmd(src, "vk", root), env)
    assert r.returncode == 2, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert "'parameters.iw'" in lines[0] and "vimco" in lines[0] and "--iw 2 or more" in lines[0]
    assert not root.exists() and not starts(tmp_path / "c")


def test_locate_dataset_finds_without_reading():
    from ovis.datasets import DatasetNotFoundError, locate_dataset

    assert locate_dataset("gmm", "/nonexistent") == {}
    with pytest.raises(DatasetNotFoundError, match="binmnist"):
        locate_dataset("binmnist", "/nonexistent")


# ----------------------------------------------------------------------------- SIGKILLed local worker
def _worker_pid(q: JobQueue) -> int:
    d = next(d for d in q.all_jobs() if d["status"] == "running")
    return int(d["worker_pid"])


@pytest.mark.timeout(120)
def test_sigkilled_local_worker_is_replaced_and_its_job_retried(tmp_path):
    src = make_src(tmp_path, "k", {"args": ["--name slow"], "parameters": {"sleep": [1.5]}})
    env = env_with_counts(tmp_path / "c")
    root = (tmp_path / "runs").resolve()
    m = subprocess.Popen(manager_cmd(src, "k", root), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert wait_for(lambda: len(starts(tmp_path / "c")) == 1, 40)
        q = JobQueue(root / "k")
        wpid = _worker_pid(q)
        os.kill(wpid, signal.SIGKILL)
        _, err = m.communicate(timeout=60)
    finally:
        if m.poll() is None:
            m.kill()
            m.wait()
    assert m.returncode == 0, err  # the job succeeded in the end
    d = q.all_jobs()[0]
    assert d["status"] == "success" and d["attempts"] == 2
    assert d["worker_pid"] != wpid  # run by the replacement worker
    assert len(starts(tmp_path / "c")) == 2 and not violations(tmp_path / "c")
    assert "replaced" in err and "requeued after being lost" in err


KILLER = r'''
import os, signal, sys, time
with open(os.path.join(os.environ["FAKE_COUNT_DIR"], "kills.log"), "a") as f:
    f.write("%d\n" % os.getpid())
os.kill(os.getppid(), signal.SIGKILL)   # the worker dies with its job every time
time.sleep(30)
'''


@pytest.mark.timeout(120)
def test_a_job_that_kills_its_worker_is_retried_up_to_the_attempt_cap(tmp_path):
    src = make_src(tmp_path, "kk", {"args": [""]}, script="killer.py")
    (src / "killer.py").write_text(KILLER)
    env = env_with_counts(tmp_path / "c")
    root = (tmp_path / "runs").resolve()
    t0 = time.monotonic()
    r = _run(manager_cmd(src, "kk", root), env, timeout=90)
    assert r.returncode == 1, r.stderr  # not every job succeeded
    d = JobQueue(root / "kk").all_jobs()[0]
    assert d["status"] == "lost" and d["attempts"] == 3
    assert len((tmp_path / "c" / "kills.log").read_text().split()) == 3
    assert "left lost" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 90


# ----------------------------------------------------------------------------- checkpoints
def test_save_keeps_the_previous_good_checkpoint_and_load_falls_back(tmp_path):
    from ovis.training.checkpoint import CheckpointError, load_resume_checkpoint, previous_path, save_checkpoint

    last = tmp_path / "last.pt"
    assert load_resume_checkpoint(last) == (None, None)  # a fresh run
    save_checkpoint(last, {"step": 1, "w": torch.ones(3)}, keep_previous=True)
    save_checkpoint(last, {"step": 2, "w": torch.zeros(3)}, keep_previous=True)
    prev = previous_path(last)
    assert prev == tmp_path / "last.prev.pt"
    assert torch.load(prev, weights_only=True)["step"] == 1 and torch.load(last, weights_only=True)["step"] == 2
    for damage in ("truncate", "empty", "missing"):
        save_checkpoint(last, {"step": 3}, keep_previous=True)  # prev: step 2, last: step 3
        if damage == "truncate":
            last.write_bytes(last.read_bytes()[:100])
        elif damage == "empty":
            last.write_bytes(b"")
        else:
            last.unlink()
        warnings = []
        ckpt, used = load_resume_checkpoint(last, warn=warnings.append)
        assert used == prev and ckpt["step"] == 2
        assert len(warnings) == 1 and str(last) in warnings[0] and str(prev) in warnings[0]
        assert "\n" not in warnings[0]
        save_checkpoint(last, {"step": 2}, keep_previous=True)  # a bad last.pt never replaces a good prev
        assert torch.load(prev, weights_only=True)["step"] == 2
    last.write_bytes(b"")
    prev.write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as e:
        load_resume_checkpoint(last)
    msg = str(e.value)
    assert "\n" not in msg and str(last) in msg and str(prev) in msg and "--rf" in msg


def test_run_py_missing_data_is_one_line_without_traceback(tmp_path, capsys):
    from ovis.training.run import main

    code = main(["--root", str(tmp_path / "runs"), "--exp", "t", "--dataset", "binmnist", "--model", "sbm",
                 "--prior", "bernoulli", "--data_root", str(tmp_path / "nodata"), "--nsteps", "1"])
    out = capsys.readouterr()
    assert code == 1
    err = _error_lines(out.err)
    assert len(err) == 1 and "binmnist" in err[0] and "--data_root" in err[0], out.err
    assert f"python -m ovis.datasets fetch binmnist --data_root {tmp_path / 'nodata'}" in err[0]
    assert "Traceback" not in out.out + out.err
    st = json.loads(next((tmp_path / "runs" / "t").glob("*/status.json")).read_text())
    assert st["status"] == "failed" and st["error"].startswith("DatasetNotFoundError")


def _lines(run_dir: Path):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


@pytest.mark.slow
def test_run_py_resumes_from_the_previous_checkpoint_or_says_why_not(tmp_path, capsys):
    from ovis.training.arguments import parse_run_args
    from ovis.training.run import main
    from ovis.training.rundir import compute_run_id

    argv = ["--root", str(tmp_path / "runs"), "--exp", "t", "--dataset", "gmm", "--mini", "--nsteps", "30",
            "--eval_freq", "1", "--iw", "3", "--estimator", "vimco-arithmetic", "--iw_test", "5", "--iw_valid", "5",
            "--checkpoint_steps", "10", "--silent", "--no_tensorboard"]
    d = tmp_path / "runs" / "t" / compute_run_id(parse_run_args(argv))
    assert main(argv) == 0
    reference = [(ln["split"], ln["metrics"]) for ln in _lines(d) if ln["step"] == 30]
    assert (d / "last.prev.pt").exists()
    capsys.readouterr()
    # a truncated last.pt: resume from last.prev.pt (step 20), one warning line naming the file
    (d / "last.pt").write_bytes((d / "last.pt").read_bytes()[:200])
    assert main(argv) == 0
    out = capsys.readouterr()
    warn = [ln for ln in out.out.splitlines() if "WARNING" in ln]
    assert len(warn) == 1 and str(d / "last.pt") in warn[0] and "last.prev.pt" in warn[0]
    assert f"resumed from {d / 'last.prev.pt'} at step 20" in out.out
    # the resumed run ends exactly where the uninterrupted one did
    assert [(ln["split"], ln["metrics"]) for ln in _lines(d) if ln["step"] == 30] == reference
    # neither is good: exit 1, one line naming the files and --rf, no traceback
    (d / "last.pt").write_bytes(b"")
    (d / "last.prev.pt").write_bytes(b"")
    assert main(argv) == 1
    out = capsys.readouterr()
    err = _error_lines(out.err)
    assert len(err) == 1 and str(d / "last.pt") in err[0] and "--rf" in err[0]
    assert "Traceback" not in out.out + out.err
    st = json.loads((d / "status.json").read_text())
    assert st["status"] == "failed" and "--rf" in st["error"]
    assert main([*argv, "--rf"]) == 0  # the fix works


# ----------------------------------------------------------------------------- dbutils
def test_dbutils_update_requeues_rewritten_jobs_and_delete_protects_success_and_running(tmp_path):
    from ovis.experiments.dbutils import dbutils_main
    from ovis.experiments.grid import load_and_expand

    src = make_src(tmp_path, "f", {"args": ["--name a", "--name b", "--name c", "--name d"],
                                   "parameters": {"sleep": [0.1]}})
    root = tmp_path / "runs"
    q = JobQueue(root / "f")
    _, jobs, _ = load_and_expand(src / "experiments" / "f.json")
    q.add_jobs(jobs)
    ids = {j.argv[1]: j.job_id for j in jobs}
    q.update_jobs([ids["a"]], {"status": "success", "attempts": 1, "exit_code": 0, "run_dir": "/x"})
    q.update_jobs([ids["c"]], {"status": "failed", "attempts": 1, "exit_code": 1, "error": "boom"})
    rec = q.claim("w0", "cpu", os.getpid())  # job b runs, its worker (this process) is alive
    assert rec["job_id"] == ids["b"]

    out = io.StringIO()
    assert dbutils_main(["--exp", "f", "--root", str(root), "--find", "--name a", "--update", "sleep:0.1:0.3"],
                        out=out) == 0
    new = next(d for d in q.all_jobs() if d["argv"][1] == "a")
    assert new["argv"][-1] == "0.3" and new["job_id"] != ids["a"]
    # a rewritten job is a new job: queued, no attempt, nothing of the old outcome
    assert (new["status"], new["attempts"], new["exit_code"], new["run_dir"]) == ("queued", 0, None, None)

    q.update_jobs([new["job_id"]], {"status": "success"})
    out = io.StringIO()
    assert dbutils_main(["--exp", "f", "--root", str(root), "--delete=--name"], out=out) == 0
    text = out.getvalue()
    left = {d["argv"][1]: d["status"] for d in q.all_jobs()}
    assert left == {"a": "success", "b": "running"}  # only the failed and the queued job went
    assert "skip success (use --force)" in text and "skip running (use --force)" in text
    assert "deleted 2 job(s)" in text
    out = io.StringIO()
    assert dbutils_main(["--exp", "f", "--root", str(root), "--delete", "--name a", "--force"], out=out) == 0
    assert {d["argv"][1] for d in q.all_jobs()} == {"b"}


# ----------------------------------------------------------------------------- report.py
def _fake_runs(root: Path, exp: str, steps=(0, 50, 100), seeds=(1, 2)):
    from ovis.reporting.fixtures import write_fake_run

    i = 0
    for est in ("reinforce", "vimco-arithmetic", "ovis-gamma1"):
        for iw in (5, 20):
            for seed in seeds:
                write_fake_run(root, exp, f"run{i:02d}", est, iw, seed, steps=steps)
                i += 1
    return i


def test_report_metric_typo_exits_2_with_one_line(tmp_path, capsys):
    from ovis.reporting.report import main as report_main

    _fake_runs(tmp_path / "runs", "e")
    for flag, value, bad in (("--metrics", "test:loss/Lk", "test:loss/Lk"),
                             ("--pivot_metrics", "max:tset:loss/L_k", "tset:loss/L_k"),
                             ("--detailed_metrics", "train:grads/snr,train:grad/snr", "train:grad/snr")):
        code = report_main(["--exp", "e", "--root", str(tmp_path / "runs"), "--output", str(tmp_path / "o"),
                            "--experiment_file", "none", flag, value])
        err = capsys.readouterr().err
        assert code == 2
        lines = _error_lines(err)
        assert len(lines) == 1 and flag in lines[0] and bad in lines[0] and "did you mean" in lines[0], err
        assert not (tmp_path / "o").exists()


def test_report_html_shows_failure_reasons_and_every_job_when_all_succeeded(tmp_path):
    from ovis.experiments.grid import load_and_expand
    from ovis.reporting.fixtures import write_fake_run
    from ovis.reporting.report import main as report_main

    root = tmp_path / "runs"
    grid = {"description": "d", "args": ["--estimator vimco-arithmetic"], "global": "",
            "parameters": {"iw": [5, 20], "dataset": ["gmm"]}}
    f = tmp_path / "e.json"
    f.write_text(json.dumps(grid))
    _, jobs, _ = load_and_expand(f, validate=False)
    for i, job in enumerate(jobs):
        p = write_fake_run(root, "e", f"ok{i}", "vimco-arithmetic", (5, 20)[i], 1)
        cfg = json.loads((p / "config.json").read_text())
        (p / "config.json").write_text(json.dumps(dict(cfg, job_id=job.job_id)))
    assert report_main(["--exp", "e", "--root", str(root), "--output", str(tmp_path / "o"),
                        "--experiment_file", str(f)]) == 0
    html = (tmp_path / "o" / "e" / "index.html").read_text()
    grid_table = html.split("Every job of the grid", 1)[1].split("</table>", 1)[0]
    for job in jobs:  # every job is listed even though all succeeded
        assert job.job_id in grid_table
    # a failed run: its reason is on the page
    p = write_fake_run(root, "e", "bad", "reinforce", 5, 1, status="failed", steps=(0,))
    st = json.loads((p / "status.json").read_text())
    st["error"] = "DatasetNotFoundError: data set 'binmnist' not found under /nowhere\nsecond line"
    (p / "status.json").write_text(json.dumps(st))
    assert report_main(["--exp", "e", "--root", str(root), "--output", str(tmp_path / "o"),
                        "--experiment_file", "none"]) == 0
    html = (tmp_path / "o" / "e" / "index.html").read_text()
    runs_table = unescape(html.split("Every run directory", 1)[1].split("</table>", 1)[0])
    assert "<td>DatasetNotFoundError: data set 'binmnist' not found under /nowhere</td>" in runs_table
    summary = unescape(html.split("</h2>", 2)[1])
    assert "bad: failed: DatasetNotFoundError" in summary


def test_report_single_runs_have_no_fake_spread(tmp_path):
    from ovis.reporting.report import main as report_main

    _fake_runs(tmp_path / "runs", "e", seeds=(1,))
    assert report_main(["--exp", "e", "--root", str(tmp_path / "runs"), "--output", str(tmp_path / "o"),
                        "--experiment_file", "none", "--keys", "estimator,iw"]) == 0
    md = (tmp_path / "o" / "e" / "pivot-max-test-loss_L_k.md").read_text()
    html = (tmp_path / "o" / "e" / "index.html").read_text()
    assert "(1)" in md
    assert "± 0 (1)" not in md and "± 0 (1)" not in html


def _capture_figures(monkeypatch):
    import ovis.reporting.report as rep

    figs = {}
    real = rep.save_figure

    def capture(fig, outdir, name, caption=""):
        figs[name] = [(ln.get_label(), ln.get_color(), ln.get_linestyle(), ln.get_marker(), ln.get_markersize(),
                       len(ln.get_xdata())) for ax in fig.axes for ln in ax.get_lines()
                      if not ln.get_label().startswith("_")]
        return real(fig, outdir, name, caption)

    monkeypatch.setattr(rep, "save_figure", capture)
    return figs


def test_report_one_colour_per_estimator_one_line_style_per_k_everywhere(tmp_path, monkeypatch):
    from ovis.reporting.report import main as report_main

    _fake_runs(tmp_path / "runs", "e")
    figs = _capture_figures(monkeypatch)
    assert report_main(["--exp", "e", "--root", str(tmp_path / "runs"), "--output", str(tmp_path / "o"),
                        "--experiment_file", "none", "--keys", "estimator,iw",
                        "--metrics", "test:loss/L_k,train:grads/snr", "--detailed_metrics", "test:loss/L_k",
                        "--pivot_metrics", "max:test:loss/L_k,last:train:grads/snr"]) == 0
    assert {"curves-test-loss/L_k", "detailed-test-loss/L_k", "pivot-max-test-loss/L_k"} <= set(figs), figs.keys()
    colour, style = {}, {}
    for name, lines in figs.items():
        for label, color, ls, *_ in lines:
            est = re.search(r"estimator=([\w.-]+)", label).group(1)
            colour.setdefault(est, set()).add(str(color))
            iw = re.search(r"iw=(\d+)", label)
            if iw and not name.startswith("pivot"):
                style.setdefault(iw.group(1), set()).add(str(ls))
    assert set(colour) == {"reinforce", "vimco-arithmetic", "ovis-gamma1"}
    assert all(len(c) == 1 for c in colour.values()), colour  # the same colour in every figure
    assert len({next(iter(c)) for c in colour.values()}) == 3  # and a different one per estimator
    assert set(style) == {"5", "20"} and all(len(s) == 1 for s in style.values()), style
    assert style["5"] != style["20"]


def test_report_single_evaluation_curves_are_visible(tmp_path, monkeypatch):
    from ovis.reporting.report import main as report_main

    _fake_runs(tmp_path / "runs", "e", steps=(100,))
    figs = _capture_figures(monkeypatch)
    assert report_main(["--exp", "e", "--root", str(tmp_path / "runs"), "--output", str(tmp_path / "o"),
                        "--experiment_file", "none", "--metrics", "test:loss/L_k",
                        "--detailed_metrics", "test:loss/L_k"]) == 0
    single = [(name, ln) for name, lines in figs.items() if not name.startswith("pivot") for ln in lines]
    assert single and all(ln[5] == 1 for _, ln in single)
    for name, (label, _color, _ls, marker, size, _n) in single:
        assert marker not in (None, "None", "", " ", ",") and size >= 4, (name, label, marker, size)


# ----------------------------------------------------------------------------- corrupt queue, full disk
def _ok_grid(tmp_path: Path, name: str):
    src = make_src(tmp_path, name, {"args": ["--name a"], "parameters": {"sleep": [0.1]}})
    env = env_with_counts(tmp_path / "c")
    root = (tmp_path / "runs").resolve()
    r = _run(manager_cmd(src, name, root), env)
    assert r.returncode == 0, r.stderr
    return src, env, root


def test_corrupt_queue_one_line_data_untouched_and_rf_recovers(tmp_path):
    src, env, root = _ok_grid(tmp_path, "cq")
    qpath = root / "cq" / "queue.json"
    garbage = b'{"jobs": {"1": {"job_id": '
    qpath.write_bytes(garbage)
    r = _run(manager_cmd(src, "cq", root, "--resume"), env)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [ln for ln in _error_lines(r.stderr) if str(qpath) in ln]
    assert len(errors) == 1 and "--rf" in errors[0], r.stderr
    assert qpath.read_bytes() == garbage  # left as it is
    r = _run(manager_cmd(src, "cq", root, "--rf"), env)
    assert r.returncode == 0, r.stderr


FULL_DISK = r'''
import errno, sys
from ovis.experiments import queue as Q
def write(self, data):
    raise OSError(errno.ENOSPC, "No space left on device", str(self.tmp))
Q.AtomicJSONStorage.write = write
from ovis.experiments.manager import manager_main
sys.exit(manager_main(sys.argv[1:]))
'''


def test_full_disk_one_line_and_the_queue_survives(tmp_path):
    src, env, root = _ok_grid(tmp_path, "fd")
    qpath = root / "fd" / "queue.json"
    before = qpath.read_bytes()
    cmd = manager_cmd(src, "fd", root, "--resume", "--requeue_level", "10000")
    r = _run([PY, "-c", FULL_DISK, *cmd[2:]], env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in _error_lines(r.stderr) if "No space left on device" in ln]
    assert len(errors) == 1 and "free some disk space" in errors[0] and "--resume" in errors[0], r.stderr
    assert qpath.read_bytes() == before
    assert JobQueue(root / "fd").counts()["success"] == 1
