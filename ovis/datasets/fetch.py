r"""Downloading the file-based data sets into a data root: ``python -m ovis.datasets fetch NAME``.

::

    python -m ovis.datasets fetch NAME [NAME ...] [--data_root DIR] [--mirror URL]... [--mirrors-only] [--force]

``NAME``: ``mnist``, ``fashion``, ``binmnist`` (Larochelle's three ``.amat`` files), ``omniglot``
(the IWAE ``chardata.mat``) or ``all``.  Files land where the loaders read them
(``<data_root>/mnist/``, ``<data_root>/fashion-mnist/``, ``<data_root>/binarized_mnist/``,
``<data_root>/omniglot/``); the default data root is the one ``run.py`` and ``manager.py`` use.

Sources, tried in order for each file: the mirrors (``--mirror URL``, repeatable, then the
space-separated environment variable ``OVIS_DATA_MIRROR``), then the data sets' canonical public
URLs (:data:`CANONICAL`) unless ``--mirrors-only``.  A mirror is a base URL under which the files
sit in the data-root layout: ``<mirror>/mnist/train-images-idx3-ubyte.gz``,
``<mirror>/binarized_mnist/binarized_mnist_train.amat``, ``<mirror>/omniglot/chardata.mat``...

Integrity: each file is checked against the sha256 the loaders know, computed on the
*uncompressed* content (a mirror may recompress a ``.gz``), and its uncompressed size; a file
with no published hash (``chardata.mat``) gets a structure check instead (variables, shapes,
values in ``[0, 1]``) and the output says so.  A file that fails is never placed: one line names
the file, the URL, the expected and the found hash, and the next source is tried.  A file
already present and verified is skipped (``--force`` fetches it again); a present file that
fails verification is fetched again, and a wrongly-named stale copy the loaders would read first
is renamed ``<name>.corrupt``.

Download: streamed into ``.<name>.part`` beside the target (a hidden name no loader reads),
resumed with an HTTP ``Range`` request after a dropped connection (within a call, up to
``retries`` times per source) or an interruption (Ctrl-C keeps the ``.part`` file and the next
call resumes it), and moved into place with an atomic rename only once verified.  A resumed
file that fails verification is downloaded once more from its first byte.  Time-outs apply to
every connect and read; retries back off and are bounded.  When every source of a file fails,
its ``.part`` file and the folders this call created (when left empty) are removed, and one line
names every URL tried and the folder where a manually downloaded copy can be placed.

Exit status of :func:`main`: 0 every file present or fetched, 1 some file could not be
fetched, 2 usage error, 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from ovis.datasets.errors import DEFAULT_DATA_ROOT, DatasetCorruptError

__all__ = [
    "CANONICAL",
    "CATALOG",
    "FETCH_NAMES",
    "MIRROR_ENV",
    "FetchError",
    "FetchResult",
    "RemoteFile",
    "check_chardata",
    "fetch",
    "main",
    "mirrors_from_env",
    "resolve_names",
    "sources_of",
    "verify_file",
]

#: environment variable holding space-separated mirror base URLs (tried after ``--mirror``)
MIRROR_ENV = "OVIS_DATA_MIRROR"

#: the data sets' canonical public sources: data set -> base URLs, tried in order
CANONICAL: Dict[str, Tuple[str, ...]] = {
    # MNIST's current public mirror (the one torchvision uses), then its original site
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    # Fashion-MNIST's bucket (Zalando Research)
    "fashion": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    # Larochelle's binarized MNIST folder (Larochelle & Murray 2011)
    "binmnist": ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
    # the IWAE repository (Burda et al. 2016): datasets/OMNIGLOT/chardata.mat
    "omniglot": ("https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/",),
}

#: per-read / connect time-out (seconds), retries per source after the first attempt, first back-off
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3
RETRY_BACKOFF_S = 1.0
_MAX_BACKOFF_S = 10.0
_CHUNK = 1 << 16
#: HTTP statuses worth retrying (the server may recover); every other error status moves on
_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(RuntimeError):
    r"""A usage error of the fetch command (unknown data set, bad mirror URL, no source left)."""


@dataclass(frozen=True)
class RemoteFile:
    r"""One file of a data set, as downloaded and placed.

    Attributes:
        dataset: the fetch name (``mnist``, ``fashion``, ``binmnist``, ``omniglot``).
        folder: the folder under the data root (and under a mirror) holding it.
        name: the file name placed (and looked for under a mirror).
        urls: the canonical URLs, tried in order after the mirrors.
        sha256: the published sha256 of the *uncompressed* content, or ``None``.
        size: the uncompressed size in bytes, or ``None``.
        check: for a file with no published hash, ``check(path) -> description`` verifies the
            structure and raises :class:`DatasetCorruptError` when it is wrong.
        read_as: every name the loaders read for this file, in the order they look for them
            (e.g. ``train-images-idx3-ubyte`` before ``train-images-idx3-ubyte.gz``); ``name``
            when empty.
    """

    dataset: str
    folder: str
    name: str
    urls: Tuple[str, ...]
    sha256: Optional[str] = None
    size: Optional[int] = None
    check: Optional[Callable[[Path], str]] = field(default=None, compare=False)
    read_as: Tuple[str, ...] = ()

    @property
    def relpath(self) -> str:
        r"""``folder/name``: the path under a data root or a mirror."""
        return f"{self.folder}/{self.name}"

    def loader_names(self) -> Tuple[str, ...]:
        r"""The names the loaders read, in their order of preference."""
        return self.read_as or (self.name,)


@dataclass
class FetchResult:
    r"""What :func:`fetch` did for one file.

    Attributes:
        file: the file.
        path: where it is (or would have been) placed.
        status: ``"present"`` (already there and verified), ``"fetched"`` or ``"failed"``.
        source: the URL it came from (``"fetched"`` only).
        tried: ``(url, why it failed)`` for every source that failed.
        note: how it was verified.
    """

    file: RemoteFile
    path: Path
    status: str
    source: Optional[str] = None
    tried: List[Tuple[str, str]] = field(default_factory=list)
    note: str = ""


def check_chardata(path: os.PathLike | str, verify_shapes: bool = True) -> str:
    r"""Structure check of an Omniglot ``chardata.mat`` (it has no published hash).

    Args:
        path: the file.
        verify_shapes: also require the IWAE sizes ``784 x 24345`` / ``784 x 8070`` (``False``
            only for small files made by tests).

    Returns:
        str: what was checked, with the file's sha256.

    Raises:
        DatasetCorruptError: a missing variable, a wrong shape, values outside ``[0, 1]``, or not a
            readable MATLAB file.
    """
    from ovis.datasets.omniglot import read_chardata

    train, test, digest = read_chardata(path, verify_shapes=verify_shapes)
    return (f"no published sha256 for this file: checked its structure instead (variables 'data' and "
            f"'testdata' with {train.shape[0]} and {test.shape[0]} images of 784 values in [0, 1]); "
            f"its sha256 is {digest}")


def _idx_size(shape: Tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return 4 + 4 * len(shape) + n


def _build_catalog() -> Dict[str, Tuple[RemoteFile, ...]]:
    from ovis.datasets.mnist import AMAT_FOLDERS, IDX_FILES, IDX_FOLDERS, LAROCHELLE_FILES

    out: Dict[str, Tuple[RemoteFile, ...]] = {}
    for name in ("mnist", "fashion"):
        out[name] = tuple(
            RemoteFile(name, IDX_FOLDERS[name][0], f"{fname}.gz",
                       tuple(base + f"{fname}.gz" for base in CANONICAL[name]),
                       sha256=sha, size=_idx_size(shape), read_as=(fname, f"{fname}.gz"))
            for fname, (shape, sha) in IDX_FILES[name].items())
    out["binmnist"] = tuple(
        RemoteFile("binmnist", AMAT_FOLDERS[0], fname, tuple(base + fname for base in CANONICAL["binmnist"]),
                   sha256=sha, size=size)
        for fname, _rows, size, sha in LAROCHELLE_FILES.values())
    out["omniglot"] = (RemoteFile("omniglot", "omniglot", "chardata.mat",
                                  tuple(base + "chardata.mat" for base in CANONICAL["omniglot"]),
                                  check=check_chardata),)
    return out


#: every data set the fetch command knows: name -> its files (built from the loaders' tables)
CATALOG: Dict[str, Tuple[RemoteFile, ...]] = _build_catalog()
#: the names ``fetch`` takes (``all`` is every one of them)
FETCH_NAMES = tuple(CATALOG)
_ALIASES = {"mnist-grey": "mnist", "fashion-grey": "fashion", "fashion-mnist": "fashion",
            "binarized_mnist": "binmnist"}


def resolve_names(names: Sequence[str], catalog: Optional[Dict[str, Tuple[RemoteFile, ...]]] = None) -> List[str]:
    r"""The data sets ``names`` asks for, in order, without repeats (``all`` is every one).

    Raises:
        FetchError: an unknown name, or no name.
    """
    catalog = CATALOG if catalog is None else catalog
    if not names:
        raise FetchError(f"name at least one data set: {', '.join(catalog)} or all")
    out: List[str] = []
    for n in names:
        for m in (list(catalog) if n == "all" else [_ALIASES.get(n, n)]):
            if m not in catalog:
                raise FetchError(f"unknown data set {n!r}: the fetch command knows {', '.join(catalog)} and all")
            if m not in out:
                out.append(m)
    return out


def _check_mirror(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FetchError(f"mirror {url!r} is not an http:// or https:// base URL "
                         "(e.g. --mirror https://host/ovis-data, holding mnist/, binarized_mnist/, ...)")
    return url.rstrip("/") + "/"


def mirrors_from_env(environ: Optional[Dict[str, str]] = None) -> List[str]:
    r"""The mirror base URLs in ``OVIS_DATA_MIRROR`` (space-separated; empty when unset)."""
    env = os.environ if environ is None else environ
    return env.get(MIRROR_ENV, "").split()


def sources_of(f: RemoteFile, mirrors: Sequence[str] = (), mirrors_only: bool = False) -> List[str]:
    r"""The URLs tried for ``f``, in order: ``<mirror>/<folder>/<name>`` for each mirror, then the
    canonical URLs unless ``mirrors_only``; repeats removed.

    Raises:
        FetchError: a mirror that is not an ``http(s)://`` URL.
    """
    urls = [_check_mirror(m) + f.relpath for m in mirrors]
    if not mirrors_only:
        urls += list(f.urls)
    return list(dict.fromkeys(urls))


# ------------------------------------------------------------------------------ verification
def _content_digest(path: Path) -> Tuple[str, int]:
    r"""sha256 and size of the content of ``path``, gunzipped when it is gzip (magic ``1f 8b``)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    h = hashlib.sha256()
    n = 0
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def verify_file(path: os.PathLike | str, f: RemoteFile) -> Tuple[bool, str]:
    r"""Check the file at ``path`` against ``f``'s published hash and size (of the uncompressed
    content), or its structure check when it has no hash.

    Returns:
        ``(ok, what)``: ``what`` says how it was verified, or why it failed (with the expected
        and the found sha256 for a hashed file).
    """
    path = Path(path)
    if f.sha256 is not None:
        try:
            digest, n = _content_digest(path)
        except (EOFError, OSError, zlib.error) as e:
            return False, f"not a valid gzip file ({e}); expected sha256 {f.sha256}"
        if f.size is not None and n != f.size:
            return False, (f"uncompressed size is {n} B, expected {f.size} B (sha256 found {digest}, "
                           f"expected {f.sha256})")
        if digest != f.sha256:
            return False, f"sha256 of the uncompressed content is {digest}, expected {f.sha256}"
        return True, "sha256 of the uncompressed content verified"
    if f.check is not None:
        try:
            return True, f.check(path)
        except DatasetCorruptError as e:
            return False, f"structure check failed (no published sha256 for this file): {e}"
    return True, "not verified: no published sha256 and no structure check for this file"


