r"""Posterior-collapse diagnostics for amortized latent-variable models.

- KL per latent dimension, :math:`\mathbb E_x\, \mathrm{KL}(q(z_j \mid x) \,\|\, p(z_j))` in closed form for
  factorized priors and factorized or full-rank Gaussian guides (through the marginals
  :math:`q(z_j \mid x) = N(\mu_j, \Sigma_{jj})`): a collapsed dimension has KL ≈ 0 (its posterior is the prior
  whatever x is).
- Active units (Burda et al. 2016): dimension j is active when :math:`A_j = \mathrm{Var}_x\, \mathbb E_{q}[z_j \mid x]`
  exceeds a threshold (0.01): its posterior mean moves with the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from ..infer.objectives import _per_dimension_kl, _traces

__all__ = ["kl_per_dimension", "active_units", "ActiveUnits"]


def _site(trace, site: str, role: str) -> dict:
    node = trace.nodes.get(site)
    if node is None or node["type"] != "sample" or node["is_observed"]:
        raise ValueError(f"the {role} has no latent sample site {site!r}")
    return node


def kl_per_dimension(model, guide, *args, site: str = "z", **kwargs) -> Tensor:
    """Closed-form KL(q(z_j | x_i) || p(z_j)) averaged over the data points of the batch, shape (D,) (one value per
    coordinate of the site's event). ``model(*args, **kwargs)`` and ``guide`` as for SVI, on the data to diagnose."""
    with torch.no_grad():
        model_trace, guide_trace = _traces(model, guide, args, kwargs)
        q_site = _site(guide_trace, site, "guide")
        if isinstance(q_site["fn"], dist.MultivariateNormal):  # its marginals
            q = q_site["fn"]
            marginals = dist.Normal(q.loc, q.variance.sqrt()).to_event(1)
            q_site = {**q_site, "fn": marginals}
        kl = _per_dimension_kl(q_site, _site(model_trace, site, "model"))
        event = q_site["fn"].event_dim
        kl = kl.reshape(-1, *kl.shape[kl.dim() - event :]) if event else kl.reshape(-1, 1)
        return kl.mean(0).reshape(-1)


@dataclass
class ActiveUnits:
    """``count`` active dimensions out of ``variances.numel()``; ``variances[j]`` = Var_x E_q[z_j | x]."""

    count: int
    variances: Tensor
    threshold: float


def active_units(guide, *args, site: str = "z", threshold: float = 0.01, num_samples: int = 100, **kwargs):
    """Active units of a local latent site: Var over the batch of the posterior mean E_q[z_j | x_i], with the mean
    in closed form when the guide's distribution has one, else averaged over ``num_samples`` draws."""
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        node = _site(trace, site, "guide")
        try:
            mean = node["fn"].mean
        except NotImplementedError:  # e.g. a flow: Monte Carlo
            draws = []
            for _ in range(num_samples):
                draws.append(poutine.trace(guide).get_trace(*args, **kwargs).nodes[site]["value"])
            mean = torch.stack(draws).mean(0)
        event = node["fn"].event_dim
        mean = mean.reshape(-1, *mean.shape[mean.dim() - event :]) if event else mean.reshape(-1, 1)
        variances = mean.var(0).reshape(-1)
    return ActiveUnits(int((variances > threshold).sum()), variances, threshold)
