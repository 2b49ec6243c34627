r"""Pseudo-likelihood of a binary energy-based model as an SVI loss (Besag 1975; DL book §18.3).

The pseudo-likelihood replaces :math:`\log p(x)` by the sum of the log conditionals of each coordinate given
the others, which need no partition function: with :math:`\bar x^{(i)}` the state :math:`x` with bit :math:`i`
flipped and :math:`\tilde p` the unnormalized density of the visible units,

.. math::

    \log \mathrm{PL}(x) = \sum_{i=1}^{D} \log p(x_i \mid x_{-i})
        = \sum_{i=1}^{D} \log \frac{\tilde p(x)}{\tilde p(x) + \tilde p(\bar x^{(i)})}
        = -\sum_{i=1}^{D} \zeta\big(\log \tilde p(\bar x^{(i)}) - \log \tilde p(x)\big),

(:math:`\zeta` softplus). For an RBM :math:`\log\tilde p = -F` (a difference of free energies); for a
:class:`~dgm_ppl.energy.BoltzmannMachine` without hidden units the difference is the unit's conditional logit
directly, with hidden units its :math:`\log \sum_h e^{-E(v,h)}` (exact enumeration). Maximizing it is consistent
(Besag). The loss is :math:`-\sum_n w_n \log \mathrm{PL}(x_n)`, with :math:`w_n` the site's scale (``N/B`` under a
subsampled plate) and mask. The stochastic variant draws one coordinate :math:`i_n` uniformly per datum and
uses :math:`-D \log p(x_{i_n} \mid x_{n,-i_n})`, an unbiased estimate at :math:`1/D` of the cost.

This module also holds :class:`EnergySiteLoss`, the machinery that :class:`PseudoLikelihood`,
:class:`~dgm_ppl.infer.RatioMatching` and :class:`~dgm_ppl.infer.ScoreMatching` share: find the observed site,
check its data, weight each datum's term by the site's scale and mask, and refuse a non-finite loss
(:class:`~dgm_ppl.infer.DivergenceError`, raised before any gradient is computed).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from .comparison import ComparisonLoss, check_finite, observed_site

__all__ = ["PseudoLikelihood", "EnergySiteLoss", "log_unnormalized", "flip_each"]


def log_unnormalized(fn: Distribution, value: Tensor, loss_name: str = "loss") -> Tensor:
    r"""The unnormalized log-density :math:`\log\tilde p(value)` of a site's distribution, differentiable in the
    model's parameters (plain autograd, and in ``value``).

    For the distribution of an energy model (it has ``model`` and ``params``) this is the model's exact
    ``unnormalized_log_prob`` with the distribution's parameters (:math:`-F(v)` for an RBM,
    :math:`\log\sum_h e^{-E(v,h)}` for a :class:`~dgm_ppl.energy.BoltzmannMachine`); its ``log_prob`` would
    carry the SML surrogate and advance the chains. Any other distribution's ``log_prob`` is used as it is.

    :raises ValueError: for an energy model whose ``unnormalized_log_prob`` is only a bound (a DBM).
    """
    model = getattr(fn, "model", None)
    if model is None or not hasattr(fn, "params"):
        return fn.log_prob(value)
    from ..energy.boltzmann import BoltzmannMachine
    from ..energy.protocol import FreeEnergyModel

    if not isinstance(model, (FreeEnergyModel, BoltzmannMachine)):
        raise ValueError(
            f"{loss_name}: the unnormalized density of a {type(model).__name__} is intractable (its "
            "unnormalized_log_prob is only a bound)"
        )
    return model.unnormalized_log_prob(value, params=fn.params)


def flip_each(x: Tensor) -> Tensor:
    r"""The :math:`D` copies of binary ``x`` (``(..., D)``) with one bit flipped each: shape ``(D, ..., D)``, copy
    :math:`i` having bit :math:`i` flipped."""
    d = x.shape[-1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, *([1] * (x.dim() - 1)), d)
    return x + (1 - 2 * x) * eye


def flip_at(x: Tensor, index: Tensor) -> Tensor:
    """``x`` (``(..., D)``) with bit ``index[...]`` flipped in each row."""
    mask = F.one_hot(index, x.shape[-1]).to(x)
    return x + (1 - 2 * x) * mask


class EnergySiteLoss(ComparisonLoss):
    """Base of the losses on one observed site of an unnormalized model: ``__call__(model, guide, *args,
    **kwargs)`` returns :math:`\\sum_n w_n\\, t(x_n)` with :math:`t` the subclass's per-datum term
    (:meth:`terms`) and :math:`w_n` the site's scale and mask; ``loss`` and ``loss_and_grads`` (from
    :class:`~dgm_ppl.infer.comparison.ComparisonLoss`) make it a loss for :class:`pyro.infer.SVI`.

    :param site: the observed site (needed only when the model has several).
    :param log_prob: ``log_prob(fn, value)`` giving :math:`\\log\\tilde p(value)` of the site's distribution
        ``fn`` with shape ``value.shape[:-event_dim]``; default :func:`log_unnormalized`.
    """

    #: the loss's name in error messages
    name = "EnergySiteLoss"
    #: whether the data must be binary (0/1)
    binary = True

    def __init__(self, *, site: str | None = None, log_prob: Callable[[Distribution, Tensor], Tensor] | None = None):
        self.site = site
        self.log_prob = log_prob
        self.history: dict[str, list[float]] = {"loss": []}

    def log_density(self, fn: Distribution, value: Tensor) -> Tensor:
        r""":math:`\log\tilde p(value)` of the site's distribution ``fn`` (see ``log_prob``)."""
        if self.log_prob is not None:
            return self.log_prob(fn, value)
        return log_unnormalized(fn, value, self.name)

    def terms(self, fn: Distribution, x: Tensor, batch: torch.Size, site: str) -> Tensor:
        """The per-datum terms of the loss at the data ``x`` (shape ``batch + event``), shape ``batch``."""
        raise NotImplementedError

    def _check_data(self, x: Tensor, name: str) -> None:
        if not torch.isfinite(x).all():
            raise ValueError(f"{self.name}: the data at observed site {name!r} contain NaN or inf")
        if self.binary and not bool(((x == 0) | (x == 1)).all()):
            bad = x[(x != 0) & (x != 1)].flatten()[0].item()
            raise ValueError(f"{self.name}: the data at observed site {name!r} must be binary (0/1), got {bad!r}")

    def _check_shape(self, out: Tensor, shape: torch.Size, what: str) -> Tensor:
        if not isinstance(out, Tensor) or out.shape != shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name}: the model's log-density of the {what} has shape {got}, expected {tuple(shape)}"
            )
        return out

    def __call__(self, model: Callable, guide: Callable | None, *args, **kwargs) -> Tensor:
        """The differentiable loss (in the model's parameters) at the data of the observed site.

        :raises ValueError: for data with NaN or inf (or not binary, for a binary objective), and for a site
            whose distribution has no tractable unnormalized density.
        :raises DivergenceError: for a non-finite loss, before any gradient is computed.
        """
        if guide is not None:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model = poutine.replay(model, trace=guide_trace)
        site = observed_site(poutine.trace(model).get_trace(*args, **kwargs), self.site, self.name)
        name, fn, x = site["name"], site["fn"], site["value"]
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x, dtype=torch.get_default_dtype())
        self._check_data(x, name)
        event_dim = getattr(fn, "event_dim", len(getattr(fn, "event_shape", ())))
        batch = x.shape[: x.dim() - event_dim]
        terms = self.terms(fn, x, batch, name)
        mask = site["mask"]
        if mask is not None and mask is not True:
            terms = torch.where(torch.as_tensor(mask, device=terms.device).expand(batch), terms, terms.new_zeros(()))
        loss = (site["scale"] * terms).sum()
        check_finite(self.name, "loss", loss)
        if torch.is_grad_enabled():
            self.history["loss"].append(loss.item())
        return loss


