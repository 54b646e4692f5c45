r"""One training run (``run.py``): parse, train, evaluate, checkpoint, resume.

``main(argv) -> exit code``:

* ``2``: invalid command line (one line on stderr naming the flag and the fix, with the usage for
  argparse's own errors; no run directory is written);
* ``0``: the run finished (``status.json`` says ``success``);
* ``1``: an exception (``failed``, with the error and its traceback in ``status.json``); a known
  failure (:data:`KNOWN_FAILURES`: a data set missing or corrupt, no usable checkpoint) is one line
  on stderr naming the input and the fix, without traceback;
* ``130`` / ``143``: Ctrl-C / SIGTERM: a checkpoint is saved and the status is ``aborted``
  (:mod:`ovis.training.interrupt`);
* ``3``: another process is running the same run directory (nothing is changed).

Starting a run whose directory (:mod:`ovis.training.rundir`) holds a checkpoint resumes it
(:mod:`ovis.training.checkpoint`): the lines of ``metrics.jsonl`` beyond the checkpoint's step are
dropped and the run continues exactly as an uninterrupted run with the same seed would.  Data
order, evaluation subsets and evaluation draws: :mod:`ovis.training.rng`; learning-rate and Renyi
schedules and the steps of evaluations, progress records and checkpoints:
:mod:`ovis.training.schedules`; records: :mod:`ovis.training.sinks`.

An evaluation writes three lines to ``metrics.jsonl``:

* ``train``: running means of the training diagnostics since the previous evaluation
  (``loss/L_k`` with the run's ``K``, ``loss/elbo``, ``loss/kl``, ``loss/kl_q_p`` (= ``L_k - elbo``),
  ``loss/ess``, ``loss/log_px``, estimator entries ``<group>/<name>``), ``info/alpha``,
  ``info/beta``, ``info/lr``, the gradient statistics ``grads/variance``, ``grads/snr``,
  ``grads/dsnr``, ``grads/magnitude`` (``grad_samples`` draws on ``grad_bs`` training points,
  parameters filtered by ``grad_key``), ``active_units/au`` (``mc_au_analysis`` draws on
  ``npoints_au_analysis`` training points), the bound on a fixed training subset (``max_eval``
  points, ``iw_test`` particles) as ``eval/<name>``, the model's ``extra_metrics`` and, with
  ``--track_variance``, ``variance/<id>`` (:mod:`ovis.training.variance`);
* ``valid``: ``loss/L_k`` with ``iw_valid`` particles, ``loss/elbo``, ``loss/kl``, ``loss/kl_q_p``,
  ``loss/ess`` and the model's extra metrics, on at most ``max_eval`` validation points;
* ``test``: the same with ``iw_test`` particles on at most ``max_eval`` test points.

Every bound line also holds the distortion ``loss/distortion`` (:math:`D = -E_q \log p(x|z)`) and
the rate ``loss/rate`` (:math:`R = E_q[\log q(z|x) - \log p(z)]`, every layer), with
:math:`D + R = -\mathrm{ELBO}` (:mod:`ovis.training.evaluation`).  Image data also get sample grids
(:mod:`ovis.training.samples`) unless ``--no_samples``.  The best checkpoint (``best.pt``) is
chosen on the validation ``L_K``; the test set is reported, never used to choose.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

import ovis
from ovis.datasets.errors import DatasetCorruptError, DatasetNotFoundError
from ovis.training.arguments import RunArgumentError, parse_run_args
from ovis.training.checkpoint import (
    CheckpointError,
    check_run_id,
    load_resume_checkpoint,
    restore_run_state,
    run_state,
    save_checkpoint,
)
from ovis.training.device import device_unavailable, resolve_device, torch_settings
from ovis.training.evaluation import active_units, batch_to_device, evaluate_bound, fetch_batch
from ovis.training.interrupt import RunInterrupted, StopSignal
from ovis.training.optimizers import build_optimizer
from ovis.training.rng import BatchOrder, eval_seed, eval_subset, forked_rng
from ovis.training.rundir import RunDirectory, atomic_write_json, compute_run_id
from ovis.training.samples import image_shape, save_sample_grids
from ovis.training.schedules import EventSchedule, alpha_at, lr_factor_at
from ovis.training.sinks import JsonlSink, MetricSink, close_run_log, open_run_log, open_tensorboard
from ovis.training.sums import RunningSums
from ovis.training.variance import VarianceTracker, build_tracked_estimators

__all__ = ["main", "Trainer", "KNOWN_FAILURES"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


def _finite(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


class Trainer:
    r"""The training run behind :func:`main` (one instance per run directory): builds the run's
    parts, runs the loop and records the outcome in ``status.json``.

    Args:
        args: the parsed ``run.py`` namespace (:func:`ovis.training.arguments.parse_run_args`).
        rundir: the run directory.
        run_id: the run id.
        argv: the command line (recorded in ``config.json``).
    """

    def __init__(self, args: argparse.Namespace, rundir: RunDirectory, run_id: str,
                 argv: Sequence[str] = ()) -> None:
        self.args = args
        self.rundir = rundir
        self.run_id = run_id
        self.argv = list(argv)
        self.job_id = os.environ.get("OVIS_JOB_ID") or None
        self.step = 0
        self.stop = StopSignal()
        self.sinks: List[MetricSink] = []
        self._ready = False
        self.log = open_run_log(f"ovis.run.{self.run_id}.{id(self)}", self.rundir.log_path)

    def _close_logger(self) -> None:
        close_run_log(self.log)

    def check_stop(self) -> None:
        r"""Raise :class:`~ovis.training.interrupt.RunInterrupted` when a signal was received
        (called between steps and between evaluation batches)."""
        self.stop.check()

    def _forked_rng(self, step: int) -> ContextManager[None]:
        return forked_rng(self.device, eval_seed(self.args.seed, step))

    # ------------------------------------------------------------------ config
    def _write_config(self, data: Any = None) -> None:
        args = self.args
        cfg: Dict[str, Any] = dict(vars(args))
        cfg["run"] = {
            "run_id": self.run_id,
            "version": ovis.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "job_id": self.job_id,
            "argv": self.argv,
            "device": str(getattr(self, "device", "")),
        }
        cfg["version"] = ovis.__version__
        cfg["job_id"] = self.job_id
        if data is not None:
            cfg["run"].update({"nsteps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                               "eval_period_steps": self.eval_period,
                               "parameters": sum(p.numel() for p in self.model.parameters())})
            cfg["data"] = {"name": data.name, "x_shape": list(data.x_shape),
                           "sizes": {s: len(getattr(data, s)) for s in ("train", "valid", "test")},
                           "description": data.description}
        atomic_write_json(self.rundir.config_path, cfg)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        r"""Load the data, build the model, estimator and optimiser; restore a checkpoint."""
        import ovis.datasets as datasets
        import ovis.estimators as estimators
        import ovis.models as models
        from ovis.training.arguments import estimator_lr, parse_tracked_estimators

        args = self.args
        torch.manual_seed(args.seed)
        np.random.seed(args.seed % (2 ** 32))
        random.seed(args.seed)
        binarization = getattr(args, "binarization", "default")  # absent from configs made before it
        self.data = datasets.load_dataset(args.dataset, args.data_root, mini=args.mini,
                                          binarization=None if binarization == "default" else binarization,
                                          split=getattr(args, "split", "50k"))
        data = self.data
        if len(data.train) < 1 or len(data.valid) < 1 or len(data.test) < 1:
            raise ValueError(f"data set {args.dataset!r} has an empty split "
                             f"(train {len(data.train)}, valid {len(data.valid)}, test {len(data.test)})")
        self.model = models.build_model(args, data).to(self.device)
        if getattr(args, "reward_transforms", ""):  # reinforce with a chain of reward transforms
            from ovis.estimators.reward_transforms import ReinforceTransformed

            self.estimator = ReinforceTransformed(mc=args.mc, iw=args.iw, reward_transforms=args.reward_transforms,
                                                  x_shape=tuple(data.x_shape))
        else:
            self.estimator = estimators.build_estimator(args.estimator, mc=args.mc, iw=args.iw,
                                                        x_shape=data.x_shape)
        self.estimator.to(self.device)
        bind = getattr(self.estimator, "bind", None)
        if callable(bind):  # parameters that depend on the model (the REBAR line's per-tensor eta's)
            bind(self.model)
        # --compile: the training estimation (model pass, estimator maths, surrogate) as one compiled
        # graph; the modules themselves are not wrapped, so parameter names and checkpoints are
        # those of the eager run
        self._compiled = (estimators.base.compile_estimator(self.estimator, self.model) if args.compile
                          else None)
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad],
                   "lr": args.lr, "name": "model"}]
        est_params = [p for p in self.estimator.parameters() if p.requires_grad]
        if est_params:
            groups.append({"params": est_params, "lr": estimator_lr(args), "name": "estimator"})
        if not groups[0]["params"]:
            raise ValueError(f"model {type(self.model).__name__} has no trainable parameter")
        self.base_lrs = [g["lr"] for g in groups]
        self.optimizer = build_optimizer(args.optimizer, groups, adam_beta2=getattr(args, "adam_beta2", 0.999))

        n = len(data.train)
        self.batch_size = min(args.bs, n)
        self.steps_per_epoch = max(1, n // self.batch_size)
        self.total_steps = args.epochs * self.steps_per_epoch if args.epochs > 0 else args.nsteps
        self.eval_period = args.eval_freq * self.steps_per_epoch
        self.schedule = EventSchedule(self.total_steps, self.eval_period, args.log_freq, args.checkpoint_steps,
                                      args.checkpoint_every)
        self.batches = BatchOrder(n, self.batch_size, self.steps_per_epoch, args.seed)
        self.idx_train_eval = eval_subset(n, args.max_eval, 0)
        self.idx_valid = eval_subset(len(data.valid), args.max_eval, 1)
        self.idx_test = eval_subset(len(data.test), args.max_eval, 2)
        self.idx_grad = eval_subset(n, args.grad_bs, 3)
        self.idx_au = eval_subset(n, args.npoints_au_analysis, 4)
        self.tracked = build_tracked_estimators(
            parse_tracked_estimators(getattr(args, "track_variance", "") or ""), args.estimator, self.estimator,
            mc=args.mc, iw=args.iw, x_shape=data.x_shape, seed=args.seed, device=self.device, model=self.model,
            check_batch=lambda: batch_to_device(fetch_batch(data.train, self.idx_grad[:2]), self.device),
            runtime=self.runtime(self.step))
        self.tracker: Optional[VarianceTracker] = None
        if self.tracked:
            shadow_lr = estimator_lr(args)
            self.tracker = VarianceTracker(
                self.tracked, self.estimator, self.model,
                lambda ps: build_optimizer(args.optimizer, [{"params": ps, "lr": shadow_lr, "name": "estimator"}],
                                           adam_beta2=getattr(args, "adam_beta2", 0.999)),
                decay=getattr(args, "track_variance_decay", 0.999), seed=args.seed, device=self.device)

        self.last_eval_step = -1
        self.best: Dict[str, Any] = {"value": None, "step": None}
        self.elapsed = 0.0
        self.sums = RunningSums()  # since the last evaluation
        self.log_sums = RunningSums()  # since the last progress log
        self.resumed = False
        ckpt, used = load_resume_checkpoint(self.rundir.last_path, map_location="cpu", check=self._check_owner,
                                            warn=self.log.warning)
        if ckpt is not None:
            self._restore(ckpt, used)
            self.resumed = True
        dropped = self.rundir.truncate_metrics(self.step if self.resumed else -1)
        if dropped:
            self.log.info(f"metrics.jsonl: dropped {dropped} line(s) beyond the checkpoint (step {self.step})")

    def _state(self) -> Dict[str, Any]:
        state = run_state(model=self.model, estimator=self.estimator, optimizer=self.optimizer, step=self.step,
                          last_eval_step=self.last_eval_step, best=self.best, elapsed=self.elapsed_now(),
                          sums=self.sums, log_sums=self.log_sums, run_id=self.run_id)
        if getattr(self, "tracker", None) is not None:
            state["variance_tracker"] = self.tracker.state_dict()  # type: ignore[union-attr]
        return state

    def _check_owner(self, ckpt: Mapping[str, Any]) -> None:
        check_run_id(ckpt, self.run_id, self.rundir.last_path)

    def _restore(self, ckpt: Mapping[str, Any], path: Path) -> None:
        r"""Continue from ``ckpt`` (read from ``path``; its owner already checked on loading)."""
        loop = restore_run_state(ckpt, model=self.model, estimator=self.estimator, optimizer=self.optimizer,
                                 sums=self.sums, log_sums=self.log_sums, device=self.device)
        self.step, self.last_eval_step = loop["step"], loop["last_eval_step"]
        if getattr(self, "tracker", None) is not None and "variance_tracker" in ckpt:
            self.tracker.load_state_dict(ckpt["variance_tracker"])  # type: ignore[union-attr]
        self.best, self.elapsed = loop["best"], loop["elapsed"]
        self.log.info(f"resumed from {path} at step {self.step}")

    def _save_last_checkpoint(self) -> None:
        save_checkpoint(self.rundir.last_path, self._state(), keep_previous=True)

    def save_last(self) -> None:
        r"""Write the resumable checkpoint ``last.pt`` (the previous good one kept) and the status
        ``running`` at the current step.
        """
        self._save_last_checkpoint()
        self._last_ckpt_time = time.monotonic()
        self.rundir.write_status("running", self.step)

    def elapsed_now(self) -> float:
        r"""Training seconds so far: those of earlier sessions (restored on resume) plus this session's."""
        return self.elapsed + (time.monotonic() - self._t0)

    # ------------------------------------------------------------------ training
    def runtime(self, step: int) -> Dict[str, Any]:
        r"""The estimator's runtime parameters at ``step`` (Renyi ``alpha`` from its warm-up schedule)."""
        a = self.args
        return {"alpha": alpha_at(step, a.alpha, a.warmup, a.alpha_init, a.warmup_mode, a.warmup_offset),
                "beta": a.beta, "freebits": a.freebits, "tau": a.tau}

    def train_step(self) -> None:
        r"""One optimisation step on the batch of the current step."""
        step = self.step
        factor = lr_factor_at(step, self.total_steps, self.args.lr_reduce_steps, self.args.lr_reduce_factor)
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * factor
        x = batch_to_device(fetch_batch(self.data.train, self.batches.indices(step)), self.device)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self._compiled is not None:
            loss, diagnostics, _ = self._compiled(x, **self.runtime(step))
            loss.backward()
        else:
            loss, diagnostics, _ = self.estimator(self.model, x, backward=True, **self.runtime(step))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite surrogate loss ({loss.item()}) at step {step}: lower --lr, or check the "
                "estimator / model settings")
        if self.tracker is not None:  # the tracked estimators' gradients at this step (run.py --track_variance)
            self.tracker.observe(x, self.runtime(step), step)
        self.optimizer.step()
        self.step += 1
        names, means = RunningSums.step_means(diagnostics)
        self.sums.add(names, means)
        self.log_sums.add(names, means)

    def _log_training(self) -> None:
        means = self.log_sums.means()
        self.log_sums = RunningSums()
        rate = self._steps_since_log / max(time.monotonic() - self._t_log, 1e-9)
        self._steps_since_log, self._t_log = 0, time.monotonic()
        progress = {**means, "info/steps_per_sec": rate, "info/alpha": self.runtime(self.step)["alpha"]}
        for sink in self.sinks:
            sink.progress(self.step, progress)
        if self.pbar is not None and "loss/L_k" in means:
            self.pbar.set_postfix({"L_k": f"{means['loss/L_k']:.3f}", "it/s": f"{rate:.1f}"}, refresh=False)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> List[Dict[str, Any]]:
        r"""The three metric lines of an evaluation at the current step (see the module docstring)."""
        a, step = self.args, self.step
        epoch = step / self.steps_per_epoch
        t = self.elapsed_now()
        train = self.sums.means()
        rt = self.runtime(step)
        train.update({"info/alpha": rt["alpha"], "info/beta": a.beta,
                      "info/lr": self.optimizer.param_groups[0]["lr"]})
        self.model.eval()
        with self._forked_rng(step):
            if a.grad_samples > 0:
                from ovis.analysis.gradients import get_gradients_statistics

                x = batch_to_device(fetch_batch(self.data.train, self.idx_grad), self.device)
                was_training = self.estimator.training
                self.estimator.eval()  # no running-statistics update (nvil, reward transforms)
                try:
                    stats, _ = get_gradients_statistics(self.estimator, self.model, x, mc_samples=a.grad_samples,
                                                        key_filter=a.grad_key, epsilon=a.grad_epsilon, **rt)
                finally:
                    self.estimator.train(was_training)
                train.update({f"grads/{k}": float(v) for k, v in stats.items()})
                self.check_stop()
            if a.mc_au_analysis > 0 and a.npoints_au_analysis > 0:
                train.update(active_units(self.model, self.data.train, self.idx_au, a.mc_au_analysis,
                                          a.eval_chunk, self.device, tau=a.tau, stop_check=self.check_stop))
            sub = evaluate_bound(self.model, self.data.train, self.idx_train_eval, a.test_bs, a.iw_test,
                                 a.eval_chunk, self.device, tau=a.tau, stop_check=self.check_stop)
            for k, v in sub.items():
                train[k.replace("loss/", "eval/", 1) if k.startswith("loss/") else k] = v
            valid = evaluate_bound(self.model, self.data.valid, self.idx_valid, a.valid_bs, a.iw_valid,
                                   a.eval_chunk, self.device, tau=a.tau, stop_check=self.check_stop)
            test = evaluate_bound(self.model, self.data.test, self.idx_test, a.test_bs, a.iw_test,
                                  a.eval_chunk, self.device, tau=a.tau, stop_check=self.check_stop)
            self._save_samples(step)
        if self.tracked:
            train.update(self.track_variance(step))
        return [{"split": s, "step": int(step), "epoch": epoch, "time": t, "metrics": m}
                for s, m in (("train", train), ("valid", valid), ("test", test))]

    def track_variance(self, step: int) -> Dict[str, float]:
        r"""``{"variance/<id>": natural log of the moving-average gradient variance}`` of every
        tracked estimator (:class:`~ovis.training.variance.VarianceTracker`, updated at every
        training step)."""
        return {} if self.tracker is None else self.tracker.log_variances()

    def _save_samples(self, step: int) -> None:
        if getattr(self.args, "no_samples", False):
            return
        shape = image_shape(self.data.x_shape, self.model)
        if shape is None:
            return
        x = None
        if str(getattr(self.args, "task", "density") or "density") == "density":
            # (a conditional model's p(x_bot | z) does not reconstruct x)
            x = batch_to_device(fetch_batch(self.data.valid, self.idx_valid[:32]), self.device)
        save_sample_grids(self.model, shape, self.rundir.samples_path, step, x, tau=getattr(self.args, "tau", None))

    def _record_evaluation(self, lines: List[Dict[str, Any]]) -> None:
        for sink in self.sinks:
            sink.evaluation(lines)
        valid = lines[1]["metrics"]["loss/L_k"]
        test = lines[2]["metrics"]["loss/L_k"]
        self.log.info(
            f"eval step {self.step}/{self.total_steps} epoch {lines[0]['epoch']:.2f}: "
            f"train L_{self.args.iw} {lines[0]['metrics'].get('loss/L_k', float('nan')):.4f} | "
            f"valid L_{self.args.iw_valid} {valid:.4f} | test L_{self.args.iw_test} {test:.4f}")
        if math.isfinite(valid) and (self.best["value"] is None or valid > self.best["value"]):
            self.best = {"value": float(valid), "step": int(self.step), "test": _finite(float(test))}
            save_checkpoint(self.rundir.best_path, {
                "model": self.model.state_dict(), "step": int(self.step), "run_id": self.run_id,
                "valid": {k: float(v) for k, v in lines[1]["metrics"].items()},
                "test": {k: float(v) for k, v in lines[2]["metrics"].items()}})
        self.sums = RunningSums()
        self.last_eval_step = self.step
        self.save_last()

    # ------------------------------------------------------------------ main loop
    def loop(self) -> None:
        r"""Train to ``total_steps``, evaluating, recording and checkpointing as ``self.schedule`` says."""
        a, schedule = self.args, self.schedule
        self._last_ckpt_time = time.monotonic()
        self._t_log, self._steps_since_log = time.monotonic(), 0
        from tqdm import tqdm

        self.pbar = None if a.silent else tqdm(total=self.total_steps, initial=self.step, file=sys.stderr,
                                               desc=self.run_id[:40], dynamic_ncols=True, mininterval=1.0)
        try:
            while True:
                if schedule.evaluation_due(self.step, self.last_eval_step):
                    self._record_evaluation(self.evaluate())
                if self.step >= self.total_steps:
                    break
                self.check_stop()
                self.train_step()
                self._steps_since_log += 1
                if self.pbar is not None:
                    self.pbar.update(1)
                if schedule.progress_due(self.step):
                    self._log_training()
                if schedule.checkpoint_due(self.step, time.monotonic() - self._last_ckpt_time):
                    self.save_last()
        finally:
            if self.pbar is not None:
                self.pbar.close()

    def _open_sinks(self) -> None:
        self.sinks = [JsonlSink(self.rundir)]
        if not self.args.no_tensorboard:
            tb = open_tensorboard(self.rundir.tensorboard_path, purge_step=self.step if self.resumed else None)
            if tb is not None:
                self.sinks.append(tb)

    def run(self) -> int:
        r"""Set up, train, evaluate; write the status; return the exit code."""
        a = self.args
        self._t0 = time.monotonic()
        self.rundir.start_status(self.job_id, 0)
        self._write_config()
        self.log.info(f"run {self.run_id} in {self.rundir.path} (ovis {ovis.__version__}, torch "
                      f"{torch.__version__}, job {self.job_id})")
        code = EXIT_OK
        try:
            with self.stop.installed():
                try:
                    self.device = resolve_device(a.device)
                    with torch_settings(self.device, deterministic=a.deterministic,
                                        flush_denormal=not a.no_flush_denormal,
                                        retain_memory=not a.no_retain_memory):
                        self.setup()
                        self._ready = True
                        self._write_config(self.data)
                        self._t0 = time.monotonic()
                        self.rundir.write_status("running", self.step)
                        self.log.info(
                            f"data {a.dataset} (train {len(self.data.train)}, valid {len(self.data.valid)}, "
                            f"test {len(self.data.test)}), model {type(self.model).__name__} "
                            f"({sum(p.numel() for p in self.model.parameters())} parameters), estimator "
                            f"{a.estimator} K={a.iw}, {self.total_steps} steps ({self.steps_per_epoch}/epoch), "
                            f"evaluation every {self.eval_period} steps, device {self.device}")
                        self._open_sinks()
                        try:
                            self.loop()
                        finally:
                            for sink in self.sinks:
                                sink.close()
                    self.rundir.write_status("success", self.step, best=self.best)
                    self.log.info(f"success at step {self.step}; best valid L_K {self.best.get('value')} "
                                  f"at step {self.best.get('step')}")
                except (RunInterrupted, KeyboardInterrupt) as e:
                    signum = e.signum if isinstance(e, RunInterrupted) else signal.SIGINT
                    code = 128 + int(signum)
                    # a checkpoint only from a consistent state: between steps, after setup
                    if isinstance(e, RunInterrupted) and not e.forced and self._ready:
                        self._save_last_checkpoint()
                    self.rundir.write_status("aborted", self.step, error=str(e) or "KeyboardInterrupt")
                    self.log.info(f"aborted at step {self.step} ({e or 'KeyboardInterrupt'})")
                except KNOWN_FAILURES as e:  # one line naming the file / data set and the fix, no traceback
                    code = EXIT_FAILED
                    msg = f"{type(e).__name__}: {e}"
                    self.rundir.write_status("failed", self.step, error=msg)
                    self.log.error(f"failed at step {self.step}: {msg}")
                    sys.stderr.write(f"run.py: error: {msg}\n")
                except Exception as e:  # noqa: BLE001 - every failure is recorded
                    code = EXIT_FAILED
                    tb = traceback.format_exc()
                    self.rundir.write_status("failed", self.step, error=f"{type(e).__name__}: {e}", traceback=tb)
                    self.log.error(f"failed at step {self.step}: {type(e).__name__}: {e}\n{tb}")
        finally:
            self._close_logger()
        return code


#: failures whose message already names the input and the fix: reported in one line, no traceback
KNOWN_FAILURES: Tuple[type, ...] = (CheckpointError, DatasetNotFoundError, DatasetCorruptError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Run ``run.py`` with the command line ``argv`` (default ``sys.argv[1:]``); return the exit
    code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_run_args(argv)
    except RunArgumentError as e:  # a cross-check of valid flags: one line naming them and the fix
        sys.stderr.write(f"{e}\n")
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return int(e.code) if isinstance(e.code, int) else 0
    why = device_unavailable(args.device)
    if why is not None:  # before any folder or file is made
        sys.stderr.write(why + "\n")
        return EXIT_USAGE
    run_id = compute_run_id(args)
    exp_dir = Path(args.root) / args.exp
    exp_dir.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock, Timeout

    lock = FileLock(str(exp_dir / f".{run_id}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        sys.stderr.write(f"run.py: run {run_id} is already running in another process "
                         f"({exp_dir / run_id}); nothing done\n")
        return EXIT_BUSY
    try:
        rundir = RunDirectory(exp_dir / run_id)
        if args.rf:
            rundir.delete()
        rundir.create()
        return Trainer(args, rundir, run_id, argv).run()
    finally:
        lock.release()
