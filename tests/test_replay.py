r"""Replay tests: with a fixed seed, one draw of each estimator equals the formula written out by
hand (explicit loops over particles, no shared code with the estimators), to 1e-6 in float64."""
from __future__ import annotations

import math

import pytest
import torch

from ovis.estimators import build_estimator
from ovis.testing import BernoulliToyModel, exact_gradients

pytestmark = pytest.mark.usefixtures("float64")
B, M, K = 2, 2, 4


def particles(model, x, n):
    """Sample exactly as the estimators do (x expanded to [B*M*n]) and return per-particle terms."""
    x_exp = x[:, None, None].expand(B, M, n, x.shape[1]).reshape(B * M * n, x.shape[1])
    out = model(x_exp)
    z = out["z"][0]
    log_px = out["px"].log_prob(x_exp).view(B, M, n)
    log_q = out["qz"][0].log_prob(z).view(B, M, n)
    log_p = out["pz"][0].log_prob(z).view(B, M, n)
    return log_px, log_q, log_p


def hand_signal(lw, eid, alpha=0.0, aux=None):
    """d_k - c_k for one (b, m) row of detached log-weights, with explicit loops."""
    t = 1.0 - alpha
    w = [math.exp(t * float(v)) for v in lw]
    n = len(w)
    total = sum(w)
    bound = math.log(total / n) / t
    d = [bound - wk / total for wk in w]
    c = []
    for k in range(n):
        others = [w[l] for l in range(n) if l != k]
        if eid == "reinforce":
            c.append(0.0)
        elif eid == "vimco-arithmetic":
            c.append(math.log((sum(others) + sum(others) / (n - 1)) / n) / t)
        elif eid == "vimco-geometric":
            geo = math.exp(sum(math.log(o) for o in others) / (n - 1))
            c.append(math.log((sum(others) + geo) / n) / t)
        elif eid.startswith("ovis-gamma"):
            g = float(eid[len("ovis-gamma"):])
            log_z_minus_k = math.log(sum(others) / (n - 1))
            c.append((log_z_minus_k + (1 - g) * math.log(1 - 1 / n)) / t - g * w[k] / total)
        elif eid == "ovis-mc":
            vals = []
            for ws in aux:
                ws_t = math.exp(t * float(ws))
                z_sub = sum(others) + ws_t
                vals.append(math.log(z_sub / n) / t - ws_t / z_sub)
            c.append(sum(vals) / len(vals))
        else:
            raise AssertionError(eid)
    return [dk - ck for dk, ck in zip(d, c)]


def hand_score_function_loss(lw_det, lw, log_q, eid, alpha=0.0, n_score=None, aux=None):
    n_score = lw.shape[-1] if n_score is None else n_score
    loss = 0.0
    for b in range(B):
        for m in range(M):
            row = lw_det[b, m, :n_score].tolist()
            sig = hand_signal(row, eid, alpha, None if aux is None else aux[b, m].tolist())
            score = sum(s * log_q[b, m, k] for k, s in enumerate(sig))
            t = 1 - alpha
            bound = torch.log(torch.exp(t * lw[b, m]).mean()) / t
            loss = loss - score - bound
    return loss / (B * M)


def run(eid, model, x, seed, **runtime):
    torch.manual_seed(seed)
    est = build_estimator(eid, mc=M, iw=K)
    loss, _, _ = est(model, x, **runtime)
    return exact_gradients(loss, list(model.parameters()))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("eid", ["reinforce", "vimco-arithmetic", "vimco-geometric", "ovis-gamma1",
                                 "ovis-gamma0", "ovis-gamma0.5"])
