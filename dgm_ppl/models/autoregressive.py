r"""Autoregressive models of binary vectors, with exact ``log_prob`` and ancestral sampling.

Each factorizes :math:`p(x) = \prod_{d=1}^D p(x_{o_d} \mid x_{o_{<d}})` along an ordering :math:`o` (the natural one
for :class:`FVSBN` and :class:`NADE`) into Bernoulli conditionals :math:`\sigma(\ell_d)`, so that

.. math::

    \log p(x) = \sum_{d=1}^D x_d \ell_d - \operatorname{softplus}(\ell_d),

exactly normalized, and is sampled one coordinate at a time. They differ in the logits :math:`\ell_d(x_{<d})`:

- :class:`FVSBN`, the fully visible sigmoid belief net (logistic autoregression; Frey 1998):
  :math:`\ell_d = b_d + \sum_{j<d} W_{dj} x_j`, :math:`O(D^2)` parameters.
- :class:`NADE` (Larochelle & Murray 2011): one hidden layer with weights tied across the conditionals,
  :math:`h_d = \sigma(c + W_{:,<d}\, x_{<d})`, :math:`\ell_d = b_d + V_d^\top h_d`. The pre-activations obey
  :math:`a_{d+1} = a_d + W_{:,d}\, x_d`, so all D conditionals cost :math:`O(DH)` (a cumulative sum), as does a draw.
- :class:`MADE` (Germain et al. 2015): an MLP whose weight matrices are masked so that output :math:`d` sees only the
  inputs before :math:`d` in the ordering: every unit k carries a degree :math:`m(k)`, inputs the rank of their
  coordinate in the ordering, hidden units a random degree in :math:`[\min m^{l-1}, D-1]`, and a weight is kept when
  :math:`m^l(k) \ge m^{l-1}(j)` (hidden layers) or :math:`m^{\text{out}}(d) > m^L(k)` (output). ``num_masks`` draws
  of the degrees (and, with ``natural_ordering=False``, of the ordering) are cycled through during training
  (connectivity- and order-agnostic training); the ensemble :math:`\frac1K \sum_k p_k(x)` is again normalized.
- :class:`PixelCNN` (van den Oord et al. 2016), for binary images in raster order: convolutions whose kernels are
  masked so that a pixel sees only the rows above it and the pixels to its left in its own row (type A, first layer)
  or also itself (type B, later layers, whose input at a pixel already depends only on earlier pixels).

A context vector :math:`z` (``context_dim > 0``) makes each a conditional model :math:`p(x \mid z)` whose biases (and,
for NADE, MADE and PixelCNN, the first hidden pre-activations) are affine in :math:`z`: a decoder for a VAE.

Each model is an ``nn.Module``; ``model(context)`` (or ``model.distribution(context)``) is a Pyro distribution with
event shape ``(D,)`` and batch shape ``context.shape[:-1]``. Register the parameters in the Pyro program::

    nade = NADE(64, 50)

    def model(x):
        pyro.module("nade", nade)
        with pyro.plate("data", num_data, subsample_size=100) as idx:
            pyro.sample("x", nade(), obs=x[idx])

    svi = SVI(model, lambda x: None, Adam({"lr": 1e-2}), Trace_ELBO())

and, as a VAE decoder, ``pyro.sample("x", decoder(z), obs=x)`` with ``decoder = NADE(64, 50, context_dim=z_dim)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import Size, Tensor, nn

from .._data import as_data_tensor, check_binary, check_finite

__all__ = ["AutoregressiveModel", "AutoregressiveDistribution", "FVSBN", "NADE", "MADE", "PixelCNN"]

_BLOCK = 32  # pixels per block of the NADE hidden pre-activations


def _broadcast_shapes(a: Size, b: Size) -> Size:
    """NumPy broadcasting of two shapes (``torch.broadcast_shapes`` imports sympy on its first call, ~2 s).

    :raises ValueError: when they do not broadcast.
    """
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    if any(i != j and 1 not in (i, j) for i, j in zip(a, b)):
        raise ValueError(f"shapes {a} and {b} do not broadcast")
    return Size(max(i, j) if 1 in (i, j) else i for i, j in zip(a, b))


def _bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """:math:`\\sum_d x_d \\ell_d - \\operatorname{softplus}(\\ell_d)`, over the last dimension."""
    return (x * logits - F.softplus(logits)).sum(-1)


class AutoregressiveModel(nn.Module):
    """Shared interface: exact :meth:`log_prob`, ancestral :meth:`sample`, and the Pyro view :meth:`distribution`.

    Subclasses implement :meth:`_logits` (all conditional logits at once, in the coordinates' own layout) and may
    override :meth:`_sample` (the default runs :meth:`_logits` once per coordinate).

    :param n_visible: the number D of binary coordinates.
    :param context_dim: size of the conditioning vector (0: an unconditional model).
    """

    def __init__(self, n_visible: int, context_dim: int = 0):
        super().__init__()
        if n_visible < 1 or context_dim < 0:
            raise ValueError(f"need n_visible >= 1 and context_dim >= 0, got {n_visible} and {context_dim}")
        self.n_visible, self.context_dim = n_visible, context_dim

    # ---------------------------------------------------------------- to implement
    def _logits(self, x: Tensor, context: Tensor | None, **options) -> Tensor:
        """The logits of :math:`p(x_d = 1 \\mid x_{<d}, z)`, shape ``x.shape``; ``context`` broadcast to x."""
        raise NotImplementedError

    def ordering(self, **options) -> Tensor:
        """The order in which the coordinates are generated."""
        return torch.arange(self.n_visible)

    # ---------------------------------------------------------------- checks
    def _like(self) -> Tensor:
        return next(self.parameters())

    def _check_x(self, x, name: str, binary: bool = True) -> Tensor:
        like = self._like()
        x = as_data_tensor(x, name, dtype=like.dtype, device=like.device)
        if x.dim() == 0 or x.shape[-1] != self.n_visible:
            raise ValueError(f"{name} must have last dimension n_visible={self.n_visible}, got shape {tuple(x.shape)}")
        if not binary:
            if not check_finite(x):
                raise ValueError(f"{name} contains NaN or inf")
        elif not check_binary(x):
            bad = x[(x != 0) & (x != 1)].flatten()[0].item()
            raise ValueError(f"{name} must be binary (0 or 1) and finite, got {bad!r}")
        return x if x.dtype == like.dtype else x.to(like.dtype)

    def _check_context(self, context, name: str = "context") -> Tensor | None:
        if self.context_dim == 0:
            if context is not None:
                raise ValueError(f"{type(self).__name__} has no context (context_dim=0), got a {name}")
            return None
        if context is None:
            raise ValueError(f"{type(self).__name__} is conditional (context_dim={self.context_dim}): pass {name}")
        like = self._like()
        context = as_data_tensor(context, name, dtype=like.dtype, device=like.device)
        if context.dim() == 0 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"{name} must have last dimension context_dim={self.context_dim}, got shape {tuple(context.shape)}"
            )
        if not check_finite(context):
            raise ValueError(f"{name} contains NaN or inf")
        return context

    @staticmethod
    def _broadcast(x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if context is None:
            return x, None
        batch = _broadcast_shapes(x.shape[:-1], context.shape[:-1])
        return x.expand(batch + x.shape[-1:]), context.expand(batch + context.shape[-1:])

    # ---------------------------------------------------------------- public API
    def logits(self, x, context=None, **options) -> Tensor:
        """The conditional logits :math:`\\ell_d(x_{<d}, z)`, shape of ``x`` (broadcast with ``context``). ``x`` may
        hold any finite values (e.g. to take the Jacobian of the logits), although the model is over binary x."""
        x, context = self._broadcast(self._check_x(x, "x", binary=False), self._check_context(context))
        return self._logits(x, context, **options)

    def _log_prob(self, x: Tensor, context: Tensor | None, **options) -> Tensor:
        x, context = self._broadcast(x, context)
        return _bernoulli_log_prob(self._logits(x, context, **options), x)

    def log_prob(self, x, context=None, **options) -> Tensor:
        """The exact :math:`\\log p(x \\mid z)`.

        :param x: binary values, shape ``(..., n_visible)``; a NumPy array is converted.
        :param context: the condition z, shape ``(..., context_dim)`` (conditional models only), broadcast with x.
        :returns: shape ``broadcast(x.shape[:-1], context.shape[:-1])``.
        :raises ValueError: wrong width, values other than 0/1 (NaN included), a missing or extra context.
        :raises TypeError: ``x`` neither a tensor nor a numeric array.
        """
        return self._log_prob(self._check_x(x, "x"), self._check_context(context), **options)

    def _sample(self, shape: Size, context: Tensor | None, **options) -> Tensor:
        """Ancestral draws of shape ``shape + (D,)``; ``context`` already of shape ``shape + (context_dim,)``."""
        like = self._like()
        x = like.new_zeros(shape + (self.n_visible,))
        for d in self.ordering(**options).tolist():
            p = torch.sigmoid(self._logits(x, context, **options)[..., d])
            x[..., d] = torch.bernoulli(p)
        return x

    @torch.no_grad()
    def sample(self, sample_shape: int | Sequence[int] = (), context=None, **options) -> Tensor:
        """Ancestral draws, shape ``sample_shape + context.shape[:-1] + (n_visible,)``.

        :param sample_shape: an int n (n draws) or a shape.
        :param context: the condition z (conditional models only).
        """
        return self.distribution(context, **options).sample(_as_shape(sample_shape))

    def distribution(self, context=None, **options) -> AutoregressiveDistribution:
        """This model as a Pyro distribution, of batch shape ``context.shape[:-1]`` (``()`` without context)."""
        return AutoregressiveDistribution(self, self._check_context(context), **options)

    def forward(self, context=None, **options) -> AutoregressiveDistribution:
        """Same as :meth:`distribution`, so that ``pyro.sample("x", model(z), obs=x)`` reads naturally."""
        return self.distribution(context, **options)

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, context_dim={self.context_dim}"


def _as_shape(shape: int | Sequence[int]) -> Size:
    return Size((shape,)) if isinstance(shape, int) else Size(shape)


class AutoregressiveDistribution(TorchDistribution):
    """An :class:`AutoregressiveModel` as a Pyro distribution over binary vectors.

    ``log_prob`` is exact and differentiable in the model's parameters (and the context); ``sample`` is ancestral
    and not reparametrized. With Pyro's validation on, values are checked (width, 0/1, finite).

    :param model: the autoregressive model.
    :param context: the condition, shape ``batch_shape + (context_dim,)`` (conditional models only).
    :param batch_shape: defaults to ``context.shape[:-1]``, or ``()``.
    :param options: keyword arguments for the model (e.g. ``ensemble=True`` for :class:`MADE`).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(
        self,
        model: AutoregressiveModel,
        context: Tensor | None = None,
        *,
        batch_shape: Size | tuple | None = None,
        validate_args: bool | None = None,
        **options,
    ):
        if batch_shape is None:
            batch_shape = context.shape[:-1] if context is not None else Size()
        batch_shape = Size(batch_shape)
        if context is not None:
            context = context.expand(batch_shape + context.shape[-1:])
        self.model, self.context, self.options = model, context, options
        super().__init__(batch_shape, Size((model.n_visible,)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> AutoregressiveDistribution:
        return type(self)(
            self.model,
            self.context,
            batch_shape=batch_shape,
            validate_args=self.__dict__.get("_validate_args"),
            **self.options,
        )

    def _validate_sample(self, value: Tensor) -> None:
        self._check_value(value)

    def _check_value(self, value) -> Tensor:
        """``value`` as a tensor of the model's dtype; with validation, checked (width, 0/1, batch shape)."""
        if not self._validate_args:
            like = self.model._like()
            return as_data_tensor(value, "value", dtype=like.dtype, device=like.device)
        value = self.model._check_x(value, "value")
        try:
            _broadcast_shapes(value.shape[:-1], self.batch_shape)
        except ValueError:
            raise ValueError(
                f"value shape {tuple(value.shape)} does not broadcast with batch shape {tuple(self.batch_shape)}"
            ) from None
        return value

    def log_prob(self, value) -> Tensor:
        """The exact log-probability, shape ``broadcast(value.shape[:-1], batch_shape)``."""
        value = self._check_value(value)
        value = value.expand(_broadcast_shapes(value.shape[:-1], self.batch_shape) + value.shape[-1:])
        return self.model._log_prob(value, self.context, **self.options)

    @torch.no_grad()
    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        shape = Size(sample_shape) + self.batch_shape
        context = None if self.context is None else self.context.expand(shape + self.context.shape[-1:])
        return self.model._sample(shape, context, **self.options)


class FVSBN(AutoregressiveModel):
    r"""The fully visible sigmoid belief net: :math:`\ell_d = b_d + \sum_{j<d} W_{dj} x_j\ (+\, U_d^\top z)`.

    :param n_visible: the number D of binary coordinates.
    :param context_dim: size of the condition z (0: unconditional).
    """

    def __init__(self, n_visible: int, context_dim: int = 0):
        super().__init__(n_visible, context_dim)
        self.bias = nn.Parameter(torch.zeros(n_visible))
        self.weight = nn.Parameter(torch.zeros(n_visible, n_visible))
        self.register_buffer("mask", torch.ones(n_visible, n_visible).tril(-1))
        self.context_layer = nn.Linear(context_dim, n_visible, bias=False) if context_dim else None

    def _bias(self, context: Tensor | None) -> Tensor:
        return self.bias if context is None else self.bias + self.context_layer(context)

    def _logits(self, x: Tensor, context: Tensor | None) -> Tensor:
        return F.linear(x, self.weight * self.mask) + self._bias(context)

    def _sample(self, shape: Size, context: Tensor | None) -> Tensor:
        bias = self._bias(context).expand(shape + (self.n_visible,))
        x = bias.new_zeros(bias.shape)
        for d in range(self.n_visible):  # O(d) per coordinate
            x[..., d] = torch.bernoulli(torch.sigmoid(bias[..., d] + x[..., :d] @ self.weight[d, :d]))
        return x


class NADE(AutoregressiveModel):
    r"""The neural autoregressive distribution estimator with tied weights (Larochelle & Murray 2011):
    :math:`h_d = \sigma(c + W_{:,<d}\, x_{<d})`, :math:`\ell_d = b_d + V_d^\top h_d`, in :math:`O(DH)`.

    With a context z, :math:`c` becomes :math:`c + A z` and :math:`b` becomes :math:`b + B z`.

    :param n_visible: the number D of binary coordinates.
    :param n_hidden: the number H of hidden units.
    :param context_dim: size of the condition z (0: unconditional).
    """

    def __init__(self, n_visible: int, n_hidden: int, context_dim: int = 0):
        super().__init__(n_visible, context_dim)
        if n_hidden < 1:
            raise ValueError(f"n_hidden must be positive, got {n_hidden}")
        self.n_hidden = n_hidden
        self.weight = nn.Parameter(torch.randn(n_hidden, n_visible) / n_visible**0.5)  # W: x -> hidden
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))  # c
        self.out_weight = nn.Parameter(torch.randn(n_visible, n_hidden) / n_hidden**0.5)  # V: hidden -> logits
        self.bias = nn.Parameter(torch.zeros(n_visible))  # b
        self.context_layer = nn.Linear(context_dim, n_hidden + n_visible, bias=False) if context_dim else None

    def _biases(self, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is None:
            return self.hidden_bias, self.bias
        c, b = self.context_layer(context).split([self.n_hidden, self.n_visible], -1)
        return self.hidden_bias + c, self.bias + b

    def _logits(self, x: Tensor, context: Tensor | None) -> Tensor:
        c, b = self._biases(context)
        # a_d = c + sum_{j<d} W[:, j] x_j, an exclusive cumulative sum over d, in blocks of _BLOCK pixels: within a
        # block a cumulative sum of shape (..., _BLOCK, H), between blocks a running sum (..., H). The same numbers
        # as one (..., D, H) cumulative sum, at about half the time (the working set stays in cache).
        weight_t, out = self.weight.T, self.out_weight
        running = c.expand(*x.shape[:-1], self.n_hidden)
        logits = []
        for start in range(0, self.n_visible, _BLOCK):
            stop = min(start + _BLOCK, self.n_visible)
            steps = x[..., start:stop].unsqueeze(-1) * weight_t[start:stop]
            partial = torch.cumsum(steps, -2)
            a = running.unsqueeze(-2) + (partial - steps)
            logits.append(torch.einsum("...kh,kh->...k", torch.sigmoid(a), out[start:stop]))
            running = running + partial[..., -1, :]
        return torch.cat(logits, -1) + b

    def _sample(self, shape: Size, context: Tensor | None) -> Tensor:
        c, b = self._biases(context)
        a = c.expand(shape + (self.n_hidden,)).clone()
        b = b.expand(shape + (self.n_visible,))
        x = a.new_zeros(shape + (self.n_visible,))
        for d in range(self.n_visible):  # O(H) per coordinate
            x[..., d] = torch.bernoulli(torch.sigmoid(b[..., d] + torch.sigmoid(a) @ self.out_weight[d]))
            a += x[..., d, None] * self.weight[:, d]
        return x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_hidden={self.n_hidden}"


class MADE(AutoregressiveModel):
    r"""The masked autoencoder for distribution estimation (Germain et al. 2015): a ReLU MLP with masked weights.

    ``num_masks`` sets of degrees (and orderings, unless ``natural_ordering``) are drawn once from ``seed``; the
    model uses mask :attr:`mask_index`, which :meth:`resample_mask` advances cyclically: call it at every training
    step (e.g. first thing in the Pyro model) for connectivity- and order-agnostic training. ``ensemble=True`` (to
    :meth:`log_prob`, :meth:`sample`, :meth:`distribution`) uses the mixture of all masks,
    :math:`\log \frac1K \sum_k p_k(x)`, at K times the cost. A context z enters the first hidden layer and the
    output biases, unmasked.

    :param n_visible: the number D of binary coordinates.
    :param hidden_sizes: widths of the hidden layers (empty: a masked logistic regression, i.e. an FVSBN).
    :param context_dim: size of the condition z (0: unconditional).
    :param num_masks: how many connectivity patterns to cycle through.
    :param natural_ordering: generate the coordinates in their natural order under every mask (otherwise each mask
        has a random ordering).
    :param seed: the seed of the masks.
    """

    def __init__(
        self,
        n_visible: int,
        hidden_sizes: Sequence[int] = (100,),
        *,
        context_dim: int = 0,
        num_masks: int = 1,
        natural_ordering: bool = False,
        seed: int = 0,
    ):
        super().__init__(n_visible, context_dim)
        if num_masks < 1 or any(h < 1 for h in hidden_sizes):
            raise ValueError(f"need num_masks >= 1 and positive hidden sizes, got {num_masks} and {hidden_sizes}")
        self.hidden_sizes, self.num_masks, self.natural_ordering = tuple(hidden_sizes), num_masks, natural_ordering
        sizes = [n_visible, *self.hidden_sizes, n_visible]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self._context_split = [sizes[1] if self.hidden_sizes else 0, n_visible]  # first hidden layer, output
        self.context_layer = nn.Linear(context_dim, sum(self._context_split), bias=False) if context_dim else None
        orders, masks = self._draw_masks(seed)
        self.register_buffer("orders", orders)  # (K, D): orders[k, i] is the i-th coordinate generated under mask k
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m)  # (K, out, in)
        self.mask_index = 0

    def _draw_masks(self, seed: int) -> tuple[Tensor, list[Tensor]]:
        g = torch.Generator().manual_seed(seed)
        d = self.n_visible
        orders, masks = [], [[] for _ in self.layers]
        for _ in range(self.num_masks):
            order = torch.arange(d) if self.natural_ordering else torch.randperm(d, generator=g)
            degrees = [torch.empty(d, dtype=torch.long).scatter_(0, order, torch.arange(1, d + 1))]
            for h in self.hidden_sizes:
                low = min(int(degrees[-1].min()), d - 1)
                degrees.append(torch.randint(low, d, (h,), generator=g))  # in [low, D - 1]
            for i in range(len(self.hidden_sizes)):
                masks[i].append((degrees[i + 1][:, None] >= degrees[i][None, :]).float())
            masks[-1].append((degrees[0][:, None] > degrees[-1][None, :]).float())
            orders.append(order)
        return torch.stack(orders), [torch.stack(m) for m in masks]

    def resample_mask(self, index: int | None = None) -> int:
        """Move to mask ``index``, or to the next mask (cyclically); returns the new index."""
        if index is not None and not 0 <= index < self.num_masks:
            raise ValueError(f"mask index must be in [0, {self.num_masks}), got {index}")
        self.mask_index = (self.mask_index + 1) % self.num_masks if index is None else index
        return self.mask_index

    def masks(self, index: int | None = None) -> list[Tensor]:
        """The masks of each layer, ``(out, in)``, under mask ``index`` (default: the current one)."""
        k = self.mask_index if index is None else index
        return [getattr(self, f"mask{i}")[k] for i in range(len(self.layers))]

    def ordering(self, mask: int | None = None, ensemble: bool = False) -> Tensor:
        """The order in which the coordinates are generated under mask ``mask`` (default: the current one)."""
        return self.orders[self.mask_index if mask is None else mask]

    def _logits(self, x: Tensor, context: Tensor | None, mask: int | None = None, ensemble: bool = False) -> Tensor:
        if ensemble:
            raise ValueError("an ensemble of masks has no single set of logits: pass mask=k")
        extra = None if context is None else self.context_layer(context).split(self._context_split, -1)
        last = len(self.layers) - 1
        h = x
        for i, (layer, m) in enumerate(zip(self.layers, self.masks(mask))):
            h = F.linear(h, layer.weight * m, layer.bias)
            if i < last:
                h = F.relu(h if extra is None or i > 0 else h + extra[0])
        return h if extra is None else h + extra[1]

    def _log_prob(self, x: Tensor, context: Tensor | None, mask: int | None = None, ensemble: bool = False) -> Tensor:
        if not ensemble:
            return super()._log_prob(x, context, mask=mask)
        x, context = self._broadcast(x, context)
        lp = torch.stack([_bernoulli_log_prob(self._logits(x, context, mask=k), x) for k in range(self.num_masks)])
        return torch.logsumexp(lp, 0) - torch.log(torch.tensor(float(self.num_masks)))

    def _sample(self, shape: Size, context: Tensor | None, mask: int | None = None, ensemble: bool = False) -> Tensor:
        if not ensemble:
            return super()._sample(shape, context, mask=mask)
        like = self._like()
        n = shape.numel()
        flat_context = None if context is None else context.reshape(n, self.context_dim)
        which = torch.randint(self.num_masks, (n,), device=like.device)
        x = like.new_zeros(n, self.n_visible)
        for k in which.unique().tolist():
            rows = (which == k).nonzero().squeeze(-1)
            ctx = None if flat_context is None else flat_context[rows]
            x[rows] = super()._sample(Size((len(rows),)), ctx, mask=k)
        return x.reshape(shape + (self.n_visible,))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden_sizes={self.hidden_sizes}, num_masks={self.num_masks}, "
            f"natural_ordering={self.natural_ordering}"
        )


