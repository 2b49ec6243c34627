r"""Amortized guides for local latents: an encoder network maps each datum to its own posterior approximation.

For a model with local latents :math:`z_i` in a plate over the data, the guide

.. math::

    q_\phi(z \mid x) = \prod_i q(z_i;\ \lambda_\phi(x_i)), \qquad h_i = \mathrm{encoder}(x_i)

shares one network over all data points (amortization, Kingma & Welling 2014; Rezende et al. 2014), so a new point
costs one forward pass instead of an optimization. ``AmortizedNormal`` is the diagonal Gaussian
:math:`N(\mu(h), \mathrm{diag}\,\sigma^2(h))`, ``AmortizedMultivariateNormal`` the full-rank
:math:`N(\mu(h), L(h) L(h)^\top)` with a Cholesky factor L whose diagonal is softplus-positive. Both are Pyro
autoguides (:class:`~pyro.infer.autoguide.AutoGuide`), callable with the model's signature, and they compose with other
autoguides for the global latents in an :class:`~pyro.infer.autoguide.AutoGuideList`.

Semi-amortized inference (Kim et al. 2018; Krishnan et al. 2018): with ``refine_steps=K`` the encoder's output
:math:`\lambda_0 = \lambda_\phi(x)` (the local parameters: means and scales, or the Cholesky factor) is only the start;
K gradient steps on the ELBO of the batch refine it per datum before the guide samples,

.. math::

    \lambda_{k+1} = \lambda_k + \eta\, \mathrm{Adam}\big(\nabla_\lambda \mathrm{ELBO}(x_i; \lambda_k)\big),

with Adam's elementwise normalization (one step size η suits every datum and curvature). This closes part of the
amortization gap (the encoder's error on top of the family's). By default the update is
first-order: the encoder gets the gradient at :math:`\lambda_K` as if :math:`\lambda_K = \lambda_0 + \text{const}`;
``refine_backprop=True`` differentiates through the K steps (SA-VAE; second order, costlier).

Conventions: the data batch x is the model's first argument (the encoder sees it, or the first ``encoder_args``
arguments, e.g. ``(x, y)`` for a conditional VAE), with the data plate over its first dimension (the plate
may be subsampled, ``pyro.plate("data", N, subsample=x)``); the guide finds the plate, the event shape and the support
of each site from one run of the model; a site whose support is not the real line is reached through
``biject_to(support)``, as in Pyro's autoguides.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoGuide
from torch import Tensor, nn
from torch.distributions import biject_to, constraints

__all__ = ["AmortizedGuide", "AmortizedNormal", "AmortizedMultivariateNormal"]


_BETAS = (0.9, 0.999)  # Adam's, for the refinement steps


def _inverse_softplus(y: float) -> float:
    return y + torch.log(-torch.expm1(torch.tensor(-y))).item()


class AmortizedGuide(AutoGuide):
    """Base class: finds the local sites' plate, shapes and supports, runs the encoder, samples each site.

    Subclasses implement :meth:`_build` (create the heads, given the feature size), :meth:`local_parameters` (the
    per-datum parameters λ(h) of one site, a dict of tensors with leading dim B) and :meth:`base_distribution` (the
    distribution of the site's unconstrained latent given h and λ, batch shape ``(B,)`` and one event dim).

    Args:
        model: the Pyro model; its first argument is the data batch.
        encoder: network from the model's first ``encoder_args`` arguments to features of shape (B, F).
        site: the local latent site(s) to guide.
        init_scale: the guide's initial standard deviation.
        encoder_args: how many of the model's leading arguments the encoder takes.
        refine_steps: K > 0 makes the guide semi-amortized (K gradient steps on λ per call; see the module's notes).
        refine_lr: the step size η of the refinement's Adam updates (per datum and coordinate).
        refine_backprop: differentiate through the refinement instead of the first-order update.
        create_plates: as in Pyro's autoguides, ``create_plates(*args, **kwargs)`` returns the data plate for this
            call: pass it when the subsampling changes between calls (without it the plate's full size is the one
            seen at the first call, and only the batch size follows the data).
    """

    def __init__(
        self,
        model,
        encoder: nn.Module,
        site: str | Sequence[str] = "z",
        *,
        init_scale: float = 0.1,
        encoder_args: int = 1,
        refine_steps: int = 0,
        refine_lr: float = 0.05,
        refine_backprop: bool = False,
        create_plates=None,
    ):
        super().__init__(model, create_plates=create_plates)
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
            raise ValueError(f"refine_steps must be a non-negative integer, got {refine_steps!r}")
        if not refine_lr > 0:
            raise ValueError(f"refine_lr must be positive, got {refine_lr}")
        self.refine_steps, self.refine_lr, self.refine_backprop = refine_steps, float(refine_lr), refine_backprop
        if isinstance(encoder_args, bool) or not isinstance(encoder_args, int) or encoder_args < 1:
            raise ValueError(f"encoder_args must be a positive integer, got {encoder_args!r}")
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module mapping the data batch to features, got {type(encoder)}")
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.encoder = encoder  # a PyroModule registers its children's parameters as Pyro params when used
        self.sites = (site,) if isinstance(site, str) else tuple(site)
        if not self.sites:
            raise ValueError("site must name at least one latent site")
        self.init_scale, self.encoder_args = init_scale, encoder_args

    # -- set-up from one run of the model ---------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        if not args or not isinstance(args[0], Tensor) or args[0].dim() == 0:
            raise ValueError("the model's first argument must be the data batch x of shape (B, ...)")
        batch = args[0].shape[0]
        self._frame, self._shapes, self._supports = None, {}, {}
        for name in self.sites:
            site = self.prototype_trace.nodes.get(name)
            if site is None or site["type"] != "sample":
                latent = [n for n, s in self.prototype_trace.iter_stochastic_nodes()]
                raise ValueError(
                    f"the model has no latent sample site {name!r} (observed sites are not guided); its latent sites "
                    f"are {latent}"
                )
            if site["is_observed"]:
                raise ValueError(f"site {name!r} is observed: an amortized guide is for latent sites")
            frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.size == batch]
            if not frames:
                raise ValueError(
                    f"site {name!r} is not in a plate over the data (size {batch}, the first dimension of the model's "
                    "first argument): an amortized guide is for local latents; use an autoguide for global ones"
                )
            frame = frames[0]
            if self._frame is not None and frame.name != self._frame.name:
                raise ValueError(f"sites {self.sites} are in different plates ({self._frame.name!r}, {frame.name!r})")
            self._frame = frame
            fn = site["fn"]
            batch_shape = site["value"].shape[: site["value"].dim() - fn.event_dim]
            other = [s for i, s in enumerate(batch_shape) if i != len(batch_shape) + frame.dim and s != 1]
            if other:
                raise ValueError(
                    f"site {name!r} has batch shape {tuple(batch_shape)}: besides the data plate, its batch dims must "
                    "be 1 (move other dims to the event with .to_event(), or guide nested plates by hand)"
                )
            self._shapes[name] = tuple(fn.event_shape)
            self._supports[name] = fn.support
        if self.refine_steps:
            unguided = [n for n, _ in self.prototype_trace.iter_stochastic_nodes() if n not in self.sites]
            if unguided:
                raise ValueError(
                    f"refine_steps > 0 optimizes the ELBO of this guide alone, so it must guide every latent site; "
                    f"{unguided} are not guided (train global latents without refinement, or list them in site=)"
                )
        features = self._features(args)
        self._build(features.shape[-1])
        self.to(device=features.device, dtype=features.dtype)  # heads and flow steps where the encoder's output is
        self._batch_ndim = -self._frame.dim

    def _features(self, args: tuple) -> Tensor:
        """encoder(x, ...) from the model's first ``encoder_args`` arguments (a CVAE's encoder also sees the label)."""
        if len(args) < self.encoder_args:
            raise ValueError(f"the encoder takes the model's first {self.encoder_args} arguments, got {len(args)}")
        x = args[0]
        h = self.encoder(*args[: self.encoder_args])
        if not isinstance(h, Tensor) or h.dim() != 2 or h.shape[0] != x.shape[0]:
            shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(
                f"the encoder must map the data batch {tuple(x.shape)} to features of shape (B, F) with B = "
                f"{x.shape[0]}; it returned {shape}"
            )
        return h

    def _size(self, name: str) -> int:
        return int(torch.Size(self._shapes[name]).numel())

    def _build(self, features: int) -> None:
        raise NotImplementedError

    def _build_loc(self, features: int) -> None:
        """Affine heads for the means, started near 0 (q starts near N(0, init_scale²) for every x)."""
        self.loc = nn.ModuleDict({n: nn.Linear(features, self._size(n)) for n in self.sites})
        with torch.no_grad():
            for n in self.sites:
                self.loc[n].weight.mul_(0.1).clamp_(-1e-2, 1e-2)
                self.loc[n].bias.zero_()

    def local_parameters(self, name: str, h: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def base_distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        raise NotImplementedError

    # -- the guide --------------------------------------------------------------------------------------------
    def _plate(self, batch: int, args, kwargs):
        frame = self._frame
        if self.master is not None or self.create_plates is not None:  # the master's plates, or the user's
            return self._create_plates(*args, **kwargs)[frame.name]
        if frame.full_size is not None and frame.full_size != frame.size:  # the model subsamples this plate
            return pyro.plate(frame.name, frame.full_size, subsample_size=batch, dim=frame.dim)
        return pyro.plate(frame.name, batch, dim=frame.dim)

    def distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        """q(z_i | x_i) of one site, batch shape (B,), on the site's support and event shape (λ = ``local`` if given,
        else the encoder's)."""
        q = self.base_distribution(name, h, local)
        transforms = []
        if self._shapes[name] != (self._size(name),):
            transforms.append(dist.transforms.ReshapeTransform((self._size(name),), self._shapes[name]))
        support = self._supports[name]
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if support is not constraints.real:
            transforms.append(biject_to(self._supports[name]))
        if not transforms:
            return q
        if isinstance(q, dist.TransformedDistribution):  # one flat chain of transforms
            return dist.TransformedDistribution(q.base_dist, [*q.transforms, *transforms])
        return dist.TransformedDistribution(q, transforms)

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        x = args[0]
        h = self._features(args)
        # the latent's batch dims: B at the plate's dim, then 1s up to the rightmost batch dim
        h = h.reshape(h.shape[:1] + (1,) * (self._batch_ndim - 1) + h.shape[1:])
        local = {name: self.local_parameters(name, h) for name in self.sites}
        if self.refine_steps:
            local = self._refine(h, local, args, kwargs)
        values = {}
        with self._plate(x.shape[0], args, kwargs):
            for name in self.sites:
                values[name] = pyro.sample(name, self.distribution(name, h, local[name]))
        return values

    def _refine(self, h: Tensor, local: dict, args, kwargs) -> dict:
        """K gradient steps on λ maximizing a one-sample ELBO of the batch, hidden from the enclosing inference."""
        if self.master is not None:
            raise ValueError("refine_steps > 0 is not supported inside an AutoGuideList (it must guide every latent)")
        batch, frame = args[0].shape[0], self._frame
        scale = frame.full_size / batch if frame.full_size is not None and frame.full_size != frame.size else 1.0
        backprop = self.refine_backprop and torch.is_grad_enabled()  # evaluation (no_grad) needs no second order
        h_inner = h if backprop else h.detach()
        start = (
            local if backprop else {n: {k: v.detach().requires_grad_() for k, v in d.items()} for n, d in local.items()}
        )
        current = start

        def refined_guide(*a, **k):
            with self._plate(batch, a, k):
                for name in self.sites:
                    pyro.sample(name, self.distribution(name, h_inner, current[name]))

        elbo, leaves = Trace_ELBO(), [(n, k) for n, d in current.items() for k in d]
        moments = {key: (0.0, 0.0) for key in leaves}
        with torch.enable_grad(), poutine.block():
            for t in range(1, self.refine_steps + 1):
                loss = elbo.differentiable_loss(self.model, refined_guide, *args, **kwargs) / scale
                if not torch.isfinite(loss):
                    raise ValueError(f"semi-amortized refinement: the ELBO became {-loss.item()}; lower refine_lr")
                grads = torch.autograd.grad(loss, [current[n][k] for n, k in leaves], create_graph=backprop)
                current = {n: dict(d) for n, d in current.items()}
                for (n, k), g in zip(leaves, grads):  # Adam, elementwise: per datum and coordinate
                    m, v = moments[n, k]
                    m, v = _BETAS[0] * m + (1 - _BETAS[0]) * g, _BETAS[1] * v + (1 - _BETAS[1]) * g * g
                    moments[n, k] = m, v
                    m_hat, v_hat = m / (1 - _BETAS[0] ** t), v / (1 - _BETAS[1] ** t)
                    current[n][k] = current[n][k] - self.refine_lr * m_hat / (v_hat.sqrt() + 1e-8)
        if backprop:
            return current
        # first order: λ_K = λ_0 + (λ_K - λ_0) with the increment treated as a constant
        return {n: {k: v + (current[n][k] - start[n][k]).detach() for k, v in d.items()} for n, d in local.items()}


class AmortizedNormal(AmortizedGuide):
    r"""Diagonal Gaussian :math:`q(z_i \mid x_i) = N(\mu(h_i), \mathrm{diag}\,\sigma^2(h_i))`, :math:`\sigma` =
    softplus of an affine head (starting near ``init_scale``), on each listed local site.

    Example::

        guide = AmortizedNormal(model, encoder=nn.Sequential(nn.Linear(784, 200), nn.ReLU()), site="z")
        svi = SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
    """

    def _build(self, features: int) -> None:
        self._build_loc(features)
        self.scale = nn.ModuleDict({n: nn.Linear(features, self._size(n)) for n in self.sites})
        with torch.no_grad():
            for n in self.sites:
                self.scale[n].weight.mul_(0.01)
                self.scale[n].bias.fill_(_inverse_softplus(self.init_scale))

    def local_parameters(self, name: str, h: Tensor) -> dict[str, Tensor]:
        return {"loc": self.loc[name](h), "scale": self.scale[name](h)}  # the scale before its softplus

    def base_distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        local = self.local_parameters(name, h) if local is None else local
        return dist.Normal(local["loc"], F.softplus(local["scale"])).to_event(1)


class AmortizedMultivariateNormal(AmortizedGuide):
    r"""Full-rank Gaussian :math:`q(z_i \mid x_i) = N(\mu(h_i), L(h_i) L(h_i)^\top)` with a lower-triangular Cholesky
    factor from an affine head: softplus on the diagonal (starting near ``init_scale``), free below it."""

    def _build(self, features: int) -> None:
        self._build_loc(features)
        self.tril = nn.ModuleDict(
            {n: nn.Linear(features, self._size(n) * (self._size(n) + 1) // 2) for n in self.sites}
        )
        with torch.no_grad():
            for n in self.sites:
                d = self._size(n)
                self.tril[n].weight.mul_(0.01)
                rows, cols = torch.tril_indices(d, d)
                self.tril[n].bias.copy_(torch.where(rows == cols, _inverse_softplus(self.init_scale), 0.0))

    def local_parameters(self, name: str, h: Tensor) -> dict[str, Tensor]:
        return {"loc": self.loc[name](h), "tril": self.tril[name](h)}  # the factor's entries, diagonal before softplus

    def base_distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        local = self.local_parameters(name, h) if local is None else local
        d = self._size(name)
        raw = local["tril"]
        rows, cols = torch.tril_indices(d, d, device=raw.device)
        values = torch.where(rows == cols, F.softplus(raw) + 1e-5, raw)
        tril = raw.new_zeros(raw.shape[:-1] + (d, d))
        tril[..., rows, cols] = values
        return dist.MultivariateNormal(local["loc"], scale_tril=tril)
