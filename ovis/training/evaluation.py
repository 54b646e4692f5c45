r"""Evaluation of a training run: bounds with many particles, active units, gradient statistics.

**Chunked importance-weighted bound.**  With :math:`K` particles per data point (``iw_test`` up to
5000), the model is evaluated on chunks of :math:`k_c` particles at a time (``k_c = eval_chunk //
B``, at least 1) and only running reductions are kept, in float64:

.. math::

    \mathcal{L}_K = \mathrm{LSE}_{k}(\log w_k) - \log K,\qquad
    \mathrm{ESS} = \exp\big(2\,\mathrm{LSE}_k(\log w_k) - \mathrm{LSE}_k(2\log w_k)\big),

where the log-sum-exps are combined across chunks with ``logaddexp``; the ELBO
(:math:`\frac1K\sum_k \log w_k`) and the KL term (:math:`\frac1K\sum_k \log q - \log p`) are running
sums.  Memory is that of one chunk, whatever ``K``.  The same particles give the
**distortion** and the **rate** (Alemi et al. 2018, "Fixing a broken ELBO"):

.. math::

    D = -\frac1K\sum_k \log p(x|z_k),\qquad R = \frac1K\sum_k \log q(z_k|x) - \log p(z_k),
    \qquad D + R = -\mathrm{ELBO},

(``R`` sums every stochastic layer; ``log p(x|z_k) = log w_k + (log q - log p)``), logged as
``loss/distortion`` and ``loss/rate``; :math:`L = \mathcal{L}_K` is ``loss/L_k``.

**Models that score a different model at evaluation.**  A model with a method
``evaluation_log_weights(x, k, tau) -> (log_w, kl) | None`` supplies the particles' log-weights
itself when it returns a pair (the discrete VAE scores its *discrete* model with one-hot latents
for every relaxation, :mod:`ovis.models.discrete_vae`); ``None`` falls back to the estimators'
evaluation of ``forward``.

Evaluation bounds use ``beta = 1``, no free bits and ``alpha = 0`` (the true IW bound); ``loss/kl_q_p = L_K - ELBO`` estimates
:math:`\mathrm{KL}(q(z|x) \| p(z|x))`.

**Active units** (Burda et al. 2016): unit :math:`u` is active when
:math:`\mathrm{Cov}_x(E_{q(z|x)}[z_u]) > 0.01`; :math:`E_q` is estimated with ``mc`` draws per data
point, every stochastic layer's units flattened and concatenated.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ovis.estimators.base import GradientEstimator, RuntimeParams
from ovis.estimators.importance import log_weights
from ovis.models.base import uses_particles

__all__ = [
    "fetch_batch",
    "batch_to_device",
    "free_device_memory",
    "measure_bytes_per_row",
    "memory_chunk_rows",
    "EVAL_MEMORY_FRACTION",
    "accumulate_chunked_bound",
    "model_log_weights",
    "evaluate_bound",
    "active_units",
    "AU_THRESHOLD",
]

AU_THRESHOLD = 0.01
#: the share of a GPU's free memory one evaluation pass may take (two workers may share a GPU)
EVAL_MEMORY_FRACTION = 0.25

StopCheck = Optional[Callable[[], None]]


def fetch_batch(dataset: Dataset, indices: Tensor) -> Tensor:
    r"""Items ``indices`` of ``dataset`` stacked into ``[n, *x_shape]`` (in this process: the global
    torch RNG draws any dynamic binarisation, so it is part of the run's checkpointed state)."""
    try:
        from ovis.datasets.core import TensorImageDataset
    except ImportError:  # pragma: no cover - the data package is always there
        TensorImageDataset = ()  # type: ignore[assignment]
    if isinstance(dataset, TensorImageDataset):  # type: ignore[arg-type]
        return dataset[indices]
    getitems = getattr(dataset, "__getitems__", None)
    items = getitems(indices.tolist()) if getitems is not None else [dataset[int(i)] for i in indices]
    if isinstance(items, Tensor):
        return items
    items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
    return torch.stack(items)


def batch_to_device(x: Tensor, device: torch.device) -> Tensor:
    r"""``x`` (a CPU batch) on ``device``.  To a CUDA device through page-locked (pinned) memory
    with ``non_blocking=True``: the copy is queued on the current stream and the host goes on
    (the caching host allocator keeps the pinned buffer alive until the copy is done); kernels
    queued after it on the stream see the data.  Elsewhere a plain ``x.to(device)``."""
    if device.type == "cuda" and x.device.type == "cpu":
        return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    return x.to(device)


def free_device_memory(device: torch.device) -> Optional[int]:
    r"""Free bytes of a CUDA ``device`` (``torch.cuda.mem_get_info``) plus what PyTorch's caching
    allocator holds unused on it; ``None`` for the CPU (the ``max_rows`` cap applies as given)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def measure_bytes_per_row(fn: Callable[[int], Any], rows: int, device: torch.device) -> int:
    r"""Peak bytes one row of ``fn`` takes on the CUDA ``device``: ``fn(k)`` runs ``rows`` rows
    (``k`` particles of a batch), its peak allocation above the memory in use before, divided by
    ``rows`` (at least 1)."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(1)
    torch.cuda.synchronize(device)
    return max(1, (torch.cuda.max_memory_allocated(device) - base) // max(rows, 1))


def memory_chunk_rows(max_rows: int, free_bytes: Optional[int], bytes_per_row: int,
                      fraction: float = EVAL_MEMORY_FRACTION) -> int:
    r"""Rows (data points x particles) of one evaluation pass: ``max_rows`` on the CPU
    (``free_bytes is None``); on a GPU ``min(max_rows, floor(fraction * free_bytes / bytes_per_row))``,
    at least 1, so that a pass fits in its share of the free memory whatever ``--eval_chunk`` says."""
    if max_rows < 1 or bytes_per_row < 1 or not 0.0 < fraction <= 1.0:
        raise ValueError(f"max_rows >= 1, bytes_per_row >= 1 and 0 < fraction <= 1 are needed, got "
                         f"{max_rows}, {bytes_per_row}, {fraction}")
    if free_bytes is None:
        return max_rows
    return max(1, min(max_rows, int(fraction * free_bytes) // bytes_per_row))


def accumulate_chunked_bound(log_weight_fn: Callable[[int], Tuple[Tensor, Tensor]], K: int,
                             chunk: int) -> Dict[str, Tensor]:
    r"""Bound statistics from ``K`` particles drawn ``chunk`` at a time.

    Args:
        log_weight_fn: ``k -> (log_w, kl)``, each ``[B, k]``: the log-weights and KL terms of ``k``
            fresh particles per data point.
        K: total particles per data point.
        chunk: particles per call (the last call gets the remainder).

    Returns:
        ``{"L_k", "elbo", "kl", "distortion", "ess"}``, each ``[B]`` float64
        (``distortion = -(elbo + kl)``, the mean of ``-log p(x|z_k) = -(log w_k + kl_k)``).
    """
    if K < 1 or chunk < 1:
        raise ValueError(f"K and chunk must be >= 1, got K={K}, chunk={chunk}")
    lse = lse2 = sum_w = sum_kl = None
    done = 0
    while done < K:
        k = min(chunk, K - done)
        log_w, kl = log_weight_fn(k)
        if log_w.dim() != 2 or log_w.shape[1] != k or kl.shape != log_w.shape:
            raise ValueError(f"log_weight_fn({k}) must return two [B, {k}] tensors, got "
                             f"{tuple(log_w.shape)} and {tuple(kl.shape)}")
        log_w = log_w.to(torch.float64)
        kl = kl.to(torch.float64)
        l1 = torch.logsumexp(log_w, dim=1)
        l2 = torch.logsumexp(2 * log_w, dim=1)
        if lse is None:
            lse, lse2, sum_w, sum_kl = l1, l2, log_w.sum(1), kl.sum(1)
        else:
            lse, lse2 = torch.logaddexp(lse, l1), torch.logaddexp(lse2, l2)
            sum_w, sum_kl = sum_w + log_w.sum(1), sum_kl + kl.sum(1)
        done += k
    return {"L_k": lse - math.log(K), "elbo": sum_w / K, "kl": sum_kl / K,
            "distortion": -(sum_w + sum_kl) / K, "ess": torch.exp(2 * lse - lse2)}


_EVALUATOR = GradientEstimator(mc=1, iw=1)


def model_log_weights(model: nn.Module, x: Tensor, k: int, tau: Optional[float] = None
                      ) -> Tuple[Tensor, Tensor]:
    r"""``(log_w, kl)`` of ``k`` particles ``z ~ q(z|x)`` per data point, ``[B, k]`` each
    (``beta = 1``, no free bits); the model's ``evaluation_log_weights`` when it has one that
    returns a pair (module docstring)."""
    hook = getattr(model, "evaluation_log_weights", None)
    if callable(hook):
        out = hook(x, k, tau)
        if out is not None:
            return out
    p = _EVALUATOR.evaluate(model, x, RuntimeParams(tau=tau), K=k, zgrads=False)
    log_w, kl = log_weights(p.log_px, p.log_qz, p.log_pz, beta=1.0, freebits=None)
    return log_w[:, 0], kl[:, 0]


def evaluate_bound(model: nn.Module, dataset: Dataset, indices: Tensor, batch_size: int, K: int,
                   max_rows: int, device: torch.device, tau: Optional[float] = None,
                   extra_metrics: bool = True, stop_check: StopCheck = None) -> Dict[str, float]:
    r"""``loss/L_k`` (``K`` particles), ``loss/elbo``, ``loss/kl``, ``loss/kl_q_p``, ``loss/ess``,
    ``loss/distortion`` and ``loss/rate`` (``= loss/kl``; see the module docstring) averaged over
    the data points ``indices`` of ``dataset``, plus the model's ``extra_metrics(x)`` when it has one (weighted by batch size).

    ``max_rows`` caps the rows (data points x particles) of one forward pass; on a CUDA device the
    cap is also sized by the free memory (:func:`memory_chunk_rows`, the bytes per row measured on
    the first batch by :func:`measure_bytes_per_row`).  Batches reach the device through
    :func:`batch_to_device`.  Runs under ``torch.inference_mode``; the caller owns the RNG (see
    :mod:`ovis.training.run`).
    """
    totals: Dict[str, float] = {}
    n = 0
    extra_fn = getattr(model, "extra_metrics", None) if extra_metrics else None
    rows = max_rows
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            if stop_check is not None:
                stop_check()
            idx = indices[start:start + batch_size]
            x = batch_to_device(fetch_batch(dataset, idx), device)
            B = x.shape[0]
            x_log_weights = functools.partial(model_log_weights, model, x, tau=tau)  # k -> log weights of x
            if start == 0:
                free = free_device_memory(device)
                if free is not None:
                    per_row = measure_bytes_per_row(x_log_weights, B, device)
                    rows = memory_chunk_rows(max_rows, free, per_row)
            chunk = max(1, rows // B)
            stats = accumulate_chunked_bound(x_log_weights, K, chunk)
            values = {
                "loss/L_k": stats["L_k"].sum().item(),
                "loss/elbo": stats["elbo"].sum().item(),
                "loss/kl": stats["kl"].sum().item(),
                "loss/kl_q_p": (stats["L_k"] - stats["elbo"]).sum().item(),
                "loss/ess": stats["ess"].sum().item(),
                "loss/distortion": stats["distortion"].sum().item(),
                "loss/rate": stats["kl"].sum().item(),
            }
            if callable(extra_fn):
                for name, v in extra_fn(x).items():
                    values[str(name)] = float(v) * B
            for name, v in values.items():
                totals[name] = totals.get(name, 0.0) + v
            n += B
    return {name: v / max(n, 1) for name, v in totals.items()}


def active_units(model: nn.Module, dataset: Dataset, indices: Tensor, mc: int, max_rows: int,
                 device: torch.device, tau: Optional[float] = None,
                 threshold: float = AU_THRESHOLD, stop_check: StopCheck = None) -> Dict[str, float]:
    r"""The number of active latent units (see the module docstring) over the data points
    ``indices`` with ``mc`` draws each: ``{"active_units/au", "active_units/total"}``."""
    if mc < 1 or len(indices) < 2:
        raise ValueError(f"active units need mc >= 1 and >= 2 data points, got mc={mc}, "
                         f"{len(indices)} points")
    kwargs = {} if tau is None else {"tau": tau}
    means: List[Tensor] = []
    per_batch = max(1, max_rows // mc)
    mc_chunk = min(mc, max_rows)
    with torch.inference_mode():
        for start in range(0, len(indices), per_batch):
            if stop_check is not None:
                stop_check()
            x = batch_to_device(fetch_batch(dataset, indices[start:start + per_batch]), device)
            B = x.shape[0]
            total: Optional[Tensor] = None
            done = 0
            while done < mc:
                m = min(mc_chunk, mc - done)
                if uses_particles(model):  # encoded once per point (ovis.models.base)
                    out = model(x, zgrads=False, particles=m, **kwargs)
                else:
                    x_exp = x[:, None].expand(B, m, *x.shape[1:]).reshape(B * m, *x.shape[1:])
                    out = model(x_exp, zgrads=False, **kwargs)
                z = torch.cat([zl.reshape(B, m, -1).to(torch.float64) for zl in out["z"]], dim=-1)
                s = z.sum(1)
                total = s if total is None else total + s
                done += m
            means.append(total / mc)  # type: ignore[operator]
    mu = torch.cat(means, 0)  # [n, D]
    var = mu.var(0, unbiased=True)
    return {"active_units/au": float((var > threshold).sum().item()),
            "active_units/total": float(mu.shape[1])}
