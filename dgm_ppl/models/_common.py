"""What the example models share: the batch check and the data plate of a (sub)sampled batch."""

from __future__ import annotations

import pyro
import torch
from torch import Tensor

__all__ = ["check_batch", "data_plate"]


def check_batch(name: str, value: Tensor, dim: int) -> None:
    """Refuse anything but a (B, dim) tensor. Skipped while torch traces (JIT): the shapes are compile keys of
    dgm_ppl's JIT objectives, so the check already ran, untraced, on the first call with these shapes."""
    if torch.jit.is_tracing():
        return
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != dim:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a batch of shape (B, {dim}), got {shape}")


def data_plate(x: Tensor, num_data: int | None):
    """The data plate of the batch ``x``: of size ``num_data`` with ``x`` as its subsample when given.

    The subsample is the batch itself (indices ``0..B-1``): the programs never index data by it, so drawing a random
    subsample of ``num_data`` indices at every step (``subsample_size=B``) would cost O(N) and random numbers for
    nothing, and would make a compiled (JIT) step draw differently from an eager one (the tracer drops the unused
    draw). Only the scale N/B matters.
    """
    batch = x.shape[0]
    if num_data is None:
        return pyro.plate("data", batch)
    if not torch.jit.is_tracing() and num_data < batch:  # under JIT, checked on the untraced first call
        raise ValueError(f"num_data ({num_data}) is smaller than the batch ({batch})")
    return pyro.plate("data", num_data, subsample=torch.arange(batch, device=x.device))
