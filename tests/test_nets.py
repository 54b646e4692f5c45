r"""Encoders / decoders over structured batch shapes (ovis.models.nets) and the prior / CPD nets
(ovis.models.cpds): shapes with 0, 1 and 2 leading batch dims, equality with a loop over the batch,
densities against hand-written formulas, and the VAEs assembled from these components."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import MixtureSameFamily

from ovis.models.cpds import (
    BernoulliCPD,
    BernoulliImageCPD,
    BernoulliPrior,
    CategoricalCPD,
    CategoricalPrior,
    ContinuousBernoulliImageCPD,
    GaussianMeanFieldCPD,
    MixtureOfGaussianMeanFieldsCPD,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
)
from ovis.models.nets import FFNN, CNNDecoder, CNNEncoder, FFNNDecoder, FFNNEncoder, StructuredNet

pytestmark = pytest.mark.usefixtures("float64")
BATCHES = [(), (3,), (2, 3)]


def _loop(net: nn.Module, x: torch.Tensor, batch: tuple, in_dims: int) -> torch.Tensor:
    r"""``net`` applied to each element of the batch, one at a time (a batch of one), stacked."""
    flat = x.reshape(-1, *x.shape[x.dim() - in_dims:])
    out = torch.stack([net(flat[i:i + 1])[0] for i in range(flat.shape[0])])
    return out.reshape(*batch, *out.shape[1:])


@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_ffnn_encoder_decoder_shapes_and_loop(batch):
    x_shape, D = (1, 5, 4), 6
    enc, dec = FFNNEncoder(x_shape, D, hdim=7, nlayers=2), FFNNDecoder(D, x_shape, hdim=7, nlayers=1)
    x = torch.rand(*batch, *x_shape)
    h = enc(x)
    assert h.shape == (*batch, D)
    y = dec(h)
    assert y.shape == (*batch, *x_shape)
    if batch:
        assert torch.allclose(h, _loop(enc, x, batch, 3), atol=1e-12)
        assert torch.allclose(y, _loop(dec, h, batch, 1), atol=1e-12)
    else:  # one input: the same as a batch of one
        assert torch.allclose(h, enc(x[None])[0], atol=1e-12)
    # a latent of shape (N, K) (categorical) is flattened by the decoder
    dec2 = FFNNDecoder((2, 3), x_shape, hdim=4, nlayers=0)
    z = torch.rand(*batch, 2, 3)
    assert torch.allclose(dec2(z), dec2.layers(z.reshape(-1, 6)).reshape(*batch, *x_shape), atol=1e-12)


@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_cnn_encoder_decoder_shapes_and_loop(batch):
    torch.manual_seed(1)
    x_shape, D = (1, 28, 28), 5
    enc, dec = CNNEncoder(x_shape, D, hdim=8), CNNDecoder(D, x_shape, hdim=8)
    x = torch.rand(*batch, *x_shape)
    h = enc(x)
    y = dec(h)
    assert h.shape == (*batch, D) and y.shape == (*batch, *x_shape)
    if batch:
        assert torch.allclose(h, _loop(enc, x, batch, 3), atol=1e-10)
        assert torch.allclose(y, _loop(dec, h, batch, 1), atol=1e-10)
    else:
        assert torch.allclose(y, dec(h[None])[0], atol=1e-10)


def test_structured_net_errors_name_the_shapes():
    enc = FFNNEncoder((1, 4, 4), 3, hdim=4, nlayers=1)
    with pytest.raises(ValueError, match=r"must end with \(1, 4, 4\)"):
        enc(torch.rand(2, 16))
    with pytest.raises(ValueError, match=r"expected \[2, 7\] numbers"):
        StructuredNet(nn.Linear(4, 6), (4,), (7,))(torch.rand(2, 4))
    with pytest.raises(ValueError, match="invalid FFNN"):
        FFNN((4,), (2,), hdim=0)
    with pytest.raises(ValueError, match=r"\[C, 28, 28\]"):
        CNNEncoder((1, 5, 5), 3)
    with pytest.raises(TypeError, match="nn.Module"):
        StructuredNet(lambda t: t, (1,), (1,))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- prior nets
@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_prior_nets_shapes_and_densities(batch):
    N, C = 3, 4
    z = torch.randn(*batch, N)
    p = StandardNormalPrior(N)(batch)
    assert p.batch_shape == batch and p.event_shape == (N,) and p.sample().shape == (*batch, N)
    manual = -0.5 * (z ** 2).sum(-1) - 0.5 * N * math.log(2 * math.pi)
    assert torch.allclose(p.log_prob(z), manual, atol=1e-12)
    assert not any(q.requires_grad for q in StandardNormalPrior(N).parameters())
    assert all(q.requires_grad for q in StandardNormalPrior(N, learn=True).parameters())

    mog = MixtureOfGaussiansPrior(N, C)
    with torch.no_grad():
        mog.logits.copy_(torch.randn(C))
        mog.log_scales.copy_(0.3 * torch.randn(C, N))
    p = mog(batch)
    assert isinstance(p, MixtureSameFamily) and p.batch_shape == batch and p.event_shape == (N,)
    assert p.sample().shape == (*batch, N)
    s = mog.log_scales.exp()
    comp = (-0.5 * ((z[..., None, :] - mog.locs) / s) ** 2 - mog.log_scales - 0.5 * math.log(2 * math.pi)).sum(-1)
    manual = torch.logsumexp(mog.logits.log_softmax(-1) + comp, -1)
    assert torch.allclose(p.log_prob(z), manual, atol=1e-10)
    assert all(q.requires_grad for q in mog.parameters())


def test_discrete_prior_nets_hard_and_relaxed():
    bp, cp = BernoulliPrior(4), CategoricalPrior(3, 5, learn=True)
    b = bp((2, 6)).sample()
    assert b.shape == (2, 6, 4) and set(b.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(bp((2, 6)).log_prob(b), torch.full((2, 6), 4 * math.log(0.5)), atol=1e-12)
    c = cp(7).sample()
    assert c.shape == (7, 3, 5) and torch.equal(c.sum(-1), torch.ones(7, 3))
    r = cp(7, relaxed=True, tau=0.4)
    zr = r.rsample()
    assert r.event_shape == (3, 5) and ((zr > 0) & (zr < 1)).any()
    assert float(r.base_dist.temperature) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="needs a temperature"):
        bp(2, relaxed=True)
    with pytest.raises(ValueError, match="K >= 2"):
        CategoricalPrior(3, 1)


# --------------------------------------------------------------------------------- CPD nets
@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_gaussian_cpds_over_structured_batches(batch):
    x_shape, N, C = (1, 4, 4), 3, 2
    x = torch.rand(*batch, *x_shape)
    q = GaussianMeanFieldCPD(FFNNEncoder(x_shape, 2 * N, hdim=5, nlayers=1), N)
    d = q(x)
    assert d.batch_shape == batch and d.event_shape == (N,) and d.has_rsample
    z = d.rsample()
    h = q.net(x)
    loc, log_scale = h[..., :N], h[..., N:]
    manual = (-0.5 * ((z - loc) / log_scale.exp()) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(d.log_prob(z), manual, atol=1e-10)

    m = MixtureOfGaussianMeanFieldsCPD(FFNNEncoder(x_shape, C * (1 + 2 * N), hdim=5, nlayers=1), N, C)
    d = m(x)
    assert isinstance(d, MixtureSameFamily) and d.batch_shape == batch and d.event_shape == (N,)
    h = m.net(x)
    logits, rest = h[..., :C], h[..., C:].reshape(*batch, C, 2 * N)
    z = d.sample()
    comp = (-0.5 * ((z[..., None, :] - rest[..., :N]) / rest[..., N:].exp()) ** 2 - rest[..., N:]
            - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(d.log_prob(z), torch.logsumexp(logits.log_softmax(-1) + comp, -1), atol=1e-10)


@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_image_cpds_bernoulli_and_continuous_bernoulli(batch):
    x_shape, N = (1, 3, 3), 2
    z = torch.randn(*batch, N)
    bern = BernoulliImageCPD(FFNNDecoder(N, x_shape, hdim=4, nlayers=1), x_shape)
    cb = ContinuousBernoulliImageCPD(bern.net, x_shape)
    logits = bern.net(z)
    x = torch.rand(*batch, *x_shape)
    xb = torch.bernoulli(x)
    db, dc = bern(z), cb(z)
    for d in (db, dc):
        assert d.batch_shape == batch and d.event_shape == x_shape and d.sample().shape == (*batch, *x_shape)
    lam = torch.sigmoid(logits)
    manual_b = (xb * torch.log(lam) + (1 - xb) * torch.log1p(-lam)).reshape(*batch, -1).sum(-1)
    assert torch.allclose(db.log_prob(xb), manual_b, atol=1e-10)
    # Continuous Bernoulli: C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) (2 at lambda = 1/2)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    manual_c = (log_c + x * torch.log(lam) + (1 - x) * torch.log1p(-lam)).reshape(*batch, -1).sum(-1)
    assert torch.allclose(dc.log_prob(x), manual_c, atol=1e-6)
    # a flat network output [*, D] is reshaped to the image
    flat = BernoulliImageCPD(StructuredNet(nn.Linear(N, 9), (N,), (9,)), x_shape)
    assert flat(z).event_shape == x_shape
    with pytest.raises(ValueError, match="expected"):
        BernoulliImageCPD(StructuredNet(nn.Linear(N, 8), (N,), (8,)), x_shape)(z)


def test_discrete_latent_cpds():
    x_shape = (1, 2, 2)
    x = torch.rand(2, 3, *x_shape)
    b = BernoulliCPD(FFNNEncoder(x_shape, 4, hdim=3, nlayers=1), 4)
    c = CategoricalCPD(FFNNEncoder(x_shape, 12, hdim=3, nlayers=1), 4, 3)
    assert b(x).batch_shape == (2, 3) and b(x).event_shape == (4,)
    assert c(x).batch_shape == (2, 3) and c(x).event_shape == (4, 3)
    assert torch.allclose(c(x).base_dist.logits.logsumexp(-1), torch.zeros(2, 3, 4), atol=1e-10)
    r = c(x, relaxed=True, tau=0.7)
    assert r.has_rsample and r.rsample().shape == (2, 3, 4, 3)
    assert b(x, relaxed=True, tau=torch.tensor(0.2)).rsample().requires_grad


# ------------------------------------------------------------------ VAEs from the components
def test_vaes_are_assembled_from_the_components():
    from ovis.models.likelihoods import LikelihoodVAE
    from ovis.models.vae import VAE, GaussianVAE

    x_shape = (1, 4, 4)
    kinds = {"normal": (GaussianMeanFieldCPD, StandardNormalPrior), "mog": (GaussianMeanFieldCPD, MixtureOfGaussiansPrior),
             "bernoulli": (BernoulliCPD, BernoulliPrior), "categorical": (CategoricalCPD, CategoricalPrior)}
    for prior, (q_cls, p_cls) in kinds.items():
        m = VAE(x_shape, prior=prior, N=3, K=2, hdim=4, nlayers=1)
        assert isinstance(m.inference_network, q_cls) and isinstance(m.generative_model.prior, p_cls)
        assert isinstance(m.generative_model.observation, BernoulliImageCPD)
        out = m(torch.bernoulli(torch.full((5, *x_shape), 0.4)))
        assert out["px"].batch_shape == (5,) and out["px"].event_shape == x_shape
    g = GaussianVAE(x_shape, N=3, hdim=4, nlayers=1)
    assert isinstance(g.inference_network, GaussianMeanFieldCPD) and isinstance(g.generative_model.prior, StandardNormalPrior)
    lv = LikelihoodVAE(x_shape, prior="mog", N=3, K=2, hdim=4, nlayers=1, likelihood="cbernoulli", posterior="mog",
                       posterior_components=3)
    assert isinstance(lv.generative_model.observation, ContinuousBernoulliImageCPD)
    assert isinstance(lv.inference_network, MixtureOfGaussianMeanFieldsCPD) and lv.inference_network.C == 3
    # the model's q(z|x) accepts particles of a batch [K, B, *x_shape] (structured batch)
    x = torch.rand(2, 5, *x_shape)
    q = lv.posterior(x)
    assert q.batch_shape == (2, 5)
    assert torch.allclose(q.mixture_distribution.logits[1], lv.posterior(x[1]).mixture_distribution.logits,
                          atol=1e-12)
    # the convolutional VAE wraps conv networks of a flat batch
    from ovis.models.vae import conv_decoder, conv_encoder

    cv = VAE((1, 28, 28), N=3, hdim=8, encoder=conv_encoder((1, 28, 28), 6, 8), decoder=conv_decoder(3, (1, 28, 28), 8))
    assert cv(torch.rand(2, 1, 28, 28))["px"].event_shape == (1, 28, 28)
    assert cv.posterior(torch.rand(3, 2, 1, 28, 28)).batch_shape == (3, 2)
