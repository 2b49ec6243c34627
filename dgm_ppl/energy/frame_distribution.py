r"""The distribution of one frame of a sequence RBM, whose biases depend on the past.

A :class:`~dgm_ppl.energy.ConditionalRBM` (past frames) and an :class:`~dgm_ppl.energy.RNNRBM` (a recurrent state)
give the RBM of frame :math:`t` the *dynamic* biases :math:`b_t, c_t`, so each frame has its own partition function
:math:`Z_t`. :class:`FrameDistribution` is that frame's ``pyro.sample`` distribution. ``log_prob(v)`` is

* by default, the value :math:`-F_t(v)` (unnormalized) with the CD-k gradient
  :math:`\nabla(-F_t(v)) - \nabla(-F_t(\tilde v))`, where :math:`\tilde v` is ``cd_steps`` block-Gibbs sweeps
  from :math:`v` under the frame's own RBM (drawn anew each call, without gradient; CD started at the data, the
  choice of Taylor et al. 2007 and Boulanger-Lewandowski et al. 2012). The gradient reaches the dynamic biases,
  and through them whatever computed them; without gradient tracking, the value only;
* with ``exact=True``, the exact :math:`\log p(v) = -F_t(v) - \log Z_t` and its exact gradient, by enumeration
  (tiny models only).

The model supplies the frame's arithmetic through four public members (:class:`SequenceRBM`).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch import Size, Tensor

from ._ops import binary_states, check_count, full_precision, sml_full_precision
from .distribution import check_value

__all__ = ["FrameDistribution", "SequenceRBM", "bernoulli_log_partition"]


def bernoulli_log_partition(weight: Tensor, vb: Tensor, hb: Tensor, max_units: int, chunk: int = 4096) -> Tensor:
    r""":math:`\log Z` of binary RBMs that share ``weight`` (``n_visible x n_hidden``) but each have their own
    biases ``vb`` (``batch + (n_visible,)``) and ``hb`` (``batch + (n_hidden,)``), by enumerating the smaller layer
    with the other summed out in closed form:
    :math:`\log\sum_v e^{b^\top v + \sum_j \zeta(c_j + v^\top W_j)}` or
    :math:`\log\sum_h e^{c^\top h + \sum_i \zeta(b_i + W_i h)}`. Differentiable; shape ``batch``.

    :raises ValueError: when more than ``max_units`` units would be enumerated.
    """
    nv, nh = weight.shape
    over_visible = nv < nh
    n = nv if over_visible else nh
    if n > max_units:
        what = "visible" if over_visible else "hidden"
        raise ValueError(
            f"the exact log partition would enumerate 2^{n} states of the {what} layer; "
            f"the limit is max_units={max_units}"
        )
    parts = []
    for start in range(0, 2**n, chunk):
        s = binary_states(n, start, min(2**n, start + chunk), weight)  # (S, n)
        if over_visible:
            terms = vb @ s.T + F.softplus((s @ weight) + hb[..., None, :]).sum(-1)
        else:
            terms = hb @ s.T + F.softplus((s @ weight.T) + vb[..., None, :]).sum(-1)
        parts.append(torch.logsumexp(terms, -1))
    return parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), 0)


class SequenceRBM(Protocol):
    """What :class:`FrameDistribution` needs of a sequence RBM, for the frames' RBMs with dynamic biases ``vb``
    (``batch + (n_visible,)``) and ``hb`` (``batch + (n_hidden,)``) under the parameters ``p``."""

    n_visible: int
    n_hidden: int

    @property
    def support(self) -> Any: ...

    def params(self) -> Any: ...

    def to_tensor(self, data: Any, name: str = "data") -> Tensor: ...

    def check_data(self, data: Any, name: str = "data") -> Tensor: ...

    def frame_neg_free_energy(self, p: Any, v: Tensor, vb: Tensor, hb: Tensor) -> Tensor:
        """:math:`-F_t(v)` of each frame."""
        ...

    def frame_log_partition(self, p: Any, vb: Tensor, hb: Tensor, max_units: int) -> Tensor:
        r""":math:`\log Z_t` of each frame's RBM, by enumeration."""
        ...

    def frame_gibbs(self, p: Any, v: Tensor, vb: Tensor, hb: Tensor, steps: int) -> Tensor:
        """``steps`` block-Gibbs sweeps from ``v``, without gradient."""
        ...

    def initial_frames(self, vb: Tensor) -> Tensor:
        """Draws from the factorial model of the visible biases, to start a chain."""
        ...


