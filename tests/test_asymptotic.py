"""asymptotic_variance.py (Figure 1 data) and report_asymptotic_variance.py."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ovis.analysis.asymptotic import (
    AsymptoticArgumentError,
    above_floor,
    draw_gradients,
    fit_slope,
    group_statistics,
    iw_range,
    main,
    parse_args,
    reference_model,
    run_id,
    snr_floor,
    toy_problem,
)
from ovis.analysis.gradients import gradient_samples, gradient_statistics
from ovis.estimators import build_estimator


def test_parse_args_accepts_the_grid_formats():
    a = parse_args(["--estimator", "pathwise-iwae", "--mc_samples", "10000.0", "--iw_max", "1e3",
                    "--samples_per_batch", "5000", "--iw_steps", "5", "--iw_min", "3", "--npoints", "1024",
                    "--D", "20", "--seed", "10", "--silent", "--deterministic", "--exp", "e", "--root", "/r",
                    "--data_root", "/d"])
    assert a.estimators == ["pathwise-iwae"] and a.mc_samples == 10000 and a.iw_max == 1000
    b = parse_args(["--estimators", "dreg,stl", "--estimator", "ovis-gamma0"])
    assert b.estimators == ["ovis-gamma0", "dreg", "stl"]


@pytest.mark.parametrize("argv", [[], ["--estimator", "not-an-estimator"], ["--estimator", "dreg", "--mc_samples", "1.5"],
                                  ["--estimator", "dreg", "--mc_samples", "1"], ["--estimator", "dreg", "--iw_min", "10",
                                                                                 "--iw_max", "3"],
                                  ["--estimator", "dreg", "--unknown", "1"], ["--estimator", "dreg", "--D", "0"]])
def test_parse_args_rejects(argv):
    with pytest.raises(AsymptoticArgumentError) as e:
        parse_args(argv)
    assert isinstance(e.value, ValueError) and "asymptotic_variance.py" in str(e.value)


def test_iw_range():
    assert iw_range(3, 1000, 5) == [round(3 * (1000 / 3) ** (i / 4)) for i in range(5)] == [3, 13, 55, 234, 1000]
    assert iw_range(3, 100, 3) == [3, 17, 100]
    assert iw_range(4, 4, 3) == [4]


@pytest.mark.parametrize("est_id", ["pathwise-iwae", "vimco-arithmetic", "ovis-gamma0", "dreg", "ovis-S2-exclusive"])
def test_batched_draw_equals_the_plain_loop(est_id):
    r"""With one draw per call the replicated model consumes the RNG exactly as the project's
    gaussian-toy model does: the draws are identical to ``gradient_samples``' loop."""
    p = toy_problem(D=3, npoints=5, seed=2, noise=0.1)
    _, model = reference_model(p)
    est = build_estimator(est_id, iw=4)
    torch.manual_seed(11)
    loop = gradient_samples(est, model, p["x"], 3, "inference_network.A,inference_network.b")
    torch.manual_seed(11)
    batched = draw_gradients(est, p, 3, per_call=1)
    assert torch.allclose(loop, batched, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_batched_draws_have_the_loop_distribution():
    r"""Many draws per call: mean and variance of every coordinate agree with the loop's
    (independent samples; z-test on the means, ratio test on the variances)."""
    p = toy_problem(D=2, npoints=4, seed=3, noise=0.2)
    _, model = reference_model(p)
    est = build_estimator("vimco-arithmetic", iw=4)
    n = 800
    torch.manual_seed(1)
    a = draw_gradients(est, p, n, per_call=400).double()
    torch.manual_seed(2)
    b = gradient_samples(est, model, p["x"], n, "inference_network.A,inference_network.b").double()
    se = (a.var(0) / n + b.var(0) / n).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() / se).max() < 4.0
    ratio = a.var(0) / b.var(0)
    assert ratio.min() > 0.7 and ratio.max() < 1.4
    # and the batched draws are not copies of one another (independence across a call)
    assert torch.unique(a[:400, 0]).numel() == 400


def _run(tmp_path, monkeypatch, *argv):
    monkeypatch.setenv("OVIS_JOB_ID", "job-123")
    args = ["--exp", "av", "--root", str(tmp_path), "--data_root", str(tmp_path), "--silent", *argv]
    assert main(args) == 0
    d = tmp_path / "av" / run_id(parse_args(args))
    return d


def _slope(df, est, stat):
    g = df[df["estimator"] == est].sort_values("iw")
    return float(np.polyfit(np.log(g["iw"]), np.log(g[stat]), 1)[0])


