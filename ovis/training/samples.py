r"""Sample grids of an image model, written at every evaluation (under the evaluation's forked RNG).

For data of shape ``[1, H, W]`` or ``[H, W]`` and a model with ``sample_from_prior``, written
atomically under the run's ``samples/``:

* ``prior.png`` (and ``prior-step<step>.png``): the mean of ``p(x|z)`` for 64 draws ``z ~ p(z)``,
  8 per row (:func:`ovis.models.utilities.prior_samples`);
* ``reconstruction.png`` (and ``reconstruction-step<step>.png``, density models only): pairs of
  rows, 8 images of ``x`` (up to 32 points), then the mean of ``p(x|z)`` at ``z ~ q(z|x)``
  (:func:`ovis.models.utilities.reconstructions`).

The files without a step are the latest (the end of the run once it has finished).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["image_shape", "save_sample_grids"]


def image_shape(x_shape: Sequence[int], model: torch.nn.Module) -> Optional[Tuple[int, int]]:
    r"""``(H, W)`` when data of shape ``x_shape`` are grey images and ``model`` samples its prior; else ``None``."""
    shape = tuple(int(s) for s in x_shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2 or not hasattr(model, "sample_from_prior"):
        return None
    return shape  # type: ignore[return-value]


def save_sample_grids(model: torch.nn.Module, shape: Tuple[int, int], folder: os.PathLike | str, step: int,
                      x: Optional[Tensor] = None, tau: Optional[float] = None) -> None:
    r"""Write the prior grid, and with ``x`` (``[n, *x_shape]``, ``n <= 32``, on the model's device)
    the reconstruction grid, for ``step`` (see the module docstring)."""
    from ovis.models.utilities import image_grid, prior_samples, reconstruction_grid, reconstructions, save_image_grid

    folder = Path(folder)
    grid = image_grid(prior_samples(model, 64, tau=tau).float().reshape(-1, *shape), cols=8)
    save_image_grid(folder / f"prior-step{step:09d}.png", grid)
    save_image_grid(folder / "prior.png", grid)
    if x is None:
        return
    rec = reconstructions(model, x, tau=tau)
    grid = reconstruction_grid(x.float().reshape(-1, *shape), rec.float().reshape(-1, *shape), cols=8)
    save_image_grid(folder / f"reconstruction-step{step:09d}.png", grid)
    save_image_grid(folder / "reconstruction.png", grid)
