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

The networks are smaller than PacGAN's (generator 4×400 ReLU with batch norm, discriminator 3×200), which
reach less in the same time on one CPU core: generator 3×128 ReLU with batch norm, discriminator 2×128
LeakyReLU(0.2), 2-D latent, for every loss. Each loss has its own defaults (``DEFAULTS``: learning rates, Adam
betas, discriminator steps, batch size, steps, schedule); the command-line options override them for all.

The ``gan`` recipe (the tuned one): non-saturating loss, no packing and no penalty, Adam(1e-3, betas
(0.5, 0.999)) for both networks, batch 256, 12,000 generator steps (about 120 s at 100 steps/s on an idle
core), and both learning rates decaying *linearly* to 1% of their initial value by the last step. The
high-quality fraction is set by how tight the samples are at the end, so the decay to ≈ 0 and the number of
steps matter most (ablation on seed 0, 6,000 steps unless stated, ring / grid high quality: exponential decay
to 10% at 3,500 steps 78% / 24%; linear to 1% 92% / 74%; 10,000 steps 96% / 86%; grid only: exponential to 1%
35%, cosine to 1% 46%, batch 128 31%, batch 512 54%, learning rate 2e-3 64% and 21/25 modes, discriminator
3×128 70%, R1 γ = 1 73% (ring 80%), PacGAN's networks at 4,000 steps (23 steps/s) 66% and 24/25 modes; batch
norm in training mode when sampling +1 point). At 12,000 steps (seed 0, ring / grid, raw generator 94.5% /
84.5%): an EMA of the generator (``--ema``) adds nothing, since the decayed rates already average the last
steps (decay 0.999 94.5% / 83.4%) or breaks it by mixing in early weights (0.9999: 0/8 and 2/25 modes);
generator width 256 91.0% / 90.4% at about 0.65x the steps/s; grid only: no batch norm 57.6% (at 1.5x the
steps/s), decay to 0.1% 88.3% on seed 0 but 71.1 ± 12.7% over seeds 0-4 (88.3, 80.0, 65.5 with 24/25 modes,
64.2, 57.3), no better than to 1%.
With 12,000 steps it covers every mode on every seed (0-4) at 94.1 ± 1.0% high quality on the ring (94.4, 93.8,
92.6, 95.0, 94.8) and 72.4 ± 12.2% on the grid (84.2, 79.5, 79.6, 61.8, 56.7): short of the ≥ 95% target and of
PacGAN4's published 95.9% / 93.6%.
Discriminator rejection sampling of the same runs (``--rejection 0``) keeps 2,500 samples at 98.6 ± 0.4% on the
ring (every seed ≥ 98%, 60% of draws kept) and 82.7 ± 9.9% on the grid (89.6, 90.4, 88.2, 77.4, 67.7).

Options:

- ``--datasets``, ``--losses``, ``--seeds``, ``--first-seed``: what to run (seeds first-seed, first-seed + 1, …);
- ``--steps``, ``--batch-size``, ``--g-lr``, ``--d-lr``, ``--betas``, ``--d-steps``: the optimization (planned
  generator steps, samples per step, initial learning rates, Adam betas, discriminator steps per step);
- ``--schedule`` (``exp``, ``linear``, ``cosine``, ``constant``) and ``--final-lr-factor``: both learning
  rates go from their initial value to this fraction of it over the planned steps;
- ``--time-budget SECONDS``: a run stops training once its wall time exceeds this (the schedule stays defined
  over the planned steps); the run's record says ``stopped_early`` and ``steps_done``;
