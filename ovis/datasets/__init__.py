r"""Data sets: ``binmnist``, ``mnist``, ``fashion``, ``mnist-grey``, ``fashion-grey`` (grey levels in
``[0, 1]``), ``omniglot``, ``shapes``, ``gmm``, ``gaussian-toy``.

Use :func:`load_dataset`; every loader returns a :class:`DataSplits`.  File-based sets are
looked for under the data root (layout: ``mnist/``, ``fashion-mnist/``, ``binarized_mnist/``,
``omniglot/``), then in well-known system folders; loading never downloads.  A missing file raises
:class:`DatasetNotFoundError` (a ``FileNotFoundError``), a truncated or wrong one
:class:`DatasetCorruptError` (a ``ValueError``), each naming the data set, the paths searched /
read and the exact files expected; a missing one also names the command that downloads it,
``python -m ovis.datasets fetch NAME`` (:mod:`ovis.datasets.fetch`).

The IDX sets take two data-protocol options (:func:`check_data_protocol`): ``binarization``
(``mnist`` / ``fashion``: ``"dynamic"`` or ``"threshold"`` instead of their default) and ``split``
(``"60k"``: all 60k training images, the test file halved into valid / test); see
:mod:`ovis.datasets.mnist`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

from ovis.datasets.core import DataSplits, TensorImageDataset
from ovis.datasets.errors import DatasetCorruptError, DatasetNotFoundError
from ovis.datasets.files import clear_cache
from ovis.datasets.idx import read_idx
from ovis.datasets.mnist import (
    BINARIZABLE_DATASETS,
    BINARIZATION_OPTIONS,
    GREY_DATASETS,
    SPLIT_DATASETS,
    SPLIT_OPTIONS,
    check_data_protocol,
    load_binmnist,
    load_grey_levels,
    load_labels,
    load_mnist_like,
    read_amat,
)

__all__ = [
    "BINARIZABLE_DATASETS",
    "BINARIZATION_OPTIONS",
    "DATASETS",
    "GREY_DATASETS",
    "DataSplits",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "SPLIT_DATASETS",
    "SPLIT_OPTIONS",
    "TensorImageDataset",
    "check_data_protocol",
    "clear_cache",
    "load_dataset",
    "load_grey_levels",
    "load_labels",
    "locate_dataset",
    "read_amat",
    "read_idx",
]

#: every data set name accepted by :func:`load_dataset`
DATASETS = ("binmnist", "mnist", "fashion", "mnist-grey", "fashion-grey", "omniglot", "shapes", "gmm",
            "gaussian-toy")


def load_dataset(name: str, data_root: str | os.PathLike = "data/", mini: bool = False,
                 seed: int = 1, *, verify_checksums: bool = True, binarization: Optional[str] = None,
                 split: str = "50k") -> DataSplits:
    r"""Load the data set ``name`` (one of :data:`DATASETS`).

    Args:
        name: the data set.
        data_root: the folder holding the data files (ignored by generated sets).
        mini: a small subset (1000 / 200 / 200 images for image sets; see each loader).
        seed: the *data* seed: it fixes generated data sets and fixed binarisations
            (``binmnist`` without the ``.amat`` files, Omniglot's test set).  Keep the default to
            compare runs on the same data; it is not the training seed.
        verify_checksums: check published sizes / sha256 of known files.  Only an explicit
            ``False`` skips it (for small files in the same format made by tests); the
            description then records ``"checksums_verified": false``.
        binarization: ``None`` (the data set's default: ``mnist`` dynamic, ``fashion`` thresholded),
            ``"dynamic"`` or ``"threshold"`` (``x = 1[intensity >= 0.5]``); ``mnist`` / ``fashion``
            only (:data:`BINARIZABLE_DATASETS`).
        split: ``"50k"`` (each data set's own split; for the IDX sets the first 50k / last 10k of
            the training file and the test file) or ``"60k"`` (the IDX sets
            :data:`SPLIT_DATASETS` only: all 60k training images, the first 5k of the test file
            as validation, its last 5k as test).

    Returns:
        DataSplits: ``train`` / ``valid`` / ``test`` datasets of float32 tensors of shape
        ``x_shape``, ``train_mean``, ``description`` (binarisation, sizes, split, files...) and,
        for generated sets, ``ground_truth``.

    Raises:
        ValueError: an unknown ``name``, or a ``binarization`` / ``split`` the data set does not
            accept (:func:`check_data_protocol`; the message names the option and the fix).
        TypeError: ``seed`` is not an int.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names are {list(DATASETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    check_data_protocol(name, binarization, split)
    if name in ("mnist", "fashion", *GREY_DATASETS):
        data = load_mnist_like(name, data_root, mini=mini, verify_checksums=verify_checksums,
                               binarization=binarization, split=split)
    elif name == "binmnist":
        data = load_binmnist(data_root, mini=mini, seed=seed, verify_checksums=verify_checksums)
    elif name == "omniglot":
        from ovis.datasets.omniglot import load_omniglot

        data = load_omniglot(data_root, mini=mini, seed=seed, verify_shapes=verify_checksums)
    elif name == "shapes":
        from ovis.datasets.synthetic import load_shapes

        data = load_shapes(mini=mini, seed=seed)
    elif name == "gmm":
        from ovis.datasets.synthetic import load_gmm

        data = load_gmm(mini=mini, seed=seed)
    else:
        from ovis.datasets.synthetic import load_gaussian_toy

        data = load_gaussian_toy(mini=mini, seed=seed)
    data.description.setdefault("seed", int(seed))
    return data


def locate_dataset(name: str, data_root: str | os.PathLike = "data/") -> Dict[str, Path]:
    r"""The files :func:`load_dataset` would read for ``name`` (``{}`` for generated sets),
    found exactly as the loader finds them but without reading them (a cheap check that a data
    set is available, e.g. before queueing jobs).

    Raises:
        ValueError: unknown data set name.
        DatasetNotFoundError: the files are not there (the message names the data set, the
            folders searched and the files to place there).
    """
    from ovis.datasets.files import find_files
    from ovis.datasets.mnist import IDX_FILES, IDX_FOLDERS, IDX_SYSTEM_DIRS, _find_amat, binmnist_not_found

    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names are {list(DATASETS)}")

    def idx(base: str) -> Dict[str, Path]:
        return find_files(base, data_root, IDX_FOLDERS[base], list(IDX_FILES[base]), IDX_SYSTEM_DIRS[base])

    if name in ("mnist", "fashion", *GREY_DATASETS):
        return idx(GREY_DATASETS.get(name, name))
    if name == "binmnist":
        amat = _find_amat(data_root)
        if amat is not None:
            return amat
        try:
            return idx("mnist")
        except DatasetNotFoundError as e:
            raise binmnist_not_found(data_root, e) from None
    if name == "omniglot":
        return find_files("omniglot", data_root, ("omniglot", "."), ["chardata.mat"], allow_gz=False)
    return {}
