r"""Latent-variable models following the protocol of :mod:`ovis.models.protocol`.

:func:`build_model` builds the model of a ``run.py`` command line (``--model``, ``--prior``,
``--N``, ``--K``, ``--hdim``, ``--nlayers``, ``--depth``, ``--learn_prior``, ``--tau``) for a
loaded data set (:class:`ovis.datasets.DataSplits`).
"""
from __future__ import annotations

import argparse
from typing import Any

from ovis.models.base import TemplateModel, batch_reduce, check_model_output, require_hook
from ovis.models.conditional import TASKS, ConditionalDiscreteVAE, ConditionalSBN, HalfImageBernoulli
from ovis.models.cpds import (
    BernoulliCPD,
    BernoulliImageCPD,
    BernoulliPrior,
    CategoricalCPD,
    CategoricalPrior,
    ContinuousBernoulliImageCPD,
    CPDNet,
    GaussianMeanFieldCPD,
    MixtureOfGaussianMeanFieldsCPD,
    MixtureOfGaussiansPrior,
    PriorNet,
    StandardNormalPrior,
)
from ovis.models.nets import FFNN, CNNDecoder, CNNEncoder, FFNNDecoder, FFNNEncoder, StructuredNet
from ovis.models.protocol import ModelProtocolError, set_model_checks
from ovis.models.sbm import SigmoidBeliefNetwork
from ovis.models.utilities import (
    distortion_rate_likelihood,
    image_grid,
    prior_samples,
    reconstruction_grid,
    reconstructions,
    save_image_grid,
)
from ovis.models.vae import LATENT_PRIORS, VAE, GaussianVAE, conv_decoder, conv_encoder

__all__ = [
    "MODELS",
    "TemplateModel",
    "batch_reduce",
    "check_model_output",
    "require_hook",
    "ModelProtocolError",
    "set_model_checks",
    "build_model",
    "default_model_name",
    "GaussianVAE",
    "VAE",
    "LATENT_PRIORS",
    "SigmoidBeliefNetwork",
    "TASKS",
    "ConditionalSBN",
    "ConditionalDiscreteVAE",
    "HalfImageBernoulli",
    "conv_encoder",
    "conv_decoder",
    # building blocks (ovis.models.cpds, ovis.models.nets) and utilities (ovis.models.utilities)
    "PriorNet",
    "StandardNormalPrior",
    "MixtureOfGaussiansPrior",
    "BernoulliPrior",
    "CategoricalPrior",
    "CPDNet",
    "GaussianMeanFieldCPD",
    "MixtureOfGaussianMeanFieldsCPD",
    "BernoulliCPD",
    "CategoricalCPD",
    "BernoulliImageCPD",
    "ContinuousBernoulliImageCPD",
    "StructuredNet",
    "FFNN",
    "FFNNEncoder",
    "FFNNDecoder",
    "CNNEncoder",
    "CNNDecoder",
    "distortion_rate_likelihood",
    "prior_samples",
    "reconstructions",
    "image_grid",
    "reconstruction_grid",
    "save_image_grid",
]

#: model names accepted by :func:`build_model` (``--model``)
MODELS = ("sbm", "vae", "gaussian-vae", "conv-vae", "gmm", "gaussian-toy", "discrete-vae")
_IMAGE_MODELS = ("sbm", "vae", "gaussian-vae", "conv-vae", "discrete-vae")
_GENERATED = {"gmm": "gmm", "gaussian-toy": "gaussian-toy"}


def _get(args: argparse.Namespace, name: str, default: Any) -> Any:
    return getattr(args, name, default)


def default_model_name(dataset: str) -> str:
    r"""``--model`` left out: ``gmm`` / ``gaussian-toy`` for those data sets, else ``vae``."""
    return _GENERATED.get(dataset, "vae")


