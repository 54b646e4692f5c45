"""``python -m ovis.datasets fetch``: download, verify, place (ovis/datasets/fetch.py).

No test reaches beyond 127.0.0.1: every fetch passes ``mirrors_only`` (``--mirrors-only``) with
mirrors served by a local HTTP server, and the autouse ``_only_loopback`` fixture makes any
connection to another host fail the test by construction.  The served trees hold the real MNIST
and Fashion-MNIST files of ``../shared/data`` (recompressed, so that only the uncompressed
content matches the published sha256) and small made-up ``.amat`` / ``.mat`` files whose hashes
the tests inject into the catalog.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

from ovis.datasets import DatasetNotFoundError, load_dataset, locate_dataset
from ovis.datasets import fetch as fetch_mod
from ovis.datasets.errors import DEFAULT_DATA_ROOT, fetch_command
from ovis.datasets.fetch import CATALOG, FetchError, check_chardata, fetch, main, sources_of

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared" / "data").resolve()


# ------------------------------------------------------------------------------ local mirror
class Mirror:
    """An HTTP server on 127.0.0.1 (port 0) serving ``files`` (``{"mnist/x.gz": bytes}``).

    ``drop[path] = n``: the next response for ``path`` sends ``n`` body bytes and closes the
    connection.  ``stall[path] = n``: the next response sends ``n`` bytes then waits for
    ``release``.  ``status``: every request gets this HTTP error.  ``log``: ``(path, Range)``.
    """

    def __init__(self, files: Dict[str, bytes]):
        self.files = dict(files)
        self.drop: Dict[str, int] = {}
        self.stall: Dict[str, int] = {}
        self.status: Optional[int] = None
        self.release = threading.Event()
        self.log: List[Tuple[str, Optional[str]]] = []
        self.lock = threading.Lock()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                path = urllib.parse.unquote(self.path.split("?")[0]).lstrip("/")
                rng = self.headers.get("Range")
                with mirror.lock:
                    mirror.log.append((path, rng))
                    drop = mirror.drop.pop(path, None)
                    stall = mirror.stall.pop(path, None)
                if mirror.status is not None:
                    self.send_error(mirror.status)
                    return
                data = mirror.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                try:
                    if drop is not None:
                        self.wfile.write(body[:drop])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if stall is not None:
                        self.wfile.write(body[:stall])
                        self.wfile.flush()
                        mirror.release.wait(30)
                        body = body[stall:]
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client went away (Ctrl-C)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self) -> List[Tuple[str, Optional[str]]]:
        with self.lock:
            return list(self.log)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def serve():
    servers: List[Mirror] = []

    def start(files: Dict[str, bytes]) -> Mirror:
        m = Mirror(files)
        servers.append(m)
        return m

    yield start
    for m in servers:
        m.close()


@pytest.fixture(autouse=True)
def _only_loopback(monkeypatch):
    """Every connection a test opens goes to 127.0.0.1, directly (no proxy), quickly."""
    real = fetch_mod._urlopen

    def guarded(request, timeout):
        host = urllib.parse.urlsplit(request.full_url).hostname
        if host != "127.0.0.1":
            pytest.fail(f"a test tried to reach {request.full_url}")
        return real(request, timeout)

    monkeypatch.setattr(fetch_mod, "_urlopen", guarded)
    monkeypatch.setattr(fetch_mod, "RETRY_BACKOFF_S", 0.0)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv(fetch_mod.MIRROR_ENV, raising=False)


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def _subprocess_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != fetch_mod.MIRROR_ENV}
    env["no_proxy"] = "127.0.0.1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------------------ fixture trees
def _recompressed(folder: str) -> Dict[str, bytes]:
    """The real IDX files of ``../shared/data/<folder>``, recompressed (bytes differ, content does not)."""
    if not (SHARED / folder).is_dir():
        pytest.fail(f"test data not found at {SHARED / folder}")
    tree = {}
    for p in sorted((SHARED / folder).glob("*.gz")):
        original = p.read_bytes()
        again = gzip.compress(gzip.decompress(original), compresslevel=1, mtime=0)
        assert again != original
        tree[f"{folder}/{p.name}"] = again
    return tree


@pytest.fixture(scope="module")
def real_tree() -> Dict[str, bytes]:
    """MNIST's real files, recompressed."""
    return _recompressed("mnist")