- ``--kind`` (GAN loss kind), ``--r1 γ`` (``GANLoss``'s R1 penalty γ/2·‖∇D(x)‖² on real data),
  ``--r1-every K`` (lazy regularization: R1 at every K-th discriminator step, times K), ``--packing`` (PacGAN's m
  for ``pacgan``);
- ``--latent``, ``--g-hidden``, ``--g-layers``, ``--d-hidden``, ``--d-layers``, ``--no-batch-norm``: the networks;
  ``--d-widths W [W ...]``: the discriminator's hidden widths layer by layer (e.g. wide, then narrow), instead of
  ``--d-hidden`` × ``--d-layers``; ``--latent-mixture K --latent-scale σ``: DeLiGAN's latent, z = μ_k + σ ε with
  k uniform over K learned means, instead of a standard normal z (``MixtureLatent``);
- ``--train-size``: training-set draws; ``--samples``: samples scored; ``--bn-train-mode``: draw them with batch
  statistics instead of the running ones; ``--two-sided``: WGAN-GP's penalty; ``--bandwidths``: MMD's σ's;
- ``--ema DECAY``: keep an exponential moving average of the generator's parameters and buffers (batch-norm
  statistics; ``torch.optim.swa_utils.AveragedModel``), updated after every generator step, and draw the scored
  samples from it (the raw generator's scores are recorded too, as ``raw_*``); ``0``: none;
- ``--rejection GAMMA [GAMMA ...]``: also score the raw generator's samples kept by discriminator rejection
  sampling (:func:`dgm_ppl.infer.discriminator_rejection_sampling`, Azadi et al. 2019) with each γ (0: exact), as
  ``drs: {γ: {modes, high_quality, reverse_kl, acceptance}}``; ``gan`` only (its discriminator's logit estimates
  the density ratio); ``--drs-d-steps N`` (``--drs-d-lr``): then train the discriminator N more steps against the
  final generator, frozen, and score again as ``drs_refit``; with ``--drs-critic W [W ...]`` those N steps
  train a fresh critic with these hidden widths instead (a sharper density-ratio estimate than the training
  discriminator, at the cost of discriminator-only steps), and the record has its seconds as ``drs_refit_s``;
- ``--autocast bfloat16``: the training steps' forward passes (the generator, the discriminator's steps) under
  ``torch.autocast`` through ``dgm_ppl.infer.AutocastLoss``; the generator's backward pass, the parameters and
  the scoring stay in float32;
- ``--eval-every N``: also score the samples every N steps; ``--threads``, ``--no-progress``; ``--out FILE`` (a line
  that a killed sweep left cut off at its end is dropped before appending);
- ``--resume`` (with ``--out``): a stopped sweep continues. The runs that ``--out`` already holds under the same
  settings (every option but ``--datasets``, ``--losses``, ``--seeds`` and ``--first-seed``) are not run again but
  reused in the summaries (each is announced by a ``reused`` line); the others run and are appended. Each run is a
  few minutes, so a sweep, not a run, is what resumes.

Prints one JSON line per run (with ``wall_s``, ``steps_done``, ``steps_per_s``, ``stopped_early`` and the
hyperparameters) and one summary line per (data set, loss) with mean and standard deviation over the seeds and
``on_target``, the number of runs with every mode covered and ≥ 95% high-quality samples.

    OMP_NUM_THREADS=1 python benchmarks/gan_modes.py --no-progress --out outputs/gan_modes.jsonl
    OMP_NUM_THREADS=1 python benchmarks/gan_modes.py --no-progress --losses gan   # the tuned recipe only
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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from dgm_ppl.datasets import grid_of_gaussians, ring_of_gaussians
from dgm_ppl.evaluation.modes import mode_coverage
from dgm_ppl.infer import AutocastLoss, GANLoss, MMDLoss, discriminator_rejection_sampling
from dgm_ppl.infer.comparison import discriminator_loss
from dgm_ppl.kernels import RBFMixture
from dgm_ppl.optim import LambdaLR

