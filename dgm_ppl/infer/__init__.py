"""Objectives that run on Pyro's SVI, and training helpers."""

from .avb import AVBLoss
from .bigan import BIGAN_KINDS, ALILoss, BiGANLoss
from .errors import DivergenceError
from .gan import GAN_ESTIMATORS, GAN_KINDS, GANLoss, gradient_penalty, zero_centered_gradient_penalty
from .mixed_precision import AutocastLoss
from .mmd import MMDLoss
from .nce import NCELoss, unnormalized_log_prob
from .objectives import (
    IWAE,
    AnnealedELBO,
    FreeBitsELBO,
    JitTrace_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    LatentScaleMessenger,
    jit_trace,
    linear_warmup,
)
from .pseudo_likelihood import PseudoLikelihood
from .ratio_matching import RatioMatching
from .rejection import RejectionSamples, discriminator_rejection_sampling
from .score_matching import ScoreMatching, gaussian_rbm_score_matching
from .training import train

__all__ = [
    "GAN_ESTIMATORS",
    "PseudoLikelihood",
    "RatioMatching",
    "ScoreMatching",
    "gaussian_rbm_score_matching",
    "DivergenceError",
    "GANLoss",
    "GAN_KINDS",
    "gradient_penalty",
    "zero_centered_gradient_penalty",
    "discriminator_rejection_sampling",
    "RejectionSamples",
    "BiGANLoss",
    "ALILoss",
    "BIGAN_KINDS",
    "AVBLoss",
    "MMDLoss",
    "NCELoss",
    "unnormalized_log_prob",
    "AnnealedELBO",
    "FreeBitsELBO",
    "IWAE",
    "JitTrace_ELBO",
    "JitTraceMeanField_ELBO",
    "JitTraceGraph_ELBO",
    "jit_trace",
    "LatentScaleMessenger",
    "linear_warmup",
    "train",
    "AutocastLoss",
]
