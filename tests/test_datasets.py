r"""Data loaders: real MNIST / Fashion-MNIST from the shared data root, small files in the
Larochelle (.amat) and IWAE Omniglot (chardata.mat) formats written here, generated sets, and
the clear errors for missing, truncated and wrong files."""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ovis.datasets import (
    DATASETS,
    DatasetCorruptError,
    DatasetNotFoundError,
    DataSplits,
    load_dataset,
    load_labels,
    read_amat,
    read_idx,
)
from ovis.datasets.mnist import IDX_FILES, LAROCHELLE_FILES

MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
IDX_NAMES = list(IDX_FILES["mnist"])


def stack(ds, n: int) -> torch.Tensor:
    return torch.stack([ds[i] for i in range(n)])


# ------------------------------------------------------------------------ real MNIST / Fashion
def test_mnist_real_splits_and_dynamic_binarisation(data_root: Path) -> None:
    d = load_dataset("mnist", data_root)
    assert isinstance(d, DataSplits) and d.name == "mnist"
    assert (len(d.train), len(d.valid), len(d.test)) == (50000, 10000, 10000)
    assert d.x_shape == torch.Size([1, 28, 28])
    assert d.description["binarization"] == "dynamic" and d.description["checksums_verified"]
    x = stack(d.train, 64)
    assert x.dtype == torch.float32 and x.shape == (64, 1, 28, 28)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    # dynamic: a new draw at each access, whose mean is the intensity
    inten = d.train.intensities(slice(0, 64))
    assert 0.0 <= float(inten.min()) and float(inten.max()) <= 1.0 and float(inten.max()) > 0.99
    draws = torch.stack([stack(d.train, 64) for _ in range(200)])
    assert not torch.equal(draws[0], draws[1])
    assert (draws.mean(0) - inten).abs().max() < 0.15  # 200 Bernoulli draws: sd <= 0.035
    # valid = the last 10k of the training file, which the train split does not contain
    assert torch.equal(d.valid.intensities(0), d.valid.data[0].float() / 255)
    assert d.train_mean.shape == d.x_shape and 0.12 < float(d.train_mean.mean()) < 0.14
    json_ok = __import__("json").dumps(d.description)
    assert "train-images-idx3-ubyte" in json_ok


def test_mnist_labels_class_counts(data_root: Path) -> None:
    labels = load_labels("mnist", data_root, "train")
    assert labels.shape == (60000,)
    assert np.bincount(labels, minlength=10).tolist() == MNIST_COUNTS
    assert load_labels("mnist", data_root, "test").shape == (10000,)
    assert load_labels("mnist", data_root, "valid").shape == (10000,)
    with pytest.raises(ValueError, match="split must be one of"):
        load_labels("mnist", data_root, "nope")


def test_fashion_real_thresholded(data_root: Path) -> None:
    d = load_dataset("fashion", data_root)
    assert (len(d.train), len(d.valid), len(d.test)) == (50000, 10000, 10000)
    assert d.description["binarization"] == "threshold-0.5"
    x1, x2 = stack(d.test, 100), stack(d.test, 100)
    assert torch.equal(x1, x2)  # thresholded once: deterministic
    assert set(x1.unique().tolist()) == {0.0, 1.0}
    labels = load_labels("fashion", data_root, "train")
    assert np.bincount(labels, minlength=10).tolist() == [6000] * 10
    # the threshold is intensity > 0.5 on the raw bytes
    raw, _ = read_idx(Path(d.description["files"]["t10k-images-idx3-ubyte"]["path"]),
                      expected_shape=(10000, 28, 28))
    assert torch.equal(x1[:, 0], torch.from_numpy((raw[:100] / 255.0 > 0.5).astype(np.float32)))


def test_mini_subsets_and_cache(data_root: Path) -> None:
    d = load_dataset("mnist", data_root, mini=True)
    assert (len(d.train), len(d.valid), len(d.test)) == (1000, 200, 200)
    assert d.description["mini"] is True
    d2 = load_dataset("mnist", data_root)
    # the decoded arrays are cached in-process: both loads share one buffer
    assert d.train.data.data_ptr() == d2.train.data.data_ptr()


def test_binmnist_fallback_is_fixed_and_documented(data_root: Path) -> None:
    d = load_dataset("binmnist", data_root, mini=True)
    assert d.description["binarization"] == "fixed-seed-bernoulli"
    assert "NOT the Larochelle" in d.description["note"]
    x1, x2 = stack(d.train, 50), stack(d.train, 50)
    assert torch.equal(x1, x2) and set(x1.unique().tolist()) == {0.0, 1.0}
    full = load_dataset("binmnist", data_root)
    assert (len(full.train), len(full.valid), len(full.test)) == (50000, 10000, 10000)
    assert torch.equal(stack(full.train, 50), x1)  # mini is a prefix of the full set
    other = load_dataset("binmnist", data_root, mini=True, seed=2)
    assert not torch.equal(stack(other.train, 50), x1)


