import importlib.util
import sys
from pathlib import Path

import numpy as np
import pyro
import torch

from dgm_ppl.energy._ops import binary_states


def all_states(n, like=None):
    like = torch.zeros(()) if like is None else like
    return binary_states(n, 0, 2**n, like)


def exact_visible_probs(rbm):
    """p(v) over all 2^n_visible states, by brute force over both layers."""
    v = all_states(rbm.n_visible)
    h = all_states(rbm.n_hidden)
    e = rbm.energy(v[:, None, :].expand(-1, len(h), -1), h[None].expand(len(v), -1, -1))
    logp = torch.logsumexp(-e, 1)
    return torch.softmax(logp, 0), v


def state_index(v):
    return (v * 2 ** torch.arange(v.shape[-1])).sum(-1).long()


def grads() -> dict[str, torch.Tensor]:
    """The gradients in the param store, which are then cleared."""
    out = {}
    for name, p in pyro.get_param_store().named_parameters():
        if p.grad is not None:
            out[name] = p.grad.clone()
            p.grad = None
    return out


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def benchmark_script(name: str):
    """``benchmarks/<name>.py`` as a module (the scripts import their shared ``benchmarks/_training.py``)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_mnist(path, n_train: int, n_valid: int) -> str:
    """A binarized-MNIST-shaped ``.npz`` (``train``, ``valid``) of a mixture of three factorial patterns."""
    rng = np.random.default_rng(0)
    means = rng.uniform(0.05, 0.95, size=(3, 784))
    n = n_train + n_valid
    pick = rng.integers(0, 3, size=n)
    x = (rng.uniform(size=(n, 784)) < means[pick]).astype(np.uint8)
    np.savez(path, train=x[:n_train], valid=x[n_train:])
    return str(path)
