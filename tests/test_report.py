"""Reports from run directories: the tidy table, report.py's files and numbers, damaged runs,
the HTML page in headless Chromium, Figure 3 and the efficiency script.

The run directories are written by a fixture in the spec'd format (``ovis.reporting.fixtures``);
the numbers in the tables are recomputed here from the ``metrics.jsonl`` files themselves.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from ovis.reporting.fixtures import write_fake_run
from ovis.reporting.report import ReportArgumentError, parse_report_args
from ovis.reporting.report import main as report_main
from ovis.reporting.runs import read_experiment, read_run

REPO = Path(__file__).resolve().parents[1]
EXP = "fake"
ESTIMATORS = ("ovis-gamma1", "vimco-arithmetic")
IWS = (5, 10, 50)
SEEDS = (1, 2, 3)


def make_runs(root: Path) -> None:
    i = 0
    for est in ESTIMATORS:
        for iw in IWS:
            for seed in SEEDS:
                write_fake_run(root, EXP, f"run{i:03d}", est, iw, seed, tag="iwbound")
                i += 1
    write_fake_run(root, EXP, "failed", "reinforce", 5, 1, status="failed", steps=(0, 50))
    write_fake_run(root, EXP, "running", "reinforce", 5, 2, status="running", steps=(0, 50))
    write_fake_run(root, EXP, "unfinished", "reinforce", 5, 3, status=None, steps=(0,))
    write_fake_run(root, EXP, "corrupt", "reinforce", 10, 1,
                   extra_lines=['{"bad json', '{"split": "test", "step": 300, "metrics": {"loss/L_k": -1.0}}'])
    write_fake_run(root, EXP, "truncated", "reinforce", 10, 2, extra_lines=['{"split": "te'])
    write_fake_run(root, EXP, "noconfig", "reinforce", 10, 3, config=False)
    empty = root / EXP / "empty-dir-with-garbage-status"
    empty.mkdir()
    (empty / "status.json").write_text("{not json")


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_runs(root)
    return root


@pytest.fixture(scope="module")
def report_dir(runs_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports")
    code = report_main(["--exp", EXP, "--root", str(runs_root), "--output", str(out),
                        "--keys", "dataset,estimator,iw", "--metrics", "test:loss/L_k,train:grads/snr",
                        "--detailed_metrics", "train:loss/elbo",
                        "--pivot_metrics", "max:test:loss/L_k,last:train:grads/snr,min:train:loss/elbo,mean:test:loss/L_k",
                        "--ylims", "loss/L_k:-110:-60"])
    assert code == 0
    return out / EXP


def read_lines(path: Path):
    """The valid metric lines of a run, parsed independently of ovis.reporting."""
    out = []
    p = path / "metrics.jsonl"
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "metrics" in obj and "step" in obj and "split" in obj:
            out.append(obj)
    return out


def test_tidy_table_rows_and_statuses(runs_root):
    data = read_experiment(runs_root, EXP)
    status = dict(zip(data.runs["run_id"], data.runs["status"]))
    assert status["run000"] == "success"
    assert status["failed"] == "failed"
    assert status["running"] == "running"
    assert status["unfinished"] == "unfinished"
    assert status["corrupt"] == "corrupt"  # bad line in the middle
    assert status["truncated"] == "success"  # a truncated last line is a kill mid-write, not corruption
    assert "truncated last line" in data.runs.set_index("run_id").loc["truncated", "problems"]
    assert status["noconfig"] == "corrupt"
    assert status["empty-dir-with-garbage-status"] == "corrupt"
    # one row per run x split x step x metric, recomputed from the files
    expected = 0
    for d in (runs_root / EXP).iterdir():
        expected += sum(len(ln["metrics"]) for ln in read_lines(d))
    assert len(data.metrics) == expected
    assert {"run_id", "status", "estimator", "iw", "seed", "dataset", "split", "step", "metric", "value"} <= set(data.metrics.columns)
    row = data.metrics[(data.metrics.run_id == "run004") & (data.metrics.step == 100) &
                       (data.metrics.split == "test") & (data.metrics.metric == "loss/L_k")]
    truth = [ln for ln in read_lines(runs_root / EXP / "run004") if ln["step"] == 100 and ln["split"] == "test"][0]
    assert row["value"].tolist() == [truth["metrics"]["loss/L_k"]]
    assert row["estimator"].tolist() == ["ovis-gamma1"] and row["iw"].tolist() == [10] and row["seed"].tolist() == [2]


def test_read_run_never_raises_on_garbage(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "config.json").write_bytes(b"\xff\xfe garbage")
    (d / "metrics.jsonl").write_bytes(b"\x00\x01\n[1, 2]\n{\"split\": 1}\n")
    rec = read_run(d)
    assert rec.status == "corrupt" and rec.lines == [] and len(rec.problems) >= 3


def test_report_writes_every_file(report_dir):
    names = {p.name for p in report_dir.iterdir()}
    for stem in ("curves-test-loss_L_k", "curves-train-grads_snr", "detailed-train-loss_elbo",
                 "pivot-max-test-loss_L_k", "pivot-last-train-grads_snr", "pivot-min-train-loss_elbo",
                 "pivot-mean-test-loss_L_k"):
        for ext in ("png", "pdf"):
            assert f"{stem}.{ext}" in names, (stem, ext)
            assert (report_dir / f"{stem}.{ext}").stat().st_size > 1000
    for stem in ("pivot-max-test-loss_L_k", "runs", "curves-test-loss_L_k"):
        for ext in ("csv", "md", "tex"):
            assert f"{stem}.{ext}" in names
    assert (report_dir / "pivot-max-test-loss_L_k.tex").read_text().count(r"\begin{tabular}") == 1
    assert (report_dir / "index.html").exists()
    assert not [n for n in names if n.endswith(".tmp")]


def _per_run(runs_root: Path, split: str, metric: str, agg: str):
    out = {}
    for d in sorted((runs_root / EXP).iterdir()):
        cfg_p = d / "config.json"
        if not cfg_p.exists():
            continue
        try:
            cfg = json.loads(cfg_p.read_text())
        except json.JSONDecodeError:
            continue
        vals = {}
        for ln in read_lines(d):
            if ln["split"] == split and metric in ln["metrics"]:
                vals[ln["step"]] = ln["metrics"][metric]
        if not vals:
            continue
        series = [vals[s] for s in sorted(vals)]
        v = {"max": max(series), "min": min(series), "last": series[-1], "mean": sum(series) / len(series)}[agg]
        out[d.name] = (cfg, v)
    return out


@pytest.mark.parametrize("agg,split,metric", [("max", "test", "loss/L_k"), ("last", "train", "grads/snr"),
                                              ("min", "train", "loss/elbo"), ("mean", "test", "loss/L_k")])
def test_pivot_numbers_equal_recomputed(report_dir, runs_root, agg, split, metric):
    table = pd.read_csv(report_dir / f"pivot-{agg}-{split}-{metric.replace('/', '_')}.csv")
    groups = defaultdict(list)
    for cfg, v in _per_run(runs_root, split, metric, agg).values():
        groups[(f"dataset={cfg['dataset']}, estimator={cfg['estimator']}", str(cfg["iw"]))].append(v)
    assert len(table) == len(groups)
    for (label, iw), vals in groups.items():
        row = table[(table["label"] == label) & (table["iw"].astype(str) == iw)]
        assert len(row) == 1, (label, iw)
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        assert row["mean"].item() == pytest.approx(mean, rel=1e-12, abs=1e-12)
        assert row["std"].item() == pytest.approx(std, rel=1e-9, abs=1e-12)
        assert row["n"].item() == len(vals)
    md = (report_dir / f"pivot-{agg}-{split}-{metric.replace('/', '_')}.md").read_text()
    assert "iw=5" in md and "iw=50" in md and "estimator=ovis-gamma1" in md


def test_curve_numbers_equal_recomputed(report_dir, runs_root):
    table = pd.read_csv(report_dir / "curves-test-loss_L_k.csv")
    vals = defaultdict(list)
    for d in (runs_root / EXP).iterdir():
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        for ln in read_lines(d):
            if ln["split"] == "test":
                label = f"dataset={cfg['dataset']}, estimator={cfg['estimator']}, iw={cfg['iw']}"
                vals[(label, ln["step"])].append(ln["metrics"]["loss/L_k"])
    assert len(table) == len(vals)
    for _, r in table.iterrows():
        v = vals[(r["label"], r["step"])]
        assert r["mean"] == pytest.approx(sum(v) / len(v), rel=1e-12)
        assert r["n"] == len(v)


def test_index_lists_damaged_runs(report_dir):
    page = (report_dir / "index.html").read_text()
    for rid in ("failed", "running", "unfinished", "corrupt", "noconfig", "truncated"):
        assert rid in page
    assert "metrics.jsonl line" in page
    runs = pd.read_csv(report_dir / "runs.csv")
    assert set(runs["status"]) >= {"success", "failed", "running", "unfinished", "corrupt"}


def test_include_exclude_and_output_folder(runs_root, tmp_path):
    assert report_main(["--exp", EXP, "--root", str(runs_root), "--output", str(tmp_path),
                        "--include", "vimco-arithmetic", "--exclude", "iw=50", "--metrics", "train:loss/L_k",
                        "--pivot_metrics", "max:train:loss/L_k"]) == 0
    out = tmp_path / f"{EXP}-inc=vimco-arithmetic-exc=iw=50"
    table = pd.read_csv(out / "pivot-max-train-loss_L_k.csv")
    assert set(table["label"]) == {"dataset=gmm, estimator=vimco-arithmetic"}
    assert sorted(table["iw"].astype(str)) == ["10", "5"]


def test_downsample_limits_points(runs_root, tmp_path):
    assert report_main(["--exp", EXP, "--root", str(runs_root), "--output", str(tmp_path),
                        "--metrics", "train:loss/L_k", "--downsample", "2", "--include", "ovis-gamma1"]) == 0
    table = pd.read_csv(tmp_path / f"{EXP}-inc=ovis-gamma1" / "curves-train-loss_L_k.csv")
    assert table.groupby("label")["step"].nunique().max() == 2


def test_no_runs_exits_nonzero_with_message(tmp_path, capsys):
    assert report_main(["--exp", "nothing-here", "--root", str(tmp_path), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "nothing-here" in err and "no runs" in err
    (tmp_path / "empty").mkdir()
    assert report_main(["--exp", "empty", "--root", str(tmp_path), "--output", str(tmp_path / "o")]) == 1
    assert "no run directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--metrics", "loss/L_k"], ["--pivot_metrics", "median:test:loss/L_k"],
                                  ["--ylims", "loss/L_k:0"], ["--ylims", "loss/L_k:5:1"], ["--downsample", "-1"],
                                  ["--bogus"]])
def test_bad_arguments_are_rejected(argv, tmp_path, capsys):
    with pytest.raises(ReportArgumentError):
        parse_report_args(["--exp", "x", *argv])
    assert report_main(["--exp", "x", "--root", str(tmp_path), *argv]) == 2


def test_grid_jobs_without_a_run_are_listed(runs_root, tmp_path, capsys):
    from ovis.experiments.grid import load_and_expand

    grid = {"description": "d", "args": ["--estimator ovis-gamma1", "--estimator vimco-arithmetic"],
            "global": "--silent", "parameters": {"iw": [5], "seed": [1, 7], "dataset": ["gmm"]}}
    f = tmp_path / f"{EXP}.json"
    f.write_text(json.dumps(grid))
    _, jobs, _ = load_and_expand(f, validate=False)
    # a run directory written for the first job (found through the job id its config records)
    root = tmp_path / "runs"
    shutil.copytree(runs_root / EXP, root / EXP)
    cfg = json.loads((root / EXP / "run000" / "config.json").read_text())
    cfg["job_id"] = jobs[0].job_id
    (root / EXP / "run000" / "config.json").write_text(json.dumps(cfg))
    assert report_main(["--exp", EXP, "--root", str(root), "--output", str(tmp_path / "o"),
                        "--experiment_file", str(f)]) == 0
    table = pd.read_csv(tmp_path / "o" / EXP / "grid.csv")
    assert len(table) == 4
    assert table.set_index("job_id").loc[jobs[0].job_id, "status"] == "success"
    assert (table["status"] == "missing").sum() == 3
    assert "3 without a successful run" in capsys.readouterr().err


# --------------------------------------------------------------------------- headless Chromium
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed: the HTML report check needs it. Install it with "
                "`apt-get update && apt-get install -y chromium` (Debian/Ubuntu), then rerun.")


def chromium_dom(page: Path, screenshot: Path | None = None) -> str:
    exe = chromium()
    with tempfile.TemporaryDirectory() as profile:
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
        url = page.resolve().as_uri()
        dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        if screenshot is not None:
            shot = subprocess.run(base + [f"--screenshot={screenshot}", "--window-size=1400,2000", url],
                                  capture_output=True, text=True, timeout=120)
            assert shot.returncode == 0, shot.stderr[-2000:]
    return dom.stdout


def _marker(dom: str, name: str) -> str:
    import re

    m = re.search(rf'{name}="([^"]*)"', dom)
    assert m, f"marker {name} not set: the page's script did not run\n{dom[:500]}"
    return m.group(1)


def test_index_html_images_load_in_headless_chromium(report_dir, tmp_path):
    shot = report_dir / "screenshot.png"
    dom = chromium_dom(report_dir / "index.html", screenshot=shot)
    total = int(_marker(dom, "data-images-total"))
    assert total >= 7  # 2 curves + 1 detailed + 4 pivots
    assert int(_marker(dom, "data-images-ok")) == total, _marker(dom, "data-images-broken")
    assert shot.exists() and shot.stat().st_size > 10_000
    # the check can fail: a copy of the page with one figure removed reports it broken
    broken = tmp_path / "broken"
    shutil.copytree(report_dir, broken)
    (broken / "curves-test-loss_L_k.png").unlink()
    dom = chromium_dom(broken / "index.html")
    assert int(_marker(dom, "data-images-ok")) == total - 1
    assert "curves-test-loss_L_k.png" in _marker(dom, "data-images-broken")


# --------------------------------------------------------------------------- Figure 3
def test_figure3_on_a_partial_grid(tmp_path, capsys):
    from ovis.reporting.figure3 import main as fig3

    i = 0
    for tag, ests in (("iwbound", ("vimco-arithmetic", "ovis-gamma1")), ("iwrbound", ("tvo-part2-config1",))):
        for est in ests:
            for seed in (1, 2):
                write_fake_run(tmp_path / "runs", "sbn", f"r{i}", est, 5, seed, dataset="binmnist", tag=tag)
                i += 1
    write_fake_run(tmp_path / "runs", "sbn", "bad", "ovis-gamma0", 5, 1, dataset="binmnist", tag="iwbound",
                   status="failed", steps=(0,))
    grid = REPO / "experiments" / "sigmoid-belief-network-cpu.json"
    for side in ("left", "right"):
        assert fig3(["--figure", side, "--exp", "sbn", "--root", str(tmp_path / "runs"),
                     "--output", str(tmp_path / "out"), "--experiment_file", str(grid)]) == 0
        out = tmp_path / "out" / f"sbn-figure3-{side}"
        for f in (f"figure3-{side}.png", f"figure3-{side}.pdf", f"figure3-{side}-summary.csv", "missing.csv",
                  "index.html"):
            assert (out / f).exists(), f
    err = capsys.readouterr().err
    assert "missing" in err
    left = pd.read_csv(tmp_path / "out" / "sbn-figure3-left" / "figure3-left-summary.csv")
    assert set(left["estimator"]) == {"vimco-arithmetic", "ovis-gamma1"}
    # the last test L_K of vimco (mean over the two seeds) recomputed from the files
    last = []
    for rid in ("r0", "r1"):
        lines = [ln for ln in read_lines(tmp_path / "runs" / "sbn" / rid) if ln["split"] == "test"]
        last.append(max(lines, key=lambda ln: ln["step"])["metrics"]["loss/L_k"])
    assert left.set_index("estimator").loc["vimco-arithmetic", "last_mean"] == pytest.approx(sum(last) / 2)
    missing = pd.read_csv(tmp_path / "out" / "sbn-figure3-left" / "missing.csv")
    pairs = set(zip(missing["dataset"], missing["estimator"]))
    assert ("binmnist", "ovis-gamma0") in pairs  # failed run: missing
    assert ("fashion", "vimco-arithmetic") in pairs  # never ran
    assert ("binmnist", "vimco-arithmetic") not in pairs
    right = pd.read_csv(tmp_path / "out" / "sbn-figure3-right" / "figure3-right-summary.csv")
    assert set(right["estimator"]) == {"tvo-part2-config1"}


# --------------------------------------------------------------------------- efficiency
def test_measure_efficiency_tiny(tmp_path):
    from ovis.reporting.efficiency import main as eff

    assert eff(["--estimators", "vimco-arithmetic,ovis-gamma1", "--iw", "2,8", "--steps", "1", "--N", "8",
                "--bs", "4", "--output", str(tmp_path), "--silent", "--device", "cpu"]) == 0
    out = tmp_path / "efficiency-sbm"
    table = pd.read_csv(out / "efficiency.csv")
    assert len(table) == 4 and (table["time_per_step_s"] > 0).all()
    # the autograd graph's memory grows with K
    for est, g in table.groupby("estimator"):
        g = g.sort_values("iw")
        assert g["saved_MB"].iloc[1] > 2 * g["saved_MB"].iloc[0], est
    for f in ("efficiency.png", "efficiency.pdf", "efficiency.md", "efficiency.tex", "index.html"):
        assert (out / f).exists()


# --------------------------------------------------------------------------- tables and page escaping
class _Tags(HTMLParser):
    r"""Every start tag of a page (name, attributes) and the text of every ``<td>``, as a browser parses them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list = []
        self.cells: list = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "td":
            self._in_td = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_td = False

    def handle_data(self, data):
        if self._in_td:
            self.cells[-1] += data


