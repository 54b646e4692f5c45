"""run.py in real subprocesses: SIGKILL + restart and SIGTERM + restart give the metrics of an
uninterrupted run with the same seed (slow)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ovis.training.arguments import parse_run_args
from ovis.training.rundir import compute_run_id

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("OVIS_TEST_DATA_ROOT", (REPO / ".." / "shared" / "data").resolve()))

pytestmark = pytest.mark.slow

# reinforce-baseline (the estimator has its own parameters and optimiser group), the log Renyi
# warm-up, LR reductions, dynamic binarisation (mnist), gradient and active-unit analysis
ARGS = ["--dataset", "mnist", "--mini", "--model", "vae", "--N", "4", "--hdim", "16", "--nlayers", "1",
        "--estimator", "reinforce-baseline", "--iw", "4", "--bs", "50", "--nsteps", "60", "--eval_freq", "1",
        "--warmup", "40", "--alpha_init", "0.5", "--warmup_mode", "log", "--lr_reduce_steps", "2",
        "--lr", "3e-3", "--iw_test", "10", "--iw_valid", "10", "--max_eval", "20", "--grad_samples", "2",
        "--grad_bs", "4", "--mc_au_analysis", "2", "--npoints_au_analysis", "5", "--silent",
        "--deterministic", "--checkpoint_steps", "3", "--no_tensorboard", "--exp", "resume",
        "--data_root", str(DATA)]


def _cmd(root: Path) -> list:
    return [sys.executable, str(REPO / "run.py"), *ARGS, "--root", str(root)]


def _dir(root: Path) -> Path:
    return root / "resume" / compute_run_id(parse_run_args(ARGS))


def _lines(d: Path) -> list:
    return [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _status(d: Path) -> dict:
    try:
        return json.loads((d / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _assert_same_metrics(a: list, b: list) -> None:
    assert [(x["split"], x["step"]) for x in a] == [(x["split"], x["step"]) for x in b]
    for x, y in zip(a, b):
        assert x["epoch"] == y["epoch"]
        assert set(x["metrics"]) == set(y["metrics"]), (x["split"], x["step"])
        for k, v in x["metrics"].items():
            assert y["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-6), (x["split"], x["step"], k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    r = subprocess.run(_cmd(root), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _lines(_dir(root))
    assert [x["step"] for x in lines if x["split"] == "test"] == [20, 40, 60]
    train = {x["step"]: x["metrics"] for x in lines if x["split"] == "train"}
    # log warm-up over 40 steps from alpha_init 0.5: alpha(x) = 1 - 0.5^(1 - x)
    assert train[20]["info/alpha"] == pytest.approx(1 - 0.5 ** 0.5)
    assert train[40]["info/alpha"] == 0.0 and train[60]["info/alpha"] == 0.0
    # two LR reductions (factor 0.5) at steps 20 and 40; info/lr is the rate of the last step
    assert [train[s]["info/lr"] for s in (20, 40, 60)] == pytest.approx([3e-3, 1.5e-3, 7.5e-4])
    return lines


def _start_and_wait(root: Path, min_step: int) -> subprocess.Popen:
    with open(root / "stderr.txt", "wb") as err:
        p = subprocess.Popen(_cmd(root), cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    d = _dir(root)
    deadline = time.time() + 300
    while time.time() < deadline:
        st = _status(d)
        if st.get("step", 0) >= min_step and (d / "last.pt").exists():
            return p
        if p.poll() is not None:
            pytest.fail(f"the run ended (rc {p.returncode}) before step {min_step}: "
                        f"{(root / 'stderr.txt').read_text()[-2000:]}")
        time.sleep(0.05)
    p.kill()
    p.wait()
    pytest.fail("timed out waiting for a checkpoint")


def test_sigkill_and_restart_equals_uninterrupted(tmp_path, reference):
    rng = random.Random()
    for attempt in range(3):  # a run that finished before the kill landed is drawn again
        root = tmp_path / f"attempt{attempt}"
        root.mkdir()
        p = _start_and_wait(root, rng.randrange(6, 45))
        time.sleep(rng.uniform(0.0, 0.1))  # land the kill at a random step after that checkpoint
        if p.poll() is None:
            break
        p.wait(timeout=60)
    else:
        pytest.fail("three runs finished before the kill could land")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    d = _dir(root)
    killed_at = _status(d)
    assert killed_at["status"] == "running"  # SIGKILL leaves no chance to write anything
    ckpt = torch.load(d / "last.pt", weights_only=True)
    assert 0 < ckpt["step"] < 60
    r = subprocess.run(_cmd(root), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _status(d)["status"] == "success"
    assert "resumed from" in (d / "run.log").read_text()
    _assert_same_metrics(reference, _lines(d))


def test_sigterm_aborts_with_checkpoint_then_resumes(tmp_path, reference):
    p = _start_and_wait(tmp_path, 25)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=120)
    assert rc == 128 + signal.SIGTERM
    d = _dir(tmp_path)
    st = _status(d)
    assert st["status"] == "aborted" and st["ended"] and "SIGTERM" in st["error"]
    ckpt = torch.load(d / "last.pt", weights_only=True)
    assert ckpt["step"] == st["step"] >= 25
    r = subprocess.run(_cmd(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_metrics(reference, _lines(d))
