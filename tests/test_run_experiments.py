"""Every paper experiment file run by run.py, grid reduced to its first job, at a test tier (slow).

Test tier (overrides appended after the job's own flags, so they win): ``--epochs 0 --nsteps 10``,
particles ``iw``, ``iw_test``, ``iw_valid`` <= 100, ``--max_eval 50``, ``grad_samples`` <= 5, no
active-unit analysis, ``--mini`` data.  Data sets not available offline: ``binmnist`` falls back to
the fixed-seed binarisation of MNIST (done by the loader); ``omniglot`` (absent) is replaced by
``fashion`` in this tier only.  Files whose script is ``asymptotic_variance.py`` are not run here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ovis.training.arguments import parse_run_args
from ovis.training.run import main
from ovis.training.rundir import compute_run_id

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO.parent / "shared" / "spec" / "paper-experiments"
FILES = sorted(p for p in SPEC.glob("*.json") if json.loads(p.read_text()).get("script", "run.py") == "run.py")
OFFLINE_SUBSTITUTES = {"omniglot": "fashion"}
# CPU seconds of this process (all threads): unlike wall time, not inflated by other processes
# sharing the machine
TIME_LIMIT_S = 30.0

pytestmark = pytest.mark.slow


def first_job(exp: dict) -> list:
    r"""``global + args[0] + the first value of every parameter`` (booleans: bare flag or nothing)."""
    argv = exp["global"].split() + exp["args"][0].split()
    for k, values in exp.get("parameters", {}).items():
        v = values[0]
        argv += [f"--{k}"] if v is True else [] if v is False else [f"--{k}", str(v)]
    return argv


def test_tier(argv: list) -> list:
    args = parse_run_args(argv)
    over = ["--epochs", "0", "--nsteps", str(min(args.nsteps, 10)), "--iw", str(min(args.iw, 100)),
            "--iw_test", str(min(args.iw_test, 100)), "--iw_valid", str(min(args.iw_valid, 100)),
            "--max_eval", "50", "--grad_samples", str(min(args.grad_samples, 5)),
            "--mc_au_analysis", "0", "--npoints_au_analysis", "0", "--mini"]
    if args.dataset in OFFLINE_SUBSTITUTES:
        over += ["--dataset", OFFLINE_SUBSTITUTES[args.dataset]]
    return argv + over


test_tier.__test__ = False  # a helper, not a test


def test_the_paper_files_are_found():
    assert {p.stem for p in FILES} >= {"sigmoid-belief-network", "gaussian-mixture-model", "gaussian-vae",
                                       "gaussian-toy", "budget-analysis", "budget-analysis-sbm", "mini-vae"}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_first_job_runs_to_success(path, tmp_path, data_root):
    exp = json.loads(path.read_text())
    argv = test_tier(first_job(exp)) + ["--exp", path.stem, "--root", str(tmp_path), "--data_root", str(data_root)]
    t0 = time.process_time()
    code = main(argv)
    elapsed = time.process_time() - t0
    d = tmp_path / path.stem / compute_run_id(parse_run_args(argv))
    status = json.loads((d / "status.json").read_text())
    assert code == 0, status.get("traceback")
    assert status["status"] == "success" and status["step"] == 10
    lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert [ln["split"] for ln in lines] == ["train", "valid", "test"]
    assert all(ln["step"] == 10 for ln in lines)
    if parse_run_args(argv).grad_samples > 0:
        assert "grads/snr" in lines[0]["metrics"]
    assert elapsed < TIME_LIMIT_S, f"{path.stem}: {elapsed:.1f} CPU s"
