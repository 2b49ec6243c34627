"""Unit-level operations shared by the energy models, their chains and their partition functions.

This module imports nothing else from :mod:`dgm_ppl.energy`: the model families, the samplers and the partition
functions all build on it, so that none of them has to import another to reach these.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._data import as_data_tensor, check_binary, check_finite  # noqa: F401 (used across energy/)

__all__ = [
    "Beta",
    "bernoulli",
    "as_tensor_like",
    "closed_form_applies",
    "check_binary",
    "check_finite",
    "binary_states",
]

Beta = float | Tensor


def bernoulli(probs: Tensor) -> Tensor:
    """Bernoulli draws with the dtype of ``probs`` (about 3x faster than ``torch.bernoulli`` on CPU)."""
    return torch.rand_like(probs).lt_(probs)


def as_tensor_like(data, like: Tensor, name: str) -> Tensor:
    """``data`` as a tensor: tensors pass through unchanged, NumPy arrays and nested lists are converted
    to the dtype and device of ``like`` (a parameter of the model).

    :raises TypeError: for anything else (a string, a dict, an object array).
    """
    if isinstance(data, Tensor):
        return data
    return as_data_tensor(data, name, dtype=like.dtype, device=like.device)


def closed_form_applies(v: Tensor) -> bool:
    """Whether the closed-form backward may serve for the data ``v``: a plain tensor that needs no
    gradient. A derivative in ``v`` may be differentiated again, and tensor subclasses (such as the
    ``ProvenanceTensor`` by which ``TraceGraph_ELBO`` tracks dependencies) do not pass through a
    custom ``autograd.Function``; both keep the plain autograd path."""
    return type(v) is Tensor and not v.requires_grad


def binary_states(n: int, start: int, stop: int, like: Tensor) -> Tensor:
    """The binary codes ``start .. stop - 1`` of ``n`` units as rows of 0/1 values, dtype and device of ``like``."""
    codes = torch.arange(start, stop, device=like.device)
    bits = 2 ** torch.arange(n, device=like.device)
    return ((codes[:, None] & bits) > 0).to(like.dtype)