MARKUP = ("<script>alert(1)</script>", "a|b", "x\ny", "50% of $x_1$ & {y} #2 ~ ^ \\", "1.5 ± 0.2 (3)")


def test_tables_keep_markup_as_text(tmp_path):
    from ovis.reporting.outputs import Section, render_index, write_table

    df = pd.DataFrame({"name_1": list(MARKUP), "value %": [1 / 3, float("nan"), None, 2.0, 1e-9]})
    item = write_table(df, tmp_path, "t", "cap_1 50% <b>bold</b>")
    # Markdown: one header, one rule, one line per row, each with two cells (the | of a cell escaped)
    md = (tmp_path / "t.md").read_text().splitlines()
    assert len(md) == 2 + len(df) and md[1].startswith("|---")
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in md]
    assert cells[0] == ["name_1", "value %"]
    assert [r[0] for r in cells[2:]] == ["<script>alert(1)</script>", r"a\|b", "x y", MARKUP[3], MARKUP[4]]
    assert [r[1] for r in cells[2:]] == ["0.333333", "", "", "2", "1e-09"]
    # LaTeX: every special character escaped, in the caption, the column labels and the cells
    tex = (tmp_path / "t.tex").read_text()
    assert tex.count(r"\begin{tabular}{ll}") == 1 and tex.count(r"\toprule") == 1
    assert r"\caption{cap\_1 50\% <b>bold</b>}" in tex
    assert r"name\_1 & value \% \\" in tex
    assert r"50\% of \$x\_1\$ \& \{y\} \#2 \textasciitilde" in tex and r"\textbackslash" in tex
    assert r"1.5 $\pm$ 0.2 (3) & 1e-09 \\" in tex
    # HTML: the markup is text in its cell, never a tag
    render_index(tmp_path, "title <i>x</i>", [Section("s & <u>", [item])])
    page = _Tags()
    page.feed((tmp_path / "index.html").read_text())
    assert [t for t, _ in page.tags if t in ("b", "i", "u")] == []
    assert sum(t == "script" for t, _ in page.tags) == 1  # the page's own image check
    assert len(page.cells) == 2 * len(df)
    assert page.cells[0::2] == list(MARKUP) and page.cells[1::2] == ["0.333333", "", "", "2", "1e-09"]


