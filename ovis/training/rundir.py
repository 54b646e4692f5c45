r"""The run directory of one training run: its id, files and atomic writes.

Layout of ``<root>/<exp>/<run_id>/``::

    config.json      every option (flat, as parsed), plus "run" (id, library / torch versions,
                     OVIS_JOB_ID, command line, resolved lengths) and "data" (the data set's
                     resolved description)
    status.json      {"status": running|success|failed|aborted, "started", "ended", "step",
                      "job_id", "error", "traceback", "pid", "host", "updated"}
    metrics.jsonl    one JSON object per line and per logged step:
                     {"split": train|valid|test, "step", "epoch", "time", "metrics": {...}}
    last.pt          the last checkpoint (model, optimiser, estimator, schedules, RNG states)
    best.pt          the checkpoint with the best validation L_K
    samples/         PNG grids of prior samples and reconstructions (image data sets)
    tensorboard/     TensorBoard event files (when the package imports)
    run.log          the log file

Every file that must survive a kill is written atomically: a temporary file in the same folder,
flushed and fsynced, then ``os.replace``.  ``metrics.jsonl`` is appended, flushed and fsynced once
per evaluation; a truncated last line (a kill during the write) is dropped when the run resumes.

Run id: ``[<tag>-]<estimator>-iw<K>-seed<seed>-<hash>`` where ``hash`` is the first 12 hex digits
of the SHA-256 of the experiment name, the tag and every *identity* option whose value differs
from its default (options in :data:`~ovis.training.arguments.NON_IDENTITY_FLAGS` never count).
Adding a new option with a default therefore never changes an existing id.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

from ovis.training.arguments import NON_IDENTITY_FLAGS, RUN_IDENTITY_DEFAULTS
from ovis.utils.files import atomic_write_bytes
from ovis.utils.files import atomic_write_json as _atomic_write_json

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_torch_save",
    "identity_values",
    "compute_run_id",
    "RunDirectory",
    "STATUSES",
]

STATUSES = ("running", "success", "failed", "aborted")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Size):
        return list(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def atomic_write_json(path: os.PathLike | str, obj: Any) -> None:
    r"""Write ``obj`` as indented JSON (tensors, sizes and paths converted), atomically."""
    _atomic_write_json(path, obj, indent=2, default=_json_default)


def atomic_torch_save(obj: Any, path: os.PathLike | str) -> None:
    r"""``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def identity_values(args: argparse.Namespace) -> Dict[str, Any]:
    r"""The options that define the run and differ from their defaults (sorted by name)."""
    out: Dict[str, Any] = {}
    for k, v in sorted(vars(args).items()):
        if k in NON_IDENTITY_FLAGS or k == "exp":
            continue
        if k in RUN_IDENTITY_DEFAULTS and RUN_IDENTITY_DEFAULTS[k] == v:
            continue
        out[k] = v
    return out


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", s).strip("._") or "x"


def compute_run_id(args: argparse.Namespace) -> str:
    r"""The deterministic run id (see the module docstring)."""
    payload = json.dumps({"exp": args.exp, "identity": identity_values(args)}, sort_keys=True,
                         default=_json_default)
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]
    parts: List[str] = []
    if args.id:
        parts.append(_safe(str(args.id))[:40])
    parts += [_safe(args.estimator)[:40], f"iw{args.iw}", f"seed{args.seed}", digest]
    return "-".join(parts)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


class RunDirectory:
    r"""Files of one run directory (see the module docstring).

    Args:
        path: the run directory ``<root>/<exp>/<run_id>``.
    """

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.status_path = self.path / "status.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.last_path = self.path / "last.pt"
        self.best_path = self.path / "best.pt"
        self.samples_path = self.path / "samples"
        self.tensorboard_path = self.path / "tensorboard"
        self.log_path = self.path / "run.log"
        self._status: Dict[str, Any] = {}

    # ----------------------------------------------------------------- lifecycle
    def exists(self) -> bool:
        r"""Whether the run directory exists."""
        return self.path.exists()

    def delete(self) -> None:
        r"""Delete the run directory (``--rf``)."""
        if self.path.exists():
            shutil.rmtree(self.path)

    def create(self) -> None:
        r"""Create the run directory (and its parents; no error when it exists)."""
        self.path.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- status
    def read_status(self) -> Optional[Dict[str, Any]]:
        r"""The contents of ``status.json``, or ``None`` when it is missing, unreadable or not a JSON object."""
        try:
            with open(self.status_path, "r", encoding="utf-8") as f:
                obj = json.load(f)
            return obj if isinstance(obj, dict) else None
        except (OSError, json.JSONDecodeError):
            return None

    def write_status(self, status: str, step: int, **extra: Any) -> None:
        r"""Write ``status.json`` atomically; keeps ``started`` and ``job_id`` across updates."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        s = dict(self._status)
        s.update({"status": status, "step": int(step), "updated": _now(), "pid": os.getpid(),
                  "host": socket.gethostname()})
        s.setdefault("started", _now())
        s.setdefault("ended", None)
        s.setdefault("error", None)
        s.setdefault("traceback", None)
        s.update(extra)
        if status == "running":
            s["ended"] = None
            s["error"] = None
            s["traceback"] = None
        else:
            s["ended"] = _now()
        self._status = s
        atomic_write_json(self.status_path, s)

    def start_status(self, job_id: Optional[str], step: int) -> None:
        r"""Start a new session's status: ``running`` at ``step`` with a fresh ``started`` time, the job id
        ``job_id`` and no error (written atomically).
        """
        self._status = {"status": "running", "started": _now(), "ended": None, "step": int(step),
                        "job_id": job_id, "error": None, "traceback": None}
        self.write_status("running", step)

    # ----------------------------------------------------------------- metrics
    def read_metrics(self) -> List[Dict[str, Any]]:
        r"""The valid lines of ``metrics.jsonl`` (a truncated or bad line is skipped)."""
        out: List[Dict[str, Any]] = []
        if not self.metrics_path.exists():
            return out
        with open(self.metrics_path, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict) and "step" in obj and "split" in obj:
                    out.append(obj)
        return out

    def truncate_metrics(self, max_step: int) -> int:
        r"""Keep only the lines with ``step <= max_step`` (atomic rewrite); return how many were
        dropped.  Used on resume so that the resumed metrics equal an uninterrupted run's."""
        if not self.metrics_path.exists():
            return 0
        with open(self.metrics_path, "rb") as f:
            raw = f.read()
        lines = self.read_metrics()
        kept = [ln for ln in lines if int(ln["step"]) <= max_step]
        data = "".join(json.dumps(ln) + "\n" for ln in kept).encode("utf-8")
        if data != raw:
            atomic_write_bytes(self.metrics_path, data)
        return len(lines) - len(kept)

    def append_metrics(self, records: List[Mapping[str, Any]]) -> None:
        r"""Append JSON lines, flush and fsync (once for all ``records``)."""
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
