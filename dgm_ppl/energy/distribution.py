r"""The Pyro distribution of an energy-based model, carrying the SML gradient.

``log_prob(v)`` returns the value :math:`-F(v) - \log\hat Z` (:math:`\log \hat Z` is the model's
latest estimate ``model.log_z``, or 0 if there is none), through the surrogate

.. math::

    \log \tilde p(v) = -F(v) - \log \hat Z - (s - \operatorname{stop\_grad}(s)),
    \qquad s = \frac1C \sum_{c=1}^C -F(\tilde v_c),

where :math:`\tilde v_c` are the negative-phase states, advanced without gradient each time
``log_prob`` is called. Its value is that of :math:`-F(v) - \log\hat Z`; its gradient is the
stochastic-maximum-likelihood estimate :math:`\nabla(-F(v)) - \frac1C\sum_c \nabla(-F(\tilde v_c))`.
Inside ``pyro.plate(..., subsample=...)`` Pyro's scaling by :math:`N/B` then gives :math:`N` times
the per-datum SML gradient, so an unmodified ``SVI(..., Trace_ELBO())`` performs SML.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch import Size, Tensor

from ..infer.errors import DivergenceError
from .chains import NegativePhase

__all__ = ["EnergyBasedDistribution"]


class EnergyBasedDistribution(TorchDistribution):
    """Distribution of the visible units of an RBM, as used by ``pyro.sample``.

    :param model: the energy-based model (e.g. :class:`~dgm_ppl.energy.BernoulliRBM`).
    :param chains: its negative phase (:class:`~dgm_ppl.energy.PersistentChains`, ...).
    :param sample_steps: Gibbs sweeps for :meth:`sample`, started from the chains' states.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        model,
        chains: NegativePhase,
        *,
        params=None,
        sample_steps: int = 100,
        batch_shape: Size | tuple = (),
        validate_args: bool | None = None,
    ):
        if not isinstance(chains, NegativePhase):
            raise TypeError(f"chains must be a NegativePhase (e.g. PersistentChains), got {type(chains).__name__}")
        if chains.model is not model:
            raise ValueError("these chains belong to a different model")
        self.model, self.chains, self.sample_steps = model, chains, sample_steps
        self.params = model.params() if params is None else params
        super().__init__(Size(batch_shape), Size((model.n_visible,)), validate_args=validate_args)

    @property
    def support(self):
        return self.model.support

    def _options(self) -> dict:
        """Constructor keywords that :meth:`expand` carries over (subclasses add theirs)."""
        return {"params": self.params, "sample_steps": self.sample_steps}

    def expand(self, batch_shape, _instance=None) -> EnergyBasedDistribution:
        return type(self)(
            self.model,
            self.chains,
            **self._options(),
            batch_shape=batch_shape,
            validate_args=self.__dict__.get("_validate_args"),
        )

    def _validate_sample(self, value: Tensor) -> None:
        self.model._check_visible(value)
        shape = value.shape[:-1]
        n = min(len(shape), len(self.batch_shape))
        for actual, expected in zip(shape[len(shape) - n :], self.batch_shape[len(self.batch_shape) - n :]):
            if actual not in (1, expected) and expected != 1:
                raise ValueError(
                    f"value shape {tuple(value.shape)} does not match batch shape {tuple(self.batch_shape)}"
                    f" and event shape {tuple(self.event_shape)}"
                )

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        model, p = self.model, self.params
        log_z = model.log_z or 0.0
        if not torch.is_grad_enabled():
            return model._neg_free_energy(p, value.to(p.weight)) - log_z
        negatives = self.chains.advance(value)
        # positive and negative phase in one matrix product
        flat = value.reshape(-1, value.shape[-1]).to(negatives)
        neg_free, x = model._neg_free_energy_and_input(p, torch.cat([flat, negatives]))
        n = flat.shape[0]
        s = neg_free[n:].mean()
        if not torch.isfinite(s):
            raise DivergenceError(
                "the negative phase of the energy-based model is not finite: the parameters have diverged "
                "(lower the learning rate, or add weight decay)"
            )
        self.chains.after_negative_phase(x[n:].detach())
        if getattr(model, "centered", False):
            # applied by the model's next forward(), before the parameters enter a new graph
            model.__dict__["_pending_hidden_mean"] = torch.sigmoid(x[:n].detach()).mean(0)
        return (neg_free[:n] - (s - s.detach())).reshape(value.shape[:-1]) - log_z

    @torch.no_grad()
    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        """Draws by block Gibbs: ``sample_steps`` sweeps started from the chains' current states."""
        shape = self._extended_shape(sample_shape)
        n = shape[:-1].numel()
        v = self.model.gibbs_step(self.chains.initial_samples(n), steps=self.sample_steps)
        return v.reshape(shape)
