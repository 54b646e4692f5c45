r"""Figure 1 of the OVIS paper: the gradient's variance, SNR and DSNR vs the number of particles K.

The model is the linear-Gaussian model of Rainforth et al. (2018), "Tighter variational bounds are
not necessarily better", in ``D`` dimensions:

.. math::
    p(z) = \mathcal N(\mu, I),\quad p(x|z) = \mathcal N(z, I),\quad
    q_\phi(z|x) = \mathcal N(A x + b, \tfrac23 I),\quad \phi = (A \in \mathbb R^{D\times D}, b \in \mathbb R^D).

The true posterior is :math:`\mathcal N((x+\mu)/2, I/2)`, so the optimum of the inference network
is :math:`A^\star = \tfrac12 I`, :math:`b^\star = \mu/2` (the covariance is fixed at ``2/3 I``, as
in Rainforth et al.).  ``mu ~ N(0, I)`` and the data ``x_i ~ p(x) = N(mu, 2 I)`` (``npoints`` of
them) are drawn with ``--seed`` (the ``gaussian-toy`` data set's generator); the generative
parameter is set at its optimum for these data, ``mu = mu* = mean(x)``, and the inference
parameters at the optimum plus Gaussian noise of standard deviation ``--noise`` (default ``0.01``,
the scale of Rainforth et al.'s perturbation) on every entry:
``A = I/2 + 0.01 eps_A``, ``b = mu*/2 + 0.01 eps_b``.  Near the optimum the true gradient is
proportional to the perturbation, so the SNR scales with ``--noise``; the slopes vs K do not.

A *draw* is one estimate of the gradient of the bound averaged over the ``npoints`` data points,
:math:`g = \nabla_\phi \frac1N \sum_i \hat{\mathcal L}_K(x_i)` (the estimator's surrogate with
``mc = 1``), for :math:`\phi = (A, b)` (``P = 2D`` coordinates).  ``mc_samples`` independent draws
give (:func:`ovis.analysis.gradients.gradient_statistics`) the variance, SNR, DSNR and the mean's
magnitude, for every estimator and every K of a log-spaced range ``iw_min .. iw_max``
(``iw_steps`` values).

Efficient draws: ``n`` draws are computed in *one* estimator call by giving each draw its own copy
of ``(A, b)`` (parameters of shape ``[n, D]``) and stacking ``n`` copies of the data in the batch:
the estimators treat data points independently and average the surrogate over the batch, so the
gradient w.r.t. copy ``r`` is ``1/n`` times draw ``r`` exactly (checked against the plain loop of
:func:`ovis.analysis.gradients.gradient_samples` in the tests).  ``samples_per_batch`` bounds
``n``, and so does ``--max_elements`` (the size of the ``[n * npoints * K, D]`` particle tensor).

Outputs, in ``<root>/<exp>/<run_id>/``: ``config.json``, ``status.json`` (``OVIS_JOB_ID`` as
``job_id``), ``statistics.json`` / ``statistics.csv`` (one row per estimator and K: the
statistics over all of ``(A, b)`` and over each group alone, e.g. ``snr_b``) and
``samples/<estimator>-K<k>.npy`` (the first ``--save_coords`` coordinates of every draw); all
written atomically.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from ovis.analysis.gradients import gradient_statistics
from ovis.training.arguments import int_arg, nonneg_float, pos_int
from ovis.utils.files import atomic_write_bytes

__all__ = [
    "AsymptoticArgumentError",
    "ReplicatedLinearGaussian",
    "build_parser",
    "parse_args",
    "iw_range",
    "toy_problem",
    "reference_model",
    "saved_coordinates",
    "fit_slope",
    "draw_gradients",
    "run_id",
    "main",
    "SIGMA_Q",
    "GROUPS",
    "GROUP_COLUMNS",
    "group_statistics",
    "snr_floor",
    "above_floor",
]

#: the fixed standard deviation of q(z|x) (covariance 2/3 I, Rainforth et al. 2018)
SIGMA_Q = math.sqrt(2.0 / 3.0)


class AsymptoticArgumentError(ValueError):
    r"""An invalid ``asymptotic_variance.py`` command line (names the flag and the reason)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise AsymptoticArgumentError(f"asymptotic_variance.py: {message}")


