r"""The 28x28 Omniglot of the IWAE paper (Burda et al. 2016): ``omniglot/chardata.mat``.

The MATLAB file holds ``data`` (``784 x 24345``, training) and ``testdata`` (``784 x 8070``),
intensities in ``[0, 1]``, one image per column.  As in the IWAE code
(``data.T.reshape((-1, 28, 28)).reshape((-1, 784), order='fortran')``), each column is an image
stored column-major: it is reshaped to ``28 x 28`` with ``order='F'``.

Splits: the first 23,000 training images for training (**dynamically binarised**), the last
1,345 for validation and the 8,070 test images for testing (both **binarised once** with
``torch.Generator().manual_seed(seed)``).  ``mini``: 1000 / 200 / 200.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch

from ovis.datasets.core import DataSplits, TensorImageDataset
from ovis.datasets.errors import DatasetCorruptError
from ovis.datasets.files import cached, find_files
from ovis.datasets.idx import sha256_hex

__all__ = ["load_omniglot", "read_chardata", "OMNIGLOT_SHAPES"]

OMNIGLOT_SHAPES = {"data": (784, 24345), "testdata": (784, 8070)}
N_VALID = 1345
MINI_SIZES = (1000, 200, 200)


def read_chardata(path: os.PathLike | str, verify_shapes: bool = True) -> Tuple[np.ndarray, np.ndarray, str]:
    r"""Read ``chardata.mat``; return ``(train [n, 28, 28], test [m, 28, 28], sha256)`` as float32.

    Checks the keys ``data`` / ``testdata``, 784 rows, values in ``[0, 1]``, and (unless
    ``verify_shapes=False`` is passed explicitly, for small test files) the IWAE sizes
    ``784 x 24345`` and ``784 x 8070``.  Raises :class:`DatasetCorruptError`.
    """
    import scipy.io

    path = Path(path)
    where = f"data set 'omniglot': {path}"
    raw = path.read_bytes()
    try:
        mat: Dict[str, Any] = scipy.io.loadmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5)
        raise DatasetCorruptError(f"{where} is a MATLAB v7.3 file that scipy cannot read ({e}); "
                                  "use the IWAE chardata.mat (MATLAB v5)") from None
    except Exception as e:  # scipy raises ValueError / TypeError / struct.error on bad files
        raise DatasetCorruptError(f"{where} is not a readable MATLAB file ({type(e).__name__}: {e}); "
                                  "it is truncated or not chardata.mat") from None
    out = []
    for key, shape in OMNIGLOT_SHAPES.items():
        if key not in mat:
            raise DatasetCorruptError(f"{where} has no variable {key!r} (found "
                                      f"{sorted(k for k in mat if not k.startswith('__'))})")
        a = np.asarray(mat[key])
        if a.ndim != 2 or a.shape[0] != 784 or (verify_shapes and a.shape != shape):
            raise DatasetCorruptError(f"{where}: {key!r} has shape {a.shape}, expected {shape}")
        a = a.astype(np.float32)
        if not np.all(np.isfinite(a)) or a.min(initial=0) < 0 or a.max(initial=0) > 1:
            raise DatasetCorruptError(f"{where}: {key!r} has values outside [0, 1]")
        # one image per column, stored column-major (IWAE: order='fortran')
        out.append(a.T.reshape(-1, 28, 28).transpose(0, 2, 1).copy())
    return out[0], out[1], sha256_hex(raw)


def load_omniglot(data_root: os.PathLike | str, mini: bool = False, seed: int = 1,
                  verify_shapes: bool = True) -> DataSplits:
    r"""Omniglot splits (see the module docstring)."""
    paths = find_files("omniglot", data_root, ("omniglot", "."), ["chardata.mat"], allow_gz=False)
    path = paths["chardata.mat"]

    def build() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        train, test, digest = read_chardata(path, verify_shapes=verify_shapes)
        train_t = torch.from_numpy(train)
        # the IWAE file: 23000 / 1345; a smaller file (tests): its last tenth
        n_valid = N_VALID if verify_shapes else max(1, train_t.shape[0] // 10)
        g = torch.Generator().manual_seed(int(seed))
        valid = torch.bernoulli(train_t[train_t.shape[0] - n_valid:], generator=g)
        test_b = torch.bernoulli(torch.from_numpy(test), generator=g)
        return train_t[:train_t.shape[0] - n_valid], valid, test_b, digest

    tr, va, te, digest = cached(("omniglot", int(seed), verify_shapes), [path], build)
    if mini:
        tr, va, te = tr[:MINI_SIZES[0]], va[:MINI_SIZES[1]], te[:MINI_SIZES[2]]
    splits = [TensorImageDataset(tr[:, None], binarization="dynamic"),
              TensorImageDataset(va[:, None].to(torch.uint8)),
              TensorImageDataset(te[:, None].to(torch.uint8))]
    description = {
        "name": "omniglot", "binarization": "train: dynamic; valid and test: fixed-seed Bernoulli",
        "binarization_seed": int(seed), "x_shape": [1, 28, 28], "mini": bool(mini),
        "files": {"chardata.mat": {"path": str(path.resolve()), "sha256": digest}},
        "checksums_verified": False, "shapes_verified": bool(verify_shapes),
        "sizes": {"train": len(splits[0]), "valid": len(splits[1]), "test": len(splits[2])},
        "split": "train: first 23000 of 'data', valid: its last 1345, test: 'testdata'",
    }
    return DataSplits(name="omniglot", train=splits[0], valid=splits[1], test=splits[2],
                      x_shape=torch.Size([1, 28, 28]), train_mean=splits[0].mean(),
                      description=description)