def test_report_page_escapes_run_names_and_errors(tmp_path):
    root = tmp_path / "runs"
    write_fake_run(root, "x", "ok", "vimco-arithmetic", 5, 1)
    bad = write_fake_run(root, "x", "<img src=x onerror=alert(1)>", "<script>alert(2)</script>", 5, 1,
                         status="failed", steps=(0, 50))
    st = json.loads((bad / "status.json").read_text())
    st["error"] = "ValueError: </td></tr></table><script>alert(3)</script>"
    (bad / "status.json").write_text(json.dumps(st))
    assert report_main(["--exp", "x", "--root", str(root), "--output", str(tmp_path / "o"),
                        "--experiment_file", "none", "--metrics", "test:loss/L_k",
                        "--pivot_metrics", "max:test:loss/L_k"]) == 0
    page = _Tags()
    page.feed((tmp_path / "o" / "x" / "index.html").read_text())
    assert sum(t == "script" for t, _ in page.tags) == 1
    assert not [a for t, a in page.tags if t == "img" and a.get("src") == "x"]
    assert "<img src=x onerror=alert(1)>" in page.cells
    assert "<script>alert(2)</script>" in page.cells
    assert "ValueError: </td></tr></table><script>alert(3)</script>" in page.cells


def test_figure3_summary_shows_no_spread_for_a_single_run():
    from ovis.reporting.figure3 import mean_pm_std

    assert mean_pm_std(-91.234, float("nan")) == "-91.23"  # one seed: no made-up "± 0.00"
    assert mean_pm_std(-91.234, 0.456) == "-91.23 ± 0.46"
    assert mean_pm_std(-91.0, 0.0) == "-91.00 ± 0.00"  # two seeds that agree: a real zero spread