# ------------------------------------------------------------------------------ download
class _SourceFailed(Exception):
    r"""This source cannot give the file (the message says why); try the next one."""


class _Transient(Exception):
    r"""A failure worth another attempt at the same URL (resuming what was written)."""


def _urlopen(request: urllib.request.Request, timeout: float):
    r"""The one place a connection is opened (tests wrap it to refuse anything but 127.0.0.1)."""
    return urllib.request.urlopen(request, timeout=timeout)


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}".rstrip()
    if isinstance(e, urllib.error.URLError):
        r = e.reason
        if isinstance(r, socket.gaierror):
            return f"host not found ({r})"
        if isinstance(r, ConnectionRefusedError):
            return "connection refused"
        if isinstance(r, (socket.timeout, TimeoutError)):
            return "timed out"
        return str(r)
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _permanent(e: BaseException) -> bool:
    r"""Whether retrying the same URL is pointless (missing file, refused, unknown host, TLS)."""
    if isinstance(e, urllib.error.HTTPError):
        return e.code not in _TRANSIENT_HTTP
    if isinstance(e, urllib.error.URLError):
        return isinstance(e.reason, (socket.gaierror, ConnectionRefusedError, ssl.SSLError, ValueError)) \
            or isinstance(e.reason, str)
    return False


