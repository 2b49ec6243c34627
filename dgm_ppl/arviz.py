r"""Pyro results in ArviZ: InferenceData from SVI guides, MCMC and sample dicts, and LOO that is right for VI.

:func:`to_inference_data` runs the model once per posterior draw θ_s (from a guide, an MCMC run or a dict of samples)
and records

- ``posterior``: the latent sites (and ``pyro.deterministic`` sites), dims ``(chain, draw, *plates)``;
- ``log_likelihood``: :math:`\log p(y_i \mid \theta_s)` for every observed site, pointwise over its plates;
- ``posterior_predictive``: :math:`\tilde y \sim p(y \mid \theta_s)` at every observed site;
- ``sample_stats``: ``lp`` = :math:`\log p(\theta_s, y)` and, for a guide, ``log_q`` = :math:`\log q(\theta_s)`;
- ``observed_data``, and ``prior``/``prior_predictive`` on request.

Draws from a guide are not posterior draws. :func:`loo` corrects PSIS-LOO for this: with
:math:`r_s = p(\theta_s, y) / q(\theta_s)`, the leave-one-out posterior is reached from q by the ratios

.. math::

    w_{is} \propto \frac{r_s}{p(y_i \mid \theta_s)}, \qquad
    \widehat{\mathrm{elpd}}_{\mathrm{loo},i}
    = \log \frac{\sum_s \tilde w_{is}\, p(y_i \mid \theta_s)}{\sum_s \tilde w_{is}},

with :math:`\tilde w` Pareto-smoothed (Magnusson et al. 2019, "Bayesian leave-one-out cross-validation for large
data", §3; the ``loo_approximate_posterior`` recipe of the R package loo). The Pareto :math:`\hat k` of the
:math:`r_s` themselves (:func:`guide_pareto_k`) diagnoses the guide (Yao et al. 2018, "Yes, but did it work?").

For deep generative models with point-estimate weights, :func:`heldout_elpd` wraps per-datum importance-sampled
:math:`\log p(x_i)` on held-out data (:func:`dgm_ppl.evaluation.log_likelihood`) as an ``ELPDData`` that
``az.compare`` ranks with ELPD differences and their standard errors.

ArviZ 0.x returns ``InferenceData`` and 0.x ``ELPDData``; ArviZ ≥ 1 (Python ≥ 3.12) returns a ``DataTree`` through
the same ``from_dict`` (called with a dict of groups) and ``arviz_stats.ELPDData``. (Under ArviZ ≥ 1,
``az.loo_approximate_posterior(data, log_p=lp, log_q=log_q)`` is the same correction as :func:`loo`.)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from tqdm.auto import tqdm

from ._arviz_compat import ARVIZ_1, elpd_data, psislw
from .evaluation.likelihood import LogLikelihoodEstimate, _check_count
from .handlers import uncondition_data

__all__ = ["to_inference_data", "loo", "guide_pareto_k", "heldout_elpd"]


@dataclass
class _Site:
    name: str
    shape: tuple[int, ...]
    dims: list[str]
    batch_dims: list[str]
    observed: bool
    deterministic: bool
    value: Tensor | None = field(default=None, repr=False)


def _site_dims(name: str, site: dict) -> tuple[list[str], list[str]]:
    """Dim names of a site's value: plate names where a plate sits, ``{name}_dim_{i}`` elsewhere."""
    shape = site["value"].shape
    at = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized}
    batch_ndim = len(shape) - site["fn"].event_dim
    if site["infer"].get("_deterministic") and batch_ndim == 0 and at:
        # pyro.deterministic's default event_dim is the value's ndim: its plate dims are batch dims all the same
        batch_ndim = min(len(shape), max(-d for d in at))
    dims = [at.get(i - batch_ndim, f"{name}_dim_{i}") for i in range(batch_ndim)]
    dims += [f"{name}_dim_{i}" for i in range(batch_ndim, len(shape))]
    return dims, dims[:batch_ndim]


def _sample_sites(trace) -> Iterator[tuple[str, dict]]:
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site) and not site["infer"].get("is_auxiliary"):
            yield name, site


