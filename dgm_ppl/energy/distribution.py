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

The positive and negative phases share one matrix product, and their gradient is the closed form
(for the RBMs here, e.g. :math:`\nabla_W(-F(v)) = v\,\sigma(c + v^\top W)^\top`), reusing the
hidden probabilities of the forward pass, which also give the chains' next hidden sample.

Checks. With Pyro's validation on (the default), each ``log_prob`` call checks the value once, in
one fused pass (its width; binary and finite values for Bernoulli units, finite values for Gaussian
ones; its batch shape), and checks that the negative phase is finite (else
:class:`~dgm_ppl.infer.DivergenceError`). Each check is one host sync. With
``pyro.enable_validation(False)`` none of these run: bad data then gives wrong numbers or a
PyTorch error, and a diverged model a NaN loss (which :func:`~dgm_ppl.infer.train` reports as a
:class:`~dgm_ppl.infer.DivergenceError`).

The distribution uses the model only through the public members of
:class:`~dgm_ppl.energy.protocol.FreeEnergyModel`; a centered model receives the data's mean hidden
probabilities through ``model.update_offsets(..., defer=True)`` after each positive phase.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch import Size, Tensor

from ..infer.errors import DivergenceError
from ._ops import full_precision, sml_full_precision
from .chains import NegativePhase
from .protocol import FreeEnergyModel, HiddenInputModel
from .regularization import SparsityTarget

__all__ = ["EnergyBasedDistribution", "check_value"]


def check_negative_phase(s: Tensor, what: str = "energy-based model") -> None:
    """Raise :class:`~dgm_ppl.infer.DivergenceError` when the negative-phase statistic ``s`` is not
    finite (one host sync).

    :param what: the model, as the message names it.
    """
    if not torch.isfinite(s):
        raise DivergenceError(
            f"the negative phase of the {what} is not finite: the parameters have diverged "
            "(lower the learning rate, or add weight decay)"
        )


def check_value(model, value: Tensor, batch_shape: Size, event_shape: Size) -> None:
    """Raise ``ValueError`` for a value that ``model.check_data`` refuses (width, binary or finite values; one fused
    pass) or whose batch dimensions do not broadcast with ``batch_shape``."""
    model.check_data(value, "value")
    shape = value.shape[:-1]
    n = min(len(shape), len(batch_shape))
    for actual, expected in zip(shape[len(shape) - n :], batch_shape[len(batch_shape) - n :]):
        if actual not in (1, expected) and expected != 1:
            raise ValueError(
                f"value shape {tuple(value.shape)} does not match batch shape {tuple(batch_shape)}"
                f" and event shape {tuple(event_shape)}"
            )


