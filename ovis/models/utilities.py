r"""Model utilities: distortion, rate and log-likelihood estimates; prior and conditional samples;
image grids.

**Distortion, rate, log-likelihood** (Alemi et al. 2018, "Fixing a broken ELBO"; Burda et al.
2016) of a model on a data set, with ``K`` particles :math:`z_k \sim q(z|x)` per data point:

.. math::

    D = -E_{q(z|x)}[\log p(x|z)],\qquad R = E_{q(z|x)}[\log q(z|x) - \log p(z)]
    = \mathrm{KL}(q(z|x)\,\|\,p(z)),\qquad D + R = -\mathrm{ELBO},

    L = \log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k|x)}\ \ (\le \log p(x) \text{ in expectation,
    increasing to it with } K),

averaged over the data points (:func:`distortion_rate_likelihood`; the particles are drawn in
chunks by :func:`ovis.training.evaluation.accumulate_chunked_bound`, without autograd, so memory is
one chunk's whatever ``K``).

**Samples**: :func:`prior_samples` (``z ~ p(z)``, ``x ~ p(x|z)`` or its mean) and
:func:`reconstructions` (``z ~ q(z|x)``, then ``p(x|z)``), for any model of the protocol of
:mod:`ovis.models.base`; :func:`image_grid`, :func:`reconstruction_grid` and
:func:`save_image_grid` (a PNG, written atomically) show them.
"""
from __future__ import annotations

import functools
import io
import os
from typing import Dict, Iterable, Optional, Union

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "distortion_rate_likelihood",
    "prior_samples",
    "reconstructions",
    "image_grid",
    "reconstruction_grid",
    "save_image_grid",
]

DataLike = Union[Tensor, Dataset, DataLoader, Iterable]


