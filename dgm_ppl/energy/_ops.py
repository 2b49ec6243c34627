"""Unit-level operations shared by the energy models, their chains and their partition functions.

This module imports nothing else from :mod:`dgm_ppl.energy`: the model families, the samplers and the partition
functions all build on it, so that none of them has to import another to reach these.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from .._data import as_data_tensor, check_binary, check_finite  # noqa: F401 (used across energy/)

__all__ = [
    "Beta",
    "autocast_enabled",
    "autocast_off",
    "full_precision",
    "refuse_autocast_backward",
    "sml_full_precision",
    "bernoulli",
    "as_tensor_like",
    "closed_form_applies",
    "check_binary",
    "check_finite",
    "binary_states",
]

Beta = float | Tensor


# the device types on which torch.autocast may be on (querying one without the device present is cheap and safe)
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")
_F = TypeVar("_F", bound=Callable)


def autocast_off() -> contextlib.AbstractContextManager:
    """A context in which ``torch.autocast`` is off on every device where it was on. The products whose results
    are summed against each other, such as an SML gradient's positive and negative statistics, or an AIS log
    weight, need full-precision results: rounded to bfloat16 each, their difference would be noise."""
    on = [device for device in _AUTOCAST_DEVICES if torch.is_autocast_enabled(device)]
    if not on:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for device in on:
        stack.enter_context(torch.autocast(device, enabled=False))
    return stack


def autocast_enabled() -> bool:
    """Whether ``torch.autocast`` is on for any device."""
    return any(torch.is_autocast_enabled(device) for device in _AUTOCAST_DEVICES)


def refuse_autocast_backward(out: Tensor, what: str, autocast: bool | None = None) -> Tensor:
    """``out``, with a hook that raises ``RuntimeError`` if its backward pass runs under ``torch.autocast``
    (registered only when autocast was on in the forward pass: ``autocast``, by default now). A backward pass in
    bfloat16 rounds the data's and the chains' statistics separately, and their difference, the SML gradient, to
    noise."""
    if out.requires_grad and (autocast_enabled() if autocast is None else autocast):
        out.register_hook(functools.partial(_check_backward_precision, what=what))
    return out


def sml_full_precision(what: str) -> Callable[[_F], _F]:
    """Decorates an SML ``log_prob``: it runs with :func:`autocast_off`, and its output refuses a backward pass
    under autocast (:func:`refuse_autocast_backward`, with ``what`` naming the distribution)."""

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not autocast_enabled():
                return fn(*args, **kwargs)
            with autocast_off():
                out = fn(*args, **kwargs)
            return refuse_autocast_backward(out, what, True)

        return wrapper  # type: ignore[return-value]

    return decorate


def _check_backward_precision(grad: Tensor, what: str) -> Tensor:
    if autocast_enabled():
        raise RuntimeError(
            f"{what}: the backward pass runs under torch.autocast. The SML gradient is a small difference of the "
            "data's and the chains' statistics, which a low-precision backward pass rounds to noise. Autocast "
            "the forward pass only: SVI(model, guide, optim, dgm_ppl.infer.AutocastLoss(Trace_ELBO(), 'cpu'))."
        )
    return grad


def full_precision(fn: _F) -> _F:
    """``fn`` run with :func:`autocast_off`: for the scores (log-partitions, log-likelihoods, samples) that
    must not change under a caller's ``torch.autocast``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not autocast_enabled():
            return fn(*args, **kwargs)
        with autocast_off():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
