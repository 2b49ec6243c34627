r"""Deep Boltzmann machines (Salakhutdinov & Hinton 2009; Goodfellow et al. §20.4) as Pyro modules.

Layers :math:`h_0 = v, h_1, \dots, h_L` with binary hidden units, couplings only between neighbours:

.. math::

    -E(v, h) = \ell(v) + \sum_{l=1}^{L} b_l^\top h_l + \sum_{l=0}^{L-1} s_l^\top W_l\, h_{l+1},

with :math:`s_0 = v` and :math:`\ell(v) = b_0^\top v` for binary visible units, or :math:`s_0 = v/\sigma`
and :math:`\ell(v) = -\sum_i (v_i - b_{0,i})^2 / 2\sigma_i^2` for Gaussian ones, and :math:`s_l = h_l`
above. Given the even layers the odd ones are independent (and vice versa), which gives block Gibbs
sampling, exact summation of one parity (``exact_log_partition``, the chains' Rao-Blackwellized
statistics, AIS over the odd layers) and the mean-field fixed point

.. math::

    \mu_l = \sigma\big(b_l + W_{l-1}^\top s_{l-1} + W_l \mu_{l+1}\big),

whose variational bound :math:`\mathcal L(v) = \mathbb E_Q[-E(v,h)] + H(Q) \le \log \sum_h e^{-E(v,h)}`
is the positive phase of Algorithm 20.1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import Size, Tensor, nn
from torch.autograd.function import once_differentiable
from tqdm.auto import tqdm

from ..infer.errors import DivergenceError
from ._ops import Beta, as_tensor_like, bernoulli, binary_states, check_binary, check_finite, closed_form_applies
from .chains import NegativePhase, PersistentChains
from .distribution import EnergyBasedDistribution, check_negative_phase

__all__ = ["DBM", "DBMParams", "DBMPersistentChains", "DBMDistribution"]

_counter = itertools.count()


class DBMParams(NamedTuple):
    """Parameters in the standard (uncentered) form, plus an additive constant of ``-E``."""

    weights: list[Tensor]
    biases: list[Tensor]
    const: Tensor | float = 0.0
    std: Tensor | None = None


def _entropy(logits: Tensor, mean: Tensor) -> Tensor:
    r"""Entropy of factorial Bernoullis, :math:`\sum_j \operatorname{softplus}(x_j) - \mu_j x_j`."""
    return (F.softplus(logits) - mean * logits).sum(-1)


class _MeanFieldBound(torch.autograd.Function):
    r"""The mean-field bound :math:`\mathcal L(v; \mu)`, its value computed beforehand without
    gradient, with the closed-form gradient in the standard-form parameters at fixed means
    :math:`\mu_1, \dots, \mu_L` (writing :math:`\mu_0 = s_0`, the visible statistic):

    .. math::

        \nabla_{W_l} \mathcal L = \mu_l\, \mu_{l+1}^\top, \qquad
        \nabla_{b_l} \mathcal L = \mu_l \ (l \ge 1), \qquad
        \nabla_{b_0} \mathcal L = \partial \ell(v) / \partial b_0, \qquad
        \nabla_{\text{const}} \mathcal L = 1,

    summed over rows with the incoming gradient as weights: the matrix products of autograd's
    backward, without the forward products :math:`\mu_l^\top W_l` that only the value needs.

    ``forward(value, layers, visible_grad, *weights, *biases[, const])`` with ``layers`` the tuple
    :math:`(s_0, \mu_1, \dots, \mu_L)` and ``visible_grad`` the rows of :math:`\partial\ell/\partial b_0`.
    First-order only: a second derivative raises ``RuntimeError``.
    """

    @staticmethod
    def forward(ctx, value, layers, visible_grad, *params):
        ctx.save_for_backward(visible_grad, *layers)
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        visible_grad, *layers = ctx.saved_tensors
        num_weights = len(layers) - 1
        needs = ctx.needs_input_grad[3:]
        grads: list[Tensor | None] = []
        for l in range(num_weights):
            grads.append(layers[l].T @ (layers[l + 1] * grad[:, None]) if needs[l] else None)
        grads.append(visible_grad.T @ grad if needs[num_weights] else None)
        for l in range(1, num_weights + 1):
            grads.append(layers[l].T @ grad if needs[num_weights + l] else None)
        if len(needs) > 2 * num_weights + 1:
            grads.append(grad.sum() if needs[-1] else None)
        return None, None, None, *grads


class DBM(PyroModule):
    r"""A deep Boltzmann machine with ``layer_sizes = [n_visible, n_1, ..., n_L]``.

    :param gaussian_visible: Gaussian visible units with standard deviations ``std`` (fixed).
    :param centered: the centered parametrization (Montavon & Müller 2012; Melchior et al. 2016),
        :math:`-E = \sum_l (h_l-\mu_l)^\top b_l + \sum_l (h_l-\mu_l)^\top W_l (h_{l+1}-\mu_{l+1})`,
        binary visible units only. The offsets :math:`\mu_l` are the data mean (visible,
        :meth:`init_from_data`) and a moving average of the data's mean-field means (hidden), and
        each offset move shifts the biases so that the distribution is unchanged.

    Parameters: ``weight_l`` (``n_l x n_{l+1}``) and ``bias_l`` (``n_l``). ``log_z`` holds the latest
    estimate of :math:`\log Z` (set by ``exact_log_partition`` / ``ais_log_partition``).
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        *,
        gaussian_visible: bool = False,
        std: float | Tensor = 1.0,
        centered: bool = False,
        offset_rate: float = 0.01,
        init_std: float = 0.01,
        name: str | None = None,
    ):
        sizes = list(layer_sizes)
        if len(sizes) < 2 or not all(isinstance(n, int) and n >= 1 for n in sizes):
            raise ValueError(
                f"layer_sizes must be at least two positive ints [n_visible, n_1, ...], got {layer_sizes!r}"
            )
        if centered and gaussian_visible:
            raise ValueError("centered=True is implemented for binary visible units only")
        super().__init__(name if name is not None else f"DBM_{next(_counter)}")
        self.layer_sizes = sizes
        self.gaussian_visible, self.centered, self.offset_rate = gaussian_visible, centered, offset_rate
        for l in range(len(sizes) - 1):
            setattr(self, f"weight_{l}", nn.Parameter(torch.randn(sizes[l], sizes[l + 1]) * init_std))
        for l, n in enumerate(sizes):
            setattr(self, f"bias_{l}", nn.Parameter(torch.zeros(n)))
        log_std = torch.log(torch.as_tensor(std, dtype=torch.get_default_dtype()).expand(sizes[0]).clone())
        if not torch.isfinite(log_std).all():
            raise ValueError("std must be positive and finite")
        self.register_buffer("log_std", log_std)
        for l, n in enumerate(sizes):
            self.register_buffer(f"offset_{l}", torch.full((n,), 0.5 if centered else 0.0))
        self.log_z: float | None = None

    # ----------------------------------------------------------------- basics
    @property
    def num_layers(self) -> int:
        """The number of hidden layers :math:`L`."""
        return len(self.layer_sizes) - 1

    @property
    def n_visible(self) -> int:
        return self.layer_sizes[0]

    @property
    def weight(self) -> Tensor:  # the bottom weight; chains use it for device and dtype
        return self.weight_0

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real if self.gaussian_visible else constraints.boolean, 1)

    @property
    def binary_visible(self) -> bool:
        return not self.gaussian_visible

    def extra_repr(self) -> str:
        return f"layer_sizes={self.layer_sizes}, gaussian_visible={self.gaussian_visible}, centered={self.centered}"

    def get_extra_state(self) -> dict:
        return {"log_z": self.log_z, "pending_hidden_means": self.__dict__.get("_pending_hidden_means")}

    def set_extra_state(self, state: dict) -> None:
        self.log_z = state.get("log_z")
        self.__dict__["_pending_hidden_means"] = state.get("pending_hidden_means")

    def offsets(self) -> list[Tensor]:
        return [getattr(self, f"offset_{l}") for l in range(len(self.layer_sizes))]

    def params(self) -> DBMParams:
        """The parameters in standard form (centering folded into biases and a constant)."""
        ws = [getattr(self, f"weight_{l}") for l in range(self.num_layers)]
        bs = [getattr(self, f"bias_{l}") for l in range(self.num_layers + 1)]
        std = self.log_std.exp() if self.gaussian_visible else None
        if not self.centered:
            return DBMParams(ws, bs, 0.0, std)
        mu = self.offsets()
        std_b, const = [], 0.0
        for l, b in enumerate(bs):
            shift = 0.0
            if l > 0:
                shift = shift + mu[l - 1] @ ws[l - 1]
            if l < self.num_layers:
                shift = shift + ws[l] @ mu[l + 1]
            std_b.append(b - shift)
            const = const - mu[l] @ b
        for l, w in enumerate(ws):
            const = const + mu[l] @ (w @ mu[l + 1])
        return DBMParams(ws, std_b, const, std)

    def _data(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor (NumPy arrays and lists go to the parameters' device and dtype)."""
        return as_tensor_like(data, self.weight_0, name)

    def _check_visible(self, v: Tensor) -> None:
        """Shape, then binary and finite (or, for Gaussian units, finite) values in one fused pass."""
        if v.shape[-1:] != (self.n_visible,):
            raise ValueError(
                f"expected the last dimension to be n_visible={self.n_visible}, got shape {tuple(v.shape)}"
            )
        if self.gaussian_visible:
            if not check_finite(v):
                raise ValueError("values contain NaN or inf")
        elif not check_binary(v):
            if not torch.isfinite(v).all():
                raise ValueError("values contain NaN or inf")
            bad = (v != 0) & (v != 1)
            raise ValueError(f"Bernoulli visible units need values in {{0, 1}}, got {v[bad].flatten()[0].item()!r}")

    def _check_states(self, states: Sequence[Tensor]) -> list[Tensor]:
        """The layer states as tensors (NumPy arrays converted), after checking their number and widths."""
        if len(states) != len(self.layer_sizes):
            raise ValueError(f"expected {len(self.layer_sizes)} layer states [v, h1, ...], got {len(states)}")
        states = [None if s is None else self._data(s, f"states[{l}]") for l, s in enumerate(states)]
        for l, (s, n) in enumerate(zip(states, self.layer_sizes)):
            if s is not None and s.shape[-1:] != (n,):
                raise ValueError(f"layer {l} has {n} units, got a state of shape {tuple(s.shape)}")
        return states

    # ----------------------------------------------------------------- energy
    def _stat(self, p: DBMParams, l: int, h: Tensor) -> Tensor:
        return h / p.std if (l == 0 and p.std is not None) else h

    def _visible_term(self, p: DBMParams, v: Tensor, bias: Tensor) -> Tensor:
        if p.std is None:
            return v @ bias
        return -(((v - bias) / p.std) ** 2).sum(-1) / 2

    def _input(self, p: DBMParams, l: int, states: Sequence[Tensor | None]) -> Tensor:
        """Input of layer ``l`` from its neighbours, without the bias: :math:`W_{l-1}^\\top s_{l-1} + W_l s_{l+1}`."""
        u = 0.0
        if l > 0:
            u = self._stat(p, l - 1, states[l - 1]) @ p.weights[l - 1]
        if l < self.num_layers:
            u = u + states[l + 1] @ p.weights[l].T
        return u

    def energy(self, states: Sequence[Tensor]) -> Tensor:
        r"""The energy :math:`E(v, h_1, \dots, h_L)` of ``states = [v, h1, ..., hL]``, shape ``batch``."""
        states = self._check_states(states)
        p = self.params()
        neg = self._visible_term(p, states[0], p.biases[0]) + p.const
        for l in range(1, len(states)):
            neg = neg + states[l] @ p.biases[l]
        for l, w in enumerate(p.weights):
            neg = neg + ((self._stat(p, l, states[l]) @ w) * states[l + 1]).sum(-1)
        return -neg

    def _sum_out(
        self,
        p: DBMParams,
        states: Sequence[Tensor | None],
        parity: int,
        beta: Beta = 1.0,
        a: Tensor | None = None,
        inputs: dict[int, Tensor] | None = None,
    ) -> Tensor:
        r"""Tempered :math:`\log \sum_{h_{parity}} p^*_\beta` with the layers of the other parity fixed.

        The path goes from the base model at ``beta=0`` (visible units factorial with bias or mean
        ``a``, hidden units uniform) to the DBM at ``beta=1``.
        """
        a = torch.zeros_like(p.biases[0]) if a is None else a
        scalar = isinstance(beta, float)
        out = beta * p.const if scalar else beta.squeeze(-1) * p.const
        for l in range(len(self.layer_sizes)):
            if l % 2 != parity:  # fixed layer
                if l == 0:
                    b = beta if scalar else beta.squeeze(-1)
                    out = (
                        out
                        + (1 - b) * self._visible_term(p, states[0], a)
                        + b * self._visible_term(p, states[0], p.biases[0])
                    )
                else:
                    out = out + (beta if scalar else beta.squeeze(-1)) * (states[l] @ p.biases[l])
                continue
            u = self._input(p, l, states) if inputs is None else inputs[l]
            if l > 0:
                out = out + F.softplus(beta * (p.biases[l] + u)).sum(-1)
            elif p.std is None:
                out = out + F.softplus((1 - beta) * a + beta * (p.biases[0] + u)).sum(-1)
            else:  # integrate the Gaussian visible units
                b0, std, c = p.biases[0], p.std, beta * u
                m = (1 - beta) * a + beta * b0
                quad = ((1 - beta) * a**2 + beta * b0**2 - m**2) / (2 * std**2)
                out = (
                    out + (m * c / std + c**2 / 2 - quad).sum(-1) + (torch.log(std) + 0.5 * math.log(2 * math.pi)).sum()
                )
        return out

    def _chain_statistic(self, p: DBMParams, states: Sequence[Tensor]) -> Tensor:
        r""":meth:`_sum_out` of 2-D chain states at :math:`\beta = 1` with the odd layers summed out,
        :math:`\ell(v) + \sum_{l\ even} b_l^\top h_l + \sum_{l\ odd} \sum_j \operatorname{softplus}(x_{l,j})`,
        with each odd layer's input :math:`x_l` in fused products and no tempering terms (the
        negative phase of :class:`DBMDistribution`, differentiated by autograd)."""
        L = self.num_layers
        out = self._visible_term(p, states[0], p.biases[0])
        if isinstance(p.const, Tensor):
            out = out + p.const
        for l in range(2, L + 1, 2):
            out = out + states[l] @ p.biases[l]
        for l in range(1, L + 1, 2):
            out = out + F.softplus(self._preactivation(p, l, states)).sum(-1)
        return out

    def free_energy_of(self, states: Sequence[Tensor | None], parity: int = 1) -> Tensor:
        r"""Free energy of one parity's states with the other parity summed out,
        :math:`-\log \sum_{h_{odd}} e^{-E}` for ``parity=1`` (``states`` then holds the even layers)."""
        states = [None if s is None else self._data(s, f"states[{l}]") for l, s in enumerate(states)]
        return -self._sum_out(self.params(), states, parity)

    # ------------------------------------------------------------- sampling
    def _preactivation(self, p: DBMParams, l: int, states: Sequence[Tensor | None]) -> Tensor:
        r"""The input of layer ``l`` with its bias, :math:`b_l + W_{l-1}^\top s_{l-1} + W_l s_{l+1}`, for
        2-D neighbour states, in fused products (bias and matrix products in one kernel each)."""
        x = p.biases[l]
        if l > 0:
            x = torch.addmm(x, self._stat(p, l - 1, states[l - 1]), p.weights[l - 1])
        if l < self.num_layers:
            x = torch.addmm(x, states[l + 1], p.weights[l].T)
        return x

    def _sample_layer(
        self, p: DBMParams, l: int, states, beta: Beta = 1.0, a: Tensor | None = None, u: Tensor | None = None
    ) -> Tensor:
        plain = u is None and isinstance(beta, float) and beta == 1.0 and (l > 0 or p.std is None)
        if plain and all(states[k].dim() == 2 for k in (l - 1, l + 1) if 0 <= k < len(states)):
            return bernoulli(torch.sigmoid(self._preactivation(p, l, states)))
        u = self._input(p, l, states) if u is None else u
        if l > 0:
            return bernoulli(torch.sigmoid(beta * (p.biases[l] + u)))
        a = torch.zeros_like(p.biases[0]) if a is None else a
        bias = (1 - beta) * a + beta * p.biases[0]
        if p.std is None:
            return bernoulli(torch.sigmoid(bias + beta * u))
        mean = bias + p.std * beta * u
        return mean + p.std * torch.randn_like(mean)

    def _sweep(self, p: DBMParams, states: list[Tensor], first: int = 1) -> list[Tensor]:
        """One block-Gibbs sweep: the layers of parity ``first`` given the others, then the others."""
        states = list(states)
        for parity in (first, 1 - first):
            for l in range(parity, len(states), 2):
                states[l] = self._sample_layer(p, l, states)
        return states

    @torch.no_grad()
    def gibbs_step(self, states: Sequence[Tensor], steps: int = 1) -> list[Tensor]:
        """``steps`` block-Gibbs sweeps (odd layers given even, then even given odd)."""
        states = self._check_states(states)
        p = self.params()
        for _ in range(steps):
            states = self._sweep(p, states)
        return states

    @torch.no_grad()
    def random_state(self, num_samples: int) -> list[Tensor]:
        """Factorial initial states: visible from the visible biases, hidden from their biases."""
        p = self.params()
        b0 = p.biases[0].detach().expand(num_samples, -1)
        v = bernoulli(torch.sigmoid(b0)) if p.std is None else b0 + p.std * torch.randn_like(b0)
        return [v] + [bernoulli(torch.sigmoid(b.detach()).expand(num_samples, -1).contiguous()) for b in p.biases[1:]]

    @torch.no_grad()
    def sample(self, num_samples: int, steps: int = 1000, init: Sequence[Tensor] | None = None) -> Tensor:
        """Visible samples after ``steps`` Gibbs sweeps from ``init`` (default :meth:`random_state`)."""
        states = self.random_state(num_samples) if init is None else self._check_states(init)
        return self.gibbs_step(states, steps)[0]

    # ------------------------------------------------------------- mean field
    def _mean_field(
        self, p: DBMParams, v: Tensor, num_iters: int, tol: float | None, visible_input: Tensor | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        L = self.num_layers
        states: list[Tensor] = [v] * (L + 1)
        logits: list[Tensor] = [v] * (L + 1)
        if visible_input is None:
            visible_input = self._stat(p, 0, v) @ p.weights[0]
        bottom_up = visible_input + p.biases[1]  # fixed during the iterations
        # initial bottom-up pass, doubling the input of the layers that also have a layer above
        for l in range(1, L + 1):
            alpha = 2 if l < L else 1
            if l == 1:
                logits[l] = torch.add(p.biases[1], visible_input, alpha=alpha)
            else:
                logits[l] = torch.addmm(p.biases[l], states[l - 1], p.weights[l - 1], alpha=alpha)
            states[l] = torch.sigmoid(logits[l])
        for _ in range(num_iters):
            delta = None
            for parity in (1, 0):
                for l in range(2 - parity, L + 1, 2):
                    x = bottom_up if l == 1 else torch.addmm(p.biases[l], states[l - 1], p.weights[l - 1])
                    logits[l] = torch.addmm(x, states[l + 1], p.weights[l].T) if l < L else x
                    new = torch.sigmoid(logits[l])
                    if tol is not None:
                        change = (new - states[l]).abs().max()
                        delta = change if delta is None else torch.maximum(delta, change)
                    states[l] = new
            if tol is not None and float(delta) < tol:  # one host sync per sweep
                break
        return states[1:], logits[1:]

    @torch.no_grad()
    def mean_field(self, v: Tensor, num_iters: int = 30, tol: float | None = 1e-5) -> list[Tensor]:
        r"""The mean-field means :math:`[\mu_1, \dots, \mu_L]` of :math:`Q(h|v) = \prod_l \prod_j
        \mathrm{Bernoulli}(\mu_{l,j})`, by fixed-point updates of the odd layers, then the even ones
        (block coordinate ascent of the bound, so it never decreases). Starts from a bottom-up pass
        with doubled input to the layers that have a layer above; stops after ``num_iters`` sweeps or
        when no mean moves by more than ``tol``."""
        v = self._data(v, "v")
        self._check_visible(v)
        p = self.params()
        flat = v.reshape(-1, self.n_visible).to(p.weights[0])
        return [m.reshape(*v.shape[:-1], -1) for m in self._mean_field(p, flat, num_iters, tol)[0]]

    def _bound(
        self, p: DBMParams, v: Tensor, means: list[Tensor], logits: list[Tensor], visible_input: Tensor | None = None
    ) -> Tensor:
        """The bound at the means; ``visible_input`` is :math:`s_0^\top W_0` when already computed."""
        states = [v] + means
        out = self._visible_term(p, v, p.biases[0]) + p.const
        for l in range(1, len(states)):
            out = out + states[l] @ p.biases[l] + _entropy(logits[l - 1], means[l - 1])
        if visible_input is None:
            visible_input = self._stat(p, 0, v) @ p.weights[0]
        out = out + (visible_input * means[0]).sum(-1)
        for l in range(1, len(p.weights)):
            out = out + ((states[l] @ p.weights[l]) * states[l + 1]).sum(-1)
        return out

    def _bound_value(
        self, p: DBMParams, v: Tensor, means: list[Tensor], logits: list[Tensor], visible_input: Tensor, settled: bool
    ) -> Tensor:
        r"""The value of :meth:`_bound`, without its matrix products when the mean field is
        ``settled`` (a sweep done, or at most two hidden layers, so that every even layer's logits
        :math:`x_l = b_l + W_{l-1}^\top\mu_{l-1} + W_l\mu_{l+1}` were computed from the final odd
        means): an even layer's bias, entropy and both couplings then add up to
        :math:`\sum_j \operatorname{softplus}(x_{l,j})`, and every coupling between hidden layers
        touches exactly one even layer."""
        out = self._visible_term(p, v, p.biases[0]) + (visible_input * means[0]).sum(-1)
        if isinstance(p.const, Tensor):
            out = out + p.const
        for l in range(1, len(means) + 1):
            m, x = means[l - 1], logits[l - 1]
            if settled and l % 2 == 0:
                out = out + F.softplus(x).sum(-1)
            else:
                out = out + m @ p.biases[l] + _entropy(x, m)
        if not settled:
            for l in range(1, len(p.weights)):
                out = out + ((means[l - 1] @ p.weights[l]) * means[l]).sum(-1)
        return out

    def _visible_bias_grad(self, p: DBMParams, v: Tensor) -> Tensor:
        r"""Rows of :math:`\partial \ell(v) / \partial b_0`: ``v``, or :math:`(v - b_0)/\sigma^2` for Gaussian units."""
        return v if p.std is None else (v - p.biases[0]) / p.std**2

    def variational_bound(self, v: Tensor, num_iters: int = 30, tol: float | None = 1e-5) -> Tensor:
        r"""The mean-field bound :math:`\mathbb E_Q[-E(v,h)] + H(Q) \le \log\sum_h e^{-E(v,h)}`, shape
        ``v.shape[:-1]``. Differentiable in the parameters (at fixed :math:`Q`, which is the gradient
        of the bound, since :math:`Q` is a stationary point)."""
        v = self._data(v, "v")
        self._check_visible(v)
        p = self.params()
        flat = v.reshape(-1, self.n_visible).to(p.weights[0])
        with torch.no_grad():
            means, logits = self._mean_field(p, flat, num_iters, tol)
        return self._bound(p, flat, means, logits).reshape(v.shape[:-1])

    # ----------------------------------------------------------- centering
    def _before_distribution(self) -> None:
        pending = self.__dict__.pop("_pending_hidden_means", None)
        if pending is not None and self.centered and torch.is_grad_enabled():
            self.update_offsets(pending)

    @torch.no_grad()
    def update_offsets(self, hidden_means: Sequence[Tensor]) -> None:
        r"""Move the hidden offsets towards ``hidden_means`` at ``offset_rate``, shifting the
        neighbouring biases (:math:`b_{l\pm1}`) so that the distribution is unchanged."""
        for l, m in enumerate(hidden_means, start=1):
            old = getattr(self, f"offset_{l}")
            m = self._data(m, "hidden_means").to(old)
            self._move_offset(l, (1 - self.offset_rate) * old + self.offset_rate * m)

    def _move_offset(self, l: int, new: Tensor) -> None:
        old = getattr(self, f"offset_{l}")
        delta = new - old
        if l > 0:
            getattr(self, f"bias_{l - 1}").add_(getattr(self, f"weight_{l - 1}") @ delta)
        if l < self.num_layers:
            getattr(self, f"bias_{l + 1}").add_(delta @ getattr(self, f"weight_{l}"))
        old.copy_(new)

    @torch.no_grad()
    def init_from_data(self, data: Tensor) -> DBM:
        """Visible biases to the data's base rates (the mean for Gaussian units); when centered,
        the visible offset to the data mean and the hidden offsets to the data's mean-field means.

        :param data: visible values, shape ``(N, n_visible)``; a tensor, or a NumPy array converted to
            the parameters' device and dtype.
        :returns: the model itself.
        :raises ValueError: for data of the wrong width, with NaN or inf, or (binary units) not binary.
        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        data = self._data(data, "init_from_data(data)")
        self._check_visible(data)
        self.bias_0.copy_(self.base_rate(data))
        if self.centered:
            data = data.to(self.weight_0)
            self._move_offset(0, data.mean(0))
            for l, m in enumerate(self.mean_field(data[:1000]), start=1):
                self._move_offset(l, m.mean(0))
        return self

    @torch.no_grad()
    def set_standard_params(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> DBM:
        """Set the parameters from their standard (uncentered) form, keeping the offsets."""
        if len(weights) != self.num_layers or len(biases) != self.num_layers + 1:
            raise ValueError(f"expected {self.num_layers} weights and {self.num_layers + 1} biases")
        weights = [self._data(w, "weights") for w in weights]
        biases = [self._data(b, "biases") for b in biases]
        for l, w in enumerate(weights):
            getattr(self, f"weight_{l}").copy_(w)
        for l, b in enumerate(biases):
            getattr(self, f"bias_{l}").copy_(b)
        if self.centered:  # b_l = b'_l + W_{l-1}^T mu_{l-1} + W_l mu_{l+1}
            mu = self.offsets()
            for l in range(self.num_layers + 1):
                if l > 0:
                    getattr(self, f"bias_{l}").add_(mu[l - 1] @ weights[l - 1].to(mu[l]))
                if l < self.num_layers:
                    getattr(self, f"bias_{l}").add_(weights[l].to(mu[l]) @ mu[l + 1])
        return self

    # ------------------------------------------------------------ pretraining
    def pretrain(
        self,
        data: Tensor,
        epochs: int | Sequence[int] = 10,
        *,
        batch_size: int = 100,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        num_chains: int = 100,
        steps: int = 1,
        progress: bool = True,
    ) -> list[list[float]]:
        r"""Greedy layer-wise pretraining (Salakhutdinov & Hinton 2009), then initialization of the DBM.

        RBM :math:`l` is trained by PCD-``steps`` with Adam on the up-pass means of the layer below.
        The bottom RBM sees two tied copies of the visible layer (so
        :math:`p(h_1|v) = \sigma(2W_1^\top v + c)`) and the top RBM two tied copies of its hidden
        layer, which compensates for the missing top-down (bottom-up) input in the DBM; middle RBMs
        are plain and their weights are halved in the DBM. A layer shared by two RBMs gets the
        mean of their two biases. Returns the per-epoch mean of the SML surrogate loss of
        each RBM, :math:`\overline{F(\text{data})} - \overline{F(\text{chains})}`.
        ``data`` may be a NumPy array (converted to the parameters' device and dtype).
        """
        data = self._data(data, "pretrain(data)")
        self._check_visible(data)
        L = self.num_layers
        epochs_per_layer = [epochs] * L if isinstance(epochs, int) else list(epochs)
        if len(epochs_per_layer) != L or min(epochs_per_layer) < 1:
            raise ValueError(f"epochs must be a positive int or one per RBM ({L}), got {epochs!r}")
        w0 = self.weight_0
        x = data.to(w0)
        rbms, histories = [], []
        for l in range(L):
            rbm = _TiedCopiesRBM(
                self.layer_sizes[l],
                self.layer_sizes[l + 1],
                visible_copies=2 if (l == 0 and L > 1) else 1,
                hidden_copies=2 if (l == L - 1 and L > 1) else 1,
                std=self.log_std.exp() if (l == 0 and self.gaussian_visible) else None,
            ).to(w0)
            with torch.no_grad():
                rbm.visible_bias.copy_(self.base_rate(x) if l == 0 else torch.logit(x.mean(0).clamp(1e-3, 1 - 1e-3)))
            histories.append(
                rbm.fit(x, epochs_per_layer[l], batch_size, lr, weight_decay, num_chains, steps, progress, l)
            )
            x = rbm.up(x)
            rbms.append(rbm)
        with torch.no_grad():
            weights = [r.weight * (1.0 if l in (0, L - 1) else 0.5) for l, r in enumerate(rbms)]
            biases = [rbms[0].visible_bias]
            for l in range(1, L + 1):
                below = rbms[l - 1].hidden_bias
                biases.append(below if l == L else (below + rbms[l].visible_bias) / 2)
            self.set_standard_params(weights, biases)
            if self.centered:
                x = data.to(w0)
                self._move_offset(0, x.mean(0))
                for l, m in enumerate(self.mean_field(x[:1000]), start=1):
                    self._move_offset(l, m.mean(0))
        return histories

    # ------------------------------------------------------------ AIS glue
    def base_rate(self, data: Tensor) -> Tensor:
        """Visible base rates (logits, Laplace-smoothed) or means (Gaussian) of ``data``."""
        data = self._data(data).to(self.weight_0)
        if self.gaussian_visible:
            return data.mean(0)
        return torch.logit((data.sum(0) + 1.0) / (data.shape[0] + 2.0))

    def base_log_partition(self, base: Tensor | None = None) -> Tensor:
        """log Z of the base model at beta = 0 (visible factorial, all hidden units uniform)."""
        p = self.params()
        n_hidden = sum(self.layer_sizes[1:])
        if p.std is None:
            a = torch.zeros_like(p.biases[0]) if base is None else self._data(base, "base")
            return F.softplus(a).sum() + n_hidden * math.log(2.0)
        return (torch.log(p.std) + 0.5 * math.log(2 * math.pi)).sum() + n_hidden * math.log(2.0)

    # ----------------------------------------------------------- Pyro glue
    def forward(self, chains: DBMPersistentChains, **kwargs) -> DBMDistribution:
        self._before_distribution()
        return DBMDistribution(self, chains, params=self.params(), **kwargs)

    def distribution(self, chains: DBMPersistentChains, **kwargs) -> DBMDistribution:
        """A Pyro distribution over v whose ``log_prob`` is the mean-field bound minus ``log_z``, with
        the gradient of Algorithm 20.1. See :class:`DBMDistribution`."""
        return self(chains, **kwargs)


class DBMPersistentChains(PersistentChains):
    """Persistent block-Gibbs chains over all layers of a DBM (odd layers given even, then even
    given odd). Created by ``PersistentChains(dbm, num_chains, steps)``. ``state`` holds the
    concatenated layers ``[v, h1, ..., hL]`` of each chain; ``init`` gives initial visible states."""

    def __init__(self, model: DBM, num_chains: int = 100, steps: int = 1, init: Tensor | None = None):
        NegativePhase.__init__(self, model, steps)
        if not isinstance(num_chains, int) or num_chains < 1:
            raise ValueError(f"num_chains must be a positive int, got {num_chains!r}")
        self.num_chains = num_chains
        states = model.random_state(num_chains)
        if init is not None:
            init = model._data(init, "init")
            if init.shape != (num_chains, model.n_visible):
                raise ValueError(f"init must have shape {(num_chains, model.n_visible)}, got {tuple(init.shape)}")
            model._check_visible(init)
            states[0] = init.detach().to(model.weight_0).clone()
            p = model.params()
            with torch.no_grad():
                for l in range(1, len(states), 2):
                    states[l] = model._sample_layer(p, l, states)
        self.register_buffer("state", torch.cat(states, -1))

    def states(self) -> list[Tensor]:
        """The chains' layers ``[v, h1, ..., hL]``."""
        return list(self.state.split(self.model.layer_sizes, -1))

    @torch.no_grad()
    def advance(self, data: Tensor | None = None, *, params: DBMParams | None = None) -> list[Tensor]:
        model = self.model
        p = model.params() if params is None else params
        states = list(self._sync(self.state, p.weights[0]).split(model.layer_sizes, -1))
        for _ in range(self.steps):
            states = model._sweep(p, states)
        self._set_buffer("state", torch.cat(states, -1))
        return states

    def after_negative_phase(self, hidden_input: Tensor | None = None, *, probs: Tensor | None = None) -> None:
        pass

    def initial_samples(self, num_samples: int) -> list[Tensor]:
        idx = torch.arange(num_samples, device=self.state.device) % self.num_chains
        return list(self.state[idx].clone().split(self.model.layer_sizes, -1))


class DBMDistribution(EnergyBasedDistribution):
    r"""The distribution of a DBM's visible units inside a Pyro program (Algorithm 20.1).

    ``log_prob(v)`` has the value :math:`\mathcal L(v) - \log\hat Z`, the mean-field bound minus
    ``model.log_z`` (0 when unset), computed through the surrogate

    .. math::

        \mathcal L_\theta(v; \mu) - \log\hat Z - (s - \operatorname{stop\_grad}(s)),
        \qquad s = \frac1C\sum_c -F_{odd}(\tilde v_c, \tilde h_{2,c}, \dots),

    with :math:`\mu` the (detached) mean-field fixed point, so the gradient is the positive phase
    :math:`\nabla_\theta \mathcal L` at :math:`\mu` minus the negative phase from the persistent
    chains, with the odd layers summed out (Rao-Blackwellized). Under a subsampled plate Pyro scales
    it by :math:`N/B`, so ``SVI`` + ``Trace_ELBO`` performs variational SML.

    :param mean_field_iters: fixed-point sweeps for the positive phase (``mean_field_tol`` stops early).
    """

    def __init__(
        self,
        model: DBM,
        chains: DBMPersistentChains,
        *,
        params: DBMParams | None = None,
        sample_steps: int = 100,
        mean_field_iters: int = 10,
        mean_field_tol: float | None = None,
        batch_shape: Size | tuple = (),
        validate_args: bool | None = None,
    ):
        if not isinstance(chains, DBMPersistentChains):
            raise TypeError(
                f"a DBM needs PersistentChains(dbm, ...) for its negative phase, got {type(chains).__name__}"
            )
        self.mean_field_iters, self.mean_field_tol = mean_field_iters, mean_field_tol
        super().__init__(
            model,
            chains,
            params=params,
            sample_steps=sample_steps,
            batch_shape=batch_shape,
            validate_args=validate_args,
        )

    def _options(self) -> dict:
        options = super()._options()
        options.update(mean_field_iters=self.mean_field_iters, mean_field_tol=self.mean_field_tol)
        return options

    def log_prob(self, value: Tensor) -> Tensor:
        """The bound minus ``log_z``, with the gradient of Algorithm 20.1 (see the class notes).
        The positive phase's gradient is the closed form at the mean-field means
        (:class:`_MeanFieldBound`), and its value reuses the mean field's last products. Checks as for
        :class:`~dgm_ppl.energy.EnergyBasedDistribution`: with Pyro's validation off, neither the value
        nor the negative phase is checked.

        :param value: visible values, shape ``batch_shape + (n_visible,)`` (a NumPy array is converted).
        :returns: shape ``value.shape[:-1]``.
        """
        model, p = self.model, self.params
        if not isinstance(value, Tensor):
            value = model._data(value, "value")
        validate = self._validate_args
        if validate:
            self._validate_sample(value)
        log_z = model.log_z or 0.0
        flat = value.reshape(-1, value.shape[-1]).to(p.weights[0])
        iters = self.mean_field_iters
        with torch.no_grad():
            stat = model._stat(p, 0, flat)
            visible_input = stat @ p.weights[0]  # shared by the mean field and the bound
            means, logits = model._mean_field(p, flat, iters, self.mean_field_tol, visible_input)
            # a sweep, or a first bottom-up pass with no middle layer, leaves the mean field settled
            settled = iters > 0 or model.num_layers <= 2
            bound = model._bound_value(p, flat, means, logits, visible_input, settled)
        if not torch.is_grad_enabled():
            bound = bound.reshape(value.shape[:-1])
            return bound - log_z if log_z else bound
        if not closed_form_applies(flat):
            bound = model._bound(p, flat, means, logits)
        else:
            const = [p.const] if isinstance(p.const, Tensor) else []
            layers = (stat, *means)
            visible_grad = model._visible_bias_grad(p, flat)
            bound = _MeanFieldBound.apply(bound, layers, visible_grad, *p.weights, *p.biases, *const)
        s = model._chain_statistic(p, self.chains.advance(value, params=p)).mean()
        if validate:
            check_negative_phase(s, "DBM")
        if model.centered:
            model.__dict__["_pending_hidden_means"] = [m.mean(0) for m in means]
        out = (bound - (s - s.detach())).reshape(value.shape[:-1])
        return out - log_z if log_z else out

    @torch.no_grad()
    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        """Draws by block Gibbs: ``sample_steps`` sweeps started from the chains' current states."""
        shape = self._extended_shape(sample_shape)
        states = self.chains.initial_samples(shape[:-1].numel())
        return self.model.gibbs_step(states, steps=self.sample_steps)[0].reshape(shape)


class _TiedCopiesRBM(nn.Module):
    r"""An RBM with ``visible_copies`` tied copies of its visible layer and ``hidden_copies`` of its
    hidden layer, for DBM pretraining. Summed copies are sufficient statistics:
    :math:`-F(v_{1..k}) = \sum_i \ell(v_i) + k_h \sum_j \operatorname{softplus}(c_j + \sum_i s(v_i)^\top W_{:j})`,
    and the data clamps all visible copies to the same vector."""

    def __init__(self, n_visible: int, n_hidden: int, visible_copies: int, hidden_copies: int, std: Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_visible, n_hidden) * 0.01)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self.kv, self.kh = visible_copies, hidden_copies
        self.register_buffer("std", None if std is None else std.detach().clone())

    def _stat(self, v: Tensor) -> Tensor:
        return v if self.std is None else v / self.std

    def _visible_term(self, v: Tensor) -> Tensor:
        if self.std is None:
            return v @ self.visible_bias
        return -(((v - self.visible_bias) / self.std) ** 2).sum(-1) / 2

    def neg_free_energy(self, copies: Tensor) -> Tensor:
        """``copies`` of shape ``(k_v, batch, n_visible)``."""
        x = self.hidden_bias + self._stat(copies).sum(0) @ self.weight
        return self._visible_term(copies).sum(0) + self.kh * F.softplus(x).sum(-1)

    @torch.no_grad()
    def up(self, v: Tensor) -> Tensor:
        return torch.sigmoid(self.hidden_bias + self.kv * self._stat(v) @ self.weight)

    @torch.no_grad()
    def gibbs(self, copies: Tensor) -> Tensor:
        p = torch.sigmoid(self.hidden_bias + self._stat(copies).sum(0) @ self.weight)
        h = sum(bernoulli(p) for _ in range(self.kh))  # Binomial(k_h, p): the summed hidden copies
        x = (h @ self.weight.T).expand(self.kv, -1, -1)
        if self.std is None:
            return bernoulli(torch.sigmoid(x + self.visible_bias))
        mean = self.visible_bias + self.std * x
        return mean + self.std * torch.randn_like(mean)

    def fit(self, data, epochs, batch_size, lr, weight_decay, num_chains, steps, progress, layer) -> list[float]:
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        idx = torch.randint(len(data), (num_chains,), device=data.device)
        with torch.no_grad():
            chains = (
                bernoulli(data[idx].expand(self.kv, -1, -1)) if self.std is None else data[idx].expand(self.kv, -1, -1)
            )
        history = []
        n_batches = math.ceil(len(data) / batch_size)
        bar = tqdm(total=epochs * n_batches, disable=not progress, desc=f"pretraining RBM {layer + 1}", mininterval=0.5)
        try:
            for epoch in range(epochs):
                order = torch.randperm(len(data), device=data.device)
                total = torch.zeros((), dtype=data.dtype, device=data.device)  # summed on the device: no sync per step
                for i in range(0, len(data), batch_size):
                    batch = data[order[i : i + batch_size]]
                    for _ in range(steps):
                        chains = self.gibbs(chains)
                    loss = (
                        self.neg_free_energy(chains).mean() - self.neg_free_energy(batch.expand(self.kv, -1, -1)).mean()
                    )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.detach()
                    bar.update()
                mean = float(total) / n_batches
                if not math.isfinite(mean):
                    raise DivergenceError(f"pretraining RBM {layer + 1} diverged at epoch {epoch}")
                history.append(mean)
        finally:
            bar.close()
        return history


# ----------------------------------------------------------------- partition functions
def dbm_exact_log_partition(model: DBM, *, max_units: int = 20, chunk_size: int = 2**15) -> Tensor:
    """Exact log Z: enumerate the parity with fewer units (the odd one for Gaussian visible units)
    and sum the other out analytically. Differentiable."""
    p = model.params()
    sizes = model.layer_sizes
    counts = [sum(sizes[0::2]), sum(sizes[1::2])]
    parity = 1 if (model.gaussian_visible or counts[1] <= counts[0]) else 0  # the parity to enumerate
    n = counts[parity]
    if n > max_units:
        raise ValueError(
            f"exact_log_partition would enumerate 2^{n} joint states of the {'odd' if parity else 'even'} layers; "
            f"the limit is max_units={max_units} (use ais_log_partition for larger models)"
        )
    layers = list(range(parity, len(sizes), 2))
    parts = []
    for start in range(0, 2**n, chunk_size):
        flat = binary_states(n, start, min(2**n, start + chunk_size), p.weights[0])
        chunks = flat.split([sizes[l] for l in layers], -1)
        states: list[Tensor | None] = [None] * len(sizes)
        for l, c in zip(layers, chunks):
            states[l] = c
        parts.append(torch.logsumexp(model._sum_out(p, states, 1 - parity), 0))
    return torch.logsumexp(torch.stack(parts), 0)


@torch.no_grad()
def dbm_ais_log_weights(
    model: DBM, odd: list[Tensor], betas: Tensor, base: Tensor | None, progress: bool, desc: str
) -> Tensor:
    r"""AIS over the odd layers with the even layers (``v``, ``h2``, ...) summed out, as in Salakhutdinov
    & Hinton (2009). ``odd`` are the initial odd-layer states (from the base model, or from the DBM
    for reverse AIS with ``betas`` decreasing). The transition at :math:`\beta_k` is one block-Gibbs
    sweep (even given odd, then odd given even) on the tempered joint."""
    p = model.params()
    L1 = len(model.layer_sizes)
    states: list[Tensor | None] = [None] * L1
    for l, s in zip(range(1, L1, 2), odd):
        states[l] = s
    log_w = torch.zeros(odd[0].shape[0], dtype=torch.float64, device=odd[0].device)
    b_list = betas.tolist()
    for k in tqdm(range(1, len(b_list)), disable=not progress, desc=desc, mininterval=1.0):
        # the even layers' inputs from the odd ones serve both betas and the next even draw
        inputs = {l: model._input(p, l, states) for l in range(0, L1, 2)}
        lp = model._sum_out
        log_w += (lp(p, states, 0, b_list[k], base, inputs) - lp(p, states, 0, b_list[k - 1], base, inputs)).double()
        if k < len(b_list) - 1:
            for l in range(0, L1, 2):
                states[l] = model._sample_layer(p, l, states, b_list[k], base, inputs[l])
            for l in range(1, L1, 2):
                states[l] = model._sample_layer(p, l, states, b_list[k])
            for l in range(0, L1, 2):
                states[l] = None
    return log_w


DBM.persistent_chains_class = DBMPersistentChains
