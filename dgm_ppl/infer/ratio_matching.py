r"""Ratio matching for binary data as an SVI loss (Hyvärinen 2007; DL book §18.4).

Score matching needs derivatives in :math:`x`; for binary data ratio matching compares the model's ratios of
probabilities of a state and its one-bit neighbours :math:`\bar x^{(i)}` (bit :math:`i` flipped) with the data's,
which is equivalent (Hyvärinen 2007) to minimizing

.. math::

    J(\theta) = \sum_n w_n \sum_{i=1}^{D} g\Big(\frac{\tilde p(x_n)}{\tilde p(\bar x_n^{(i)})}\Big)^2,
    \qquad g(u) = \frac{1}{1 + u},

in which the partition function cancels. With :math:`r_i = \log\tilde p(\bar x^{(i)}) - \log\tilde p(x)`,
:math:`g = \sigma(r_i)` (:math:`\sigma` the logistic function), so each datum's term is
:math:`\sum_i \sigma(r_i)^2`, computed from :math:`D + 1` evaluations of :math:`\log\tilde p` (for an RBM,
free-energy differences; for a :class:`~dgm_ppl.energy.BoltzmannMachine`, exact sums over its hidden units).
:math:`w_n` is the site's scale (``N/B`` under a subsampled plate) and mask.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from .pseudo_likelihood import PseudoLikelihood, _check_vector

__all__ = ["RatioMatching"]


class RatioMatching(PseudoLikelihood):
    r"""The ratio-matching objective :math:`\sum_n w_n \sum_i \sigma(\log\tilde p(\bar x_n^{(i)}) -
    \log\tilde p(x_n))^2` of binary data as a loss for :class:`pyro.infer.SVI` (see the module's notes).

    The observed site is as for :class:`~dgm_ppl.infer.PseudoLikelihood` (an energy model's distribution, whose
    chains are not run, or any distribution with an unnormalized ``log_prob``; 0/1 vector data).

    :param stochastic: draw one coordinate per datum and scale its term by :math:`D` (unbiased).
    :param site: the observed site (needed only when the model has several).
    :param log_prob: ``log_prob(fn, value)``, the unnormalized log-density (default
        :func:`~dgm_ppl.infer.pseudo_likelihood.log_unnormalized`).

    ``history`` records ``loss`` at each step.
    """

    name = "RatioMatching"

    def terms(self, fn: Distribution, x: Tensor, batch: torch.Size, site: str) -> Tensor:
        """:math:`\\sum_i \\sigma(r_i)^2` per datum, shape ``batch``."""
        _check_vector(self.name, x, batch, site)
        g2 = torch.sigmoid(self.log_ratios(fn, x, batch)).square()
        return x.shape[-1] * g2 if self.stochastic else g2.sum(0)
