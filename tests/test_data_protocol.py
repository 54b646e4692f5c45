"""The data-protocol options of the IDX data sets (issue 28: the IGR paper's protocol).

``binarization`` (``None`` / ``"dynamic"`` / ``"threshold"``, ``mnist`` / ``fashion`` only) and
``split`` (``"50k"`` / ``"60k"``, the IDX sets only) of :func:`ovis.datasets.load_dataset`, their
``run.py`` flags ``--binarization`` / ``--split`` and their validation.  The raw images are read
here straight from the gzipped IDX files (not through :mod:`ovis.datasets`) to check the slices.
"""
from __future__ import annotations

import argparse
import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch

import ovis.datasets as datasets
from ovis.datasets import load_dataset, load_labels
from ovis.training.arguments import RunArgumentError, parse_run_args
from ovis.training.run import Trainer, main
from ovis.training.rundir import RunDirectory, compute_run_id

FOLDERS = {"mnist": "mnist", "fashion": "fashion-mnist", "mnist-grey": "mnist", "fashion-grey": "fashion-mnist"}
SENTENCE_50K = "train: first 50k of the training file, valid: its last 10k, test: the 10k test file"


@lru_cache(maxsize=None)
def _raw(root: str, folder: str, stem: str) -> np.ndarray:
    """``stem`` (``train-images-idx3-ubyte`` ...) decoded by hand: big-endian header, then uint8."""
    data = gzip.decompress((Path(root) / folder / f"{stem}.gz").read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _images(root: Path, name: str) -> Tuple[np.ndarray, np.ndarray]:
    folder = FOLDERS[name]
    return _raw(str(root), folder, "train-images-idx3-ubyte"), _raw(str(root), folder, "t10k-images-idx3-ubyte")


def _all(ds) -> torch.Tensor:
    return ds[0:len(ds)]


# ------------------------------------------------------------------------------ binarisation
@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_threshold_is_the_igr_rule_and_deterministic(data_root: Path, name: str) -> None:
    train_raw, test_raw = _images(data_root, name)
    d = load_dataset(name, data_root, binarization="threshold")
    assert d.description["binarization"] == "threshold-0.5"
    expected = torch.from_numpy((train_raw / 255.0 >= 0.5).astype(np.float32))[:, None]
    assert torch.equal(_all(d.train), expected[:50000])
    assert torch.equal(_all(d.valid), expected[50000:])
    assert torch.equal(_all(d.test), torch.from_numpy((test_raw / 255.0 >= 0.5).astype(np.float32))[:, None])
    # deterministic: the same values at every read, every epoch of a loader and every load
    loader = torch.utils.data.DataLoader(d.valid, batch_size=500, shuffle=False)
    epochs = [torch.cat(list(loader)) for _ in range(2)]
    assert torch.equal(epochs[0], epochs[1]) and torch.equal(epochs[0], _all(d.valid))
    assert torch.equal(_all(load_dataset(name, data_root, binarization="threshold").test), _all(d.test))
    # the uint8 rule of the loader (> 127) and the IGR rule (intensity / 255 >= 0.5) agree on every byte
    every_byte = np.arange(256, dtype=np.uint8)
    assert np.array_equal(every_byte > 127, every_byte / 255.0 >= 0.5)
    assert np.array_equal(every_byte > 127, every_byte.astype(np.float32) / np.float32(255) >= np.float32(0.5))


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_dynamic_draws_anew_at_each_read(data_root: Path, name: str) -> None:
    train_raw, _ = _images(data_root, name)
    d = load_dataset(name, data_root, mini=True, binarization="dynamic")
    assert d.description["binarization"] == "dynamic"
    torch.manual_seed(0)
    draws = torch.stack([d.train[0:100] for _ in range(200)])
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(draws[0], draws[1])
    intensity = torch.from_numpy(train_raw[:100] / 255.0).float()[:, None]
    assert (draws.mean(0) - intensity).abs().max() < 0.2  # 200 draws: sd <= 0.035
    # the draws are not the thresholded images
    assert not torch.equal(draws[0], (intensity >= 0.5).float())


def test_explicit_defaults_equal_the_defaults(data_root: Path) -> None:
    for name, same, other in [("mnist", "dynamic", "threshold"), ("fashion", "threshold", "dynamic")]:
        default = load_dataset(name, data_root, mini=True)
        explicit = load_dataset(name, data_root, mini=True, binarization=same, split="50k")
        assert explicit.description == default.description
        assert default.description["split"] == SENTENCE_50K
        changed = load_dataset(name, data_root, mini=True, binarization=other)
        assert changed.description["binarization"] != default.description["binarization"]
    f_default, f_explicit = (load_dataset("fashion", data_root, mini=True, binarization=b) for b in (None, "threshold"))
    assert torch.equal(_all(f_default.train), _all(f_explicit.train))


# ------------------------------------------------------------------------------------- split
@pytest.mark.parametrize("name", ["mnist", "fashion-grey"])
def test_split_60k_slices_and_sizes(data_root: Path, name: str) -> None:
    train_raw, test_raw = _images(data_root, name)
    d = load_dataset(name, data_root, split="60k")
    assert (len(d.train), len(d.valid), len(d.test)) == (60000, 5000, 5000)
    desc = d.description
    assert desc["sizes"] == {"train": 60000, "valid": 5000, "test": 5000}
    assert "all 60k images of the training file" in desc["split"] and "first 5k" in desc["split"]
    assert "last 5k" in desc["split"]
    # the stored bytes are the right slices of the raw files
    assert np.array_equal(d.train.data[:, 0].numpy(), train_raw)
    assert np.array_equal(d.valid.data[:, 0].numpy(), test_raw[:5000])
    assert np.array_equal(d.test.data[:, 0].numpy(), test_raw[5000:])
    # valid and test are the two halves of the test file: no image of one is in the other
    valid_rows = {r.tobytes() for r in d.valid.data.numpy()}
    test_rows = {r.tobytes() for r in d.test.data.numpy()}
    assert len(valid_rows) == len(test_rows) == 5000 and not valid_rows & test_rows
    if name == "fashion-grey":
        assert desc["binarization"].startswith("none")
        assert torch.equal(_all(d.test), torch.from_numpy(test_raw[5000:] / np.float32(255.0))[:, None])
        assert torch.allclose(d.train_mean, torch.from_numpy(train_raw.mean(0) / 255.0).float()[None], atol=1e-6)


def test_split_60k_mini_and_threshold(data_root: Path) -> None:
    train_raw, test_raw = _images(data_root, "mnist")
    d = load_dataset("mnist", data_root, mini=True, split="60k", binarization="threshold")
    assert (len(d.train), len(d.valid), len(d.test)) == (1000, 200, 200)
    assert d.description["sizes"] == {"train": 1000, "valid": 200, "test": 200} and d.description["mini"]
    assert torch.equal(_all(d.train)[:, 0], torch.from_numpy((train_raw[:1000] / 255.0 >= 0.5).astype(np.float32)))
    assert torch.equal(_all(d.valid)[:, 0], torch.from_numpy((test_raw[:200] / 255.0 >= 0.5).astype(np.float32)))
    assert torch.equal(_all(d.test)[:, 0],
                       torch.from_numpy((test_raw[5000:5200] / 255.0 >= 0.5).astype(np.float32)))


def test_labels_of_the_60k_split(data_root: Path) -> None:
    train = _raw(str(data_root), "mnist", "train-labels-idx1-ubyte")
    test = _raw(str(data_root), "mnist", "t10k-labels-idx1-ubyte")
    assert np.array_equal(load_labels("mnist", data_root, "train60k"), train)
    assert np.array_equal(load_labels("mnist", data_root, "valid60k"), test[:5000])
    assert np.array_equal(load_labels("mnist", data_root, "test60k"), test[5000:])
    assert np.array_equal(load_labels("mnist", data_root, "valid"), train[50000:])  # unchanged


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, match", [
    ({"name": "binmnist", "binarization": "threshold"}, r"binarization='threshold' is accepted only by .*'mnist', 'fashion'"),
    ({"name": "mnist-grey", "binarization": "dynamic"}, r"binarization='dynamic' is accepted only by"),
    ({"name": "shapes", "binarization": "dynamic"}, r"pass binarization=None"),
    ({"name": "mnist", "binarization": "thresh"}, r"binarization must be None .*\['dynamic', 'threshold'\], got 'thresh'"),
    ({"name": "binmnist", "split": "60k"}, r"split='60k' is accepted only by the IDX data sets .*'fashion-grey'"),
    ({"name": "omniglot", "split": "60k"}, r"pass split='50k'"),
    ({"name": "fashion", "split": "55k"}, r"split must be one of \['50k', '60k'\]"),
])
def test_bad_options_are_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    # checked before any file is looked for: an empty data root gives the option's error
    with pytest.raises(ValueError, match=match):
        load_dataset(data_root=tmp_path, **kwargs)


