r"""The discriminative (classification) RBM and its hybrid training (Larochelle & Bengio 2008; Goodfellow et al. §20).

A binary input :math:`x` (``n_visible`` units), a class label :math:`y \in \{0, \dots, K-1\}` with one-hot code
:math:`e_y`, and binary hidden units :math:`h` have the energy

.. math::

    E(y, x, h) = -h^\top W x - b^\top x - c^\top h - d^\top e_y - h^\top U e_y.

Summing :math:`h` out gives the free energy of the pair, and with it an exact classifier,

.. math::

    -F(x, y) = b^\top x + d_y + \sum_j \operatorname{softplus}(c_j + U_{jy} + W_j x), \qquad
    p(y \mid x) = \frac{\exp\big(d_y + \sum_j \operatorname{softplus}(c_j + U_{jy} + W_j x)\big)}
        {\sum_{y'} \exp\big(d_{y'} + \sum_j \operatorname{softplus}(c_j + U_{jy'} + W_j x)\big)},

whose logits :meth:`ClassificationRBM.conditional_logits` returns (:math:`b^\top x` cancels). Three objectives train
the same parameters:

* discriminative, :math:`\sum_n \log p(y_n \mid x_n)`: exact, by plain autograd; the site
  ``pyro.sample("y", rbm.conditional(x), obs=y)`` (a ``Categorical``) under ``SVI`` with ``Trace_ELBO``;
* generative, :math:`\sum_n \log p(x_n, y_n)`: the joint is an RBM on the visible vector :math:`z = (x, e_y)`
  (:class:`ClassificationRBMJoint`, ``rbm.joint``), trained by SML through
  :class:`~dgm_ppl.energy.EnergyBasedDistribution` and :class:`~dgm_ppl.energy.PersistentChains`;
* hybrid, :math:`\sum_n \log p(y_n \mid x_n) + \alpha \log p(x_n, y_n)`: both sites in one Pyro model, the
  generative one under ``poutine.scale(scale=alpha)`` (:meth:`ClassificationRBM.hybrid_model`).

Block Gibbs sampling of the joint alternates :math:`h \sim p(h \mid x, y)` (factorial,
:math:`\sigma(c + W x + U e_y)`) and :math:`(x, y) \sim p(x \mid h)\, p(y \mid h)`: the inputs are factorial
Bernoulli with logits :math:`b + W^\top h`, the label is one softmax unit with logits :math:`d + U^\top h` (one
categorical draw, never independent Bernoullis).

For annealing (AIS, parallel tempering) the joint defines the geometric path

.. math::

    \log p^*_\beta(z) = (1-\beta)\, a^\top z + \beta\, (b^\top x + d_y)
        + \sum_j \operatorname{softplus}\big(\beta (c_j + U_{jy} + W_j x)\big)

from the base model at :math:`\beta = 0` (inputs factorial with logits :math:`a_x`, label categorical with logits
:math:`a_y`, hidden units uniform; :math:`\log Z_0 = \sum_i \operatorname{softplus}(a_{x,i}) + \log\sum_k e^{a_{y,k}}
+ n_h \log 2`). Exact :math:`\log Z` enumerates the smaller of the hidden layer (the inputs and the label summed out
in closed form) and the inputs (the label and the hidden units summed out).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions import constraints
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn

from ._ops import Beta, as_tensor_like, bernoulli, check_count, check_finite, full_precision, require_binary
from .chains import NegativePhase, PersistentChains
from .distribution import EnergyBasedDistribution
from .protocol import Enumeration

__all__ = ["ClassificationRBM", "DiscriminativeRBM", "ClassificationRBMJoint", "JointParams"]

_counter = itertools.count()


class JointParams(NamedTuple):
    """The parameters of the joint RBM on :math:`z = (x, e_y)`: the input and label weights stacked, ``weight``
    ``(n_visible + n_classes, n_hidden)`` (rows :math:`W^\\top` then :math:`U`), the biases ``visible_bias``
    (:math:`b` then :math:`d`) and ``hidden_bias`` (:math:`c`)."""

    weight: Tensor
    visible_bias: Tensor
    hidden_bias: Tensor


class _LabeledBinary(constraints.Constraint):
    """Binary vectors whose last ``n_classes`` entries are one-hot (the support of the joint)."""

    is_discrete = True
    event_dim = 1

    def __init__(self, n_inputs: int, n_classes: int):
        self.n_inputs, self.n_classes = n_inputs, n_classes
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        binary = ((value == 0) | (value == 1)).all(-1)
        return binary & (value[..., self.n_inputs :].sum(-1) == 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_inputs={self.n_inputs}, n_classes={self.n_classes})"


def _one_hot_draw(logits: Tensor) -> Tensor:
    """One categorical draw per row of ``logits`` (Gumbel-max), as one-hot rows of the logits' dtype."""
    uniform = torch.rand_like(logits).clamp_(min=torch.finfo(logits.dtype).tiny)
    index = (logits - torch.log(-torch.log(uniform))).argmax(-1)
    return F.one_hot(index, logits.shape[-1]).to(logits.dtype)


