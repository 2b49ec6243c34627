"""What each process of the data-parallel tests runs (spawned by ``test_distributed.py``; importable by the
spawned children, whose ``sys.path`` is the parent's).

Every case builds its state from fixed seeds, so that the parent can rebuild the same state in one process and
compare: ``equal_*`` cases run one step on the rank's shard of a fixed global batch, with every source of
randomness fixed (fixed negative-phase states, conditioned latents, noise passed in).
"""

from __future__ import annotations

import os
import traceback
from datetime import timedelta

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.poutine as poutine
import torch
import torch.distributed as tdist
from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger
from torch import nn

from dgm_ppl import distributed
from dgm_ppl import optim as dgm_optim
from dgm_ppl.energy import BernoulliRBM, PersistentChains
from dgm_ppl.energy.chains import NegativePhase
from dgm_ppl.infer import GANLoss, JitTrace_ELBO, train
from dgm_ppl.models import VAE

D, H = 12, 6


class FixedChains(NegativePhase):
    """A negative phase that returns fixed states (so that one step is deterministic)."""

    def __init__(self, model, states):
        super().__init__(model)
        self.register_buffer("state", states.clone())

    def advance(self, data=None, *, params=None):
        return self.state


class FixedNoise(Messenger):
    """Draws the reparametrized Normal site ``name`` as ``loc + scale * eps`` with the given ``eps``."""

    def __init__(self, name, eps):
        super().__init__()
        self.name, self.eps = name, eps

    def _pyro_sample(self, msg):
        if msg["name"] == self.name and not msg["is_observed"]:
            base = msg["fn"]
            while not isinstance(base, dist.Normal):
                base = base.base_dist
            msg["value"] = base.loc + base.scale * self.eps


def data(n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.bernoulli(torch.full((n, D), 0.3), generator=g)


def rbm_model(rbm, chains, n):
    def model(x):
        with pyro.plate("data", n, subsample=x):
            pyro.sample("x", rbm.distribution(chains), obs=x)

    return model


def rbm_setup(centered: bool = True):
    torch.manual_seed(0)
    rbm = BernoulliRBM(D, H, centered=centered, init_std=0.3, name="rbm")
    return rbm


# ---------------------------------------------------------------------------------------------- equality cases
def equal_rbm(shard: slice, world: int) -> dict:
    """One SGD step of a centered RBM on the shard, with fixed negative states (2 per rank)."""
    x = data(8)
    rbm = rbm_setup()
    negatives = torch.bernoulli(torch.full((4, D), 0.5), generator=torch.Generator().manual_seed(7))
    chains = FixedChains(rbm, negatives[_chains(shard, world)])
    svi = distributed.DistributedSVI(
        rbm_model(rbm, chains, 100), lambda x: None, pyro.optim.SGD({"lr": 0.05}), Trace_ELBO(), modules=[rbm]
    )
    svi.step(x[shard])
    svi.step(x[shard])  # the second step applies the deferred offset move of the first
    return {"state": {k: v.clone() for k, v in rbm.state_dict().items() if isinstance(v, torch.Tensor)}}


def _chains(shard: slice, world: int) -> slice:
    # the rank's half of the four negative states (all four in one process)
    if world == 1 and shard == slice(None):
        return slice(None)
    start = shard.start // 4 * 2
    return slice(start, start + 2)


def equal_vae(shard: slice, world: int) -> dict:
    """One Adam step of a VAE (amortized diagonal guide) on the shard, with the latents fixed."""
    x = data(8)
    torch.manual_seed(1)
    vae = VAE(D, 3, (8,), name="vae")
    guide = vae.guide("diagonal")
    with poutine.block():  # the guide makes its heads at its first call, after random draws as many as the batch
        guide(x[:2], 100)
    z = torch.randn(8, 3, generator=torch.Generator().manual_seed(5))

    def fixed_noise_guide(xb, zb):
        return FixedNoise("z", zb)(guide)(xb, 100)

    svi = distributed.DistributedSVI(
        lambda xb, zb: vae.model(xb, 100), fixed_noise_guide, pyro.optim.SGD({"lr": 0.01}), Trace_ELBO()
    )
    loss = svi.step(x[shard], z[shard])
    state = {f"vae.{k}": v.clone() for k, v in vae.state_dict().items()}
    state.update({f"guide.{k}": v.clone() for k, v in guide.state_dict().items()})
    return {"state": state, "loss": loss}


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, z):
        return self.net(z)


