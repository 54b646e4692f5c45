"""The README's example of the estimator API runs as written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_estimator_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "parse_estimator_id" in b)
    script = tmp_path / "example.py"
    script.write_text(example)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    value = float(re.search(r"tensor\((-?[0-9.]+)", out.stdout).group(1))
    assert -800 < value < 0  # an IW bound of 784 random binary pixels, in nats


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_says_where_the_documentation_is():
    text = README.read_text()
    assert "make docs" in text and "docs/_build/html/index.html" in text
    # the long reference moved to the documentation pages, which tests/test_docs_pages.py checks
    assert len(text) < 8000
