"""docs/reproduction.md (ovis/reporting/reproduction/, reproduce.py, make reproduce): the OVIS paper's part,
and the marked parts that let one paper be rewritten while the others are kept."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pandas as pd
import pytest

from ovis.experiments.grid import load_and_expand
from ovis.reporting.reproduction import (
    EXPERIMENTS,
    PAPER,
    block_markers,
    build_document,
    ordering_verdict,
    prepare_grids,
    shrink_grid,
    slope_verdict,
)
from ovis.training.arguments import parse_run_args

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _ours(values: Dict[str, List[float]]) -> pd.DataFrame:
    rows = {e: {"mean": sum(v) / len(v), "std": pd.Series(v).std(ddof=1) if len(v) > 1 else float("nan"),
                "n": len(v)} for e, v in values.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def test_ordering_verdict():
    paper = {"a": 0.1, "b": 0.2, "c": 0.5}  # lower is better: a < b < c
    same = _ours({"a": [0.3, 0.31], "b": [0.4, 0.41], "c": [0.6, 0.62]})
    assert ordering_verdict(paper, same, higher_is_better=False).verdict == "same ordering"
    close = _ours({"a": [0.1, 0.1001], "b": [0.2, 0.2001], "c": [0.5, 0.5001]})
    assert ordering_verdict(paper, close, higher_is_better=False, tolerance=0.1).verdict == "reproduced"
    # b ahead of a by far more than twice the standard error: not reproduced, and the pair is named
    swapped = _ours({"a": [0.5, 0.51], "b": [0.2, 0.21], "c": [0.6, 0.61]})
    c = ordering_verdict(paper, swapped, higher_is_better=False)
    assert c.verdict == "not reproduced" and any("a above b" in d and "separated" in d for d in c.details)
    # the same swap within the seeds' spread: same ordering, with the pair named as not separated
    noisy = _ours({"a": [0.1, 0.5], "b": [0.25, 0.3], "c": [0.6, 0.61]})
    c = ordering_verdict(paper, noisy, higher_is_better=False)
    assert c.verdict == "same ordering" and any("not separated" in d for d in c.details)
    # higher is better flips the direction
    assert ordering_verdict({"a": -89.0, "b": -90.0}, _ours({"a": [-95.0], "b": [-99.0]}), True).verdict == \
        "same ordering"
    assert ordering_verdict({"a": -89.0, "b": -90.0}, _ours({"a": [-99.0], "b": [-95.0]}), True).verdict == \
        "not reproduced"
    assert ordering_verdict(paper, _ours({"a": [0.1]}), False).verdict == "no result yet"


def test_slope_verdict():
    paper = {"p": -0.5, "o": 0.5}
    assert slope_verdict(paper, {"p": -0.45, "o": 0.6}).verdict == "reproduced"
    assert slope_verdict(paper, {"p": -0.9, "o": 0.8}).verdict == "same ordering"
    assert slope_verdict(paper, {"p": 0.4, "o": 0.6}).verdict == "not reproduced"
    assert slope_verdict({"flat": 0.0}, {"flat": 0.1}).verdict == "reproduced"
    assert slope_verdict(paper, {"p": math.nan}).verdict == "no result yet"


@pytest.mark.parametrize("fig", sorted(EXPERIMENTS))
def test_grids_validate_and_shrink(fig, tmp_path):
    path = REPO / "experiments" / f"{EXPERIMENTS[fig]}.json"
    exp, jobs, warnings = load_and_expand(path)
    assert jobs and not warnings
    tiny = shrink_grid(json.loads(path.read_text()), fig)
    (tmp_path / path.name).write_text(json.dumps(tiny))
    texp, tjobs, _ = load_and_expand(tmp_path / path.name)
    assert 0 < len(tjobs) <= 2 and texp.script == exp.script
    if exp.script == "run.py":
        full = [parse_run_args(list(j.argv)) for j in jobs]
        small = [parse_run_args(list(j.argv)) for j in tjobs]
        assert all(a.nsteps <= 40 and a.iw_test <= 10 for a in small)
        # the paper's estimators are there in the full grid (OVIS-MC S=50 left out of Figure 2 for its cost)
        paper = {"fig2": set(PAPER["fig2"]["posterior_error"]) - {"ovis-S50-exclusive"},
                 "fig3": {"vimco-arithmetic", "ovis-gamma1"}, "fig4": set(PAPER["fig4"]["L"])}[fig]
        assert paper <= {a.estimator for a in full}
        assert len({a.seed for a in full}) >= 2  # an ordering comes with its seeds' spread
    with pytest.raises(ValueError, match="figure must be one of"):
        shrink_grid(json.loads(path.read_text()), "fig9")


def _write_run(folder: Path, config: dict, lines: List[dict], status: str = "success") -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "status.json").write_text(json.dumps({"status": status, "error": None if status == "success" else
                                                    "RuntimeError: boom"}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _synthetic_runs(root: Path) -> None:
    r"""Run directories in the formats run.py, asymptotic_variance.py and measure_efficiency.py write."""
    for i, (est, err) in enumerate(PAPER["fig2"]["posterior_error"].items()):
        for seed in (1, 2):
            lines = []
            for step in (50, 100):
                lines.append({"split": "test", "step": step, "metrics": {"gmm/posterior_mse": 2 * err + 0.01 * seed
                                                                          + (100 - step) / 1000}})
                lines.append({"split": "train", "step": step, "metrics": {"grads/snr": 0.1 + i + step / 1000}})
            _write_run(root / EXPERIMENTS["fig2"] / f"{est}-seed{seed}",
                       {"estimator": est, "seed": seed, "iw": 10, "nsteps": 100}, lines)
    _write_run(root / EXPERIMENTS["fig2"] / "failed-run", {"estimator": "reinforce", "seed": 3, "iw": 10,
                                                           "nsteps": 100}, [], status="failed")
    for fig, table, split, metric in (("fig3", PAPER["fig3"]["L"], "train", "eval/L_k"),
                                      ("fig4", {e: v[0] for e, v in PAPER["fig4"]["L"].items()}, "test", "loss/L_k")):
        for est, value in table.items():
            for seed in (1, 2):
                lines = [{"split": split, "step": s, "metrics": {metric: value - 10 + s / 100 + 0.01 * seed}}
                         for s in (500, 1000)]
                _write_run(root / EXPERIMENTS[fig] / f"{est}-seed{seed}",
                           {"estimator": est, "seed": seed, "iw": 5, "nsteps": 1000, "iw_test": 1000}, lines)
    # a run still going: drawn, but left out of the numbers (its last evaluation is not comparable)
    _write_run(root / EXPERIMENTS["fig4"] / "ovis-gamma1-running", {"estimator": "ovis-gamma1", "seed": 3, "iw": 5,
                                                                    "nsteps": 1000, "iw_test": 1000},
               [{"split": "test", "step": 500, "metrics": {"loss/L_k": -50.0}}], status="running")
    rows = []
    for est, slope in (("pathwise-iwae", -0.5), ("ovis-gamma1", 0.5), ("dreg", -0.5), ("ovis-gamma0", 0.4)):
        for K in (3, 13, 55, 234):
            snr = 2.0 * (K / 3) ** slope
            mag = 0.1 * (K / 3) ** (0.0 if est == "ovis-gamma1" else -1.0)
            stats = {"variance": 1.0, "snr": snr, "dsnr": snr, "magnitude": mag}
            rows.append({"estimator": est, "iw": K, **stats, **{f"{k}_b": v for k, v in stats.items()},
                         **{f"{k}_A": v for k, v in stats.items()}, "mc_samples": 200})
    d = root / EXPERIMENTS["fig1"] / "toy"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"script": "asymptotic_variance.py"}))
    (d / "status.json").write_text(json.dumps({"status": "success"}))
    (d / "statistics.json").write_text(json.dumps({"rows": rows}))
    eff = root / "efficiency" / "efficiency-sbm"
    eff.mkdir(parents=True)
    pd.DataFrame([{"estimator": e, "iw": K, "time_per_step_s": 0.001 * K, "cpu_time_per_step_s": 0.001 * K,
                   "saved_MB": 0.1 * K, "cuda_peak_MB": None, "steps": 3}
                  for e in PAPER["efficiency"]["memory_slope"] for K in (5, 50, 500)]).to_csv(eff / "efficiency.csv",
                                                                                            index=False)
    (root / "reproduction-times.json").write_text(json.dumps({"reproduce-fig2-gmm": 600.0}))


def _tables(md: str) -> List[List[str]]:
    r"""The header cells of every Markdown table of the document."""
    heads = []
    lines = md.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            heads.append([c.strip() for c in line.strip("|").split("|")])
    return heads


def _check_document(path: Path) -> str:
    md = path.read_text()
    heads = _tables(md)
    assert len(heads) >= 7
    for h in heads:  # every table sets the paper beside our numbers
        assert any(c.startswith("paper") for c in h), h
        assert any(c.startswith("ours") for c in h), h
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (path.parent / rel).is_file(), rel
    verdicts = re.findall(r"\*\*Verdict: ([a-z ]+)\.\*\*", md)
    assert len(verdicts) == 5
    assert set(verdicts) <= {"reproduced", "same ordering", "not reproduced", "no result yet"}
    return md


def test_document_from_run_directories(tmp_path):
    root = tmp_path / "runs"
    _synthetic_runs(root)
    path = build_document(root, tmp_path / "docs", ["ovis"])
    md = _check_document(path)
    assert len(re.findall(r"!\[", md)) == 5
    # numbers made in the paper's order: every verdict follows from them
    assert "**Verdict: same ordering.**" in md.split("## Figure 2")[1].split("## Figure 3")[0]
    fig1 = md.split("## Figure 1")[1].split("## Figure 2")[0]
    assert "**Verdict: reproduced.**" in fig1 or "**Verdict: same ordering.**" in fig1
    assert "| pathwise-iwae | 3 | 3 | 1.25 | 2 |" in fig1
    fig4 = md.split("## Figure 4")[1].split("## Efficiency")[0]
    assert "**Verdict: reproduced.**" in fig4 and "-50" not in fig4.split("![")[0] and "1 running" in fig4
    # the efficiency table is linear for every estimator: VIMCO's quadratic claim is not reproduced
    assert "**Verdict: not reproduced.**" in md.split("## Efficiency")[1]
    # the failed run is reported with its reason, and the wall time is stated
    assert "1 failed" in md and "RuntimeError: boom" in md and "10 min" in md


def test_document_without_runs_says_so(tmp_path):
    path = build_document(tmp_path / "nothing", tmp_path / "docs", ["ovis"])
    md = _check_document(path)
    assert md.count("**Verdict: no result yet.**") == 5


def test_document_keeps_the_parts_it_does_not_rewrite(tmp_path):
    root = tmp_path / "runs"
    _synthetic_runs(root)
    path = build_document(root, tmp_path / "docs", ["ovis"])
    begin, end = block_markers("ovis")
    part = path.read_text().split(begin)[1].split(end)[0]
    assert "**Verdict: reproduced.**" in part
    # no paper chosen: the runs are not read (there are none here) and the OVIS part is kept verbatim
    again = build_document(tmp_path / "nothing", tmp_path / "docs", [])
    assert again.read_text().split(begin)[1].split(end)[0] == part
    # rewriting the part from an empty root replaces it, and only it
    third = build_document(tmp_path / "nothing", tmp_path / "docs", ["ovis"]).read_text()
    assert third.count(begin) == 1 and third.count("**Verdict: no result yet.**") == 5
    with pytest.raises(ValueError, match="unknown paper"):
        build_document(root, tmp_path / "docs", ["nope"])


def test_prepare_grids_tiny_writes_shrunk_copies(tmp_path):
    files = prepare_grids(REPO, tmp_path, "tiny")
    assert set(files) == set(EXPERIMENTS)
    for fig, f in files.items():
        assert f.parent == tmp_path / "grids" and f.stem == EXPERIMENTS[fig]
        assert len(json.loads(f.read_text())["args"]) <= 2
    assert prepare_grids(REPO, tmp_path, "full")["fig2"] == REPO / "experiments" / f"{EXPERIMENTS['fig2']}.json"


def test_reproduce_rejects_a_missing_data_root(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "reproduce.py"), "--root", str(tmp_path / "r"), "--data_root",
                        str(tmp_path / "missing"), "--output", str(tmp_path / "d")], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--data_root" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_make_reproduce_chain_on_a_tiny_grid_and_resume(tmp_path):
    r"""The whole chain (manager, run.py, asymptotic_variance.py, measure_efficiency.py, the document)
    on the tiny grids; a second call continues: nothing is run again."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "reproduce.py"), "--scale", "tiny", "--root", str(tmp_path / "runs"),
           "--data_root", str(DATA), "--output", str(tmp_path / "docs"), "--papers", "ovis"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    md = _check_document(tmp_path / "docs" / "reproduction.md")
    assert md.count("**Verdict: no result yet.**") == 0, md
    runs = sorted(p for p in (tmp_path / "runs").glob("reproduce-*/*") if (p / "status.json").exists())
    assert len(runs) == 8
    before = {p: (p / "status.json").read_text() for p in runs}
    times = json.loads((tmp_path / "runs" / "reproduction-times.json").read_text())
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "continuing" in r.stdout and "exists, kept" in r.stdout
    assert {p: (p / "status.json").read_text() for p in runs} == before
    again = json.loads((tmp_path / "runs" / "reproduction-times.json").read_text())
    assert all(again[k] >= times[k] for k in times)
