r"""The particles protocol (:mod:`ovis.models.base`): every single-layer model encodes ``x`` once per
data point and draws its ``K`` particles from the one ``q(z|x)``, repeated.

For each model and each estimator family the encode-once path is compared with the repeated path
(``supports_particles = False`` on the instance: the model is given ``x`` repeated ``M*K`` times,
as before the protocol) on the same generator state: the same loss and the same gradients, to float
tolerance.  The encoder's input rows are counted to show that the encode-once path really encodes
``B`` rows.  The helpers :func:`repeat_rows`, :func:`repeat_distribution`,
:class:`RowRepeatedNormal` and the inverse-CDF categorical sampler are checked on their own.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from torch import nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
    OneHotCategorical,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
)

from ovis.datasets.synthetic import gmm_true_parameters
from ovis.distributions import BernoulliLogits, GumbelSoftmax
from ovis.distributions.categorical import OneHotCategoricalCDF, categorical_indices
from ovis.distributions.utils import (
    RowRepeatedNormal,
    detach_distribution,
    repeat_distribution,
    repeat_rows,
    repeated_log_prob,
)
from ovis.estimators import build_estimator
from ovis.estimators.base import GradientEstimator, RuntimeParams
from ovis.models.base import uses_particles
from ovis.models.conditional import ConditionalDiscreteVAE
from ovis.models.discrete_vae import DiscreteVAE
from ovis.models.gaussian_toy import GaussianToyModel
from ovis.models.gmm import GaussianMixtureModel
from ovis.models.likelihoods import LikelihoodVAE
from ovis.models.vae import VAE, GaussianVAE, conv_decoder, conv_encoder
from ovis.testing import BernoulliToyModel, CategoricalToyModel

B, M, K = 3, 2, 3


def _binary(*shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return (torch.rand(*shape, generator=g) < 0.4).float()


def _real(*shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(6)
    return scale * torch.randn(*shape, generator=g)


# name -> (builder, data); every builder is seeded, the models are tiny
MODELS: Dict[str, Tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "gaussian-vae": (lambda: GaussianVAE((6,), N=3, hdim=5, nlayers=1), lambda: _binary(B, 6)),
    "vae-normal": (lambda: VAE((6,), "normal", N=3, hdim=5, nlayers=1, learn_prior=True), lambda: _binary(B, 6)),
    "vae-bernoulli": (lambda: VAE((6,), "bernoulli", N=3, hdim=5, nlayers=1, learn_prior=True),
                      lambda: _binary(B, 6)),
    "vae-categorical": (lambda: VAE((6,), "categorical", N=2, K=3, hdim=5, nlayers=1, learn_prior=True),
                        lambda: _binary(B, 6)),
    "vae-mog": (lambda: VAE((6,), "mog", N=2, K=2, hdim=5, nlayers=1), lambda: _binary(B, 6)),
    "conv-vae": (lambda: VAE((1, 28, 28), "normal", N=2, encoder=conv_encoder((1, 28, 28), 4, 4),
                             decoder=conv_decoder(2, (1, 28, 28), 4)), lambda: _binary(B, 1, 28, 28)),
    "discrete-vae-gs": (lambda: DiscreteVAE((6,), 2, 3, relaxation="gs", hdim=5, nlayers=1), lambda: _binary(B, 6)),
    "discrete-vae-igr-i": (lambda: DiscreteVAE((6,), 2, 3, relaxation="igr-i", hdim=5, nlayers=1),
                           lambda: _binary(B, 6)),
    "discrete-vae-igr-planar": (lambda: DiscreteVAE((6,), 2, 3, relaxation="igr-planar", hdim=5, nlayers=1),
                                lambda: _binary(B, 6)),
    "discrete-vae-igr-sb": (lambda: DiscreteVAE((6,), 2, 3, relaxation="igr-sb", hdim=5, nlayers=1),
                            lambda: _binary(B, 6)),
    "conditional-discrete-vae": (lambda: ConditionalDiscreteVAE((1, 4, 4), num_of_discrete_var=2, n_required=3,
                                                                relaxation="gs", hdim=5, nlayers=1),
                                 lambda: _binary(B, 1, 4, 4)),
    "gmm": (lambda: GaussianMixtureModel(C=5, hdim=4, true_parameters=gmm_true_parameters(5)),
            lambda: _real(B, 1, scale=20.0) + 20.0),
    "gaussian-toy": (lambda: GaussianToyModel(D=3), lambda: _real(B, 3)),
    "mog-posterior": (lambda: LikelihoodVAE((6,), prior="normal", N=2, hdim=5, nlayers=1, posterior="mog",
                                            posterior_components=2), lambda: _binary(B, 6)),
    "bernoulli-toy": (lambda: BernoulliToyModel(Dx=4, Dz=2), lambda: _binary(B, 4)),
    "categorical-toy": (lambda: CategoricalToyModel(Dx=4, C=3), lambda: _binary(B, 4)),
}

REPARAMETERISED = ["gaussian-vae", "vae-normal", "vae-bernoulli", "vae-categorical", "conv-vae", "discrete-vae-gs",
                   "discrete-vae-igr-i", "discrete-vae-igr-planar", "discrete-vae-igr-sb", "conditional-discrete-vae",
                   "gaussian-toy"]
ALL = list(MODELS)
DISCRETE_HOOKS = ["discrete-vae-gs", "conditional-discrete-vae", "bernoulli-toy", "categorical-toy"]

PATHWISE = ["pathwise-vae", "pathwise-iwae", "stl", "dreg"]
SCORE = ["reinforce", "vimco-arithmetic", "ovis-gamma1", "ovis-S2", "wake-wake", "tvo-part2", "nvil"]
REBAR_LINE = ["concrete", "straight-through", "rebar", "relax", "muprop"]

CASES = ([(m, e) for e in PATHWISE for m in REPARAMETERISED]
         + [(m, e) for e in SCORE for m in ALL]
         + [(m, e) for e in REBAR_LINE for m in DISCRETE_HOOKS]
         + [("bernoulli-toy", "arm"), ("bernoulli-toy", "disarm"), ("mog-posterior", "hybrid-mixture")])


def _encoder_rows(model: nn.Module) -> List[int]:
    r"""Rows seen by the model's encoder modules (Linear / Conv layers fed ``x``) during a call."""
    rows: List[int] = []
    net = model.inference_network
    first = next((m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if first is not None:
        first.register_forward_pre_hook(lambda mod, inp: rows.append(int(inp[0].reshape(-1, *inp[0].shape[-1:]).shape[0]) if isinstance(mod, nn.Linear) else int(inp[0].shape[0])))
    return rows


def _run(model: nn.Module, est: nn.Module, x: torch.Tensor, seed: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    torch.manual_seed(seed)
    loss, _, _ = est(model, x)
    # listed after the call: the REBAR line creates its eta's and baseline on its first call
    params = [p for p in list(model.parameters()) + list(est.parameters()) if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# the convolutional VAE (28 x 28 images) is slow-ish: two of its cases run by default
_FAST_CONV = {"pathwise-iwae", "ovis-gamma1"}
_PARAMS = [pytest.param(m, e, id=f"{m}-{e}",
                        marks=[pytest.mark.slow] if m == "conv-vae" and e not in _FAST_CONV else [])
           for m, e in CASES]


@pytest.mark.parametrize("name,eid", _PARAMS)
def test_encode_once_equals_repeated_path(name, eid):
    build, data = MODELS[name]
    torch.manual_seed(0)
    model = build()
    x = data()
    est = build_estimator(eid, mc=M, iw=K)
    assert uses_particles(model)
    rows = _encoder_rows(model)
    loss, grads = _run(model, est, x, seed=11)
    once = list(rows)
    rows.clear()
    model.supports_particles = False  # the repeated path: x repeated M*K times
    model.fused_log_densities = False
    ref_loss, ref_grads = _run(model, est, x, seed=11)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    if once and eid != "wake-wake":  # (wake-wake's phase on x alone is not a particle evaluation)
        assert max(once) == B, f"the encoder saw {once} rows, expected {B} (encode once per data point)"
        assert max(rows) == B * M * K


@pytest.mark.parametrize("name", ALL)
def test_forward_particles_equals_forward_on_repeated_x(name):
    build, data = MODELS[name]
    torch.manual_seed(0)
    model = build()
    x = data()
    n = 4
    reparam = name in REPARAMETERISED
    for zgrads in ((False, True) if reparam else (False,)):
        torch.manual_seed(3)
        out = model(x, zgrads=zgrads, particles=n)
        torch.manual_seed(3)
        ref = model(repeat_rows(x, n), zgrads=zgrads)
        for a, b in zip(out["z"], ref["z"]):
            assert a.shape[0] == B * n
            torch.testing.assert_close(a, b)
        for key in ("qz", "pz"):
            for d, r, z in zip(out[key], ref[key], ref["z"]):
                assert d.batch_shape == r.batch_shape
                torch.testing.assert_close(d.log_prob(z), r.log_prob(z), rtol=1e-5, atol=1e-5)
        xr = repeat_rows(x, n)
        px_ref = ref["px"].log_prob(xr)
        if name == "conditional-discrete-vae":
            torch.testing.assert_close(out["px"].log_prob(xr), px_ref, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(repeated_log_prob(out["px"], x, n), px_ref, rtol=1e-5, atol=1e-4)


def test_gmm_fused_path_equals_forward():
    model = GaussianMixtureModel(C=6, hdim=4, true_parameters=gmm_true_parameters(6))
    x = _real(5, 1, scale=20.0) + 25.0
    ev = GradientEstimator(mc=2, iw=4)
    torch.manual_seed(1)
    fused = ev.evaluate(model, x, RuntimeParams())
    model.fused_log_densities = False
    torch.manual_seed(1)
    plain = ev.evaluate(model, x, RuntimeParams())
    torch.testing.assert_close(fused.output["z"][0], plain.output["z"][0], rtol=0, atol=0)
    for a, b in ((fused.log_px, plain.log_px), (fused.log_qz, plain.log_qz), (fused.log_pz, plain.log_pz)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    ga = torch.autograd.grad(fused.log_qz.sum() + fused.log_pz.sum(), list(model.parameters()), allow_unused=True)
    gb = torch.autograd.grad(plain.log_qz.sum() + plain.log_pz.sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(ga, gb):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ helpers
def test_repeat_rows_order_and_gradient():
    t = torch.arange(6.0).view(3, 2).requires_grad_()
    r = repeat_rows(t, 2)
    assert r.tolist() == [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]]
    assert torch.equal(r, torch.repeat_interleave(t, 2, 0))
    (r * torch.arange(12.0).view(6, 2)).sum().backward()
    assert t.grad.tolist() == [[2, 4], [10, 12], [18, 20]]
    assert repeat_rows(t, 1) is t
    with pytest.raises(ValueError, match="n must be"):
        repeat_rows(t, 0)
    with pytest.raises(ValueError, match="0-d"):
        repeat_rows(torch.tensor(1.0), 2)


def _dists() -> Dict[str, torch.distributions.Distribution]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=g)
    c = torch.randn(3, 2, 4, generator=g)
    return {
        "normal": Independent(Normal(a, a.exp()), 1),
        "bernoulli": Independent(Bernoulli(logits=a), 1),
        "bernoulli-logits": BernoulliLogits(a, 1),
        "categorical": Categorical(logits=a),
        "one-hot": Independent(OneHotCategorical(logits=c), 1),
        "one-hot-cdf": OneHotCategoricalCDF(logits=a),
        "relaxed-bernoulli": Independent(RelaxedBernoulli(torch.tensor(0.5), logits=a), 1),
        "relaxed-one-hot": Independent(RelaxedOneHotCategorical(torch.tensor(0.5), logits=c), 1),
        "gumbel-softmax": Independent(GumbelSoftmax(torch.tensor(0.5), logits=c), 1),
        "mixture": MixtureSameFamily(Categorical(logits=a[:, :2]),
                                     Independent(Normal(c, torch.ones_like(c)), 1)),
    }


@pytest.mark.parametrize("kind", list(_dists()))
def test_repeat_distribution_matches_the_distribution_of_repeated_rows(kind):
    d = _dists()[kind]
    n = 3
    r = repeat_distribution(d, n)
    assert r.batch_shape == (d.batch_shape[0] * n, *d.batch_shape[1:]) and r.event_shape == d.event_shape
    assert type(r) is type(d) or isinstance(r, type(d))
    torch.manual_seed(2)
    v = r.sample()
    assert v.shape == (*r.batch_shape, *r.event_shape)
    # log_prob of the repeated distribution at row b*n + j is that of row b
    lp = r.log_prob(v).view(d.batch_shape[0], n, *d.batch_shape[1:])
    vb = v.view(d.batch_shape[0], n, *v.shape[1:])
    for j in range(n):
        torch.testing.assert_close(lp[:, j], d.log_prob(vb[:, j]), rtol=1e-5, atol=1e-5)
    assert repeat_distribution(d, 1) is d


def test_repeated_normal_draws_the_noise_of_the_repeated_normal_and_detaches():
    loc = torch.randn(4, 3, requires_grad=True)
    log_scale = torch.randn(4, 3, requires_grad=True)
    n = 5
    r = RowRepeatedNormal(loc, log_scale.exp(), n)
    full = Normal(repeat_rows(loc, n), repeat_rows(log_scale.exp(), n))
    torch.manual_seed(4)
    z = r.rsample()
    torch.manual_seed(4)
    zf = full.rsample()
    torch.testing.assert_close(z, zf, rtol=0, atol=0)
    torch.manual_seed(4)
    torch.testing.assert_close(r.sample(), zf.detach(), rtol=0, atol=0)
    torch.testing.assert_close(r.log_prob(z), full.log_prob(zf))
    torch.testing.assert_close(r.entropy(), full.entropy())
    torch.testing.assert_close(r.mean, full.mean)
    g1 = torch.autograd.grad(r.log_prob(z).sum(), [loc, log_scale])
    g2 = torch.autograd.grad(full.log_prob(zf).sum(), [loc, log_scale])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # STL / DReG: log q with q's parameters detached is a function of z only
    det = detach_distribution(Independent(r, 1))
    zz = z.detach().requires_grad_()
    lq = det.log_prob(zz).sum()
    assert not any(t.requires_grad for t in (det.base_dist._loc_rows, det.base_dist._scale_rows))
    gz, = torch.autograd.grad(lq, [zz])
    torch.testing.assert_close(gz, -(zz - repeat_rows(loc, n)) / repeat_rows(log_scale.exp(), n) ** 2)
    assert r.sample((2,)).shape == (2, 20, 3)


def test_repeat_distribution_refuses_what_it_cannot_repeat():
    with pytest.raises(ValueError, match="batch dimension"):
        repeat_distribution(Normal(torch.tensor(0.0), torch.tensor(1.0)), 2)
    with pytest.raises(ValueError, match="n must be"):
        repeat_distribution(Normal(torch.zeros(2), torch.ones(2)), 0)

    class Opaque(torch.distributions.Distribution):
        arg_constraints: Dict = {}

        def __init__(self) -> None:
            super().__init__(torch.Size([2]), validate_args=False)

    with pytest.raises(TypeError, match="cannot find the parameters"):
        repeat_distribution(Opaque(), 2)


def test_inverse_cdf_categorical_sampler_has_the_categorical_law():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25]])
    torch.manual_seed(0)
    idx = categorical_indices(probs, 200_000)
    for row in range(2):
        freq = torch.bincount(idx[row], minlength=4).double() / idx.shape[1]
        sd = (probs[row].double() * (1 - probs[row].double()) / idx.shape[1]).sqrt()
        assert torch.all((freq - probs[row].double()).abs() <= 5 * sd + 1e-12), freq
    assert int((idx[0] == 1).sum()) == 0  # a zero-probability class is never drawn
    d = OneHotCategoricalCDF(probs=probs)
    s = d.sample((3,))
    assert s.shape == (3, 2, 4) and torch.all(s.sum(-1) == 1)
    with pytest.raises(ValueError, match=r"\[R, C\]"):
        categorical_indices(probs[0], 2)
    with pytest.raises(ValueError, match="n must be"):
        categorical_indices(probs, 0)


def test_model_overriding_forward_without_particles_gets_the_repeated_batch():
    class Plain(GaussianVAE):
        def forward(self, x, zgrads=False, **kw):  # no particles parameter
            return super().forward(x, zgrads=zgrads)

    model = Plain((6,), N=2, hdim=4, nlayers=1)
    assert not uses_particles(model)
    loss, _, out = build_estimator("pathwise-iwae", iw=3)(model, _binary(2, 6))
    assert out["z"][0].shape[0] == 6 and torch.isfinite(loss)


def test_a_model_returning_the_wrong_number_of_rows_is_named():
    class Wrong(GaussianVAE):
        def forward(self, x, zgrads=False, particles=1, **kw):
            return super().forward(x, zgrads=zgrads, particles=1)

    # the protocol check (ovis.models.protocol) names the call and the rows it expected
    with pytest.raises(ValueError, match=r"particles=3\): output\['z'\]\[0\] has shape \[2, 2\]; expected 6 rows"):
        build_estimator("pathwise-iwae", iw=3)(Wrong((6,), N=2, hdim=4, nlayers=1), _binary(2, 6))


def test_bernoulli_log_prob_repeated_equals_log_prob_of_the_copy():
    a = torch.randn(6, 2, 3, requires_grad=True)
    x = _binary(2, 2, 3)
    d = BernoulliLogits(a, 2)
    lp = d.log_prob_repeated(x, 3)
    torch.testing.assert_close(lp, d.log_prob(repeat_rows(x, 3)))
    g1, = torch.autograd.grad(lp.sum(), [a])
    g2, = torch.autograd.grad(d.log_prob(repeat_rows(x, 3)).sum(), [a])
    torch.testing.assert_close(g1, g2)
    # a batch that is not [B*n] falls back to the copy
    d2 = BernoulliLogits(torch.randn(6, 2, 3), 1)
    assert d2.log_prob_repeated(x, 3).shape == (6, 2)
    assert math.isfinite(float(lp.detach().sum()))


def test_one_hot_cdf_from_log_probs_is_the_distribution_of_the_logits():
    logits = torch.randn(4, 5)
    lp = logits.log_softmax(-1)
    a, b = OneHotCategoricalCDF.from_log_probs(lp), OneHotCategoricalCDF(logits=logits)
    assert a.batch_shape == b.batch_shape and a.event_shape == b.event_shape
    v = torch.eye(5)[torch.tensor([0, 3, 4, 1])]
    torch.testing.assert_close(a.log_prob(v), b.log_prob(v))
    torch.testing.assert_close(a.probs, b.probs)
    torch.manual_seed(0)
    sa = a.sample()
    torch.manual_seed(0)
    torch.testing.assert_close(sa, b.sample())
    torch.testing.assert_close(a.entropy(), b.entropy())
    # a view of per-point log-probabilities expanded over the particles
    e = OneHotCategoricalCDF.from_log_probs(lp[:1].expand(3, 5))
    torch.testing.assert_close(e.log_prob(v[:3]), lp[0, v[:3].argmax(-1)])


def test_the_library_never_imports_pyro():
    import sys

    import ovis.estimators  # noqa: F401
    import ovis.models  # noqa: F401
    import ovis.training.evaluation  # noqa: F401

    assert not any(m == "pyro" or m.startswith("pyro.") for m in sys.modules)
