r"""Score-function estimators against the exact gradient of L_K on enumerable models.

Every comparison uses the draws' own standard error, a declared failure rate (1e-3 per test:
Student-t with n - 1 degrees of freedom, Bonferroni over coordinates: ovis.testing.compare_with_exact)
and asserts its power (|stderr| <= 0.25 |exact gradient|).  Each draw averages mc = 500 outer
samples; 40 draws.

The runtime parameters: the target of an unbiased estimator called with (alpha, beta, freebits, K)
is the autograd gradient of the enumerated L_K^alpha whose log-weights carry the KL weight beta and
the free bits (ovis.testing.exact_bound).  The matrix estimator x beta in {0.3, 1} x alpha in
{0, 0.5} x K in {2, 3, 5} x free bits off/on runs the Bernoulli model at K = 3 in the quick suite,
the rest under @pytest.mark.slow.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from ovis.estimators import build_estimator
from ovis.estimators.vimco import Vimco
from ovis.testing import (
    TOY_FREEBITS,
    BernoulliToyModel,
    CategoricalToyModel,
    LinearGaussianModel,
    compare_with_exact,
    exact_bound,
    exact_elbo,
    exact_gradient_problem,
    exact_gradients,
    exact_sleep_phase_objective,
    exact_tvo_estimator_mean,
    exact_tvo_integral,
    exact_weighted_score,
    gradient_draws,
)

pytestmark = pytest.mark.usefixtures("float64")
N_DRAWS, MC = 40, 500
MODELS = {"bernoulli": BernoulliToyModel, "categorical": CategoricalToyModel}
UNBIASED = ["reinforce", "reinforce-baseline", "nvil", "vimco-arithmetic", "vimco-geometric", "ovis-gamma0",
            "ovis-gamma0-geometric", "ovis-S1-exclusive", "ovis-S3-exclusive"]
#: (beta, free bits on?) settings of the runtime-parameter matrix
KL_SETTINGS = {"beta1": (1.0, False), "beta0.3": (0.3, False), "beta0.3-freebits": (0.3, True),
               "beta1-freebits": (1.0, True)}


def runtime_matrix(eids, models=tuple(MODELS), Ks=(2, 3, 5), alphas=(0.0, 0.5), quick_K=3):
    """pytest params (eid, model, K, alpha, kl): beta = 1 without free bits (the original matrix)
    and the Bernoulli model at K = quick_K run in the quick suite, the rest is marked slow."""
    out = []
    for eid in eids:
        for model_name in models:
            for K in Ks:
                for alpha in alphas:
                    for kl in KL_SETTINGS:
                        quick = kl == "beta1" or (model_name == "bernoulli" and K == quick_K)
                        out.append(pytest.param(eid, model_name, K, alpha, kl,
                                                marks=() if quick else pytest.mark.slow))
    return out


def kl_runtime(model_name: str, kl: str) -> dict:
    beta, fb = KL_SETTINGS[kl]
    return {"beta": beta, "freebits": TOY_FREEBITS[model_name] if fb else None}


def setup(model_name: str):
    model = MODELS[model_name]()
    return exact_gradient_problem(model)


def build(eid: str, K: int, mc: int = MC):
    extra = {"x_shape": (4,)} if eid in ("reinforce-baseline", "nvil") else {}
    if eid == "nvil":
        extra["freeze"] = True  # running mean 0 and variance 1: the scale s = 1 (trained mode: below)
    return build_estimator(eid, mc=mc, iw=K, **extra)


@pytest.mark.parametrize("eid,model_name,K,alpha,kl", runtime_matrix(UNBIASED))
def test_unbiased_score_function_estimators(eid, model_name, K, alpha, kl):
    model, x, params, _ = setup(model_name)
    runtime = kl_runtime(model_name, kl)
    exact = exact_gradients(exact_bound(model, x, K, alpha, **runtime), params)
    draws = gradient_draws(build(eid, K), model, x, params, N_DRAWS, alpha=alpha, **runtime)
    compare_with_exact(draws, exact)


def _nvil_training_draws(est, model, x, params, is_phi, n):
    """n draws of NVIL in training mode (its statistics updated at every call), the phi-part of each
    multiplied back by the scale s that the call reports having applied; and those scales."""
    out, scales = [], []
    for _ in range(n):
        loss, diag, _ = est(model, x)
        g = -exact_gradients(loss, params)
        s = float(diag["estimator"]["scale"][0])
        out.append(torch.where(is_phi, g * s, g))
        scales.append(s)
    return torch.stack(out), torch.tensor(scales)


@pytest.mark.slow  # 300 sequential calls: 6 to 18 s on 2 shared cores
def test_nvil_in_training_mode_is_unbiased_up_to_its_reported_scale():
    """Training mode, running statistics updated at every call (momentum 0: each call applies the
    previous call's mean and variance; s = max(1, std) is above 1 at some calls): s * estimate is
    unbiased for grad L_K.  Were the statistics updated before being applied, the signal would
    subtract this call's own mean and divide by its own spread, both functions of its z_k (with
    B M K = 6 particles per call: 10 standard errors of these 300 draws at commit 6969002)."""
    model, x, params, is_phi = setup("bernoulli")
    K = 2
    exact = exact_gradients(exact_bound(model, x, K), params)
    est = build_estimator("nvil", mc=1, iw=K, x_shape=(4,), momentum=0.0)
    est.train()
    with torch.no_grad():  # b(x) = 2 tanh(x_0): a baseline that differs between the data points
        est.baseline[0].weight.zero_()
        est.baseline[0].weight[:, 0] = 1.0
        est.baseline[0].bias.zero_()
        est.baseline[-1].weight.fill_(2.0 / est.baseline[-1].weight.shape[1])
        est.baseline[-1].bias.zero_()
    draws, scales = _nvil_training_draws(est, model, x, params, is_phi, 300)
    assert float((scales > 1.0).double().mean()) > 0.05, scales  # the scale is not always 1
    compare_with_exact(draws, exact)


@pytest.mark.parametrize("kl", ["beta1", "beta0.3-freebits"])
@pytest.mark.parametrize("K,S", [(3, 1), (5, 2)])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_ovis_mc_within_budget_targets_L_K_minus_S(model_name, K, S, kl):
    """Without -exclusive: phi follows grad L_{K-S}, theta follows grad L_K."""
    model, x, params, is_phi = setup(model_name)
    runtime = kl_runtime(model_name, kl)
    g_small = exact_gradients(exact_bound(model, x, K - S, **runtime), params)
    g_full = exact_gradients(exact_bound(model, x, K, **runtime), params)
    target = torch.where(is_phi, g_small, g_full)
    draws = gradient_draws(build(f"ovis-S{S}", K), model, x, params, N_DRAWS, **runtime)
    compare_with_exact(draws, target)


@pytest.mark.parametrize("kl", [pytest.param("beta1"), pytest.param("beta0.3-freebits", marks=pytest.mark.slow)])
@pytest.mark.parametrize("gamma", [1.0, 0.5])
@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_ovis_gamma_bias_is_exactly_gamma_times_expected_weighted_score(model_name, K, gamma, kl):
    """The bias of ovis-gamma{g} is g beta E[sum_k v_k 1[kl_k >= lambda] h_k] (g E[sum_k v_k h_k] at
    beta = 1 without free bits)."""
    model, x, params, is_phi = setup(model_name)
    runtime = kl_runtime(model_name, kl)
    exact = exact_gradients(exact_bound(model, x, K, **runtime), params)
    bias = gamma * exact_gradients(exact_weighted_score(model, x, K, **runtime), params)
    bias = torch.where(is_phi, bias, torch.zeros_like(bias))
    draws = gradient_draws(build(f"ovis-gamma{gamma}", K), model, x, params, N_DRAWS, **runtime)
    result = compare_with_exact(draws, exact, offset=bias)
    # the bias is real: without it the comparison fails by many standard errors
    z_without = ((result.mean - exact.double()) / result.stderr.clamp_min(1e-12)).abs().max()
    # (under beta = 0.3 the bias is beta times smaller: it need only be detectable at the declared rate)
    assert z_without > (3 if kl == "beta1" else 1) * result.threshold


def test_ovis_gamma1_bias_does_not_vanish_with_K():
    model, x, params, is_phi = setup("bernoulli")
    norms = []
    for K in (2, 4, 6):
        b = exact_gradients(exact_weighted_score(model, x, K), params)[is_phi]
        norms.append(float(b.norm()))
    assert norms[-1] > 0.5 * norms[0], norms


@pytest.mark.parametrize("kl", ["beta1", "beta0.3-freebits"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("eid", ["wake-wake", "wake-sleep"])
def test_reweighted_wake_sleep_theta_gradient(eid, model_name, K, alpha, kl):
    model, x, params, is_phi = setup(model_name)
    runtime = kl_runtime(model_name, kl)
    exact = exact_gradients(exact_bound(model, x, K, alpha, **runtime), params)
    draws = gradient_draws(build(eid, K), model, x, params, N_DRAWS, alpha=alpha, **runtime)
    compare_with_exact(draws[:, ~is_phi], exact[~is_phi])


@pytest.mark.parametrize("kl", ["beta1", "beta0.3-freebits"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_wake_wake_phi_gradient_is_the_expected_wake_phase_gradient(model_name, kl):
    """The wake phase's phi-gradient is E[sum_k v_k h_k] whatever beta and free bits (they change
    v_k, not the form of the update): the surrogate adds no derivative through log q in log w."""
    model, x, params, is_phi = setup(model_name)
    runtime = kl_runtime(model_name, kl)
    target = exact_gradients(exact_weighted_score(model, x, 3, 0.0, **runtime, kl_coef=False), params)
    draws = gradient_draws(build("wake-wake", 3), model, x, params, N_DRAWS, **runtime)
    compare_with_exact(draws[:, is_phi], target[is_phi])


def test_wake_wake_refuses_one_particle():
    with pytest.raises(ValueError, match="iw=2 or more"):
        build("wake-wake", 1)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_wake_sleep_phi_gradient_is_the_expected_sleep_phase_gradient(model_name):
    """The sleep phase: phi-gradient E_{p(z) p(x|z)}[grad log q(z|x)], enumerated over z and the
    16 binary observations."""
    model, x, params, is_phi = setup(model_name)
    x_space = torch.tensor(list(itertools.product([0.0, 1.0], repeat=x.shape[1])))
    target = exact_gradients(exact_sleep_phase_objective(model, x_space), params)
    draws = gradient_draws(build("wake-sleep", 3), model, x, params, N_DRAWS, beta=0.3)
    compare_with_exact(draws[:, is_phi], target[is_phi])


@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_tvo_one_partition_is_the_elbo_gradient(model_name, K):
    model, x, params, _ = setup(model_name)
    exact = exact_gradients(exact_elbo(model, x), params)
    draws = gradient_draws(build("tvo-part1", K), model, x, params, N_DRAWS)
    compare_with_exact(draws, exact)


def _tvo_matrix():
    """(model, eid, K, kl): one case in the quick suite (a TVO step costs 3 score-function steps), the
    rest marked slow."""
    quick = ("bernoulli", "tvo-part3-beta2-trapz", 2, "beta0.3-freebits")
    return [pytest.param(*case, marks=() if case == quick else pytest.mark.slow)
            for case in itertools.product(MODELS, ["tvo-part2-beta1", "tvo-part3-beta2-trapz", "tvo-part2-beta1-right"],
                                          [2, 3], ["beta1", "beta0.3", "beta0.3-freebits"])]


@pytest.mark.parametrize("model_name,eid,K,kl", _tvo_matrix())
def test_multi_partition_tvo_gradient_is_its_enumerated_expectation(model_name, eid, K, kl):
    """The covariance estimator is biased for the TVO integral's gradient at finite K; its exact
    expectation (ovis.testing.exact_tvo_estimator_mean, written from the formula) is the target."""
    model, x, params, _ = setup(model_name)
    runtime = kl_runtime(model_name, kl)
    est = build(eid, K)
    betas, coefs = est.riemann_weights()
    target = exact_gradients(exact_tvo_estimator_mean(model, x, K, betas.double(), coefs.double(), **runtime),
                             params)
    draws = gradient_draws(est, model, x, params, N_DRAWS, **runtime)
    compare_with_exact(draws, target)


@pytest.mark.parametrize("eid", ["tvo-part2-beta1", "tvo-part3-beta2-trapz", "tvo-part2-beta1-right"])
def test_tvo_integral_estimate_approaches_the_exact_integral(eid):
    model, x, _, _ = setup("bernoulli")
    errors = {}
    for K in (2, 10, 200):
        est = build(eid, K, mc=50)
        betas, coefs = est.riemann_weights()
        exact = float(exact_tvo_integral(model, x, betas.double(), coefs.double()).detach())
        with torch.no_grad():
            values = torch.stack([est(model, x)[1]["estimator"]["tvo"].mean() for _ in range(20)])
        errors[K] = abs(float(values.mean()) - exact)
    assert errors[2] > errors[10] > errors[200] and errors[200] < 0.05 * errors[2], errors


def test_score_function_on_a_gaussian_model_with_hidden_rsample():
    """Pyro's NonreparameterizedNormal trick: reinforce (K=1) matches the closed-form ELBO gradient."""
    model = LinearGaussianModel(D=2, seed=1, reparameterised=False)
    x = torch.randn(4, 2)
    params = list(model.parameters())
    exact = exact_gradients(model.exact_elbo(x).mean(), params)
    draws = gradient_draws(build("reinforce", 1, mc=2000), model, x, params, 60)
    compare_with_exact(draws, exact)


