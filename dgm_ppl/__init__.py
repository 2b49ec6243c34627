"""dgm_ppl: deep generative models on top of Pyro."""

from . import datasets, energy, evaluation, infer, kernels, nn
from .checkpoint import load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = [
    "datasets",
    "energy",
    "evaluation",
    "infer",
    "kernels",
    "nn",
    "save_checkpoint",
    "load_checkpoint",
    "__version__",
]
