"""The fast paths equal the plain ones: SBN particles path, uniform Bernoulli sampling, fused Adam."""
from __future__ import annotations

import math

import pytest
import torch

from ovis.estimators import build_estimator
from ovis.models.sbm import SigmoidBeliefNetwork, sample_bernoulli
from ovis.training.optimizers import build_optimizer


def test_sbn_particles_path_equals_expanded_batch():
    torch.manual_seed(0)
    x = (torch.rand(3, 20) < 0.3).float()
    model = SigmoidBeliefNetwork((20,), N=6, depth=2, nlayers=0, x_mean=x.mean(0))
    n = 4
    x_exp = x[:, None].expand(3, n, 20).reshape(3 * n, 20)
    torch.manual_seed(1)
    fast = model(x, particles=n)
    torch.manual_seed(1)
    slow = model(x_exp)
    for a, b in zip(fast["z"], slow["z"]):
        assert torch.equal(a, b)
    for qa, qb, za in zip(fast["qz"], slow["qz"], fast["z"]):
        assert torch.allclose(qa.log_prob(za), qb.log_prob(za), atol=1e-6)
    assert torch.allclose(fast["px"].log_prob(x_exp), slow["px"].log_prob(x_exp), atol=1e-5)
    with pytest.raises(ValueError, match="particles"):
        model(x, particles=0)


def test_estimator_gradients_equal_on_the_fused_particles_and_expanded_paths(monkeypatch):
    # the three evaluation paths draw the same samples from one seed, so the gradients agree
    torch.manual_seed(0)
    x = (torch.rand(4, 20) < 0.3).float()
    model = SigmoidBeliefNetwork((20,), N=5, depth=2, nlayers=0, x_mean=x.mean(0))
    grads = []
    for fused, particles in ((True, True), (False, True), (False, False)):
        monkeypatch.setattr(SigmoidBeliefNetwork, "fused_log_densities", fused)
        monkeypatch.setattr(SigmoidBeliefNetwork, "supports_particles", particles)
        torch.manual_seed(3)
        model.zero_grad()
        build_estimator("ovis-gamma1", mc=2, iw=5)(model, x, backward=True)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[2], atol=1e-5)


