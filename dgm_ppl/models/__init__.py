"""Example deep generative models, written as Pyro programs: VAE, conditional VAE, sigmoid belief net, the
linear-Gaussian factor models (PPCA / factor analysis) whose marginal and posterior are exact, and the autoregressive
distributions (FVSBN, NADE, MADE, PixelCNN) with exact log-probabilities, diffusion (DDPM) with the forward process as
the guide, VQ-VAE, denoising autoencoders and generative stochastic networks sampled by their Markov chains, and ICA,
sparse coding and slow feature analysis."""

from .autoregressive import FVSBN, MADE, NADE, AutoregressiveDistribution, AutoregressiveModel, PixelCNN
from .denoising import GSN, DenoisingAutoencoder
from .diffusion import DDPM, LinearNoisePredictor, NoisePredictor, variance_schedule
from .factor import PPCA, FactorAnalysis
from .linear_factors import ICA, ProbabilisticSFA, SlowFeatureAnalysis, SparseCoding, amari_index
from .sbn import SigmoidBeliefNet
from .vae import CVAE, GUIDES, VAE, mlp
from .vqvae import VQVAE

__all__ = [
    "VAE",
    "CVAE",
    "GUIDES",
    "mlp",
    "SigmoidBeliefNet",
    "FactorAnalysis",
    "PPCA",
    "FVSBN",
    "NADE",
    "MADE",
    "PixelCNN",
    "AutoregressiveModel",
    "AutoregressiveDistribution",
    "DDPM",
    "NoisePredictor",
    "LinearNoisePredictor",
    "variance_schedule",
    "ICA",
    "amari_index",
    "SparseCoding",
    "SlowFeatureAnalysis",
    "ProbabilisticSFA",
    "VQVAE",
    "DenoisingAutoencoder",
    "GSN",
]
