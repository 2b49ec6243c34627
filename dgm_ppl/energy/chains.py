r"""Negative-phase samplers for stochastic maximum likelihood.

The gradient of the average log-likelihood of an energy-based model is

.. math::

    \nabla \frac1N\sum_n \log p(v_n) = \frac1N\sum_n \nabla(-F(v_n)) - \mathbb E_{p(v)}[\nabla(-F(v))].

The samplers here supply the states :math:`\tilde v` that estimate the second expectation:

* :class:`PersistentChains` (PCD-k, Tieleman 2008): chains that persist across updates and
  advance ``steps`` block-Gibbs sweeps each time they are used.
* :class:`FastPersistentChains` (FPCD, Tieleman & Hinton 2009): persistent chains that sample under the
  parameters plus fast weights, which learn from the same gradient at a high rate and decay quickly, so that
  the chains are pushed out of the modes they have just visited.
* :class:`ContrastiveDivergence` (CD-k, Hinton 2002): chains restarted at the data batch.
* :class:`ParallelTempering` (Desjardins et al. 2010): persistent replicas at inverse
  temperatures :math:`0 \le \beta_1 < \dots < \beta_T = 1` with replica-exchange swaps.

All are ``nn.Module``s whose state is in buffers, so ``state_dict()`` checkpoints the chains.
Advancing them never waits for the device: the flags that steer a sweep are mirrored on the host
(and re-read from the buffers when a state dict is loaded).

The samplers use the model only through the public members of
:class:`~dgm_ppl.energy.protocol.FreeEnergyModel` (:class:`NegativePhase`, :class:`PersistentChains`,
:class:`ContrastiveDivergence`, :class:`ParallelTempering` run on visible states;
:class:`FastPersistentChains` also needs a :class:`~dgm_ppl.energy.protocol.FastWeightModel`). A model whose
chains need more state names its own chain class in its ``chain_class`` attribute (the
:class:`~dgm_ppl.energy.DBM` names :class:`~dgm_ppl.energy.DBMPersistentChains`);
``PersistentChains(model, ...)`` builds that class, as does ``model.persistent_chains(...)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._ops import bernoulli
from .protocol import EnergyModel, FastWeightModel, FreeEnergyModel

__all__ = ["NegativePhase", "PersistentChains", "FastPersistentChains", "ContrastiveDivergence", "ParallelTempering"]


class NegativePhase(nn.Module):
    """Base class: holds the model (not as a submodule, so it is not saved twice)."""

    def __init__(self, model: EnergyModel, steps: int = 1):
        super().__init__()
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        self.__dict__["model"] = model
        self.steps = steps

    def advance(self, data: Tensor | None = None, *, params=None) -> Tensor:
        """Advance the chains and return the negative samples, shape ``(num_chains, n_visible)``.

        :param data: the data batch (used by CD-k to start its chains).
        :param params: the model's parameters in standard form (``model.params()``), when the
            caller has them already.
        """
        raise NotImplementedError

    def after_negative_phase(self, hidden_input: Tensor | None = None, *, probs: Tensor | None = None) -> None:
        """Receives the hidden pre-activations, or the hidden probabilities ``probs``, of the returned
        negatives (computed for the gradient)."""

    def after_phases(self, rows: Tensor, probs: Tensor, num_data: int, *, params=None) -> None:
        """Receives both phases of an SML update: ``rows``, the data batch's ``num_data`` rows followed by the
        returned negatives, and the hidden probabilities ``probs`` of all rows (computed for the gradient). By
        default it passes the negatives' probabilities to :meth:`after_negative_phase`; samplers that learn from
        the gradient (:class:`FastPersistentChains`) override it.

        :param params: the model's parameters in standard form, as the gradient used them.
        """
        self.after_negative_phase(probs=probs[num_data:])

    def initial_samples(self, num_samples: int) -> Tensor:
        """Starting states for fresh sampling: the chains' states if there are any."""
        return self.model.random_state(num_samples)

    @staticmethod
    def _sync(state: Tensor, like: Tensor) -> Tensor:
        """``state`` on the device and dtype of ``like`` (the model's weight), copied only when they differ."""
        return state if state.device == like.device and state.dtype == like.dtype else state.to(like)

    def _set_buffer(self, name: str, value: Tensor) -> None:
        """Replace a registered buffer, without ``nn.Module.__setattr__``'s bookkeeping (hot path). A floating-point
        buffer takes the model's dtype: under ``torch.autocast`` the sweeps' products come back in the low
        precision, and a persistent state must not drift into it (a checkpoint, AIS or ``sample`` would inherit it)."""
        self._buffers[name] = self._sync(value, self.model.weight) if value.is_floating_point() else value


