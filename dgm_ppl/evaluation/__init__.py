"""Evaluation of generative models: likelihoods, collapse diagnostics, two-sample tests, mode coverage, memorization."""

from .collapse import ActiveUnits, active_units, kl_per_dimension
from .likelihood import LogLikelihoodEstimate, log_likelihood
from .modes import MemorizationResult, ModeCoverage, memorization, mode_coverage
from .two_sample import MMDTestResult, mmd2, mmd_test

__all__ = [
    "log_likelihood",
    "LogLikelihoodEstimate",
    "kl_per_dimension",
    "active_units",
    "ActiveUnits",
    "mmd2",
    "mmd_test",
    "MMDTestResult",
    "mode_coverage",
    "ModeCoverage",
    "memorization",
    "MemorizationResult",
]
