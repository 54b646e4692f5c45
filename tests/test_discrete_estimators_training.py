r"""Every estimator of the REBAR line trains a small model with discrete latents on the real
binarized MNIST mini subset with a falling loss: a sigmoid belief network (Bernoulli latents) and
the Gumbel-softmax discrete VAE (categorical latents), one suite parametrised over the two.

Bernoulli (1 layer, N=20, linear): the ELBO of 300 fixed training points (estimated with 4
samples each, ``reinforce``'s diagnostics) must rise by at least 15 nats after 200 Adam steps
(batch 24, model lr 3e-3, estimator lr 1e-3), from about -215 at the output-bias initialisation.
``nvil`` divides its phi-gradient by the running scale of the learning signal (s ~ 20-40 nats
here), so it learns more slowly at the same learning rate (measured: -218 -> -204 in 300 steps,
like reinforce-baseline's -218 -> -211): it gets 500 steps and a 10-nat threshold.  Measured (ELBO
before -> after, seed of tests/conftest.py): nvil -214.6 -> -198.6 (500 steps); muprop -182.6,
simple-muprop -180.2, concrete -159.6, straight-through -164.4, arm -175.2, disarm -168.1, rebar
-168.2, dynamic-rebar -168.4, relax -174.7 (from -214.7, 200 steps).

Categorical (N=10 variables of 10 classes, linear maps): the same judge and optimiser; the ELBO
must rise by 10 nats in 200 steps, from about -204.6 at the output-bias initialisation.  Measured
(after 200 steps): rebar -177.3, dynamic-rebar -177.0, relax -189.6, muprop -185.0, simple-muprop
-185.7, gumbel-softmax -169.6, straight-through -178.7; for contrast nvil -198.2 and plain
reinforce -209.4 (no learning in 200 steps).  1-4 s each.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from ovis.datasets import load_dataset
from ovis.estimators import build_estimator
from ovis.models.discrete_vae import DiscreteVAE
from ovis.models.sbm import SigmoidBeliefNetwork
from ovis.testing import elbo_gain

#: the estimators trained, per latent family
ESTIMATORS = {
    "bernoulli": ["nvil", "muprop", "simple-muprop", "concrete", "gumbel-softmax", "straight-through",
                  "arm", "disarm", "rebar", "dynamic-rebar", "relax"],
    "categorical": ["rebar", "dynamic-rebar", "relax", "muprop", "simple-muprop", "gumbel-softmax",
                    "straight-through"],
}


def _binmnist(data_root):
    data = load_dataset("binmnist", data_root, mini=True)
    return data, torch.stack([data.train[i] for i in range(len(data.train))])


def _model(family, data):
    if family == "bernoulli":
        return SigmoidBeliefNetwork(data.x_shape, N=20, depth=1, x_mean=data.train_mean)
    return DiscreteVAE(data.x_shape, num_of_discrete_var=10, n_required=10, relaxation="gs", nlayers=0,
                       x_mean=data.train_mean)


def _budget(family, eid):
    r"""``(steps, threshold in nats)`` (module docstring)."""
    if family == "categorical":
        return 200, 10.0
    return (500, 10.0) if eid == "nvil" else (200, 15.0)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("family,eid", [pytest.param(f, e, id=f"{f}-{e}") for f, es in ESTIMATORS.items()
                                        for e in es])
def test_trains_a_small_model_on_binarized_mnist(family, eid, data_root):
    data, xs = _binmnist(data_root)
    model = _model(family, data)
    extra = {"x_shape": tuple(data.x_shape)} if eid == "nvil" else {}
    steps, threshold = _budget(family, eid)
    before, after = elbo_gain(model, build_estimator(eid, mc=1, iw=1, **extra), xs, steps=steps, tau=0.5)
    assert after > before + threshold, (eid, before, after)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("eid", ["muprop", "arm", "rebar", "relax"])
def test_trains_a_two_layer_sbn_on_binarized_mnist(eid, data_root):
    """The layer-wise versions train a 2-layer SBN (N=20 per layer, linear) too.  Measured ELBO:
    muprop -216.6 -> -182.0, arm -> -177.1, rebar -> -171.5, relax -216.3 -> -167.5 (200 steps)."""
    data, xs = _binmnist(data_root)
    model = SigmoidBeliefNetwork(data.x_shape, N=20, depth=2, x_mean=data.train_mean)
    before, after = elbo_gain(model, build_estimator(eid, mc=1, iw=1), xs, steps=200, tau=0.5)
    assert after > before + 15.0, (eid, before, after)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_run_py_trains_the_control_variate_parameters(tmp_path, data_root):
    """run.py builds dynamic-rebar, gives eta and the log-temperature to its optimiser
    (--baseline_lr) and passes tau: both move away from their initial values (1, 0.5)."""
    from ovis.training.run import main

    code = main(["--estimator", "dynamic-rebar", "--model", "sbm", "--prior", "bernoulli", "--N", "20",
                 "--depth", "1", "--nlayers", "0", "--iw", "1", "--dataset", "binmnist", "--mini",
                 "--nsteps", "45", "--lr", "3e-4", "--baseline_lr", "1e-2", "--tau", "0.5", "--bs", "24",
                 "--eval_freq", "1", "--max_eval", "50", "--valid_bs", "10", "--test_bs", "10",
                 "--iw_test", "5", "--iw_valid", "5", "--grad_bs", "10", "--grad_samples", "3",
                 "--silent", "--exp", "rebar-test", "--root", str(tmp_path), "--data_root", str(data_root)])
    assert code == 0
    (metrics_file,) = list(tmp_path.glob("rebar-test/*/metrics.jsonl"))
    train = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    train = [r for r in train if r["split"] == "train"]
    assert train, "no train metrics logged"
    last = train[-1]["metrics"]
    assert abs(last["estimator/eta"] - 1.0) > 1e-3, last
    assert abs(last["estimator/tau"] - 0.5) > 1e-3, last


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_run_py_trains_the_categorical_vae_with_rebar(tmp_path, data_root):
    """run.py --model discrete-vae --relaxation gs --estimator rebar: runs to the end, and REBAR's
    eta (given to the optimiser with --baseline_lr) moves from its initial value 1."""
    from ovis.training.run import main

    code = main(["--estimator", "rebar", "--model", "discrete-vae", "--relaxation", "gs", "--N", "10",
                 "--K", "10", "--nlayers", "0", "--iw", "1", "--dataset", "binmnist", "--mini",
                 "--nsteps", "30", "--lr", "3e-3", "--baseline_lr", "1e-2", "--tau", "0.5", "--bs", "24",
                 "--eval_freq", "1", "--max_eval", "50", "--valid_bs", "10", "--test_bs", "10",
                 "--iw_test", "5", "--iw_valid", "5", "--grad_bs", "10", "--grad_samples", "3",
                 "--silent", "--exp", "dvae-rebar", "--root", str(tmp_path), "--data_root", str(data_root)])
    assert code == 0
    (metrics_file,) = list(tmp_path.glob("dvae-rebar/*/metrics.jsonl"))
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    train = [r["metrics"] for r in rows if r["split"] == "train"]
    assert train and abs(train[-1]["estimator/eta"] - 1.0) > 1e-3, train[-1:]
    test = [r["metrics"] for r in rows if r["split"] == "test"]
    assert test and math.isfinite(test[-1]["loss/L_k"])
