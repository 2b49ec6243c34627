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


def require_binary(v: Tensor, name: str, what: str) -> None:
    """Raise ``ValueError`` unless every entry of ``v`` is 0 or 1: "``name``: values contain NaN or inf", or
    "``name``: ``what`` are binary, need values in {0, 1}, got ..." with the first offending value. One host sync
    when the values are fine."""
    if check_binary(v):
        return
    if not check_finite(v):
        raise ValueError(f"{name}: values contain NaN or inf")
    bad = v[(v != 0) & (v != 1)].flatten()[0].item()
    raise ValueError(f"{name}: {what} are binary, need values in {{0, 1}}, got {bad!r}")


def check_count(label: str, n, least: int = 1) -> None:
    """Raise ``ValueError`` unless ``n`` is an int (not a bool) of at least ``least``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < least:
        raise ValueError(f"{label} must be an int >= {least}, got {n!r}")
