"""The persistent chains of a :class:`~dgm_ppl.energy.DBM`: block Gibbs over all of its layers.

``PersistentChains(dbm, ...)`` and ``dbm.persistent_chains(...)`` build them (the DBM names this
class in its ``chain_class``). They use the model only through the public members of
:class:`~dgm_ppl.energy.protocol.EnergyModel` and the DBM's ``layer_sizes`` and ``sample_layers``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chains import NegativePhase, PersistentChains
from .protocol import EnergyModel

__all__ = ["DBMPersistentChains"]


class DBMPersistentChains(PersistentChains):
    """Persistent block-Gibbs chains over all layers of a DBM (odd layers given even, then even
    given odd). Created by ``PersistentChains(dbm, num_chains, steps)``. ``state`` holds the
    concatenated layers ``[v, h1, ..., hL]`` of each chain; ``init`` gives initial visible states.

    :param model: the :class:`~dgm_ppl.energy.DBM`.
    :param num_chains: the number of chains.
    :param steps: block-Gibbs sweeps per :meth:`advance`.
    :param init: initial visible states, shape ``(num_chains, n_visible)``; the odd layers are then
        drawn given them. Default: :meth:`DBM.random_state`.
    """

    def __init__(self, model: EnergyModel, num_chains: int = 100, steps: int = 1, init: Tensor | None = None):
        NegativePhase.__init__(self, model, steps)
        if not isinstance(num_chains, int) or num_chains < 1:
            raise ValueError(f"num_chains must be a positive int, got {num_chains!r}")
        self.num_chains = num_chains
        states = model.random_state(num_chains)
        if init is not None:
            init = model.to_tensor(init, "init")
            if init.shape != (num_chains, model.n_visible):
                raise ValueError(f"init must have shape {(num_chains, model.n_visible)}, got {tuple(init.shape)}")
            model.check_data(init, "init")
            states[0] = init.detach().to(model.weight).clone()
            with torch.no_grad():
                states = model.sample_layers(states, parity=1)
        self.register_buffer("state", torch.cat(states, -1))

    def states(self) -> list[Tensor]:
        """The chains' layers ``[v, h1, ..., hL]``."""
        return list(self.state.split(self.model.layer_sizes, -1))

    @torch.no_grad()
    def advance(self, data: Tensor | None = None, *, params=None) -> list[Tensor]:
        """Advance the chains ``steps`` sweeps and return their layers ``[v, h1, ..., hL]``.

        :param data: unused (the chains persist).
        :param params: the model's parameters in standard form (``model.params()``), when the caller has them.
        """
        model = self.model
        p = model.params() if params is None else params
        states = list(self._sync(self.state, model.weight).split(model.layer_sizes, -1))
        states = model.gibbs(states, self.steps, params=p)
        self._set_buffer("state", torch.cat(states, -1))
        return states

    def after_negative_phase(self, hidden_input: Tensor | None = None, *, probs: Tensor | None = None) -> None:
        pass

    def initial_samples(self, num_samples: int) -> list[Tensor]:
        idx = torch.arange(num_samples, device=self.state.device) % self.num_chains
        return list(self.state[idx].clone().split(self.model.layer_sizes, -1))
