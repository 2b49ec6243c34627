"""Mode collapse: MLP generators trained through ``pyro.infer.SVI`` on the ring-8 and grid-25 Gaussian mixtures.

The benchmark of VEEGAN and PacGAN (Srivastava et al. 2017; Lin et al. 2018). For each data set, loss and
seed, a fresh generator (and discriminator) is trained on a fixed training set (100,000 draws) by an
unmodified ``pyro.infer.SVI`` with one of dgm_ppl's losses:

- ``gan``: ``GANLoss(kind="nonsaturating")``;
- ``pacgan``: the same with ``packing=4`` (PacGAN4; the batch holds 4x as many samples, so that the
  discriminator sees as many packed examples per step as ``gan`` sees samples);
- ``wgan_gp``: ``GANLoss(kind="wasserstein", gradient_penalty=10, d_steps=5)``, with the one-sided penalty
  (WGAN-LP) by default, ``--two-sided`` for Gulrajani et al.'s;
- ``mmd``: ``MMDLoss`` with a mixture of Gaussian kernels whose bandwidths run from the ring's mode width
  (σ = 0.01) up to the grid's extent (a GMMN);

then 2,500 samples are scored by :func:`dgm_ppl.evaluation.mode_coverage`: modes covered (a mode counts when
a sample lies within 3σ of its centre), the fraction of high-quality samples (within 3σ of the nearest
centre) and the reverse KL of the mode frequencies. Targets: 8/8 and 25/25 modes with ≥ 95% high-quality
samples (PacGAN4 reports 24.8/25 modes at 93.6% on the grid). True samples are within 3σ with probability
1 − exp(−9/2) ≈ 98.9% in 2-D.

The networks are smaller than PacGAN's (generator 4×400 ReLU with batch norm, discriminator 3×200) so that
all data sets × losses × 5 seeds run in about 30 minutes on one CPU core: generator 3×128 ReLU with batch
norm, discriminator 2×128 LeakyReLU(0.2), 2-D latent. Each loss has its own learning rates, batch size and
number of steps (about the same wall time per run; ``--steps`` and ``--batch-size`` override them for all),
and both learning rates decay exponentially to ``--final-lr-factor`` of their initial value over the run.
Samples are drawn with batch norm in evaluation mode (running statistics).

Prints one JSON line per run and one summary line per (data set, loss) with mean and standard deviation over
the seeds.

    OMP_NUM_THREADS=1 python benchmarks/gan_modes.py --no-progress --out outputs/gan_modes.jsonl
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
# Per-loss defaults (tuned on seed 0 with short runs): generator / discriminator learning rates, Adam betas,
# discriminator steps per generator step, batch size (samples) and generator steps.
DEFAULTS = {
    "gan": dict(g_lr=1e-3, d_lr=1e-3, betas=(0.5, 0.999), d_steps=1, batch_size=256, steps=3500),
    "pacgan": dict(g_lr=1e-3, d_lr=1e-3, betas=(0.5, 0.999), d_steps=1, batch_size=1024, steps=3000),
    "wgan_gp": dict(g_lr=5e-4, d_lr=5e-4, betas=(0.5, 0.9), d_steps=5, batch_size=256, steps=1000),
    "mmd": dict(g_lr=1e-2, d_lr=None, betas=(0.5, 0.999), d_steps=None, batch_size=128, steps=3500),
}
BANDWIDTHS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


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
        return MMDLoss(RBFMixture(args.bandwidths))
    packing = args.packing if name == "pacgan" else 1
    d = Critic(2 * packing, args.d_hidden, args.d_layers)
    d_optim = torch.optim.Adam(d.parameters(), lr=hp["d_lr"], betas=hp["betas"])
    if name == "wgan_gp":
        return GANLoss(
            d, kind="wasserstein", d_optim=d_optim, d_steps=hp["d_steps"], gradient_penalty=10.0,
            one_sided=not args.two_sided,
        )  # fmt: skip
    return GANLoss(d, kind="nonsaturating", d_optim=d_optim, d_steps=hp["d_steps"], packing=packing)


@torch.no_grad()
def draw(G, n, zdim, train_mode=False):
    """``n`` samples: the generator applied to fresh latents, with batch norm in evaluation mode (running
    statistics) or, with ``train_mode``, batch statistics over the ``n`` samples as in training (the running
    statistics are left as they were)."""
    state = {k: v.clone() for k, v in G.state_dict().items()}
    mode = G.training
    G.train(train_mode)
    samples = G(torch.randn(n, zdim))
    G.load_state_dict(state)
    G.train(mode)
    return samples


def run(dataset, name, seed, args, progress):
    hp = dict(DEFAULTS[name])
    for key in ("g_lr", "d_lr", "d_steps", "batch_size", "steps"):
        if getattr(args, key) is not None and (key not in ("d_lr", "d_steps") or name != "mmd"):
            hp[key] = getattr(args, key)
    steps, bs = hp["steps"], hp["batch_size"]
    pyro.clear_param_store()
    torch.manual_seed(seed)
    data = DATASETS[dataset](args.train_size, generator=torch.Generator().manual_seed(10_000 + seed))
    n, zdim = len(data), args.latent
    G = mlp([zdim] + [args.g_hidden] * args.g_layers + [2], nn.ReLU, batch_norm=not args.no_batch_norm)
    loss = make_loss(name, args, hp)

    def model(x):
        pyro.module("G", G)
        with pyro.plate("data", n, subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([zdim]).to_event(1))
            pyro.sample("x", dist.Delta(G(z), event_dim=1), obs=x)

    def guide(x):
        pass

    gamma = args.final_lr_factor ** (1 / steps)
    optim_args = {"lr": hp["g_lr"], "betas": hp["betas"]}
    optim = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": optim_args, "gamma": gamma})
    svi = SVI(model, guide, optim, loss)
    d_sched = None
    if isinstance(loss, GANLoss):
        d_sched = torch.optim.lr_scheduler.ExponentialLR(loss.d_optim, gamma=gamma)

    bar = tqdm(total=steps, disable=not progress, desc=f"{dataset}/{name}/{seed}", mininterval=1.0, leave=False)
    t0 = time.perf_counter()
    order, pos = torch.randperm(n), 0
    for step in range(steps):
        if pos + bs > n:
            order, pos = torch.randperm(n), 0
        value = svi.step(data[order[pos : pos + bs]])
        pos += bs
        optim.step()  # the learning-rate schedules
        if d_sched is not None:
            d_sched.step()
        if not math.isfinite(value):
            raise RuntimeError(f"{dataset}/{name}/seed {seed}: the loss became {value} at step {step}")
        bar.update()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{value:.4g}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < steps:
            s = mode_coverage(draw(G, args.samples, zdim), dataset)
            emit(dict(event="progress", dataset=dataset, loss=name, seed=seed, step=step + 1, modes=s.modes,
                      high_quality=round(s.high_quality, 4), reverse_kl=round(s.reverse_kl, 4),
                      s=round(time.perf_counter() - t0, 1)))  # fmt: skip
    bar.close()
    train_s = time.perf_counter() - t0
    score = mode_coverage(draw(G, args.samples, zdim), dataset)
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
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()},
    )


def mean_std(values):
    return round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (first-seed, first-seed + 1, ...)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="generator steps per run (default: per loss)")
    ap.add_argument("--batch-size", type=int, help="samples per step (default: per loss)")
    ap.add_argument("--g-lr", type=float, help="override the per-loss generator learning rate")
    ap.add_argument("--d-lr", type=float, help="override the per-loss discriminator learning rate")
    ap.add_argument("--d-steps", type=int, help="override the per-loss discriminator steps")
    ap.add_argument("--final-lr-factor", type=float, default=0.1, help="both rates decay to this fraction")
    ap.add_argument("--train-size", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=2500, help="samples scored per run")
    ap.add_argument("--latent", type=int, default=2)
    ap.add_argument("--g-hidden", type=int, default=128)
    ap.add_argument("--g-layers", type=int, default=3)
    ap.add_argument("--d-hidden", type=int, default=128)
    ap.add_argument("--d-layers", type=int, default=2)
    ap.add_argument("--no-batch-norm", action="store_true", help="no batch norm in the generator")
    ap.add_argument("--two-sided", action="store_true", help="two-sided gradient penalty for wgan_gp (WGAN-GP)")
    ap.add_argument("--packing", type=int, default=4, help="PacGAN's m for pacgan")
    ap.add_argument("--bandwidths", type=float, nargs="+", default=list(BANDWIDTHS), help="RBF σ's for mmd")
    ap.add_argument("--eval-every", type=int, default=0, help="also score the samples every this many steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
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
                summary["steps"] = runs[0]["steps"]
                # runs reaching the target: every mode covered and ≥ 95% high-quality samples
                summary["on_target"] = sum(r["modes"] == r["num_modes"] and r["high_quality"] >= 0.95 for r in runs)
                emit(summary, out)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    main()
