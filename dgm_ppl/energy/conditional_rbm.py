r"""The conditional RBM for sequences (Taylor, Hinton & Roweis 2007; Goodfellow et al. §20.7).

An RBM on the frame :math:`v_t` whose biases are linear functions of the previous ``order`` frames
:math:`v_{t-1}, \dots, v_{t-n}` (the *history*),

.. math::

    \hat b_t = b + \sum_{k=1}^{n} A_k^\top v_{t-k}, \qquad \hat c_t = c + \sum_{k=1}^{n} B_k^\top v_{t-k},

with binary hidden units :math:`h` and binary (Bernoulli) or unit-variance Gaussian visible units,

.. math::

    E_{\text{Bernoulli}}(v_t, h \mid v_{<t}) = -\hat b_t^\top v_t - \hat c_t^\top h - v_t^\top W h, \qquad
    E_{\text{Gaussian}}(v_t, h \mid v_{<t}) = \tfrac12 \lVert v_t - \hat b_t \rVert^2 - \hat c_t^\top h - v_t^\top W h.

Given its history a frame is an ordinary RBM, so the hidden units sum out,

.. math::

    -F(v_t \mid v_{<t}) = \ell(v_t) + \sum_j \operatorname{softplus}(\hat c_{t,j} + v_t^\top W_{:j}), \qquad
    \ell(v) = \hat b_t^\top v \ \text{ or } \ -\tfrac12 \lVert v - \hat b_t \rVert^2,

and :math:`p(v_t \mid v_{<t}) = e^{-F(v_t \mid v_{<t})} / Z(v_{<t})`. The partition function depends on the
history, so every frame has its own; :meth:`ConditionalRBM.exact_log_partition` computes it by enumerating the
smaller layer (always the hidden one for Gaussian units, whose visible integral is closed-form:
:math:`\log\int e^{-E} dv = \hat c_t^\top h + \hat b_t^\top W h + \tfrac12\lVert W h\rVert^2 + \tfrac{n_v}2 \log 2\pi`).

Training maximizes :math:`\sum_t \log p(v_t \mid v_{<t})`, whose gradient is
:math:`\nabla(-F(v_t \mid v_{<t})) - \mathbb E_{p(v \mid v_{<t})}[\nabla(-F(v \mid v_{<t}))]`. Since the
conditional model changes with every frame, the negative phase is CD-k started at the frame itself and run
under that frame's dynamic biases, as in the paper: :class:`ConditionalRBMDistribution` returns
:math:`-F(v_t \mid v_{<t})` through the per-row surrogate
:math:`-F(v_t) - (-F(\tilde v_t) - \operatorname{stop\_grad}(-F(\tilde v_t)))` (the gradient reaches
:math:`A, B` through the dynamic biases), so that ``SVI(..., Trace_ELBO())`` performs CD-k. For tiny models it can
instead return the exact :math:`\log p(v_t \mid v_{<t})` with its exact gradient (``exact=True``).

Histories are tensors ``batch + (order, n_visible)`` in time order: ``history[..., -1, :]`` is :math:`v_{t-1}` and
``history[..., 0, :]`` is :math:`v_{t-n}`; :meth:`ConditionalRBM.windows` cuts them from sequences.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import Tensor, nn

from ._ops import as_tensor_like, bernoulli, binary_states, check_count, check_finite, full_precision, require_binary
from .frame_distribution import FrameDistribution, bernoulli_log_partition

__all__ = ["ConditionalRBM", "ConditionalRBMDistribution", "CRBMParams"]

_counter = itertools.count()
_CHUNK = 2**12  # enumerated states per chunk of the exact log partition
_VISIBLE = ("bernoulli", "gaussian")


class CRBMParams(NamedTuple):
    """The parameters of a conditional RBM: ``weight`` :math:`W` ``(n_visible, n_hidden)``, the static biases
    :math:`b, c`, and the history weights :math:`A` ``(order, n_visible, n_visible)`` and :math:`B`
    ``(order, n_visible, n_hidden)`` (index ``k - 1`` for lag ``k``)."""

    weight: Tensor
    visible_bias: Tensor
    hidden_bias: Tensor
    visible_history_weight: Tensor
    hidden_history_weight: Tensor


class ConditionalRBM(PyroModule):
    r"""A conditional RBM (Taylor, Hinton & Roweis 2007) on frames of ``n_visible`` units given the previous
    ``order`` frames; see the module's notes for the math.

    Parameters: ``weight`` (:math:`W`, ``n_visible x n_hidden``), ``visible_bias`` (:math:`b`), ``hidden_bias``
    (:math:`c`), ``visible_history_weight`` (:math:`A`, ``order x n_visible x n_visible``) and
    ``hidden_history_weight`` (:math:`B`, ``order x n_visible x n_hidden``), where index ``k - 1`` holds the
    weights of lag ``k``.

    :param n_visible: units per frame.
    :param n_hidden: binary hidden units.
    :param order: the number of past frames the biases depend on.
    :param visible: ``"bernoulli"`` (binary frames) or ``"gaussian"`` (real frames, unit variance: standardize the
        data).
    :param init_std: standard deviation of the initial weights.
    :param name: the prefix of the parameters in Pyro's param store (unique by default).
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        order: int = 1,
        *,
        visible: str = "bernoulli",
        init_std: float = 0.01,
        name: str | None = None,
    ):
        check_count("n_visible", n_visible, 1)
        check_count("n_hidden", n_hidden, 1)
        check_count("order", order, 1)
        if visible not in _VISIBLE:
            raise ValueError(f"visible must be one of {_VISIBLE}, got {visible!r}")
        super().__init__(name if name is not None else f"ConditionalRBM_{next(_counter)}")
        self.n_visible, self.n_hidden, self.order, self.visible = n_visible, n_hidden, order, visible
        self.binary_visible = visible == "bernoulli"
        self.support = constraints.independent(constraints.boolean if self.binary_visible else constraints.real, 1)
        self.weight = nn.Parameter(torch.randn(n_visible, n_hidden) * init_std)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self.visible_history_weight = nn.Parameter(torch.randn(order, n_visible, n_visible) * init_std)
        self.hidden_history_weight = nn.Parameter(torch.randn(order, n_visible, n_hidden) * init_std)

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, order={self.order}, visible={self.visible!r}"

    @full_precision
    def params(self) -> CRBMParams:
        """The parameters, read once so that one call's products share them."""
        return CRBMParams(
            self.weight, self.visible_bias, self.hidden_bias, self.visible_history_weight, self.hidden_history_weight
        )

    # ------------------------------------------------------------------ data
    def to_tensor(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through, NumPy arrays and lists are converted to the parameters'
        dtype and device. No check of the values.

        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.weight, name)

    def _check_values(self, v: Tensor, name: str) -> None:
        if self.binary_visible:
            require_binary(v, name, "Bernoulli visible units")
        elif not check_finite(v):
            raise ValueError(f"{name}: values contain NaN or inf")

    def check_data(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor (:meth:`to_tensor`), after checking that it holds frames: width ``n_visible`` and
        finite values (binary ones for Bernoulli units).

        :param name: the argument, as error messages name it.
        :raises ValueError: for the wrong width, non-finite or (Bernoulli units) non-binary values.
        """
        v = self.to_tensor(data, name)
        if v.shape[-1:] != (self.n_visible,):
            raise ValueError(
                f"{name}: expected the last dimension to be n_visible={self.n_visible}, got shape {tuple(v.shape)}"
            )
        self._check_values(v, name)
        return v

    def check_history(self, history: Any, name: str = "history") -> Tensor:
        """``history`` as a tensor, after checking that it holds the previous frames: shape
        ``batch + (order, n_visible)`` (time order, the latest frame last) and the values of frames.

        :param name: the argument, as error messages name it.
        :raises ValueError: for the wrong shape or bad values.
        """
        x = self.to_tensor(history, name)
        if x.dim() < 2 or x.shape[-2:] != (self.order, self.n_visible):
            raise ValueError(
                f"{name}: expected shape batch + (order, n_visible) = (..., {self.order}, {self.n_visible}), "
                f"got {tuple(x.shape)}"
            )
        self._check_values(x, name)
        return x

    def windows(self, sequences: Any) -> tuple[Tensor, Tensor]:
        """The (history, frame) pairs of sequences: every frame from index ``order`` on, with the ``order`` frames
        before it.

        :param sequences: one sequence ``(T, n_visible)`` or several of equal length ``(S, T, n_visible)``
            (``T > order``).
        :returns: ``history`` of shape ``(N, order, n_visible)`` and ``frames`` of shape ``(N, n_visible)``, with
            ``N = S (T - order)``.
        :raises ValueError: for bad shapes or values.
        """
        seq = self.check_data(sequences, "sequences")
        if seq.dim() == 2:
            seq = seq[None]
        if seq.dim() != 3 or seq.shape[1] <= self.order:
            raise ValueError(
                f"sequences: expected shape (T, n_visible) or (S, T, n_visible) with T > order={self.order}, "
                f"got {tuple(self.to_tensor(sequences, 'sequences').shape)}"
            )
        win = seq.unfold(1, self.order + 1, 1).transpose(-1, -2)  # (S, T - order, order + 1, n_visible)
        win = win.reshape(-1, self.order + 1, self.n_visible)
        return win[:, :-1].contiguous(), win[:, -1].contiguous()

    # ------------------------------------------------------------------ energy
    def dynamic_biases(self, history: Any, *, params: CRBMParams | None = None) -> tuple[Tensor, Tensor]:
        r"""The biases :math:`\hat b_t = b + \sum_k A_k^\top v_{t-k}` and :math:`\hat c_t = c + \sum_k B_k^\top v_{t-k}`
        given ``history`` (checked), shapes ``batch + (n_visible,)`` and ``batch + (n_hidden,)``.

        :param params: the parameters (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        return self._dynamic_biases(p, self.check_history(history).to(p.weight))

    def _dynamic_biases(self, p: CRBMParams, history: Tensor) -> tuple[Tensor, Tensor]:
        lagged = history.flip(-2).reshape(*history.shape[:-2], self.order * self.n_visible)  # v_{t-1} first
        a = p.visible_history_weight.reshape(-1, self.n_visible)
        b = p.hidden_history_weight.reshape(-1, self.n_hidden)
        return p.visible_bias + lagged @ a, p.hidden_bias + lagged @ b

    def _visible_term(self, v: Tensor, vb: Tensor) -> Tensor:
        if self.binary_visible:
            return (v * vb).sum(-1)
        return -0.5 * ((v - vb) ** 2).sum(-1)

    def frame_neg_free_energy(self, p: CRBMParams, v: Tensor, vb: Tensor, hb: Tensor) -> Tensor:
        """:math:`-F_t(v)` of the frames' RBMs with dynamic biases ``vb``, ``hb``."""
        return self._visible_term(v, vb) + F.softplus(v @ p.weight + hb).sum(-1)

    def energy(self, v: Any, h: Any, history: Any) -> Tensor:
        r"""The energy :math:`E(v_t, h \mid v_{<t})` of frames, hidden states and histories (broadcast), shape
        ``batch``.

        :raises ValueError: for bad frames or histories.
        """
        p = self.params()
        v = self.check_data(v, "v").to(p.weight)
        h = self.to_tensor(h, "h").to(p.weight)
        vb, hb = self.dynamic_biases(history, params=p)
        return -(self._visible_term(v, vb) + (h * hb).sum(-1) + ((v @ p.weight) * h).sum(-1))

    def free_energy(self, v: Any, history: Any) -> Tensor:
        r"""The conditional free energy :math:`F(v_t \mid v_{<t}) = -\log\sum_h e^{-E(v_t, h \mid v_{<t})}` of
        frames given histories (broadcast), shape ``batch``. Plain autograd.

        :param v: frames ``batch + (n_visible,)``.
        :param history: histories ``batch + (order, n_visible)``.
        :raises ValueError: for bad frames or histories.
        """
        p = self.params()
        v = self.check_data(v, "v").to(p.weight)
        vb, hb = self.dynamic_biases(history, params=p)
        return -self.frame_neg_free_energy(p, v, vb, hb)

    def frame_log_partition(self, p: CRBMParams, vb: Tensor, hb: Tensor, max_units: int) -> Tensor:
        """:math:`\\log Z_t` of the frames' RBMs with dynamic biases ``vb``, ``hb``, by enumeration (for Gaussian
        units, of the hidden layer, with the visible units integrated out)."""
        if self.binary_visible:
            return bernoulli_log_partition(p.weight, vb, hb, max_units, _CHUNK)
        nv, nh = self.n_visible, self.n_hidden
        if nh > max_units:
            raise ValueError(
                f"the exact log partition would enumerate 2^{nh} states of the hidden layer; "
                f"the limit is max_units={max_units}"
            )
        parts = []
        for start in range(0, 2**nh, _CHUNK):
            s = binary_states(nh, start, min(2**nh, start + _CHUNK), p.weight)  # (S, nh)
            wh = s @ p.weight.T  # log sum_h exp(c.h + b.W h + |W h|^2 / 2) (2 pi)^(nv/2)
            parts.append(torch.logsumexp(hb @ s.T + vb @ wh.T + 0.5 * (wh * wh).sum(-1), -1))
        log_z = parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), 0)
        return log_z + 0.5 * nv * math.log(2 * math.pi)

    def exact_log_partition(self, history: Any, *, max_units: int = 20) -> Tensor:
        r"""The exact :math:`\log Z(v_{<t}) = \log \sum_{v, h} e^{-E(v, h \mid v_{<t})}` (an integral over
        :math:`v` for Gaussian units) of each history, by enumerating the smaller layer (module notes); shape
        ``history.shape[:-2]``. Differentiable in the parameters.

        :param history: histories ``batch + (order, n_visible)``.
        :param max_units: the most units to enumerate (:math:`2^n` states).
        :raises ValueError: for bad histories, or when more than ``max_units`` units would be enumerated.
        """
        p = self.params()
        vb, hb = self.dynamic_biases(history, params=p)
        return self.frame_log_partition(p, vb, hb, max_units)

    def exact_log_prob(self, v: Any, history: Any, *, max_units: int = 20) -> Tensor:
        r"""The exact :math:`\log p(v_t \mid v_{<t}) = -F(v_t \mid v_{<t}) - \log Z(v_{<t})` (a density for Gaussian
        units), shape the broadcast batch. Differentiable in the parameters.

        :raises ValueError: for bad frames or histories, or a model too large to enumerate.
        """
        p = self.params()
        v = self.check_data(v, "v").to(p.weight)
        vb, hb = self.dynamic_biases(history, params=p)
        return self.frame_neg_free_energy(p, v, vb, hb) - self.frame_log_partition(p, vb, hb, max_units)

    # ------------------------------------------------------------------ sampling
    def frame_gibbs(
        self, p: CRBMParams, v: Tensor, vb: Tensor, hb: Tensor, steps: int, mean_last: bool = False
    ) -> Tensor:
        """``steps`` block-Gibbs sweeps of the frames' RBMs (dynamic biases ``vb``, ``hb``) from ``v``; with
        ``mean_last``, the last visible draw replaced by its mean."""
        w = p.weight
        for step in range(steps):
            h = bernoulli(torch.sigmoid(v @ w + hb))
            top = h @ w.T + vb
            if self.binary_visible:
                v = bernoulli(torch.sigmoid(top))
            elif mean_last and step == steps - 1:
                v = top
            else:
                v = top + torch.randn_like(top)
        return v

    @torch.no_grad()
    def gibbs(self, v: Any, history: Any, steps: int = 1) -> Tensor:
        r"""``steps`` block-Gibbs sweeps :math:`v \to h \to v` of frames under the conditional model of their
        histories (broadcast), without gradient.

        :raises ValueError: for bad frames or histories.
        """
        check_count("steps", steps, 0)
        p = self.params()
        v = self.check_data(v, "v").to(p.weight)
        vb, hb = self.dynamic_biases(history, params=p)
        shape = torch.broadcast_shapes(v.shape[:-1], vb.shape[:-1])
        v = v.expand(*shape, self.n_visible)
        return self.frame_gibbs(p, v, vb.expand_as(v), hb.expand(*shape, self.n_hidden), steps)

    def initial_frames(self, vb: Tensor) -> Tensor:
        """Draws from the factorial model of the dynamic visible biases, to start a chain."""
        if self.binary_visible:
            return bernoulli(torch.sigmoid(vb))
        return vb + torch.randn_like(vb)

    @torch.no_grad()
    def generate(self, history: Any, num_steps: int, gibbs_steps: int = 30, *, mean_last: bool | None = None) -> Tensor:
        r"""Frames generated autoregressively from ``history``: each new frame by ``gibbs_steps`` block-Gibbs
        sweeps under the model given the latest ``order`` frames, started at the previous frame (as in Taylor et
        al.), then appended to the history.

        :param history: the first ``order`` frames, ``(order, n_visible)`` or ``batch + (order, n_visible)``.
        :param num_steps: frames to generate.
        :param gibbs_steps: sweeps per frame.
        :param mean_last: for Gaussian units, take the mean of :math:`p(v \mid h)` in the last sweep of each frame
            (noise-free frames, the default); binary frames are always drawn.
        :returns: the generated frames, ``batch + (num_steps, n_visible)``.
        :raises ValueError: for a bad history or counts.
        """
        check_count("num_steps", num_steps, 0)
        check_count("gibbs_steps", gibbs_steps, 1)
        mean_last = not self.binary_visible if mean_last is None else mean_last
        p = self.params()
        window = self.check_history(history).to(p.weight)
        frames = []
        for _ in range(num_steps):
            vb, hb = self._dynamic_biases(p, window)
            v = self.frame_gibbs(p, window[..., -1, :], vb, hb, gibbs_steps, mean_last)
            frames.append(v)
            window = torch.cat([window[..., 1:, :], v[..., None, :]], -2)
        if not frames:
            return window.new_zeros(*window.shape[:-2], 0, self.n_visible)
        return torch.stack(frames, -2)

    # ------------------------------------------------------------------ Pyro glue
    def forward(self, history: Any, **kwargs: Any) -> ConditionalRBMDistribution:
        # Reading the parameters inside the PyroModule records them as param sites for SVI.
        p = self.params()
        vb, hb = self.dynamic_biases(history, params=p)
        return ConditionalRBMDistribution(self, vb, hb, params=p, **kwargs)

    def distribution(self, history: Any, **kwargs: Any) -> ConditionalRBMDistribution:
        r"""The Pyro distribution of the frames :math:`v_t` given ``history`` (batch shape ``history.shape[:-2]``),
        whose ``log_prob`` carries the CD-k gradient (or the exact one); see :class:`ConditionalRBMDistribution`.

        :param history: histories ``batch + (order, n_visible)`` (checked).
        :param kwargs: ``cd_steps``, ``exact``, ``sample_steps``, ``max_units``.
        """
        return self(history, **kwargs)