@pytest.mark.slow
def test_run_directory_and_snr_slopes(tmp_path, monkeypatch):
    r"""Rainforth et al. (2018): the pathwise IWAE gradient of the inference network has an SNR
    that *decreases* with K (O(K^-1/2)); the OVIS paper: OVIS (gamma = 0) increases it (O(K^1/2))."""
    d = _run(tmp_path, monkeypatch, "--estimators", "ovis-gamma0,pathwise-iwae", "--mc_samples", "500",
             "--iw_steps", "3", "--iw_min", "3", "--iw_max", "100", "--npoints", "8", "--D", "3", "--seed", "1",
             "--noise", "0.01", "--deterministic")
    cfg = json.loads((d / "config.json").read_text())
    status = json.loads((d / "status.json").read_text())
    assert cfg["job_id"] == "job-123" and status["job_id"] == "job-123" and status["status"] == "success"
    assert cfg["noise"] == 0.01 and cfg["iw_values"] == [3, 17, 100]
    stats = pd.read_csv(d / "statistics.csv")
    assert len(stats) == 6
    js = json.loads((d / "statistics.json").read_text())
    assert js["rows"][0]["variance"] == pytest.approx(stats["variance"].iloc[0], rel=1e-12)
    samples = np.load(d / "samples" / "ovis-gamma0-K17.npy", allow_pickle=False)
    assert samples.shape == (500, 4)
    s_ovis = _slope(stats, "ovis-gamma0", "snr")
    assert s_ovis > 0.25, s_ovis
    assert js["slopes"]["ovis-gamma0"]["snr"] == pytest.approx(s_ovis, rel=1e-9)
    assert _slope(stats, "ovis-gamma0", "variance") < -2.0  # OVIS variance falls much faster than 1/K

    d2 = _run(tmp_path, monkeypatch, "--estimators", "pathwise-iwae", "--mc_samples", "500", "--iw_steps", "3",
              "--iw_min", "3", "--iw_max", "100", "--npoints", "8", "--D", "3", "--seed", "1", "--noise", "0.3")
    s_iwae = _slope(pd.read_csv(d2 / "statistics.csv"), "pathwise-iwae", "snr")
    assert s_iwae < -0.1, s_iwae

    # the report draws it and its slopes are the ones recomputed from the statistics
    from ovis.reporting.asymptotic import main as report

    assert report(["--exp", "av", "--root", str(tmp_path), "--output", str(tmp_path / "out"), "--params", "all"]) == 0
    out = tmp_path / "out" / "av"
    for f in ("figure1.png", "figure1.pdf", "distributions.png", "slopes.csv", "slopes.md", "slopes.tex",
              "statistics.csv", "index.html"):
        assert (out / f).exists(), f
    slopes = pd.read_csv(out / "slopes.csv", dtype={"K_values": str, "K_floor": str}).set_index("estimator")
    # the slope goes through the points clear of the Monte Carlo floor only
    g = stats[stats["estimator"] == "ovis-gamma0"]
    clear = g[[above_floor(v, 500) for v in g["snr"]]]
    assert len(clear) >= 2
    assert slopes.loc["ovis-gamma0", "slope_snr"] == pytest.approx(fit_slope(list(clear["iw"]), list(clear["snr"])),
                                                                   rel=1e-9)
    # pathwise-iwae is in both runs; the report uses one row per (estimator, K)
    ks = " ".join(str(v) for v in slopes.loc[["pathwise-iwae"], ["K_values", "K_floor"]].fillna("").iloc[0]).split()
    assert sorted(int(k) for k in ks) == [3, 17, 100]
    # the default draws the encoder bias b, as the paper does
    assert report(["--exp", "av", "--root", str(tmp_path), "--output", str(tmp_path / "outb")]) == 0
    assert (pd.read_csv(tmp_path / "outb" / "av" / "slopes.csv")["params"] == "b").all()


def test_statistics_match_gradient_statistics(tmp_path, monkeypatch):
    d = _run(tmp_path, monkeypatch, "--estimator", "dreg", "--mc_samples", "50", "--iw_steps", "2", "--iw_min", "2",
             "--iw_max", "4", "--npoints", "3", "--D", "2", "--seed", "4", "--save_coords", "6")
    # --save_coords 6 with D = 2: the 2 diagonal entries of A and the 2 entries of b (4 coordinates)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["saved_coordinates"] == ["A[0,0]", "b[0]", "A[1,1]", "b[1]"]
    stats = pd.read_csv(d / "statistics.csv")
    assert list(stats["iw"]) == [2, 4]
    cfg_status = json.loads((d / "status.json").read_text())
    assert cfg["job_id"] == "job-123" and cfg_status["job_id"] == "job-123" and cfg_status["status"] == "success"
    for K, row in zip((2, 4), stats.itertuples()):
        draws = torch.from_numpy(np.load(d / "samples" / f"dreg-K{K}.npy", allow_pickle=False)).double()
        assert draws.shape == (50, 4)
        # the variance of the saved coordinates is part of the mean variance over the 6 coordinates
        assert 0 < draws.var(0).sum().item() <= 6 * row.variance * (1 + 1e-6)
    assert not list(d.glob("**/*.tmp"))


