r"""Greedy layer-wise pretraining of a :class:`~dgm_ppl.energy.DBM` (Salakhutdinov & Hinton 2009).

RBM :math:`l` is trained by SML on the up-pass means of the layer below, with tied copies of layers
(:class:`TiedCopiesRBM`) that compensate for the input the layer gets from both neighbours in the DBM,
optionally in the centered parametrization (Montavon & Müller 2012; Melchior et al. 2016).
:func:`pretrain_dbm` then initializes the DBM from the RBMs' standard forms (:meth:`DBM.pretrain` calls it).
:func:`grow_from_rbm` instead starts a DBM from one trained RBM, with the layers above it nearly decoupled.
Uses the DBM only through public members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..infer.errors import DivergenceError
from ._ops import bernoulli

__all__ = ["TiedCopiesRBM", "grow_from_rbm", "pretrain_dbm"]

CENTERING_RATE = 0.01  # how far the hidden offset moves towards each batch's means (Melchior et al. 2016's nu)


class TiedCopiesRBM(nn.Module):
    r"""An RBM with ``visible_copies`` tied copies of its visible layer and ``hidden_copies`` of its
    hidden layer, for DBM pretraining. Summed copies are sufficient statistics:
    :math:`-F(v_{1..k}) = \sum_i \ell(v_i) + k_h \sum_j \operatorname{softplus}(c_j + \sum_i s(v_i)^\top W_{:j})`,
    and the data clamps all visible copies to the same vector.

    With ``centered=True`` the coupling is :math:`\sum_{i,j} (s(v_i) - \mu)^\top W (h_j - \lambda)`, with
    :math:`\mu` the mean of :math:`s` on the data and :math:`\lambda` a running mean of :math:`p(h|v)` on the
    data (Melchior et al. 2016), so that
    :math:`-F = \sum_i \ell(v_i) - k_h \big(\sum_i s(v_i) - k_v\mu\big)^\top W\lambda
    + k_h \sum_j \operatorname{softplus}\big(c_j + (\sum_i s(v_i) - k_v\mu)^\top W_{:j}\big)`. It is the RBM of
    :meth:`standard_params`: the same weights, :math:`c - k_v W^\top\mu` and :math:`b - k_h W\lambda` (times the
    standard deviations for Gaussian units). When :math:`\lambda` moves, the biases move with it, so the model
    stays the same; only the gradient's parametrization changes."""

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        visible_copies: int,
        hidden_copies: int,
        std: Tensor | None,
        centered: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_visible, n_hidden) * 0.01)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self.kv, self.kh = visible_copies, hidden_copies
        self.centered = centered
        self.register_buffer("std", None if std is None else std.detach().clone())
        self.register_buffer("visible_offset", torch.zeros(n_visible))
        self.register_buffer("hidden_offset", torch.full((n_hidden,), 0.5 if centered else 0.0))

    def _stat(self, v: Tensor) -> Tensor:
        return v if self.std is None else v / self.std

    def _hidden_input(self, summed_stat: Tensor) -> Tensor:
        r""":math:`c + (\sum_i s(v_i) - k_v\mu)^\top W` from the copies' summed statistic."""
        return self.hidden_bias + (summed_stat - self.kv * self.visible_offset) @ self.weight

    def _visible_shift(self) -> Tensor:
        r"""What the centering adds to the visible bias of the standard form: :math:`-k_h W\lambda`, times the
        standard deviations for Gaussian units."""
        shift = -self.kh * (self.weight @ self.hidden_offset)
        return shift if self.std is None else shift * self.std

    @torch.no_grad()
    def standard_params(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(weight, visible_bias, hidden_bias)`` of the uncentered RBM with the same distribution."""
        hidden = self.hidden_bias - self.kv * (self.visible_offset @ self.weight)
        return self.weight.clone(), self.visible_bias + self._visible_shift(), hidden

    @torch.no_grad()
    def recenter(
        self, visible_offset: Tensor | None = None, hidden_offset: Tensor | None = None, rate: float = 1.0
    ) -> None:
        r"""Move the offsets, by ``rate`` of the way towards ``visible_offset`` (:math:`\mu`) and ``hidden_offset``
        (:math:`\lambda`) where given, and the biases with them, so that :meth:`standard_params` (the model) does
        not change."""
        if not self.centered:
            raise ValueError("recenter() is for a TiedCopiesRBM built with centered=True")
        _, visible, hidden = self.standard_params()
        if visible_offset is not None:
            self.visible_offset.lerp_(visible_offset.to(self.visible_offset), rate)
        if hidden_offset is not None:
            self.hidden_offset.lerp_(hidden_offset.to(self.hidden_offset), rate)
        self.hidden_bias.copy_(hidden + self.kv * (self.visible_offset @ self.weight))
        self.visible_bias.copy_(visible - self._visible_shift())

    def _visible_term(self, v: Tensor) -> Tensor:
        if self.std is None:
            return v @ self.visible_bias
        return -(((v - self.visible_bias) / self.std) ** 2).sum(-1) / 2

    def neg_free_energy(self, copies: Tensor) -> Tensor:
        """``copies`` of shape ``(k_v, batch, n_visible)``."""
        summed = self._stat(copies).sum(0)
        out = self._visible_term(copies).sum(0) + self.kh * F.softplus(self._hidden_input(summed)).sum(-1)
        if self.centered:
            out = out - self.kh * ((summed - self.kv * self.visible_offset) @ (self.weight @ self.hidden_offset))
        return out

    @torch.no_grad()
    def up(self, v: Tensor) -> Tensor:
        return torch.sigmoid(self._hidden_input(self.kv * self._stat(v)))

    @torch.no_grad()
    def gibbs(self, copies: Tensor) -> Tensor:
        p = torch.sigmoid(self._hidden_input(self._stat(copies).sum(0)))
        h = sum(bernoulli(p) for _ in range(self.kh))  # Binomial(k_h, p): the summed hidden copies
        x = ((h - self.kh * self.hidden_offset) @ self.weight.T).expand(self.kv, -1, -1)
        if self.std is None:
            return bernoulli(torch.sigmoid(x + self.visible_bias))
        mean = self.visible_bias + self.std * x
        return mean + self.std * torch.randn_like(mean)

    def _start(self, rows: Tensor) -> Tensor:
        """Chain states started at ``rows`` (binary draws of the means for binary units), all copies equal."""
        copies = rows.expand(self.kv, -1, -1)
        return bernoulli(copies) if self.std is None else copies

    def fit(
        self, data, epochs, batch_size, lr, weight_decay, num_chains, steps, progress, layer, method: str = "pcd"
    ) -> list[float]:
        """Fit to ``data`` (rows of the layer below) by SML with Adam: PCD-``steps`` with ``num_chains``
        persistent chains started at random rows (``method="pcd"``), or CD-``steps`` with chains restarted
        at each batch (``method="cd"``). Returns the per-epoch mean surrogate loss."""
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        idx = torch.randint(len(data), (num_chains,), device=data.device)
        with torch.no_grad():
            chains = self._start(data[idx])
            if self.centered:  # the data's means; the hidden offset starts at the first up-pass's
                self.recenter(self._stat(data).mean(0), self.up(data[: 10 * batch_size]).mean(0))
        history = []
        n_batches = math.ceil(len(data) / batch_size)
        bar = tqdm(total=epochs * n_batches, disable=not progress, desc=f"pretraining RBM {layer + 1}", mininterval=0.5)
        try:
            for epoch in range(epochs):
                order = torch.randperm(len(data), device=data.device)
                total = torch.zeros((), dtype=data.dtype, device=data.device)  # summed on the device: no sync per step
                for i in range(0, len(data), batch_size):
                    batch = data[order[i : i + batch_size]]
                    if method == "cd":
                        with torch.no_grad():
                            chains = self._start(batch)
                    for _ in range(steps):
                        chains = self.gibbs(chains)
                    loss = (
                        self.neg_free_energy(chains).mean() - self.neg_free_energy(batch.expand(self.kv, -1, -1)).mean()
                    )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if self.centered:  # the hidden offset slides towards the batch's means
                        self.recenter(hidden_offset=self.up(batch).mean(0), rate=CENTERING_RATE)
                    total += loss.detach()
                    bar.update()
                mean = float(total) / n_batches
                if not math.isfinite(mean):
                    raise DivergenceError(f"pretraining RBM {layer + 1} diverged at epoch {epoch}")
                history.append(mean)
        finally:
            bar.close()
        return history


def pretrain_dbm(
    model,
    data,
    epochs: int | Sequence[int] = 10,
    *,
    batch_size: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    num_chains: int = 100,
    steps: int = 1,
    method: str = "pcd",
    centered: bool = False,
    progress: bool = True,
) -> list[list[float]]:
    r"""Greedy layer-wise pretraining of the DBM ``model``, then its initialization from the RBMs; see
    :meth:`DBM.pretrain <dgm_ppl.energy.DBM.pretrain>` for the parameters.

    :returns: the per-epoch mean surrogate losses of each RBM.
    """
    data = model.check_data(data, "pretrain(data)")
    if method not in ("pcd", "cd"):
        raise ValueError(f"method must be 'pcd' or 'cd', got {method!r}")
    L = model.num_layers
    epochs_per_layer = [epochs] * L if isinstance(epochs, int) else list(epochs)
    if len(epochs_per_layer) != L or min(epochs_per_layer) < 1:
        raise ValueError(f"epochs must be a positive int or one per RBM ({L}), got {epochs!r}")
    w0 = model.weight
    x = data.to(w0)
    rbms, histories = [], []
    for l in range(L):
        rbm = TiedCopiesRBM(
            model.layer_sizes[l],
            model.layer_sizes[l + 1],
            visible_copies=2 if (l == 0 and L > 1) else 1,
            hidden_copies=2 if (l == L - 1 and L > 1) else 1,
            std=model.log_std.exp() if (l == 0 and model.gaussian_visible) else None,
            centered=centered,
        ).to(w0)
        with torch.no_grad():
            rbm.visible_bias.copy_(model.base_rate(x) if l == 0 else torch.logit(x.mean(0).clamp(1e-3, 1 - 1e-3)))
        histories.append(
            rbm.fit(x, epochs_per_layer[l], batch_size, lr, weight_decay, num_chains, steps, progress, l, method)
        )
        x = rbm.up(x)
        rbms.append(rbm)
    with torch.no_grad():
        standard = [r.standard_params() for r in rbms]  # (weight, visible bias, hidden bias), uncentered
        weights = [w * (1.0 if l in (0, L - 1) else 0.5) for l, (w, _, _) in enumerate(standard)]
        biases = [standard[0][1]]
        for l in range(1, L + 1):
            below = standard[l - 1][2]
            biases.append(below if l == L else (below + standard[l][1]) / 2)
        model.set_standard_params(weights, biases)
        model.set_offsets_from_data(data)
    return histories


@torch.no_grad()
def grow_from_rbm(model, rbm, *, top_std: float = 0.01, data=None, generator: torch.Generator | None = None):
    r"""Initialize the DBM ``model`` from a trained binary RBM: the RBM becomes the bottom layer pair, the
    layers above start nearly decoupled.

    :math:`W_0`, :math:`b_0` and :math:`b_1` are the RBM's standard-form weight and biases; the weights above are
    drawn from :math:`\mathcal N(0, \text{top\_std}^2)` and the biases above are zero, so the units above fire
    half the time, and each hidden layer's bias is lowered by the mean input it gets from the layer above,
    :math:`W_l \tfrac12 \mathbf 1`. With ``top_std=0`` the DBM's marginal of :math:`v` *is* the RBM's (the layers
    above sum out to a constant factor of :math:`Z`), and its mean-field bound equals the RBM's exact
    :math:`\log p(v)`, since the posterior of :math:`h_1` is then factorial; a small ``top_std`` breaks the
    symmetry between the top units. (With the mean-field positive phase the gradient of small weights above
    :math:`h_1` is, to first order, minus the posterior variance of :math:`h_1` times the weights when the RBM fits
    the data, so the layers above grow only where the data's correlations of :math:`h_1` exceed the model's by
    more than that; on MNIST they shrank, see ``docs/benchmarks.md``.) A one-layer DBM becomes the RBM
    itself, trained from there as a DBM is (a control for what the layers above add).

    Unlike :func:`pretrain_dbm`, the bottom RBM is a plain one (no doubled visible layer): its
    :math:`p(h_1 | v)` already carries all the evidence, and the layers above enter only as the joint
    training makes them useful.

    :param model: a DBM with binary visible units and ``layer_sizes[:2] == [rbm.n_visible, rbm.n_hidden]``.
    :param rbm: a trained binary-visible RBM (centered or not; its standard form is used).
    :param top_std: the standard deviation of the weights above the first hidden layer (>= 0).
    :param data: training data; when given and the DBM is centered, its offsets are set from it
        (:meth:`DBM.set_offsets_from_data <dgm_ppl.energy.DBM.set_offsets_from_data>`).
    :param generator: the random generator of the weights above.
    :returns: the model itself.
    :raises ValueError: for mismatched sizes, a Gaussian-visible RBM or DBM, or a negative ``top_std``.
    """
    if model.gaussian_visible:
        raise ValueError("grow_from_rbm is implemented for binary visible units only")
    p = rbm.params()
    if p.std is not None:
        raise ValueError("grow_from_rbm needs an RBM with binary visible units")
    if tuple(p.weight.shape) != tuple(model.layer_sizes[:2]):
        raise ValueError(
            f"the RBM is {tuple(p.weight.shape)} (n_visible, n_hidden) but the DBM's first layers are "
            f"{tuple(model.layer_sizes[:2])}"
        )
    if not (math.isfinite(top_std) and top_std >= 0):
        raise ValueError(f"top_std must be finite and >= 0, got {top_std!r}")
    w0 = model.weight
    sizes = model.layer_sizes
    weights = [p.weight.detach().to(w0)]
    for l in range(1, model.num_layers):
        noise = torch.randn(sizes[l], sizes[l + 1], generator=generator, device=w0.device, dtype=w0.dtype)
        weights.append(noise * top_std)
    biases = [p.visible_bias.detach().to(w0), p.hidden_bias.detach().to(w0)]
    biases += [w0.new_zeros(n) for n in sizes[2:]]
    for l in range(1, model.num_layers):  # remove the mean input from the units above, which fire half the time
        biases[l] = biases[l] - weights[l].sum(1) / 2
    model.set_standard_params(weights, biases)
    if data is not None:
        model.set_offsets_from_data(data)
    return model
