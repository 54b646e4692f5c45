r"""Latent-variable models following the protocol of :mod:`ovis.models.base`."""
from ovis.models.base import TemplateModel, batch_reduce, check_model_output, require_hook
from ovis.models.vae import GaussianVAE

__all__ = ["TemplateModel", "batch_reduce", "check_model_output", "require_hook", "GaussianVAE"]
