r"""Atomic file writes: a killed process leaves the old file or the new one, never half of one.

Write a temporary file in the same folder, flush, ``fsync``, ``os.replace`` it over the target,
then ``fsync`` the folder so that the rename itself survives a crash.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir"]

PathLike = Union[str, "os.PathLike[str]"]


def fsync_dir(folder: PathLike) -> None:
    r"""``fsync`` a folder (makes a rename in it durable); a no-op where folders cannot be opened."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    r"""Write ``data`` to ``path`` atomically (tmp file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    r"""Write UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2, sort_keys: bool = False,
                      default: Optional[Callable[[Any], Any]] = None) -> None:
    r"""Write ``obj`` as JSON (plus a newline), atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
