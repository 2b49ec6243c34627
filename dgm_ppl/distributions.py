r"""Distributions with cheap validation: Pyro's own, whose checks cost one reduction each.

With Pyro's validation on (``pyro.enable_validation()``, Pyro's default), torch checks every distribution's
parameters when it is built and every value it scores, elementwise: for a Bernoulli decoder on a batch of images that
is a Boolean tensor of the batch's size for the logits (:math:`\ell = \ell`, "not NaN") and two more for the value
(:math:`x = 0 \lor x = 1`), each a pass over the batch and a host sync. :class:`Bernoulli` makes the same checks in one
reduction each:

- logits: :math:`\sum \ell` is NaN iff some :math:`\ell` is NaN or both infinities occur (then torch's elementwise
  check decides);
- probabilities: :math:`0 \le \min p` and :math:`\max p \le 1` (one ``aminmax``; NaN fails both);
- values: :math:`\sum |x - x^2| = 0` iff every :math:`x \in \{0, 1\}` (:func:`check_binary`: NaN and
  :math:`\pm\infty` give NaN).

When a check fails, torch's own check runs and raises its usual ``ValueError``, so the errors are Pyro's. With
validation off nothing is checked, as in Pyro.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Size, Tensor
from torch.distributions import Distribution

from ._data import check_binary

__all__ = ["Bernoulli"]


def _broadcasts(shape: Size, batch_shape: Size) -> bool:
    try:
        torch.broadcast_shapes(shape, batch_shape)
    except RuntimeError:
        return False
    return True


class Bernoulli(dist.Bernoulli):
    """``pyro.distributions.Bernoulli``, with the same checks and errors, made in one reduction each (see the
    module's notes).

    :param probs: the probability of 1 (or ``logits``, its log-odds; exactly one of the two).
    :param logits: the log-odds of 1.
    :param validate_args: as torch's (default: Pyro's validation setting).
    """

    def __init__(self, probs: Tensor | None = None, logits: Tensor | None = None, validate_args: bool | None = None):
        validate = Distribution._validate_args if validate_args is None else validate_args
        super().__init__(probs, logits, validate_args=False)
        if validate:
            if probs is not None:
                low, high = torch.aminmax(self.probs.detach())
                ok = bool((low >= 0) & (high <= 1))
            else:
                ok = not bool(torch.isnan(self.logits.detach().sum()))
            if not ok:  # torch's elementwise check: its error (or none, for logits with both infinities)
                dist.Bernoulli(probs, logits, validate_args=True)
        self._validate_args = validate

    def expand(self, batch_shape, _instance=None) -> Bernoulli:
        """This distribution with its batch shape broadcast to ``batch_shape`` (a :class:`Bernoulli`, with the
        same validation setting)."""
        return super().expand(batch_shape, _instance if _instance is not None else type(self).__new__(type(self)))

    def _validate_sample(self, value: Tensor) -> None:
        if isinstance(value, Tensor) and _broadcasts(value.shape, self._batch_shape) and check_binary(value):
            return
        super()._validate_sample(value)  # torch's checks: its error
