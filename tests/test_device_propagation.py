r"""Device and dtype propagation, tested on the CPU: every estimator, built-in model and the
evaluation code make their tensors on the device and dtype of their inputs.

* **meta device**: the model, the estimator and the data on PyTorch's ``meta`` device (shapes only,
  no values).  An operation that mixes a ``meta`` tensor with a CPU tensor of one or more
  dimensions raises, as CUDA does with CPU tensors, so a tensor factory without ``device=`` on the
  training path fails here; so does a host synchronisation (``.item()``, ``float(t)``,
  ``if (t > 0).any()``), which on a GPU stalls every step.  One estimator step and its backward
  for every built-in model and every estimator family that applies to it must raise nothing, and
  leave the loss, the gradients and the diagnostics on ``meta``.
* **float64**: the same steps with float64 parameters and data while the default dtype is
  float32; a dispatch mode records every floating-point result that is not float64 (a factory
  without ``dtype=``).  None may appear.
* **the code itself**: no ``torch.zeros/ones/full/empty/arange/linspace/logspace/eye/rand*/
  tensor/as_tensor/...`` call without ``device=`` in the estimators, models, distributions and
  evaluation code, except a parameter or buffer made at construction (``.to()`` moves it) or a
  line that says why with a ``# device:`` comment.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ovis.datasets import load_dataset
from ovis.estimators import build_estimator
from ovis.models import build_model
from ovis.training.arguments import parse_run_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one intra-op thread (the ``one_thread`` fixture of conftest)."""


class FakeImages:
    r"""What :func:`build_model` reads of an image data set."""

    name = "binmnist"
    x_shape = torch.Size((1, 28, 28))
    train_mean = torch.full((1, 28, 28), 0.2)
    ground_truth = None


#: score-function estimators (every model), one id per family and variant
SCORE = ["reinforce", "reinforce-baseline", "vimco-arithmetic", "vimco-geometric", "ovis-gamma1",
         "ovis-gamma0.5-geometric", "ovis-S2", "ovis-S0.5-exclusive", "wake-wake", "wake-sleep", "tvo",
         "tvo-part3-config2-trapz", "nvil", "reinforce+centred,scaled,self-critic,baseline"]
#: reparameterised estimators (models whose q(z|x) has rsample)
PATHWISE = ["pathwise-vae", "pathwise-iwae", "stl", "dreg"]
#: the REBAR line (Bernoulli and categorical latents; arm/disarm Bernoulli only)
REBAR = ["muprop", "simple-muprop", "concrete", "straight-through", "rebar", "dynamic-rebar", "relax"]
BINARY = ["arm", "disarm"]
NO_SLEEP = [e for e in SCORE if e != "wake-sleep"]  # conditional models have no infer()

#: model name -> (run.py arguments, generated data set or None, estimator ids that apply)
MODELS: Dict[str, Tuple[str, Optional[str], List[str]]] = {
    "sbm": ("--model sbm --depth 2 --nlayers 1 --hdim 8 --N 5", None, SCORE + REBAR + BINARY),
    "vae-normal": ("--model vae --prior normal --N 4 --hdim 8 --nlayers 1", None, SCORE + PATHWISE),
    "vae-bernoulli": ("--model vae --prior bernoulli --N 4 --hdim 8 --nlayers 1 --learn_prior", None,
                      SCORE + PATHWISE),
    "vae-categorical": ("--model vae --prior categorical --N 3 --K 3 --hdim 8 --nlayers 1", None,
                        SCORE + PATHWISE),
    "vae-mog": ("--model vae --prior mog --N 4 --K 3 --hdim 8 --nlayers 1", None, SCORE + PATHWISE),
    "gaussian-vae": ("--model gaussian-vae --N 4 --hdim 8 --nlayers 1", None, SCORE + PATHWISE),
    "conv-vae": ("--model conv-vae --N 4 --hdim 8", None, SCORE + PATHWISE),
    "discrete-vae-gs": ("--model discrete-vae --N 3 --K 4 --hdim 8 --nlayers 1", None,
                        SCORE + PATHWISE + REBAR),
    "discrete-vae-igr-planar": ("--model discrete-vae --N 3 --K 4 --hdim 8 --nlayers 1 --relaxation igr-planar",
                                None, SCORE + PATHWISE),
    "discrete-vae-igr-sb": ("--model discrete-vae --N 3 --K 4 --hdim 8 --nlayers 1 --relaxation igr-sb",
                            None, SCORE + PATHWISE),
    "conditional-sbm": ("--task conditional --model sbm --depth 2 --N 5 --nlayers 0", None,
                        NO_SLEEP + REBAR + BINARY),
    "conditional-discrete-vae": ("--task conditional --model discrete-vae --N 3 --K 4 --hdim 8 --nlayers 1",
                                 None, NO_SLEEP + PATHWISE + REBAR),
    "vae-cbernoulli": ("--model vae --likelihood cbernoulli --N 4 --hdim 8 --nlayers 1 --dataset mnist-grey",
                       None, SCORE + PATHWISE),
    "vae-mog-posterior": ("--model vae --posterior mog --posterior_components 2 --N 4 --hdim 8 --nlayers 1",
                          None, SCORE + ["hybrid-mixture"]),
    "gmm": ("--dataset gmm --N 20 --hdim 8", "gmm", SCORE),
    "gaussian-toy": ("--dataset gaussian-toy --N 20", "gaussian-toy", SCORE + PATHWISE),
}


