"""Errors raised by dgm_ppl's training code."""

__all__ = ["DivergenceError"]


class DivergenceError(FloatingPointError):
    """A loss, gradient or parameter became NaN or infinite: the run has diverged."""