@pytest.mark.parametrize("depth,nlayers,particles", [(1, 0, 1), (3, 0, 4), (2, 1, 3)])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_fused_log_densities_equal_the_distributions(float64, monkeypatch, depth, nlayers, particles, binary,
                                                     batched):
    import ovis.models.sbm as sbm

    monkeypatch.setattr(sbm, "BATCHED_TERMS_MAX_ELEMENTS", 1 << 30 if batched else 0)
    torch.manual_seed(0)
    B, D = 3, 12
    x = (torch.rand(B, D) < 0.4).double() if binary else torch.rand(B, D)
    model = SigmoidBeliefNetwork((D,), N=5, depth=depth, nlayers=nlayers, hdim=7, x_mean=x.mean(0).clamp(0.1, 0.9))
    with torch.no_grad():  # saturated logits too: both tails of the log mass
        for p in model.parameters():
            p.mul_(8.0)
    out, log_px, log_qz, log_pz = model.particle_log_densities(x, particles=particles)
    n = B * particles
    assert log_px.shape == (n,) and log_qz.shape == log_pz.shape == (n, depth)
    x_exp = x[:, None].expand(B, particles, D).reshape(n, D)
    ref_px = out["px"].log_prob(x_exp)
    ref_qz = torch.stack([q.log_prob(z) for q, z in zip(out["qz"], out["z"])], -1)
    ref_pz = torch.stack([p.log_prob(z) for p, z in zip(out["pz"], out["z"])], -1)
    for got, ref in ((log_px, ref_px), (log_qz, ref_qz), (log_pz, ref_pz)):
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-9)
    params = list(model.parameters())
    g_fused = torch.autograd.grad((log_px.sum() + log_qz.sum() + log_pz.sum()), params, allow_unused=True,
                                  retain_graph=True)  # (the logits are shared with the reference)
    g_ref = torch.autograd.grad((ref_px.sum() + ref_qz.sum() + ref_pz.sum()), params, allow_unused=True)
    for a, b in zip(g_fused, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    for z in out["z"]:
        assert set(z.unique().tolist()) <= {0.0, 1.0} and not z.requires_grad


def test_fused_sampling_has_the_right_law():
    # q(z_1|x) of one data point, 40,000 particles: frequencies against sigmoid(logits)
    torch.manual_seed(0)
    x = (torch.rand(1, 10) < 0.5).float()
    model = SigmoidBeliefNetwork((10,), N=6, depth=2, nlayers=0)
    with torch.no_grad():
        out, *_ = model.particle_log_densities(x, particles=40_000)
    p = torch.sigmoid(out["qz"][0].logits[0])
    freq = out["z"][0].mean(0)
    z = (freq - p) / torch.sqrt(p * (1 - p) / 40_000)
    assert float(z.abs().max()) < 3.5  # failure rate about 3e-3 over 6 units


_FAULTS_SCRIPT = """
import resource, sys, torch
from ovis.utils.memory import GLIBC_INITIAL_THRESHOLDS, retain_freed_memory, set_malloc_thresholds

def faults_of_allocations(n=30):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.empty(256 * 1024).fill_(1.0)  # 1 MiB: 256 pages, mapped afresh at glibc's initial thresholds
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

assert set_malloc_thresholds(*GLIBC_INITIAL_THRESHOLDS)  # (not raised as they are by default after a free)
returned = faults_of_allocations()
assert retain_freed_memory()
faults_of_allocations(10)  # the heap grows to its working size (a few allocations)
print(returned, faults_of_allocations())
"""


def test_retained_memory_stops_the_page_faults():
    # a fresh process: a heap with free memory would serve the requests whatever the thresholds
    import subprocess
    import sys
    from pathlib import Path

    from ovis.utils.memory import retain_freed_memory, set_malloc_thresholds

    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout
    returned, retained = map(int, out.split())
    assert returned > 30 * 200, returned
    assert retained < 30 * 5, retained
    with pytest.raises(ValueError, match="mmap_threshold"):
        set_malloc_thresholds(64 * 1024 * 1024, 64 * 1024 * 1024)
    with pytest.raises(ValueError, match="trim_threshold"):
        retain_freed_memory(mmap_threshold=1 << 20, trim_threshold=1 << 19)


def test_uniform_bernoulli_sampling_has_the_right_law():
    from torch.distributions import Bernoulli, Independent

    torch.manual_seed(0)
    p = torch.tensor([0.05, 0.3, 0.5, 0.9])
    n = 200_000
    dist = Independent(Bernoulli(probs=p.expand(n, 4)), 1)
    freq = sample_bernoulli(dist).mean(0)
    # binomial standard errors; failure rate 1e-3 over 4 coordinates
    z = (freq - p) / torch.sqrt(p * (1 - p) / n)
    assert float(z.abs().max()) < 3.5
    assert set(sample_bernoulli(dist).unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_optimizer_matches_the_loop(name):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(7, 3)), torch.nn.Parameter(torch.randn(5))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_a = build_optimizer(name, [{"params": a, "lr": 1e-2}])
    cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    opt_b = cls([{"params": b, "lr": 1e-2}])
    assert opt_a.defaults.get("fused") is True
    for _ in range(20):
        g = [torch.randn_like(p) for p in a]
        for p, q, gi in zip(a, b, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        assert torch.allclose(p, q, atol=1e-6)
    with pytest.raises(ValueError, match="valid"):
        build_optimizer("lbfgs", [{"params": a}])



def test_adam_resumes_from_a_checkpoint_with_shared_step_counts(tmp_path):
    r"""build_optimizer's Adam loads a checkpointed optimiser state whose step counts are views of one
    tensor (the format of the checkpoints written by the former ``LeanFusedAdam``) through
    ``weights_only`` loading, and then steps exactly as an Adam that never stopped."""
    from ovis.training.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(7, 3)), torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]

    def groups(ps):
        return [{"params": ps[:2], "lr": 1e-2, "weight_decay": 0.1}, {"params": ps[2:], "lr": 3e-3}]

    def set_grads(ps, step, grads):
        for i, (p, g) in enumerate(zip(ps, grads)):
            p.grad = None if step in (3, 4) and i == 1 else g.clone()  # a parameter without a gradient

    grads = [[torch.randn_like(p) for p in a] for _ in range(9)]
    first = build_optimizer("adam", groups(a))
    ref = torch.optim.Adam(groups(b), fused=True)
    assert type(first) is torch.optim.Adam and first.defaults["fused"] is True
    for step in range(6):
        set_grads(a, step, grads[step])
        set_grads(b, step, grads[step])
        first.step()
        ref.step()
        assert all(torch.equal(p, q) for p, q in zip(a, b)), step
    sd = first.state_dict()
    keys = sorted(sd["state"])
    shared = torch.stack([sd["state"][k]["step"] for k in keys]).unbind(0)
    for k, v in zip(keys, shared):
        sd["state"][k]["step"] = v
    save_checkpoint(tmp_path / "last.pt", {"optimizer": sd}, keep_previous=True)
    c = [torch.nn.Parameter(p.detach().clone()) for p in a]
    resumed = build_optimizer("adam", groups(c))
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.pt")["optimizer"])
    for step in range(6, 9):
        set_grads(c, step, grads[step])
        set_grads(b, step, grads[step])
        resumed.step()
        ref.step()
        assert all(torch.equal(p, q) for p, q in zip(c, b)), step
    assert [float(resumed.state[p]["step"]) for p in c] == [float(ref.state[q]["step"]) for q in b] == [9, 7, 9]


