"""A minibatch loop around :class:`pyro.infer.SVI` with a progress bar and divergence checks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro.infer import SVI
from torch import Tensor
from tqdm.auto import tqdm

from .._data import as_data_tensor
from .errors import DivergenceError

__all__ = ["train"]


def train(
    svi: SVI,
    data: Tensor,
    *,
    epochs: int = 1,
    batch_size: int = 100,
    shuffle: bool = True,
    drop_last: bool = False,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
) -> list[float]:
    """Run ``svi.step(batch, *args, **kwargs)`` over minibatches of ``data`` for ``epochs`` epochs.

    The model is expected to put the batch in ``pyro.plate(name, len(data), subsample=batch)``,
    so the loss is an unbiased estimate of the full-data loss. Returns the mean loss per epoch
    (per datum; for ``ReweightedWakeSleep``, which returns two losses, the model's wake-theta loss).
    ``drop_last`` skips a short final batch (useful for losses estimated per batch, such as MMD, whose
    variance grows on a small batch). Raises :class:`DivergenceError` as soon as a loss or, at
    the end of an epoch, a parameter is NaN or infinite. ``callback(epoch, mean_loss)`` runs after each epoch.

    ``data`` may be a NumPy array (converted to torch's default dtype, on the CPU). It is checked once, before
    the first step: rows with NaN or inf raise a ``ValueError`` that names them, with no parameter changed.

    :raises ValueError: bad sizes, or NaN/inf in ``data``.
    :raises TypeError: ``data`` that is neither a tensor nor a numeric NumPy array.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    data = as_data_tensor(data, "train(data)")
    if data.dim() == 0:
        raise ValueError("train(data) needs a batch of data with the data points along dim 0, got a scalar")
    if data.is_floating_point() or data.is_complex():
        bad = ~torch.isfinite(data.reshape(len(data), -1)).all(-1)
        if bad.any():
            rows = bad.nonzero().flatten().tolist()
            shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
            raise ValueError(f"train(data): {len(rows)} rows contain NaN or inf (rows {shown}); nothing was trained")
    kwargs = kwargs or {}
    n = data.shape[0]
    history = []
    steps_per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"drop_last with batch_size {batch_size} > {n} data leaves no batch")
    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, unit="step", mininterval=0.5)
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, device=data.device) if shuffle else torch.arange(n, device=data.device)
            total = 0.0
            for i in range(0, steps_per_epoch * batch_size, batch_size):
                loss = svi.step(data[order[i : i + batch_size]], *args, **kwargs)
                if isinstance(loss, tuple):  # ReweightedWakeSleep: (wake-theta loss, wake/sleep-phi loss)
                    if not all(math.isfinite(float(part)) for part in loss):
                        raise DivergenceError(f"the losses became {loss} at epoch {epoch}, step {i // batch_size}")
                    loss = float(loss[0])
                if not math.isfinite(loss):
                    raise DivergenceError(f"the loss became {loss} at epoch {epoch}, step {i // batch_size}")
                total += loss
                bar.update()
            mean = total / steps_per_epoch / n
            for name, value in pyro.get_param_store().items():
                if not torch.isfinite(value).all():
                    raise DivergenceError(f"parameter {name!r} is not finite after epoch {epoch}")
            history.append(mean)
            bar.set_postfix(epoch=epoch, loss=f"{mean:.4g}")
            if callback is not None:
                callback(epoch, mean)
    finally:
        bar.close()
    return history
