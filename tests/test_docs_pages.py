"""The documentation pages' sources (docs/*.md) say what the code does: their example runs, every
estimator family and runtime parameter is documented, the commands they give exist.

(The built site is checked in headless Chromium by tests/test_docs_site.py, through `make docs`.)
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from ovis.estimators.base import RuntimeParams
from ovis.estimators.config import REGISTRY

DOCS = Path(__file__).resolve().parents[1] / "docs"
REPO = DOCS.parent


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_getting_started_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", _page("getting-started.md"), flags=re.S)
    example = next(b for b in blocks if "parse_estimator_id" in b)
    script = tmp_path / "example.py"
    script.write_text(example)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    value = float(re.search(r"tensor\((-?[0-9.]+)", out.stdout).group(1))
    assert -800 < value < 0  # an IW bound of 784 random binary pixels, in nats


def test_getting_started_gives_the_two_commands_and_the_outputs():
    text = _page("getting-started.md")
    for needle in ("make demo", "make test", "make docs", "runs/<exp>/<run_id>/", "reports/<exp>/index.html",
                   "--dataset binmnist --model sbm"):
        assert needle in text, needle
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo", "test", "docs", "reproduce"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target} is documented but not in the Makefile"


def test_concepts_documents_every_estimator_family_and_runtime_parameter():
    text = _page("concepts.md")
    for family in REGISTRY:
        cls = family.cls
        assert f"{{class}}`~{cls.__module__}.{cls.__name__}`" in text, f"{cls.__name__} ({family.form}) undocumented"
        # the family's literal id(s) appear in the table, e.g. `vimco-arithmetic`, `ovis-S{n}[-exclusive]`
        first = re.split(r"[ |\[(]", family.form)[0]
        assert f"`{first}" in text, f"id {first} of {cls.__name__} not in concepts.md"
    for field in dataclasses.fields(RuntimeParams):
        assert re.search(rf"^\| `{field.name}` \| `{field.default!r}` \|", text, flags=re.M), field.name
    for needle in ("supports_particles", "particles=", "inference_network", "generative_model", "zgrads"):
        assert needle in text, needle


def test_experiments_page_names_every_queue_status_and_requeue_level():
    from ovis.experiments.queue import REQUEUE_LEVELS, STATUSES

    text = _page("experiments.md")
    for status in STATUSES:
        assert f"| `{status}` |" in text, status
    for level in REQUEUE_LEVELS:
        assert str(level) in text
    for needle in ("--backend dask", "SLURMCluster", "--tls-ca-file", "report.py", "dbutils.py", "lost"):
        assert needle in text, needle


def test_every_page_is_in_the_index():
    index = _page("index.md")
    for page in sorted(DOCS.glob("*.md")):
        if page.stem != "index":
            assert f"\n{page.stem}\n" in index, f"{page.name} is not in the toctree of docs/index.md"