def _inspect(model: Callable, args: tuple, kwargs: dict) -> tuple[dict[str, _Site], int]:
    """One run of the model: its sample sites (observed or not, shapes, plate dims) and its plate nesting."""
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    sites = {}
    for name, site in _sample_sites(trace):
        for f in site["cond_indep_stack"]:
            if f.full_size is not None and f.size != f.full_size:
                raise ValueError(
                    f"site {name!r} is in plate {f.name!r}, subsampled to {f.size} of {f.full_size}: "
                    "convert with the full data (no subsample_size)"
                )
        deterministic = bool(site["infer"].get("_deterministic"))
        dims, batch_dims = _site_dims(name, site)
        sites[name] = _Site(
            name,
            tuple(site["value"].shape),
            dims,
            batch_dims,
            observed=site["is_observed"] and not deterministic,
            deterministic=deterministic,
            value=site["value"].detach() if site["is_observed"] and not deterministic else None,
        )
    if not any(s.observed for s in sites.values()):
        raise ValueError("the model has no observed sites (pass the data with obs=...): nothing to compare with")
    nesting = max(
        (-f.dim for _, site in _sample_sites(trace) for f in site["cond_indep_stack"] if f.vectorized), default=0
    )
    return sites, nesting


def _check_values(values: Mapping[str, Tensor], sites: dict[str, _Site], where: str) -> None:
    latents = {n for n, s in sites.items() if not s.observed and not s.deterministic}
    for name, value in values.items():
        if name not in sites or sites[name].observed:
            kind = "an observed site" if name in sites else "not a site"
            raise ValueError(f"{where} has a value for {name!r}, which is {kind} of the model")
        if name in latents and tuple(value.shape) != sites[name].shape:
            raise ValueError(
                f"{where} gives site {name!r} shape {tuple(value.shape)}, the model expects {sites[name].shape}"
            )
    missing = latents - set(values)
    if missing:
        raise ValueError(f"{where} has no value for the model's latent sites {sorted(missing)}")


def _guide_draws(guide: Callable, sites, args, kwargs, keys: list[tuple[int, int]]):
    for key in keys:
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        values = {n: site["value"] for n, site in _sample_sites(trace) if not site["is_observed"]}
        if key == keys[0]:
            _check_values(values, sites, "the guide")
        yield key, values, trace.log_prob_sum()


def _check_samples(samples: Mapping[str, Tensor], sites: dict[str, _Site], where: str) -> dict[str, Tensor]:
    """Posterior samples ``{site: (draws, ...)}``, deterministic sites dropped (the model recomputes them)."""
    samples = {k: torch.as_tensor(v) for k, v in samples.items() if not (k in sites and sites[k].deterministic)}
    counts = {v.shape[0] if v.dim() else 0 for v in samples.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"{where} need one leading draw dimension, the same for all sites; got {sorted(counts)}")
    _check_values({k: v[0] for k, v in samples.items()}, sites, where)
    return samples


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


class _Group:
    """Per-variable draws of one group, filled at (chain, draw) keys and stacked to (chain, draw, ...)."""

    def __init__(self):
        self.blocks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, key: tuple[int, int], name: str, value: Tensor) -> None:
        self.add_draws([key], name, value.unsqueeze(0))

    def add_draws(self, keys: list[tuple[int, int]], name: str, values: Tensor) -> None:
        self.blocks.setdefault(name, []).append((np.asarray(keys).reshape(-1, 2), _numpy(values)))

    def stack(self) -> dict[str, np.ndarray]:
        out = {}
        for name, blocks in self.blocks.items():
            keys = np.concatenate([k for k, _ in blocks])
            values = np.concatenate([v for _, v in blocks])
            array = np.empty((keys[:, 0].max() + 1, keys[:, 1].max() + 1, *values.shape[1:]), dtype=values.dtype)
            array[keys[:, 0], keys[:, 1]] = values
            out[name] = array
        return out


