"""The model protocol checked at the door (issue 29): a user's own model with a mistake gets one line
naming the output key and the fix, on the estimator's first call, instead of a silent wrong gradient
or an error deep inside torch; Python-API errors name Python arguments; id typos get a "did you
mean"; the call is documented where ``help()`` looks; the check runs once per (estimator, model).

Each test of a mistake fails on the code before the issue (checked against its checkout): the
mistakes were accepted silently, or failed with torch's message, which names no output key.
"""
from __future__ import annotations

import pydoc
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

from ovis.estimators import base, build_estimator, parse_estimator_id
from ovis.models.protocol import ModelProtocolError, set_model_checks

DX, DZ, B = 6, 2, 3


class UserModel(nn.Module):
    r"""The README's model in miniature (Gaussian q, Bernoulli p(x|z)), with one ``mistake`` on."""

    def __init__(self, mistake: str = "") -> None:
        super().__init__()
        self.inference_network = nn.Linear(DX, 2 * DZ)
        self.generative_model = nn.Linear(DZ, DX)
        self.mistake = mistake

    def forward(self, x, zgrads=False, **kwargs):
        loc, log_scale = self.inference_network(x).chunk(2, dim=-1)
        qz = Independent(Normal(loc, log_scale.exp()), 1)
        m = self.mistake
        if m == "ignores_zgrads":  # the README's example before the issue: always sample()
            z = qz.sample()
        elif m == "always_rsample":
            z = qz.rsample()
        elif m == "grad_via_decoder_only":  # requires a gradient, but not to the encoder
            z = qz.sample() + 0.0 * self.generative_model.bias.sum()
        else:
            z = qz.rsample() if zgrads else qz.sample()
        logits = self.generative_model(z)
        out = {"px": Independent(Bernoulli(logits=logits), 1), "z": [z], "qz": [qz],
               "pz": [Independent(Normal(torch.zeros_like(z), torch.ones_like(z)), 1)]}
        if m == "pz_no_batch":
            out["pz"] = [Independent(Normal(torch.zeros(DZ), torch.ones(DZ)), 1)]
        elif m == "qz_no_batch":
            out["qz"] = [Independent(Normal(loc[0], log_scale[0].exp()), 1)]
        elif m == "px_no_batch":
            out["px"] = Independent(Bernoulli(logits=self.generative_model.bias), 1)
        elif m == "transposed_z":
            out["z"] = [z.t()]
        elif m == "px_wrong_pixels":
            out["px"] = Independent(Bernoulli(logits=logits[:, :-1]), 1)
        elif m == "tensor_in_qz":
            out["qz"] = [loc]
        elif m == "missing_pz":
            del out["pz"]
        return out

    def sample_from_prior(self, bs, **kwargs):
        pz = Independent(Normal(torch.zeros(bs, DZ), torch.ones(bs, DZ)), 1)
        if self.mistake == "prior_sample_no_batch":
            pz = Independent(Normal(torch.zeros(DZ), torch.ones(DZ)), 1)
        z = torch.randn(bs, DZ)
        return {"px": Independent(Bernoulli(logits=self.generative_model(z)), 1), "z": [z], "pz": [pz]}

    def infer(self, x, z, **kwargs):
        loc, log_scale = self.inference_network(x).chunk(2, dim=-1)
        return [Independent(Normal(loc, log_scale.exp()), 1)]


def batch(n: int = B, dtype=torch.float32) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, DX), 0.5)).to(dtype)


@pytest.fixture
def checks_restored():
    yield
    set_model_checks(True)