def build_parser() -> argparse.ArgumentParser:
    r"""The argument parser of ``asymptotic_variance.py`` (its errors raise :class:`AsymptoticArgumentError`
    instead of exiting); :func:`parse_args` validates the parsed values.
    """
    p = _Parser(prog="asymptotic_variance.py", description="Figure 1: gradient variance / SNR / DSNR vs K "
                "on the Gaussian toy model (see ovis/analysis/asymptotic.py).")
    p.add_argument("--estimator", action="append", default=[], help="one estimator id (repeatable)")
    p.add_argument("--estimators", default="", help="comma-separated estimator ids")
    p.add_argument("--mc_samples", type=pos_int, default=1000, help="gradient draws per estimator and K (>= 2)")
    p.add_argument("--samples_per_batch", type=pos_int, default=1000, help="draws computed in one call (at most)")
    p.add_argument("--iw_steps", type=pos_int, default=5, help="number of K values (log-spaced)")
    p.add_argument("--iw_min", type=pos_int, default=3, help="smallest K")
    p.add_argument("--iw_max", type=pos_int, default=1000, help="largest K")
    p.add_argument("--npoints", type=pos_int, default=1024, help="data points (the gradient averages over them)")
    p.add_argument("--D", type=pos_int, default=20, help="dimension of x and z")
    p.add_argument("--seed", type=int_arg, default=1, help="seed of mu, the data, the noise and the draws")
    p.add_argument("--noise", type=nonneg_float, default=0.01,
                   help="std of the Gaussian perturbation of (A, b) around the optimum (default 0.01)")
    p.add_argument("--save_coords", type=int_arg, default=4, help="coordinates of each draw saved as .npy")
    p.add_argument("--max_elements", type=pos_int, default=20_000_000,
                   help="bound on n*npoints*K*D (memory) for one call")
    p.add_argument("--epsilon", type=nonneg_float, default=1e-15, help="variance floor of the SNR")
    p.add_argument("--exp", default="asymptotic-variance", help="experiment name")
    p.add_argument("--root", default="runs/", help="root of the run directories")
    p.add_argument("--data_root", default="data/", help="accepted for the manager's contract (unused)")
    p.add_argument("--id", default="", help="a tag added to the run id")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--silent", action="store_true", help="no progress output")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    r"""Parse and validate ``argv``; raises :class:`AsymptoticArgumentError` (a ``ValueError``)."""
    from ovis.estimators.config import parse_estimator_id

    args = build_parser().parse_args(list(argv))
    ids = [e.strip() for e in args.estimator if e.strip()]
    ids += [e.strip() for e in args.estimators.split(",") if e.strip()]
    if not ids:
        raise AsymptoticArgumentError("asymptotic_variance.py: give --estimator NAME or --estimators a,b,c")
    ids = list(dict.fromkeys(ids))
    for e in ids:
        try:
            parse_estimator_id(e)
        except (ValueError, NotImplementedError) as err:
            raise AsymptoticArgumentError(f"asymptotic_variance.py: --estimator {e!r}: {err}") from None
    args.estimators = ids
    del args.estimator
    if args.mc_samples < 2:
        raise AsymptoticArgumentError("asymptotic_variance.py: --mc_samples must be >= 2 (a variance needs two draws)")
    if args.iw_min > args.iw_max:
        raise AsymptoticArgumentError(f"asymptotic_variance.py: --iw_min {args.iw_min} > --iw_max {args.iw_max}")
    if args.save_coords < 0:
        raise AsymptoticArgumentError("asymptotic_variance.py: --save_coords must be >= 0")
    if args.device not in ("auto", "cpu", "cuda"):
        raise AsymptoticArgumentError(f"asymptotic_variance.py: --device must be auto, cpu or cuda, got {args.device!r}")
    return args


def iw_range(iw_min: int, iw_max: int, iw_steps: int) -> List[int]:
    r"""``iw_steps`` log-spaced integers from ``iw_min`` to ``iw_max`` (duplicates removed)."""
    if iw_steps == 1 or iw_min == iw_max:
        return sorted({iw_min, iw_max}) if iw_steps > 1 else [iw_min]
    vals = np.round(np.exp(np.linspace(math.log(iw_min), math.log(iw_max), iw_steps))).astype(int)
    return sorted(set(int(v) for v in vals))


class ReplicatedLinearGaussian(nn.Module):
    r"""The linear-Gaussian model with ``n`` copies of the inference parameters.

    ``inference_network.A``: ``[n, D, D]``, ``inference_network.b``: ``[n, D]``;
    ``generative_model.mu``: ``[D]``.  The input batch (after the estimator's expansion,
    ``[n * rows, D]``) is split into ``n`` consecutive blocks, block ``r`` using copy ``r``:
    ``q(z|x) = N(A_r x + b_r, sigma_q^2 I)``.  Same maths as
    :class:`ovis.models.gaussian_toy.GaussianToyModel`.
    """

    def __init__(self, A: Tensor, b: Tensor, mu: Tensor, sigma: float = SIGMA_Q) -> None:
        super().__init__()
        if A.dim() != 3 or b.dim() != 2 or A.shape != (b.shape[0], b.shape[1], b.shape[1]) or mu.shape != b.shape[1:]:
            raise ValueError(f"A must be [n, D, D], b [n, D] and mu [D], got {tuple(A.shape)}, "
                             f"{tuple(b.shape)}, {tuple(mu.shape)}")
        self.inference_network = nn.Module()
        self.inference_network.A = nn.Parameter(A.clone())
        self.inference_network.b = nn.Parameter(b.clone())
        self.generative_model = nn.Module()
        self.generative_model.mu = nn.Parameter(mu.clone())
        self.sigma = float(sigma)

    def posterior(self, x: Tensor) -> Independent:
        r"""``q(z|x) = N(A_r x + b_r, sigma^2 I)``, row block ``r`` of ``x`` ``[n * rows, D]`` using copy ``r``;
        batch ``[n * rows]``, event ``[D]``.

        Raises:
            ValueError: the number of rows of ``x`` is not a multiple of the ``n`` copies.
        """
        n, D = self.inference_network.b.shape
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows is not a multiple of the {n} copies")
        xv = x.view(n, -1, D)
        loc = (torch.bmm(xv, self.inference_network.A.transpose(1, 2)) + self.inference_network.b[:, None])
        loc = loc.reshape(x.shape)
        return Independent(Normal(loc, torch.full_like(loc, self.sigma)), 1)

    def prior(self, rows: int) -> Independent:
        r"""``p(z) = N(mu, I)``, batch ``[rows]``, event ``[D]``."""
        mu = self.generative_model.mu
        return Independent(Normal(mu.expand(rows, -1), torch.ones_like(mu).expand(rows, -1)), 1)

    def forward(self, x: Tensor, zgrads: bool = False, **kwargs: Any) -> Dict[str, Any]:
        r"""The model protocol's mapping ``{'px', 'z', 'qz', 'pz'}``: ``z ~ q(z|x)`` (``rsample`` when
        ``zgrads``) and ``p(x|z) = N(z, I)``.
        """
        qz = self.posterior(x)
        z = qz.rsample() if zgrads else qz.sample()
        return {"px": Independent(Normal(z, torch.ones_like(z)), 1), "z": [z], "qz": [qz], "pz": [self.prior(x.shape[0])]}

    def infer(self, x: Tensor, z: Sequence[Tensor], **kwargs: Any) -> List[Any]:
        r"""``[q(z|x)]`` (one layer; ``z`` is ignored)."""
        return [self.posterior(x)]

    def sample_from_prior(self, bs: int, **kwargs: Any) -> Dict[str, Any]:
        r"""``z ~ N(mu, I)`` for ``bs`` rows, then ``{'px': N(z, I), 'z': [z], 'pz': [p(z)]}``."""
        pz = self.prior(bs)
        z = pz.sample()
        return {"px": Independent(Normal(z, torch.ones_like(z)), 1), "z": [z], "pz": [pz]}


def _make_data(D: int, npoints: int, seed: int) -> Tuple[str, Dict[str, Tensor]]:
    r"""The data set: the project's ``gaussian-toy`` generator when present (switch point), else the
    same maths here (``mu ~ N(0, I)``, ``z ~ N(mu, I)``, ``x ~ N(z, I)``)."""
    try:
        from ovis.datasets.synthetic import make_gaussian_toy

        t = make_gaussian_toy(D, npoints, seed)
        return "ovis.datasets.synthetic.make_gaussian_toy", {"x": t["x"].double(), "mu_star": t["mu_star"].double()}
    except ImportError:
        g = torch.Generator().manual_seed(int(seed))
        mu = torch.randn(D, dtype=torch.float64, generator=g)
        z = mu + torch.randn(npoints, D, dtype=torch.float64, generator=g)
        x = z + torch.randn(npoints, D, dtype=torch.float64, generator=g)
        return "ovis.analysis.asymptotic (fallback)", {"x": x, "mu_star": x.mean(0)}


def toy_problem(D: int, npoints: int, seed: int, noise: float,
                dtype: torch.dtype = torch.float32) -> Dict[str, Tensor]:
    r"""The data ``x`` ``[npoints, D]``, ``mu = mu* = mean(x)`` (the generative optimum) and the
    perturbed inference optimum ``A = I/2 + noise * eps_A`` ``[D, D]``, ``b = mu*/2 + noise * eps_b``."""
    _, data = _make_data(D, npoints, seed)
    g = torch.Generator().manual_seed(int(seed) + 7919)
    A = 0.5 * torch.eye(D, dtype=torch.float64) + noise * torch.randn(D, D, generator=g, dtype=torch.float64)
    b = data["mu_star"] / 2 + noise * torch.randn(D, generator=g, dtype=torch.float64)
    return {k: v.to(dtype) for k, v in {"mu": data["mu_star"], "x": data["x"], "A": A, "b": b}.items()}


def reference_model(problem: Dict[str, Tensor]) -> Tuple[str, nn.Module]:
    r"""The project's plain ``gaussian-toy`` model with the problem's parameters (for cross-checks
    of the replicated draws)."""
    from ovis.models.gaussian_toy import GaussianToyModel

    D = problem["mu"].shape[0]
    model = GaussianToyModel(D=D).to(problem["mu"].dtype)
    with torch.no_grad():
        model.inference_network.A.copy_(problem["A"])
        model.inference_network.b.copy_(problem["b"])
        model.generative_model.mu.copy_(problem["mu"])
    return "ovis.models.gaussian_toy.GaussianToyModel", model


def draw_gradients(estimator: nn.Module, problem: Dict[str, Tensor], mc_samples: int, per_call: int,
                   device: torch.device | str = "cpu") -> Tensor:
    r"""``mc_samples`` independent draws of the gradient of the bound (minus the surrogate's
    gradient) w.r.t. ``(A, b)``: ``[mc_samples, D*D + D]`` (``A`` row-major first, then ``b``),
    computed ``per_call`` draws at a time (see the module docstring)."""
    x = problem["x"].to(device)
    D = x.shape[1]
    out: List[Tensor] = []
    done = 0
    while done < mc_samples:
        n = min(per_call, mc_samples - done)
        model = ReplicatedLinearGaussian(problem["A"].expand(n, D, D).to(device), problem["b"].expand(n, D).to(device),
                                         problem["mu"].to(device))
        xb = x.repeat(n, 1)  # [n * npoints, D], block r = copy r
        loss, _, _ = estimator(model, xb)
        gA, gb = torch.autograd.grad(loss, [model.inference_network.A, model.inference_network.b],
                                     allow_unused=True)
        gA = torch.zeros_like(model.inference_network.A) if gA is None else gA
        gb = torch.zeros_like(model.inference_network.b) if gb is None else gb
        out.append((-n * torch.cat([gA.reshape(n, D * D), gb], dim=1)).detach().cpu())
        done += n
    return torch.cat(out)


def saved_coordinates(D: int, count: int) -> Tuple[List[int], List[str]]:
    r"""Indices (in a draw) and names of the coordinates saved as samples: alternately the
    diagonal ``A[i, i]`` and ``b[i]``, ``count`` in all."""
    idx, names = [], []
    for i in range(D):
        for j, name in ((i * D + i, f"A[{i},{i}]"), (D * D + i, f"b[{i}]")):
            if len(idx) < count:
                idx.append(j)
                names.append(name)
    return idx, names


def run_id(args: argparse.Namespace) -> str:
    r"""A deterministic id: the estimators, then a hash of the values that define the run."""
    ident = {k: getattr(args, k) for k in ("estimators", "mc_samples", "samples_per_batch", "iw_steps", "iw_min",
                                           "iw_max", "npoints", "D", "seed", "noise", "id")}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    head = "+".join(args.estimators)
    head = head if len(head) <= 60 else head[:60]
    return f"{head}{'-' + args.id if args.id else ''}-{digest}".replace("/", "_")


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def fit_slope(K: Sequence[float], y: Sequence[float]) -> float:
    r"""Least-squares slope of ``log y`` vs ``log K`` (NaN with fewer than two positive points)."""
    pts = [(math.log(k), math.log(v)) for k, v in zip(K, y) if v is not None and v > 0 and math.isfinite(v)]
    if len(pts) < 2:
        return float("nan")
    a = np.array(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


STATISTICS = ("variance", "snr", "dsnr", "magnitude")


def snr_floor(mc_samples: float) -> float:
    r"""The Monte Carlo floor of a coordinate's SNR estimated from ``N`` draws when its true mean is
    0: :math:`E|\hat\mu| / \sigma = \sqrt{2 / (\pi N)}`."""
    if not mc_samples > 0:
        raise ValueError(f"mc_samples must be > 0, got {mc_samples}")
    return math.sqrt(2.0 / (math.pi * float(mc_samples)))


def above_floor(snr: float, mc_samples: float, factor: float = 2.0) -> bool:
    r"""Whether an estimated SNR is clear of the Monte Carlo floor (more than ``factor`` times
    :func:`snr_floor`): below, the estimated mean is mostly noise, and so are the SNR, the DSNR and
    ``|E g|`` at that point; such points are left out of fitted slopes."""
    return bool(math.isfinite(snr) and snr > factor * snr_floor(mc_samples))
#: parameter groups with statistics of their own: ``<statistic>_<group>`` (the paper's Figure 1 uses ``b``)
GROUPS = ("A", "b")
#: the per-group statistic columns of ``statistics.json`` (``snr_b``, ...)
GROUP_COLUMNS = tuple(f"{s}_{g}" for g in GROUPS for s in STATISTICS)


def _group_slices(D: int) -> Tuple[slice, slice]:
    r"""The coordinates of each group of :data:`GROUPS` in a draw ``[D*D + D]``: ``A`` row-major, then ``b``."""
    return slice(0, D * D), slice(D * D, D * D + D)


def group_statistics(grads: Tensor, D: int, epsilon: float = 1e-15) -> Dict[str, float]:
    r"""Statistics of draws ``[N, D*D + D]`` (``A`` row-major, then ``b``): over all coordinates
    (``variance``, ``snr``, ``dsnr``, ``magnitude``) and over each group alone (``snr_b``,
    ``variance_A``, ...; per-coordinate statistics averaged over the group's coordinates)."""
    if grads.dim() != 2 or grads.shape[1] != D * D + D:
        raise ValueError(f"grads must have shape [N, D*D + D = {D * D + D}], got {tuple(grads.shape)}")
    out = {k: float(v) for k, v in gradient_statistics(grads, epsilon).items()}
    for name, cols in zip(GROUPS, _group_slices(D)):
        out.update({f"{k}_{name}": float(v) for k, v in gradient_statistics(grads[:, cols], epsilon).items()})
    return out


def compute(args: argparse.Namespace, rundir: Path, log: Any) -> Dict[str, Any]:
    r"""The measurement of ``asymptotic_variance.py``: for every estimator and ``K`` of
    :func:`iw_range`, ``args.mc_samples`` gradient draws (:func:`draw_gradients`) and their
    :func:`group_statistics`; the first ``save_coords`` coordinates of the draws are saved under
    ``rundir/samples/``.

    Args:
        args: the validated arguments (:func:`parse_args`).
        rundir: the run directory.
        log: a function of one message string (progress).

    Returns:
        ``{'rows': [...], 'slopes': {estimator: {statistic: slope}}, 'skipped': [...], 'iw': [K...],
        'device': str}``: one row per (estimator, ``K``), the log-log slopes of the statistics in
        ``K`` (:func:`fit_slope`), and the combinations the estimator refused (with the reason).
    """
    from ovis.estimators import build_estimator

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    problem = toy_problem(args.D, args.npoints, args.seed, args.noise)
    rows: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    Ks = iw_range(args.iw_min, args.iw_max, args.iw_steps)
    for est_id in args.estimators:
        for K in Ks:
            try:
                estimator = build_estimator(est_id, mc=1, iw=K).to(device)
            except (ValueError, TypeError) as e:
                skipped.append({"estimator": est_id, "iw": K, "reason": str(e)})
                log(f"skip {est_id} K={K}: {e}")
                continue
            seed = zlib.crc32(f"{args.seed}:{est_id}:{K}".encode())
            torch.manual_seed(seed)
            per_call = max(1, min(args.samples_per_batch, args.max_elements // max(1, args.npoints * K * args.D)))
            t0 = time.perf_counter()
            grads = draw_gradients(estimator, problem, args.mc_samples, per_call, device)
            secs = time.perf_counter() - t0
            stats = group_statistics(grads.double(), args.D, args.epsilon)
            rows.append({"estimator": est_id, "iw": K, **stats, "mc_samples": args.mc_samples,
                         "draws_per_call": per_call, "seconds": secs})
            if args.save_coords > 0:
                idx, _ = saved_coordinates(args.D, args.save_coords)
                _atomic_npy(rundir / "samples" / f"{est_id}-K{K}.npy", grads[:, idx].numpy())
            log(f"{est_id} K={K}: " + ", ".join(f"{k}={stats[k]:.4g}" for k in STATISTICS) + f" ({secs:.1f}s)")
    slopes = {}
    for est_id in args.estimators:
        r = [x for x in rows if x["estimator"] == est_id]
        slopes[est_id] = {s: fit_slope([x["iw"] for x in r], [x[s] for x in r]) for s in STATISTICS}
    return {"rows": rows, "slopes": slopes, "skipped": skipped, "iw": Ks, "device": str(device)}


def _rows_csv(rows: List[Dict[str, Any]]) -> str:
    cols = ["estimator", "iw", *STATISTICS, *GROUP_COLUMNS, "mc_samples",
            "draws_per_call", "seconds"]
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(repr(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols))
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""``asymptotic_variance.py``: returns 0 on success, 2 on bad arguments, 1 on failure."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except AsymptoticArgumentError as e:
        print(str(e), file=sys.stderr)
        return 2
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    rid = run_id(args)
    rundir = Path(args.root) / args.exp / rid
    rundir.mkdir(parents=True, exist_ok=True)
    job_id = os.environ.get("OVIS_JOB_ID")
    started = time.time()
    config = {k: v for k, v in vars(args).items()}
    config.update({"script": "asymptotic_variance.py", "run_id": rid, "job_id": job_id, "argv": argv,
                   "model": "linear-gaussian (Rainforth et al. 2018), sigma_q = sqrt(2/3)",
                   "data_source": _make_data(1, 1, 0)[0],
                   "saved_coordinates": saved_coordinates(args.D, args.save_coords)[1],
                   "gradient": "d/d(A [D, D], b [D]) of the bound averaged over npoints data points",
                   "iw_values": iw_range(args.iw_min, args.iw_max, args.iw_steps)})
    try:
        import ovis

        config["version"] = getattr(ovis, "__version__", None)
    except Exception:  # noqa: BLE001
        pass
    _atomic_json(rundir / "config.json", config)
    status = {"status": "running", "started": started, "ended": None, "step": 0, "job_id": job_id,
              "error": None, "traceback": None}
    _atomic_json(rundir / "status.json", status)
    log = (lambda msg: None) if args.silent else (lambda msg: print(msg, flush=True))
    try:
        result = compute(args, rundir, log)
        _atomic_json(rundir / "statistics.json", result)
        atomic_write_bytes(rundir / "statistics.csv", _rows_csv(result["rows"]).encode())
        status.update(status="success", ended=time.time(), step=len(result["rows"]))
        _atomic_json(rundir / "status.json", status)
        log(f"statistics written to {rundir}")
        return 0
    except KeyboardInterrupt:
        status.update(status="aborted", ended=time.time(), error="KeyboardInterrupt")
        _atomic_json(rundir / "status.json", status)
        return 130
    except Exception as e:  # noqa: BLE001 - recorded in status.json, exit code says failure
        status.update(status="failed", ended=time.time(), error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc())
        _atomic_json(rundir / "status.json", status)
        print(traceback.format_exc(), file=sys.stderr)
        return 1