@pytest.fixture(scope="module")
def fashion_tree() -> Dict[str, bytes]:
    """Fashion-MNIST's real files, recompressed."""
    return _recompressed("fashion-mnist")


def _amat(rows: int, seed: int) -> bytes:
    x = np.random.default_rng(seed).integers(0, 2, size=(rows, 784))
    return "".join(" ".join(map(str, r)) + "\n" for r in x).encode()


def _mat(seed: int) -> bytes:
    import scipy.io

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"data": rng.random((784, 30)), "testdata": rng.random((784, 10))})
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_tree() -> Dict[str, bytes]:
    """Made-up Larochelle .amat files (5 / 2 / 2 rows) and a small chardata.mat."""
    return {"binarized_mnist/binarized_mnist_train.amat": _amat(5, 0),
            "binarized_mnist/binarized_mnist_valid.amat": _amat(2, 1),
            "binarized_mnist/binarized_mnist_test.amat": _amat(2, 2),
            "omniglot/chardata.mat": _mat(3)}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _small_catalog(small_tree: Dict[str, bytes], omniglot_hash: bool = False) -> dict:
    """CATALOG with the made-up files' hashes injected (binmnist) and a structure check sized for
    the small chardata.mat (or its hash)."""
    cat = dict(CATALOG)
    cat["binmnist"] = tuple(dataclasses.replace(f, sha256=_sha(small_tree[f.relpath]),
                                                size=len(small_tree[f.relpath]))
                            for f in CATALOG["binmnist"])
    (om,) = CATALOG["omniglot"]
    om = (dataclasses.replace(om, sha256=_sha(small_tree[om.relpath])) if omniglot_hash
          else dataclasses.replace(om, check=functools.partial(check_chardata, verify_shapes=False)))
    cat["omniglot"] = (om,)
    return cat


def _files_under(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------------------ sources
def test_sources_mirrors_first_layout_and_mirrors_only():
    f = CATALOG["mnist"][0]
    assert f.relpath == "mnist/train-images-idx3-ubyte.gz"
    urls = sources_of(f, ["http://127.0.0.1:1/x", "http://127.0.0.1:2/y/"])
    assert urls[:2] == ["http://127.0.0.1:1/x/mnist/train-images-idx3-ubyte.gz", "http://127.0.0.1:2/y/mnist/train-images-idx3-ubyte.gz"]
    assert urls[2:] == list(f.urls) and len(f.urls) == 2  # the current public mirror, then the original site
    assert sources_of(f, ["http://127.0.0.1:1/x"], mirrors_only=True) == ["http://127.0.0.1:1/x/mnist/train-images-idx3-ubyte.gz"]
    layout = {name: sorted(g.relpath for g in files) for name, files in CATALOG.items()}
    assert layout == {
        "mnist": sorted(f"mnist/{s}-ubyte.gz" for s in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3",
                                                         "t10k-labels-idx1")),
        "fashion": sorted(f"fashion-mnist/{s}-ubyte.gz" for s in ("train-images-idx3", "train-labels-idx1",
                                                                   "t10k-images-idx3", "t10k-labels-idx1")),
        "binmnist": sorted(f"binarized_mnist/binarized_mnist_{s}.amat" for s in ("train", "valid", "test")),
        "omniglot": ["omniglot/chardata.mat"]}
    assert CATALOG["omniglot"][0].urls[0].endswith("/datasets/OMNIGLOT/chardata.mat")
    assert all(f.sha256 and f.size for n in ("mnist", "fashion", "binmnist") for f in CATALOG[n])
    assert CATALOG["omniglot"][0].sha256 is None and CATALOG["omniglot"][0].check is not None
    with pytest.raises(FetchError, match="not an http"):
        sources_of(f, ["ftp://x/"])
    with pytest.raises(FetchError, match="unknown data set 'nope'"):
        fetch(["nope"], "/nonexistent", mirrors=["http://127.0.0.1:9/"], mirrors_only=True)
    with pytest.raises(FetchError, match="needs a mirror"):
        fetch(["mnist"], "/nonexistent", mirrors_only=True)


