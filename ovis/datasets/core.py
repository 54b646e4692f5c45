r"""The data-set container shared by every loader.

:class:`DataSplits` holds the ``train``, ``valid`` and ``test`` splits (each a
:class:`torch.utils.data.Dataset` of float32 tensors of shape ``x_shape``, no labels), the
training mean (for output-bias initialisation), a JSON-serialisable description (files read,
binarisation, split sizes, checksum verification) and, for generated data, the true parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["DataSplits", "TensorImageDataset", "BINARIZATIONS"]

#: ``none``: values as stored; ``dynamic``: ``x ~ Bernoulli(intensity)`` at every access (torch's
#: global RNG); ``threshold``: ``x = 1[intensity > 0.5]`` (applied once, at load time)
BINARIZATIONS = ("none", "dynamic")


class TensorImageDataset(Dataset):
    r"""A data set held in memory as one tensor ``[n, *x_shape]``.

    Args:
        data: ``uint8`` (divided by ``scale``) or floating tensor ``[n, *x_shape]``.
        scale: divisor turning stored values into intensities in ``[0, 1]`` (255 for raw bytes).
        binarization: ``"none"`` (return intensities) or ``"dynamic"`` (return a fresh
            ``Bernoulli(intensity)`` sample at every ``__getitem__``, drawn with torch's global RNG).
    """

    def __init__(self, data: Tensor, scale: float = 1.0, binarization: str = "none") -> None:
        if binarization not in BINARIZATIONS:
            raise ValueError(f"binarization must be one of {BINARIZATIONS}, got {binarization!r}")
        if data.dim() < 2:
            raise ValueError(f"data must be [n, *x_shape], got shape {tuple(data.shape)}")
        self.data = data
        self.scale = float(scale)
        self.binarization = binarization

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def x_shape(self) -> torch.Size:
        r"""The shape of one observation, ``data.shape[1:]``."""
        return self.data.shape[1:]

    def intensities(self, index: Any = slice(None)) -> Tensor:
        r"""Float32 intensities (no binarisation) of ``data[index]``."""
        x = self.data[index]
        x = x.to(torch.float32)
        return x / self.scale if self.scale != 1.0 else x

    def __getitem__(self, index: Any) -> Tensor:
        x = self.intensities(index)
        if self.binarization == "dynamic":
            x = torch.bernoulli(x)
        return x

    def mean(self) -> Tensor:
        r"""The mean intensity per pixel, ``x_shape`` (the expected value under dynamic binarisation)."""
        return self.data.to(torch.float64).mean(0).div(self.scale).to(torch.float32)


@dataclass
class DataSplits:
    r"""The splits of one data set (see the module docstring).

    Attributes:
        name: the data set name (``binmnist``, ``mnist``, ...).
        train, valid, test: datasets whose items are float32 tensors of shape ``x_shape``.
        x_shape: the shape of one observation.
        train_mean: ``E[x]`` over the training split, shape ``x_shape`` (or ``None``).
        description: JSON-serialisable record (files, binarisation, sizes, checksums).
        ground_truth: for generated data, the true parameters (tensors allowed).
    """

    name: str
    train: Dataset
    valid: Dataset
    test: Dataset
    x_shape: torch.Size
    train_mean: Optional[Tensor] = None
    description: Dict[str, Any] = field(default_factory=dict)
    ground_truth: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        self.x_shape = torch.Size(self.x_shape)
        if self.train_mean is not None and self.train_mean.shape != self.x_shape:
            raise ValueError(
                f"train_mean has shape {tuple(self.train_mean.shape)}, expected {tuple(self.x_shape)}"
            )