def _from_dict(groups: dict[str, dict[str, np.ndarray]], coords, dims, ll_dims, attrs: dict):
    """``az.from_dict`` for ArviZ 0.x and 1.x; the log-likelihood gets its own dims (observed batch dims only)."""
    groups = {k: v for k, v in groups.items() if v}
    ll = {"log_likelihood": groups.pop("log_likelihood")} if "log_likelihood" in groups else {}
    if ARVIZ_1:  # arviz_base.from_dict(data: {group: {var: array}}, ...) -> DataTree
        data = az.from_dict(groups, coords=coords, dims=dims)
        if ll:
            data["log_likelihood"] = az.from_dict(ll, coords=coords, dims=ll_dims)["log_likelihood"]
    else:
        data = az.from_dict(**groups, coords=coords, dims=dims)
        if ll:
            data.extend(az.from_dict(**ll, coords=coords, dims=ll_dims))
    for name in [*groups, *ll]:
        getattr(data, name).attrs.update(attrs)
    return data


def to_inference_data(
    model: Callable,
    guide: Callable | None = None,
    *,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    num_samples: int = 1000,
    posterior_samples: Mapping[str, Tensor] | None = None,
    mcmc=None,
    prior: bool = False,
    num_prior_samples: int | None = None,
    posterior_predictive: bool = True,
    log_likelihood: bool = True,
    var_names: list[str] | None = None,
    coords: dict | None = None,
    dims: dict[str, list[str]] | None = None,
    parallel: bool = False,
    progress: bool = False,
):
    """Convert a Pyro model and its posterior (a guide, an MCMC run or samples) to ArviZ.

    :param model: the Pyro model, run as ``model(*model_args, **model_kwargs)`` with its observations (full data: a
        subsampled plate is refused).
    :param guide: a fitted guide (any Pyro guide, autoguides included); ``num_samples`` draws go in chain 0.
    :param model_args: the model's positional arguments (default for ``mcmc``: the ones it was run with, which Pyro
        keeps in the private ``MCMC._args``/``_kwargs``; pass them to be independent of that).
    :param model_kwargs: the model's keyword arguments (the same default).
    :param num_samples: draws from the guide (and from the prior, unless ``num_prior_samples`` is given).
    :param posterior_samples: ``{site: tensor (draws, ...)}``, e.g. from ``Predictive`` or ``mcmc.get_samples()``; one
        chain.
    :param mcmc: a ``pyro.infer.MCMC`` that has run; chains are kept, and HMC/NUTS divergences go to
        ``sample_stats.diverging``.
    :param prior: add ``prior`` and ``prior_predictive`` groups (also allowed with no posterior at all, for a prior
        predictive check before fitting).
    :param posterior_predictive: whether to build the ``posterior_predictive`` group.
    :param log_likelihood: whether to build the ``log_likelihood`` group.
    :param var_names: posterior variables to keep (default: all latent and deterministic sites).
    :param coords: coordinates, passed to ``az.from_dict``.
    :param dims: dims of each variable, passed to ``az.from_dict``; they override the plate names found in the model.
    :param parallel: run all draws in one vectorized pass under ``pyro.plate("_num_draws", S)`` (like
        ``Predictive(parallel=True)``; much faster): the model and guide must be vectorizable, with every batch dim in a
        plate.
    :param progress: tqdm bar over draws (sequential mode).

    :returns: ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x). Dims of a site: ``(chain, draw)``,
        then the names of its plates, then ``{site}_dim_{i}`` for other batch and event dims.

    The pointwise log-likelihood is each observed site's ``log_prob`` without its scale or mask: points masked out
    with ``poutine.mask`` (e.g. missing values) get a density too, which is meaningless for them; drop them from the
    model's data before converting. The posterior predictive reruns the model with its observations removed, so an
    observed site that depends on another one (a time series) is replicated from the replicated values.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    if not isinstance(model_args, tuple | list) or not isinstance(model_kwargs, Mapping):
        raise TypeError("model_args must be a tuple and model_kwargs a dict")
    sources = [s for s in (guide, posterior_samples, mcmc) if s is not None]
    if len(sources) > 1:
        raise ValueError("give one of guide, posterior_samples or mcmc, not several")
    if not sources and not prior:
        raise ValueError("nothing to convert: give a guide, posterior_samples or mcmc (or prior=True)")
    num_samples = _check_count("num_samples", num_samples)
    num_prior_samples = _check_count(
        "num_prior_samples", num_samples if num_prior_samples is None else num_prior_samples
    )
    if mcmc is not None and not model_args and not model_kwargs:
        model_args, model_kwargs = tuple(getattr(mcmc, "_args", None) or ()), dict(getattr(mcmc, "_kwargs", None) or {})
    sites, nesting = _inspect(model, tuple(model_args), dict(model_kwargs))
    observed = {n: s for n, s in sites.items() if s.observed}
    unknown = set(var_names or ()) - {n for n, s in sites.items() if not s.observed}
    if unknown:
        raise ValueError(f"var_names {sorted(unknown)} are not latent or deterministic sites of the model")

    groups = {g: _Group() for g in ("posterior", "log_likelihood", "posterior_predictive", "sample_stats")}
    source, samples = None, None
    if mcmc is not None:
        by_chain = mcmc.get_samples(group_by_chain=True)
        chains, per_chain = next(iter(by_chain.values())).shape[:2]
        keys = [(c, d) for c in range(chains) for d in range(per_chain)]
        samples = _check_samples({k: v.flatten(0, 1) for k, v in by_chain.items()}, sites, "the MCMC samples")
        source = "mcmc"
        for c, diverging in enumerate(_divergences(mcmc, per_chain)):
            groups["sample_stats"].add_draws(keys[c * per_chain : (c + 1) * per_chain], "diverging", diverging)
    elif posterior_samples is not None:
        samples, source = _check_samples(posterior_samples, sites, "posterior_samples"), "samples"
        keys = [(0, d) for d in range(len(next(iter(samples.values()))))]
    elif guide is not None:
        keys, source = [(0, d) for d in range(num_samples)], "guide"
    args, kwargs = tuple(model_args), dict(model_kwargs)
    if source is not None and parallel:
        _posterior_parallel(
            model, guide, samples, keys, sites, nesting, groups, args, kwargs, log_likelihood, posterior_predictive
        )
    elif source is not None:
        if guide is not None:
            draws = _guide_draws(guide, sites, args, kwargs, keys)
        else:
            draws = ((key, {k: v[i] for k, v in samples.items()}, None) for i, key in enumerate(keys))
        _posterior(model, draws, len(keys), sites, groups, args, kwargs, log_likelihood, posterior_predictive, progress)
    prior_groups = {"prior": _Group(), "prior_predictive": _Group()}
    if prior:
        _prior(model, sites, nesting, num_prior_samples, prior_groups, args, kwargs, parallel, progress)

    stacked = {name: group.stack() for name, group in {**groups, **prior_groups}.items()}
    if var_names is not None:
        for group in ("posterior", "prior"):
            stacked[group] = {k: v for k, v in stacked[group].items() if k in var_names}
    stacked["observed_data"] = {n: _numpy(s.value) for n, s in observed.items()}
    all_dims = {n: s.dims for n, s in sites.items()} | (dims or {})
    ll_dims = {n: all_dims[n][: len(s.batch_dims)] for n, s in observed.items()}
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "dgm_ppl",
        "posterior_source": source or "none",
    }
    data = _from_dict(stacked, coords, all_dims, ll_dims, attrs)
    if source == "guide":
        data.sample_stats.attrs["guide_pareto_k"] = guide_pareto_k(data)
    return data


def _prior(model, sites, nesting, num, groups, args, kwargs, parallel: bool, progress: bool) -> None:
    """Prior draws of the latent sites and prior predictive draws of the observed ones."""
    unconditioned = uncondition_data(model)
    with torch.no_grad():
        if parallel:
            _check_vectorizable(sites, nesting)
            with pyro.plate("_num_draws", num, dim=-(nesting + 1)):
                trace = poutine.trace(unconditioned).get_trace(*args, **kwargs)
            keys = [(0, d) for d in range(num)]
            for name, site in _sample_sites(trace):
                if name in sites:
                    group = groups["prior_predictive" if sites[name].observed else "prior"]
                    group.add_draws(keys, name, _draw_major(site["value"], num, sites[name], nesting))
            return
        for d in tqdm(range(num), disable=not progress, desc="prior"):
            trace = poutine.trace(unconditioned).get_trace(*args, **kwargs)
            for name, site in _sample_sites(trace):
                if name in sites:
                    groups["prior_predictive" if sites[name].observed else "prior"].add((0, d), name, site["value"])


def _divergences(mcmc, draws: int) -> list[Tensor]:
    """Per-chain boolean ``diverging`` flags from ``mcmc.diagnostics()`` (HMC/NUTS record post-warmup indices)."""
    try:
        per_chain = mcmc.diagnostics().get("divergences", {})
    except Exception:  # kernels without diagnostics
        return []
    flags = []
    for c in range(len(per_chain)):
        flag = torch.zeros(draws, dtype=torch.bool)
        flag[list(per_chain.get(f"chain {c}", []))] = True
        flags.append(flag)
    return flags


def _record(groups, keys, trace, lp: Tensor, log_q: Tensor | None, sites, nesting: int, log_likelihood: bool):
    """Store the densities, latent values and pointwise log-likelihoods of a conditioned model run over ``keys``
    (one draw, or all of them under the draw plate at dim ``-(nesting + 1)``)."""
    if torch.isnan(lp).any() or (log_q is not None and torch.isnan(log_q).any()):
        raise ValueError(f"NaN log-density in the draws from {keys[0]}: they do not fit the model")
    groups["sample_stats"].add_draws(keys, "lp", lp)
    if log_q is not None:
        groups["sample_stats"].add_draws(keys, "log_q", log_q)
    for name, site in _sample_sites(trace):
        if name not in sites:
            raise ValueError(f"the model sampled a site {name!r} that its first run did not have")
        if not sites[name].observed:
            groups["posterior"].add_draws(keys, name, _draw_major(site["value"], len(keys), sites[name], nesting))
        elif log_likelihood:
            log_prob = site["fn"].log_prob(site["value"])
            log_prob = _draw_major(log_prob, len(keys), sites[name], nesting, batch_only=True)
            groups["log_likelihood"].add_draws(keys, name, log_prob)


def _posterior(model, draws, total, sites, groups, args, kwargs, log_likelihood, predictive, progress) -> None:
    observed = [n for n, s in sites.items() if s.observed]
    with torch.no_grad():
        for key, values, log_q in tqdm(draws, total=total, disable=not progress, desc="posterior"):
            trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
            log_q = None if log_q is None else log_q.reshape(1)
            _record(groups, [key], trace, trace.log_prob_sum().reshape(1), log_q, sites, 0, log_likelihood)
            if predictive:
                fresh = poutine.trace(poutine.condition(uncondition_data(model), data=values))
                trace = fresh.get_trace(*args, **kwargs)
                for name in observed:
                    groups["posterior_predictive"].add(key, name, trace.nodes[name]["value"])


def _draw_major(value: Tensor, num: int, site: _Site, nesting: int, batch_only: bool = False) -> Tensor:
    """A value (or log-density) under the draw plate, (num, 1, ..., *shape) or broadcastable to it, as (num, *shape)."""
    batch_ndim = len(site.batch_dims)
    shape = site.shape[:batch_ndim] if batch_only else site.shape
    try:
        return value.expand((num,) + (1,) * (nesting - batch_ndim) + tuple(shape)).reshape((num, *shape))
    except RuntimeError:
        raise ValueError(
            f"site {site.name!r} has shape {tuple(value.shape)} under the draw plate, which does not broadcast to "
            f"{num} draws of the model's shape {tuple(shape)}: a guide of the wrong shape, or a model that does not "
            "broadcast over extra leading dims (use parallel=False)"
        ) from None


def _per_draw_sum(log_prob: Tensor, num: int, nesting: int) -> Tensor:
    if log_prob.dim() > nesting + 1:
        raise ValueError(
            f"a log-density of shape {tuple(log_prob.shape)} under the draw plate at dim {-nesting - 1}: the model or "
            "guide does not broadcast over extra leading dims; use parallel=False"
        )
    log_prob = log_prob.reshape((1,) * (nesting + 1 - log_prob.dim()) + log_prob.shape)
    return log_prob.sum(list(range(1, nesting + 1))).expand(num)


def _log_density(trace, num: int, nesting: int) -> Tensor:
    """Per-draw log_prob_sum of a trace run under the draw plate (scales and masks applied, like Pyro's)."""
    total = torch.zeros(num)
    for _, site in _sample_sites_all(trace):
        if site["infer"].get("_deterministic"):  # masked out of the density anyway
            continue
        log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
        total = total.to(log_prob) + _per_draw_sum(log_prob, num, nesting)
    return total


def _sample_sites_all(trace):
    return [(n, s) for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]


def _check_vectorizable(sites: dict[str, _Site], nesting: int) -> None:
    for site in sites.values():
        loose = [d for d, n in zip(site.batch_dims, site.shape) if d.startswith(f"{site.name}_dim_") and n > 1]
        if len(site.batch_dims) > nesting or loose:
            raise ValueError(
                f"parallel=True needs every batch dim of site {site.name!r} in a plate (found {site.batch_dims}); "
                "declare it with pyro.plate, move it to the event with .to_event(), or use parallel=False"
            )


def _posterior_parallel(model, guide, samples, keys, sites, nesting, groups, args, kwargs, log_likelihood, predictive):
    """All draws in one vectorized pass: guide and model run under ``pyro.plate("_num_draws", S)``."""
    _check_vectorizable(sites, nesting)
    num = len(keys)
    latents = {n: s for n, s in sites.items() if not s.observed and not s.deterministic}
    with torch.no_grad(), pyro.plate("_num_draws", num, dim=-(nesting + 1)):
        if guide is not None:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            values = {n: site["value"] for n, site in _sample_sites(guide_trace) if not site["is_observed"]}
            _check_values(
                {n: _draw_major(v, num, sites[n], nesting)[0] if n in latents else v[0] for n, v in values.items()},
                sites,
                "the guide",
            )
            log_q = _log_density(guide_trace, num, nesting)
        else:
            values = {
                n: v.reshape((num,) + (1,) * (nesting - len(sites[n].batch_dims)) + sites[n].shape)
                for n, v in samples.items()
            }
            log_q = None
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
        _record(groups, keys, trace, _log_density(trace, num, nesting), log_q, sites, nesting, log_likelihood)
        if predictive:
            fresh = poutine.trace(poutine.condition(uncondition_data(model), data=values))
            trace = fresh.get_trace(*args, **kwargs)
            for name, site in sites.items():
                if site.observed:
                    value = _draw_major(trace.nodes[name]["value"], num, site, nesting)
                    groups["posterior_predictive"].add_draws(keys, name, value)


def _log_likelihood(data, var_name: str | None):
    """The pointwise log-likelihood as an array (draws, points), and a template DataArray with the points' dims."""
    group = data.log_likelihood
    names = list(group.data_vars)
    if var_name is None:
        if len(names) != 1:
            raise ValueError(f"the log_likelihood group has several variables {names}: pick one with var_name")
        var_name = names[0]
    if var_name not in names:
        raise ValueError(f"no log-likelihood variable {var_name!r}; there are {names}")
    array = group[var_name].transpose("chain", "draw", ...)
    template = array.isel(chain=0, draw=0, drop=True)
    return np.asarray(array.values, dtype=np.float64).reshape(-1, template.size), template


def _log_ratio(data) -> np.ndarray | None:
    """log p(θ_s, y) − log q(θ_s) over (chain, draw) flattened, or None when the draws are not from a guide."""
    stats = getattr(data, "sample_stats", None)
    if stats is None or "log_q" not in stats.data_vars or "lp" not in stats.data_vars:
        return None
    log_r = stats["lp"].transpose("chain", "draw") - stats["log_q"].transpose("chain", "draw")
    return np.asarray(log_r.values, dtype=np.float64).reshape(-1)


def guide_pareto_k(data) -> float:
    """Pareto :math:`\\hat k` of the importance ratios :math:`p(\\theta_s, y)/q(\\theta_s)` of guide draws.

    Below 0.5 the guide is close to the posterior; 0.5-0.7 usable with care; above 0.7 the guide is off and
    importance-weighted quantities (including :func:`loo`) are unreliable (Yao et al. 2018). The statistic of
    ``pyro.infer.importance.psis_diagnostic``, computed from the draws already in ``data`` with ArviZ's PSIS (whose
    k̂ is regularized towards 0.5 for small samples, so the two differ a little).
    """
    log_r = _log_ratio(data)
    if log_r is None:
        raise ValueError("data has no sample_stats.lp and sample_stats.log_q: convert from a guide")
    return float(psislw(log_r)[1])


def loo(data, var_name: str | None = None, *, scale: str = "log", reweight: bool = True):
    """PSIS-LOO that is valid for draws from a variational guide (ELPDData for ``az.compare``, pointwise).

    For guide draws (``sample_stats.log_q`` present) and ``reweight=True``, the importance ratios of each left-out
    point are :math:`r_s / p(y_i \\mid \\theta_s)` with :math:`\\log r_s` = ``lp − log_q`` (module docstring),
    Pareto-smoothed with ArviZ's PSIS; ``p_loo`` uses the reweighted in-sample density. Without ``log_q`` (MCMC or
    given samples) or with ``reweight=False`` this is ``az.loo(data, pointwise=True)``.
    """
    if scale not in ("log", "negative_log", "deviance"):
        raise ValueError(f"scale must be 'log', 'negative_log' or 'deviance', got {scale!r}")
    log_r = _log_ratio(data) if reweight else None
    if log_r is None:
        if ARVIZ_1:
            if scale != "log":
                raise ValueError("under ArviZ >= 1 loo() without a guide is az.loo, which has no scale argument")
            return az.loo(data, pointwise=True, var_name=var_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return az.loo(data, var_name=var_name, pointwise=True, scale=scale)
    ll, template = _log_likelihood(data, var_name)  # (S, n)
    if not np.isfinite(ll).all() or not np.isfinite(log_r).all():
        raise ValueError("log-likelihood or log-ratio values are not finite; drop draws with zero density first")
    from scipy.special import logsumexp

    log_w, pareto_k = psislw(log_r[None, :] - ll.T)  # (n, S): the ratios of each left-out point
    elpd_i = logsumexp(ll.T + log_w, axis=-1)
    lppd = logsumexp(ll.T + psislw(log_r)[0], axis=-1).sum()
    n_samples = ll.shape[0]
    good_k = min(1 - 1 / np.log10(n_samples), 0.7)
    elpd_i = template.copy(data=elpd_i.reshape(template.shape))
    pareto_k = template.copy(data=pareto_k.reshape(template.shape))
    return elpd_data(elpd_i, pareto_k, float(lppd - elpd_i.values.sum()), n_samples, scale, good_k)


def heldout_elpd(
    log_likelihood: LogLikelihoodEstimate | Tensor | np.ndarray, *, dim: str | None = None, scale: str = "log"
):
    """Per-datum log-likelihoods on held-out data as an ``ELPDData`` that ``az.compare`` accepts.

    The ELPD of a model with fitted (point) weights on held-out points is :math:`\\sum_i \\log p(x_i)`, estimated
    here from per-datum values (e.g. importance-sampled, :func:`dgm_ppl.evaluation.log_likelihood`). Its standard
    error is :math:`\\sqrt{N \\operatorname{Var}_i \\log p(x_i)}`; ``az.compare`` computes the difference of two models
    and its SE from the paired per-datum values, as for LOO. The values are stored in the LOO fields (``elpd_loo``,
    ``loo_i``) with ``p_loo`` = 0 because ``az.compare`` reads those; they are held-out, not leave-one-out. A
    :class:`~dgm_ppl.evaluation.LogLikelihoodEstimate` with ``pareto_k`` also fills ``pareto_k`` (the importance
    sampler's k̂ per datum), so ``az.plot_khat`` and the warning flag work.
    """
    if scale not in ("log", "negative_log", "deviance"):
        raise ValueError(f"scale must be 'log', 'negative_log' or 'deviance', got {scale!r}")
    import xarray as xr

    pareto_k, n_samples = None, 1
    if isinstance(log_likelihood, LogLikelihoodEstimate):
        dim = dim or log_likelihood.plate
        pareto_k, n_samples = log_likelihood.pareto_k, log_likelihood.num_samples
        log_likelihood = log_likelihood.log_p
    values = np.asarray(log_likelihood.detach().cpu() if isinstance(log_likelihood, Tensor) else log_likelihood)
    values = values.astype(np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"need a 1-D array of at least 2 per-datum log-likelihoods, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("per-datum log-likelihoods must be finite")
    dim = dim or "datum"
    elpd_i = xr.DataArray(values, dims=[dim], coords={dim: np.arange(values.size)})
    if pareto_k is not None:
        pareto_k = xr.DataArray(_numpy(pareto_k).astype(np.float64), dims=[dim], coords=elpd_i.coords)
    return elpd_data(elpd_i, pareto_k, 0.0, n_samples, scale, 0.7)