# ----------------------------------------------------------------------------- zgrads
@pytest.mark.parametrize("eid", ["pathwise-iwae", "pathwise-vae", "stl", "dreg"])
@pytest.mark.parametrize("mistake", ["ignores_zgrads", "grad_via_decoder_only"])
def test_a_pathwise_estimator_refuses_a_z_without_a_gradient_path_to_the_encoder(eid, mistake):
    # before: accepted, and the encoder's gradient was wrong (pathwise-iwae) or absent (stl, dreg)
    model = UserModel(mistake)
    with pytest.raises(ModelProtocolError) as e:
        build_estimator(eid, iw=4)(model, batch(), backward=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert "output['z'][0]" in msg and "zgrads=True" in msg and "qz.rsample()" in msg
    assert ("does not require a gradient" if mistake == "ignores_zgrads" else "no gradient path") in msg
    assert all(p.grad is None for p in model.parameters())  # refused before any backward pass


@pytest.mark.parametrize("eid", ["pathwise-iwae", "stl", "dreg"])
def test_a_model_that_honours_zgrads_gives_the_encoder_its_pathwise_gradient(eid):
    model = UserModel()
    build_estimator(eid, iw=4)(model, batch(), backward=True)
    g = model.inference_network.weight.grad
    assert g is not None and float(g.abs().sum()) > 0


@pytest.mark.parametrize("eid", ["reinforce", "vimco-arithmetic", "ovis-gamma1", "wake-wake", "tvo"])
def test_a_score_function_estimator_refuses_a_reparameterised_z(eid):
    # a z that carries the encoder's gradient adds a pathwise term to the score-function surrogate
    with pytest.raises(ModelProtocolError, match=r"output\['z'\]\[0\] carries a gradient.*zgrads=False.*qz\.sample\(\)"):
        build_estimator(eid, iw=3)(UserModel("always_rsample"), batch())


# ----------------------------------------------------------------------------- shapes and types
@pytest.mark.parametrize("eid", ["vimco-arithmetic", "pathwise-iwae"])
@pytest.mark.parametrize("mistake, key", [("pz_no_batch", "output['pz'][0]"), ("qz_no_batch", "output['qz'][0]"),
                                          ("px_no_batch", "output['px']")])
def test_an_output_without_the_batch_dimension_is_refused(eid, mistake, key):
    # before: broadcast silently
    with pytest.raises(ModelProtocolError) as e:
        build_estimator(eid, iw=4)(UserModel(mistake), batch())
    msg = str(e.value)
    assert key in msg and "batch shape []" in msg and "12" in msg and "B*M*K = 3*1*4" in msg


def test_a_batchless_prior_is_told_how_to_expand():
    with pytest.raises(ModelProtocolError, match=r"expand it: \.expand\(\[12\]\)"):
        build_estimator("reinforce", iw=4)(UserModel("pz_no_batch"), batch())


@pytest.mark.parametrize("eid", ["vimco-arithmetic", "pathwise-iwae"])
@pytest.mark.parametrize("mistake, needles", [
    ("transposed_z", ["output['z'][0] has shape [2, 12]", "transposed"]),
    ("px_wrong_pixels", ["output['px']", "full shape [12, 5]", "the shape of x, [12, 6]"]),
    ("tensor_in_qz", ["output['qz'][0] is a Tensor", "torch.distributions.Distribution"]),
    ("missing_pz", ["lacks ['pz']"]),
])
def test_a_malformed_output_names_its_key(eid, mistake, needles):
    # before: torch's error 12-13 frames deep ('Tensor' object has no attribute 'log_prob', a shape
    # mismatch inside log_prob), naming no output key
    with pytest.raises(ModelProtocolError) as e:
        build_estimator(eid, iw=4)(UserModel(mistake), batch())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{eid}: UserModel.forward(x, zgrads=")
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("dtype, fix", [(torch.float64, "x.to(torch.float32)"), (torch.uint8, "x.float()")])
def test_x_of_the_wrong_dtype_is_named(dtype, fix):
    # before: "mat1 and mat2 must have the same dtype" from inside the user's nn.Linear
    with pytest.raises(ModelProtocolError) as e:
        build_estimator("ovis-gamma1", iw=3)(UserModel(), batch(dtype=dtype))
    msg = str(e.value)
    assert f"x of dtype {dtype}" in msg and "torch.float32" in msg and fix in msg
    assert isinstance(e.value.__cause__, RuntimeError)  # the model's own error is kept as the cause


# ----------------------------------------------------------------------------- every path to the model
def test_the_particles_form_is_checked():
    class ForgetsToRepeat(UserModel):
        supports_particles = True

        def forward(self, x, zgrads=False, particles=1, **kwargs):
            return super().forward(x, zgrads=zgrads)  # B rows instead of B * particles

    with pytest.raises(ModelProtocolError, match=r"forward\(x, zgrads=False, particles=4\).*output\['z'\]\[0\] has "
                                                 r"shape \[3, 2\]; expected 12 rows first"):
        build_estimator("vimco-arithmetic", iw=4)(ForgetsToRepeat(), batch())


def test_the_fused_log_densities_are_checked():
    from ovis.models.sbm import SigmoidBeliefNetwork

    class Unreduced(SigmoidBeliefNetwork):
        def particle_log_densities(self, x, particles=1, **kwargs):
            out, log_px, log_qz, log_pz = super().particle_log_densities(x, particles=particles, **kwargs)
            return out, log_px[:, None].expand(-1, DX), log_qz, log_pz  # not summed over x

    with pytest.raises(ModelProtocolError, match=r"particle_log_densities\(x, particles=4\): returned log_px of "
                                                 r"shape \[12, 6\]; expected \[12\]"):
        build_estimator("reinforce", iw=4)(Unreduced((DX,), N=3), batch())


def test_the_sleep_phase_outputs_are_checked():
    with pytest.raises(ModelProtocolError, match=r"wake-sleep: UserModel\.sample_from_prior\(12\): "
                                                 r"output\['pz'\]\[0\] .*batch shape \[\]"):
        build_estimator("wake-sleep", iw=4)(UserModel("prior_sample_no_batch"), batch())


def test_the_hybrid_mixture_outputs_are_checked():
    from ovis.models.likelihoods import LikelihoodVAE

    class BatchlessPrior(LikelihoodVAE):
        def prior(self, n):
            return Independent(Normal(torch.zeros(3), torch.ones(3)), 1)

    model = BatchlessPrior((DX,), prior="normal", N=3, hdim=8, nlayers=1, posterior="mog")
    with pytest.raises(ModelProtocolError, match=r"hybrid-mixture: BatchlessPrior.*output\['pz'\]\[0\].*batch "
                                                 r"shape \[\]"):
        build_estimator("hybrid-mixture", iw=4)(model, batch())


@pytest.mark.parametrize("eid", ["arm", "concrete", "rebar"])
def test_the_discrete_hooks_values_are_checked(eid):
    from ovis.testing import BernoulliToyModel

    class Unreduced(BernoulliToyModel):
        def log_joint_at(self, x, z):
            log_px, log_pz = super().log_joint_at(x, z)
            return log_px[:, None].expand(-1, 4), log_pz

    x = torch.bernoulli(torch.full((B, 4), 0.5))
    with pytest.raises(ModelProtocolError, match=r"Unreduced\.log_joint_at\(x, z\) returned log_px of shape "
                                                 r"\[12, 4\]; expected \[12\]"):
        build_estimator(eid, iw=4)(Unreduced(), x)


# ----------------------------------------------------------------------------- once, and the switch
def test_the_check_runs_once_per_estimator_model_and_call_form(monkeypatch):
    calls = []
    real = base.check_latent_gradients
    monkeypatch.setattr(base, "check_latent_gradients", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    est, model, x = build_estimator("pathwise-iwae", iw=3), UserModel(), batch()
    for _ in range(3):
        est(model, x, backward=True)
    assert len(calls) == 1
    est(UserModel(), x)  # another model
    build_estimator("pathwise-iwae", iw=3)(model, x)  # another estimator
    assert len(calls) == 3
    with torch.no_grad():  # another call form: no gradient recorded (the path check is skipped)
        est(model, x)
    est(model, x)
    assert len(calls) == 4


def test_the_check_can_be_switched_off(checks_restored):
    est = build_estimator("reinforce", iw=3)
    with pytest.raises(ModelProtocolError):
        est(UserModel("pz_no_batch"), batch())
    set_model_checks(False)
    loss, diagnostics, _ = est(UserModel("pz_no_batch"), batch())  # trusted: broadcast as before
    assert torch.isfinite(loss)


def test_check_model_checks_now_and_leaves_the_draws_unchanged():
    # compile_estimator calls it before the first compiled call, inside which no check can run
    est = build_estimator("pathwise-iwae", iw=3)
    with pytest.raises(ModelProtocolError, match="does not require a gradient"):
        est.check_model(UserModel("ignores_zgrads"), batch())
    model, x = UserModel(), batch()
    state = torch.get_rng_state()
    est.check_model(model, x)
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ModelProtocolError, match="does not require a gradient"):  # the check_model of compiled
        base.compile_estimator(est, UserModel("ignores_zgrads"))(x)              # calls, before compiling


@pytest.mark.parametrize("name", ["vae-normal", "vae-bernoulli", "vae-categorical", "vae-mog", "discrete-vae",
                                  "sbm", "linear-gaussian"])
def test_the_built_in_models_pass_the_check_in_both_zgrads_forms(name):
    from ovis.models import VAE, SigmoidBeliefNetwork
    from ovis.models.discrete_vae import DiscreteVAE
    from ovis.models.protocol import check_latent_gradients, check_model_output
    from ovis.testing import LinearGaussianModel

    x = batch(5)
    model = {"vae-normal": lambda: VAE((DX,), prior="normal", N=3, hdim=8, nlayers=1),
             "vae-bernoulli": lambda: VAE((DX,), prior="bernoulli", N=3, hdim=8, nlayers=1),
             "vae-categorical": lambda: VAE((DX,), prior="categorical", N=3, K=4, hdim=8, nlayers=1),
             "vae-mog": lambda: VAE((DX,), prior="mog", N=3, K=2, hdim=8, nlayers=1),
             "discrete-vae": lambda: DiscreteVAE((DX,), num_of_discrete_var=2, n_required=3, hdim=8, nlayers=1),
             "sbm": lambda: SigmoidBeliefNetwork((DX,), N=3, depth=2),
             "linear-gaussian": lambda: LinearGaussianModel(D=DX)}[name]()
    for zgrads in (False, True):
        try:
            out = model(x, zgrads=zgrads)
        except NotImplementedError:  # no rsample (the SBN): refused by the pathwise estimators
            assert zgrads
            continue
        check_model_output(out, rows=5, x_shape=(DX,))
        check_latent_gradients(model, out, zgrads)
        if zgrads and all(q.has_rsample for q in out["qz"]):
            assert all(z.requires_grad for z in out["z"])


# ----------------------------------------------------------------------------- Python vs command line
@pytest.mark.parametrize("eid, iw, fix", [("vimco-arithmetic", 1, 2), ("ovis-gamma1", 1, 2), ("wake-wake", 1, 2),
                                          ("tvo", 1, 2), ("ovis-S5", 5, 6)])
def test_errors_name_python_arguments_in_python_and_flags_on_the_command_line(eid, iw, fix):
    from ovis.training.arguments import RunArgumentError, parse_run_args

    with pytest.raises(ValueError) as e:
        build_estimator(eid, iw=iw)
    msg = str(e.value)
    assert f"use iw={fix} or more" in msg and "--iw" not in msg
    with pytest.raises(RunArgumentError) as e:
        parse_run_args(["--estimator", eid, "--iw", str(iw)])
    msg = str(e.value)
    assert f"use --iw {fix} or more" in msg and "iw=" not in msg


def test_mc_errors_name_the_python_argument():
    with pytest.raises(ValueError, match=r"mc must be an integer >= 1, got mc=0$"):
        build_estimator("reinforce", mc=0, iw=2)
    with pytest.raises(base.EstimatorArgumentError) as e:
        build_estimator("reinforce", mc=1, iw=True)
    assert str(e.value).endswith("got iw=True") and e.value.for_command_line().endswith("got --iw True")


# ----------------------------------------------------------------------------- did you mean
@pytest.mark.parametrize("typo, nearest", [("ovis-gama1", "ovis-gamma1"), ("iwae", "pathwise-iwae"),
                                           ("vimco", "vimco-arithmetic"), ("pathwise_iwae", "pathwise-iwae"),
                                           ("ovis-s10-exclusive", "ovis-S10-exclusive"),
                                           ("tvo-part5-confg2", "tvo-part5-config2"), ("REINFORCE", "reinforce"),
                                           ("ovis-gamma0.5-arithmetc", "ovis-gamma0.5-arithmetic")])
def test_an_id_typo_gets_the_nearest_valid_ids_before_the_grammar(typo, nearest):
    with pytest.raises(ValueError) as e:
        parse_estimator_id(typo)
    msg = str(e.value)
    first = msg.splitlines()[0]
    assert "did you mean" in first and repr(nearest) in first
    assert msg.index("did you mean") < msg.index("valid forms")
    for suggestion in re.findall(r"'([^']+)'", first.split("did you mean", 1)[1]):
        parse_estimator_id(suggestion)  # every suggestion is a valid id


def test_an_id_far_from_every_valid_one_gets_the_grammar_only():
    with pytest.raises(ValueError) as e:
        parse_estimator_id("xyz")
    assert "did you mean" not in str(e.value) and "valid forms" in str(e.value)


# ----------------------------------------------------------------------------- documentation
def test_help_on_an_estimator_documents_the_call_and_backward():
    text = pydoc.render_doc(build_estimator("ovis-gamma1", iw=2), renderer=pydoc.plaintext)
    assert "Define the computation performed at every call" not in text  # nn.Module.forward's text
    forward = pydoc.render_doc(type(build_estimator("ovis-gamma1", iw=2)).forward, renderer=pydoc.plaintext)
    for needle in ("backward: run the backward pass here", "loss.backward()", "alpha", "beta", "freebits", "tau",
                   "ModelProtocolError", "Returns"):
        assert needle in forward, needle


def test_backward_after_backward_true_says_what_happened():
    # before: autograd's "Trying to backward through the graph a second time"
    model = UserModel()
    loss, _, _ = build_estimator("vimco-arithmetic", iw=2)(model, batch(), backward=True)
    assert model.inference_network.weight.grad is not None and torch.isfinite(loss)
    grad = model.inference_network.weight.grad.clone()
    with pytest.raises(RuntimeError, match=r"backward=True.*already ran its backward pass"):
        loss.backward()
    assert torch.equal(grad, model.inference_network.weight.grad)  # nothing accumulated twice
    loss2, _, _ = build_estimator("vimco-arithmetic", iw=2)(model, batch(), backward=False)
    loss2.backward()  # backward=False: the caller's own backward works


def test_the_protocol_is_written_once_in_its_module():
    import ovis.models.base
    import ovis.models.protocol

    doc = ovis.models.protocol.__doc__
    for needle in ('"px"', '"qz"', '"pz"', '"z"', "zgrads", "qz.rsample()", "qz.sample()", "batch shape", "particles",
                   "supports_particles", "fused_log_densities", "infer(x, z)", "sample_from_prior", "q_logits",
                   "log_joint_at", "latent_depth", "inference_network", "set_model_checks"):
        assert needle in doc, needle
    base_doc = ovis.models.base.__doc__
    assert "ovis.models.protocol" in base_doc and "rsample" not in base_doc  # a pointer, not a copy


def test_the_readme_example_honours_zgrads():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "parse_estimator_id" in b)
    code = block.split("model, x = ")[0]  # the imports and the class
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the repository's own README
    for eid in ("pathwise-iwae", "dreg", "ovis-gamma1"):
        model = scope["MyModel"]()
        build_estimator(eid, iw=4)(model, torch.bernoulli(torch.rand(2, 784)), backward=True)
        g = model.inference_network.weight.grad
        assert g is not None and float(g.abs().sum()) > 0, eid