def test_default_data_root_is_run_and_manager_default():
    from ovis.experiments.manager import build_manager_parser
    from ovis.training.arguments import build_run_parser

    assert build_run_parser().get_default("data_root") == DEFAULT_DATA_ROOT
    assert build_manager_parser().get_default("data_root") == DEFAULT_DATA_ROOT
    assert fetch_mod._parser().parse_args(["fetch", "mnist"]).data_root == DEFAULT_DATA_ROOT


# ------------------------------------------------------------------------------ fetch from a mirror
@pytest.mark.slow
def test_fetch_all_from_a_mirror_then_a_second_call_downloads_nothing(tmp_path, serve, real_tree, fashion_tree,
                                                                     small_tree):
    real_tree = {**real_tree, **fashion_tree}
    m = serve({**real_tree, **small_tree})
    cat = _small_catalog(small_tree)
    root = tmp_path / "data"
    out, err = io.StringIO(), io.StringIO()
    res = fetch(["all"], root, mirrors=[m.url], mirrors_only=True, catalog=cat, out=out, err=err, timeout=5)
    assert [r.status for r in res] == ["fetched"] * 12, err.getvalue()
    assert all(r.source == m.url + r.file.relpath for r in res)
    for rel, data in {**real_tree, **small_tree}.items():
        assert (root / rel).read_bytes() == data, rel  # placed byte-identical, where the loaders read
    assert not [p for p in root.rglob(".*")]  # no temporary file left
    # the loaders read what was placed, checksums of the real files verified
    for name in ("mnist", "fashion"):
        d = load_dataset(name, root, mini=True)
        assert d.description["checksums_verified"] is True
    assert load_dataset("binmnist", root, verify_checksums=False).description["binarization"] == "larochelle-amat"
    assert len(load_dataset("omniglot", root, verify_checksums=False).test) == 10
    log = out.getvalue()
    assert "omniglot/chardata.mat: fetched" in log and "no published sha256" in log and "structure" in log
    assert "sha256 of the uncompressed content verified" in log
    # a second call: everything present and verified, nothing downloaded
    n = len(m.requests())
    out2 = io.StringIO()
    res2 = fetch(["all"], root, mirrors=[m.url], mirrors_only=True, catalog=cat, out=out2, err=io.StringIO())
    assert [r.status for r in res2] == ["present"] * 12 and len(m.requests()) == n
    assert out2.getvalue().count(": present, ") == 12
    # --force downloads again
    res3 = fetch(["omniglot"], root, mirrors=[m.url], mirrors_only=True, catalog=cat, force=True,
                 out=io.StringIO(), err=io.StringIO())
    assert res3[0].status == "fetched" and len(m.requests()) == n + 1


