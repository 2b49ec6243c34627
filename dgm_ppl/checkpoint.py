"""Checkpoints that resume training exactly: modules (with their persistent chains), the Pyro
optimizer's state, and the random number generators."""

from __future__ import annotations

import os
from collections.abc import Mapping

import pyro
import torch
from pyro.optim import PyroOptim
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(
    path: str | os.PathLike, modules: Mapping[str, nn.Module], optim: PyroOptim | None = None, **extra
) -> None:
    """Save ``modules`` (e.g. ``{"rbm": rbm, "chains": chains}``), the optimizer state and the RNG
    states (torch, CUDA, numpy and Python) to ``path``. ``extra`` items are saved as they are."""
    state = {
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "optim": None if optim is None else optim.get_state(),
        "rng": pyro.util.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "extra": extra,
    }
    torch.save(state, path)


def load_checkpoint(
    path: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optim: PyroOptim | None = None,
    *,
    restore_rng: bool = True,
    map_location=None,
) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``modules`` and ``optim`` (in place),
    restore the RNG states, and return the ``extra`` items."""
    state = torch.load(path, map_location=map_location, weights_only=False)
    missing = set(modules) - set(state["modules"])
    if missing:
        raise KeyError(f"the checkpoint has no modules named {sorted(missing)}")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    if optim is not None and state["optim"] is not None:
        store = pyro.get_param_store()
        live = {store.param_name(p): obj for p, obj in optim.optim_objs.items()}
        for name, opt_state in state["optim"].items():
            if name in live:  # an optimizer already exists for this parameter: load directly
                live[name].load_state_dict(opt_state)
            else:
                optim.set_state({name: opt_state})
    if restore_rng:
        pyro.util.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["extra"]
