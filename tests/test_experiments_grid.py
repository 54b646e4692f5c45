"""Experiment files: validation (file + key + reason, nothing queued), grid expansion, job ids,
and every experiment file of experiments/ (paper grids, CPU variants, demo) expands and validates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovis.experiments.grid import (
    ExperimentError,
    expand_grid,
    format_value,
    job_id_of,
    load_and_expand,
    load_experiment,
    normalise_argv,
)
from ovis.training.arguments import parse_run_args

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
PAPER = ["sigmoid-belief-network", "gaussian-mixture-model", "gaussian-vae", "gaussian-toy",
         "asymptotic-variance", "asymptotic-variance-mini", "asymptotic-variance-extended",
         "budget-analysis", "budget-analysis-sbm", "mini-vae"]


def _write(tmp_path: Path, obj, name: str = "e.json") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _base(**kw):
    d = {"description": "t", "args": ["--estimator ovis-gamma1", "--estimator vimco-arithmetic --id tag"],
         "global": "--silent --nsteps 10", "parameters": {"iw": [5, 2], "seed": [1, 2, 3]}}
    d.update(kw)
    return d


def test_expansion_is_args_times_parameters(tmp_path: Path) -> None:
    exp, jobs, warnings = load_and_expand(_write(tmp_path, _base()))
    assert exp.script == "run.py" and warnings == []
    assert len(jobs) == 2 * 2 * 3
    assert list(jobs[0].argv) == ["--silent", "--nsteps", "10", "--estimator", "ovis-gamma1", "--iw", "5", "--seed", "1"]
    assert list(jobs[-1].argv) == ["--silent", "--nsteps", "10", "--estimator", "vimco-arithmetic", "--id", "tag",
                                   "--iw", "2", "--seed", "3"]
    assert len({j.job_id for j in jobs}) == 12
    for j in jobs:  # each job is what run.py parses
        a = parse_run_args(list(j.argv))
        assert a.iw == j.params["iw"] and a.seed == j.params["seed"] and a.nsteps == 10


def test_booleans_and_number_formats(tmp_path: Path) -> None:
    text = ('{"description": "", "args": [""], "global": "", "parameters": {"learn_prior": [true, false], '
            '"nsteps": [1e4], "lr": [0.0003], "grad_epsilon": [1e-09], "bs": [24], "grad_key": ["A,b"]}}')
    exp, jobs, _ = load_and_expand(_write(tmp_path, text))
    assert [list(j.argv) for j in jobs] == [
        ["--learn_prior", "--nsteps", "10000.0", "--lr", "0.0003", "--grad_epsilon", "1e-09", "--bs", "24",
         "--grad_key", "A,b"],
        ["--nsteps", "10000.0", "--lr", "0.0003", "--grad_epsilon", "1e-09", "--bs", "24", "--grad_key", "A,b"]]
    a = parse_run_args(list(jobs[0].argv))
    assert a.learn_prior is True and a.nsteps == 10000 and a.lr == 0.0003 and a.grad_epsilon == 1e-9
    assert parse_run_args(list(jobs[1].argv)).learn_prior is False
    assert format_value(1e-15) == "1e-15" and float(format_value(0.1 + 0.2)) == 0.1 + 0.2
    with pytest.raises(TypeError):
        format_value(True)


def test_job_ids_stable_and_normalised() -> None:
    a = ["--iw", "5", "--estimator", "x", "--silent"]
    b = ["--silent", "--estimator", "x", "--iw", "5"]
    assert job_id_of("run.py", a) == job_id_of("run.py", b)
    # the documented formula (ids name queued jobs: they must not change between versions)
    import hashlib

    payload = '{"script":"run.py","argv":["--estimator","x","--iw","5","--silent"]}'
    assert job_id_of("run.py", a) == hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert job_id_of("run.py", ["--iw=5"]) == job_id_of("run.py", ["--iw", "5"])
    assert job_id_of("run.py", a) != job_id_of("other.py", a)
    assert job_id_of("run.py", ["--iw", "5"]) != job_id_of("run.py", ["--iw", "6"])
    # a flag given twice keeps its order (the last value wins in argparse)
    assert normalise_argv(["--iw", "5", "--a", "1", "--iw", "6"]) == ["--a", "1", "--iw", "5", "--iw", "6"]
    assert job_id_of("run.py", ["--iw", "5", "--iw", "6"]) != job_id_of("run.py", ["--iw", "6", "--iw", "5"])


def test_duplicate_jobs_are_one(tmp_path: Path) -> None:
    _, jobs, _ = load_and_expand(_write(tmp_path, _base(args=["--estimator ovis-gamma1", "--estimator  ovis-gamma1"])))
    assert len(jobs) == 6


@pytest.mark.parametrize("obj,key,reason", [
    ('{"description": "x", "args": [', "<json>", "bad JSON"),
    ("[1, 2]", "<root>", "expected a JSON object"),
    (_base(extra=1), "extra", "unknown key"),
    ({k: v for k, v in _base().items() if k != "global"}, "global", "missing required key"),
    (_base(args=[]), "args", "empty"),
    (_base(args="--estimator x"), "args", "expected a list"),
    (_base(args=[3]), "args[0]", "expected a string"),
    (_base(parameters={"iw": []}), "parameters.iw", "empty"),
    (_base(parameters={"iw": 5}), "parameters.iw", "expected a list"),
    (_base(parameters={"iw": [[5]]}), "parameters.iw", "strings, numbers or booleans"),
    (_base(parameters={"iw": [None]}), "parameters.iw", "strings, numbers or booleans"),
    (_base(parameters={"--iw": [5]}), "parameters.--iw", "flag name"),
    (_base(parameters={"root": ["/tmp"]}), "parameters.root", "set by the manager"),
    (_base(**{"global": "--exp other"}), "global", "set by the manager"),
    (_base(script="/abs/run.py"), "script", "relative path"),
    (_base(description=3), "description", "expected a string"),
    (_base(**{"global": "--silent 'unterminated"}), "global", "cannot split"),
    ('{"description": "", "args": [""], "global": "", "parameters": {"lr": [NaN]}}', "<json>", "NaN"),
    # jobs run.py rejects: the parser's reason, blamed on the responsible key
    (_base(parameters={"iw": [5, -3]}), "parameters.iw", "expected an integer >= 1"),
    (_base(parameters={"nsteps": [1.5]}), "parameters.nsteps", "whole number"),
    (_base(parameters={"optimizer": ["adagrad"]}), "parameters.optimizer", "invalid choice"),
    (_base(parameters={"no_such_flag": [1]}), "parameters.no_such_flag", "unrecognized arguments"),
    (_base(args=["--estimator ovis-gamma1", "--estimator not-an-estimator"]), "args[1]", "--estimator"),
    (_base(**{"global": "--silent --warmup_mode cubic"}), "global", "invalid choice"),
])
def test_malformed_files_name_file_key_reason(tmp_path: Path, obj, key, reason) -> None:
    path = _write(tmp_path, obj)
    with pytest.raises(ExperimentError) as ei:
        load_and_expand(path)
    e = ei.value
    assert e.file == str(path) or e.file == str(path.resolve())
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)
    assert str(path.name) in str(e) and key in str(e)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="file not found"):
        load_experiment(tmp_path / "nope.json")


def test_unvalidated_script_gives_a_warning(tmp_path: Path) -> None:
    _, jobs, warnings = load_and_expand(_write(tmp_path, _base(script="other.py", parameters={"anything": [-3]})))
    assert len(jobs) == 2 and len(warnings) == 1 and "not validated" in warnings[0]


def test_asymptotic_variance_jobs_are_validated(tmp_path: Path) -> None:
    pytest.importorskip("ovis.analysis.asymptotic")  # written by another developer
    d = {"description": "", "script": "asymptotic_variance.py", "args": ["--estimator ovis-gamma0"],
         "global": "--silent", "parameters": {"iw_max": [100.0], "npoints": [-1]}}
    with pytest.raises(ExperimentError) as ei:
        load_and_expand(_write(tmp_path, d))
    assert ei.value.key == "parameters.npoints"


@pytest.mark.parametrize("name", PAPER)
def test_paper_files_are_provided_and_validate(name: str) -> None:
    exp, jobs, warnings = load_and_expand(EXPERIMENTS / f"{name}.json")
    assert jobs
    spec = REPO.parent / "shared" / "spec" / "paper-experiments" / f"{name}.json"
    if spec.exists():  # the paper's files are provided as they are
        assert json.loads(spec.read_text()) == json.loads((EXPERIMENTS / f"{name}.json").read_text())
    cpu = EXPERIMENTS / f"{name}-cpu.json"
    cexp, cjobs, _ = load_and_expand(cpu)
    assert cexp.script == exp.script
    # the CPU variant keeps the estimator list (asymptotic-variance-cpu adds the paper's Figure 1 curves
    # OVIS gamma=1, STL and DReG, which the original grid lacks)
    assert {a.split()[1] for a in cexp.args} >= {a.split()[1] for a in exp.args}
    assert 0 < len(cjobs) <= 30
    if exp.script == "run.py":
        for j in cjobs:
            a = parse_run_args(list(j.argv))
            assert a.mini or a.dataset in ("gmm", "gaussian-toy")
            assert a.dataset != "omniglot"  # not available offline
            steps = a.nsteps if a.epochs == 0 else None
            assert steps is not None and steps <= 1000 and a.iw_test <= 1000 and a.grad_samples <= 50
            assert a.warmup <= steps


def test_demo_file() -> None:
    exp, jobs, warnings = load_and_expand(EXPERIMENTS / "demo.json")
    assert warnings == [] and len(jobs) == 10
    args = [parse_run_args(list(j.argv)) for j in jobs]
    assert {a.estimator for a in args} == {"reinforce", "vimco-arithmetic", "wake-wake", "ovis-gamma1",
                                           "ovis-S1-exclusive"}
    assert len({a.iw for a in args}) == 2 and {a.dataset for a in args} == {"gmm"}


def test_expand_grid_keeps_file_order(tmp_path: Path) -> None:
    exp = load_experiment(_write(tmp_path, _base(parameters={"seed": [3, 1, 2]})))
    assert [j.params["seed"] for j in expand_grid(exp)][:3] == [3, 1, 2]
