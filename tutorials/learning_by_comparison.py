r"""Learning by comparison: one Pyro generator trained by an adversary (GAN, WGAN-GP) or by moments (MMD).

    python tutorials/learning_by_comparison.py    # about 80 seconds on one CPU core

A *generator* is a Pyro model whose observed site is a deterministic function of latent noise,
``x = G(z)`` with ``z ~ N(0, I)``. Its density is not available (``dist.Delta`` has none worth the name),
so it cannot be trained by likelihood; but it is easy to *sample*, and a sample can be *compared* with
the data (Goodfellow et al., *Deep Learning*, §20.10.4-20.10.5). dgm_ppl's losses do the comparison
inside an unmodified ``pyro.infer.SVI``: they run the model once with its observations removed
(``poutine.uncondition``), which gives, at every observed site, both the minibatch of data and a
minibatch of fakes that depends differentiably on G. Only the SVI loss changes between the runs below::

    def model(x):
        pyro.module("G", G)
        with pyro.plate("data", N, subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([zdim]).to_event(1))
            pyro.sample("x", dist.Delta(G(z), event_dim=1), obs=x)

    SVI(model, lambda x: None, pyro.optim.Adam({...}), GANLoss(D, kind="nonsaturating", d_optim=...))
    SVI(model, lambda x: None, pyro.optim.Adam({...}), GANLoss(D, kind="wasserstein", gradient_penalty=10))
    SVI(model, lambda x: None, pyro.optim.Adam({...}), MMDLoss(kernel=RBFMixture([...])))

**The three principles.**

- *GAN* (Goodfellow et al. 2014; DL §20.10.4). A discriminator D(x) (a logit) is trained to tell data
  from fakes by maximizing ``E_data log sigmoid(D(x)) + E_G log(1 - sigmoid(D(G(z))))``. The generator
  of the *minimax* game minimizes the same quantity; with the optimal D this is the Jensen-Shannon
  divergence between p_data and p_G (up to constants). Early in training D wins easily, and
  ``log(1 - sigmoid(D))`` saturates (its gradient vanishes), so one uses the *non-saturating* generator
  loss ``-E_G log sigmoid(D(G(z)))`` instead: the same fixed points, strong gradients when G is bad.
- *WGAN-GP* (Arjovsky et al. 2017; Gulrajani et al. 2017). A *critic* f (no sigmoid) estimates the
  Wasserstein-1 distance ``sup_{|f|_L <= 1} E_data f(x) - E_G f(G(z))``; the generator minimizes
  ``-E_G f(G(z))``. The Lipschitz constraint is enforced softly with the gradient penalty
  ``lambda E (|grad f(x_hat)| - 1)^2`` at random interpolates x_hat between real and fake points,
  lambda = 10. Here we use the *one-sided* penalty ``lambda E [|grad f(x_hat)| - 1]_+^2`` (WGAN-LP,
  Petzka et al. 2018; ``one_sided=True``), which only penalizes slopes above 1. With the two-sided one,
  at this script's settings, the generator found no mode at all (``--two-sided`` shows it: the critic's
  W1 estimate oscillates around 0 and the samples stay off the ring); Gulrajani et al.'s 5 critic steps
  at Adam(1e-4), for as many generator steps, did no better. (A plausible reason: the two-sided penalty
  asks for slope 1 everywhere between the thin modes and the fakes, the one-sided one only bounds it.)
- *MMD / GMMN* (Li et al. 2015; Dziugaite et al. 2015; DL §20.10.5). No adversary: the generator
  directly minimizes the squared maximum mean discrepancy
  ``MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)`` between fakes x and data y, an unbiased U-statistic
  on each minibatch. For a characteristic kernel (a Gaussian, or a sum of Gaussians) MMD = 0 only
  when the two distributions are equal; the bandwidths decide which differences are visible, so we sum
  several, down to the width of the modes.

**Part 1: mode collapse on a ring of 8 Gaussians** (σ = 0.01 at radius 1: VEEGAN/PacGAN's benchmark,
``--benchmark grid`` for the 5x5 grid). The same MLP generator, from the same initial weights, on the
same data, is trained by the three losses. ``mode_coverage`` counts the modes that got at least one
*high-quality* sample (within 3σ of the centre), the fraction of high-quality samples, and the reverse
KL between the generated mode frequencies and the uniform ones. ``mmd_test`` (a permutation test) asks
whether the samples are distinguishable from held-out data.

**Part 2: a convolutional generator on the 8x8 digits** (intensities in [0, 1]). The observed site is
now an image, ``dist.Delta(G(z), event_dim=3)`` on ``(N, 1, 8, 8)`` tensors; G is two transposed
convolutions (1x1 -> 4x4 -> 8x8) and a sigmoid. It is trained with the non-saturating GAN loss against a
small convolutional discriminator with a minibatch-standard-deviation feature (``dgm_ppl.nn.
MinibatchStddev``, Karras et al. 2018: it lets D see that a batch of fakes is too uniform), and again by
MMD. We report MMD² and a permutation test against the held-out test digits (the training set against
the test set gives the value a perfect model would reach), and the nearest-neighbour memorization
check: ``ratio`` is the median distance of a sample to its nearest training image over the same for a
held-out image (well below 1 would mean copying), ``fraction_copied`` the fraction of exact copies.

Prints a JSON report and saves ``learning_by_comparison.png`` in ``--out``. With the defaults (seed 0,
one CPU thread) it prints, abridged:

- ring: all three losses cover **8/8 modes**, with **57%** (non-saturating GAN), **61%** (WGAN-GP) and
  **54%** (MMD) high-quality samples (real data: 99%); reverse KL 0.063, 0.004 and 0.003 (the GAN puts
  visibly uneven mass on the modes); every ``mmd_test`` rejects, p = 0.002, the smallest possible with
  500 permutations (the modes are still too wide, and bridged), while two real samples give p = 0.79;
- digits: MMD² to the test digits **0.0067** (GAN, p = 0.002) and **0.0016** (MMD, p = 0.06, a test
  that favours it, see below) against -0.0006 for real training digits; memorization ratios **1.6** and
  **1.5**, no copies: the samples are *farther* from the training set than real test digits are, so
  nothing is memorized; rather, the samples are still less sharp than real digits.

It takes about 80 seconds on one core (two minutes on a busy machine): 11, 15 and 17 s for the three
2-D runs, 18 and 9 s for the digits. ``--steps 480 --digit-epochs 6`` (the test) takes about 25 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from _figures import tile  # tutorials/_figures.py
from pyro.infer import SVI
from torch import nn

from dgm_ppl.datasets import (
    GRID_STD,
    RING_STD,
    grid_centers,
    grid_of_gaussians,
    load_digits,
    ring_centers,
    ring_of_gaussians,
)
from dgm_ppl.evaluation import memorization, mmd_test, mode_coverage
from dgm_ppl.infer import GANLoss, MMDLoss, train
from dgm_ppl.kernels import RBFMixture
from dgm_ppl.nn import MinibatchStddev

LOSSES = ("nonsaturating_gan", "wgan_gp", "mmd")
LABELS = {"nonsaturating_gan": "non-saturating GAN", "wgan_gp": "WGAN-GP", "mmd": "MMD (GMMN)"}
BENCHMARKS = {
    "ring": (ring_of_gaussians, ring_centers, RING_STD),
    "grid": (grid_of_gaussians, grid_centers, GRID_STD),
}


def main():
    ap = argparse.ArgumentParser(description="GAN, WGAN-GP and MMD training of one Pyro generator")
    ap.add_argument("--steps", type=int, default=1500, help="generator steps per loss on the 2-D mixture")
    ap.add_argument("--batch-size", type=int, default=128, help="minibatch on the 2-D mixture")
    ap.add_argument("--critic-steps", type=int, default=1, help="WGAN-GP critic steps per generator step")
    ap.add_argument("--two-sided", action="store_true", help="WGAN-GP with the two-sided penalty")
    ap.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES), help="which losses to run")
    ap.add_argument(
        "--benchmark", choices=tuple(BENCHMARKS), default="ring", help="the settings are tuned for the ring"
    )
    ap.add_argument("--digit-epochs", type=int, default=40, help="epochs over the 1,500 training digits")
    ap.add_argument("--no-digit-mmd", action="store_true", help="train the conv generator by the GAN only")
    ap.add_argument("--out", default="docs", help="folder for the figure")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and polite on shared machines
    progress = not args.no_progress
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    report: dict = {}

    # ==========================================================================================
    # Part 1. One MLP generator on a 2-D mixture of Gaussians, three losses.
    # ==========================================================================================
    sample_mixture, centers_of, std = BENCHMARKS[args.benchmark]
    data_gen = torch.Generator().manual_seed(args.seed)
    x_ring = sample_mixture(10_240, generator=data_gen)  # the training set: 80 minibatches of 128
    x_held = sample_mixture(1_000, generator=data_gen)  # held out, for the two-sample test
    x_fresh = sample_mixture(1_000, generator=data_gen)  # a second held-out set: what a perfect model scores
    centers = centers_of()
    n_ring, zdim = len(x_ring), 2
    # Kernels scaled by the width σ of the modes (σ = 0.01 on the ring). The training kernel sums Gaussians
    # from σ (to sharpen the modes) to 100σ (to pull far-away fakes in: a Gaussian kernel alone only sees
    # differences on its own scale, and its gradient vanishes beyond a few bandwidths). The test kernel,
    # chosen beforehand and different from it, sees the width of the modes (2σ), their spacing and the
    # whole ring.
    train_kernel = RBFMixture([std * s for s in (1, 3, 10, 30, 100)])
    test_kernel = RBFMixture([std * s for s in (2, 10, 50)])
    steps_per_epoch = math.ceil(n_ring / args.batch_size)
    epochs = max(1, round(args.steps / steps_per_epoch))
    steps = epochs * steps_per_epoch

    ring = {"benchmark": args.benchmark, "train_size": n_ring, "steps": steps, "batch_size": args.batch_size}
    ring_samples, histories = {}, {}
    for name in args.losses:
        # The same seed before each run: the same initial generator for every loss. G maps z ~ N(0, I_2)
        # through three hidden layers of 128 ReLUs to the plane; D (for the GANs) is the same MLP with leaky
        # ReLUs and one output.
        pyro.set_rng_seed(args.seed)
        pyro.clear_param_store()  # pyro.module("G", ...) would otherwise reload the previous run's weights
        G = mlp(zdim, 2, nn.ReLU)
        model = generator_model(G, zdim, n_ring, event_dim=1)
        loss, optim, callback = make_ring_loss(name, args, steps, epochs, train_kernel)
        tic = time.perf_counter()
        train(
            SVI(model, guide, optim, loss),
            x_ring,
            epochs=epochs,
            batch_size=args.batch_size,
            progress=progress,
            callback=callback,
        )
        seconds = time.perf_counter() - tic

        # What to expect. G is continuous and z's distribution is connected, so p_G cannot be 8 separate
        # blobs: some mass always lies on "bridges" between modes, and training can only make it small.
        # The three scores see different failures: a collapsed generator misses modes ("modes") or puts
        # uneven mass on them ("reverse_kl"); a blurry one has few high-quality samples. The two-sample
        # test sees both (and with 1,000 samples against modes 0.01 wide it is very hard to pass).
        samples = draw(model, 2_000, (2,))
        cov = mode_coverage(samples, centers=centers, std=std)
        test = mmd_test(samples[:1000], x_held, test_kernel, num_permutations=500, generator=data_gen)
        ring[name] = {
            "modes": cov.modes,
            "num_modes": cov.num_modes,
            "high_quality": round(cov.high_quality, 3),
            "reverse_kl": round(cov.reverse_kl, 4),
            "mmd2_held_out": round(test.statistic, 5),
            "mmd_test_p_value": round(test.p_value, 4),
            "train_seconds": round(seconds, 1),
        }
        if name == "wgan_gp":
            ring[name]["penalty"] = "two-sided" if args.two_sided else "one-sided"
        ring_samples[name] = samples
        histories[name] = loss.history
    # The yardstick: two independent samples of real data (p-values of this test are uniform on (0, 1)).
    ref = mmd_test(x_fresh, x_held, test_kernel, num_permutations=500, generator=data_gen)
    cov = mode_coverage(x_fresh, centers=centers, std=std)
    ring["real_data"] = {
        "modes": cov.modes,
        "high_quality": round(cov.high_quality, 3),
        "reverse_kl": round(cov.reverse_kl, 4),
        "mmd2_held_out": round(ref.statistic, 5),
        "mmd_test_p_value": round(ref.p_value, 4),
    }
    report["mixture"] = ring

    # ==========================================================================================
    # Part 2. A convolutional generator on the 8x8 digits: the observed site is an image.
    # ==========================================================================================
    x_train = load_digits("train", binarize=False).reshape(-1, 1, 8, 8)  # (1500, 1, 8, 8) in [0, 1]
    x_test = load_digits("test", binarize=False).reshape(-1, 1, 8, 8)  # (297, 1, 8, 8)
    n_digits, zdim_digits = len(x_train), 16
    digits: dict = {"epochs": args.digit_epochs}
    digit_samples, digit_histories = {}, {}
    for name in ("gan",) if args.no_digit_mmd else ("gan", "mmd"):
        pyro.set_rng_seed(args.seed)
        pyro.clear_param_store()
        G = conv_generator(zdim_digits)
        model = generator_model(G, zdim_digits, n_digits, event_dim=3)
        if name == "gan":
            D = conv_discriminator()
            # DCGAN's optimizer settings (Radford et al. 2016) for both players.
            loss = GANLoss(D, "nonsaturating", d_optim=torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999)))
            optim = pyro.optim.Adam({"lr": 2e-4, "betas": (0.5, 0.999)})
            batch_size = 64
        else:
            # Pixel-space GMMN: distances between 8x8 digits are about 2 to 5, hence bandwidths 0.5 to 8. A
            # larger minibatch lowers the variance of the MMD² estimate (its cost grows as batch²).
            loss = MMDLoss(RBFMixture([0.5, 1.0, 2.0, 4.0, 8.0]))
            optim = pyro.optim.Adam({"lr": 1e-3})
            batch_size = 128
        tic = time.perf_counter()
        train(
            SVI(model, guide, optim, loss), x_train, epochs=args.digit_epochs, batch_size=batch_size, progress=progress
        )
        seconds = time.perf_counter() - tic

        G.eval()  # batch norm from its running averages
        samples = draw(model, len(x_test), (1, 8, 8))
        # The test's kernel is the library default, a Gaussian at the median pairwise distance (about 3
        # here). That scale is inside the MMD generator's training kernel, so this test flatters it: the
        # MMD generator was trained on exactly this kind of statistic, the GAN was not.
        test = mmd_test(samples, x_test, num_permutations=500, generator=data_gen)
        mem = memorization(samples, x_train, x_test)
        digits[name] = {
            "steps": args.digit_epochs * math.ceil(n_digits / batch_size),
            "mmd2_test": round(test.statistic, 5),
            "mmd_test_p_value": round(test.p_value, 4),
            "memorization_ratio": round(mem.ratio, 3),
            "fraction_copied": round(mem.fraction_copied, 4),
            "train_seconds": round(seconds, 1),
        }
        digit_samples[name] = (samples, mem.distances)
        digit_histories[name] = loss.history
    # Real training digits against the test digits, with the same test: the value a perfect model reaches.
    ref = mmd_test(x_train[: len(x_test)], x_test, num_permutations=500, generator=data_gen)
    digits["real_train_digits"] = {"mmd2_test": round(ref.statistic, 5), "mmd_test_p_value": round(ref.p_value, 4)}
    report["digits"] = digits
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))

    path = os.path.join(args.out, "learning_by_comparison.png")
    make_figure(
        path, report, ring_samples, histories, x_fresh, centers, x_train, x_test, digit_samples, digit_histories
    )
    print(f"saved {path}")


# ----------------------------------------------------------------------------------------------
# The Pyro model: the same program for every loss, and for vectors or images (event_dim 1 or 3).
# ----------------------------------------------------------------------------------------------
def generator_model(G: nn.Module, zdim: int, num_data: int, event_dim: int):
    def model(x):
        pyro.module("G", G)
        with pyro.plate("data", num_data, subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([zdim]).to_event(1))
            pyro.sample("x", dist.Delta(G(z), event_dim=event_dim), obs=x)

    return model


def guide(x):  # no global latents to infer: z is drawn from the prior inside the model
    pass


@torch.no_grad()
def draw(model, n: int, event_shape: tuple[int, ...]) -> torch.Tensor:
    """n samples from the model itself: run it with its observation removed (what the losses do), on a
    placeholder minibatch that only sets the size of the plate."""
    trace = poutine.trace(poutine.uncondition(model)).get_trace(torch.zeros(n, *event_shape))
    return trace.nodes["x"]["value"]


def mlp(d_in: int, d_out: int, act) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, 128), act(), nn.Linear(128, 128), act(), nn.Linear(128, 128), act(), nn.Linear(128, d_out)
    )


def make_ring_loss(name: str, args, steps: int, epochs: int, kernel):
    """The loss, the generator's optimizer and a per-epoch callback for one of the three principles.

    The generator's learning rate decays tenfold (MMD: thirtyfold) over training (ClippedAdam's ``lrd``, per
    step; no clipping): the ring's modes are only 0.01 wide, and a constant step size keeps the generator
    jittering by more than that around its optimum. For WGAN-GP the critic's rate decays alike (a
    scheduler stepped by ``train``'s per-epoch callback)."""
    if name == "mmd":
        return MMDLoss(kernel), pyro.optim.ClippedAdam({"lr": 3e-3, "lrd": 0.03 ** (1 / steps), "clip_norm": 1e9}), None
    D = mlp(2, 1, lambda: nn.LeakyReLU(0.2))  # one logit (critic value) per sample
    if name == "nonsaturating_gan":
        d_optim = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
        loss = GANLoss(D, "nonsaturating", d_optim=d_optim)
        optim = pyro.optim.ClippedAdam({"lr": 1e-3, "betas": (0.5, 0.999), "lrd": 0.1 ** (1 / steps), "clip_norm": 1e9})
        return loss, optim, None
    # WGAN-GP. Gulrajani et al. use 5 critic steps per generator step and Adam(1e-4, betas=(0.5, 0.9)); to
    # keep the run short we take 1 critic step (``--critic-steps``) at a larger, decaying rate. Each critic
    # step costs about twice a discriminator step of the GAN: the penalty differentiates through the
    # gradient of f (a double backward pass).
    d_optim = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9))
    loss = GANLoss(
        D,
        "wasserstein",
        d_optim=d_optim,
        d_steps=args.critic_steps,
        gradient_penalty=10.0,
        one_sided=not args.two_sided,
    )
    optim = pyro.optim.ClippedAdam({"lr": 1e-3, "betas": (0.5, 0.9), "lrd": 0.1 ** (1 / steps), "clip_norm": 1e9})
    schedule = torch.optim.lr_scheduler.ExponentialLR(d_optim, gamma=0.1 ** (1 / epochs))
    return loss, optim, lambda epoch, mean_loss: schedule.step()


