r"""Locating data files (data root, then well-known system folders) and caching decoded arrays.

Loading order for a file-based data set: ``<data_root>/<folder>`` for each of the data set's
folder names, then the well-known system locations (e.g. ``/usr/share/datasets/fashion-mnist``
from the Debian package ``dataset-fashion-mnist``).  Loading never downloads; the message of a
missing data set names the command that does (``python -m ovis.datasets fetch NAME``).  When no
candidate folder holds every expected file, :class:`DatasetNotFoundError` names the data set,
the folders searched and the exact file names.

Decoded arrays are cached in-process, keyed by ``(path, size, mtime)`` so that a file replaced
on disk is read again.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ovis.datasets.errors import DatasetNotFoundError, not_found_message

__all__ = ["find_files", "cached", "clear_cache"]

_CACHE: Dict[Tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def clear_cache() -> None:
    r"""Forget every decoded array (the next load reads the files again)."""
    with _LOCK:
        _CACHE.clear()


def cached(key: Tuple[Any, ...], paths: Sequence[Path], build: Callable[[], Any]) -> Any:
    r"""Return ``build()``, memoised on ``key`` and the size / mtime of ``paths``."""
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    full = (key, stamp)
    with _LOCK:
        if full in _CACHE:
            return _CACHE[full]
    value = build()
    with _LOCK:
        _CACHE[full] = value
    return value


def find_files(dataset: str, data_root: os.PathLike | str, folders: Sequence[str],
               filenames: Sequence[str], system_dirs: Sequence[str] = (),
               allow_gz: bool = True) -> Dict[str, Path]:
    r"""Find ``filenames`` (each optionally ``.gz``) together in one candidate folder.

    Candidates: ``data_root/f`` for ``f`` in ``folders`` (``"."`` is the root itself), then
    ``system_dirs``.  Returns ``{filename: path}`` for the first folder holding all of them.

    Raises:
        DatasetNotFoundError: the data root does not exist, or no folder holds every file.
    """
    root = Path(data_root).expanduser()
    candidates: List[Path] = [root / f if f != "." else root for f in folders]
    candidates += [Path(d) for d in system_dirs]
    expected = [f + ("[.gz]" if allow_gz else "") for f in filenames]
    if not root.is_dir():
        hint = f"the data root {root} does not exist"
        existing = [c for c in candidates[len(folders):] if c.is_dir()]
        if not existing:
            raise DatasetNotFoundError(not_found_message(dataset, candidates, expected, hint, data_root=root))
    for folder in candidates:
        if not folder.is_dir():
            continue
        found: Dict[str, Path] = {}
        for name in filenames:
            options = [folder / name] + ([folder / (name + ".gz")] if allow_gz else [])
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                break
            found[name] = hit
        if len(found) == len(filenames):
            return found
    raise DatasetNotFoundError(not_found_message(dataset, candidates, expected, data_root=root))