DATASETS = {"ring": ring_of_gaussians, "grid": grid_of_gaussians}
LOSSES = ("gan", "pacgan", "wgan_gp", "mmd")
# Per-loss defaults (tuned on seed 0 with short runs): generator / discriminator learning rates, Adam betas,
# discriminator steps per generator step, batch size (samples) and generator steps, the GAN kind, the R1
# penalty's γ, PacGAN's m, the networks and the learning-rate schedule. The command-line options override them.
SMALL = dict(latent=2, g_hidden=128, g_layers=3, d_hidden=128, d_layers=2, schedule="exp", final_lr_factor=0.1)
GAN = dict(kind="nonsaturating", r1=0.0, r1_every=1, packing=1)
DEFAULTS = {
    "gan": dict(
        SMALL,
        **GAN,
        g_lr=1e-3,
        d_lr=1e-3,
        betas=(0.5, 0.999),
        d_steps=1,
        batch_size=256,
        steps=12_000,
        schedule="linear",
        final_lr_factor=0.01,
    ),
    "pacgan": dict(
        SMALL,
        **dict(GAN, packing=4),
        g_lr=1e-3,
        d_lr=1e-3,
        betas=(0.5, 0.999),
        d_steps=1,
        batch_size=1024,
        steps=3000,
    ),
    "wgan_gp": dict(SMALL, g_lr=5e-4, d_lr=5e-4, betas=(0.5, 0.9), d_steps=5, batch_size=256, steps=1000),
    "mmd": dict(SMALL, g_lr=1e-2, d_lr=None, betas=(0.5, 0.999), d_steps=None, batch_size=128, steps=3500),
}
AUTOCAST = {"bfloat16": torch.bfloat16}
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


class MixtureLatent(nn.Module):
    """DeLiGAN's latent (Gurumurthy et al. 2017) as the generator's first layer: standard normal noise ε becomes
    z = μ_k + σ ε, with k uniform over K learned means (initialized uniform on [-1, 1]^d) and a fixed σ. A Gaussian
    latent pushed through a continuous generator has connected support, so it must put mass on the bridges between
    separated modes (Tanielian et al. 2020 bound that mass from below); K separated clusters need not."""

    def __init__(self, components: int, dim: int, scale: float):
        super().__init__()
        self.means = nn.Parameter(torch.rand(components, dim) * 2 - 1)
        self.scale = scale

    def forward(self, eps):
        k = torch.randint(len(self.means), (len(eps),), device=eps.device)
        return self.means[k] + self.scale * eps


class Critic(nn.Module):
    """An MLP discriminator with hidden layers of the given ``widths``, returning one logit per (packed) sample."""

    def __init__(self, in_features: int, widths: list[int]):
        super().__init__()
        self.net = mlp([in_features, *widths, 1], lambda: nn.LeakyReLU(0.2))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def make_loss(name, args, hp):
    if name == "mmd":
        return MMDLoss(RBFMixture(args.bandwidths))
    packing = hp.get("packing", 1)
    d = Critic(2 * packing, hp["d_widths"])
    d_optim = torch.optim.Adam(d.parameters(), lr=hp["d_lr"], betas=hp["betas"], foreach=args.foreach or None)
    if name == "wgan_gp":
        return GANLoss(
            d, kind="wasserstein", d_optim=d_optim, d_steps=hp["d_steps"], gradient_penalty=10.0,
            one_sided=not args.two_sided,
        )  # fmt: skip
    return GANLoss(
        d, kind=hp["kind"], d_optim=d_optim, d_steps=hp["d_steps"], packing=packing, r1=hp["r1"],
        penalty_every=hp["r1_every"],
    )  # fmt: skip


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


def lr_factor(schedule, final, steps):
    """The learning-rate multiplier at each step: ``exp`` decays geometrically to ``final``, ``linear`` and
    ``cosine`` run from 1 to ``final`` over the planned steps, ``constant`` stays at 1."""
    if schedule == "exp":
        return lambda t: final ** (min(t, steps) / steps)
    if schedule == "linear":
        return lambda t: 1 - (1 - final) * min(t, steps) / steps
    if schedule == "cosine":
        return lambda t: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
    return lambda t: 1.0