# ----------------------------------------------------------------------------------------------
# Part 2's networks.
# ----------------------------------------------------------------------------------------------
def conv_generator(zdim: int, width: int = 32) -> nn.Module:
    """z (zdim) -> 1x1 -> 4x4 (width channels) -> 8x8 (width/2) -> one 8x8 image in (0, 1) (DCGAN-style:
    transposed convolutions, batch norm and ReLU, a sigmoid output for the [0, 1] intensities)."""
    return nn.Sequential(
        nn.Unflatten(1, (zdim, 1, 1)),
        nn.ConvTranspose2d(zdim, width, kernel_size=4, stride=1, padding=0),  # 1x1 -> 4x4
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.ConvTranspose2d(width, width // 2, kernel_size=4, stride=2, padding=1),  # 4x4 -> 8x8
        nn.BatchNorm2d(width // 2),
        nn.ReLU(),
        nn.Conv2d(width // 2, 1, kernel_size=3, padding=1),
        nn.Sigmoid(),
    )


def conv_discriminator(width: int = 32) -> nn.Module:
    """8x8 -> 4x4 -> 2x2 strided convolutions with leaky ReLUs, the minibatch standard deviation appended as
    one more channel, and a linear logit."""
    return nn.Sequential(
        nn.Conv2d(1, width, kernel_size=3, stride=2, padding=1),  # 8x8 -> 4x4
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1),  # 4x4 -> 2x2
        nn.LeakyReLU(0.2),
        MinibatchStddev(),  # + 1 channel: how much the batch varies
        nn.Flatten(),
        nn.Linear((2 * width + 1) * 4, 1),
    )


# ----------------------------------------------------------------------------------------------
# The figure.
# ----------------------------------------------------------------------------------------------
def make_figure(path, report, ring_samples, histories, real, centers, x_train, x_test, digit_samples, digit_histories):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(16, 11.5))
    lim = 1.3 * centers.abs().max().item() + 0.2
    ring = report["mixture"]
    labels = {k: LABELS[k] + (f" ({ring[k]['penalty']})" if k == "wgan_gp" else "") for k in ring_samples}
    panels = [("real data", real, ring["real_data"])] + [(labels[k], v, ring[k]) for k, v in ring_samples.items()]
    for ax, (label, pts, m) in zip(axes[0], panels):
        scores = (
            f"{m['modes']}/{len(centers)} modes, {m['high_quality']:.0%} high quality, test p = {m['mmd_test_p_value']}"
        )
        title = f"{label}\n{scores}"
        pts = pts[:1000]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4, color="tab:blue", rasterized=True)
        ax.scatter(
            centers[:, 0],
            centers[:, 1],
            s=60,
            marker="o",
            facecolors="none",
            edgecolors="tab:red",
            label="true centres",
        )
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        ax.set_title(title, fontsize=10)
    axes[0, 0].legend(loc="upper right", fontsize=8)

    for ax, (name, hist) in zip(axes[1, :3], histories.items()):
        curves = {key.replace("_", " "): values for key, values in hist.items()}
        if name == "wgan_gp":  # minus the critic loss without its penalty: the critic's estimate of W1
            penalty = torch.tensor(hist["gradient_penalty"]) * 10.0
            curves = {
                "W1 estimate (-d loss, penalty excluded)": (penalty - torch.tensor(hist["d_loss"])).tolist(),
                "gradient penalty x 10": penalty.tolist(),
            }
        for key, values in curves.items():
            ax.plot(_smooth(values), label=key)
        ax.set(title=f"{labels[name]}: per step", xlabel="generator step")
        if name == "mmd":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax = axes[1, 3]
    for key, values in digit_histories["gan"].items():
        ax.plot(_smooth(values), label=key.replace("_", " "))
    ax.set(title="digits, conv GAN: losses per step", xlabel="generator step")
    ax.legend(fontsize=8)

    image_panels = [("real test digits", x_test)] + [
        (f"conv generator, {'GAN' if k == 'gan' else 'MMD'}", s) for k, (s, _) in digit_samples.items()
    ]
    for ax, (title, images) in zip(axes[2], image_panels):
        ax.imshow(tile(images, 6, 8), cmap="gray_r", interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    for ax in [*axes[0, len(panels) :], *axes[1, len(histories) : 3], *axes[2, len(image_panels) : 3]]:
        ax.axis("off")
    ax = axes[2, 3]
    held = memorization(x_test, x_train).distances
    top = max([float(held.max())] + [float(d.max()) for _, d in digit_samples.values()])
    bins = torch.linspace(0, top * 1.02, 40).numpy()
    ax.hist(held.numpy(), bins=bins, histtype="step", lw=2, color="k", label="real test digits")
    for name, (_, distances) in digit_samples.items():
        ratio = report["digits"][name]["memorization_ratio"]
        ax.hist(distances.numpy(), bins=bins, histtype="step", lw=1.5, label=f"{name.upper()} samples (ratio {ratio})")
    ax.set(title="distance to the nearest training digit", xlabel="Euclidean distance (pixels in [0, 1])")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _smooth(values, parts: int = 100):
    """A moving average over about 1/parts of the run (GAN losses are noisy step to step)."""
    v = torch.tensor(values, dtype=torch.float64)
    w = max(1, len(v) // parts)
    if w == 1:
        return v.numpy()
    return torch.nn.functional.avg_pool1d(v[None, None], w, stride=1).flatten().numpy()


if __name__ == "__main__":
    main()
