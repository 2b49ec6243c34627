"""Evaluation of generative models: likelihoods, two-sample tests, mode coverage, memorization."""

from .likelihood import LogLikelihoodEstimate, log_likelihood
from .modes import MemorizationResult, ModeCoverage, memorization, mode_coverage
from .two_sample import MMDTestResult, mmd2, mmd_test

__all__ = [
    "log_likelihood",
    "LogLikelihoodEstimate",
    "mmd2",
    "mmd_test",
    "MMDTestResult",
    "mode_coverage",
    "ModeCoverage",
    "memorization",
    "MemorizationResult",
]
