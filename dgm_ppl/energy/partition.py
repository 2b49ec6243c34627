r"""Partition functions of RBMs: exact enumeration and annealed importance sampling.

AIS (Neal 2001; Salakhutdinov & Murray 2008) runs :math:`M` chains along
:math:`0 = \beta_0 < \dots < \beta_K = 1` from the base model :math:`p_0` (exactly sampled, with known
:math:`Z_0`) to the RBM, with importance weights

.. math::

    \log w^{(m)} = \sum_{k=1}^{K} \log p^*_{\beta_k}(v_{k-1}^{(m)}) - \log p^*_{\beta_{k-1}}(v_{k-1}^{(m)}),

where :math:`v_k` is drawn by one Gibbs sweep that leaves :math:`p_{\beta_k}` invariant. Then
:math:`\hat Z = Z_0 \frac1M \sum_m w^{(m)}` is unbiased for :math:`Z`, so :math:`\log \hat Z`
tends to underestimate :math:`\log Z` (a stochastic lower bound on the log partition function, which
makes the estimated log-likelihood optimistic). Reverse AIS runs the same path from
:math:`\beta = 1` (chains started at approximate model samples) back to 0, estimating
:math:`Z_0/Z`; it errs the other way, so the two bracket the truth.

The functions here use a model only through :class:`~dgm_ppl.energy.protocol.EnergyModel`: the
model's :meth:`~dgm_ppl.energy.protocol.EnergyModel.enumeration` says which units exact
enumeration visits, its :meth:`~dgm_ppl.energy.protocol.EnergyModel.annealing_path` which states AIS
runs over (the visible units of an RBM; the odd layers of a DBM, whose even layers are summed out)
and how they move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._data import as_data_tensor
from ._ops import binary_states, full_precision
from .protocol import AnnealingPath, EnergyModel

__all__ = [
    "AISResult",
    "ais_schedule",
    "exact_log_partition",
    "ais_log_partition",
    "reverse_ais_log_partition",
    "average_log_likelihood",
]


@dataclass
class AISResult:
    """An AIS estimate of :math:`\\log Z`.

    ``stderr`` is the delta-method standard error of :math:`\\log \\hat Z`,
    :math:`\\operatorname{sd}(w) / (\\sqrt M\\, \\bar w)`.
    """

    log_z: float
    stderr: float
    log_weights: Tensor
    log_z_base: float
    betas: Tensor
    reverse: bool = False

    @property
    def ess(self) -> float:
        """Effective sample size of the importance weights."""
        lw = self.log_weights
        return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))

    def interval(self, num_std: float = 3.0) -> tuple[float, float]:
        r""":math:`\log(\hat Z \pm k\hat\sigma_{\hat Z})` as in Salakhutdinov & Murray (the lower end
        is ``-inf`` when the band reaches zero)."""
        lo = 1 - num_std * self.stderr
        return (self.log_z + math.log(lo) if lo > 0 else -math.inf, self.log_z + math.log1p(num_std * self.stderr))

    def __float__(self) -> float:
        return self.log_z


def ais_schedule(num_betas: int = 14500, dtype: torch.dtype = torch.float64) -> Tensor:
    """The Salakhutdinov & Murray (2008) schedule: uniform steps on [0, 0.5], [0.5, 0.9] and [0.9, 1]
    holding 500/14500, 4000/14500 and 10000/14500 of the ``num_betas`` intermediate distributions.
    Returns ``num_betas + 1`` values from 0 to 1."""
    if num_betas < 3:
        raise ValueError(f"num_betas must be at least 3, got {num_betas}")
    n1 = max(1, round(num_betas * 500 / 14500))
    n2 = max(1, round(num_betas * 4000 / 14500))
    n3 = num_betas - n1 - n2
    return torch.cat(
        [
            torch.linspace(0.0, 0.5, n1 + 1, dtype=dtype)[:-1],
            torch.linspace(0.5, 0.9, n2 + 1, dtype=dtype)[:-1],
            torch.linspace(0.9, 1.0, n3 + 1, dtype=dtype),
        ]
    )


def _require(model, member: str, what: str) -> None:
    """Raise ``TypeError`` unless ``model`` has the protocol's method ``member``, saying where its log Z is."""
    if not callable(getattr(model, member, None)):
        raise TypeError(f"{what} takes an EnergyModel; {type(model).__name__} {_partition_hint(model)}")


