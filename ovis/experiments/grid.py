r"""Experiment files: loading, validation and grid expansion.

An experiment file ``experiments/<exp>.json`` (see ``experiments.md``) reads::

    {"description": "free text",
     "script": "run.py",                      # optional, run.py by default
     "args": ["--estimator ovis-gamma1 --id iwbound", "--estimator vimco-arithmetic"],
     "global": "--silent --deterministic --nsteps 4000000",
     "parameters": {"iw": [50, 10, 5], "seed": [1, 2, 3], "learn_prior": [false]}}

The grid is ``args x parameters`` (the cartesian product over every parameter's values); a job's
command line is ``global + arg + one --key value per parameter``.  A boolean ``true`` adds the bare
flag ``--key``, ``false`` adds nothing.  Numbers keep a format the job's parser reads back
(``1e4`` is read by JSON as the float ``10000.0`` and written ``10000.0``; ``run.py`` accepts whole
floats for integer flags).

Every job's command line is validated with the job script's own parser before anything is queued:
``run.py`` through :func:`ovis.training.arguments.parse_run_args`, ``asymptotic_variance.py``
through ``ovis.analysis.asymptotic.parse_args`` when that module exists.  Any problem raises one
:class:`ExperimentError` naming the file, the key and the reason.
"""
from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = [
    "ExperimentError",
    "Experiment",
    "Job",
    "load_experiment",
    "expand_grid",
    "validate_jobs",
    "load_and_expand",
    "job_id_of",
    "normalise_argv",
    "format_value",
    "DEFAULT_SCRIPT",
]

DEFAULT_SCRIPT = "run.py"
REQUIRED_KEYS = ("description", "args", "global")
OPTIONAL_KEYS = ("script", "parameters")
# Flags the manager appends itself: an experiment file must not set them.
RESERVED_FLAGS = ("exp", "root", "data_root")


class ExperimentError(ValueError):
    r"""An invalid experiment file: ``file``, ``key`` and ``reason`` say where and why."""

    def __init__(self, file: os.PathLike | str, key: str, reason: str) -> None:
        self.file = str(file)
        self.key = key
        self.reason = reason
        super().__init__(f"{self.file}: key {key!r}: {reason}")


@dataclass(frozen=True)
class Experiment:
    r"""A loaded, structurally valid experiment file."""

    name: str
    path: Path
    description: str
    script: str
    args: Tuple[str, ...]
    global_args: str
    parameters: Dict[str, Tuple[Any, ...]]


@dataclass(frozen=True)
class Job:
    r"""One grid point: the job script and its command line (without --exp/--root/--data_root)."""

    job_id: str
    script: str
    argv: Tuple[str, ...]
    arg: str = ""  # the ``args`` entry it came from
    arg_index: int = 0
    params: Dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        r"""The job's command line as one shell-quoted string (``argv`` joined)."""
        return " ".join(shlex.quote(a) for a in self.argv)


# ----------------------------------------------------------------------------------------------
# loading