def build(model_name: str, estimator_id: str, dtype: torch.dtype = torch.float32
          ) -> Tuple[nn.Module, nn.Module, Tensor]:
    r"""``(model, estimator, x)`` on the CPU in ``dtype``, ``x`` two data points."""
    argv, dataset, _ = MODELS[model_name]
    data: Any = load_dataset(dataset, "unused", mini=True) if dataset else FakeImages()
    torch.manual_seed(0)
    model = build_model(parse_run_args(argv.split() + ["--estimator", "reinforce"]), data)
    if "+" in estimator_id:  # reinforce with a chain of reward transforms
        from ovis.estimators.reward_transforms import ReinforceTransformed

        est: nn.Module = ReinforceTransformed(mc=1, iw=3, reward_transforms=estimator_id.split("+")[1],
                                              x_shape=tuple(data.x_shape))
    else:
        est = build_estimator(estimator_id, mc=1, iw=3, x_shape=data.x_shape)
    if dataset:
        x = data.test.data[:2]
    elif "cbernoulli" in argv:
        x = torch.rand(2, 1, 28, 28)
    else:
        x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
    return model.to(dtype), est.to(dtype), x.to(dtype)


def tensors(tree: Any) -> List[Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, Tensor)]


def step(model: nn.Module, est: nn.Module, x: Tensor) -> Tuple[Tensor, Dict[str, Any]]:
    loss, diagnostics, _ = est(model, x, backward=True, alpha=0.0, beta=1.0)
    return loss, diagnostics


def grads(*modules: nn.Module) -> List[Tensor]:
    return [p.grad for m in modules for p in m.parameters() if p.grad is not None]


# ---------------------------------------------------------------------------------- meta device
@pytest.mark.parametrize("model_name", list(MODELS))
def test_estimator_step_and_backward_on_meta(model_name: str) -> None:
    for eid in MODELS[model_name][2]:
        model, est, x = build(model_name, eid)
        model.to("meta"), est.to("meta")
        try:
            loss, diagnostics = step(model, est, x.to("meta"))
        except Exception as e:  # noqa: BLE001 - name the estimator that failed
            raise AssertionError(f"{model_name} / {eid} on the meta device: {type(e).__name__}: {e}") from e
        assert loss.device.type == "meta", (model_name, eid)
        g = grads(model, est)
        assert g and all(t.device.type == "meta" for t in g), (model_name, eid)
        assert all(t.device.type == "meta" for t in tensors(diagnostics)), (model_name, eid)


class _CPUZeros(nn.Module):
    r"""A model that adds a CPU ``torch.zeros`` to its data: the bug the meta test must catch."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, **kw: Any) -> Dict[str, Any]:
        return self.inner(x + torch.zeros(x.shape[1:]), **kw)


def test_meta_device_catches_a_factory_without_device() -> None:
    model, est, x = build("sbm", "reinforce")
    bad = _CPUZeros(model).to("meta")
    with pytest.raises(RuntimeError, match="device"):
        step(bad, est.to("meta"), x.to("meta"))


# ---------------------------------------------------------------------------------- float64
class NonFloat64Results(TorchDispatchMode):
    r"""Records the operators whose floating-point results are not float64."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tensors(out):
            if t.is_floating_point() and t.dtype != torch.float64:
                self.found[str(func)] = self.found.get(str(func), 0) + 1
        return out


@pytest.mark.parametrize("model_name", list(MODELS))
def test_estimator_step_in_float64_makes_no_float32(model_name: str) -> None:
    assert torch.get_default_dtype() == torch.float32  # a factory without dtype= gives float32
    for eid in MODELS[model_name][2]:
        model, est, x = build(model_name, eid, torch.float64)
        mode = NonFloat64Results()
        with mode:
            loss, diagnostics = step(model, est, x)
        assert not mode.found, f"{model_name} / {eid}: non-float64 results {mode.found}"
        assert loss.dtype == torch.float64
        assert all(t.dtype == torch.float64 for t in grads(model, est))
        assert all(t.dtype == torch.float64 for t in tensors(diagnostics) if t.is_floating_point())


