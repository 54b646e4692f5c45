"""The estimator API: the id grammar, validation of arguments, runtime parameters."""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch

from ovis.estimators import GradientEstimator, build_estimator, parse_estimator_id
from ovis.estimators.config import ESTIMATOR_CLASSES, REGISTRY
from ovis.estimators.ovis import OvisAsymptotic, OvisMonteCarlo
from ovis.estimators.tvo import ThermodynamicVO, tvo_partition
from ovis.estimators.vimco import Vimco
from ovis.testing import TOY_FREEBITS, BernoulliToyModel, LinearGaussianModel

PAPER = Path(__file__).resolve().parents[1] / ".." / "shared" / "spec" / "paper-experiments"


def paper_estimator_ids() -> list[str]:
    ids = set()
    for f in sorted(PAPER.glob("*.json")):
        for arg in json.loads(f.read_text())["args"]:
            tokens = shlex.split(arg)
            ids.add(tokens[tokens.index("--estimator") + 1])
    return sorted(ids)


def test_paper_ids_are_found():
    ids = paper_estimator_ids()
    assert "ovis-S10-exclusive" in ids and "tvo-part2-config1" in ids and "ovis-S0.3" in ids
    assert len(ids) >= 20


@pytest.mark.parametrize("eid", paper_estimator_ids())
def test_every_paper_id_parses(eid):
    cls, config = parse_estimator_id(eid)
    assert isinstance(config, dict)


def test_grammar_values():
    assert parse_estimator_id("ovis-gamma1") == (OvisAsymptotic, {"gamma": 1.0, "loo": "exact"})
    assert parse_estimator_id("ovis-gamma0.5-geometric")[1] == {"gamma": 0.5, "loo": "geometric"}
    assert parse_estimator_id("ovis-S10-exclusive") == (
        OvisMonteCarlo, {"n_aux": 10, "aux_fraction": None, "exclusive": True})
    assert parse_estimator_id("ovis-S0.3")[1] == {"n_aux": None, "aux_fraction": 0.3, "exclusive": False}
    assert parse_estimator_id("vimco-geometric") == (Vimco, {"mean": "geometric"})
    cls, cfg = parse_estimator_id("tvo-part5-beta2-trapz")
    assert cls is ThermodynamicVO
    assert cfg == {"partitions": 5, "log_beta_min": 2.0, "schedule": "log", "integration": "trapz"}
    assert parse_estimator_id("tvo")[1] == {"partitions": 2, "log_beta_min": 10.0, "schedule": "log",
                                            "integration": "left"}
    assert parse_estimator_id("tvo-part2-config1")[1]["schedule"] == "config1"


def test_every_family_of_the_grammar_has_one_class():
    """The id grammar and the family -> class mapping name the same families, in the same order,
    each class is the one of its family (its ``family`` attribute), and every id of the grammar
    resolves to its family's class."""
    assert [f.name for f in REGISTRY] == list(ESTIMATOR_CLASSES)
    assert all(isinstance(c, type) and issubclass(c, GradientEstimator) for c in ESTIMATOR_CLASSES.values())
    assert {name: cls.family for name, cls in ESTIMATOR_CLASSES.items()} == {n: n for n in ESTIMATOR_CLASSES}
    examples = {"reinforce": "reinforce", "reinforce-baseline": "reinforce-baseline", "vimco": "vimco-geometric",
                "ovis-gamma": "ovis-gamma0.5", "ovis-mc": "ovis-S0.3", "wake-wake": "wake-wake",
                "wake-sleep": "wake-sleep", "tvo": "tvo-part3", "pathwise-vae": "pathwise-vae",
                "pathwise-iwae": "pathwise-iwae", "stl": "stl", "dreg": "dreg", "nvil": "nvil",
                "muprop": "simple-muprop", "concrete": "gumbel-softmax", "straight-through": "straight-through",
                "rebar": "dynamic-rebar", "relax": "relax", "arm": "disarm", "hybrid-mixture": "hybrid-mixture"}
    assert set(examples) == set(ESTIMATOR_CLASSES)
    for family, eid in examples.items():
        assert parse_estimator_id(eid)[0] is ESTIMATOR_CLASSES[family], eid


@pytest.mark.parametrize("K,r,S", [(10, 0.3, 3), (3, 0.1, 1), (50, 0.7, 35), (8, 0.5, 4), (3, 0.7, 2)])
def test_ovis_fraction_of_budget(K, r, S):
    est = build_estimator(f"ovis-S{r}", iw=K)
    assert est.n_aux == S


