r"""The GPU path on a real GPU (``@pytest.mark.gpu``; skipped without CUDA).  Run by
``benchmarks/gpu_check.sh``.  Their CPU counterparts (meta device, float64, faked discovery) are
``test_device_propagation.py`` and ``test_devices.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_device_propagation import MODELS, build, grads, step, tensors

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run gpu_check.sh on one)")]

CUDA = torch.device("cuda")


@pytest.mark.parametrize("model_name", list(MODELS))
def test_estimator_step_on_cuda(model_name: str) -> None:
    r"""Every estimator family on every built-in model: one step and backward on the GPU, finite,
    everything on the GPU."""
    for eid in MODELS[model_name][2]:
        model, est, x = build(model_name, eid)
        model.to(CUDA), est.to(CUDA)
        loss, diagnostics = step(model, est, x.to(CUDA))
        assert loss.device.type == "cuda" and torch.isfinite(loss), (model_name, eid)
        g = grads(model, est)
        assert g and all(t.device.type == "cuda" and torch.isfinite(t).all() for t in g), (model_name, eid)
        assert all(t.device.type == "cuda" for t in tensors(diagnostics)), (model_name, eid)


def test_batch_to_device_pins_and_copies() -> None:
    from ovis.training.evaluation import batch_to_device

    x = torch.rand(32, 784)
    y = batch_to_device(x, CUDA)
    torch.cuda.synchronize()
    assert y.device.type == "cuda" and torch.equal(y.cpu(), x)


def test_evaluation_chunks_fit_the_free_memory() -> None:
    from ovis.training import evaluation

    model, _, x = build("sbm", "reinforce")
    model.to(CUDA)
    x = x.to(CUDA)
    per_row = evaluation.measure_bytes_per_row(lambda k: evaluation.model_log_weights(model, x, k), x.shape[0], CUDA)
    free = evaluation.free_device_memory(CUDA)
    assert per_row > 1 and free is not None and free > 0
    rows = evaluation.memory_chunk_rows(10 ** 9, free, per_row)
    assert rows * per_row <= 0.25 * free + per_row
    data = torch.utils.data.TensorDataset(x.cpu())
    out = evaluation.evaluate_bound(model, data, torch.arange(2), 2, 500, 10000, CUDA)
    assert torch.isfinite(torch.tensor(out["loss/L_k"]))


def test_gpu_discovery_sees_this_gpu() -> None:
    from ovis.experiments.devices import _torch_rows_in_child, plan_workers, query_gpus

    found = query_gpus()
    assert found, "no GPU discovered on a machine where torch.cuda is available"
    assert len(_torch_rows_in_child()) == torch.cuda.device_count()
    plan = plan_workers(2, max_gpus=1, max_load=1.01, max_memory=1.01)
    assert len(plan.slots) == 2 and plan.slots[0] == plan.slots[1] == found[0].index


def test_run_py_trains_on_cuda(tmp_path: Path) -> None:
    from ovis.training.run import main

    root = tmp_path / "runs"
    argv = ["--dataset", "gmm", "--mini", "--estimator", "ovis-gamma1", "--iw", "5", "--nsteps", "20",
            "--bs", "16", "--iw_test", "50", "--iw_valid", "50", "--max_eval", "32", "--silent",
            "--no_tensorboard", "--device", "cuda", "--root", str(root), "--exp", "gpu"]
    assert main(argv) == 0
    (run_dir,) = [p for p in (root / "gpu").iterdir() if p.is_dir()]
    assert json.loads((run_dir / "config.json").read_text())["run"]["device"].startswith("cuda")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "success"
    assert main(argv[:-6] + ["--device", f"cuda:{torch.cuda.device_count()}", "--root", str(root),
                             "--exp", "gpu2"]) == 2
    assert not (root / "gpu2").exists()