class PersistentChains(NegativePhase):
    """PCD-k: ``num_chains`` persistent block-Gibbs chains advanced ``steps`` sweeps per use.

    The state is the visible sample ``state`` and a hidden sample ``hidden``. As in scikit-learn's
    ``BernoulliRBM``, the hidden sample of a sweep is drawn from the conditional computed for the
    gradient (:meth:`after_negative_phase`), i.e. under the parameters before the optimizer step, so
    that PCD-1 costs one matrix product less per update. ``init`` gives the initial visible states
    (e.g. a random data batch); by default they are drawn from the factorial model of the visible
    biases.

    ``PersistentChains(model, ...)`` builds the model's own chain class, ``model.chain_class``: this
    class for an RBM, :class:`~dgm_ppl.energy.DBMPersistentChains` (whose state holds every layer)
    for a :class:`~dgm_ppl.energy.DBM`. ``model.persistent_chains(num_chains, steps, init)`` is the
    same.
    """

    def __new__(cls, model: EnergyModel | None = None, *args, **kwargs):
        # The one dispatch: the class a model declares for its chains (EnergyModel.chain_class). No model: a copy
        # or an unpickling (copy.deepcopy, torch.save of the object), which rebuilds an instance of its own class.
        if cls is PersistentChains and model is not None:
            cls = getattr(model, "chain_class", PersistentChains)
        return super().__new__(cls)

    def __init__(self, model: FreeEnergyModel, num_chains: int = 100, steps: int = 1, init: Tensor | None = None):
        super().__init__(model, steps)
        if not isinstance(num_chains, int) or num_chains < 1:
            raise ValueError(f"num_chains must be a positive int, got {num_chains!r}")
        if init is None:
            state = model.random_state(num_chains).detach()
        else:
            init = model.to_tensor(init, "init")
            if init.shape != (num_chains, model.n_visible):
                raise ValueError(f"init must have shape {(num_chains, model.n_visible)}, got {tuple(init.shape)}")
            model.check_data(init, "init")
            state = init.detach().to(model.weight).clone()
        self.num_chains = num_chains
        self.register_buffer("state", state)
        with torch.no_grad():
            self.register_buffer("hidden", model.sample_hidden(state))
        self.register_buffer("hidden_is_current", torch.tensor(True))
        self.__dict__["_hidden_current"] = True  # host mirror of the buffer: no device sync per sweep

    def _set_hidden_current(self, value: bool) -> None:
        self.__dict__["_hidden_current"] = value
        self.hidden_is_current.fill_(value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if "hidden_is_current" in self._buffers:
            self.__dict__["_hidden_current"] = bool(self.hidden_is_current)

    @torch.no_grad()
    def advance(self, data: Tensor | None = None, *, params=None) -> Tensor:
        model = self.model
        p = model.params() if params is None else params
        v, sweeps = self._sync(self.state, p.weight), self.steps
        if self._hidden_current:
            v = model.sample_visible(self._sync(self.hidden, p.weight), params=p)
            sweeps -= 1
        if sweeps:
            v = model.gibbs(v, sweeps, params=p)
        self._set_buffer("state", v)
        self._set_hidden_current(False)
        return v

    @torch.no_grad()
    def after_negative_phase(self, hidden_input: Tensor | None = None, *, probs: Tensor | None = None) -> None:
        self._set_buffer("hidden", bernoulli(torch.sigmoid(hidden_input) if probs is None else probs))
        self._set_hidden_current(True)

    def initial_samples(self, num_samples: int) -> Tensor:
        idx = torch.arange(num_samples, device=self.state.device) % self.num_chains
        return self.state[idx].clone()


class FastPersistentChains(PersistentChains):
    r"""FPCD-k (Tieleman & Hinton 2009): persistent chains that sample under the parameters plus *fast weights*.

    The fast weights :math:`\phi` (a shift of the standard-form :math:`(W, b, c)`) follow the same SML
    gradient as the parameters :math:`\theta`, at a high rate :math:`\eta_f` and with a strong decay
    :math:`\delta`,

    .. math::

        \phi \leftarrow \delta\,\phi + \eta_f \Big(\frac1N\sum_n \nabla(-F(v_n)) -
        \frac1C\sum_c \nabla(-F(\tilde v_c))\Big),

    and the chains sample from :math:`p_{\theta + \phi}`. Where the chains linger, the gradient lowers
    :math:`p_{\theta+\phi}`, so the fast weights push them on to other modes; because :math:`\phi` decays to
    zero within about :math:`1/(1-\delta)` updates, the chains stay close to :math:`p_\theta`. The gradient of
    :math:`\theta` is unchanged: the chains' states :math:`\tilde v_c` enter it under :math:`\theta`.

    :param model: a :class:`~dgm_ppl.energy.protocol.FastWeightModel` (the RBMs).
    :param fast_lr: :math:`\eta_f`, a plain SGD rate on the per-datum gradient. It stays constant while the
        parameters' rate decays.
    :param fast_decay: :math:`\delta`; the paper's 19/20 by default.

    Each update costs two matrix products more than PCD: the fast gradient's outer product, and the chains'
    hidden sample under :math:`\theta + \phi` (PCD reuses the gradient's). The fast weights are buffers, so
    ``state_dict()`` checkpoints them with the chains.
    """

    def __init__(
        self,
        model: FastWeightModel,
        num_chains: int = 100,
        steps: int = 1,
        init: Tensor | None = None,
        *,
        fast_lr: float = 0.01,
        fast_decay: float = 0.95,
    ):
        if not isinstance(model, FastWeightModel):
            raise TypeError(
                f"FastPersistentChains shifts the standard-form parameters of an RBM by fast weights; a "
                f"{type(model).__name__} is not a FastWeightModel: use its persistent chains"
            )
        if not fast_lr > 0 or not 0 <= fast_decay < 1:
            raise ValueError(f"need fast_lr > 0 and 0 <= fast_decay < 1, got {fast_lr!r} and {fast_decay!r}")
        super().__init__(model, num_chains, steps, init)
        self.fast_lr, self.fast_decay = float(fast_lr), float(fast_decay)
        p = model.params()
        for name, like in zip(self.fast_names, (p.weight, p.visible_bias, p.hidden_bias)):
            self.register_buffer(name, torch.zeros_like(like.detach()))

    fast_names = ("fast_weight", "fast_visible_bias", "fast_hidden_bias")

    @property
    def fast_weights(self) -> tuple[Tensor, ...]:
        r"""The fast weights :math:`\phi`, shaped as the model's ``sml_gradient``."""
        return tuple(self._buffers[name] for name in self.fast_names)

    def _fast_params(self, p):
        return self.model.shifted_params(p, [self._sync(f, p.weight) for f in self.fast_weights])

    @torch.no_grad()
    def advance(self, data: Tensor | None = None, *, params=None) -> Tensor:
        return super().advance(data, params=self._fast_params(self.model.params() if params is None else params))

    @torch.no_grad()
    def after_phases(self, rows: Tensor, probs: Tensor, num_data: int, *, params=None) -> None:
        model = self.model
        p = model.params() if params is None else params
        grads = model.sml_gradient(rows, probs, num_data, params=p)
        for name, g in zip(self.fast_names, grads):
            fast = self._sync(self._buffers[name], g)
            self._set_buffer(name, fast.mul_(self.fast_decay).add_(g, alpha=self.fast_lr))
        x = model.hidden_preactivation(rows[num_data:], params=self._fast_params(p))
        self.after_negative_phase(x)


class ContrastiveDivergence(NegativePhase):
    """CD-k: chains restarted at the data batch and run ``steps`` block-Gibbs sweeps."""

    @torch.no_grad()
    def advance(self, data: Tensor | None = None, *, params=None) -> Tensor:
        if data is None:
            raise ValueError("ContrastiveDivergence needs the data batch to start its chains")
        model = self.model
        p = model.params() if params is None else params
        v = model.to_tensor(data, "data")
        v = v.reshape(-1, v.shape[-1]).to(model.weight)
        return model.gibbs(v, self.steps, params=p)


class ParallelTempering(NegativePhase):
    r"""Persistent chains at several inverse temperatures with replica exchange.

    Replica :math:`t` targets :math:`p_{\beta_t}(v) \propto p^*_{\beta_t}(v)` on the RBM's annealing
    path; with ``base=None`` and Bernoulli units this is the classic tempering
    :math:`p_\beta(v, h) \propto e^{-\beta E(v,h)}`.
    After each sweep, neighbouring pairs (even pairs, then odd pairs on the next sweep) swap
    states with probability :math:`\min\{1, r\}`,

    .. math::

        r = \frac{p^*_{\beta_t}(v_{t+1})\,p^*_{\beta_{t+1}}(v_t)}{p^*_{\beta_t}(v_t)\,p^*_{\beta_{t+1}}(v_{t+1})}.

    The negative samples are the replicas at :math:`\beta = 1`.
    """

    def __init__(
        self,
        model: FreeEnergyModel,
        num_chains: int = 100,
        steps: int = 1,
        betas: Tensor | int = 10,
        base: Tensor | None = None,
    ):
        if not isinstance(model, FreeEnergyModel):
            raise TypeError(
                f"ParallelTempering swaps visible states by their tempered free energies, which a "
                f"{type(model).__name__} does not have (it is not a FreeEnergyModel); use its persistent chains"
            )
        super().__init__(model, steps)
        if isinstance(betas, int):
            betas = torch.linspace(0.0, 1.0, betas)
        betas = torch.as_tensor(betas, dtype=model.weight.dtype)
        if betas.dim() != 1 or len(betas) < 2 or betas[-1] != 1 or (betas.diff() <= 0).any() or betas[0] < 0:
            raise ValueError("betas must increase from >= 0 to exactly 1, with at least two values")
        self.num_chains = num_chains
        self.register_buffer("betas", betas.to(model.weight.device))
        base = None if base is None else model.to_tensor(base, "base").detach().clone()
        self.register_buffer("base", base)
        state = model.random_state(len(betas) * num_chains).detach().reshape(len(betas), num_chains, -1)
        self.register_buffer("state", state)
        self.register_buffer("swaps_accepted", torch.zeros(len(betas) - 1))
        self.register_buffer("swaps_proposed", torch.zeros(len(betas) - 1))
        self.register_buffer("parity", torch.zeros((), dtype=torch.long))
        self.__dict__["_parity"] = 0  # host mirror of the buffer: no device sync per sweep

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.__dict__["_parity"] = int(self.parity)

    @property
    def swap_rate(self) -> Tensor:
        """Acceptance rate of swaps between each pair of neighbouring temperatures."""
        return self.swaps_accepted / self.swaps_proposed.clamp(min=1)

    @torch.no_grad()
    def advance(self, data: Tensor | None = None, *, params=None) -> Tensor:
        model = self.model
        p = model.params() if params is None else params
        betas = self.betas.to(p.weight)[:, None, None]
        v = self._sync(self.state, p.weight)
        for _ in range(self.steps):
            v = model.gibbs(v, 1, betas, self.base, params=p)
            v = self._swap(p, v)
        self._set_buffer("state", v)
        return v[-1]

    def _swap(self, p, v: Tensor) -> Tensor:
        betas = self.betas.to(p.weight)
        lo = torch.arange(self._parity, len(betas) - 1, 2, device=v.device)
        self.__dict__["_parity"] = 1 - self._parity
        self.parity.fill_(self._parity)
        if len(lo) == 0:
            return v
        hi = lo + 1
        b_lo, b_hi = betas[lo][:, None, None], betas[hi][:, None, None]
        lp = self.model.tempered_log_prob
        log_ratio = (
            lp(v[hi], b_lo, self.base, params=p)
            + lp(v[lo], b_hi, self.base, params=p)
            - lp(v[lo], b_lo, self.base, params=p)
            - lp(v[hi], b_hi, self.base, params=p)
        )
        accept = torch.rand_like(log_ratio).log() < log_ratio  # (pairs, chains)
        new = v.clone()
        a = accept[..., None]
        new[lo] = torch.where(a, v[hi], v[lo])
        new[hi] = torch.where(a, v[lo], v[hi])
        self.swaps_accepted[lo] += accept.to(self.swaps_accepted).mean(-1)
        self.swaps_proposed[lo] += 1
        return new

    def initial_samples(self, num_samples: int) -> Tensor:
        idx = torch.arange(num_samples, device=self.state.device) % self.num_chains
        return self.state[-1, idx].clone()