def test_ovis_integer_s_is_a_count():
    est = build_estimator("ovis-S50-exclusive", iw=1000)
    assert est.n_aux == 50  # not 50 * K (the regression of the original code)


@pytest.mark.parametrize("bad", ["ovis", "vimco", "vimco-harmonic", "reinforce-", "REINFORCE", "ovis-gammaX",
                                 "ovis-gamma-1", "tvo-part0", "tvo-config3", "xreinforce", "reinforce-baselinex",
                                 "pathwise", "ovis-S10-exclusive-exclusive", "", "ovis-S1e3"])
def test_unknown_ids_list_valid_forms(bad):
    with pytest.raises(ValueError, match="valid forms"):
        parse_estimator_id(bad)


@pytest.mark.parametrize("bad", ["ovis-S1.5", "ovis-S0", "ovis-S1.0", "ovis-S0.0"])
def test_malformed_numbers(bad):
    with pytest.raises(ValueError, match="between 0 and 1"):
        parse_estimator_id(bad)


def test_not_a_string():
    with pytest.raises(ValueError):
        parse_estimator_id(3)  # type: ignore[arg-type]


def test_constructor_validation():
    with pytest.raises(ValueError, match="K\\) >= 2"):
        build_estimator("vimco-arithmetic", iw=1)
    with pytest.raises(ValueError, match="K\\) >= 2"):
        build_estimator("ovis-gamma1", iw=1)
    with pytest.raises(ValueError, match="K\\) >= 2"):
        build_estimator("ovis-S1-exclusive", iw=1)
    with pytest.raises(ValueError, match="K\\) >= 2"):
        build_estimator("tvo", iw=1)
    with pytest.raises(ValueError, match="S <= K-1"):
        build_estimator("ovis-S5", iw=5)
    build_estimator("ovis-S4", iw=5)
    build_estimator("ovis-S5-exclusive", iw=5)
    with pytest.raises(ValueError, match="mc"):
        build_estimator("reinforce", mc=0, iw=3)
    with pytest.raises(TypeError):
        build_estimator("reinforce", iw=3, gama=1.0)  # a typo is not swallowed


def test_runtime_parameters_are_validated():
    model = BernoulliToyModel()
    x = torch.bernoulli(torch.full((2, 4), 0.5))
    est = build_estimator("vimco-arithmetic", iw=3)
    with pytest.raises(TypeError, match="unknown runtime parameter.*alhpa.*valid names"):
        est(model, x, alhpa=0.5)
    with pytest.raises(ValueError, match="alpha"):
        est(model, x, alpha=1.5)
    with pytest.raises(ValueError, match="beta"):
        est(model, x, beta=-1.0)
    with pytest.raises(ValueError, match="freebits"):
        est(model, x, freebits=-0.1)
    with pytest.raises(ValueError, match="does not support alpha"):
        build_estimator("tvo", iw=3)(model, x, alpha=0.5)
    with pytest.raises(ValueError, match="batch"):
        est(model, torch.ones(4))
    loss, diag, out = est(model, x, alpha=0.2, beta=0.5, freebits=0.1)
    assert loss.dim() == 0
    for key in ("L_k", "elbo", "kl", "ess"):
        assert diag["loss"][key].shape == (2,)
        assert not diag["loss"][key].requires_grad
    assert diag["estimator"]["cv_mse"].shape == (2,)


@pytest.mark.parametrize("eid", ["reinforce", "vimco-arithmetic", "ovis-S1-exclusive", "wake-wake", "tvo-part2",
                                 "arm"])