@pytest.mark.parametrize("argv, flag, fix", [
    (["--dataset", "binmnist", "--binarization", "threshold"], "--binarization", "drop --binarization"),
    (["--dataset", "fashion-grey", "--likelihood", "cbernoulli", "--binarization", "dynamic"], "--binarization",
     "grey levels"),
    (["--dataset", "omniglot", "--split", "60k"], "--split", "drop --split"),
    (["--dataset", "gmm", "--split", "60k"], "--split", "mnist, fashion, mnist-grey, fashion-grey"),
])
def test_run_arguments_refuse_bad_combinations(tmp_path: Path, capsys, argv: list, flag: str, fix: str) -> None:
    with pytest.raises(RunArgumentError, match=f"argument {flag}:") as e:
        parse_run_args(argv)
    assert fix in str(e.value)
    assert main(["--root", str(tmp_path / "runs"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"run.py: error: argument {flag}:") and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_run_arguments_values_and_run_ids() -> None:
    with pytest.raises(RunArgumentError, match="--binarization"):
        parse_run_args(["--dataset", "mnist", "--binarization", "fixed"])
    with pytest.raises(RunArgumentError, match="--split"):
        parse_run_args(["--dataset", "mnist", "--split", "70k"])
    base = ["--dataset", "mnist"]
    args = parse_run_args(base)
    assert (args.binarization, args.split) == ("default", "50k")
    ids = {compute_run_id(parse_run_args(base + extra)) for extra in
           ([], ["--binarization", "default", "--split", "50k"])}
    assert len(ids) == 1  # the defaults, given or not, are the same run
    other = {compute_run_id(parse_run_args(base + extra)) for extra in
             (["--binarization", "threshold"], ["--split", "60k"], ["--binarization", "dynamic"])}
    assert len(other) == 3 and not (other & ids)


# ------------------------------------------------------------------------------- end to end
TINY = ["--model", "vae", "--N", "4", "--hdim", "16", "--nlayers", "1", "--bs", "20", "--iw_test", "10",
        "--iw_valid", "10", "--max_eval", "20", "--silent", "--no_tensorboard", "--no_flush_denormal",
        "--no_samples", "--grad_samples", "0", "--npoints_au_analysis", "0"]


def test_run_py_passes_the_options_to_the_loader(tmp_path: Path, data_root: Path, monkeypatch) -> None:
    seen = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    argv = ["--dataset", "mnist", "--mini", "--binarization", "threshold", "--split", "60k", "--nsteps", "2",
            "--root", str(tmp_path / "runs"), "--data_root", str(data_root), "--exp", "t", *TINY]
    assert main(argv) == 0
    assert seen and seen[-1]["binarization"] == "threshold" and seen[-1]["split"] == "60k"
    run = tmp_path / "runs" / "t" / compute_run_id(parse_run_args(argv))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["binarization"] == "threshold" and cfg["split"] == "60k"
    desc = cfg["data"]["description"]
    assert desc["binarization"] == "threshold-0.5" and "all 60k images" in desc["split"]
    assert cfg["data"]["sizes"] == {"train": 1000, "valid": 200, "test": 200}
    # --binarization default is the loader's None
    seen.clear()
    argv_default = [a for a in argv if a not in ("--binarization", "threshold")] + ["--rf"]
    assert main(argv_default) == 0
    assert seen[-1]["binarization"] is None and seen[-1]["split"] == "60k"


def test_old_configs_without_the_options_load_the_defaults(tmp_path: Path, data_root: Path) -> None:
    args = parse_run_args(["--dataset", "fashion", "--mini", "--data_root", str(data_root), *TINY])
    old = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("binarization", "split")})
    rundir = RunDirectory(tmp_path / "run")
    rundir.create()
    trainer = Trainer(old, rundir, "old-run")
    trainer.device = torch.device("cpu")  # resolved by Trainer.run before setup
    try:
        trainer.setup()
    finally:
        trainer._close_logger()
    assert trainer.data.description == load_dataset("fashion", data_root, mini=True).description


def test_grid_jobs_with_a_bad_combination_are_refused_before_queueing(tmp_path: Path) -> None:
    from ovis.experiments.grid import ExperimentError, load_and_expand

    grid = {"description": "t", "args": ["--estimator reinforce --dataset binmnist"], "global": "--silent",
            "parameters": {"split": ["50k", "60k"]}}
    path = tmp_path / "e.json"
    path.write_text(json.dumps(grid))
    with pytest.raises(ExperimentError, match="--split 60k applies to the IDX data sets"):
        load_and_expand(path)
    grid["args"] = ["--estimator reinforce --dataset mnist --binarization threshold"]
    path.write_text(json.dumps(grid))
    _, jobs, _ = load_and_expand(path)
    assert len(jobs) == 2