def test_score_function_replay(eid, alpha):
    model = BernoulliToyModel(seed=4)
    x = torch.bernoulli(torch.full((B, 4), 0.5), generator=torch.Generator().manual_seed(1))
    g_est = run(eid, model, x, 123, alpha=alpha)
    torch.manual_seed(123)
    log_px, log_q, log_p = particles(model, x, K)
    lw = log_px + log_p - log_q.detach()
    loss = hand_score_function_loss(lw.detach(), lw, log_q, eid, alpha)
    g_hand = exact_gradients(loss, list(model.parameters()))
    assert torch.allclose(g_est, g_hand, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("exclusive", [True, False])
def test_ovis_mc_replay(exclusive):
    model = BernoulliToyModel(seed=4)
    x = torch.bernoulli(torch.full((B, 4), 0.5), generator=torch.Generator().manual_seed(1))
    S = 2
    eid = f"ovis-S{S}" + ("-exclusive" if exclusive else "")
    g_est = run(eid, model, x, 7)
    torch.manual_seed(7)
    n_score = K if exclusive else K - S
    log_px, log_q, log_p = particles(model, x, K)
    lw = log_px + log_p - log_q.detach()
    if exclusive:  # the S auxiliary particles: a second pass, after the K of the bound
        a_px, a_q, a_p = particles(model, x, S)
        aux = (a_px + a_p - a_q).detach()
    else:
        aux = lw.detach()[..., K - S:]
    loss = 0.0
    for b in range(B):
        for m in range(M):
            sig = hand_signal(lw.detach()[b, m, :n_score].tolist(), "ovis-mc", 0.0, aux[b, m].tolist())
            loss = loss - sum(s * log_q[b, m, k] for k, s in enumerate(sig))
            loss = loss - torch.log(torch.exp(lw[b, m, :K]).mean())
    g_hand = exact_gradients(loss / (B * M), list(model.parameters()))
    assert torch.allclose(g_est, g_hand, atol=1e-6, rtol=1e-6)


def test_wake_wake_replay():
    model = BernoulliToyModel(seed=4)
    x = torch.bernoulli(torch.full((B, 4), 0.5), generator=torch.Generator().manual_seed(1))
    g_est = run("wake-wake", model, x, 5)
    torch.manual_seed(5)
    log_px, log_q, log_p = particles(model, x, K)
    lw = log_px + log_p - log_q.detach()
    loss = 0.0
    for b in range(B):
        for m in range(M):
            v = torch.softmax(lw[b, m].detach(), -1)
            loss = loss - torch.log(torch.exp(lw[b, m]).mean()) - (v * log_q[b, m]).sum()
    g_hand = exact_gradients(loss / (B * M), list(model.parameters()))
    assert torch.allclose(g_est, g_hand, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("eid,betas,coefs", [
    ("tvo-part1", [0.0], [1.0]),
    ("tvo-part2-beta1", [0.0, 0.1], [0.1, 0.9]),
    ("tvo-part2-beta1-right", [0.1, 1.0], [0.1, 0.9]),
    ("tvo-part2-beta1-trapz", [0.0, 0.1, 1.0], [0.05, 0.5, 0.45]),
])
def test_tvo_replay(eid, betas, coefs):
    """The covariance estimator written out: sum_j c_j [sum_k w_kj f_k + K/(K-1) sum_k w_kj (f_k - fbar_j) g_kj]."""
    model = BernoulliToyModel(seed=4)
    x = torch.bernoulli(torch.full((B, 4), 0.5), generator=torch.Generator().manual_seed(1))
    g_est = run(eid, model, x, 9)
    torch.manual_seed(9)
    log_px, log_q, log_p = particles(model, x, K)
    f = log_px + log_p - log_q
    total = 0.0
    for b in range(B):
        for m in range(M):
            for beta, c in zip(betas, coefs):
                w = torch.softmax(beta * f[b, m].detach(), -1)
                fbar = float((w * f[b, m].detach()).sum())
                term = 0.0
                for k in range(K):
                    g_k = log_q[b, m, k] + beta * f[b, m, k]
                    term = term + w[k] * f[b, m, k] + K / (K - 1) * w[k] * (float(f[b, m, k].detach()) - fbar) * g_k
                total = total + c * term
    g_hand = exact_gradients(-total / (B * M), list(model.parameters()))
    assert torch.allclose(g_est, g_hand, atol=1e-6, rtol=1e-6)