HP_KEYS = ("g_lr", "d_lr", "betas", "d_steps", "batch_size", "steps", "kind", "r1", "r1_every", "packing", "latent")
HP_KEYS += ("g_hidden", "g_layers", "d_hidden", "d_layers", "schedule", "final_lr_factor")


def hyperparameters(name, args):
    hp = dict(DEFAULTS[name])
    for key in HP_KEYS:
        value = getattr(args, key)
        if key == "packing" and name != "pacgan":
            continue
        if value is not None and key in hp and hp[key] is not None:
            hp[key] = tuple(value) if key == "betas" else value
    hp["ema"] = args.ema if args.ema is not None else hp.get("ema", 0.0)  # every loss; 0: none
    if "d_hidden" in hp:  # the discriminator's widths, layer by layer
        hp["d_widths"] = list(args.d_widths or [hp["d_hidden"]] * hp["d_layers"])
    return hp


def scores(G: nn.Module, ema: AveragedModel | None, args: argparse.Namespace, zdim: int, dataset: str):
    """The scored generator's coverage (the EMA copy's if any; with one, the raw generator's too, as ``raw_*``)
    and the number of modes."""
    record: dict[str, float] = {}
    for prefix, net in [("", G if ema is None else ema)] + ([("raw_", G)] if ema is not None else []):
        s = mode_coverage(draw(net, args.samples, zdim, args.bn_train_mode), dataset)
        record.update({prefix + "modes": s.modes, prefix + "high_quality": round(s.high_quality, 4),
                       prefix + "reverse_kl": round(s.reverse_kl, 4)})  # fmt: skip
    return record, s.num_modes


