r"""Reading IDX files (the format of MNIST and Fashion-MNIST), gzip-compressed or raw, with numpy.

An IDX file is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian ``int32`` dimensions
and the data (here ``type = 0x08``, unsigned bytes).  The reader checks the magic number, the
number of dimensions, the expected shape when given, and that the file holds exactly
``4 + 4 ndim + prod(dims)`` bytes (a truncated or padded file is refused).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ovis.datasets.errors import DatasetCorruptError

__all__ = ["read_idx", "read_bytes", "sha256_hex"]

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_bytes(path: os.PathLike | str, dataset: str = "?") -> bytes:
    r"""The content of ``path``, decompressed when it is gzip (detected by its magic ``1f 8b``)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DatasetCorruptError(
                f"data set {dataset!r}: {path} is a truncated or corrupt gzip file ({e}); "
                "replace it with a complete copy"
            ) from None
    return raw


def sha256_hex(data: bytes) -> str:
    r"""The SHA-256 digest of ``data`` as 64 lowercase hexadecimal characters."""
    return hashlib.sha256(data).hexdigest()


def read_idx(path: os.PathLike | str, dataset: str = "?",
             expected_shape: Optional[Sequence[int]] = None,
             expected_sha256: Optional[str] = None) -> Tuple[np.ndarray, str]:
    r"""Decode one IDX file; return ``(array, sha256 of the uncompressed bytes)``.

    Raises :class:`DatasetCorruptError` naming the data set, the file and what is wrong when the
    magic number, the shape, the size or (when ``expected_sha256`` is given) the checksum differ.
    """
    path = Path(path)
    data = read_bytes(path, dataset)
    where = f"data set {dataset!r}: {path}"
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DatasetCorruptError(f"{where} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetCorruptError(f"{where}: truncated IDX header ({len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    n_expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != n_expected:
        raise DatasetCorruptError(
            f"{where} is truncated or padded: its header says shape {dims} "
            f"({n_expected} bytes), the file holds {len(data)} bytes"
        )
    if expected_shape is not None and tuple(expected_shape) != dims:
        raise DatasetCorruptError(
            f"{where} has shape {dims}, expected {tuple(expected_shape)} (is it the right file?)"
        )
    digest = sha256_hex(data)
    if expected_sha256 is not None and digest != expected_sha256:
        raise DatasetCorruptError(
            f"{where}: sha256 {digest} differs from the published {expected_sha256}; "
            "the file is corrupt or not the original"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else arr.copy(), digest
