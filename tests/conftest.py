"""Shared fixtures: a seed per test, float64 by default where precision matters, data root."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def data_root() -> Path:
    """The offline copies of MNIST / Fashion-MNIST (``../shared/data``)."""
    root = Path(os.environ.get("OVIS_TEST_DATA_ROOT", SHARED_DATA))
    if not (root / "mnist").is_dir():
        pytest.fail(f"test data not found at {root} (set OVIS_TEST_DATA_ROOT)")
    return root


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """One intra-op thread: these tests run many tiny tensor ops, and the cores are shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_addoption(parser):
    parser.addoption("--docs-site", default=None, metavar="DIR",
                     help="the built documentation site (docs/_build/html) that the tests marked `docs` check; "
                          "`make docs` builds it and passes it; without it those tests are deselected")


def pytest_collection_modifyitems(config, items):
    r"""Tests marked ``docs`` read a built site: without ``--docs-site`` they are deselected (a plain
    ``pytest`` run does not build the site; ``make docs`` builds it, then runs them)."""
    if config.getoption("--docs-site"):
        return
    keep = [item for item in items if item.get_closest_marker("docs") is None]
    dropped = [item for item in items if item.get_closest_marker("docs") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
