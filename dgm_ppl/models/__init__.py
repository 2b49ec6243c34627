"""Example deep latent-variable models, written as Pyro programs: VAE, conditional VAE, sigmoid belief net, and the
linear-Gaussian factor models (PPCA / factor analysis) whose marginal and posterior are exact."""

from .factor import PPCA, FactorAnalysis
from .sbn import SigmoidBeliefNet
from .vae import CVAE, GUIDES, VAE, mlp

__all__ = ["VAE", "CVAE", "GUIDES", "mlp", "SigmoidBeliefNet", "FactorAnalysis", "PPCA"]