class FrameDistribution(TorchDistribution):
    r"""The distribution of a frame given its dynamic biases (see the module's notes).

    With Pyro's validation on (the default) the value is checked (width, support, batch shape).

    :param model: the sequence RBM.
    :param visible_bias: the dynamic visible biases, ``batch + (n_visible,)``.
    :param hidden_bias: the dynamic hidden biases, ``batch + (n_hidden,)``.
    :param params: the model's parameters (``model.params()``).
    :param cd_steps: Gibbs sweeps of the CD negative phase.
    :param exact: return the exact log-likelihood, with its exact gradient.
    :param sample_steps: Gibbs sweeps of :meth:`sample`, from the factorial model of the visible biases.
    :param max_units: the most units that ``exact=True`` enumerates.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        model: SequenceRBM,
        visible_bias: Tensor,
        hidden_bias: Tensor,
        *,
        params: Any = None,
        cd_steps: int = 1,
        exact: bool = False,
        sample_steps: int = 100,
        max_units: int = 20,
        validate_args: bool | None = None,
    ):
        check_count("cd_steps", cd_steps, 1)
        check_count("sample_steps", sample_steps, 1)
        if not isinstance(exact, bool):
            raise ValueError(f"exact must be a bool, got {exact!r}")
        batch_shape = visible_bias.shape[:-1]
        if visible_bias.shape[-1:] != (model.n_visible,):
            raise ValueError(
                f"visible_bias must have last dimension n_visible={model.n_visible}, got {tuple(visible_bias.shape)}"
            )
        if hidden_bias.shape != batch_shape + (model.n_hidden,):
            raise ValueError(
                f"hidden_bias must have shape {tuple(batch_shape + (model.n_hidden,))}, got {tuple(hidden_bias.shape)}"
            )
        self.model, self.visible_bias, self.hidden_bias = model, visible_bias, hidden_bias
        self.params = model.params() if params is None else params
        self.cd_steps, self.exact, self.sample_steps, self.max_units = cd_steps, exact, sample_steps, max_units
        super().__init__(batch_shape, Size((model.n_visible,)), validate_args=validate_args)

    @property
    def support(self):
        return self.model.support

    def expand(self, batch_shape, _instance=None) -> FrameDistribution:
        batch_shape = Size(batch_shape)
        return type(self)(
            self.model,
            self.visible_bias.expand(batch_shape + (self.model.n_visible,)),
            self.hidden_bias.expand(batch_shape + (self.model.n_hidden,)),
            params=self.params,
            cd_steps=self.cd_steps,
            exact=self.exact,
            sample_steps=self.sample_steps,
            max_units=self.max_units,
            validate_args=self.__dict__.get("_validate_args"),
        )

    def _validate_sample(self, value: Tensor) -> None:
        check_value(self.model, value, self.batch_shape, self.event_shape)

    @sml_full_precision("FrameDistribution")
    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`-F(v \mid \text{past})` with the CD-k gradient, or the exact log-likelihood (see the class notes).

        :param value: frames ``batch_shape + (n_visible,)`` (a NumPy array is converted).
        :returns: the broadcast batch shape of ``value`` and the distribution.
        :raises ValueError: for bad values, with validation on.
        """
        model, p = self.model, self.params
        if not isinstance(value, Tensor):
            value = model.to_tensor(value, "value")
        if self._validate_args:
            self._validate_sample(value)
        v = value.to(p.weight)
        shape = torch.broadcast_shapes(v.shape[:-1], self.batch_shape)
        v = v.expand(*shape, model.n_visible)
        vb = self.visible_bias.expand(*shape, model.n_visible)
        hb = self.hidden_bias.expand(*shape, model.n_hidden)
        out = model.frame_neg_free_energy(p, v, vb, hb)
        if self.exact:
            return out - model.frame_log_partition(p, vb, hb, self.max_units)
        if not torch.is_grad_enabled():
            return out
        with torch.no_grad():
            negatives = model.frame_gibbs(p, v, vb.detach(), hb.detach(), self.cd_steps)
        neg = model.frame_neg_free_energy(p, negatives, vb, hb)
        return out - (neg - neg.detach())

    @full_precision
    @torch.no_grad()
    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        """Draws by ``sample_steps`` block-Gibbs sweeps from the factorial model of the dynamic visible biases."""
        shape = self._extended_shape(sample_shape)
        vb = self.visible_bias.detach().expand(shape)
        hb = self.hidden_bias.detach().expand(*shape[:-1], self.model.n_hidden)
        v = self.model.initial_frames(vb)
        return self.model.frame_gibbs(self.params, v, vb, hb, self.sample_steps)
