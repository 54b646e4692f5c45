r"""Interim main job: train the Gaussian VAE on generated binary data and print the rising bound.

Run with ``python -m ovis.training.demo [--seconds 60]``.  (Replaced by the experiment grid
``experiments/demo.json`` once the experiment system drives ``make demo``.)
"""
from __future__ import annotations

import argparse
import time

import torch

from ovis.estimators import build_estimator
from ovis.models import GaussianVAE


def generated_binary_data(n: int, dim: int = 64, n_prototypes: int = 8, seed: int = 0) -> torch.Tensor:
    r"""Noisy copies of a few random binary prototypes (a learnable structure)."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(n_prototypes, dim, generator=g) < 0.3).float()
    idx = torch.randint(n_prototypes, (n,), generator=g)
    flips = (torch.rand(n, dim, generator=g) < 0.05).float()
    return (protos[idx] + flips) % 2


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--estimator", default="pathwise-iwae")
    p.add_argument("--iw", type=int, default=10)
    args = p.parse_args(argv)
    torch.manual_seed(1)
    torch.set_flush_denormal(True)
    train, test = generated_binary_data(2000), generated_binary_data(500, seed=1)
    model = GaussianVAE((64,), N=8, hdim=64, nlayers=1, x_mean=train.mean(0))
    est = build_estimator(args.estimator, iw=args.iw)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start, step = time.time(), 0
    while time.time() - start < args.seconds:
        x = train[torch.randint(len(train), (64,))]
        opt.zero_grad()
        est(model, x, backward=True)
        opt.step()
        step += 1
        if step % 250 == 0:
            with torch.no_grad():
                _, d, _ = est(model, test)
            print(f"step {step:6d}  {time.time() - start:5.1f}s  test L_{args.iw} = {float(d['loss']['L_k'].mean()):.3f}", flush=True)


if __name__ == "__main__":
    main()
