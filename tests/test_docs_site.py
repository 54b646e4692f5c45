r"""The documentation site (``make docs``) in headless Chromium.

These tests read a site that is already built: ``make docs`` builds ``docs/_build/html`` and then
runs ``pytest -m docs --docs-site docs/_build/html tests/test_docs_site.py``; without
``--docs-site`` they are deselected (a plain ``pytest`` run does not build the site).

The site is served by ``http.server`` on 127.0.0.1 (port 0) and driven through the Chrome DevTools
protocol (``websocket-client``) in Debian's Chromium, with every host but 127.0.0.1 unresolvable
(the site must need nothing from outside). Checked:

* every HTML page loads with no JavaScript exception and no failed request to the server;
* every internal link (``href``/``src`` of every page, anchors included) resolves;
* every image of every page (figures, tutorial plots) is displayed (``naturalWidth > 0``);
* the search box finds an estimator by name: "VIMCO" lists the API page of ``ovis.estimators.vimco``.

Each check is also run on a copy of a page with a broken link or image, and must report it.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

pytestmark = pytest.mark.docs

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def site(request) -> Path:
    root = Path(request.config.getoption("--docs-site")).resolve()
    if not (root / "index.html").is_file():
        pytest.fail(f"no built site at {root} (index.html missing): run `make docs`")
    return root


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        self.server.log.append((self.path, int(args[1]) if len(args) > 1 and str(args[1]).isdigit() else 0))


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Tuple[str, List[Tuple[str, int]]]]:
    r"""Serve ``root`` on 127.0.0.1 (a free port); yields the base URL and the request log
    ``[(path, status)]``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.log = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.log  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def served(site):
    with serve(site) as (base, log):
        yield base, log


def chromium_exe() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed: the documentation site test needs it. Install it with "
                "`apt-get update && apt-get install -y chromium` (Debian/Ubuntu; .ci/run does), then rerun.")


