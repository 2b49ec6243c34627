r"""Mixed-precision training through SVI: the loss's forward pass under ``torch.autocast``, its backward pass outside.

PyTorch's rule for automatic mixed precision is to autocast the forward pass and the loss only: "backward passes
under autocast are not recommended" (``torch.amp``). ``SVI.step`` runs both, so wrapping it in ``torch.autocast``
also runs the backward pass in the low precision. For most networks that costs a little accuracy, but not for
gradients that are a small difference of two large sums. The SML gradient of an energy-based model,

.. math::

    \nabla_\theta \log p(v) = \mathbb E_{h \mid v}[\nabla_\theta (-E)] - \mathbb E_{v', h'}[\nabla_\theta (-E)],

sums the data's statistics and the chains' statistics separately (each of order the batch size), and near a fit
their difference is a fraction of a percent of either: about the resolution of bfloat16 (8 bits of mantissa).
Rounded to bfloat16, the difference is noise, and a DBM trained that way does not learn. The energy-based
distributions therefore refuse a backward pass under autocast with a clear error.

:class:`AutocastLoss` wraps a loss for :class:`pyro.infer.SVI` so that only the forward pass is autocast:

.. code-block:: python

    svi = SVI(model, guide, optim, AutocastLoss(Trace_ELBO(), "cpu"))   # bfloat16 forward, float32 backward

Where the forward pass may use the low precision is each model's choice: the energy models keep full precision
under autocast (the RBMs' ``matmul_dtype`` sets their training path's precision; a DBM whose mean field and sweeps
ran in bfloat16 ended 8 nats behind float32 on MNIST, so its SML path ignores autocast); neural networks run their
products in it.
The parameters, the optimizer's state and the persistent chains stay in their own dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.infer import ELBO
from torch import Tensor

__all__ = ["AutocastLoss"]


class AutocastLoss:
    """A loss for :class:`pyro.infer.SVI` whose forward pass runs under ``torch.autocast(device_type, dtype)``
    and whose backward pass (run by SVI) does not.

    :param loss: a Pyro ELBO with ``differentiable_loss`` (``Trace_ELBO``, ``TraceMeanField_ELBO``,
        ``TraceEnum_ELBO``, :class:`~dgm_ppl.infer.IWAE`, ...), or a callable
        ``loss(model, guide, *args, **kwargs)`` that returns a differentiable loss (dgm_ppl's comparison losses
        such as :class:`~dgm_ppl.infer.GANLoss`; a GAN's discriminator steps, taken inside the call, then also run
        under autocast).
    :param device_type: ``"cpu"`` or ``"cuda"``, as for ``torch.autocast``.
    :param dtype: the low precision; bfloat16 by default. float16 has a smaller range, and SVI has no gradient
        scaler to keep its gradients from underflowing.
    :raises TypeError: for an ELBO without ``differentiable_loss`` (``TraceGraph_ELBO``, ``RenyiELBO``), or a
        loss that is not callable.
    :raises ValueError: for a device type that autocast does not know, or a dtype that is not floating-point.
    """

    def __init__(self, loss: ELBO | Callable[..., Tensor], device_type: str, dtype: torch.dtype = torch.bfloat16):
        if isinstance(loss, ELBO):
            forward = getattr(loss, "differentiable_loss", None)
            if forward is None:
                raise TypeError(f"AutocastLoss needs an ELBO with differentiable_loss; {type(loss).__name__} has none")
        elif callable(loss):
            forward = loss
        else:
            raise TypeError(f"AutocastLoss needs an ELBO or a callable loss, got {type(loss).__name__}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        if device_type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
            raise ValueError(f"device_type must be one that torch.autocast supports, e.g. 'cpu', got {device_type!r}")
        self.loss, self.device_type, self.dtype = loss, device_type, dtype
        self._forward = forward

    def __call__(self, model: Callable, guide: Callable | None, *args, **kwargs) -> Tensor:
        """The differentiable loss, computed under autocast; SVI differentiates it outside."""
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self._forward(model, guide, *args, **kwargs)

    def __repr__(self) -> str:
        return f"AutocastLoss({self.loss!r}, {self.device_type!r}, dtype={self.dtype})"
