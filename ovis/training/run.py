r"""One training run (``run.py``): parse, train, evaluate, checkpoint, resume.

``main(argv) -> exit code``:

* ``2``: invalid command line (one line on stderr naming the flag and the fix, with the usage for
  argparse's own errors; no run directory is written);
* ``0``: the run finished (``status.json`` says ``success``);
* ``1``: an exception (``failed``, with the error and its traceback in ``status.json``); a known
  failure (:data:`KNOWN_FAILURES`: a data set missing or corrupt, no usable checkpoint) is one line
  on stderr naming the input and the fix, without traceback;
* ``130`` / ``143``: Ctrl-C / SIGTERM: a checkpoint is saved and the status is ``aborted``;
* ``3``: another process is running the same run directory (nothing is changed).

**Run identity and resume.**  The run directory is ``<root>/<exp>/<run_id>/`` (see
:mod:`ovis.training.rundir` for the id and the layout).  Starting a run whose directory holds a
checkpoint resumes it: model, optimiser (including the estimator's own parameters, e.g. the
``reinforce-baseline`` network), step, running training averages, best validation bound and every
RNG state (torch, CUDA, numpy, python) are restored, the lines of ``metrics.jsonl`` beyond the
checkpoint's step are dropped, and the run continues exactly as an uninterrupted run with the same
seed would (same metrics).  ``--rf`` deletes the run directory first.

**Determinism.**  The data order is a function of ``(seed, epoch)`` (one ``randperm`` per epoch
from its own generator); batches are assembled in this process, so a dynamic binarisation draws
from the checkpointed global RNG.  Evaluation, gradient analysis, active units and prior samples
run under ``torch.random.fork_rng`` seeded by ``(seed, step)``: they never perturb training, and an
evaluation redone after a resume draws the same particles.  Schedules (Renyi warm-up, learning-rate
reductions) are pure functions of the step (:mod:`ovis.training.schedules`).

**Evaluation** every ``eval_freq`` epochs and always at the last step (also when the run is shorter
than one period), written to ``metrics.jsonl`` as three lines:

* ``train``: running means of the training diagnostics since the previous evaluation
  (``loss/L_k`` with the run's ``K``, ``loss/elbo``, ``loss/kl``, ``loss/kl_q_p`` (= ``L_k - elbo``),
  ``loss/ess``, ``loss/log_px``, estimator entries ``<group>/<name>``), ``info/alpha``,
  ``info/beta``, ``info/lr``, the gradient statistics ``grads/variance``, ``grads/snr``,
  ``grads/dsnr``, ``grads/magnitude`` (``grad_samples`` draws on ``grad_bs`` training points,
  parameters filtered by ``grad_key``), ``active_units/au`` (``mc_au_analysis`` draws on
  ``npoints_au_analysis`` training points), and the evaluation of a fixed training subset
  (``max_eval`` points, ``iw_test`` particles) as ``eval/L_k``, ``eval/elbo``, ``eval/kl``,
  ``eval/kl_q_p``, ``eval/ess`` plus the model's ``extra_metrics`` (``gmm/...``), and with
  ``--track_variance ID,...`` the log10 gradient variance ``variance/<id>`` of each listed
  estimator and of the training one at the same parameters on the same batch
  (:meth:`Trainer.track_variance`; the tracked estimators' own parameters are not trained);
* ``valid``: ``loss/L_k`` with ``iw_valid`` particles, ``loss/elbo``, ``loss/kl``, ``loss/kl_q_p``,
  ``loss/ess`` and the model's extra metrics, on at most ``max_eval`` validation points;
* ``test``: the same with ``iw_test`` particles on at most ``max_eval`` test points.

Every bound line also holds the distortion ``loss/distortion`` (:math:`D = -E_q \log p(x|z)`) and
the rate ``loss/rate`` (:math:`R = E_q[\log q(z|x) - \log p(z)]`, every layer), with
:math:`D + R = -\mathrm{ELBO}`; ``loss/L_k`` is the importance-weighted log-likelihood estimate
:math:`L` (:mod:`ovis.training.evaluation`).  For image data, every evaluation also writes sample
grids (``samples/prior.png``, ``samples/reconstruction.png`` and step-stamped copies;
:meth:`Trainer._save_samples`) unless ``--no_samples``.

The evaluation subsets are fixed (one seeded permutation per split, independent of ``--seed``), so
every run of a data set is evaluated on the same points.  The best checkpoint (``best.pt``) is
chosen on the validation ``L_K``; the test set is reported, never used to choose.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import random
import re
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

import ovis
from ovis.training.arguments import RunArgumentError, parse_run_args
from ovis.training.checkpoint import (CheckpointError, get_rng_state, load_resume_checkpoint, save_checkpoint,
                                     set_rng_state)
from ovis.training.evaluation import active_units, batch_to_device, evaluate_bound, fetch_batch
from ovis.training.rundir import RunDirectory, atomic_write_json, compute_run_id
from ovis.training.optimizers import build_optimizer
from ovis.training.schedules import alpha_at, lr_factor_at
from ovis.utils.memory import retain_freed_memory

__all__ = ["main", "Trainer", "RunInterrupted", "EVAL_SUBSET_SEED", "resolve_device", "device_unavailable"]

#: the seed of the fixed evaluation subsets (the same for every run of a data set)
EVAL_SUBSET_SEED = 20200611
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


class RunInterrupted(Exception):
    r"""SIGTERM / SIGINT received: save a checkpoint and stop (status ``aborted``)."""

    def __init__(self, signum: int, forced: bool = False) -> None:
        super().__init__(f"interrupted by signal {signal.Signals(signum).name}"
                         + (" (second signal: stopped at once, no checkpoint)" if forced else ""))
        self.signum = signum
        self.forced = forced


def device_unavailable(spec: str) -> Optional[str]:
    r"""Why ``--device spec`` cannot run on this machine (one line), or ``None`` when it can.

    ``cuda`` / ``cuda:N`` need ``torch.cuda.is_available()`` and ``N < torch.cuda.device_count()``
    (the devices ``CUDA_VISIBLE_DEVICES`` leaves visible); ``auto`` and ``cpu`` always run.
    Checked by :func:`main` right after parsing, before anything is written; not by
    :func:`ovis.training.arguments.parse_run_args`, which also validates grids on machines that
    only queue jobs for others.
    """
    if not spec.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        why = ("this PyTorch build has no CUDA" if torch.version.cuda is None else
               "no CUDA device is visible" + (" (CUDA_VISIBLE_DEVICES is empty)"
                                              if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else ""))
        return (f"run.py: error: argument --device: {spec} requested but CUDA is not available on this "
                f"machine ({why}, torch {torch.__version__}); use --device cpu or --device auto")
    n = torch.cuda.device_count()
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= n:
        return (f"run.py: error: argument --device: {spec} requested but only {n} CUDA device(s) are "
                f"visible (cuda:0..cuda:{n - 1}); use one of them or --device auto")
    return None


def resolve_device(spec: str) -> torch.device:
    r"""``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", spec):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    why = device_unavailable(spec)
    if why is not None:
        raise RuntimeError(why)
    return torch.device(spec)


