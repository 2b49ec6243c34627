"""dgm_ppl: deep generative models on top of Pyro."""

from . import datasets, distributed, distributions, energy, evaluation, guides, infer, kernels, models, nn, optim
from .checkpoint import load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = [
    "arviz",
    "datasets",
    "distributed",
    "distributions",
    "energy",
    "evaluation",
    "guides",
    "infer",
    "kernels",
    "models",
    "nn",
    "optim",
    "save_checkpoint",
    "load_checkpoint",
    "__version__",
]


def __getattr__(name: str):
    """``dgm_ppl.arviz`` on first use: importing ArviZ takes a second, so ``import dgm_ppl`` does not."""
    if name == "arviz":
        import importlib

        return importlib.import_module(".arviz", __name__)
    raise AttributeError(f"module 'dgm_ppl' has no attribute {name!r}")
