r"""Generated data sets: ``gmm``, ``gaussian-toy`` and ``shapes``.

Every generated set is a deterministic function of ``(mini, seed)`` (a private
``torch.Generator``), so every run with the same data seed sees the same data.

* ``gmm`` (Le et al. 2019, "Revisiting Reweighted Wake-Sleep"): ``C = 20`` components,
  ``z ~ Cat(pi)`` with ``pi_c ∝ 5 + c`` (``c = 0..C-1``), ``x | z = c ~ N(10 c, 5^2)``.
  ``x_shape = [1]``.  Sizes: 10,000 / 1,000 / 1,000 points (``mini``: 1,000 / 200 / 200);
  Le et al. draw fresh batches of 100 from the true model at each step, a fixed training set of
  10,000 points (100 batches of 100) is used here so that epochs and evaluation are defined.
* ``gaussian-toy`` (Rainforth et al. 2018, "Tighter variational bounds are not necessarily
  better"): ``D = 20``, true ``mu ~ N(0, I)`` (seeded), ``z_n ~ N(mu, I)``, ``x_n ~ N(z_n, I)``,
  i.e. ``x_n ~ N(mu, 2 I)``, ``n = 1..1024``.  The objective is defined on this one fixed set:
  ``train``, ``valid`` and ``test`` are the *same* 1,024 points (``mini``: the first 128).
  ``ground_truth`` holds the true ``mu`` and the closed-form optimum on the training points:
  ``mu* = mean(x)``, ``A* = I/2``, ``b* = mu*/2``.
* ``shapes``: binary ``1 x 28 x 28`` images of one filled square, disc, triangle or cross of
  random size and position; 10,000 / 1,000 / 1,000 images (``mini``: 1,000 / 200 / 200).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

from ovis.datasets.core import DataSplits, TensorImageDataset
from ovis.datasets.files import cached

__all__ = [
    "gmm_true_parameters",
    "sample_gmm",
    "make_gaussian_toy",
    "render_shapes",
    "load_gmm",
    "load_gaussian_toy",
    "load_shapes",
    "GMM_SIZES",
    "SHAPES_SIZES",
]

GMM_SIZES = {False: (10_000, 1_000, 1_000), True: (1_000, 200, 200)}
SHAPES_SIZES = {False: (10_000, 1_000, 1_000), True: (1_000, 200, 200)}
TOY_POINTS = {False: 1024, True: 128}
SHAPE_NAMES = ("square", "disc", "triangle", "cross")


def _splits(tensors: Tuple[Tensor, ...]) -> Dict[str, TensorImageDataset]:
    return {k: TensorImageDataset(t) for k, t in zip(("train", "valid", "test"), tensors)}


# ------------------------------------------------------------------------------------- gmm
def gmm_true_parameters(C: int = 20) -> Dict[str, Tensor]:
    r"""``{"mixture_probs": pi [C], "mixture_logits": log pi [C], "locs": 10 c [C], "scale": 5}``
    with ``pi_c = (5 + c) / sum_c' (5 + c')`` (Le et al. 2019)."""
    if C < 2:
        raise ValueError(f"the GMM needs C >= 2 components, got {C}")
    c = torch.arange(C, dtype=torch.float64)
    probs = (5 + c) / (5 + c).sum()
    return {"C": C, "mixture_probs": probs, "mixture_logits": probs.log(), "locs": 10 * c,
            "scale": torch.tensor(5.0, dtype=torch.float64)}


def sample_gmm(n: int, generator: torch.Generator, C: int = 20) -> Tuple[Tensor, Tensor]:
    r"""``n`` draws ``(x [n, 1] float32, z [n] int64)`` from the true GMM."""
    p = gmm_true_parameters(C)
    z = torch.multinomial(p["mixture_probs"], n, replacement=True, generator=generator)
    x = p["locs"][z] + p["scale"] * torch.randn(n, dtype=torch.float64, generator=generator)
    return x.float()[:, None], z


def load_gmm(mini: bool = False, seed: int = 1, C: int = 20) -> DataSplits:
    r"""The ``gmm`` data set (module docstring); ``ground_truth`` = :func:`gmm_true_parameters`."""
    sizes = GMM_SIZES[bool(mini)]

    def build() -> Tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(int(seed))
        return tuple(sample_gmm(n, g, C)[0] for n in sizes)

    tensors = cached(("gmm", bool(mini), int(seed), C), [], build)
    s = _splits(tensors)
    return DataSplits(
        name="gmm", train=s["train"], valid=s["valid"], test=s["test"], x_shape=torch.Size([1]),
        train_mean=tensors[0].mean(0), ground_truth=gmm_true_parameters(C),
        description={"name": "gmm", "generated": True, "seed": int(seed), "mini": bool(mini), "C": C,
                     "model": "Le et al. 2019: pi_c ∝ 5 + c, x|c ~ N(10c, 5^2)",
                     "sizes": dict(zip(("train", "valid", "test"), sizes))})


# ------------------------------------------------------------------------------ gaussian-toy
def make_gaussian_toy(D: int = 20, npoints: int = 1024, seed: int = 1) -> Dict[str, Tensor]:
    r"""Rainforth et al. (2018)'s data: ``mu ~ N(0, I_D)``, ``x_n ~ N(mu, 2 I_D)``.

    Returns ``{"x": [npoints, D], "mu": true mu [D], "mu_star": mean(x), "A_star": I/2,
    "b_star": mu_star/2}`` (float32; ``mu_star`` computed in float64)."""
    if D < 1 or npoints < 1:
        raise ValueError(f"gaussian-toy needs D >= 1 and npoints >= 1, got D={D}, npoints={npoints}")
    g = torch.Generator().manual_seed(int(seed))
    mu = torch.randn(D, dtype=torch.float64, generator=g)
    z = mu + torch.randn(npoints, D, dtype=torch.float64, generator=g)
    x = z + torch.randn(npoints, D, dtype=torch.float64, generator=g)
    mu_star = x.mean(0)
    return {"x": x.float(), "mu": mu.float(), "mu_star": mu_star.float(),
            "A_star": 0.5 * torch.eye(D), "b_star": (mu_star / 2).float(), "D": D}


def load_gaussian_toy(mini: bool = False, seed: int = 1, D: int = 20) -> DataSplits:
    r"""The ``gaussian-toy`` data set (module docstring)."""
    n = TOY_POINTS[bool(mini)]
    truth = cached(("gaussian-toy", n, int(seed), D), [], lambda: make_gaussian_toy(D, n, seed))
    x = truth["x"]
    ds = TensorImageDataset(x)
    return DataSplits(
        name="gaussian-toy", train=ds, valid=ds, test=ds, x_shape=torch.Size([D]),
        train_mean=x.mean(0), ground_truth=dict(truth),
        description={"name": "gaussian-toy", "generated": True, "seed": int(seed), "mini": bool(mini),
                     "D": D, "model": "Rainforth et al. 2018: mu ~ N(0,I), x ~ N(mu, 2I)",
                     "sizes": {"train": n, "valid": n, "test": n},
                     "split": "train, valid and test are the same fixed points"})


# ------------------------------------------------------------------------------------ shapes
def render_shapes(n: int, generator: torch.Generator, size: int = 28) -> Tuple[Tensor, Tensor]:
    r"""``n`` binary images ``[n, 1, size, size]`` (uint8) and their shape labels ``[n]``
    (indices into ``("square", "disc", "triangle", "cross")``): one filled shape of half-width
    ``r ~ U{3..8}`` centred at a uniform position that keeps it inside the image."""
    kind = torch.randint(0, len(SHAPE_NAMES), (n,), generator=generator)
    r = torch.randint(3, 9, (n,), generator=generator).float()
    cy = (r + torch.rand(n, generator=generator) * (size - 1 - 2 * r))
    cx = (r + torch.rand(n, generator=generator) * (size - 1 - 2 * r))
    grid = torch.arange(size, dtype=torch.float32)
    dy = (grid[None, :, None] - cy[:, None, None]) / r[:, None, None]   # [n, H, 1]
    dx = (grid[None, None, :] - cx[:, None, None]) / r[:, None, None]   # [n, 1, W]
    dy, dx = torch.broadcast_tensors(dy, dx)
    square = (dy.abs() <= 1) & (dx.abs() <= 1)
    disc = dy ** 2 + dx ** 2 <= 1
    triangle = (dy <= 1) & (dy >= -1) & (dx.abs() <= (dy + 1) / 2)
    cross = ((dy.abs() <= 1) & (dx.abs() <= 0.34)) | ((dx.abs() <= 1) & (dy.abs() <= 0.34))
    masks = torch.stack([square, disc, triangle, cross], 1)  # [n, 4, H, W]
    img = masks[torch.arange(n), kind]
    return img[:, None].to(torch.uint8), kind


def load_shapes(mini: bool = False, seed: int = 1) -> DataSplits:
    r"""The ``shapes`` data set (module docstring)."""
    sizes = SHAPES_SIZES[bool(mini)]

    def build() -> Tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(int(seed))
        return tuple(render_shapes(k, g)[0] for k in sizes)

    tensors = cached(("shapes", bool(mini), int(seed)), [], build)
    s = _splits(tensors)
    return DataSplits(
        name="shapes", train=s["train"], valid=s["valid"], test=s["test"],
        x_shape=torch.Size([1, 28, 28]), train_mean=s["train"].mean(),
        description={"name": "shapes", "generated": True, "seed": int(seed), "mini": bool(mini),
                     "binarization": "none (binary images)", "shapes": list(SHAPE_NAMES),
                     "sizes": dict(zip(("train", "valid", "test"), sizes))})
