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
    max_steps: int | None = None,
) -> list[float]:
    """Run ``svi.step(batch, *args, **kwargs)`` over minibatches of ``data`` for ``epochs`` epochs.

    The model is expected to put the batch in ``pyro.plate(name, len(data), subsample=batch)``,
    so the loss is an unbiased estimate of the full-data loss. Returns the mean loss per epoch
    (per datum; for ``ReweightedWakeSleep``, which returns two losses, the model's wake-theta loss).
    ``drop_last`` skips a short final batch (useful for losses estimated per batch, such as MMD, whose
    variance grows on a small batch). Raises :class:`DivergenceError` as soon as a loss or, at
    the end of an epoch, a parameter is NaN or infinite. ``callback(epoch, mean_loss)`` runs after each epoch.
    ``max_steps`` stops the run after that many steps (the last epoch then averages the steps it ran).

    Data-parallel training. With a :class:`~dgm_ppl.distributed.DistributedSVI` over :math:`W` processes, every
    rank passes the whole ``data`` (the same on every rank), and each step takes a global batch of
    ``W * batch_size`` points from the epoch's order (drawn on rank 0 and broadcast), of which rank :math:`r`
    uses the :math:`r`-th slice of ``batch_size``: as ``torch.utils.data.DistributedSampler`` does, a short final
    global batch is filled up from the start of the order, so every rank's shard has ``batch_size`` points
    (``drop_last`` drops it instead). The model's plate keeps ``len(data)`` as its size. The progress bar shows
    on rank 0 only, and the losses are the ranks' means, the same on every rank.

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
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    kwargs = kwargs or {}
    n = data.shape[0]
    history = []
    # a DistributedSVI: this rank's slice of each global batch (see the notes above)
    world, rank = getattr(svi, "world_size", 1), getattr(svi, "rank", 0)
    global_batch = world * batch_size
    steps_per_epoch = n // global_batch if drop_last else math.ceil(n / global_batch)
    if steps_per_epoch == 0:
        raise ValueError(f"drop_last with a batch of {global_batch} > {n} data leaves no batch")
    if world > 1:  # every rank shards the same data: refuse before any collective that would mismatch
        svi.check_same(n, "len(data)")
        svi.check_same(data[0].numel(), "the size of a data point")
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    bar = tqdm(total=total_steps, disable=not progress or rank != 0, unit="step", mininterval=0.5)
    steps_run = 0
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, device=data.device) if shuffle else torch.arange(n, device=data.device)
            if world > 1:
                order = svi.broadcast(order)
            total, steps = 0.0, 0
            for i in range(0, steps_per_epoch * global_batch, global_batch):
                if world > 1:
                    start = i + rank * batch_size
                    idx = order[torch.arange(start, start + batch_size, device=order.device) % n]
                else:
                    idx = order[i : i + batch_size]
                loss = svi.step(data[idx], *args, **kwargs)
                if isinstance(loss, tuple):  # ReweightedWakeSleep: (wake-theta loss, wake/sleep-phi loss)
                    if not all(math.isfinite(float(part)) for part in loss):
                        raise DivergenceError(f"the losses became {loss} at epoch {epoch}, step {steps}")
                    loss = float(loss[0])
                if not math.isfinite(loss):
                    raise DivergenceError(f"the loss became {loss} at epoch {epoch}, step {steps}")
                total += loss
                steps += 1
                bar.update()
                if steps_run + steps == total_steps:
                    break
            steps_run += steps
            mean = total / steps / n
            for name, value in pyro.get_param_store().items():
                if not torch.isfinite(value).all():
                    raise DivergenceError(f"parameter {name!r} is not finite after epoch {epoch}")
            history.append(mean)
            bar.set_postfix(epoch=epoch, loss=f"{mean:.4g}")
            if callback is not None:
                callback(epoch, mean)
            if steps_run == total_steps:
                break
    finally:
        bar.close()
    return history
