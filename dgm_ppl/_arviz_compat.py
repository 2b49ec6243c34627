"""The few ArviZ pieces dgm_ppl uses, for ArviZ 0.x (``arviz``) and ≥ 1 (``arviz_base`` + ``arviz_stats``)."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np

ARVIZ_1 = int(az.__version__.split(".")[0]) >= 1


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, normalized log-weights along the last axis, and the Pareto k̂ of each row (r_eff = 1)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both versions warn about short tails; k̂ is what callers report
        if ARVIZ_1:
            from arviz_stats.base.array import array_stats

            # arviz_stats smooths exp(-x): it takes the log-likelihood of a left-out point, not log-weights
            return array_stats.psislw(-log_weights, r_eff=1, axis=-1)
        return az.psislw(log_weights, 1.0)


def elpd_data(elpd_i, pareto_k, p: float, n_samples: int, scale: str, good_k: float):
    """ArviZ's ELPDData for pointwise values (an xarray.DataArray), as ``az.loo(..., pointwise=True)`` builds it."""
    values = np.asarray(elpd_i).ravel()
    factor = {"log": 1, "negative_log": -1, "deviance": -2}[scale]
    elpd, se = factor * values.sum(), abs(factor) * (values.size * np.var(values)) ** 0.5
    warning = bool(pareto_k is not None and np.any(np.asarray(pareto_k) > good_k))
    if ARVIZ_1:
        from arviz_stats import ELPDData

        return ELPDData(
            kind="loo", elpd=elpd, se=se, p=p, n_samples=n_samples, n_data_points=values.size, scale=scale,
            warning=warning, good_k=good_k, elpd_i=factor * elpd_i, pareto_k=pareto_k,
        )  # fmt: skip
    from arviz.stats.stats_utils import ELPDData

    data = [elpd, se, p, n_samples, values.size, warning, (factor * elpd_i).rename("loo_i")]
    index = ["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i"]
    if pareto_k is not None:
        data.append(pareto_k)
        index.append("pareto_k")
    return ELPDData(data=[*data, scale, good_k], index=[*index, "scale", "good_k"])