class _BrokenVimco(Vimco):
    """A deliberately wrong VIMCO: the control variate includes the particle's own weight."""

    def control_variate(self, log_w, d, x, params):
        c, aux, extra = super().control_variate(log_w, d, x, params)
        return c + 0.5 * torch.softmax(log_w, -1), aux, extra


class _BrokenReinforce(build_estimator("reinforce", iw=2).__class__):
    """A deliberately wrong REINFORCE: log Z keeps its gradient through q (double counting)."""

    def compute(self, model, x, params):
        p = self.evaluate(model, x, params, zgrads=False)
        from ovis.estimators.importance import log_weights, normalized_weights, renyi_bound

        log_w, _ = log_weights(p.log_px, p.log_qz, p.log_pz)  # q NOT detached
        bound = renyi_bound(log_w)
        d = (bound[..., None] - normalized_weights(log_w)).detach()
        loss = -(d * p.log_qz.sum(-1)).sum(-1).mean() - bound.mean()
        return loss, {}, p.output


@pytest.mark.parametrize("broken", [_BrokenVimco, _BrokenReinforce])
def test_a_broken_estimator_fails_the_comparison(broken):
    """The harness has power: wrong estimators are caught."""
    model, x, params, _ = setup("bernoulli")
    exact = exact_gradients(exact_bound(model, x, 3), params)
    est = broken(mc=MC, iw=3)
    draws = gradient_draws(est, model, x, params, N_DRAWS)
    with pytest.raises(AssertionError, match="disagrees"):
        compare_with_exact(draws, exact)
