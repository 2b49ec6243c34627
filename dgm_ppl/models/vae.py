r"""Variational autoencoders as Pyro programs: the generative model is ``model``, the guide is an amortized guide.

:class:`VAE` (Kingma & Welling 2014; Rezende et al. 2014):

.. math::

    z_i \sim N(0, I_d), \qquad x_i \mid z_i \sim \mathrm{Bernoulli}(\sigma(f_\theta(z_i)))
    \quad\text{(or } N(f_\theta(z_i), \mathrm{diag}\, s^2)\text{)},

:class:`CVAE` (Sohn et al. 2015), conditioned on y (a label or any feature vector), with a learned prior:

.. math::

    z_i \mid y_i \sim N(\mu_\psi(y_i), \mathrm{diag}\, \sigma^2_\psi(y_i)), \qquad
    x_i \mid z_i, y_i \sim \mathrm{Bernoulli}(\sigma(f_\theta(z_i, y_i))).

Both put the batch in ``pyro.plate("data", num_data, subsample_size=B)``, so a minibatch gives an unbiased estimate of
the full-data ELBO, and :meth:`VAE.guide` builds a fresh encoder and any of the package's amortized guides::

    vae = VAE(784, 50, hidden_dims=(200, 200))
    guide = vae.guide("iaf", num_flows=2)          # or "diagonal", "full_rank", "planar", ...
    svi = SVI(vae.model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(x_batch, num_data=50_000)
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import Bernoulli
from ..guides import FLOWS, AmortizedFlow, AmortizedGuide, AmortizedMultivariateNormal, AmortizedNormal
from ._common import check_batch, data_plate

__all__ = ["VAE", "CVAE", "mlp", "GUIDES"]

GUIDES = ("diagonal", "full_rank", *FLOWS)
LIKELIHOODS = ("bernoulli", "normal")


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.Tanh, final_activation: bool = False) -> nn.Sequential:
    """Affine layers ``sizes[0] → sizes[1] → ...`` with ``activation`` between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """p(x | z) as a module: an MLP to Bernoulli logits, or to Normal means with a learned per-feature scale."""

    def __init__(self, in_dim: int, x_dim: int, hidden_dims: Sequence[int], likelihood: str, activation):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.likelihood = likelihood
        self.net = mlp([in_dim, *hidden_dims, x_dim], activation)
        if likelihood == "normal":
            self.log_scale = nn.Parameter(torch.zeros(x_dim))

    def forward(self, z: Tensor) -> dist.TorchDistribution:
        out = self.net(z)
        if self.likelihood == "bernoulli":
            return Bernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.log_scale.exp()).to_event(1)

    def mean(self, z: Tensor) -> Tensor:
        out = self.net(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out


def _make_guide(model, encoder: nn.Module, kind: str, encoder_args: int, **kwargs) -> AmortizedGuide:
    def create_plates(*args, num_data=None):  # the model's data plate, with this call's subsampling
        if len(args) > encoder_args:
            num_data = args[encoder_args]
        return data_plate(args[0], num_data)

    kwargs = {"encoder_args": encoder_args, "create_plates": create_plates, **kwargs}
    if kind == "diagonal":
        return AmortizedNormal(model, encoder, "z", **kwargs)
    if kind == "full_rank":
        return AmortizedMultivariateNormal(model, encoder, "z", **kwargs)
    if kind in FLOWS:
        return AmortizedFlow(model, encoder, "z", flow=kind, **kwargs)
    raise ValueError(f"kind must be one of {GUIDES}, got {kind!r}")


class VAE(nn.Module):
    """A VAE: standard Normal prior on ``z`` (``z_dim``), MLP decoder (``hidden_dims``) to a Bernoulli or Normal ``x``.

    :param x_dim: the data size.
    :param z_dim: the latent size.
    :param hidden_dims: hidden layers of the decoder (and, reversed, of the encoders that :meth:`guide` builds).
    :param likelihood: ``"bernoulli"`` (binary data, checked by Pyro's validation) or ``"normal"``.
    :param activation: the hidden units' nonlinearity (Burda et al. 2016 use tanh).
    :param name: the decoder's name in Pyro's param store.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden_dims: Sequence[int] = (200, 200),
        *,
        likelihood: str = "bernoulli",
        activation: type[nn.Module] = nn.Tanh,
        name: str = "vae",
    ):
        super().__init__()
        self.x_dim, self.z_dim, self.hidden_dims, self.name = x_dim, z_dim, tuple(hidden_dims), name
        self.activation = activation
        self.decoder = Decoder(z_dim + self._condition_dim(), x_dim, self.hidden_dims[::-1], likelihood, activation)

    def _condition_dim(self) -> int:
        """Size of what the decoder sees besides z (a CVAE's y)."""
        return 0

    def model(self, x: Tensor, num_data: int | None = None) -> Tensor:
        """The generative program. ``num_data``: size of the data set the batch ``x`` (B, x_dim) is drawn from."""
        check_batch("x", x, self.x_dim)
        pyro.module(self.name, self.decoder)
        with data_plate(x, num_data):
            prior = dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            return pyro.sample("x", self.decoder(z), obs=x)

    def encoder(self) -> nn.Module:
        """A fresh encoder network x → features: the hidden layers of the decoder in reverse, with activations."""
        return mlp([self.x_dim, *self.hidden_dims], self.activation, final_activation=True)

    def guide(self, kind: str = "diagonal", encoder: nn.Module | None = None, **kwargs) -> AmortizedGuide:
        """An amortized guide for ``z``: ``kind`` in ``GUIDES`` (``"diagonal"``, ``"full_rank"``, or a flow); keyword
        arguments go to the guide (``num_flows``, ``init_scale``, ``refine_steps``, ...)."""
        return _make_guide(self.model, encoder if encoder is not None else self.encoder(), kind, 1, **kwargs)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """The mean of p(x | z) (pixel probabilities for a Bernoulli decoder)."""
        return self.decoder.mean(z)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> Tensor:
        """Draws from the model: decoder means (``mean=True``) or samples of x."""
        z = torch.randn(num_samples, self.z_dim, device=next(self.parameters()).device)
        return self.decode(z) if mean else self.decoder(z).sample()

    @torch.no_grad()
    def reconstruct(self, x: Tensor, guide: AmortizedGuide) -> Tensor:
        """Decoder means at one draw of z ~ q(z | x)."""
        return self.decode(guide(x)["z"])


class _JointEncoder(nn.Module):
    """encoder(x, y) = MLP([x, y])."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if not isinstance(y, Tensor) or y.dim() != 2 or y.shape[0] != x.shape[0]:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(
                f"x and y must have the same batch size: y must be (B, y_dim) with B = {x.shape[0]}, got {shape}"
            )
        return self.net(torch.cat([x, y], dim=-1))


class CVAE(VAE):
    """A conditional VAE p(x | y) = ∫ p(x | z, y) p(z | y) dz; ``y_dim`` is the size of the condition (one-hot label,
    or any features, e.g. the visible half of an image). ``conditional_prior=False`` uses p(z | y) = N(0, I).

    The model's signature is ``model(x, y, num_data=None)``; :meth:`guide` builds an encoder of ``(x, y)``.
    """

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        z_dim: int,
        hidden_dims: Sequence[int] = (200, 200),
        *,
        conditional_prior: bool = True,
        likelihood: str = "bernoulli",
        activation: type[nn.Module] = nn.Tanh,
        name: str = "cvae",
    ):
        self.y_dim = y_dim  # before VAE's __init__, whose decoder also sees y
        super().__init__(x_dim, z_dim, hidden_dims, likelihood=likelihood, activation=activation, name=name)
        self.prior_net = mlp([y_dim, self.hidden_dims[-1], 2 * z_dim], activation) if conditional_prior else None

    def _condition_dim(self) -> int:
        return self.y_dim

    def prior(self, y: Tensor) -> dist.TorchDistribution:
        """p(z | y), batch shape (B,)."""
        if self.prior_net is None:
            return dist.Normal(y.new_zeros(y.shape[0], self.z_dim), 1.0).to_event(1)
        loc, raw = self.prior_net(y).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)

    def model(self, x: Tensor, y: Tensor, num_data: int | None = None) -> Tensor:
        check_batch("x", x, self.x_dim)
        check_batch("y", y, self.y_dim)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
        pyro.module(self.name, self)  # decoder and prior network (the guides hold their own encoders)
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior(y))
            return pyro.sample("x", self.decoder(torch.cat([z, y.expand(z.shape[:-1] + y.shape[-1:])], -1)), obs=x)

    def encoder(self) -> nn.Module:
        """A fresh encoder network (x, y) → features."""
        return _JointEncoder(mlp([self.x_dim + self.y_dim, *self.hidden_dims], self.activation, final_activation=True))

    def guide(self, kind: str = "diagonal", encoder: nn.Module | None = None, **kwargs) -> AmortizedGuide:
        return _make_guide(self.model, encoder if encoder is not None else self.encoder(), kind, 2, **kwargs)

    @torch.no_grad()
    def sample(self, y: Tensor, mean: bool = True) -> Tensor:
        """Draws of x given each row of y: z ~ p(z | y), then the decoder's mean (or a sample)."""
        check_batch("y", y, self.y_dim)
        z = self.prior(y).sample()
        px = self.decoder(torch.cat([z, y], -1))
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor, guide: AmortizedGuide) -> Tensor:
        z = guide(x, y)["z"]
        return self.decode(torch.cat([z, y], -1))
