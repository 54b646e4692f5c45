r"""The speed targets of the project, measured: estimator overhead, training steps, evaluation.

Setting (as measured for the original OVIS code): 3-layer linear sigmoid belief network with 200
units per layer, batch 24, random binary 784-dimensional input with about 13% ones; the Gaussian
VAE (200 latents, tanh MLP 2 x 200) for the reparameterised estimators; fixed parameters, denormal
floats flushed, ``torch.set_num_threads(--threads)``.

1. **Estimator overhead**: median time of the estimator's forward + backward (no optimiser step)
   divided by the bare model's forward + backward on the same ``B*K`` particles (its log-densities
   summed, then backward).  Multi-pass estimators (OVIS-MC) are compared with the bare passes they
   make (``K + S`` particles).
   **Multi-pass estimators** (``--only multipass``, in the default set): MuProp, ARM/DisARM, REBAR
   and RELAX evaluate the model several times a step (the layer-wise estimators of a 3-layer SBN);
   their passes are counted during a step (the rows given to ``log_joint_at``, with and without an
   autograd graph, in units of ``B*K``), and the estimator's forward + backward is divided by as
   many bare passes: ``n_graph x`` (bare forward + backward) ``+ n_nograd x`` (bare forward).
2. **Training step** (forward + backward + Adam, the optimiser of ``run.py``) of the SBN at K = 5 and 50.
3. **Evaluation**: ``L_5000`` per test image (chunked particles, inference mode) and its peak
   memory (rise of the resident set).
4. **Denormals** (``--denormal-steps N``): step time after N Adam steps of the SBN and the
   Gaussian VAE with ``ovis-gamma1`` at K = 50, against a fresh model, measured alternately.

5. **torch.compile** (``--only compile``, not in the default set: compiling takes about a minute):
   eager vs compiled training step of the SBN (``run.py --compile``:
   :func:`ovis.estimators.base.compile_estimator`).
6. **Retained memory** (``--only memory``, run first): the training step with glibc's initial malloc thresholds
   and with freed memory retained (:mod:`ovis.utils.memory`, what ``run.py`` does on the CPU),
   switched in one process between blocks of steps, with the minor page faults per step.

7. **Device** (``--only device``; the only section with ``--device cuda``): the training step
   (forward + backward + Adam) of every estimator family at K = 5 / 50 / 500 (``--ks``) on
   ``--device``: the SBN for the score-function and REBAR-line estimators, the Gaussian VAE for the
   reparameterised ones; the median step time (``torch.cuda.synchronize`` around each step on a
   GPU) and the peak memory of the steps (``torch.cuda.max_memory_allocated``; on the CPU the
   rise of the resident set).  ``--device cuda`` without CUDA stops at once (exit 2).

8. **Model check** (``--only check``, in the default set): the protocol check of a model's output
   (:mod:`ovis.models.protocol`), which runs on an estimator's first call on a model: the check
   alone on the estimator's own output (min of 20 calls), and the training step once checked
   against the step with the check off (alternated), for a score-function estimator on the SBN
   (the fused path) and on the Gaussian VAE, and pathwise ones on the Gaussian VAE (with the
   gradient-path walk); then the per-call costs, once checked, of the look-up and of the
   ``backward=True`` spent-loss guard in microseconds.

Freed memory is retained as by ``run.py`` (``--no-retain-memory``: glibc's default, to compare).

    python benchmarks/bench_step.py [--threads 2] [--repeats 30] [--denormal-steps 1000] [--only ...]
    python benchmarks/bench_step.py --only check
    python benchmarks/bench_step.py --device cuda [--ks 5,50,500] [--repeats 20]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovis.estimators import build_estimator  # noqa: E402
from ovis.estimators.base import GradientEstimator, RuntimeParams, _spent, compile_estimator  # noqa: E402
from ovis.models.protocol import set_model_checks  # noqa: E402
from ovis.models.sbm import SigmoidBeliefNetwork  # noqa: E402
from ovis.models.vae import VAE  # noqa: E402
from ovis.training.evaluation import evaluate_bound  # noqa: E402
from ovis.training.optimizers import build_optimizer  # noqa: E402
from ovis.utils.memory import (  # noqa: E402
    GLIBC_INITIAL_THRESHOLDS,
    MAX_MMAP_THRESHOLD,
    retain_freed_memory,
    set_malloc_thresholds,
)

SINGLE_PASS_SF = ["reinforce", "reinforce-baseline", "vimco-arithmetic", "vimco-geometric", "ovis-gamma1",
                  "ovis-gamma0", "wake-wake", "tvo-part2-config1"]
PATHWISE = ["pathwise-vae", "pathwise-iwae", "stl", "dreg"]
MULTI_PASS = ["muprop", "simple-muprop", "arm", "disarm", "rebar", "dynamic-rebar", "relax"]
STEP_TARGETS_MS = {5: 5.3, 50: 40.0}


def median_time(fn: Callable[[], None], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def interleaved_median_times(fns: Sequence[Callable[[], None]], repeats: int, warmup: int = 3) -> List[float]:
    r"""Median times of ``fns`` measured in turn, in the order ``a b c c b a a b c ...``, so that a
    drift of the machine's speed (a shared or throttled CPU) and the position in a round hit all
    alike and their ratios stay fair."""
    for _ in range(warmup):
        for f in fns:
            f()
    times: List[List[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for i in range(repeats):
        for j in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fns[j]()
            times[j].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def paired_median_times(fa: Callable[[], None], fb: Callable[[], None], repeats: int,
                        warmup: int = 3) -> Tuple[float, float]:
    r"""Median times of ``fa`` and ``fb`` measured alternately (:func:`interleaved_median_times`)."""
    ta, tb = interleaved_median_times((fa, fb), repeats, warmup)
    return ta, tb


def reference_matmul_us() -> float:
    r"""Median time (us) of a ``[120, 200] @ [200, 784]`` float32 matmul: the machine's speed phase."""
    a, w = torch.randn(120, 200), torch.randn(200, 784)
    return median_time(lambda: torch.mm(a, w), 200, warmup=20) * 1e6