def refit_discriminator(D, G, data, args, zdim, bs):
    """``args.drs_d_steps`` discriminator steps against the final generator, frozen (batch norm in evaluation
    mode, as sampled): Adam at ``args.drs_d_lr`` decaying linearly to 0, the standard GAN loss, batches of ``bs``.
    The trained discriminator has tracked a moving generator with a rate decayed to ~0; this makes its logit the
    log-ratio estimate of the generator that is sampled. ``D`` is the trained discriminator or a fresh one."""
    opt = torch.optim.Adam(D.parameters(), lr=args.drs_d_lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / args.drs_d_steps)
    mode = G.training
    G.eval()
    for _ in range(args.drs_d_steps):
        real = data[torch.randint(len(data), (bs,))]
        with torch.no_grad():
            fake = G(torch.randn(bs, zdim))
        logits = D(torch.cat([real, fake]))
        loss = discriminator_loss("nonsaturating", logits[:bs], logits[bs:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    G.train(mode)
    return D


def rejection_scores(model, G, critic, batch, args, dataset):
    """For each γ of ``args.rejection``: the coverage of ``args.samples`` samples of the raw generator (batch norm
    in evaluation mode) kept by discriminator rejection sampling with ``critic``, with the acceptance rate."""
    mode = G.training
    G.eval()
    record = {}
    for gamma in args.rejection:
        try:
            out = discriminator_rejection_sampling(model, critic, batch, num_samples=args.samples,
                                                   gamma=gamma)  # fmt: skip
        except ValueError as err:  # e.g. too few acceptances in max_rounds: recorded, the other γ still scored
            record[f"{gamma:g}"] = {"failed": str(err)}
            continue
        s = mode_coverage(out.samples["x"], dataset)
        quality = dict(modes=s.modes, high_quality=round(s.high_quality, 4), reverse_kl=round(s.reverse_kl, 4))
        record[f"{gamma:g}"] = dict(quality, acceptance=round(out.acceptance_rate, 4))
    G.train(mode)
    return record


def run(dataset, name, seed, args, progress):
    hp = hyperparameters(name, args)
    steps, bs = hp["steps"], hp["batch_size"]
    pyro.clear_param_store()
    torch.manual_seed(seed)
    data = DATASETS[dataset](args.train_size, generator=torch.Generator().manual_seed(10_000 + seed))
    n, zdim = len(data), hp["latent"]
    G = mlp([zdim] + [hp["g_hidden"]] * hp["g_layers"] + [2], nn.ReLU, batch_norm=not args.no_batch_norm)
    if args.latent_mixture:
        G = nn.Sequential(MixtureLatent(args.latent_mixture, zdim, args.latent_scale), *G)
    loss = make_loss(name, args, hp)
    # the EMA copy of the generator's parameters and buffers (batch-norm statistics), updated after every step
    ema = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(hp["ema"]), use_buffers=True) if hp["ema"] else None

    def model(x):
        pyro.module("G", G)
        with pyro.plate("data", n, subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([zdim]).to_event(1))
            pyro.sample("x", dist.Delta(G(z), event_dim=1), obs=x)

    def guide(x):
        pass

    factor = lr_factor(hp["schedule"], hp["final_lr_factor"], steps)
    optim_args = {"lr": hp["g_lr"], "betas": hp["betas"], "foreach": args.foreach or None}
    optim = LambdaLR({"optimizer": torch.optim.Adam, "optim_args": optim_args, "lr_lambda": factor})
    svi = SVI(
        model, guide, optim, loss if args.autocast is None else AutocastLoss(loss, "cpu", AUTOCAST[args.autocast])
    )
    d_sched = None
    if isinstance(loss, GANLoss):
        d_sched = torch.optim.lr_scheduler.LambdaLR(loss.d_optim, factor)

    bar = tqdm(total=steps, disable=not progress, desc=f"{dataset}/{name}/{seed}", mininterval=1.0, leave=False)
    t0 = time.perf_counter()
    order, pos = torch.randperm(n), 0
    stopped_early, done = False, 0
    for step in range(steps):
        if args.time_budget is not None and time.perf_counter() - t0 > args.time_budget:
            stopped_early = True
            break
        if pos + bs > n:
            order, pos = torch.randperm(n), 0
        value = svi.step(data[order[pos : pos + bs]])
        pos += bs
        if ema is not None:
            ema.update_parameters(G)
        done = step + 1
        optim.step()  # the learning-rate schedules
        if d_sched is not None:
            d_sched.step()
        if not math.isfinite(value):
            raise RuntimeError(f"{dataset}/{name}/seed {seed}: the loss became {value} at step {step}")
        bar.update()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{value:.4g}")
        if args.eval_every and done % args.eval_every == 0 and done < steps:
            record, _ = scores(G, ema, args, zdim, dataset)
            emit(dict(event="progress", dataset=dataset, loss=name, seed=seed, step=done, **record,
                      s=round(time.perf_counter() - t0, 1)))  # fmt: skip
    bar.close()
    train_s = time.perf_counter() - t0
    record, num_modes = scores(G, ema, args, zdim, dataset)
    if args.rejection is not None:
        record["drs"] = rejection_scores(model, G, loss.discriminator, data[: args.samples], args, dataset)
        if args.drs_d_steps:
            t1 = time.perf_counter()
            critic = Critic(2, args.drs_critic) if args.drs_critic else loss.discriminator
            critic = refit_discriminator(critic, G, data, args, zdim, bs)
            record["drs_refit_s"] = round(time.perf_counter() - t1, 2)
            record["drs_refit"] = rejection_scores(model, G, critic, data[: args.samples], args, dataset)
    return dict(
        benchmark="gan_modes",
        dataset=dataset,
        loss=name,
        seed=seed,
        **record,
        num_modes=num_modes,
        wall_s=round(time.perf_counter() - t0, 2),
        train_s=round(train_s, 2),
        steps_done=done,
        steps_per_s=round(done / train_s, 1) if train_s > 0 else 0.0,
        stopped_early=stopped_early,
        **(dict(latent_mixture=args.latent_mixture, latent_scale=args.latent_scale) if args.latent_mixture else {}),
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()},
    )


def mean_std(values):
    if not values:
        return None, None
    return round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0


# The options that only choose which runs a sweep makes: a run of another sweep with the same settings is reusable.
SWEEP_OPTIONS = ("datasets", "losses", "seeds", "first_seed")


