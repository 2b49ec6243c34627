r"""Amortized guides for discrete local latents: an encoder gives the logits of each datum's posterior.

.. math::

    q_\phi(y_i \mid x_i) = \mathrm{Categorical}\big(\mathrm{softmax}(W h_i + b)\big), \qquad h_i = \mathrm{enc}(x_i),

with the same family as the model's site: ``Categorical`` (values ``0..C-1``), ``OneHotCategorical`` (one-hot vectors)
or ``Bernoulli`` (``sigmoid`` of one logit per event element). The guide works with every ELBO of Pyro:

- ``TraceEnum_ELBO`` with ``enumerate="parallel"``: the guide's site is enumerated, so the expectation over y is a sum
  over its C values weighted by :math:`q(y \mid x)` (no score-function noise);
- ``Trace_ELBO`` and ``TraceGraph_ELBO``: y is sampled and its gradient comes from the score function
  (``TraceGraph_ELBO`` with only the downstream costs, and baselines if asked).

**Semi-supervised data.** When the model observes the site in a call (``pyro.sample("y", ..., obs=ys)`` with labels
given), the guide does not sample it: it finds out by running the model, hidden from the enclosing inference, up to the
site (the cost of the model's part before that site). In an :class:`~dgm_ppl.guides.AmortizedGuideList` the observed
value is passed on to the later parts, so ``q(z | x, y)`` encodes the label when there is one and the sampled (or
enumerated) y otherwise: Kingma et al.'s (2014) M2 model. The classifier :math:`q(y \mid x)` is
:meth:`~dgm_ppl.guides.AmortizedGuide.posterior`, which also serves M2's auxiliary classification loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from .amortized import AmortizedGuide

__all__ = ["AmortizedCategorical"]

_FAMILIES = ("categorical", "one_hot", "bernoulli")
_ENUMERATE = (None, "parallel", "sequential")


def _unwrap(fn) -> dist.TorchDistribution:
    """The distribution under Independent, Expanded and Masked wrappers."""
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn


class AmortizedCategorical(AmortizedGuide):
    r"""Amortized guide for discrete local latents: Categorical, OneHotCategorical or Bernoulli sites, with logits from
    an affine head on the encoder's features (started near 0: q starts near uniform).

    Example (the M2 guide :math:`q(y \mid x)\, q(z \mid x, y)`)::

        guide = AmortizedGuideList(model)
        guide.append(AmortizedCategorical(model, encoder_y, site="y", enumerate="parallel"))
        guide.append(AmortizedNormal(model, ConcatEncoder(net), site="z", encoder_args=("x", "y")))
        svi = SVI(model, guide, Adam({"lr": 1e-3}), TraceEnum_ELBO(max_plate_nesting=1))

    :param callable model: the Pyro model; its first argument is the data batch.
    :param nn.Module encoder: network from the encoder's inputs to features of shape (B, F).
    :param site: the discrete local latent site(s) to guide.
    :type site: str or Sequence[str]
    :param str enumerate: ``"parallel"`` or ``"sequential"`` marks the guide's sites for enumeration by
        ``TraceEnum_ELBO`` (``infer={"enumerate": ...}``); None (default) samples them.
    :param kwargs: ``encoder_args``, ``fallback``, ``create_plates``: as :class:`~dgm_ppl.guides.AmortizedGuide`.
    :raises ValueError: for a bad ``enumerate``; at the first call, for a site that is not a supported discrete one.
    """

    _may_be_observed = True

    def __init__(
        self,
        model,
        encoder: nn.Module,
        site: str | Sequence[str] = "y",
        *,
        enumerate: str | None = None,
        **kwargs,
    ):
        if enumerate not in _ENUMERATE:
            raise ValueError(f"enumerate must be one of {_ENUMERATE}, got {enumerate!r}")
        for option in ("init_scale", "loc_init", "refine_steps", "refine_lr", "refine_backprop"):
            if option in kwargs:
                raise TypeError(f"AmortizedCategorical has no option {option!r} (continuous guides only)")
        super().__init__(model, encoder, site, **kwargs)
        self.enumerate = enumerate
        self._families: dict[str, str] = {}
        self._num_logits: dict[str, int] = {}

    def _check_site(self, name: str, site: dict) -> None:
        fn = _unwrap(site["fn"])
        if isinstance(fn, torch.distributions.OneHotCategorical):
            family, size = "one_hot", fn.event_shape[-1]
        elif isinstance(fn, torch.distributions.Categorical):
            family, size = "categorical", fn.logits.shape[-1]
        elif isinstance(fn, torch.distributions.Bernoulli):
            family, size = "bernoulli", 1
        else:
            raise ValueError(
                f"site {name!r} has a {type(fn).__name__} distribution: AmortizedCategorical guides Categorical, "
                "OneHotCategorical and Bernoulli sites (continuous ones: AmortizedNormal and the other guides)"
            )
        event_shape = tuple(site["fn"].event_shape)
        if family == "bernoulli":
            size = int(torch.Size(event_shape).numel())
            if event_shape and self.enumerate is not None:
                raise ValueError(
                    f"site {name!r} is a Bernoulli with event shape {event_shape}: enumeration needs scalar events "
                    "(sample it, or declare its elements in a plate)"
                )
        self._families[name], self._shapes[name] = family, event_shape
        self._num_logits[name] = int(size)

    def _build(self, features: int) -> None:
        self.logits = nn.ModuleDict({n: nn.Linear(features, self._num_logits[n]) for n in self.sites})
        with torch.no_grad():
            for n in self.sites:
                self.logits[n].weight.mul_(0.1)
                self.logits[n].bias.zero_()

    def local_parameters(self, name: str, h: Tensor) -> dict[str, Tensor]:
        return {"logits": self.logits[name](h)}

    def distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        """q(y_i | x_i) of one site, batch shape (B,), in the model's family.

        :param str name: the site.
        :param Tensor h: the encoder's features, ``(..., B, F)``.
        :param dict local: ``{"logits": ...}`` (default: the head's output at h).
        :returns: the guide's distribution of the site.
        """
        logits = (self.local_parameters(name, h) if local is None else local)["logits"]
        family = self._families[name]
        if family == "one_hot":
            return dist.OneHotCategorical(logits=logits)
        if family == "categorical":
            return dist.Categorical(logits=logits)
        shape = self._shapes[name]
        if not shape:
            return dist.Bernoulli(logits=logits.squeeze(-1))
        return dist.Bernoulli(logits=logits.reshape(logits.shape[:-1] + shape)).to_event(len(shape))

    def _infer(self, name: str) -> dict:
        return {} if self.enumerate is None else {"enumerate": self.enumerate}
