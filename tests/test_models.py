r"""Models: output shapes and protocol, prior sampling, exact log-evidence by enumeration
against the IW bound, the Gaussian toy's closed-form optimum, the GMM's metrics, and a short
SBN training run on real (binarized) MNIST."""
from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from torch import Tensor

from ovis.datasets import load_dataset
from ovis.estimators import build_estimator
from ovis.estimators.importance import iw_bound, log_weights
from ovis.models import (
    VAE,
    GaussianVAE,
    SigmoidBeliefNetwork,
    TemplateModel,
    batch_reduce,
    build_model,
    check_model_output,
)
from ovis.models.gaussian_toy import GaussianToyModel
from ovis.models.gmm import GaussianMixtureModel
from ovis.training.arguments import parse_run_args


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one intra-op thread (the ``one_thread`` fixture of conftest)."""


class FakeData:
    r"""A stand-in for DataSplits with just what build_model reads."""

    def __init__(self, name: str = "binmnist", x_shape=(1, 28, 28), mean: float = 0.2) -> None:
        self.name = name
        self.x_shape = torch.Size(x_shape)
        self.train_mean = torch.full(self.x_shape, mean)
        self.ground_truth = None


def args_of(*argv: str) -> argparse.Namespace:
    return parse_run_args(list(argv))


def binary_batch(n: int = 5, shape=(1, 28, 28)) -> Tensor:
    return torch.bernoulli(torch.full((n, *shape), 0.3))


# ------------------------------------------------------------------------------------ shapes
IMAGE_CASES = [
    (("--model", "sbm", "--depth", "3", "--nlayers", "0", "--N", "7"), [(7,), (7,), (7,)]),
    (("--model", "sbm", "--depth", "2", "--nlayers", "1", "--hdim", "9", "--N", "5"), [(5,), (5,)]),
    (("--model", "vae", "--prior", "normal", "--N", "6"), [(6,)]),
    (("--model", "vae", "--prior", "bernoulli", "--N", "6", "--learn_prior"), [(6,)]),
    (("--model", "vae", "--prior", "categorical", "--N", "4", "--K", "3"), [(4, 3)]),
    (("--model", "vae", "--prior", "mog", "--N", "6", "--K", "5"), [(6,)]),
    (("--model", "gaussian-vae", "--N", "8", "--hdim", "16"), [(8,)]),
    (("--model", "conv-vae", "--N", "6", "--hdim", "16"), [(6,)]),
    (("--model", "discrete-vae", "--N", "3", "--K", "4"), [(3, 4)]),
]


@pytest.mark.parametrize("argv,z_shapes", IMAGE_CASES, ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_image_model_shapes(argv: Tuple[str, ...], z_shapes: List[tuple]) -> None:
    model = build_model(args_of(*argv), FakeData())
    assert isinstance(model, TemplateModel)
    n = 5
    x = binary_batch(n)
    out = model(x)
    check_model_output(out)
    assert len(out["z"]) == len(z_shapes)
    assert out["px"].batch_shape == (n,) and out["px"].event_shape == (1, 28, 28)
    assert out["px"].log_prob(x).shape == (n,)
    for z, q, p, shape in zip(out["z"], out["qz"], out["pz"], z_shapes):
        assert z.shape == (n, *shape)
        assert q.batch_shape == (n,) and p.batch_shape == (n,)
        assert q.log_prob(z).shape == (n,) and p.log_prob(z).shape == (n,)
        assert torch.isfinite(q.log_prob(z)).all() and torch.isfinite(p.log_prob(z)).all()
    prior = model.sample_from_prior(3)
    check_model_output(prior, with_q=False)
    assert prior["px"].sample().shape == (3, 1, 28, 28)
    assert [z.shape[1:] for z in prior["z"]] == [torch.Size(s) for s in z_shapes]
    infer = model.infer(x, out["z"])
    assert len(infer) == len(z_shapes)
    for q, z in zip(infer, out["z"]):
        assert torch.allclose(q.log_prob(z), out["qz"][infer.index(q)].log_prob(z))
    names = [k for k, _ in model.named_parameters()]
    assert names and all(k.startswith(("inference_network.", "generative_model.")) for k in names)
    assert any(k.startswith("inference_network.") for k in names)
    # every estimator family runs on the model (score function always; discrete latents: hard z)
    loss, diag, _ = build_estimator("vimco-arithmetic", iw=3)(model, x, backward=True)
    assert diag["loss"]["L_k"].shape == (n,) and torch.isfinite(loss)


def test_binary_latents_are_binary_and_sbm_orders_layers() -> None:
    model = SigmoidBeliefNetwork((1, 28, 28), N=4, depth=3)
    out = model(binary_batch(6))
    for z in out["z"]:
        assert set(z.unique().tolist()) <= {0.0, 1.0}
    # pz[-1] is the learned top prior p(z_L); pz[l] = p(z_{l+1} | z_{l+2}) conditions on z[l+1]
    g = model.generative_model
    with torch.no_grad():
        g.prior_logits.copy_(torch.arange(4.0))
    assert torch.allclose(model(binary_batch(6))["pz"][-1].logits, torch.arange(4.0).expand(6, 4))
    for l in range(2):
        expected = g.layers[l + 1](2 * out["z"][l + 1] - 1)
        assert torch.allclose(out["pz"][l].logits, expected)
    assert torch.allclose(out["px"].logits.reshape(6, -1), g.layers[0](2 * out["z"][0] - 1))
    assert g.prior_logits.requires_grad


def test_output_bias_at_logit_of_train_mean() -> None:
    mean = torch.rand(1, 28, 28) * 0.8 + 0.1
    data = FakeData()
    data.train_mean = mean
    logit = (mean.log() - (-mean).log1p()).reshape(-1)
    sbm = build_model(args_of("--model", "sbm", "--N", "5", "--nlayers", "0"), data)
    assert torch.allclose(sbm.generative_model.layers[0][-1].bias, logit, atol=1e-5)
    vae = build_model(args_of("--model", "vae", "--N", "5"), data)
    assert torch.allclose(vae.generative_model.observation.net.layers[-1].bias, logit, atol=1e-5)
    # inputs are fed as 2x - 1: a zero x gives the same q as -1 inputs
    x = torch.zeros(1, 1, 28, 28)
    w = sbm.inference_network.layers[0][0]
    expected = w(-torch.ones(1, 784))
    assert torch.allclose(sbm._q(0, x.reshape(1, -1)).logits, expected)


def test_categorical_vae_relaxed_when_zgrads() -> None:
    model = VAE((1, 28, 28), prior="categorical", N=3, K=4, hdim=8, nlayers=1)
    x = binary_batch(4)
    hard = model(x)
    assert set(hard["z"][0].unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(hard["z"][0].sum(-1), torch.ones(4, 3))
    soft = model(x, zgrads=True, tau=0.3)
    z = soft["z"][0]
    assert soft["qz"][0].has_rsample and z.requires_grad
    assert torch.allclose(z.sum(-1), torch.ones(4, 3), atol=1e-5)
    assert ((z > 0) & (z < 1)).any()  # relaxed, not one-hot
    assert float(soft["qz"][0].base_dist.temperature) == pytest.approx(0.3)
    assert float(model(x, zgrads=True)["qz"][0].base_dist.temperature) == pytest.approx(0.5)
    # the pathwise estimator runs and sends gradients to the inference network
    build_estimator("pathwise-iwae", iw=3)(model, x, backward=True, tau=0.5)
    assert model.inference_network.net.layers[0].weight.grad.abs().sum() > 0


def test_mog_prior_is_learned_mixture() -> None:
    from torch.distributions import MixtureSameFamily

    model = VAE((1, 28, 28), prior="mog", N=4, K=3, hdim=8, nlayers=1)
    p = model.prior(5)
    assert isinstance(p, MixtureSameFamily) and p.batch_shape == (5,) and p.event_shape == (4,)
    z = torch.randn(5, 4)
    g = model.generative_model
    comp = torch.distributions.Normal(g.prior.locs, g.prior.log_scales.exp())
    manual = torch.logsumexp(g.prior.logits.log_softmax(-1) + comp.log_prob(z[:, None]).sum(-1), -1)
    assert torch.allclose(p.log_prob(z), manual, atol=1e-5)
    build_estimator("pathwise-iwae", iw=2)(model, binary_batch(2), backward=True)
    assert g.prior.locs.grad is not None and g.prior.logits.grad is not None


def test_build_model_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match="--model gmm"):
        build_model(args_of("--dataset", "gmm", "--model", "vae"), FakeData("gmm", (1,)))
    with pytest.raises(ValueError, match="needs --dataset gaussian-toy"):
        build_model(args_of("--model", "gaussian-toy"), FakeData())
    with pytest.raises(ValueError, match="--depth"):
        build_model(args_of("--model", "vae", "--depth", "2"), FakeData())
    with pytest.raises(ValueError, match="fixed N\\(0, I\\) prior"):
        build_model(args_of("--model", "gaussian-vae", "--learn_prior"), FakeData())
    with pytest.raises(NotImplementedError, match="--relaxation igr-i"):
        build_model(args_of("--prior", "categorical", "--relaxation", "igr-i"), FakeData())
    with pytest.raises(ValueError, match="Bernoulli latents"):
        build_model(args_of("--model", "sbm", "--prior", "categorical"), FakeData())
    # the default model follows the data set
    assert isinstance(build_model(args_of(), FakeData()), VAE)
    assert isinstance(GaussianVAE((4,), N=2, hdim=3, nlayers=1), TemplateModel)  # kept working


# ------------------------------------------------------------------ enumeration vs IW bound
def iw_estimates(model: torch.nn.Module, x: Tensor, K: int, R: int) -> Tuple[float, float]:
    r"""Mean and standard error of ``R`` draws of the IW bound ``L_K`` at one data point ``x``."""
    with torch.no_grad():
        xe = x.expand(R * K, *x.shape[1:])
        out = model(xe)
        log_px = batch_reduce(out["px"].log_prob(xe)).view(1, R, K)
        log_qz = torch.stack([batch_reduce(q.log_prob(z)) for q, z in zip(out["qz"], out["z"])], -1)
        log_pz = torch.stack([batch_reduce(p.log_prob(z)) for p, z in zip(out["pz"], out["z"])], -1)
        log_w, _ = log_weights(log_px, log_qz.view(1, R, K, -1), log_pz.view(1, R, K, -1))
        bound = iw_bound(log_w)[0]
    return float(bound.mean()), float(bound.std() / math.sqrt(R))


def check_bound_converges(model: torch.nn.Module, x: Tensor, log_px: float) -> List[float]:
    means = []
    for K, R in ((1, 20000), (10, 4000), (100, 1000), (2000, 200)):
        m, se = iw_estimates(model, x, K, R)
        assert m <= log_px + 4 * se + 1e-9, (K, m, log_px)  # a lower bound
        if means:
            assert m >= means[-1] - 4 * se, (K, means, m)  # non-decreasing in K
        means.append(m)
    gap1 = log_px - means[0]
    assert gap1 > 0.05  # the test model has a real gap at K = 1 (else it proves nothing)
    print(f"log p(x) = {log_px:.4f}; E[L_K] for K = 1, 10, 100, 2000: {[round(m, 4) for m in means]}")
    assert abs(means[-1] - log_px) < max(0.02, 0.02 * gap1)
    return means


@torch.no_grad()
def sbm_log_evidence(model: SigmoidBeliefNetwork, x: Tensor) -> float:
    N, L = model.N, model.depth
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=N * L)))
    z = [configs[:, l * N:(l + 1) * N] for l in range(L)]
    xe = x.expand(len(configs), *x.shape[1:])
    log_joint = batch_reduce(model.observation_model(z[0]).log_prob(xe))
    for p, zl in zip(model._generative(z), z):
        log_joint = log_joint + p.log_prob(zl)
    return float(torch.logsumexp(log_joint, 0))


def test_sbm_enumeration_matches_iw_bound(float64) -> None:
    torch.manual_seed(1)
    model = SigmoidBeliefNetwork((6,), N=2, depth=2, nlayers=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    log_px = sbm_log_evidence(model, x)
    check_bound_converges(model, x, log_px)


def test_categorical_vae_enumeration_matches_iw_bound(float64) -> None:
    torch.manual_seed(2)
    model = VAE((5,), prior="categorical", N=2, K=3, hdim=4, nlayers=1, learn_prior=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    x = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    eye = torch.eye(3)
    configs = torch.stack([torch.stack([eye[a], eye[b]]) for a in range(3) for b in range(3)])
    xe = x.expand(9, 5)
    log_joint = model.observation_model(configs).log_prob(xe) + model.prior(9).log_prob(configs)
    log_px = float(torch.logsumexp(log_joint, 0).detach())
    check_bound_converges(model, x, log_px)


# --------------------------------------------------------------------------- Gaussian toy
def toy_model(D: int = 20, seed: int = 1) -> Tuple[GaussianToyModel, Tensor]:
    data = load_dataset("gaussian-toy", "unused", mini=True, seed=seed)
    model = build_model(args_of("--dataset", "gaussian-toy", "--N", str(data.x_shape[0])), data)
    assert isinstance(model, GaussianToyModel)
    return model, data.train.data


def test_gaussian_toy_shapes_and_names() -> None:
    model, x = toy_model()
    out = model(x[:7], zgrads=True)
    check_model_output(out)
    assert out["z"][0].shape == (7, 20) and out["z"][0].requires_grad
    assert dict(model.named_parameters()).keys() == {"inference_network.A", "inference_network.b",
                                                     "generative_model.mu"}
    from ovis.analysis.gradients import select_parameters

    assert [n for n, _ in select_parameters(model, "A,b")] == ["inference_network.A", "inference_network.b"]
    assert model.sample_from_prior(4)["px"].sample().shape == (4, 20)


def test_gaussian_toy_iw_bound_approaches_exact_evidence(float64) -> None:
    model = GaussianToyModel(D=3)
    x = torch.randn(1, 3) * 1.5
    model.set_optimum(x + 0.3)  # near the optimum for another data set: a real gap
    log_px = float(model.log_evidence(x).detach())
    assert float(model.exact_elbo(x).detach()) < log_px
    means = check_bound_converges(model, x, log_px)
    elbo = float(model.exact_elbo(x).detach())
    assert abs(means[0] - elbo) < 0.02  # K = 1 is the ELBO


def test_gaussian_toy_gradients_vanish_at_the_optimum(float64) -> None:
    model, x = toy_model()
    x = x.double()
    model.double()
    model.set_optimum(x)
    params = list(model.parameters())
    log_px = model.log_evidence(x).sum()
    (g_mu,) = torch.autograd.grad(log_px, [model.generative_model.mu])
    assert g_mu.abs().max() < 1e-8
    grads = torch.autograd.grad(model.exact_elbo(x).sum(), params)
    assert max(float(g.abs().max()) for g in grads) < 1e-8
    # and not elsewhere: the checks can fail
    model.set_optimum(x, perturbation=0.1, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(model.exact_elbo(x).sum(), params)
    assert all(float(g.abs().max()) > 1e-2 for g in grads)


@pytest.mark.parametrize("perturbation", [0.0, 0.2])
def test_gaussian_toy_pathwise_iwae_gradient_at_optimum(float64, perturbation: float) -> None:
    from ovis.analysis.gradients import gradient_samples

    model, x = toy_model()
    x = x[:16].double()
    model.double()
    model.set_optimum(x, perturbation=perturbation, generator=torch.Generator().manual_seed(3))
    est = build_estimator("pathwise-iwae", iw=10)
    g = gradient_samples(est, model, x, 200, "A,b")  # [200, D*D + D]
    z = g.mean(0) / (g.std(0) / math.sqrt(g.shape[0])).clamp_min(1e-12)
    if perturbation == 0.0:
        assert z.abs().max() < 5.0  # 420 coordinates, P(max |z| > 5) < 3e-4
    else:
        assert z.abs().max() > 10.0


# ------------------------------------------------------------------------------------ GMM
def test_gmm_model_and_metrics() -> None:
    data = load_dataset("gmm", "unused", mini=True)
    model = build_model(args_of("--dataset", "gmm", "--N", "20", "--hdim", "16"), data)
    assert isinstance(model, GaussianMixtureModel)
    x = data.test.data[:50]
    out = model(x)
    check_model_output(out)
    assert out["z"][0].shape == (50, 20) and torch.equal(out["z"][0].sum(-1), torch.ones(50))
    assert out["px"].log_prob(x).shape == (50,)
    assert {n for n, _ in model.named_parameters() if "phi" in n} == {
        n for n, _ in model.named_parameters() if n.startswith("inference_network.")}
    m0 = model.extra_metrics(x)
    assert set(m0) == {"gmm/posterior_mse", "gmm/prior_mse"} and m0["gmm/prior_mse"] > 0.05
    model.set_true_prior()
    assert model.extra_metrics(x)["gmm/prior_mse"] < 1e-6
    # the true posterior by Bayes' rule: the metric is zero when q is exact
    post = model.true_posterior(x)
    prior = data.ground_truth["mixture_probs"].float()
    lik = torch.distributions.Normal(data.ground_truth["locs"].float(), 5.0).log_prob(x).exp()
    assert torch.allclose(post, prior * lik / (prior * lik).sum(-1, keepdim=True), atol=1e-5)
    model.posterior_logits = lambda xx: model.true_posterior(xx).log()  # type: ignore[method-assign]
    assert model.extra_metrics(x)["gmm/posterior_mse"] < 1e-5
    assert m0["gmm/posterior_mse"] > 0.1
    s = model.sample_from_prior(1000)
    assert s["px"].sample().shape == (1000, 1)


# ----------------------------------------------------------------------- SBN training (slow)
@pytest.mark.slow
def test_three_layer_sbn_learns_binarized_mnist(data_root: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset("binmnist", data_root, mini=True)
        model = build_model(args_of("--model", "sbm", "--prior", "bernoulli", "--N", "50",
                                    "--depth", "3", "--nlayers", "0"), data)
        xtr = torch.stack([data.train[i] for i in range(len(data.train))])
        xte = torch.stack([data.test[i] for i in range(len(data.test))])
        evaluator = build_estimator("vimco-arithmetic", iw=100)

        def test_bound() -> float:
            with torch.no_grad():
                return float(evaluator(model, xte)[1]["loss"]["L_k"].mean())

        before = test_bound()
        est = build_estimator("vimco-arithmetic", iw=5)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(300):
            idx = torch.randint(0, len(xtr), (24,))
            opt.zero_grad()
            est(model, xtr[idx], backward=True)
            opt.step()
        after = test_bound()
        print(f"3-layer SBN (N=50) test L_100: before {before:.2f}, after 300 steps {after:.2f}")
        assert after > before + 20.0, (before, after)
    finally:
        torch.set_num_threads(threads)