def test_bernoulli_logits_equals_torch_bernoulli():
    from torch.distributions import Bernoulli, Independent

    from ovis.distributions import BernoulliLogits, detach_distribution

    torch.manual_seed(0)
    a = (torch.randn(6, 3, 4, dtype=torch.float64) * 20).requires_grad_()  # saturated logits too
    z = (torch.rand(6, 3, 4, dtype=torch.float64) < 0.5).double()
    for event_dims in (0, 1, 2):
        ref = Independent(Bernoulli(logits=a), event_dims) if event_dims else Bernoulli(logits=a)
        fast = BernoulliLogits(a, event_dims)
        assert fast.batch_shape == ref.batch_shape and fast.event_shape == ref.event_shape
        # (softplus is linear above 20: an absolute error below exp(-20) per unit)
        assert torch.allclose(fast.log_prob(z), ref.log_prob(z), atol=1e-8)
        assert torch.allclose(fast.entropy(), ref.entropy(), atol=1e-8)
        g1 = torch.autograd.grad(fast.log_prob(z).sum(), a)[0]
        g2 = torch.autograd.grad(ref.log_prob(z).sum(), a)[0]
        assert torch.allclose(g1, g2, atol=1e-8)
    # relaxed values in [0, 1]: the continuous extension z a - softplus(a)
    zr = torch.rand(6, 3, 4, dtype=torch.float64)
    expected = (zr * a - torch.nn.functional.softplus(a)).sum((-1, -2))
    assert torch.allclose(BernoulliLogits(a, 2).log_prob(zr), expected)
    # sampling law and detaching
    p = BernoulliLogits(torch.tensor([-1.0, 0.0, 2.0]), 1)
    s = p.sample((20000,))
    assert s.shape == (20000, 3) and set(s.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(s.mean(0), p.probs, atol=4.5 * (0.25 / 20000) ** 0.5)  # 4.5 sd: rate < 1e-5
    d = detach_distribution(BernoulliLogits(a, 2))
    assert isinstance(d, BernoulliLogits) and d.event_dims == 2 and not d.logits.requires_grad
    with pytest.raises(ValueError, match="event_dims"):
        BernoulliLogits(a, 4)


def test_random_bits24_are_uniform_24_bit_integers():
    from ovis.distributions.bernoulli import BITS24, random_bits24

    torch.manual_seed(0)
    bits = random_bits24((3, 33_333))  # an odd count: the last 64-bit word is half used
    assert bits.dtype == torch.int32 and bits.shape == (3, 33_333)
    assert int(bits.min()) >= 0 and int(bits.max()) < BITS24
    flat = bits.reshape(-1).long()
    for words in (flat[0::2], flat[1::2]):  # the low and the high halves of the 64-bit draws
        for shift in (0, 10, 20):  # 16 bins of 4 bits: low, middle and top bits
            counts = torch.bincount((words >> shift) & 15, minlength=16).double()
            expected = len(words) / 16
            chi2 = float(((counts - expected) ** 2 / expected).sum())
            assert chi2 < 37.7, (shift, chi2)  # chi-square, 15 degrees of freedom, p = 1e-3


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo
@pytest.mark.slow
def test_compile_covers_the_fused_log_densities_and_keeps_their_values():
    # the estimators call particle_log_densities, not forward: --compile must compile it too
    torch.manual_seed(0)
    x = (torch.rand(6, 20) < 0.3).float()
    model = SigmoidBeliefNetwork((20,), N=5, depth=2, nlayers=0)
    torch.manual_seed(1)
    eager = model.particle_log_densities(x, particles=3)
    model.compile()
    assert hasattr(model.particle_log_densities, "_torchdynamo_orig_callable")
    torch.manual_seed(1)
    with torch._inductor.config.patch(fallback_random=True):  # the eager draws (random_bits24)
        compiled = model.particle_log_densities(x, particles=3)
    assert all(torch.equal(a, b) for a, b in zip(eager[0]["z"], compiled[0]["z"]))  # the same draws
    for a, b in zip(eager[1:], compiled[1:]):
        assert torch.allclose(a, b, atol=1e-5)
    assert not any("_orig_mod" in k for k in model.state_dict())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo
@pytest.mark.parametrize("eid", ["vimco-arithmetic", "ovis-gamma1"])
def test_compiled_estimation_equals_the_eager_one_on_the_same_draws(eid):
    # run.py --compile: one graph for the model's pass, the maths and the surrogate; with inductor's
    # fallback_random the compiled graph draws the eager samples, so loss and gradients agree
    from ovis.estimators.base import compile_estimator

    torch.manual_seed(0)
    x = (torch.rand(6, 20) < 0.3).float()
    model = SigmoidBeliefNetwork((20,), N=5, depth=2, nlayers=0, x_mean=x.mean(0))
    est = build_estimator(eid, iw=4)
    call = compile_estimator(est, model)
    results = []
    with torch._inductor.config.patch(fallback_random=True):
        for compiled in (False, True, True):  # the second compiled call reuses the graph
            model.zero_grad()
            torch.manual_seed(7)
            if compiled:
                loss, diagnostics, _ = call(x, alpha=0.0)
                loss.backward()
            else:
                loss, diagnostics, _ = est(model, x, backward=True, alpha=0.0)
            results.append((loss.detach(), diagnostics["loss"]["L_k"].detach(),
                            torch.cat([p.grad.reshape(-1) for p in model.parameters()])))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert results[0][2].abs().max() > 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo
def test_random_bits24_under_compile_are_uniform_24_bit_integers():
    # inside a compiled graph the words come from inductor's generator: each of the 24 bits of the
    # values is a fair coin (binomial bound, 6 standard errors), none is above 2^24
    from ovis.distributions.bernoulli import random_bits24

    bits = torch.compile(lambda: random_bits24((3, 1000, 100)))()
    assert bits.dtype == torch.int32 and bits.shape == (3, 1000, 100)
    assert int(bits.min()) >= 0 and int(bits.max()) < (1 << 24)
    n = bits.numel()
    means = torch.stack([((bits >> k) & 1).double().mean() for k in range(24)])
    assert float((means - 0.5).abs().max()) < 6 * math.sqrt(0.25 / n)
    again = torch.compile(lambda: random_bits24((3, 1000, 100)))()
    assert not torch.equal(bits, again)