def drop_cut_off_line(path) -> None:
    """Truncate ``path`` after its last newline: a sweep killed while writing leaves a partial line there."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def finished_runs(path, config) -> dict:
    """The run records in the JSON-lines file ``path`` written under ``config``, by (data set, loss, seed).

    A record counts when the last ``config`` line before it equals ``config`` in every option but the sweep's grid
    (``SWEEP_OPTIONS``): every run is seeded on its own, so a reused record is the one the run would write again (its
    ``wall_s`` aside). A missing file holds none.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    # JSON turns tuples into lists: compare through the same round trip
    settings = json.loads(json.dumps({k: v for k, v in config.items() if k not in SWEEP_OPTIONS}))
    runs, matching = {}, False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not a JSON line ({err}); cannot resume from it") from None
        if record.get("event") == "config":
            written = {k: v for k, v in record.items() if k not in ("benchmark", "event", *SWEEP_OPTIONS)}
            matching = written == settings
        elif matching and "event" not in record and record.get("benchmark") == "gan_modes":
            runs[(record["dataset"], record["loss"], record["seed"])] = record
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (first-seed, first-seed + 1, ...)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="generator steps per run (planned: the schedule runs over them)")
    ap.add_argument("--time-budget", type=float, help="seconds per run: stop training once a run has taken longer")
    ap.add_argument("--batch-size", type=int, help="samples per step")
    ap.add_argument("--g-lr", type=float, help="the generator's initial learning rate")
    ap.add_argument("--d-lr", type=float, help="the discriminator's initial learning rate")
    ap.add_argument("--betas", type=float, nargs=2, help="Adam's betas (both networks)")
    ap.add_argument("--d-steps", type=int, help="discriminator steps per generator step")
    ap.add_argument("--schedule", choices=("exp", "linear", "cosine", "constant"), help="learning-rate schedule")
    ap.add_argument("--final-lr-factor", type=float, help="both rates decay to this fraction of the initial one")
    ap.add_argument("--kind", choices=("nonsaturating", "minimax", "hinge", "least_squares"), help="GAN kind")
    ap.add_argument("--r1", type=float, help="γ of the R1 penalty on real data (gan, pacgan)")
    ap.add_argument("--r1-every", type=int, help="lazy R1: at every this many discriminator steps, times that")
    ap.add_argument("--packing", type=int, help="PacGAN's m (pacgan)")
    ap.add_argument("--latent", type=int, help="latent dimension")
    ap.add_argument(
        "--latent-mixture",
        type=int,
        default=0,
        metavar="K",
        help="DeLiGAN's latent: K learned means, fixed scale (0: a standard normal latent)",
    )
    ap.add_argument("--latent-scale", type=float, default=0.1, help="σ of the mixture latent's components")
    ap.add_argument("--g-hidden", type=int, help="generator width")
    ap.add_argument("--g-layers", type=int, help="generator hidden layers")
    ap.add_argument("--d-hidden", type=int, help="discriminator width")
    ap.add_argument("--d-layers", type=int, help="discriminator hidden layers")
    ap.add_argument("--d-widths", type=int, nargs="+", metavar="W", help="discriminator widths, layer by layer")
    ap.add_argument("--train-size", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=2500, help="samples scored per run")
    ap.add_argument("--no-batch-norm", action="store_true", help="no batch norm in the generator")
    ap.add_argument("--bn-train-mode", action="store_true", help="draw the scored samples with batch statistics")
    ap.add_argument("--two-sided", action="store_true", help="two-sided gradient penalty for wgan_gp (WGAN-GP)")
    ap.add_argument("--bandwidths", type=float, nargs="+", default=list(BANDWIDTHS), help="RBF σ's for mmd")
    ap.add_argument("--ema", type=float, help="score an EMA of the generator with this decay (0: none)")
    ap.add_argument("--rejection", type=float, nargs="+", metavar="GAMMA",
                    help="also score discriminator rejection sampling with each γ (gan; the drs key)")  # fmt: skip
    ap.add_argument("--drs-d-steps", type=int, default=0, help="then refit the discriminator this many steps")
    ap.add_argument("--drs-d-lr", type=float, default=1e-3, help="its rate, decaying linearly to 0")
    ap.add_argument("--drs-critic", type=int, nargs="+", metavar="W",
                    help="refit a fresh critic with these hidden widths, not the trained discriminator")  # fmt: skip
    ap.add_argument("--eval-every", type=int, default=0, help="also score the samples every this many steps")
    ap.add_argument(
        "--foreach", action="store_true",
        help="torch's multi-tensor Adam for both networks (faster; equal to the default to rounding, not bit for bit)",
    )  # fmt: skip
    ap.add_argument(
        "--autocast", choices=tuple(AUTOCAST),
        help="the training steps' forward passes under torch.autocast in this dtype (AutocastLoss); scoring in float32",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    ap.add_argument(
        "--resume", action="store_true",
        help="with --out: reuse the runs that --out already holds under the same settings (a stopped sweep continues)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.resume and not args.out:
        ap.error("--resume needs --out, the file of the sweep to continue")
    if args.rejection is not None and (
        set(args.losses) != {"gan"} or args.kind not in (None, "minimax", "nonsaturating")
    ):
        ap.error("--rejection needs --losses gan with the minimax or nonsaturating kind (a density-ratio critic)")
    if args.drs_critic and not (args.rejection is not None and args.drs_d_steps > 0):
        ap.error("--drs-critic needs --rejection and --drs-d-steps N > 0 (the refit trains it)")
    torch.set_num_threads(args.threads)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "no_progress", "resume")}
    if args.out:
        drop_cut_off_line(args.out)  # before appending, resumed or not: a new line must not join a partial one
    done = finished_runs(args.out, config) if args.resume else {}
    out = open(args.out, "a") if args.out else None
    emit(dict(benchmark="gan_modes", event="config", **config), out)
    try:
        for dataset in args.datasets:
            for name in args.losses:
                runs = []
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    record = done.get((dataset, name, seed))
                    if record is None:
                        record = run(dataset, name, seed, args, not args.no_progress)
                        emit(record, out)
                    else:
                        emit(dict(benchmark="gan_modes", event="reused", dataset=dataset, loss=name, seed=seed))
                    runs.append(record)
                summary = dict(benchmark="gan_modes", event="summary", dataset=dataset, loss=name, runs=len(runs))
                for key in ("modes", "high_quality", "reverse_kl", "wall_s"):
                    summary[key], summary[key + "_std"] = mean_std([r[key] for r in runs])
                for drs in ("drs", "drs_refit"):
                    if drs not in runs[0]:
                        continue
                    summary[drs] = {}
                    for gamma in runs[0][drs]:
                        pairs = [(r[drs][gamma], r) for r in runs if "failed" not in r[drs][gamma]]
                        entry = {"failed": len(runs) - len(pairs)}  # failed seeds count as misses
                        for key in ("modes", "high_quality", "reverse_kl", "acceptance"):
                            entry[key], entry[key + "_std"] = mean_std([p[key] for p, _ in pairs])
                        entry["on_target"] = sum(
                            p["modes"] == r["num_modes"] and p["high_quality"] >= 0.95 for p, r in pairs
                        )
                        summary[drs][gamma] = entry
                summary["num_modes"] = runs[0]["num_modes"]
                summary["steps"] = runs[0]["steps"]
                summary["steps_per_s"] = round(statistics.fmean(r["steps_per_s"] for r in runs), 1)
                summary["stopped_early"] = sum(r["stopped_early"] for r in runs)
                # runs reaching the target: every mode covered and ≥ 95% high-quality samples
                summary["on_target"] = sum(r["modes"] == r["num_modes"] and r["high_quality"] >= 0.95 for r in runs)
                emit(summary, out)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    main()