def test_beta_and_freebits_reach_the_bound_and_the_gradient(eid):
    """The diagnostics' bound, KL and ELBO are those of log w = log p(x|z) - beta max(log q - log p,
    lambda), recomputed here from the model's own particles; and the gradient changes with beta and
    with free bits (its exact value under them is tested in test_exact_gradients.py)."""
    model = BernoulliToyModel()
    x = torch.bernoulli(torch.full((2, 4), 0.5), generator=torch.Generator().manual_seed(1))
    est = build_estimator(eid, mc=3, iw=4)
    beta, fb = 0.5, TOY_FREEBITS["bernoulli"]
    torch.manual_seed(2)
    loss, diag, out = est(model, x, beta=beta, freebits=fb)
    z = out["z"][0][: 2 * 3 * 4]  # the bound's particles (OVIS-MC's auxiliary ones come after)
    x_rep = x[:, None].expand(2, 12, 4).reshape(-1, 4)
    with torch.no_grad():
        log_px = model.observation_model(z).log_prob(x_rep)
        kl = (model.posterior(x_rep).log_prob(z) - model.prior(z.shape[0]).log_prob(z)).clamp(min=fb)
        log_w = (log_px - beta * kl).view(2, 3, 4)
    assert 0 < float((kl == fb).double().mean()) < 1  # the clamp is active for some particles only
    iw = (torch.logsumexp(log_w, -1) - math.log(4)).mean(1)
    assert torch.allclose(diag["loss"]["L_k"], iw, atol=1e-5)
    assert torch.allclose(diag["loss"]["kl"], kl.view(2, 3, 4).mean((1, 2)), atol=1e-5)
    assert torch.allclose(diag["loss"]["elbo"], log_w.mean((1, 2)), atol=1e-5)
    params = list(model.parameters())
    grads = {}
    for key, runtime in {"plain": {}, "beta": {"beta": beta}, "freebits": {"freebits": fb}}.items():
        torch.manual_seed(3)
        grads[key] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(est(model, x, **runtime)[0], params)])
    assert not torch.allclose(grads["plain"], grads["beta"])
    assert not torch.allclose(grads["plain"], grads["freebits"])


def test_pathwise_needs_rsample():
    model = BernoulliToyModel()
    x = torch.bernoulli(torch.full((2, 4), 0.5))
    with pytest.raises(TypeError, match="rsample"):
        build_estimator("pathwise-iwae", iw=3)(model, x)


def test_stl_and_dreg_refuse_hierarchical_models():
    class TwoLayer(LinearGaussianModel):
        def forward(self, x, zgrads=False, **kw):
            out = super().forward(x, zgrads=zgrads)
            return {k: (v * 2 if isinstance(v, list) else v) for k, v in out.items()}

    x = torch.randn(2, 3)
    for eid in ("stl", "dreg"):
        with pytest.raises(ValueError, match="one stochastic layer"):
            build_estimator(eid, iw=2)(TwoLayer(), x)


def test_wake_sleep_needs_infer():
    class NoInfer(BernoulliToyModel):
        infer = None

    x = torch.bernoulli(torch.full((2, 4), 0.5))
    with pytest.raises(TypeError, match="infer"):
        build_estimator("wake-sleep", iw=3)(NoInfer(), x)


def test_tvo_partitions():
    assert tvo_partition(5, 1).tolist() == [0.0, 1.0]
    p = tvo_partition(5, 2, 10.0)
    assert p.tolist() == pytest.approx([0.0, 1e-10, 1.0])
    p = tvo_partition(5, 3, 2.0)
    assert p.tolist() == pytest.approx([0.0, 0.01, 0.1, 1.0])
    assert tvo_partition(5, 2, schedule="config1")[1] == pytest.approx(0.05)
    assert tvo_partition(10, 2, schedule="config1")[1] == pytest.approx(0.2)
    assert tvo_partition(50, 2, schedule="config1")[1] == pytest.approx(0.3)
    assert tvo_partition(29, 2, schedule="config2")[1] == pytest.approx(0.02)
    assert tvo_partition(30, 2, schedule="config2")[1] == pytest.approx(0.03)


def _reparameterised(eid: str) -> bool:
    return eid.startswith("pathwise") or eid in ("stl", "dreg")


@pytest.mark.parametrize("eid", paper_estimator_ids())
def test_every_paper_id_trains_a_tiny_model(eid):
    """A few Adam steps on a tiny model raise the exact objective (the loss falls)."""
    torch.manual_seed(1)
    K = 6
    if _reparameterised(eid):
        model = LinearGaussianModel(D=3, seed=2)
        x = torch.randn(16, 3) * 1.5 + 2.0

        def objective():
            with torch.no_grad():
                return float(model.exact_log_evidence(x).mean())
    else:
        from ovis.testing import exact_log_evidence

        model = BernoulliToyModel(Dx=6, Dz=3, seed=3)
        x = torch.bernoulli(torch.full((16, 6), 0.3))

        def objective():
            with torch.no_grad():
                return float(exact_log_evidence(model, x))
    est = build_estimator(eid, mc=4, iw=K)
    opt = torch.optim.Adam(list(model.parameters()) + list(est.parameters()), lr=0.05)
    before = objective()
    for _ in range(60):
        opt.zero_grad()
        est(model, x, backward=True)
        opt.step()
    after = objective()
    assert after > before + 0.05, f"{eid}: log p(x) {before:.3f} -> {after:.3f}"