# ----------------------------------------------------------------------------- missing / corrupt
def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _fake_root(tmp_path: Path, data_root: Path, replace: dict) -> Path:
    r"""A data root whose mnist/ links to the real files except those in ``replace``."""
    folder = tmp_path / "root" / "mnist"
    folder.mkdir(parents=True)
    for name in IDX_NAMES:
        if name in replace:
            (folder / (name + ".gz")).write_bytes(replace[name])
        else:
            os.symlink(data_root / "mnist" / (name + ".gz"), folder / (name + ".gz"))
    return tmp_path / "root"


def test_missing_root_raises_not_found_naming_everything(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for name, files in (("mnist", IDX_NAMES), ("fashion", IDX_NAMES), ("omniglot", ["chardata.mat"])):
        with pytest.raises(DatasetNotFoundError) as e:
            load_dataset(name, missing)
        msg = str(e.value)
        assert isinstance(e.value, FileNotFoundError)
        assert repr(name) in msg and str(missing) in msg
        assert all(f in msg for f in files), msg
    with pytest.raises(DatasetNotFoundError, match="'mnist'"):  # binmnist falls back to MNIST
        load_dataset("binmnist", missing)


def test_partial_folder_is_not_found(tmp_path: Path, data_root: Path) -> None:
    root = _fake_root(tmp_path, data_root, {})
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root)


