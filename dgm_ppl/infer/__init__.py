"""Objectives that run on Pyro's SVI, and training helpers."""

from .avb import AVBLoss
from .bigan import BIGAN_KINDS, ALILoss, BiGANLoss
from .errors import DivergenceError
from .gan import GAN_KINDS, GANLoss, gradient_penalty
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
from .training import train

__all__ = [
    "DivergenceError",
    "GANLoss",
    "GAN_KINDS",
    "gradient_penalty",
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
]
