"""The report scripts on REAL runs: a tiny grid run once per test session by manager.py with
run.py (GMM, 2 estimators x 2 K x 2 seeds, tagged iwbound) and with asymptotic_variance.py (slow)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()

pytestmark = pytest.mark.slow

RUN_GRID = {
    "description": "tiny GMM grid for the report tests",
    "args": ["--estimator ovis-gamma1 --id iwbound", "--estimator vimco-arithmetic --id iwbound"],
    "global": "--silent --mini --bs 100 --nsteps 30 --eval_freq 1 --iw_test 10 --iw_valid 10 --max_eval 50 "
              "--no_tensorboard",
    "parameters": {"iw": [2, 4], "seed": [1, 2], "dataset": ["gmm"]},
}
AV_GRID = {
    "description": "tiny Figure 1 grid for the report tests",
    "script": "asymptotic_variance.py",
    "args": ["--estimator pathwise-iwae", "--estimator ovis-gamma0"],
    "global": "--silent --deterministic",
    "parameters": {"mc_samples": [200.0], "samples_per_batch": [100], "iw_steps": [3], "iw_min": [3],
                   "iw_max": [30.0], "npoints": [8], "D": [3], "seed": [1]},
}


def _manager(grid_file: Path, root: Path) -> None:
    cmd = [sys.executable, str(REPO / "manager.py"), "--exp", str(grid_file), "--root", str(root),
           "--data_root", str(DATA), "--processes", "2", "--no_progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    root = base / "runs"
    for name, grid in (("tiny-gmm", RUN_GRID), ("tiny-av", AV_GRID)):
        f = base / f"{name}.json"
        f.write_text(json.dumps(grid))
        _manager(f, root)
    return base, root


def _lines(d: Path):
    out = []
    for line in (d / "metrics.jsonl").read_text().splitlines():
        out.append(json.loads(line))
    return out


def test_report_on_real_runs(real_runs, tmp_path):
    from ovis.reporting.report import main as report

    base, root = real_runs
    run_dirs = [d for d in (root / "tiny-gmm").iterdir() if (d / "config.json").exists()]
    assert len(run_dirs) == 8
    assert report(["--exp", "tiny-gmm", "--root", str(root), "--output", str(tmp_path), "--keys", "estimator,iw",
                   "--metrics", "train:loss/L_k", "--pivot_metrics", "max:test:loss/L_k,last:train:loss/ess"]) == 0
    out = tmp_path / "tiny-gmm"
    table = pd.read_csv(out / "pivot-max-test-loss_L_k.csv")
    groups = defaultdict(list)
    for d in run_dirs:
        cfg = json.loads((d / "config.json").read_text())
        vals = [ln["metrics"]["loss/L_k"] for ln in _lines(d) if ln["split"] == "test"]
        groups[(f"estimator={cfg['estimator']}", str(cfg["iw"]))].append(max(vals))
    assert len(table) == len(groups) == 4
    for (label, iw), vals in groups.items():
        row = table[(table["label"] == label) & (table["iw"].astype(str) == iw)]
        assert row["mean"].item() == pytest.approx(sum(vals) / len(vals), rel=1e-12)
        assert row["n"].item() == 2
    curves = pd.read_csv(out / "curves-train-loss_L_k.csv")
    assert curves["step"].nunique() >= 3 and (curves["n"] == 2).all()
    # the grid with a third seed: its 4 jobs are listed as missing
    grid3 = dict(RUN_GRID, parameters=dict(RUN_GRID["parameters"], seed=[1, 2, 3]))
    (tmp_path / "tiny-gmm.json").write_text(json.dumps(grid3))
    assert report(["--exp", "tiny-gmm", "--root", str(root), "--output", str(tmp_path / "g"), "--keys", "estimator,iw",
                   "--experiment_file", str(tmp_path / "tiny-gmm.json")]) == 0
    g = pd.read_csv(tmp_path / "g" / "tiny-gmm" / "grid.csv")
    assert len(g) == 12 and (g["status"] == "success").sum() == 8
    assert sorted(g.loc[g["status"] == "missing", "command"].str.contains("--seed 3")) == [True] * 4
    from test_report import _marker, chromium_dom

    dom = chromium_dom(out / "index.html", screenshot=out / "screenshot.png")
    assert int(_marker(dom, "data-images-ok")) == int(_marker(dom, "data-images-total")) >= 3


def test_damaged_real_runs_are_reported(real_runs, tmp_path):
    from ovis.reporting.report import main as report

    _, root = real_runs
    copy = tmp_path / "runs" / "tiny-gmm"
    shutil.copytree(root / "tiny-gmm", copy, ignore=shutil.ignore_patterns("*.pt", ".lib_snapshot"))
    dirs = sorted(d for d in copy.iterdir() if (d / "config.json").exists())
    with open(dirs[0] / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "st')  # killed mid-write
    (dirs[1] / "status.json").unlink()  # never finished
    lines = (dirs[2] / "metrics.jsonl").read_text().splitlines()
    (dirs[2] / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    assert report(["--exp", "tiny-gmm", "--root", str(tmp_path / "runs"), "--output", str(tmp_path / "o"),
                   "--keys", "estimator,iw"]) == 0
    runs = pd.read_csv(tmp_path / "o" / "tiny-gmm" / "runs.csv").set_index("run_id")
    assert runs.loc[dirs[0].name, "status"] == "success"
    assert "truncated last line" in runs.loc[dirs[0].name, "problems"]
    assert runs.loc[dirs[1].name, "status"] == "unfinished"
    assert runs.loc[dirs[2].name, "status"] == "corrupt"


def test_figure3_on_real_runs(real_runs, tmp_path):
    from ovis.reporting.figure3 import main as fig3

    base, root = real_runs
    assert fig3(["--figure", "left", "--exp", "tiny-gmm", "--root", str(root), "--output", str(tmp_path),
                 "--experiment_file", str(base / "tiny-gmm.json")]) == 0
    out = tmp_path / "tiny-gmm-figure3-left"
    summary = pd.read_csv(out / "figure3-left-summary.csv")
    assert set(summary["estimator"]) == {"ovis-gamma1", "vimco-arithmetic"} and (summary["runs"] == 2).all()
    assert pd.read_csv(out / "missing.csv").empty
    assert (out / "figure3-left.png").stat().st_size > 5000
    # the right panel has no iwrbound run: an empty page that says so, not a crash
    assert fig3(["--figure", "right", "--exp", "tiny-gmm", "--root", str(root), "--output", str(tmp_path),
                 "--experiment_file", str(base / "tiny-gmm.json")]) == 0
    assert "no run tagged" in (tmp_path / "tiny-gmm-figure3-right" / "index.html").read_text()


def test_asymptotic_report_on_real_runs(real_runs, tmp_path):
    from ovis.reporting.asymptotic import main as report

    _, root = real_runs
    dirs = [d for d in (root / "tiny-av").iterdir() if (d / "config.json").exists()]
    assert len(dirs) == 2
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["job_id"] and json.loads((d / "status.json").read_text())["status"] == "success"
    assert report(["--exp", "tiny-av", "--root", str(root), "--output", str(tmp_path), "--params", "all"]) == 0
    slopes = pd.read_csv(tmp_path / "tiny-av" / "slopes.csv").set_index("estimator")
    assert set(slopes.index) == {"pathwise-iwae", "ovis-gamma0"}
    assert slopes.loc["ovis-gamma0", "slope_snr"] > 0.2
    assert (tmp_path / "tiny-av" / "figure1.png").exists()
    from test_report import _marker, chromium_dom

    dom = chromium_dom(tmp_path / "tiny-av" / "index.html", screenshot=tmp_path / "tiny-av" / "screenshot.png")
    assert int(_marker(dom, "data-images-ok")) == int(_marker(dom, "data-images-total")) == 2
