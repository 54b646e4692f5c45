r"""Errors raised by the data loaders (one clear message each)."""
from __future__ import annotations

import os
from typing import Iterable, Sequence

__all__ = ["DatasetNotFoundError", "DatasetCorruptError", "not_found_message"]


class DatasetNotFoundError(FileNotFoundError):
    r"""A data set's files are not in the data root nor in any well-known location.

    The message names the data set, every path searched and the exact files expected there.
    """

    def __str__(self) -> str:  # FileNotFoundError's default str() shows errno fields
        return str(self.args[0]) if self.args else "data set not found"


class DatasetCorruptError(ValueError):
    r"""A data file exists but is truncated, of the wrong format, shape, size or checksum."""


def not_found_message(name: str, searched: Sequence[os.PathLike | str], expected: Iterable[str],
                      hint: str = "") -> str:
    r"""``data set 'name' not found: searched [...]; expected files [...] in one of them``."""
    s = ", ".join(str(p) for p in searched)
    e = ", ".join(expected)
    msg = (f"data set {name!r} not found: searched {s}; place the files {e} in one of these "
           f"folders (e.g. <data_root>/{_default_folder(name)}/) or pass --data_root")
    return msg + (f". {hint}" if hint else "")


def _default_folder(name: str) -> str:
    return {"mnist": "mnist", "fashion": "fashion-mnist", "binmnist": "binarized_mnist",
            "omniglot": "omniglot"}.get(name, name)
