r"""Model utilities (ovis.models.utilities) on the linear-Gaussian model of ovis.testing, whose ELBO,
distortion, rate and log-evidence are known in closed form:

``p(z) = N(mu, I)``, ``p(x|z) = N(z, I)``, ``q(z|x) = N(m, diag s^2)`` with ``m = A x + b``:

* ``D = -E_q log p(x|z) = D/2 log(2 pi) + 1/2 sum((x - m)^2 + s^2)``,
* ``R = KL(q || p) = sum(1/2 ((m - mu)^2 + s^2) - 1/2 - log s)``,
* ``log p(x) = log N(x; mu, 2 I)``.

Monte-Carlo estimates are compared within ``z * SE`` (``z`` from a declared failure rate of 1e-3,
Bonferroni over the comparisons of a test), the standard errors measured from independent draws;
the comparisons have power (SE asserted small).  Samples and image grids: shapes, the moments of
prior samples and of reconstructions, and PNGs written atomically.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from ovis.models.utilities import (
    distortion_rate_likelihood,
    image_grid,
    prior_samples,
    reconstruction_grid,
    reconstructions,
    save_image_grid,
)
from ovis.testing import LinearGaussianModel, t_threshold, z_threshold

pytestmark = pytest.mark.usefixtures("float64")
FAILURE_RATE = 1e-3


def _model_and_data(B: int = 20, D: int = 3):
    model = LinearGaussianModel(D=D, seed=3)
    g = torch.Generator().manual_seed(5)
    x = model.generative_model.mu.detach() + math.sqrt(2.0) * torch.randn(B, D, generator=g)
    return model, x


def _closed_form(model: LinearGaussianModel, x: torch.Tensor):
    i, mu = model.inference_network, model.generative_model.mu
    m, s2 = i.A * x + i.b, torch.exp(2 * i.log_sigma).expand_as(x)
    D = (0.5 * math.log(2 * math.pi) + 0.5 * ((x - m) ** 2 + s2)).sum(-1)
    R = (0.5 * ((m - mu) ** 2 + s2) - 0.5 - 0.5 * torch.log(s2)).sum(-1)
    return D.mean().item(), R.mean().item()


def test_closed_forms_agree_with_the_model():
    model, x = _model_and_data()
    with torch.no_grad():
        D, R = _closed_form(model, x)
        assert -(D + R) == pytest.approx(model.exact_elbo(x).mean().item(), abs=1e-10)


def test_distortion_plus_rate_is_minus_the_elbo_and_each_matches_its_closed_form():
    model, x = _model_and_data()
    K = 2000
    torch.manual_seed(11)
    est = distortion_rate_likelihood(model, x, K=K, batch_size=7, max_rows=3000)
    with torch.no_grad():
        D_exact, R_exact = _closed_form(model, x)
        # the standard errors of the means over B*K particles, from independent draws of the terms
        q = model.posterior(x.expand(K, *x.shape))
        z = q.sample()
        d_terms = -model.observation_model(z).log_prob(x.expand_as(z))
        r_terms = q.log_prob(z) - model.prior(1).log_prob(z)
        se_d = d_terms.std().item() / math.sqrt(d_terms.numel())
        se_r = r_terms.std().item() / math.sqrt(r_terms.numel())
        se_e = (d_terms + r_terms).std().item() / math.sqrt(d_terms.numel())
    zt = z_threshold(FAILURE_RATE, 3)
    assert est["n"] == x.shape[0]
    assert est["D"] + est["R"] == pytest.approx(-est["elbo"], abs=1e-9)  # the same particles
    assert max(se_d, se_r, se_e) < 0.02  # power: a 0.1-nat error would be seen
    assert abs(est["D"] - D_exact) < zt * se_d, (est["D"], D_exact, se_d)
    assert abs(est["R"] - R_exact) < zt * se_r, (est["R"], R_exact, se_r)
    assert abs(est["D"] + est["R"] + model.exact_elbo(x).mean().item()) < zt * se_e


def test_importance_weighted_likelihood_approaches_log_evidence():
    r"""``L_1`` is the ELBO; ``L_K`` rises towards ``log p(x)``: with ``K = 1000`` the gap is less
    than a tenth of ``KL(q || p(z|x)) = log p(x) - ELBO`` and ``L_K`` exceeds ``log p(x)`` by no
    more than its Monte-Carlo error (10 repeats)."""
    model, x = _model_and_data()
    with torch.no_grad():
        log_px = model.exact_log_evidence(x).mean().item()
        elbo = model.exact_elbo(x).mean().item()
    gap = log_px - elbo
    assert gap > 0.05  # q is not the posterior: the comparison has something to measure
    torch.manual_seed(12)
    repeats = {K: torch.tensor([distortion_rate_likelihood(model, x, K=K, max_rows=4000)["L"] for _ in range(10)])
               for K in (1, 10, 1000)}
    zt = t_threshold(FAILURE_RATE, 3, 10 - 1)  # a mean of 10 repeats over its own standard error: Student-t
    se = {K: r.std().item() / math.sqrt(len(r)) for K, r in repeats.items()}
    L = {K: r.mean().item() for K, r in repeats.items()}
    assert abs(L[1] - elbo) < zt * se[1], (L[1], elbo, se[1])
    assert L[1] < L[10] < L[1000]
    assert log_px - L[1000] < gap / 10, (log_px, L[1000], gap)
    assert L[1000] - log_px < zt * se[1000], (L[1000], log_px, se[1000])


def test_tensor_dataset_and_dataloader_give_the_same_estimate():
    from ovis.datasets import TensorImageDataset

    model, x = _model_and_data(B=9)
    out = []
    loader = DataLoader(TensorImageDataset(x), batch_size=4, shuffle=False,
                        generator=torch.Generator().manual_seed(0))  # its base seed not from the global RNG
    for data in (x, TensorImageDataset(x), loader):
        torch.manual_seed(3)
        out.append(distortion_rate_likelihood(model, data, K=5, batch_size=4))
    # the same particles (the data set stores float32: equal to float32 rounding)
    assert out[1] == out[2]
    assert out[0] == pytest.approx(out[1], rel=1e-6)
    with pytest.raises(ValueError, match="K must be"):
        distortion_rate_likelihood(model, x, K=0)
    with pytest.raises(ValueError, match="no data point"):
        distortion_rate_likelihood(model, x[:0], K=2)


def test_prior_samples_and_reconstructions_have_the_model_moments():
    r"""Prior samples: the mean of ``p(x|z)`` is ``z ~ p(z) = N(mu, I)``, a sample ``x`` has
    variance 2.  Reconstructions: the mean of ``p(x|z)``, ``z ~ q(z|x)``, averages to ``A x + b``."""
    model, x = _model_and_data(B=4)
    n = 20000
    torch.manual_seed(4)
    mu = model.generative_model.mu.detach()
    means = prior_samples(model, n)
    xs = prior_samples(model, n, mean=False)
    zt = z_threshold(FAILURE_RATE, 3 * 3)
    assert means.shape == (n, 3) and not means.requires_grad
    assert ((means.mean(0) - mu).abs() < zt * means.std(0) / math.sqrt(n)).all()
    assert ((xs.var(0) - 2.0).abs() < zt * 2.0 * math.sqrt(2 / (n - 1))).all()
    rec = torch.stack([reconstructions(model, x) for _ in range(2000)])  # [2000, B, 3]
    i = model.inference_network
    expected = (i.A * x + i.b).detach()
    se = rec.std(0) / math.sqrt(rec.shape[0])
    assert ((rec.mean(0) - expected).abs() < z_threshold(FAILURE_RATE, 12) * se).all()
    with pytest.raises(ValueError, match="n must be"):
        prior_samples(model, 0)


def test_grids_of_vae_samples_and_png(tmp_path):
    from matplotlib import image as mpimg

    from ovis.models.likelihoods import LikelihoodVAE

    model = LikelihoodVAE((1, 28, 28), prior="mog", N=2, K=3, hdim=8, nlayers=1, likelihood="cbernoulli")
    x = torch.rand(10, 1, 28, 28)
    prior = prior_samples(model, 12)
    rec = reconstructions(model, x)
    assert prior.shape == (12, 1, 28, 28) and rec.shape == x.shape
    assert 0 <= float(prior.min()) and float(prior.max()) <= 1
    grid = image_grid(prior, cols=5)
    assert grid.shape == (3 * 29 + 1, 5 * 29 + 1)
    assert torch.equal(grid[1:29, 1:29], prior[0, 0].float())
    assert torch.equal(grid[0], torch.ones(5 * 29 + 1))  # white borders
    rgrid = reconstruction_grid(x, rec, cols=4)  # 3 pairs of rows: data, reconstructions
    assert rgrid.shape == (6 * 29 + 1, 4 * 29 + 1)
    assert torch.equal(rgrid[1:29, 1:29], x[0, 0].float()) and torch.equal(rgrid[30:58, 1:29], rec[0, 0].float())
    assert torch.equal(rgrid[1 + 2 * 29:29 + 2 * 29, 30:58], x[5, 0].float())  # row pair 2, column 1
    path = tmp_path / "s" / "grid.png"
    save_image_grid(path, rgrid)
    img = mpimg.imread(path)
    assert img.shape[:2] == tuple(rgrid.shape)
    assert abs(float(img[..., 0].mean()) - float(rgrid.mean())) < 0.01
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_grid(x, rec[:3])
