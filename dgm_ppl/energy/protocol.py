r"""The contract between the energy models and the code that trains and evaluates them.

:mod:`~dgm_ppl.energy.chains`, :mod:`~dgm_ppl.energy.distribution` and
:mod:`~dgm_ppl.energy.partition` use a model only through the public members listed here: they
never test for a concrete model class and never call a model's private members. A model family
(:class:`~dgm_ppl.energy.RBM` and its subclasses, :class:`~dgm_ppl.energy.DBM`) says through these
members what differs between families, for example which states its annealed importance sampling
runs over (:meth:`~dgm_ppl.energy.protocol.EnergyModel.annealing_path`) or which units exact
enumeration visits (:meth:`~dgm_ppl.energy.protocol.EnergyModel.enumeration`).

Two protocols, both ``runtime_checkable``:

* :class:`~dgm_ppl.energy.protocol.EnergyModel`: every energy-based model here (RBMs and DBMs).
  Enough for the partition functions, for the model's own persistent chains and for the common
  verbs (``gibbs``, ``sample``, ``init_from_data``, ``distribution``, ...).
* :class:`~dgm_ppl.energy.protocol.FreeEnergyModel`: an :class:`~dgm_ppl.energy.protocol.EnergyModel`
  whose hidden units sum out in closed form, so that :math:`-F(v)` is tractable and a chain may keep
  only visible states between sweeps (the RBMs). :class:`~dgm_ppl.energy.PersistentChains`,
  :class:`~dgm_ppl.energy.ContrastiveDivergence`, :class:`~dgm_ppl.energy.ParallelTempering` and
  :class:`~dgm_ppl.energy.EnergyBasedDistribution` need this one.

Centering. A centered model writes its energy around offsets (the model's buffers, e.g.
``visible_offset`` / ``hidden_offset`` of a :class:`~dgm_ppl.energy.BernoulliRBM`, ``offset_l`` of a
:class:`~dgm_ppl.energy.DBM`). The hidden offsets follow a moving average of the data's hidden means:
the distribution reports these means after each positive phase through
:meth:`~dgm_ppl.energy.protocol.EnergyModel.update_offsets` with ``defer=True``. A deferred update
is kept in the model's ``pending_hidden_means`` (saved with the model's state) and applied at the
start of the model's next ``forward()`` (``model.distribution(...)``) with gradients enabled, i.e.
after the optimizer step and before the parameters enter a new graph: moving an offset shifts the
biases in place, which must not happen while a graph that saved them is still to be differentiated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["EnergyModel", "FreeEnergyModel", "HiddenInputModel", "AnnealingPath", "Enumeration"]


@dataclass(frozen=True)
class Enumeration:
    r"""How to compute :math:`\log Z` by enumeration: which binary units to enumerate, and the log of
    the unnormalized probability of each of their joint states with every other unit summed (or
    integrated) out.

    :param num_units: the number of binary units enumerated (:math:`2^n` joint states).
    :param what: the enumerated states in words, for error messages (e.g. ``"states of the hidden layer"``).
    :param log_marginal: maps rows of 0/1 states, shape ``(k, num_units)``, to the ``k`` values
        :math:`\log \sum_{\text{rest}} e^{-E}` (up to ``const``); differentiable in the parameters.
    :param like: a tensor with the dtype and device of the parameters (for the enumerated states).
    :param const: added to the log-sum-exp of each chunk of ``log_marginal`` (``None``: nothing).
    """

    num_units: int
    what: str
    log_marginal: Callable[[Tensor], Tensor]
    like: Tensor
    const: Tensor | float | None = None


@runtime_checkable
class AnnealingPath(Protocol):
    r"""The geometric path :math:`p^*_\beta` of a model from its base model (:math:`\beta = 0`) to the
    model (:math:`\beta = 1`), over the states on which AIS runs, with the model's parameters and
    the base model fixed when the path was made (:meth:`~dgm_ppl.energy.protocol.EnergyModel.annealing_path`).

    A *state* is a list of tensors of shape ``(num_chains, n_units)``: ``[v]`` for an RBM, the odd
    layers ``[h1, h3, ...]`` for a DBM (whose even layers are summed out analytically). A *cache*
    is whatever :meth:`prepare` computes from a state and :meth:`log_prob` and :meth:`transition`
    share (hidden pre-activations, layer inputs).
    """

    def initial_state(self, num_chains: int) -> list[Tensor]:
        """``num_chains`` exact draws from the base model at :math:`\\beta = 0`."""
        ...

    def state_from_samples(self, samples: Any) -> list[Tensor]:
        """The AIS state of samples of the model (visible states for an RBM, the joint layers
        ``[v, h1, ...]`` for a DBM), checked, to start reverse AIS."""
        ...

    def prepare(self, state: list[Tensor]) -> Any:
        """The cache of ``state``, shared by :meth:`log_prob` and :meth:`transition`."""
        ...

    def log_prob(self, state: list[Tensor], beta: float, cache: Any) -> Tensor:
        r"""The unnormalized :math:`\log p^*_\beta` of each chain's state, shape ``(num_chains,)``."""
        ...

    def transition(self, state: list[Tensor], beta: float, cache: Any) -> list[Tensor]:
        r"""A Markov transition that leaves :math:`p_\beta` invariant (one block-Gibbs sweep)."""
        ...


