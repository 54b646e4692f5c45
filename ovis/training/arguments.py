r"""Command-line arguments of ``run.py`` (one training run).

The flags and their meaning follow the OVIS reference code (see ``experiments.md``, the
``run.py`` flag table).  The parser is built here, in the package, so that the experiment system
can validate every job of a grid *before* anything is queued
(:func:`parse_run_args` raises :class:`RunArgumentError` instead of exiting).

Integers given as whole floats (``1e4`` arrives as ``10000.0`` from a JSON grid) are accepted
by every integer flag; a fractional value is rejected.
"""
from __future__ import annotations

import argparse
import math
import re
from typing import List, Optional, Sequence

__all__ = [
    "RunArgumentError",
    "build_run_parser",
    "parse_run_args",
    "RUN_IDENTITY_DEFAULTS",
    "NON_IDENTITY_FLAGS",
    "parse_tracked_estimators",
    "estimator_lr",
]


class RunArgumentError(ValueError):
    """An invalid command line for ``run.py`` (names the flag and the reason)."""


def int_arg(value: str) -> int:
    r"""Parse an integer, accepting whole floats such as ``1e4`` or ``10000.0``."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}")
    return int(f)


def nonneg_int(value: str) -> int:
    r"""An ``argparse`` type: an integer ``>= 0`` (``int_arg`` syntax); ``ArgumentTypeError`` otherwise."""
    v = int_arg(value)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return v


def pos_int(value: str) -> int:
    r"""An ``argparse`` type: an integer ``>= 1`` (``int_arg`` syntax); ``ArgumentTypeError`` otherwise."""
    v = int_arg(value)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return v


def finite_float(value: str) -> float:
    r"""An ``argparse`` type: a finite number; ``ArgumentTypeError`` for text that is not a number, ``inf``
    or ``nan``.
    """
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(f):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return f


def pos_float(value: str) -> float:
    r"""An ``argparse`` type: a finite number ``> 0``; ``ArgumentTypeError`` otherwise."""
    f = finite_float(value)
    if f <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return f


def nonneg_float(value: str) -> float:
    r"""An ``argparse`` type: a finite number ``>= 0``; ``ArgumentTypeError`` otherwise."""
    f = finite_float(value)
    if f < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return f


def unit_interval(value: str) -> float:
    r"""An ``argparse`` type: a number in ``[0, 1)``; ``ArgumentTypeError`` otherwise."""
    f = finite_float(value)
    if not 0.0 <= f < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}")
    return f


def unit_interval_open(value: str) -> float:
    r"""An ``argparse`` type: a number in ``(0, 1]`` (open at 0); ``ArgumentTypeError`` otherwise."""
    f = finite_float(value)
    if not 0.0 < f <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value!r}")
    return f


DATASETS = ("binmnist", "mnist", "fashion", "mnist-grey", "fashion-grey", "omniglot", "shapes", "gmm",
            "gaussian-toy")
#: data sets of grey levels in [0, 1] (need a likelihood of grey levels, --likelihood cbernoulli)
GREY_DATASETS = ("mnist-grey", "fashion-grey")
MODELS = ("sbm", "vae", "gaussian-vae", "conv-vae", "gmm", "gaussian-toy", "discrete-vae")
PRIORS = ("normal", "bernoulli", "categorical", "mog")
#: the optimisers ``--optimizer`` accepts
OPTIMIZERS = ("adam", "sgd", "adamax", "rmsprop")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`RunArgumentError` instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise RunArgumentError(f"{self.prog}: error: {message}")


def build_run_parser(prog: str = "run.py") -> argparse.ArgumentParser:
    r"""The parser of ``run.py``.  ``parse_args`` raises :class:`RunArgumentError` on bad input."""
    p = _Parser(prog=prog, description="One training run of a latent-variable model.",
                allow_abbrev=False)
    g = p.add_argument_group("run")
    g.add_argument("--root", default="runs/", help="where run directories go")
    g.add_argument("--data_root", default="data/", help="where data sets are looked for")
    g.add_argument("--exp", default="sandbox", help="experiment name (a folder of --root)")
    g.add_argument("--id", default="", help="a tag added to the run id and config")
    g.add_argument("--seed", type=int_arg, default=1)
    g.add_argument("--workers", type=nonneg_int, default=1, help="data-loader workers")
    g.add_argument("--silent", action="store_true", help="no progress bar")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels")
    g.add_argument("--rf", action="store_true", help="delete the run directory first")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--compile", action="store_true",
                   help="compile the training estimation (the model's pass, the estimator's maths and the "
                        "surrogate) with torch.compile, after a compilation of some seconds "
                        "(benchmarks/bench_step.py --only compile measures both); off by default")
    g.add_argument("--no_flush_denormal", action="store_true",
                   help="keep denormal floats on the CPU (they are flushed by default)")
    g.add_argument("--no_retain_memory", action="store_true",
                   help="give freed CPU memory back to the system at once (glibc's default); by default "
                        "it is kept for the next tensors, which avoids page faults (ovis.utils.memory; "
                        "benchmarks/bench_step.py --only memory measures it)")
    g.add_argument("--checkpoint_every", type=nonneg_float, default=60.0,
                   help="save the last checkpoint every this many seconds (0: off; a checkpoint is "
                        "always saved at every evaluation and at the end)")
    g.add_argument("--checkpoint_steps", type=nonneg_int, default=0,
                   help="also save the last checkpoint every this many steps (0: off)")
    g.add_argument("--log_freq", type=pos_int, default=100,
                   help="steps between training summaries in the log file / TensorBoard")
    g.add_argument("--eval_chunk", type=pos_int, default=10000,
                   help="max particles x data points per forward pass at evaluation (memory cap)")
    g.add_argument("--no_tensorboard", action="store_true", help="write no TensorBoard events")
    g.add_argument("--no_samples", action="store_true",
                   help="write no sample grids (samples/prior.png, samples/reconstruction.png) for image data")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="binmnist", choices=DATASETS)
    g.add_argument("--mini", action="store_true", help="a small subset of the data set")
    g.add_argument("--binarization", default="default", choices=("default", "dynamic", "threshold"),
                   help="--dataset mnist / fashion only: default (mnist dynamic, fashion thresholded), dynamic "
                        "(a Bernoulli(intensity) draw at each access) or threshold (x = 1[intensity >= 0.5], "
                        "the IGR paper's MNIST)")
    g.add_argument("--split", default="50k", choices=("50k", "60k"),
                   help="50k: train / valid / test = first 50k / last 10k of the training file / the test file; "
                        "60k (IDX sets mnist, fashion, mnist-grey, fashion-grey): all 60k training images, valid "
                        "/ test = first / last 5k of the test file (the IGR paper's training set)")

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, choices=MODELS,
                   help="default: gmm / gaussian-toy for those data sets, else vae")
    g.add_argument("--prior", default="normal", choices=PRIORS)
    g.add_argument("--N", type=pos_int, default=32, help="latent units per layer")
    g.add_argument("--K", type=pos_int, default=8, help="categories per categorical latent")
    g.add_argument("--hdim", type=pos_int, default=64, help="hidden units")
    g.add_argument("--nlayers", type=nonneg_int, default=2, help="hidden layers per MLP")
    g.add_argument("--depth", type=pos_int, default=1, help="stochastic layers")
    g.add_argument("--learn_prior", action="store_true", help="learn the prior's parameters")
    g.add_argument("--prior_components", type=nonneg_int, default=0,
                   help="mixture components of --prior mog (0: --K)")
    g.add_argument("--likelihood", default="bernoulli", choices=("bernoulli", "cbernoulli", "gaussian"),
                   help="observation model: bernoulli; --model vae: cbernoulli (continuous Bernoulli, for grey "
                        "levels in [0, 1]); --model discrete-vae: gaussian (per-pixel Normal, mean sigmoid(a), "
                        "std 1e-6 + softplus(b), for grey levels in [0, 1], as the IGR paper's Fashion-MNIST)")
    g.add_argument("--posterior", default="normal", choices=("normal", "mog"),
                   help="--model vae q(z|x): normal, or mog (mixture of Gaussians; score-function "
                        "estimators only)")
    g.add_argument("--posterior_components", type=pos_int, default=2,
                   help="mixture components of --posterior mog")
    g.add_argument("--relaxation", default="gs", choices=("gs", "igr-i", "igr-planar", "igr-sb"))
    g.add_argument("--threshold", type=unit_interval, default=0.99, help="IGR-SB precision")
    g.add_argument("--max_categories", type=pos_int, default=50)
    g.add_argument("--task", default="density", choices=("density", "conditional"),
                   help="density: model p(x); conditional: structured output prediction "
                        "p(x_bot | x_top) of an image's bottom half from its top half "
                        "(--model sbm or discrete-vae; see ovis.models.conditional)")
    g.add_argument("--architecture", default="dense", choices=("dense", "conv", "nonlinear"),
                   help="discrete-vae networks: dense (tanh MLPs, --hdim x --nlayers), conv (28x28 images) or "
                        "nonlinear (the IGR paper's dense_nonlinear: ReLU 512-256 encoder, 256-512 decoder; "
                        "--hdim / --nlayers are ignored)")
    # --- discrete-vae: IGR vs Gumbel-Softmax, as the IGR paper runs them (ovis.models.discrete_vae)
    g.add_argument("--igr_prior", default="uniform", choices=("uniform", "standard"),
                   help="discrete-vae IGR noise prior: uniform (its induced categorical is uniform over the K "
                        "categories, as the IGR paper) or standard (N(0, I))")
    g.add_argument("--gs_prior_tau", type=pos_float, default=None,
                   help="discrete-vae Gumbel-Softmax prior temperature (default --tau; the IGR paper: 0.5)")
    g.add_argument("--closed_form_kl", action="store_true",
                   help="discrete-vae IGR: train with the closed-form KL (ELBO; single-sample estimators only)")
    g.add_argument("--relaxed_evaluation", action="store_true",
                   help="discrete-vae: score the relaxed model as loss/L_k (default: one-hot latents for every "
                        "relaxation, the discrete model)")
    g.add_argument("--relaxed_iw", type=nonneg_int, default=0,
                   help="discrete-vae: also log the relaxed model's bound with this many particles "
                        "(discrete-vae/relaxed_L_k; 0: off)")

    g = p.add_argument_group("estimator")
    g.add_argument("--estimator", default="pathwise-iwae", help="estimator id (see estimators.md)")
    g.add_argument("--reward_transforms", default="",
                   help="with --estimator reinforce: comma-separated reward transforms applied in "
                        "order to the learning signal (centred, scaled, self-critic, baseline; "
                        "ovis.estimators.reward_transforms); empty: plain reinforce")
    g.add_argument("--mc", type=pos_int, default=1, help="outer Monte Carlo samples")
    g.add_argument("--iw", type=pos_int, default=1, help="importance samples K")
    g.add_argument("--alpha", type=unit_interval, default=0.0, help="Renyi alpha")
    g.add_argument("--beta", type=nonneg_float, default=1.0, help="KL weight")
    g.add_argument("--tau", type=pos_float, default=0.5, help="relaxation temperature")
    g.add_argument("--freebits", type=nonneg_float, default=None, help="free bits per layer")
    g.add_argument("--warmup", type=nonneg_int, default=0, help="Renyi warm-up steps (0: none)")
    g.add_argument("--alpha_init", type=unit_interval, default=0.0)
    g.add_argument("--warmup_mode", default="linear", choices=("linear", "log"))
    g.add_argument("--warmup_offset", type=nonneg_int, default=0)

    g = p.add_argument_group("optimisation")
    g.add_argument("--nsteps", type=nonneg_int, default=1000, help="training steps")
    g.add_argument("--epochs", type=nonneg_int, default=0, help="epochs (overrides --nsteps when > 0)")
    g.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    g.add_argument("--lr", type=pos_float, default=1e-3)
    g.add_argument("--baseline_lr", type=pos_float, default=1e-3)
    g.add_argument("--lr_reduce_steps", type=nonneg_int, default=0,
                   help="number of LR reductions, at evenly spaced steps (lr * factor^i after the "
                        "i-th of the steps nsteps*i/(n+1))")
    g.add_argument("--lr_reduce_factor", type=unit_interval_open, default=0.5,
                   help="factor of each LR reduction (0.5 as in the reference code)")
    g.add_argument("--bs", type=pos_int, default=32)
    g.add_argument("--valid_bs", type=pos_int, default=50)
    g.add_argument("--test_bs", type=pos_int, default=50)

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_freq", type=pos_int, default=10, help="evaluation period in epochs")
    g.add_argument("--max_eval", type=pos_int, default=10000, help="max data points per evaluation")
    g.add_argument("--iw_valid", type=pos_int, default=100)
    g.add_argument("--iw_test", type=pos_int, default=1000)
    g.add_argument("--grad_samples", type=nonneg_int, default=0, help="gradient-analysis draws (0 skips)")
    g.add_argument("--grad_bs", type=pos_int, default=32)
    g.add_argument("--grad_key", default="inference_network",
                   help="comma-separated parameter-name filters")
    g.add_argument("--grad_epsilon", type=nonneg_float, default=1e-15, help="variance floor")
    g.add_argument("--mc_au_analysis", type=nonneg_int, default=0)
    g.add_argument("--npoints_au_analysis", type=nonneg_int, default=0)
    g.add_argument("--track_variance", default="",
                   help="comma-separated estimator ids whose gradient log10-variance is logged at every "
                        "evaluation, at the same parameters and on the same batch as the training "
                        "estimator's (train line: variance/<id>; empty: off)")
    g.add_argument("--track_variance_draws", type=int_arg, default=10,
                   help="unused since the variance is tracked online (kept so that old command lines parse)")
    # --- the REBAR paper's training protocol (Tucker et al. 2017; issue 27) ---
    g = p.add_argument_group("REBAR protocol")
    g.add_argument("--adam_beta2", type=unit_interval, default=0.999,
                   help="Adam's second-moment decay (torch's 0.999; the REBAR code's 0.99999)")
    g.add_argument("--estimator_lr_ratio", type=pos_float, default=None,
                   help="learning rate of the estimator's own parameters (baselines, eta's, temperature) "
                        "as a multiple of --lr (the REBAR code's 10); overrides --baseline_lr when set")
    g.add_argument("--track_variance_decay", type=unit_interval, default=0.999,
                   help="decay of the moving averages of the tracked per-step gradients (--track_variance)")
    return p


def estimator_lr(args: argparse.Namespace) -> float:
    r"""The learning rate of the estimator's own parameters: ``lr * estimator_lr_ratio`` when the
    ratio is set, else ``baseline_lr``."""
    ratio = getattr(args, "estimator_lr_ratio", None)
    return float(args.lr) * float(ratio) if ratio is not None else float(args.baseline_lr)


def parse_run_args(argv: Sequence[str]) -> argparse.Namespace:
    r"""Parse and cross-validate a ``run.py`` command line; raise :class:`RunArgumentError`."""
    parser = build_run_parser()
    args = parser.parse_args(list(argv))
    if args.alpha_init and args.warmup == 0:
        raise RunArgumentError("run.py: error: --alpha_init needs --warmup > 0")
    # The estimator id is validated by the estimator grammar (no substring matching).
    from ovis.estimators.base import command_line_message
    from ovis.estimators.config import parse_estimator_id

    try:
        cls, est_config = parse_estimator_id(args.estimator)
    except ValueError as e:
        raise RunArgumentError(f"run.py: error: argument --estimator: {e}") from None
    # the estimator's own constraints on --mc / --iw (e.g. VIMCO needs K >= 2), stated by its class
    try:
        cls.check_arguments(mc=args.mc, iw=args.iw, **est_config)
    except ValueError as e:  # the estimator's message names Python arguments (iw=2): shown with the flags
        raise RunArgumentError(f"run.py: error: argument --iw: --estimator {args.estimator}: "
                               f"{command_line_message(e)}") from None
    if (args.alpha > 0 or args.alpha_init > 0) and not getattr(cls, "supports_alpha", True):
        raise RunArgumentError(
            f"run.py: error: estimator {args.estimator!r} does not support a Renyi alpha > 0 "
            f"(got --alpha {args.alpha}, --alpha_init {args.alpha_init}); drop --alpha/--alpha_init"
        )
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        raise RunArgumentError(
            f"run.py: error: argument --device: expected auto, cpu, cuda or cuda:N, got {args.device!r}")
    if args.grad_samples == 1:
        raise RunArgumentError(
            "run.py: error: argument --grad_samples: needs >= 2 draws to estimate a variance "
            "(0 skips the gradient analysis)"
        )
    args.track_variance = ",".join(parse_tracked_estimators(args.track_variance, mc=args.mc, iw=args.iw))
    if args.track_variance and args.track_variance_draws < 2:
        raise RunArgumentError(
            "run.py: error: argument --track_variance_draws: needs >= 2 draws to estimate a variance, "
            f"got {args.track_variance_draws}")
    if args.mc_au_analysis > 0 and args.npoints_au_analysis == 1:
        raise RunArgumentError(
            "run.py: error: argument --npoints_au_analysis: needs >= 2 data points to estimate a "
            "covariance (0 skips the active-unit analysis)"
        )
    if args.posterior == "mog" and getattr(cls, "reparameterised", False):
        raise RunArgumentError(
            f"run.py: error: argument --posterior: a mixture-of-Gaussians posterior has no "
            f"reparameterisation; estimator {args.estimator!r} needs one: use a score-function "
            "estimator (reinforce, vimco-arithmetic, ovis-gamma1, ...)")
    grey_likelihood = {"vae": "cbernoulli", "discrete-vae": "gaussian"}.get(args.model or "vae")
    if args.dataset in GREY_DATASETS and (grey_likelihood is None or args.likelihood != grey_likelihood):
        fix = (f"add --likelihood {grey_likelihood} (--model {args.model or 'vae'})" if grey_likelihood else
               "use --model vae --likelihood cbernoulli or --model discrete-vae --likelihood gaussian")
        raise RunArgumentError(
            f"run.py: error: argument --dataset: {args.dataset} holds grey levels in [0, 1], which a "
            f"--likelihood {args.likelihood} decoder cannot model; {fix}, "
            f"or use the binarised --dataset {args.dataset[:-len('-grey')]}")
    from ovis.datasets.mnist import BINARIZABLE_DATASETS, SPLIT_DATASETS

    if args.binarization != "default" and args.dataset not in BINARIZABLE_DATASETS:
        raise RunArgumentError(
            f"run.py: error: argument --binarization: --binarization {args.binarization} applies to --dataset "
            f"{' or '.join(BINARIZABLE_DATASETS)} only; --dataset {args.dataset} has "
            f"{'grey levels' if args.dataset in GREY_DATASETS else 'a fixed binarisation'}: drop --binarization "
            f"(or pass --binarization default), or use --dataset mnist / fashion")
    if args.split != "50k" and args.dataset not in SPLIT_DATASETS:
        raise RunArgumentError(
            f"run.py: error: argument --split: --split {args.split} applies to the IDX data sets "
            f"({', '.join(SPLIT_DATASETS)}) only; --dataset {args.dataset} has its own fixed split: drop --split "
            f"(or pass --split 50k), or use one of those data sets")
    if args.closed_form_kl and (args.iw > 1 or args.mc > 1 or args.relaxation == "gs"):
        raise RunArgumentError(
            "run.py: error: argument --closed_form_kl: the closed-form KL gives the single-sample ELBO of an IGR "
            f"relaxation; it needs --relaxation igr-*, --iw 1 and --mc 1 (got --relaxation {args.relaxation}, "
            f"--iw {args.iw}, --mc {args.mc})")
    if args.gs_prior_tau is not None and args.relaxation != "gs":
        raise RunArgumentError(f"run.py: error: argument --gs_prior_tau: only with --relaxation gs (got "
                               f"{args.relaxation}): the IGR prior shares q's map and temperature")
    if args.reward_transforms:
        from ovis.estimators.reward_transforms import parse_reward_transforms

        if args.estimator != "reinforce":
            raise RunArgumentError(
                f"run.py: error: argument --reward_transforms: only with --estimator reinforce "
                f"(got --estimator {args.estimator!r}); drop --reward_transforms or use reinforce")
        try:
            args.reward_transforms = ",".join(parse_reward_transforms(args.reward_transforms))
        except ValueError as e:
            raise RunArgumentError(f"run.py: error: argument --reward_transforms: {e}") from None
    return args


def parse_tracked_estimators(text: str, mc: Optional[int] = None, iw: Optional[int] = None) -> List[str]:
    r"""The estimator ids of ``--track_variance`` (comma-separated, whitespace and duplicates
    dropped, order kept); each id is validated by the estimator grammar
    (:func:`ovis.estimators.config.parse_estimator_id`) and, given the run's ``mc`` and ``iw``, by
    the estimator's own constraints (``check_arguments``).  Raises :class:`RunArgumentError`."""
    from ovis.estimators.base import command_line_message
    from ovis.estimators.config import parse_estimator_id

    ids = list(dict.fromkeys(t.strip() for t in str(text).split(",") if t.strip()))
    for eid in ids:
        try:
            cls, config = parse_estimator_id(eid)
            if mc is not None and iw is not None:
                cls.check_arguments(mc=mc, iw=iw, **config)
        except ValueError as e:
            raise RunArgumentError(f"run.py: error: argument --track_variance: {eid!r}: "
                                   f"{command_line_message(e)}") from None
    return ids


# Flags that never change what a run computes (where it is stored, how it is displayed):
# they are left out of the run id.
#: flags that never change what a run computes; they are left out of the run id
NON_IDENTITY_FLAGS = frozenset(
    {"root", "data_root", "exp", "silent", "rf", "workers", "device", "deterministic",
     "checkpoint_every", "checkpoint_steps", "log_freq", "eval_chunk", "no_tensorboard",
     "no_samples", "compile", "no_retain_memory"}
)
# Defaults of the flags, used so that adding a new flag (with its default) does not change ids.
RUN_IDENTITY_DEFAULTS = {a.dest: a.default for a in build_run_parser()._actions if a.dest != "help"}