class ClassificationRBM(PyroModule):
    r"""A discriminative RBM (Larochelle & Bengio 2008) with ``n_visible`` binary inputs, ``n_hidden`` binary
    hidden units and ``n_classes`` labels; see the module's notes for the math.

    Parameters: ``weight`` (``n_visible x n_hidden``, :math:`W^\top`), ``class_weight`` (``n_classes x n_hidden``,
    :math:`U^\top`), ``visible_bias`` (:math:`b`), ``class_bias`` (:math:`d`), ``hidden_bias`` (:math:`c`).

    * :meth:`conditional` (also ``rbm(x)``): the exact :math:`p(y \mid x)` as a ``Categorical``, for
      ``pyro.sample("y", rbm.conditional(x), obs=y)``; :meth:`conditional_logits`, :meth:`predict`.
    * :attr:`joint`: the joint :math:`p(x, y)` as an energy model on :math:`z = (x, e_y)`
      (:class:`ClassificationRBMJoint`, a :class:`~dgm_ppl.energy.protocol.FreeEnergyModel`): its persistent chains,
      :func:`~dgm_ppl.energy.exact_log_partition`, :func:`~dgm_ppl.energy.ais_log_partition` take it;
      :meth:`generative` is its SML distribution, :meth:`join` and :meth:`split` convert between :math:`(x, y)`
      and :math:`z`.
    * :meth:`hybrid_model`: the hybrid objective as one Pyro model.

    :param n_visible: binary input units.
    :param n_hidden: binary hidden units.
    :param n_classes: labels (at least 2).
    :param init_std: standard deviation of the initial weights.
    :param name: the prefix of the parameters in Pyro's param store (unique by default).
    """

    def __init__(
        self, n_visible: int, n_hidden: int, n_classes: int, *, init_std: float = 0.01, name: str | None = None
    ):
        check_count("n_visible", n_visible, 1)
        check_count("n_hidden", n_hidden, 1)
        check_count("n_classes", n_classes, 2)
        super().__init__(name if name is not None else f"ClassificationRBM_{next(_counter)}")
        self.n_visible, self.n_hidden, self.n_classes = n_visible, n_hidden, n_classes
        self.weight = nn.Parameter(torch.randn(n_visible, n_hidden) * init_std)
        self.class_weight = nn.Parameter(torch.randn(n_classes, n_hidden) * init_std)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.class_bias = nn.Parameter(torch.zeros(n_classes))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        #: the joint p(x, y) as an energy model on (x, one-hot y); shares this module's parameters
        self.joint = ClassificationRBMJoint(self)

    def get_extra_state(self) -> dict:
        return {"log_z": self.joint.log_z}

    def set_extra_state(self, state: dict) -> None:
        self.joint.log_z = state.get("log_z")

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, n_classes={self.n_classes}"

    # ------------------------------------------------------------------ data
    def to_tensor(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through, NumPy arrays and lists are converted to the parameters'
        dtype and device. No check of the values.

        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.weight, name)

    def check_inputs(self, x: Any, name: str = "x") -> Tensor:
        """``x`` as a tensor (:meth:`to_tensor`), after checking that it holds inputs: width ``n_visible``, values in
        {0, 1} (NaN and inf refused).

        :param name: the argument, as error messages name it.
        :raises ValueError: for the wrong width, non-binary or non-finite values.
        """
        x = self.to_tensor(x, name)
        if x.shape[-1:] != (self.n_visible,):
            raise ValueError(
                f"{name}: expected the last dimension to be n_visible={self.n_visible}, got shape {tuple(x.shape)}"
            )
        require_binary(x, name, "the inputs of a ClassificationRBM")
        return x

    def check_labels(self, y: Any, name: str = "y") -> Tensor:
        """``y`` as a ``long`` tensor on the parameters' device, after checking that it holds labels: whole numbers
        in ``0 .. n_classes - 1``.

        :param name: the argument, as error messages name it.
        :raises ValueError: for labels out of range, fractional or non-finite.
        """
        if not isinstance(y, Tensor):
            y = self.to_tensor(y, name)
        if y.dtype == torch.bool:
            raise ValueError(f"{name}: labels must be integers in 0..{self.n_classes - 1}, got a bool tensor")
        if y.is_floating_point():
            if not check_finite(y):
                raise ValueError(f"{name}: labels contain NaN or inf")
            if bool((y != y.round()).any()):
                raise ValueError(f"{name}: labels must be whole numbers, got {y[y != y.round()].flatten()[0].item()!r}")
        if y.numel() and bool(((y < 0) | (y >= self.n_classes)).any()):
            bad = y[(y < 0) | (y >= self.n_classes)].flatten()[0].item()
            raise ValueError(f"{name}: labels must lie in 0..{self.n_classes - 1}, got {bad!r}")
        return y.to(device=self.weight.device, dtype=torch.long)

    def join(self, x: Any, y: Any) -> Tensor:
        """The joint visible states :math:`z = (x, e_y)` of inputs and labels (checked), shape
        ``batch + (n_visible + n_classes,)``.

        :raises ValueError: for bad inputs or labels, or batch shapes that differ.
        """
        x, y = self.check_inputs(x, "x"), self.check_labels(y, "y")
        if x.shape[:-1] != y.shape:
            raise ValueError(f"x and y must have the same batch shape, got {tuple(x.shape[:-1])} and {tuple(y.shape)}")
        x = x.to(self.weight)
        return torch.cat([x, F.one_hot(y, self.n_classes).to(x)], -1)

    def split(self, z: Any) -> tuple[Tensor, Tensor]:
        """The inputs and labels ``(x, y)`` of joint visible states ``z`` (checked; the inverse of :meth:`join`).

        :raises ValueError: for states that are not binary with a one-hot label block.
        """
        z = self.joint.check_data(z, "z")
        return z[..., : self.n_visible], z[..., self.n_visible :].argmax(-1)

    # ------------------------------------------------------------------ the classifier
    def conditional_logits(self, x: Any) -> Tensor:
        r"""The logits :math:`d_y + \sum_j \operatorname{softplus}(c_j + U_{jy} + W_j x)` of the exact
        :math:`p(y \mid x)`, shape ``batch + (n_classes,)``. Differentiable in the parameters.

        :param x: binary inputs ``batch + (n_visible,)`` (a NumPy array is converted).
        :raises ValueError: for the wrong width, non-binary or non-finite values.
        """
        x = self.check_inputs(x, "x").to(self.weight)
        pre = x @ self.weight + self.hidden_bias  # (..., n_hidden)
        return F.softplus(pre[..., None, :] + self.class_weight).sum(-1) + self.class_bias

    def forward(self, x: Any) -> dist.Categorical:
        # Reading the parameters inside the PyroModule records them as param sites for SVI.
        return dist.Categorical(logits=self.conditional_logits(x))

    def conditional(self, x: Any) -> dist.Categorical:
        r"""The exact :math:`p(y \mid x)` as a ``Categorical`` (batch shape ``x.shape[:-1]``), for
        ``pyro.sample("y", rbm.conditional(x), obs=y)``: discriminative training by ``SVI`` with ``Trace_ELBO``.
        The same as ``rbm(x)``.

        :raises ValueError: for bad inputs (wrong width, non-binary or non-finite values).
        """
        return self(x)

    @torch.no_grad()
    def predict(self, x: Any) -> Tensor:
        """The most probable label of each input, ``argmax_y p(y | x)``, shape ``x.shape[:-1]``."""
        return self.conditional_logits(x).argmax(-1)

    # ------------------------------------------------------------------ the joint
    def joint_params(self) -> JointParams:
        """The parameters of the joint RBM on :math:`z = (x, e_y)` (see :class:`JointParams`)."""
        return JointParams(
            torch.cat([self.weight, self.class_weight]),
            torch.cat([self.visible_bias, self.class_bias]),
            self.hidden_bias,
        )

    @pyro_method
    def generative(self, chains: NegativePhase, **kwargs: Any) -> EnergyBasedDistribution:
        r"""The distribution of the joint visible states :math:`z = (x, e_y)` whose ``log_prob`` is
        :math:`-F(x, y) - \log\hat Z` with the SML gradient (see :class:`~dgm_ppl.energy.EnergyBasedDistribution`).

        :param chains: the joint's negative phase, e.g. ``PersistentChains(rbm.joint, 100)``.
        :param kwargs: passed to :class:`~dgm_ppl.energy.EnergyBasedDistribution` (``sample_steps``).
        """
        return EnergyBasedDistribution(self.joint, chains, params=self.joint_params(), **kwargs)

    def hybrid_model(
        self,
        x: Any,
        y: Any,
        chains: NegativePhase | None = None,
        *,
        alpha: float = 0.01,
        num_data: int | None = None,
    ) -> None:
        r"""The hybrid objective :math:`\sum_n \log p(y_n \mid x_n) + \alpha \log p(x_n, y_n)` as a Pyro model
        (Larochelle & Bengio 2008): the site ``"y"`` (:meth:`conditional`) and, under ``poutine.scale(scale=alpha)``,
        the site ``"xy"`` (:meth:`generative`), in the plate ``"data"``. Use it with an empty guide in
        ``SVI(..., Trace_ELBO())``.

        :param x: a batch of binary inputs ``(B, n_visible)``.
        :param y: its labels ``(B,)``.
        :param chains: the joint's negative phase (needed when ``alpha > 0``).
        :param alpha: the weight of the generative term; ``0`` leaves it out (purely discriminative).
        :param num_data: the size of the data set when ``x`` is a minibatch (the plate then scales both sites by
            ``num_data / B``); default ``B``.
        :raises ValueError: for bad inputs or labels, a negative ``alpha``, or ``alpha > 0`` without chains.
        """
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if alpha > 0 and chains is None:
            raise ValueError(
                "the generative term (alpha > 0) needs the joint's chains, e.g. PersistentChains(rbm.joint)"
            )
        z = self.join(x, y)
        labels = z[..., self.n_visible :].argmax(-1)
        size = z.shape[0]
        if num_data is not None:
            check_count("num_data", num_data, size)
        with pyro.plate("data", num_data or size, subsample=torch.arange(size, device=z.device)):
            pyro.sample("y", self.conditional(z[..., : self.n_visible]), obs=labels)
            if alpha > 0:
                with poutine.scale(scale=float(alpha)):
                    pyro.sample("xy", self.generative(chains), obs=z)

    @torch.no_grad()
    def init_from_data(self, x: Any, y: Any) -> ClassificationRBM:
        """Set the input and label biases to the data's (smoothed) base rates; returns the model.

        :raises ValueError: for bad inputs or labels.
        """
        self.joint.init_from_data(self.join(x, y))
        return self

    @torch.no_grad()
    def sample(self, num_samples: int, steps: int = 1000, labels: Any = None) -> tuple[Tensor, Tensor]:
        """Pairs ``(x, y)`` from the joint by ``steps`` block-Gibbs sweeps from factorial states; with ``labels``
        (shape ``(num_samples,)``) the labels are clamped and only the inputs are drawn (class-conditional samples).

        :raises ValueError: for bad labels.
        """
        joint = self.joint
        p = joint.params()
        z = joint.random_state(num_samples)
        if labels is None:
            z = joint.gibbs(z, steps, params=p)
        else:
            labels = self.check_labels(labels, "labels")
            if labels.shape != (num_samples,):
                raise ValueError(f"labels must have shape {(num_samples,)}, got {tuple(labels.shape)}")
            code = F.one_hot(labels, self.n_classes).to(z)
            z[:, self.n_visible :] = code
            for _ in range(steps):
                z = joint.gibbs(z, 1, params=p)
                z[:, self.n_visible :] = code
        return z[:, : self.n_visible], z[:, self.n_visible :].argmax(-1)


