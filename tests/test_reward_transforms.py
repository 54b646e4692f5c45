r"""Reward transforms of REINFORCE (ovis.estimators.reward_transforms).

Unbiasedness: exact-gradient comparisons on enumerable models (ovis.testing.compare_with_exact:
declared failure rate 1e-3 per test, Bonferroni over coordinates, power asserted), 40 draws of
mc = 500 outer samples.  ``scaled`` divides the phi-gradient by its running scale: the scale is
frozen (eval mode) and the phi coordinates are multiplied back by it.

Variance: the total variance of the phi-gradient (sum over coordinates) of plain ``reinforce`` and
of the transformed estimator, from independent draws; the reduction must be significant at a
one-sided failure rate of 1e-3 (z-test on the per-draw squared deviations).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from ovis.estimators import build_estimator
from ovis.estimators.reward_transforms import (
    ReinforceTransformed,
    RewardTransformChain,
    ScaledReward,
    parse_reward_transforms,
)
from ovis.estimators.score_function import score_function_surrogate
from ovis.testing import (
    BernoulliToyModel,
    CategoricalToyModel,
    compare_with_exact,
    exact_bound,
    exact_gradient_problem,
    exact_gradients,
    gradient_draws,
)

pytestmark = pytest.mark.usefixtures("float64")
N_DRAWS, MC = 40, 500
MODELS = {"bernoulli": BernoulliToyModel, "categorical": CategoricalToyModel}


def setup(model_name: str):
    model = MODELS[model_name]()
    return exact_gradient_problem(model)


def warm_up(est, model, x, steps: int = 10, train_baseline: bool = False) -> None:
    r"""Training-mode calls (running statistics move away from their initial values); with
    ``train_baseline``, Adam steps on the estimator's own parameters only."""
    opt = torch.optim.Adam(est.parameters(), lr=3e-2) if train_baseline else None
    for _ in range(steps):
        loss, _, _ = est(model, x)
        if opt is not None:
            opt.zero_grad()
            aux = [p for p in est.parameters()]
            grads = torch.autograd.grad(loss, aux)
            for p, g in zip(aux, grads):
                p.grad = g
            opt.step()


#: a KL weight and free bits that clamp some likely configurations of each toy model and not others
KL = {"bernoulli": {"beta": 0.3, "freebits": 1.07}, "categorical": {"beta": 0.3, "freebits": 0.5}}

UNBIASED_CASES = [("centred", "bernoulli", 3, False), ("centred", "bernoulli", 3, True)] + [
    pytest.param(c, m, k, kl, marks=pytest.mark.slow)
    for c in ("centred", "self-critic", "baseline", "centred,self-critic,baseline")
    for m in MODELS for k in (1, 3) for kl in (False, True) if (c, m, k) != ("centred", "bernoulli", 3)]


@pytest.mark.parametrize("chain,model_name,K,kl", UNBIASED_CASES)
def test_transform_keeps_reinforce_unbiased(chain, model_name, K, kl):
    """kl: under the KL weight beta = 0.3 and free bits (the target is the gradient of the bound
    with those log-weights)."""
    model, x, params, _ = setup(model_name)
    runtime = KL[model_name] if kl else {}
    exact = exact_gradients(exact_bound(model, x, K, **runtime), params)
    est = ReinforceTransformed(mc=MC, iw=K, reward_transforms=chain, x_shape=(4,))
    warm_up(est, model, x, train_baseline="baseline" in chain)
    est.train()  # running statistics keep moving during the draws (each uses past calls only)
    draws = gradient_draws(est, model, x, params, N_DRAWS, **runtime)
    compare_with_exact(draws, exact)


@pytest.mark.parametrize("chain,model_name,K,kl", [("centred,scaled", "bernoulli", 3, False),
                                                    ("centred,scaled", "bernoulli", 3, True)] + [
    pytest.param(c, m, k, kl, marks=pytest.mark.slow)
    for c in ("scaled", "centred,scaled", "centred,scaled,self-critic,baseline")
    for m in MODELS for k in (1, 3) for kl in (False, True) if (c, m, k) != ("centred,scaled", "bernoulli", 3)])
