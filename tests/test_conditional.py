r"""The conditional (structured output prediction) task: ``p(x_bot | x_top)`` with a multi-layer
conditional SBN (:mod:`ovis.models.conditional`), checked by enumeration on a tiny model, and run by
every REBAR-line estimator and by ``run.py --task conditional``."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from ovis.estimators import build_estimator
from ovis.estimators.discrete import bernoulli_log_prob
from ovis.models import build_model
from ovis.models.conditional import ConditionalDiscreteVAE, ConditionalSBN, HalfImageBernoulli, half_image_indices
from ovis.models.sbm import SigmoidBeliefNetwork
from ovis.testing import compare_with_exact, exact_gradients, gradient_draws


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one intra-op thread (the ``one_thread`` fixture of conftest)."""


REPO_EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# a 4 x 3 "image": top half = rows 0-1 (6 pixels), bottom half = rows 2-3 (6 pixels)
X_SHAPE = (4, 3)


def tiny_model(depth: int = 2) -> ConditionalSBN:
    torch.manual_seed(3)
    model = ConditionalSBN(X_SHAPE, N=2, depth=depth, nlayers=0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def tiny_x() -> torch.Tensor:
    return torch.tensor([[[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]],
                         [[0.0, 1, 1], [1, 0, 0], [0, 0, 1], [1, 1, 1]]])


def all_z(N: int, depth: int) -> list[torch.Tensor]:
    confs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=N * depth)))
    return [confs[:, l * N:(l + 1) * N] for l in range(depth)]


def exact_log_conditional(model: ConditionalSBN, x: torch.Tensor) -> torch.Tensor:
    r"""``log p(x_bot | x_top)`` ``[B]`` by enumerating ``z``, from the model's distributions
    (``conditional_prior``, ``_p``, ``observation_model``), not from ``log_joint_at``."""
    z = all_z(model.N, model.depth)
    S = z[0].shape[0]
    out = []
    for xi in x:
        xr = xi.expand(S, *xi.shape)
        x_top, _ = model.split(xr)
        lp = model.conditional_prior(x_top).log_prob(z[-1])
        for l in range(model.depth - 1):
            lp = lp + model._p(l + 1, z[l + 1]).log_prob(z[l])
        lp = lp + model.observation_model(z[0], x_top).log_prob(xr)
        out.append(torch.logsumexp(lp, 0))
    return torch.stack(out)


def exact_elbo(model: ConditionalSBN, x: torch.Tensor) -> torch.Tensor:
    r"""The ELBO of ``log p(x_bot | x_top)`` (mean over the batch) by enumeration."""
    z = all_z(model.N, model.depth)
    S = z[0].shape[0]
    total = 0.0
    for xi in x:
        xr = xi.expand(S, *xi.shape)
        lq = sum(bernoulli_log_prob(model.q_logits(l, xr if l == 0 else z[l - 1]), z[l]) for l in range(model.depth))
        log_px, log_pz = model.log_joint_at(xr, z)
        total = total + (lq.exp() * (log_px + log_pz.sum(-1) - lq)).sum()
    return total / x.shape[0]


# ---------------------------------------------------------------------------------- structure
def test_half_image_indices():
    top, bot = half_image_indices((1, 28, 28))
    assert torch.equal(top, torch.arange(392)) and torch.equal(bot, torch.arange(392, 784))
    top, bot = half_image_indices((784,))
    assert torch.equal(top, torch.arange(392)) and torch.equal(bot, torch.arange(392, 784))
    # two channels of 4 x 3: rows 0-1 of each channel
    top, bot = half_image_indices((2, 4, 3))
    assert top.tolist() == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17]
    assert sorted(top.tolist() + bot.tolist()) == list(range(24))
    with pytest.raises(ValueError, match="row"):
        half_image_indices((1, 1, 5))


