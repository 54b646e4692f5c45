r"""Synthetic run directories in the spec'd format (for tests and demos of the reports).

:func:`write_fake_run` writes ``<root>/<exp>/<run_id>/{config.json,status.json,metrics.jsonl}``
exactly as ``run.py`` does (``spec/experiments.md``); the metric values are a deterministic
function of the configuration and the seed, so that tests can recompute them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Union

__all__ = ["fake_value", "write_fake_run"]


def fake_value(metric: str, split: str, step: int, estimator: str, iw: int, seed: int) -> float:
    r"""A smooth learning curve: ``-100 + 10 (1 - exp(-step/50)) + log(iw) + 0.1*seed + h(estimator)``."""
    h = (sum(i * ord(c) for i, c in enumerate(estimator)) % 23) / 5.0
    base = -100.0 + 10.0 * (1.0 - math.exp(-step / 50.0)) + math.log(iw) + 0.1 * seed + h
    if metric == "loss/L_k":
        return base + (0.5 if split == "test" else 0.0)
    if metric == "grads/snr":
        return 0.1 * math.sqrt(iw) + 0.01 * seed + step / 1000.0
    return base / 10.0 + len(metric)


def write_fake_run(root: Union[str, Path], exp: str, run_id: str, estimator: str, iw: int, seed: int,
                   status: Optional[str] = "success", steps: Sequence[int] = (0, 50, 100, 150, 200),
                   metrics: Iterable[str] = ("loss/L_k", "loss/elbo", "grads/snr"),
                   dataset: str = "gmm", tag: str = "", extra_lines: Sequence[str] = (),
                   config: bool = True) -> Path:
    r"""Write a synthetic run directory ``<root>/<exp>/<run_id>`` in ``run.py``'s format.

    Args:
        root, exp, run_id: where it goes.
        estimator, iw, seed, dataset, tag: the configuration written to ``config.json`` (``tag``
            as ``id``).
        status: the ``status.json`` status (``None``: no status file).
        steps: the logged steps; each has a ``train`` and a ``test`` line of ``metrics.jsonl``
            with the values of :func:`fake_value`.
        metrics: the metric names logged.
        extra_lines: raw lines appended to ``metrics.jsonl`` (e.g. a truncated line).
        config: write ``config.json``.

    Returns:
        The run directory.
    """
    path = Path(root) / exp / run_id
    path.mkdir(parents=True, exist_ok=True)
    cfg: Dict[str, Any] = {"exp": exp, "estimator": estimator, "iw": iw, "seed": seed, "dataset": dataset,
                           "id": tag, "mc": 1, "lr": 1e-3, "data": {"description": "nested, ignored"}}
    if config:
        (path / "config.json").write_text(json.dumps(cfg))
    if status is not None:
        (path / "status.json").write_text(json.dumps({"status": status, "started": 0.0, "ended": 1.0,
                                                      "step": max(steps) if steps else 0, "job_id": None,
                                                      "error": "boom" if status == "failed" else None}))
    lines = []
    metrics = list(metrics)
    for step in steps:
        for split in ("train", "test"):
            vals = {m: fake_value(m, split, step, estimator, iw, seed) for m in metrics}
            lines.append(json.dumps({"split": split, "step": step, "epoch": step // 100, "time": step * 0.1,
                                     "metrics": vals}))
    (path / "metrics.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path