def test_cli_fetch_from_mirror_in_a_subprocess_then_the_loader_finds_it(tmp_path, serve, real_tree):
    m = serve(real_tree)
    root = tmp_path / "data"
    env = _subprocess_env()
    env[fetch_mod.MIRROR_ENV] = f"{_closed_port_url()} {m.url}"  # the environment's mirrors, in order
    r = subprocess.run([sys.executable, "-m", "ovis.datasets", "fetch", "mnist", "--mirrors-only",
                        "--data_root", str(root), "--timeout", "5"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mnist: 4 file(s) fetched, 0 already present, all verified" in r.stdout
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(
        Path(k).name for k in real_tree if k.startswith("mnist/"))
    assert set(locate_dataset("mnist", root)) == {f.name[:-3] for f in CATALOG["mnist"]}
    assert {p for p, _ in m.requests()} == {f.relpath for f in CATALOG["mnist"]}


# ------------------------------------------------------------------------------ interrupted transfer
def test_dropped_connection_is_resumed_with_a_range_request(tmp_path, serve, real_tree):
    rel = "mnist/train-images-idx3-ubyte.gz"
    m = serve(real_tree)
    m.drop[rel] = 1_000_000  # the first response stops after 1 MB of ~9 MB
    root = tmp_path / "data"
    err = io.StringIO()
    res = fetch(["mnist"], root, mirrors=[m.url], mirrors_only=True, retries=2, timeout=5, out=io.StringIO(),
                err=err)
    assert [r.status for r in res] == ["fetched"] * 4, err.getvalue()
    assert (root / rel).read_bytes() == real_tree[rel]  # byte-identical after the resume
    reqs = [rng for p, rng in m.requests() if p == rel]
    assert reqs == [None, "bytes=1000000-"]


def test_resume_after_ctrl_c_in_a_subprocess_leaves_the_data_root_clean(tmp_path, serve, real_tree):
    rel = "mnist/train-images-idx3-ubyte.gz"
    m = serve(real_tree)
    m.stall[rel] = 500_000  # the first response sends 500 kB, then hangs until released
    root = tmp_path / "data"
    part = root / "mnist" / ".train-images-idx3-ubyte.gz.part"
    p = subprocess.Popen([sys.executable, "-m", "ovis.datasets", "fetch", "mnist", "--mirror", m.url,
                          "--mirrors-only", "--data_root", str(root), "--timeout", "60"],
                         env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path)
    try:
        t0 = time.monotonic()
        while not (part.exists() and part.stat().st_size >= 400_000):
            assert p.poll() is None and time.monotonic() - t0 < 90, p.communicate()
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    kept = part.stat().st_size
    assert 400_000 <= kept <= 500_000
    assert "Traceback" not in err and "interrupted" in err and str(part) in err
    # clean: only the hidden partial file, which no loader reads
    assert _files_under(root) == ["mnist", "mnist/.train-images-idx3-ubyte.gz.part"]
    with pytest.raises(DatasetNotFoundError):
        locate_dataset("mnist", root)
    # the next call resumes it
    m.release.set()
    res = fetch(["mnist"], root, mirrors=[m.url], mirrors_only=True, timeout=5, out=io.StringIO(),
                err=io.StringIO())
    assert [r.status for r in res] == ["fetched"] * 4
    assert (root / rel).read_bytes() == real_tree[rel] and not part.exists()
    ranges = [rng for p_, rng in m.requests() if p_ == rel]
    assert ranges == [None, f"bytes={kept}-"]


def test_ctrl_c_in_process_keeps_only_the_part_file(tmp_path, serve, small_tree, monkeypatch):
    m = serve(small_tree)
    cat = _small_catalog(small_tree)
    root = tmp_path / "data"
    calls = {"n": 0}

    class Boom:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def update(self, n):
            calls["n"] += 1
            raise KeyboardInterrupt

    monkeypatch.setattr("tqdm.tqdm", Boom)
    with pytest.raises(KeyboardInterrupt):
        fetch(["binmnist"], root, mirrors=[m.url], mirrors_only=True, catalog=cat, out=io.StringIO(),
              err=io.StringIO())
    assert calls["n"] == 1
    assert _files_under(root) == ["binarized_mnist", "binarized_mnist/.binarized_mnist_train.amat.part"]
    monkeypatch.undo()
    monkeypatch.setattr(fetch_mod, "RETRY_BACKOFF_S", 0.0)
    res = fetch(["binmnist"], root, mirrors=[m.url], mirrors_only=True, catalog=cat, out=io.StringIO(),
                err=io.StringIO())
    assert [r.status for r in res] == ["fetched"] * 3
    assert any(rng for p, rng in m.requests() if p.endswith("train.amat"))  # resumed
    assert _files_under(root) == ["binarized_mnist"] + [f"binarized_mnist/binarized_mnist_{s}.amat"
                                                        for s in ("test", "train", "valid")]


# ------------------------------------------------------------------------------ integrity
def test_corrupt_file_is_refused_and_the_next_source_used(tmp_path, serve, real_tree):
    rel = "mnist/t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(real_tree[rel]))
    raw[100] ^= 1  # one label changed
    bad = serve({**real_tree, rel: gzip.compress(bytes(raw))})
    good = serve(real_tree)
    root = tmp_path / "data"
    out, err = io.StringIO(), io.StringIO()
    res = fetch(["mnist"], root, mirrors=[bad.url, good.url], mirrors_only=True, out=out, err=err)
    assert [r.status for r in res] == ["fetched"] * 4
    by = {r.file.relpath: r for r in res}
    assert by[rel].source == good.url + rel and by[rel].tried[0][0] == bad.url + rel
    assert by["mnist/train-labels-idx1-ubyte.gz"].source == bad.url + "mnist/train-labels-idx1-ubyte.gz"
    assert (root / rel).read_bytes() == real_tree[rel]
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    (f,) = [x for x in CATALOG["mnist"] if x.relpath == rel]
    assert len(lines) == 1, err.getvalue()
    assert lines[0].startswith(f"refused {rel} from {bad.url}{rel}: ")
    assert f"expected {f.sha256}" in lines[0] and _sha(bytes(raw)) in lines[0] and "next source" in lines[0]

    # only the corrupt source: nothing placed, one failure line
    root2 = tmp_path / "data2"
    err2 = io.StringIO()
    res2 = fetch(["mnist"], root2, mirrors=[bad.url], mirrors_only=True, out=io.StringIO(), err=err2)
    assert [r.status for r in res2].count("failed") == 1
    assert not (root2 / rel).exists() and not list((root2 / "mnist").glob(".*"))
    assert any(ln.startswith("ovis.datasets fetch: could not fetch " + rel) for ln in err2.getvalue().splitlines())


def test_structure_check_refuses_a_wrong_chardata_and_hash_check_when_injected(tmp_path, serve, small_tree):
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, {"data": np.full((784, 30), 2.0), "testdata": np.zeros((784, 10))})  # values > 1
    wrong = serve({"omniglot/chardata.mat": buf.getvalue()})
    right = serve(small_tree)
    root = tmp_path / "data"
    err = io.StringIO()
    res = fetch(["omniglot"], root, mirrors=[wrong.url, right.url], mirrors_only=True,
                catalog=_small_catalog(small_tree), out=io.StringIO(), err=err)
    assert res[0].status == "fetched" and res[0].source == right.url + "omniglot/chardata.mat"
    assert "refused omniglot/chardata.mat" in err.getvalue() and "outside [0, 1]" in err.getvalue()
    # with an injected hash the same file is checked by hash
    root2 = tmp_path / "data2"
    res2 = fetch(["omniglot"], root2, mirrors=[right.url], mirrors_only=True,
                 catalog=_small_catalog(small_tree, omniglot_hash=True), out=io.StringIO(), err=io.StringIO())
    assert res2[0].status == "fetched" and "sha256 of the uncompressed content verified" in res2[0].note
    # the real catalog's full-size shape check refuses the small file
    err3 = io.StringIO()
    res3 = fetch(["omniglot"], tmp_path / "data3", mirrors=[right.url], mirrors_only=True, out=io.StringIO(),
                 err=err3)
    assert res3[0].status == "failed" and "(784, 24345)" in err3.getvalue()
    assert not (tmp_path / "data3").exists()


def test_resumed_file_that_fails_verification_is_downloaded_again_from_the_start(tmp_path, serve, small_tree):
    cat = _small_catalog(small_tree)
    m = serve(small_tree)
    root = tmp_path / "data"
    part = root / "binarized_mnist" / ".binarized_mnist_valid.amat.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that is not the start of the file")
    res = fetch(["binmnist"], root, mirrors=[m.url], mirrors_only=True, catalog=cat, out=io.StringIO(),
                err=io.StringIO())
    assert [r.status for r in res] == ["fetched"] * 3
    rel = "binarized_mnist/binarized_mnist_valid.amat"
    assert (root / rel).read_bytes() == small_tree[rel]
    assert [rng for p, rng in m.requests() if p == rel] == [f"bytes={len(b'garbage that is not the start of the file')}-",
                                                          None]


