"""Speed: one generator step of an MLP GAN (and GMMN) through ``pyro.infer.SVI`` vs a hand-written PyTorch loop.

Implementations, timed in the same run, interleaved in chunks of steps (the order alternating), each from the
same initial networks and with its own copy of the random stream:

1. ``svi``: an unmodified ``pyro.infer.SVI`` with ``GANLoss(kind="nonsaturating")`` (one discriminator Adam step
   on detached fakes inside the loss, then the generator loss with the discriminator frozen) and
   ``pyro.optim.Adam`` on the generator; ``svi_no_validation`` is the same with Pyro's validation off;
   ``svi_dgm_optim`` the same with ``dgm_ppl.optim.Adam`` (one ``torch.optim.Adam`` over all the generator's
   tensors instead of Pyro's one per tensor; the same arithmetic, so the same trajectory as ``raw``).
2. ``raw``: the same arithmetic by hand: z ~ N(0, I), fakes G(z), the discriminator's softplus loss on real and
   detached fakes, its Adam step, then softplus(−D(G(z))) with D's parameters frozen, backward, the
   generator's Adam step, and the loss as a Python float (what ``svi.step`` returns).
3. ``mmd_svi`` / ``mmd_raw``: ``MMDLoss`` (unbiased MMD² with a Gaussian-mixture kernel) vs the same U-statistic
   by hand.

Three sizes: ``pacgan`` (PacGAN's grid networks: generator 4×400 ReLU with batch norm, discriminator 3×200
LeakyReLU, batch 500), ``small`` (the default networks of ``gan_modes.py``) and ``sharp`` (the same with the
3×256 discriminator of ``gan_modes.py --d-hidden 256 --d-layers 3``). Prints one JSON line per
(size, implementation) with the median milliseconds per step over chunks, and one summary line per size with the
ratios and the largest difference between the generators' outputs (on fixed latents, batch statistics) of the SVI
and the hand-written runs after their first step and after all steps. They draw the same random numbers in the
same order: the GAN runs agree exactly; the MMD runs agree to rounding after one step (the order in which
autograd sums the kernel's gradient contributions differs), and such rounding differences grow over the run
(two hand-written runs that differ only in summation order drift apart as much).

    OMP_NUM_THREADS=1 python benchmarks/gan_speed.py
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from gan_modes import BANDWIDTHS, Critic, mlp  # the same networks and kernel as the mode benchmark
from pyro.infer import SVI
from torch import nn

import dgm_ppl.optim
from dgm_ppl.datasets import grid_of_gaussians
from dgm_ppl.infer import GANLoss, MMDLoss
from dgm_ppl.kernels import RBFMixture

SIZES = {
    "pacgan": dict(g_hidden=400, g_layers=4, d_hidden=200, d_layers=3, batch=500),
    "small": dict(g_hidden=128, g_layers=3, d_hidden=128, d_layers=2, batch=256),
    "sharp": dict(g_hidden=128, g_layers=3, d_hidden=256, d_layers=3, batch=256),
}
PAIRS = (("svi", "raw"), ("svi_no_validation", "raw"), ("svi_dgm_optim", "raw"), ("mmd_svi", "mmd_raw"))
IMPLS = ["svi", "raw", "svi_no_validation", "svi_dgm_optim", "mmd_svi", "mmd_raw"]


def emit(**record):
    print(json.dumps(record), flush=True)


def make_svi(name, G, D, n, zdim, lr, bandwidths):
    def model(x):
        pyro.module(name, G)
        with pyro.plate("data", n, subsample=x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([zdim]).to_event(1))
            pyro.sample("x", dist.Delta(G(z), event_dim=1), obs=x)

    if D is None:
        loss = MMDLoss(RBFMixture(bandwidths))
    else:
        d_optim = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
        loss = GANLoss(D, kind="nonsaturating", d_optim=d_optim)
    optim = (dgm_ppl.optim.Adam if name == "svi_dgm_optim" else pyro.optim.Adam)({"lr": lr, "betas": (0.5, 0.999)})
    svi = SVI(model, lambda x: None, optim, loss)
    return svi.step


def make_raw_gan(G, D, zdim, lr):
    g_opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    d_params = list(D.parameters())

    def step(x):
        fake = G(torch.randn(x.shape[0], zdim, device=x.device))
        d_loss = F.softplus(-D(x)).mean() + F.softplus(D(fake.detach())).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        for p in d_params:
            p.requires_grad_(False)
        g_loss = F.softplus(-D(fake)).mean()
        for p in d_params:
            p.requires_grad_(True)
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        return g_loss.item()

    return step


def make_raw_mmd(G, zdim, lr, bandwidths):
    g_opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    gamma = 0.5 / torch.as_tensor(bandwidths, device=next(G.parameters()).device).pow(2)

    def gram(a, b):  # as dgm_ppl.kernels.RBFMixture: exp stopped at exp(-80) (the slow subnormal path)
        d = (a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1) - 2 * a @ b.T).clamp_min(0)
        return torch.exp(-(d.unsqueeze(-1) * gamma).clamp_max(80.0)).sum(-1)

    def step(x):
        fake = G(torch.randn(x.shape[0], zdim, device=x.device))
        n, m = len(fake), len(x)
        kxx, kyy, kxy = gram(fake, fake), gram(x, x), gram(fake, x)
        loss = (
            (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        return loss.item()

    return step


def bench_size(size, cfg, args, data):
    zdim, n, bs = 2, len(data), cfg["batch"]
    torch.manual_seed(args.seed)
    G0 = mlp([zdim] + [cfg["g_hidden"]] * cfg["g_layers"] + [2], nn.ReLU, batch_norm=True)
    D0 = Critic(2, [cfg["d_hidden"]] * cfg["d_layers"])
    nets, steps = {}, {}
    pyro.clear_param_store()
    for name in args.impls:
        G, D = copy.deepcopy(G0), copy.deepcopy(D0)
        if name == "raw":
            steps[name] = make_raw_gan(G, D, zdim, args.lr)
        elif name == "mmd_raw":
            steps[name] = make_raw_mmd(G, zdim, args.lr, args.bandwidths)
        else:
            steps[name] = make_svi(name, G, None if name.startswith("mmd") else D, n, zdim, args.lr, args.bandwidths)
        nets[name] = G
    validate = {name: name != "svi_no_validation" for name in args.impls}
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    total = args.warmup + args.chunks * args.chunk
    batches = [data[order[(i * bs) % (n - bs) : (i * bs) % (n - bs) + bs]] for i in range(total)]
    streams = {name: torch.Generator().manual_seed(args.seed + 1).get_state() for name in args.impls}
    times = {name: [] for name in args.impls}

    z = torch.randn(1000, zdim, generator=torch.Generator().manual_seed(args.seed + 2))

    @torch.no_grad()
    def diff(a, b):
        # G's outputs with batch statistics: the biases in front of batch norm have no effect on them (their
        # true gradient is 0, so Adam turns rounding noise there into full-size steps that differ between runs)
        outputs = []
        for name in (a, b):
            state = {k: v.clone() for k, v in nets[name].state_dict().items()}
            outputs.append(nets[name].train()(z))
            nets[name].load_state_dict(state)
        return float((outputs[0] - outputs[1]).abs().max())

    def run_chunk(name, chunk):
        pyro.enable_validation(validate[name])  # a global flag: set per chunk, as the runs are interleaved
        torch.set_rng_state(streams[name])
        t0 = time.perf_counter()
        for x in chunk:
            steps[name](x)
        elapsed = time.perf_counter() - t0
        streams[name] = torch.get_rng_state()
        return elapsed

    for name in args.impls:  # first step, for the consistency check
        run_chunk(name, batches[:1])
    first = {}
    for svi_name, raw_name in PAIRS:
        if svi_name in nets and raw_name in nets:
            first[f"first_step_sample_diff_{svi_name}_vs_{raw_name}"] = diff(svi_name, raw_name)
    for name in args.impls:  # the rest of the warm-up
        run_chunk(name, batches[1 : args.warmup])
    for c in range(args.chunks):
        chunk = batches[args.warmup + c * args.chunk : args.warmup + (c + 1) * args.chunk]
        for name in args.impls if c % 2 == 0 else reversed(args.impls):
            times[name].append(1000 * run_chunk(name, chunk) / len(chunk))
    pyro.enable_validation(True)

    common = dict(benchmark="gan_step", size=size, **cfg, threads=torch.get_num_threads(), steps=total)
    ms = {name: statistics.median(v) for name, v in times.items()}
    for name in args.impls:
        emit(**common, impl=name, ms_per_step=round(ms[name], 3), chunks=[round(t, 2) for t in times[name]])

    summary = dict(**common, event="summary", median_ms={k: round(v, 3) for k, v in ms.items()})
    for svi_name, raw_name in PAIRS:
        if svi_name in ms and raw_name in ms:
            summary[f"{svi_name}_over_{raw_name}"] = round(ms[svi_name] / ms[raw_name], 3)
            summary[f"final_sample_diff_{svi_name}_vs_{raw_name}"] = diff(svi_name, raw_name)
    summary.update(first)
    emit(**summary)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
    ap.add_argument("--chunks", type=int, default=10, help="timed chunks per implementation")
    ap.add_argument("--chunk", type=int, default=20, help="steps per chunk")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--bandwidths", type=float, nargs="+", default=list(BANDWIDTHS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = grid_of_gaussians(100_000, generator=torch.Generator().manual_seed(args.seed))
    for size in args.sizes:
        bench_size(size, SIZES[size], args, data)


if __name__ == "__main__":
    main()
