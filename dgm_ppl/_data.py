"""Conversion of user data (tensors, NumPy arrays, nested lists) to tensors, with clear errors."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_data_tensor", "check_binary", "check_finite"]


def as_data_tensor(
    data, name: str = "data", *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``data`` as a tensor: tensors pass through (moved to ``dtype``/``device`` when given); NumPy arrays and
    nested lists are converted to ``dtype`` (default: torch's default floating dtype, so that uint8 images and
    float64 arrays meet float32 parameters).

    :param data: a tensor, a NumPy array or a nested list of numbers.
    :param name: how errors refer to it.
    :param dtype: the dtype of converted arrays.
    :param device: where converted arrays go (default: the CPU).
    :raises TypeError: for anything else (a string, a dict, an object array).
    """
    if isinstance(data, Tensor):
        return data if dtype is None and device is None else data.to(device=device, dtype=dtype)
    if isinstance(data, (list, tuple)):
        data = np.asarray(data)
    if not isinstance(data, np.ndarray) or not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        kind = f"a NumPy array of {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise TypeError(f"{name} must be a torch.Tensor or a numeric NumPy array, got {kind}")
    return torch.as_tensor(data, dtype=dtype or torch.get_default_dtype(), device=device)


def check_binary(v: Tensor) -> bool:
    r"""Whether every entry of ``v`` is 0 or 1, in one fused pass and one sum: :math:`\sum |v - v^2| = 0`, since
    :math:`v - v^2` is 0 exactly at 0 and 1, and NaN at NaN and :math:`\pm\infty`, so that non-binary and non-finite
    values are caught together (a sum of non-negative terms is 0 only if every term is; twice as fast as ``any()``
    on CPU). One host sync."""
    if v.dtype == torch.bool:
        return True
    return bool(torch.addcmul(v, v, v, value=-1).abs_().sum() == 0)


def check_finite(v: Tensor) -> bool:
    """Whether every entry of ``v`` is finite, by one reduction in the common case: a finite sum
    proves it (NaN and infinities propagate into the sum); an infinite one (overflow, or a
    non-finite entry) is settled elementwise. One host sync."""
    if not v.is_floating_point():
        return True
    return bool(torch.isfinite(v.sum())) or bool(torch.isfinite(v).all())