def sbn(x: torch.Tensor) -> SigmoidBeliefNetwork:
    return SigmoidBeliefNetwork((784,), N=200, depth=3, nlayers=0, x_mean=x.mean(0))


def gaussian_vae(x: torch.Tensor) -> VAE:
    return VAE((784,), prior="normal", N=200, hdim=200, nlayers=2, x_mean=x.mean(0))


def bare_pass(model: torch.nn.Module, x: torch.Tensor, K: int, zgrads: bool) -> Callable[[], None]:
    helper = GradientEstimator(mc=1, iw=K)

    def run() -> None:
        model.zero_grad(set_to_none=True)
        p = helper.evaluate(model, x, RuntimeParams(), K=K, zgrads=zgrads)
        (p.log_px.sum() + p.log_qz.sum() + p.log_pz.sum()).backward()

    return run


def estimator_pass(est: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        est(model, x, backward=True)

    return run


def train_step(est: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    opt = build_optimizer("adam", [{"params": list(model.parameters()) + list(est.parameters()), "lr": 1e-4}])

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        est(model, x, backward=True)
        opt.step()

    return run


def overhead_table(x: torch.Tensor, repeats: int) -> None:
    print("\n## 1. Estimator overhead: estimator fwd+bwd / bare model fwd+bwd (target <= 1.10 single-pass)")
    print("   (bare and estimator passes alternate, so the ratio is immune to a drifting machine)")
    print(f"{'estimator':22s} {'K':>4s} {'bare ms':>9s} {'est ms':>9s} {'ratio':>7s}")
    for K in (5, 50):
        torch.manual_seed(0)
        model = sbn(x)
        bare = bare_pass(model, x, K, zgrads=False)
        for eid in SINGLE_PASS_SF:
            tb, t = paired_median_times(bare, estimator_pass(build_estimator(eid, iw=K, x_shape=(784,)), model, x),
                                        repeats)
            print(f"{eid:22s} {K:4d} {tb * 1e3:9.2f} {t * 1e3:9.2f} {t / tb:7.2f}", flush=True)
        S = 10
        # OVIS-MC -exclusive: the K particles of the bound with gradients, then S without
        bare_k = bare_pass(model, x, K, zgrads=False)
        bare_s = bare_pass(model, x, S, zgrads=False)

        def bare_ks(bare_k=bare_k, S=S, model=model) -> None:  # (bound now: B023)
            bare_k()
            with torch.no_grad():
                GradientEstimator(mc=1, iw=S).evaluate(model, x, RuntimeParams(), K=S, zgrads=False)

        tb, t = paired_median_times(bare_ks, estimator_pass(build_estimator(f"ovis-S{S}-exclusive", iw=K), model, x),
                                    repeats)
        print(f"{'ovis-S10-exclusive':22s} {K:4d} {tb * 1e3:9.2f} {t * 1e3:9.2f} {t / tb:7.2f}"
              "  (bare: K particles fwd+bwd + S fwd without grad)", flush=True)
        del bare_s
        vae = gaussian_vae(x)
        bare_v = bare_pass(vae, x, K, zgrads=True)
        for eid in PATHWISE:
            tb, t = paired_median_times(bare_v, estimator_pass(build_estimator(eid, iw=K), vae, x), repeats)
            print(f"{eid:22s} {K:4d} {tb * 1e3:9.2f} {t * 1e3:9.2f} {t / tb:7.2f}  (Gaussian VAE)", flush=True)


class PassCounter:
    r"""Counts the model evaluations of the discrete-latent estimators: the rows given to
    ``model.log_joint_at`` (an instance attribute shadows the method while counting), in units of
    ``rows`` (``B*K``), with (``graph``) and without (``nograd``) an autograd graph."""

    def __init__(self, model: torch.nn.Module, rows: int) -> None:
        self.model, self.rows = model, rows
        self.graph = self.nograd = 0.0

    def __enter__(self) -> "PassCounter":
        method = type(self.model).log_joint_at

        def counting(x: torch.Tensor, z: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
            out = method(self.model, x, z)
            if out[0].requires_grad:
                self.graph += out[0].shape[0] / self.rows
            else:
                self.nograd += out[0].shape[0] / self.rows
            return out

        self.model.log_joint_at = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.log_joint_at


def multipass_table(x: torch.Tensor, repeats: int) -> None:
    print("\n## 1b. Multi-pass estimators: estimator fwd+bwd / the bare passes it makes (3-layer SBN)")
    print("   (passes counted in one step: n_graph bare fwd+bwd + n_nograd bare fwd, measured alternately)")
    print(f"{'estimator':22s} {'K':>4s} {'graph':>6s} {'nograd':>7s} {'bare ms':>9s} {'est ms':>9s} {'ratio':>7s}")
    B = x.shape[0]
    for K in (5, 50):
        reps = repeats if K == 5 else max(5, repeats // 6)  # a REBAR step at K = 50 takes about a second
        torch.manual_seed(0)
        model = sbn(x)
        bare = bare_pass(model, x, K, zgrads=False)
        helper = GradientEstimator(mc=1, iw=K)

        def bare_nograd(helper=helper, model=model, K=K) -> None:  # (bound now: B023)
            with torch.no_grad():
                helper.evaluate(model, x, RuntimeParams(), K=K, zgrads=False)

        for eid in MULTI_PASS:
            est = build_estimator(eid, iw=K)
            run = estimator_pass(est, model, x)
            with PassCounter(model, B * K) as passes:
                run()
            n_graph, n_nograd = round(passes.graph), round(passes.nograd)

            def reference(n_graph=n_graph, n_nograd=n_nograd, bare=bare, bare_nograd=bare_nograd) -> None:
                for _ in range(n_graph):
                    bare()
                for _ in range(n_nograd):
                    bare_nograd()

            tb, t = paired_median_times(reference, run, reps, warmup=1)
            print(f"{eid:22s} {K:4d} {passes.graph:6.1f} {passes.nograd:7.1f} {tb * 1e3:9.2f} {t * 1e3:9.2f} "
                  f"{t / tb:7.2f}", flush=True)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _counting_faults(fn: Callable[[], None], faults: List[int]) -> Callable[[], None]:
    def run() -> None:
        f0 = _minor_faults()
        fn()
        faults.append(_minor_faults() - f0)
    return run


def step_table(x: torch.Tensor, repeats: int) -> None:
    print("\n## 2. Training step, 3-layer SBN (fwd + bwd + Adam), ms (and minor page faults per step)")
    print(f"   (the five estimators step in turn, so they see the same machine; reference matmul now "
          f"{reference_matmul_us():.0f} us)")
    print(f"{'estimator':22s} {'K':>4s} {'ms':>8s} {'target':>8s} {'faults':>7s}")
    ids = ("vimco-arithmetic", "ovis-gamma1", "reinforce", "tvo-part2-config1", "ovis-S10-exclusive")
    for K in (5, 50):
        steps, faults = [], []
        for eid in ids:
            torch.manual_seed(0)
            faults.append([])
            steps.append(_counting_faults(train_step(build_estimator(eid, iw=K), sbn(x), x), faults[-1]))
        times = dict(zip(ids, interleaved_median_times(steps, repeats)))
        for eid, f in zip(ids[:-1], faults):
            print(f"{eid:22s} {K:4d} {times[eid] * 1e3:8.2f} {STEP_TARGETS_MS[K]:8.1f} "
                  f"{sum(f) / len(f):7.0f}", flush=True)
        tv, to = times["vimco-arithmetic"], times["ovis-S10-exclusive"]
        print(f"{'ovis-S10-exclusive':22s} {K:4d} {to * 1e3:8.2f} {1.3 * tv * 1e3:7.1f}* "
              f"{sum(faults[-1]) / len(faults[-1]):7.0f}  (* 1.3 x vimco-arithmetic)", flush=True)
        print(f"  ovis-S10-exclusive / vimco-arithmetic at K={K}: {to / tv:.2f} "
              "(target <= 1.3; original 2.1 at K=5)")


def check_table(x: torch.Tensor, repeats: int) -> None:
    print("\n## 8. The model check (ovis.models.protocol): its cost on the first call, and on later steps")
    print("   check: the first-call check alone on the estimator's own model output (keys, shapes, the")
    print("   gradient-path walk), min of 20 (robust to a loaded machine); step: fwd + bwd + Adam once checked")
    print("   vs the check switched off, alternated medians")
    print(f"{'estimator':18s} {'model':12s} {'K':>4s} {'check ms':>9s} {'step on':>8s} {'step off':>8s} "
          f"{'ratio':>6s}")
    cases = [("vimco-arithmetic", "sbn"), ("ovis-gamma1", "gaussian-vae"), ("pathwise-iwae", "gaussian-vae"),
             ("dreg", "gaussian-vae")]
    try:
        for K in (5, 50):
            for eid, name in cases:
                torch.manual_seed(0)
                model = sbn(x) if name == "sbn" else gaussian_vae(x)
                est = build_estimator(eid, iw=K)
                zgrads = est.reparameterised
                fused = not zgrads and getattr(model, "fused_log_densities", False)
                if fused:
                    out = model.particle_log_densities(x, particles=K)
                    output, logs = out[0], out[1:]
                else:
                    output, logs = model(GradientEstimator.expand(x, 1, K), zgrads=zgrads), None
                form = ("bench",)
                times = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    est._check_output(model, output, x, (x.shape[0], 1, K), zgrads, form, "forward(x)", logs)
                    times.append(time.perf_counter() - t0)
                step_on = train_step(est, model, x)
                step_on()  # the check, once
                unchecked = train_step(build_estimator(eid, iw=K), model, x)

                def step_off(s=unchecked) -> None:  # (bound now: B023)
                    set_model_checks(False)
                    s()
                    set_model_checks(True)

                s_on, s_off = paired_median_times(step_on, step_off, repeats)
                print(f"{eid:18s} {name:12s} {K:4d} {min(times) * 1e3:9.3f} {s_on * 1e3:8.2f} {s_off * 1e3:8.2f} "
                      f"{s_on / s_off:6.3f}", flush=True)
    finally:
        set_model_checks(True)
    est, model = build_estimator("vimco-arithmetic", iw=5), sbn(x)
    est(model, x)
    form = ("fused", False, True)
    n_calls = 10000
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n_calls):
            est._model_checks.needed(model, form)
        times.append((time.perf_counter() - t0) / n_calls)
    lookup = min(times)
    loss = torch.zeros((), requires_grad=True) * 1.0
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n_calls):
            _spent(loss)
        times.append((time.perf_counter() - t0) / n_calls)
    print(f"  per call once checked (min of 5 x {n_calls}): the look-up {lookup * 1e6:.2f} us, the "
          f"backward=True spent-loss guard {min(times) * 1e6:.2f} us")


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def eval_table(x: torch.Tensor, n_images: int, max_rows: int) -> None:
    print(f"\n## 3. Evaluation: L_5000 per test image (chunks of {max_rows} rows, inference mode)")
    torch.manual_seed(0)
    model = sbn(x)
    data = (torch.rand(n_images, 784) < 0.13).float()
    evaluate_bound(model, data, torch.arange(1), 1, 5000, max_rows, torch.device("cpu"))  # warm-up
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    base = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    out = evaluate_bound(model, data, torch.arange(n_images), 1, 5000, max_rows, torch.device("cpu"))
    per = (time.perf_counter() - t0) / n_images
    peak = (_rss_kb("VmHWM") - base) / 1024
    print(f"L_5000 = {out['loss/L_k']:.2f}; {per:.3f} s per image (target <= 0.1); peak +{peak:.0f} MB "
          "(target <= 300; original 0.21 s at 1.1 GB, or 0.79 s at 262 MB)")


def denormal_table(x: torch.Tensor, steps: int, keep_denormals: bool = False) -> None:
    print(f"\n## 4. Denormals: ovis-gamma1, K=50, step time after {steps} Adam steps vs a fresh model "
          f"(denormals {'kept' if keep_denormals else 'flushed'})")
    print("   (the trained and a fresh model step alternately, 50 times each, so machine drift cancels)")
    for name, make in (("3-layer SBN", sbn), ("Gaussian VAE", gaussian_vae)):
        torch.manual_seed(0)
        trained = train_step(build_estimator("ovis-gamma1", iw=50), make(x), x)
        for _ in range(steps):
            trained()
        torch.manual_seed(0)
        fresh = train_step(build_estimator("ovis-gamma1", iw=50), make(x), x)
        t_fresh, t_trained = paired_median_times(fresh, trained, 50)
        print(f"{name:14s} fresh: {t_fresh * 1e3:7.2f} ms  after {steps} steps: {t_trained * 1e3:7.2f} ms  "
              f"ratio {t_trained / t_fresh:.2f}", flush=True)


def compile_table(x: torch.Tensor, repeats: int) -> None:
    print("\n## 5. torch.compile (run.py --compile): training step, 3-layer SBN, ms")
    print("   (eager and compiled steps alternate; the compiled step runs ovis.estimators.base.compile_estimator:")
    print("    the model's pass, the estimator's maths and the surrogate as one graph, then its backward;")
    print(f"    reference matmul now {reference_matmul_us():.0f} us)")
    print(f"{'estimator':22s} {'K':>4s} {'eager':>8s} {'compiled':>9s} {'ratio':>6s} {'compile s':>10s}")
    for K in (5, 50):
        for eid in ("vimco-arithmetic", "ovis-gamma1"):
            torch.manual_seed(0)
            eager = train_step(build_estimator(eid, iw=K), sbn(x), x)
            torch.manual_seed(0)
            model, est = sbn(x), build_estimator(eid, iw=K)
            call = compile_estimator(est, model)
            opt = build_optimizer("adam", [{"params": list(model.parameters()), "lr": 1e-4}])

            def compiled(opt=opt, call=call) -> None:  # (bound now: B023)
                opt.zero_grad(set_to_none=True)
                call(x)[0].backward()
                opt.step()

            t0 = time.perf_counter()
            compiled()  # compiles
            first = time.perf_counter() - t0
            te, tc = paired_median_times(eager, compiled, repeats)
            print(f"{eid:22s} {K:4d} {te * 1e3:8.2f} {tc * 1e3:9.2f} {tc / te:6.2f} {first:10.1f}", flush=True)


def memory_table(x: torch.Tensor, repeats: int) -> None:
    print("\n## 6. Retained memory: training step (vimco-arithmetic) with glibc's initial malloc thresholds "
          "vs freed memory retained")
    print("   (blocks of steps in the order a b b a; the first steps of a block, which adapt the heap, are dropped)")
    print(f"{'K':>4s} {'glibc ms':>9s} {'faults':>7s} {'retained ms':>12s} {'faults':>7s} {'ratio':>6s}")
    settings = (GLIBC_INITIAL_THRESHOLDS, (MAX_MMAP_THRESHOLD, 256 * 1024 * 1024))
    block, dropped = max(repeats // 2, 5), 3
    for K in (5, 50):
        torch.manual_seed(0)
        step = train_step(build_estimator("vimco-arithmetic", iw=K), sbn(x), x)
        times: Dict[int, List[float]] = {0: [], 1: []}
        faults = {0: 0, 1: 0}
        for which in (0, 1, 1, 0):
            set_malloc_thresholds(*settings[which])
            for i in range(dropped + block):
                f0, t0 = _minor_faults(), time.perf_counter()
                step()
                if i >= dropped:
                    times[which].append(time.perf_counter() - t0)
                    faults[which] += _minor_faults() - f0
        ta, tb = statistics.median(times[0]), statistics.median(times[1])
        n = 2 * block
        print(f"{K:4d} {ta * 1e3:9.2f} {faults[0] / n:7.0f} {tb * 1e3:12.2f} {faults[1] / n:7.0f} {tb / ta:6.2f}",
              flush=True)
    retain_freed_memory()


DEVICE_SBN = SINGLE_PASS_SF + ["ovis-S10-exclusive", "nvil"] + MULTI_PASS
DEVICE_VAE = PATHWISE


def device_table(device: torch.device, ks: Sequence[int], repeats: int, only: Sequence[str] = None) -> None:
    r"""Section 7: step time and peak memory per estimator and K on ``device`` (``only``: these ids)."""
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"\n## 7. Training step (fwd + bwd + Adam) on {device} ({name}), batch 24: median ms, peak MB")
    print(f"{'estimator':22s} {'model':6s} {'K':>4s} {'ms':>9s} {'peak MB':>9s}")
    x_cpu = (torch.rand(24, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
    x = x_cpu.to(device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for K in ks:
        for model_name, ids in (("sbn", DEVICE_SBN), ("gvae", DEVICE_VAE)):
            for eid in ids:
                if only is not None and eid not in only:
                    continue
                torch.manual_seed(0)
                model = (sbn(x_cpu) if model_name == "sbn" else gaussian_vae(x_cpu)).to(device)
                est = build_estimator(eid, iw=K, x_shape=(784,)).to(device)
                step = train_step(est, model, x)
                for _ in range(2):  # warm-up (lazy modules, kernels, allocator)
                    step()
                sync()
                gc.collect()
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                rss0 = _rss_kb("VmHWM")
                times = []
                for _ in range(repeats):
                    sync()
                    t0 = time.perf_counter()
                    step()
                    sync()
                    times.append(time.perf_counter() - t0)
                peak = ((torch.cuda.max_memory_allocated(device) - base) / 2 ** 20 if cuda
                        else (_rss_kb("VmHWM") - rss0) / 1024)
                print(f"{eid:22s} {model_name:6s} {K:4d} {statistics.median(times) * 1e3:9.2f} {peak:9.1f}",
                      flush=True)
                del model, est, step
                if cuda:
                    torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--eval-images", type=int, default=10)
    p.add_argument("--eval-rows", type=int, default=10000,
                   help="rows (points x particles) per chunk (run.py's --eval_chunk default)")
    p.add_argument("--denormal-steps", type=int, default=0)
    p.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats (to compare)")
    p.add_argument("--no-retain-memory", action="store_true",
                   help="glibc's default malloc behaviour instead of run.py's retained memory (to compare)")
    p.add_argument("--only", default=None,
                   help="sections (default overhead,multipass,step,eval,denormal,memory,check; device with "
                        "--device cuda; compile on demand)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where section 7 (device) runs")
    p.add_argument("--ks", default="5,50,500", help="values of K of section 7")
    p.add_argument("--ids", default=None, help="section 7: only these estimator ids (comma-separated)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench_step.py: error: --device {args.device}: CUDA is not available on this machine "
              f"(torch {torch.__version__}); use --device cpu", file=sys.stderr)
        return 2
    if args.only is None:
        args.only = "device" if device.type == "cuda" else "overhead,multipass,step,eval,denormal,memory,check"
    retained = False if args.no_retain_memory else retain_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(not args.keep_denormals)
    torch.manual_seed(0)
    x = (torch.rand(24, 784) < 0.13).float()
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, batch 24, "
          f"freed memory {'retained' if retained else 'returned (glibc default)'}")
    print(f"# machine speed: a 120x200 @ 200x784 float32 matmul (the SBN's largest at K = 5) takes "
          f"{reference_matmul_us():.0f} us now (about 300 in this VM's fast phases); a shared VM drifts "
          "(up to 1.5x here), so compare absolute times within one run and trust the alternated ratios")
    parts = set(args.only.split(","))
    if "memory" in parts and not args.no_retain_memory:
        # first: after the other sections the heap holds large free chunks, and glibc's initial
        # thresholds no longer show their page faults in this process
        memory_table(x, args.repeats)
    if "overhead" in parts:
        overhead_table(x, args.repeats)
    if "multipass" in parts:
        multipass_table(x, args.repeats)
    if "step" in parts:
        step_table(x, args.repeats)
    if "eval" in parts:
        eval_table(x, args.eval_images, args.eval_rows)
    if "denormal" in parts and args.denormal_steps > 0:
        denormal_table(x, args.denormal_steps, args.keep_denormals)
    if "compile" in parts:
        compile_table(x, args.repeats)
    if "check" in parts:
        check_table(x, args.repeats)
    if "device" in parts:
        device_table(device, [int(k) for k in args.ks.split(",")], args.repeats,
                     args.ids.split(",") if args.ids else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
