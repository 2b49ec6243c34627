r"""Importance-sampled log-likelihood of latent-variable models, one value per datum.

For a model :math:`p_\theta(x, z) = p(z)\,p_\theta(x \mid z)` with local latents in a plate over the data and a guide
:math:`q(z \mid x)` (amortized or not), each datum gets

.. math::

    \log \hat p(x_i) = \log \frac1S \sum_{s=1}^S w_{is}, \qquad
    \log w_{is} = \log p_\theta(x_i, z_{is}) - \log q(z_{is} \mid x_i), \quad z_{is} \sim q(\cdot \mid x_i),

a stochastic lower bound on :math:`\log p(x_i)` in expectation (Jensen) that tightens as S grows; it is the IWAE bound
of Burda et al. (2016) with S samples. The quality of the proposal shows in the effective sample size
:math:`(\sum_s w_{is})^2 / \sum_s w_{is}^2` and in the Pareto :math:`\hat k` of the weights (Vehtari et al. 2024):
above 0.7 the estimate is not to be trusted.

Samples are drawn in vectorized chunks (an outer ``pyro.plate`` over particles, as in ``vectorize_particles``) and the
data is processed in batches, so that thousands of samples for thousands of points fit in memory.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from tqdm.auto import tqdm

from .._data import as_data_tensor

__all__ = ["log_likelihood", "LogLikelihoodEstimate"]


@dataclass
class LogLikelihoodEstimate:
    """Per-datum importance-sampled log-likelihoods.

    :ivar log_p: :math:`\\log \\hat p(x_i)`, shape (N,).
    :ivar ess: effective sample size of each datum's importance weights, shape (N,), in [1, num_samples].
    :ivar pareto_k: Pareto :math:`\\hat k` of each datum's weights, shape (N,), or None if not requested.
    :ivar num_samples: S, the number of importance samples per datum.
    :ivar plate: name of the data plate.
    """

    log_p: Tensor
    ess: Tensor
    pareto_k: Tensor | None
    num_samples: int
    plate: str

    def mean(self) -> float:
        """Average log-likelihood per datum (nats); the negative of the usual NLL figure."""
        return self.log_p.mean().item()


def _check_count(name: str, value, allow_none: bool = False) -> int | None:
    """``value`` as an int, if it is a positive integer (or None when allowed); else a ValueError naming it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _sites(trace) -> dict:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site) and not site["infer"].get("_deterministic")
    }


def _frame_size(site: dict, frame) -> int | None:
    """A plate's size; for Pyro's unsized plates (``pyro.plate("data")``), the extent of its dim at this site."""
    if frame.size is not None and frame.size >= 0:  # unsized plates record size -1
        return frame.size
    shape = site["fn"].batch_shape
    return shape[frame.dim] if len(shape) >= -frame.dim else None


def _data_plate(model_sites: dict, plate: str | None, size: int) -> str:
    observed = [s for s in model_sites.values() if s["is_observed"]]
    if not observed:
        raise ValueError("the model has no observed sites: there is no likelihood to estimate")
    names = None
    for site in observed:
        here = {f.name for f in site["cond_indep_stack"] if f.vectorized and _frame_size(site, f) == size}
        names = here if names is None else names & here
    if plate is not None:
        if plate not in names:
            raise ValueError(
                f"plate {plate!r} does not enclose every observed site with size {size} (the data's first dimension)"
            )
        return plate
    if len(names) != 1:
        found = "no plate" if not names else f"plates {sorted(names)}"
        raise ValueError(
            f"need one plate of size {size} (the data's first dimension) around every observed site; found {found}. "
            "Put the observations in pyro.plate(..., x.shape[0]) or pass plate=NAME"
        )
    return names.pop()


def _data_frames(site: dict, plate: str) -> list:
    """The site's frame of the data plate; a site outside it is a global latent, which has no per-datum weight."""
    frames = [f for f in site["cond_indep_stack"] if f.name == plate]
    if not frames:
        raise ValueError(
            f"site {site['name']!r} is outside the data plate {plate!r}: a per-datum likelihood needs every latent "
            "site to be local (global weights belong in pyro.param or nn modules)"
        )
    return frames


