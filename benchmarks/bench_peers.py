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

**Steps** (``--task steps``): the training step (``run.py``'s Adam) of estimators on models
(``--models``: ``gmm``, the Gaussian mixture model of Le et al. (2019), ``C = 20``, batch 100,
the estimators of the paper's Figure 2; ``vae``, ``sbm``, ``discrete-vae``:
:data:`STEP_ESTIMATORS`), ``ovis`` against ``--baseline``, at ``K = 10`` (``--ks``).

Each contender runs in its own worker process (``--worker``), one thread
(``torch.set_num_threads(--threads)``), denormals flushed; the main process alternates the
workers round after round (``--rounds`` rounds of ``--steps`` steps each, the order of the
workers reversed every round, so that a drifting machine affects them alike; ``K >= 500``:
``--rounds-large`` rounds of one step) and prints, after each ``K``, the median step time of each,
the ratios and each worker's peak resident memory so far (``ru_maxrss``: the ``K`` rise in order,
so the row of the largest ``K`` shows its peak).  Neither the library nor the tests import Pyro.

    python benchmarks/bench_peers.py [--ks 5,50,500] [--rounds 15] [--steps 5] [--baseline /work/main]
    python benchmarks/bench_peers.py --task steps --models gmm,vae,sbm --baseline /work/main
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
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
B, D, H, N = 24, 784, 200, 200
_SF = "reinforce,vimco-arithmetic,ovis-gamma1,ovis-S2,wake-wake,tvo-part5-beta2"
#: ``--task steps``: the estimators timed on each model by default
STEP_ESTIMATORS = {
    "gmm": "reinforce,vimco-arithmetic,tvo-part5-beta2,wake-wake,ovis-gamma0,ovis-gamma1,ovis-S2",
    "vae": "pathwise-vae,pathwise-iwae,stl,dreg," + _SF,
    "sbm": _SF + ",muprop,arm,rebar,relax,concrete",
    "discrete-vae": "pathwise-iwae,stl,dreg,reinforce,ovis-gamma1,concrete,straight-through,rebar,relax,muprop",
}


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


def _step_model(torch: Any, name: str) -> Tuple[Any, Any]:
    r"""``(model, x)`` of ``--task steps``: ``gmm`` (Le et al.'s GMM, C = 20, batch 100), ``vae``
    (the Gaussian VAE above, batch 24), ``sbm`` (bench_step.py's 3-layer linear SBN, 200 units,
    batch 24), ``discrete-vae`` (Gumbel-softmax, 20 variables of 10 classes, MLPs 2 x 200, batch 24)."""
    torch.manual_seed(0)
    if name == "gmm":
        from ovis.datasets.synthetic import gmm_true_parameters
        from ovis.models.gmm import GaussianMixtureModel

        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 20, (100, 1), generator=g) * 10.0 + 5.0 * torch.randn(100, 1, generator=g)
        return GaussianMixtureModel(C=20, hdim=16, true_parameters=gmm_true_parameters(20)), x
    x = _data(torch)
    if name == "vae":
        from ovis.models.vae import VAE

        return VAE((D,), prior="normal", N=N, hdim=H, nlayers=2, x_mean=x.mean(0)), x
    if name == "sbm":
        from ovis.models.sbm import SigmoidBeliefNetwork

        return SigmoidBeliefNetwork((D,), N=200, depth=3, nlayers=0, x_mean=x.mean(0)), x
    if name == "discrete-vae":
        from ovis.models.discrete_vae import DiscreteVAE

        return DiscreteVAE((D,), 20, 10, relaxation="gs", hdim=H, nlayers=2, x_mean=x.mean(0)), x
    raise ValueError(f"unknown --task steps model {name!r}; valid: {list(STEP_ESTIMATORS)}")


