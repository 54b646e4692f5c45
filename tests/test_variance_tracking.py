"""run.py --track_variance (REBAR's variance comparison: one trajectory, shadow-trained estimators,
moving-average natural-log variance), its report figure, --architecture, the REBAR protocol flags; the
log-variance helper ovis.analysis.variance_tracking.log_gradient_variances."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

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
                                                                     "--architecture", "dense",
                                                                     "--adam_beta2", "0.999",
                                                                     "--track_variance_decay", "0.999"]))
    assert compute_run_id(a) != compute_run_id(parse_run_args(base + ["--estimator_lr_ratio", "10"]))
    assert compute_run_id(a) != compute_run_id(parse_run_args(base + ["--adam_beta2", "0.99999"]))
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
    tracked = _run(tmp_path, data_root, ["--track_variance", TRACKED], exp="tracked")
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


def test_tracker_logs_the_debiased_moving_average_variance():
    r"""The logged number is the natural log of the mean over ALL the model's coordinates of
    m2 - m1^2, m1 / m2 the moving averages (decay d, debiased by 1 - d^t) of the per-step gradient
    and its square, recomputed here from known gradients (the training estimator's, read from .grad)."""
    from ovis.estimators import build_estimator
    from ovis.testing import BernoulliToyModel
    from ovis.training.variance import VarianceTracker

    model = BernoulliToyModel()
    est = build_estimator("reinforce")
    tracker = VarianceTracker({"reinforce": est}, est, model, lambda ps: torch.optim.Adam(ps), decay=0.6)
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(0)
    steps = [torch.randn(P, generator=g, dtype=torch.float64) for _ in range(3)]
    assert math.isnan(tracker.log_variances()["variance/reinforce"])
    for t, flat in enumerate(steps):
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        tracker.observe(torch.zeros(2, 4), {}, t)
    m1 = sum(0.4 * 0.6 ** (2 - t) * s for t, s in enumerate(steps)) / (1 - 0.6 ** 3)
    m2 = sum(0.4 * 0.6 ** (2 - t) * s * s for t, s in enumerate(steps)) / (1 - 0.6 ** 3)
    expected = math.log(float((m2 - m1 * m1).mean()))
    assert tracker.log_variances()["variance/reinforce"] == pytest.approx(expected, rel=1e-5)
    # resumable: the state round-trips
    other = VarianceTracker({"reinforce": est}, est, model, lambda ps: torch.optim.Adam(ps), decay=0.6)
    other.load_state_dict(tracker.state_dict())
    assert other.log_variances() == tracker.log_variances()


def test_shadows_train_their_own_parameters_and_nvil_is_unscaled(tmp_path, data_root):
    r"""In a run with --track_variance, every shadow estimator's own parameters move at every step
    (NVIL's baseline and running statistics, MuProp's eta's and baseline), the model and the
    training estimator are stepped by the run's optimiser only, and NVIL's tracked gradient is its
    phi-gradient multiplied back by the scale it applied."""
    from ovis.estimators import build_estimator
    from ovis.training.run import Trainer
    from ovis.training.rundir import RunDirectory
    from ovis.training.variance import unscaled_gradient

    argv = SBN + _common(tmp_path, data_root) + ["--track_variance", "nvil,muprop", "--nsteps", "3",
                                                  "--estimator_lr_ratio", "10", "--adam_beta2", "0.99999"]
    args = parse_run_args(argv)
    rd = RunDirectory(tmp_path / "rd")
    rd.create()
    tr = Trainer(args, rd, "rid")
    tr.device = torch.device("cpu")
    tr.setup()
    try:
        assert tr.optimizer.param_groups[1]["lr"] == pytest.approx(10 * args.lr)
        assert tr.optimizer.defaults["betas"][1] == 0.99999
        shadows = {k: v for k, v in tr.tracked.items() if v is not tr.estimator}
        assert sorted(shadows) == ["muprop", "nvil"]
        assert tr.tracker.optimizers["nvil"].param_groups[0]["lr"] == pytest.approx(10 * args.lr)
        before = {k: [p.detach().clone() for p in v.parameters()] for k, v in shadows.items()}
        assert len(before["muprop"]) > 2  # eta's (one per inference tensor) and the baseline
        for _ in range(2):
            tr.train_step()
        for k, est in shadows.items():
            moved = [not torch.equal(a, b) for a, b in zip(before[k], est.parameters())]
            assert all(moved), (k, moved)
        assert int(shadows["nvil"].updates) == 2  # trained in training mode, once a step
        got = tr.track_variance(tr.step)
        assert sorted(got) == ["variance/muprop", "variance/nvil", "variance/rebar"]
        assert all(math.isfinite(v) for v in got.values())
    finally:
        tr._close_logger()
    nvil = build_estimator("nvil", x_shape=(4,))
    nvil._applied_scale = torch.tensor(3.0)
    grads = [torch.ones(2), torch.ones(2)]
    out = unscaled_gradient(nvil, grads, ["inference_network.weight", "generative_model.weight"])
    assert torch.equal(out[0], 3 * torch.ones(2)) and torch.equal(out[1], torch.ones(2))
    other = build_estimator("rebar")
    assert unscaled_gradient(other, grads, ["inference_network.weight", "generative_model.weight"]) is grads


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