def test_forward_shapes_and_particles_path():
    model = ConditionalSBN((1, 28, 28), N=5, depth=3, nlayers=1, hdim=7, x_mean=torch.rand(1, 28, 28))
    x = torch.bernoulli(torch.rand(3, 1, 28, 28))
    x_exp = x.repeat_interleave(4, 0)
    torch.manual_seed(1)
    out = model(x, particles=4)
    torch.manual_seed(1)
    ref = model(x_exp)
    assert isinstance(out["px"], HalfImageBernoulli)
    assert out["px"].log_prob(x_exp).shape == (12,)
    assert [z.shape for z in out["z"]] == [(12, 5)] * 3
    assert len(out["pz"]) == 3 and len(out["qz"]) == 3
    torch.testing.assert_close(out["px"].log_prob(x_exp), ref["px"].log_prob(x_exp))
    for p, q, z in zip(out["pz"], ref["pz"], ref["z"]):
        torch.testing.assert_close(p.log_prob(z), q.log_prob(z))
    # samples: full images whose top half is the conditioning input
    s = model.sample_from_prior(6, x=x_exp[:6])
    assert s["px"].mean.shape == (6, 1, 28, 28) and s["px"].sample().shape == (6, 1, 28, 28)
    assert torch.equal(s["px"].sample()[:, :, :14], x_exp[:6, :, :14])
    assert model.sample_from_prior(64)["px"].mean.shape == (64, 1, 28, 28)
    # the bottom bias starts at the logit of the bottom half of the training mean
    assert model.generative_model.layers[0][-1].bias.shape == (392,)


def test_likelihood_ignores_the_top_half_and_the_prior_depends_on_it():
    model = tiny_model()
    x = tiny_x()
    x2 = x.clone()
    x2[:, :2] = 1 - x2[:, :2]  # flip every top pixel
    z = [torch.tensor([[1.0, 0], [0, 1]]), torch.tensor([[1.0, 1], [0, 0]])]
    lpx, lpz = model.log_joint_at(x, z)
    lpx2, lpz2 = model.log_joint_at(x2, z)
    torch.testing.assert_close(lpx, lpx2)
    torch.testing.assert_close(lpz[:, :-1], lpz2[:, :-1])
    assert (lpz[:, -1] - lpz2[:, -1]).abs().min() > 1e-4  # p(z_L | x_top) changed
    # the same through the model output used by the estimators
    x_top, _ = model.split(x)
    px = model.observation_model(z[0], x_top)
    torch.testing.assert_close(px.log_prob(x), px.log_prob(x2))
    torch.testing.assert_close(px.log_prob(x), lpx)
    x3 = x.clone()
    x3[:, 3] = 1 - x3[:, 3]  # flip a bottom row: the likelihood changes
    assert (px.log_prob(x3) - px.log_prob(x)).abs().min() > 1e-4
    # and the bounds differ: the conditional depends on x_top
    with torch.no_grad():
        assert (exact_log_conditional(model, x) - exact_log_conditional(model, x2)).abs().min() > 1e-3


def test_log_joint_at_matches_the_model_output():
    model = tiny_model(depth=3)
    x = tiny_x().repeat_interleave(5, 0)
    out = model(x)
    lpx, lpz = model.log_joint_at(x, out["z"])
    torch.testing.assert_close(lpx, out["px"].log_prob(x))
    torch.testing.assert_close(lpz, torch.stack([p.log_prob(z) for p, z in zip(out["pz"], out["z"])], -1))
    for l, (q, h) in enumerate(zip(out["qz"], [x] + out["z"][:-1])):
        torch.testing.assert_close(q.logits, model.q_logits(l, h))


@pytest.mark.usefixtures("float64")
def test_conditional_is_a_normalised_distribution_over_the_bottom_half():
    model = tiny_model()
    x_top_img = tiny_x()[0, :2]
    bottoms = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6))).view(64, 2, 3)
    xs = torch.cat([x_top_img.expand(64, 2, 3), bottoms], dim=1)
    with torch.no_grad():
        total = exact_log_conditional(model, xs).exp().sum()
    assert abs(float(total) - 1.0) < 1e-9, float(total)


