r"""Deep belief networks (Hinton, Osindero & Teh 2006; Goodfellow et al. 2016, §20.3).

A DBN with layers :math:`h_0 = v, h_1, \dots, h_L` is a directed sigmoid belief net whose top two
layers form an RBM:

.. math::

    p(v, h_1, \dots, h_L) = \Big(\prod_{l=1}^{L-1} p(h_{l-1} \mid h_l)\Big)\, p_L(h_{L-1}, h_L),
    \qquad p(h_{l-1} \mid h_l) = \prod_i \operatorname{Bernoulli}\big(\sigma(W_l h_l + b_l)_i\big),

where :math:`(W_l, b_l, c_l)` are the weight, visible and hidden biases of the :math:`l`-th RBM and
:math:`p_L` is the top RBM. It is trained greedily, layer by layer (:meth:`DBN.pretrain`): RBM
:math:`l` is fitted to samples of :math:`h_{l-1}` under the factorial recognition (up) pass

.. math::

    q(h_l \mid h_{l-1}) = \prod_j \operatorname{Bernoulli}\big(\sigma(W_l^\top h_{l-1} + c_l)_j\big),

the exact posterior of RBM :math:`l` alone (not of the DBN). With this :math:`q`, the only term of the
variational lower bound on :math:`\log p(v)` (:meth:`DBN.log_likelihood_bound`) that depends on a new top
RBM is its expected log-likelihood of :math:`h_{L-1} \sim q`, the objective of greedy training; started
from the transpose of the layer below, the deeper network defines the same :math:`p(v)` and the same bound
as the shallower one (Hinton et al. 2006).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import PyroOptim
from torch import Tensor, nn

from ..infer.training import train
from ._ops import as_tensor_like, bernoulli
from .chains import ContrastiveDivergence, PersistentChains
from .partition import AISResult
from .rbm import BernoulliRBM, RBMParams

__all__ = ["DBN"]

_counter = itertools.count()


def _check_int(label: str, n: object, minimum: int = 1) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{label} must be {kind} int, got {n!r}")


def _bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    r""":math:`\sum_i \log \operatorname{Bernoulli}(x_i; \sigma(\text{logits}_i))` for binary ``x``."""
    return (x * logits - F.softplus(logits)).sum(-1)


class DBN(nn.Module):
    """A deep belief network: a stack of :class:`~dgm_ppl.energy.BernoulliRBM`\\ s ``rbms``, RBM
    ``l`` (from 0) with ``layer_sizes[l]`` visible and ``layer_sizes[l + 1]`` hidden units.

    :param layer_sizes: ``[n_visible, n_hidden_1, ..., n_hidden_L]``, at least two sizes.
    :param centered: build centered RBMs (see :class:`~dgm_ppl.energy.BernoulliRBM`).
    :param name: prefix of the RBMs' Pyro names, ``f"{name}.rbm{l}"``; by default a unique one
        (``DBN_0``, ``DBN_1``, ...), so that no two DBNs share param-store entries.
    """

    def __init__(self, layer_sizes: Sequence[int], *, centered: bool = False, name: str | None = None):
        super().__init__()
        sizes = list(layer_sizes)
        if len(sizes) < 2:
            raise ValueError(f"layer_sizes needs at least two sizes (visible and one hidden layer), got {sizes}")
        for i, n in enumerate(sizes):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"layer_sizes must be positive ints, got {n!r} at position {i}")
        self.name = name if name is not None else f"{type(self).__name__}_{next(_counter)}"
        self.layer_sizes = sizes
        self.rbms = nn.ModuleList(
            BernoulliRBM(n_in, n_out, centered=centered, name=f"{self.name}.rbm{i}")
            for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))
        )

    @property
    def n_visible(self) -> int:
        return self.layer_sizes[0]

    def extra_repr(self) -> str:
        return f"layer_sizes={self.layer_sizes}"

    def _data(self, data, name: str) -> Tensor:
        """``data`` as a tensor (NumPy arrays and lists go to the parameters' device and dtype)."""
        return as_tensor_like(data, self.rbms[0].weight, name)

    def to_tensor(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through unchanged, NumPy arrays and lists are converted to
        the parameters' dtype and device. No check of the values."""
        return self._data(data, name)

    def check_data(self, data, name: str = "data") -> Tensor:
        """``data`` as a tensor, after checking that it holds binary visible states of width
        ``n_visible`` (as :meth:`BernoulliRBM.check_data <dgm_ppl.energy.RBM.check_data>`).

        :raises ValueError: for bad values.
        """
        return self.rbms[0].check_data(data, name)

    def _check_data(self, v: Tensor, name: str = "v") -> Tensor:
        """Validate binary visible data and move it to the parameters' device and dtype."""
        return self.check_data(v, name).to(self.rbms[0].weight)

    @torch.no_grad()
    def init_from_data(self, data: Tensor) -> DBN:
        r"""Initialize each RBM from its input as :meth:`~dgm_ppl.energy.BernoulliRBM.init_from_data`
        does: RBM 1 from ``data``, RBM :math:`l` from binary draws of :math:`q(h_{l-1} \mid h_{l-2})`
        (what :meth:`pretrain` fits it to).

        :param data: binary tensor or NumPy array of shape ``(N, n_visible)``.
        :returns: the model itself.
        """
        x = self._check_data(data, "init_from_data(data)")
        for l, rbm in enumerate(self.rbms):
            rbm.init_from_data(x)
            if l < len(self.rbms) - 1:
                x = rbm.sample_hidden(x)
        return self

    # ------------------------------------------------------------ training
    def pretrain(
        self,
        data: Tensor,
        epochs: int | Sequence[int] = 10,
        *,
        batch_size: int = 100,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        num_chains: int = 100,
        steps: int = 1,
        method: str = "pcd",
        optim: PyroOptim | None = None,
        progress: bool = True,
    ) -> list[list[float]]:
        """Greedy layer-wise training: fit RBM 1 to ``data`` by SML through ``SVI(..., Trace_ELBO())``,
        draw :math:`h_1 \\sim q(h_1 \\mid v)` once for every datum, fit RBM 2 to these binary codes, and
        so on up to the top RBM.

        Each RBM starts from :meth:`~dgm_ppl.energy.BernoulliRBM.init_from_data` on its input. Its
        negative phase is PCD-``steps`` with ``num_chains`` chains started at random inputs
        (``method="pcd"``) or CD-``steps`` (``method="cd"``). The optimizer is ``optim`` (shared by
        all layers) or a fresh ``pyro.optim.Adam({"lr": lr})`` per layer. The RBMs' ``log_z``
        estimates are reset to ``None``, as training makes them stale. A further call continues from the
        current weights, but restarts the visible biases at the base rates. Same keywords as
        :meth:`DBM.pretrain <dgm_ppl.energy.DBM.pretrain>`, plus ``optim``.

        :param data: binary tensor or NumPy array of shape ``(N, n_visible)``.
        :param epochs: epochs per RBM: one int for all, or one per RBM.
        :param batch_size: the minibatch size.
        :param lr: the learning rate of the default optimizer.
        :param weight_decay: the weight decay of the default optimizer.
        :param num_chains: persistent chains per RBM (``method="pcd"``).
        :param steps: Gibbs sweeps per update.
        :param method: ``"pcd"`` or ``"cd"``.
        :param optim: a Pyro optimizer shared by all layers, in place of a fresh
            ``pyro.optim.Adam({"lr": lr, "weight_decay": weight_decay})`` per layer.
        :param progress: show a progress bar.
        :return: the per-epoch mean losses (free energy per datum) of each layer.
        """
        data = self._data(data, "pretrain(data)")
        if data.dim() != 2:
            raise ValueError(f"data must have shape (N, n_visible), got {tuple(data.shape)}")
        if data.shape[0] < 1:
            raise ValueError("data is empty")
        if method not in ("pcd", "cd"):
            raise ValueError(f"method must be 'pcd' or 'cd', got {method!r}")
        epochs_per_layer = [epochs] * len(self.rbms) if isinstance(epochs, int) else list(epochs)
        if len(epochs_per_layer) != len(self.rbms):
            raise ValueError(f"epochs must be a positive int or one per RBM ({len(self.rbms)}), got {epochs!r}")
        for n in epochs_per_layer:
            _check_int("epochs", n)
        for label, n in (("batch_size", batch_size), ("steps", steps), ("num_chains", num_chains)):
            _check_int(label, n)
        x = self._check_data(data, "pretrain(data)")
        histories = []
        for rbm, rbm_epochs in zip(self.rbms, epochs_per_layer):
            rbm.init_from_data(x)
            rbm.log_z = None
            if method == "pcd":
                init = x[torch.randint(len(x), (num_chains,), device=x.device)]
                chains = PersistentChains(rbm, num_chains, steps, init=init)
            else:
                chains = ContrastiveDivergence(rbm, steps)
            adam = {"lr": lr} if weight_decay == 0.0 else {"lr": lr, "weight_decay": weight_decay}
            opt = optim if optim is not None else pyro.optim.Adam(adam)
            svi = SVI(_rbm_model(rbm, chains, len(x)), _empty_guide, opt, Trace_ELBO())
            histories.append(train(svi, x, epochs=rbm_epochs, batch_size=batch_size, progress=progress))
            with torch.no_grad():
                x = rbm.sample_hidden(x)
        return histories

    # ----------------------------------------------------------- inference
    def up(self, v: Tensor) -> list[Tensor]:
        r"""The mean-field recognition pass: :math:`\mu_l = \sigma(W_l^\top \mu_{l-1} + c_l)` with
        :math:`\mu_0 = v`, i.e. the means of :math:`q(h_l \mid h_{l-1})` evaluated at the means of the
        layer below. Returns ``[mu_1, ..., mu_L]``; ``v`` may be real-valued (e.g. grey levels)."""
        v = self._data(v, "v")
        if v.shape[-1:] != (self.n_visible,):
            raise ValueError(f"expected the last dimension to be n_visible={self.n_visible}, got {tuple(v.shape)}")
        mu = v.to(self.rbms[0].weight)
        means = []
        for rbm in self.rbms:
            mu = torch.sigmoid(rbm.hidden_preactivation(mu))
            means.append(mu)
        return means

    def to_mlp(self, num_outputs: int | None = None) -> nn.Sequential:
        r"""A feed-forward net computing the up pass :math:`v \mapsto \mu_L` (``Linear`` + ``Sigmoid``
        per layer), initialized with copies of the RBMs' weights and hidden biases in standard form,
        for discriminative fine-tuning. With ``num_outputs``, a freshly initialized
        ``Linear(n_hidden_L, num_outputs)`` is appended (logits, no activation)."""
        if num_outputs is not None:
            _check_int("num_outputs", num_outputs)
        w0 = self.rbms[0].weight
        kw = {"device": w0.device, "dtype": w0.dtype}
        layers: list[nn.Module] = []
        with torch.no_grad():
            for rbm in self.rbms:
                p = rbm.params()
                linear = nn.Linear(rbm.n_visible, rbm.n_hidden, **kw)
                linear.weight.copy_(p.weight.T)
                linear.bias.copy_(p.hidden_bias)
                layers += [linear, nn.Sigmoid()]
        if num_outputs is not None:
            layers.append(nn.Linear(self.layer_sizes[-1], num_outputs, **kw))
        return nn.Sequential(*layers)

    # ------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        steps: int = 1000,
        init: Tensor | None = None,
        *,
        mean_visible: bool = False,
        gibbs_steps: int | None = None,
    ) -> Tensor:
        r"""Draw :math:`v` by ``steps`` block-Gibbs sweeps in the top RBM, giving
        :math:`h_{L-1} \approx p_L(h_{L-1})`, then one ancestral pass down the directed layers,
        :math:`h_{l-1} \sim p(h_{l-1} \mid h_l)`.

        :param init: initial states of the top RBM's visible layer :math:`h_{L-1}`, shape
            ``(num_samples, layer_sizes[-2])``; default: the factorial model of its visible biases.
        :param mean_visible: return the probabilities :math:`p(v_i = 1 \mid h_1)` of the last step
            instead of a binary draw.
        :param gibbs_steps: deprecated name of ``steps``.
        :return: shape ``(num_samples, n_visible)``.
        """
        if gibbs_steps is not None:
            warnings.warn("DBN.sample(gibbs_steps=...) is deprecated; use steps=...", DeprecationWarning, 2)
            steps = gibbs_steps
        _check_int("num_samples", num_samples)
        _check_int("steps", steps, minimum=0)
        top = self.rbms[-1]
        if init is None:
            h = top.random_state(num_samples)
        else:
            init = self._data(init, "init")
            if init.shape != (num_samples, top.n_visible):
                raise ValueError(f"init must have shape {(num_samples, top.n_visible)}, got {tuple(init.shape)}")
            top.check_data(init, "init")
            h = init.to(top.weight)
        h = top.gibbs(h, steps=steps)
        directed = list(self.rbms[:-1])
        if not directed:  # a single RBM: h is already a visible sample
            return top.visible_given_hidden(top.sample_hidden(h)).mean if mean_visible else h
        for rbm in reversed(directed[1:]):
            h = rbm.sample_visible(h)
        bottom = directed[0]
        return bottom.visible_given_hidden(h).mean if mean_visible else bottom.sample_visible(h)

    # ---------------------------------------------------------- evaluation
    @torch.no_grad()
    def log_likelihood_bound(
        self,
        v: Tensor,
        num_samples: int = 1,
        log_z_top: float | Tensor | AISResult | None = None,
        *,
        importance_weighted: bool = False,
    ) -> Tensor:
        r"""A Monte Carlo estimate of the variational lower bound

        .. math::

            \log p(v) \ge \mathbb E_{q(h|v)}\Big[\sum_{l=1}^{L-1} \log p(h_{l-1} \mid h_l)
                - \log q(h_l \mid h_{l-1}) - F_L(h_{L-1})\Big] - \log Z_L,

        with :math:`h_l \sim q(h_l \mid h_{l-1})` drawn ancestrally from :math:`h_0 = v` and
        :math:`-F_L` the unnormalized log-marginal of the top RBM's visible layer; the expectation is
        replaced by the mean over ``num_samples`` draws. For one RBM it is exactly :math:`-F(v) - \log Z`.
        With ``importance_weighted`` the mean of the log-weights is replaced by the log of their mean,
        the tighter importance-weighted bound (Burda et al. 2016), which tends to :math:`\log p(v)`
        as ``num_samples`` grows.

        :param v: binary tensor of shape ``(..., n_visible)``.
        :param log_z_top: :math:`\log Z_L`; default ``rbms[-1].log_z`` (set by
            :func:`~dgm_ppl.energy.exact_log_partition` or :func:`~dgm_ppl.energy.ais_log_partition`; an
            AIS estimate tends to underestimate :math:`\log Z_L`, which makes the bound optimistic).
        :return: shape ``v.shape[:-1]``.
        """
        _check_int("num_samples", num_samples)
        top = self.rbms[-1]
        if log_z_top is None:
            log_z_top = top.log_z
        if log_z_top is None:
            raise ValueError(
                "the top RBM has no log partition function estimate: call exact_log_partition or "
                "ais_log_partition on dbn.rbms[-1], or pass log_z_top"
            )
        log_z = float(log_z_top)
        x = self._check_data(v)
        x = x.expand(num_samples, *x.shape)
        log_w = 0.0
        for rbm in self.rbms[:-1]:
            p: RBMParams = rbm.params()
            logits = rbm.hidden_preactivation(x, params=p)
            h = bernoulli(torch.sigmoid(logits))
            log_w = log_w + _bernoulli_log_prob(x, h @ p.weight.T + p.visible_bias) - _bernoulli_log_prob(h, logits)
            x = h
        log_w = log_w + top.unnormalized_log_prob(x)
        if importance_weighted:
            bound = torch.logsumexp(log_w, 0) - math.log(num_samples)
        else:
            bound = log_w.mean(0)
        return bound - log_z


def _rbm_model(rbm: BernoulliRBM, chains, n: int):
    def model(batch: Tensor) -> None:
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    return model


def _empty_guide(batch: Tensor) -> None:
    pass
