r"""Restricted Boltzmann machines as Pyro modules.

An RBM with visible units :math:`v` and binary hidden units :math:`h` has the joint
:math:`p(v, h) = \exp(-E(v, h)) / Z`. Both classes here share binary hidden units and a
factorial structure, so that

.. math::

    -F(v) = \log \sum_h e^{-E(v,h)} = \ell(v) + \sum_j \operatorname{softplus}(c_j + s(v)^\top W_{:j})

where :math:`\ell` is the visible term and :math:`s` the visible statistic coupled to the
hidden layer (:math:`v` for Bernoulli units, :math:`v/\sigma` for Gaussian units).

For annealing (AIS, parallel tempering) every RBM also defines the geometric path

.. math::

    \log p^*_\beta(v) = (1-\beta)\,\ell_a(v) + \beta\,\ell(v)
        + \sum_j \operatorname{softplus}\big(\beta (c_j + s(v)^\top W_{:j})\big)

from a factorial *base* model :math:`\ell_a` (visible bias or mean :math:`a`, hidden units
uniform) at :math:`\beta = 0` to the RBM at :math:`\beta = 1`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._ops import (
    Beta,
    as_tensor_like,
    bernoulli,
    check_binary,
    check_finite,
    closed_form_applies,
    full_precision,
)
from .chains import PersistentChains
from .distribution import EnergyBasedDistribution
from .protocol import Enumeration

__all__ = ["RBM", "BernoulliRBM", "GaussianBernoulliRBM"]

_counter = itertools.count()


class RBMParams(NamedTuple):
    """Parameters in the standard (uncentered) form, plus an additive constant of ``-E``.

    ``centering`` holds, for a centered model, the raw visible and hidden biases and the visible and
    hidden offsets ``(b, c, mu, lambda)`` from which the standard form was computed, so that the
    closed-form SML gradient can be taken in the centered parametrization directly.

    ``matmul_weight``, set only on the training path of a model with a ``matmul_dtype``, is ``weight`` cast to that
    dtype: the products of the chains' Gibbs sweeps and of the SML surrogate use it (see :class:`RBM`).
    """

    weight: Tensor
    visible_bias: Tensor
    hidden_bias: Tensor
    const: Tensor | float = 0.0
    std: Tensor | None = None
    centering: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    matmul_weight: Tensor | None = None


def _sml_row_weights(grad: Tensor, num_chains: int) -> Tensor:
    """Weights of the rows in the SML surrogate's backward: the incoming gradient on the data rows,
    and minus its sum shared equally by the ``num_chains`` chain rows."""
    return torch.cat([grad, (grad.sum() / -num_chains).expand(num_chains)])


def _times_weight(x: Tensor, weight: Tensor, low: Tensor | None) -> Tensor:
    """``x @ weight``, or the product at the precision of ``low`` (``weight`` cast), returned in ``x``'s dtype."""
    return x @ weight if low is None else (x.to(low.dtype) @ low).to(x.dtype)


def _transposed_times(x: Tensor, g: Tensor, low: Tensor | None) -> Tensor:
    """``x.T @ g`` (the weight gradient), at the reduced precision of ``low`` when there is one."""
    return x.T @ g if low is None else (x.T.to(low.dtype) @ g.to(low.dtype)).to(g.dtype)


def _sml_outputs(ctx, neg_free: Tensor, probs: Tensor, num_data: int, *saved: Tensor | None):
    """The forward's outputs (data rows of -F, chain mean s, hidden probabilities) and its saved state."""
    s = neg_free[num_data:].mean()
    ctx.num_data = num_data
    ctx.save_for_backward(*saved)
    ctx.mark_non_differentiable(s, probs)
    ctx.set_materialize_grads(False)  # no zero gradients for the outputs without one
    return neg_free[:num_data], s, probs