class ClassificationRBMJoint:
    r"""The joint :math:`p(x, y)` of a :class:`ClassificationRBM` as an energy model on the visible vector
    :math:`z = (x, e_y)` of width ``n_visible = rbm.n_visible + rbm.n_classes``: a
    :class:`~dgm_ppl.energy.protocol.FreeEnergyModel`, so that :class:`~dgm_ppl.energy.PersistentChains`,
    :class:`~dgm_ppl.energy.ContrastiveDivergence`, :class:`~dgm_ppl.energy.ParallelTempering`,
    :class:`~dgm_ppl.energy.EnergyBasedDistribution` and the partition functions take it. It holds no parameters of
    its own (it reads those of ``rbm``) and is built by the :class:`ClassificationRBM` as ``rbm.joint``; ``log_z``
    (saved in the classifier's state) is the latest estimate of its :math:`\log Z`.

    The label block is one softmax unit: states are binary with exactly one 1 among the last ``n_classes`` entries,
    and the Gibbs sampler draws it from its categorical conditional.

    :param rbm: the classification RBM.
    """

    centered = False
    binary_visible = True
    #: the class of this model's persistent chains, built by ``PersistentChains(rbm.joint, ...)``
    chain_class: type = PersistentChains
    pending_hidden_means = None

    def __init__(self, rbm: ClassificationRBM):
        self.rbm = rbm
        self.n_inputs, self.n_classes, self.n_hidden = rbm.n_visible, rbm.n_classes, rbm.n_hidden
        self.n_visible = self.n_inputs + self.n_classes
        self.support = _LabeledBinary(self.n_inputs, self.n_classes)
        self.log_z: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_inputs={self.n_inputs}, n_classes={self.n_classes}, n_hidden={self.n_hidden})"

    @property
    def weight(self) -> Tensor:
        """The input weight of the RBM (the dtype and device of the states)."""
        return self.rbm.weight

    # ------------------------------------------------------------------ parameters and data
    @full_precision
    def params(self) -> JointParams:
        """The parameters in standard form (:meth:`ClassificationRBM.joint_params`)."""
        return self.rbm.joint_params()

    def to_tensor(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through, NumPy arrays and lists are converted to the parameters'
        dtype and device. No check of the values.

        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.rbm.weight, name)

    def check_data(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor, after checking that it holds joint states: width ``n_visible``, values in {0, 1}
        (NaN and inf refused) and a one-hot label block.

        :param name: the argument, as error messages name it.
        :raises ValueError: for the wrong width, non-binary or non-finite values, or a label block that is not
            one-hot.
        """
        z = self.to_tensor(data, name)
        if z.shape[-1:] != (self.n_visible,):
            raise ValueError(
                f"{name}: expected the last dimension to be n_visible + n_classes={self.n_visible}, "
                f"got shape {tuple(z.shape)}"
            )
        require_binary(z, name, "joint states")
        if z.numel() and not bool((z[..., self.n_inputs :].sum(-1) == 1).all()):
            raise ValueError(f"{name}: the label block (the last {self.n_classes} entries) must be one-hot")
        return z

    def _default_base(self, base: Tensor | None, like: Tensor) -> Tensor:
        if base is None:
            return torch.zeros(self.n_visible, dtype=like.dtype, device=like.device)
        a = self.to_tensor(base, "base").to(like)
        if a.shape != (self.n_visible,):
            raise ValueError(f"base must have shape {(self.n_visible,)}, got {tuple(a.shape)}")
        return a

    # ------------------------------------------------------------------ energy
    def energy(self, states: Tensor | Sequence[Tensor], h: Tensor | None = None) -> Tensor:
        r"""The energy :math:`E(y, x, h)` of joint states ``z`` and hidden states ``h``, shape ``batch``.

        :param states: joint visible states, or the pair ``[z, h]`` when ``h`` is not given.
        :param h: hidden states.
        """
        if h is None:
            if len(states) != 2:
                raise ValueError(f"expected the layer states [z, h], got {len(states)} states")
            states, h = states
        p = self.params()
        z, h = self.to_tensor(states, "z").to(p.weight), self.to_tensor(h, "h").to(p.weight)
        return -(z @ p.visible_bias + h @ p.hidden_bias + ((z @ p.weight) * h).sum(-1))

    def _hidden_input(self, p: JointParams, z: Tensor) -> Tensor:
        return z @ p.weight + p.hidden_bias

    def _neg_free_energy_and_input(self, p: JointParams, z: Tensor) -> tuple[Tensor, Tensor]:
        x = self._hidden_input(p, z)
        return z @ p.visible_bias + F.softplus(x).sum(-1), x

    def free_energy(self, z: Any) -> Tensor:
        r"""The free energy :math:`F(x, y) = -\log\sum_h e^{-E(y, x, h)}` of joint states (plain autograd)."""
        p = self.params()
        return -self._neg_free_energy_and_input(p, self.to_tensor(z, "z").to(p.weight))[0]

    def unnormalized_log_prob(self, v: Tensor, *, params: JointParams | None = None) -> Tensor:
        r"""The unnormalized :math:`\log p^*(z) = -F(x, y)` of joint states; no check of the values.

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        return self._neg_free_energy_and_input(p, self.to_tensor(v, "v").to(p.weight))[0]

    def sml_terms(
        self, v: Tensor, num_data: int, *, params: JointParams | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""The SML surrogate of the rows of 2-D ``v`` (``num_data`` data rows, then chain states): :math:`-F` of the
        data rows with the gradient :math:`\nabla(-F(z_n)) - \frac1C\sum_c \nabla(-F(\tilde z_c))`; the chains'
        mean :math:`-F` and the hidden probabilities of all rows (both without gradient). Plain autograd.

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        neg_free, x = self._neg_free_energy_and_input(p, v)
        s = neg_free[num_data:].mean()
        return neg_free[:num_data] - (s - s.detach()), s.detach(), torch.sigmoid(x.detach())

    def tempered_log_prob(
        self, v: Tensor, beta: Beta = 1.0, base: Tensor | None = None, *, params: JointParams | None = None
    ) -> Tensor:
        r"""The unnormalized :math:`\log p^*_\beta(z)` on the path from the base model ``base`` (default: zero
        logits) at ``beta=0`` to the joint at ``beta=1`` (module notes).

        :param beta: a float, or a tensor ``(T, 1, 1)`` for states ``(T, C, n_visible)``.
        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        z = self.to_tensor(v, "v").to(p.weight)
        return self._tempered(p, z, self._hidden_input(p, z), beta, self._default_base(base, p.weight))

    def _tempered(self, p: JointParams, z: Tensor, x: Tensor, beta: Beta, a: Tensor) -> Tensor:
        if isinstance(beta, float) and beta == 1.0:
            return z @ p.visible_bias + F.softplus(x).sum(-1)
        beta_v = beta if isinstance(beta, float) else beta.squeeze(-1)
        return (1 - beta_v) * (z @ a) + beta_v * (z @ p.visible_bias) + F.softplus(beta * x).sum(-1)

    # ------------------------------------------------------------------ sampling
    def _draw_visible(self, p: JointParams, h: Tensor, beta: Beta = 1.0, a: Tensor | None = None) -> Tensor:
        """``z ~ p_beta(z | h)``: the inputs factorial Bernoulli, the label one categorical draw."""
        logits = h @ p.weight.T + p.visible_bias
        if not (isinstance(beta, float) and beta == 1.0):
            a = self._default_base(a, p.weight)
            logits = beta * logits + (1 - beta) * a
        n = self.n_inputs
        return torch.cat([bernoulli(torch.sigmoid(logits[..., :n])), _one_hot_draw(logits[..., n:])], -1)

    @torch.no_grad()
    def sample_hidden(self, v: Tensor, beta: Beta = 1.0) -> Tensor:
        """Draw :math:`h \\sim p_\\beta(h \\mid z)`."""
        p = self.params()
        return bernoulli(torch.sigmoid(beta * self._hidden_input(p, self.to_tensor(v, "v").to(p.weight))))

    @torch.no_grad()
    def sample_visible(
        self, h: Tensor, beta: Beta = 1.0, base: Tensor | None = None, *, params: JointParams | None = None
    ) -> Tensor:
        """Draw :math:`z \\sim p_\\beta(z \\mid h)` (the label from its softmax).

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        return self._draw_visible(p, self.to_tensor(h, "h").to(p.weight), beta, base)

    @torch.no_grad()
    def gibbs(
        self,
        states: Tensor,
        steps: int = 1,
        beta: Beta = 1.0,
        base: Tensor | None = None,
        *,
        params: JointParams | None = None,
    ) -> Tensor:
        """``steps`` block-Gibbs sweeps ``z -> h -> z`` at inverse temperature ``beta``, without gradient.

        :param states: joint states ``(..., n_visible)``.
        :param beta: inverse temperature on the path from the base model ``base``; a tensor of shape
            ``(T, 1, 1)`` for states of shape ``(T, C, n_visible)``.
        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        z = self.to_tensor(states, "states").to(p.weight)
        hot = isinstance(beta, float) and beta == 1.0
        a = None if hot else self._default_base(base, p.weight)
        for _ in range(steps):
            x = self._hidden_input(p, z)
            h = bernoulli(torch.sigmoid(x if hot else beta * x))
            z = self._draw_visible(p, h, beta, a)
        return z

    @torch.no_grad()
    def sample_base(self, num_samples: int, base: Tensor | None = None) -> Tensor:
        """Exact joint states of the base model at beta = 0 (input logits and label logits ``base``, default 0)."""
        like = self.rbm.weight
        a = self._default_base(base, like).detach().expand(num_samples, -1)
        n = self.n_inputs
        return torch.cat([bernoulli(torch.sigmoid(a[:, :n])), _one_hot_draw(a[:, n:].contiguous())], -1)

    def random_state(self, num_samples: int) -> Tensor:
        """Initial chain states from the factorial model of the input and label biases."""
        return self.sample_base(num_samples, self.params().visible_bias.detach())

    @torch.no_grad()
    def sample(self, num_samples: int, steps: int = 1000, init: Tensor | None = None) -> Tensor:
        """Joint states after ``steps`` Gibbs sweeps from ``init`` (default: :meth:`random_state`)."""
        z = self.random_state(num_samples) if init is None else self.check_data(init, "init")
        return self.gibbs(z, steps=steps)

    def persistent_chains(self, num_chains: int = 100, steps: int = 1, init: Tensor | None = None) -> NegativePhase:
        """This model's persistent chains, ``chain_class(self, num_chains, steps, init)``."""
        return self.chain_class(self, num_chains, steps, init)

    # ------------------------------------------------------------------ training
    def base_rate(self, data: Tensor) -> Tensor:
        """The base model fitted to joint states ``data``: the inputs' logits and the labels' log frequencies,
        both Laplace-smoothed."""
        z = self.to_tensor(data).to(self.rbm.weight).reshape(-1, self.n_visible)
        counts, n = z.sum(0), z.shape[0]
        x_rate = (counts[: self.n_inputs] + 1.0) / (n + 2.0)
        y_rate = (counts[self.n_inputs :] + 1.0) / (n + self.n_classes)
        return torch.cat([torch.logit(x_rate), torch.log(y_rate)])

    @torch.no_grad()
    def init_from_data(self, data: Any) -> ClassificationRBMJoint:
        """Set the input and label biases to the base rates of joint states ``data`` (:meth:`base_rate`); returns
        the model.

        :raises ValueError: for states that are not binary with a one-hot label block.
        """
        z = self.check_data(data, "init_from_data(data)")
        a = self.base_rate(z)
        self.rbm.visible_bias.copy_(a[: self.n_inputs])
        self.rbm.class_bias.copy_(a[self.n_inputs :])
        return self

    def distribution(self, chains: NegativePhase, **kwargs: Any) -> EnergyBasedDistribution:
        """The Pyro distribution of joint states whose ``log_prob`` carries the SML gradient
        (:meth:`ClassificationRBM.generative`)."""
        return self.rbm.generative(chains, **kwargs)

    @full_precision
    def update_offsets(self, hidden_means: Any, *, defer: bool = False) -> None:
        """Nothing: the classification RBM is not centered."""

    # ------------------------------------------------------------------ partition functions
    def base_log_partition(self, base: Tensor | None = None) -> Tensor:
        r""":math:`\log Z_0` of the base model (module notes)."""
        a = self._default_base(base, self.rbm.weight)
        n = self.n_inputs
        return F.softplus(a[:n]).sum() + torch.logsumexp(a[n:], 0) + self.n_hidden * math.log(2.0)

    def annealing_path(self, base: Tensor | None = None) -> _JointAnnealingPath:
        """The AIS path over joint states from the base model ``base`` (default: zero logits) to the joint."""
        return _JointAnnealingPath(self, base)

    def enumeration(self) -> Enumeration:
        """Exact log Z enumerates the smaller of the hidden layer and the inputs (the label, and the other layer,
        summed out in closed form). Differentiable in the parameters."""
        p, n = self.params(), self.n_inputs
        w_x, w_y, b, d = p.weight[:n], p.weight[n:], p.visible_bias[:n], p.visible_bias[n:]
        if self.n_inputs < self.n_hidden:

            def over_inputs(x: Tensor) -> Tensor:
                pre = (x @ w_x + p.hidden_bias)[:, None, :] + w_y  # (k, n_classes, n_hidden)
                return x @ b + torch.logsumexp(F.softplus(pre).sum(-1) + d, -1)

            return Enumeration(self.n_inputs, "states of the inputs", over_inputs, p.weight)

        def over_hidden(h: Tensor) -> Tensor:
            return h @ p.hidden_bias + F.softplus(h @ w_x.T + b).sum(-1) + torch.logsumexp(h @ w_y.T + d, -1)

        return Enumeration(self.n_hidden, "states of the hidden layer", over_hidden, p.weight)


class _JointAnnealingPath:
    r"""The AIS path of the joint over visible states (``state = [z]``), the hidden units summed out, with one
    block-Gibbs sweep at :math:`\beta` as the transition; the cache is the hidden pre-activations."""

    def __init__(self, model: ClassificationRBMJoint, base: Tensor | None):
        self.model, self.base = model, base
        self.params = model.params()
        self.visible_base = model._default_base(base, self.params.weight)

    def initial_state(self, num_chains: int) -> list[Tensor]:
        return [self.model.sample_base(num_chains, self.visible_base)]

    def state_from_samples(self, samples: Any) -> list[Tensor]:
        return [self.model.check_data(samples, "samples").to(self.params.weight)]

    def prepare(self, state: list[Tensor]) -> Tensor:
        return self.model._hidden_input(self.params, state[0])

    def log_prob(self, state: list[Tensor], beta: float, cache: Tensor) -> Tensor:
        return self.model._tempered(self.params, state[0], cache, float(beta), self.visible_base)

    def transition(self, state: list[Tensor], beta: float, cache: Tensor) -> list[Tensor]:
        h = bernoulli(torch.sigmoid(beta * cache))
        return [self.model._draw_visible(self.params, h, float(beta), self.visible_base)]


#: The name of the model in Larochelle & Bengio (2008) and in the deep-learning book: the same class.
DiscriminativeRBM = ClassificationRBM