class EnergyBasedDistribution(TorchDistribution):
    r"""Distribution of the visible units of an energy-based model, as used by ``pyro.sample``.

    :param model: the energy-based model (e.g. :class:`~dgm_ppl.energy.BernoulliRBM`).
    :param chains: its negative phase (:class:`~dgm_ppl.energy.PersistentChains`, ...).
    :param sample_steps: Gibbs sweeps for :meth:`sample`, started from the chains' states.
    :param sparsity: a :class:`~dgm_ppl.energy.SparsityTarget` over the hidden layer (a
        :class:`~dgm_ppl.energy.protocol.HiddenInputModel`, e.g. the RBMs): each call with gradients enabled folds
        the batch mean of the data's hidden probabilities into its running activation :math:`q` and subtracts its
        surrogate (value 0) once per datum, so the gradient also holds :math:`-\lambda (q - p)` through the hidden
        pre-activations :math:`c + s(v)^\top W`.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        model: FreeEnergyModel,
        chains: NegativePhase,
        *,
        params=None,
        sample_steps: int = 100,
        sparsity: SparsityTarget | None = None,
        batch_shape: Size | tuple = (),
        validate_args: bool | None = None,
    ):
        if not isinstance(chains, NegativePhase):
            raise TypeError(f"chains must be a NegativePhase (e.g. PersistentChains), got {type(chains).__name__}")
        if chains.model is not model:
            raise ValueError("these chains belong to a different model")
        self.model, self.chains, self.sample_steps = model, chains, sample_steps
        self.params = model.params() if params is None else params
        if sparsity is not None:
            sizes = self._hidden_sizes()
            if sparsity.layer_sizes != sizes:
                raise ValueError(
                    f"the sparsity target covers layers of sizes {sparsity.layer_sizes}, the model's hidden layers "
                    f"are {sizes}"
                )
        self.sparsity = sparsity
        super().__init__(Size(batch_shape), Size((model.n_visible,)), validate_args=validate_args)

    def _hidden_sizes(self) -> list[int]:
        """The sizes of the hidden layers a sparsity target covers (subclasses with other layers override)."""
        if not isinstance(self.model, HiddenInputModel):
            raise TypeError(f"a sparsity target needs a HiddenInputModel (an RBM), not {type(self.model).__name__}")
        return [self.model.n_hidden]

    @property
    def support(self):
        return self.model.support

    def _options(self) -> dict:
        """Constructor keywords that :meth:`expand` carries over (subclasses add theirs)."""
        options = {"params": self.params, "sample_steps": self.sample_steps}
        if self.sparsity is not None:  # only the subclasses that take a sparsity target can have one
            options["sparsity"] = self.sparsity
        return options

    def expand(self, batch_shape, _instance=None) -> EnergyBasedDistribution:
        return type(self)(
            self.model,
            self.chains,
            **self._options(),
            batch_shape=batch_shape,
            validate_args=self.__dict__.get("_validate_args"),
        )

    def _validate_sample(self, value: Tensor) -> None:
        """The value's width and values (one fused pass), then its batch shape."""
        check_value(self.model, value, self.batch_shape, self.event_shape)

    def _checked(self, value) -> Tensor:
        """``value`` as a tensor (a NumPy array converted), checked when validation is on."""
        if not isinstance(value, Tensor):
            value = self.model.to_tensor(value, "value")
        if self._validate_args:
            self._validate_sample(value)
        return value

    @sml_full_precision("EnergyBasedDistribution")
    def log_prob(self, value: Tensor) -> Tensor:
        """:math:`-F(v) - \\log\\hat Z` with the SML gradient (see the module's notes); without
        gradient tracking, the value only, and the chains are left alone. A caller's ``torch.autocast`` does
        not reach it: the model's own ``matmul_dtype``, where it has one, sets the training path's precision. A
        backward pass under autocast raises ``RuntimeError`` (see :class:`~dgm_ppl.infer.AutocastLoss`).

        :param value: visible values, shape ``batch_shape + (n_visible,)`` (a NumPy array is converted).
        :returns: shape ``value.shape[:-1]``.
        :raises ValueError: for bad values, with validation on.
        :raises DivergenceError: for a non-finite negative phase, with validation on.
        """
        model, p = self.model, self.params
        value = self._checked(value)
        validate = self._validate_args
        log_z = model.log_z or 0.0
        if not torch.is_grad_enabled():
            out = model.unnormalized_log_prob(value, params=p)
            return out - log_z if log_z else out
        negatives = self.chains.advance(value, params=p)
        # positive and negative phase in one matrix product, with a closed-form backward
        flat = value if value.dim() == 2 else value.reshape(-1, value.shape[-1])
        if flat.dtype != negatives.dtype or flat.device != negatives.device:
            flat = flat.to(negatives)
        n = flat.shape[0]
        rows = torch.cat([flat, negatives])
        out, s, probs = model.sml_terms(rows, n, params=p)
        if validate:
            check_negative_phase(s)
        self.chains.after_phases(rows, probs, n, params=p)
        if self.sparsity is not None:
            self.sparsity.update([probs[:n].mean(0)])
            out = out - self.sparsity.surrogate([model.hidden_preactivation(flat.mean(0), params=p)])
        if model.centered:
            # deferred: applied by the model's next forward(), before the parameters enter a new graph
            model.update_offsets(probs[:n].mean(0), defer=True)
        if value.dim() != 2:
            out = out.reshape(value.shape[:-1])
        return out - log_z if log_z else out

    @full_precision
    @torch.no_grad()
    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        """Draws by block Gibbs: ``sample_steps`` sweeps started from the chains' current states."""
        shape = self._extended_shape(sample_shape)
        n = shape[:-1].numel()
        v = self.model.gibbs(self.chains.initial_samples(n), steps=self.sample_steps)
        return v.reshape(shape)
