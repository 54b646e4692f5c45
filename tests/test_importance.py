"""The importance-weighted core (ovis.estimators.importance), tested once."""
from __future__ import annotations

import math

import pytest
import torch

from ovis.estimators.importance import (
    effective_sample_size,
    iw_bound,
    leave_one_out_logsumexp,
    log_one_minus_normalized_weights,
    log_weights,
    normalized_weights,
    renyi_bound,
)


def naive_loo(x: torch.Tensor) -> torch.Tensor:
    """K x K reference: log sum_{l != k} exp(x_l), in float64."""
    K = x.shape[-1]
    x = x.double()
    mask = torch.eye(K, dtype=torch.bool)
    expanded = x[..., None, :].expand(*x.shape, K).clone()  # [..., k, l]
    expanded[..., mask] = -math.inf
    return torch.logsumexp(expanded, dim=-1)


def test_log_weights_beta_and_freebits():
    log_px = torch.randn(2, 3, 4)
    log_qz = torch.randn(2, 3, 4, 2)
    log_pz = torch.randn(2, 3, 4, 2)
    log_w, kl = log_weights(log_px, log_qz, log_pz, beta=0.3)
    assert torch.allclose(kl, (log_qz - log_pz).sum(-1))
    assert torch.allclose(log_w, log_px - 0.3 * (log_qz - log_pz).sum(-1))
    log_w_fb, kl_fb = log_weights(log_px, log_qz, log_pz, beta=1.0, freebits=0.5)
    assert torch.allclose(kl_fb, (log_qz - log_pz).clamp(min=0.5).sum(-1))
    assert torch.allclose(log_w_fb, log_px - kl_fb)


def test_shapes_are_asserted():
    with pytest.raises(ValueError, match=r"\[B, M, K\]"):
        iw_bound(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\[B, M, K, L\]"):
        log_weights(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4, 1))
    with pytest.raises(ValueError, match="inconsistent"):
        log_weights(torch.randn(2, 3, 4), torch.randn(2, 3, 5, 1), torch.randn(2, 3, 5, 1))


def test_iw_bound_and_renyi():
    log_w = torch.randn(5, 2, 7, dtype=torch.float64) * 3
    expected = torch.log(torch.exp(log_w).mean(-1))
    assert torch.allclose(iw_bound(log_w), expected)
    # alpha = 0 is the IW bound; K = 1 is log w for every alpha
    assert torch.allclose(renyi_bound(log_w, 0.0), iw_bound(log_w))
    one = log_w[..., :1]
    for alpha in (0.0, 0.3, 0.9):
        assert torch.allclose(renyi_bound(one, alpha), one[..., 0])
    # the Renyi bound decreases in alpha toward the ELBO (mean of log w)
    r = [renyi_bound(log_w, a) for a in (0.0, 0.5, 0.99)]
    assert torch.all(r[0] >= r[1]) and torch.all(r[1] >= r[2])
    assert torch.all(r[2] >= log_w.mean(-1) - 1e-9)
    manual = torch.log(torch.exp(0.5 * log_w).mean(-1)) / 0.5
    assert torch.allclose(r[1], manual)
    with pytest.raises(ValueError, match="alpha"):
        renyi_bound(log_w, 1.0)


def test_normalized_weights_and_ess():
    log_w = torch.randn(3, 2, 6, dtype=torch.float64)
    v = normalized_weights(log_w)
    assert torch.allclose(v.sum(-1), torch.ones(3, 2, dtype=torch.float64))
    assert torch.allclose(v, torch.exp(log_w) / torch.exp(log_w).sum(-1, keepdim=True))
    vt = normalized_weights(log_w, alpha=0.5)
    assert torch.allclose(vt, torch.softmax(0.5 * log_w, -1))
    w = torch.exp(log_w)
    assert torch.allclose(effective_sample_size(log_w), w.sum(-1) ** 2 / (w ** 2).sum(-1))
    assert torch.allclose(effective_sample_size(torch.zeros(1, 1, 9)), torch.tensor([[9.0]]))
    dominant = torch.tensor([[[0.0, -800.0, -900.0]]])
    assert torch.allclose(effective_sample_size(dominant), torch.tensor([[1.0]]))


@pytest.mark.parametrize("K", [1, 2, 3, 10, 16, 17, 32, 33, 257])  # masked K x K up to 16, prefix/suffix above
def test_leave_one_out_matches_naive(K):
    x = torch.randn(4, 3, K, dtype=torch.float64) * 5
    loo = leave_one_out_logsumexp(x)
    if K == 1:
        assert torch.all(torch.isneginf(loo))
    else:
        assert torch.allclose(loo, naive_loo(x), atol=1e-10)
    # along another dimension
    xt = x.transpose(1, 2).contiguous()
    assert torch.allclose(leave_one_out_logsumexp(xt, dim=1), leave_one_out_logsumexp(x).transpose(1, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_leave_one_out_exact_when_one_weight_dominates(dtype):
    # log w spread over hundreds of nats: the subtraction log(sum - w_k) would give -inf/NaN
    x = torch.tensor([[[0.0, -300.0, -450.0, -600.0, -200.0]]], dtype=dtype)
    loo = leave_one_out_logsumexp(x)
    ref = naive_loo(x)
    assert torch.isfinite(loo).all()
    assert torch.allclose(loo.double(), ref, rtol=1e-6)
    # the dominant particle's leave-one-out value is the log-sum-exp of the others
    assert abs(float(loo[0, 0, 0]) - float(torch.logsumexp(x[0, 0, 1:].double(), -1))) < 1e-4
    log1mv = log_one_minus_normalized_weights(x)
    assert torch.isfinite(log1mv).all()
    # log(1 - v_k) for the dominant k is about -200 nats, far below float32's log1p range
    assert float(log1mv[0, 0, 0]) == pytest.approx(-200.0, abs=1e-3)
    naive = torch.log1p(-normalized_weights(x))
    assert torch.isinf(naive[0, 0, 0]) or dtype == torch.float64


def test_leave_one_out_memory_is_linear():
    # K = 5000 with B*M = 24: a K x K matrix would need 24 * 25e6 * 4 B = 2.4 GB
    x = torch.randn(24, 1, 5000)
    loo = leave_one_out_logsumexp(x)
    assert loo.shape == x.shape
    lse = torch.logsumexp(x, -1, keepdim=True)
    # sum_k exp(loo_k - lse) = K - 1
    assert torch.allclose(torch.exp(loo - lse).sum(-1), torch.full((24, 1), 4999.0), rtol=1e-4)


def test_base_diagnostics_from_precomputed_bound_and_weights_equal_the_direct_ones():
    from ovis.estimators.base import GradientEstimator

    torch.manual_seed(0)
    log_w = torch.randn(4, 2, 6, dtype=torch.float64) * 30  # a spread of tens of nats
    kl, log_px = torch.randn(4, 2, 6, dtype=torch.float64), torch.randn(4, 2, 6, dtype=torch.float64)
    direct = GradientEstimator.base_diagnostics(log_w, kl, log_px)["loss"]
    reused = GradientEstimator.base_diagnostics(log_w, kl, log_px, iw=iw_bound(log_w),
                                                v=normalized_weights(log_w))["loss"]
    assert set(direct) == set(reused) == {"L_k", "elbo", "kl", "log_px", "ess"}
    for name in direct:
        assert direct[name].shape == (4,)
        assert torch.allclose(direct[name], reused[name], rtol=1e-12, atol=1e-12), name
    assert torch.allclose(direct["elbo"], log_w.mean(dim=(1, 2)))
