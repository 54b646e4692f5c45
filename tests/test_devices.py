r"""The GPU path, tested on the CPU: GPU discovery (NVML / ``torch.cuda`` faked), the manager's
worker plan and its no-GPU warning, ``run.py --device cuda`` without CUDA, data to the device
(pinned, ``non_blocking``), evaluation chunks sized by free memory.

The device-propagation tests (the ``meta`` device, float64) are in ``test_device_propagation.py``;
``@pytest.mark.gpu`` tests run only where CUDA is (``benchmarks/gpu_check.sh``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import List

import pytest
import torch
from test_experiments_helpers import PY, REPO, env_with_counts, make_src, manager_cmd, starts

from ovis.experiments import devices
from ovis.experiments.devices import GPUInfo, plan_workers, query_gpus
from ovis.experiments.queue import JobQueue

#: a stand-in ``pynvml`` module: the GPUs are ``[[utilisation %, used bytes, total bytes], ...]``
#: read from ``FAKE_NVML_GPUS``
FAKE_PYNVML = r'''
import json, os, types
_GPUS = json.loads(os.environ["FAKE_NVML_GPUS"])
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return len(_GPUS)
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetUtilizationRates(h): return types.SimpleNamespace(gpu=_GPUS[h][0], memory=0)
def nvmlDeviceGetMemoryInfo(h): return types.SimpleNamespace(used=_GPUS[h][1], total=_GPUS[h][2], free=_GPUS[h][2] - _GPUS[h][1])
'''

GB = 2 ** 30


def _no_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    r"""A PATH without ``nvidia-smi`` (this machine has none; a GPU machine running the tests has)."""
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)


def _fake_nvml(monkeypatch: pytest.MonkeyPatch, gpus: List[List[float]]) -> None:
    monkeypatch.setenv("FAKE_NVML_GPUS", json.dumps(gpus))
    mod = types.ModuleType("pynvml")
    exec(FAKE_PYNVML, mod.__dict__)  # noqa: S102 - the test's own constant, not user data
    monkeypatch.setitem(sys.modules, "pynvml", mod)


def test_nvml_discovery_and_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_nvidia_smi(monkeypatch, tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_nvml(monkeypatch, [[10, 1 * GB, 80 * GB], [90, 1 * GB, 80 * GB], [5, 70 * GB, 80 * GB], [0, 0, 80 * GB]])
    found = query_gpus()
    assert [(g.index, g.source) for g in found] == [(str(i), "nvml") for i in range(4)]
    assert found[1].load == pytest.approx(0.9) and found[2].memory == pytest.approx(70 / 80)
    assert devices.discover_gpus() == ["0", "3"]  # 1 too loaded, 2 too full
    assert devices.discover_gpus(max_load=0.95, max_memory=0.95) == ["0", "1", "2", "3"]
    assert devices.discover_gpus(max_gpus=1) == ["0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert devices.discover_gpus() == ["3"]


def test_torch_cuda_fallback_with_faked_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r"""No nvidia-smi, no pynvml: ``torch.cuda`` (device_count, mem_get_info) answers."""
    _no_nvidia_smi(monkeypatch, tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    monkeypatch.setattr(devices, "nvidia_driver_loaded", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    free = {0: 79 * GB, 1: 10 * GB, 2: 60 * GB}  # GPU 1 is 7/8 full
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 80 * GB))
    # the child process of the real query would not see these fakes: query in this process
    monkeypatch.setattr(devices, "torch_rows", devices.torch_gpu_rows)
    found = query_gpus()
    assert [(g.index, g.source) for g in found] == [("0", "torch"), ("1", "torch"), ("2", "torch")]
    plan = plan_workers(2, max_gpus=2)
    assert plan.gpus == ["0", "2"] and plan.slots == ["0", "0", "2", "2"] and plan.warning is None
    assert plan.describe() == "GPUs 0, 2: 4 worker(s), 2 per GPU"


def test_torch_child_query_without_cuda_is_empty() -> None:
    r"""The real child-process query on this CPU machine: no GPU, no error."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the child reports its GPUs (checked by gpu_check.sh)")
    assert devices._torch_rows_in_child() == []


def test_plan_two_per_gpu_and_limits() -> None:
    gpus = [GPUInfo("0", 0.1, 0.1, "nvml"), GPUInfo("1", 0.2, 0.3, "nvml"), GPUInfo("2", 0.0, 0.0, "nvml")]
    plan = plan_workers(2, max_gpus=2, gpus=gpus)
    assert plan.slots == ["0", "0", "1", "1"] and plan.threads is None and plan.warning is None
    assert plan_workers(2, max_gpus=None, gpus=gpus).slots == ["0", "0", "1", "1", "2", "2"]
    # --max_load / --max_memory honoured: GPU 1 above 0.15 load, GPU 0 above 0.05 memory
    assert plan_workers(2, max_gpus=2, max_load=0.15, gpus=gpus).gpus == ["0", "2"]
    assert plan_workers(1, max_gpus=2, max_memory=0.05, gpus=gpus).slots == ["2"]
    # --max_gpus 0: the CPU, asked for, no warning
    cpu = plan_workers(3, max_gpus=0, gpus=gpus, cpu_count=16)
    assert cpu.slots == ["cpu"] * 3 and cpu.threads == 5 and cpu.warning is None