class _MaskedConv2d(nn.Conv2d):
    """A convolution that sees the rows above and the pixels to the left (type ``"A"``), and the centre (``"B"``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, kind: str):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        k = kernel_size // 2
        mask = torch.zeros(kernel_size, kernel_size)
        mask[:k] = 1
        mask[k, : k + (kind == "B")] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class PixelCNN(AutoregressiveModel):
    r"""A small PixelCNN for binary images (van den Oord et al. 2016), over the flattened ``height * width`` pixels in
    raster order: a type-A masked convolution, ``num_layers - 1`` type-B ones (ReLU between), a 1x1 convolution to
    one logit per pixel, plus a per-pixel bias. A context z adds a bias per channel of the first layer and per pixel
    of the output. Values are flat, shape ``(..., height * width)``, like the other models here.

    :param height: image height.
    :param width: image width.
    :param channels: feature maps per layer.
    :param num_layers: masked convolutions (the first of type A).
    :param kernel_size: odd kernel size of the masked convolutions.
    :param context_dim: size of the condition z (0: unconditional).
    """

    def __init__(
        self,
        height: int,
        width: int,
        channels: int = 32,
        num_layers: int = 3,
        kernel_size: int = 3,
        context_dim: int = 0,
    ):
        super().__init__(height * width, context_dim)
        if num_layers < 1 or kernel_size % 2 == 0 or channels < 1:
            raise ValueError(
                f"need num_layers >= 1, channels >= 1 and an odd kernel_size, got {num_layers}, {channels}, "
                f"{kernel_size}"
            )
        self.height, self.width, self.channels = height, width, channels
        self.convs = nn.ModuleList(
            _MaskedConv2d(1 if i == 0 else channels, channels, kernel_size, "A" if i == 0 else "B")
            for i in range(num_layers)
        )
        self.out = nn.Conv2d(channels, 1, 1)
        self.bias = nn.Parameter(torch.zeros(height * width))
        self.context_layer = nn.Linear(context_dim, channels + height * width, bias=False) if context_dim else None

    def _logits(self, x: Tensor, context: Tensor | None) -> Tensor:
        batch = x.shape[:-1]
        h = x.reshape(-1, 1, self.height, self.width)
        extra = None
        if context is not None:
            extra = self.context_layer(context.reshape(-1, self.context_dim)).split([self.channels, self.n_visible], -1)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i == 0 and extra is not None:
                h = h + extra[0][:, :, None, None]
            h = F.relu(h)
        logits = self.out(h).flatten(1) + self.bias
        if extra is not None:
            logits = logits + extra[1]
        return logits.reshape(batch + (self.n_visible,))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, height={self.height}, width={self.width}, channels={self.channels}"
