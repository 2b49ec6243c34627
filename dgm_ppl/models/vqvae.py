r"""The vector-quantized VAE (VQ-VAE; van den Oord et al. 2017) as a Pyro model/guide pair.

An encoder maps x to :math:`L` vectors :math:`z_e(x)_l \in \mathbb R^D`; each is replaced by its nearest entry of a
codebook :math:`e_1, \dots, e_K`, and the decoder sees the quantized vectors. The latent is the code index per
position, with a learned categorical prior (one logit vector per position) and a Bernoulli likelihood:

.. math::

    k_l \sim \mathrm{Categorical}(\mathrm{softmax}(\pi_l)), \qquad
    x \mid k \sim \mathrm{Bernoulli}(\sigma(g_\theta(e_{k_1}, \dots, e_{k_L}))),

    q(k_l \mid x) = \mathbb 1\big[k_l = \operatorname{argmin}_j \|z_e(x)_l - e_j\|^2\big].

The posterior is one-hot, so its entropy is 0 and the ELBO is :math:`\log p(x \mid z_q) + \log p(k)`, with
:math:`z_q = e_k`. The argmin has no gradient: the decoder sees :math:`z_q = \mathrm{sg}[e_k] + z_e -
\mathrm{sg}[z_e]` (value :math:`e_k`, gradient passed straight through to :math:`z_e`), and the codebook and the
encoder's commitment are trained by the extra terms of the paper's loss,

.. math::

    \mathcal L(x) = -\log p(x \mid z_q) - \log p(k) + \|\mathrm{sg}[z_e(x)] - e_k\|^2
    + \beta \|z_e(x) - \mathrm{sg}[e_k]\|^2,

summed over the L positions. The guide holds the quantization, a point-mass site ``"z"`` of indices, and the two
extra terms as a ``pyro.factor`` (a guide factor adds to the loss), so unmodified ``SVI`` with ``Trace_ELBO``
minimizes :math:`\sum_i \mathcal L(x_i)` (times N/B under plate subsampling). With ``ema_decay`` the codebook is
instead the exponential moving average of the encoder outputs assigned to each code (the paper's appendix), updated
by the guide while training, and the codebook term is dropped::

    vq = VQVAE.with_mlps(64, num_codes=16, code_dim=4, num_latents=4)
    svi = SVI(vq.model, vq.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(x_batch, num_data=len(x))
    codes = vq.encode(x)                 # (B, L) indices
    images = vq.sample(100)              # ancestral: k ~ p(k), then the decoder's mean
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn

from .._data import as_data_tensor, check_binary
from ..distributions import Bernoulli
from ._common import data_plate
from .vae import mlp

__all__ = ["VQVAE"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class _PointCategorical(dist.Categorical):
    """A categorical whose draws are always its mode: the one-hot posterior q(k | x) (log-probability 0 there)."""

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        mode = self.probs.argmax(-1)
        return mode.expand(torch.Size(sample_shape) + mode.shape)


class VQVAE(PyroModule):
    """A VQ-VAE of binary ``(B, x_dim)`` data with ``num_latents`` code positions, each one of ``num_codes`` codes
    of size ``code_dim``.

    ``model(x, num_data=None)`` has the latent site ``"z"`` (integer indices, shape ``(B, num_latents)``) and the
    data at ``"x"``; ``guide(x, num_data=None)`` is the quantization; both in the plate ``"data"``.

    :param encoder: a module ``x (B, x_dim) -> z_e``, shape ``(B, num_latents * code_dim)`` or
        ``(B, num_latents, code_dim)``.
    :param decoder: a module ``z_q (B, num_latents * code_dim) -> logits (B, x_dim)`` of the Bernoulli likelihood.
    :param num_codes: K, the size of the codebook.
    :param code_dim: D, the size of each code.
    :param num_latents: L, the number of quantized vectors per datum.
    :param x_dim: the data size, for the input checks (default: ``in_features`` of the encoder's first
        ``nn.Linear``, if any).
    :param beta: the commitment weight β.
    :param ema_decay: γ in (0, 1) for exponential-moving-average codebook updates (None: learn it by gradient).
    :param learn_prior: learn the prior logits (otherwise the prior is uniform).
    :param name: the prefix of the parameters in Pyro's param store.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        num_codes: int,
        code_dim: int,
        num_latents: int = 1,
        *,
        x_dim: int | None = None,
        beta: float = 0.25,
        ema_decay: float | None = None,
        learn_prior: bool = True,
        name: str = "vqvae",
    ):
        super().__init__(name)
        self.num_codes = _positive_int("num_codes", num_codes)
        self.code_dim = _positive_int("code_dim", code_dim)
        self.num_latents = _positive_int("num_latents", num_latents)
        if not isinstance(encoder, nn.Module) or not isinstance(decoder, nn.Module):
            raise TypeError("encoder and decoder must be torch.nn.Module instances")
        if not beta >= 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}")
        if x_dim is None:
            first = next((m for m in encoder.modules() if isinstance(m, nn.Linear)), None)
            x_dim = first.in_features if first is not None else None
        self.x_dim = None if x_dim is None else _positive_int("x_dim", x_dim)
        self.beta, self.ema_decay = float(beta), ema_decay
        self.encoder, self.decoder = encoder, decoder
        codebook = torch.empty(num_codes, code_dim).uniform_(-1 / num_codes, 1 / num_codes)
        if ema_decay is None:
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", codebook.clone())
        logits = torch.zeros(num_latents, num_codes)
        if learn_prior:
            self.prior_logits = nn.Parameter(logits)
        else:
            self.register_buffer("prior_logits", logits)
        self._straight_through: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def with_mlps(
        cls,
        x_dim: int,
        num_codes: int,
        code_dim: int,
        num_latents: int = 1,
        hidden_dims: Sequence[int] = (128,),
        activation: type[nn.Module] = nn.ReLU,
        **kwargs,
    ) -> VQVAE:
        """A VQ-VAE with MLP encoder ``x_dim → hidden_dims → L·D`` and decoder ``L·D → reversed(hidden_dims) →
        x_dim``; keyword arguments go to the constructor."""
        flat = _positive_int("num_latents", num_latents) * _positive_int("code_dim", code_dim)
        encoder = mlp([_positive_int("x_dim", x_dim), *hidden_dims, flat], activation)
        decoder = mlp([flat, *reversed(tuple(hidden_dims)), x_dim], activation)
        return cls(encoder, decoder, num_codes, code_dim, num_latents, x_dim=x_dim, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, code_dim={self.code_dim}, num_latents={self.num_latents}, "
            f"beta={self.beta}, ema_decay={self.ema_decay}"
        )

    # -- checks and the deterministic pieces ----------------------------------------------------------------------
    def _like(self) -> Tensor:
        return self._buffers["codebook"] if "codebook" in self._buffers else self._parameters["codebook"]

    def _check_x(self, x) -> Tensor:
        like = self._like()
        x = as_data_tensor(x, "x", dtype=like.dtype, device=like.device)
        if x.dim() != 2 or (self.x_dim is not None and x.shape[1] != self.x_dim):
            width = self.x_dim if self.x_dim is not None else "x_dim"
            raise ValueError(f"x must be a batch of shape (B, {width}), got {tuple(x.shape)}")
        if not check_binary(x):
            raise ValueError("x must be binary (0 or 1) and finite (NaN or inf found, or another value)")
        return x

    def encode_continuous(self, x) -> Tensor:
        """:math:`z_e(x)`, shape ``(B, num_latents, code_dim)``, differentiable."""
        x = self._check_x(x)
        try:
            z_e = self.encoder(x)
        except RuntimeError as error:  # e.g. a width the encoder's first layer does not take
            raise ValueError(f"the encoder failed on x of shape {tuple(x.shape)}: {error}") from error
        flat = self.num_latents * self.code_dim
        if not isinstance(z_e, Tensor) or z_e.shape[0] != x.shape[0] or z_e[0].numel() != flat:
            got = tuple(z_e.shape) if isinstance(z_e, Tensor) else type(z_e).__name__
            raise ValueError(
                f"the encoder returned {got}, expected (B, {self.num_latents}, {self.code_dim}) or (B, {flat})"
            )
        return z_e.reshape(x.shape[0], self.num_latents, self.code_dim)

    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """The nearest code to each vector of ``z_e`` (..., D): indices (...) and the codes :math:`e_k` (..., D),
        differentiable in the codebook."""
        codebook = self.codebook
        d2 = z_e.pow(2).sum(-1, keepdim=True) - 2 * z_e @ codebook.T + codebook.pow(2).sum(-1)
        index = d2.argmin(-1)
        return index, codebook[index]

    def penalty(self, z_e: Tensor, e: Tensor) -> Tensor:
        r"""The codebook and commitment terms per datum, :math:`\|\mathrm{sg}[z_e] - e\|^2 + \beta \|z_e -
        \mathrm{sg}[e]\|^2` summed over positions and code dimensions (the codebook term is left out with EMA)."""
        commitment = self.beta * (z_e - e.detach()).pow(2).sum((-2, -1))
        if self.ema_decay is not None:
            return commitment
        return (z_e.detach() - e).pow(2).sum((-2, -1)) + commitment

    def _decoder_logits(self, z_q: Tensor) -> Tensor:
        logits = self.decoder(z_q.reshape(*z_q.shape[:-2], self.num_latents * self.code_dim))
        if not isinstance(logits, Tensor) or logits.shape[:-1] != z_q.shape[:-2]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the decoder returned {got}, expected logits of shape {(*z_q.shape[:-2], 'x_dim')}")
        return logits

    @torch.no_grad()
    def _ema_update(self, z_e: Tensor, index: Tensor, eps: float = 1e-5) -> None:
        gamma = self.ema_decay
        one_hot = F.one_hot(index.reshape(-1), self.num_codes).to(z_e.dtype)
        self.ema_count.mul_(gamma).add_(one_hot.sum(0), alpha=1 - gamma)
        self.ema_sum.mul_(gamma).add_(one_hot.T @ z_e.reshape(-1, self.code_dim), alpha=1 - gamma)
        total = self.ema_count.sum()
        count = (self.ema_count + eps) / (total + self.num_codes * eps) * total  # Laplace smoothing: no zero counts
        self.codebook.copy_(self.ema_sum / count[:, None])

    def prior(self) -> dist.TorchDistribution:
        """p(k): independent categoricals over the codes, event shape ``(num_latents,)``."""
        return dist.Categorical(logits=self.prior_logits).to_event(1)

    # -- the Pyro programs ---------------------------------------------------------------------------------------
    @pyro_method
    def model(self, x, num_data: int | None = None) -> Tensor:
        """:math:`k \\sim p(k)`, :math:`x \\sim \\mathrm{Bernoulli}(\\sigma(g(e_k)))`, observed at ``"x"``.
        ``num_data``: size of the data set the batch ``x`` (B, x_dim) is drawn from."""
        x = self._check_x(x)
        cache, self._straight_through = self._straight_through, None
        with data_plate(x, num_data):
            k = pyro.sample("z", self.prior())
            if cache is not None and cache[0] is k:  # replayed from the guide: pass the gradient straight through
                z_e, e = cache[1], cache[2]
                z_q = e.detach() + (z_e - z_e.detach())  # value e_k exactly, gradient to z_e
            else:
                z_q = self.codebook[k]
            return pyro.sample("x", Bernoulli(logits=self._decoder_logits(z_q)).to_event(1), obs=x)

    @pyro_method
    def guide(self, x, num_data: int | None = None) -> Tensor:
        """The quantization: ``"z"`` is the nearest code's index at each position (a point mass), and the
        codebook and commitment terms enter the loss through the factor ``"vq_loss"``."""
        z_e = self.encode_continuous(x)
        index, e = self.quantize(z_e)
        if self.ema_decay is not None and self.training and torch.is_grad_enabled():
            self._ema_update(z_e.detach(), index)
            e = self.codebook[index]
        with data_plate(z_e, num_data):
            probs = F.one_hot(index, self.num_codes).to(z_e.dtype)
            k = pyro.sample("z", _PointCategorical(probs=probs).to_event(1))
            pyro.factor("vq_loss", self.penalty(z_e, e), has_rsample=True)  # a guide factor adds to the loss
        self._straight_through = (k, z_e, e)
        return k

    # -- using a trained model -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x) -> Tensor:
        """The code indices of each datum, shape ``(B, num_latents)``."""
        return self.quantize(self.encode_continuous(x))[0]

    def _check_index(self, index) -> Tensor:
        index = torch.as_tensor(index, device=self._like().device)
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.is_complex():
            raise ValueError(f"indices must be integers, got {index.dtype}")
        if index.dim() != 2 or index.shape[1] != self.num_latents:
            raise ValueError(f"indices must have shape (B, {self.num_latents}), got {tuple(index.shape)}")
        if index.numel() and (index.min() < 0 or index.max() >= self.num_codes):
            raise ValueError(f"indices must be in 0..{self.num_codes - 1}")
        return index.long()

    @torch.no_grad()
    def decode(self, index, mean: bool = True) -> Tensor:
        """The decoder's pixel probabilities at the codes ``index`` (B, num_latents), or a Bernoulli draw."""
        probs = torch.sigmoid(self._decoder_logits(self.codebook[self._check_index(index)]))
        return probs if mean else torch.bernoulli(probs)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> Tensor:
        """Ancestral draws: :math:`k \\sim p(k)`, then the decoder's mean (or a Bernoulli draw)."""
        _positive_int("num_samples", num_samples)
        return self.decode(self.prior().sample((num_samples,)), mean)

    @torch.no_grad()
    def reconstruct(self, x, mean: bool = True) -> Tensor:
        """The decoder's mean at the quantized encoding of ``x``."""
        return self.decode(self.encode(x), mean)

    @torch.no_grad()
    def init_codebook(self, x) -> None:
        """Set the codebook to the encoder outputs of randomly chosen data (a common remedy for dead codes)."""
        z_e = self.encode_continuous(x).reshape(-1, self.code_dim)
        pick = torch.randint(len(z_e), (self.num_codes,), device=z_e.device)
        self.codebook.copy_(z_e[pick])
        if self.ema_decay is not None:
            self.ema_sum.copy_(self.codebook)
            self.ema_count.fill_(1.0)