def _subset(n: int, k: int, salt: int) -> Tensor:
    g = torch.Generator().manual_seed(EVAL_SUBSET_SEED + salt)
    return torch.randperm(n, generator=g)[: min(n, k)]


def _epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2 ** 62))
    return torch.randperm(n, generator=g)


def _eval_seed(seed: int, step: int) -> int:
    return (int(seed) * 7_919 + int(step) * 104_729 + 17) % (2 ** 62)


def _finite(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


class RunningSums:
    r"""Running sums of the training diagnostics (float64), one vector for all of them.

    :meth:`add` takes the estimator's diagnostics of a step; each entry (``[B]`` per data point, or
    a scalar) enters as its mean.  A step costs three kernels however many diagnostics there are
    (a sum per entry and per accumulator before: about 35 kernels of a 5 ms step).  The state is
    a ``{name: scalar tensor}`` mapping (the checkpoint format); ``loss/kl_q_p`` is derived from
    ``loss/L_k`` and ``loss/elbo`` when the means are read.
    """

    def __init__(self) -> None:
        self.names: Tuple[str, ...] = ()
        self.values: Optional[Tensor] = None
        self.count = 0

    @staticmethod
    def step_means(diagnostics: Mapping[str, Mapping[str, Any]]) -> Tuple[Tuple[str, ...], Optional[Tensor]]:
        r"""``(names, means)`` of a step's diagnostics (``means`` float64 ``[n]``, no graph)."""
        names, cols = [], []
        for group, d in diagnostics.items():
            for k, v in d.items():
                if isinstance(v, Tensor):
                    names.append(f"{group}/{k}")
                    cols.append(v.detach().reshape(-1))
        if not cols:
            return (), None
        with torch.no_grad():
            if len({c.numel() for c in cols}) == 1:
                means = torch.stack(cols).to(torch.float64).mean(1)
            else:
                means = torch.stack([c.to(torch.float64).mean() for c in cols])
        return tuple(names), means

    def add(self, names: Tuple[str, ...], means: Optional[Tensor]) -> None:
        self.count += 1
        if means is None:
            return
        if names == self.names and self.values is not None:
            self.values += means
            return
        merged = self.state()  # the names changed (a resumed run, another estimator): by name
        for name, v in zip(names, means.unbind(0)):
            merged[name] = merged[name] + v if name in merged else v.clone()
        self._set(merged)

    def _set(self, state: Mapping[str, Tensor]) -> None:
        self.names = tuple(state)
        self.values = torch.stack([v.to(torch.float64).reshape(()) for v in state.values()]) if state else None

    def state(self) -> Dict[str, Tensor]:
        r"""``{name: sum}`` (the checkpoint format)."""
        if self.values is None:
            return {}
        return dict(zip(self.names, self.values.detach().unbind(0)))

    def load(self, state: Mapping[str, Tensor], count: int, device: torch.device) -> None:
        # (checkpoints before this class summed the derived loss/kl_q_p too)
        self._set({k: v.to(device) for k, v in state.items() if k != "loss/kl_q_p"})
        self.count = int(count)

    def means(self) -> Dict[str, float]:
        if not self.count or self.values is None:
            return {}
        out = dict(zip(self.names, (self.values / self.count).tolist()))
        if "loss/L_k" in out and "loss/elbo" in out:
            out["loss/kl_q_p"] = out["loss/L_k"] - out["loss/elbo"]
        return out


class Trainer:
    r"""The training run behind :func:`main` (one instance per run directory).

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
        self.stop_signal: Optional[int] = None
        self.writer: Any = None
        self._ready = False
        self.log = self._make_logger()

    # ------------------------------------------------------------------ infrastructure
    def _make_logger(self) -> logging.Logger:
        log = logging.getLogger(f"ovis.run.{self.run_id}.{id(self)}")
        log.setLevel(logging.INFO)
        log.propagate = False
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        fh = logging.FileHandler(self.rundir.log_path, encoding="utf-8")
        fh.setFormatter(fmt)
        log.addHandler(fh)
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(fmt)
        log.addHandler(sh)
        return log

    def _close_logger(self) -> None:
        for h in list(self.log.handlers):
            h.flush()
            h.close()
            self.log.removeHandler(h)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # second signal: stop now (the state may be mid-step)
            raise RunInterrupted(signum, forced=True)
        self.stop_signal = signum

    def check_stop(self) -> None:
        r"""Raise :class:`RunInterrupted` when a signal was received (called between steps and
        between evaluation batches)."""
        if self.stop_signal is not None:
            raise RunInterrupted(self.stop_signal)

    @contextmanager
    def _signals(self) -> Iterator[None]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in old:
            signal.signal(s, self._on_signal)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    @contextmanager
    def _torch_settings(self) -> Iterator[None]:
        args = self.args
        det = torch.are_deterministic_algorithms_enabled()
        det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        cudnn_det, cudnn_bench = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        flushed = False
        try:
            if args.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.backends.cudnn.deterministic = True
                torch.backends.cudnn.benchmark = False
            if self.device.type == "cpu" and not args.no_flush_denormal:
                flushed = torch.set_flush_denormal(True)
            if self.device.type == "cpu" and not args.no_retain_memory:
                retain_freed_memory()  # process-wide and one-way (ovis.utils.memory)
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=det_warn)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_det, cudnn_bench
            if flushed:
                torch.set_flush_denormal(False)

    @contextmanager
    def _forked_rng(self, step: int) -> Iterator[None]:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_eval_seed(self.args.seed, step))
            yield

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

        args = self.args
        torch.manual_seed(args.seed)
        np.random.seed(args.seed % (2 ** 32))
        random.seed(args.seed)
        self.data = datasets.load_dataset(args.dataset, args.data_root, mini=args.mini)
        data = self.data
        if len(data.train) < 1 or len(data.valid) < 1 or len(data.test) < 1:
            raise ValueError(f"data set {args.dataset!r} has an empty split "
                             f"(train {len(data.train)}, valid {len(data.valid)}, test {len(data.test)})")
        self.model = models.build_model(args, data).to(self.device)
        cls, _ = estimators.parse_estimator_id(args.estimator)
        extra: Dict[str, Any] = {}
        if "x_shape" in inspect.signature(cls.__init__).parameters:
            extra["x_shape"] = tuple(data.x_shape)
        if getattr(args, "reward_transforms", ""):  # reinforce with a chain of reward transforms
            from ovis.estimators.reward_transforms import ReinforceTransformed

            self.estimator = ReinforceTransformed(mc=args.mc, iw=args.iw, reward_transforms=args.reward_transforms,
                                                  x_shape=tuple(data.x_shape))
        else:
            self.estimator = estimators.build_estimator(args.estimator, mc=args.mc, iw=args.iw, **extra)
        self.estimator.to(self.device)
        # --compile: the training estimation (model pass, estimator maths, surrogate) as one compiled
        # graph; the modules themselves are not wrapped, so parameter names and checkpoints are
        # those of the eager run
        self._compiled = (estimators.base.compile_estimator(self.estimator, self.model) if args.compile
                          else None)
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad],
                   "lr": args.lr, "name": "model"}]
        est_params = [p for p in self.estimator.parameters() if p.requires_grad]
        if est_params:
            groups.append({"params": est_params, "lr": args.baseline_lr, "name": "estimator"})
        if not groups[0]["params"]:
            raise ValueError(f"model {type(self.model).__name__} has no trainable parameter")
        self.base_lrs = [g["lr"] for g in groups]
        self.optimizer = build_optimizer(args.optimizer, groups)

        n = len(data.train)
        self.batch_size = min(args.bs, n)
        self.steps_per_epoch = max(1, n // self.batch_size)
        self.total_steps = args.epochs * self.steps_per_epoch if args.epochs > 0 else args.nsteps
        self.eval_period = args.eval_freq * self.steps_per_epoch
        self.idx_train_eval = _subset(n, args.max_eval, 0)
        self.idx_valid = _subset(len(data.valid), args.max_eval, 1)
        self.idx_test = _subset(len(data.test), args.max_eval, 2)
        self.idx_grad = _subset(n, args.grad_bs, 3)
        self.idx_au = _subset(n, args.npoints_au_analysis, 4)
        self.tracked = self._build_tracked_estimators()
        self._perm_epoch = -1
        self._perm: Optional[Tensor] = None

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
        return {
            "model": self.model.state_dict(),
            "estimator": self.estimator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": int(self.step),
            "last_eval_step": int(self.last_eval_step),
            "best": dict(self.best),
            "elapsed": float(self.elapsed_now()),
            "sums": {k: v.cpu() for k, v in self.sums.state().items()},
            "count": int(self.sums.count),
            "log_sums": {k: v.cpu() for k, v in self.log_sums.state().items()},
            "log_count": int(self.log_sums.count),
            "rng": get_rng_state(),
            "run_id": self.run_id,
        }

    def _check_owner(self, ckpt: Mapping[str, Any]) -> None:
        if ckpt.get("run_id") != self.run_id:
            raise ValueError(f"{self.rundir.last_path} belongs to run {ckpt.get('run_id')!r}, not "
                             f"{self.run_id!r}; delete the run with --rf")

    def _restore(self, ckpt: Mapping[str, Any], path: Optional[Path] = None) -> None:
        self._check_owner(ckpt)
        self.model.load_state_dict(ckpt["model"])
        self.estimator.load_state_dict(ckpt["estimator"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.last_eval_step = int(ckpt["last_eval_step"])
        self.best = dict(ckpt["best"])
        self.elapsed = float(ckpt["elapsed"])
        self.sums.load(ckpt["sums"], ckpt["count"], self.device)
        self.log_sums.load(ckpt["log_sums"], ckpt["log_count"], self.device)
        set_rng_state(ckpt["rng"])
        self.log.info(f"resumed from {path or self.rundir.last_path} at step {self.step}")

    def save_last(self) -> None:
        save_checkpoint(self.rundir.last_path, self._state(), keep_previous=True)
        self._last_ckpt_time = time.monotonic()
        self.rundir.write_status("running", self.step)

    def elapsed_now(self) -> float:
        return self.elapsed + (time.monotonic() - self._t0)

    # ------------------------------------------------------------------ training
    def _batch_indices(self, step: int) -> Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm = _epoch_permutation(len(self.data.train), self.args.seed, epoch)
            self._perm_epoch = epoch
        bs = self.batch_size
        return self._perm[pos * bs:(pos + 1) * bs]  # type: ignore[index]

    def runtime(self, step: int) -> Dict[str, Any]:
        a = self.args
        return {"alpha": alpha_at(step, a.alpha, a.warmup, a.alpha_init, a.warmup_mode, a.warmup_offset),
                "beta": a.beta, "freebits": a.freebits, "tau": a.tau}

    def train_step(self) -> None:
        r"""One optimisation step on the batch of the current step."""
        step = self.step
        factor = lr_factor_at(step, self.total_steps, self.args.lr_reduce_steps, self.args.lr_reduce_factor)
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * factor
        x = batch_to_device(fetch_batch(self.data.train, self._batch_indices(step)), self.device)
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
        self.optimizer.step()
        self.step += 1
        names, means = RunningSums.step_means(diagnostics)
        self.sums.add(names, means)
        self.log_sums.add(names, means)

    def _tb(self, split: str, metrics: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(f"{split}/{k}", v, step)

    def _log_training(self) -> None:
        means = self.log_sums.means()
        self.log_sums = RunningSums()
        rate = self._steps_since_log / max(time.monotonic() - self._t_log, 1e-9)
        self._steps_since_log, self._t_log = 0, time.monotonic()
        self._tb("running", {**means, "info/steps_per_sec": rate,
                             "info/alpha": self.runtime(self.step)["alpha"]}, self.step)
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
        lines = [{"split": s, "step": int(step), "epoch": epoch, "time": t, "metrics": m}
                 for s, m in (("train", train), ("valid", valid), ("test", test))]
        return lines

    # ------------------------------------------------------------------ variance tracking
    def _build_tracked_estimators(self) -> Dict[str, Any]:
        r"""The estimators of ``--track_variance`` (plus the training one), keyed by id.

        Each is built once, with the run's ``--mc`` / ``--iw`` (and ``x_shape`` where its
        constructor takes one, as for the training estimator), under a forked RNG seeded by
        ``--seed``: building them never changes the training trajectory.  The training estimator
        is the trained instance itself.  **The tracked estimators' own parameters** (NVIL's
        baseline network, RELAX's control-variate network, dynamic REBAR's eta / temperature) **are
        not trained**: they keep their initial values, so their variance is the one of the
        estimator with an untrained control variate (train them by running that estimator).
        """
        import ovis.estimators as estimators
        from ovis.training.arguments import parse_tracked_estimators

        a = self.args
        ids = parse_tracked_estimators(getattr(a, "track_variance", "") or "")
        if not ids:
            return {}
        out: Dict[str, Any] = {a.estimator: self.estimator}
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((int(a.seed) * 15_485_863 + 7) % (2 ** 62))
            for eid in ids:
                if eid in out:
                    continue
                cls, _ = estimators.parse_estimator_id(eid)
                extra: Dict[str, Any] = {}
                if "x_shape" in inspect.signature(cls.__init__).parameters:
                    extra["x_shape"] = tuple(self.data.x_shape)
                out[eid] = estimators.build_estimator(eid, mc=a.mc, iw=a.iw, **extra).to(self.device)
            # fail now, not at the first evaluation, when an estimator cannot run on this model
            x = batch_to_device(fetch_batch(self.data.train, self.idx_grad[:2]), self.device)
            for eid, est in out.items():
                if est is self.estimator:
                    continue
                was_training = est.training
                est.eval()
                try:
                    est(self.model, x, **self.runtime(self.step))
                except (TypeError, ValueError, NotImplementedError, RuntimeError) as e:
                    raise ValueError(f"--track_variance {eid}: this estimator cannot run on model "
                                     f"{type(self.model).__name__} ({type(e).__name__}: {e}); drop it "
                                     "from --track_variance") from e
                finally:
                    est.train(was_training)
        return out

    def track_variance(self, step: int) -> Dict[str, float]:
        r"""``{"variance/<id>": log10 of the mean gradient variance}`` of every tracked estimator
        (REBAR's variance-tracking mode, Tucker et al. 2017).

        At the model's current parameters and on the gradient-analysis batch (``--grad_bs`` fixed
        training points), ``--track_variance_draws`` independent draws of each estimator's gradient
        w.r.t. the parameters selected by ``--grad_key`` give the per-coordinate variance
        :math:`\mathrm{Var}[g_p]`; the value logged is
        :math:`\log_{10}\big(\frac1P\sum_p \mathrm{Var}[g_p]\big)` (a variance of exactly 0 is
        floored at 1e-300).  Each estimator runs in ``eval()`` mode (no running-statistics update,
        no control-variate step) under its own RNG fork seeded by ``(seed, step)``, so tracking
        changes neither the training trajectory nor the other evaluation metrics, and every
        estimator sees the same random stream.
        """
        from ovis.analysis.gradients import gradient_samples

        a = self.args
        self.model.eval()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with self._forked_rng(step):  # the batch of the gradient analysis (same binarisation draw)
            x = batch_to_device(fetch_batch(self.data.train, self.idx_grad), self.device)
        rt = self.runtime(step)
        out: Dict[str, float] = {}
        for eid, est in self.tracked.items():
            self.check_stop()
            was_training = est.training
            est.eval()
            try:
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(_eval_seed(a.seed, step) + 1)
                    g = gradient_samples(est, self.model, x, a.track_variance_draws, a.grad_key, **rt)
            finally:
                est.train(was_training)
            var = g.double().var(0, unbiased=True).mean()
            out[f"variance/{eid}"] = float(torch.log10(var.clamp_min(1e-300))) if torch.isfinite(var) else math.nan
        return out

    def _save_samples(self, step: int) -> None:
        r"""Sample grids of an image model (``[1, H, W]`` or ``[H, W]`` data), at every evaluation
        (under the evaluation's forked RNG), written atomically under ``samples/``:

        * ``prior.png`` (and ``prior-step<step>.png``): the mean of ``p(x|z)`` for 64 draws
          ``z ~ p(z)``, 8 per row (:func:`ovis.models.utilities.prior_samples`);
        * ``reconstruction.png`` (and ``reconstruction-step<step>.png``, ``--task density`` only):
          pairs of rows, 8 validation images of the fixed evaluation subset, then the mean of
          ``p(x|z)`` at ``z ~ q(z|x)`` (:func:`ovis.models.utilities.reconstructions`), 32 images.

        The files without a step are the latest (the end of the run once it has finished).
        ``--no_samples`` turns this off.
        """
        from ovis.models.utilities import image_grid, prior_samples, reconstruction_grid, reconstructions, save_image_grid

        if getattr(self.args, "no_samples", False):
            return
        shape = tuple(self.data.x_shape)
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2 or not hasattr(self.model, "sample_from_prior"):
            return
        folder = self.rundir.samples_path
        tau = getattr(self.args, "tau", None)
        grid = image_grid(prior_samples(self.model, 64, tau=tau).float().reshape(-1, *shape), cols=8)
        save_image_grid(folder / f"prior-step{step:09d}.png", grid)
        save_image_grid(folder / "prior.png", grid)
        if str(getattr(self.args, "task", "density") or "density") != "density":
            return  # a conditional model's p(x_bot | z) does not reconstruct x
        x = batch_to_device(fetch_batch(self.data.valid, self.idx_valid[:32]), self.device)
        rec = reconstructions(self.model, x, tau=tau)
        grid = reconstruction_grid(x.float().reshape(-1, *shape), rec.float().reshape(-1, *shape), cols=8)
        save_image_grid(folder / f"reconstruction-step{step:09d}.png", grid)
        save_image_grid(folder / "reconstruction.png", grid)

    def _record_evaluation(self, lines: List[Dict[str, Any]]) -> None:
        self.rundir.append_metrics(lines)
        for ln in lines:
            self._tb(ln["split"], ln["metrics"], ln["step"])
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

    def should_evaluate(self, step: int) -> bool:
        return step == self.total_steps or (step > 0 and step % self.eval_period == 0)

    # ------------------------------------------------------------------ main loop
    def loop(self) -> None:
        a = self.args
        self._last_ckpt_time = time.monotonic()
        self._t_log, self._steps_since_log = time.monotonic(), 0
        from tqdm import tqdm

        self.pbar = None if a.silent else tqdm(total=self.total_steps, initial=self.step, file=sys.stderr,
                                               desc=self.run_id[:40], dynamic_ncols=True, mininterval=1.0)
        try:
            while True:
                if self.should_evaluate(self.step) and self.last_eval_step < self.step:
                    self._record_evaluation(self.evaluate())
                if self.step >= self.total_steps:
                    break
                self.check_stop()
                self.train_step()
                self._steps_since_log += 1
                if self.pbar is not None:
                    self.pbar.update(1)
                if self.step % a.log_freq == 0:
                    self._log_training()
                if (a.checkpoint_steps and self.step % a.checkpoint_steps == 0) or (
                        a.checkpoint_every > 0 and time.monotonic() - self._last_ckpt_time >= a.checkpoint_every):
                    if not self.should_evaluate(self.step):  # an evaluation saves one anyway
                        self.save_last()
        finally:
            if self.pbar is not None:
                self.pbar.close()

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
            with self._signals():
                try:
                    self.device = resolve_device(a.device)
                    with self._torch_settings():
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
                        self._open_tensorboard()
                        try:
                            self.loop()
                        finally:
                            if self.writer is not None:
                                self.writer.close()
                    self.rundir.write_status("success", self.step, best=self.best)
                    self.log.info(f"success at step {self.step}; best valid L_K {self.best.get('value')} "
                                  f"at step {self.best.get('step')}")
                except (RunInterrupted, KeyboardInterrupt) as e:
                    signum = e.signum if isinstance(e, RunInterrupted) else signal.SIGINT
                    code = 128 + int(signum)
                    # a checkpoint only from a consistent state: between steps, after setup
                    if isinstance(e, RunInterrupted) and not e.forced and self._ready:
                        save_checkpoint(self.rundir.last_path, self._state(), keep_previous=True)
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

    def _open_tensorboard(self) -> None:
        if self.args.no_tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - optional: skip quietly
            return
        self.writer = SummaryWriter(str(self.rundir.tensorboard_path),
                                    purge_step=self.step if self.resumed else None)


def _known_failures() -> Tuple[type, ...]:
    from ovis.datasets.errors import DatasetCorruptError, DatasetNotFoundError

    return (CheckpointError, DatasetNotFoundError, DatasetCorruptError)


#: failures whose message already names the input and the fix: reported in one line, no traceback
KNOWN_FAILURES = _known_failures()


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