def build_model(args: argparse.Namespace, data: Any) -> TemplateModel:
    r"""Build the model named by ``args.model`` for the data set ``data`` (a ``DataSplits``).

    ``args`` is the parsed ``run.py`` namespace; the fields read are ``model``, ``prior``, ``N``,
    ``K``, ``hdim``, ``nlayers``, ``depth``, ``learn_prior``, ``tau`` (missing fields take the
    ``run.py`` defaults).  ``args.model is None`` picks :func:`default_model_name`.

    * ``sbm``: :class:`SigmoidBeliefNetwork` (``depth`` layers of ``N`` units, ``nlayers``,
      ``hdim``), output bias at the logit of ``data.train_mean``; ``--prior`` must be
      ``bernoulli`` (the default ``normal`` is accepted and ignored, the SBN's latents being
      Bernoulli by definition).
    * ``vae``: :class:`VAE` with ``--prior`` normal | bernoulli | categorical | mog.
    * ``discrete-vae``: :class:`ovis.models.discrete_vae.DiscreteVAE` (``N`` variables of ``K``
      categories, ``--architecture`` dense | conv), relaxed by ``--relaxation`` gs | igr-i | igr-planar | igr-sb (IGR-SB:
      ``--threshold``, at most ``K`` categories), temperature ``--tau``.
    * ``gaussian-vae``: the TVO / OVIS Gaussian VAE: normal latents, fixed ``N(0, I)`` prior,
      tanh MLPs (the paper's setting: ``--N 200 --hdim 200 --nlayers 2``).
    * ``conv-vae``: :class:`VAE` with :func:`conv_encoder` / :func:`conv_decoder` (28x28 images).
    * ``gmm``: :class:`ovis.models.gmm.GaussianMixtureModel` (Le et al. 2019), ``N`` = number of
      components, ``hdim`` the inference network's hidden units; true parameters from
      ``data.ground_truth``.
    * ``gaussian-toy``: :class:`ovis.models.gaussian_toy.GaussianToyModel` (Rainforth et al.
      2018), ``D`` = the data dimension.

    ``args.task == "conditional"`` (``--task conditional``): structured output prediction of an
    image's bottom half from its top half, :class:`ovis.models.conditional.ConditionalSBN`
    (``--model sbm``, any ``--depth``) or :class:`ovis.models.conditional.ConditionalDiscreteVAE`
    (``--model discrete-vae``); the bound is then one of ``log p(x_bot | x_top)``.
    """
    dataset = getattr(data, "name", None)
    name = _get(args, "model", None) or default_model_name(str(dataset))
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are {list(MODELS)}")
    x_shape = data.x_shape
    if name in _IMAGE_MODELS and dataset in _GENERATED:
        raise ValueError(
            f"model {name!r} has a Bernoulli image decoder and cannot model the data set "
            f"{dataset!r}; use --model {_GENERATED[dataset]} (or leave --model out)"
        )
    if name in _GENERATED.values() and dataset != name:
        raise ValueError(f"model {name!r} needs --dataset {name} (its data set carries the true "
                         f"parameters), got --dataset {dataset}")
    N, K = int(_get(args, "N", 32)), int(_get(args, "K", 8))
    hdim, nlayers = int(_get(args, "hdim", 64)), int(_get(args, "nlayers", 2))
    depth, learn_prior = int(_get(args, "depth", 1)), bool(_get(args, "learn_prior", False))
    prior, tau = str(_get(args, "prior", "normal")), float(_get(args, "tau", 0.5))
    x_mean = getattr(data, "train_mean", None)
    relaxation = _get(args, "relaxation", "gs")
    discrete = name in ("vae", "conv-vae") and prior in ("bernoulli", "categorical")
    if discrete and relaxation not in (None, "gs"):
        raise NotImplementedError(
            f"--relaxation {relaxation} (IGR, Potapczynski et al. 2020) is not implemented for "
            f"model {name!r}; the discrete latents are relaxed with the Gumbel-softmax / concrete "
            "distribution: use --relaxation gs, or --model discrete-vae for the IGR family"
        )
    if str(_get(args, "architecture", "dense")) != "dense" and name != "discrete-vae":
        raise ValueError(f"--architecture {_get(args, 'architecture', 'dense')} is only read by --model "
                         f"discrete-vae (got --model {name}; use --model conv-vae for a convolutional VAE)")
    if name != "sbm" and depth != 1:
        raise ValueError(f"model {name!r} has one stochastic layer; --depth {depth} is only "
                         "supported by --model sbm")
    task = str(_get(args, "task", "density") or "density")
    likelihood = str(_get(args, "likelihood", "bernoulli") or "bernoulli")
    components = int(_get(args, "prior_components", 0) or 0)
    posterior = str(_get(args, "posterior", "normal") or "normal")
    if components and prior != "mog":
        raise ValueError(f"--prior_components {components} needs --prior mog (got --prior {prior})")
    if name == "discrete-vae":  # its own likelihoods (ovis.models.discrete_vae.LIKELIHOODS)
        from ovis.models.discrete_vae import LIKELIHOODS as DISCRETE_VAE_LIKELIHOODS

        if likelihood not in DISCRETE_VAE_LIKELIHOODS:
            raise ValueError(f"--likelihood {likelihood} is not implemented for --model discrete-vae; valid: "
                             f"{list(DISCRETE_VAE_LIKELIHOODS)} (gaussian: grey levels, e.g. --dataset fashion-grey)")
        discrete_vae_likelihood, likelihood = likelihood, "bernoulli"
    elif likelihood == "gaussian":
        raise ValueError(f"--likelihood gaussian (per-pixel Normal of grey levels) is read by --model discrete-vae "
                         f"only, got --model {name}; --model vae models grey levels with --likelihood cbernoulli")
    if likelihood != "bernoulli" or components or posterior != "normal":
        if name != "vae" or task != "density":
            raise ValueError(f"--likelihood {likelihood} / --prior_components / --posterior {posterior} are "
                             f"read by --model vae (--task density) only; got --model {name}, --task {task}")
        from ovis.models.likelihoods import LikelihoodVAE

        return LikelihoodVAE(x_shape, prior=prior, N=N, K=components or K, hdim=hdim, nlayers=nlayers,
                             learn_prior=learn_prior, x_mean=x_mean, tau=tau, likelihood=likelihood,
                             posterior=posterior,
                             posterior_components=int(_get(args, "posterior_components", 2)))
    if task not in TASKS:
        raise ValueError(f"unknown --task {task!r}; valid tasks are {list(TASKS)}")
    if task == "conditional":
        if name == "discrete-vae":
            if learn_prior:
                raise ValueError("--task conditional: the discrete-vae prior p(z | x_top) is always "
                                 "learned; drop --learn_prior")
            return ConditionalDiscreteVAE(
                x_shape, num_of_discrete_var=N, n_required=K, relaxation=str(relaxation or "gs"),
                tau=tau, threshold=float(_get(args, "threshold", 0.99)), hdim=hdim, nlayers=nlayers,
                architecture=str(_get(args, "architecture", "dense")), x_mean=x_mean,
                likelihood=discrete_vae_likelihood)
        if name != "sbm":
            raise NotImplementedError(
                f"--task conditional (predict the bottom half of an image from its top half) is "
                f"implemented for --model sbm and --model discrete-vae, got --model {name}")
        if prior not in ("bernoulli", "normal"):
            raise ValueError(f"the sigmoid belief network has Bernoulli latents; got --prior {prior}")
        return ConditionalSBN(x_shape, N=N, depth=depth, nlayers=nlayers, hdim=hdim, x_mean=x_mean)
    if name == "sbm":
        if prior not in ("bernoulli", "normal"):
            raise ValueError(f"the sigmoid belief network has Bernoulli latents; got --prior {prior}")
        return SigmoidBeliefNetwork(x_shape, N=N, depth=depth, nlayers=nlayers, hdim=hdim, x_mean=x_mean)
    if name == "vae":
        return VAE(x_shape, prior=prior, N=N, K=K, hdim=hdim, nlayers=nlayers,
                   learn_prior=learn_prior, x_mean=x_mean, tau=tau)
    if name == "discrete-vae":
        from ovis.models.discrete_vae import DiscreteVAE

        if learn_prior:
            raise ValueError("discrete-vae has a fixed prior (uniform GS; IGR: the noise prior of --igr_prior): "
                             "drop --learn_prior")
        return DiscreteVAE(x_shape, num_of_discrete_var=N, n_required=K,
                           relaxation=str(relaxation or "gs"), tau=tau,
                           threshold=float(_get(args, "threshold", 0.99)), hdim=hdim,
                           nlayers=nlayers, x_mean=x_mean,
                           architecture=str(_get(args, "architecture", "dense")),
                           prior=str(_get(args, "igr_prior", "uniform") or "uniform"),
                           prior_tau=_get(args, "gs_prior_tau", None),
                           closed_form_kl=bool(_get(args, "closed_form_kl", False)),
                           evaluation="relaxed" if _get(args, "relaxed_evaluation", False) else "one-hot",
                           relaxed_iw=int(_get(args, "relaxed_iw", 0) or 0),
                           likelihood=discrete_vae_likelihood)
    if name == "gaussian-vae":
        if learn_prior:
            raise ValueError("gaussian-vae has a fixed N(0, I) prior: drop --learn_prior "
                             "(or use --model vae --prior normal --learn_prior)")
        if prior != "normal":
            raise ValueError(f"gaussian-vae has Gaussian latents; got --prior {prior}")
        return VAE(x_shape, prior="normal", N=N, hdim=hdim, nlayers=nlayers, x_mean=x_mean)
    if name == "conv-vae":
        q_dim = {"normal": 2 * N, "mog": 2 * N, "bernoulli": N, "categorical": N * K}[prior]
        z_dim = N * K if prior == "categorical" else N
        return VAE(x_shape, prior=prior, N=N, K=K, learn_prior=learn_prior, x_mean=x_mean, tau=tau,
                   encoder=conv_encoder(x_shape, q_dim, hdim), decoder=conv_decoder(z_dim, x_shape, hdim))
    if name == "gmm":
        from ovis.models.gmm import GaussianMixtureModel

        return GaussianMixtureModel.from_data(data, hdim=hdim)
    from ovis.models.gaussian_toy import GaussianToyModel

    return GaussianToyModel.from_data(data)