def test_present_corrupt_copy_is_replaced_and_a_stale_raw_file_set_aside(tmp_path, serve, real_tree):
    m = serve(real_tree)
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"junk")  # read before .gz
    out, err = io.StringIO(), io.StringIO()
    res = fetch(["mnist"], root, mirrors=[m.url], mirrors_only=True, out=out, err=err)
    assert [r.status for r in res] == ["fetched"] * 4
    assert "fails verification" in err.getvalue()
    assert (root / "mnist" / "t10k-labels-idx1-ubyte.corrupt").is_file()
    assert not (root / "mnist" / "t10k-labels-idx1-ubyte").exists()
    assert load_dataset("mnist", root, mini=True).description["checksums_verified"] is True


# ------------------------------------------------------------------------------ all sources down
def test_all_sources_failing_one_line_per_file_and_nothing_left(tmp_path, serve, real_tree, capsys, monkeypatch):
    down = serve(real_tree)
    down.status = 503  # retried, then given up
    missing = serve({})  # 404 for everything
    closed = _closed_port_url()
    root = tmp_path / "data"
    monkeypatch.setenv(fetch_mod.MIRROR_ENV, missing.url)
    code = main(["fetch", "mnist", "--data_root", str(root), "--mirror", closed, "--mirror", down.url,
                 "--mirrors-only", "--retries", "1", "--timeout", "5"])
    cap = capsys.readouterr()
    assert code == 1
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("ovis.datasets fetch: could not fetch")]
    assert len(lines) == 4, cap.err
    folder = str(root.resolve() / "mnist") + "/"
    for f, ln in zip(CATALOG["mnist"], lines):
        assert f.relpath in ln and ln.endswith(f"place it in {folder}")
        assert f"{closed}{f.relpath} (connection refused)" in ln
        assert f"{down.url}{f.relpath} (HTTP 503" in ln and "after 2 attempts" in ln
        assert f"{missing.url}{f.relpath} (HTTP 404" in ln
    assert not root.exists()  # nothing created, nothing half-written
    assert sum(p == "mnist/train-images-idx3-ubyte.gz" for p, _ in down.requests()) == 2  # bounded retries
    # an existing data root keeps exactly what it held
    root.mkdir()
    (root / "keep.txt").write_text("x")
    assert main(["fetch", "mnist", "--data_root", str(root), "--mirror", closed, "--mirrors-only"]) == 1
    assert _files_under(root) == ["keep.txt"]


