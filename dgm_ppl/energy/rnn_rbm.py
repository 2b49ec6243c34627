r"""The RNN-RBM for binary sequences (Boulanger-Lewandowski, Bengio & Vincent 2012).

A recurrent net with state :math:`u_t` reads the frames :math:`v_1, v_2, \dots` (binary vectors of
``n_visible`` units),

.. math::

    u_t = \tanh(b_u + W_{uu}^\top u_{t-1} + W_{vu}^\top v_t), \qquad u_0 \text{ a parameter},

and sets the biases of an RBM on the next frame,

.. math::

    b_v^{(t)} = b_v + W_{uv}^\top u_{t-1}, \qquad b_h^{(t)} = b_h + W_{uh}^\top u_{t-1},

so that, given :math:`u_{t-1}` (a deterministic function of :math:`v_{<t}`), frame :math:`t` is an ordinary
binary RBM with energy :math:`E(v_t, h_t \mid u_{t-1}) = -b_v^{(t)\top} v_t - b_h^{(t)\top} h_t - v_t^\top W h_t`:

.. math::

    -F(v_t \mid u_{t-1}) = b_v^{(t)\top} v_t + \sum_j \operatorname{softplus}(b^{(t)}_{h,j} + v_t^\top W_{:j}),
    \qquad \log p(v_{1:T}) = \sum_{t=1}^{T} \big(-F(v_t \mid u_{t-1}) - \log Z(u_{t-1})\big).

Every frame has its own partition function :math:`Z(u_{t-1})`; :meth:`RNNRBM.exact_log_partition` computes it by
enumerating the smaller layer, so that :meth:`RNNRBM.exact_log_likelihood` is exact for tiny models.

Training (the paper's algorithm). The gradient of :math:`\log p(v_t \mid u_{t-1})` in the dynamic biases is
:math:`v_t - \mathbb E[v]` and :math:`\sigma(b_h^{(t)} + W^\top v_t) - \mathbb E[h]` under the frame's RBM; the paper
estimates the expectations by CD-k started at the frame itself, under that frame's biases, and back-propagates the
bias gradients through time into :math:`W_{uv}, W_{uh}, W_{uu}, W_{vu}, b_u, u_0`. :class:`RNNRBMFrameDistribution`
does this through the per-row surrogate :math:`-F(v_t) - (-F(\tilde v_t) - \operatorname{stop\_grad}(-F(\tilde v_t)))`
with the dynamic biases left in the graph, so that the whole sequence's log-probabilities, summed by
``SVI(..., Trace_ELBO())``, carry exactly that gradient (autograd does the BPTT). With ``exact=True`` the frames'
log-probabilities are exact, with their exact gradient (tiny models).

Frames are indexed from 0 here: frame ``t`` of a sequence is modelled given ``u_prev[t]``, the state after frames
``0 .. t - 1`` (``u_prev[0]`` is :math:`u_0`); :meth:`RNNRBM.recurrent_states` computes these states.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, NamedTuple

import pyro
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import Tensor, nn

from ._ops import as_tensor_like, bernoulli, check_count, check_finite, full_precision, require_binary
from .frame_distribution import FrameDistribution, bernoulli_log_partition

__all__ = ["RNNRBM", "RNNRBMFrameDistribution", "RNNRBMParams"]

_counter = itertools.count()
_CHUNK = 2**12  # enumerated states per chunk of the exact log partition


class RNNRBMParams(NamedTuple):
    """The parameters of an RNN-RBM: the RBM's ``weight`` :math:`W` ``(n_visible, n_hidden)`` and static biases
    :math:`b_v, b_h`; the bias weights :math:`W_{uv}` ``(n_recurrent, n_visible)`` and :math:`W_{uh}`
    ``(n_recurrent, n_hidden)``; the recurrent net's :math:`W_{uu}` ``(n_recurrent, n_recurrent)``, :math:`W_{vu}`
    ``(n_visible, n_recurrent)``, bias :math:`b_u` and initial state :math:`u_0`."""

    weight: Tensor
    visible_bias: Tensor
    hidden_bias: Tensor
    visible_bias_weight: Tensor
    hidden_bias_weight: Tensor
    recurrent_weight: Tensor
    input_weight: Tensor
    recurrent_bias: Tensor
    initial_state: Tensor


class RNNRBM(PyroModule):
    r"""The RNN-RBM (Boulanger-Lewandowski et al. 2012) on binary frames of ``n_visible`` units; see the module's
    notes for the math.

    Parameters: ``weight`` (:math:`W`), ``visible_bias`` (:math:`b_v`), ``hidden_bias`` (:math:`b_h`),
    ``visible_bias_weight`` (:math:`W_{uv}`), ``hidden_bias_weight`` (:math:`W_{uh}`), ``recurrent_weight``
    (:math:`W_{uu}`), ``input_weight`` (:math:`W_{vu}`), ``recurrent_bias`` (:math:`b_u`) and ``initial_state``
    (:math:`u_0`); shapes as in :class:`RNNRBMParams`.

    :param n_visible: binary units per frame.
    :param n_hidden: binary hidden units of each frame's RBM.
    :param n_recurrent: units of the recurrent state :math:`u_t`.
    :param init_std: standard deviation of the initial weights.
    :param name: the prefix of the parameters in Pyro's param store (unique by default).
    """

    support = constraints.independent(constraints.boolean, 1)

    def __init__(
        self, n_visible: int, n_hidden: int, n_recurrent: int, *, init_std: float = 0.01, name: str | None = None
    ):
        check_count("n_visible", n_visible, 1)
        check_count("n_hidden", n_hidden, 1)
        check_count("n_recurrent", n_recurrent, 1)
        super().__init__(name if name is not None else f"RNNRBM_{next(_counter)}")
        self.n_visible, self.n_hidden, self.n_recurrent = n_visible, n_hidden, n_recurrent
        nv, nh, nu = n_visible, n_hidden, n_recurrent
        self.weight = nn.Parameter(torch.randn(nv, nh) * init_std)
        self.visible_bias = nn.Parameter(torch.zeros(nv))
        self.hidden_bias = nn.Parameter(torch.zeros(nh))
        self.visible_bias_weight = nn.Parameter(torch.randn(nu, nv) * init_std)
        self.hidden_bias_weight = nn.Parameter(torch.randn(nu, nh) * init_std)
        self.recurrent_weight = nn.Parameter(torch.randn(nu, nu) * init_std)
        self.input_weight = nn.Parameter(torch.randn(nv, nu) * init_std)
        self.recurrent_bias = nn.Parameter(torch.zeros(nu))
        self.initial_state = nn.Parameter(torch.zeros(nu))

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, n_recurrent={self.n_recurrent}"

    @full_precision
    def params(self) -> RNNRBMParams:
        """The parameters, read once so that one call's products share them."""
        return RNNRBMParams(
            self.weight,
            self.visible_bias,
            self.hidden_bias,
            self.visible_bias_weight,
            self.hidden_bias_weight,
            self.recurrent_weight,
            self.input_weight,
            self.recurrent_bias,
            self.initial_state,
        )

    # ------------------------------------------------------------------ data
    def to_tensor(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through, NumPy arrays and lists are converted to the parameters'
        dtype and device. No check of the values.

        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.weight, name)

    def check_data(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor (:meth:`to_tensor`), after checking that it holds frames: width ``n_visible`` and
        binary values.

        :param name: the argument (or sample site), as error messages name it.
        :raises ValueError: for the wrong width, non-finite or non-binary values.
        """
        v = self.to_tensor(data, name)
        if v.shape[-1:] != (self.n_visible,):
            raise ValueError(
                f"{name}: expected the last dimension to be n_visible={self.n_visible}, got shape {tuple(v.shape)}"
            )
        require_binary(v, name, "Bernoulli visible units")
        return v

    def check_sequences(self, sequences: Any, name: str = "sequences") -> Tensor:
        """``sequences`` as a tensor, after checking that it holds binary sequences: shape
        ``batch + (T, n_visible)`` with ``T >= 1``.

        :param name: the argument, as error messages name it.
        :raises ValueError: for bad shapes or values.
        """
        seq = self.to_tensor(sequences, name)
        if seq.dim() < 2 or seq.shape[-2] < 1:
            raise ValueError(
                f"{name}: expected shape batch + (T, n_visible) = (..., T, {self.n_visible}) with T >= 1, "
                f"got {tuple(seq.shape)}"
            )
        return self.check_data(seq, name)

    def check_state(self, state: Any, name: str = "u_prev") -> Tensor:
        """``state`` as a tensor, after checking that it holds recurrent states: shape ``batch + (n_recurrent,)``
        and finite values.

        :raises ValueError: for the wrong width or non-finite values.
        """
        u = self.to_tensor(state, name)
        if u.shape[-1:] != (self.n_recurrent,):
            raise ValueError(
                f"{name}: expected the last dimension to be n_recurrent={self.n_recurrent}, got shape {tuple(u.shape)}"
            )
        if not check_finite(u):
            raise ValueError(f"{name}: values contain NaN or inf")
        return u

    # ------------------------------------------------------------------ recurrence
    def _step(self, p: RNNRBMParams, u_prev: Tensor, v: Tensor) -> Tensor:
        return torch.tanh(p.recurrent_bias + u_prev @ p.recurrent_weight + v @ p.input_weight)

    def step(self, u_prev: Any, v: Any) -> Tensor:
        r"""One step of the recurrent net, :math:`u_t = \tanh(b_u + W_{uu}^\top u_{t-1} + W_{vu}^\top v_t)`
        (broadcast), differentiable in the parameters.

        :raises ValueError: for bad states or frames.
        """
        p = self.params()
        u_prev = self.check_state(u_prev).to(p.weight)
        return self._step(p, u_prev, self.check_data(v, "v").to(p.weight))

    def _states(self, p: RNNRBMParams, seq: Tensor) -> Tensor:
        """``u_prev`` of every frame of checked sequences ``batch + (T, n_visible)``: ``batch + (T, n_recurrent)``."""
        u = p.initial_state.expand(*seq.shape[:-2], self.n_recurrent)
        states = []
        for t in range(seq.shape[-2]):
            states.append(u)
            u = self._step(p, u, seq[..., t, :])
        return torch.stack(states, -2)

    def recurrent_states(self, sequences: Any) -> Tensor:
        r"""The state :math:`u_{t-1}` that frame ``t`` is modelled under, for every frame of ``sequences``
        (``u_prev[..., 0, :]`` is :math:`u_0`), shape ``batch + (T, n_recurrent)``. Differentiable in the parameters.

        :param sequences: binary sequences ``batch + (T, n_visible)``.
        :raises ValueError: for bad sequences.
        """
        p = self.params()
        return self._states(p, self.check_sequences(sequences).to(p.weight))

    def _dynamic_biases(self, p: RNNRBMParams, u_prev: Tensor) -> tuple[Tensor, Tensor]:
        return p.visible_bias + u_prev @ p.visible_bias_weight, p.hidden_bias + u_prev @ p.hidden_bias_weight

    def dynamic_biases(self, u_prev: Any) -> tuple[Tensor, Tensor]:
        r"""The biases :math:`b_v + W_{uv}^\top u_{t-1}` and :math:`b_h + W_{uh}^\top u_{t-1}` of the RBM of the frame
        after state ``u_prev``, shapes ``batch + (n_visible,)`` and ``batch + (n_hidden,)``.

        :raises ValueError: for bad states.
        """
        p = self.params()
        return self._dynamic_biases(p, self.check_state(u_prev).to(p.weight))

    # ------------------------------------------------------------------ energy
    @staticmethod
    def frame_neg_free_energy(p: RNNRBMParams, v: Tensor, vb: Tensor, hb: Tensor) -> Tensor:
        """:math:`-F_t(v)` of the frames' RBMs with dynamic biases ``vb``, ``hb``."""
        return (v * vb).sum(-1) + F.softplus(v @ p.weight + hb).sum(-1)

    def energy(self, v: Any, h: Any, u_prev: Any) -> Tensor:
        r"""The energy :math:`E(v_t, h_t \mid u_{t-1})` of frames, hidden states and previous states (broadcast),
        shape ``batch``.

        :raises ValueError: for bad frames or states.
        """
        p = self.params()
        v = self.check_data(v, "v").to(p.weight)
        h = self.to_tensor(h, "h").to(p.weight)
        vb, hb = self._dynamic_biases(p, self.check_state(u_prev).to(p.weight))
        return -((v * vb).sum(-1) + (h * hb).sum(-1) + ((v @ p.weight) * h).sum(-1))

    def free_energy(self, v_t: Any, u_prev: Any) -> Tensor:
        r"""The free energy :math:`F(v_t \mid u_{t-1}) = -\log\sum_h e^{-E(v_t, h \mid u_{t-1})}` of frames given the
        recurrent state before them (broadcast), shape ``batch``. Plain autograd.

        :param v_t: frames ``batch + (n_visible,)``.
        :param u_prev: states ``batch + (n_recurrent,)`` (e.g. from :meth:`recurrent_states`).
        :raises ValueError: for bad frames or states.
        """
        p = self.params()
        v = self.check_data(v_t, "v_t").to(p.weight)
        vb, hb = self._dynamic_biases(p, self.check_state(u_prev).to(p.weight))
        return -self.frame_neg_free_energy(p, v, vb, hb)

    def frame_log_partition(self, p: RNNRBMParams, vb: Tensor, hb: Tensor, max_units: int) -> Tensor:
        """:math:`\\log Z_t` of the frames' RBMs with dynamic biases ``vb``, ``hb``, by enumeration."""
        return bernoulli_log_partition(p.weight, vb, hb, max_units, _CHUNK)

    def exact_log_partition(self, u_prev: Any, *, max_units: int = 20) -> Tensor:
        r"""The exact :math:`\log Z(u_{t-1}) = \log\sum_{v, h} e^{-E(v, h \mid u_{t-1})}` of the RBM after each state,
        by enumerating the smaller layer; shape ``u_prev.shape[:-1]``. Differentiable in the parameters.

        :param u_prev: states ``batch + (n_recurrent,)``.
        :param max_units: the most units to enumerate (:math:`2^n` states).
        :raises ValueError: for bad states, or when more than ``max_units`` units would be enumerated.
        """
        p = self.params()
        vb, hb = self._dynamic_biases(p, self.check_state(u_prev).to(p.weight))
        return self.frame_log_partition(p, vb, hb, max_units)

    def exact_log_prob(self, v_t: Any, u_prev: Any, *, max_units: int = 20) -> Tensor:
        r"""The exact conditional :math:`\log p(v_t \mid u_{t-1}) = -F(v_t \mid u_{t-1}) - \log Z(u_{t-1})`
        (broadcast), differentiable in the parameters.

        :raises ValueError: for bad frames or states, or a model too large to enumerate.
        """
        p = self.params()
        v = self.check_data(v_t, "v_t").to(p.weight)
        vb, hb = self._dynamic_biases(p, self.check_state(u_prev).to(p.weight))
        return self.frame_neg_free_energy(p, v, vb, hb) - self.frame_log_partition(p, vb, hb, max_units)

    def exact_log_likelihood(self, sequences: Any, *, max_units: int = 20) -> Tensor:
        r"""The exact :math:`\log p(v_{0:T-1}) = \sum_t \log p(v_t \mid u_{t-1})` of each sequence, shape
        ``sequences.shape[:-2]``. Differentiable in the parameters (through the recurrent net too).

        :param sequences: binary sequences ``batch + (T, n_visible)``.
        :raises ValueError: for bad sequences, or a model too large to enumerate.
        """
        p = self.params()
        seq = self.check_sequences(sequences).to(p.weight)
        vb, hb = self._dynamic_biases(p, self._states(p, seq))
        return (self.frame_neg_free_energy(p, seq, vb, hb) - self.frame_log_partition(p, vb, hb, max_units)).sum(-1)

    # ------------------------------------------------------------------ sampling
    def initial_frames(self, vb: Tensor) -> Tensor:
        """Draws from the factorial model of the dynamic visible biases, to start a chain."""
        return bernoulli(torch.sigmoid(vb))

    def frame_gibbs(self, p: RNNRBMParams, v: Tensor, vb: Tensor, hb: Tensor, steps: int) -> Tensor:
        """``steps`` block-Gibbs sweeps of the frames' RBMs (dynamic biases ``vb``, ``hb``) from ``v``."""
        for _ in range(steps):
            h = bernoulli(torch.sigmoid(v @ p.weight + hb))
            v = bernoulli(torch.sigmoid(h @ p.weight.T + vb))
        return v

    @torch.no_grad()
    def gibbs(self, v_t: Any, u_prev: Any, steps: int = 1) -> Tensor:
        r"""``steps`` block-Gibbs sweeps :math:`v \to h \to v` of frames under the RBMs of the states ``u_prev``
        (broadcast), without gradient.

        :raises ValueError: for bad frames, states or counts.
        """
        check_count("steps", steps, 0)
        p = self.params()
        v = self.check_data(v_t, "v_t").to(p.weight)
        vb, hb = self._dynamic_biases(p, self.check_state(u_prev).to(p.weight))
        shape = torch.broadcast_shapes(v.shape[:-1], vb.shape[:-1])
        v = v.expand(*shape, self.n_visible)
        return self.frame_gibbs(p, v, vb.expand_as(v), hb.expand(*shape, self.n_hidden), steps)

    @torch.no_grad()
    def generate(
        self, num_steps: int, gibbs_steps: int = 30, init: Any = None, *, num_sequences: int | None = None
    ) -> Tensor:
        r"""Frames generated by the model: for each new frame, ``gibbs_steps`` block-Gibbs sweeps under the RBM of
        the current state, started from the factorial model of its dynamic visible biases; the frame then advances
        the recurrent net.

        :param num_steps: frames to generate.
        :param gibbs_steps: sweeps per frame.
        :param init: frames to continue, ``(T0, n_visible)`` or ``batch + (T0, n_visible)``, which the recurrent net
            reads first; default: none (start at :math:`u_0`).
        :param num_sequences: without ``init``, the number of sequences to draw (default: one, unbatched).
        :returns: the generated frames (without ``init``), ``batch + (num_steps, n_visible)``.
        :raises ValueError: for bad counts or a bad ``init``.
        """
        check_count("num_steps", num_steps, 0)
        check_count("gibbs_steps", gibbs_steps, 1)
        p = self.params()
        if init is not None:
            if num_sequences is not None:
                raise ValueError("give init or num_sequences, not both")
            seq = self.check_sequences(init, "init").to(p.weight)
            u = self._step(p, self._states(p, seq)[..., -1, :], seq[..., -1, :])
        else:
            if num_sequences is not None:
                check_count("num_sequences", num_sequences, 1)
            batch = () if num_sequences is None else (num_sequences,)
            u = p.initial_state.expand(*batch, self.n_recurrent)
        frames = []
        for _ in range(num_steps):
            vb, hb = self._dynamic_biases(p, u)
            v = self.frame_gibbs(p, bernoulli(torch.sigmoid(vb)), vb, hb, gibbs_steps)
            frames.append(v)
            u = self._step(p, u, v)
        if not frames:
            return u.new_zeros(*u.shape[:-1], 0, self.n_visible)
        return torch.stack(frames, -2)

    # ------------------------------------------------------------------ Pyro glue
    def distribution(self, u_prev: Any, **kwargs: Any) -> RNNRBMFrameDistribution:
        r"""The Pyro distribution of the frame after the states ``u_prev`` (batch shape ``u_prev.shape[:-1]``), whose
        ``log_prob`` carries the CD-k gradient (or the exact one) into the RBM and, through ``u_prev``, into the
        recurrent net; see :class:`RNNRBMFrameDistribution`. (:meth:`model` builds these for every frame; for SVI
        call the model, which records the parameters as Pyro param sites.)

        :param u_prev: states ``batch + (n_recurrent,)``, e.g. a step of :meth:`recurrent_states` (keep the graph
            for BPTT).
        :param kwargs: ``cd_steps``, ``exact``, ``sample_steps``, ``max_units``.
        :raises ValueError: for bad states or arguments.
        """
        p = self.params()
        vb, hb = self._dynamic_biases(p, self.check_state(u_prev).to(p.weight))
        return RNNRBMFrameDistribution(self, vb, hb, params=p, **kwargs)

    def model(self, sequences: Any = None, **kwargs: Any) -> Tensor:
        """The RNN-RBM as a Pyro program, ``self(sequences, **kwargs)``: see :meth:`forward`."""
        return self(sequences, **kwargs)

    def forward(
        self,
        sequences: Any = None,
        *,
        num_steps: int | None = None,
        num_sequences: int | None = None,
        cd_steps: int = 1,
        exact: bool = False,
        sample_steps: int = 30,
        max_units: int = 20,
    ) -> Tensor:
        r"""The RNN-RBM as a Pyro program: under a plate ``"sequences"``, one site ``f"v_{t}"`` per frame (in
        ``pyro.markov``), drawn from (or observing) the frame distribution of the current state, which then advances
        the recurrent net. With ``SVI(rnn_rbm.model, guide, optim, Trace_ELBO())`` and an empty guide (or
        ``rnn_rbm`` itself as the model: reading the parameters inside ``forward`` records them as Pyro params),
        every frame's ``log_prob`` carries the CD-``cd_steps`` gradient and autograd back-propagates it through
        time.

        :param sequences: observed binary sequences ``(T, n_visible)`` or ``(S, T, n_visible)``; ``None`` to sample.
        :param num_steps: the length of sampled sequences (only without ``sequences``).
        :param num_sequences: the size of the data set that the sequences are a minibatch of (scales the
            log-likelihood; default their number); without ``sequences``, the number to sample (default one,
            unbatched).
        :param cd_steps: Gibbs sweeps of each frame's CD negative phase.
        :param exact: use each frame's exact log-probability (tiny models).
        :param sample_steps: Gibbs sweeps per sampled frame.
        :param max_units: the most units that ``exact=True`` enumerates.
        :returns: the frames, ``batch + (T, n_visible)``.
        :raises ValueError: for bad sequences (naming the site of a frame with bad values) or arguments.
        """
        kwargs = {"cd_steps": cd_steps, "exact": exact, "sample_steps": sample_steps, "max_units": max_units}
        p = self.params()
        if sequences is None:
            if num_steps is None:
                raise ValueError("model: give sequences, or num_steps to sample")
            check_count("num_steps", num_steps, 1)
            size = 1 if num_sequences is None else num_sequences
            check_count("num_sequences", size, 1)
            seq, length, subsample = None, num_steps, None
        else:
            if num_steps is not None:
                raise ValueError("model: give sequences or num_steps, not both")
            seq = self.to_tensor(sequences, "sequences")
            if seq.dim() not in (2, 3) or seq.shape[-2] < 1 or seq.shape[-1] != self.n_visible:
                raise ValueError(
                    f"sequences: expected shape (T, {self.n_visible}) or (S, T, {self.n_visible}) with T >= 1, "
                    f"got {tuple(seq.shape)}"
                )
            seq = seq.to(p.weight)
            length = seq.shape[-2]
            rows = 1 if seq.dim() == 2 else seq.shape[0]
            size = rows if num_sequences is None else num_sequences
            check_count("num_sequences", size, rows)
            subsample = torch.arange(rows, device=p.weight.device)
        unbatched = seq is None and num_sequences is None or seq is not None and seq.dim() == 2
        batch = () if unbatched else (size if seq is None else seq.shape[0],)
        u = p.initial_state.expand(*batch, self.n_recurrent)
        frames = []
        with pyro.plate("sequences", size, subsample=subsample, dim=-1) if batch else contextlib.nullcontext():
            for t in pyro.markov(range(length)):
                obs = None
                if seq is not None:
                    obs = self.check_data(seq[..., t, :], f"v_{t}")
                vb, hb = self._dynamic_biases(p, u)
                v = pyro.sample(f"v_{t}", RNNRBMFrameDistribution(self, vb, hb, params=p, **kwargs), obs=obs)
                frames.append(v)
                u = self._step(p, u, v)
        return torch.stack(frames, -2)


class RNNRBMFrameDistribution(FrameDistribution):
    r"""The distribution :math:`p(v_t \mid u_{t-1})` of an :class:`RNNRBM`'s frame given the recurrent state before
    it, as used by ``pyro.sample``; built by :meth:`RNNRBM.distribution` (or :meth:`RNNRBM.model`) from the dynamic
    biases of the states.

    ``log_prob(v)``:

    * by default, the value :math:`-F(v \mid u_{t-1})` (unnormalized: each state has its own partition function)
      with the CD-k gradient :math:`\nabla(-F(v)) - \nabla(-F(\tilde v))`, where :math:`\tilde v` is ``cd_steps``
      block-Gibbs sweeps from :math:`v` under the same frame's RBM (drawn anew each call, without gradient). The
      gradient reaches the dynamic biases, and through them the recurrent net; without gradient tracking, the value
      only;
    * with ``exact=True``, the exact :math:`\log p(v \mid u_{t-1})` and its exact gradient, by enumeration (tiny
      models only; see :meth:`RNNRBM.exact_log_partition`).

    With Pyro's validation on (the default) the value is checked (width, binary values, batch shape).

    :param model: the RNN-RBM.
    :param visible_bias: the dynamic visible biases, ``batch + (n_visible,)``.
    :param hidden_bias: the dynamic hidden biases, ``batch + (n_hidden,)``.
    :param params: the model's parameters (``model.params()``).
    :param cd_steps: Gibbs sweeps of the CD negative phase.
    :param exact: return the exact log-likelihood, with its exact gradient.
    :param sample_steps: Gibbs sweeps of :meth:`sample`, from the factorial model of the visible biases.
    :param max_units: the most units that ``exact=True`` enumerates.
    """

    def __init__(self, model: RNNRBM, visible_bias: Tensor, hidden_bias: Tensor, *, sample_steps: int = 30, **kwargs):
        super().__init__(model, visible_bias, hidden_bias, sample_steps=sample_steps, **kwargs)