def _partition_hint(model) -> str:
    """Where the partition function of a model that is not itself an :class:`EnergyModel` is."""
    if hasattr(model, "joint"):
        return "is a classifier whose joint p(x, y) is the energy model: exact_log_partition(model.joint)"
    if hasattr(model, "rbms"):
        return "is a stack whose top RBM has the partition function: exact_log_partition(model.rbms[-1])"
    if callable(getattr(model, "exact_log_partition", None)):
        return "has one partition function per input (its biases depend on it): model.exact_log_partition(...)"
    return "has no enumeration()"


@full_precision
def exact_log_partition(
    model: EnergyModel, *, max_units: int = 20, chunk_size: int = 2**15, record: bool = True
) -> Tensor:
    r"""Exact :math:`\log Z` by enumerating the units that ``model.enumeration()`` names (for an RBM the
    smaller layer, always the hidden layer for Gaussian visible units; for a
    :class:`~dgm_ppl.energy.DBM` the parity, odd or even layers, with fewer units) and summing the
    others out analytically. Differentiable; the value is stored in ``model.log_z`` when ``record``.

    :param max_units: the most units to enumerate (:math:`2^{n}` states).
    :param chunk_size: states per batch.
    :raises ValueError: when more than ``max_units`` units would be enumerated.
    :raises TypeError: for a model without one partition function to enumerate (a conditional model, a classifier,
        a DBN), with the call that applies to it.
    """
    _require(model, "enumeration", "exact_log_partition")
    plan = model.enumeration()
    n = plan.num_units
    if n > max_units:
        raise ValueError(
            f"exact_log_partition would enumerate 2^{n} {plan.what}; "
            f"the limit is max_units={max_units} (use ais_log_partition for larger models)"
        )
    parts = []
    for start in range(0, 2**n, chunk_size):
        states = binary_states(n, start, min(2**n, start + chunk_size), plan.like)
        part = torch.logsumexp(plan.log_marginal(states), 0)
        parts.append(part if plan.const is None else part + plan.const)
    log_z = torch.logsumexp(torch.stack(parts), 0)
    if record:
        model.log_z = float(log_z.detach())
    return log_z


@torch.no_grad()
def _ais_log_weights(path: AnnealingPath, state: list[Tensor], betas: Tensor, progress: bool, desc: str) -> Tensor:
    r"""The log importance weights of AIS along ``path`` from ``state`` through the schedule ``betas``:
    at each :math:`\beta_k`, add :math:`\log p^*_{\beta_k} - \log p^*_{\beta_{k-1}}` of the current
    state, then move it by a transition that leaves :math:`p_{\beta_k}` invariant."""
    log_w = torch.zeros(state[0].shape[0], dtype=torch.float64, device=state[0].device)
    b_list = betas.tolist()
    for k in tqdm(range(1, len(b_list)), disable=not progress, desc=desc, mininterval=1.0):
        cache = path.prepare(state)
        log_w += (path.log_prob(state, b_list[k], cache) - path.log_prob(state, b_list[k - 1], cache)).double()
        if k < len(b_list) - 1:
            state = path.transition(state, b_list[k], cache)
    return log_w


def _check_runs(m: int, what: str) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(
            f"AIS needs at least 2 independent runs to estimate its standard error and interval, got {what}={m!r}"
        )


def _base(model, data) -> Tensor | None:
    if data is None:
        return None
    return model.base_rate(data if isinstance(data, Tensor) else as_data_tensor(data, "data")).detach()


def _summarize(log_w: Tensor, log_z_base: float, betas: Tensor, reverse: bool) -> AISResult:
    m = log_w.numel()
    _check_runs(m, "the number of samples" if reverse else "num_chains")
    log_mean = float(torch.logsumexp(log_w, 0) - math.log(m))
    w = torch.exp(log_w - log_w.max())
    stderr = float(w.std() / (math.sqrt(m) * w.mean()))
    log_z = log_z_base - log_mean if reverse else log_z_base + log_mean
    return AISResult(log_z, stderr, log_w, log_z_base, betas, reverse)


