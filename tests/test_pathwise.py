r"""Reparameterised estimators on the linear-Gaussian model (closed-form ELBO and log p(x))."""
from __future__ import annotations

import math

import pytest
import torch

from ovis.estimators import build_estimator
from ovis.estimators.importance import iw_bound
from ovis.testing import LinearGaussianModel, compare_with_exact, exact_gradients, gradient_draws

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


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("K", [1, 2, 5])
def test_dreg_agrees_with_iwae_in_expectation(K, alpha):
    model, x, params, _ = setup()
    iwae = gradient_draws(build_estimator("pathwise-iwae", mc=MC, iw=K), model, x, params, N_DRAWS, alpha=alpha)
    dreg = gradient_draws(build_estimator("dreg", mc=MC, iw=K), model, x, params, N_DRAWS, alpha=alpha)
    z = two_sample_z(dreg, iwae)
    assert float(z.abs().max()) < 4.1, z  # failure rate 1e-3 over the coordinates
    # power: the standard error is small relative to the gradient
    assert float((dreg.std(0) / math.sqrt(N_DRAWS)).norm()) < 0.25 * float(iwae.mean(0).norm())
    # and DReG has lower phi-variance than IWAE for K > 1 (its purpose)
    if K > 1:
        assert float(dreg.var(0).sum()) < float(iwae.var(0).sum())


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
    model, x, params, _ = setup()
    losses = []
    for alpha in (0.0, None):
        torch.manual_seed(4)
        kwargs = {} if alpha is None else {"alpha": alpha}
        loss, _, _ = build_estimator("pathwise-iwae", mc=2, iw=7)(model, x, **kwargs)
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
