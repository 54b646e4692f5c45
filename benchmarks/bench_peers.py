r"""Our training step against a peer library's, and against another checkout of ovis.

**Peers** (``--task iwae``, the default): one IWAE training step (pathwise gradient, Adam, lr
``1e-3``; ours: ``run.py``'s Adam, :func:`ovis.training.optimizers.build_optimizer`) of the Gaussian VAE 784-200-200-200 (tanh MLPs of two hidden layers of 200 units, 200
Gaussian latents, fixed ``N(0, I)`` prior, Bernoulli likelihood), batch 24 of random binary
784-pixel images (about 13% ones), at ``K = 5, 50, 500`` (``--ks``):

* ``ovis``: ``pathwise-iwae`` on :class:`ovis.models.vae.VAE` (``prior="normal"``);
* ``pyro``: Pyro's ``SVI(model, guide, Adam, RenyiELBO(alpha=0, num_particles=K,
  vectorize_particles=True))``, the same networks (Pyro is the optional ``bench`` extra,
  ``pip install -e '.[bench]'``; without it the Pyro column is skipped with a message);
* ``baseline`` (``--baseline PATH``): the same ovis step run by the ovis checkout at ``PATH``
  (e.g. the main branch), to measure a change.

**GMM** (``--task gmm``): the training step (Adam) of the Gaussian mixture model of Le et al.
(2019) (``C = 20``, ``hdim = 16``, batch 100, ``K = 10``) for the estimators of the paper's
Figure 2 (``--estimators``), ``ovis`` against ``--baseline``.

Each contender runs in its own worker process (``--worker``), one thread
(``torch.set_num_threads(--threads)``), denormals flushed; the main process alternates the
workers round after round (``--rounds`` rounds of ``--steps`` steps each, the order of the
workers reversed every round, so that a drifting machine affects them alike) and prints the
median step time of each, the ratios and each worker's peak resident memory (``ru_maxrss``, after
the largest ``K``).  Neither the library nor the tests import Pyro.

    python benchmarks/bench_peers.py [--ks 5,50,500] [--rounds 15] [--steps 5] [--baseline /work/main]
    python benchmarks/bench_peers.py --task gmm --baseline /work/main
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
B, D, H, N = 24, 784, 200, 200
GMM_ESTIMATORS = "reinforce,vimco-arithmetic,tvo-part5-beta2,wake-wake,ovis-gamma0,ovis-gamma1"


# ------------------------------------------------------------------------------- the workers
def _data(torch: Any, rows: int = B) -> Any:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(rows, D, generator=g) < 0.13).float()


def _ovis_iwae(torch: Any) -> Callable[[int], Callable[[], None]]:
    from ovis.estimators import build_estimator
    from ovis.models.vae import VAE
    from ovis.training.optimizers import build_optimizer

    torch.manual_seed(0)
    model = VAE((D,), prior="normal", N=N, hdim=H, nlayers=2)
    opt = build_optimizer("adam", [{"params": list(model.parameters()), "lr": 1e-3}])  # run.py's Adam
    x = _data(torch)

    def make(K: int) -> Callable[[], None]:
        est = build_estimator("pathwise-iwae", mc=1, iw=K)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            est(model, x, backward=True)
            opt.step()
        return step
    return make


def _pyro_iwae(torch: Any) -> Callable[[int], Callable[[], None]]:
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, RenyiELBO
    from pyro.optim import Adam
    from torch import nn

    def mlp(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Linear(i, H), nn.Tanh(), nn.Linear(H, H), nn.Tanh(), nn.Linear(H, o))

    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    enc, dec = mlp(D, 2 * N), mlp(N, D)
    x = _data(torch)

    def model(x: Any) -> None:
        pyro.module("decoder", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(N), x.new_ones(N)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x: Any) -> None:
        pyro.module("encoder", enc)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    optim = Adam({"lr": 1e-3})

    def make(K: int) -> Callable[[], None]:
        svi = SVI(model, guide, optim, loss=RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True))
        return lambda: svi.step(x)
    return make


def _ovis_gmm(torch: Any, estimator: str) -> Callable[[int], Callable[[], None]]:
    from ovis.datasets.synthetic import gmm_true_parameters
    from ovis.estimators import build_estimator
    from ovis.models.gmm import GaussianMixtureModel
    from ovis.training.optimizers import build_optimizer

    torch.manual_seed(0)
    model = GaussianMixtureModel(C=20, hdim=16, true_parameters=gmm_true_parameters(20))
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 20, (100, 1), generator=g) * 10.0 + 5.0 * torch.randn(100, 1, generator=g))

    def make(K: int) -> Callable[[], None]:
        est = build_estimator(estimator, mc=1, iw=K)
        opt = build_optimizer("adam", [{"params": list(model.parameters()) + list(est.parameters()), "lr": 1e-3}])

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            est(model, x, backward=True)
            opt.step()
        return step
    return make


def worker(args: argparse.Namespace) -> None:
    r"""Serve rounds: read ``"<K> <steps> <warmup>"`` lines, answer one JSON line per round."""
    if args.root:
        sys.path.insert(0, args.root)
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    kind, _, estimator = args.worker.partition(":")
    if kind == "pyro":
        make = _pyro_iwae(torch)
    elif kind == "ovis" and args.task == "iwae":
        make = _ovis_iwae(torch)
    else:
        make = _ovis_gmm(torch, estimator)
    import ovis

    print(json.dumps({"ready": True, "ovis": str(Path(ovis.__file__).parent)}), flush=True)
    steps: Dict[int, Callable[[], None]] = {}
    for line in sys.stdin:
        K, n, warmup = (int(v) for v in line.split())
        if K not in steps:
            steps[K] = make(K)
        for _ in range(warmup):
            steps[K]()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            steps[K]()
            times.append(time.perf_counter() - t0)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"times": times, "maxrss_mib": rss}), flush=True)


# ---------------------------------------------------------------------------------- the driver
class Worker:
    r"""A worker process (``--worker``) driven through its stdin / stdout."""

    def __init__(self, label: str, spec: str, args: argparse.Namespace, root: Optional[str]) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", spec, "--task", args.task,
               "--threads", str(args.threads)]
        env = dict(os.environ)
        if root:
            cmd += ["--root", root]
            env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.label = label
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=root or str(ROOT))
        hello = self._read()
        self.ovis = hello.get("ovis")
        self.times: Dict[int, List[float]] = {}
        self.maxrss: Dict[int, float] = {}

    def _read(self) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.label} died (run it with --worker to see its error)")
        return json.loads(line)

    def round(self, K: int, steps: int, warmup: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{K} {steps} {warmup}\n")
        self.proc.stdin.flush()
        out = self._read()
        self.times.setdefault(K, []).extend(out["times"])
        self.maxrss[K] = out["maxrss_mib"]

    def median_ms(self, K: int) -> float:
        return statistics.median(self.times[K]) * 1e3

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run_rounds(workers: List[Worker], ks: List[int], rounds: int, steps: int) -> None:
    for K in ks:
        for r in range(rounds):
            order = workers if r % 2 == 0 else workers[::-1]
            for w in order:
                w.round(K, steps, warmup=2 if r == 0 else 0)


def have_pyro() -> bool:
    try:
        import pyro  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("iwae", "gmm"), default="iwae")
    ap.add_argument("--ks", default=None, help="particle counts (default: 5,50,500 for iwae, 10 for gmm)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline", default=None, help="another ovis checkout to compare with (e.g. /work/main)")
    ap.add_argument("--estimators", default=GMM_ESTIMATORS, help="--task gmm: estimator ids")
    ap.add_argument("--no-pyro", action="store_true", help="leave Pyro out even when installed")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.rounds < 1 or args.steps < 1 or args.threads < 1:
        ap.error("--rounds, --steps and --threads must be >= 1")
    ks = [int(k) for k in (args.ks or ("5,50,500" if args.task == "iwae" else "10")).split(",")]
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs; {args.threads} thread(s), {args.rounds} alternated "
          f"rounds of {args.steps} steps, medians")
    if args.task == "iwae":
        specs = [("ovis", "ovis", None)]
        if args.baseline:
            specs.append(("baseline", "ovis", args.baseline))
        if args.no_pyro:
            print("# Pyro left out (--no-pyro)")
        elif have_pyro():
            specs.append(("pyro", "pyro", None))
        else:
            print("# Pyro is not installed (pip install -e '.[bench]'): its column is skipped")
        workers = [Worker(label, spec, args, root) for label, spec, root in specs]
        for w in workers:
            print(f"# {w.label}: {w.ovis if w.label != 'pyro' else 'pyro'}")
        try:
            run_rounds(workers, ks, args.rounds, args.steps)
        finally:
            for w in workers:
                w.close()
        by = {w.label: w for w in workers}
        head = f"{'K':>5s} " + " ".join(f"{w.label + ' ms':>12s}" for w in workers)
        if "pyro" in by:
            head += f" {'pyro/ovis':>10s}"
            if "baseline" in by:
                head += f" {'pyro/base':>10s}"
        if "baseline" in by:
            head += f" {'base/ovis':>10s}"
        print("IWAE training step, Gaussian VAE 784-200-200-200, batch 24")
        print(head)
        for K in ks:
            row = f"{K:5d} " + " ".join(f"{w.median_ms(K):12.2f}" for w in workers)
            o = by["ovis"].median_ms(K)
            if "pyro" in by:
                row += f" {by['pyro'].median_ms(K) / o:10.2f}"
                if "baseline" in by:
                    row += f" {by['pyro'].median_ms(K) / by['baseline'].median_ms(K):10.2f}"
            if "baseline" in by:
                row += f" {by['baseline'].median_ms(K) / o:10.2f}"
            print(row)
        print("peak resident memory (MiB, after the largest K): "
              + ", ".join(f"{w.label} {w.maxrss[ks[-1]]:.0f}" for w in workers))
        return 0
    if not args.baseline:
        ap.error("--task gmm compares with another checkout: give --baseline PATH")
    print(f"GMM training step (C = 20, batch 100), ovis vs baseline {args.baseline}")
    print(f"{'estimator':20s} {'K':>4s} {'ovis ms':>9s} {'base ms':>9s} {'base/ovis':>10s}")
    for eid in args.estimators.split(","):
        workers = [Worker("ovis", f"ovis:{eid}", args, None), Worker("baseline", f"ovis:{eid}", args, args.baseline)]
        try:
            run_rounds(workers, ks, args.rounds, args.steps)
        finally:
            for w in workers:
                w.close()
        for K in ks:
            o, b = workers[0].median_ms(K), workers[1].median_ms(K)
            print(f"{eid:20s} {K:4d} {o:9.3f} {b:9.3f} {b / o:10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
