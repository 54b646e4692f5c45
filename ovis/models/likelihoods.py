r"""Image likelihoods of the VAE (``--likelihood``): Bernoulli and Continuous Bernoulli.

* ``bernoulli``: :math:`p(x|z) = \prod_i \mathrm{Bern}(x_i; \sigma(\eta_i(z)))`, for binary images.
* ``cbernoulli``: the Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019),
  :math:`p(x|z) = \prod_i C(\lambda_i)\,\lambda_i^{x_i}(1-\lambda_i)^{1-x_i}`, ``x_i in [0, 1]``,
  with the normalising constant :math:`C(\lambda)` that the Bernoulli "likelihood" of grey levels
  omits (``torch.distributions.ContinuousBernoulli``; its ``mean`` is not :math:`\lambda`).

:class:`LikelihoodVAE` is :class:`ovis.models.vae.VAE` (any ``--prior``, e.g. a learned mixture of
Gaussians, ``mog``) with a choice of likelihood; :func:`load_grey_levels` reads Fashion-MNIST /
MNIST intensities in ``[0, 1]`` (the ``fashion`` data set of :mod:`ovis.datasets` is thresholded).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    ContinuousBernoulli,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
)

from ovis.models.vae import VAE, mlp

__all__ = ["LIKELIHOODS", "POSTERIORS", "LikelihoodVAE", "load_grey_levels", "image_grid"]

#: valid ``--likelihood`` values
LIKELIHOODS = ("bernoulli", "cbernoulli")
#: valid ``--posterior`` values
POSTERIORS = ("normal", "mog")


class LikelihoodVAE(VAE):
    r"""A :class:`~ovis.models.vae.VAE` whose observation model is ``likelihood``, optionally with a
    mixture-of-Gaussians posterior.

    * ``posterior="mog"``: :math:`q(z|x) = \sum_c \pi_c(x)\,\mathcal{N}(z; \mu_c(x),
      \mathrm{diag}\,\sigma_c(x)^2)` with ``posterior_components`` components
      (``MixtureSameFamily``; the MLP encoder outputs ``C (1 + 2N)`` numbers).  It has no
      ``rsample``: train it with a score-function estimator (``reinforce``, ``vimco-*``,
      ``ovis-*``); a pathwise estimator is refused with a clear error.  The hybrid estimator
      (score function for the component, reparameterisation within it) is
      :func:`ovis.distributions.mixture.hybrid_elbo_surrogate` (a model-level loss).

    Args:
        likelihood: ``bernoulli`` or ``cbernoulli`` (see the module docstring).
        posterior: ``normal`` or ``mog`` (needs ``prior`` ``normal`` or ``mog`` and the MLP encoder).
        posterior_components: ``C >= 1`` for ``posterior="mog"``.
        *args, **kwargs: those of :class:`~ovis.models.vae.VAE` (``prior="mog"`` with ``K``
            components gives a learned mixture prior).
    """

    def __init__(self, *args: Any, likelihood: str = "bernoulli", posterior: str = "normal",
                 posterior_components: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; valid likelihoods are {list(LIKELIHOODS)}")
        if posterior not in POSTERIORS:
            raise ValueError(f"unknown posterior {posterior!r}; valid posteriors are {list(POSTERIORS)}")
        self.likelihood = likelihood
        self.posterior_family = posterior
        self.posterior_components = int(posterior_components)
        if posterior == "mog":
            if self.prior_family not in ("normal", "mog"):
                raise ValueError(f"a mixture-of-Gaussians posterior needs Gaussian latents (--prior normal "
                                 f"or mog), got --prior {self.prior_family}")
            if not self._flatten_input:
                raise ValueError("a mixture-of-Gaussians posterior is built with the MLP encoder only")
            if self.posterior_components < 1:
                raise ValueError(f"posterior_components must be >= 1, got {posterior_components}")
            D = int(math.prod(self.x_shape))
            hdim, nlayers = kwargs.get("hdim", 64), kwargs.get("nlayers", 2)
            self.inference_network = mlp(D, self.posterior_components * (1 + 2 * self.N), hdim, nlayers)

    def posterior(self, x: Tensor, relaxed: bool = False, tau: Tensor | None = None) -> Distribution:
        r"""``q(z|x)``, batch ``[n]``."""
        if self.posterior_family != "mog":
            return super().posterior(x, relaxed=relaxed, tau=tau)
        C, N = self.posterior_components, self.N
        h = self.inference_network(x.reshape(x.shape[0], -1))
        logits, rest = h[:, :C], h[:, C:].reshape(-1, C, 2 * N)
        loc, log_scale = rest.chunk(2, dim=-1)
        return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, log_scale.exp()), 1))

    def observation_model(self, z: Tensor) -> Distribution:
        r"""``p(x|z)``, batch ``[n]``, event ``x_shape``."""
        logits = self.generative_model.decoder(z.reshape(z.shape[0], -1)).reshape(-1, *self.x_shape)
        base = ContinuousBernoulli(logits=logits) if self.likelihood == "cbernoulli" else Bernoulli(logits=logits)
        return Independent(base, len(self.x_shape))


def load_grey_levels(data_root: str | os.PathLike, name: str = "fashion", n: int = 1000,
                     split: str = "train") -> Tensor:
    r"""The first ``n`` images of ``split`` (``train`` / ``test``) of Fashion-MNIST (``fashion``) or
    MNIST (``mnist``) as grey levels in ``[0, 1]``, ``[n, 1, 28, 28]`` float32, read from the IDX
    files under ``data_root`` (``fashion-mnist/`` or ``mnist/``)."""
    from ovis.datasets.errors import DatasetNotFoundError
    from ovis.datasets.idx import read_idx

    folder = {"fashion": "fashion-mnist", "mnist": "mnist"}.get(name)
    if folder is None:
        raise ValueError(f"grey levels exist for 'fashion' and 'mnist', got {name!r}")
    stem = {"train": "train", "test": "t10k"}.get(split)
    if stem is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(data_root) / folder
    candidates = [root / f"{stem}-images-idx3-ubyte.gz", root / f"{stem}-images-idx3-ubyte"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DatasetNotFoundError(f"{name}: none of {[str(p) for p in candidates]} exists; put the IDX "
                                   f"files of {name} under {root}")
    images, _ = read_idx(path, name)
    x = torch.from_numpy(np.asarray(images[:n], dtype=np.float32) / 255.0)
    return x[:, None]


def image_grid(images: Tensor, cols: int = 8) -> Tensor:
    r"""``[n, 1 or none, H, W]`` values in ``[0, 1]`` -> one ``[rows*(H+1)+1, cols*(W+1)+1]`` image
    (white one-pixel borders)."""
    img = images.detach().float().cpu()
    if img.dim() == 4:
        img = img[:, 0]
    n, H, W = img.shape
    rows = (n + cols - 1) // cols
    grid = torch.ones(rows * (H + 1) + 1, cols * (W + 1) + 1)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = img[i].clamp(0, 1)
    return grid
