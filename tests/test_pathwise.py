r"""Reparameterised estimators on the linear-Gaussian model (closed-form ELBO and log p(x))."""
from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from ovis.estimators import build_estimator
from ovis.testing import (
    LinearGaussianModel,
    compare_two_samples,
    compare_with_exact,
    exact_gradients,
    gradient_draws,
    total_variance,
)

pytestmark = pytest.mark.usefixtures("float64")
N_DRAWS, MC = 40, 500


def setup():
    model = LinearGaussianModel(D=2, seed=1)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3)) * 2
    params = list(model.parameters())
    is_phi = torch.cat([torch.full((p.numel(),), n.startswith("inference_network"))
                        for n, p in model.named_parameters()])
    return model, x, params, is_phi


def two_sample_z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (a.mean(0) - b.mean(0)) / se


@pytest.mark.parametrize("eid,K", [("pathwise-vae", 1), ("pathwise-vae", 3), ("stl", 1)])
def test_elbo_gradient_matches_the_closed_form(eid, K):
    model, x, params, _ = setup()
    exact = exact_gradients(model.exact_elbo(x).mean(), params)
    draws = gradient_draws(build_estimator(eid, mc=MC, iw=K), model, x, params, N_DRAWS)
    compare_with_exact(draws, exact)


def test_pathwise_iwae_with_one_particle_equals_pathwise_vae():
    model, x, params, _ = setup()
    grads = []
    for eid in ("pathwise-iwae", "pathwise-vae"):
        torch.manual_seed(11)
        loss, _, _ = build_estimator(eid, mc=3, iw=1)(model, x)
        grads.append(exact_gradients(loss, params))
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def _dreg_matrix():
    """(K, alpha, beta): K in {1, 2, 3, 5} x alpha in {0, 0.5} x beta in {0.3, 1}; beta = 1 at K in
    {1, 2, 5} and beta = 0.3 at K = 3 run in the quick suite, the rest is marked slow."""
    return [pytest.param(K, alpha, beta, marks=() if (beta == 1.0) != (K == 3) else pytest.mark.slow)
            for K in (1, 2, 3, 5) for alpha in (0.0, 0.5) for beta in (0.3, 1.0)]


@pytest.mark.parametrize("K,alpha,beta", _dreg_matrix())
def test_dreg_agrees_with_iwae_in_expectation(K, alpha, beta):
    """DReG against autograd through the same (Renyi, KL-weighted) bound: Welch's statistic with a
    declared failure rate of 1e-3 (compare_two_samples); DReG's hook scale is
    1 - beta (1 - alpha)(1 - v_k)."""
    model, x, params, is_phi = setup()
    iwae = gradient_draws(build_estimator("pathwise-iwae", mc=MC, iw=K), model, x, params, N_DRAWS, alpha=alpha,
                          beta=beta)
    dreg = gradient_draws(build_estimator("dreg", mc=MC, iw=K), model, x, params, N_DRAWS, alpha=alpha, beta=beta)
    compare_two_samples(dreg, iwae)
    # and DReG has lower phi-variance than IWAE for K > 1 (its purpose): one-sided, failure rate 1e-3
    if K > 1:
        v_iwae, se_iwae = total_variance(iwae[:, is_phi])
        v_dreg, se_dreg = total_variance(dreg[:, is_phi])
        z = (v_iwae - v_dreg) / math.sqrt(se_iwae ** 2 + se_dreg ** 2)
        assert z > NormalDist().inv_cdf(1 - 1e-3), (v_iwae, v_dreg, z)


def test_dreg_refuses_free_bits():
    model, x, _, _ = setup()
    with pytest.raises(ValueError, match="dreg does not support free bits.*freebits=None"):
        build_estimator("dreg", mc=2, iw=3)(model, x, freebits=0.5)
    build_estimator("pathwise-iwae", mc=2, iw=3)(model, x, freebits=0.5)  # autograd through the clamp is fine


@pytest.mark.parametrize("K", [2, 5])
def test_stl_bias_for_several_particles_is_measured(K):
    r"""STL is biased for grad L_K when K > 1 (Tucker et al. 2019): the bias is tens of standard
    errors on phi, zero on theta (STL does not change the theta-gradient)."""
    model, x, params, is_phi = setup()
    iwae = gradient_draws(build_estimator("pathwise-iwae", mc=MC, iw=K), model, x, params, N_DRAWS)
    stl = gradient_draws(build_estimator("stl", mc=MC, iw=K), model, x, params, N_DRAWS)
    z = two_sample_z(stl, iwae)
    assert float(z[is_phi].abs().max()) > 10.0, z
    assert float(z[~is_phi].abs().max()) < 4.1, z


def test_iw_bound_approaches_log_evidence():
    model, x, _, _ = setup()
    torch.manual_seed(0)
    est_gap = []
    with torch.no_grad():
        log_px = model.exact_log_evidence(x).mean()
        for K in (1, 10, 1000):
            _, d, _ = build_estimator("pathwise-iwae", mc=200, iw=K)(model, x)
            est_gap.append(float(log_px - d["loss"]["L_k"].mean()))
    assert est_gap[0] > est_gap[1] > est_gap[2] >= -0.01
    assert est_gap[2] < 0.02


def test_renyi_alpha_zero_is_the_iw_bound():
    """alpha = 0 is the IW bound log (1/K) sum_k w_k, recomputed here from the model's own sample and
    distributions; the Renyi bound is continuous at alpha = 0 and differs from it at alpha = 0.5."""
    model, x, params, _ = setup()
    K, M = 7, 2
    losses = {}
    for alpha in (0.0, 1e-7, 0.5):
        torch.manual_seed(4)
        losses[alpha] = build_estimator("pathwise-iwae", mc=M, iw=K)(model, x, alpha=alpha)[0].detach()
    torch.manual_seed(4)
    _, _, out = build_estimator("pathwise-iwae", mc=M, iw=K)(model, x)
    z = out["z"][0]
    x_rep = x[:, None].expand(x.shape[0], M * K, 2).reshape(-1, 2)
    log_w = (model.observation_model(z).log_prob(x_rep) + model.prior(z.shape[0]).log_prob(z)
             - model.posterior(x_rep).log_prob(z)).view(x.shape[0], M, K)
    iw = (torch.logsumexp(log_w, -1) - math.log(K)).mean().detach()
    assert float(losses[0.0]) == pytest.approx(-float(iw), abs=1e-10)
    assert float(losses[1e-7]) == pytest.approx(float(losses[0.0]), abs=1e-5)
    assert abs(float(losses[0.5]) - float(losses[0.0])) > 1e-3
