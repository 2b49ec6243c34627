r"""Regularizers of Boltzmann-machine training that are not a term of the log-likelihood's gradient
(Hinton 2010, *A practical guide to training RBMs*, §§10–11).

**Max-norm** (Srebro & Shraibman 2005; Srivastava et al. 2014): after each update, every hidden unit's
incoming weight vector is projected back into the ball of radius :math:`c`,

.. math::

    w_{\cdot j} \leftarrow w_{\cdot j} \min\Big(1, \frac{c}{\lVert w_{\cdot j} \rVert_2}\Big),

which bounds how sharp a single unit can get without shrinking the small weights, as weight decay does.

**Sparsity target** (Lee, Ekanadham & Ng 2008; Hinton 2010, §11): a penalty
:math:`\lambda \sum_j \big[-p \log q_j - (1 - p) \log(1 - q_j)\big]`, the cross entropy between a target
activation :math:`p` and the actual mean activation :math:`q_j` of hidden unit :math:`j` on the data, where
:math:`q` is a damped running mean over minibatches, :math:`q \leftarrow \delta q + (1 - \delta)\,\bar\mu`, of the
batch means :math:`\bar\mu` of the data's posterior (or mean-field) activations. As the guide does, its
derivative is taken with respect to the unit's total input :math:`x_j` as if :math:`q_j` were a logistic of it,
:math:`\lambda (q_j - p)`, and pushed to the parameters through :math:`x_j`:

.. math::

    \frac{\partial R}{\partial b_j} = \lambda (q_j - p), \qquad
    \frac{\partial R}{\partial W_{ij}} = \lambda (q_j - p)\, \bar s_i,

with :math:`\bar s` the batch mean of the units feeding unit :math:`j`. :meth:`SparsityTarget.surrogate` is the
scalar :math:`\lambda \sum_j \operatorname{stop\_grad}(q_j - p)\, \bar x_j` of the batch-mean total inputs
:math:`\bar x` minus its own value: zero, with that gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["SparsityTarget", "max_norm_"]


@torch.no_grad()
def max_norm_(weight: Tensor, max_norm: float, dim: int = 0) -> Tensor:
    r"""Project ``weight`` in place so that every vector along ``dim`` has Euclidean norm at most ``max_norm``.

    For a Boltzmann machine's ``weight_l`` of shape ``(n_l, n_{l+1})``, ``dim=0`` bounds the incoming weights of
    each unit of layer :math:`l+1`. Vectors already inside the ball are unchanged.

    :returns: ``weight``.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norms = weight.norm(dim=dim, keepdim=True)
    return weight.mul_((max_norm / norms.clamp_min(torch.finfo(weight.dtype).tiny)).clamp(max=1.0))


class SparsityTarget(nn.Module):
    r"""A sparsity target for the hidden layers of a Boltzmann machine (see the module notes).

    :param layer_sizes: the sizes of the penalized hidden layers.
    :param targets: the target activation :math:`p` of each layer (one float for all).
    :param costs: the penalty's weight :math:`\lambda` of each layer, per datum (one float for all).
    :param damping: :math:`\delta` of the running mean :math:`q`; the first batch sets :math:`q`.

    The running means are buffers ``activation_l`` (NaN until the first :meth:`update`), saved with the
    module's state, so a checkpoint resumes them exactly.
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        targets: float | Sequence[float],
        costs: float | Sequence[float],
        damping: float = 0.9,
    ):
        super().__init__()
        sizes = list(layer_sizes)
        self.targets, self.costs = self._per_layer(targets, sizes, "targets"), self._per_layer(costs, sizes, "costs")
        if not all(0 < p < 1 for p in self.targets):
            raise ValueError(f"targets must be in (0, 1), got {self.targets}")
        if not all(c >= 0 for c in self.costs):
            raise ValueError(f"costs must be >= 0, got {self.costs}")
        if not 0 <= damping < 1:
            raise ValueError(f"damping must be in [0, 1), got {damping}")
        self.layer_sizes, self.damping = sizes, damping
        for l, n in enumerate(sizes):
            self.register_buffer(f"activation_{l}", torch.full((n,), float("nan")))

    @staticmethod
    def _per_layer(value: float | Sequence[float], sizes: list[int], name: str) -> list[float]:
        values = [float(value)] * len(sizes) if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != len(sizes):
            raise ValueError(f"{name} needs one value per penalized layer ({len(sizes)}), got {len(values)}")
        return values

    def extra_repr(self) -> str:
        return f"layer_sizes={self.layer_sizes}, targets={self.targets}, costs={self.costs}, damping={self.damping}"

    def activations(self) -> list[Tensor]:
        """The running mean activations :math:`q` of the layers (buffers ``activation_l``)."""
        return [getattr(self, f"activation_{l}") for l in range(len(self.layer_sizes))]

    @torch.no_grad()
    def update(self, batch_means: Sequence[Tensor]) -> list[Tensor]:
        r"""Fold the batch means :math:`\bar\mu` of each layer's activations into :math:`q` and return :math:`q`."""
        if len(batch_means) != len(self.layer_sizes):
            raise ValueError(f"expected the means of {len(self.layer_sizes)} layers, got {len(batch_means)}")
        for q, m in zip(self.activations(), batch_means):
            m = m.detach().to(q)
            if m.shape != q.shape:
                raise ValueError(f"a layer of {q.shape[0]} units got means of shape {tuple(m.shape)}")
            q.copy_(m if torch.isnan(q).any() else self.damping * q + (1 - self.damping) * m)
        return self.activations()

    def surrogate(self, mean_inputs: Sequence[Tensor]) -> Tensor:
        r"""The penalty's surrogate for the batch-mean total inputs :math:`\bar x_l` of the layers (differentiable
        in the model's parameters): value 0, gradient :math:`\sum_l \lambda_l (q_l - p_l)\, \partial \bar x_l`, at
        the current :math:`q` (call :meth:`update` first). Add it to the loss, or subtract it from a
        log-likelihood, once per datum."""
        if len(mean_inputs) != len(self.layer_sizes):
            raise ValueError(f"expected the inputs of {len(self.layer_sizes)} layers, got {len(mean_inputs)}")
        total = mean_inputs[0].new_zeros(())
        for q, p, cost, x in zip(self.activations(), self.targets, self.costs, mean_inputs):
            if cost and bool(torch.isnan(q).any()):
                raise RuntimeError("SparsityTarget.surrogate needs the running activations: call update() first")
            if cost:
                total = total + cost * ((q - p).to(x) * x).sum()
        return total - total.detach()
