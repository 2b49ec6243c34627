r"""Score matching of a continuous unnormalized model as an SVI loss (Hyvärinen 2005; DL book §18.4).

Matching the model's score :math:`\psi(x) = \nabla_x \log\tilde p(x)` to the data's, after an integration by
parts, is minimizing (up to a constant of the data)

.. math::

    J(\theta) = \sum_n w_n \sum_{i=1}^{D} \Big[\tfrac12 \psi_i(x_n)^2 + \partial_i \psi_i(x_n)\Big],
    \qquad \psi_i = \frac{\partial \log\tilde p}{\partial x_i},\quad
    \partial_i\psi_i = \frac{\partial^2 \log\tilde p}{\partial x_i^2},

in which the partition function cancels (:math:`w_n` is the site's scale, ``N/B`` under a subsampled plate, and
mask). For a :class:`~dgm_ppl.energy.GaussianBernoulliRBM`,
:math:`E(v,h) = \sum_i \frac{(v_i - b_i)^2}{2\sigma_i^2} - c^\top h - (v/\sigma)^\top W h`, so that
:math:`\log\tilde p(v) = -F(v) = -\tfrac12\lVert (v-b)/\sigma\rVert^2 + \sum_j \zeta(x_j)`,
:math:`x = c + W^\top (v/\sigma)`, and with :math:`s = \sigma(x)` the hidden probabilities,

.. math::

    \psi_i = -\frac{v_i - b_i}{\sigma_i^2} + \frac{(W s)_i}{\sigma_i},
    \qquad \partial_i\psi_i = -\frac{1}{\sigma_i^2} + \sum_j \frac{W_{ij}^2}{\sigma_i^2}\, s_j (1 - s_j),

both in closed form (one matrix product each, differentiable in all parameters, :math:`\sigma` included). Any
other model's terms are taken by autograd: :math:`\psi` by one backward pass, then each diagonal entry of the
Hessian by one more (:math:`D` in all), with the graph kept for the parameters' gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from .pseudo_likelihood import EnergySiteLoss

__all__ = ["ScoreMatching", "gaussian_rbm_score_matching", "score_matching_terms"]

METHODS = ("auto", "closed_form", "autograd")


def gaussian_rbm_score_matching(params, v: Tensor) -> Tensor:
    r"""The score-matching terms :math:`\sum_i \tfrac12 \psi_i^2 + \partial_i\psi_i` of a Gaussian-Bernoulli RBM in
    closed form (see the module's notes), shape ``v.shape[:-1]``.

    :param params: the RBM's parameters in standard form (``rbm.params()``: ``weight``, ``visible_bias``,
        ``hidden_bias``, ``std``).
    :param v: visible values ``(..., n_visible)``.
    """
    w, b, c, std = params.weight, params.visible_bias, params.hidden_bias, params.std
    v = v.to(w)
    var = std * std
    s = torch.sigmoid((v / std) @ w + c)
    psi = -(v - b) / var + (s @ w.T) / std
    dpsi = ((s * (1 - s)) @ (w * w).T - 1.0) / var
    return (0.5 * psi * psi + dpsi).sum(-1)


def score_matching_terms(log_density: Callable[[Tensor], Tensor], x: Tensor, event_dim: int = 1) -> Tensor:
    r"""The score-matching terms :math:`\sum_i \tfrac12 \psi_i^2 + \partial_i\psi_i` by autograd: one backward pass
    for :math:`\psi`, one per event element for the Hessian's diagonal, all with ``create_graph`` (so that the
    result is differentiable in the parameters).

    :param log_density: maps ``x`` to :math:`\log\tilde p(x)`, shape ``x.shape[:-event_dim]``.
    :param x: the data, shape ``batch + event``.
    :returns: shape ``batch``.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        lp = log_density(x)
        (psi,) = torch.autograd.grad(lp.sum(), x, create_graph=True)
        batch = x.shape[: x.dim() - event_dim]
        flat = psi.reshape(*batch, -1)
        diag = []
        for k in range(flat.shape[-1]):
            (g,) = torch.autograd.grad(flat[..., k].sum(), x, create_graph=True)
            diag.append(g.reshape(*batch, -1)[..., k])
    return (0.5 * flat * flat).sum(-1) + torch.stack(diag, -1).sum(-1)


class ScoreMatching(EnergySiteLoss):
    r"""The score-matching objective :math:`\sum_n w_n \sum_i [\tfrac12 \psi_i(x_n)^2 + \partial_i\psi_i(x_n)]` of
    continuous data as a loss for :class:`pyro.infer.SVI` (see the module's notes for the math).

    The observed site's distribution is that of an energy model with real visible units (a
    :class:`~dgm_ppl.energy.GaussianBernoulliRBM`: ``rbm.distribution(chains)``, whose chains are not run) or any
    distribution whose ``log_prob`` is an unnormalized density, differentiable twice in the value.

    :param method: ``"closed_form"`` (Gaussian-Bernoulli RBMs only), ``"autograd"`` (any model; :math:`D + 1`
        backward passes), or ``"auto"``: the closed form where it applies.
    :param site: the observed site (needed only when the model has several).
    :param log_prob: ``log_prob(fn, value)``, the unnormalized log-density (default
        :func:`~dgm_ppl.infer.pseudo_likelihood.log_unnormalized`); implies ``"autograd"``.

    ``history`` records ``loss`` at each step.
    """

    name = "ScoreMatching"
    binary = False

    def __init__(
        self,
        *,
        method: str = "auto",
        site: str | None = None,
        log_prob: Callable[[Distribution, Tensor], Tensor] | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "closed_form" and log_prob is not None:
            raise ValueError("ScoreMatching: method='closed_form' uses the model's own density; drop log_prob")
        super().__init__(site=site, log_prob=log_prob)
        self.method = method

    def terms(self, fn: Distribution, x: Tensor, batch: torch.Size, site: str) -> Tensor:
        from ..energy.rbm import GaussianBernoulliRBM

        model = getattr(fn, "model", None)
        support = getattr(fn, "support", None)
        if support is not None and support.is_discrete:
            raise ValueError(
                f"ScoreMatching: observed site {site!r} has discrete support (binary data); use RatioMatching or "
                "PseudoLikelihood"
            )
        closed = isinstance(model, GaussianBernoulliRBM) and self.log_prob is None
        if self.method == "closed_form" and not closed:
            raise ValueError(
                f"ScoreMatching: the closed form is for a GaussianBernoulliRBM's distribution, site {site!r} has "
                f"{type(model if model is not None else fn).__name__}; use method='autograd'"
            )
        if closed and self.method != "autograd":
            out = gaussian_rbm_score_matching(fn.params, x)
        else:
            event_dim = x.dim() - len(batch)
            out = score_matching_terms(lambda value: self.log_density(fn, value), x, event_dim)
        return self._check_shape(out, batch, "data")