class _BernoulliSML(torch.autograd.Function):
    r"""The SML surrogate of a Bernoulli RBM, with the closed-form backward.

    ``forward(v, num_data, weight, visible_bias, hidden_bias, visible_offset, hidden_offset)`` takes
    ``v``, the ``num_data`` data rows followed by the chain rows :math:`\tilde v_1, \dots, \tilde v_C`
    (2-D), and returns

    * the rows :math:`-F(v_n)` of the data, whose gradient is the SML estimate
      :math:`\nabla(-F(v_n)) - \frac1C \sum_c \nabla(-F(\tilde v_c))`;
    * :math:`s = \frac1C\sum_c -F(\tilde v_c)`, without gradient (for the divergence check);
    * the hidden probabilities :math:`\sigma(x)` of all rows, without gradient (for the chains' next
      hidden sample and the hidden offset).

    With visible and hidden offsets :math:`\mu, \lambda` (centered; both ``None`` otherwise)

    .. math::

        x = c + W^\top (v - \mu), \qquad
        -F(v) = b^\top (v - \mu) - \lambda^\top x + \sum_j \operatorname{softplus}(x_j),

        \nabla_W (-F) = (v - \mu)(\sigma(x) - \lambda)^\top, \quad \nabla_b (-F) = v - \mu, \quad
        \nabla_c (-F) = \sigma(x) - \lambda,

    summed over the rows with the surrogate's weights: one matrix product for :math:`W` and the
    sigmoid of the forward pass, as in a hand-written loop. First-order only (a second derivative
    raises ``RuntimeError``). ``low`` (``weight`` cast to a reduced-precision dtype, or ``None``) is used for the
    two products :math:`v^\top W` and :math:`\nabla_W`.
    """

    @staticmethod
    def forward(ctx, v, num_data, weight, visible_bias, hidden_bias, visible_offset, hidden_offset, low=None):
        centered = visible_offset is not None
        bias = hidden_bias - visible_offset @ weight if centered else hidden_bias
        x = torch.addmm(bias, v, weight) if low is None else _times_weight(v, weight, low).add_(bias)
        probs = torch.sigmoid(x)
        neg_free = torch.addmv(F.softplus(x).sum(-1), v, visible_bias)
        if centered:
            neg_free.sub_(torch.addmv(visible_offset @ visible_bias, x, hidden_offset))
        ctx.low = low
        return _sml_outputs(ctx, neg_free, probs, num_data, v, probs, visible_offset, hidden_offset)

    @staticmethod
    @once_differentiable
    @full_precision
    def backward(ctx, grad, _s, _probs):
        v, probs, mu, lam = ctx.saved_tensors
        needs = ctx.needs_input_grad
        w = _sml_row_weights(grad, v.shape[0] - ctx.num_data)
        g = (probs if lam is None else probs - lam) * w[:, None]
        gc = g.sum(0)
        gw = gb = None
        if needs[2]:
            gw = _transposed_times(v, g, ctx.low)
            if mu is not None:
                gw.addr_(mu, gc, alpha=-1)
        if needs[3]:
            gb = v.T @ w  # the offset's term, mu * sum(w), vanishes: the row weights sum to zero
        return None, None, gw, gb, gc if needs[4] else None, None, None, None


class _GaussianSML(torch.autograd.Function):
    r"""The SML surrogate of a Gaussian-Bernoulli RBM, with the closed-form backward; inputs and
    outputs as for :class:`_BernoulliSML`, with ``std`` (:math:`\sigma`) in place of the offsets.
    With :math:`s = v/\sigma`, :math:`z = (v - b)/\sigma` and :math:`x = c + W^\top s`,

    .. math::

        -F(v) = -\tfrac12 \lVert z \rVert^2 + \sum_j \operatorname{softplus}(x_j),
        \qquad \nabla_W (-F) = s\,\sigma(x)^\top, \quad \nabla_b (-F) = z/\sigma, \quad
        \nabla_c (-F) = \sigma(x),

        \nabla_{\sigma_i} (-F) = \big(z_i^2 - s_i\, (W\sigma(x))_i\big)/\sigma_i,

    where the :math:`\sigma` gradient summed over rows needs no further matrix product:
    :math:`\big(\sum_r w_r z_{r,i}^2 - \sum_j W_{ij} (\nabla_W)_{ij}\big)/\sigma_i`. First-order only.
    """

    @staticmethod
    def forward(ctx, v, num_data, weight, visible_bias, hidden_bias, std, low=None):
        stat = v / std
        z = (v - visible_bias) / std
        x = (
            torch.addmm(hidden_bias, stat, weight)
            if low is None
            else _times_weight(stat, weight, low).add_(hidden_bias)
        )
        probs = torch.sigmoid(x)
        neg_free = F.softplus(x).sum(-1) - 0.5 * (z * z).sum(-1)
        ctx.low = low
        return _sml_outputs(ctx, neg_free, probs, num_data, stat, z, weight, std, probs)

    @staticmethod
    @once_differentiable
    @full_precision
    def backward(ctx, grad, _s, _probs):
        stat, z, weight, std, probs = ctx.saved_tensors
        needs = ctx.needs_input_grad
        w = _sml_row_weights(grad, stat.shape[0] - ctx.num_data)
        g = probs * w[:, None]
        gw = _transposed_times(stat, g, ctx.low) if needs[2] or needs[5] else None
        gb = (z.T @ w) / std if needs[3] else None
        gc = g.sum(0) if needs[4] else None
        gs = ((z * z).T @ w - (weight * gw).sum(1)) / std if needs[5] else None
        return None, None, gw if needs[2] else None, gb, gc, gs, None


