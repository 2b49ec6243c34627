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

This module holds the model (energy, sampling, mean field, centering, partition-function hooks);
its chains are in :mod:`~dgm_ppl.energy.dbm_chains`, its Pyro distribution in
:mod:`~dgm_ppl.energy.dbm_distribution` and its greedy pretraining in
:mod:`~dgm_ppl.energy.dbm_pretraining`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._ops import (
    Beta,
    as_tensor_like,
    autocast_off,
    bernoulli,
    check_binary,
    check_finite,
    closed_form_applies,
    full_precision,
)
from .dbm_chains import DBMPersistentChains
from .dbm_distribution import DBMDistribution
from .dbm_pretraining import TiedCopiesRBM as _TiedCopiesRBM  # noqa: F401  (its former home; tests patch it here)
from .dbm_pretraining import grow_from_rbm, pretrain_dbm
from .protocol import Enumeration

__all__ = ["DBM", "DBMParams", "DBMPersistentChains", "DBMDistribution"]  # the last two from their modules

_counter = itertools.count()


class DBMParams(NamedTuple):
    """Parameters in the standard (uncentered) form, plus an additive constant of ``-E``."""

    weights: list[Tensor]
    biases: list[Tensor]
    const: Tensor | float = 0.0
    std: Tensor | None = None