def load_experiment(path: os.PathLike | str) -> Experiment:
    r"""Read and structurally validate an experiment file; raise :class:`ExperimentError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ExperimentError(path, "<file>", "file not found") from None
    except OSError as e:
        raise ExperimentError(path, "<file>", f"cannot read: {e}") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ExperimentError(path, "<json>", f"bad JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise ExperimentError(path, "<json>", str(e)) from None
    if not isinstance(data, dict):
        raise ExperimentError(path, "<root>", f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ExperimentError(path, unknown[0], "unknown key (valid keys: "
                              + ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS) + ")")
    for k in REQUIRED_KEYS:
        if k not in data:
            raise ExperimentError(path, k, "missing required key")
    if not isinstance(data["description"], str):
        raise ExperimentError(path, "description", "expected a string")
    script = data.get("script", DEFAULT_SCRIPT)
    if not isinstance(script, str) or not script.endswith(".py") or os.path.isabs(script) \
            or ".." in Path(script).parts:
        raise ExperimentError(path, "script", f"expected a relative path to a .py script, got {script!r}")
    args = data["args"]
    if not isinstance(args, list):
        raise ExperimentError(path, "args", f"expected a list of strings, got {type(args).__name__}")
    if len(args) == 0:
        raise ExperimentError(path, "args", "empty list: the grid would be empty (use [\"\"] for one job)")
    for i, a in enumerate(args):
        if not isinstance(a, str):
            raise ExperimentError(path, f"args[{i}]", f"expected a string, got {a!r}")
        _split(path, f"args[{i}]", a)
    if not isinstance(data["global"], str):
        raise ExperimentError(path, "global", f"expected a string, got {data['global']!r}")
    _split(path, "global", data["global"])
    params = data.get("parameters", {})
    if not isinstance(params, dict):
        raise ExperimentError(path, "parameters", f"expected an object, got {type(params).__name__}")
    clean: Dict[str, Tuple[Any, ...]] = {}
    for k, values in params.items():
        key = f"parameters.{k}"
        if not k or not all(c.isalnum() or c in "_-" for c in k) or k.startswith("-"):
            raise ExperimentError(path, key, "a parameter name is a flag name without dashes (letters, digits, _ and -)")
        if k in RESERVED_FLAGS:
            raise ExperimentError(path, key, f"--{k} is set by the manager, not by the experiment file")
        if not isinstance(values, list):
            raise ExperimentError(path, key, f"expected a list of values, got {type(values).__name__} {values!r}")
        if len(values) == 0:
            raise ExperimentError(path, key, "empty list: the grid would be empty")
        for v in values:
            if v is None or isinstance(v, (list, dict)):
                raise ExperimentError(path, key, f"values must be strings, numbers or booleans, got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ExperimentError(path, key, f"non-finite number {v!r}")
        clean[k] = tuple(values)
    for where, text in [("global", data["global"])] + [(f"args[{i}]", a) for i, a in enumerate(args)]:
        for tok in _split(path, where, text):
            if tok.startswith("--") and tok[2:].split("=")[0] in RESERVED_FLAGS:
                raise ExperimentError(path, where, f"{tok} is set by the manager, not by the experiment file")
    return Experiment(name=path.stem, path=path.resolve(), description=data["description"],
                      script=script, args=tuple(args), global_args=data["global"], parameters=clean)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _split(path: Path, key: str, text: str) -> List[str]:
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ExperimentError(path, key, f"cannot split into arguments: {e}") from None


# ----------------------------------------------------------------------------------------------
# expansion


def format_value(value: Any) -> str:
    r"""A parameter value as one command-line token (numbers round-trip exactly)."""
    if isinstance(value, bool):
        raise TypeError("booleans are flags, not values")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: 10000.0, 0.0003, 1e-09
    return str(value)


def normalise_argv(argv: Sequence[str]) -> List[str]:
    r"""A canonical form of a command line: ``--flag value...`` groups stably sorted by flag.

    The sort is stable, so a flag given twice keeps its order (argparse keeps the last value);
    ``--flag=value`` is split into ``--flag value``.
    """
    groups: List[List[str]] = []
    for tok in argv:
        if tok.startswith("--"):
            if "=" in tok:
                name, val = tok.split("=", 1)
                groups.append([name, val])
            else:
                groups.append([tok])
        elif groups:
            groups[-1].append(tok)
        else:
            groups.append([tok])  # a positional before any flag
    groups.sort(key=lambda g: g[0] if g[0].startswith("--") else "")
    return [t for g in groups for t in g]


def job_id_of(script: str, argv: Sequence[str]) -> str:
    r"""The stable id of a job: a hash of the script name and its normalised command line."""
    payload = json.dumps({"script": script, "argv": normalise_argv(argv)}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def expand_grid(exp: Experiment) -> List[Job]:
    r"""All jobs of ``exp``: ``args x parameters``, in file order, duplicates removed."""
    global_tokens = shlex.split(exp.global_args)
    keys = list(exp.parameters)
    jobs: List[Job] = []
    seen = set()
    for arg_index, arg in enumerate(exp.args):
        arg_tokens = shlex.split(arg)
        for values in itertools.product(*(exp.parameters[k] for k in keys)):
            argv = list(global_tokens) + list(arg_tokens)
            for k, v in zip(keys, values):
                if isinstance(v, bool):
                    if v:
                        argv.append(f"--{k}")
                else:
                    argv += [f"--{k}", format_value(v)]
            jid = job_id_of(exp.script, argv)
            if jid in seen:
                continue
            seen.add(jid)
            jobs.append(Job(job_id=jid, script=exp.script, argv=tuple(argv), arg=arg, arg_index=arg_index,
                            params=dict(zip(keys, values))))
    return jobs


# ----------------------------------------------------------------------------------------------
# validation


def _validator_for(script: str) -> Tuple[Optional[Callable[[List[str]], Any]], Optional[str]]:
    r"""The argument parser of a known job script, or ``(None, warning)``."""
    name = Path(script).name
    if name == "run.py":
        from ovis.training.arguments import parse_run_args

        return parse_run_args, None
    if name == "asymptotic_variance.py":
        try:
            mod = importlib.import_module("ovis.analysis.asymptotic")
            return mod.parse_args, None
        except (ImportError, AttributeError) as e:
            return None, (f"{script}: its parser ovis.analysis.asymptotic.parse_args is not available "
                          f"({e}); the jobs' arguments are not validated before queueing")
    return None, f"{script}: no known argument parser; the jobs' arguments are not validated"


def _parsed_jobs(exp: Experiment, jobs: Sequence[Job], validator: Callable[[List[str]], Any]
                 ) -> Iterator[Tuple[Job, Any, Optional[BaseException]]]:
    r"""``(job, parsed arguments, None)`` or ``(job, None, error)`` for each of ``jobs``, in order.

    Each job's command line is parsed by ``validator`` (its script's parser, :func:`_validator_for`)
    with placeholder ``--exp``/``--root``/``--data_root``; the error is the parser's
    :class:`SystemExit` (a parser that exits) or :class:`ValueError`.
    """
    extra = ["--exp", exp.name, "--root", "/nonexistent-root", "--data_root", "/nonexistent-data"]
    for job in jobs:
        try:
            parsed = validator(list(job.argv) + extra)
        except (SystemExit, ValueError) as e:
            yield job, None, e
            continue
        yield job, parsed, None


def validate_jobs(exp: Experiment, jobs: Sequence[Job]) -> List[str]:
    r"""Parse every job's command line with its script's parser; return warnings.

    Raise :class:`ExperimentError` naming the file, the grid key responsible (the first parameter
    or ``args`` entry whose flag the parser names, else ``args``/``global``) and the parser's reason.
    """
    validator, warning = _validator_for(exp.script)
    if validator is None:
        return [warning] if warning else []
    for job, _, e in _parsed_jobs(exp, jobs, validator):
        if isinstance(e, SystemExit):  # a parser that exits instead of raising
            raise ExperimentError(exp.path, _blame(exp, job, ""), f"job `{job.command}` rejected by "
                                  f"{exp.script} (exit {e.code})") from None
        if e is not None:
            raise ExperimentError(exp.path, _blame(exp, job, str(e)),
                                  f"job `{job.command}` rejected by {exp.script}: {e}") from None
    return []


def _blame(exp: Experiment, job: Job, message: str) -> str:
    r"""The experiment-file key most likely responsible for a parser error message."""
    import re

    arg_key = f"args[{job.arg_index}]"
    arg_tokens = shlex.split(job.arg)
    global_tokens = shlex.split(exp.global_args)
    for flag in re.findall(r"--([A-Za-z0-9_-]+)", message):
        if flag in exp.parameters:
            return f"parameters.{flag}"
        if f"--{flag}" in arg_tokens:
            return arg_key
        if f"--{flag}" in global_tokens:
            return "global"
    return arg_key


def load_and_expand(path: os.PathLike | str, validate: bool = True) -> Tuple[Experiment, List[Job], List[str]]:
    r"""Load, expand and validate an experiment file: ``(experiment, jobs, warnings)``."""
    exp = load_experiment(path)
    jobs = expand_grid(exp)
    warnings = validate_jobs(exp, jobs) if validate else []
    return exp, jobs, warnings