def test_scaled_reward_is_unbiased_up_to_its_frozen_scale(chain, model_name, K, kl):
    """kl: under beta = 0.3 and free bits, the signal's term -beta v_k 1[...] is scaled like the rest."""
    model, x, params, is_phi = setup(model_name)
    runtime = KL[model_name] if kl else {}
    exact = exact_gradients(exact_bound(model, x, K, **runtime), params)
    est = ReinforceTransformed(mc=MC, iw=K, reward_transforms=chain, x_shape=(4,))
    warm_up(est, model, x, train_baseline="baseline" in chain)
    est.eval()  # freeze the running scale
    (scaled,) = [t for t in est.chain.transforms if isinstance(t, ScaledReward)]
    scale = float(scaled.scale())
    assert scale > 1.2, f"the test needs a scale > 1 to mean anything, got {scale}"
    draws = gradient_draws(est, model, x, params, N_DRAWS, **runtime)
    draws[:, is_phi] *= scale
    compare_with_exact(draws, exact)
    # and the unscaled draws are off: the scale is real
    with pytest.raises(AssertionError, match="disagrees"):
        compare_with_exact(draws / torch.where(is_phi, scale, 1.0), exact)


def test_a_broken_transform_fails_the_comparison():
    """A "baseline" that depends on z_k itself (half the particle's own signal) is biased: the
    harness catches it."""

    class _Broken(ReinforceTransformed):
        def compute(self, model, x, params):
            p, log_w, kl, bound, v = self.weighted_particles(model, x, params)
            d = bound[..., None] - v
            signal = d - 0.5 * d
            loss = score_function_surrogate(signal, p.log_px, p.log_qz, p.log_pz, v, bound)
            return loss, self.base_diagnostics(log_w, kl, p.log_px), p.output

    model, x, params, _ = setup("bernoulli")
    exact = exact_gradients(exact_bound(model, x, 3), params)
    draws = gradient_draws(_Broken(mc=MC, iw=3), model, x, params, N_DRAWS)
    with pytest.raises(AssertionError, match="disagrees"):
        compare_with_exact(draws, exact)


def total_variance(draws: torch.Tensor):
    r"""Mean and standard error of :math:`\|g_i - \bar g\|^2` (an estimate of the total variance)."""
    sq = ((draws - draws.mean(0)) ** 2).sum(1) * draws.shape[0] / (draws.shape[0] - 1)
    return float(sq.mean()), float(sq.std() / math.sqrt(len(sq)))


@pytest.mark.parametrize("chain,model_name,K", [("centred", "bernoulli", 1)] + [
    pytest.param(c, m, k, marks=pytest.mark.slow) for c in ("centred", "baseline")
    for m in MODELS for k in (1, 3) if (c, m, k) != ("centred", "bernoulli", 1)])
def test_transform_reduces_the_variance_of_reinforce(chain, model_name, K):
    r"""``centred`` and ``baseline`` remove the large mean of the signal (about -4 here), so they
    must reduce the variance.  (``self-critic`` replaces the mean by a second copy of the noise,
    :math:`\mathrm{Var}[d - d^\star] = 2\,\mathrm{Var}[d]`, and is not claimed to reduce it: measured
    -5 % on the categorical model with K=1.)"""
    model, x, params, is_phi = setup(model_name)
    n = 200
    plain = build_estimator("reinforce", mc=1, iw=K)
    # warm up (and train the baseline) with 50 outer samples per step, then draw with mc = 1
    warm = ReinforceTransformed(mc=50, iw=K, reward_transforms=chain, x_shape=(4,))
    warm_up(warm, model, x, steps=300 if chain == "baseline" else 20, train_baseline=chain == "baseline")
    est = ReinforceTransformed(mc=1, iw=K, reward_transforms=chain, x_shape=(4,))
    est.load_state_dict(warm.state_dict())
    est.eval()
    g0 = gradient_draws(plain, model, x, params, n)[:, is_phi]
    g1 = gradient_draws(est, model, x, params, n)[:, is_phi]
    v0, s0 = total_variance(g0)
    v1, s1 = total_variance(g1)
    z = (v0 - v1) / math.sqrt(s0 ** 2 + s1 ** 2)
    assert z > NormalDist().inv_cdf(1 - 1e-3), f"{chain}: variance {v1:.4g} vs reinforce {v0:.4g}, z = {z:.2f}"


def test_running_statistics_update_only_in_training_mode():
    model, x, _, _ = setup("bernoulli")
    est = ReinforceTransformed(mc=10, iw=2, reward_transforms=("centred", "scaled"))
    c, s = est.chain.transforms
    est.eval()
    est(model, x)
    assert float(c.weight) == 0 and float(s.weight) == 0
    est.train()
    est(model, x)
    assert float(c.weight) > 0 and float(s.weight) > 0 and float(c.running_mean()) < 0
    state = {k: v.clone() for k, v in est.state_dict().items()}
    est.eval()
    est(model, x)
    assert all(torch.equal(state[k], v) for k, v in est.state_dict().items())
    assert {"chain.transforms.0.m1", "chain.transforms.1.m2"} <= set(state)


