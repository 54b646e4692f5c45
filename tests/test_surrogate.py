"""The linear surrogate (one autograd node) equals the surrogate written with autograd."""
from __future__ import annotations

import pytest
import torch

from ovis.estimators.importance import log_weights, normalized_weights, renyi_bound
from ovis.estimators.score_function import score_function_surrogate
from ovis.estimators.surrogate import linear_surrogate


def _particles(seed: int = 0, B: int = 3, M: int = 2, K: int = 4, L: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g, dtype=torch.float64) * 3).requires_grad_()
            for shape in ((B, M, K), (B, M, K, L), (B, M, K, L))]


@pytest.mark.parametrize("alpha,beta,freebits,n_score", [(0.0, 1.0, None, 4), (0.3, 0.5, 0.2, 4), (0.0, 1.0, None, 2),
                                                         (0.0, 2.0, -0.5, 0), (0.5, 0.3, 0.1, 4), (0.0, 0.3, None, 3)])
def test_score_function_surrogate_equals_its_autograd_form(alpha, beta, freebits, n_score):
    """The reference is the score-function surrogate written the way the maths reads: the learning
    signal s_k = d_k - c_k (with d_k = L - v_k, the form of beta = 1) whose term -v_k is put back,
    sg(s_k + v_k) log q_k, plus the bound differentiated through *every* log-density, log q inside
    log w included (autograd through the KL weight and the free-bits clamp).  Within a budget
    (n_score < K) only the score particles carry a log q term: sg(s_k + v_k) log q_k + sg(v_k) log w_k
    over the first n_score particles, with the score bound's own weights, and the bound over all K
    for theta."""
    log_px, log_qz, log_pz = _particles()
    K = log_px.shape[-1]
    with torch.no_grad():
        log_w, _ = log_weights(log_px, log_qz, log_pz, beta, freebits)
        bound, v = renyi_bound(log_w, alpha), normalized_weights(log_w, alpha)
        v_score = normalized_weights(log_w[..., :n_score], alpha) if 0 < n_score < K else v[..., :n_score]
        signal = torch.randn(3, 2, n_score, dtype=torch.float64)
    u = None if n_score in (0, K) else v_score
    loss = score_function_surrogate(signal, log_px, log_qz, log_pz, v, bound, beta, freebits, direct_weights=u)
    if n_score == K:
        lw, _ = log_weights(log_px, log_qz, log_pz, beta, freebits)  # log q attached everywhere
        ref = -(((signal + v) * log_qz.sum(-1)).sum(-1) + renyi_bound(lw, alpha)).mean()
    else:
        lw_theta, _ = log_weights(log_px, log_qz.detach(), log_pz, beta, freebits)
        lw_phi, _ = log_weights(log_px.detach()[..., :n_score], log_qz[..., :n_score, :],
                                log_pz.detach()[..., :n_score, :], beta, freebits)
        ref = -(((signal + v_score) * log_qz.sum(-1)[..., :n_score]).sum(-1) + (v_score * lw_phi).sum(-1)
                - (v_score * lw_phi).sum(-1).detach() + renyi_bound(lw_theta, alpha)).mean()
    with torch.no_grad():  # the value: sg(s_k) log q_k plus the bound
        value = -((signal * log_qz.sum(-1)[..., :n_score]).sum(-1) + bound).mean()
    assert torch.allclose(loss, value, rtol=1e-12)
    g = torch.autograd.grad(loss, (log_px, log_qz, log_pz))
    g_ref = torch.autograd.grad(ref, (log_px, log_qz, log_pz))
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert g_ref[2].abs().sum() > 0 and g_ref[0].abs().sum() > 0


def test_the_surrogate_scales_the_direct_term_with_direct_weights():
    """direct_weights = a v: the term -v_k of the signal is a v_k, replaced by -a beta v_k 1[...]."""
    log_px, log_qz, log_pz = _particles()
    beta, freebits, a = 0.3, 0.1, 0.25
    with torch.no_grad():
        log_w, _ = log_weights(log_px, log_qz, log_pz, beta, freebits)
        bound, v = renyi_bound(log_w), normalized_weights(log_w)
        signal = torch.randn(3, 2, 4, dtype=torch.float64)
    loss = score_function_surrogate(signal, log_px, log_qz, log_pz, v, bound, beta, freebits, direct_weights=a * v)
    g_qz = torch.autograd.grad(loss, log_qz)[0]
    active = ((log_qz - log_pz) >= freebits).double()
    expected = -(signal[..., None] + a * v[..., None] * (1 - beta * active)) / 6  # B M = 6
    assert torch.allclose(g_qz, expected.expand_as(g_qz), rtol=1e-12)
    assert 0 < float(active.mean()) < 1  # the clamp is active for some layers, not all
    with pytest.raises(ValueError, match="direct_weights"):
        score_function_surrogate(signal, log_px, log_qz, log_pz, v, bound, beta, freebits,
                                 direct_weights=v[..., :2])