class PseudoLikelihood(EnergySiteLoss):
    r"""The negative log pseudo-likelihood of binary data as a loss for :class:`pyro.infer.SVI` (see the module's
    notes for the math): :math:`\sum_n w_n \sum_i \zeta(\log\tilde p(\bar x_n^{(i)}) - \log\tilde p(x_n))`.

    The observed site's distribution is that of an energy model (``rbm.distribution(chains)``,
    ``bm.distribution(chains)``; its chains are not run) or any distribution over binary vectors whose
    ``log_prob`` is an unnormalized density. The data are vectors (``event_dim`` 1) of 0/1 values.

    :param stochastic: draw one coordinate per datum and scale its term by :math:`D` (stochastic PL) instead
        of summing all :math:`D`.
    :param site: the observed site (needed only when the model has several).
    :param log_prob: ``log_prob(fn, value)``, the unnormalized log-density (default :func:`log_unnormalized`).

    ``history`` records ``loss`` at each step.
    """

    name = "PseudoLikelihood"

    def __init__(
        self,
        *,
        stochastic: bool = False,
        site: str | None = None,
        log_prob: Callable[[Distribution, Tensor], Tensor] | None = None,
    ):
        super().__init__(site=site, log_prob=log_prob)
        self.stochastic = bool(stochastic)

    def log_ratios(self, fn: Distribution, x: Tensor, batch: torch.Size) -> Tensor:
        r""":math:`\log\tilde p(\bar x^{(i)}) - \log\tilde p(x)` for every coordinate, shape ``(D,) + batch``
        (stochastic: one coordinate per datum, shape ``batch``)."""
        lp = self._check_shape(self.log_density(fn, x), batch, "data")
        d = x.shape[-1]
        if self.stochastic:
            index = torch.randint(d, batch, device=x.device)
            flipped = self._check_shape(self.log_density(fn, flip_at(x, index)), batch, "flipped data")
        else:
            flipped = self._check_shape(self.log_density(fn, flip_each(x)), (d,) + batch, "flipped data")
        return flipped - lp

    def terms(self, fn: Distribution, x: Tensor, batch: torch.Size, site: str) -> Tensor:
        """:math:`-\\log \\mathrm{PL}(x_n)` (stochastic: :math:`-D \\log p(x_{i_n} | x_{-i_n})`), shape ``batch``."""
        _check_vector(self.name, x, batch, site)
        r = F.softplus(self.log_ratios(fn, x, batch))
        return x.shape[-1] * r if self.stochastic else r.sum(0)


def _check_vector(loss_name: str, x: Tensor, batch: torch.Size, site: str) -> None:
    if x.dim() - len(batch) != 1:
        raise ValueError(
            f"{loss_name}: observed site {site!r} must have vector events (event_dim 1), got event shape "
            f"{tuple(x.shape[len(batch) :])}"
        )
