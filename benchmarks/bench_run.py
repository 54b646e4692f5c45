r"""Benchmark of run.py's training step and test evaluation.

* training steps / s of the 3-layer linear sigmoid belief network (``--model sbm --N 200
  --nlayers 0 --depth 3``, batch 24, binarised MNIST) with ``vimco-arithmetic``, ``ovis-gamma1``,
  ``ovis-S1-exclusive`` and ``tvo-part2-config1`` at K = 5, 10, 50 (the loop of
  :meth:`ovis.training.run.Trainer.train_step`: batch fetch, estimator forward + backward, Adam);
* one test evaluation with K = 5000 particles (``evaluate_bound``, chunked to ``--eval_chunk``
  rows): seconds per image and the peak resident memory it adds, measured in a fresh process
  (the peak RSS ``VmHWM``, reset just before through ``/proc/self/clear_refs``, minus the RSS
  before), chunked (10,000 rows per forward pass, run.py's default ``--eval_chunk``) and unchunked
  (50,000 rows = 10 images x 5000 particles at once).

Usage: ``python benchmarks/bench_run.py [--data_root ../shared/data] [--steps 30] [--images 10]``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ovis.datasets import load_dataset  # noqa: E402
from ovis.estimators import build_estimator  # noqa: E402
from ovis.models import build_model  # noqa: E402
from ovis.training.arguments import parse_run_args  # noqa: E402
from ovis.training.evaluation import evaluate_bound, fetch_batch  # noqa: E402
from ovis.utils.memory import retain_freed_memory  # noqa: E402

SBN = ["--dataset", "binmnist", "--model", "sbm", "--prior", "bernoulli", "--N", "200", "--nlayers", "0",
       "--depth", "3", "--bs", "24"]
ESTIMATORS = ["vimco-arithmetic", "ovis-gamma1", "ovis-S1-exclusive", "tvo-part2-config1"]
KS = [5, 10, 50]


def _setup(data_root: str):
    args = parse_run_args(SBN + ["--data_root", data_root, "--mini"])
    torch.manual_seed(1)
    data = load_dataset(args.dataset, args.data_root, mini=True)
    model = build_model(args, data)
    return args, data, model


def train_speed(data_root: str, steps: int) -> List[Dict[str, float]]:
    torch.set_flush_denormal(True)
    retain_freed_memory()  # as run.py on the CPU
    args, data, model0 = _setup(data_root)
    state = {k: v.clone() for k, v in model0.state_dict().items()}
    rows = []
    n = len(data.train)
    for est_id in ESTIMATORS:
        for K in KS:
            model0.load_state_dict(state)
            est = build_estimator(est_id, mc=1, iw=K)
            opt = torch.optim.Adam(model0.parameters(), lr=3e-4)
            g = torch.Generator().manual_seed(0)

            def step(opt=opt, est=est, g=g):  # (bound now: B023)
                x = fetch_batch(data.train, torch.randint(n, (24,), generator=g))
                opt.zero_grad(set_to_none=True)
                est(model0, x, backward=True)
                opt.step()

            for _ in range(3):
                step()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            rows.append({"estimator": est_id, "K": K, "steps_per_s": steps / dt,
                         "cpu_ms_per_step": 1000 * dc / steps})
            print(f"  {est_id:20s} K={K:3d}  {steps / dt:8.2f} steps/s  {1000 * dc / steps:8.1f} CPU ms/step",
                  flush=True)
    return rows


def _reset_peak_rss() -> bool:
    r"""Reset the process's peak resident set size (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    r"""``VmHWM`` (peak) or ``VmRSS`` (current) from ``/proc/self/status``, in KiB; else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _eval_worker(data_root: str, images: int, chunk: int, queue) -> None:  # type: ignore[no-untyped-def]
    torch.set_flush_denormal(True)
    retain_freed_memory()  # as run.py on the CPU
    args, data, model = _setup(data_root)
    idx = torch.arange(images)
    evaluate_bound(model, data.test, idx[:1], 1, 10, chunk, torch.device("cpu"))  # warm-up
    reset = _reset_peak_rss()
    before = _rss_kib("VmRSS") if reset else _rss_kib("VmHWM")
    t0, c0 = time.perf_counter(), time.process_time()
    m = evaluate_bound(model, data.test, idx, 10, 5000, chunk, torch.device("cpu"))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    after = _rss_kib("VmHWM")
    queue.put({"chunk_rows": chunk, "images": images, "s_per_image": dt / images, "cpu_s_per_image": dc / images,
               "peak_extra_MiB": (after - before) / 1024.0, "peak_rss_MiB": after / 1024.0,
               "L_5000": m["loss/L_k"]})


def eval_cost(data_root: str, images: int, chunk: int) -> Dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_eval_worker, args=(data_root, images, chunk, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print("training steps/s, SBN 3x200 linear, batch 24:")
    rows = train_speed(a.data_root, a.steps)
    print("\nsteps/s (wall clock; CPU ms per step in brackets: less sensitive to other processes)")
    print("| estimator | K=5 | K=10 | K=50 |\n|---|---|---|---|")
    for est in ESTIMATORS:
        vals = [(r["steps_per_s"], r["cpu_ms_per_step"]) for r in rows if r["estimator"] == est]
        print(f"| {est} | " + " | ".join(f"{v:.1f} ({c:.0f} ms)" for v, c in vals) + " |")
    print(f"\ntest evaluation, K = 5000, {a.images} images (batch 10):")
    evals = [eval_cost(a.data_root, a.images, c) for c in (10000, 50000)]
    print("| chunk (rows) | s / image | CPU s / image | peak extra RSS (MiB) | L_5000 |\n|---|---|---|---|---|")
    for e in evals:
        print(f"| {e['chunk_rows']} | {e['s_per_image']:.3f} | {e['cpu_s_per_image']:.3f} | "
              f"{e['peak_extra_MiB']:.0f} | {e['L_5000']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"train": rows, "eval": evals}, indent=2))


if __name__ == "__main__":
    main()