def test_truncated_gzip_rejected(tmp_path: Path, data_root: Path) -> None:
    good = (data_root / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes()
    root = _fake_root(tmp_path, data_root, {"train-labels-idx1-ubyte": good[: len(good) // 2]})
    with pytest.raises(DatasetCorruptError) as e:
        load_dataset("mnist", root)
    msg = str(e.value)
    assert "'mnist'" in msg and "train-labels-idx1-ubyte.gz" in msg and "truncated" in msg


def test_truncated_idx_payload_wrong_shape_bad_magic_and_checksum(tmp_path: Path, data_root: Path) -> None:
    labels = gzip.decompress((data_root / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes())
    cases = {
        "truncated or padded": gzip.compress(labels[:-10]),
        "expected (60000,)": gzip.compress(_idx_bytes(np.zeros(59999, np.uint8))),
        "not an IDX file": gzip.compress(b"\x01\x02" + labels[2:]),
        "sha256": gzip.compress(labels[:-1] + bytes([(labels[-1] + 1) % 10])),
    }
    for i, (expected, content) in enumerate(cases.items()):
        root = _fake_root(tmp_path / str(i), data_root, {"train-labels-idx1-ubyte": content})
        with pytest.raises(DatasetCorruptError) as e:
            load_dataset("mnist", root)
        msg = str(e.value)
        assert expected in msg and "'mnist'" in msg and str(root) in msg, msg
    # the checksum check is skipped only when asked explicitly
    d = load_dataset("mnist", tmp_path / "3" / "root", mini=True, verify_checksums=False)
    assert d.description["checksums_verified"] is False


def test_raw_idx_files_are_read(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(_idx_bytes(arr))
    out, digest = read_idx(p, expected_shape=(2, 3, 4))
    assert np.array_equal(out, arr) and digest == hashlib.sha256(p.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ .amat
def _amat(x: np.ndarray) -> bytes:
    return "".join(" ".join(str(int(v)) for v in row) + "\n" for row in x).encode()


def _write_amat_root(tmp_path: Path, sizes=(30, 10, 10), seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    folder = tmp_path / "binarized_mnist"
    folder.mkdir(parents=True)
    arrays = {}
    for (split, (fname, *_)), n in zip(LAROCHELLE_FILES.items(), sizes):
        arrays[split] = (rng.random((n, 784)) < 0.3).astype(np.uint8)
        (folder / fname).write_bytes(_amat(arrays[split]))
    return tmp_path, arrays


def test_amat_files_read_with_explicit_bypass(tmp_path: Path) -> None:
    root, arrays = _write_amat_root(tmp_path)
    # not the published files: the size / sha256 check refuses them unless bypassed explicitly
    with pytest.raises(DatasetCorruptError) as e:
        load_dataset("binmnist", root)
    msg = str(e.value)
    assert "'binmnist'" in msg and "binarized_mnist_train.amat" in msg and "78400000" in msg
    d = load_dataset("binmnist", root, verify_checksums=False)
    assert d.description["binarization"] == "larochelle-amat"
    assert d.description["checksums_verified"] is False
    assert (len(d.train), len(d.valid), len(d.test)) == (30, 10, 10)
    for split in ("train", "valid", "test"):
        ds = getattr(d, split)
        want = torch.from_numpy(arrays[split].astype(np.float32)).view(-1, 1, 28, 28)
        assert torch.equal(stack(ds, len(ds)), want)


def test_amat_truncated_and_wrong_values_rejected(tmp_path: Path) -> None:
    x = (np.random.default_rng(1).random((3, 784)) < 0.5).astype(np.uint8)
    good = _amat(x)
    p = tmp_path / "a.amat"
    p.write_bytes(good[:-100])
    with pytest.raises(DatasetCorruptError, match=r"'binmnist'.*a\.amat.*truncated"):
        read_amat(p)
    p.write_bytes(good.replace(b"1", b"2", 1))
    with pytest.raises(DatasetCorruptError, match="values other than 0 and 1"):
        read_amat(p)
    p.write_bytes(good.replace(b" ", b",", 1))
    with pytest.raises(DatasetCorruptError, match="separators"):
        read_amat(p)
    p.write_bytes(good)
    with pytest.raises(DatasetCorruptError, match="published"):
        read_amat(p, expected_size=LAROCHELLE_FILES["test"][2])
    out, _ = read_amat(p)
    assert np.array_equal(out, x)


# -------------------------------------------------------------------------------- Omniglot
def _write_chardata(path: Path, train: np.ndarray, test: np.ndarray) -> None:
    import scipy.io

    # one image per column, column-major (as in the IWAE file)
    def cols(imgs: np.ndarray) -> np.ndarray:
        return np.stack([im.reshape(-1, order="F") for im in imgs], 1)

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"data": cols(train), "testdata": cols(test)})


def test_omniglot_chardata_orientation_and_binarisation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = rng.random((50, 28, 28)).astype(np.float64)
    train[:, :, :14] *= 0.05  # asymmetric images: the left half is dark
    test = rng.random((20, 28, 28))
    _write_chardata(tmp_path / "omniglot" / "chardata.mat", train, test)
    with pytest.raises(DatasetCorruptError, match=r"'omniglot'.*\(784, 24345\)"):
        load_dataset("omniglot", tmp_path)
    d = load_dataset("omniglot", tmp_path, verify_checksums=False)
    n_valid = len(d.valid)
    assert len(d.train) + n_valid == 50 and len(d.test) == 20 and n_valid >= 1
    assert torch.allclose(d.train.intensities(slice(None))[:, 0],
                          torch.from_numpy(train[: len(d.train)]).float())
    x = stack(d.train, len(d.train))
    assert set(x.unique().tolist()) <= {0.0, 1.0} and x[..., :14].mean() < 0.1 < x[..., 14:].mean()
    t1, t2 = stack(d.test, 20), stack(d.test, 20)
    assert torch.equal(t1, t2)  # test binarised once
    assert abs(float(t1.mean()) - test.mean()) < 0.05


def test_omniglot_truncated_and_wrong_files(tmp_path: Path) -> None:
    path = tmp_path / "omniglot" / "chardata.mat"
    rng = np.random.default_rng(0)
    _write_chardata(path, rng.random((10, 28, 28)), rng.random((5, 28, 28)))
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(DatasetCorruptError, match=r"'omniglot'.*chardata\.mat"):
        load_dataset("omniglot", tmp_path, verify_checksums=False)
    import scipy.io

    scipy.io.savemat(path, {"data": rng.random((784, 10)) * 3, "testdata": rng.random((784, 5))})
    with pytest.raises(DatasetCorruptError, match=r"outside \[0, 1\]"):
        load_dataset("omniglot", tmp_path, verify_checksums=False)
    scipy.io.savemat(path, {"images": rng.random((784, 10))})
    with pytest.raises(DatasetCorruptError, match="no variable 'data'"):
        load_dataset("omniglot", tmp_path, verify_checksums=False)


# ------------------------------------------------------------------------------- generated
def test_gmm_data_matches_the_true_model() -> None:
    d = load_dataset("gmm", "unused", seed=3)
    assert (len(d.train), len(d.valid), len(d.test)) == (10000, 1000, 1000)
    assert d.x_shape == torch.Size([1])
    gt = d.ground_truth
    c = torch.arange(20, dtype=torch.float64)
    assert torch.allclose(gt["mixture_probs"], (5 + c) / (5 + c).sum())
    assert torch.equal(gt["locs"], 10 * c) and float(gt["scale"]) == 5.0
    x = d.train.data[:, 0].double()
    mean = float((gt["mixture_probs"] * gt["locs"]).sum())
    var = float((gt["mixture_probs"] * (gt["locs"] ** 2 + 25)).sum()) - mean ** 2
    assert abs(float(x.mean()) - mean) < 4 * (var / len(x)) ** 0.5
    assert torch.equal(load_dataset("gmm", "unused", seed=3).train.data, d.train.data)
    assert not torch.equal(load_dataset("gmm", "unused", seed=4).train.data, d.train.data)
    assert len(load_dataset("gmm", "unused", mini=True).train) == 1000


def test_gaussian_toy_data_and_optimum() -> None:
    d = load_dataset("gaussian-toy", "unused")
    x = d.train.data
    assert x.shape == (1024, 20) and d.x_shape == torch.Size([20])
    gt = d.ground_truth
    assert torch.allclose(gt["mu_star"], x.double().mean(0).float(), atol=1e-6)
    assert torch.allclose(gt["b_star"], gt["mu_star"] / 2) and torch.equal(gt["A_star"], 0.5 * torch.eye(20))
    # x ~ N(mu, 2I): the sample mean is within 4 standard errors of the true mu
    assert ((gt["mu_star"] - gt["mu"]).abs() < 4 * (2 / 1024) ** 0.5).all()
    assert float(x.var(0).mean()) == pytest.approx(2.0, rel=0.1)


def test_shapes_binary_images() -> None:
    d = load_dataset("shapes", "unused", mini=True)
    assert (len(d.train), len(d.valid), len(d.test)) == (1000, 200, 200)
    x = stack(d.train, 200)
    assert x.shape == (200, 1, 28, 28) and set(x.unique().tolist()) == {0.0, 1.0}
    on = x.flatten(1).sum(1)
    assert (on >= 9).all() and (on < 28 * 28 / 2).all()  # one shape, not empty, not the image


def test_unknown_name_and_every_name_listed() -> None:
    with pytest.raises(ValueError, match="valid names"):
        load_dataset("cifar", "data")
    assert set(DATASETS) == {"binmnist", "mnist", "fashion", "mnist-grey", "fashion-grey", "omniglot", "shapes",
                             "gmm", "gaussian-toy"}


@pytest.mark.parametrize("name", ["fashion-grey", "mnist-grey"])
def test_grey_level_sets_are_the_intensities(data_root: Path, name: str) -> None:
    """``fashion-grey`` / ``mnist-grey``: the IDX images / 255 in [0, 1], not binarised; the same
    images as the binarised set (Fashion-MNIST: its threshold at 0.5 gives ``fashion``); the
    same values as load_grey_levels."""
    from ovis.datasets import load_grey_levels

    d = load_dataset(name, data_root, mini=True)
    assert d.name == name and d.x_shape == (1, 28, 28)
    assert (len(d.train), len(d.valid), len(d.test)) == (1000, 200, 200)
    x = stack(d.train, 1000)
    assert torch.equal(x, stack(d.train, 1000))  # no random binarisation
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len(x.unique()) > 200 and float(((x > 0) & (x < 1)).float().mean()) > 0.1  # grey levels
    assert torch.equal(x * 255, (x * 255).round())  # whole bytes / 255
    base = name[:-len("-grey")]
    assert torch.equal(x, load_grey_levels(data_root, base, n=1000))
    assert torch.equal(stack(d.test, 200), load_grey_levels(data_root, name, n=200, split="test"))
    assert torch.allclose(d.train_mean, x.mean(0), atol=1e-6)
    assert d.description["binarization"].startswith("none")
    if base == "fashion":
        binary = stack(load_dataset("fashion", data_root, mini=True).train, 1000)
        assert torch.equal(binary, (x > 0.5).float())
    with pytest.raises(ValueError, match="split must be"):
        load_grey_levels(data_root, base, split="valid")
    with pytest.raises(ValueError, match="grey levels exist"):
        load_grey_levels(data_root, "omniglot")


def test_grey_level_sets_need_a_grey_level_likelihood() -> None:
    from ovis.training.arguments import RunArgumentError, parse_run_args

    with pytest.raises(RunArgumentError, match="add --likelihood cbernoulli"):
        parse_run_args(["--dataset", "fashion-grey"])
    args = parse_run_args(["--dataset", "fashion-grey", "--likelihood", "cbernoulli", "--prior", "mog"])
    assert args.dataset == "fashion-grey"
