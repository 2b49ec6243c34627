r"""Learning by comparison on the binarized 8x8 digits: GAN, MMD, BiGAN, discrete GANs and NCE, side by side.

    python tutorials/digits_by_comparison.py            # 4 to 7 minutes on one CPU core
    python tutorials/digits_by_comparison.py --quick    # a smoke run (the test)

Measured with the defaults (seed 0, one torch thread, a shared two-core machine). FID, KID and precision/recall
are computed on the features of the local digits classifier (:func:`dgm_ppl.evaluation.digits_feature_extractor`)
for 1,000 samples of each model against the 297 held-out test digits; "real train digits" (1,000 training digits
scored the same way) is what a perfect model would reach. Lower FID/KID and higher precision/recall are better.

=========================  ======  =====  =========  ======  ============================================
model (loss)               FID     KID    precision  recall  other (train seconds)
=========================  ======  =====  =========  ======  ============================================
real train digits          1.5     0.27   0.93       0.90    (the yardstick)
GAN, non-saturating        220.4   120.6  1.00       0.00    one digit only: collapsed (52 s)
WGAN-GP (one-sided)        15.1    6.3    0.76       0.51    (34 s)
MMD (GMMN)                 42.0    15.9   0.95       0.02    blurry, few shapes (27 s)
BiGAN / ALI (ST bits)      22.4    17.0   0.88       0.61    G(E(x)) pixel error 0.236, random z 0.232 (19 s)
discrete GAN, Gumbel ST    68.0    63.0   0.83       0.14    (12 s)
discrete GAN, REINFORCE    53.5    49.5   0.76       0.40    (16 s)
RBM 64x16, SML             10.4    9.7    0.83       0.80    exact test log-lik. **-20.60** (8 s)
RBM 64x16, NCE             7.4     3.4    0.85       0.75    exact -21.67; log Z learned 44.89, exact 44.14 (4 s)
=========================  ======  =====  =========  ======  ============================================

(KID ± its subset standard error is 0.1 to 0.5 here; KID uses the cubic kernel on unscaled features, so only its
ratios mean something.) What to read in it, for these settings (40 epochs each, one seed):

- On *binary* data an MLP generator with continuous (sigmoid) outputs trained by the non-saturating GAN collapsed
  to a single digit (precision 1, recall 0; at 60 epochs too), while the same generator under WGAN-GP kept most of
  the variety, and MMD kept it blurry. Giving the generator binary outputs instead (straight-through Gumbel,
  REINFORCE, and the BiGAN, whose generator also emits straight-through bits) avoided the collapse without any
  other change (recall 0.14 to 0.61), though the two discrete GANs remain well behind WGAN-GP and the RBMs.
- The BiGAN's samples are good but its encoder had not learned to invert the generator after 40 epochs: the
  reconstructions of test digits are no closer than a random z's sample.
- NCE with a factorial-Bernoulli noise fits the RBM within 1.1 nats of SML's exact held-out log-likelihood and
  learns its own log Z to 0.75 nats; its Gibbs samples score as well as SML's on FID/KID.
- Wall time: 223 s (the seconds above) and 417 s in two runs with identical numbers, on a two-core machine shared
  with other jobs (load average 5 to 7), so the seconds are only rough. ``--quick`` takes 11 s (75 s at load 7).

Every generator below is a Pyro model trained by an unmodified :class:`pyro.infer.SVI`; only the loss changes:

1. **GAN, WGAN-GP and MMD** (:class:`~dgm_ppl.infer.GANLoss`, :class:`~dgm_ppl.infer.MMDLoss`). An MLP
   generator ``x = G(z)``, observed through ``dist.Delta(sigmoid(G(z)), event_dim=1)`` (intensities in (0, 1)):
   the non-saturating GAN and WGAN-GP (one-sided penalty, λ = 10) against MLP discriminators, and the GMMN's MMD²
   with a sum of Gaussian kernels.
2. **BiGAN / ALI** (:class:`~dgm_ppl.infer.BiGANLoss`). The generator, here with straight-through binary outputs
   as in 3(a), plus an encoder guide ``z ~ N(E(x), 0.1)``; the discriminator sees pairs ``(x, z)``. Besides
   samples, the encoder gives reconstructions ``G(E(x))`` of test digits: we report their pixel error next to that
   of ``G(z)`` for a random ``z`` (what an encoder that ignores x would get).
3. **Discrete GANs** (``GANLoss`` on a Bernoulli site). The generator's output is 64 *bits*, like the data:
   (a) straight-through Gumbel-softmax, ``dist.RelaxedBernoulliStraightThrough(0.5, logits=G(z))``: the
   discriminator sees exact 0/1 fakes, the generator gets the gradient of the relaxed sample; (b) REINFORCE,
   ``dist.Bernoulli(logits=G(z))`` with ``GANLoss(..., estimator="reinforce")``: the score-function gradient
   of the hard samples' log-probability, weighted by the discriminator's per-sample loss minus a
   moving-average baseline.
4. **NCE vs SML for an RBM** (:class:`~dgm_ppl.infer.NCELoss` vs the RBM's own SML ``log_prob`` under
   ``Trace_ELBO``). A 64x16 Bernoulli RBM: its exact log Z (2^16 hidden states enumerated) gives the exact
   held-out log-likelihood of both fits, and checks the normalizer ``c`` that NCE learns as a parameter.
   Samples are drawn by Gibbs sampling from random states.
5. **Sample quality** for every generator: FID, KID (± its subset standard error) and precision/recall
   (Kynkäänniemi et al. 2019, k = 3).

Prints one JSON line per method (its metrics and training seconds), then one JSON line with the whole report, and
saves ``digits_by_comparison.png`` (sample grids and bar charts of the metrics) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from _figures import tile  # tutorials/_figures.py
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import BernoulliRBM, PersistentChains, average_log_likelihood, exact_log_partition
from dgm_ppl.evaluation import digits_feature_extractor, frechet_distance, kernel_distance, precision_recall
from dgm_ppl.infer import BiGANLoss, GANLoss, MMDLoss, NCELoss, train
from dgm_ppl.kernels import RBFMixture

ZDIM = 16
LABELS = {
    "gan": "GAN (non-saturating)",
    "wgan_gp": "WGAN-GP",
    "mmd": "MMD (GMMN)",
    "bigan": "BiGAN / ALI",
    "gan_relaxed": "discrete GAN, Gumbel ST",
    "gan_reinforce": "discrete GAN, REINFORCE",
    "rbm_sml": "RBM, SML",
    "rbm_nce": "RBM, NCE",
}


def main():
    ap = argparse.ArgumentParser(description="GAN, MMD, BiGAN, discrete GANs and NCE on the binarized digits")
    ap.add_argument("--epochs", type=int, default=40, help="epochs over the 1,500 training digits, per generator")
    ap.add_argument("--rbm-epochs", type=int, default=40, help="epochs for each RBM")
    ap.add_argument("--gibbs-steps", type=int, default=1000, help="Gibbs sweeps per RBM sample")
    ap.add_argument("--num-samples", type=int, default=1000, help="samples per model for the metrics")
    ap.add_argument("--feature-epochs", type=int, default=30, help="epochs of the feature extractor")
    ap.add_argument("--methods", nargs="+", choices=tuple(LABELS), default=list(LABELS))
    ap.add_argument("--quick", action="store_true", help="a short smoke run (a few epochs of everything)")
    ap.add_argument("--out", default="outputs", help="folder for the figure")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.rbm_epochs, args.gibbs_steps, args.num_samples, args.feature_epochs = 2, 2, 50, 300, 3
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and polite on shared machines
    progress = not args.no_progress
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()

    x_train = load_digits("train")  # (1500, 64) in {0, 1}
    x_test = load_digits("test")  # (297, 64)
    # The yardstick's features: an MLP classifier of the training digits (the test digits stay out of it).
    extractor = digits_feature_extractor(epochs=args.feature_epochs, seed=args.seed)
    feats_test = extractor.extract(x_test)
    metric_gen = torch.Generator().manual_seed(args.seed)

    def quality(samples: torch.Tensor) -> dict:
        feats = extractor.extract(samples)
        kid = kernel_distance(feats, feats_test, num_subsets=50, generator=metric_gen)
        pr = precision_recall(feats_test, feats)
        return {
            "fid": round(frechet_distance(feats, feats_test), 3),
            "kid": round(kid.value, 4),
            "kid_stderr": round(kid.stderr, 4),
            "precision": round(pr.precision, 3),
            "recall": round(pr.recall, 3),
        }

    reference = x_train[torch.randperm(len(x_train), generator=metric_gen)[: args.num_samples]]
    report: dict = {"real_train_digits": quality(reference)}
    print(json.dumps({"method": "real_train_digits", **report["real_train_digits"]}), flush=True)
    samples: dict[str, torch.Tensor] = {}
    reconstructions = None
    for name in args.methods:
        pyro.set_rng_seed(args.seed)  # the same initial generator for every generator loss
        pyro.clear_param_store()
        tic = time.perf_counter()
        if name.startswith("rbm"):
            extra, draw = fit_rbm(name, args, x_train, x_test, progress)
        else:
            extra, draw = fit_generator(name, args, x_train, x_test, progress)
        seconds = time.perf_counter() - tic
        if "reconstructions" in extra:
            reconstructions = extra.pop("reconstructions")
        with torch.no_grad():
            samples[name] = draw(args.num_samples)
        report[name] = {**quality(samples[name]), **extra, "train_seconds": round(seconds, 1)}
        print(json.dumps({"method": name, **report[name]}), flush=True)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    path = os.path.join(args.out, "digits_by_comparison.png")
    make_figure(path, report, samples, reconstructions, x_test)
    report["figure"] = path
    print(json.dumps(report))


# ----------------------------------------------------------------------------------------------
# The generators: one Pyro model, four losses.
# ----------------------------------------------------------------------------------------------
def mlp(d_in: int, d_out: int, hidden: int = 128, act=nn.ReLU) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, d_out))


def generator_model(G: nn.Module, num_data: int, observe):
    """z ~ N(0, I) per datum, then ``observe(G(z))``: the observed site's distribution given the generator's
    output (a Delta at the pixel intensities, or a distribution over bits given logits)."""

    def model(x):
        pyro.module("G", G)
        with pyro.plate("data", num_data, subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([ZDIM]).to_event(1))
            pyro.sample("x", observe(G(z)), obs=x)

    return model


def no_guide(x):  # no global latents: z is drawn from the prior inside the model
    pass


def fit_generator(name: str, args, x_train, x_test, progress):
    """Train one generator by the loss ``name``; returns extra scores and a sampler ``n -> (n, 64)``."""
    n = len(x_train)
    G = mlp(ZDIM, 64)
    adam = {"lr": 1e-3, "betas": (0.5, 0.999)}
    extra: dict = {}
    guide = no_guide
    if name in ("gan", "wgan_gp", "mmd"):

        def observe(out):  # pixel intensities in (0, 1)
            return dist.Delta(torch.sigmoid(out), event_dim=1)

    elif name in ("gan_relaxed", "bigan"):

        def observe(logits):
            return dist.RelaxedBernoulliStraightThrough(torch.tensor(0.5), logits=logits).to_event(1)

    else:

        def observe(logits):
            return dist.Bernoulli(logits=logits).to_event(1)

    model = generator_model(G, n, observe)
    batch_size = 100
    if name == "mmd":
        # Distances between binarized digits are about 3 to 6 (square roots of Hamming distances): bandwidths
        # around them, summed. A larger minibatch lowers the variance of the MMD² estimate.
        loss = MMDLoss(RBFMixture([1.0, 2.0, 4.0, 8.0]))
        optim = pyro.optim.Adam({"lr": 1e-3})
        batch_size = 250
    elif name == "bigan":
        E = mlp(64, ZDIM)
        D = Joint()
        guide = encoder_guide(E, n)
        loss = BiGANLoss(D, d_optim=torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999)))
        optim = pyro.optim.Adam(adam)
    elif name == "wgan_gp":
        # The critic's Lipschitz bound by the one-sided gradient penalty (WGAN-LP), Adam's betas as in WGAN-GP.
        D = mlp(64, 1, act=lambda: nn.LeakyReLU(0.2))
        d_optim = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9))
        loss = GANLoss(D, "wasserstein", d_optim=d_optim, gradient_penalty=10.0, one_sided=True)
        optim = pyro.optim.Adam({"lr": 1e-3, "betas": (0.5, 0.9)})
    else:
        D = mlp(64, 1, act=lambda: nn.LeakyReLU(0.2))
        estimator = "reinforce" if name == "gan_reinforce" else "reparam"
        d_optim = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
        loss = GANLoss(D, "nonsaturating", d_optim=d_optim, estimator=estimator)
        optim = pyro.optim.Adam(adam)
    train(SVI(model, guide, optim, loss), x_train, epochs=args.epochs, batch_size=batch_size, progress=progress)

    def draw(num: int) -> torch.Tensor:
        """The model's own draws at ``x`` (run without its observation, as the losses do)."""
        trace = poutine.trace(poutine.uncondition(model)).get_trace(torch.zeros(num, 64))
        return trace.nodes["x"]["value"].detach()

    if name == "bigan":
        with torch.no_grad():
            recon = torch.sigmoid(G(E(x_test)))
            random = torch.sigmoid(G(torch.randn(len(x_test), ZDIM)))
            extra["reconstruction_pixel_error"] = round(((recon > 0.5).float() - x_test).abs().mean().item(), 4)
            extra["random_z_pixel_error"] = round(((random > 0.5).float() - x_test).abs().mean().item(), 4)
            extra["reconstructions"] = recon[:24]
    if name == "gan_reinforce":
        extra["final_baseline"] = round(loss.baseline, 4)
    return extra, draw


