r"""Where a run's records go: its log (:func:`open_run_log`) and its metric sinks.

A metric sink receives

* :meth:`MetricSink.evaluation` ``(lines)``: the three lines of an evaluation, each
  ``{"split": train|valid|test, "step": int, "epoch": float, "time": float, "metrics": {name: float}}``;
* :meth:`MetricSink.progress` ``(step, metrics)``: the running means of the training diagnostics
  since the previous progress record (every ``--log_freq`` steps);
* :meth:`MetricSink.close` at the end of the run.

:class:`JsonlSink` appends the evaluation lines to ``metrics.jsonl`` (flushed and fsynced once per
evaluation, :meth:`ovis.training.rundir.RunDirectory.append_metrics`); :class:`TensorBoardSink`
writes every finite number as the scalar ``<split>/<name>`` (``running/<name>`` for progress) and
is optional (:func:`open_tensorboard` returns ``None`` when the package does not import).
"""
from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from ovis.training.rundir import RunDirectory

__all__ = ["open_run_log", "close_run_log", "MetricSink", "JsonlSink", "TensorBoardSink", "open_tensorboard"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def open_run_log(name: str, path: os.PathLike | str) -> logging.Logger:
    r"""A logger ``name`` (not propagated) writing INFO and above to the file ``path`` and to stdout."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S")
    for handler in (logging.FileHandler(path, encoding="utf-8"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    return log


def close_run_log(log: logging.Logger) -> None:
    r"""Flush, close and remove every handler of ``log``."""
    for h in list(log.handlers):
        h.flush()
        h.close()
        log.removeHandler(h)


class MetricSink:
    r"""The interface of a metric sink (see the module docstring); every method does nothing here."""

    def evaluation(self, lines: Sequence[Mapping[str, Any]]) -> None:
        r"""The lines of one evaluation."""

    def progress(self, step: int, metrics: Mapping[str, float]) -> None:
        r"""Running training means at ``step``."""

    def close(self) -> None:
        r"""The end of the run."""


class JsonlSink(MetricSink):
    r"""Evaluation lines appended to the run directory's ``metrics.jsonl`` (progress is not recorded)."""

    def __init__(self, rundir: RunDirectory) -> None:
        self.rundir = rundir

    def evaluation(self, lines: Sequence[Mapping[str, Any]]) -> None:
        self.rundir.append_metrics(list(lines))


class TensorBoardSink(MetricSink):
    r"""Finite numbers as TensorBoard scalars ``<split>/<name>`` at their step, through ``writer``
    (a ``torch.utils.tensorboard.SummaryWriter`` or anything with ``add_scalar`` and ``close``)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def _scalars(self, split: str, metrics: Mapping[str, Any], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(f"{split}/{k}", v, step)

    def evaluation(self, lines: Sequence[Mapping[str, Any]]) -> None:
        for ln in lines:
            self._scalars(ln["split"], ln["metrics"], ln["step"])

    def progress(self, step: int, metrics: Mapping[str, float]) -> None:
        self._scalars("running", metrics, step)

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(path: os.PathLike | str, purge_step: Optional[int] = None) -> Optional[TensorBoardSink]:
    r"""A :class:`TensorBoardSink` writing event files under ``path`` (``purge_step``: events at
    and after it, left by an interrupted run, are dropped), or ``None`` when TensorBoard does not
    import (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - optional: skip quietly
        return None
    return TensorBoardSink(SummaryWriter(str(path), purge_step=purge_step))

