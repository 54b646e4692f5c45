r"""Score-function estimators against the exact gradient of L_K on enumerable models.

Every comparison uses the draws' own standard error, a declared failure rate (1e-3 per test,
Bonferroni over coordinates: ovis.testing.compare_with_exact) and asserts its power
(|stderr| <= 0.25 |exact gradient|).  Each draw averages mc = 500 outer samples; 40 draws.
"""
from __future__ import annotations

import math

import pytest
import torch

from ovis.estimators import build_estimator
from ovis.estimators.vimco import Vimco
from ovis.testing import (
    exact_gradient_problem,
    BernoulliToyModel,
    CategoricalToyModel,
    LinearGaussianModel,
    compare_with_exact,
    exact_bound,
    exact_elbo,
    exact_gradients,
    exact_tvo_integral,
    exact_weighted_score,
    gradient_draws,
)

pytestmark = pytest.mark.usefixtures("float64")
N_DRAWS, MC = 40, 500
MODELS = {"bernoulli": BernoulliToyModel, "categorical": CategoricalToyModel}
UNBIASED = ["reinforce", "reinforce-baseline", "vimco-arithmetic", "vimco-geometric", "ovis-gamma0",
            "ovis-gamma0-geometric", "ovis-S1-exclusive", "ovis-S3-exclusive"]


def setup(model_name: str):
    model = MODELS[model_name]()
    return exact_gradient_problem(model)


def build(eid: str, K: int, mc: int = MC):
    extra = {"x_shape": (4,)} if eid == "reinforce-baseline" else {}
    return build_estimator(eid, mc=mc, iw=K, **extra)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("eid", UNBIASED)
def test_unbiased_score_function_estimators(eid, model_name, K, alpha):
    model, x, params, _ = setup(model_name)
    exact = exact_gradients(exact_bound(model, x, K, alpha), params)
    draws = gradient_draws(build(eid, K), model, x, params, N_DRAWS, alpha=alpha)
    compare_with_exact(draws, exact)


@pytest.mark.parametrize("K,S", [(3, 1), (5, 2)])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_ovis_mc_within_budget_targets_L_K_minus_S(model_name, K, S):
    """Without -exclusive: phi follows grad L_{K-S}, theta follows grad L_K."""
    model, x, params, is_phi = setup(model_name)
    g_small = exact_gradients(exact_bound(model, x, K - S), params)
    g_full = exact_gradients(exact_bound(model, x, K), params)
    target = torch.where(is_phi, g_small, g_full)
    draws = gradient_draws(build(f"ovis-S{S}", K), model, x, params, N_DRAWS)
    compare_with_exact(draws, target)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_ovis_gamma_bias_is_exactly_gamma_times_expected_weighted_score(model_name, K, gamma):
    model, x, params, is_phi = setup(model_name)
    exact = exact_gradients(exact_bound(model, x, K), params)
    bias = gamma * exact_gradients(exact_weighted_score(model, x, K), params)
    bias = torch.where(is_phi, bias, torch.zeros_like(bias))
    draws = gradient_draws(build(f"ovis-gamma{gamma}", K), model, x, params, N_DRAWS)
    result = compare_with_exact(draws, exact, offset=bias)
    # the bias is real: without it the comparison fails by many standard errors
    z_without = ((result.mean - exact.double()) / result.stderr.clamp_min(1e-12)).abs().max()
    assert z_without > 3 * result.threshold


def test_ovis_gamma1_bias_does_not_vanish_with_K():
    model, x, params, is_phi = setup("bernoulli")
    norms = []
    for K in (2, 4, 6):
        b = exact_gradients(exact_weighted_score(model, x, K), params)[is_phi]
        norms.append(float(b.norm()))
    assert norms[-1] > 0.5 * norms[0], norms


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("eid", ["wake-wake", "wake-sleep"])
def test_reweighted_wake_sleep_theta_gradient(eid, model_name, K, alpha):
    model, x, params, is_phi = setup(model_name)
    exact = exact_gradients(exact_bound(model, x, K, alpha), params)
    draws = gradient_draws(build(eid, K), model, x, params, N_DRAWS, alpha=alpha)
    compare_with_exact(draws[:, ~is_phi], exact[~is_phi])


@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_tvo_one_partition_is_the_elbo_gradient(model_name, K):
    model, x, params, _ = setup(model_name)
    exact = exact_gradients(exact_elbo(model, x), params)
    draws = gradient_draws(build("tvo-part1", K), model, x, params, N_DRAWS)
    compare_with_exact(draws, exact)


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
