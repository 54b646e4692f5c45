"""run.py: arguments, run id, schedules, chunked evaluation, checkpoints, short in-process runs."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from ovis.training.arguments import RUN_IDENTITY_DEFAULTS, parse_run_args
from ovis.training.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from ovis.training.evaluation import accumulate_chunked_bound, active_units, evaluate_bound
from ovis.training.run import main
from ovis.training.rundir import RunDirectory, compute_run_id
from ovis.training.schedules import alpha_at, lr_factor_at, lr_reduction_steps

REPO = Path(__file__).resolve().parents[1]

# a tiny, fast configuration on real (mini) MNIST
TINY = ["--dataset", "mnist", "--mini", "--model", "vae", "--N", "4", "--hdim", "16", "--nlayers", "1",
        "--bs", "20", "--iw_test", "10", "--iw_valid", "10", "--max_eval", "20", "--silent",
        "--no_tensorboard", "--no_flush_denormal"]


def _common(tmp_path: Path, data_root: Path) -> list:
    return ["--root", str(tmp_path / "runs"), "--data_root", str(data_root), "--exp", "t"]


def _run_dir(tmp_path: Path, argv: list) -> Path:
    args = parse_run_args(argv)
    return tmp_path / "runs" / "t" / compute_run_id(args)


def _lines(path: Path) -> list:
    return [json.loads(l) for l in (path / "metrics.jsonl").read_text().splitlines() if l.strip()]


# ---------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("bad", [
    ["--nope"], ["--iw", "0"], ["--iw", "2.5"], ["--estimator", "ovis-S1.5"], ["--estimator", "foo"],
    ["--device", "tpu"], ["--grad_samples", "1"], ["--optimizer", "lbfgs"], ["--alpha", "1.0"],
    ["--estimator", "pathwise-iwae", "--alpha_init", "0.5"],
])
def test_invalid_arguments_exit_2_with_the_error_and_no_run_directory(tmp_path, capsys, bad):
    code = main(["--root", str(tmp_path / "runs"), *bad])
    err = capsys.readouterr().err
    assert code == 2
    # the error first (no usage dump before it), then at most the valid forms of the flag
    assert err.startswith("run.py: error:") and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_invalid_arguments_subprocess_exit_code(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "run.py"), "--root", str(tmp_path / "r"), "--bs", "0"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("run.py: error: argument --bs") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_whole_float_integers_accepted():
    args = parse_run_args(["--nsteps", "1e4", "--iw", "10.0", "--estimator", "ovis-S0.3"])
    assert args.nsteps == 10000 and args.iw == 10


def _job(exp: dict, arg: str, values: dict) -> list:
    argv = exp["global"].split() + arg.split()
    for k, v in values.items():
        argv += [f"--{k}"] if v is True else [] if v is False else [f"--{k}", str(v)]
    return argv


def test_every_paper_experiment_argument_is_accepted():
    folder = REPO.parent / "shared" / "spec" / "paper-experiments"
    files = [p for p in sorted(folder.glob("*.json"))
             if json.loads(p.read_text()).get("script", "run.py") == "run.py"]
    assert len(files) >= 7
    n = 0
    for p in files:
        exp = json.loads(p.read_text())
        params = exp.get("parameters", {})
        first = {k: v[0] for k, v in params.items()}
        for arg in exp["args"]:
            parse_run_args(_job(exp, arg, first))
            for k, values in params.items():  # every value of every parameter
                for v in values:
                    parse_run_args(_job(exp, arg, {**first, k: v}))
                    n += 1
    assert n > 100


# ---------------------------------------------------------------------------- run id
def test_run_id_deterministic_and_identity_only():
    base = ["--estimator", "ovis-gamma1", "--iw", "5"]
    rid = compute_run_id(parse_run_args(base))
    assert rid == compute_run_id(parse_run_args(base))
    # explicit defaults and non-identity flags do not change the id
    assert rid == compute_run_id(parse_run_args(base + ["--seed", "1", "--lr", "0.001", "--silent",
                                                        "--root", "elsewhere", "--workers", "4",
                                                        "--device", "cpu", "--checkpoint_every", "5"]))
    # identity values do
    assert rid != compute_run_id(parse_run_args(base + ["--seed", "2"]))
    assert rid != compute_run_id(parse_run_args(base + ["--lr", "0.01"]))
    assert rid != compute_run_id(parse_run_args(base + ["--exp", "other"]))
    tagged = compute_run_id(parse_run_args(base + ["--id", "iwbound"]))
    assert tagged != rid and tagged.startswith("iwbound-")
    assert "ovis-gamma1" in rid and "iw5" in rid


def test_run_id_unchanged_by_a_new_flag_at_its_default(monkeypatch):
    args = parse_run_args(["--estimator", "vimco-arithmetic", "--iw", "5"])
    rid = compute_run_id(args)
    monkeypatch.setitem(RUN_IDENTITY_DEFAULTS, "a_new_flag", 3)
    args.a_new_flag = 3
    assert compute_run_id(args) == rid
    args.a_new_flag = 4
    assert compute_run_id(args) != rid


# ---------------------------------------------------------------------------- schedules
def test_alpha_warmup_schedules():
    assert alpha_at(10, 0.3) == 0.3  # no warm-up
    # linear, with offset
    assert alpha_at(0, 0.0, warmup=100, alpha_init=0.8, mode="linear", offset=10) == pytest.approx(0.8)
    assert alpha_at(60, 0.0, warmup=100, alpha_init=0.8, mode="linear", offset=10) == pytest.approx(0.4)
    assert alpha_at(500, 0.0, warmup=100, alpha_init=0.8, mode="linear", offset=10) == pytest.approx(0.0)
    # log: alpha(x) = 1 - (1 - a0)^(1 - x) toward alpha = 0
    for step in (0, 25, 50, 99, 100, 200):
        x = min(step / 100, 1.0)
        assert alpha_at(step, 0.0, warmup=100, alpha_init=0.99, mode="log") == pytest.approx(
            1 - (1 - 0.99) ** (1 - x), abs=1e-12)
    # log toward a non-zero target ends at the target
    assert alpha_at(100, 0.5, warmup=100, alpha_init=0.99, mode="log") == pytest.approx(0.5)


def test_lr_reductions_evenly_spaced():
    assert lr_reduction_steps(100, 3) == [25, 50, 75]
    assert lr_factor_at(24, 100, 3, 0.5) == 1.0
    assert lr_factor_at(25, 100, 3, 0.5) == 0.5
    assert lr_factor_at(99, 100, 3, 0.1) == pytest.approx(1e-3)
    assert lr_factor_at(99, 100, 0) == 1.0


# ---------------------------------------------------------------------------- evaluation
def test_chunked_accumulation_equals_direct(float64):
    B, K = 3, 101
    log_w = torch.randn(B, K) * 30 - 100  # widely spread: a dominant weight
    kl = torch.rand(B, K)
    pos = {"i": 0}

    def fn(k):
        out = log_w[:, pos["i"]:pos["i"] + k], kl[:, pos["i"]:pos["i"] + k]
        pos["i"] += k
        return out

    for chunk in (1, 7, 50, 101, 1000):
        pos["i"] = 0
        s = accumulate_chunked_bound(fn, K, chunk)
        assert torch.allclose(s["L_k"], torch.logsumexp(log_w, 1) - math.log(K), atol=1e-10, rtol=0)
        assert torch.allclose(s["elbo"], log_w.mean(1), atol=1e-10)
        assert torch.allclose(s["kl"], kl.mean(1), atol=1e-10)
        assert torch.allclose(s["distortion"], -(log_w + kl).mean(1), atol=1e-10)
        w = torch.softmax(log_w, 1)
        assert torch.allclose(s["ess"], 1 / (w ** 2).sum(1), atol=1e-8)


class BankModel(nn.Module):
    """q(z|x) = N(Ax, 1), p(z) = N(0, 1), p(x|z) = N(Wz, 1), with z drawn from a fixed bank in order."""

    def __init__(self, D: int = 3, N: int = 2, size: int = 100000):
        super().__init__()
        self.inference_network = nn.Linear(D, N)
        self.generative_model = nn.Linear(N, D)
        self.bank = torch.randn(size, N)
        self.pos = 0

    def forward(self, x, zgrads=False, **kw):
        n = x.shape[0]
        loc = self.inference_network(x)
        z = loc + self.bank[self.pos:self.pos + n]
        self.pos += n
        qz = Independent(Normal(loc, torch.ones_like(loc)), 1)
        pz = Independent(Normal(torch.zeros_like(z), torch.ones_like(z)), 1)
        px = Independent(Normal(self.generative_model(z), torch.ones_like(x)), 1)
        return {"px": px, "z": [z], "qz": [qz], "pz": [pz]}


def test_chunked_test_evaluation_equals_unchunked(float64):
    data = torch.randn(5, 3)
    K = 200
    model = BankModel()
    full = evaluate_bound(model, data, torch.arange(5), 1, K, max_rows=K, device=torch.device("cpu"))
    assert model.pos == 5 * K
    model.pos = 0
    chunked = evaluate_bound(model, data, torch.arange(5), 1, K, max_rows=7, device=torch.device("cpu"))
    assert model.pos == 5 * K
    assert set(full) == {"loss/L_k", "loss/elbo", "loss/kl", "loss/kl_q_p", "loss/ess", "loss/distortion",
                         "loss/rate"}
    assert full["loss/distortion"] + full["loss/rate"] == pytest.approx(-full["loss/elbo"], rel=1e-9)
    for k in full:
        assert chunked[k] == pytest.approx(full[k], rel=1e-6, abs=1e-6), k
    # and the bound is the direct log-mean-exp of the same particles
    model.pos = 0
    with torch.no_grad():
        vals = []
        for i in range(5):
            x = data[i:i + 1].expand(K, 3)
            out = model(x)
            lw = out["px"].log_prob(x) + out["pz"][0].log_prob(out["z"][0]) - out["qz"][0].log_prob(out["z"][0])
            vals.append(torch.logsumexp(lw, 0) - math.log(K))
    assert full["loss/L_k"] == pytest.approx(float(torch.stack(vals).mean()), rel=1e-9)


def test_active_units_counts_units_that_depend_on_x(float64):
    class M(nn.Module):
        def forward(self, x, zgrads=False, **kw):
            n = x.shape[0]
            # unit 0: E[z|x] = 3 x (active); unit 1: pure noise (inactive); unit 2: tiny dependence
            z = torch.stack([3 * x[:, 0], torch.randn(n), 0.01 * x[:, 0] + 0.1 * torch.randn(n)], -1)
            return {"z": [z]}

    data = torch.randn(100, 1)
    # mc = 400 draws: the noise unit's Var_x of the MC mean is 1/400 < 0.01
    au = active_units(M(), data, torch.arange(100), mc=400, max_rows=1000, device=torch.device("cpu"))
    assert au == {"active_units/au": 1.0, "active_units/total": 3.0}


# ---------------------------------------------------------------------------- checkpoints
def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    torch.randn(5), np.random.randn(3), random.random(), np.random.normal()
    save_checkpoint(tmp_path / "c.pt", {"rng": get_rng_state()})
    expected = (torch.randn(4), np.random.randn(4), [random.random() for _ in range(3)])
    torch.randn(7), np.random.randn(7), random.random()
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.randn(4), np.random.randn(4), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_metrics_truncation_drops_later_and_partial_lines(tmp_path):
    rd = RunDirectory(tmp_path / "r")
    rd.create()
    rd.append_metrics([{"split": "test", "step": s, "epoch": 0, "time": 0.0, "metrics": {}} for s in (5, 10, 15)])
    with open(rd.metrics_path, "a") as f:
        f.write('{"split": "test", "st')  # a kill during the write
    assert rd.truncate_metrics(10) == 1
    assert [ln["step"] for ln in rd.read_metrics()] == [5, 10]
    assert rd.metrics_path.read_text().endswith("\n")


# ---------------------------------------------------------------------------- short runs
def test_short_run_success_layout_and_metrics(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("OVIS_JOB_ID", "job-123")
    argv = TINY + _common(tmp_path, data_root) + [
        "--estimator", "reinforce-baseline", "--iw", "3", "--nsteps", "8", "--eval_freq", "100",
        "--grad_samples", "3", "--grad_bs", "4", "--mc_au_analysis", "3", "--npoints_au_analysis", "8"]
    assert main(argv) == 0
    d = _run_dir(tmp_path, argv)
    status = json.loads((d / "status.json").read_text())
    assert status["status"] == "success" and status["step"] == 8 and status["job_id"] == "job-123"
    config = json.loads((d / "config.json").read_text())
    assert config["estimator"] == "reinforce-baseline" and config["job_id"] == "job-123"
    assert config["version"] and config["data"]["description"]["name"] == "mnist"
    lines = _lines(d)
    # a run shorter than one evaluation period still evaluates once, at the end
    assert [(ln["split"], ln["step"]) for ln in lines] == [("train", 8), ("valid", 8), ("test", 8)]
    train, valid, test = (ln["metrics"] for ln in lines)
    for name in ("loss/L_k", "loss/elbo", "loss/kl", "loss/kl_q_p", "loss/ess", "grads/variance",
                 "grads/snr", "grads/dsnr", "active_units/au", "eval/L_k", "estimator/baseline_mse"):
        assert name in train and math.isfinite(train[name]), name
    for m in (valid, test):
        assert set(m) >= {"loss/L_k", "loss/elbo", "loss/kl", "loss/kl_q_p", "loss/ess"}
        assert m["loss/kl_q_p"] == pytest.approx(m["loss/L_k"] - m["loss/elbo"])
        assert m["loss/L_k"] >= m["loss/elbo"] - 1e-6
    # checkpoints load with weights_only=True; the estimator's own parameters are saved
    last = torch.load(d / "last.pt", weights_only=True)
    assert last["step"] == 8 and any("baseline" in k for k in last["estimator"])
    assert len(last["optimizer"]["param_groups"]) == 2
    best = torch.load(d / "best.pt", weights_only=True)
    assert best["step"] == 8 and best["valid"]["loss/L_k"] == valid["loss/L_k"]
    assert list((d / "samples").glob("prior-step*.png"))
    # the latest grids: 64 prior samples (8 x 8); the 20 validation images (--max_eval 20) and their
    # reconstructions, in 3 pairs of rows
    from matplotlib import image as mpimg

    prior, rec = mpimg.imread(d / "samples" / "prior.png"), mpimg.imread(d / "samples" / "reconstruction.png")
    assert prior.shape[:2] == (8 * 29 + 1, 8 * 29 + 1) and rec.shape[:2] == (6 * 29 + 1, 8 * 29 + 1)
    assert float(prior[..., 0].std()) > 0.05 and float(rec[..., 0].std()) > 0.05
    for m in (valid, test):  # distortion and rate: D + R = -ELBO
        assert m["loss/distortion"] + m["loss/rate"] == pytest.approx(-m["loss/elbo"], rel=1e-6)
        assert m["loss/rate"] == m["loss/kl"] and m["loss/distortion"] > 0
    assert "eval/distortion" in train and "eval/rate" in train
    assert "success" in (d / "run.log").read_text()
    # starting it again: already complete, nothing recomputed
    assert main(argv) == 0
    assert _lines(d) == lines
    # --rf deletes it first
    (d / "marker").write_text("x")
    assert main(argv + ["--rf"]) == 0
    assert not (d / "marker").exists()


def test_no_samples_writes_no_grid_and_keeps_the_run_id(tmp_path, data_root):
    argv = TINY + _common(tmp_path, data_root) + ["--nsteps", "2", "--no_samples"]
    assert compute_run_id(parse_run_args(argv)) == compute_run_id(parse_run_args(argv[:-1]))
    assert main(argv) == 0
    d = _run_dir(tmp_path, argv)
    assert json.loads((d / "status.json").read_text())["status"] == "success"
    assert not list((d / "samples").glob("*.png"))


def test_failure_writes_failed_status_with_traceback(tmp_path, data_root):
    # a Bernoulli image model cannot model the GMM data: build_model raises
    argv = ["--dataset", "gmm", "--model", "vae", "--mini", "--nsteps", "3", "--silent",
            "--no_tensorboard", "--no_flush_denormal"] + _common(tmp_path, data_root)
    assert main(argv) == 1
    status = json.loads((_run_dir(tmp_path, argv) / "status.json").read_text())
    assert status["status"] == "failed"
    assert "ValueError" in status["error"] and "Traceback" in status["traceback"]


def test_gmm_run_logs_extra_metrics_and_epochs(tmp_path, data_root):
    argv = ["--dataset", "gmm", "--mini", "--estimator", "ovis-S1-exclusive", "--iw", "3", "--epochs", "1",
            "--bs", "250", "--eval_freq", "1", "--iw_test", "10", "--iw_valid", "10", "--max_eval", "50",
            "--grad_samples", "2", "--grad_key", "phi", "--silent", "--no_flush_denormal"] + _common(tmp_path, data_root)
    assert main(argv) == 0
    d = _run_dir(tmp_path, argv)
    lines = _lines(d)
    steps_per_epoch = json.loads((d / "config.json").read_text())["run"]["steps_per_epoch"]
    assert lines[-1]["step"] == steps_per_epoch  # --epochs 1: exactly one epoch of steps
    for ln in lines:
        assert "gmm/posterior_mse" in ln["metrics"] and "gmm/prior_mse" in ln["metrics"]
    assert list((d / "tensorboard").glob("events.out.tfevents.*"))


def test_a_run_already_running_elsewhere_is_left_alone(tmp_path, data_root, capsys):
    from filelock import FileLock

    argv = TINY + _common(tmp_path, data_root) + ["--nsteps", "2", "--rf"]
    d = _run_dir(tmp_path, argv)
    d.mkdir(parents=True)
    (d / "keep").write_text("x")
    with FileLock(str(d.parent / f".{d.name}.lock")):
        assert main(argv) == 3
    assert (d / "keep").exists()  # --rf did not delete a running run
    assert "already running" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo
@pytest.mark.slow
def test_compiled_model_trains_and_checkpoints_like_the_eager_one(tmp_path, data_root):
    # --compile compiles the training estimation (ovis.estimators.base.compile_estimator): same run
    # id, same parameter names
    base = ["--dataset", "binmnist", "--mini", "--model", "sbm", "--N", "8", "--depth", "2",
            "--bs", "8", "--iw_test", "4", "--iw_valid", "4", "--max_eval", "8", "--silent",
            "--no_tensorboard", "--estimator", "vimco-arithmetic", "--iw", "3", "--nsteps", "4",
            "--eval_freq", "100", "--grad_samples", "0", "--npoints_au_analysis", "0"] + _common(tmp_path, data_root)
    assert compute_run_id(parse_run_args(base + ["--compile"])) == compute_run_id(parse_run_args(base))
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    assert main(base + ["--compile"]) == 0
    assert counters["stats"]["unique_graphs"] > graphs  # the training steps ran a compiled graph
    d = _run_dir(tmp_path, base)
    assert json.loads((d / "status.json").read_text())["status"] == "success"
    state = torch.load(d / "last.pt", weights_only=True)["model"]
    assert not any("_orig_mod" in k for k in state)
    test = [ln for ln in _lines(d) if ln["split"] == "test"][0]["metrics"]
    assert math.isfinite(test["loss/L_k"]) and test["loss/L_k"] < 0


def test_running_sums_equal_the_per_entry_means_and_survive_a_checkpoint():
    from ovis.training.sums import RunningSums

    g = torch.Generator().manual_seed(0)
    steps = [{"loss": {"L_k": torch.randn(4, generator=g), "elbo": torch.randn(4, generator=g)},
              "estimator": {"cv_mse": torch.rand(4, generator=g), "scale": torch.rand((), generator=g)}}
             for _ in range(5)]
    sums = RunningSums()
    for d in steps[:3]:
        sums.add(*RunningSums.step_means(d))
    restored = RunningSums()  # a checkpoint in the middle, in the old format (with kl_q_p summed)
    state = sums.state()
    state["loss/kl_q_p"] = state["loss/L_k"] - state["loss/elbo"]
    restored.load(state, sums.count, torch.device("cpu"))
    for d in steps[3:]:
        sums.add(*RunningSums.step_means(d))
        restored.add(*RunningSums.step_means(d))
    expected = {f"{grp}/{k}": sum(float(d[grp][k].double().mean()) for d in steps) / 5
                for grp in ("loss", "estimator") for k in steps[0][grp]}
    expected["loss/kl_q_p"] = expected["loss/L_k"] - expected["loss/elbo"]
    for got in (sums.means(), restored.means()):
        assert got.keys() == expected.keys()
        assert all(abs(got[k] - expected[k]) < 1e-12 for k in expected)
    sums.add(("loss/L_k", "other"), torch.tensor([1.0, 2.0], dtype=torch.float64))  # names change: merged
    assert sums.count == 6 and abs(sums.means()["other"] - 2.0 / 6) < 1e-12
    assert RunningSums().means() == {}
