r"""Errors raised by the data loaders (one clear message each)."""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Iterable, Optional, Sequence

__all__ = ["DatasetNotFoundError", "DatasetCorruptError", "not_found_message", "fetch_command",
           "DEFAULT_DATA_ROOT", "FETCHABLE"]

#: the data root ``run.py`` and ``manager.py`` use when ``--data_root`` is not given
DEFAULT_DATA_ROOT = "data/"
#: data set name (as the loaders name it) -> the name ``python -m ovis.datasets fetch`` takes
FETCHABLE = {"mnist": "mnist", "fashion": "fashion", "binmnist": "binmnist", "omniglot": "omniglot",
             "mnist-grey": "mnist", "fashion-grey": "fashion"}


class DatasetNotFoundError(FileNotFoundError):
    r"""A data set's files are not in the data root nor in any well-known location.

    The message names the data set, every path searched and the exact files expected there.
    """

    def __str__(self) -> str:  # FileNotFoundError's default str() shows errno fields
        return str(self.args[0]) if self.args else "data set not found"


class DatasetCorruptError(ValueError):
    r"""A data file exists but is truncated, of the wrong format, shape, size or checksum."""


def fetch_command(name: str | Sequence[str], data_root: Optional[os.PathLike | str] = None) -> str:
    r"""The shell command that downloads data set ``name`` (or every one of a list of names) into
    ``data_root``.

    ``python -m ovis.datasets fetch NAME [NAME ...]``, followed by ``--data_root DIR`` unless
    ``data_root`` is ``None`` or the default data root (:data:`DEFAULT_DATA_ROOT`, relative to the
    current folder).  Names are the loaders' (``mnist-grey`` fetches ``mnist``).

    Raises:
        ValueError: a name the fetch command does not know (see :data:`FETCHABLE`), or no name.
    """
    names = [name] if isinstance(name, str) else list(name)
    for n in names:
        if n not in FETCHABLE:
            raise ValueError(f"no fetch command for data set {n!r}; it knows {sorted(FETCHABLE)}")
    if not names:
        raise ValueError("fetch_command needs at least one data set name")
    cmd = "python -m ovis.datasets fetch " + " ".join(dict.fromkeys(FETCHABLE[n] for n in names))
    if data_root is not None:
        root = Path(data_root).expanduser()
        if root.resolve() != Path(DEFAULT_DATA_ROOT).resolve():
            cmd += f" --data_root {shlex.quote(str(root))}"
    return cmd


def not_found_message(name: str, searched: Sequence[os.PathLike | str], expected: Iterable[str],
                      hint: str = "", data_root: Optional[os.PathLike | str] = None) -> str:
    r"""One line: ``data set 'name' not found; fetch it with: <command> (or place the files [...]
    in one of the folders searched: [...]) ...``.

    Args:
        name: the data set (as the loaders name it).
        searched: every folder looked in.
        expected: the file names expected together in one of them.
        hint: an extra sentence appended (e.g. the data root does not exist).
        data_root: the data root the fetch command should fill (omitted from the command when it
            is the default one).
    """
    s = ", ".join(str(p) for p in searched)
    e = ", ".join(expected)
    how = f"fetch it with: {fetch_command(name, data_root)} (or " if name in FETCHABLE else "("
    msg = (f"data set {name!r} not found; {how}place the files {e} in "
           f"<data_root>/{_default_folder(name)}/ or pass --data_root; folders searched: {s})")
    return msg + (f"; {hint}" if hint else "")


def _default_folder(name: str) -> str:
    return {"mnist": "mnist", "fashion": "fashion-mnist", "binmnist": "binarized_mnist",
            "omniglot": "omniglot"}.get(name, name)
