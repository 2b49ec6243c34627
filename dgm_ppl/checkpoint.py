"""Checkpoints that resume training exactly: modules (with their persistent chains), the Pyro
optimizer's state, and the random number generators."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import pyro
import torch
from pyro.optim import PyroOptim
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_save", "load_optim_state"]


def save_checkpoint(
    path: str | os.PathLike, modules: Mapping[str, nn.Module], optim: PyroOptim | None = None, **extra
) -> None:
    """Save ``modules`` (e.g. ``{"rbm": rbm, "chains": chains}``), the optimizer state and the RNG
    states (torch, CUDA, numpy and Python) to ``path``. ``extra`` items are saved as they are.

    The write is atomic: the state goes to a temporary file in the same folder, which is flushed and
    ``fsync``-ed and then renamed over ``path`` (``os.replace``). A process killed while saving leaves the
    previous checkpoint intact.

    :param path: where to write.
    :param modules: the modules to save, by name (their ``state_dict``, persistent chains included).
    :param optim: the Pyro optimizer whose per-parameter states are saved, or None.
    :param extra: further picklable items (epoch counters, histories), returned by :func:`load_checkpoint`.
    """
    state = {
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "optim": None if optim is None else optim.get_state(),
        "rng": pyro.util.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "extra": extra,
    }
    atomic_save(state, path)


def atomic_save(state: dict, path: str | os.PathLike) -> None:
    """``torch.save(state, path)`` that leaves either the old file or the whole new one, never a part: the
    state goes to a temporary file in the same folder, flushed and ``fsync``-ed, then renamed over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable (POSIX; not possible on every platform)
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(
    path: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optim: PyroOptim | None = None,
    *,
    restore_rng: bool = True,
    map_location=None,
) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``modules`` and ``optim`` (in place),
    restore the RNG states, and return the ``extra`` items.

    :param path: the checkpoint file.
    :param modules: the modules to restore, by the names they were saved under.
    :param optim: the Pyro optimizer to restore, or None.
    :param restore_rng: also restore the torch, CUDA, numpy and Python RNG states (exact resumption).
    :param map_location: passed to :func:`torch.load`.
    :returns: the ``extra`` items given to :func:`save_checkpoint`.
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: if the file is damaged (truncated, empty) or not a dgm_ppl checkpoint; nothing is loaded.
    :raises KeyError: if a module named in ``modules`` is not in the checkpoint.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {os.fspath(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or empty file: EOFError, zip-reader RuntimeError, UnpicklingError, ...
        reason = f"{type(e).__name__}: {e}"
        raise ValueError(f"checkpoint {os.fspath(path)!r} is damaged or not a torch file ({reason})") from e
    if not isinstance(state, dict) or not {"modules", "optim", "rng"} <= set(state):
        raise ValueError(f"{os.fspath(path)!r} is a torch file but not a dgm_ppl checkpoint (save_checkpoint)")
    if state.get("world_size", 1) != 1:
        raise ValueError(
            f"{os.fspath(path)!r} was written by {state['world_size']} processes "
            "(dgm_ppl.distributed.save_checkpoint): resume it with dgm_ppl.distributed.load_checkpoint on "
            f"{state['world_size']} processes; nothing was loaded"
        )
    missing = set(modules) - set(state["modules"])
    if missing:
        raise KeyError(f"the checkpoint has no modules named {sorted(missing)}")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    if optim is not None and state["optim"] is not None:
        load_optim_state(optim, state["optim"])
    if restore_rng:
        pyro.util.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["extra"]


def load_optim_state(optim: PyroOptim, state: dict) -> None:
    """Load ``state`` (from ``optim.get_state()``) into ``optim``: at once into the per-parameter optimizers that
    exist already, and for the others when their parameters are first stepped (``optim.set_state``)."""
    store = pyro.get_param_store()
    live = {store.param_name(p): obj for p, obj in optim.optim_objs.items()}
    for name, opt_state in state.items():
        if name in live:  # an optimizer already exists for this parameter: load directly
            live[name].load_state_dict(opt_state)
        else:
            optim.set_state({name: opt_state})
