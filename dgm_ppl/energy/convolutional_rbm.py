r"""The convolutional RBM with probabilistic max pooling (Lee, Grosse, Ranganath & Ng 2009).

A binary image :math:`v` (one channel, ``H x W``) is coupled to ``K`` binary *detection* layers :math:`h^k`, each of
size ``(H - r + 1) x (W - r + 1)`` (a "valid" convolution with the ``r x r`` filter :math:`W^k`). The detection layers
are cut into disjoint ``C x C`` pooling blocks :math:`B_\alpha`; within a block at most one detection unit is on
(probabilistic max pooling), and the pooling unit :math:`p^k_\alpha` is the OR of its block. The energy is

.. math::

    E(v, h) = -\sum_k \sum_{ij} h^k_{ij} \big(W^k \star v\big)_{ij} - \sum_k b_k \sum_{ij} h^k_{ij}
        - c \sum_{ij} v_{ij}, \qquad \sum_{(i,j) \in B_\alpha} h^k_{ij} \le 1,

where :math:`(W^k \star v)_{ij} = \sum_{a,b} W^k_{ab} v_{i+a, j+b}` (a cross-correlation, PyTorch's ``conv2d``),
:math:`b_k` is the bias of the ``k``-th detection layer and :math:`c` the (shared) visible bias. Each block is a
softmax over :math:`C^2 + 1` states (all off, or one unit on), so the hidden units sum out block by block:

.. math::

    -F(v) = c \sum_{ij} v_{ij} + \sum_k \sum_\alpha \log\Big(1 + \sum_{(i,j)\in B_\alpha} e^{I^k_{ij}}\Big),
    \qquad I^k = W^k \star v + b_k,

and :math:`p(h^k_{ij} = 1 \mid v) = e^{I^k_{ij}} / (1 + \sum_{(i',j') \in B_\alpha} e^{I^k_{i'j'}})`,
:math:`p(p^k_\alpha = 1 \mid v) = 1 - 1 / (1 + \sum_{B_\alpha} e^{I^k})`. Given the hidden units the pixels are
independent, :math:`p(v_{ij} = 1 \mid h) = \sigma\big(c + \sum_k (W^k * h^k)_{ij}\big)` (a "full" convolution,
PyTorch's ``conv_transpose2d``). The model is therefore a :class:`~dgm_ppl.energy.protocol.FreeEnergyModel` whose
states are the flattened images (``n_visible = H * W``): :class:`~dgm_ppl.energy.PersistentChains`,
:class:`~dgm_ppl.energy.EnergyBasedDistribution`, :func:`~dgm_ppl.energy.exact_log_partition` (which enumerates the
pixels of tiny images) and :func:`~dgm_ppl.energy.ais_log_partition` take it unchanged. Its persistent chains
(:class:`ConvolutionalRBMChains`) draw their hidden states block by block, never as independent Bernoullis.

For annealing (AIS, parallel tempering) the model defines the geometric path

.. math::

    \log p^*_\beta(v) = (1-\beta)\, a^\top v + \beta\, c \sum_{ij} v_{ij}
        + \sum_k \sum_\alpha \log\Big(1 + \sum_{B_\alpha} e^{\beta I^k}\Big)

from the base model at :math:`\beta = 0` (pixels factorial with logits :math:`a`, each block uniform over its
:math:`C^2 + 1` states; :math:`\log Z_0 = \sum_{ij} \operatorname{softplus}(a_{ij}) + n_{\text{pool}} \log(C^2 + 1)`).

Sparsity. Lee et al. keep the detection units sparse with the penalty
:math:`\lambda \sum_k \big(\rho - \frac{1}{N |h^k|} \sum_{n,ij} p(h^k_{ij} = 1 \mid v_n)\big)^2` for a target
:math:`\rho` (e.g. 0.02), whose gradient they apply to the hidden biases only; :meth:`ConvolutionalRBM.sparsity_penalty`
returns it, to be added to a Pyro model as ``pyro.factor("sparsity", -lam * crbm.sparsity_penalty(batch))``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import Tensor, nn

from ._ops import Beta, as_tensor_like, check_binary, check_count, full_precision, require_binary
from .chains import NegativePhase, PersistentChains
from .distribution import EnergyBasedDistribution
from .protocol import Enumeration

__all__ = ["ConvolutionalRBM", "ConvolutionalRBMChains", "ConvRBMParams"]

_counter = itertools.count()


class ConvRBMParams(NamedTuple):
    """The parameters of a :class:`ConvolutionalRBM`: ``weight`` (the filters, ``(K, r, r)``), ``hidden_bias``
    (one bias per detection layer, ``(K,)``) and ``visible_bias`` (the shared visible bias :math:`c`, a scalar);
    ``dense`` is the convolution as a dense ``(n_visible, n_hidden)`` matrix built from ``weight`` (differentiable),
    or ``None`` when the model convolves (see the ``dense`` option of :class:`ConvolutionalRBM`)."""

    weight: Tensor
    hidden_bias: Tensor
    visible_bias: Tensor
    dense: Tensor | None = None


def _is_one(beta: Beta) -> bool:
    return isinstance(beta, float) and beta == 1.0


def _one_hot_draw(weights: Tensor, total: Tensor) -> Tensor:
    """One draw per block from the unnormalized weights ``weights`` (..., C^2) of its units, ``total`` (..., 1) being
    their sum plus the weight of the all-off state: the one-hot code of the unit on (all zeros when the block is
    off), dtype of ``weights``."""
    u = torch.rand_like(total).mul_(total)
    on = (u < weights.cumsum(-1)).to(weights.dtype)  # monotone in the last dimension: 0 ... 0 1 ... 1
    return torch.cat([on[..., :1], on[..., 1:] - on[..., :-1]], -1)


def _block_weights(x: Tensor) -> tuple[Tensor, Tensor]:
    r"""The weights :math:`e^{x - m}` of the units of each block, from their inputs ``x`` (..., C^2), and their sum
    plus the all-off state's :math:`e^{-m}`, with :math:`m = \max(0, \max x)` (no overflow)."""
    m = x.detach().amax(-1, keepdim=True).clamp_(min=0)  # cancels in every ratio: no gradient needed
    e = (x - m).exp_()
    return e, e.sum(-1, keepdim=True).add_((-m).exp_())