def log_weights(model: ConditionalSBN, x: torch.Tensor, M: int, K: int) -> torch.Tensor:
    r"""``log w = log p(x_bot, z | x_top) - log q(z | x)``, ``[B, M, K]``, as the estimators see it."""
    from ovis.estimators.base import RuntimeParams

    est = build_estimator("reinforce", mc=M, iw=K)
    parts = est.evaluate(model, x, RuntimeParams(), K=K)
    return parts.log_px + (parts.log_pz - parts.log_qz).sum(-1)


@pytest.mark.usefixtures("float64")
def test_iw_bound_approaches_log_p_bottom_given_top():
    r"""The importance-sampling estimate ``mean_k w_k`` is unbiased for ``p(x_bot | x_top)``
    (enumerated), ``L_1 < L_10 < L_1000 <= log p(x_bot | x_top)`` (within 4 standard errors)
    and ``L_1`` is the enumerated ELBO."""
    model = tiny_model()
    x = tiny_x()
    with torch.no_grad():
        exact = exact_log_conditional(model, x)
        elbo = exact_elbo(model, x)
        bounds, stderr = {}, {}
        for K, M in ((1, 4000), (10, 1000), (1000, 200)):
            log_phat = torch.logsumexp(log_weights(model, x, M, K), -1) - math.log(K)  # [B, M]
            bounds[K], stderr[K] = log_phat.mean(1), log_phat.std(1) / math.sqrt(M)
            if K == 1000:  # unbiased for p(x_bot | x_top) itself
                ratio = (log_phat - exact[:, None]).exp()  # [B, M], mean 1
                z = (ratio.mean(1) - 1) / (ratio.std(1) / math.sqrt(M))
                assert (z.abs() < 4).all(), (z, exact)
    assert abs(float(bounds[1].mean()) - float(elbo)) < 4 * float(stderr[1].max()), (bounds[1], elbo)
    assert (bounds[1] < bounds[10]).all() and (bounds[10] < bounds[1000]).all(), bounds
    assert (bounds[1000] < exact + 4 * stderr[1000]).all(), (bounds, exact)
    # the gap closes: L_1000 is much nearer to log p than the ELBO is
    assert ((exact - bounds[1000]).abs() < 0.2 * (exact - bounds[1])).all(), (exact, bounds)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("eid", ["arm", "rebar", "muprop"])
def test_estimators_are_unbiased_on_the_conditional_model(eid):
    model = tiny_model()
    x = tiny_x()
    params = list(model.parameters())
    exact = exact_gradients(exact_elbo(model, x), params)
    draws = gradient_draws(build_estimator(eid, mc=150, iw=1), model, x, params, 40)
    compare_with_exact(draws, exact)


@pytest.mark.parametrize("eid", ["arm", "disarm", "rebar", "dynamic-rebar", "relax", "muprop", "simple-muprop",
                                 "nvil", "concrete", "straight-through", "reinforce", "vimco-arithmetic",
                                 "ovis-gamma1"])
