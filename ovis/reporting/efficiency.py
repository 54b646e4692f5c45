r"""``measure_efficiency.py``: memory use and time per training step of each estimator vs K.

``python measure_efficiency.py [--model sbm|gaussian-vae] [--estimators a,b,c] [--iw 5,10,50]
[--steps 5] [--bs 24] [--N 200] [--device auto|cpu|cuda] [--threads 1] [--output reports/] [--tag NAME]``

The model is the paper's 1-layer sigmoid belief network (``--model sbm``: 200 Bernoulli units,
linear networks, batch 24) or the Gaussian VAE (``--model gaussian-vae``: 200 normal units, tanh
MLPs with 200 hidden units); the data are a fixed random binary batch of shape ``[bs, 1, 28, 28]``
(the cost of a step does not depend on the pixel values, so no data file is needed).

A step is: the estimator's surrogate loss (``mc = 1``, ``iw = K``), ``backward``, an Adam step.
Measured, per estimator and K:

* ``time_per_step_s``: the median wall time of ``--steps`` steps after one warm-up step
  (``torch.cuda.synchronize`` around each step on the GPU); ``cpu_time_per_step_s``: the median
  CPU time of this process (all threads) per step -- on a shared CPU machine wall time is inflated
  by other processes, CPU time much less so;
* ``saved_MB``: the memory held by the autograd graph at ``backward`` -- the bytes of the distinct
  tensor storages saved for backward (``torch.autograd.graph.saved_tensors_hooks``): on the CPU this
  is the part of the step's memory that grows with K (it ignores short-lived temporaries);
* ``cuda_peak_MB``: ``torch.cuda.max_memory_allocated`` during the steps (GPU only; empty on the CPU).

Writes ``efficiency.csv|md|tex``, ``efficiency.png|pdf`` (log-log time and memory vs K, one line
per estimator) and ``index.html`` into ``<output>/efficiency-<model>[-<tag>]/``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pandas as pd
import torch

from ovis.reporting.outputs import Section, TextItem, render_index, save_figure, write_table

__all__ = ["build_efficiency_model", "measure_step", "measure", "efficiency_figure", "main"]

DEFAULT_ESTIMATORS = {"sbm": "vimco-arithmetic,ovis-gamma1,ovis-S1-exclusive,ovis-S10-exclusive,reinforce",
                      "gaussian-vae": "pathwise-iwae,stl,dreg,ovis-gamma1,vimco-arithmetic"}


def build_efficiency_model(model: str, N: int, seed: int = 1) -> torch.nn.Module:
    r"""The 1-layer SBN (``N`` units) or the Gaussian VAE through ``ovis.models.build_model``."""
    from ovis.datasets.core import DataSplits
    from ovis.models import build_model
    from ovis.training.arguments import parse_run_args

    torch.manual_seed(seed)
    x_shape = torch.Size([1, 28, 28])
    data = DataSplits(name="binmnist", train=[], valid=[], test=[], x_shape=x_shape,  # type: ignore[arg-type]
                      train_mean=torch.full(x_shape, 0.2))
    if model == "sbm":
        flags = ["--model", "sbm", "--prior", "bernoulli", "--N", str(N), "--depth", "1", "--nlayers", "0"]
    elif model == "gaussian-vae":
        flags = ["--model", "gaussian-vae", "--N", str(N), "--hdim", "200", "--nlayers", "2"]
    else:
        raise ValueError(f"--model must be sbm or gaussian-vae, got {model!r}")
    args = parse_run_args(flags + ["--dataset", "binmnist"])
    return build_model(args, data)


def _saved_bytes(fn: Any) -> int:
    seen: Dict[Any, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def measure_step(model: torch.nn.Module, estimator_id: str, K: int, x: torch.Tensor, steps: int,
                 device: torch.device) -> Dict[str, Any]:
    r"""Time and memory of a training step of ``estimator_id`` at ``K`` on the batch ``x``.

    A step is the surrogate loss (``mc = 1``, ``iw = K``), ``backward`` and an Adam step on the
    model's and the estimator's parameters; one warm-up step, then ``steps`` timed ones.

    Args:
        model: the model (on ``device``).
        estimator_id: an estimator id.
        K: the number of particles.
        x: the batch ``[bs, 1, 28, 28]`` (on ``device``).
        steps: timed steps.
        device: the device (``cuda``: synchronised around each step, peak memory recorded).

    Returns:
        ``{'estimator', 'iw', 'time_per_step_s', 'cpu_time_per_step_s', 'saved_MB', 'cuda_peak_MB',
        'steps'}``: the median wall and CPU times, the bytes saved for backward (MiB), the CUDA peak
        (MiB, ``None`` on the CPU).

    Raises:
        ValueError: the estimator refuses the id, ``K`` or the model (likewise ``TypeError`` and
            ``NotImplementedError``, which :func:`measure` also catches).
    """
    from ovis.estimators import build_estimator

    extra = {"x_shape": x.shape[1:]} if estimator_id == "reinforce-baseline" else {}
    est = build_estimator(estimator_id, mc=1, iw=K, **extra).to(device)
    params = list(model.parameters()) + list(est.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    holder: Dict[str, Any] = {}

    def forward() -> None:
        holder["loss"] = est(model, x)[0]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss, _, _ = est(model, x)
        loss.backward()
        opt.step()

    cuda = device.type == "cuda"
    step()  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None
    opt.zero_grad(set_to_none=True)
    saved = _saved_bytes(forward)
    holder["loss"].backward()
    opt.zero_grad(set_to_none=True)
    return {"estimator": estimator_id, "iw": K, "time_per_step_s": statistics.median(times),
            "cpu_time_per_step_s": statistics.median(cpu_times),
            "saved_MB": saved / 2 ** 20, "cuda_peak_MB": peak, "steps": steps}


def measure(model_name: str, estimators: Sequence[str], Ks: Sequence[int], steps: int, bs: int, N: int,
            device: torch.device, log: Any = print) -> pd.DataFrame:
    r""":func:`measure_step` for every estimator and ``K``, each on a fresh model (:func:`build_efficiency_model`,
    ``N`` units) and one fixed random binary batch ``[bs, 1, 28, 28]``; a combination the estimator
    refuses is logged (``log``) and skipped.

    Returns:
        One row per measured combination (the columns of :func:`measure_step`).
    """
    rows = []
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(bs, 1, 28, 28, generator=g) < 0.2).float().to(device)
    for est in estimators:
        for K in Ks:
            model = build_efficiency_model(model_name, N).to(device)
            try:
                r = measure_step(model, est, K, x, steps, device)
            except (ValueError, TypeError, NotImplementedError) as e:
                log(f"skip {est} K={K}: {e}")
                continue
            log(f"{est} K={K}: {r['time_per_step_s'] * 1e3:.1f} ms/step, saved {r['saved_MB']:.1f} MB"
                + (f", cuda peak {r['cuda_peak_MB']:.1f} MB" if r["cuda_peak_MB"] is not None else ""))
            rows.append(r)
    return pd.DataFrame(rows, columns=["estimator", "iw", "time_per_step_s", "cpu_time_per_step_s", "saved_MB",
                                       "cuda_peak_MB", "steps"])


def efficiency_figure(df: pd.DataFrame, title: str, device_is_cpu: bool = False,
                      colors: Optional[Mapping[str, Any]] = None) -> Any:
    r"""Time per step and memory vs K (log-log), one line per estimator (``colors[estimator]``, or
    a palette); on the CPU the CPU time dotted beside the wall time."""
    import matplotlib.pyplot as plt

    from ovis.reporting.report import _palette

    mem_cols = ["saved_MB"] + (["cuda_peak_MB"] if df["cuda_peak_MB"].notna().any() else [])
    fig, axes = plt.subplots(1, 1 + len(mem_cols), figsize=(5 * (1 + len(mem_cols)), 4))
    ests = list(dict.fromkeys(df["estimator"]))
    palette = [colors[e] for e in ests] if colors is not None else _palette(len(ests))
    for color, est in zip(palette, ests):
        t = df[df["estimator"] == est].sort_values("iw")
        axes[0].plot(t["iw"], t["time_per_step_s"] * 1e3, marker="o", color=color, label=est)
        if device_is_cpu:
            axes[0].plot(t["iw"], t["cpu_time_per_step_s"] * 1e3, marker="x", linestyle=":", color=color)
        for ax, c in zip(axes[1:], mem_cols):
            ax.plot(t["iw"], t[c], marker="o", color=color, label=est)
    axes[0].set_ylabel("time per step (ms)" + ("; dotted: CPU time" if device_is_cpu else ""))
    for ax, c in zip(axes[1:], mem_cols):
        ax.set_ylabel({"saved_MB": "memory saved for backward (MB)", "cuda_peak_MB": "CUDA peak memory (MB)"}[c])
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (particles)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _ints(text: str) -> List[int]:
    from ovis.training.arguments import int_arg

    try:
        out = [int_arg(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"--iw: {e}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"--iw needs integers >= 1, got {text!r}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""``measure_efficiency.py``: measure, then write the table, the figure and ``index.html`` (see the
    module docstring).

    Returns:
        The exit code: ``0``; ``1`` when no estimator could be measured; ``2`` on invalid arguments.
    """
    p = argparse.ArgumentParser(prog="measure_efficiency.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sbm", choices=["sbm", "gaussian-vae"])
    p.add_argument("--estimators", default=None, help="comma-separated estimator ids")
    p.add_argument("--iw", type=_ints, default=[5, 10, 50], help="values of K (comma-separated)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--bs", type=int, default=24, help="batch size (the paper: 24)")
    p.add_argument("--N", type=int, default=200, help="latent units (the paper: 200)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: timings on a shared machine are much steadier; "
                        "0 keeps torch's default)")
    p.add_argument("--output", default="reports/")
    p.add_argument("--tag", default="", help="suffix of the output folder")
    p.add_argument("--silent", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.steps < 1 or args.bs < 1 or args.N < 1:
        p.error("--steps, --bs and --N must be >= 1")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as run.py does: denormals slow score-function training
    ests = [e.strip() for e in (args.estimators or DEFAULT_ESTIMATORS[args.model]).split(",") if e.strip()]
    log = (lambda m: None) if args.silent else (lambda m: print(m, flush=True))
    df = measure(args.model, ests, args.iw, args.steps, args.bs, args.N, device, log)
    if df.empty:
        print("measure_efficiency.py: error: no estimator could be measured", file=sys.stderr)
        return 1
    outdir = Path(args.output) / (f"efficiency-{args.model}" + (f"-{args.tag}" if args.tag else ""))
    title = (f"{args.model} (N={args.N}, batch {args.bs}) on {device.type}"
             f"{f' ({torch.get_num_threads()} thread(s))' if device.type == 'cpu' else ''}"
             f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}: median of {args.steps} steps")
    disp = df.assign(ms_per_step=(df["time_per_step_s"] * 1e3).round(2),
                     cpu_ms_per_step=(df["cpu_time_per_step_s"] * 1e3).round(2), saved_MB=df["saved_MB"].round(2))
    disp = disp[["estimator", "iw", "ms_per_step", "cpu_ms_per_step", "saved_MB", "cuda_peak_MB"]]
    sections = [Section("Efficiency", [TextItem(title),
                                       save_figure(efficiency_figure(df, title, device.type == "cpu"), outdir, "efficiency",
                                                   "time per training step and memory vs K (log-log)"),
                                       write_table(df, outdir, "efficiency", "time and memory per estimator and K",
                                                   display=disp)])]
    render_index(outdir, f"Efficiency: {args.model}", sections)
    print(f"report written to {outdir / 'index.html'}")
    return 0