def test_float64_mode_catches_a_float32_factory() -> None:
    model, est, x = build("sbm", "reinforce", torch.float64)
    mode = NonFloat64Results()
    with mode:
        step(_CPUZeros(model), est, x)
    assert mode.found


# ---------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("model_name", ["sbm", "vae-categorical", "discrete-vae-igr-sb", "gmm", "gaussian-toy",
                                        "conditional-sbm"])
def test_evaluation_on_meta_and_in_float64(model_name: str) -> None:
    from ovis.analysis.gradients import get_gradients_statistics
    from ovis.training.evaluation import accumulate_chunked_bound, evaluate_bound, model_log_weights

    # the bound's tensor work (particles in chunks, running reductions) on meta
    model, est, x = build(model_name, "reinforce")
    model.to("meta")
    xm = x.to("meta")
    with torch.inference_mode():
        stats = accumulate_chunked_bound(lambda k: model_log_weights(model, xm, k, 0.5), 7, 3)
    assert all(v.device.type == "meta" and v.dtype == torch.float64 and v.shape == (2,) for v in stats.values())

    # the whole evaluation (values read on the host) in float64, no float32 result
    model, est, x = build(model_name, "reinforce", torch.float64)
    data = torch.utils.data.TensorDataset(x)
    mode = NonFloat64Results()
    with mode:
        out = evaluate_bound(model, data, torch.arange(2), 2, 7, 6, x.device, tau=0.5)
        g = get_gradients_statistics(est, model, x, mc_samples=2)
    # accumulate_chunked_bound adds float64 reductions; the model's own results must be float64
    assert not mode.found, f"{model_name}: non-float64 results in the evaluation {mode.found}"
    assert math.isfinite(out["loss/L_k"]) and math.isfinite(out["loss/elbo"])
    assert all(v.dtype == torch.float64 for v in tensors(g) if v.is_floating_point())


# ---------------------------------------------------------------------------------- the code
FACTORIES = {"zeros", "ones", "full", "empty", "empty_strided", "arange", "linspace", "logspace", "eye",
             "rand", "randn", "randint", "randperm", "tensor", "as_tensor", "scalar_tensor", "normal",
             "tril_indices", "triu_indices"}
SCANNED = ["ovis/estimators", "ovis/models", "ovis/distributions", "ovis/training/evaluation.py",
           "ovis/analysis/gradients.py"]
NOT_SCANNED = {"ovis/distributions/igr_approximation.py"}  # a CPU fitting script (python -m ...), no model


def factories_without_device(path: Path) -> List[str]:
    r"""``file:line`` of each ``torch.<factory>(...)`` call without ``device=`` in ``path``, except
    those wrapped in ``nn.Parameter(...)`` / ``register_buffer(...)`` (moved by ``.to()``) and those
    with a ``# device:`` comment (the reason) on their lines or as the line above."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    exempt: set = set()
    for node in ast.walk(tree):  # calls inside a Parameter / buffer registration
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("Parameter", "register_buffer"):
                exempt.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and not any(k.arg == "device" for k in node.keywords) and id(node) not in exempt):
            span = lines[node.lineno - 1:(node.end_lineno or node.lineno)]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if not any("# device:" in s for s in span) and not above.startswith("# device:"):
                shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
                found.append(f"{shown}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def scanned_files() -> Iterable[Path]:
    for root in SCANNED:
        p = REPO / root
        for f in ([p] if p.is_file() else sorted(p.rglob("*.py"))):
            if str(f.relative_to(REPO)) not in NOT_SCANNED:
                yield f


def test_no_tensor_factory_without_device() -> None:
    files = list(scanned_files())
    assert len(files) > 20
    found = [hit for f in files for hit in factories_without_device(f)]
    assert not found, "tensor factories without device= (add device=..., or a `# device: why` comment):\n" + \
        "\n".join(found)


def test_the_scan_finds_a_factory_without_device(tmp_path: Path) -> None:
    f = tmp_path / "probe.py"
    f.write_text("import torch\nfrom torch import nn\n"
                 "def f(x):\n    return x + torch.zeros(3)\n"
                 "def g(x):\n    return x + torch.zeros(3, device=x.device)\n"
                 "def h(x):\n    return torch.arange(3)  # device: indices of a CPU data set\n"
                 "def k(x):\n    # device: indices of a CPU data set\n    return torch.arange(3)\n"
                 "class M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                 "        self.p = nn.Parameter(torch.zeros(3))\n"
                 "        self.register_buffer('b', torch.ones(\n            3))\n")
    assert [h.split(":")[1] for h in factories_without_device(f)] == ["4"]