def test_estimator_that_rejects_k_is_skipped_not_fatal(tmp_path, monkeypatch):
    d = _run(tmp_path, monkeypatch, "--estimators", "ovis-gamma0,pathwise-iwae", "--mc_samples", "20",
             "--iw_steps", "2", "--iw_min", "1", "--iw_max", "2", "--npoints", "2", "--D", "2")
    js = json.loads((d / "statistics.json").read_text())
    assert [(s["estimator"], s["iw"]) for s in js["skipped"]] == [("ovis-gamma0", 1)]
    assert len(js["rows"]) == 3


def test_failure_is_recorded(tmp_path, monkeypatch):
    import ovis.analysis.asymptotic as mod

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(mod, "draw_gradients", boom)
    args = ["--estimator", "dreg", "--mc_samples", "4", "--iw_steps", "1", "--exp", "av", "--root", str(tmp_path),
            "--silent"]
    assert main(args) == 1
    status = json.loads((tmp_path / "av" / run_id(parse_args(args)) / "status.json").read_text())
    assert status["status"] == "failed" and "injected" in status["error"] and status["traceback"]
    # the report lists the failed run instead of crashing
    from ovis.reporting.asymptotic import main as report

    assert report(["--exp", "av", "--root", str(tmp_path), "--output", str(tmp_path / "out")]) == 0
    assert "failed" in (tmp_path / "out" / "av" / "index.html").read_text()


def test_group_statistics_are_the_statistics_of_each_group():
    torch.manual_seed(0)
    D = 3
    g = torch.randn(50, D * D + D, dtype=torch.float64) + torch.linspace(-1, 1, D * D + D, dtype=torch.float64)
    out = group_statistics(g, D)
    for name, cols in (("A", slice(0, D * D)), ("b", slice(D * D, None))):
        ref = gradient_statistics(g[:, cols])
        for k, v in ref.items():
            assert out[f"{k}_{name}"] == pytest.approx(float(v), rel=1e-12)
    assert out["snr"] == pytest.approx(float(gradient_statistics(g)["snr"]), rel=1e-12)
    assert out["snr_b"] != pytest.approx(out["snr_A"])
    with pytest.raises(ValueError, match="D\\*D"):
        group_statistics(g[:, :-1], D)


def test_snr_floor_is_the_mean_absolute_sample_mean_of_pure_noise():
    r"""E|mean of N standard normals| = sqrt(2 / (pi N)): checked on 4000 sets of N = 25 draws
    (the estimate's standard error is about 0.0015; tolerance 0.01, failure rate < 1e-9)."""
    g = torch.Generator().manual_seed(3)
    m = torch.randn(4000, 25, generator=g, dtype=torch.float64).mean(1).abs().mean().item()
    assert m == pytest.approx(snr_floor(25), abs=0.01)
    assert above_floor(3 * snr_floor(25), 25) and not above_floor(1.5 * snr_floor(25), 25)
    assert not above_floor(float("nan"), 25)
    with pytest.raises(ValueError, match="mc_samples"):
        snr_floor(0)


def test_slopes_leave_out_points_on_the_floor_and_references_go_where_they_apply():
    from ovis.reporting.asymptotic import figure1, slopes_table, statistic_columns

    K = [3, 13, 55, 234]
    n = 100  # floor 0.0798, points need SNR > 0.16
    snr = [1.0, 0.5, 0.25, 0.09]  # the last point sits on the floor
    rows = [{"estimator": "pathwise-iwae", "iw": k, "variance": 1.0, "snr": s, "dsnr": s, "magnitude": s,
             "variance_b": 1.0, "snr_b": s, "dsnr_b": s, "magnitude_b": s / k, "variance_A": 1.0, "snr_A": 1.0,
             "dsnr_A": 1.0, "magnitude_A": 1.0, "mc_samples": n} for k, s in zip(K, snr)]
    stats = pd.DataFrame(rows)
    t = slopes_table(stats, "b").set_index("estimator")
    assert t.loc["pathwise-iwae", "K_values"] == "3 13 55" and t.loc["pathwise-iwae", "K_floor"] == "234"
    assert t.loc["pathwise-iwae", "slope_snr"] == pytest.approx(fit_slope(K[:3], snr[:3]), rel=1e-12)
    assert statistic_columns(stats, "all")["snr"] == "snr"
    with pytest.raises(ValueError, match="--params"):
        statistic_columns(stats, "C")
    with pytest.raises(ValueError, match="rerun"):
        statistic_columns(stats.drop(columns=["snr_b"]), "b")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure1(stats, "b")
    labels = [[ln.get_label() for ln in ax.get_lines()] for ax in fig.axes]
    plt.close(fig)
    # +-1/2 on the SNR and DSNR panels only, 1/K on the |E g| panel only, the floor on the SNR panel
    assert "slope +1/2" in labels[1] and "slope +1/2" in labels[2]
    assert "slope +1/2" not in labels[0] and "slope +1/2" not in labels[3]
    assert "slope -1 (1/K)" in labels[3] and all("slope -1 (1/K)" not in x for x in labels[:3])
    assert any("MC floor" in x for x in labels[1])
    assert "dL/db" in fig.axes[1].get_title()
