r"""Amortized normalizing-flow guides: a Gaussian from the encoder, pushed through conditional flows.

.. math::

    u \sim N(\mu(h), \mathrm{diag}\,\sigma^2(h)), \qquad z = f_K(\cdots f_1(u; h) \cdots; h), \qquad
    \log q(z \mid x) = \log N(u; \mu, \sigma^2) - \sum_k \log \left|\det \frac{\partial f_k}{\partial u_{k-1}}\right|,

with h = encoder(x) as the context of every step (Rezende & Mohamed 2015; Kingma et al. 2016). The steps are Pyro's
conditional transforms (``pyro.distributions.transforms``):

- ``"planar"``: :math:`u + a\,\tanh(w^\top u + b)` (``conditional_planar``);
- ``"radial"``: :math:`u + \beta (u - u_0) / (\alpha + \|u - u_0\|)` (``conditional_radial``);
- ``"iaf"``: inverse autoregressive, :math:`\mu_j(u_{<j}, h) + \sigma_j(u_{<j}, h)\, u_j`
  (``conditional_affine_autoregressive``);
- ``"affine_coupling"``: RealNVP, half the coordinates scaled and shifted by a network of the other half
  (``conditional_affine_coupling``);
- ``"spline"``: monotone rational-quadratic splines, autoregressive (``conditional_spline_autoregressive``,
  Durkan et al. 2019).

Autoregressive and coupling steps are separated by a reversal of the coordinates. Planar and radial steps have no
closed-form inverse: as in Pyro, their log-density is available for the guide's own samples (cached).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import Tensor, nn

from .amortized import AmortizedNormal

__all__ = ["AmortizedFlow", "FLOWS"]

FLOWS = ("planar", "radial", "iaf", "affine_coupling", "spline")


def _step(flow: str, dim: int, context: int, hidden: list[int]):
    if flow == "planar":
        return T.conditional_planar(dim, context, hidden_dims=hidden)
    if flow == "radial":
        return T.conditional_radial(dim, context, hidden_dims=hidden)
    if flow == "iaf":
        return T.conditional_affine_autoregressive(dim, context, hidden_dims=hidden)
    if flow == "affine_coupling":
        return T.conditional_affine_coupling(dim, context, hidden_dims=hidden)
    return T.conditional_spline_autoregressive(dim, context, hidden_dims=hidden, count_bins=8)


class AmortizedFlow(AmortizedNormal):
    """Amortized flow guide: ``flow`` in ``FLOWS``, ``num_flows`` steps, each conditioned on the encoder's features.

    :param callable model: the Pyro model; its first argument is the data batch.
    :param nn.Module encoder: network from the encoder's inputs to features of shape (B, F).
    :param site: the local latent site(s) to guide.
    :type site: str or Sequence[str]
    :param str flow: ``"planar"``, ``"radial"``, ``"iaf"``, ``"affine_coupling"`` or ``"spline"``.
    :param int num_flows: number of steps.
    :param hidden_dims: hidden layers of each step's network (default: one layer of 2 * (latent + feature) units).
    :type hidden_dims: Sequence[int] or None
    :param kwargs: ``scale_transform`` (the base Gaussian's, as :class:`~dgm_ppl.guides.AmortizedNormal`),
        ``init_scale``, ``loc_init``, ``encoder_args``, ``fallback``, ``refine_steps``, ``refine_lr``,
        ``refine_backprop``, ``create_plates``: as :class:`~dgm_ppl.guides.AmortizedGuide`.
    :raises ValueError: for an unknown flow or a bad number of steps; at the first call, for a latent of fewer than
        2 dimensions with an autoregressive or coupling flow.
    """

    def __init__(
        self,
        model,
        encoder: nn.Module,
        site: str | Sequence[str] = "z",
        *,
        flow: str = "iaf",
        num_flows: int = 2,
        hidden_dims: Sequence[int] | None = None,
        **kwargs,
    ):
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 1:
            raise ValueError(f"num_flows must be a positive integer, got {num_flows!r}")
        super().__init__(model, encoder, site, **kwargs)
        self.flow, self.num_flows = flow, num_flows
        self.hidden_dims = None if hidden_dims is None else list(hidden_dims)

    def _build(self, features: int) -> None:
        sizes = {n: self._size(n) for n in self.sites}
        if self.flow in ("iaf", "affine_coupling", "spline") and min(sizes.values()) < 2:
            raise ValueError(f"flow {self.flow!r} needs a latent of at least 2 dimensions, got sizes {sizes}")
        super()._build(features)  # the base Gaussian's heads
        steps, self._layers = {}, {}
        for n, d in sizes.items():
            hidden = self.hidden_dims or [2 * (d + features)]
            layers = []
            for k in range(self.num_flows):
                if k and self.flow in ("iaf", "affine_coupling", "spline"):
                    layers.append(T.Permute(torch.arange(d - 1, -1, -1)))
                layers.append(_step(self.flow, d, features, hidden))
            self._layers[n] = layers
            steps[n] = nn.ModuleList([layer for layer in layers if isinstance(layer, nn.Module)])
        self.steps = nn.ModuleDict(steps)  # the trainable steps (permutations have no parameters)

    def base_distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        base = super().base_distribution(name, h, local)  # the Gaussian's λ may be refined; the flow steps are not
        self.steps  # noqa: B018  (PyroModule registers the steps' parameters as Pyro params on access)
        transforms = [t.condition(h) if hasattr(t, "condition") else t for t in self._layers[name]]
        return dist.TransformedDistribution(base, transforms)
