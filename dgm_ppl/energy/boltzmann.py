r"""The general Boltzmann machine (Goodfellow et al. §20.1) as a Pyro module.

Over the full state :math:`x = (v, h)` of :math:`n = n_v + n_h` binary units,

.. math::

    E(x) = -x^\top U x - b^\top x, \qquad p(x) = e^{-E(x)} / Z,

with :math:`U` symmetric and zero on the diagonal (parametrized as :math:`U = \tfrac12 (W + W^\top)` off the
diagonal, :math:`W` unconstrained). Every unit's conditional is a logistic regression on all the others,

.. math::

    p(x_i = 1 \mid x_{-i}) = \sigma\Big(b_i + 2 \sum_{j \ne i} U_{ij} x_j\Big),

which the sampler uses one unit at a time (systematic-scan Gibbs). The visible marginal sums the hidden units
out by enumeration, with :math:`U` split into the blocks :math:`U_{vv}, U_{vh}, U_{hh}`,

.. math::

    \log p^*(v) = \log \sum_h e^{-E(v,h)} = v^\top U_{vv} v + b_v^\top v
        + \log \sum_h \exp\big(2 v^\top U_{vh} h + h^\top U_{hh} h + b_h^\top h\big),

exact for up to ``max_enumerated_hidden`` hidden units. SML (:class:`BoltzmannDistribution`) takes its
positive phase :math:`\mathbb E_{h \mid v}[\nabla(-E(v,h))]` as the gradient of this sum (exact), or, for more
hidden units, from Gibbs chains with the visible units clamped (``positive_phase="gibbs"``); its negative phase
from persistent chains over the full state (:class:`BoltzmannChains`).

Annealing (AIS) runs over full states along

.. math::

    \log p^*_\beta(x) = -\beta E(x) + (1 - \beta)\, a^\top v,

from the base model (visible units factorial with logits :math:`a`, hidden units uniform, so
:math:`\log Z_0 = \sum_i \operatorname{softplus}(a_i) + n_h \log 2`) at :math:`\beta = 0`, with one tempered
Gibbs sweep as the transition.
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

from ._ops import Beta, as_tensor_like, bernoulli, binary_states, full_precision, require_binary
from .chains import NegativePhase, PersistentChains
from .distribution import EnergyBasedDistribution, check_negative_phase
from .protocol import EnergyModel, Enumeration

__all__ = ["BoltzmannMachine", "BoltzmannChains", "BoltzmannDistribution", "BMParams"]

_counter = itertools.count()
_CHUNK = 2**12  # hidden states per chunk of the enumeration of log p*(v)


class BMParams(NamedTuple):
    """The parameters in standard form: the symmetric, zero-diagonal coupling :math:`U` and the biases :math:`b`."""

    coupling: Tensor
    bias: Tensor

    @property
    def weight(self) -> Tensor:
        """The coupling (for the dtype and device of states)."""
        return self.coupling


def _neg_energy(p: BMParams, x: Tensor) -> Tensor:
    return ((x @ p.coupling) * x).sum(-1) + x @ p.bias


class BoltzmannMachine(PyroModule):
    r"""A general (fully connected) Boltzmann machine with ``n_visible`` visible and ``n_hidden`` hidden binary
    units; see the module's notes for the math.

    Parameters: ``weight`` (``n x n``, unconstrained; the coupling :attr:`coupling` is its symmetric part off the
    diagonal) and ``bias`` (``n``), over the units ordered ``(v, h)``. ``log_z`` holds the latest estimate of
    :math:`\log Z`. Satisfies :class:`~dgm_ppl.energy.protocol.EnergyModel`: chain states and
    :meth:`energy`'s input are full states ``(..., n)``; data (:meth:`check_data`, :meth:`distribution`) are
    visible states ``(..., n_visible)``.

    :param n_visible: visible units (at least one).
    :param n_hidden: hidden units (may be 0: a fully visible Boltzmann machine).
    :param init_std: standard deviation of the initial coupling.
    :param max_enumerated_hidden: the most hidden units that :meth:`unnormalized_log_prob` sums out exactly
        (:math:`2^{n_h}` terms per datum).
    :param name: the prefix of the parameters in Pyro's param store (unique by default).
    """

    support = constraints.independent(constraints.boolean, 1)
    binary_visible = True
    centered = False
    #: the class of this model's persistent chains, built by ``PersistentChains(bm, ...)``
    chain_class: type = PersistentChains  # replaced by BoltzmannChains below
    pending_hidden_means = None

    def __init__(
        self,
        n_visible: int,
        n_hidden: int = 0,
        *,
        init_std: float = 0.01,
        max_enumerated_hidden: int = 16,
        name: str | None = None,
    ):
        for label, n, least in (("n_visible", n_visible, 1), ("n_hidden", n_hidden, 0)):
            if isinstance(n, bool) or not isinstance(n, int) or n < least:
                raise ValueError(f"{label} must be an int >= {least}, got {n!r}")
        if isinstance(max_enumerated_hidden, bool) or not isinstance(max_enumerated_hidden, int):
            raise ValueError(f"max_enumerated_hidden must be an int, got {max_enumerated_hidden!r}")
        super().__init__(name if name is not None else f"BoltzmannMachine_{next(_counter)}")
        self.n_visible, self.n_hidden = n_visible, n_hidden
        self.num_units = n = n_visible + n_hidden
        w = torch.randn(n, n) * init_std
        self.weight = nn.Parameter((w + w.T) / 2)
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("off_diagonal", 1.0 - torch.eye(n), persistent=False)
        self.max_enumerated_hidden = max_enumerated_hidden
        self.log_z: float | None = None

    def get_extra_state(self) -> dict:
        return {"log_z": self.log_z}

    def set_extra_state(self, state: dict) -> None:
        self.log_z = state.get("log_z")

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}"

    # ------------------------------------------------------------------ parameters and data
    @property
    def coupling(self) -> Tensor:
        r"""The coupling :math:`U = \tfrac12 (W + W^\top)` with its diagonal set to zero."""
        w = self.weight
        return (w + w.T) * (0.5 * self.off_diagonal.to(w))

    @full_precision
    def params(self) -> BMParams:
        """The parameters in standard form (read once, so that one call's products share them)."""
        return BMParams(self.coupling, self.bias)

    def to_tensor(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through, NumPy arrays and lists are converted to the parameters'
        dtype and device. No check of the values.

        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.weight, name)

    def _check_binary(self, x: Tensor, width: int, what: str, name: str) -> None:
        if x.shape[-1:] != (width,):
            raise ValueError(f"{name}: expected the last dimension to be {what}={width}, got shape {tuple(x.shape)}")
        require_binary(x, name, "the units of a Boltzmann machine")

    def check_data(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor, after checking that it holds visible states: width ``n_visible``, values in
        {0, 1} (NaN and inf refused), in one fused pass.

        :param name: the argument, as error messages name it.
        :raises ValueError: for the wrong width, non-binary or non-finite values.
        """
        v = self.to_tensor(data, name)
        self._check_binary(v, self.n_visible, "n_visible", name)
        return v

    def check_states(self, states, name: str = "states") -> Tensor:
        """Full states ``(..., n_visible + n_hidden)`` as a tensor, after the checks of :meth:`check_data`; a
        sequence ``[v, h]`` is concatenated.

        :raises ValueError: for the wrong width, non-binary or non-finite values.
        """
        if isinstance(states, (list, tuple)):
            states = torch.cat([self.to_tensor(s, f"{name}[{k}]") for k, s in enumerate(states)], -1)
        x = self.to_tensor(states, name)
        self._check_binary(x, self.num_units, "n_visible + n_hidden", name)
        return x

    # ------------------------------------------------------------------ energy
    def energy(self, states: Tensor | Sequence[Tensor], *, params: BMParams | None = None) -> Tensor:
        r"""The energy :math:`E(x) = -x^\top U x - b^\top x` of full states, shape ``batch``.

        :param states: full states ``(..., n_visible + n_hidden)``, or the pair ``[v, h]``.
        :raises ValueError: for the wrong width, non-binary or non-finite values (naming ``states``).
        """
        p = self.params() if params is None else params
        return -_neg_energy(p, self.check_states(states).to(p.coupling))

    def conditional_logits(self, states: Tensor, *, params: BMParams | None = None) -> Tensor:
        r"""The logits :math:`b_i + 2 (U x)_i` of :math:`p(x_i = 1 \mid x_{-i})` of every unit, shape of ``states``."""
        p = self.params() if params is None else params
        x = self.check_states(states).to(p.coupling)
        return p.bias + 2 * (x @ p.coupling)

    def log_conditional(self, states: Tensor, *, params: BMParams | None = None) -> Tensor:
        r""":math:`\log p(x_i \mid x_{-i})` of every unit of full states (given all other units, hidden ones
        included), shape of ``states``."""
        p = self.params() if params is None else params
        x = self.check_states(states).to(p.coupling)
        return -F.softplus((1 - 2 * x) * (p.bias + 2 * (x @ p.coupling)))

    def unnormalized_log_prob(self, v: Tensor, *, params: BMParams | None = None) -> Tensor:
        r"""The unnormalized :math:`\log p^*(v) = \log \sum_h e^{-E(v,h)}` of visible states, exact: the hidden
        units are summed out by enumeration (chunks of :math:`2^{12}` hidden states). Differentiable in the
        parameters, and its gradient is the exact positive phase :math:`\mathbb E_{h|v}[\nabla(-E(v,h))]`.

        :param v: visible states ``(..., n_visible)``; no check of the values (see :meth:`check_data`).
        :returns: shape ``v.shape[:-1]``.
        :raises ValueError: when ``n_hidden > max_enumerated_hidden``.
        """
        p = self.params() if params is None else params
        v = self.to_tensor(v, "v").to(p.coupling)
        if v.shape[-1:] != (self.n_visible,):
            raise ValueError(f"v: expected the last dimension to be n_visible={self.n_visible}, got {tuple(v.shape)}")
        nv, nh = self.n_visible, self.n_hidden
        u, b = p.coupling, p.bias
        v_term = ((v @ u[:nv, :nv]) * v).sum(-1) + v @ b[:nv]
        if nh == 0:
            return v_term
        if nh > self.max_enumerated_hidden:
            raise ValueError(
                f"log p*(v) of a Boltzmann machine sums over 2^{nh} hidden states, more than "
                f"max_enumerated_hidden={self.max_enumerated_hidden} allows (raise it, or train with "
                "positive_phase='gibbs' and estimate likelihoods by AIS)"
            )
        cross = 2 * (v @ u[:nv, nv:])  # (..., nh)
        parts = []
        for start in range(0, 2**nh, _CHUNK):
            hs = binary_states(nh, start, min(2**nh, start + _CHUNK), u)
            h_term = ((hs @ u[nv:, nv:]) * hs).sum(-1) + hs @ b[nv:]
            parts.append(torch.logsumexp(cross @ hs.T + h_term, -1))
        return v_term + (parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), 0))

    # ------------------------------------------------------------------ sampling
    def _full_base(self, p: BMParams, base: Tensor | None) -> Tensor:
        """The base model's logits of all units: ``base`` (default 0) for the visible units, 0 for the hidden."""
        a = p.bias.new_zeros(self.num_units)
        if base is not None:
            a[: self.n_visible] = self.to_tensor(base, "base").to(a)
        return a

    @torch.no_grad()
    def gibbs(
        self,
        states: Tensor,
        steps: int = 1,
        beta: Beta = 1.0,
        base: Tensor | None = None,
        *,
        params: BMParams | None = None,
        clamp_visible: bool = False,
    ) -> Tensor:
        r"""``steps`` systematic-scan Gibbs sweeps (units ``0 .. n-1`` in turn, each drawn given all the
        others), without gradient.

        :param states: full states ``(..., n_visible + n_hidden)`` (a pair ``[v, h]`` is concatenated).
        :param beta: inverse temperature on the path from the base model ``base`` (module notes); a tensor of
            shape ``(T, 1, 1)`` for states of shape ``(T, C, n)``.
        :param base: the base model's visible logits (default 0).
        :param clamp_visible: update the hidden units only (the positive phase's clamped chains).
        :returns: new states (the input is not modified).
        """
        p = self.params() if params is None else params
        x = self.check_states(states).to(p.coupling).clone()
        u2, bias = 2 * p.coupling.detach(), p.bias.detach()
        if not (isinstance(beta, float) and beta == 1.0):
            a = self._full_base(p, base)
            if isinstance(beta, float):
                u2, bias = beta * u2, beta * bias + (1 - beta) * a
            else:  # a tensor (T, 1, 1) against states (T, C, n)
                u2, bias = beta[..., None] * u2, beta * bias + (1 - beta) * a
        first = self.n_visible if clamp_visible else 0
        for _ in range(steps):
            # x_i = 1 iff its logistic noise lies below its conditional logit (one draw per sweep)
            uniform = torch.rand_like(x)
            threshold = torch.log(uniform) - torch.log1p(-uniform) - bias
            if u2.dim() == 2 and x.dim() == 2:  # the common case, with the least work per unit
                rows, limits, units = u2.unbind(0), threshold.unbind(-1), x.unbind(-1)
                for i in range(first, self.num_units):
                    units[i].copy_(torch.mv(x, rows[i]) > limits[i])
                continue
            for i in range(first, self.num_units):
                field = x @ u2[i] if u2.dim() == 2 else (x[..., None, :] @ u2[..., i, :, None])[..., 0, 0]
                x[..., i] = field > threshold[..., i]
        return x

    @torch.no_grad()
    def sample_base(self, num_samples: int, base: Tensor | None = None) -> Tensor:
        """Exact full states of the base model at beta = 0 (visible logits ``base``, hidden units uniform)."""
        p = self.params()
        a = self._full_base(p, base)
        return bernoulli(torch.sigmoid(a).expand(num_samples, -1).contiguous())

    @torch.no_grad()
    def random_state(self, num_samples: int) -> Tensor:
        """Factorial initial full states, each unit drawn from the logistic of its bias."""
        return bernoulli(torch.sigmoid(self.params().bias.detach()).expand(num_samples, -1).contiguous())

    @torch.no_grad()
    def complete(self, v: Tensor, steps: int = 1, name: str = "v") -> Tensor:
        """Full states from visible ones: hidden units from their biases, then ``steps`` clamped sweeps.

        :param name: the argument, as error messages name it.
        """
        v = self.check_data(v, name)
        x = self.random_state(v.shape[0]) if v.dim() == 2 else self.random_state(1).expand(*v.shape[:-1], -1)
        x = torch.cat([v.to(x), x[..., self.n_visible :]], -1)
        return self.gibbs(x, steps, clamp_visible=True) if self.n_hidden else x

    @torch.no_grad()
    def sample(self, num_samples: int, steps: int = 1000, init: Tensor | None = None) -> Tensor:
        """Visible samples after ``steps`` Gibbs sweeps from ``init`` (full states; visible states are
        completed by :meth:`complete`; default :meth:`random_state`)."""
        if init is None:
            x = self.random_state(num_samples)
        else:
            init = self.to_tensor(init, "init")
            x = (
                self.complete(init, name="init")
                if init.shape[-1] == self.n_visible
                else self.check_states(init, "init")
            )
        return self.gibbs(x, steps)[..., : self.n_visible]

    def persistent_chains(self, num_chains: int = 100, steps: int = 1, init: Tensor | None = None):
        """This model's persistent chains, :class:`BoltzmannChains` ``(self, num_chains, steps, init)``."""
        return self.chain_class(self, num_chains, steps, init)

    # ------------------------------------------------------------------ training
    def base_rate(self, data: Tensor) -> Tensor:
        """The visible logits of the data's (Laplace-smoothed) marginals."""
        data = self.to_tensor(data).to(self.weight)
        return torch.logit((data.sum(0) + 1.0) / (data.shape[0] + 2.0))

    @torch.no_grad()
    def init_from_data(self, data: Tensor) -> BoltzmannMachine:
        """Set the visible biases to the data's base rates (:meth:`base_rate`); returns the model.

        :raises ValueError: for data of the wrong width, not binary, or with NaN or inf.
        """
        data = self.check_data(data, "init_from_data(data)")
        self.bias[: self.n_visible] = self.base_rate(data.reshape(-1, self.n_visible))
        return self

    @full_precision
    def update_offsets(self, hidden_means, *, defer: bool = False) -> None:
        """Nothing: the Boltzmann machine is not centered."""

    def forward(self, chains: BoltzmannChains, **kwargs) -> BoltzmannDistribution:
        # Reading the parameters inside the PyroModule records them as param sites for SVI.
        return BoltzmannDistribution(self, chains, params=self.params(), **kwargs)

    def distribution(self, chains: BoltzmannChains, **kwargs) -> BoltzmannDistribution:
        """A Pyro distribution over v whose ``log_prob`` carries the SML gradient (:class:`BoltzmannDistribution`)."""
        return self(chains, **kwargs)

    # ------------------------------------------------------------------ partition functions
    def base_log_partition(self, base: Tensor | None = None) -> Tensor:
        r""":math:`\log Z_0 = \sum_i \operatorname{softplus}(a_i) + n_h \log 2` of the base model."""
        a = self._full_base(self.params(), base)[: self.n_visible]
        return F.softplus(a).sum() + self.n_hidden * math.log(2.0)

    def annealing_path(self, base: Tensor | None = None) -> _BMAnnealingPath:
        """The AIS path over full states from the base model ``base`` to this model (module notes)."""
        return _BMAnnealingPath(self, base)

    def enumeration(self) -> Enumeration:
        """Exact log Z enumerates the joint states of all units. Differentiable in the parameters."""
        p = self.params()
        return Enumeration(self.num_units, "joint states of all units", lambda x: _neg_energy(p, x), p.coupling)


class _BMAnnealingPath:
    r"""The AIS path of a Boltzmann machine over full states (``state = [x]``): :math:`-\beta E(x) +
    (1 - \beta) a^\top v`, with one tempered systematic-scan sweep as the transition. The cache is
    :math:`(-E(x), a^\top v)`."""

    def __init__(self, model: BoltzmannMachine, base: Tensor | None):
        self.model, self.base = model, base
        self.params = model.params()
        self.visible_base = model._full_base(self.params, base)[: model.n_visible]

    def initial_state(self, num_chains: int) -> list[Tensor]:
        return [self.model.sample_base(num_chains, self.base)]

    def state_from_samples(self, samples) -> list[Tensor]:
        return [self.model.check_states(samples, "samples").to(self.params.coupling)]

    def prepare(self, state: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0]
        return _neg_energy(self.params, x), x[..., : self.model.n_visible] @ self.visible_base

    def log_prob(self, state: list[Tensor], beta: float, cache: tuple[Tensor, Tensor]) -> Tensor:
        neg_e, base_term = cache
        return beta * neg_e + (1 - beta) * base_term

    def transition(self, state: list[Tensor], beta: float, cache) -> list[Tensor]:
        return [self.model.gibbs(state[0], 1, float(beta), self.base, params=self.params)]


class BoltzmannChains(PersistentChains):
    """Persistent systematic-scan Gibbs chains over the full states of a :class:`BoltzmannMachine` (its
    ``chain_class``: ``PersistentChains(bm, ...)`` builds them). ``state`` holds ``(num_chains, n)`` full states.

    :param model: the Boltzmann machine.
    :param num_chains: the number of chains.
    :param steps: sweeps per :meth:`advance`.
    :param init: initial visible states ``(num_chains, n_visible)`` (hidden units completed by one clamped
        sweep) or full states ``(num_chains, n)``; default :meth:`BoltzmannMachine.random_state`.
    """

    def __init__(self, model: EnergyModel, num_chains: int = 100, steps: int = 1, init: Tensor | None = None):
        NegativePhase.__init__(self, model, steps)
        if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
            raise ValueError(f"num_chains must be a positive int, got {num_chains!r}")
        self.num_chains = num_chains
        if init is None:
            state = model.random_state(num_chains)
        else:
            init = model.to_tensor(init, "init")
            if init.shape not in ((num_chains, model.n_visible), (num_chains, model.num_units)):
                raise ValueError(
                    f"init must have shape {(num_chains, model.n_visible)} or {(num_chains, model.num_units)}, "
                    f"got {tuple(init.shape)}"
                )
            if init.shape[-1] == model.n_visible:
                state = model.complete(init, name="init")
            else:
                state = model.check_states(init, "init").detach().to(model.weight).clone()
        self.register_buffer("state", state)

    @torch.no_grad()
    def advance(self, data: Tensor | None = None, *, params=None) -> Tensor:
        """Advance the chains ``steps`` sweeps; returns their full states ``(num_chains, n)``."""
        p = self.model.params() if params is None else params
        x = self.model.gibbs(self._sync(self.state, p.coupling), self.steps, params=p)
        self._set_buffer("state", x)
        return x

    def after_negative_phase(self, hidden_input: Tensor | None = None, *, probs: Tensor | None = None) -> None:
        pass

    def initial_samples(self, num_samples: int) -> Tensor:
        idx = torch.arange(num_samples, device=self.state.device) % self.num_chains
        return self.state[idx].clone()


BoltzmannMachine.chain_class = BoltzmannChains

POSITIVE_PHASES = ("auto", "exact", "gibbs")


class BoltzmannDistribution(EnergyBasedDistribution):
    r"""The distribution of a Boltzmann machine's visible units inside a Pyro program, carrying the SML gradient.

    ``log_prob(v)`` is computed through the surrogate

    .. math::

        \ell(v) - \log\hat Z - (s - \operatorname{stop\_grad}(s)), \qquad s = \frac1C \sum_c -E(\tilde x_c),

    with :math:`\tilde x_c` the persistent chains' full states (advanced each call) and the positive phase
    :math:`\ell(v)` chosen by ``positive_phase``:

    * ``"exact"``: :math:`\ell(v) = \log\sum_h e^{-E(v,h)}` by enumeration over the hidden units (all of them
      when there are none); its value is the exact :math:`\log p^*(v)` and its gradient the exact
      :math:`\mathbb E_{h|v}[\nabla(-E(v,h))]`.
    * ``"gibbs"``: :math:`\ell(v) = -E(v, \tilde h)` with :math:`\tilde h` from ``positive_steps`` sweeps of
      Gibbs chains with :math:`v` clamped (started from the hidden biases), a one-sample estimate of the
      positive phase. Its value is only a stand-in for :math:`\log p^*(v)`.
    * ``"auto"`` (default): ``"exact"`` when ``n_hidden <= model.max_enumerated_hidden``, else ``"gibbs"``.

    Under a subsampled plate Pyro scales it by :math:`N/B`, so ``SVI`` with ``Trace_ELBO`` performs SML. Checks as
    for :class:`~dgm_ppl.energy.EnergyBasedDistribution` (value checked with Pyro's validation on, non-finite
    negative phase raises :class:`~dgm_ppl.infer.DivergenceError`).
    """

    def __init__(
        self,
        model: BoltzmannMachine,
        chains: BoltzmannChains,
        *,
        params=None,
        sample_steps: int = 100,
        positive_phase: str = "auto",
        positive_steps: int = 10,
        batch_shape: Size | tuple = (),
        validate_args: bool | None = None,
    ):
        if not isinstance(chains, BoltzmannChains):
            raise TypeError(
                "a Boltzmann machine needs PersistentChains(bm, ...) for its negative phase, "
                f"got {type(chains).__name__}"
            )
        if positive_phase not in POSITIVE_PHASES:
            raise ValueError(f"positive_phase must be one of {POSITIVE_PHASES}, got {positive_phase!r}")
        if positive_phase == "auto":
            positive_phase = "exact" if model.n_hidden <= model.max_enumerated_hidden else "gibbs"
        if isinstance(positive_steps, bool) or not isinstance(positive_steps, int) or positive_steps < 1:
            raise ValueError(f"positive_steps must be a positive int, got {positive_steps!r}")
        self.positive_phase, self.positive_steps = positive_phase, positive_steps
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
        options.update(positive_phase=self.positive_phase, positive_steps=self.positive_steps)
        return options

    def _positive(self, v: Tensor) -> Tensor:
        model, p = self.model, self.params
        if self.positive_phase == "exact" or model.n_hidden == 0:
            return model.unnormalized_log_prob(v, params=p)
        flat = v.reshape(-1, model.n_visible).to(p.coupling)
        with torch.no_grad():
            h = bernoulli(torch.sigmoid(p.bias[model.n_visible :].detach()).expand(flat.shape[0], -1))
            x = model.gibbs(torch.cat([flat, h], -1), self.positive_steps, params=p, clamp_visible=True)
        return _neg_energy(p, x).reshape(v.shape[:-1])

    def log_prob(self, value: Tensor) -> Tensor:
        """The positive phase minus ``log_z``, with the SML gradient (see the class notes); without gradient
        tracking the value only, and the chains are left alone.

        :param value: visible states, shape ``batch_shape + (n_visible,)`` (a NumPy array is converted).
        :returns: shape ``value.shape[:-1]``.
        :raises ValueError: for bad values, with validation on.
        :raises DivergenceError: for a non-finite negative phase, with validation on.
        """
        model, p = self.model, self.params
        value = self._checked(value)
        validate = self._validate_args
        log_z = model.log_z or 0.0
        out = self._positive(value)
        if torch.is_grad_enabled():
            s = _neg_energy(p, self.chains.advance(value, params=p)).mean()
            if validate:
                check_negative_phase(s, "Boltzmann machine")
            out = out - (s - s.detach())
        return out - log_z if log_z else out

    @torch.no_grad()
    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        """Draws by ``sample_steps`` Gibbs sweeps started from the chains' current states."""
        shape = self._extended_shape(sample_shape)
        x = self.model.gibbs(self.chains.initial_samples(shape[:-1].numel()), steps=self.sample_steps)
        return x[..., : self.model.n_visible].reshape(shape)