def _check_num_samples(num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")


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
    @full_precision
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

    A DBM satisfies :class:`~dgm_ppl.energy.protocol.EnergyModel`; its chains are
    :class:`~dgm_ppl.energy.DBMPersistentChains` (``chain_class``), its pretraining lives in
    :mod:`dgm_ppl.energy.dbm_pretraining`.
    """

    #: the class of this model's persistent chains, built by ``PersistentChains(dbm, ...)``
    chain_class: type = DBMPersistentChains
    #: a deferred move of the hidden offsets (:meth:`update_offsets` with ``defer=True``), one mean per
    #: hidden layer, applied by the next :meth:`forward`; saved with the model's state
    pending_hidden_means: list[Tensor] | None = None

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
        return {"log_z": self.log_z, "pending_hidden_means": self.pending_hidden_means}

    def set_extra_state(self, state: dict) -> None:
        self.log_z = state.get("log_z")
        self.pending_hidden_means = state.get("pending_hidden_means")

    def offsets(self) -> list[Tensor]:
        r"""The offsets :math:`[\mu_0, \dots, \mu_L]` (buffers ``offset_l``; zero and unused when uncentered)."""
        return [getattr(self, f"offset_{l}") for l in range(len(self.layer_sizes))]

    @full_precision
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

    def to_tensor(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through unchanged, NumPy arrays and lists are converted to
        the parameters' dtype and device. No check of the values.

        :param name: the argument, as error messages name it.
        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.weight_0, name)

    def check_data(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor (:meth:`to_tensor`), after checking that it holds visible states: the
        width ``n_visible``, finite values, binary ones for binary units (one fused pass).

        :param name: the argument, as error messages name it.
        :returns: the tensor (``data`` itself when it is one).
        :raises ValueError: for bad values.
        """
        v = as_tensor_like(data, self.weight_0, name)
        self._check_visible(v)
        return v

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

    def total_input(self, l: int, states: Sequence[Tensor | None], *, params: DBMParams | None = None) -> Tensor:
        r"""The total input of hidden layer ``l`` (1 to L) from its neighbours' values in ``states = [v, h1, ...,
        hL]`` (layer ``l``'s own entry is unused), :math:`b_l + W_{l-1}^\top s_{l-1} + W_l s_{l+1}`, differentiable in
        the parameters. Since it is linear in the states, the total input of batch means is the batch mean of the
        total inputs (what :class:`~dgm_ppl.energy.SparsityTarget` needs).

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        if not 1 <= l <= self.num_layers:
            raise ValueError(f"l must be a hidden layer, 1 to {self.num_layers}, got {l}")
        p = self.params() if params is None else params
        return p.biases[l] + self._input(p, l, states)

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

    def free_energy(self, states: Sequence[Tensor | None], parity: int = 1) -> Tensor:
        r"""Free energy of one parity's states with the other parity summed out,
        :math:`-\log \sum_{h_{odd}} e^{-E}` for ``parity=1`` (``states`` then holds the even layers,
        ``None`` in place of the odd ones). For one hidden layer, ``free_energy([v, None])`` is the
        RBM's :math:`F(v)`."""
        states = [None if s is None else self._data(s, f"states[{l}]") for l, s in enumerate(states)]
        return -self._sum_out(self.params(), states, parity)

    def free_energy_of(self, states: Sequence[Tensor | None], parity: int = 1) -> Tensor:
        """Deprecated alias of :meth:`free_energy`."""
        warnings.warn("DBM.free_energy_of is deprecated; use DBM.free_energy", DeprecationWarning, 2)
        return self.free_energy(states, parity)

    @full_precision
    def unnormalized_log_prob(self, v: Tensor, *, params: DBMParams | None = None) -> Tensor:
        r"""A lower bound on the unnormalized :math:`\log p^*(v) = \log\sum_h e^{-E(v,h)}`: the mean-field
        bound :meth:`variational_bound` run to convergence (at most 100 sweeps), shape ``v.shape[:-1]``."""
        v = self.check_data(v, "v")
        p = self.params() if params is None else params
        flat = v.reshape(-1, self.n_visible).to(p.weights[0])
        with torch.no_grad():
            means, logits = self._mean_field(p, flat, 100, 1e-5)
        return self._bound(p, flat, means, logits).reshape(v.shape[:-1])

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

    def _sweep(
        self, p: DBMParams, states: list[Tensor], first: int = 1, beta: Beta = 1.0, a: Tensor | None = None
    ) -> list[Tensor]:
        """One block-Gibbs sweep: the layers of parity ``first`` given the others, then the others."""
        states = list(states)
        for parity in (first, 1 - first):
            for l in range(parity, len(states), 2):
                states[l] = self._sample_layer(p, l, states, beta, a)
        return states

    @torch.no_grad()
    def sample_layers(
        self, states: Sequence[Tensor | None], parity: int = 1, *, params: DBMParams | None = None
    ) -> list[Tensor]:
        """Draw the layers of one parity given the others (a half sweep), without gradient.

        :param states: the layers ``[v, h1, ..., hL]``; those of ``parity`` may be ``None``.
        :param parity: 1 for the odd layers (``h1, h3, ...``), 0 for the even ones (``v, h2, ...``).
        :returns: a new list of layers.
        """
        p = self.params() if params is None else params
        states = list(states)
        for l in range(parity, len(states), 2):
            states[l] = self._sample_layer(p, l, states)
        return states

    @torch.no_grad()
    def gibbs(
        self,
        states: Sequence[Tensor],
        steps: int = 1,
        beta: float = 1.0,
        base: Tensor | None = None,
        *,
        params: DBMParams | None = None,
    ) -> list[Tensor]:
        """``steps`` block-Gibbs sweeps (odd layers given even, then even given odd), without gradient.

        :param states: the layers ``[v, h1, ..., hL]`` (a NumPy array is converted).
        :param beta: inverse temperature on the path from the base model (visible units factorial with
            bias or mean ``base``, hidden units uniform) at 0 to the DBM at 1.
        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        states = self._check_states(states)
        p = self.params() if params is None else params
        for _ in range(steps):
            states = self._sweep(p, states, 1, beta, base)
        return states

    def gibbs_step(self, states: Sequence[Tensor], steps: int = 1) -> list[Tensor]:
        """Deprecated alias of :meth:`gibbs`."""
        warnings.warn("DBM.gibbs_step is deprecated; use DBM.gibbs(states, steps)", DeprecationWarning, 2)
        return self.gibbs(states, steps)

    @torch.no_grad()
    def random_state(self, num_samples: int) -> list[Tensor]:
        """Factorial initial states: visible from the visible biases, hidden from their biases."""
        p = self.params()
        b0 = p.biases[0].detach().expand(num_samples, -1)
        v = bernoulli(torch.sigmoid(b0)) if p.std is None else b0 + p.std * torch.randn_like(b0)
        return [v] + [bernoulli(torch.sigmoid(b.detach()).expand(num_samples, -1).contiguous()) for b in p.biases[1:]]

    @torch.no_grad()
    @full_precision
    def sample(self, num_samples: int, steps: int = 1000, init: Sequence[Tensor] | None = None) -> Tensor:
        """Visible samples after ``steps`` Gibbs sweeps from ``init`` (default :meth:`random_state`)."""
        states = self.random_state(num_samples) if init is None else self._check_states(init)
        return self.gibbs(states, steps)[0]

    def persistent_chains(self, num_chains: int = 100, steps: int = 1, init: Tensor | None = None):
        """This model's persistent chains, ``chain_class(self, num_chains, steps, init)`` (see
        :class:`~dgm_ppl.energy.DBMPersistentChains`)."""
        return self.chain_class(self, num_chains, steps, init)

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
    @full_precision
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

    @full_precision
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

    @torch.no_grad()
    @full_precision
    def importance_log_prob(
        self, v: Tensor, num_samples: int = 100, *, num_iters: int = 100, tol: float | None = 1e-5
    ) -> Tensor:
        r"""An importance-sampling estimate of :math:`\log p^*(v) = \log\sum_h e^{-E(v,h)}`, shape ``v.shape[:-1]``.

        The odd hidden layers are summed out exactly (:meth:`free_energy`); the even ones are drawn
        :math:`K` times from the mean-field posterior :math:`Q` (:meth:`mean_field`, its factors for the even
        layers):

        .. math::

            \hat\ell_K(v) = \log \frac1K \sum_{k=1}^K \frac{e^{-F(v, h^{(k)}_{even})}}{Q(h^{(k)}_{even})},
            \qquad h^{(k)}_{even} \sim Q.

        :math:`\mathbb E\,\hat\ell_K(v)` is a lower bound on :math:`\log p^*(v)` that rises with :math:`K` to it
        (Burda et al. 2016), and already at :math:`K = 1` it is at least the mean-field bound
        :meth:`variational_bound`: summing out the odd layers exactly beats any factorial :math:`Q` over them.
        With one hidden layer there is nothing to sample and the value is exact. Subtract
        :math:`\log Z` (AIS) for a log-likelihood estimate; unlike the mean-field bound it is not a bound
        for each draw, only in expectation.

        :param v: visible states ``(..., n_visible)``.
        :param num_samples: :math:`K`, draws per visible vector (memory grows as ``K`` times the batch).
        :param num_iters: mean-field sweeps (``tol`` stops early), as in :meth:`mean_field`.
        :returns: :math:`\hat\ell_K(v)`.
        :raises ValueError: for ``num_samples < 1``, or ``v`` of the wrong width, not binary (binary visible
            units), or with NaN or inf.
        """
        log_w = self.importance_log_weights(v, num_samples, num_iters=num_iters, tol=tol)
        return torch.logsumexp(log_w, -1) - math.log(log_w.shape[-1])

    @torch.no_grad()
    @full_precision
    def importance_log_weights(
        self, v: Tensor, num_samples: int = 100, *, num_iters: int = 100, tol: float | None = 1e-5
    ) -> Tensor:
        r"""The log weights :math:`\log w_k = -F(v, h^{(k)}_{even}) - \log Q(h^{(k)}_{even})` behind
        :meth:`importance_log_prob` (which is their ``logsumexp`` minus :math:`\log K`), shape
        ``v.shape[:-1] + (K,)``; e.g. for the effective sample size :math:`1/\sum_k \tilde w_k^2` of the mean-field
        proposal. Arguments and errors as for :meth:`importance_log_prob`."""
        _check_num_samples(num_samples)
        v = self._data(v, "v")
        self._check_visible(v)
        p = self.params()
        flat = v.reshape(-1, self.n_visible).to(p.weights[0])
        log_w, _ = self._importance_log_weights(p, flat, num_samples, num_iters, tol)
        return log_w.reshape(*v.shape[:-1], log_w.shape[-1])

    def _importance_log_weights(
        self, p: DBMParams, v: Tensor, num_samples: int, num_iters: int, tol: float | None
    ) -> tuple[Tensor, list[Tensor]]:
        r"""The log importance weights :math:`-F(v, h_{even}) - \log Q(h_{even})` of :meth:`importance_log_prob`,
        shape ``(n, K)`` (``(n, 1)``, exact, with one hidden layer), and the mean-field means. The mean field, the
        draws and :math:`\log Q` carry no gradient; :math:`-F` carries the parameters' when gradients are enabled."""
        L, n = self.num_layers, v.shape[0]
        with torch.no_grad():
            means, logits = self._mean_field(p, v, num_iters, tol)
        if L < 2:
            return self._chain_statistic(p, [v, None])[:, None], means
        states: list[Tensor | None] = [v.repeat_interleave(num_samples, 0)] + [None] * L
        log_q = v.new_zeros(n * num_samples)
        with torch.no_grad():
            for l in range(2, L + 1, 2):
                x = logits[l - 1].repeat_interleave(num_samples, 0)
                h = bernoulli(torch.sigmoid(x))
                states[l] = h
                log_q = log_q + (h * x - F.softplus(x)).sum(-1)
        return (self._chain_statistic(p, states) - log_q).reshape(n, num_samples), means

    def importance_positive_phase(
        self,
        v: Tensor,
        num_samples: int = 10,
        *,
        params: DBMParams | None = None,
        num_iters: int = 10,
        tol: float | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        r"""The positive phase of SML with the hidden posterior sampled instead of replaced by the mean field, for
        the rows of 2-D ``v``: the estimate :math:`\hat\ell_K(v)` of :meth:`importance_log_prob`, whose gradient in
        the parameters (autograd, at fixed draws and proposal) is the self-normalized importance estimate

        .. math::

            \nabla_\theta \hat\ell_K(v) = \sum_{k=1}^K \tilde w_k \nabla_\theta\bigl(-F_\theta(v, h^{(k)}_{even})\bigr),
            \qquad \tilde w_k = \frac{w_k}{\sum_j w_j}, \quad w_k = \frac{e^{-F(v, h^{(k)}_{even})}}{Q(h^{(k)}_{even})},

        of :math:`\nabla_\theta \log p^*(v) = \mathbb E_{p(h|v)}[\nabla_\theta(-E(v,h))]`, with the odd layers
        summed out exactly. It is biased for finite :math:`K` and consistent as :math:`K \to \infty`, where the
        mean-field gradient (:meth:`positive_phase`) stays the gradient of the bound, which also pulls the model
        towards posteriors that are factorial (Goodfellow et al., ch. 19) and so can shrink the weights between
        hidden layers. With one hidden layer the value and gradient are exact.

        :param num_samples: :math:`K`, draws of the even layers per row (memory and time grow as ``K`` times the
            batch).
        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        :param num_iters: mean-field sweeps for the proposal (``tol`` stops early).
        :returns: :math:`\hat\ell_K(v)` of each row, and the mean-field means ``[mu_1, ..., mu_L]``.
        :raises ValueError: for ``num_samples < 1``.
        """
        _check_num_samples(num_samples)
        p = self.params() if params is None else params
        with autocast_off():  # summed against the chains' statistics: full precision (see positive_phase)
            log_w, means = self._importance_log_weights(p, v.to(p.weights[0].dtype), num_samples, num_iters, tol)
            return torch.logsumexp(log_w, -1) - math.log(log_w.shape[-1]), means

    def positive_phase(
        self,
        v: Tensor,
        *,
        params: DBMParams | None = None,
        num_iters: int = 10,
        tol: float | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        r"""The positive phase of variational SML (Algorithm 20.1) for the rows of 2-D ``v``: the mean-field
        bound :math:`\mathcal L(v; \mu)` at the (detached) fixed point :math:`\mu`, with the gradient in
        the parameters when gradients are enabled (closed form at fixed :math:`\mu` for plain tensors,
        autograd otherwise), and the means. The value reuses the mean field's last products.

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        :param num_iters: fixed-point sweeps (``tol`` stops early).
        :returns: the bound of each row, and the means ``[mu_1, ..., mu_L]``.
        """
        p = self.params() if params is None else params
        with torch.no_grad():
            stat = self._stat(p, 0, v)
            visible_input = stat @ p.weights[0]  # shared by the mean field and the bound
            means, logits = self._mean_field(p, v, num_iters, tol, visible_input)
            # a sweep, or a first bottom-up pass with no middle layer, leaves the mean field settled
            settled = num_iters > 0 or self.num_layers <= 2
            bound = self._bound_value(p, v, means, logits, visible_input, settled)
        # under torch.autocast the mean field ran in its dtype; the gradient's products sum the data's statistics
        # against the chains' (chain_statistic), so they are formed in full precision
        dtype = p.weights[0].dtype
        if bound.dtype != dtype:
            bound, means, logits = bound.to(dtype), [m.to(dtype) for m in means], [x.to(dtype) for x in logits]
        if not torch.is_grad_enabled():
            return bound, means
        with autocast_off():
            if not closed_form_applies(v):
                return self._bound(p, v, means, logits), means
            const = [p.const] if isinstance(p.const, Tensor) else []
            visible_grad = self._visible_bias_grad(p, v)
            bound = _MeanFieldBound.apply(bound, (stat, *means), visible_grad, *p.weights, *p.biases, *const)
        return bound, means

    def chain_statistic(self, states: Sequence[Tensor], *, params: DBMParams | None = None) -> Tensor:
        r"""The negative phase's statistic of 2-D chain states ``[v, h1, ..., hL]``: :math:`-F` with the odd
        layers summed out (Rao-Blackwellized), one value per chain, differentiable in the parameters.

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        with autocast_off():  # summed against the data's statistics: full precision (see positive_phase)
            return self._chain_statistic(p, [s.to(p.weights[0].dtype) for s in states])

    # ----------------------------------------------------------- centering
    def _before_distribution(self) -> None:
        """Apply a deferred offset move (see :meth:`update_offsets`), with gradients enabled only."""
        pending = self.pending_hidden_means
        if pending is not None:
            self.pending_hidden_means = None
            if self.centered and torch.is_grad_enabled():
                self.update_offsets(pending)

    @torch.no_grad()
    @full_precision
    def update_offsets(self, hidden_means: Sequence[Tensor], *, defer: bool = False) -> None:
        r"""Move the hidden offsets towards ``hidden_means`` at ``offset_rate``, shifting the
        neighbouring biases (:math:`b_{l\pm1}`) so that the distribution is unchanged. Nothing for an
        uncentered DBM.

        :param hidden_means: the data's mean-field means ``[m_1, ..., m_L]``, averaged over the batch.
        :param defer: keep the move in ``pending_hidden_means``, to be applied by the next
            :meth:`forward` with gradients enabled (how the distribution reports the means of a
            positive phase whose graph still holds the biases).
        """
        if not self.centered:
            return
        if defer:
            self.pending_hidden_means = list(hidden_means)
            return
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
        data = self.check_data(data, "init_from_data(data)")
        self.bias_0.copy_(self.base_rate(data))
        self.set_offsets_from_data(data)
        return self

    @torch.no_grad()
    def set_offsets_from_data(self, data: Tensor) -> DBM:
        """For a centered DBM, the visible offset to the data mean and the hidden offsets to the mean of
        the data's mean-field means (first 1000 rows), each move shifting the biases so that the
        distribution is unchanged. Nothing for an uncentered DBM.

        :param data: visible values, shape ``(N, n_visible)``.
        :returns: the model itself.
        """
        if self.centered:
            data = self.to_tensor(data, "data").to(self.weight_0)
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
        method: str = "pcd",
        centered: bool = False,
        progress: bool = True,
    ) -> list[list[float]]:
        r"""Greedy layer-wise pretraining (Salakhutdinov & Hinton 2009), then initialization of the DBM
        (:func:`~dgm_ppl.energy.dbm_pretraining.pretrain_dbm`).

        RBM :math:`l` is trained by SML with Adam on the up-pass means of the layer below.
        The bottom RBM sees two tied copies of the visible layer (so
        :math:`p(h_1|v) = \sigma(2W_1^\top v + c)`) and the top RBM two tied copies of its hidden
        layer, which compensates for the missing top-down (bottom-up) input in the DBM; middle RBMs
        are plain and their weights are halved in the DBM. A layer shared by two RBMs gets the
        mean of their two biases. Same keywords as :meth:`DBN.pretrain <dgm_ppl.energy.DBN.pretrain>`
        (which also takes a Pyro ``optim``).

        :param data: visible values, shape ``(N, n_visible)``; a NumPy array is converted to the
            parameters' device and dtype.
        :param epochs: epochs per RBM: one int for all, or one per RBM.
        :param batch_size: the minibatch size.
        :param lr: Adam's learning rate.
        :param weight_decay: Adam's weight decay.
        :param num_chains: persistent chains per RBM (``method="pcd"``).
        :param steps: Gibbs sweeps per update.
        :param method: ``"pcd"`` (persistent chains) or ``"cd"`` (chains restarted at each batch).
        :param centered: train each RBM in the centered parametrization (:class:`TiedCopiesRBM
            <dgm_ppl.energy.dbm_pretraining.TiedCopiesRBM>`: the visible offset at the data's mean, the hidden one
            sliding towards the hidden means), as the DBM's joint training is when the DBM is centered; the DBM gets
            the RBMs' standard forms either way.
        :param progress: show a progress bar.
        :returns: the per-epoch mean of the SML surrogate loss of each RBM,
            :math:`\overline{F(\text{data})} - \overline{F(\text{chains})}`.
        """
        return pretrain_dbm(
            self,
            data,
            epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            num_chains=num_chains,
            steps=steps,
            method=method,
            centered=centered,
            progress=progress,
        )

    def grow_from_rbm(
        self, rbm, *, top_std: float = 0.01, data: Tensor | None = None, generator: torch.Generator | None = None
    ) -> DBM:
        r"""Start from a trained binary RBM as the bottom layer pair, the layers above nearly decoupled
        (:func:`~dgm_ppl.energy.dbm_pretraining.grow_from_rbm`); an alternative to :meth:`pretrain`.

        :param rbm: a trained binary-visible RBM with ``(n_visible, n_hidden) == layer_sizes[:2]``.
        :param top_std: the standard deviation of the weights above the first hidden layer; with 0 the
            DBM's marginal of ``v`` is the RBM's.
        :param data: training data, to set the offsets of a centered DBM from.
        :param generator: the random generator of the weights above.
        :returns: the model itself.
        """
        return grow_from_rbm(self, rbm, top_std=top_std, data=data, generator=generator)

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

    def annealing_path(self, base: Tensor | None = None) -> _DBMAnnealingPath:
        """The AIS path from the base model ``base`` (visible units factorial, hidden units uniform) to this
        DBM over the odd layers, with the even layers (``v``, ``h2``, ...) summed out, as in Salakhutdinov
        & Hinton (2009); parameters as now. See :class:`~dgm_ppl.energy.protocol.AnnealingPath`."""
        return _DBMAnnealingPath(self, base)

    def enumeration(self) -> Enumeration:
        """Exact log Z enumerates the parity with fewer units (the odd one for Gaussian visible units) and
        sums the other out analytically. Differentiable in the parameters."""
        p = self.params()
        sizes = self.layer_sizes
        counts = [sum(sizes[0::2]), sum(sizes[1::2])]
        parity = 1 if (self.gaussian_visible or counts[1] <= counts[0]) else 0  # the parity to enumerate
        layers = list(range(parity, len(sizes), 2))

        def log_marginal(flat: Tensor) -> Tensor:
            chunks = flat.split([sizes[l] for l in layers], -1)
            states: list[Tensor | None] = [None] * len(sizes)
            for l, c in zip(layers, chunks):
                states[l] = c
            return self._sum_out(p, states, 1 - parity)

        what = f"joint states of the {'odd' if parity else 'even'} layers"
        return Enumeration(counts[parity], what, log_marginal, p.weights[0])

    # ----------------------------------------------------------- Pyro glue
    def forward(self, chains: DBMPersistentChains, **kwargs) -> DBMDistribution:
        self._before_distribution()
        return DBMDistribution(self, chains, params=self.params(), **kwargs)

    def distribution(self, chains: DBMPersistentChains, **kwargs) -> DBMDistribution:
        """A Pyro distribution over v whose ``log_prob`` is the mean-field bound minus ``log_z``, with
        the gradient of Algorithm 20.1. See :class:`DBMDistribution`."""
        return self(chains, **kwargs)


class _DBMAnnealingPath:
    r"""The AIS path of a DBM over its odd layers (``state = [h1, h3, ...]``) with the even layers summed
    out. The cache is the layout of all layers (even ones ``None``) and the even layers' inputs from the
    odd ones, shared by both temperatures of a step and the next draw of the even layers; the
    transition is one block-Gibbs sweep on the tempered joint (even given odd, then odd given even)."""

    def __init__(self, model: DBM, base: Tensor | None):
        self.model, self.base = model, base
        self.params = model.params()
        self.num_layers = len(model.layer_sizes)  # L + 1, with the visible one

    def initial_state(self, num_chains: int) -> list[Tensor]:
        w = self.model.weight_0
        return [
            bernoulli(torch.full((num_chains, n), 0.5, dtype=w.dtype, device=w.device))
            for n in self.model.layer_sizes[1::2]
        ]

    def state_from_samples(self, samples) -> list[Tensor]:
        samples = self.model._check_states(samples)
        return [s.to(self.model.weight_0) for s in samples[1::2]]

    def prepare(self, state: list[Tensor]) -> tuple[list[Tensor | None], dict[int, Tensor]]:
        states: list[Tensor | None] = [None] * self.num_layers
        for l, s in zip(range(1, self.num_layers, 2), state):
            states[l] = s
        inputs = {l: self.model._input(self.params, l, states) for l in range(0, self.num_layers, 2)}
        return states, inputs

    def log_prob(self, state: list[Tensor], beta: float, cache) -> Tensor:
        states, inputs = cache
        return self.model._sum_out(self.params, states, 0, beta, self.base, inputs)

    def transition(self, state: list[Tensor], beta: float, cache) -> list[Tensor]:
        states, inputs = cache
        states = list(states)
        model, p = self.model, self.params
        for l in range(0, self.num_layers, 2):
            states[l] = model._sample_layer(p, l, states, beta, self.base, inputs[l])
        for l in range(1, self.num_layers, 2):
            states[l] = model._sample_layer(p, l, states, beta)
        return states[1::2]