def test_dropped_connections_exhausting_retries_leave_no_part_file(tmp_path, serve, small_tree):
    m = serve(small_tree)
    rel = "binarized_mnist/binarized_mnist_train.amat"
    root = tmp_path / "data"

    class Drops(dict):  # every response for rel drops after 100 bytes
        def pop(self, key, default=None):
            return 100 if key == rel else default

    m.drop = Drops()
    err = io.StringIO()
    res = fetch(["binmnist"], root, mirrors=[m.url], mirrors_only=True, catalog=_small_catalog(small_tree),
                retries=2, out=io.StringIO(), err=err)
    assert [r.status for r in res] == ["failed", "fetched", "fetched"]
    assert "connection dropped after 300 of" in res[0].tried[0][1] and "after 3 attempts" in res[0].tried[0][1]
    assert [rng for p, rng in m.requests() if p == rel] == [None, "bytes=100-", "bytes=200-"]
    assert _files_under(root / "binarized_mnist") == ["binarized_mnist_test.amat", "binarized_mnist_valid.amat"]


def test_progress_bar_per_file(tmp_path, serve, small_tree):
    m = serve(small_tree)
    err = io.StringIO()
    fetch(["binmnist"], tmp_path, mirrors=[m.url], mirrors_only=True, catalog=_small_catalog(small_tree),
          progress=True, out=io.StringIO(), err=err)
    for s in ("train", "valid", "test"):
        assert f"binarized_mnist/binarized_mnist_{s}.amat" in err.getvalue()
    assert "100%" in err.getvalue()


