r"""Reading an experiment's run directories into one tidy table.

A run directory ``<root>/<exp>/<run_id>/`` holds ``config.json`` (the run's flags),
``status.json`` (``{"status": running|success|failed|aborted, ...}``) and ``metrics.jsonl`` (one
JSON object per line: ``{"split", "step", "epoch", "time", "metrics": {name: value}}``); see
``spec/experiments.md``.  :func:`read_experiment` turns every run of an experiment into

* ``runs``: one row per run directory with its id, its *report status* and the problems found,
  plus its configuration as columns;
* ``metrics``: the tidy table, one row per run x split x step x metric, with the configuration of
  the run as columns (``run_id``, ``status``, config columns..., ``split``, ``step``, ``epoch``,
  ``time``, ``metric``, ``value``).

Nothing here crashes on a damaged run: a missing or unreadable file, a bad JSON line or a
truncated last line is recorded in ``problems`` and the run's report status says what it is:

``success`` / ``failed`` / ``aborted`` / ``running`` (from ``status.json``), ``unfinished`` (no
``status.json`` yet) or ``corrupt`` (``config.json`` or ``status.json`` missing/unreadable while
the other exists, or a bad metrics line in the middle of the file).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pandas as pd

__all__ = [
    "RunRecord",
    "ExperimentData",
    "NoRunsError",
    "read_run",
    "read_experiment",
    "run_matches",
    "RESERVED_COLUMNS",
]

#: columns of the tidy table that are not configuration values
RESERVED_COLUMNS = ("run_id", "status", "split", "step", "epoch", "time", "metric", "value", "problems", "path")
#: files that are not run directories inside ``<root>/<exp>/`` (queue, lock, snapshot)
_IGNORED_NAMES = {".lib_snapshot"}


class NoRunsError(FileNotFoundError):
    r"""The experiment has no run directory (names the folder looked into)."""


@dataclass
class RunRecord:
    r"""One run directory: its id, report status, configuration, metric lines and problems."""

    run_id: str
    path: Path
    status: str
    config: Dict[str, Any] = field(default_factory=dict)
    status_info: Dict[str, Any] = field(default_factory=dict)
    lines: List[Dict[str, Any]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)


@dataclass
class ExperimentData:
    r"""All runs of an experiment: the per-run table and the tidy metrics table."""

    exp: str
    root: Path
    records: List[RunRecord]
    runs: pd.DataFrame
    metrics: pd.DataFrame
    config_columns: List[str]


def _read_json(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    if not path.exists():
        return None, f"{path.name} missing"
    try:
        with open(path, "r", encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name} unreadable ({type(e).__name__}: {e})"
    if not isinstance(obj, dict):
        return None, f"{path.name} is not a JSON object"
    return obj, None


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int, float))


def _valid_line(obj: Any) -> Optional[str]:
    if not isinstance(obj, dict):
        return "not a JSON object"
    for k in ("split", "step", "metrics"):
        if k not in obj:
            return f"no {k!r} key"
    if not isinstance(obj["metrics"], dict):
        return "'metrics' is not an object"
    if isinstance(obj["step"], bool) or not isinstance(obj["step"], (int, float)):
        return "'step' is not a number"
    return None


def read_run(path: Union[str, os.PathLike]) -> RunRecord:
    r"""Read one run directory; never raises on damaged content (see the module docstring)."""
    path = Path(path)
    rec = RunRecord(run_id=path.name, path=path, status="unknown")
    config, cerr = _read_json(path / "config.json")
    status, serr = _read_json(path / "status.json")
    if cerr:
        rec.problems.append(cerr)
    if serr:
        rec.problems.append(serr)
    rec.config = config or {}
    rec.status_info = status or {}
    corrupt = False
    if config is None and (path / "config.json").exists():
        corrupt = True
    if status is None and (path / "status.json").exists():
        corrupt = True
    if config is None and status is not None:
        corrupt = True
    mpath = path / "metrics.jsonl"
    if mpath.exists():
        try:
            with open(mpath, "r", encoding="utf-8", errors="replace") as f:
                raw = f.read().split("\n")
        except OSError as e:
            rec.problems.append(f"metrics.jsonl unreadable ({e})")
            raw = []
            corrupt = True
        n = len(raw)
        for i, line in enumerate(raw):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                err = _valid_line(obj)
            except json.JSONDecodeError as e:
                obj, err = None, f"bad JSON ({e.msg})"
            if err is not None:
                last = i == n - 1 or all(not r.strip() for r in raw[i + 1:])
                if last:
                    rec.problems.append(f"metrics.jsonl line {i + 1}: {err} (truncated last line, ignored)")
                else:
                    rec.problems.append(f"metrics.jsonl line {i + 1}: {err} (line ignored)")
                    corrupt = True
                continue
            rec.lines.append(obj)
    else:
        rec.problems.append("metrics.jsonl missing")
    if corrupt:
        rec.status = "corrupt"
    elif status is None:
        rec.status = "unfinished"
    else:
        s = status.get("status")
        rec.status = s if isinstance(s, str) and s else "unknown"
    return rec


def run_matches(rec: RunRecord, pattern: str) -> bool:
    r"""A plain pattern (never evaluated): ``key=value`` matches a configuration entry exactly;
    otherwise the pattern matches when it equals one of the configuration's values (as a string)
    or is a substring of the run id."""
    if "=" in pattern:
        key, value = pattern.split("=", 1)
        return key in rec.config and str(rec.config[key]) == value
    if pattern in rec.run_id:
        return True
    return any(_scalar(v) and str(v) == pattern for v in rec.config.values())


def _list_run_dirs(folder: Path) -> List[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_dir() or p.name.startswith(".") or p.name in _IGNORED_NAMES:
            continue
        if any((p / n).exists() for n in ("config.json", "status.json", "metrics.jsonl")):
            out.append(p)
    return out


def read_experiment(root: Union[str, os.PathLike], exp: str, include: Sequence[str] = (),
                    exclude: Sequence[str] = ()) -> ExperimentData:
    r"""Read every run directory of ``<root>/<exp>/`` into :class:`ExperimentData`.

    ``include``: keep a run when it matches *any* of these patterns (all runs when empty);
    ``exclude``: then drop a run that matches any of these (see :func:`run_matches`).

    Raises:
        NoRunsError: the folder does not exist or holds no run directory (after filtering).
    """
    root = Path(root)
    folder = root / exp
    if not folder.is_dir():
        raise NoRunsError(f"experiment {exp!r} has no runs: folder {folder} does not exist "
                          f"(check --exp and --root)")
    records = [read_run(p) for p in _list_run_dirs(folder)]
    if not records:
        raise NoRunsError(f"experiment {exp!r} has no runs: no run directory in {folder}")
    if include:
        records = [r for r in records if any(run_matches(r, p) for p in include)]
    if exclude:
        records = [r for r in records if not any(run_matches(r, p) for p in exclude)]
    if not records:
        raise NoRunsError(f"experiment {exp!r}: no run matches --include {list(include)} "
                          f"/ --exclude {list(exclude)} in {folder}")
    # configuration columns: scalar values only, renamed when they clash with reserved names
    config_columns: List[str] = []
    cfg_rows: List[Dict[str, Any]] = []
    for r in records:
        row: Dict[str, Any] = {}
        for k, v in r.config.items():
            if not _scalar(v):
                continue
            col = f"config.{k}" if k in RESERVED_COLUMNS else k
            row[col] = v
            if col not in config_columns:
                config_columns.append(col)
        cfg_rows.append(row)
    run_rows = []
    metric_rows: List[Dict[str, Any]] = []
    for r, cfg in zip(records, cfg_rows):
        steps = [ln["step"] for ln in r.lines]
        run_rows.append({"run_id": r.run_id, "status": r.status, "has_config": bool(r.config), "lines": len(r.lines),
                         "last_step": max(steps) if steps else None,
                         "problems": "; ".join(r.problems), "path": str(r.path),
                         "error": r.status_info.get("error"), **cfg})
        for ln in r.lines:
            for name, value in ln["metrics"].items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                metric_rows.append({"run_id": r.run_id, "status": r.status, **cfg,
                                    "split": str(ln["split"]), "step": int(ln["step"]),
                                    "epoch": ln.get("epoch"), "time": ln.get("time"),
                                    "metric": str(name), "value": float(value)})
    columns = ["run_id", "status", *config_columns, "split", "step", "epoch", "time", "metric", "value"]
    metrics = pd.DataFrame(metric_rows, columns=columns)
    runs = pd.DataFrame(run_rows)
    return ExperimentData(exp=exp, root=root, records=records, runs=runs, metrics=metrics,
                          config_columns=config_columns)

