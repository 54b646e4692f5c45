r"""The parts of a training run, each tested alone: the event schedule, the data order and
evaluation seeds, the run state in a checkpoint, the metric sinks and the log, the stop signal, the
device settings, the sample grids and the variance tracking.  (``run.py`` end to end:
tests/test_run.py, tests/test_run_resume.py.)"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys

import pytest
import torch

from ovis.training.checkpoint import (
    CheckpointError,
    check_run_id,
    load_resume_checkpoint,
    previous_path,
    restore_run_state,
    run_state,
    save_checkpoint,
)
from ovis.training.device import device_unavailable, resolve_device, torch_settings
from ovis.training.interrupt import RunInterrupted, StopSignal
from ovis.training.optimizers import build_optimizer
from ovis.training.rng import BatchOrder, epoch_permutation, eval_seed, eval_subset, forked_rng
from ovis.training.rundir import RunDirectory
from ovis.training.schedules import EventSchedule
from ovis.training.sinks import JsonlSink, TensorBoardSink, close_run_log, open_run_log, open_tensorboard
from ovis.training.sums import RunningSums


# ---------------------------------------------------------------------------------- schedule
def test_evaluations_at_every_period_and_at_the_end():
    s = EventSchedule(total_steps=10, eval_period=4)
    assert [t for t in range(12) if s.evaluates_at(t)] == [4, 8, 10]
    short = EventSchedule(total_steps=3, eval_period=100)  # shorter than one period: once, at the end
    assert [t for t in range(5) if short.evaluates_at(t)] == [3]
    assert EventSchedule(total_steps=0, eval_period=5).evaluates_at(0)  # nothing to train: evaluate once


def test_an_evaluation_is_not_redone_after_a_resume():
    s = EventSchedule(total_steps=10, eval_period=4)
    assert s.evaluation_due(4, last_eval_step=-1)
    assert not s.evaluation_due(4, last_eval_step=4)  # the checkpoint of the evaluation at 4
    assert s.evaluation_due(8, last_eval_step=4) and not s.evaluation_due(5, last_eval_step=4)

    def evaluated(start: int, last_eval: int) -> list:  # the loop of Trainer.loop, steps only
        out, t = [], start
        while True:
            if s.evaluation_due(t, last_eval):
                out.append(t)
                last_eval = t
            if t >= s.total_steps:
                return out
            t += 1

    full = evaluated(0, -1)
    for cut in range(11):  # resumed from a checkpoint at any step: the later evaluations are the same
        last = max([t for t in full if t <= cut], default=-1)
        assert evaluated(cut, last) == [t for t in full if t > cut], cut


def test_checkpoints_by_step_or_time_but_not_at_an_evaluation():
    s = EventSchedule(total_steps=20, eval_period=6, log_period=5, checkpoint_steps=4, checkpoint_every=0)
    assert [t for t in range(1, 21) if s.checkpoint_due(t, 0.0)] == [4, 8, 16]  # 12 and 20 evaluate
    assert [t for t in range(1, 21) if s.progress_due(t)] == [5, 10, 15, 20]
    timed = EventSchedule(total_steps=20, eval_period=6, checkpoint_every=30.0)
    assert timed.checkpoint_due(7, 30.0) and not timed.checkpoint_due(7, 29.9) and not timed.checkpoint_due(6, 99)
    assert not EventSchedule(total_steps=20, eval_period=6).checkpoint_due(7, 1e9)  # both off
    with pytest.raises(ValueError, match="EventSchedule"):
        EventSchedule(total_steps=10, eval_period=0)


# ---------------------------------------------------------------------------------- data order and seeds
def test_batch_order_is_a_function_of_seed_and_step():
    order = BatchOrder(n=10, batch_size=3, steps_per_epoch=3, seed=5)
    epoch0 = torch.cat([order.indices(t) for t in range(3)])
    assert epoch0.tolist() == epoch_permutation(10, 5, 0)[:9].tolist()
    assert len(set(epoch0.tolist())) == 9  # no point twice in an epoch
    later = [order.indices(t).tolist() for t in range(3, 8)]
    resumed = BatchOrder(n=10, batch_size=3, steps_per_epoch=3, seed=5)  # a new process at step 3
    assert [resumed.indices(t).tolist() for t in range(3, 8)] == later
    assert torch.cat([order.indices(t) for t in range(3, 6)]).tolist() != epoch0.tolist()  # reshuffled
    assert BatchOrder(10, 3, 3, seed=6).indices(0).tolist() != order.indices(0).tolist()
    with pytest.raises(ValueError, match="BatchOrder"):
        BatchOrder(n=5, batch_size=3, steps_per_epoch=2, seed=0)


def test_evaluation_subsets_and_forked_draws_leave_training_alone():
    a = eval_subset(100, 10, salt=1)
    assert a.tolist() == eval_subset(100, 10, salt=1).tolist() and len(set(a.tolist())) == 10
    assert a.tolist() != eval_subset(100, 10, salt=2).tolist() and len(eval_subset(4, 10, 0)) == 4
    assert eval_seed(1, 5) != eval_seed(1, 6) and eval_seed(1, 5) != eval_seed(2, 5)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with forked_rng(torch.device("cpu"), eval_seed(1, 5)):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)  # the global stream is untouched
    with forked_rng(torch.device("cpu"), eval_seed(1, 5)):
        assert torch.equal(torch.rand(3), inside)  # and the evaluation's is reproducible


# ---------------------------------------------------------------------------------- checkpoint
class _Est(torch.nn.Module):  # an estimator with a parameter of its own (a baseline)
    def __init__(self) -> None:
        super().__init__()
        self.baseline = torch.nn.Parameter(torch.zeros(2))


def _parts(seed: int):
    torch.manual_seed(seed)
    model, est = torch.nn.Linear(3, 2), _Est()
    opt = build_optimizer("adam", [{"params": list(model.parameters()), "lr": 0.1},
                                   {"params": list(est.parameters()), "lr": 0.01}])
    return model, est, opt


def _train(model, est, opt, sums: RunningSums, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(4, 3)
        loss = (model(x) - est.baseline).pow(2).mean()
        loss.backward()
        opt.step()
        sums.add(*RunningSums.step_means({"loss": {"L_k": -loss.detach().expand(4)}}))


def test_run_state_round_trip_continues_exactly(tmp_path):
    model, est, opt = _parts(0)
    sums, log_sums = RunningSums(), RunningSums()
    _train(model, est, opt, sums, 3)
    state = run_state(model=model, estimator=est, optimizer=opt, step=3, last_eval_step=2,
                      best={"value": -1.5, "step": 2}, elapsed=4.5, sums=sums, log_sums=log_sums, run_id="r1")
    save_checkpoint(tmp_path / "last.pt", state, keep_previous=True)
    _train(model, est, opt, sums, 2)  # the uninterrupted run
    model2, est2, opt2 = _parts(1)  # a new process: other initial values and RNG
    sums2, log_sums2 = RunningSums(), RunningSums()
    ckpt, used = load_resume_checkpoint(tmp_path / "last.pt",
                                        check=lambda c: check_run_id(c, "r1", tmp_path / "last.pt"))
    assert used == tmp_path / "last.pt"
    loop = restore_run_state(ckpt, model=model2, estimator=est2, optimizer=opt2, sums=sums2, log_sums=log_sums2,
                             device=torch.device("cpu"))
    assert loop == {"step": 3, "last_eval_step": 2, "best": {"value": -1.5, "step": 2}, "elapsed": 4.5}
    _train(model2, est2, opt2, sums2, 2)
    for a, b in zip(list(model.parameters()) + list(est.parameters()),
                    list(model2.parameters()) + list(est2.parameters())):
        assert torch.equal(a, b)
    assert sums2.means() == sums.means() and sums2.count == 5


def test_resume_falls_back_to_the_previous_checkpoint_and_rejects_another_run(tmp_path):
    model, est, opt = _parts(0)
    sums = RunningSums()

    def save(step: int, run_id: str = "r1") -> None:
        save_checkpoint(tmp_path / "last.pt", run_state(
            model=model, estimator=est, optimizer=opt, step=step, last_eval_step=-1, best={"value": None},
            elapsed=0.0, sums=sums, log_sums=RunningSums(), run_id=run_id), keep_previous=True)

    save(1)
    save(2)
    assert previous_path(tmp_path / "last.pt") == tmp_path / "last.prev.pt"
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])  # a kill during the write
    warnings = []
    ckpt, used = load_resume_checkpoint(tmp_path / "last.pt", warn=warnings.append)
    assert used == tmp_path / "last.prev.pt" and ckpt["step"] == 1
    assert len(warnings) == 1 and "last.pt" in warnings[0] and "previous good checkpoint" in warnings[0]
    with pytest.raises(CheckpointError, match="--rf"):
        load_resume_checkpoint(tmp_path / "last.pt", check=lambda c: check_run_id(c, "other", tmp_path / "last.pt"))
    assert load_resume_checkpoint(tmp_path / "nothing.pt") == (None, None)  # a fresh run


# ---------------------------------------------------------------------------------- sinks and log
def _lines(step: int) -> list:
    return [{"split": s, "step": step, "epoch": step / 2, "time": 1.0,
             "metrics": {"loss/L_k": -90.0 - i, "loss/ess": math.nan}} for i, s in enumerate(("train", "valid", "test"))]


def test_jsonl_sink_appends_complete_lines(tmp_path):
    rd = RunDirectory(tmp_path / "run")
    rd.create()
    sink = JsonlSink(rd)
    sink.evaluation(_lines(2))
    sink.progress(3, {"loss/L_k": 1.0})  # progress is not a metrics.jsonl line
    sink.evaluation(_lines(4))
    raw = rd.metrics_path.read_text()  # complete (flushed) before the sink is closed
    assert raw.endswith("\n") and len(raw.splitlines()) == 6
    assert [(ln["split"], ln["step"]) for ln in rd.read_metrics()] == [
        (s, t) for t in (2, 4) for s in ("train", "valid", "test")]
    assert math.isnan(json.loads(raw.splitlines()[0])["metrics"]["loss/ess"])
    sink.close()


def test_tensorboard_sink_writes_finite_scalars_and_is_optional(tmp_path, monkeypatch):
    class Writer:
        def __init__(self) -> None:
            self.scalars, self.closed = [], False

        def add_scalar(self, tag, value, step) -> None:
            self.scalars.append((tag, value, step))

        def close(self) -> None:
            self.closed = True

    w = Writer()
    sink = TensorBoardSink(w)
    sink.evaluation(_lines(2))
    sink.progress(3, {"loss/L_k": -88.0, "info/steps_per_sec": math.inf, "note": "text"})
    sink.close()
    assert w.scalars == [("train/loss/L_k", -90.0, 2), ("valid/loss/L_k", -91.0, 2), ("test/loss/L_k", -92.0, 2),
                         ("running/loss/L_k", -88.0, 3)]
    assert w.closed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed: no sink, no error
    assert open_tensorboard(tmp_path / "tb") is None


def test_run_log_writes_the_file_and_closes(tmp_path, capsys):
    log = open_run_log("ovis.test.parts", tmp_path / "run.log")
    log.info("hello %s", "there")
    close_run_log(log)
    assert "INFO hello there" in (tmp_path / "run.log").read_text()
    assert "hello there" in capsys.readouterr().out and log.handlers == [] and not log.propagate
    assert logging.getLogger("ovis.test.parts").level == logging.INFO


# ---------------------------------------------------------------------------------- stop signal
def test_stop_signal_between_steps_then_forced():
    stop = StopSignal()
    stop.check()  # nothing received
    stop.handle(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as e:
        stop.check()
    assert e.value.signum == signal.SIGTERM and not e.value.forced and "SIGTERM" in str(e.value)
    with pytest.raises(RunInterrupted) as e:
        stop.handle(signal.SIGINT)  # a second signal stops at once
    assert e.value.forced and e.value.signum == signal.SIGINT


def test_stop_signal_handler_installed_only_inside_the_block():
    stop = StopSignal()
    before = signal.getsignal(signal.SIGTERM)
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------------- device
def test_device_resolution_and_settings_restored():
    assert resolve_device("cpu") == torch.device("cpu") and device_unavailable("cpu") is None
    with pytest.raises(ValueError, match="--device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        assert device_unavailable("cuda:0").startswith("run.py: error: argument --device: cuda:0")
    det = torch.are_deterministic_algorithms_enabled()
    with torch_settings(torch.device("cpu"), deterministic=True, flush_denormal=True, retain_memory=False):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.tensor([1e-40]).mul(1.0).item() == 0.0  # a float32 denormal is flushed
    assert torch.are_deterministic_algorithms_enabled() == det
    assert torch.tensor([1e-40]).mul(1.0).item() != 0.0


# ---------------------------------------------------------------------------------- samples and variance
def _sbn():
    from ovis.models import build_model
    from ovis.training.arguments import parse_run_args

    class Data:
        name, x_shape, train_mean, ground_truth = "binmnist", torch.Size((1, 4, 4)), torch.full((1, 4, 4), 0.3), None

    torch.manual_seed(0)
    return build_model(parse_run_args(["--model", "sbm", "--N", "3", "--nlayers", "0"]), Data())


def test_sample_grids_of_an_image_model(tmp_path):
    from matplotlib import image as mpimg

    from ovis.training.samples import image_shape, save_sample_grids

    model = _sbn()
    assert image_shape((1, 4, 4), model) == (4, 4) and image_shape((16,), model) is None
    assert image_shape((1, 4, 4), torch.nn.Linear(2, 2)) is None  # no prior to sample
    x = torch.bernoulli(torch.full((8, 1, 4, 4), 0.3))
    save_sample_grids(model, (4, 4), tmp_path, 7, x)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["prior-step000000007.png", "prior.png", "reconstruction-step000000007.png",
                     "reconstruction.png"]
    assert mpimg.imread(tmp_path / "prior.png").shape[:2] == (8 * 5 + 1, 8 * 5 + 1)
    assert mpimg.imread(tmp_path / "reconstruction.png").shape[:2] == (2 * 5 + 1, 8 * 5 + 1)


def test_tracked_variances_leave_the_rng_alone():
    r"""Building the tracked estimators and tracking their variance (``VarianceTracker``, the shadows
    trained online; its maths is tested in test_variance_tracking) never move the global stream."""
    import ovis.estimators as estimators
    from ovis.training.variance import VarianceTracker, build_tracked_estimators

    model = _sbn()
    x = torch.bernoulli(torch.full((4, 1, 4, 4), 0.3))
    training = estimators.build_estimator("reinforce", iw=3)
    assert build_tracked_estimators([], "reinforce", training, mc=1, iw=3, x_shape=(1, 4, 4), seed=0,
                                    device=torch.device("cpu"), model=model, check_batch=lambda: x, runtime={}) == {}
    torch.manual_seed(1)
    state = torch.get_rng_state()
    tracked = build_tracked_estimators(["vimco-arithmetic"], "reinforce", training, mc=1, iw=3, x_shape=(1, 4, 4),
                                       seed=0, device=torch.device("cpu"), model=model,
                                       check_batch=lambda: x, runtime={})
    assert list(tracked) == ["reinforce", "vimco-arithmetic"] and tracked["reinforce"] is training
    assert torch.equal(torch.get_rng_state(), state)  # building never moves the global stream
    assert training.training and tracked["vimco-arithmetic"].training  # eval() only while checking
    tracker = VarianceTracker(tracked, training, model, lambda ps: torch.optim.Adam(ps, lr=1e-3), decay=0.5, seed=11)
    for step in range(3):
        model.zero_grad()
        training(model, x)[0].backward()
        state = torch.get_rng_state()
        tracker.observe(x, {}, step)
        assert torch.equal(torch.get_rng_state(), state)  # the shadows draw from their own forks
    got = tracker.log_variances()
    assert sorted(got) == ["variance/reinforce", "variance/vimco-arithmetic"]
    assert all(math.isfinite(v) for v in got.values()), got
