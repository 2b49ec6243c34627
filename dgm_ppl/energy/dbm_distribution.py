r"""The distribution of a :class:`~dgm_ppl.energy.DBM`'s visible units inside a Pyro program: variational
SML (Salakhutdinov & Hinton 2009; Goodfellow et al. Algorithm 20.1).

Uses the DBM through public members only: ``positive_phase`` (the mean-field bound and its gradient) or
``importance_positive_phase`` (the importance-sampled one),
``chain_statistic`` (the Rao-Blackwellized negative phase), ``gibbs``, ``update_offsets`` and, with a
sparsity target, ``total_input``.
"""

from __future__ import annotations

import torch
from torch import Size, Tensor

from ._ops import autocast_off, full_precision, sml_full_precision
from .dbm_chains import DBMPersistentChains
from .distribution import EnergyBasedDistribution, check_negative_phase
from .protocol import EnergyModel
from .regularization import SparsityTarget

__all__ = ["DBMDistribution"]

POSITIVE_PHASES = ("mean_field", "importance")


class DBMDistribution(EnergyBasedDistribution):
    r"""The distribution of a DBM's visible units inside a Pyro program (Algorithm 20.1).

    ``log_prob(v)`` has the value :math:`\mathcal L(v) - \log\hat Z`, the mean-field bound minus
    ``model.log_z`` (0 when unset), computed through the surrogate

    .. math::

        \mathcal L_\theta(v; \mu) - \log\hat Z - (s - \operatorname{stop\_grad}(s)),
        \qquad s = \frac1C\sum_c -F_{odd}(\tilde v_c, \tilde h_{2,c}, \dots),

    with :math:`\mu` the (detached) mean-field fixed point, so the gradient is the positive phase
    :math:`\nabla_\theta \mathcal L` at :math:`\mu` minus the negative phase from the persistent
    chains, with the odd layers summed out (Rao-Blackwellized). Under a subsampled plate Pyro scales
    it by :math:`N/B`, so ``SVI`` + ``Trace_ELBO`` performs variational SML.

    With ``positive_phase="importance"`` the mean-field bound is replaced by the importance estimate
    :math:`\hat\ell_K(v)` of :meth:`DBM.importance_positive_phase <dgm_ppl.energy.DBM.importance_positive_phase>`
    (the even layers drawn :math:`K` times from the mean-field posterior, the odd ones summed out), so the positive
    phase estimates :math:`\mathbb E_{p(h|v)}[\nabla_\theta(-E)]` itself rather than the bound's gradient; the value
    is then :math:`\hat\ell_K(v) - \log\hat Z`, no longer a bound for each draw.

    :param mean_field_iters: fixed-point sweeps for the positive phase, or for the proposal of the importance
        positive phase (``mean_field_tol`` stops early).
    :param positive_phase: ``"mean_field"`` (default, Algorithm 20.1) or ``"importance"``.
    :param importance_samples: :math:`K` for ``positive_phase="importance"``.
    :param sparsity: a :class:`~dgm_ppl.energy.SparsityTarget` over the hidden layers ``1..L``: each call with
        gradients enabled folds the batch means of the mean-field means into its running activations :math:`q`
        and adds its surrogate (value 0) once per datum, so the gradient also holds
        :math:`-\lambda_l (q_l - p_l)` through each hidden layer's total input at the mean-field point.
    """

    def __init__(
        self,
        model: EnergyModel,
        chains: DBMPersistentChains,
        *,
        params=None,
        sample_steps: int = 100,
        mean_field_iters: int = 10,
        mean_field_tol: float | None = None,
        positive_phase: str = "mean_field",
        importance_samples: int = 10,
        sparsity: SparsityTarget | None = None,
        batch_shape: Size | tuple = (),
        validate_args: bool | None = None,
    ):
        if not isinstance(chains, DBMPersistentChains):
            raise TypeError(
                f"a DBM needs PersistentChains(dbm, ...) for its negative phase, got {type(chains).__name__}"
            )
        if positive_phase not in POSITIVE_PHASES:
            raise ValueError(f"positive_phase must be one of {POSITIVE_PHASES}, got {positive_phase!r}")
        if isinstance(importance_samples, bool) or not isinstance(importance_samples, int) or importance_samples < 1:
            raise ValueError(f"importance_samples must be a positive int, got {importance_samples!r}")
        self.mean_field_iters, self.mean_field_tol = mean_field_iters, mean_field_tol
        self.positive_phase, self.importance_samples = positive_phase, importance_samples
        super().__init__(
            model,
            chains,
            params=params,
            sample_steps=sample_steps,
            sparsity=sparsity,
            batch_shape=batch_shape,
            validate_args=validate_args,
        )

    def _options(self) -> dict:
        options = super()._options()
        options.update(
            mean_field_iters=self.mean_field_iters,
            mean_field_tol=self.mean_field_tol,
            positive_phase=self.positive_phase,
            importance_samples=self.importance_samples,
        )
        return options

    def _hidden_sizes(self) -> list[int]:
        return list(self.model.layer_sizes[1:])

    @sml_full_precision("DBMDistribution")
    def log_prob(self, value: Tensor) -> Tensor:
        """The bound minus ``log_z``, with the gradient of Algorithm 20.1 (see the class notes).
        The positive phase is :meth:`DBM.positive_phase <dgm_ppl.energy.DBM.positive_phase>` (closed-form
        gradient at the mean-field means), the negative phase :meth:`DBM.chain_statistic
        <dgm_ppl.energy.DBM.chain_statistic>` of the advanced chains. Checks as for
        :class:`~dgm_ppl.energy.EnergyBasedDistribution`: with Pyro's validation off, neither the value
        nor the negative phase is checked. Under ``torch.autocast`` it runs in full precision, as the RBMs' does:
        trained with the mean field and the chains' sweeps in bfloat16, a 784-500-1000 DBM ended 8 nats behind
        the same recipe in float32 on MNIST (the SML gradient is a small difference of two statistics, and the
        sweeps' rounding biases the chains). A backward pass under autocast raises ``RuntimeError`` (see
        :class:`~dgm_ppl.infer.AutocastLoss`).

        :param value: visible values, shape ``batch_shape + (n_visible,)`` (a NumPy array is converted).
        :returns: shape ``value.shape[:-1]``.
        """
        model, p = self.model, self.params
        value = self._checked(value)
        validate = self._validate_args
        log_z = model.log_z or 0.0
        flat = value.reshape(-1, value.shape[-1]).to(p.weights[0])
        iters, tol = self.mean_field_iters, self.mean_field_tol
        if self.positive_phase == "importance":
            bound, means = model.importance_positive_phase(
                flat, self.importance_samples, params=p, num_iters=iters, tol=tol
            )
        else:
            bound, means = model.positive_phase(flat, params=p, num_iters=iters, tol=tol)
        if not torch.is_grad_enabled():
            bound = bound.reshape(value.shape[:-1])
            return bound - log_z if log_z else bound
        s = model.chain_statistic(self.chains.advance(value, params=p), params=p).mean()
        if validate:
            check_negative_phase(s, "DBM")
        if model.centered:  # deferred: applied by the model's next forward()
            model.update_offsets([m.mean(0) for m in means], defer=True)
        out = bound - (s - s.detach())
        if self.sparsity is not None:
            out = out - self._sparsity_surrogate(flat, means)
        out = out.reshape(value.shape[:-1])
        return out - log_z if log_z else out

    def _sparsity_surrogate(self, flat: Tensor, means: list[Tensor]) -> Tensor:
        """The sparsity target's surrogate at the batch means of the data and of its mean-field means."""
        batch_means = [flat.mean(0), *(m.mean(0) for m in means)]
        self.sparsity.update(batch_means[1:])
        with autocast_off():
            inputs = [self.model.total_input(l, batch_means, params=self.params) for l in range(1, len(batch_means))]
            return self.sparsity.surrogate(inputs)

    @full_precision
    @torch.no_grad()
    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        """Draws by block Gibbs: ``sample_steps`` sweeps started from the chains' current states."""
        shape = self._extended_shape(sample_shape)
        states = self.chains.initial_samples(shape[:-1].numel())
        return self.model.gibbs(states, steps=self.sample_steps)[0].reshape(shape)