class Joint(nn.Module):
    """BiGAN's discriminator D(x, z): an MLP on the concatenated pair."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = mlp(64 + ZDIM, 1, hidden, act=lambda: nn.LeakyReLU(0.2))

    def forward(self, x, z):
        return self.net(torch.cat([x, z], -1))


def encoder_guide(E: nn.Module, num_data: int, scale: float = 0.1):
    def guide(x):
        pyro.module("E", E)
        with pyro.plate("data", num_data, subsample=x):
            pyro.sample("z", dist.Normal(E(x), scale).to_event(1))

    return guide


# ----------------------------------------------------------------------------------------------
# The RBMs: SML (the distribution's own log_prob under Trace_ELBO) against NCE.
# ----------------------------------------------------------------------------------------------
def fit_rbm(name: str, args, x_train, x_test, progress):
    n = len(x_train)
    rbm = BernoulliRBM(64, 16, init_std=0.01).init_from_data(x_train)
    chains = PersistentChains(rbm, num_chains=100, steps=1, init=x_train[:100])

    def model(x):
        with pyro.plate("data", n, subsample=x):
            pyro.sample("x", rbm.distribution(chains), obs=x)

    steps = args.rbm_epochs * -(-n // 50)
    optim = pyro.optim.ClippedAdam({"lr": 1e-2, "lrd": 0.1 ** (1 / steps), "clip_norm": 1e12})
    extra: dict = {}
    if name == "rbm_sml":
        loss = Trace_ELBO()
    else:
        # The noise is the data's factorial Bernoulli (pixel means, kept off 0 and 1), five noise digits per datum;
        # c starts at the log Z of the factorial model the RBM starts near.
        noise = dist.Bernoulli(x_train.mean(0).clamp(0.02, 0.98)).to_event(1)
        loss = NCELoss(noise, num_noise=5, log_z_init=rbm.base_log_partition(rbm.visible_bias).item())
    train(SVI(model, no_guide, optim, loss), x_train, epochs=args.rbm_epochs, batch_size=50, progress=progress)
    with torch.no_grad():
        log_z = exact_log_partition(rbm, record=False).item()
    extra["test_log_likelihood_exact"] = round(average_log_likelihood(rbm, x_test, log_z), 3)
    extra["train_log_likelihood_exact"] = round(average_log_likelihood(rbm, x_train, log_z), 3)
    extra["log_z_exact"] = round(log_z, 3)
    if name == "rbm_nce":
        extra["log_z_learned_by_nce"] = round(loss.log_z.item(), 3)

    def draw(num: int) -> torch.Tensor:
        return rbm.sample(num, steps=args.gibbs_steps).detach()

    return extra, draw


# ----------------------------------------------------------------------------------------------
# The figure: sample grids, then bar charts of the metrics.
# ----------------------------------------------------------------------------------------------
def make_figure(path: str, report: dict, samples: dict, reconstructions, x_test: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = [("real test digits", x_test)] + [(LABELS[k], v) for k, v in samples.items()]
    if reconstructions is not None:
        grids.append(("BiGAN: G(E(x)) of test digits", reconstructions))
    cols = 5
    rows = -(-len(grids) // cols)
    fig = plt.figure(figsize=(3.2 * cols, 2.5 * rows + 3.4))
    spec = fig.add_gridspec(rows + 1, cols, height_ratios=[2.5] * rows + [3.4])
    for i in range(rows * cols):
        ax = fig.add_subplot(spec[i // cols, i % cols])
        ax.axis("off")
        if i < len(grids):
            title, images = grids[i]
            ax.imshow(tile(images[:24].float(), 4, 6), cmap="gray_r", interpolation="nearest", vmin=0, vmax=1)
            ax.set_title(title, fontsize=10)
    names = ["real_train_digits", *samples]
    labels = ["real train"] + [LABELS[k] for k in samples]
    colors = ["0.5"] + [f"C{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)][: len(samples)]
    bottom = [
        ("FID (lower is better)", "fid"),
        ("KID (lower is better)", "kid"),
        ("precision", "precision"),
        ("recall", "recall"),
    ]
    for j, (title, key) in enumerate(bottom):
        ax = fig.add_subplot(spec[rows, j])
        values = [report[k][key] for k in names]
        ax.barh(range(len(names)), values, color=colors)
        ax.set_yticks(range(len(names)), labels if j == 0 else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
    ax = fig.add_subplot(spec[rows, cols - 1])
    rbms = [k for k in samples if k.startswith("rbm")]
    if rbms:
        values = [report[k]["test_log_likelihood_exact"] for k in rbms]
        low = min(values) - 3
        ax.bar(range(len(rbms)), [v - low for v in values], bottom=low, color=[colors[names.index(k)] for k in rbms])
        ax.set_xticks(range(len(rbms)), [LABELS[k] for k in rbms], fontsize=8)
        ax.set_ylim(low, max(values) + 1)
        ax.set_title("RBM 64x16: exact test log-likelihood", fontsize=10)
    else:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