@runtime_checkable
class EnergyModel(Protocol):
    """An energy-based model as :mod:`~dgm_ppl.energy.partition` and the chains see it.

    Attributes: ``n_visible`` (the width of visible states); ``support`` (the Pyro constraint of
    visible states, the support of :meth:`distribution`); ``log_z`` (the latest estimate of
    :math:`\\log Z`, or ``None``; set by the partition functions and used as the normalizer of
    :meth:`distribution`); ``centered`` (whether the energy is written around offsets);
    ``chain_class`` (the class of this model's persistent chains, which
    ``PersistentChains(model, ...)`` and :meth:`persistent_chains` construct); ``weight`` (a
    parameter whose dtype and device the model's states take).
    """

    n_visible: int
    support: Any
    log_z: float | None
    centered: bool
    chain_class: type
    weight: Tensor

    # ------------------------------------------------------------ parameters and data
    def params(self) -> Any:
        """The parameters in standard (uncentered) form, passed back to the methods below as ``params``
        so that one call's products share them."""
        ...

    def to_tensor(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through unchanged; NumPy arrays and lists are converted to
        the parameters' dtype and device. No check of the values."""
        ...

    def check_data(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor (:meth:`to_tensor`), after checking that it holds valid visible states
        (width; binary or finite values).

        :raises ValueError: for bad values.
        """
        ...

    # ------------------------------------------------------------ energy and sampling
    def energy(self, states: Sequence[Tensor]) -> Tensor:
        """The energy of joint states ``[v, h1, ...]``, shape ``batch``."""
        ...

    def unnormalized_log_prob(self, v: Tensor, *, params: Any = None) -> Tensor:
        r"""The unnormalized :math:`\log p^*(v)` of visible states: exactly :math:`-F(v)` where the hidden
        units sum out in closed form (RBMs), otherwise a lower bound (the mean-field bound of a DBM)."""
        ...

    def random_state(self, num_samples: int) -> Any:
        """Factorial initial chain states (a visible tensor, or the layers ``[v, h1, ...]``)."""
        ...

    def gibbs(self, states: Any, steps: int = 1, beta: Any = 1.0, base: Tensor | None = None, *, params: Any = None):
        """``steps`` block-Gibbs sweeps of chain states at inverse temperature ``beta`` (on the path from
        the base model ``base``), without gradient."""
        ...

    def sample(self, num_samples: int, steps: int = 1000, init: Any = None) -> Tensor:
        """Visible samples after ``steps`` Gibbs sweeps from ``init`` (default: factorial states)."""
        ...

    # ------------------------------------------------------------ training
    def init_from_data(self, data: Any) -> Any:
        """Initialize the visible biases (and offsets) from ``data``; returns the model."""
        ...

    def distribution(self, chains: Any, **kwargs: Any) -> Any:
        """The Pyro distribution of the visible units whose ``log_prob`` carries the SML gradient."""
        ...

    def persistent_chains(self, num_chains: int = 100, steps: int = 1, init: Any = None) -> Any:
        """This model's persistent chains (an instance of ``chain_class``)."""
        ...

    def update_offsets(self, hidden_means: Any, *, defer: bool = False) -> None:
        """Move the hidden offsets of a centered model towards ``hidden_means`` (one mean per hidden
        layer; a tensor for a single hidden layer), shifting the biases so that the distribution is
        unchanged. With ``defer``, keep the move in ``pending_hidden_means`` for the next ``forward()``
        (see the module's notes). Does nothing for an uncentered model."""
        ...

    # ------------------------------------------------------------ partition functions
    def base_rate(self, data: Tensor) -> Tensor:
        """The base model fitted to ``data`` (visible marginals), for AIS and initialization."""
        ...

    def base_log_partition(self, base: Tensor | None = None) -> Tensor:
        r""":math:`\log Z_0` of the base model at :math:`\beta = 0`."""
        ...

    def annealing_path(self, base: Tensor | None = None) -> AnnealingPath:
        """The path that AIS follows from the base model ``base`` to the model."""
        ...

    def enumeration(self) -> Enumeration:
        r"""The plan for exact :math:`\log Z` by enumeration (the smaller set of units that leaves the
        others summable in closed form)."""
        ...


@runtime_checkable
class FreeEnergyModel(EnergyModel, Protocol):
    r"""An :class:`~dgm_ppl.energy.protocol.EnergyModel` with one layer of binary hidden units that sum out
    in closed form, so that :math:`-F(v)` is tractable and a chain can keep visible states only (the RBMs). The chains'
    states are tensors ``(..., n_visible)``."""

    def sample_hidden(self, v: Tensor, beta: Any = 1.0) -> Tensor:
        """Draw :math:`h \\sim p_\\beta(h | v)`."""
        ...

    def sample_visible(self, h: Tensor, beta: Any = 1.0, base: Tensor | None = None, *, params: Any = None) -> Tensor:
        """Draw :math:`v \\sim p_\\beta(v | h)`."""
        ...

    def tempered_log_prob(self, v: Tensor, beta: Any = 1.0, base: Tensor | None = None, *, params: Any = None):
        r"""The unnormalized :math:`\log p^*_\beta(v)` on the path from the base model to the model."""
        ...

    def sml_terms(self, v: Tensor, num_data: int, *, params: Any = None) -> tuple[Tensor, Tensor, Tensor]:
        r"""The SML surrogate of the rows of 2-D ``v`` (``num_data`` data rows, then chain states): the data
        rows' :math:`-F` with the SML gradient, the chains' mean :math:`-F` and the hidden probabilities
        of all rows (both without gradient)."""
        ...


@runtime_checkable
class HiddenInputModel(FreeEnergyModel, Protocol):
    r"""A :class:`~dgm_ppl.energy.protocol.FreeEnergyModel` whose hidden units' total input given the visible ones is
    available (the RBMs): what a :class:`~dgm_ppl.energy.SparsityTarget` needs."""

    n_hidden: int

    def hidden_preactivation(self, v: Tensor, *, params: Any = None) -> Tensor:
        r"""The hidden units' total input :math:`c + s(v)^\top W` (the logits of :math:`p(h|v)`), differentiable."""
        ...


@runtime_checkable
class FastWeightModel(HiddenInputModel, Protocol):
    r"""A :class:`~dgm_ppl.energy.protocol.HiddenInputModel` whose standard-form parameters can be shifted and whose
    SML gradient is available in that form (the RBMs): what :class:`~dgm_ppl.energy.FastPersistentChains` needs."""

    def sml_gradient(self, v: Tensor, probs: Tensor, num_data: int, *, params: Any = None) -> tuple[Tensor, ...]:
        r"""The SML gradient in standard form, :math:`\frac1N\sum_n \nabla(-F(v_n)) - \frac1C\sum_c
        \nabla(-F(\tilde v_c))`, of the rows of 2-D ``v`` (``num_data`` data rows, then chain states) whose hidden
        probabilities are ``probs``; one tensor per parameter that :meth:`shifted_params` shifts."""
        ...

    def shifted_params(self, params: Any, shift: Sequence[Tensor]) -> Any:
        """The standard-form ``params`` plus ``shift`` (tensors shaped as :meth:`sml_gradient`'s), for sampling."""
        ...
