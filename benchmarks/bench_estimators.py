r"""Peak memory and time of one training step (forward + backward) per estimator vs K.

The setting of the OVIS paper's efficiency study: a 1-layer sigmoid belief network with 200 units
(linear), batch 24, random binary 784-dimensional inputs with about 13% ones.  Peak memory is the
rise of the process's resident set during the step (Linux: the high-water mark ``VmHWM`` is reset
through ``/proc/self/clear_refs`` before each step), so it counts every allocation of the step
(activations, the particles' tensors, the autograd graph).  The slope of log-memory vs log-K is
fitted over K >= 100 (1 = linear).

    python benchmarks/bench_estimators.py                       # default grid
    python benchmarks/bench_estimators.py --ks 10,100,1000 --estimators vimco-arithmetic,ovis-S10-exclusive
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovis.estimators import build_estimator  # noqa: E402
from ovis.models.sbm import SigmoidBeliefNetwork  # noqa: E402

DEFAULT_ESTIMATORS = ("reinforce", "vimco-arithmetic", "vimco-geometric", "ovis-gamma1", "ovis-S1-exclusive",
                      "ovis-S10-exclusive", "wake-wake", "tvo-part2-config1")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _trim() -> None:
    r"""Return freed heap memory to the OS (glibc), so that the next peak is measured from a clean base."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def _reset_peak() -> bool:
    _trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(eid: str, K: int, model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    r"""``(median seconds per step, peak MB above the resting resident set)``."""
    extra = {"x_shape": (784,)} if eid == "reinforce-baseline" else {}
    est = build_estimator(eid, mc=1, iw=K, **extra)
    for _ in range(2):  # warm-up
        est(model, x, backward=True)
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        est(model, x, backward=True)
        times.append(time.perf_counter() - t0)
    # memory: one step from a trimmed heap, with the high-water mark reset
    model.zero_grad(set_to_none=True)
    gc.collect()
    ok = _reset_peak()
    base = _status_kb("VmRSS")
    est(model, x, backward=True)
    peak_mb = (_status_kb("VmHWM") - base) / 1024 if ok else float("nan")
    return statistics.median(times), peak_mb


def slope(ks: list[int], values: list[float]) -> float:
    pts = [(math.log(k), math.log(v)) for k, v in zip(ks, values) if k >= 100 and v > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="10,100,500,1000,5000")
    p.add_argument("--estimators", default=",".join(DEFAULT_ESTIMATORS))
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--N", type=int, default=200)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    ks = [int(k) for k in args.ks.split(",")]
    x = (torch.rand(args.batch, 784) < 0.13).float()
    model = SigmoidBeliefNetwork((784,), N=args.N, depth=args.depth, nlayers=0, x_mean=x.mean(0))
    print(f"# 1-layer SBN N={args.N} depth={args.depth}, batch {args.batch}, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}")
    print(f"{'estimator':22s} " + " ".join(f"{'K=' + str(k):>18s}" for k in ks) + "   mem slope  time slope")
    for eid in args.estimators.split(","):
        times, mems = [], []
        for K in ks:
            repeats = 5 if K <= 500 else 2
            t, m = measure(eid, K, model, x, repeats)
            times.append(t)
            mems.append(m)
        cells = " ".join(f"{t * 1e3:8.1f}ms {m:6.0f}MB" for t, m in zip(times, mems))
        print(f"{eid:22s} {cells}   {slope(ks, mems):9.2f}  {slope(ks, times):10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