class Browser:
    r"""A headless Chromium driven through the DevTools protocol: one page target, commands sent
    and answered in order, events kept for inspection."""

    def __init__(self) -> None:
        import websocket  # websocket-client, from the docs requirements

        self.profile = tempfile.mkdtemp(prefix="ovis-docs-chromium-")
        args = [chromium_exe(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--disable-extensions", f"--user-data-dir={self.profile}",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--window-size=1280,900",
                "about:blank"]
        self.log = open(Path(self.profile) / "chromium.log", "w+")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                err = self.log.read()
                self.close()
                pytest.fail(f"Chromium did not start its DevTools endpoint: {err[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: List[Dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")

    def send(self, method: str, params: Optional[Dict[str, Any]] = None, timeout: float = 60) -> Dict[str, Any]:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise TimeoutError(f"{method}: no answer within {timeout} s")

    def wait_event(self, method: str, timeout: float = 60) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == method:
                return msg
            self.events.append(msg)
        raise TimeoutError(f"no {method} within {timeout} s")

    def load(self, url: str) -> List[Dict[str, Any]]:
        r"""Navigate to ``url`` and wait for its load event; returns the events seen meanwhile."""
        self.events.clear()
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise AssertionError(f"{url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired")
        seen = list(self.events)
        self.events.clear()
        return seen

    def eval(self, expression: str, timeout: float = 60) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    b = Browser()
    yield b
    b.close()


# ------------------------------------------------------------------------------ static link check
class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: List[str] = []
        self.ids: set = set()

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        d = dict(attrs)
        for key in ("id", "name") if tag in ("a",) else ("id",):
            if d.get(key):
                self.ids.add(d[key])
        for key in ("href", "src"):
            if d.get(key) and not (tag == "link" and d.get("rel") in ("preconnect", "dns-prefetch")):
                self.refs.append(d[key])


def pages(site: Path) -> List[Path]:
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def broken_links(site: Path, page: Path) -> List[str]:
    r"""The internal ``href``/``src`` of ``page`` whose file, or anchor in it, does not exist."""
    bad = []
    for ref in _parse(page).refs:
        parts = urllib.parse.urlsplit(ref)
        if parts.scheme or parts.netloc or ref.startswith(("mailto:", "javascript:", "data:")):
            continue
        target = (page.parent / urllib.parse.unquote(parts.path)).resolve() if parts.path else page
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file() or site not in target.parents and target != site:
            bad.append(f"{ref} (no file {target})")
            continue
        if parts.fragment and target.suffix == ".html":
            if urllib.parse.unquote(parts.fragment) not in _parse(target).ids:
                bad.append(f"{ref} (no anchor #{parts.fragment} in {target.name})")
    return bad


def test_every_internal_link_resolves(site):
    all_pages = pages(site)
    names = {p.relative_to(site).as_posix() for p in all_pages}
    for expected in ("index.html", "getting-started.html", "concepts.html", "experiments.html", "datasets.html",
                     "reproduction.html", "tutorials/index.html", "api/index.html", "search.html",
                     "api/generated/ovis.estimators.vimco.html"):
        assert expected in names, f"page {expected} missing from the site"
    assert len(all_pages) > 50  # one page per public module of ovis, among others
    bad = {p.relative_to(site).as_posix(): b for p in all_pages if (b := broken_links(site, p))}
    assert not bad, json.dumps(bad, indent=1)[:4000]


def test_the_link_check_finds_a_broken_link(site, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy, ignore=shutil.ignore_patterns("_static", "_images", "_sources", "generated"))
    page = copy / "concepts.html"
    html = page.read_text(encoding="utf-8")
    page.write_text(html.replace("</body>", '<a href="no-such-page.html">x</a>'
                                 '<a href="index.html#no-such-anchor">y</a></body>'), encoding="utf-8")
    bad = broken_links(copy, page)
    assert any("no-such-page.html" in b for b in bad) and any("#no-such-anchor" in b for b in bad)


# ---------------------------------------------------------------------------------- in the browser
_IMAGES_JS = r"""
(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(img => {
    img.loading = 'eager';
    if (img.complete) return Promise.resolve();
    return new Promise(ok => { img.addEventListener('load', ok); img.addEventListener('error', ok);
                               setTimeout(ok, 10000); });
  }));
  return {total: imgs.length,
          broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))};
})()
"""


def check_page(browser: Browser, base: str, log: List[Tuple[str, int]], rel: str) -> Dict[str, Any]:
    r"""Load one page; returns its image counts and the problems found (JS exceptions, requests the
    server answered with an error, images not displayed)."""
    start = len(log)
    events = browser.load(base + rel)
    problems = []
    for ev in events:
        if ev.get("method") == "Runtime.exceptionThrown":
            details = ev["params"]["exceptionDetails"]
            problems.append(f"JS exception: {details.get('exception', {}).get('description', details.get('text'))}")
    images = browser.eval(_IMAGES_JS)
    problems += [f"image not displayed: {src}" for src in images["broken"]]
    # (the browser's own request for /favicon.ico is no link of the page)
    problems += [f"HTTP {status} for {path}" for path, status in log[start:] if status >= 400
                 and path != "/favicon.ico"]
    title = browser.eval("document.title")
    if not title or "404" in title:
        problems.append(f"no title ({title!r})")
    return {"images": images["total"], "problems": problems}


def test_every_page_loads_and_shows_its_images(site, served, browser):
    base, log = served
    results = {}
    for page in pages(site):
        rel = page.relative_to(site).as_posix()
        results[rel] = check_page(browser, base, log, rel)
    bad = {rel: r["problems"] for rel, r in results.items() if r["problems"]}
    assert not bad, json.dumps(bad, indent=1)[:4000]
    # the reproduction page shows the paper's figures; each tutorial shows at least one plot
    assert results["reproduction.html"]["images"] >= 5
    tutorials = [rel for rel in results if re.fullmatch(r"tutorials/\d\d-[^/]+\.html", rel)]
    for rel in tutorials:
        assert results[rel]["images"] >= 1, f"{rel} shows no plot"
    assert sum(r["images"] for r in results.values()) >= 5


def test_the_maths_is_typeset_offline(served, browser):
    r"""MathJax is served by the site itself (every other host is unresolvable here) and typesets
    the formulas of the concepts page and of a docstring."""
    base, _ = served
    for rel, least in (("concepts.html", 30), ("api/generated/ovis.estimators.importance.html", 3)):
        browser.load(base + rel)
        typeset = browser.eval("""(async () => {
            for (let i = 0; i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
              await new Promise(ok => setTimeout(ok, 50));
            if (!(window.MathJax && MathJax.startup)) return -1;
            await MathJax.startup.promise;
            return document.querySelectorAll('mjx-container').length; })()""")
        assert typeset >= least, f"{rel}: {typeset} formulas typeset"
        local = browser.eval("Array.from(document.scripts).filter(s => /mathjax/i.test(s.src))"
                             ".every(s => s.src.startsWith(location.origin))")
        assert local, f"{rel}: MathJax is not served by the site"


def test_the_browser_check_finds_a_broken_image(site, browser, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy, ignore=shutil.ignore_patterns("generated", "_sources"))
    page = copy / "reproduction.html"
    html = page.read_text(encoding="utf-8")
    page.write_text(html.replace("</body>", '<img src="figures/no-such-figure.png" alt="x"></body>'),
                    encoding="utf-8")
    with serve(copy) as (base, log):
        result = check_page(browser, base, log, "reproduction.html")
    assert any("no-such-figure.png" in p for p in result["problems"]), result


def test_the_search_box_finds_an_estimator_by_name(served, browser):
    base, _ = served
    browser.load(base + "index.html")
    # type the name into the sidebar's search box and submit it, as a reader would
    submitted = browser.eval(r"""
      (() => { const box = document.querySelector('form[action$="search.html"] input[name="q"]');
               if (!box) return false; box.value = 'VIMCO'; box.form.submit(); return true; })()""")
    assert submitted, "no search box on the index page"
    browser.wait_event("Page.loadEventFired")
    assert "search.html?q=VIMCO" in browser.eval("location.href")
    deadline = time.monotonic() + 60
    links: List[str] = []
    while time.monotonic() < deadline:
        links = browser.eval("Array.from(document.querySelectorAll('#search-results a')).map(a => a.href)")
        if any("ovis.estimators.vimco" in link for link in links):
            break
        time.sleep(0.25)
    assert any("api/generated/ovis.estimators.vimco.html" in link for link in links), links[:20]
    # a name that is nowhere in the site finds nothing (the check above can fail)
    browser.load(base + "search.html?q=zzqqxxnotanestimator")
    time.sleep(2)
    none = browser.eval("Array.from(document.querySelectorAll('#search-results li a')).length")
    assert none == 0


# ------------------------------------------------------------------------------- the build's checks
def _tiny_build(tmp_path: Path, page: str) -> subprocess.CompletedProcess:
    r"""Build a one-page site with the project's ``docs/conf.py`` (nitpicky, warnings as errors)."""
    src = tmp_path / "src"
    src.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "docs" / "conf.py", src / "conf.py")
    (src / "index.md").write_text(page, encoding="utf-8")
    import sys

    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
                           str(src), str(tmp_path / "html")], capture_output=True, text=True, timeout=300)


def test_a_broken_cross_reference_fails_the_build(tmp_path):
    page = """# Tiny

```{eval-rst}
.. py:class:: ovis.estimators.base.GradientEstimator

   The documented target.
```

See {class}`ovis.estimators.base.GradientEstimator`, {class}`ovis.estimators.GradientEstimator` (a
re-export), {class}`GradientEstimator` (a short name) and {class}`torch.Tensor` (external).
"""
    good = _tiny_build(tmp_path / "good", page)
    assert good.returncode == 0, good.stderr[-3000:]
    bad = _tiny_build(tmp_path / "bad", page + "\nAnd {class}`ovis.estimators.base.NoSuchEstimator`.\n")
    assert bad.returncode != 0
    assert "reference target not found: ovis.estimators.base.NoSuchEstimator" in bad.stderr, bad.stderr[-3000:]
