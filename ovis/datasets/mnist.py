r"""MNIST, Fashion-MNIST and binarized MNIST.

* ``mnist``: MNIST (LeCun et al. 1998) from the IDX files, **dynamically binarised**
  (``x ~ Bernoulli(intensity)`` at every access).
* ``fashion``: Fashion-MNIST (Xiao et al. 2017) from the IDX files, **thresholded**:
  ``x = 1[intensity > 0.5]`` (the same as ``1[intensity >= 0.5]``: no byte ``b`` has ``b / 255 = 0.5``).
* ``mnist-grey`` / ``fashion-grey``: the same images as **grey levels** in ``[0, 1]``
  (``intensity / 255``, no binarisation), for likelihoods of grey levels such as the Continuous
  Bernoulli (``run.py --likelihood cbernoulli``).
* ``binmnist``: the fixed binarisation of Larochelle & Murray (2011), read from
  ``binarized_mnist/binarized_mnist_{train,valid,test}.amat`` when present (verified by size and
  sha256); otherwise a fixed-seed Bernoulli binarisation of the MNIST intensities, recorded as
  such in ``DataSplits.description`` (``"binarization": "fixed-seed-bernoulli"``): it is *not*
  the Larochelle file.

Splits (as in the IWAE / VIMCO / OVIS papers): the first 50,000 images of the 60k training file
for training, the last 10,000 for validation, the 10k test file for testing.  ``mini``: the
first 1000 / 200 / 200 images of each split.  Every split has ``x_shape = [1, 28, 28]``.

Data protocol options of :func:`load_mnist_like` (and ``load_dataset``; ``run.py --binarization``,
``--split``):

* ``binarization`` (``mnist`` / ``fashion`` only): ``None`` keeps the data set's default above,
  ``"dynamic"`` draws ``x ~ Bernoulli(intensity)`` at every access, ``"threshold"`` fixes
  ``x = 1[intensity / 255 >= 0.5]`` (the IGR paper's MNIST, Potapczynski et al. 2020).
* ``split`` (the IDX sets ``mnist``, ``fashion``, ``mnist-grey``, ``fashion-grey`` only):
  ``"50k"`` (the default above) or ``"60k"``: train on all 60,000 images of the training file (as
  the IGR code does); since temperatures must be chosen on held-out data disjoint from the test
  set, the 10k test file is halved: its first 5,000 images validate, its last 5,000 test.
  ``mini`` then keeps the first 1000 / 200 / 200 images of each of these splits.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ovis.datasets.core import DataSplits, TensorImageDataset
from ovis.datasets.errors import DatasetCorruptError, DatasetNotFoundError, fetch_command
from ovis.datasets.files import cached, find_files
from ovis.datasets.idx import read_bytes, read_idx, sha256_hex

__all__ = [
    "load_mnist_like",
    "load_grey_levels",
    "GREY_DATASETS",
    "load_binmnist",
    "load_idx_set",
    "load_labels",
    "read_amat",
    "IDX_FILES",
    "LAROCHELLE_FILES",
    "MINI_SIZES",
    "BINARIZATION_OPTIONS",
    "BINARIZABLE_DATASETS",
    "SPLIT_OPTIONS",
    "SPLIT_DATASETS",
    "check_data_protocol",
]

IMAGE_SHAPE = (28, 28)
N_TRAIN, N_VALID, N_TEST = 50_000, 10_000, 10_000
MINI_SIZES = (1000, 200, 200)
#: the ``"60k"`` split: all of the training file / the first half of the test file / its second half
N_TRAIN_60K, N_VALID_60K, N_TEST_60K = 60_000, 5_000, 5_000

#: the values of ``binarization`` besides ``None`` (the data set's default)
BINARIZATION_OPTIONS = ("dynamic", "threshold")
#: the data sets whose binarisation can be chosen
BINARIZABLE_DATASETS = ("mnist", "fashion")
#: the values of ``split``
SPLIT_OPTIONS = ("50k", "60k")
#: the data sets that accept ``split="60k"`` (those read from the IDX files)
SPLIT_DATASETS = ("mnist", "fashion", "mnist-grey", "fashion-grey")
#: the ``description["split"]`` sentence of each split
SPLIT_SENTENCES = {
    "50k": "train: first 50k of the training file, valid: its last 10k, test: the 10k test file",
    "60k": "train: all 60k images of the training file, valid: the first 5k of the 10k test file, "
           "test: its last 5k (valid and test disjoint)",
}

#: the IDX files of MNIST and Fashion-MNIST: name -> (shape, sha256 of the uncompressed file)
IDX_FILES: Dict[str, Dict[str, Tuple[Tuple[int, ...], str]]] = {
    "mnist": {
        "train-images-idx3-ubyte": ((60000, 28, 28), "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "train-labels-idx1-ubyte": ((60000,), "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "t10k-images-idx3-ubyte": ((10000, 28, 28), "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "t10k-labels-idx1-ubyte": ((10000,), "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    },
    "fashion": {
        "train-images-idx3-ubyte": ((60000, 28, 28), "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels-idx1-ubyte": ((60000,), "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "t10k-images-idx3-ubyte": ((10000, 28, 28), "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "t10k-labels-idx1-ubyte": ((10000,), "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
}
#: folders looked for under the data root (torchvision's layout included), then system folders
IDX_FOLDERS = {"mnist": ("mnist", "MNIST/raw", "MNIST"),
               "fashion": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST")}
IDX_SYSTEM_DIRS = {"mnist": (), "fashion": ("/usr/share/datasets/fashion-mnist",)}

#: Larochelle's binarized MNIST: split -> (file name, rows, size in bytes, sha256)
LAROCHELLE_FILES = {
    "train": ("binarized_mnist_train.amat", 50_000, 78_400_000,
              "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
    "valid": ("binarized_mnist_valid.amat", 10_000, 15_680_000,
              "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
    "test": ("binarized_mnist_test.amat", 10_000, 15_680_000,
             "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
}
AMAT_FOLDERS = ("binarized_mnist", "binmnist", ".")


def load_idx_set(name: str, data_root: os.PathLike | str,
                 verify_checksums: bool = True) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    r"""Read and verify the four IDX files of ``name`` (``mnist`` or ``fashion``).

    Returns ``({file name: uint8 array}, {"files": {...}, "checksums_verified": bool})``.
    Shapes and sizes are always checked; the sha256 of the uncompressed content is checked
    against the published value unless ``verify_checksums=False`` is passed explicitly.
    """
    if name not in IDX_FILES:
        raise ValueError(f"no IDX data set named {name!r}; known: {sorted(IDX_FILES)}")
    spec = IDX_FILES[name]
    paths = find_files(name, data_root, IDX_FOLDERS[name], list(spec), IDX_SYSTEM_DIRS[name])

    def build() -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        arrays: Dict[str, np.ndarray] = {}
        files: Dict[str, Any] = {}
        for fname, (shape, sha) in spec.items():
            arr, digest = read_idx(paths[fname], dataset=name, expected_shape=shape,
                                   expected_sha256=sha if verify_checksums else None)
            arrays[fname] = arr
            files[fname] = {"path": str(paths[fname].resolve()), "sha256": digest}
        return arrays, {"files": files, "checksums_verified": bool(verify_checksums)}

    return cached(("idx", name, verify_checksums), list(paths.values()), build)


#: the grey-level data sets: name -> the IDX data set they read
GREY_DATASETS = {"mnist-grey": "mnist", "fashion-grey": "fashion"}


def load_grey_levels(data_root: os.PathLike | str, name: str = "fashion", n: Optional[int] = 1000,
                     split: str = "train", verify_checksums: bool = True) -> torch.Tensor:
    r"""The first ``n`` images (all when ``n`` is ``None``) of the ``train`` (60k) or ``test``
    (10k) IDX file of ``fashion`` (Fashion-MNIST) or ``mnist`` as grey levels in ``[0, 1]``:
    ``[n, 1, 28, 28]`` float32 ``intensity / 255``, files found and verified as by
    :func:`load_idx_set`."""
    base = GREY_DATASETS.get(name, name)
    if base not in IDX_FILES:
        raise ValueError(f"grey levels exist for {sorted(IDX_FILES)} (or {sorted(GREY_DATASETS)}), got {name!r}")
    stem = {"train": "train", "test": "t10k"}.get(split)
    if stem is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n is not None and (isinstance(n, bool) or int(n) != n or n < 0):
        raise ValueError(f"n must be an integer >= 0 or None, got {n!r}")
    arrays, _ = load_idx_set(base, data_root, verify_checksums=verify_checksums)
    images = arrays[f"{stem}-images-idx3-ubyte"]
    images = images if n is None else images[:int(n)]
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)[:, None]


def load_labels(name: str, data_root: os.PathLike | str, split: str = "train") -> np.ndarray:
    r"""The class labels (``uint8``, 0..9) of the images of ``mnist`` / ``fashion``
    (``binmnist`` uses MNIST's).

    ``split``: ``train`` (the 60k file, also the ``train`` split of ``split="60k"``, hence the
    alias ``train60k``), ``train50k`` / ``valid`` (first 50k / last 10k of the training file: the
    default ``"50k"`` split), ``test`` (the 10k file), ``valid60k`` / ``test60k`` (the first / last
    5k of the test file: the valid / test splits of ``split="60k"``).  Raises ``ValueError`` for
    another ``split``.
    """
    base = "mnist" if name == "binmnist" else name
    arrays, _ = load_idx_set(base, data_root)
    train = arrays["train-labels-idx1-ubyte"]
    test = arrays["t10k-labels-idx1-ubyte"]
    out = {"train": train, "train50k": train[:N_TRAIN], "valid": train[N_TRAIN:], "test": test,
           "train60k": train, "valid60k": test[:N_VALID_60K], "test60k": test[N_VALID_60K:]}
    if split not in out:
        raise ValueError(f"split must be one of {sorted(out)}, got {split!r}")
    return out[split].copy()


def _subset(n: Tuple[int, int, int], mini: bool) -> Tuple[int, int, int]:
    return tuple(min(a, b) for a, b in zip(n, MINI_SIZES)) if mini else n  # type: ignore[return-value]


def check_data_protocol(name: str, binarization: Optional[str] = None, split: str = "50k") -> None:
    r"""Check the data-protocol options of ``name`` (see the module doc).

    Args:
        name: the data set name (any of ``load_dataset``'s).
        binarization: ``None`` (the data set's default) or one of :data:`BINARIZATION_OPTIONS`;
            only ``mnist`` / ``fashion`` accept a value other than ``None``.
        split: one of :data:`SPLIT_OPTIONS`; ``"50k"`` means each data set's own split, ``"60k"``
            exists for :data:`SPLIT_DATASETS` only.

    Raises:
        ValueError: an unknown value, or one the data set does not accept (the message names the
            option, the data sets that accept it and the fix).
    """
    if binarization is not None and binarization not in BINARIZATION_OPTIONS:
        raise ValueError(f"binarization must be None (the data set's default) or one of "
                         f"{list(BINARIZATION_OPTIONS)}, got {binarization!r}")
    if binarization is not None and name not in BINARIZABLE_DATASETS:
        raise ValueError(
            f"binarization={binarization!r} is accepted only by the data sets {list(BINARIZABLE_DATASETS)}; "
            f"{name!r} has a fixed binarisation (or none, for grey levels): pass binarization=None")
    if split not in SPLIT_OPTIONS:
        raise ValueError(f"split must be one of {list(SPLIT_OPTIONS)}, got {split!r}")
    if split != "50k" and name not in SPLIT_DATASETS:
        raise ValueError(
            f"split={split!r} is accepted only by the IDX data sets {list(SPLIT_DATASETS)}; {name!r} has its "
            "own fixed split: pass split='50k' (the default)")


def load_mnist_like(name: str, data_root: os.PathLike | str, mini: bool = False,
                    verify_checksums: bool = True, *, binarization: Optional[str] = None,
                    split: str = "50k") -> DataSplits:
    r"""``mnist`` (dynamic binarisation), ``fashion`` (thresholded at 0.5) or their grey levels
    ``mnist-grey`` / ``fashion-grey`` (``intensity / 255``); see the module doc.

    Args:
        name: ``mnist``, ``fashion``, ``mnist-grey`` or ``fashion-grey``.
        data_root: the folder holding the IDX files.
        mini: keep the first 1000 / 200 / 200 images of each split.
        verify_checksums: check the published sha256 of the files (see :func:`load_idx_set`).
        binarization: ``None`` (the data set's default), ``"dynamic"`` or ``"threshold"`` (at 0.5);
            ``mnist`` / ``fashion`` only.
        split: ``"50k"`` (train / valid / test = first 50k / last 10k of the training file / the
            test file) or ``"60k"`` (all 60k training images / first 5k / last 5k of the test file).

    Returns:
        DataSplits: images ``[1, 28, 28]`` float32; ``description`` records the binarisation, the
        sizes and the split.

    Raises:
        ValueError: an unknown ``name`` or a bad ``binarization`` / ``split`` (see
            :func:`check_data_protocol`).
    """
    if name not in SPLIT_DATASETS:
        raise ValueError(f"load_mnist_like reads {list(SPLIT_DATASETS)}, got {name!r}")
    check_data_protocol(name, binarization, split)
    grey = name in GREY_DATASETS
    base = GREY_DATASETS.get(name, name)
    arrays, info = load_idx_set(base, data_root, verify_checksums=verify_checksums)
    images = arrays["train-images-idx3-ubyte"]
    test = arrays["t10k-images-idx3-ubyte"]
    if split == "50k":
        ntr, nva, nte = _subset((N_TRAIN, N_VALID, N_TEST), mini)
        tr = torch.from_numpy(images[:ntr])[:, None]
        va = torch.from_numpy(images[N_TRAIN:N_TRAIN + nva])[:, None]
        te = torch.from_numpy(test[:nte])[:, None]
    else:
        ntr, nva, nte = _subset((N_TRAIN_60K, N_VALID_60K, N_TEST_60K), mini)
        tr = torch.from_numpy(images[:ntr])[:, None]
        va = torch.from_numpy(test[:nva])[:, None]
        te = torch.from_numpy(test[N_VALID_60K:N_VALID_60K + nte])[:, None]
    if binarization is None and not grey:
        binarization = "dynamic" if name == "mnist" else "threshold"
    if grey:
        splits = [TensorImageDataset(t, scale=255.0, binarization="none") for t in (tr, va, te)]
        recorded = "none (grey levels intensity/255 in [0, 1])"
    elif binarization == "dynamic":
        splits = [TensorImageDataset(t, scale=255.0, binarization="dynamic") for t in (tr, va, te)]
        recorded = "dynamic"
    else:
        # x = 1[intensity / 255 >= 0.5] (the IGR code's rule) is x = 1[intensity > 127] on uint8:
        # intensity / 255 >= 0.5 <=> intensity >= 127.5 <=> intensity >= 128 for an integer intensity
        # (127.5 is no uint8 value, so > and >= at 0.5 agree: 127/255 < 0.5 < 128/255)
        splits = [TensorImageDataset((t > 127).to(torch.uint8), scale=1.0) for t in (tr, va, te)]
        recorded = "threshold-0.5"
    description = {
        "name": name, "binarization": recorded, "x_shape": [1, 28, 28],
        "sizes": {"train": ntr, "valid": nva, "test": nte}, "mini": bool(mini),
        "split": SPLIT_SENTENCES[split],
        **info,
    }
    return DataSplits(name=name, train=splits[0], valid=splits[1], test=splits[2],
                      x_shape=torch.Size([1, 28, 28]), train_mean=splits[0].mean(),
                      description=description)


# ---------------------------------------------------------------------------------- binmnist
def read_amat(path: os.PathLike | str, dataset: str = "binmnist", expected_rows: Optional[int] = None,
              expected_size: Optional[int] = None, expected_sha256: Optional[str] = None,
              dim: int = 784) -> Tuple[np.ndarray, str]:
    r"""Read a Larochelle ``.amat`` file: one image per line, ``dim`` values ``0``/``1``
    separated by single spaces, ``\n`` line ends (``2 dim`` bytes per line).

    Returns ``(uint8 array [rows, dim], sha256)``.  Checks the size and sha256 when given, the
    layout of every line, and that the values are binary; raises :class:`DatasetCorruptError`.
    """
    path = Path(path)
    data = read_bytes(path, dataset)
    where = f"data set {dataset!r}: {path}"
    if expected_size is not None and len(data) != expected_size:
        raise DatasetCorruptError(
            f"{where} holds {len(data)} bytes, the published file holds {expected_size} "
            "(truncated or not the Larochelle file)"
        )
    digest = sha256_hex(data)
    if expected_sha256 is not None and digest != expected_sha256:
        raise DatasetCorruptError(
            f"{where}: sha256 {digest} differs from the published {expected_sha256}"
        )
    line = 2 * dim
    if len(data) == 0 or len(data) % line != 0:
        raise DatasetCorruptError(
            f"{where} is not an .amat file of {dim} binary values per line "
            f"({len(data)} bytes is not a multiple of {line}; truncated?)"
        )
    buf = np.frombuffer(data, dtype=np.uint8).reshape(-1, line)
    values, seps = buf[:, 0::2], buf[:, 1::2]
    if not (np.all(seps[:, :-1] == ord(" ")) and np.all(seps[:, -1] == ord("\n"))):
        raise DatasetCorruptError(f"{where}: unexpected separators (expected '0 1 ... 0\\n' lines)")
    x = values - ord("0")
    if x.max(initial=0) > 1:
        raise DatasetCorruptError(f"{where}: values other than 0 and 1")
    if expected_rows is not None and x.shape[0] != expected_rows:
        raise DatasetCorruptError(f"{where} has {x.shape[0]} rows, expected {expected_rows}")
    return x.astype(np.uint8), digest


def binmnist_not_found(data_root: os.PathLike | str, mnist_error: DatasetNotFoundError) -> DatasetNotFoundError:
    r"""The error of a missing binmnist (neither the Larochelle files nor the MNIST ones): one line
    naming the fetch command, the files read and ``mnist_error``'s message."""
    return DatasetNotFoundError(
        f"data set 'binmnist' not found; fetch it with: {fetch_command('binmnist', data_root)} "
        "(it reads <data_root>/binarized_mnist/binarized_mnist_{train,valid,test}.amat, or else the "
        f"MNIST IDX files: {mnist_error})")


def _find_amat(data_root: os.PathLike | str) -> Optional[Dict[str, Path]]:
    names = [v[0] for v in LAROCHELLE_FILES.values()]
    try:
        return find_files("binmnist", data_root, AMAT_FOLDERS, names, allow_gz=False)
    except DatasetNotFoundError:
        return None


def load_binmnist(data_root: os.PathLike | str, mini: bool = False, seed: int = 1,
                  verify_checksums: bool = True) -> DataSplits:
    r"""Binarized MNIST: the Larochelle ``.amat`` files when present, else a fixed-seed
    Bernoulli binarisation of MNIST (``torch.Generator().manual_seed(seed)`` over the 60k
    training images, then the 10k test images), recorded in ``description``.

    ``verify_checksums=False`` (explicit only) skips the size / sha256 check of the ``.amat``
    files, for files in the same format that are not Larochelle's (tests); the description then
    records ``"checksums_verified": false``.
    """
    paths = _find_amat(data_root)
    if paths is not None:
        def build() -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
            arrays, files = {}, {}
            for split, (fname, rows, size, sha) in LAROCHELLE_FILES.items():
                arr, digest = read_amat(
                    paths[fname], expected_rows=rows if verify_checksums else None,
                    expected_size=size if verify_checksums else None,
                    expected_sha256=sha if verify_checksums else None)
                arrays[split] = arr
                files[fname] = {"path": str(paths[fname].resolve()), "sha256": digest}
            return arrays, files

        arrays, files = cached(("amat", verify_checksums), list(paths.values()), build)
        n = _subset(tuple(arrays[s].shape[0] for s in ("train", "valid", "test")), mini)  # type: ignore[arg-type]
        tensors = [torch.from_numpy(arrays[s][:k]).view(-1, 1, 28, 28)
                   for s, k in zip(("train", "valid", "test"), n)]
        description: Dict[str, Any] = {
            "name": "binmnist", "binarization": "larochelle-amat", "files": files,
            "checksums_verified": bool(verify_checksums),
        }
    else:
        try:
            idx_arrays, info = load_idx_set("mnist", data_root)
        except DatasetNotFoundError as e:
            raise binmnist_not_found(data_root, e) from None

        def build_fixed() -> Tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(int(seed))
            tr = torch.from_numpy(idx_arrays["train-images-idx3-ubyte"]).float().div_(255.0)
            te = torch.from_numpy(idx_arrays["t10k-images-idx3-ubyte"]).float().div_(255.0)
            return (torch.bernoulli(tr, generator=g).to(torch.uint8),
                    torch.bernoulli(te, generator=g).to(torch.uint8))

        paths_idx = [Path(v["path"]) for v in info["files"].values()]
        tr, te = cached(("binmnist-fixed", int(seed)), paths_idx, build_fixed)
        n = _subset((N_TRAIN, N_VALID, N_TEST), mini)
        tensors = [tr[:n[0]][:, None], tr[N_TRAIN:N_TRAIN + n[1]][:, None], te[:n[2]][:, None]]
        description = {
            "name": "binmnist", "binarization": "fixed-seed-bernoulli", "binarization_seed": int(seed),
            "note": "the Larochelle .amat files were not found in the data root: this is a "
                    "fixed-seed Bernoulli binarisation of the MNIST intensities, NOT the "
                    "Larochelle binarized MNIST",
            **info,
        }
    splits = [TensorImageDataset(t, scale=1.0) for t in tensors]
    description.update({
        "x_shape": [1, 28, 28], "mini": bool(mini),
        "sizes": {"train": len(splits[0]), "valid": len(splits[1]), "test": len(splits[2])},
    })
    return DataSplits(name="binmnist", train=splits[0], valid=splits[1], test=splits[2],
                      x_shape=torch.Size([1, 28, 28]), train_mean=splits[0].mean(),
                      description=description)
