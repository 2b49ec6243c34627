"""Amortized guides for local latents: diagonal, full-rank and normalizing-flow posteriors from an encoder."""

from .amortized import AmortizedGuide, AmortizedMultivariateNormal, AmortizedNormal
from .flows import FLOWS, AmortizedFlow

__all__ = ["AmortizedGuide", "AmortizedNormal", "AmortizedMultivariateNormal", "AmortizedFlow", "FLOWS"]
