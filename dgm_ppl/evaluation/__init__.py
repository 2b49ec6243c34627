"""Evaluation of generative models: likelihoods, collapse diagnostics, two-sample tests, mode coverage, memorization,
sample quality on features (FID, KID, precision/recall) and density ratios."""

from .collapse import ActiveUnits, active_units, kl_per_dimension
from .features import FeatureExtractor, digits_feature_extractor, train_feature_extractor
from .likelihood import LogLikelihoodEstimate, log_likelihood
from .modes import MemorizationResult, ModeCoverage, memorization, mode_coverage
from .ratio import DensityRatio, density_ratio
from .sample_quality import KernelDistance, PrecisionRecall, frechet_distance, kernel_distance, precision_recall
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
    "frechet_distance",
    "kernel_distance",
    "KernelDistance",
    "precision_recall",
    "PrecisionRecall",
    "density_ratio",
    "DensityRatio",
    "FeatureExtractor",
    "train_feature_extractor",
    "digits_feature_extractor",
]
