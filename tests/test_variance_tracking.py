"""run.py --track_variance (REBAR's variance-tracking mode), its report figure, --architecture; the
log-variance helper ovis.analysis.variance_tracking.log_gradient_variances."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from ovis.analysis.gradients import gradient_samples
from ovis.training.arguments import RunArgumentError, parse_run_args
from ovis.training.run import main
from ovis.training.rundir import compute_run_id

# a tiny 1-layer SBN on mini binarised MNIST, REBAR's setting (iw 1)
SBN = ["--dataset", "binmnist", "--mini", "--model", "sbm", "--prior", "bernoulli", "--N", "6",
       "--nlayers", "0", "--depth", "1", "--bs", "250", "--grad_bs", "8", "--iw_test", "4", "--iw_valid", "4",
       "--max_eval", "10", "--valid_bs", "10", "--test_bs", "10", "--nsteps", "8", "--eval_freq", "1",
       "--estimator", "rebar", "--iw", "1", "--silent", "--no_tensorboard", "--no_flush_denormal",
       "--checkpoint_every", "0"]
TRACKED = "reinforce,nvil,muprop,arm,disarm,relax,concrete"


def _common(tmp_path: Path, data_root: Path, exp: str = "t") -> list:
    return ["--root", str(tmp_path / "runs"), "--data_root", str(data_root), "--exp", exp]


def _lines(run_dir: Path) -> list:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _run(tmp_path: Path, data_root: Path, extra: list, exp: str = "t") -> Path:
    argv = SBN + _common(tmp_path, data_root, exp) + extra
    assert main(argv) == 0
    run_dir = tmp_path / "runs" / exp / compute_run_id(parse_run_args(argv))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "success"
    return run_dir


def test_flags_parse_validate_and_keep_run_ids():
    base = ["--dataset", "binmnist", "--mini"]
    a = parse_run_args(base)
    assert a.track_variance == "" and a.architecture == "dense"
    # the new flags at their defaults leave the run id unchanged
    assert compute_run_id(a) == compute_run_id(parse_run_args(base + ["--track_variance", "",
                                                                     "--track_variance_draws", "10",
                                                                     "--architecture", "dense"]))
    assert compute_run_id(a) != compute_run_id(parse_run_args(base + ["--track_variance", "arm"]))
    b = parse_run_args(base + ["--track_variance", " arm, nvil ,arm,"])
    assert b.track_variance == "arm,nvil"
    with pytest.raises(RunArgumentError, match="--track_variance.*no-such"):
        parse_run_args(base + ["--track_variance", "arm,no-such-estimator"])
    with pytest.raises(RunArgumentError, match="--track_variance_draws"):
        parse_run_args(base + ["--track_variance", "arm", "--track_variance_draws", "1"])
    with pytest.raises(RunArgumentError):
        parse_run_args(base + ["--architecture", "resnet"])


def test_architecture_flag_reaches_discrete_vae():
    from ovis.models import build_model
    from ovis.models.discrete_vae import DiscreteVAE

    data = argparse.Namespace(name="binmnist", x_shape=torch.Size([1, 28, 28]), train_mean=None)
    common = ["--model", "discrete-vae", "--N", "3", "--K", "4", "--hdim", "8", "--nlayers", "1",
              "--relaxation", "gs"]
    dense = build_model(parse_run_args(common), data)
    conv = build_model(parse_run_args(common + ["--architecture", "conv"]), data)
    assert isinstance(conv, DiscreteVAE) and conv.architecture == "conv" and dense.architecture == "dense"
    assert any(isinstance(m, torch.nn.Conv2d) for m in conv.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in dense.modules())
    out = conv(torch.rand(2, 1, 28, 28).bernoulli())
    assert out["px"].log_prob(torch.zeros(2, 1, 28, 28)).shape[0] == 2
    with pytest.raises(ValueError, match="--architecture conv is only read by --model discrete-vae"):
        build_model(parse_run_args(["--model", "sbm", "--architecture", "conv"]), data)


@pytest.mark.slow
def test_tracking_logs_every_estimator_and_leaves_training_unchanged(tmp_path, data_root):
    plain = _run(tmp_path, data_root, [], exp="plain")
    tracked = _run(tmp_path, data_root, ["--track_variance", TRACKED, "--track_variance_draws", "3"],
                   exp="tracked")
    a, b = _lines(plain), _lines(tracked)
    assert len(a) == len(b) and len(a) == 3 * 2  # evaluations at steps 4 and 8, three splits each
    ids = ["rebar", *TRACKED.split(",")]
    for la, lb in zip(a, b):
        assert (la["split"], la["step"]) == (lb["split"], lb["step"])
        extra = {k: v for k, v in lb["metrics"].items() if k.startswith("variance/")}
        same = {k: v for k, v in lb["metrics"].items() if not k.startswith("variance/")}
        # the training trajectory and every other metric are unchanged by the tracking
        assert same == la["metrics"], (la["split"], la["step"])
        if lb["split"] == "train":
            assert sorted(extra) == sorted(f"variance/{i}" for i in ids)
            assert all(math.isfinite(v) and -30 < v < 30 for v in extra.values()), extra
        else:
            assert extra == {}
    # the variances differ between estimators (they are not one number copied) and over steps
    last = [l for l in b if l["split"] == "train"][-1]["metrics"]
    first = [l for l in b if l["split"] == "train"][0]["metrics"]
    assert len({round(last[f"variance/{i}"], 6) for i in ids}) == len(ids)
    assert last["variance/reinforce"] != first["variance/reinforce"]
    # (which estimator is noisier is not asserted from these 3 draws: the orderings are tested with
    # a declared failure rate in test_discrete_estimators.py::test_lower_gradient_variance_than_reinforce)


def test_tracked_value_is_the_log10_mean_variance(tmp_path, data_root):
    r"""The logged number equals log10 of the mean per-coordinate variance of the draws of
    gradient_samples under the same seed (recomputed independently from the trainer)."""
    import ovis.estimators as estimators
    from ovis.training.rng import eval_seed
    from ovis.training.run import Trainer
    from ovis.training.rundir import RunDirectory

    argv = SBN + _common(tmp_path, data_root) + ["--track_variance", "arm,reinforce",
                                                  "--track_variance_draws", "4", "--nsteps", "2"]
    args = parse_run_args(argv)
    rd = RunDirectory(tmp_path / "rd")
    rd.create()
    tr = Trainer(args, rd, "rid")
    tr.device = torch.device("cpu")
    tr.setup()
    try:
        tr.train_step()
        got = tr.track_variance(tr.step)
        assert sorted(got) == ["variance/arm", "variance/rebar", "variance/reinforce"]
        with torch.random.fork_rng():
            torch.manual_seed(eval_seed(args.seed, tr.step))
            x = torch.stack([tr.data.train[int(i)] for i in tr.idx_grad])
        est = estimators.build_estimator("arm", iw=1)
        est.eval()
        with torch.random.fork_rng():
            torch.manual_seed(eval_seed(args.seed, tr.step) + 1)
            g = gradient_samples(est, tr.model, x, 4, "inference_network", **tr.runtime(tr.step))
        expected = math.log10(float(g.double().var(0).mean()))
        assert got["variance/arm"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        # the training estimator is the trained instance, others are built once
        assert tr.tracked["rebar"] is tr.estimator
    finally:
        tr._close_logger()


@pytest.mark.usefixtures("float64", "one_thread")
def test_log_gradient_variances_at_the_same_parameters():
    """The variance-tracking helper: one finite log-variance per estimator, equal to the log of the
    mean per-coordinate variance of the same draws taken here (same seed); estimators in eval mode
    for the draws and restored, the model untouched.  (That reinforce's variance is above the
    others' is tested with a declared failure rate in
    test_discrete_estimators.py::test_lower_gradient_variance_than_reinforce.)"""
    from ovis.analysis.variance_tracking import log_gradient_variances
    from ovis.estimators import build_estimator
    from ovis.testing import BernoulliToyModel, exact_gradient_problem, gradient_draws

    model, x, _, _ = exact_gradient_problem(BernoulliToyModel())
    ests = {e: build_estimator(e, mc=1, iw=1) for e in ["reinforce", "disarm", "rebar", "nvil"]
            if e != "nvil"}
    ests["nvil"] = build_estimator("nvil", mc=1, iw=1, x_shape=(4,))
    before = [p.detach().clone() for p in model.parameters()]
    out = log_gradient_variances(model, x, ests, n_draws=60, tau=0.5)
    assert set(out) == {f"gradvar/{e}" for e in ests}
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values()), out
    torch.manual_seed(4)
    value = log_gradient_variances(model, x, {"disarm": ests["disarm"]}, n_draws=20, tau=0.5)["gradvar/disarm"]
    torch.manual_seed(4)
    phi = [p for n, p in model.named_parameters() if "inference_network" in n]
    draws = gradient_draws(ests["disarm"].eval(), model, x, phi, 20, tau=0.5)
    ests["disarm"].train()
    assert value == pytest.approx(math.log(float(draws.double().var(0).mean())), rel=1e-9)
    assert float(ests["nvil"].running_mean) == 0.0  # eval mode: no update
    assert all(ests[e].training for e in ests)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="key_filter"):
        log_gradient_variances(model, x, ests, key_filter="nothing")


def test_report_variance_tracking_figure(tmp_path):
    from ovis.reporting.report import main as report_main

    run_dir = tmp_path / "runs" / "exp" / "run-a"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"dataset": "binmnist", "estimator": "rebar", "iw": 1,
                                                     "seed": 1}))
    (run_dir / "status.json").write_text(json.dumps({"status": "success", "step": 20}))
    values = {0: {"variance/rebar": -2.5, "variance/reinforce": -0.5},
              10: {"variance/rebar": -3.0, "variance/reinforce": -1.25},
              20: {"variance/rebar": -3.5, "variance/reinforce": -1.0}}
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step, m in values.items():
            f.write(json.dumps({"split": "train", "step": step, "epoch": 0, "time": 0.0,
                                "metrics": {"loss/L_k": -100.0 + step, **m}}) + "\n")
            f.write(json.dumps({"split": "test", "step": step, "epoch": 0, "time": 0.0,
                                "metrics": {"loss/L_k": -101.0 + step}}) + "\n")
    out = tmp_path / "reports"
    assert report_main(["--exp", "exp", "--root", str(tmp_path / "runs"), "--output", str(out),
                        "--variance_tracking", "--experiment_file", "none"]) == 0
    folder = out / "exp"
    pngs = list(folder.glob("variance-tracking*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 1000
    table = pd.read_csv(folder / (pngs[0].stem + ".csv"))
    got = {(r.estimator, int(r.step)): r.value for r in table.itertuples()}
    want = {(k.split("/", 1)[1], s): v for s, m in values.items() for k, v in m.items()}
    assert got == want
    assert "variance-tracking" in (folder / "index.html").read_text()


def test_an_estimator_that_cannot_run_on_the_model_fails_at_setup(tmp_path, data_root):
    argv = ["--dataset", "mnist", "--mini", "--model", "vae", "--N", "4", "--hdim", "16", "--nlayers", "1",
            "--bs", "500", "--nsteps", "2", "--iw_test", "4", "--iw_valid", "4", "--max_eval", "10", "--silent",
            "--no_tensorboard", "--no_flush_denormal", "--grad_bs", "4",
            "--track_variance", "reinforce,arm"] + _common(tmp_path, data_root)
    assert main(argv) == 1
    status = json.loads((tmp_path / "runs" / "t" / compute_run_id(parse_run_args(argv)) / "status.json").read_text())
    assert status["status"] == "failed" and status["step"] == 0
    assert "--track_variance arm" in status["error"] and "Bernoulli" in status["error"]