def _content_range_start(value: Optional[str]) -> Optional[int]:
    # "bytes START-END/TOTAL"
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _download(url: str, part: Path, *, timeout: float, retries: int, max_bytes: int,
              progress: Optional[bool], stream: TextIO, desc: str) -> bool:
    r"""Stream ``url`` into ``part``, appending to what ``part`` already holds (HTTP ``Range``).

    At most ``retries + 1`` attempts; a dropped connection, a time-out or a 5xx resumes from the
    bytes already written.  Returns whether any byte was taken from a resumed transfer (the
    caller then refetches from the start if verification fails).

    Raises:
        _SourceFailed: this URL cannot give the file (the message is the reason).
    """
    from tqdm import tqdm

    resumed = False
    last = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(RETRY_BACKOFF_S * 2 ** (attempt - 1), _MAX_BACKOFF_S))
        offset = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "ovis-datasets-fetch",
                                                   "Accept-Encoding": "identity"})
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        try:
            with _urlopen(req, timeout) as resp:
                status = getattr(resp, "status", None) or resp.getcode()
                if offset and status == 206:
                    start = _content_range_start(resp.headers.get("Content-Range"))
                    if start != offset:  # not the range asked for: start again from byte 0
                        part.unlink()
                        raise _Transient(f"the server sent range {resp.headers.get('Content-Range')!r} "
                                         f"for bytes={offset}-")
                    mode = "ab"
                    resumed = True
                elif status == 200:
                    mode, offset = "wb", 0  # the server ignored the Range: the whole file
                else:
                    raise _SourceFailed(f"unexpected HTTP status {status}")
                length = resp.headers.get("Content-Length")
                total = offset + int(length) if length and length.isdigit() else None
                if total is not None and total > max_bytes:
                    raise _SourceFailed(f"the server announces {total} B, more than the file can hold "
                                        f"({max_bytes} B)")
                written = offset
                read = getattr(resp, "read1", resp.read)  # read1: what has arrived, without waiting for more
                with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                                   unit_divisor=1024, desc=desc, file=stream, leave=True,
                                                   disable=(not progress) if progress is not None else None,
                                                   dynamic_ncols=True) as bar:
                    while True:
                        buf = read(_CHUNK)
                        if not buf:
                            break
                        out.write(buf)
                        written += len(buf)
                        bar.update(len(buf))
                        if written > max_bytes:
                            out.truncate(0)  # not this file: nothing of it is kept to resume
                            raise _SourceFailed(f"the server sent more than {max_bytes} B, more than "
                                                "the file can hold")
                    out.flush()
                    os.fsync(out.fileno())
                if total is not None and written < total:
                    raise _Transient(f"connection dropped after {written} of {total} B")
                return resumed
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # the .part already holds the whole file: verification decides
                return True
            last = _reason(e)
            if _permanent(e):
                raise _SourceFailed(last) from None
        except _SourceFailed:
            raise
        except _Transient as e:
            last = str(e)
        except urllib.error.URLError as e:
            last = _reason(e)
            if _permanent(e):
                raise _SourceFailed(last) from None
        except (OSError, http.client.HTTPException) as e:  # reset, time-out, incomplete read
            last = _reason(e)
    raise _SourceFailed(f"{last} (after {retries + 1} attempts)")


