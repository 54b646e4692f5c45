r"""The REBAR-line estimators for Bernoulli latents against the exact gradient (enumeration).

Comparisons use the draws' own standard error with a declared failure rate (1e-3 per test,
Bonferroni over coordinates, ovis.testing.compare_with_exact) and assert their power
(|stderr| <= 0.25 |exact|).  Each draw averages mc = MC outer samples; N_DRAWS draws.
The objective of these estimators is L_K (iw = 1: the ELBO, as in the papers).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ovis.estimators import build_estimator
from ovis.testing import (
    BernoulliToyModel,
    LinearGaussianModel,
    compare_with_exact,
    exact_bound,
    exact_gradients,
    gradient_draws,
)

pytestmark = pytest.mark.usefixtures("float64")
N_DRAWS, MC = 40, 80
UNBIASED = ["arm", "disarm", "muprop", "simple-muprop", "rebar", "dynamic-rebar", "relax"]


def setup():
    model = BernoulliToyModel()
    x = torch.bernoulli(torch.full((3, 4), 0.5), generator=torch.Generator().manual_seed(5))
    params = list(model.parameters())
    is_phi = torch.cat([torch.full((p.numel(),), n.startswith("inference_network"))
                        for n, p in model.named_parameters()])
    return model, x, params, is_phi


@pytest.mark.parametrize("K", [1, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("eid", UNBIASED)
def test_unbiased_single_layer_estimators(eid, K):
    """Unbiased for grad L_K (K=1: the ELBO) in theta and phi, at the runtime temperature 0.3."""
    model, x, params, _ = setup()
    exact = exact_gradients(exact_bound(model, x, K), params)
    draws = gradient_draws(build_estimator(eid, mc=MC, iw=K), model, x, params, N_DRAWS, tau=0.3)
    compare_with_exact(draws, exact)


@pytest.mark.parametrize("eid", ["dynamic-rebar", "relax"])
def test_rebar_relax_unbiased_with_arbitrary_control_variate_parameters(eid):
    model, x, params, _ = setup()
    exact = exact_gradients(exact_bound(model, x, 1), params)
    est = build_estimator(eid, mc=MC, iw=1)
    with torch.no_grad():
        est.eta.fill_(-0.7)
        est.log_tau.fill_(0.4)
        for p in est.parameters():
            if p.dim() > 0:
                p.add_(0.5 * torch.randn_like(p))
    compare_with_exact(gradient_draws(est, model, x, params, N_DRAWS), exact)


def test_variance_adaptation_lowers_the_second_moment():
    """dynamic-rebar's auxiliary gradient descends E|g_a|^2: a few SGD steps from a bad eta lower it."""
    model, x, params, _ = setup()
    est = build_estimator("dynamic-rebar", mc=200, iw=1, eta_init=-1.0)

    def second_moment():
        return torch.stack([est(model, x)[1]["estimator"]["grad_sq_norm"].mean() for _ in range(10)]).mean()

    before = float(second_moment())
    opt = torch.optim.SGD(est.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        loss, _, _ = est(model, x)
        loss.backward()
        opt.step()
    after = float(second_moment())
    eta = float(est.eta.detach())
    assert eta > -0.5, eta
    assert after < 0.7 * before, (before, after)


def test_a_sign_error_in_arm_is_detected(monkeypatch):
    """Power check of the harness: ARM with the sign of (u - 1/2) flipped must fail."""
    from ovis.estimators import discrete

    model, x, params, _ = setup()
    exact = exact_gradients(exact_bound(model, x, 1), params)
    est = build_estimator("arm", mc=MC, iw=1)
    original = discrete.ARM.score_gradient

    def flipped(self, fbar, a, shape, params):
        g, s, aux, extra = original(self, fbar, a, shape, params)
        return -g, s, aux, extra

    monkeypatch.setattr(discrete.ARM, "score_gradient", flipped)
    draws = gradient_draws(est, model, x, params, N_DRAWS)
    with pytest.raises(AssertionError, match="disagrees"):
        compare_with_exact(draws, exact)


def test_nvil_with_frozen_scale_is_unbiased_after_multiplying_back():
    model, x, params, is_phi = setup()
    exact = exact_gradients(exact_bound(model, x, 1), params)
    est = build_estimator("nvil", mc=MC, iw=1, x_shape=(4,))
    # move the running statistics away from their initial values, then freeze them
    for _ in range(5):
        est(model, x)
    est.running_var.fill_(9.0)  # s = 3
    est.freeze = True
    assert est.scale == pytest.approx(3.0)
    draws = gradient_draws(est, model, x, params, N_DRAWS)
    draws[:, is_phi] *= est.scale
    compare_with_exact(draws, exact)
    # and without multiplying back, phi's gradient is shrunk by s: detected
    with pytest.raises(AssertionError):
        compare_with_exact(gradient_draws(est, model, x, params, N_DRAWS), exact)


def test_nvil_running_statistics_update_in_training_only():
    model, x, _, _ = setup()
    est = build_estimator("nvil", mc=4, iw=1, x_shape=(4,))
    est(model, x)
    m = float(est.running_mean)
    assert m != 0.0
    est.eval()
    est(model, x)
    assert float(est.running_mean) == m
    assert est.scale >= 1.0


@pytest.mark.parametrize("eid", ["arm", "disarm", "muprop", "simple-muprop", "rebar", "dynamic-rebar", "relax"])
def test_single_layer_estimators_refuse_deep_models_and_models_without_hooks(eid):
    from ovis.models.sbm import SigmoidBeliefNetwork

    sbn = SigmoidBeliefNetwork((6,), N=3, depth=2)
    x = torch.bernoulli(torch.full((2, 6), 0.5))
    est = build_estimator(eid, mc=1, iw=1)
    with pytest.raises(ValueError, match="single-stochastic-layer"):
        est(sbn, x)
    with pytest.raises(TypeError, match="latent_depth"):
        est(LinearGaussianModel(D=3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="alpha"):
        est(BernoulliToyModel(), torch.ones(2, 4), alpha=0.5)
