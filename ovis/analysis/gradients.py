r"""Gradient statistics: variance, SNR and DSNR of an estimator's gradient (Lievin et al. 2020).

For the selected parameters (flattened into ``g in R^P``) and ``N`` independent draws:

* ``variance``: :math:`\frac1P\sum_p \mathrm{Var}[g_p]`;
* ``snr``: :math:`\frac1P\sum_p |E[g_p]| / \sqrt{\mathrm{Var}[g_p] + \epsilon}` (Rainforth et al.
  2018, averaged over parameters);
* ``dsnr`` (directional SNR, OVIS paper eq. 19): with :math:`u = E[g]/\|E[g]\|`,
  :math:`g_\parallel = (g^\top u) u` and :math:`g_\perp = g - g_\parallel`,
  :math:`\mathrm{DSNR} = E\big[\|g_\parallel\| / \|g_\perp\|\big]`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["select_parameters", "parameter_gradient_draws", "gradient_samples", "gradient_statistics", "get_gradients_statistics"]


def select_parameters(model: nn.Module, key_filter: Union[str, Sequence[str], None]) -> List[Tuple[str, nn.Parameter]]:
    r"""Parameters whose name contains one of the comma-separated filters (all when empty).

    A filter that matches no parameter is an error naming the available parameter names.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if key_filter is None or key_filter == "" or key_filter == []:
        return named
    keys = [k.strip() for k in (key_filter.split(",") if isinstance(key_filter, str) else key_filter) if k.strip()]
    selected = [(n, p) for n, p in named if any(k in n for k in keys)]
    if not selected:
        raise ValueError(
            f"grad_key {key_filter!r} matches no parameter of {type(model).__name__}; "
            f"parameter names: {[n for n, _ in named]}"
        )
    return selected


def parameter_gradient_draws(estimator: Any, model: nn.Module, x: Tensor, params: Sequence[nn.Parameter],
                             n_draws: int, **runtime: Any) -> Tensor:
    r"""``n_draws`` independent draws of the estimate of the bound's gradient (minus the
    surrogate's gradient) w.r.t. ``params``, flattened: ``[n_draws, P]``.  The ``.grad`` fields are
    left untouched; a parameter the estimator does not reach gets zeros.

    Each draw averages the estimator's own ``mc`` outer samples.
    """
    params = list(params)
    draws = []
    for _ in range(n_draws):
        loss, _, _ = estimator(model, x, **runtime)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        draws.append(torch.cat([(-g if g is not None else torch.zeros_like(p)).reshape(-1)
                                for g, p in zip(grads, params)]).detach())
    return torch.stack(draws)


def gradient_samples(estimator: Any, model: nn.Module, x: Tensor, mc_samples: int,
                     key_filter: Union[str, Sequence[str], None] = None, **runtime: Any) -> Tensor:
    r"""``mc_samples`` independent gradient draws w.r.t. the parameters selected by ``key_filter``
    (see :func:`select_parameters`), ``[mc_samples, P]``."""
    if mc_samples < 2:
        raise ValueError(f"mc_samples must be >= 2 to estimate a variance, got {mc_samples}")
    params = [p for _, p in select_parameters(model, key_filter)]
    return parameter_gradient_draws(estimator, model, x, params, mc_samples, **runtime)


def gradient_statistics(grads: Tensor, epsilon: float = 1e-15) -> Dict[str, Tensor]:
    r"""Variance, SNR, DSNR and the mean's norm from gradient draws ``[N, P]``."""
    if grads.dim() != 2 or grads.shape[0] < 2:
        raise ValueError(f"grads must have shape [N >= 2, P], got {tuple(grads.shape)}")
    mean = grads.mean(0)
    var = grads.var(0, unbiased=True)
    snr = mean.abs() / (var + epsilon).sqrt()
    norm = mean.norm()
    u = mean / norm.clamp_min(1e-30)
    par = grads @ u  # [N]
    perp = grads - par[:, None] * u[None]
    dsnr = (par.abs() / perp.norm(dim=1).clamp_min(1e-30)).mean()
    return {
        "variance": var.mean(),
        "snr": snr.mean(),
        "dsnr": dsnr,
        "magnitude": mean.abs().mean(),
    }


def get_gradients_statistics(estimator: Any, model: nn.Module, x: Tensor, mc_samples: int = 100,
                             key_filter: Union[str, Sequence[str], None] = None, epsilon: float = 1e-15,
                             **runtime: Any) -> Tuple[Dict[str, Tensor], Tensor]:
    r"""Gradient statistics of ``estimator`` at the model's current parameters.

    Returns ``(stats, grads)``: ``stats`` with ``variance``, ``snr``, ``dsnr``, ``magnitude``
    (scalars) and the draws ``grads`` ``[mc_samples, P]``.  The model's ``.grad`` fields are left
    untouched.
    """
    grads = gradient_samples(estimator, model, x, mc_samples, key_filter, **runtime)
    return gradient_statistics(grads, epsilon), grads
