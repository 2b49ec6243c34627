r"""Up-down (contrastive wake-sleep) fine-tuning of deep belief networks (Hinton, Osindero & Teh 2006, appendix B).

Greedy pretraining (:meth:`DBN.pretrain <dgm_ppl.energy.DBN.pretrain>`) ties, in every directed layer, the
generative weights :math:`p(h_{l-1} \mid h_l)` to the recognition weights :math:`q(h_l \mid h_{l-1})` of the same
RBM. :class:`DBNUpDown` unties them: each lower layer :math:`l = 1, \dots, L-1` gets generative weights and biases
:math:`(G_l, g_l)` and recognition weights and biases :math:`(R_l, r_l)`, both started from RBM :math:`l`,

.. math::

    p(h_{l-1} \mid h_l) = \prod_i \operatorname{Bernoulli}\big(\sigma(G_l h_l + g_l)_i\big), \qquad
    q(h_l \mid h_{l-1}) = \prod_j \operatorname{Bernoulli}\big(\sigma(R_l^\top h_{l-1} + r_l)_j\big),

while the top two layers stay an RBM :math:`p_L(h_{L-1}, h_L)` (``top``). One up-down update on a minibatch:

* *wake* (up) pass: :math:`h_l \sim q(h_l \mid h_{l-1})` from :math:`h_0 = v`; the generative weights learn to
  reconstruct each layer from the one above by the delta rule,
  :math:`\Delta G_l \propto (h_{l-1} - \sigma(G_l h_l + g_l))\, h_l^\top`;
* *top*: CD-k on the top RBM, started at the up-pass states :math:`h_{L-1}`;
* *sleep* (down) pass: from the top RBM's negative states :math:`\tilde h_{L-1}`, draw
  :math:`\tilde h_{l-1} \sim p(h_{l-1} \mid \tilde h_l)` down to :math:`\tilde v`; the recognition weights learn to
  predict each layer from the one below, :math:`\Delta R_l \propto \tilde h_{l-1} (\tilde h_l -
  \sigma(R_l^\top \tilde h_{l-1} + r_l))^\top`.

The updates of one minibatch are all computed from the weights before it. The model is evaluated by the standard
variational lower bound (:meth:`DBNUpDown.log_likelihood_bound`),

.. math::

    \log p(v) \ge \mathbb E_{q(h \mid v)}\Big[\sum_{l=1}^{L-1} \big(\log p(h_{l-1} \mid h_l)
        - \log q(h_l \mid h_{l-1})\big) - F_L(h_{L-1})\Big] - \log Z_L,

with :math:`\log Z_L` of the top RBM from :func:`~dgm_ppl.energy.exact_log_partition` (tiny top RBMs) or
:func:`~dgm_ppl.energy.ais_log_partition`, and for tiny networks by the exact :math:`\log p(v)`
(:meth:`DBNUpDown.exact_log_likelihood`), which enumerates the directed layers.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._ops import as_tensor_like, bernoulli, binary_states, check_binary, check_finite
from .dbn import DBN
from .partition import AISResult
from .rbm import BernoulliRBM

__all__ = ["DBNUpDown", "up_down"]

_counter = itertools.count()
_CHUNK = 2**12  # enumerated states per chunk


def _check_int(label: str, n: Any, minimum: int = 1) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError(f"{label} must be an int >= {minimum}, got {n!r}")


def _check_rate(label: str, x: Any, *, below_one: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        raise ValueError(f"{label} must be a finite number >= 0, got {x!r}")
    if below_one and x >= 1:
        raise ValueError(f"{label} must be < 1, got {x!r}")
    return float(x)


def _bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    r""":math:`\sum_i \log \operatorname{Bernoulli}(x_i; \sigma(\text{logits}_i))` for binary ``x``."""
    return (x * logits - F.softplus(logits)).sum(-1)


class DBNUpDown(nn.Module):
    r"""A deep belief network with untied recognition and generative weights, for up-down fine-tuning; see the
    module's notes. Built from a (pretrained) :class:`~dgm_ppl.energy.DBN`, whose parameters are copied (in standard,
    uncentered form) and never changed.

    Parameters: ``generative_weights[l]`` (:math:`G_{l+1}`, ``layer_sizes[l] x layer_sizes[l + 1]``),
    ``generative_biases[l]`` (:math:`g_{l+1}`), ``recognition_weights[l]`` (:math:`R_{l+1}`, same shape) and
    ``recognition_biases[l]`` (:math:`r_{l+1}`) for the directed layers ``l = 0 .. L - 2``; ``top`` is the top RBM (a
    :class:`~dgm_ppl.energy.BernoulliRBM`), whose ``log_z`` the bound uses.

    :param dbn: the DBN to start from, with at least two RBMs.
    :param name: the Pyro name of the top RBM is ``f"{name}.top"``; by default a unique one.
    """

    def __init__(self, dbn: DBN, *, name: str | None = None):
        super().__init__()
        if not isinstance(dbn, DBN):
            raise ValueError(f"dbn must be a DBN, got {type(dbn).__name__}")
        if len(dbn.rbms) < 2:
            raise ValueError(
                f"up-down fine-tuning needs a DBN with at least two RBMs (a directed layer), got {dbn.layer_sizes}"
            )
        self.name = name if name is not None else f"{type(self).__name__}_{next(_counter)}"
        self.layer_sizes = list(dbn.layer_sizes)
        self.generative_weights, self.generative_biases = nn.ParameterList(), nn.ParameterList()
        self.recognition_weights, self.recognition_biases = nn.ParameterList(), nn.ParameterList()
        with torch.no_grad():
            for rbm in dbn.rbms[:-1]:
                p = rbm.params()
                self.generative_weights.append(nn.Parameter(p.weight.detach().clone()))
                self.generative_biases.append(nn.Parameter(p.visible_bias.detach().clone()))
                self.recognition_weights.append(nn.Parameter(p.weight.detach().clone()))
                self.recognition_biases.append(nn.Parameter(p.hidden_bias.detach().clone()))
            source = dbn.rbms[-1]
            p = source.params()
            self.top = BernoulliRBM(source.n_visible, source.n_hidden, name=f"{self.name}.top")
            self.top.to(p.weight)
            self.top.weight.copy_(p.weight)
            self.top.visible_bias.copy_(p.visible_bias)
            self.top.hidden_bias.copy_(p.hidden_bias)
            if source.log_z is not None:  # the standard form drops the centered energy's constant
                self.top.log_z = float(source.log_z - torch.as_tensor(p.const).double())

    @property
    def n_visible(self) -> int:
        return self.layer_sizes[0]

    @property
    def num_directed(self) -> int:
        """The number of directed layers :math:`L - 1` (below the top RBM)."""
        return len(self.layer_sizes) - 2

    def extra_repr(self) -> str:
        return f"layer_sizes={self.layer_sizes}"

    # ------------------------------------------------------------------ data
    def to_tensor(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through unchanged, NumPy arrays and lists are converted to the
        parameters' dtype and device. No check of the values.

        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.top.weight, name)

    def check_data(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor, after checking that it holds binary visible states of width ``n_visible``.

        :param name: the argument, as error messages name it.
        :raises ValueError: for the wrong width, NaN or inf, or values other than 0 and 1.
        """
        v = self.to_tensor(data, name)
        if v.shape[-1:] != (self.n_visible,):
            raise ValueError(
                f"{name}: expected the last dimension to be n_visible={self.n_visible}, got shape {tuple(v.shape)}"
            )
        if not check_binary(v):
            if not check_finite(v):
                raise ValueError(f"{name}: values contain NaN or inf")
            bad = v[(v != 0) & (v != 1)].flatten()[0].item()
            raise ValueError(f"{name}: Bernoulli visible units need values in {{0, 1}}, got {bad!r}")
        return v.to(self.top.weight)

    # ------------------------------------------------------------------ conditionals
    def recognition_logits(self, l: int, x: Tensor) -> Tensor:
        r"""The logits of :math:`q(h_{l+1} \mid h_l = x)` of directed layer ``l`` (from 0)."""
        return x @ self.recognition_weights[l] + self.recognition_biases[l]

    def generative_logits(self, l: int, h: Tensor) -> Tensor:
        r"""The logits of :math:`p(h_l \mid h_{l+1} = h)` of directed layer ``l`` (from 0)."""
        return h @ self.generative_weights[l].T + self.generative_biases[l]

    @torch.no_grad()
    def up(self, v: Any) -> list[Tensor]:
        r"""Binary states drawn up the recognition model, :math:`h_l \sim q(h_l \mid h_{l-1})` from :math:`h_0 = v`:
        ``[v, h_1, ..., h_{L-1}]`` (the top RBM's visible layer last).

        :raises ValueError: for bad ``v``.
        """
        states = [self.check_data(v, "v")]
        for l in range(self.num_directed):
            states.append(bernoulli(torch.sigmoid(self.recognition_logits(l, states[-1]))))
        return states

    @torch.no_grad()
    def down(self, top_states: Tensor) -> list[Tensor]:
        r"""Binary states drawn down the generative model from states of the top RBM's visible layer
        :math:`h_{L-1}`: ``[v, h_1, ..., h_{L-1}]``."""
        states = [top_states]
        for l in reversed(range(self.num_directed)):
            states.insert(0, bernoulli(torch.sigmoid(self.generative_logits(l, states[0]))))
        return states

    @torch.no_grad()
    def sample(self, num_samples: int, steps: int = 1000, *, mean_visible: bool = False) -> Tensor:
        r"""Draw :math:`v` by ``steps`` block-Gibbs sweeps in the top RBM (from its factorial model), then one
        ancestral pass down the generative weights.

        :param mean_visible: return :math:`p(v_i = 1 \mid h_1)` of the last step instead of a binary draw.
        :returns: shape ``(num_samples, n_visible)``.
        """
        _check_int("num_samples", num_samples)
        _check_int("steps", steps, 0)
        h = self.top.gibbs(self.top.random_state(num_samples), steps=steps)
        for l in reversed(range(1, self.num_directed)):
            h = bernoulli(torch.sigmoid(self.generative_logits(l, h)))
        probs = torch.sigmoid(self.generative_logits(0, h))
        return probs if mean_visible else bernoulli(probs)

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def _deltas(self, v: Tensor, cd_steps: int) -> list[Tensor]:
        """The up-down updates of one minibatch (ascent directions, averaged over it), in the order of
        ``_parameters_in_order``."""
        n = v.shape[0]
        wake = [v]
        for l in range(self.num_directed):
            wake.append(bernoulli(torch.sigmoid(self.recognition_logits(l, wake[-1]))))
        gen = []
        for l in range(self.num_directed):  # reconstruct each layer from the one above
            err = wake[l] - torch.sigmoid(self.generative_logits(l, wake[l + 1]))
            gen += [err.T @ wake[l + 1] / n, err.mean(0)]
        top, x = self.top, wake[-1]
        p = top.params()
        pos_h = torch.sigmoid(top.hidden_preactivation(x, params=p))
        neg_x = top.gibbs(x, steps=cd_steps, params=p)
        neg_h = torch.sigmoid(top.hidden_preactivation(neg_x, params=p))
        top_deltas = [(x.T @ pos_h - neg_x.T @ neg_h) / n, (x - neg_x).mean(0), (pos_h - neg_h).mean(0)]
        sleep = self.down(neg_x)
        rec = []
        for l in range(self.num_directed):  # predict each layer from the one below
            err = sleep[l + 1] - torch.sigmoid(self.recognition_logits(l, sleep[l]))
            rec += [sleep[l].T @ err / n, err.mean(0)]
        return gen + top_deltas + rec

    def _parameters_in_order(self) -> list[Tensor]:
        gen = [x for pair in zip(self.generative_weights, self.generative_biases) for x in pair]
        rec = [x for pair in zip(self.recognition_weights, self.recognition_biases) for x in pair]
        return gen + [self.top.weight, self.top.visible_bias, self.top.hidden_bias] + rec

    def fit(
        self,
        data: Any,
        epochs: int = 10,
        *,
        batch_size: int = 100,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        cd_steps: int = 3,
        top_lr: float | None = None,
    ) -> DBNUpDown:
        r"""Up-down fine-tuning: ``epochs`` passes over ``data`` in shuffled minibatches, one up-down update each
        (module notes), applied by SGD with ``momentum`` (the ascent directions of the delta rules and of CD stand in
        for negative gradients). The top RBM's ``log_z`` is reset to ``None``, as training makes it stale.

        :param data: binary tensor or NumPy array of shape ``(N, n_visible)``.
        :param epochs: passes over the data.
        :param batch_size: the minibatch size.
        :param lr: the learning rate of the directed layers.
        :param momentum: SGD momentum, in :math:`[0, 1)`.
        :param weight_decay: L2 penalty on all parameters.
        :param cd_steps: Gibbs sweeps of the top RBM's CD negative phase.
        :param top_lr: the learning rate of the top RBM (default ``lr``).
        :returns: the model itself.
        :raises ValueError: for bad data or arguments (then nothing changes).
        """
        x = self.check_data(data, "data")
        if x.dim() != 2 or x.shape[0] < 1:
            raise ValueError(f"data: expected shape (N, n_visible) with N >= 1, got {tuple(x.shape)}")
        _check_int("epochs", epochs)
        _check_int("batch_size", batch_size)
        _check_int("cd_steps", cd_steps)
        lr = _check_rate("lr", lr)
        top_lr = lr if top_lr is None else _check_rate("top_lr", top_lr)
        momentum = _check_rate("momentum", momentum, below_one=True)
        weight_decay = _check_rate("weight_decay", weight_decay)
        params = self._parameters_in_order()
        top_ids = {id(self.top.weight), id(self.top.visible_bias), id(self.top.hidden_bias)}
        rates = [top_lr if id(q) in top_ids else lr for q in params]
        velocity = [torch.zeros_like(q) for q in params]
        self.top.log_z = None
        with torch.no_grad():
            for _ in range(epochs):
                order = torch.randperm(x.shape[0], device=x.device)
                for start in range(0, x.shape[0], batch_size):
                    deltas = self._deltas(x[order[start : start + batch_size]], cd_steps)
                    for q, d, vel, rate in zip(params, deltas, velocity, rates):
                        if weight_decay:
                            d = d - weight_decay * q
                        vel.mul_(momentum).add_(d, alpha=rate)
                        q.add_(vel)
        return self

    # ------------------------------------------------------------------ evaluation
    def _log_z_top(self, log_z_top: float | Tensor | AISResult | None) -> float:
        if log_z_top is None:
            log_z_top = self.top.log_z
        if log_z_top is None:
            raise ValueError(
                "the top RBM has no log partition function estimate: call exact_log_partition or "
                "ais_log_partition on model.top, or pass log_z_top"
            )
        return float(log_z_top)

    @torch.no_grad()
    def log_likelihood_bound(
        self,
        v: Any,
        num_samples: int = 1,
        log_z_top: float | Tensor | AISResult | None = None,
        *,
        importance_weighted: bool = False,
    ) -> Tensor:
        r"""A Monte Carlo estimate of the variational lower bound on :math:`\log p(v)` of the module's notes, with
        :math:`q` the recognition model (drawn ``num_samples`` times per datum) and :math:`p` the generative layers
        and the top RBM. With ``importance_weighted``, the importance-weighted bound (Burda et al. 2016) instead.
        Right after construction it is the bound of :meth:`DBN.log_likelihood_bound
        <dgm_ppl.energy.DBN.log_likelihood_bound>` of the DBN it was built from.

        :param v: binary tensor of shape ``(..., n_visible)``.
        :param log_z_top: :math:`\log Z_L` of the top RBM; default ``top.log_z`` (set by
            :func:`~dgm_ppl.energy.exact_log_partition` or :func:`~dgm_ppl.energy.ais_log_partition`).
        :returns: shape ``v.shape[:-1]``.
        :raises ValueError: for bad ``v`` or ``num_samples``, or without an estimate of :math:`\log Z_L`.
        """
        _check_int("num_samples", num_samples)
        log_z = self._log_z_top(log_z_top)
        x = self.check_data(v, "v")
        x = x.expand(num_samples, *x.shape)
        log_w = 0.0
        for l in range(self.num_directed):
            logits = self.recognition_logits(l, x)
            h = bernoulli(torch.sigmoid(logits))
            log_w = log_w + _bernoulli_log_prob(x, self.generative_logits(l, h)) - _bernoulli_log_prob(h, logits)
            x = h
        log_w = log_w + self.top.unnormalized_log_prob(x)
        bound = torch.logsumexp(log_w, 0) - math.log(num_samples) if importance_weighted else log_w.mean(0)
        return bound - log_z

    @torch.no_grad()
    def exact_log_likelihood(
        self, v: Any, log_z_top: float | Tensor | AISResult | None = None, *, max_units: int = 16
    ) -> Tensor:
        r"""The exact :math:`\log p(v)` of the generative model, by enumerating the states of every directed hidden
        layer :math:`h_1, \dots, h_{L-1}` (one layer at a time, from the top RBM's marginal
        :math:`p_L(h_{L-1}) = e^{-F_L(h_{L-1})} / Z_L` down). Tiny networks only.

        :param v: binary tensor of shape ``(..., n_visible)``.
        :param log_z_top: :math:`\log Z_L` as for :meth:`log_likelihood_bound` (use the exact one).
        :param max_units: the largest directed hidden layer to enumerate (:math:`2^n` states).
        :returns: shape ``v.shape[:-1]``.
        :raises ValueError: for bad ``v``, a layer too large, or without :math:`\log Z_L`.
        """
        widths = self.layer_sizes[1:-1]
        if max(widths) > max_units:
            raise ValueError(
                f"exact_log_likelihood would enumerate 2^{max(widths)} states of a hidden layer; "
                f"the limit is max_units={max_units}"
            )
        log_z = self._log_z_top(log_z_top)
        x = self.check_data(v, "v")
        like = self.top.weight
        states = binary_states(widths[-1], 0, 2 ** widths[-1], like)
        log_p = self.top.unnormalized_log_prob(states) - log_z  # log p(h_{L-1}) over its states
        for l in reversed(range(1, self.num_directed)):  # log p(h_l) from log p(h_{l+1})
            below = binary_states(widths[l - 1], 0, 2 ** widths[l - 1], like)
            parts = []
            for start in range(0, len(below), _CHUNK):
                chunk = below[start : start + _CHUNK]
                cond = _bernoulli_log_prob(chunk[:, None], self.generative_logits(l, states)[None])
                parts.append(torch.logsumexp(cond + log_p, -1))
            log_p, states = torch.cat(parts), below
        cond = _bernoulli_log_prob(x[..., None, :], self.generative_logits(0, states))  # (..., 2^n1)
        return torch.logsumexp(cond + log_p, -1)


def up_down(dbn: DBN, data: Any, epochs: int = 10, **kwargs: Any) -> DBNUpDown:
    r"""Up-down fine-tuning of a (greedily pretrained) DBN: ``DBNUpDown(dbn).fit(data, epochs, **kwargs)``. The DBN
    itself is left unchanged.

    :param dbn: the DBN, with at least two RBMs.
    :param data: binary tensor or NumPy array of shape ``(N, n_visible)``.
    :param kwargs: the keywords of :meth:`DBNUpDown.fit` and ``name``.
    :returns: the fine-tuned :class:`DBNUpDown`.
    :raises ValueError: for a bad DBN, data or arguments.
    """
    name = kwargs.pop("name", None)
    return DBNUpDown(dbn, name=name).fit(data, epochs, **kwargs)
