r"""Sigmoid belief networks (Neal 1992): a directed model with layers of binary latents.

.. math::

    h^{(L)} \sim \mathrm{Bernoulli}(\sigma(b_L)), \qquad
    h^{(l)} \mid h^{(l+1)} \sim \mathrm{Bernoulli}(\sigma(W_l h^{(l+1)} + b_l)), \qquad
    x \mid h^{(1)} \sim \mathrm{Bernoulli}(\sigma(W_0 h^{(1)} + b_0)),

with the recognition model :math:`q(h^{(1)} \mid x) \prod_l q(h^{(l+1)} \mid h^{(l)})`, each a factorized Bernoulli
with an affine logit (Mnih & Gregor 2014). The latents are discrete, so there is no reparametrization: train with

- REINFORCE with baselines, Pyro's ``TraceGraph_ELBO()``: each latent site of :meth:`SigmoidBeliefNet.guide` carries
  an input-dependent baseline network b(x) (NVIL; Mnih & Gregor 2014; its bias plays the data-independent
  baseline), which Pyro subtracts from the downstream cost of the score-function term and fits by squared error;
- reweighted wake-sleep, Pyro's ``ReweightedWakeSleep(num_particles=K)`` (Bornschein & Bengio 2015). Note that
  Pyro normalizes the importance weights of the whole minibatch jointly (log-weights summed over the batch before
  the softmax over particles), not per datum, so the weights degenerate as the batch grows: use small batches.

:meth:`SigmoidBeliefNet.log_marginal` gives the exact log p(x) by enumeration for small nets (≤ 20 latent units).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pyro
import torch
from torch import Tensor, nn

from ..distributions import Bernoulli
from ._common import check_batch, data_plate

__all__ = ["SigmoidBeliefNet"]

MAX_ENUMERATED_UNITS = 20


class _Baseline(nn.Module):
    """b(x): one hidden tanh layer to a scalar per datum."""

    def __init__(self, x_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class _Generative(nn.Module):
    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.top_logits = nn.Parameter(torch.zeros(dims[-1]))
        self.layers = nn.ModuleList(nn.Linear(dims[i + 1], dims[i]) for i in range(len(dims) - 1))


class SigmoidBeliefNet(nn.Module):
    """A sigmoid belief net over binary ``x`` (``x_dim``) with binary latent layers ``latent_dims`` (``h1`` next to x).

    :param x_dim: data size.
    :param latent_dims: sizes of the latent layers, bottom (``"h1"``) to top.
    :param baseline: give each guide site a neural baseline b(x) (used by ``TraceGraph_ELBO``; other objectives ignore
        it).
    :param baseline_hidden: hidden units of each baseline network.
    :param name: prefix in Pyro's param store.
    """

    def __init__(
        self,
        x_dim: int,
        latent_dims: Sequence[int] = (200,),
        *,
        baseline: bool = True,
        baseline_hidden: int = 100,
        name: str = "sbn",
    ):
        super().__init__()
        if not latent_dims or min(latent_dims) < 1:
            raise ValueError(f"latent_dims must be a non-empty list of positive sizes, got {latent_dims}")
        self.x_dim, self.latent_dims, self.name = x_dim, tuple(latent_dims), name
        dims = (x_dim, *self.latent_dims)
        self.generative = _Generative(dims)
        self.recognition = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(len(self.latent_dims)))
        self.baselines = (
            nn.ModuleList(_Baseline(x_dim, baseline_hidden) for _ in self.latent_dims) if baseline else None
        )

    def model(self, x: Tensor, num_data: int | None = None) -> Tensor:
        check_batch("x", x, self.x_dim)
        pyro.module(f"{self.name}.generative", self.generative)
        top, layers = self.generative.top_logits, self.generative.layers
        with data_plate(x, num_data):
            h = pyro.sample(
                f"h{len(self.latent_dims)}", Bernoulli(logits=top).expand([x.shape[0], top.shape[-1]]).to_event(1)
            )
            for layer in range(len(self.latent_dims) - 1, 0, -1):
                h = pyro.sample(f"h{layer}", Bernoulli(logits=layers[layer](h)).to_event(1))
            return pyro.sample("x", Bernoulli(logits=layers[0](h)).to_event(1), obs=x)

    def guide(self, x: Tensor, num_data: int | None = None) -> dict[str, Tensor]:
        check_batch("x", x, self.x_dim)
        pyro.module(f"{self.name}.recognition", self.recognition)
        if self.baselines is not None:
            pyro.module(f"{self.name}.baselines", self.baselines)
        values, h = {}, x
        with data_plate(x, num_data):
            for layer, net in enumerate(self.recognition):
                # Pyro reads the baseline's input when it computes the loss, and wants b(x) in the shape of the site's
                # batch, particles included: the input is set to x broadcast to the sample's shape once it is drawn.
                # (Pyro's decaying-average baseline is a param of one batch's shape; the bias of b(x) does its job.)
                baseline = {} if self.baselines is None else {"nn_baseline": self.baselines[layer]}
                name = f"h{layer + 1}"
                h = values[name] = pyro.sample(name, Bernoulli(logits=net(h)).to_event(1), infer={"baseline": baseline})
                if baseline:
                    baseline["nn_baseline_input"] = x.expand(h.shape[:-1] + x.shape[-1:])
        return values

    def _log_joint(self, x: Tensor, hs: list[Tensor]) -> Tensor:
        """log p(x, h) for x (B, D) and latent layers hs[l] (C, H_l): shape (C, B)."""
        layers = self.generative.layers
        top = Bernoulli(logits=self.generative.top_logits).log_prob(hs[-1]).sum(-1)  # (C,)
        for layer in range(len(hs) - 1, 0, -1):
            top = top + Bernoulli(logits=layers[layer](hs[layer])).log_prob(hs[layer - 1]).sum(-1)
        logits = layers[0](hs[0])  # (C, D)
        log_px = -nn.functional.binary_cross_entropy_with_logits(
            logits[:, None, :].expand(-1, x.shape[0], -1), x[None].expand(logits.shape[0], -1, -1), reduction="none"
        ).sum(-1)
        return top[:, None] + log_px

    @torch.no_grad()
    def log_marginal(self, x: Tensor, chunk: int = 1024) -> Tensor:
        """Exact log p(x) per datum, shape (B,), by enumerating every latent configuration (at most 20 units)."""
        check_batch("x", x, self.x_dim)
        if not ((x == 0) | (x == 1)).all():
            raise ValueError("x must be binary (0/1) for a sigmoid belief net")
        total = sum(self.latent_dims)
        if total > MAX_ENUMERATED_UNITS:
            raise ValueError(f"exact enumeration needs at most {MAX_ENUMERATED_UNITS} latent units, got {total}")
        device, dtype = self.generative.top_logits.device, self.generative.top_logits.dtype
        configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=total)), device=device, dtype=dtype)
        parts = []
        for start in range(0, configs.shape[0], chunk):
            hs = list(configs[start : start + chunk].split(list(self.latent_dims), dim=-1))
            parts.append(self._log_joint(x.to(dtype), hs))
        return torch.cat(parts, 0).logsumexp(0)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> Tensor:
        """Ancestral samples of x (or, with ``mean=True``, the pixel probabilities given the sampled h1)."""
        layers = self.generative.layers
        h = Bernoulli(logits=self.generative.top_logits).sample((num_samples,))
        for layer in range(len(self.latent_dims) - 1, 0, -1):
            h = Bernoulli(logits=layers[layer](h)).sample()
        probs = torch.sigmoid(layers[0](h))
        return probs if mean else torch.bernoulli(probs)