def _ovis_step(torch: Any, model_name: str, estimator: str) -> Callable[[int], Callable[[], None]]:
    from ovis.estimators import build_estimator
    from ovis.training.optimizers import build_optimizer

    model, x = _step_model(torch, model_name)

    def make(K: int) -> Callable[[], None]:
        est = build_estimator(estimator, mc=1, iw=K)
        opt = build_optimizer("adam", [{"params": list(model.parameters()) + list(est.parameters()), "lr": 1e-4}])

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
    kind, *rest = args.worker.split(":")
    if kind == "pyro":
        make = _pyro_iwae(torch)
    elif args.task == "iwae":
        make = _ovis_iwae(torch)
    else:
        make = _ovis_step(torch, rest[0], rest[1])
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
    ap.add_argument("--task", choices=("iwae", "steps"), default="iwae")
    ap.add_argument("--ks", default=None, help="particle counts (default: 5,50,500 for iwae, 10 for steps)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    ap.add_argument("--rounds-large", type=int, default=5, help="rounds of one step each for K >= 500")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline", default=None, help="another ovis checkout to compare with (e.g. /work/main)")
    ap.add_argument("--models", default="gmm", help=f"--task steps: models, of {list(STEP_ESTIMATORS)}")
    ap.add_argument("--estimators", default=None,
                    help="--task steps: estimator ids (default: STEP_ESTIMATORS of each model)")
    ap.add_argument("--no-pyro", action="store_true", help="leave Pyro out even when installed")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if min(args.rounds, args.steps, args.threads, args.rounds_large) < 1:
        ap.error("--rounds, --steps, --rounds-large and --threads must be >= 1")
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
        by = {w.label: w for w in workers}
        head = f"{'K':>5s} " + " ".join(f"{w.label + ' ms':>12s}" for w in workers)
        if "pyro" in by:
            head += f" {'pyro/ovis':>10s}"
            if "baseline" in by:
                head += f" {'pyro/base':>10s}"
        if "baseline" in by:
            head += f" {'base/ovis':>10s}"
        head += "  peak RSS MiB (" + ", ".join(w.label for w in workers) + ")"
        print("IWAE training step, Gaussian VAE 784-200-200-200, batch 24")
        print(head, flush=True)
        try:
            for K in ks:
                rounds, steps = (args.rounds, args.steps) if K < 500 else (args.rounds_large, 1)
                run_rounds(workers, [K], rounds, steps)
                row = f"{K:5d} " + " ".join(f"{w.median_ms(K):12.2f}" for w in workers)
                o = by["ovis"].median_ms(K)
                if "pyro" in by:
                    row += f" {by['pyro'].median_ms(K) / o:10.2f}"
                    if "baseline" in by:
                        row += f" {by['pyro'].median_ms(K) / by['baseline'].median_ms(K):10.2f}"
                if "baseline" in by:
                    row += f" {by['baseline'].median_ms(K) / o:10.2f}"
                row += "  " + ", ".join(f"{w.maxrss[K]:.0f}" for w in workers)
                print(row, flush=True)
        finally:
            for w in workers:
                w.close()
        return 0
    if not args.baseline:
        ap.error("--task steps compares with another checkout: give --baseline PATH")
    print(f"Training steps (Adam), ovis vs baseline {args.baseline}; K = {ks}")
    print(f"{'model':13s} {'estimator':20s} {'K':>4s} {'ovis ms':>9s} {'base ms':>9s} {'base/ovis':>10s}")
    for model_name in args.models.split(","):
        if model_name not in STEP_ESTIMATORS:
            ap.error(f"unknown --models entry {model_name!r}; valid: {list(STEP_ESTIMATORS)}")
        eids = args.estimators.split(",") if args.estimators else STEP_ESTIMATORS[model_name].split(",")
        for eid in eids:
            spec = f"ovis:{model_name}:{eid}"
            workers = [Worker("ovis", spec, args, None), Worker("baseline", spec, args, args.baseline)]
            try:
                run_rounds(workers, ks, args.rounds, args.steps)
            finally:
                for w in workers:
                    w.close()
            for K in ks:
                o, b = workers[0].median_ms(K), workers[1].median_ms(K)
                print(f"{model_name:13s} {eid:20s} {K:4d} {o:9.3f} {b:9.3f} {b / o:10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
