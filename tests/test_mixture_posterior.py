r"""The hybrid estimator of a mixture-of-Gaussians posterior (ovis.distributions.mixture) against
the exact ELBO gradient of a one-dimensional model computed by numerical integration.

Model: :math:`p(z) = \mathcal{N}(0, 1)`, :math:`p(x|z) = \mathcal{N}(x; z^2, 0.5^2)` at ``x = 2``
(a bimodal posterior around :math:`\pm\sqrt 2`); :math:`q` a mixture of 3 Gaussians with free
parameters.  The exact gradient: autograd through a trapezoid integral on 20001 points of
[-12, 12].  Each draw averages 500 independent batch copies of ``S = 4`` samples; 40 draws;
compare_with_exact (failure rate 1e-3, Bonferroni over the 9 coordinates, power asserted).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from statistics import NormalDist

import pytest
import torch
from torch import nn

from ovis.distributions.mixture import DiagonalGaussianMixture, hybrid_elbo_surrogate, trapezoid_elbo_1d
from ovis.testing import compare_with_exact

pytestmark = pytest.mark.usefixtures("float64")
X, SIGMA_X = 2.0, 0.5


def log_joint(z: torch.Tensor) -> torch.Tensor:
    z = z[..., 0]
    return (torch.distributions.Normal(0.0, 1.0).log_prob(z)
            + torch.distributions.Normal(z ** 2, SIGMA_X).log_prob(torch.full_like(z, X)))


class Posterior(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
        self.loc = nn.Parameter(torch.tensor([[-1.2], [0.4], [1.5]]))
        self.log_scale = nn.Parameter(torch.tensor([[-0.7], [-0.2], [-1.0]]))

    def q(self, batch: int = 0) -> DiagonalGaussianMixture:
        l, m, s = self.logits, self.loc, self.log_scale.exp()
        if batch:
            l, m, s = l.expand(batch, *l.shape), m.expand(batch, *m.shape), s.expand(batch, *s.shape)
        return DiagonalGaussianMixture(l, m, s)


def draws(post: Posterior, n: int, batch: int, surrogate=None, **kw) -> torch.Tensor:
    params = list(post.parameters())
    out = []
    for _ in range(n):
        if surrogate is None:
            loss, _ = hybrid_elbo_surrogate(log_joint, post.q(batch), **kw)
        else:
            loss, _ = surrogate(post.q(batch), **kw)
        out.append(torch.cat([-g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(out)


def exact_gradient(post: Posterior) -> torch.Tensor:
    elbo = trapezoid_elbo_1d(log_joint, post.q())
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(elbo, list(post.parameters()))])


def test_trapezoid_elbo_is_accurate():
    """The quadrature agrees with a large Monte Carlo average and with a finer grid."""
    post = Posterior()
    with torch.no_grad():
        exact = float(trapezoid_elbo_1d(log_joint, post.q()))
        finer = float(trapezoid_elbo_1d(log_joint, post.q(), lo=-15, hi=15, n=60001))
        q = post.q()
        z = q.distribution().sample((400_000,))
        f = log_joint(z) - q.log_prob(z)
    assert abs(exact - finer) < 1e-8
    assert abs(exact - float(f.mean())) < 4 * float(f.std()) / math.sqrt(len(f))


@pytest.mark.parametrize("control_variate", ["loo", "none"])
def test_hybrid_estimator_matches_the_exact_elbo_gradient(control_variate):
    post = Posterior()
    exact = exact_gradient(post)
    d = draws(post, 40, 500, samples=4, control_variate=control_variate)
    result = compare_with_exact(d, exact)
    print(f"{control_variate}: {result.summary()}")


def _no_score_term(q, samples=4):
    """Broken: the component choice gets no score-function gradient (the logits only see log q)."""
    z, _, _ = q.hybrid_sample(samples)
    f = log_joint(z) - q.log_prob(z)
    return -f.mean(), f.detach().mean(0)


def test_without_the_score_term_the_logits_gradient_is_wrong():
    post = Posterior()
    exact = exact_gradient(post)
    d = draws(post, 40, 500, surrogate=_no_score_term)
    with pytest.raises(AssertionError, match="disagrees"):
        compare_with_exact(d, exact)


def test_leave_one_out_control_variate_reduces_the_logits_variance():
    r"""Where it should: with an unnormalised joint (``log p(x, z) - 10``: the same gradient, a
    signal with a large mean) the score term without control variate is noisy; the leave-one-out
    mean removes the offset.  (At ``log p(x, z)`` itself, the ELBO's mean is small next to the
    spread of ``f`` and the reduction is not significant: measured 9.4 vs 4.0 with 200 draws,
    8.1 vs 17.1 with 1000 draws; heavy tails.)"""
    post = Posterior()

    def shifted(z, **kw):
        return hybrid_elbo_surrogate(lambda v: log_joint(v) - 10.0, z, **kw)

    g0 = draws(post, 300, 1, surrogate=shifted, samples=4, control_variate="none")[:, :3]
    g1 = draws(post, 300, 1, surrogate=shifted, samples=4, control_variate="loo")[:, :3]
    sq0 = ((g0 - g0.mean(0)) ** 2).sum(1)
    sq1 = ((g1 - g1.mean(0)) ** 2).sum(1)
    z = (sq0.mean() - sq1.mean()) / math.sqrt(sq0.var() / len(sq0) + sq1.var() / len(sq1))
    assert z > NormalDist().inv_cdf(1 - 1e-3), (float(sq0.mean()), float(sq1.mean()), float(z))


def test_training_the_mixture_raises_the_elbo_and_finds_both_modes():
    post = Posterior()
    opt = torch.optim.Adam(post.parameters(), lr=0.05)
    with torch.no_grad():
        start = float(trapezoid_elbo_1d(log_joint, post.q()))
    for _ in range(300):
        opt.zero_grad()
        loss, _ = hybrid_elbo_surrogate(log_joint, post.q(16), samples=4)
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = float(trapezoid_elbo_1d(log_joint, post.q()))
        grid = torch.linspace(-12, 12, 20001)[:, None]
        log_evidence = float(torch.logsumexp(log_joint(grid), 0) + math.log(24 / 20000))
        pi = torch.softmax(post.logits, 0)
        mass_right = float(pi[post.loc[:, 0] > 0].sum())
    assert end > start + 0.5, (start, end)
    assert end > log_evidence - 0.1, (end, log_evidence)  # near the evidence: both modes covered
    assert 0.3 < mass_right < 0.7, mass_right


def test_shapes_and_errors():
    q = Posterior().q(5)
    z, c, lp = q.hybrid_sample(7)
    assert z.shape == (7, 5, 1) and c.shape == (7, 5) and lp.shape == (7, 5)
    assert q.log_prob(z).shape == (7, 5)
    with pytest.raises(ValueError, match="samples must be an integer >= 2"):
        hybrid_elbo_surrogate(log_joint, q, samples=1)
    with pytest.raises(ValueError, match="expected logits"):
        DiagonalGaussianMixture(torch.zeros(3), torch.zeros(2, 1), torch.ones(2, 1))


# ------------------------------------------------------- Continuous Bernoulli VAE, mixture prior
def test_continuous_bernoulli_likelihood_is_normalised_and_differs_from_bernoulli():
    from ovis.models.likelihoods import LikelihoodVAE

    torch.manual_seed(0)
    kw = dict(x_shape=(1, 2, 2), prior="mog", N=2, K=3, hdim=8, nlayers=1)
    cb = LikelihoodVAE(likelihood="cbernoulli", **kw)
    z = torch.randn(1, 2)
    with torch.no_grad():
        px = cb.observation_model(z)
        # the density of each pixel integrates to 1 over [0, 1] (trapezoid on 2001 points)
        grid = torch.linspace(0, 1, 2001)
        dens = px.base_dist.log_prob(grid[:, None, None, None, None].expand(2001, 1, 1, 2, 2)).exp()
        mass = torch.trapezoid(dens, grid, dim=0)
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-4), mass
    bern = LikelihoodVAE(likelihood="bernoulli", **kw)
    bern.load_state_dict(cb.state_dict())
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])  # binary: both likelihoods accept it
    assert not torch.allclose(bern.observation_model(z).log_prob(x), px.log_prob(x))
    with pytest.raises(ValueError, match="valid likelihoods"):
        LikelihoodVAE(likelihood="gaussian", **kw)


@pytest.mark.slow
def test_mixture_prior_continuous_bernoulli_vae_trains_on_fashion_grey_levels(data_root, tmp_path):
    """run.py on real Fashion-MNIST grey levels (``--dataset fashion-grey --mini``: 1000 training
    images), a learned 5-component mixture prior, a Continuous Bernoulli decoder, the pathwise
    ELBO, 200 steps of 40 images: the negative ELBO falls (running mean over steps 0-100 vs 100-200), the
    distortion / rate are logged, and the grids ``samples/prior.png`` (8 x 8 samples) and
    ``samples/reconstruction.png`` are written with plausible content (not constant, the
    reconstructions correlated with their images).  ``OVIS_KEEP_SAMPLES=<folder>`` keeps a copy."""
    import json
    import shutil

    from matplotlib import image as mpimg

    from ovis.training.arguments import parse_run_args
    from ovis.training.run import main
    from ovis.training.rundir import compute_run_id

    torch.set_default_dtype(torch.float32)
    argv = ["--dataset", "fashion-grey", "--mini", "--model", "vae", "--likelihood", "cbernoulli", "--prior", "mog",
            "--prior_components", "5", "--N", "8", "--hdim", "128", "--nlayers", "1", "--estimator", "pathwise-vae",
            "--bs", "40", "--epochs", "8", "--eval_freq", "4", "--lr", "3e-3", "--iw_valid", "10", "--iw_test", "10",
            "--max_eval", "100", "--silent", "--no_tensorboard", "--no_flush_denormal",
            "--root", str(tmp_path / "runs"), "--data_root", str(data_root), "--exp", "t"]
    assert main(argv) == 0
    d = tmp_path / "runs" / "t" / compute_run_id(parse_run_args(argv))
    lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    train = [ln for ln in lines if ln["split"] == "train"]
    assert [ln["step"] for ln in train] == [100, 200]
    first, last = -train[0]["metrics"]["loss/elbo"], -train[-1]["metrics"]["loss/elbo"]
    assert last < first - 100, (first, last)  # nats per image
    valid = [ln["metrics"] for ln in lines if ln["split"] == "valid"]
    assert valid[-1]["loss/distortion"] + valid[-1]["loss/rate"] == pytest.approx(-valid[-1]["loss/elbo"], rel=1e-6)
    assert valid[-1]["loss/rate"] > 0
    prior = mpimg.imread(d / "samples" / "prior.png")[..., 0]
    rec = mpimg.imread(d / "samples" / "reconstruction.png")[..., 0]
    assert prior.shape == (8 * 29 + 1, 8 * 29 + 1) and rec.shape == (8 * 29 + 1, 8 * 29 + 1)
    cells = torch.from_numpy(prior.copy()).unfold(0, 28, 29).unfold(1, 28, 29)[:8, :8].reshape(64, -1)
    assert 0.1 < float(cells.mean()) < 0.6  # Fashion-MNIST's mean grey level is about 0.29
    assert float(cells.std(1).min()) > 0.05  # no blank sample
    assert float(cells.std(0).mean()) > 0.05  # the samples differ
    r = torch.from_numpy(rec.copy()).unfold(0, 28, 29).unfold(1, 28, 29)[:8, :8].reshape(4, 2, 8, -1)
    data_cells, rec_cells = r[:, 0].reshape(32, -1), r[:, 1].reshape(32, -1)
    dc, rc = data_cells - data_cells.mean(1, keepdim=True), rec_cells - rec_cells.mean(1, keepdim=True)
    corr = (dc * rc).sum(1) / (dc.norm(dim=1) * rc.norm(dim=1))
    assert float(corr.mean()) > 0.6, corr  # the reconstructions look like their images
    if os.environ.get("OVIS_KEEP_SAMPLES"):
        for name in ("prior.png", "reconstruction.png"):
            shutil.copy(d / "samples" / name, Path(os.environ["OVIS_KEEP_SAMPLES"]) / f"fashion-grey-{name}")
    print(f"negative ELBO: steps 0-100 {first:.1f}, steps 100-200 {last:.1f} nats; D {valid[-1]['loss/distortion']:.1f}"
          f", R {valid[-1]['loss/rate']:.1f}; reconstruction correlation {float(corr.mean()):.3f}")


def test_run_flags_build_the_likelihood_vae():
    from types import SimpleNamespace

    from ovis.models import build_model
    from ovis.models.likelihoods import LikelihoodVAE
    from ovis.training.arguments import RUN_IDENTITY_DEFAULTS, parse_run_args

    assert RUN_IDENTITY_DEFAULTS["likelihood"] == "bernoulli" and RUN_IDENTITY_DEFAULTS["prior_components"] == 0
    data = SimpleNamespace(name="fashion", x_shape=torch.Size([1, 28, 28]), train_mean=None)
    args = parse_run_args(["--dataset", "fashion", "--model", "vae", "--prior", "mog", "--prior_components", "3",
                           "--likelihood", "cbernoulli", "--N", "4", "--K", "7"])
    model = build_model(args, data)
    assert isinstance(model, LikelihoodVAE) and model.likelihood == "cbernoulli"
    assert model.generative_model.prior.locs.shape == (3, 4)
    assert isinstance(model.sample_from_prior(2)["px"].base_dist, torch.distributions.ContinuousBernoulli)
    with pytest.raises(ValueError, match="needs --prior mog"):
        build_model(parse_run_args(["--model", "vae", "--prior_components", "3"]), data)
    with pytest.raises(ValueError, match="read by --model vae"):
        build_model(parse_run_args(["--model", "sbm", "--prior", "bernoulli", "--likelihood", "cbernoulli"]), data)
    args = parse_run_args(["--model", "vae", "--posterior", "mog", "--posterior_components", "3", "--N", "2",
                           "--estimator", "vimco-arithmetic", "--iw", "3"])
    model = build_model(args, data)
    assert model.posterior_family == "mog"
    qz = model(torch.zeros(4, 1, 28, 28))["qz"][0]
    assert isinstance(qz, torch.distributions.MixtureSameFamily) and qz.mixture_distribution.logits.shape == (4, 3)
    from ovis.training.arguments import RunArgumentError

    with pytest.raises(RunArgumentError, match="has no reparameterisation"):
        parse_run_args(["--model", "vae", "--posterior", "mog", "--estimator", "pathwise-iwae"])
    with pytest.raises(ValueError, match="needs Gaussian latents"):
        build_model(parse_run_args(["--model", "vae", "--posterior", "mog", "--prior", "bernoulli",
                                    "--estimator", "reinforce"]), data)
    # the defaults build the plain VAE (unchanged behaviour)
    assert type(build_model(parse_run_args(["--model", "vae", "--N", "4"]), data)).__name__ == "VAE"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["--estimator", "pathwise-iwae"],
    ["--estimator", "hybrid-mixture", "--posterior", "mog", "--posterior_components", "2"],
])
def test_run_py_trains_a_cbernoulli_mixture_prior_vae(tmp_path, data_root, extra):
    import json

    from ovis.training.arguments import parse_run_args
    from ovis.training.run import main
    from ovis.training.rundir import compute_run_id

    torch.set_default_dtype(torch.float32)
    argv = ["--dataset", "mnist", "--mini", "--model", "vae", "--prior", "mog", "--prior_components", "3",
            "--likelihood", "cbernoulli", "--N", "4", "--hdim", "16", "--nlayers", "1", "--bs", "20",
            "--iw_test", "10", "--iw_valid", "10", "--max_eval", "20", "--silent", "--no_tensorboard",
            "--no_flush_denormal", "--root", str(tmp_path / "runs"), "--data_root", str(data_root),
            "--exp", "t", "--iw", "2", "--nsteps", "6", "--eval_freq", "100", *extra]
    assert main(argv) == 0
    d = tmp_path / "runs" / "t" / compute_run_id(parse_run_args(argv))
    assert json.loads((d / "status.json").read_text())["status"] == "success"
    assert list((d / "samples").glob("prior-step*.png"))
    last = torch.load(d / "last.pt", weights_only=True)
    assert last["model"]["generative_model.prior.locs"].shape == (3, 4)


# ------------------------------------------------------- mixture posterior of the VAE (--posterior mog)
def _tiny_mog_vae():
    from ovis.models.likelihoods import LikelihoodVAE

    torch.manual_seed(1)
    return LikelihoodVAE((1, 2, 2), prior="normal", N=1, hdim=4, nlayers=1, posterior="mog",
                         posterior_components=2)


def _integrated_elbo(model, x):
    grid = torch.linspace(-12, 12, 8001)[:, None]
    total = 0.0
    for b in range(x.shape[0]):
        xb = x[b:b + 1].expand(len(grid), *x.shape[1:])
        log_q = model.posterior(xb).log_prob(grid)
        log_joint = model.observation_model(grid).log_prob(xb) + model.prior(len(grid)).log_prob(grid)
        total = total + torch.trapezoid(log_q.exp() * (log_joint - log_q), grid[:, 0])
    return total / x.shape[0]


def test_mog_posterior_vae_with_reinforce_matches_the_integrated_elbo_gradient():
    """--posterior mog (MixtureSameFamily q) trained by a score-function estimator: reinforce (K=1)
    is unbiased for the ELBO gradient computed by numerical integration (N = 1 latent)."""
    from ovis.estimators.reward_transforms import ReinforceTransformed
    from ovis.testing import gradient_draws

    model = _tiny_mog_vae()
    x = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 0.0], [1.0, 0.0]]]])
    params = [p for p in model.parameters() if p.requires_grad]
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(_integrated_elbo(model, x), params)])
    est = ReinforceTransformed(mc=1000, iw=1, reward_transforms="centred")
    for _ in range(5):
        est(model, x)  # warm the running mean up
    draws = gradient_draws(est, model, x, params, 40)
    print(compare_with_exact(draws, exact).summary())


def test_mog_posterior_refuses_pathwise_estimators():
    from ovis.estimators import build_estimator

    model = _tiny_mog_vae()
    with pytest.raises(TypeError, match="needs reparameterised latents"):
        build_estimator("pathwise-iwae", iw=2)(model, torch.zeros(2, 1, 2, 2))


def test_hybrid_mixture_estimator_matches_the_integrated_elbo_gradient_of_a_vae():
    """--estimator hybrid-mixture on a --posterior mog VAE with one latent: unbiased for the ELBO
    gradient computed by numerical integration; K=2 particles (leave-one-out control variate)."""
    from ovis.estimators import build_estimator
    from ovis.testing import gradient_draws

    model = _tiny_mog_vae()
    x = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 0.0], [1.0, 0.0]]]])
    params = [p for p in model.parameters() if p.requires_grad]
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(_integrated_elbo(model, x), params)])
    draws = gradient_draws(build_estimator("hybrid-mixture", mc=500, iw=2), model, x, params, 40)
    result = compare_with_exact(draws, exact)
    print(result.summary())
    # the ELBO diagnostic agrees with the integral
    with torch.no_grad():
        _, diag, _ = build_estimator("hybrid-mixture", mc=4000, iw=2)(model, x)
        elbo = float(_integrated_elbo(model, x))
    assert abs(float(diag["loss"]["elbo"].mean()) - elbo) < 0.05, (float(diag["loss"]["elbo"].mean()), elbo)


def test_hybrid_mixture_estimator_errors():
    from ovis.estimators import build_estimator
    from ovis.testing import BernoulliToyModel

    with pytest.raises(ValueError, match=r"K\) >= 2"):
        build_estimator("hybrid-mixture", iw=1)
    with pytest.raises(TypeError, match="needs q\\(z\\|x\\) = MixtureSameFamily"):
        build_estimator("hybrid-mixture", iw=2)(BernoulliToyModel(), torch.zeros(2, 4))
