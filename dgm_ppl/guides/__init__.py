"""Amortized guides for local latents: diagonal, full-rank and normalizing-flow posteriors from an encoder, discrete
(categorical, one-hot, Bernoulli) posteriors from logits, and a guide list whose parts see earlier samples."""

from .amortized import AmortizedGuide, AmortizedGuideList, AmortizedMultivariateNormal, AmortizedNormal, ConcatEncoder
from .discrete import AmortizedCategorical
from .flows import FLOWS, AmortizedFlow

__all__ = [
    "AmortizedGuide",
    "AmortizedGuideList",
    "AmortizedNormal",
    "AmortizedMultivariateNormal",
    "AmortizedFlow",
    "AmortizedCategorical",
    "ConcatEncoder",
    "FLOWS",
]
