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