def gan_parts():
    torch.manual_seed(2)
    G = Generator()
    disc = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    loss = GANLoss(disc, d_optim=torch.optim.SGD(disc.parameters(), lr=0.1))
    return G, disc, loss


def equal_gan(shard: slice, world: int) -> dict:
    """One GAN round (discriminator step, then generator step) on the shard, with the noise passed in."""
    g = torch.Generator().manual_seed(9)
    x, z = torch.randn(8, 2, generator=g) + 2.0, torch.randn(8, 2, generator=g)
    G, disc, loss = gan_parts()

    def model(xb, zb):
        pyro.module("G", G)
        with pyro.plate("batch", len(xb)):
            pyro.sample("x", dist.Delta(G(zb), event_dim=1), obs=xb)

    svi = distributed.DistributedSVI(model, lambda xb, zb: None, pyro.optim.SGD({"lr": 0.1}), loss)
    svi.step(x[shard], z[shard])
    state = {f"G.{k}": v.clone() for k, v in G.state_dict().items()}
    state.update({f"D.{k}": v.clone() for k, v in disc.state_dict().items()})
    return {"state": state}


# ------------------------------------------------------------------------------------------- multi-rank cases
def train_all(steps: int) -> dict:
    """RBM (persistent chains, centered), VAE and GAN trained a few steps with rank-specific noise."""
    out = {}
    x = data(40)
    rbm = rbm_setup()  # seeded alike on every rank
    distributed.set_rng_seed(0)  # from here each rank draws its own numbers (chains, latents, fakes)
    chains = PersistentChains(rbm, num_chains=10)
    svi = distributed.DistributedSVI(
        rbm_model(rbm, chains, len(x)), lambda b: None, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(), modules=[rbm]
    )
    out["rbm_losses"] = train(svi, x, epochs=2, batch_size=5, progress=False)
    out["rbm"] = distributed.param_checksum({"rbm": rbm})
    out["chains"] = distributed.param_checksum({"chains": chains})
    out["rbm_eval"] = svi.evaluate_loss(x[:5] if distributed.get_rank() == 0 else x[5:10])

    # a PyroModule built differently on each rank, not passed as modules=: its parameters are broadcast from rank 0
    # when they are first registered
    pyro.clear_param_store()
    other = BernoulliRBM(D, H, init_std=0.3, name="other")
    other_chains = PersistentChains(other, num_chains=4)
    svi = distributed.DistributedSVI(
        rbm_model(other, other_chains, len(x)), lambda b: None, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()
    )
    svi.step(x[:5])
    out["pyro_module"] = distributed.param_checksum({"rbm": other})

    pyro.clear_param_store()
    vae = VAE(D, 3, (8,), name="vae")
    guide = vae.guide("diagonal")
    svi = distributed.DistributedSVI(vae.model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    train(svi, x, epochs=1, batch_size=5, progress=False, args=(len(x),))
    out["vae"] = distributed.param_checksum()

    # the fast path: Pyro's JIT ELBO and the package's optimizer over all parameters at once
    pyro.clear_param_store()
    vae = VAE(D, 3, (8,), name="vae_jit")
    guide = vae.guide("diagonal")
    svi = distributed.DistributedSVI(vae.model, guide, dgm_optim.Adam({"lr": 0.01}), JitTrace_ELBO())
    train(svi, x, epochs=1, batch_size=5, progress=False, kwargs={"num_data": len(x)})
    out["vae_jit"] = distributed.param_checksum()

    pyro.clear_param_store()
    G, disc, loss = gan_parts()

    def model(xb):
        pyro.module("G", G)
        with pyro.plate("batch", len(xb)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Delta(G(z), event_dim=1), obs=xb)

    svi = distributed.DistributedSVI(model, lambda xb: None, pyro.optim.Adam({"lr": 0.01}), loss)
    train(svi, torch.randn(40, 2), epochs=1, batch_size=5, progress=False)
    out["gan"] = distributed.param_checksum({"G": G, "D": disc})
    return out


def checkpoint_roundtrip(path: str, steps: int) -> dict:
    """Train, save on every rank, train on; then rebuild everything from other seeds, resume, train on."""

    def build(seed):
        pyro.clear_param_store()
        distributed.set_rng_seed(seed)
        rbm = BernoulliRBM(D, H, centered=True, init_std=0.3, name="rbm")
        chains = PersistentChains(rbm, num_chains=10)
        optim = pyro.optim.Adam({"lr": 0.01})
        svi = distributed.DistributedSVI(rbm_model(rbm, chains, 40), lambda b: None, optim, Trace_ELBO(), modules=[rbm])
        return rbm, chains, optim, svi

    x = data(40)
    rbm, chains, optim, svi = build(0)
    train(svi, x, epochs=1, batch_size=5, progress=False)
    distributed.save_checkpoint(path, {"rbm": rbm}, optim, local={"chains": chains}, epoch=1)
    train(svi, x, epochs=1, batch_size=5, progress=False)
    first = distributed.param_checksum({"rbm": rbm, "chains": chains})

    rbm, chains, optim, svi = build(99)
    extra = distributed.load_checkpoint(path, {"rbm": rbm}, optim, local={"chains": chains})
    train(svi, x, epochs=1, batch_size=5, progress=False)
    again = distributed.param_checksum({"rbm": rbm, "chains": chains})
    return {"first": first, "resumed": again, "extra": extra}


def nan_on_one_shard() -> dict:
    """Rank 1's shard holds a NaN: rank 1 raises its ValueError, every other rank a DistributedError."""
    x = data(10)
    if distributed.get_rank() == 1:
        x[3, 0] = float("nan")
    rbm = rbm_setup(centered=False)
    chains = PersistentChains(rbm, num_chains=4)
    svi = distributed.DistributedSVI(
        rbm_model(rbm, chains, 10), lambda b: None, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(), modules=[rbm]
    )
    try:  # different data on each rank: refused on every rank before anything runs
        train(svi, data(10 + distributed.get_rank()), progress=False)
    except ValueError as e:
        size_error = str(e)
    svi.step(data(10))  # a good step first
    before = distributed.param_checksum({"rbm": rbm})
    try:
        svi.step(x)
    except Exception as e:
        after = distributed.param_checksum({"rbm": rbm})
        return {"error": type(e).__name__, "message": str(e), "unchanged": before == after, "size_error": size_error}
    return {"error": None}


CASES = {"equal_rbm": equal_rbm, "equal_vae": equal_vae, "equal_gan": equal_gan}


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """The body of each spawned process: every case in turn, results saved to ``out_dir/rank{rank}.pt``."""
    torch.set_num_threads(1)
    tdist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    results = {}
    try:
        pyro.enable_validation(True)
        per_rank = 8 // world
        shard = slice(rank * per_rank, (rank + 1) * per_rank)
        for name, case in CASES.items():
            pyro.clear_param_store()
            results[name] = case(shard, world)
        results["shutdown_at_exit"] = distributed._SHUTDOWN_REGISTERED  # by DistributedSVI, for torch's group
        pyro.clear_param_store()
        results["train"] = train_all(steps=8)
        results["checkpoint"] = checkpoint_roundtrip(os.path.join(out_dir, "ckpt.pt"), steps=4)
        pyro.clear_param_store()
        results["fault"] = nan_on_one_shard()
    except Exception:
        results["crash"] = traceback.format_exc()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        distributed.destroy_process_group()