def test_linear_surrogate_scales_with_the_incoming_gradient_and_checks_its_inputs():
    log_px, log_qz, log_pz = _particles()
    d_px, d_qz, d_pz = (torch.rand(*s, dtype=torch.float64) for s in ((3, 2, 4), (3, 2, 4, 1), (3, 2, 4, 2)))
    out = linear_surrogate(torch.tensor(1.5), log_px, log_qz, log_pz, d_px, d_qz, d_pz)
    assert float(out.detach()) == 1.5
    (3.0 * out).backward()
    assert torch.allclose(log_qz.grad, 3.0 * d_qz.expand(3, 2, 4, 2))
    assert torch.allclose(log_px.grad, 3.0 * d_px) and torch.allclose(log_pz.grad, 3.0 * d_pz)
    with pytest.raises(ValueError, match="d_qz"):
        linear_surrogate(torch.tensor(0.0), log_px, log_qz, log_pz, d_px, torch.rand(3, 2, 4, 3), d_pz)
    with pytest.raises(ValueError, match="scalar"):
        linear_surrogate(torch.zeros(2), log_px, log_qz, log_pz, d_px, d_qz, d_pz)
    with pytest.raises(ValueError, match="no gradient"):
        linear_surrogate(torch.tensor(0.0), log_px, log_qz, log_pz, d_px.requires_grad_(), d_qz, d_pz)


class _FixedParticles(torch.nn.Module):
    r"""A fused model that returns given log-densities (leaves with gradients), ``[B*M*K]`` rows."""

    fused_log_densities = True

    def __init__(self, log_px, log_qz, log_pz):
        super().__init__()
        self.tensors = (log_px, log_qz, log_pz)

    def particle_log_densities(self, x, particles=1):
        log_px, log_qz, log_pz = self.tensors
        return {}, log_px.reshape(-1), log_qz.reshape(-1, log_qz.shape[-1]), log_pz.reshape(-1, log_pz.shape[-1])


@pytest.fixture
def no_model_checks():
    r"""The protocol check off (:func:`ovis.models.protocol.set_model_checks`): :class:`_FixedParticles`
    is a test double that returns log-densities only, not a model's output mapping."""
    from ovis.models.protocol import model_checks_enabled, set_model_checks

    before = model_checks_enabled()
    set_model_checks(False)
    try:
        yield
    finally:
        set_model_checks(before)


@pytest.mark.parametrize("eid", ["tvo-part2-beta1", "tvo-part3-beta2-trapz", "tvo-part2-beta1-right", "tvo-part1"])
@pytest.mark.parametrize("beta,freebits", [(1.0, None), (0.5, 0.2), (2.0, 1.0)])
def test_tvo_surrogate_equals_its_autograd_form(eid, beta, freebits, no_model_checks):
    """TVO's covariance estimator, written with autograd (omega and the centring detached), has the
    linear surrogate's value and gradients, with a KL weight and free bits (log q enters log w)."""
    from ovis.estimators import build_estimator

    log_px, log_qz, log_pz = _particles(seed=3, B=3, M=2, K=4, L=2)
    est = build_estimator(eid, iw=4, mc=2)
    loss = est(_FixedParticles(log_px, log_qz, log_pz), torch.zeros(3, 5), beta=beta, freebits=freebits)[0]
    betas, coef = (t.double() for t in est.riemann_weights())
    f = log_weights(log_px, log_qz, log_pz, beta, freebits)[0][..., None]  # [B, M, K, 1]
    omega = torch.softmax(betas * f.detach(), dim=2)
    centred = f.detach() - (omega * f.detach()).sum(2, keepdim=True)
    g = log_qz.sum(-1)[..., None] + betas * f
    ref = -(((omega * f).sum(2) + 4 / 3 * (omega * centred * g).sum(2)) * coef).sum(-1).mean()
    assert torch.allclose(loss, ref, rtol=1e-12)
    grads = torch.autograd.grad(loss, (log_px, log_qz, log_pz))
    for a, b in zip(grads, torch.autograd.grad(ref, (log_px, log_qz, log_pz))):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
        assert b.abs().sum() > 0