class ConvolutionalRBMChains(PersistentChains):
    """The persistent chains of a :class:`ConvolutionalRBM` (its ``chain_class``; ``PersistentChains(crbm, ...)``
    builds this class): :class:`~dgm_ppl.energy.PersistentChains` whose hidden sample after each negative phase is
    drawn block by block from the hidden probabilities (at most one detection unit on per pooling block), not as
    independent Bernoullis."""

    @torch.no_grad()
    def after_negative_phase(self, hidden_input: Tensor | None = None, *, probs: Tensor | None = None) -> None:
        model = self.model
        if probs is None:
            self._set_buffer("hidden", model.sample_hidden_from_input(hidden_input))
        else:
            self._set_buffer("hidden", model.draw_hidden(probs))
        self._set_hidden_current(True)


class ConvolutionalRBM(PyroModule):
    r"""A convolutional RBM with probabilistic max pooling on binary ``H x W`` images; see the module's notes for the
    math. A :class:`~dgm_ppl.energy.protocol.FreeEnergyModel` on the flattened images (``n_visible = H * W``).

    Parameters: ``weight`` (the ``K`` filters, ``(K, r, r)``), ``hidden_bias`` (``(K,)``, one per detection layer)
    and ``visible_bias`` (the shared visible bias, a scalar). Hidden states (the chains' ``hidden``,
    :meth:`sample_hidden`) are vectors of ``n_hidden = K * (H - r + 1) * (W - r + 1)`` units in *block order*
    ``(k, block row, block column, row in block, column in block)``, so that each pooling block is contiguous;
    :meth:`detection_layers` turns them into layers ``(..., K, H', W')`` and :meth:`hidden_vector` back. The methods
    that take hidden states accept either form.

    * ``crbm.distribution(chains)`` (also ``crbm(chains)``): the Pyro distribution of flattened images whose
      ``log_prob`` carries the SML gradient, for ``pyro.sample("x", crbm.distribution(chains), obs=batch)`` with
      ``batch`` of shape ``(B, H * W)`` (:meth:`check_data` flattens ``(B, H, W)`` images).
    * :meth:`free_energy`, :meth:`hidden_probs` (as layers ``(..., K, H', W')``), :meth:`pooling_probs`
      (``(..., K, P_h, P_w)``) accept images ``(..., H, W)`` or flattened states ``(..., H * W)``;
      :meth:`visible_probs` takes hidden states.
    * :meth:`sparsity_penalty`: Lee et al.'s sparsity regularizer.

    :param image_shape: ``(H, W)`` of the visible images.
    :param n_filters: the number ``K`` of filters (detection layers).
    :param filter_size: the side ``r`` of the square filters.
    :param pool_size: the side ``C`` of the square pooling blocks; it must divide both sides of the detection layers.
    :param init_std: standard deviation of the initial filters.
    :param dense: compute the convolutions as products with a dense ``(n_visible, n_hidden)`` matrix gathered from
        the filters (much faster on a CPU for small images, where ``conv2d`` on many tiny images is slow) instead of
        ``conv2d`` / ``conv_transpose2d``; default: dense when the matrix has at most ``2**22`` entries. Both give
        the same numbers.
    :param name: the prefix of the parameters in Pyro's param store (unique by default).
    :raises ValueError: for sizes that are not positive ints, filters larger than the image, or pooling blocks
        that do not tile the detection layers.
    """

    centered = False
    binary_visible = True
    support = constraints.independent(constraints.boolean, 1)
    #: the class of this model's persistent chains, built by ``PersistentChains(crbm, ...)``
    chain_class: type = ConvolutionalRBMChains
    pending_hidden_means = None

    def __init__(
        self,
        image_shape: tuple[int, int],
        n_filters: int,
        filter_size: int,
        pool_size: int = 2,
        *,
        init_std: float = 0.01,
        dense: bool | None = None,
        name: str | None = None,
    ):
        if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2:
            raise ValueError(f"image_shape must be a pair (H, W), got {image_shape!r}")
        height, width = image_shape
        check_count("image height", height, 1)
        check_count("image width", width, 1)
        check_count("n_filters", n_filters, 1)
        check_count("filter_size", filter_size, 1)
        check_count("pool_size", pool_size, 1)
        if filter_size > min(height, width):
            raise ValueError(f"filter_size={filter_size} exceeds the image shape {(height, width)}")
        dh, dw = height - filter_size + 1, width - filter_size + 1
        if dh % pool_size or dw % pool_size:
            raise ValueError(
                f"pool_size={pool_size} must divide the detection layers' shape {(dh, dw)} "
                f"(image {(height, width)}, filter_size={filter_size})"
            )
        super().__init__(name if name is not None else f"ConvolutionalRBM_{next(_counter)}")
        self.image_shape = (height, width)
        self.n_filters, self.filter_size, self.pool_size = n_filters, filter_size, pool_size
        self.detection_shape = (dh, dw)
        self.pooling_shape = (dh // pool_size, dw // pool_size)
        self.n_visible = height * width
        self.n_hidden = n_filters * dh * dw
        self.n_pools = n_filters * self.pooling_shape[0] * self.pooling_shape[1]
        self.weight = nn.Parameter(torch.randn(n_filters, filter_size, filter_size) * init_std)
        self.hidden_bias = nn.Parameter(torch.zeros(n_filters))
        self.visible_bias = nn.Parameter(torch.zeros(()))
        self.log_z: float | None = None
        self.dense = self.n_visible * self.n_hidden <= 2**22 if dense is None else bool(dense)
        self._dense_index: dict[torch.device, Tensor] = {}

    def get_extra_state(self) -> dict:
        return {"log_z": self.log_z}

    def set_extra_state(self, state: dict) -> None:
        self.log_z = state.get("log_z")

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, n_filters={self.n_filters}, filter_size={self.filter_size}, "
            f"pool_size={self.pool_size}"
        )

    # ------------------------------------------------------------------ parameters and data
    @full_precision
    def params(self) -> ConvRBMParams:
        """The parameters (:class:`ConvRBMParams`), with the dense convolution matrix when the model uses one."""
        w = self.weight
        return ConvRBMParams(w, self.hidden_bias, self.visible_bias, self.dense_weight() if self.dense else None)

    def dense_weight(self) -> Tensor:
        r"""The convolution as a dense matrix :math:`M` of shape ``(n_visible, n_hidden)``, columns in block order:
        :math:`(v^\top M)_{(k,i,j)} = (W^k \star v)_{ij}`. Gathered from the filters, so differentiable in them."""
        w = self.weight
        index = self._dense_index.get(w.device)
        if index is None:
            k, r = self.n_filters, self.filter_size
            (height, width), (dh, dw) = self.image_shape, self.detection_shape
            index = torch.full((height, width, k, dh, dw), k * r * r, dtype=torch.long)
            cols = torch.arange(dw)
            for f, a, b in itertools.product(range(k), range(r), range(r)):
                for i in range(dh):
                    index[i + a, b + cols, f, i, cols] = f * r * r + a * r + b
            index = self.hidden_vector(index.reshape(self.n_visible, *self._layer_shape)).to(w.device)
            self._dense_index[w.device] = index
        return torch.cat([w.flatten(), w.new_zeros(1)])[index]

    def to_tensor(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through, NumPy arrays and lists are converted to the parameters' dtype
        and device. No check of the values.

        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.weight, name)

    def _states(self, data: Any, name: str) -> Tensor:
        """``data`` as flattened states ``(..., n_visible)``: images ``(..., H, W)`` are flattened."""
        v = self.to_tensor(data, name)
        if v.shape[-1:] != (self.n_visible,) and v.dim() >= 2 and tuple(v.shape[-2:]) == self.image_shape:
            v = v.flatten(-2)
        return v

    def check_data(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as flattened visible states ``(..., H * W)`` (images ``(..., H, W)`` are flattened; NumPy
        arrays converted), after checking that it holds binary values.

        :param name: the argument, as error messages name it.
        :raises ValueError: for the wrong shape, non-binary or non-finite values.
        """
        v = self._states(data, name)
        if v.shape[-1:] != (self.n_visible,):
            raise ValueError(
                f"{name}: expected images of shape (..., {self.image_shape[0]}, {self.image_shape[1]}) or states "
                f"of shape (..., n_visible={self.n_visible}), got shape {tuple(v.shape)}"
            )
        require_binary(v, name, "the pixels of a ConvolutionalRBM")
        return v

    def _hidden(self, h: Any, name: str) -> Tensor:
        """``h`` as hidden vectors ``(..., n_hidden)`` in block order: detection layers are converted."""
        h = self.to_tensor(h, name)
        if h.shape[-1:] != (self.n_hidden,) and h.dim() >= 3 and tuple(h.shape[-3:]) == self._layer_shape:
            h = self.hidden_vector(h)
        return h

    def check_hidden(self, h: Any, name: str = "h") -> Tensor:
        """``h`` as hidden vectors ``(..., n_hidden)`` in block order (detection layers ``(..., K, H', W')`` are
        converted), after checking that they are binary with at most one unit on per pooling block.

        :raises ValueError: for the wrong shape, non-binary values or a block with more than one unit on.
        """
        h = self._hidden(h, name)
        layers = self._layer_shape
        if h.shape[-1:] != (self.n_hidden,):
            raise ValueError(
                f"{name}: expected hidden states of shape (..., n_hidden={self.n_hidden}) or (..., {layers}), "
                f"got shape {tuple(h.shape)}"
            )
        if not check_binary(h):
            raise ValueError(f"{name}: hidden states must be binary (values in {{0, 1}}, finite)")
        if h.numel() and bool((self._blocks(h).sum(-1) > 1).any()):
            raise ValueError(f"{name}: more than one detection unit is on in a pooling block")
        return h

    def _default_base(self, base: Tensor | None, like: Tensor) -> Tensor:
        if base is None:
            return torch.zeros(self.n_visible, dtype=like.dtype, device=like.device)
        a = self.to_tensor(base, "base").to(like)
        if a.shape != (self.n_visible,):
            raise ValueError(f"base must have shape {(self.n_visible,)}, got {tuple(a.shape)}")
        return a

    # ------------------------------------------------------------------ layout
    @property
    def _layer_shape(self) -> tuple[int, int, int]:
        return (self.n_filters, *self.detection_shape)

    def detection_layers(self, h: Tensor) -> Tensor:
        """Hidden vectors ``batch + (n_hidden,)`` (block order) as detection layers ``batch + (K, H', W')``."""
        k, c = self.n_filters, self.pool_size
        ph, pw = self.pooling_shape
        batch = h.shape[:-1]
        n = len(batch)
        x = h.reshape(*batch, k, ph, pw, c, c).permute(*range(n), n, n + 1, n + 3, n + 2, n + 4)
        return x.reshape(*batch, *self._layer_shape)

    def hidden_vector(self, layers: Tensor) -> Tensor:
        """Detection layers ``batch + (K, H', W')`` as hidden vectors ``batch + (n_hidden,)`` in block order (the
        inverse of :meth:`detection_layers`)."""
        k, c = self.n_filters, self.pool_size
        ph, pw = self.pooling_shape
        batch = layers.shape[:-3]
        n = len(batch)
        x = layers.reshape(*batch, k, ph, c, pw, c).permute(*range(n), n, n + 1, n + 3, n + 2, n + 4)
        return x.reshape(*batch, self.n_hidden)

    def _blocks(self, h: Tensor) -> Tensor:
        """Hidden vectors ``batch + (n_hidden,)`` as pooling blocks ``batch + (K, P_h, P_w, C * C)`` (a view)."""
        return h.reshape(*h.shape[:-1], self.n_filters, *self.pooling_shape, self.pool_size**2)

    def _unblocks(self, x: Tensor) -> Tensor:
        """Pooling blocks ``batch + (K, P_h, P_w, C * C)`` as hidden vectors ``batch + (n_hidden,)``."""
        return x.reshape(*x.shape[:-4], self.n_hidden)

    def _hidden_input(self, p: ConvRBMParams, v: Tensor) -> Tensor:
        r"""The detection inputs :math:`I^k = W^k \star v + b_k` of states ``batch + (n_visible,)`` as pooling
        blocks ``batch + (K, P_h, P_w, C * C)``."""
        batch = v.shape[:-1]
        if p.dense is not None:
            return self._blocks(v @ p.dense) + p.hidden_bias[:, None, None, None]
        images = v.reshape(-1, 1, *self.image_shape)
        x = F.conv2d(images, p.weight[:, None], p.hidden_bias)  # (N, K, H', W')
        return self._blocks(self.hidden_vector(x.reshape(*batch, *self._layer_shape)))

    def _visible_input(self, p: ConvRBMParams, h: Tensor) -> Tensor:
        r""":math:`c + \sum_k (W^k * h^k)` of hidden states ``batch + (n_hidden,)``, shape ``batch + (n_visible,)``."""
        if p.dense is not None:
            return h @ p.dense.T + p.visible_bias
        batch = h.shape[:-1]
        layers = self.detection_layers(h).reshape(-1, *self._layer_shape)
        x = F.conv_transpose2d(layers, p.weight[:, None])  # (N, 1, H, W)
        return x.reshape(*batch, self.n_visible) + p.visible_bias

    @staticmethod
    def _block_beta(beta: Beta) -> Beta:
        """``beta`` (a float, or a tensor ``batch + (1,)``) broadcast against blocks ``batch + (K, P_h, P_w, C*C)``."""
        return beta if isinstance(beta, float) else beta[..., None, None, None]

    def _neg_free(self, p: ConvRBMParams, v: Tensor, x: Tensor) -> Tensor:
        return p.visible_bias * v.sum(-1) + F.softplus(torch.logsumexp(x, -1)).sum((-3, -2, -1))

    def _tempered(self, p: ConvRBMParams, v: Tensor, x: Tensor, beta: Beta, a: Tensor) -> Tensor:
        if _is_one(beta):
            return self._neg_free(p, v, x)
        beta_v = beta if isinstance(beta, float) else beta.squeeze(-1)
        pooled = F.softplus(torch.logsumexp(self._block_beta(beta) * x, -1)).sum((-3, -2, -1))
        return (1 - beta_v) * (v @ a) + beta_v * p.visible_bias * v.sum(-1) + pooled

    @staticmethod
    def _block_probs(x: Tensor) -> Tensor:
        """The probabilities of the units of each block being on, from their inputs ``x`` (..., C*C)."""
        e, total = _block_weights(x)
        return e / total

    # ------------------------------------------------------------------ energy and conditionals
    def energy(self, states: Tensor | Sequence[Tensor], h: Tensor | None = None) -> Tensor:
        r"""The energy :math:`E(v, h)` of visible states and hidden states, shape ``batch``; ``+inf`` where a pooling
        block has more than one detection unit on (probability zero).

        :param states: visible states ``(..., n_visible)`` or images ``(..., H, W)``, or the pair ``[v, h]`` when
            ``h`` is not given.
        :param h: hidden vectors ``(..., n_hidden)`` (block order) or detection layers ``(..., K, H', W')``.
        """
        if h is None:
            if len(states) != 2:
                raise ValueError(f"expected the layer states [v, h], got {len(states)} states")
            states, h = states
        p = self.params()
        v = self._states(states, "v").to(p.weight)
        h = self._hidden(h, "h").to(p.weight)
        x = self._unblocks(self._hidden_input(p, v))  # includes the hidden biases
        e = -((x * h).sum(-1) + p.visible_bias * v.sum(-1))
        violated = self._blocks(h).sum(-1).gt(1).any(-1).any(-1).any(-1)
        return torch.where(violated, torch.full_like(e, math.inf), e)

    def free_energy(self, v: Any) -> Tensor:
        r"""The free energy :math:`F(v) = -\log\sum_h e^{-E(v, h)}` of images or flattened states (plain
        autograd); no check of the values."""
        p = self.params()
        v = self._states(v, "v").to(p.weight)
        return -self._neg_free(p, v, self._hidden_input(p, v))

    def unnormalized_log_prob(self, v: Tensor, *, params: ConvRBMParams | None = None) -> Tensor:
        r"""The unnormalized :math:`\log p^*(v) = -F(v)`; no check of the values.

        :param params: the parameters (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        v = self._states(v, "v").to(p.weight)
        return self._neg_free(p, v, self._hidden_input(p, v))

    @torch.no_grad()
    def sample_hidden_from_input(self, hidden_input: Tensor) -> Tensor:
        r"""Draw :math:`h \sim p(h \mid v)` from the detection inputs :math:`I` of ``v`` (hidden vectors
        ``batch + (n_hidden,)`` in block order, biases included): one categorical draw per pooling block."""
        return self._draw_hidden_from_input(self._blocks(hidden_input))

    def hidden_probs(self, v: Any) -> Tensor:
        r"""The probabilities :math:`p(h^k_{ij} = 1 \mid v)` of the detection units (a softmax per pooling block
        with the all-off state) as detection layers, shape ``batch + (K, H', W')``; differentiable in the parameters.

        :param v: images ``(..., H, W)`` or states ``(..., n_visible)``.
        :raises ValueError: for a bad shape or non-binary values.
        """
        p = self.params()
        v = self.check_data(v, "v").to(p.weight)
        return self.detection_layers(self._unblocks(self._block_probs(self._hidden_input(p, v))))

    def pooling_probs(self, v: Any) -> Tensor:
        r"""The probabilities :math:`p(p^k_\alpha = 1 \mid v) = 1 - 1/(1 + \sum_{B_\alpha} e^{I^k})` of the pooling
        units, shape ``batch + (K, P_h, P_w)``; differentiable in the parameters.

        :raises ValueError: for a bad shape or non-binary values.
        """
        p = self.params()
        v = self.check_data(v, "v").to(p.weight)
        return torch.sigmoid(torch.logsumexp(self._hidden_input(p, v), -1))

    def visible_probs(self, h: Any) -> Tensor:
        r"""The probabilities :math:`p(v_{ij} = 1 \mid h) = \sigma(c + \sum_k (W^k * h^k)_{ij})`, shape
        ``batch + (n_visible,)``.

        :param h: hidden vectors ``(..., n_hidden)`` (block order) or detection layers ``(..., K, H', W')``.
        :raises ValueError: for a bad shape, non-binary values or a block with more than one unit on.
        """
        p = self.params()
        return torch.sigmoid(self._visible_input(p, self.check_hidden(h, "h").to(p.weight)))

    def sparsity_penalty(self, v: Any, target: float = 0.02, *, biases_only: bool = True) -> Tensor:
        r"""Lee et al.'s sparsity regularizer :math:`\sum_k \big(\rho - \bar q_k\big)^2`, where :math:`\bar q_k` is
        the mean of :math:`p(h^k_{ij} = 1 \mid v_n)` over the batch and the ``k``-th detection layer. Add it to a Pyro
        model as ``pyro.factor("sparsity", -lam * crbm.sparsity_penalty(batch))``.

        :param v: a batch of images ``(B, H, W)`` or states ``(B, n_visible)``.
        :param target: the target activation :math:`\rho` in (0, 1).
        :param biases_only: as in the paper, let the penalty's gradient reach the hidden biases only (the filters
            are detached).
        :raises ValueError: for bad data or a target outside (0, 1).
        """
        if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target < 1:
            raise ValueError(f"target must be a number in (0, 1), got {target!r}")
        p = self.params()
        if biases_only:
            p = ConvRBMParams(p.weight.detach(), p.hidden_bias, p.visible_bias.detach(), None)
        v = self.check_data(v, "v").to(p.weight).reshape(-1, self.n_visible)
        q = self._block_probs(self._hidden_input(p, v))  # (B, K, P_h, P_w, C*C)
        mean = q.transpose(0, 1).reshape(self.n_filters, -1).mean(-1)
        return ((target - mean) ** 2).sum()

    # ------------------------------------------------------------------ training
    def sml_terms(
        self, v: Tensor, num_data: int, *, params: ConvRBMParams | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""The SML surrogate of the rows of 2-D ``v`` (``num_data`` data rows, then chain states): :math:`-F` of the
        data rows with the gradient :math:`\nabla(-F(v_n)) - \frac1C\sum_c \nabla(-F(\tilde v_c))`; the chains'
        mean :math:`-F` and the detection probabilities :math:`p(h = 1 \mid v)` of all rows, ``(rows, n_hidden)`` in
        block order (both without gradient). Plain autograd.

        :param params: the parameters (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        x = self._hidden_input(p, v)
        neg_free = self._neg_free(p, v, x)
        s = neg_free[num_data:].mean()
        probs = self._unblocks(self._block_probs(x.detach()))
        return neg_free[:num_data] - (s - s.detach()), s.detach(), probs

    def tempered_log_prob(
        self, v: Tensor, beta: Beta = 1.0, base: Tensor | None = None, *, params: ConvRBMParams | None = None
    ) -> Tensor:
        r"""The unnormalized :math:`\log p^*_\beta(v)` on the path from the base model ``base`` (pixel logits,
        default 0) at ``beta=0`` to the model at ``beta=1`` (module notes).

        :param beta: a float, or a tensor ``(T, 1, 1)`` for states ``(T, C, n_visible)``.
        :param params: the parameters (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        v = self._states(v, "v").to(p.weight)
        return self._tempered(p, v, self._hidden_input(p, v), beta, self._default_base(base, p.weight))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def draw_hidden(self, probs: Tensor) -> Tensor:
        """Hidden vectors (block order) drawn from detection probabilities ``probs`` (hidden vectors
        ``batch + (n_hidden,)`` in block order, as ``sml_terms`` returns them, or detection layers
        ``batch + (K, H', W')``, as :meth:`hidden_probs` does): one categorical draw per pooling block over its units
        and the all-off state (probability ``1 - sum``)."""
        blocks = self._blocks(self._hidden(probs, "probs"))
        total = torch.ones_like(blocks[..., :1])
        return self._unblocks(_one_hot_draw(blocks, total))

    def _draw_hidden_from_input(self, x: Tensor, beta: Beta = 1.0) -> Tensor:
        """Hidden vectors drawn from detection inputs as pooling blocks ``x`` at inverse temperature ``beta``."""
        x = x if _is_one(beta) else self._block_beta(beta) * x
        return self._unblocks(_one_hot_draw(*_block_weights(x)))

    def _draw_visible(self, p: ConvRBMParams, h: Tensor, beta: Beta = 1.0, a: Tensor | None = None) -> Tensor:
        logits = self._visible_input(p, h)
        if not _is_one(beta):
            logits = beta * logits + (1 - beta) * self._default_base(a, p.weight)
        return torch.rand_like(logits).lt_(torch.sigmoid(logits))

    @torch.no_grad()
    def sample_hidden(self, v: Tensor, beta: Beta = 1.0) -> Tensor:
        r"""Draw :math:`h \sim p_\beta(h \mid v)`: one categorical draw per pooling block, hidden vectors
        ``batch + (n_hidden,)`` in block order."""
        p = self.params()
        v = self._states(v, "v").to(p.weight)
        return self._draw_hidden_from_input(self._hidden_input(p, v), beta)

    @torch.no_grad()
    def sample_visible(
        self, h: Tensor, beta: Beta = 1.0, base: Tensor | None = None, *, params: ConvRBMParams | None = None
    ) -> Tensor:
        r"""Draw :math:`v \sim p_\beta(v \mid h)` (factorial Bernoulli), shape ``batch + (n_visible,)``.

        :param params: the parameters (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        return self._draw_visible(p, self._hidden(h, "h").to(p.weight), beta, base)

    @torch.no_grad()
    def gibbs(
        self,
        states: Tensor,
        steps: int = 1,
        beta: Beta = 1.0,
        base: Tensor | None = None,
        *,
        params: ConvRBMParams | None = None,
    ) -> Tensor:
        """``steps`` block-Gibbs sweeps ``v -> h -> v`` at inverse temperature ``beta``, without gradient.

        :param states: visible states ``(..., n_visible)`` (or images ``(..., H, W)``, returned flattened).
        :param beta: inverse temperature on the path from the base model ``base``; a tensor of shape
            ``(T, 1, 1)`` for states of shape ``(T, C, n_visible)``.
        :param params: the parameters (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        v = self._states(states, "states").to(p.weight)
        a = None if _is_one(beta) else self._default_base(base, p.weight)
        for _ in range(steps):
            h = self._draw_hidden_from_input(self._hidden_input(p, v), beta)
            v = self._draw_visible(p, h, beta, a)
        return v

    @torch.no_grad()
    def sample_base(self, num_samples: int, base: Tensor | None = None) -> Tensor:
        """Exact visible states of the base model at beta = 0 (pixel logits ``base``, default 0)."""
        a = self._default_base(base, self.weight).detach()
        return torch.rand(num_samples, self.n_visible, dtype=a.dtype, device=a.device).lt_(torch.sigmoid(a)).to(a)

    def random_state(self, num_samples: int) -> Tensor:
        """Initial chain states: pixels drawn independently with the probability of the visible bias."""
        c = self.visible_bias.detach()
        return self.sample_base(num_samples, c.expand(self.n_visible))

    @torch.no_grad()
    def sample(self, num_samples: int, steps: int = 1000, init: Any = None) -> Tensor:
        """Visible states ``(num_samples, n_visible)`` after ``steps`` Gibbs sweeps from ``init`` (default:
        :meth:`random_state`); ``.reshape(-1, H, W)`` gives the images."""
        v = self.random_state(num_samples) if init is None else self.check_data(init, "init")
        return self.gibbs(v, steps=steps)

    def persistent_chains(self, num_chains: int = 100, steps: int = 1, init: Tensor | None = None) -> NegativePhase:
        """This model's persistent chains, ``chain_class(self, num_chains, steps, init)``."""
        if init is not None:
            init = self.check_data(init, "init")
        return self.chain_class(self, num_chains, steps, init)

    def base_rate(self, data: Tensor) -> Tensor:
        """The base model fitted to ``data``: the Laplace-smoothed logits of each pixel's frequency."""
        v = self._states(data, "data").to(self.weight).reshape(-1, self.n_visible)
        return torch.logit((v.sum(0) + 1.0) / (v.shape[0] + 2.0))

    @torch.no_grad()
    def init_from_data(self, data: Any) -> ConvolutionalRBM:
        """Set the shared visible bias to the logit of the data's (smoothed) mean pixel; returns the model.

        :raises ValueError: for bad data.
        """
        v = self.check_data(data, "init_from_data(data)").reshape(-1, self.n_visible)
        mean = (v.sum() + 1.0) / (v.numel() + 2.0)
        self.visible_bias.copy_(torch.logit(mean))
        return self

    def forward(self, chains: NegativePhase, **kwargs: Any) -> EnergyBasedDistribution:
        # Reading the parameters inside the PyroModule records them as param sites for SVI.
        return EnergyBasedDistribution(self, chains, params=self.params(), **kwargs)

    def distribution(self, chains: NegativePhase, **kwargs: Any) -> EnergyBasedDistribution:
        r"""The Pyro distribution of flattened images ``(..., H * W)`` whose ``log_prob`` is :math:`-F(v) - \log\hat Z`
        with the SML gradient (see :class:`~dgm_ppl.energy.EnergyBasedDistribution`).

        :param chains: the negative phase, e.g. ``PersistentChains(crbm, 100)``.
        :param kwargs: passed to :class:`~dgm_ppl.energy.EnergyBasedDistribution` (``sample_steps``).
        """
        return self(chains, **kwargs)

    @full_precision
    def update_offsets(self, hidden_means: Any, *, defer: bool = False) -> None:
        """Nothing: the convolutional RBM is not centered."""

    # ------------------------------------------------------------------ partition functions
    def base_log_partition(self, base: Tensor | None = None) -> Tensor:
        r""":math:`\log Z_0` of the base model (module notes)."""
        a = self._default_base(base, self.weight)
        return F.softplus(a).sum() + self.n_pools * math.log(self.pool_size**2 + 1)

    def annealing_path(self, base: Tensor | None = None) -> _ConvAnnealingPath:
        """The AIS path over visible states from the base model ``base`` (default: zero logits) to the model."""
        return _ConvAnnealingPath(self, base)

    def enumeration(self) -> Enumeration:
        """Exact log Z enumerates the pixels (the hidden units summed out block by block). Differentiable in the
        parameters."""
        p = self.params()

        def over_pixels(v: Tensor) -> Tensor:
            return self._neg_free(p, v, self._hidden_input(p, v))

        return Enumeration(self.n_visible, "states of the visible pixels", over_pixels, p.weight)


class _ConvAnnealingPath:
    r"""The AIS path over visible states (``state = [v]``), the hidden units summed out, with one block-Gibbs sweep
    at :math:`\beta` as the transition; the cache is the detection inputs (as pooling blocks)."""

    def __init__(self, model: ConvolutionalRBM, base: Tensor | None):
        self.model = model
        self.params = ConvRBMParams(*(None if t is None else t.detach() for t in model.params()))
        self.visible_base = model._default_base(base, self.params.weight)

    def initial_state(self, num_chains: int) -> list[Tensor]:
        return [self.model.sample_base(num_chains, self.visible_base)]

    def state_from_samples(self, samples: Any) -> list[Tensor]:
        return [self.model.check_data(samples, "samples").to(self.params.weight).reshape(-1, self.model.n_visible)]

    def prepare(self, state: list[Tensor]) -> Tensor:
        return self.model._hidden_input(self.params, state[0])

    def log_prob(self, state: list[Tensor], beta: float, cache: Tensor) -> Tensor:
        return self.model._tempered(self.params, state[0], cache, float(beta), self.visible_base)

    def transition(self, state: list[Tensor], beta: float, cache: Tensor) -> list[Tensor]:
        h = self.model._draw_hidden_from_input(cache, float(beta))
        return [self.model._draw_visible(self.params, h, float(beta), self.visible_base)]
