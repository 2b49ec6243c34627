"""Evaluation of generative models: two-sample tests, mode coverage, memorization."""

from .modes import MemorizationResult, ModeCoverage, memorization, mode_coverage
from .two_sample import MMDTestResult, mmd2, mmd_test

__all__ = [
    "mmd2",
    "mmd_test",
    "MMDTestResult",
    "mode_coverage",
    "ModeCoverage",
    "memorization",
    "MemorizationResult",
]