def _batches(data: DataLike, batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        for start in range(0, data.shape[0], batch_size):
            yield data[start:start + batch_size]
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__len__"):
        from ovis.training.evaluation import fetch_batch

        n = len(data)  # type: ignore[arg-type]
        for start in range(0, n, batch_size):
            # device: indices into the data set (on the CPU)
            yield fetch_batch(data, torch.arange(start, min(n, start + batch_size)))
        return
    for item in data:  # a DataLoader or any iterable of batches (x or (x, label))
        yield item[0] if isinstance(item, (tuple, list)) else item


def distortion_rate_likelihood(model: nn.Module, data: DataLike, K: int = 100, batch_size: int = 100,
                               max_rows: int = 10_000, device: Optional[torch.device | str] = None,
                               tau: Optional[float] = None) -> Dict[str, float]:
    r"""``{"D", "R", "L", "elbo", "n"}``: distortion, rate, the ``K``-particle importance-weighted
    log-likelihood estimate and the ELBO (``= -(D + R)``), averaged over the ``n`` data points of
    ``data`` (see the module docstring).

    Args:
        model: a model of :mod:`ovis.models.base` (every stochastic layer counts in ``R``).
        data: a tensor ``[n, *x_shape]``, a data set (items ``x`` or ``(x, label)``), a
            ``DataLoader`` or any iterable of batches.
        K: particles per data point (``>= 1``).
        batch_size: data points per batch (tensors and data sets).
        max_rows: at most this many rows (data points x particles) per forward pass.
        device: where to evaluate (default: the model's parameters' device).
        tau: the relaxation temperature of models that take one (unused for hard samples).

    Runs under ``torch.inference_mode``; draws from torch's global RNG (seed it, or fork it).
    """
    from ovis.training.evaluation import accumulate_chunked_bound, model_log_weights

    if isinstance(K, bool) or int(K) != K or K < 1:
        raise ValueError(f"K must be an integer >= 1, got {K!r}")
    if batch_size < 1 or max_rows < 1:
        raise ValueError(f"batch_size and max_rows must be >= 1, got {batch_size}, {max_rows}")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    totals = {"D": 0.0, "R": 0.0, "L": 0.0, "elbo": 0.0}
    n = 0
    with torch.inference_mode():
        for x in _batches(data, int(batch_size)):
            x = x.to(device)
            B = x.shape[0]
            if B == 0:
                continue
            s = accumulate_chunked_bound(functools.partial(model_log_weights, model, x, tau=tau), int(K),
                                         max(1, int(max_rows) // B))
            totals["D"] += s["distortion"].sum().item()
            totals["R"] += s["kl"].sum().item()
            totals["L"] += s["L_k"].sum().item()
            totals["elbo"] += s["elbo"].sum().item()
            n += B
    if n == 0:
        raise ValueError("distortion_rate_likelihood: the data holds no data point")
    out = {k: v / n for k, v in totals.items()}
    out["n"] = float(n)
    return out


def _values(px: Distribution, mean: bool) -> Tensor:
    if mean:
        try:
            return px.mean
        except NotImplementedError:
            pass
    return px.sample()


def prior_samples(model: nn.Module, n: int, mean: bool = True, tau: Optional[float] = None) -> Tensor:
    r"""``n`` draws ``z ~ p(z)`` pushed through ``p(x|z)``: its mean (``mean=True``, the grey
    levels an image model shows) or a sample ``x ~ p(x|z)``, ``[n, *x_shape]``, detached
    (``tau``: the relaxation temperature, for models that take one)."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    with torch.inference_mode():
        kwargs = {} if tau is None else {"tau": float(tau)}
        return _values(model.sample_from_prior(int(n), **kwargs)["px"], mean).clone()


def reconstructions(model: nn.Module, x: Tensor, mean: bool = True, tau: Optional[float] = None) -> Tensor:
    r"""``z ~ q(z|x)``, then the mean of ``p(x|z)`` (``mean=True``) or a sample ``x' ~ p(x|z)``:
    ``[n, *x_shape]`` for ``x = [n, *x_shape]``, detached (``tau`` as in :func:`prior_samples`)."""
    with torch.inference_mode():
        out = model(x, zgrads=False, **({} if tau is None else {"tau": float(tau)}))
        rec = _values(out["px"], mean).clone()
    if rec.shape != x.shape:
        raise ValueError(f"{type(model).__name__}: p(x|z) has values of shape {tuple(rec.shape)}, the data "
                         f"{tuple(x.shape)}: this model does not reconstruct its input (a conditional model?)")
    return rec


def image_grid(images: Tensor, cols: int = 8) -> Tensor:
    r"""``[n, H, W]`` or ``[n, 1, H, W]`` values in ``[0, 1]`` (clamped) -> one
    ``[rows*(H+1)+1, cols*(W+1)+1]`` image, ``rows = ceil(n / cols)``, white one-pixel borders."""
    img = images.detach().float().cpu()
    if img.dim() == 4 and img.shape[1] == 1:
        img = img[:, 0]
    if img.dim() != 3:
        raise ValueError(f"image_grid needs [n, H, W] or [n, 1, H, W] images, got {tuple(images.shape)}")
    if isinstance(cols, bool) or int(cols) != cols or cols < 1:
        raise ValueError(f"cols must be an integer >= 1, got {cols!r}")
    n, H, W = img.shape
    rows = max(1, (n + cols - 1) // cols)
    # device: an image grid, made on the CPU to be saved
    grid = torch.ones(rows * (H + 1) + 1, cols * (W + 1) + 1)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = img[i].clamp(0, 1)
    return grid


def reconstruction_grid(x: Tensor, x_rec: Tensor, cols: int = 8) -> Tensor:
    r"""Pairs of rows: ``cols`` data images, then their reconstructions (:func:`image_grid` of
    ``x`` and ``x_rec``, both ``[n, (1,) H, W]``, interleaved row by row)."""
    if x.shape != x_rec.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_rec {tuple(x_rec.shape)} must have the same shape")
    parts = []
    for start in range(0, x.shape[0], cols):
        parts += [x[start:start + cols], x_rec[start:start + cols]]
    rows = []
    for p in parts:
        pad = cols - p.shape[0]
        if pad:  # a short last row: blank (white) cells
            # device: an image grid, made on the CPU to be saved
            p = torch.cat([p.detach().float().cpu(), torch.ones(pad, *p.shape[1:])])
        rows.append(p.detach().float().cpu())
    return image_grid(torch.cat(rows), cols)


def save_image_grid(path: Union[str, "os.PathLike[str]"], grid: Tensor) -> None:
    r"""Write a ``[H, W]`` grid of values in ``[0, 1]`` as a grey-scale PNG at ``path``, atomically
    (:func:`ovis.utils.files.atomic_write_bytes`: a reader never sees half a file)."""
    from matplotlib import image as mpimg

    from ovis.utils.files import atomic_write_bytes

    if grid.dim() != 2:
        raise ValueError(f"save_image_grid needs a [H, W] grid, got {tuple(grid.shape)}")
    buf = io.BytesIO()
    mpimg.imsave(buf, grid.detach().float().cpu().clamp(0, 1).numpy(), cmap="gray", vmin=0.0, vmax=1.0,
                 format="png")
    atomic_write_bytes(path, buf.getvalue())