class ConditionalRBMDistribution(FrameDistribution):
    r"""The distribution :math:`p(v_t \mid v_{<t})` of a :class:`ConditionalRBM`'s frames, as used by
    ``pyro.sample``; built by :meth:`ConditionalRBM.distribution` from the dynamic biases of the histories.

    ``log_prob(v)``:

    * by default, the value :math:`-F(v \mid v_{<t})` (unnormalized: each history has its own partition function)
      with the CD-k gradient :math:`\nabla(-F(v)) - \nabla(-F(\tilde v))`, where :math:`\tilde v` is ``cd_steps``
      block-Gibbs sweeps from :math:`v` under the same history's model (drawn anew each call, without gradient);
      without gradient tracking, the value only;
    * with ``exact=True``, the exact :math:`\log p(v \mid v_{<t})` and its exact gradient, by enumeration (tiny
      models only; see :meth:`ConditionalRBM.exact_log_partition`).

    With Pyro's validation on (the default) the value is checked (width, binary or finite values, batch shape).

    :param model: the conditional RBM.
    :param visible_bias: the dynamic visible biases, ``batch + (n_visible,)``.
    :param hidden_bias: the dynamic hidden biases, ``batch + (n_hidden,)``.
    :param params: the model's parameters (``model.params()``).
    :param cd_steps: Gibbs sweeps of the CD negative phase.
    :param exact: return the exact log-likelihood, with its exact gradient.
    :param sample_steps: Gibbs sweeps of :meth:`sample`, from the factorial model of the visible biases.
    :param max_units: the most units that ``exact=True`` enumerates.
    """