def _check_finite(log_w: Tensor) -> None:
    if not torch.isfinite(log_w).all():
        raise FloatingPointError("AIS produced non-finite log weights: the model parameters are not finite")


@full_precision
def ais_log_partition(
    model: EnergyModel,
    num_chains: int = 100,
    num_betas: int = 14500,
    data: Tensor | None = None,
    *,
    betas: Tensor | None = None,
    progress: bool = False,
    record: bool = True,
) -> AISResult:
    """Estimate :math:`\\log Z` by AIS with ``num_chains`` independent runs.

    :param data: when given, the base model is the base-rate model fitted to it (its visible
        marginals), as in Salakhutdinov & Murray; otherwise a uniform (Bernoulli) or
        zero-mean (Gaussian) base.
    :param betas: a custom increasing schedule from 0 to 1; default :func:`ais_schedule`.
    :raises ValueError: for ``num_chains < 2`` (no standard error from one run) or a bad schedule.

    For a :class:`~dgm_ppl.energy.DBM`, AIS runs over the odd layers with the even layers summed
    out (Salakhutdinov & Hinton 2009); the base model makes the odd layers uniform.
    """
    _require(model, "annealing_path", "ais_log_partition")
    _check_runs(num_chains, "num_chains")
    if betas is None:
        betas = ais_schedule(num_betas)
    _check_schedule(betas)
    base = _base(model, data)
    log_z_base = float(model.base_log_partition(base))
    path = model.annealing_path(base)
    log_w = _ais_log_weights(path, path.initial_state(num_chains), betas, progress, "AIS")
    _check_finite(log_w)
    result = _summarize(log_w, log_z_base, betas, reverse=False)
    if record:
        model.log_z = result.log_z
    return result


@full_precision
def reverse_ais_log_partition(
    model: EnergyModel,
    samples: Tensor | list[Tensor],
    num_betas: int = 14500,
    data: Tensor | None = None,
    *,
    betas: Tensor | None = None,
    progress: bool = False,
) -> AISResult:
    """Reverse AIS: anneal from the model (``samples``, e.g. persistent-chain states) to the base
    model, estimating :math:`Z_0 / Z`. With exact model samples :math:`\\log \\hat Z` tends to
    overestimate :math:`\\log Z`, the opposite of forward AIS.

    For a :class:`~dgm_ppl.energy.DBM`, ``samples`` are joint states ``[v, h1, ..., hL]`` (e.g.
    ``chains.states()``); the odd layers start the reverse chains."""
    _require(model, "annealing_path", "reverse_ais_log_partition")
    if betas is None:
        betas = ais_schedule(num_betas)
    _check_schedule(betas)
    base = _base(model, data)
    log_z_base = float(model.base_log_partition(base))
    path = model.annealing_path(base)
    log_w = _ais_log_weights(path, path.state_from_samples(samples), betas.flip(0), progress, "reverse AIS")
    _check_finite(log_w)
    return _summarize(log_w, log_z_base, betas, reverse=True)


def _check_schedule(betas: Tensor) -> None:
    if betas.dim() != 1 or len(betas) < 2 or betas[0] != 0 or betas[-1] != 1 or (betas.diff() < 0).any():
        raise ValueError("betas must be a 1-D non-decreasing schedule from exactly 0 to exactly 1")


@full_precision
@torch.no_grad()
def average_log_likelihood(
    model: EnergyModel, data: Tensor, log_z: float | AISResult | Tensor, batch_size: int = 10000
) -> float:
    r"""The average log-likelihood :math:`\frac1N \sum_n \log p^*(v_n) - \log Z` of ``data``, with
    ``model.unnormalized_log_prob``: exactly :math:`-F(v_n)` for an RBM; for a
    :class:`~dgm_ppl.energy.DBM` the variational lower bound :math:`\frac1N\sum_n \mathcal L(v_n) - \log Z`
    (mean field run to convergence)."""
    data = model.check_data(data, "data")
    total = 0.0
    for i in range(0, data.shape[0], batch_size):
        batch = data[i : i + batch_size]
        total += float(model.unnormalized_log_prob(batch).double().sum())
    return total / data.shape[0] - float(log_z)