# ------------------------------------------------------------------------------ placement
def _mkdirs(folder: Path, created: List[Path]) -> None:
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    created.extend(m for m in reversed(missing) if m not in created)


def _remove_empty(created: List[Path]) -> None:
    for d in sorted(created, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()  # only when empty
        except OSError:
            pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _part_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.part")


def _max_bytes(f: RemoteFile) -> int:
    # gzip never grows content by more than a fraction of a percent; unknown size: 2 GiB
    return int(f.size * 1.01) + (1 << 20) if f.size is not None else 2 << 30


def _fetch_file(f: RemoteFile, root: Path, urls: Sequence[str], *, force: bool, timeout: float, retries: int,
                progress: Optional[bool], out: TextIO, err: TextIO, created: List[Path]) -> FetchResult:
    folder = root / f.folder
    target = folder / f.name
    res = FetchResult(f, target, "failed")
    # what the loaders would read: the first existing name in their order
    existing = [folder / n for n in f.loader_names() if (folder / n).is_file()]
    part = _part_path(target)
    bad: List[Tuple[Path, str]] = []
    if existing and not force:
        for p in existing:
            ok, what = verify_file(p, f)
            if ok:
                for q, why in bad:  # a wrong copy the loaders would read before the good one
                    _set_aside(q, why, out)
                if part.exists():  # a leftover of an interrupted fetch
                    part.unlink()
                res.status, res.path, res.note = "present", p, what
                print(f"{f.relpath}: present, {what} ({p})", file=out)
                return res
            bad.append((p, what))
            print(f"{f.relpath}: {p} is present but fails verification ({what}); fetching a fresh copy",
                  file=err)
    _mkdirs(folder, created)
    try:
        for url in urls:
            for from_start in (False, True):
                if from_start and part.exists():
                    part.unlink()
                try:
                    resumed = _download(url, part, timeout=timeout, retries=retries, max_bytes=_max_bytes(f),
                                        progress=progress, stream=err, desc=f.relpath)
                except _SourceFailed as e:  # reported in the file's one failure line
                    res.tried.append((url, str(e)))
                    break
                ok, what = verify_file(part, f)
                if ok:
                    os.replace(part, target)
                    _fsync_dir(folder)
                    for n in f.loader_names():  # a wrong copy the loaders would read instead
                        q = folder / n
                        if q != target and q.is_file():
                            q_ok, why = verify_file(q, f)
                            if not q_ok:
                                _set_aside(q, why, out)
                    res.status, res.source, res.note = "fetched", url, what
                    print(f"{f.relpath}: fetched from {url}, {what} -> {target}", file=out)
                    return res
                part.unlink()
                if resumed and not from_start:
                    print(f"{f.relpath}: {url}: the resumed download fails verification ({what}); "
                          "downloading it again from the first byte", file=err)
                    continue
                res.tried.append((url, f"refused: {what}"))
                nxt = "; trying the next source" if url != urls[-1] else ""
                print(f"refused {f.relpath} from {url}: {what}{nxt}", file=err)
                break
    except KeyboardInterrupt:
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
        if part.exists():
            print(f"\n{f.relpath}: interrupted; the partial download {part} is kept (a hidden name no loader "
                  "reads): the next fetch resumes it", file=err)
        raise
    if part.exists():  # nothing half-written stays behind a failure
        part.unlink()
    tried = ", ".join(f"{u} ({why})" for u, why in res.tried) or "no source (no mirror given and --mirrors-only)"
    print(f"ovis.datasets fetch: could not fetch {f.relpath}: tried {tried}; download it by hand and place "
          f"it in {folder.resolve()}/", file=err)
    return res


def _set_aside(path: Path, why: str, out: TextIO) -> None:
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    print(f"{path}: fails verification ({why}); renamed {aside} so that the loaders read the verified copy",
          file=out)


def fetch(names: Sequence[str], data_root: os.PathLike | str = DEFAULT_DATA_ROOT, *,
          mirrors: Sequence[str] = (), mirrors_only: bool = False, force: bool = False,
          timeout: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES, progress: Optional[bool] = None,
          catalog: Optional[Dict[str, Tuple[RemoteFile, ...]]] = None,
          out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> List[FetchResult]:
    r"""Download, verify and place the files of the data sets ``names`` under ``data_root``.

    Args:
        names: data set names (``mnist``, ``fashion``, ``binmnist``, ``omniglot``, ``all``).
        data_root: the data root (created when missing).
        mirrors: base URLs tried first, in order (the caller adds ``OVIS_DATA_MIRROR``'s; see
            :func:`mirrors_from_env`).
        mirrors_only: try the mirrors and nothing else.
        force: fetch files already present and verified again.
        timeout: seconds for each connect and each read.
        retries: further attempts per source after a dropped connection, time-out or 5xx.
        progress: a tqdm bar per file (``None``: only when ``err`` is a terminal).
        catalog: the files of each data set (default :data:`CATALOG`; tests pass small files).
        out, err: where progress lines and failures go (default stdout / stderr).

    Returns:
        one :class:`FetchResult` per file, in order.

    Raises:
        FetchError: an unknown name, a bad mirror URL, or ``mirrors_only`` without a mirror.
        KeyboardInterrupt: propagated after the file being downloaded is left as its hidden
            ``.part`` file (resumed by the next call); nothing is placed unverified.
    """
    catalog = CATALOG if catalog is None else catalog
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    datasets = resolve_names(names, catalog)
    if mirrors_only and not mirrors:
        raise FetchError(f"--mirrors-only needs a mirror: pass --mirror URL or set {MIRROR_ENV}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise FetchError(f"retries must be an integer >= 0, got {retries!r}")
    if not timeout > 0:
        raise FetchError(f"timeout must be > 0 seconds, got {timeout!r}")
    mirrors = [_check_mirror(m) for m in mirrors]
    root = Path(data_root).expanduser()
    if root.exists() and not root.is_dir():
        raise FetchError(f"--data_root {root} exists and is not a folder")
    created: List[Path] = []
    results: List[FetchResult] = []
    try:
        for name in datasets:
            for f in catalog[name]:
                results.append(_fetch_file(f, root, sources_of(f, mirrors, mirrors_only), force=force,
                                           timeout=timeout, retries=retries, progress=progress, out=out,
                                           err=err, created=created))
    finally:
        _remove_empty(created)
    return results


# ------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ovis.datasets",
        description="Download, verify and place the data sets the loaders read (nothing is ever "
                    "downloaded by the loaders themselves).")
    sub = p.add_subparsers(dest="command", required=True, metavar="fetch")
    f = sub.add_parser(
        "fetch", help="download data sets into the data root",
        description="Download data sets into the data root, verified against the published sha256 "
                    "(of the uncompressed content) and placed where the loaders read them.",
        epilog=f"Mirrors are base URLs holding the data-root layout (<mirror>/mnist/train-images-idx3-ubyte.gz, "
               f"<mirror>/binarized_mnist/binarized_mnist_train.amat, <mirror>/omniglot/chardata.mat, "
               f"<mirror>/fashion-mnist/...); {MIRROR_ENV} holds more, space-separated. Exit status: 0 done, "
               "1 some file could not be fetched, 2 usage error, 130 interrupted.")
    f.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join(FETCH_NAMES)} or all")
    f.add_argument("--data_root", "--data-root", default=DEFAULT_DATA_ROOT,
                   help=f"the data root run.py / manager.py read (default {DEFAULT_DATA_ROOT})")
    f.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="a mirror base URL tried before the canonical sources (repeatable)")
    f.add_argument("--mirrors-only", "--mirrors_only", dest="mirrors_only", action="store_true",
                   help="try the mirrors and nothing else")
    f.add_argument("--force", action="store_true", help="fetch files already present and verified again")
    f.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"seconds for each connect and read (default {DEFAULT_TIMEOUT_S:g})")
    f.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                   help=f"further attempts per source after a dropped connection (default {DEFAULT_RETRIES})")
    f.add_argument("--no_progress", "--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars (they are shown only on a terminal anyway)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""``python -m ovis.datasets fetch ...`` with the command line ``argv`` (default
    ``sys.argv[1:]``); return the exit status (see the module docstring)."""
    parser = _parser()
    try:
        a = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code) if isinstance(e.code, int) else 2
    mirrors = list(a.mirror) + mirrors_from_env()
    try:
        results = fetch(a.names, a.data_root, mirrors=mirrors, mirrors_only=a.mirrors_only, force=a.force,
                        timeout=a.timeout, retries=a.retries, progress=a.progress)
    except FetchError as e:
        sys.stderr.write(f"python -m ovis.datasets fetch: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("python -m ovis.datasets fetch: interrupted; nothing unverified was placed, run the "
                         "same command again to resume\n")
        return 130
    failed = [r for r in results if r.status == "failed"]
    fetched = sum(r.status == "fetched" for r in results)
    present = sum(r.status == "present" for r in results)
    root = Path(a.data_root)
    if failed:
        sys.stderr.write(f"python -m ovis.datasets fetch: {len(failed)} of {len(results)} file(s) could not be "
                         f"fetched (one line each above); nothing unverified was placed under {root}\n")
        return 1
    print(f"{', '.join(resolve_names(a.names))}: {fetched} file(s) fetched, {present} already present, "
          f"all verified, under {root}")
    return 0