class RBM(PyroModule):
    """Base class: binary hidden units, visible units defined by a subclass.

    Parameters are ``weight`` (``n_visible x n_hidden``), ``visible_bias`` and ``hidden_bias``.
    ``log_z`` holds the latest estimate of :math:`\\log Z` (``None`` if there is none); it is set
    by :func:`~dgm_ppl.energy.exact_log_partition` and :func:`~dgm_ppl.energy.ais_log_partition`
    and used as the normalizer of :meth:`distribution`.

    ``name`` is the prefix of the parameters in Pyro's param store. By default each instance gets
    a unique one (``BernoulliRBM_0``, ``BernoulliRBM_1``, ...), so several RBMs can share a model;
    pass a fixed name when optimizer state must be restored in another process.

    ``matmul_dtype`` (e.g. ``torch.bfloat16``; default ``None``, the parameters' dtype) is the precision of the
    matrix products on the training path: the Gibbs sweeps of the chains that :meth:`distribution` advances and
    the SML surrogate's :math:`s(v)^\top W` and weight gradient. The parameters, the optimizer, the bias terms and
    the free energies stay in the parameters' dtype, and everything that scores the model (:meth:`free_energy`,
    :meth:`sample`, the partition functions, ``log_prob`` without gradient) uses the full precision. On CPUs
    with bfloat16 instructions (AVX-512 BF16, AMX) the products run about twice as fast; rounding the weight to
    bfloat16 changes each pre-activation by about 0.4% of its size, far below the Monte Carlo noise of SML.

    Every RBM satisfies :class:`~dgm_ppl.energy.protocol.FreeEnergyModel` (and so
    :class:`~dgm_ppl.energy.protocol.EnergyModel`), through which the chains, the distribution and
    the partition functions use it.
    """

    support: constraints.Constraint
    binary_visible: bool = False
    #: whether the energy is written around offsets (see :class:`BernoulliRBM`)
    centered: bool = False
    #: the class of this model's persistent chains, built by ``PersistentChains(rbm, ...)``
    chain_class: type = PersistentChains
    #: a deferred move of the hidden offset (:meth:`update_offsets` with ``defer=True``), applied by the
    #: next :meth:`forward`; saved with the model's state
    pending_hidden_means: Tensor | None = None

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        init_std: float = 0.01,
        name: str | None = None,
        matmul_dtype: torch.dtype | None = None,
    ):
        for label, n in (("n_visible", n_visible), ("n_hidden", n_hidden)):
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"{label} must be a positive int, got {n!r}")
        if matmul_dtype is not None and (
            not isinstance(matmul_dtype, torch.dtype) or not matmul_dtype.is_floating_point
        ):
            raise ValueError(f"matmul_dtype must be a floating-point torch.dtype or None, got {matmul_dtype!r}")
        # A unique default name keeps two RBMs in one model from sharing Pyro param-store entries.
        super().__init__(name if name is not None else f"{type(self).__name__}_{next(_counter)}")
        self.matmul_dtype = matmul_dtype
        self.n_visible, self.n_hidden = n_visible, n_hidden
        self.weight = nn.Parameter(torch.randn(n_visible, n_hidden) * init_std)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self.log_z: float | None = None

    # ----------------------------------------------------------------- state
    def get_extra_state(self) -> dict:
        return {"log_z": self.log_z, "pending_hidden_mean": self.pending_hidden_means}

    def set_extra_state(self, state: dict) -> None:
        self.log_z = state.get("log_z")
        self.pending_hidden_means = state.get("pending_hidden_mean")

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}"

    # ----------------------------------------------- subclass hooks (all take params)
    @full_precision
    def params(self) -> RBMParams:
        """The parameters in standard form. Subclasses may reparametrize (centering)."""
        return RBMParams(self.weight, self.visible_bias, self.hidden_bias)

    def _visible_stat(self, p: RBMParams, v: Tensor) -> Tensor:
        return v

    def _visible_term(self, p: RBMParams, v: Tensor, bias: Tensor) -> Tensor:
        raise NotImplementedError

    def _sample_visible(self, p: RBMParams, hidden_input: Tensor, bias: Tensor) -> Tensor:
        """Sample v given ``W h`` (already computed) and an effective visible bias."""
        raise NotImplementedError

    def _log_marginal_given_hidden(self, p: RBMParams, h: Tensor) -> Tensor:
        r""":math:`\log \int e^{-E(v,h)} dv` (or the sum over binary v), shape ``h.shape[:-1]``."""
        raise NotImplementedError

    def base_log_partition(self, base: Tensor | None = None) -> Tensor:
        """log Z of the base model at beta = 0 (visible factorial, hidden uniform)."""
        raise NotImplementedError

    def sample_base(self, num_samples: int, base: Tensor | None = None) -> Tensor:
        """Exact samples of v from the base model at beta = 0."""
        raise NotImplementedError

    def base_rate(self, data: Tensor) -> Tensor:
        """A base model fitted to ``data`` (visible marginals), for AIS and initialization."""
        raise NotImplementedError

    def _data(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor (NumPy arrays and lists go to the parameters' device and dtype)."""
        return as_tensor_like(data, self.weight, name)

    def to_tensor(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through unchanged, NumPy arrays and lists are converted to
        the parameters' dtype and device. No check of the values.

        :param name: the argument, as error messages name it.
        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.weight, name)

    def check_data(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor (:meth:`to_tensor`), after checking that it holds visible states: the
        width ``n_visible`` and finite values (binary ones for Bernoulli units), in one fused pass.

        :param name: the argument, as error messages name it.
        :returns: the tensor (``data`` itself when it is one).
        :raises ValueError: for values of the wrong width, with NaN or inf, or (Bernoulli units) not binary.
        """
        v = as_tensor_like(data, self.weight, name)
        self._check_visible(v)
        return v

    def _check_visible(self, v: Tensor) -> None:
        """Shape and finiteness of visible values: one reduction (one host sync) when they are fine."""
        if v.shape[-1:] != (self.n_visible,):
            raise ValueError(
                f"expected the last dimension to be n_visible={self.n_visible}, got shape {tuple(v.shape)}"
            )
        if not check_finite(v):
            raise ValueError("values contain NaN or inf")

    @torch.no_grad()
    def init_from_data(self, data: Tensor) -> RBM:
        """Set the visible biases to the base model fitted to ``data`` (:meth:`base_rate`).

        :param data: visible values, shape ``(N, n_visible)``; a tensor, or a NumPy array converted to
            the parameters' device and dtype.
        :returns: the model itself.
        :raises ValueError: for data of the wrong width, with NaN or inf, or (Bernoulli units) not binary.
        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        data = self._data(data, "init_from_data(data)")
        self._check_visible(data)
        self.visible_bias.copy_(self.base_rate(data))
        return self

    # ---------------------------------------------------------------- energy
    def _default_base(self, p: RBMParams, base: Tensor | None) -> Tensor:
        return torch.zeros_like(p.visible_bias) if base is None else self._data(base, "base")

    def energy(self, v: Tensor | Sequence[Tensor], h: Tensor | None = None) -> Tensor:
        r"""The energy :math:`E(v,h) = -\ell(v) - c^\top h - s(v)^\top W h`, shape ``batch``.

        :param v: visible states, or the joint states ``[v, h]`` (as for :meth:`DBM.energy`) when ``h``
            is not given.
        :param h: hidden states.
        """
        if h is None:
            if len(v) != 2:
                raise ValueError(f"expected the layer states [v, h], got {len(v)} states")
            v, h = v
        v, h = self._data(v, "v"), self._data(h, "h")
        p = self.params()
        coupling = ((self._visible_stat(p, v) @ p.weight) * h).sum(-1)
        return -(self._visible_term(p, v, p.visible_bias) + h @ p.hidden_bias + coupling + p.const)

    def free_energy(self, v: Tensor) -> Tensor:
        r"""The free energy :math:`F(v) = -\log \sum_h e^{-E(v,h)}`, computed with softplus.

        Plain autograd (any order of derivatives, in the parameters and in ``v``); the SML path of
        :meth:`distribution` uses a closed-form first-order backward instead."""
        return -self._neg_free_energy(self.params(), self._data(v, "v"))

    def unnormalized_log_prob(self, v: Tensor, *, params: RBMParams | None = None) -> Tensor:
        r"""The unnormalized :math:`\log p^*(v) = -F(v)` of visible states, moved to the parameters'
        dtype and device; no check of the values (see :meth:`check_data`).

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        return self._neg_free_energy(p, self._data(v, "v").to(p.weight))

    def hidden_preactivation(self, v: Tensor, *, params: RBMParams | None = None) -> Tensor:
        r"""The hidden pre-activations :math:`c + s(v)^\top W` (the logits of :math:`p(h|v)`)."""
        p = self.params() if params is None else params
        return self._hidden_input(p, self._data(v, "v"))

    def sml_terms(self, v: Tensor, num_data: int, *, params: RBMParams | None = None) -> tuple[Tensor, Tensor, Tensor]:
        r"""The SML surrogate of the rows of 2-D ``v``: its first ``num_data`` rows are data, the rest
        chain states :math:`\tilde v_c`. Returns :math:`-F` of the data rows, with gradient
        :math:`\nabla(-F(v_n)) - \frac1C\sum_c \nabla(-F(\tilde v_c))`; the chains' mean :math:`s` of
        :math:`-F` and the hidden probabilities of all rows, both without gradient. A closed-form
        backward serves where it applies (first order, plain tensors).

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        return self._sml_terms(self.params() if params is None else params, v, num_data)

    def sml_gradient(
        self, v: Tensor, probs: Tensor, num_data: int, *, params: RBMParams | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""The SML gradient in standard form, :math:`\frac1N\sum_n \nabla(-F(v_n)) - \frac1C\sum_c
        \nabla(-F(\tilde v_c))` with respect to :math:`(W, b, c)`, without gradient tracking.

        :param v: 2-D rows, ``num_data`` data rows then chain states.
        :param probs: their hidden probabilities :math:`\sigma(c + s(v)^\top W)` (as :meth:`sml_terms` returns them).
        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        :returns: the gradients of the weight, the visible bias and the hidden bias.
        """
        p = self.params() if params is None else params
        v = v.to(p.weight)
        num_chains = v.shape[0] - num_data
        if num_data < 1 or num_chains < 1:
            raise ValueError(f"need data and chain rows, got {num_data} of {v.shape[0]} rows as data")
        w = torch.cat([v.new_full((num_data,), 1.0 / num_data), v.new_full((num_chains,), -1.0 / num_chains)])
        with torch.no_grad():
            g = probs.to(p.weight) * w[:, None]
            grad_w = self._visible_stat(p, v).T @ g
            grad_c = g.sum(0)
        with torch.enable_grad():  # the visible term is elementwise: its bias gradient by autograd is cheap
            b = p.visible_bias.detach().requires_grad_()
            (grad_b,) = torch.autograd.grad(self._visible_term(p, v, b) @ w, b)
        return grad_w, grad_b, grad_c

    def shifted_params(self, params: RBMParams, shift: Sequence[Tensor]) -> RBMParams:
        """The standard-form ``params`` plus ``shift = (dW, db, dc)`` (e.g. fast weights), for sampling: the
        centering is dropped, so these parameters are not for :meth:`sml_terms`."""
        dw, db, dc = shift
        weight = params.weight + dw
        low = None if params.matmul_weight is None else weight.detach().to(params.matmul_weight.dtype)
        return params._replace(
            weight=weight,
            visible_bias=params.visible_bias + db,
            hidden_bias=params.hidden_bias + dc,
            centering=None,
            matmul_weight=low,
        )

    def _hidden_input(self, p: RBMParams, v: Tensor) -> Tensor:
        """Hidden pre-activations :math:`c + s(v)^\\top W`."""
        s = self._visible_stat(p, v)
        return torch.addmm(p.hidden_bias, s, p.weight) if s.dim() == 2 else s @ p.weight + p.hidden_bias

    def _neg_free_energy_and_input(self, p: RBMParams, v: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`-F(v)` and the hidden pre-activations it was computed from."""
        x = self._hidden_input(p, v)
        return self._visible_term(p, v, p.visible_bias) + F.softplus(x).sum(-1) + p.const, x

    def _neg_free_energy(self, p: RBMParams, v: Tensor) -> Tensor:
        return self._neg_free_energy_and_input(p, v)[0]

    def _sml_terms(self, p: RBMParams, v: Tensor, num_data: int) -> tuple[Tensor, Tensor, Tensor]:
        r"""The SML surrogate of the rows of 2-D ``v``: its first ``num_data`` rows are data, the rest
        chain states :math:`\tilde v_c`. Returns :math:`-F` of the data rows, with gradient
        :math:`\nabla(-F(v_n)) - \frac1C\sum_c \nabla(-F(\tilde v_c))`; the chains' mean
        :math:`s` of :math:`-F` and the hidden probabilities of all rows, both without gradient.

        This default differentiates the plain path by autograd; subclasses give it a closed-form
        backward where :func:`closed_form_applies`."""
        neg_free, x = self._neg_free_energy_and_input(p, v)
        s = neg_free[num_data:].mean()
        return neg_free[:num_data] - (s - s.detach()), s.detach(), torch.sigmoid(x.detach())

    def tempered_log_prob(
        self, v: Tensor, beta: Beta = 1.0, base: Tensor | None = None, *, params: RBMParams | None = None
    ) -> Tensor:
        r"""Unnormalized :math:`\log p^*_\beta(v)` on the path from the base model (``beta=0``) to
        the RBM (``beta=1``, where it equals :math:`-F(v)`).

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        return self._tempered_log_prob(self.params() if params is None else params, self._data(v, "v"), beta, base)

    def _tempered_log_prob(self, p: RBMParams, v: Tensor, beta: Beta, base: Tensor | None) -> Tensor:
        return self._tempered_from_input(p, v, self._hidden_input(p, v), beta, self._default_base(p, base))

    def _tempered_from_input(self, p: RBMParams, v: Tensor, x: Tensor, beta: Beta, a: Tensor) -> Tensor:
        beta_v = beta if isinstance(beta, float) else beta.squeeze(-1)
        term = (1 - beta_v) * self._visible_term(p, v, a) + beta_v * self._visible_term(p, v, p.visible_bias)
        return term + F.softplus(beta * x).sum(-1) + beta_v * p.const

    # ---------------------------------------------------------- conditionals
    def hidden_given_visible(self, v: Tensor) -> dist.Distribution:
        """The factorial conditional p(h | v), a Bernoulli with event dim 1."""
        p = self.params()
        return dist.Bernoulli(logits=self._hidden_input(p, self._data(v, "v"))).to_event(1)

    def visible_given_hidden(self, h: Tensor) -> dist.Distribution:
        """The factorial conditional p(v | h), with event dim 1."""
        raise NotImplementedError

    def sample_hidden(self, v: Tensor, beta: Beta = 1.0) -> Tensor:
        """Draw h ~ p_beta(h | v)."""
        p = self.params()
        return bernoulli(torch.sigmoid(beta * self._hidden_input(p, self._data(v, "v"))))

    def sample_visible(
        self, h: Tensor, beta: Beta = 1.0, base: Tensor | None = None, *, params: RBMParams | None = None
    ) -> Tensor:
        """Draw v ~ p_beta(v | h).

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        return self._draw_visible(self.params() if params is None else params, self._data(h, "h"), beta, base)

    def _draw_visible(self, p: RBMParams, h: Tensor, beta: Beta = 1.0, a: Tensor | None = None) -> Tensor:
        """v ~ p_beta(v | h) on the annealing path (a plain draw from p(v | h) at beta = 1)."""
        low = None if p.matmul_weight is None else p.matmul_weight.T
        product = _times_weight(h, p.weight.T, low)
        if isinstance(beta, float) and beta == 1.0:
            return self._sample_visible(p, product, p.visible_bias)
        a = self._default_base(p, a)
        return self._sample_visible(p, beta * product, (1 - beta) * a + beta * p.visible_bias)

    def _gibbs(self, p: RBMParams, v: Tensor, beta: Beta = 1.0, a: Tensor | None = None) -> Tensor:
        if p.matmul_weight is None:
            x = self._hidden_input(p, v)
        else:
            x = _times_weight(self._visible_stat(p, v), p.weight, p.matmul_weight).add_(p.hidden_bias)
        h = bernoulli(torch.sigmoid(x if isinstance(beta, float) and beta == 1.0 else beta * x))
        return self._draw_visible(p, h, beta, a)

    @torch.no_grad()
    def gibbs(
        self,
        states: Tensor,
        steps: int = 1,
        beta: Beta = 1.0,
        base: Tensor | None = None,
        *,
        params: RBMParams | None = None,
    ) -> Tensor:
        """``steps`` block-Gibbs sweeps v -> h -> v at inverse temperature ``beta``, without gradient.

        :param states: visible states ``(..., n_visible)``.
        :param beta: inverse temperature on the path from the base model ``base``; a tensor of shape
            ``(T, 1, 1)`` for states of shape ``(T, C, n_visible)``.
        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        v = self._data(states, "v")
        for _ in range(steps):
            v = self._gibbs(p, v, beta, base)
        return v

    def gibbs_step(self, v: Tensor, beta: Beta = 1.0, base: Tensor | None = None, steps: int = 1) -> Tensor:
        """Deprecated alias of :meth:`gibbs` (with its former argument order)."""
        warnings.warn("RBM.gibbs_step is deprecated; use RBM.gibbs(v, steps, beta, base)", DeprecationWarning, 2)
        return self.gibbs(v, steps, beta, base)

    @torch.no_grad()
    def sample(self, num_samples: int, steps: int = 1000, init: Tensor | None = None) -> Tensor:
        """Approximate samples by ``steps`` Gibbs sweeps from ``init`` (default: the base model)."""
        v = self.sample_base(num_samples) if init is None else self._data(init, "init")
        return self.gibbs(v, steps=steps)

    def random_state(self, num_samples: int) -> Tensor:
        """Initial chain states from the factorial model given by the visible biases."""
        return self.sample_base(num_samples, self.params().visible_bias.detach())

    def random_visible(self, num_samples: int) -> Tensor:
        """Deprecated alias of :meth:`random_state`."""
        warnings.warn("RBM.random_visible is deprecated; use RBM.random_state", DeprecationWarning, 2)
        return self.random_state(num_samples)

    def persistent_chains(self, num_chains: int = 100, steps: int = 1, init: Tensor | None = None):
        """This model's persistent chains, ``chain_class(self, num_chains, steps, init)`` (see
        :class:`~dgm_ppl.energy.PersistentChains`)."""
        return self.chain_class(self, num_chains, steps, init)

    # ------------------------------------------------------ partition functions
    def annealing_path(self, base: Tensor | None = None) -> _RBMAnnealingPath:
        """The AIS path from the base model ``base`` (default: zero visible biases or means) to this
        RBM, over visible states; parameters as now. See :class:`~dgm_ppl.energy.protocol.AnnealingPath`."""
        return _RBMAnnealingPath(self, base)

    def enumeration(self) -> Enumeration:
        """Exact log Z enumerates the smaller layer (always the hidden layer for non-binary visible
        units) and sums the other out in closed form. Differentiable in the parameters."""
        p = self.params()
        if self.binary_visible and self.n_visible < self.n_hidden:
            return Enumeration(
                self.n_visible, "states of the visible layer", lambda v: self._neg_free_energy(p, v), p.weight
            )
        return Enumeration(
            self.n_hidden,
            "states of the hidden layer",
            lambda h: self._log_marginal_given_hidden(p, h),
            p.weight,
            p.const,
        )

    # ----------------------------------------------------------- Pyro glue
    def forward(self, chains, **kwargs):
        self._before_distribution()
        # Reading the parameters inside the PyroModule context records them as param sites,
        # so SVI finds them without a separate ``pyro.module`` call.
        return EnergyBasedDistribution(self, chains, params=self.training_params(), **kwargs)

    @full_precision
    def training_params(self) -> RBMParams:
        """:meth:`params`, plus the weight cast to ``matmul_dtype`` when the model has one: the parameters of the
        training path (the chains' sweeps and the SML surrogate), which :meth:`distribution` passes on."""
        p = self.params()
        if self.matmul_dtype is None:
            return p
        return p._replace(matmul_weight=p.weight.detach().to(self.matmul_dtype))

    def _before_distribution(self) -> None:
        """Apply a deferred offset move (see :meth:`update_offsets`), with gradients enabled only."""
        pending = self.pending_hidden_means
        if pending is not None:
            self.pending_hidden_means = None
            if self.centered and torch.is_grad_enabled():
                self.update_offsets(pending)

    @full_precision
    def update_offsets(self, hidden_means: Tensor | Sequence[Tensor], *, defer: bool = False) -> None:
        r"""Move the hidden offset :math:`\lambda` of a centered RBM towards ``hidden_means`` (see
        :meth:`BernoulliRBM.update_hidden_offset`); nothing for an uncentered one.

        :param hidden_means: the data's mean hidden probabilities, shape ``(n_hidden,)`` (or a
            sequence holding that one tensor).
        :param defer: keep the move in ``pending_hidden_means``, to be applied by the next
            :meth:`forward` with gradients enabled (how the distribution reports the means of a
            positive phase whose graph still holds the biases).
        """
        if not self.centered:
            return
        if defer:
            self.pending_hidden_means = hidden_means
            return
        if isinstance(hidden_means, (list, tuple)):
            if len(hidden_means) != 1:
                raise ValueError(f"an RBM has one hidden layer, got {len(hidden_means)} hidden means")
            (hidden_means,) = hidden_means
        self.update_hidden_offset(hidden_means)

    def update_hidden_offset(self, hidden_mean: Tensor) -> None:
        """Move the hidden offset towards ``hidden_mean`` (centered models only)."""
        raise NotImplementedError(f"{type(self).__name__} has no hidden offset")

    def distribution(self, chains, **kwargs):
        """A Pyro distribution over v whose ``log_prob`` carries the SML gradient.

        See :class:`~dgm_ppl.energy.EnergyBasedDistribution`.
        """
        return self(chains, **kwargs)


class BernoulliRBM(RBM):
    r"""RBM with binary visible and hidden units,
    :math:`E(v,h) = -b^\top v - c^\top h - v^\top W h`.

    With ``centered=True`` the energy is written around offsets :math:`\mu` (visible) and
    :math:`\lambda` (hidden), :math:`E = -(v-\mu)^\top b - c^\top (h-\lambda) - (v-\mu)^\top W (h-\lambda)`
    (Montavon & Müller 2012; Melchior et al. 2016). The model family is unchanged, but the
    gradient becomes :math:`\langle (v-\mu)(h-\lambda)^\top \rangle_{data} - \langle\cdot\rangle_{model}`,
    which conditions learning much better. :math:`\mu` is set by :meth:`init_from_data`;
    :math:`\lambda` follows a moving average of the data's hidden means during training.
    """

    support = constraints.independent(constraints.boolean, 1)
    binary_visible = True

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        centered: bool = False,
        offset_rate: float = 0.01,
        init_std: float = 0.01,
        name: str | None = None,
        matmul_dtype: torch.dtype | None = None,
    ):
        super().__init__(n_visible, n_hidden, init_std=init_std, name=name, matmul_dtype=matmul_dtype)
        self.centered = centered
        self.offset_rate = offset_rate
        self.register_buffer("visible_offset", torch.full((n_visible,), 0.5 if centered else 0.0))
        self.register_buffer("hidden_offset", torch.full((n_hidden,), 0.5 if centered else 0.0))

    @full_precision
    def params(self) -> RBMParams:
        w, b, c = self.weight, self.visible_bias, self.hidden_bias
        if not self.centered:
            return RBMParams(w, b, c)
        mu, lam = self.visible_offset, self.hidden_offset
        # -E = v.(b - W lam) + h.(c - W^T mu) + v^T W h + const,  const = -mu.b - c.lam + mu^T W lam
        wl = w @ lam
        return RBMParams(w, b - wl, c - mu @ w, -(mu @ b) - (c @ lam) + (mu @ wl), centering=(b, c, mu, lam))

    @torch.no_grad()
    def update_hidden_offset(self, hidden_mean: Tensor) -> None:
        r"""Move :math:`\lambda` towards ``hidden_mean`` and shift :math:`b` so that the
        distribution is unchanged: :math:`b \leftarrow b + W(\lambda' - \lambda)`."""
        hidden_mean = self._data(hidden_mean, "hidden_mean")
        new = (1 - self.offset_rate) * self.hidden_offset + self.offset_rate * hidden_mean
        self.visible_bias.add_(self.weight @ (new - self.hidden_offset))
        self.hidden_offset.copy_(new)

    @torch.no_grad()
    def init_from_data(self, data: Tensor) -> BernoulliRBM:
        """Set the visible biases to the data's base rates (and the visible offset to the data
        mean when centered), as recommended by Hinton's practical guide.

        :param data: binary tensor or NumPy array of shape ``(N, n_visible)``.
        :returns: the model itself.
        :raises ValueError: for data of the wrong width, not binary, or with NaN or inf.
        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        data = self._data(data, "init_from_data(data)")
        super().init_from_data(data)
        if self.centered:
            self.visible_offset.copy_(data.to(self.visible_offset).mean(0))
        return self

    def _visible_term(self, p: RBMParams, v: Tensor, bias: Tensor) -> Tensor:
        return v @ bias

    def _sml_terms(self, p: RBMParams, v: Tensor, num_data: int) -> tuple[Tensor, Tensor, Tensor]:
        if not closed_form_applies(v):
            return super()._sml_terms(p, v, num_data)
        if p.centering is None:
            return _BernoulliSML.apply(
                v, num_data, p.weight, p.visible_bias, p.hidden_bias, None, None, p.matmul_weight
            )
        b, c, mu, lam = p.centering
        return _BernoulliSML.apply(v, num_data, p.weight, b, c, mu, lam, p.matmul_weight)

    def _draw_visible(self, p: RBMParams, h: Tensor, beta: Beta = 1.0, a: Tensor | None = None) -> Tensor:
        if h.dim() == 2 and isinstance(beta, float) and beta == 1.0 and p.matmul_weight is None:  # one fused product
            return bernoulli(torch.sigmoid(torch.addmm(p.visible_bias, h, p.weight.T)))
        return super()._draw_visible(p, h, beta, a)

    def _sample_visible(self, p: RBMParams, hidden_input: Tensor, bias: Tensor) -> Tensor:
        return bernoulli(torch.sigmoid(hidden_input + bias))

    def _log_marginal_given_hidden(self, p: RBMParams, h: Tensor) -> Tensor:
        return h @ p.hidden_bias + F.softplus(h @ p.weight.T + p.visible_bias).sum(-1)

    def visible_given_hidden(self, h: Tensor) -> dist.Distribution:
        p = self.params()
        return dist.Bernoulli(logits=h @ p.weight.T + p.visible_bias).to_event(1)

    def base_log_partition(self, base: Tensor | None = None) -> Tensor:
        a = self._default_base(self.params(), base)
        return F.softplus(a).sum() + self.n_hidden * math.log(2.0)

    def sample_base(self, num_samples: int, base: Tensor | None = None) -> Tensor:
        a = self._default_base(self.params(), base).detach()
        return bernoulli(torch.sigmoid(a).expand(num_samples, -1).contiguous())

    def base_rate(self, data: Tensor) -> Tensor:
        data = self._data(data).to(self.weight)
        p = (data.sum(0) + 1.0) / (data.shape[0] + 2.0)  # Laplace smoothing keeps logits finite
        return torch.logit(p)

    def _check_visible(self, v: Tensor) -> None:
        """Shape, then binary and finite values in one fused pass (:func:`check_binary`)."""
        if v.shape[-1:] != (self.n_visible,) or not check_binary(v):
            super()._check_visible(v)  # names a wrong width or NaN/inf
            bad = (v != 0) & (v != 1)
            raise ValueError(f"Bernoulli visible units need values in {{0, 1}}, got {v[bad].flatten()[0].item()!r}")


class GaussianBernoulliRBM(RBM):
    r"""RBM with Gaussian visible units and binary hidden units,

    .. math::

        E(v,h) = \sum_i \frac{(v_i - b_i)^2}{2\sigma_i^2} - c^\top h - (v/\sigma)^\top W h,

    so :math:`p(v|h) = \mathcal N(b + \sigma \odot W h, \sigma^2)` and
    :math:`p(h_j=1|v) = \operatorname{sigmoid}(c_j + (v/\sigma)^\top W_{:j})`.
    The standard deviations :math:`\sigma` are fixed (``learn_std=False``) or learned through
    ``log_std``.
    """

    support = constraints.independent(constraints.real, 1)

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        std: float | Tensor = 1.0,
        learn_std: bool = False,
        init_std: float = 0.01,
        name: str | None = None,
        matmul_dtype: torch.dtype | None = None,
    ):
        super().__init__(n_visible, n_hidden, init_std=init_std, name=name, matmul_dtype=matmul_dtype)
        log_std = torch.log(torch.as_tensor(std, dtype=torch.get_default_dtype()).expand(n_visible).clone())
        if not torch.isfinite(log_std).all():
            raise ValueError("std must be positive and finite")
        if learn_std:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    @full_precision
    def params(self) -> RBMParams:
        return RBMParams(self.weight, self.visible_bias, self.hidden_bias, 0.0, self.log_std.exp())

    def _visible_stat(self, p: RBMParams, v: Tensor) -> Tensor:
        return v / p.std

    def _visible_term(self, p: RBMParams, v: Tensor, bias: Tensor) -> Tensor:
        return -(((v - bias) / p.std) ** 2).sum(-1) / 2

    def _sml_terms(self, p: RBMParams, v: Tensor, num_data: int) -> tuple[Tensor, Tensor, Tensor]:
        if not closed_form_applies(v):
            return super()._sml_terms(p, v, num_data)
        return _GaussianSML.apply(v, num_data, p.weight, p.visible_bias, p.hidden_bias, p.std, p.matmul_weight)

    def _sample_visible(self, p: RBMParams, hidden_input: Tensor, bias: Tensor) -> Tensor:
        mean = bias + p.std * hidden_input
        return mean + p.std * torch.randn_like(mean)

    def _log_marginal_given_hidden(self, p: RBMParams, h: Tensor) -> Tensor:
        a = h @ p.weight.T
        const = (torch.log(p.std) + 0.5 * math.log(2 * math.pi)).sum()
        return h @ p.hidden_bias + (p.visible_bias * a / p.std + a**2 / 2).sum(-1) + const

    def visible_given_hidden(self, h: Tensor) -> dist.Distribution:
        p = self.params()
        return dist.Normal(p.visible_bias + p.std * (h @ p.weight.T), p.std).to_event(1)

    def base_log_partition(self, base: Tensor | None = None) -> Tensor:
        std = self.log_std.exp()
        return (torch.log(std) + 0.5 * math.log(2 * math.pi)).sum() + self.n_hidden * math.log(2.0)

    def sample_base(self, num_samples: int, base: Tensor | None = None) -> Tensor:
        p = self.params()
        a = self._default_base(p, base).detach()
        std = p.std.detach()
        return a + std * torch.randn(num_samples, self.n_visible, dtype=a.dtype, device=a.device)

    def base_rate(self, data: Tensor) -> Tensor:
        return self._data(data).to(self.weight).mean(0)


class _RBMAnnealingPath:
    r"""The AIS path of an RBM over visible states (``state = [v]``), with the hidden units summed out:
    :math:`\log p^*_\beta(v)` of the module's notes, and one block-Gibbs sweep
    :math:`v \to h \to v` at :math:`\beta` as the transition. The cache is the hidden pre-activations
    of ``v``, shared by both temperatures of a step and the next draw of ``h``."""

    def __init__(self, model: RBM, base: Tensor | None):
        self.model, self.base = model, base
        self.params = model.params()
        self.visible_base = model._default_base(self.params, base)

    def initial_state(self, num_chains: int) -> list[Tensor]:
        return [self.model.sample_base(num_chains, self.base)]

    def state_from_samples(self, samples) -> list[Tensor]:
        samples = self.model.check_data(samples, "samples")
        return [samples.to(self.params.weight)]

    def prepare(self, state: list[Tensor]) -> Tensor:
        return self.model._hidden_input(self.params, state[0])

    def log_prob(self, state: list[Tensor], beta: float, cache: Tensor) -> Tensor:
        return self.model._tempered_from_input(self.params, state[0], cache, beta, self.visible_base)

    def transition(self, state: list[Tensor], beta: float, cache: Tensor) -> list[Tensor]:
        h = bernoulli(torch.sigmoid(beta * cache))
        return [self.model._draw_visible(self.params, h, beta, self.visible_base)]