def test_plan_without_gpu_warns_once_and_states_the_cpu_plan() -> None:
    plan = plan_workers(2, max_gpus=2, gpus=[], cpu_count=16)
    assert plan.slots == ["cpu", "cpu"] and plan.threads == 8
    assert plan.warning is not None and "\n" not in plan.warning
    assert "--max_gpus 2" in plan.warning and "no GPU found" in plan.warning
    assert "2 worker(s) with 8 thread(s) each" in plan.warning
    busy = plan_workers(2, max_gpus=2, gpus=[GPUInfo("0", 0.9, 0.1, "nvml")], cpu_count=4)
    assert busy.slots == ["cpu", "cpu"] and "GPU 0: load 90%" in (busy.warning or "")
    # GPUs not asked for (no --max_gpus): no warning, the CPU plan only
    quiet = plan_workers(2, gpus=[], cpu_count=4)
    assert quiet.warning is None and quiet.describe() == "cpu: 2 worker(s), 2 thread(s) each"
    with pytest.raises(ValueError, match="--processes"):
        plan_workers(0, gpus=[])
    with pytest.raises(ValueError, match="--max_gpus"):
        plan_workers(1, max_gpus=-1, gpus=[])


def _fake_nvml_env(tmp_path: Path, env: dict, gpus: List[List[float]]) -> dict:
    mod_dir = tmp_path / "fake_nvml"
    mod_dir.mkdir(exist_ok=True)
    (mod_dir / "pynvml.py").write_text(FAKE_PYNVML)
    env["FAKE_NVML_GPUS"] = json.dumps(gpus)
    env["PYTHONPATH"] = f"{mod_dir}{os.pathsep}{env['PYTHONPATH']}"
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not (Path(p) / "nvidia-smi").exists())
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def test_manager_two_processes_two_gpus_through_nvml(tmp_path: Path) -> None:
    r"""``manager.py --processes 2 --max_gpus 2`` with three NVML GPUs of which GPU 1 is busy:
    4 workers, two on GPU 0 and two on GPU 2, each job's ``CUDA_VISIBLE_DEVICES`` its GPU."""
    src = make_src(tmp_path, "gpu", {"args": ["--name a", "--name b"], "parameters": {"sleep": [0.6, 0.7]}})
    env = _fake_nvml_env(tmp_path, env_with_counts(tmp_path / "c"),
                         [[0, 0, 80 * GB], [95, 0, 80 * GB], [0, 0, 80 * GB]])
    r = subprocess.run(manager_cmd(src, "gpu", tmp_path / "runs", "--processes", "2", "--max_gpus", "2"),
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "devices: 0, 2; 4 worker(s) (GPUs 0, 2: 4 worker(s), 2 per GPU)" in r.stderr
    assert "asked for GPUs" not in r.stderr
    workers = sorted(p.name for p in (tmp_path / "runs" / "gpu" / ".logs").glob("worker-*.log"))
    assert workers == ["worker-0.log", "worker-1.log", "worker-2.log", "worker-3.log"]
    s = starts(tmp_path / "c")
    assert len(s) == 4 and {x[3] for x in s} <= {"0", "2"}
    jobs = JobQueue(tmp_path / "runs" / "gpu").all_jobs()
    by_id = {x[0]: x[3] for x in s}
    assert all(d["device"] == by_id[d["job_id"]] for d in jobs)  # the queue records the GPU the job saw
    assert {d["worker"] for d in jobs} <= {"w0@0", "w1@0", "w2@2", "w3@2"}


def test_manager_without_gpu_warns_and_runs_on_the_cpu(tmp_path: Path) -> None:
    src = make_src(tmp_path, "nogpu", {"args": ["--name a"], "parameters": {"sleep": [0.2]}})
    env = _fake_nvml_env(tmp_path, env_with_counts(tmp_path / "c"), [])
    r = subprocess.run(manager_cmd(src, "nogpu", tmp_path / "runs", "--processes", "2", "--max_gpus", "2"),
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "asked for GPUs" in line]
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert len(warnings) == 1, r.stderr
    assert "no GPU found" in warnings[0] and f"2 worker(s) with {threads} thread(s) each" in warnings[0]
    assert f"devices: cpu; 2 worker(s) (cpu: 2 worker(s), {threads} thread(s) each)" in r.stderr
    assert [x[3:] for x in starts(tmp_path / "c")] == [[]]  # CUDA_VISIBLE_DEVICES empty on the CPU
    bad = subprocess.run(manager_cmd(src, "nogpu", tmp_path / "runs2", "--max_gpus", "-1"),
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--max_gpus must be >= 0" in bad.stderr
    assert not (tmp_path / "runs2").exists()


# ---------------------------------------------------------------------------------- run.py --device
def test_run_device_cuda_without_cuda_is_a_one_line_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from ovis.training.arguments import parse_run_args
    from ovis.training.run import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = tmp_path / "runs"
    argv = ["--dataset", "gmm", "--estimator", "reinforce", "--root", str(root), "--exp", "e"]
    for spec in ("cuda", "cuda:1"):
        assert main(argv + ["--device", spec]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("run.py: error: argument --device: " + spec)
        assert "CUDA is not available" in err[0] and "--device cpu" in err[0]
    assert not root.exists()  # nothing written
    # the grid validator (parse_run_args) still accepts it: grids are queued from machines without GPU
    assert parse_run_args(argv + ["--device", "cuda"]).device == "cuda"
    # a GPU index beyond those visible
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main(argv + ["--device", "cuda:2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only 2 CUDA device(s) are visible" in err[0] and not root.exists()


def test_run_device_cuda_subprocess_writes_nothing(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([PY, str(REPO / "run.py"), "--dataset", "gmm", "--estimator", "reinforce", "--device",
                        "cuda", "--root", str(tmp_path / "runs")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "argument --device: cuda requested but CUDA is not available" in r.stderr
    assert not (tmp_path / "runs").exists() and r.stdout == ""


# ---------------------------------------------------------------------------------- data to the device
def test_batches_go_to_cuda_pinned_and_non_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    from ovis.training.evaluation import batch_to_device

    calls: List[tuple] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append(("pin",)) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(("to", a, k)) or self)
    x = torch.zeros(2, 3)
    batch_to_device(x, torch.device("cuda", 1))
    assert calls == [("pin",), ("to", (torch.device("cuda", 1),), {"non_blocking": True})]
    calls.clear()
    batch_to_device(x, torch.device("cpu"))
    assert calls == [("to", (torch.device("cpu"),), {})]  # no pinning off CUDA


def test_memory_chunk_rows() -> None:
    from ovis.training.evaluation import memory_chunk_rows

    assert memory_chunk_rows(10000, None, 123) == 10000  # the CPU: the cap as given
    assert memory_chunk_rows(10000, 4 * GB, 100_000, fraction=0.25) == 10000  # plenty: the cap
    assert memory_chunk_rows(10000, 4 * 10 ** 8, 100_000, fraction=0.25) == 1000  # 1e8 bytes / 1e5
    assert memory_chunk_rows(10000, 10, 100_000) == 1  # never 0
    with pytest.raises(ValueError):
        memory_chunk_rows(0, None, 1)


def test_evaluation_chunks_sized_by_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    r"""With the device's free memory faked (64 kB, 1 kB per row, a quarter usable: 16 rows), a batch
    of 2 points evaluates 8 particles per pass; without (the CPU), all 20 at once."""
    from ovis.models import build_model
    from ovis.training import evaluation
    from ovis.training.arguments import parse_run_args

    class Data:
        name, x_shape, train_mean, ground_truth = "binmnist", torch.Size((1, 4, 4)), torch.full((1, 4, 4), 0.3), None

    net = build_model(parse_run_args(["--model", "sbm", "--N", "3", "--nlayers", "0"]), Data())
    data = torch.utils.data.TensorDataset(torch.bernoulli(torch.full((2, 1, 4, 4), 0.3)))
    seen: List[int] = []
    real = evaluation.model_log_weights
    monkeypatch.setattr(evaluation, "model_log_weights", lambda m, x, k, tau=None: seen.append(k) or real(m, x, k, tau))
    evaluation.evaluate_bound(net, data, torch.arange(2), 2, 20, 10000, torch.device("cpu"))
    assert seen == [20]
    seen.clear()
    monkeypatch.setattr(evaluation, "free_device_memory", lambda device: 64_000)
    probes: List[int] = []
    monkeypatch.setattr(evaluation, "measure_bytes_per_row",
                        lambda fn, rows, device: probes.append(rows) or 1000)
    evaluation.evaluate_bound(net, data, torch.arange(2), 2, 20, 10000, torch.device("cpu"))
    assert probes == [2] and seen == [8, 8, 4]


def test_training_batches_go_through_batch_to_device(tmp_path: Path, data_root: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ovis.training.run as run

    devices_seen: List[str] = []
    real = run.batch_to_device

    def spy(x: torch.Tensor, device: torch.device) -> torch.Tensor:
        devices_seen.append(str(device))
        return real(x, device)

    monkeypatch.setattr(run, "batch_to_device", spy)
    argv = ["--dataset", "mnist", "--mini", "--model", "vae", "--N", "4", "--hdim", "16", "--nlayers", "1",
            "--bs", "20", "--iw_test", "5", "--iw_valid", "5", "--max_eval", "20", "--silent", "--no_tensorboard",
            "--no_samples", "--grad_samples", "0", "--mc_au_analysis", "0", "--nsteps", "3", "--device", "cpu",
            "--root", str(tmp_path / "runs"), "--data_root", str(data_root), "--exp", "t"]
    assert run.main(argv) == 0
    assert len(devices_seen) >= 3 and set(devices_seen) == {"cpu"}  # one per training step at least
