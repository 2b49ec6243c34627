"""Mode collapse: MLP generators trained through ``pyro.infer.SVI`` on the ring-8 and grid-25 Gaussian mixtures.

The benchmark of VEEGAN and PacGAN (Srivastava et al. 2017; Lin et al. 2018). For each data set, loss and
seed, a fresh generator (and discriminator) is trained on a fixed training set by an unmodified
``pyro.infer.SVI`` with one of dgm_ppl's losses:

- ``gan``: ``GANLoss(kind="nonsaturating")``;
- ``pacgan``: the same with ``packing=4`` (PacGAN4);
- ``wgan_gp``: ``GANLoss(kind="wasserstein", gradient_penalty=10, d_steps=5)`` (WGAN-GP; ``--one-sided``
  for the one-sided penalty of WGAN-LP);
- ``mmd``: ``MMDLoss`` with a mixture of Gaussian kernels whose bandwidths run from the modes' width up to the
  data's extent (a GMMN);

then 2,500 samples are scored by :func:`dgm_ppl.evaluation.mode_coverage`: modes covered (a mode counts when
a sample lies within 3σ of its centre), the fraction of high-quality samples (within 3σ of the nearest
centre) and the reverse KL of the mode frequencies. Targets: 8/8 and 25/25 modes with ≥ 95% high-quality
samples (PacGAN4 reports 24.8/25 modes at 93.6% on the grid). True samples are within 3σ with probability
1 − exp(−9/2) ≈ 98.9% in 2-D.

Prints one JSON line per run and one summary line per (data set, loss) with mean and standard deviation over
the seeds.

    OMP_NUM_THREADS=1 python benchmarks/gan_modes.py --out outputs/gan_modes.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI
from torch import nn
from tqdm.auto import tqdm

from dgm_ppl.datasets import grid_of_gaussians, ring_of_gaussians
from dgm_ppl.evaluation.modes import mode_coverage
from dgm_ppl.infer import GANLoss, MMDLoss
from dgm_ppl.kernels import RBFMixture

DATASETS = {"ring": ring_of_gaussians, "grid": grid_of_gaussians}
LOSSES = ("gan", "pacgan", "wgan_gp", "mmd")
# per-loss defaults: generator / discriminator learning rates and Adam betas, discriminator steps
DEFAULTS = {
    "gan": dict(g_lr=1e-3, d_lr=1e-3, betas=(0.5, 0.999), d_steps=1),
    "pacgan": dict(g_lr=1e-3, d_lr=1e-3, betas=(0.5, 0.999), d_steps=1),
    "wgan_gp": dict(g_lr=1e-4, d_lr=1e-4, betas=(0.5, 0.9), d_steps=5),
    "mmd": dict(g_lr=1e-3, d_lr=None, betas=(0.5, 0.999), d_steps=0),
}
BANDWIDTHS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def emit(record, out=None):
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def mlp(sizes, act, batch_norm=False):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(act())
    return nn.Sequential(*layers)


class Critic(nn.Module):
    """An MLP discriminator returning one logit per (packed) sample."""

    def __init__(self, in_features, hidden, layers):
        super().__init__()
        self.net = mlp([in_features] + [hidden] * layers + [1], lambda: nn.LeakyReLU(0.2))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def make_loss(name, args, hp):
    if name == "mmd":
        return MMDLoss(RBFMixture(args.bandwidths)), None
    packing = args.packing if name == "pacgan" else 1
    d = Critic(2 * packing, args.d_hidden, args.d_layers)
    d_optim = torch.optim.Adam(d.parameters(), lr=hp["d_lr"], betas=hp["betas"])
    if name == "wgan_gp":
        loss = GANLoss(
            d, kind="wasserstein", d_optim=d_optim, d_steps=hp["d_steps"], gradient_penalty=10.0,
            one_sided=args.one_sided,
        )  # fmt: skip
    else:
        loss = GANLoss(d, kind="nonsaturating", d_optim=d_optim, d_steps=hp["d_steps"], packing=packing)
    return loss, d


def run(dataset, name, seed, args, progress):
    hp = dict(DEFAULTS[name])
    for key in ("g_lr", "d_lr", "d_steps"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    data = DATASETS[dataset](args.train_size, generator=torch.Generator().manual_seed(10_000 + seed))
    n, zdim = len(data), args.latent
    G = mlp([zdim] + [args.g_hidden] * args.g_layers + [2], nn.ReLU, batch_norm=not args.no_batch_norm)
    loss, _ = make_loss(name, args, hp)

    def model(x):
        pyro.module("G", G)
        with pyro.plate("data", n, subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([zdim]).to_event(1))
            pyro.sample("x", dist.Delta(G(z), event_dim=1), obs=x)

    def guide(x):
        pass

    decay = (args.final_lr_factor ** (1 / args.steps)) if args.final_lr_factor != 1 else None
    optim_args = {"lr": hp["g_lr"], "betas": hp["betas"]}
    if decay is None:
        optim = pyro.optim.Adam(optim_args)
    else:
        optim = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": optim_args, "gamma": decay})
    svi = SVI(model, guide, optim, loss)
    d_sched = None
    if decay is not None and isinstance(loss, GANLoss):
        d_sched = torch.optim.lr_scheduler.ExponentialLR(loss.d_optim, gamma=decay)

    bs = args.batch_size
    bar = tqdm(total=args.steps, disable=not progress, desc=f"{dataset}/{name}/{seed}", mininterval=1.0, leave=False)
    t0 = time.perf_counter()
    order, pos = torch.randperm(n), 0
    for step in range(args.steps):
        if pos + bs > n:
            order, pos = torch.randperm(n), 0
        value = svi.step(data[order[pos : pos + bs]])
        pos += bs
        if decay is not None:
            optim.step()
            if d_sched is not None:
                d_sched.step()
        if not math.isfinite(value):
            raise RuntimeError(f"{dataset}/{name}/seed {seed}: the loss became {value} at step {step}")
        bar.update()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{value:.4g}")
    bar.close()
    train_s = time.perf_counter() - t0
    # Samples: the generator applied to fresh latents, with batch norm in evaluation mode (running statistics)
    # unless --sample-train-mode (batch statistics over all the samples, as during training).
    G.train(args.sample_train_mode)
    with torch.no_grad():
        samples = G(torch.randn(args.samples, zdim))
    score = mode_coverage(samples, dataset)
    return dict(
        benchmark="gan_modes",
        dataset=dataset,
        loss=name,
        seed=seed,
        modes=score.modes,
        num_modes=score.num_modes,
        high_quality=round(score.high_quality, 4),
        reverse_kl=round(score.reverse_kl, 4),
        wall_s=round(time.perf_counter() - t0, 2),
        train_s=round(train_s, 2),
        steps=args.steps,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()},
    )


def mean_std(values):
    return round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000, help="generator steps per run")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--train-size", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=2500, help="samples scored per run")
    ap.add_argument("--latent", type=int, default=2)
    ap.add_argument("--g-hidden", type=int, default=400)
    ap.add_argument("--g-layers", type=int, default=4)
    ap.add_argument("--d-hidden", type=int, default=200)
    ap.add_argument("--d-layers", type=int, default=3)
    ap.add_argument("--no-batch-norm", action="store_true", help="no batch norm in the generator")
    ap.add_argument("--sample-train-mode", action="store_true", help="batch statistics when sampling")
    ap.add_argument("--g-lr", type=float, help="override the per-loss generator learning rate")
    ap.add_argument("--d-lr", type=float, help="override the per-loss discriminator learning rate")
    ap.add_argument("--d-steps", type=int, help="override the per-loss discriminator steps")
    ap.add_argument("--final-lr-factor", type=float, default=1.0, help="exponential decay of both rates to this")
    ap.add_argument("--one-sided", action="store_true", help="one-sided gradient penalty for wgan_gp")
    ap.add_argument("--packing", type=int, default=4, help="PacGAN's m for pacgan")
    ap.add_argument("--bandwidths", type=float, nargs="+", default=list(BANDWIDTHS), help="RBF σ's for mmd")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = open(args.out, "a") if args.out else None
    config = {k: v for k, v in vars(args).items() if k not in ("out", "no_progress")}
    emit(dict(benchmark="gan_modes", event="config", **config), out)
    try:
        for dataset in args.datasets:
            for name in args.losses:
                runs = []
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    record = run(dataset, name, seed, args, not args.no_progress)
                    emit(record, out)
                    runs.append(record)
                summary = dict(benchmark="gan_modes", event="summary", dataset=dataset, loss=name, runs=len(runs))
                for key in ("modes", "high_quality", "reverse_kl", "wall_s"):
                    summary[key], summary[key + "_std"] = mean_std([r[key] for r in runs])
                summary["num_modes"] = runs[0]["num_modes"]
                summary["all_modes_and_95"] = sum(
                    r["modes"] == r["num_modes"] and r["high_quality"] >= 0.95 for r in runs
                )
                emit(summary, out)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    main()