def test_every_discrete_estimator_trains_a_few_steps(eid):
    model = ConditionalSBN((1, 28, 28), N=8, depth=2, nlayers=0, x_mean=torch.full((1, 28, 28), 0.2))
    x = torch.bernoulli(torch.full((6, 1, 28, 28), 0.2))
    kw = {"x_shape": (1, 28, 28)} if eid == "nvil" else {}
    K = 4 if eid in ("vimco-arithmetic", "ovis-gamma1") else 1
    est = build_estimator(eid, iw=K, **kw)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(list(model.parameters()) + list(est.parameters()), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        loss, diag, _ = est(model, x, backward=True, tau=0.5)
        assert torch.isfinite(loss) and torch.isfinite(diag["loss"]["L_k"]).all()
        for n, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        opt.step()
    for n, p in model.named_parameters():  # every parameter moved, x_top's prior network included
        assert not torch.equal(before[n], p.detach()), n
    # the bound is one of the 392-pixel bottom half: above -392 log 2 at this data mean
    assert float(diag["loss"]["L_k"].mean()) > -392 * math.log(2)


def test_wake_sleep_is_refused_and_wake_wake_runs():
    r"""The sleep phase would draw x_top from the default (training-mean) top half: refused."""
    model = tiny_model()
    with pytest.raises(TypeError, match="infer"):
        build_estimator("wake-sleep", iw=2)(model, tiny_x(), backward=True)
    loss, diag, _ = build_estimator("wake-wake", iw=2)(model, tiny_x(), backward=True)
    assert torch.isfinite(diag["loss"]["L_k"]).all()


# ---------------------------------------------------------------------------------- discrete VAE
@pytest.mark.parametrize("relaxation", ["gs", "igr-i", "igr-planar", "igr-sb"])
def test_conditional_discrete_vae(relaxation):
    model = ConditionalDiscreteVAE((1, 28, 28), num_of_discrete_var=3, n_required=4, relaxation=relaxation,
                                   tau=0.5, hdim=16, nlayers=1, x_mean=torch.full((1, 28, 28), 0.2))
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.2))
    x2 = x.clone()
    x2[:, :, :14] = 1 - x2[:, :, :14]  # other top halves
    out = model(x, zgrads=True)
    assert isinstance(out["px"], HalfImageBernoulli) and out["px"].log_prob(x).shape == (5,)
    torch.testing.assert_close(out["px"].log_prob(x), out["px"].log_prob(x2))  # top half ignored
    z = out["z"][0]
    prior2 = model(x2, zgrads=True)["pz"][0]
    assert (out["pz"][0].log_prob(z) - prior2.log_prob(z)).abs().min() > 1e-5  # p(z | x_top)
    assert torch.isfinite(model.elbo(x)).all() and torch.isfinite(model.kl(x)).all()
    assert model.sample_from_prior(4)["px"].mean.shape == (4, 1, 28, 28)
    with pytest.raises(TypeError, match="infer"):
        build_estimator("wake-sleep", iw=2)(model, x)
    # pathwise IWAE training steps move the prior network and improve the bound on this batch
    est = build_estimator("pathwise-iwae", iw=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = model.generative_model.prior_net[-1].weight.detach().clone()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss, diag, _ = est(model, x, backward=True, tau=0.5)
        losses.append(float(loss.detach()))
        opt.step()
    assert not torch.equal(start, model.generative_model.prior_net[-1].weight)
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    if relaxation == "gs":  # hard one-hot samples for the score-function estimators
        _, diag, _ = build_estimator("vimco-arithmetic", iw=3)(model, x, backward=True)
        assert torch.isfinite(diag["loss"]["L_k"]).all()


# ---------------------------------------------------------------------------------- run.py
def test_build_model_and_the_task_flag():
    from types import SimpleNamespace

    from ovis.training.arguments import RUN_IDENTITY_DEFAULTS, build_run_parser
    from ovis.training.rundir import compute_run_id, identity_values

    data = SimpleNamespace(name="binmnist", x_shape=torch.Size([1, 28, 28]), train_mean=torch.full((1, 28, 28), 0.3))
    args = build_run_parser().parse_args(["--model", "sbm", "--depth", "2", "--N", "4", "--task", "conditional"])
    model = build_model(args, data)
    assert isinstance(model, ConditionalSBN) and model.depth == 2
    dense = build_run_parser().parse_args(["--model", "sbm", "--depth", "2", "--N", "4"])
    assert dense.task == "density" and RUN_IDENTITY_DEFAULTS["task"] == "density"
    assert type(build_model(dense, data)) is SigmoidBeliefNetwork
    # the default task is not part of the run id; the conditional one is
    assert "task" not in identity_values(dense) and identity_values(args)["task"] == "conditional"
    before_the_flag = build_run_parser().parse_args(["--model", "sbm", "--depth", "2", "--N", "4"])
    del before_the_flag.task  # a namespace of the parser before --task existed: same run id
    assert compute_run_id(dense) == compute_run_id(before_the_flag) != compute_run_id(args)
    with pytest.raises(NotImplementedError, match="--model sbm"):
        build_model(build_run_parser().parse_args(["--model", "vae", "--task", "conditional"]), data)
    dvae = build_model(build_run_parser().parse_args(
        ["--model", "discrete-vae", "--relaxation", "igr-i", "--N", "3", "--K", "4", "--task", "conditional"]), data)
    assert isinstance(dvae, ConditionalDiscreteVAE) and dvae.relaxation == "igr-i"


def test_experiment_files_validate():
    from ovis.experiments import load_and_expand
    from ovis.training.arguments import parse_run_args
    for name in ("rebar-conditional-1layer", "rebar-conditional-1layer-cpu", "rebar-conditional-2layer",
                 "rebar-conditional-2layer-cpu"):
        depth = 1 if "1layer" in name else 2
        _, jobs, warnings = load_and_expand(REPO_EXPERIMENTS / f"{name}.json")
        args = [parse_run_args(list(j.argv)) for j in jobs]
        assert not warnings and args
        assert all(a.task == "conditional" and a.model == "sbm" and a.depth == depth for a in args)
        assert {"arm", "disarm", "rebar", "relax", "muprop", "nvil"} <= {a.estimator for a in args}
        if name.endswith("cpu"):
            assert len(jobs) <= 30 and all(a.mini and a.nsteps <= 1000 for a in args)


@pytest.mark.slow
def test_run_py_conditional_two_layer_sbn(tmp_path, data_root):
    from ovis.training.run import main

    code = main(["--task", "conditional", "--model", "sbm", "--depth", "2", "--N", "20", "--nlayers", "0",
                 "--estimator", "arm", "--iw", "1", "--dataset", "binmnist", "--mini", "--nsteps", "60",
                 "--lr", "3e-3", "--bs", "24", "--eval_freq", "1", "--max_eval", "50", "--valid_bs", "10",
                 "--test_bs", "10", "--iw_test", "5", "--iw_valid", "5", "--grad_samples", "0",
                 "--silent", "--exp", "cond", "--root", str(tmp_path), "--data_root", str(data_root)])
    assert code == 0
    (metrics_file,) = list(tmp_path.glob("cond/*/metrics.jsonl"))
    run_dir = metrics_file.parent
    assert "conditional" in (run_dir / "config.json").read_text()
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    test = [r["metrics"]["loss/L_k"] for r in lines if r["split"] == "test"]
    assert test and all(math.isfinite(v) for v in test)
    # a bound of log p(x_bot | x_top) over 392 pixels: far above a density bound of 784 pixels
    assert -392 * math.log(2) < test[-1] < 0, test
    assert list(run_dir.glob("**/*.png")), "no conditional samples saved"


@pytest.mark.slow
def test_run_py_conditional_discrete_vae(tmp_path, data_root):
    from ovis.training.run import main

    code = main(["--task", "conditional", "--model", "discrete-vae", "--relaxation", "igr-i", "--N", "5",
                 "--K", "4", "--hdim", "32", "--nlayers", "1", "--estimator", "pathwise-iwae", "--iw", "2",
                 "--dataset", "binmnist", "--mini", "--nsteps", "40", "--lr", "3e-3", "--bs", "24",
                 "--eval_freq", "1", "--max_eval", "50", "--valid_bs", "10", "--test_bs", "10", "--iw_test", "5",
                 "--iw_valid", "5", "--silent", "--exp", "cond", "--root", str(tmp_path),
                 "--data_root", str(data_root)])
    assert code == 0
    (metrics_file,) = list(tmp_path.glob("cond/*/metrics.jsonl"))
    lines = [json.loads(s) for s in metrics_file.read_text().splitlines()]
    test = [r["metrics"]["loss/L_k"] for r in lines if r["split"] == "test"]
    assert test and -392 * math.log(2) < test[-1] < 0, test