def test_no_transform_equals_reinforce():
    model, x, params, _ = setup("bernoulli")
    torch.manual_seed(3)
    g0 = gradient_draws(build_estimator("reinforce", mc=7, iw=3), model, x, params, 2)
    torch.manual_seed(3)
    g1 = gradient_draws(ReinforceTransformed(mc=7, iw=3), model, x, params, 2)
    assert torch.allclose(g0, g1)


def test_baseline_parameters_are_the_estimators_and_diagnostics():
    model, x, _, _ = setup("bernoulli")
    est = ReinforceTransformed(mc=2, iw=2, reward_transforms="centred,baseline", x_shape=(4,))
    assert sum(p.numel() for p in est.parameters()) == 4 * 100 + 100 + 100 + 1
    loss, diag, _ = est(model, x, backward=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in est.parameters())
    assert set(diag["estimator"]) >= {"cv_mse", "centred_mean", "baseline_mse"}
    assert diag["estimator"]["baseline_mse"].shape == (3,)


def test_parse_reward_transforms_errors():
    assert parse_reward_transforms(" centred , scaled ") == ("centred", "scaled")
    assert parse_reward_transforms("") == ()
    with pytest.raises(ValueError, match="valid names: centred, scaled, self-critic, baseline"):
        parse_reward_transforms("centered")
    with pytest.raises(ValueError, match="more than once"):
        RewardTransformChain("scaled,scaled")


# ---------------------------------------------------------------------------- run.py
def test_run_flag_validation():
    from ovis.training.arguments import RUN_IDENTITY_DEFAULTS, RunArgumentError, parse_run_args

    assert RUN_IDENTITY_DEFAULTS["reward_transforms"] == ""
    args = parse_run_args(["--estimator", "reinforce", "--reward_transforms", " centred, scaled"])
    assert args.reward_transforms == "centred,scaled"
    with pytest.raises(RunArgumentError, match="only with --estimator reinforce"):
        parse_run_args(["--estimator", "vimco-arithmetic", "--iw", "2", "--reward_transforms", "centred"])
    with pytest.raises(RunArgumentError, match="unknown reward transform 'mean'"):
        parse_run_args(["--estimator", "reinforce", "--reward_transforms", "centred,mean"])


@pytest.mark.slow
def test_run_trains_reinforce_with_every_transform(tmp_path, data_root):
    """run.py builds ReinforceTransformed; the baseline's parameters are in the estimator's
    optimiser group and saved in the checkpoint with the running statistics."""
    import json

    from ovis.training.arguments import parse_run_args
    from ovis.training.run import main
    from ovis.training.rundir import compute_run_id

    torch.set_default_dtype(torch.float32)
    argv = ["--dataset", "mnist", "--mini", "--model", "vae", "--prior", "bernoulli", "--N", "4",
            "--hdim", "16", "--nlayers", "1", "--bs", "20", "--iw_test", "10", "--iw_valid", "10",
            "--max_eval", "20", "--silent", "--no_tensorboard", "--no_flush_denormal",
            "--root", str(tmp_path / "runs"), "--data_root", str(data_root), "--exp", "t",
            "--estimator", "reinforce", "--iw", "3", "--nsteps", "6", "--eval_freq", "100",
            "--reward_transforms", "centred,scaled,self-critic,baseline", "--grad_samples", "3", "--grad_bs", "4"]
    assert main(argv) == 0
    d = tmp_path / "runs" / "t" / compute_run_id(parse_run_args(argv))
    status = json.loads((d / "status.json").read_text())
    assert status["status"] == "success", status
    last = torch.load(d / "last.pt", weights_only=True)
    keys = set(last["estimator"])
    assert {"chain.transforms.0.m1", "chain.transforms.1.m2"} <= keys
    assert any(k.startswith("chain.transforms.3.net") for k in keys)
    # updated at each of the 6 training steps, not by the 3 draws of the gradient analysis
    assert float(last["estimator"]["chain.transforms.0.weight"]) == pytest.approx(1 - 0.99 ** 6)
    assert len(last["optimizer"]["param_groups"]) == 2
    lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = lines[0]["metrics"]
    assert "estimator/baseline_mse" in train and "estimator/scaled_scale" in train