# ------------------------------------------------------------------------------ messages name the command
@pytest.mark.parametrize("name, fetched", [("mnist", "mnist"), ("fashion", "fashion"), ("binmnist", "binmnist"),
                                           ("omniglot", "omniglot"), ("mnist-grey", "mnist")])
def test_every_not_found_error_names_the_fetch_command(tmp_path, name, fetched, monkeypatch):
    monkeypatch.setattr("ovis.datasets.mnist.IDX_SYSTEM_DIRS", {"mnist": (), "fashion": ()})
    root = tmp_path / "nodata"
    cmd = f"python -m ovis.datasets fetch {fetched} --data_root {root}"
    assert fetch_command(name, root) == cmd
    for call in (lambda: load_dataset(name, root), lambda: locate_dataset(name, root)):
        with pytest.raises(DatasetNotFoundError) as e:
            call()
        assert cmd in str(e.value) and "\n" not in str(e.value)
    # in the default data root the command is the bare one
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset(name)
    assert f"fetch it with: python -m ovis.datasets fetch {fetched} (" in str(e.value)


def test_fetch_command_names_and_quoting(tmp_path):
    assert fetch_command("binmnist") == "python -m ovis.datasets fetch binmnist"
    assert fetch_command("fashion-grey", tmp_path / "a b") == \
        f"python -m ovis.datasets fetch fashion --data_root '{tmp_path / 'a b'}'"
    assert fetch_command(["binmnist", "mnist-grey", "mnist"]) == "python -m ovis.datasets fetch binmnist mnist"
    with pytest.raises(ValueError, match="no fetch command"):
        fetch_command("gmm")


def test_manager_preflight_names_one_fetch_command_for_every_missing_data_set_then_passes(tmp_path, serve,
                                                                                          small_tree, monkeypatch):
    from ovis.experiments.grid import load_and_expand

    monkeypatch.setattr("ovis.datasets.mnist.IDX_SYSTEM_DIRS", {"mnist": (), "fashion": ()})
    from ovis.experiments.preflight import PreflightError, check_data

    exp, jobs, _ = load_and_expand(REPO / "experiments" / "sigmoid-belief-network.json", validate=False)
    root = tmp_path / "data"
    with pytest.raises(PreflightError) as e:
        check_data(exp, jobs, root)
    msg = str(e.value)
    assert "\n" not in msg and f"needed by {len(jobs)} job(s)" in msg
    assert f"fetch them with: python -m ovis.datasets fetch binmnist fashion omniglot --data_root {root};" in msg
    # one fetch (here from a local mirror, small files; Fashion-MNIST linked from ../shared/data), then it passes
    m = serve(small_tree)
    res = fetch(["binmnist", "omniglot"], root, mirrors=[m.url], mirrors_only=True,
                catalog=_small_catalog(small_tree), out=io.StringIO(), err=io.StringIO())
    assert {r.status for r in res} == {"fetched"}
    with pytest.raises(PreflightError, match=r"data set 'fashion'.*fetch it with: python -m ovis.datasets fetch "
                                             r"fashion --data_root"):
        check_data(exp, jobs, root)
    (root / "fashion-mnist").symlink_to(SHARED / "fashion-mnist")
    check_data(exp, jobs, root)


def test_an_oversized_response_is_refused_without_keeping_it(tmp_path, serve, small_tree):
    rel = "binarized_mnist/binarized_mnist_valid.amat"
    big = serve({rel: small_tree[rel] * 400})  # over the size + 1 MiB a gzip of the file could take
    good = serve(small_tree)
    root = tmp_path / "data"
    res = fetch(["binmnist"], root, mirrors=[big.url, good.url], mirrors_only=True,
                catalog=_small_catalog(small_tree), out=io.StringIO(), err=io.StringIO())
    by = {r.file.relpath: r for r in res}
    assert by[rel].status == "fetched" and by[rel].source == good.url + rel
    assert "more than the file can hold" in by[rel].tried[0][1]
    assert [rng for p, rng in good.requests() if p == rel] == [None]  # nothing of the big one resumed
