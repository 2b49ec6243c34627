"""Training helpers and objectives that run on Pyro's SVI."""

from .errors import DivergenceError
from .training import train

__all__ = ["DivergenceError", "train"]