def _per_datum(site: dict, plate: str, num_dims: int) -> Tensor:
    """Unscaled log-density of a site summed over everything but the particle and data-plate dims → (P|1, N|1)."""
    frames = _data_frames(site, plate)
    log_prob = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_prob = torch.where(site["mask"], log_prob, log_prob.new_zeros(()))
    log_prob = log_prob.reshape((1,) * (num_dims - log_prob.dim()) + log_prob.shape)
    data_dim = num_dims + frames[0].dim
    others = [d for d in range(1, num_dims) if d != data_dim]
    return log_prob.sum(others) if others else log_prob


def _plate_nesting(*traces) -> int:
    dims = [
        -f.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    return max(dims, default=0)


def _chunk(args: tuple, kwargs: dict, n: int, index: slice) -> tuple[tuple, dict]:
    """Slice every tensor argument whose first dimension has the data's length."""

    def cut(a):
        return a[index] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n else a

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _log_weights(model: Callable, guide: Callable, args: tuple, kwargs: dict, particles, nesting: int, plate):
    """Log-weights, shape (P or 1, N or 1): P particles in one vectorized pass, or one draw (``particles=None``)."""
    plate_ = nullcontext() if particles is None else pyro.plate("_num_particles", particles, dim=-(nesting + 1))
    with plate_:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    model_sites, guide_sites = _sites(model_trace), _sites(guide_trace)
    for name, site in model_sites.items():
        if not site["is_observed"] and name not in guide_sites:
            raise ValueError(f"the guide does not sample the model's latent site {name!r}")
    num_dims = nesting + 1
    log_w = sum(_per_datum(s, plate, num_dims) for s in model_sites.values())
    for site in guide_sites.values():
        if not site["is_observed"]:
            log_w = log_w - _per_datum(site, plate, num_dims)
    return log_w


def _log_weights_sequential(model, guide, args, kwargs, particles: int, nesting: int, plate) -> Tensor:
    """The same log-weights, one particle at a time: for programs that do not broadcast over a particle plate."""
    return torch.cat([_log_weights(model, guide, args, kwargs, None, nesting, plate) for _ in range(particles)])


def log_likelihood(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    batch_size: int | None = 100,
    particle_batch_size: int = 500,
    plate: str | None = None,
    pareto_k: bool = False,
    progress: bool = False,
    vectorize: bool | None = None,
    **kwargs,
) -> LogLikelihoodEstimate:
    """Importance-sampled :math:`\\log p(x_i)` for every datum, with the guide as proposal.

    :param model: a Pyro model whose first argument is the data x (N, ...), with observations and latents in a plate of
        size N; global weights are parameters (``pyro.module``/``pyro.param``), not sample sites.
    :param guide: a guide with the model's signature, vectorizable over an outer particle plate (use ``pyro.plate`` with
        the same names and dims as the model).
    :param args: the model's arguments. Every tensor argument whose first dimension is N is cut into batches along with
        x (e.g. the labels of a CVAE).
    :param kwargs: the model's keyword arguments, cut into batches in the same way.
    :param num_samples: S, importance samples per datum.
    :param batch_size: data points per pass (None: all at once).
    :param particle_batch_size: samples per vectorized pass; memory grows with ``batch_size * particle_batch_size``.
    :param plate: name of the data plate, if the model has several plates of size N.
    :param pareto_k: also fit the Pareto :math:`\\hat k` of each datum's weights (uses ArviZ's ``psislw``).
    :param progress: show a tqdm bar over data batches.
    :param vectorize: draw the particles in one vectorized pass (True), one at a time (False), or try the vectorized
        pass on the first batch and fall back to one particle at a time, with a warning, if the program does not
        broadcast over the particle plate (None: e.g. Pyro's CVAE example, which indexes with boolean masks).

    Densities are the sites' own ``log_prob`` with masks applied and ``poutine.scale`` ignored, so a KL-annealing
    or subsampling scale in the program does not change the estimate.

    :returns: :class:`LogLikelihoodEstimate` with ``log_p``, ``ess`` and ``pareto_k`` of shape (N,).
    """
    _check_count("num_samples", num_samples)
    _check_count("batch_size", batch_size, allow_none=True)
    _check_count("particle_batch_size", particle_batch_size)
    if args and not isinstance(args[0], Tensor) and isinstance(args[0], np.ndarray):
        args = (as_data_tensor(args[0], "x"), *args[1:])
    if not args or not isinstance(args[0], Tensor) or args[0].dim() == 0:
        raise ValueError("the model's first argument must be the data tensor x of shape (N, ...)")
    x = args[0]
    if not torch.isfinite(x).all():
        raise ValueError("the data contains NaN or inf")
    n = x.shape[0]
    step = n if batch_size is None else batch_size
    with torch.no_grad():
        first_args, first_kwargs = _chunk(args, kwargs, n, slice(0, min(step, n)))
        guide_trace = poutine.trace(guide).get_trace(*first_args, **first_kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*first_args, **first_kwargs)
        nesting = _plate_nesting(guide_trace, model_trace)
        plate = _data_plate(_sites(model_trace), plate, min(step, n))
        for site in [*_sites(model_trace).values(), *_sites(guide_trace).values()]:
            _data_frames(site, plate)
        log_p, ess, khat = [], [], []
        for start in tqdm(range(0, n, step), disable=not progress, desc="log-likelihood", unit="batch"):
            chunk_args, chunk_kwargs = _chunk(args, kwargs, n, slice(start, start + step))
            size = chunk_args[0].shape[0]
            log_w = []
            for done in range(0, num_samples, particle_batch_size):
                particles = min(particle_batch_size, num_samples - done)
                if vectorize is None:  # first pass: find out whether the program broadcasts over particles
                    vectorize, w = _try_vectorized(model, guide, chunk_args, chunk_kwargs, particles, nesting, plate)
                    if w is not None:
                        log_w.append(w.expand(particles, size))
                        continue
                estimate = _log_weights if vectorize else _log_weights_sequential
                w = estimate(model, guide, chunk_args, chunk_kwargs, particles, nesting, plate)
                log_w.append(w.expand(particles, size))
            log_w = torch.cat(log_w).T  # (size, S)
            if torch.isnan(log_w).any():
                raise ValueError("NaN importance weight: the model or guide gives a NaN log-density")
            log_p.append(torch.logsumexp(log_w, -1) - math.log(num_samples))
            ess.append(torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1)))
            if pareto_k:
                khat.append(_pareto_k(log_w))
    return LogLikelihoodEstimate(
        log_p=torch.cat(log_p),
        ess=torch.cat(ess),
        pareto_k=torch.cat(khat) if pareto_k else None,
        num_samples=num_samples,
        plate=plate,
    )


def _try_vectorized(model, guide, args, kwargs, particles: int, nesting: int, plate) -> tuple[bool, Tensor | None]:
    size = args[0].shape[0]
    try:
        w = _log_weights(model, guide, args, kwargs, particles, nesting, plate)
        w.expand(particles, size)
        return True, w
    except (RuntimeError, IndexError, ValueError, TypeError) as e:
        # an error one particle at a time as well is the program's own (or a missing guide site): raise that one
        _log_weights(model, guide, args, kwargs, None, nesting, plate)
        warnings.warn(
            f"the model or guide does not broadcast over a particle plate ({type(e).__name__}: {e}); drawing the "
            "importance samples one at a time, which is slower. Pass vectorize=False to skip the vectorized attempt",
            stacklevel=3,
        )
        return False, None


def _pareto_k(log_w: Tensor) -> Tensor:
    """Pareto k̂ of each row of log-weights (rows: data, columns: samples), via ArviZ's PSIS."""
    from .._arviz_compat import psislw  # imports ArviZ, only when k̂ is asked for

    _, k = psislw(log_w.double().cpu().numpy())
    return torch.as_tensor(k, dtype=log_w.dtype, device=log_w.device).reshape(log_w.shape[0])
