r"""A spike-and-slab RBM on the real-valued 8x8 digits, against a Gaussian-Bernoulli RBM of the same size.

    python tutorials/ssrbm_digits.py            # about 20 seconds of CPU time on one core

It runs on one torch thread (``--threads`` to change).

1. The digits' intensities :math:`k/16` are dequantized to :math:`(k + u)/17` (:math:`u` uniform), so that a density
   on :math:`\mathbb R^{64}` is well defined, then centred per pixel and divided by one global standard deviation.
2. A :class:`~dgm_ppl.energy.spike_slab_rbm.SpikeSlabRBM` (bounded precision: always proper) and a
   :class:`~dgm_ppl.energy.GaussianBernoulliRBM` with the same number of hidden units, both learning their visible
   precisions, are trained the same way: SML through ``pyro.sample("x", model.distribution(chains), obs=batch)`` in a
   subsampled plate, under a plain ``SVI(..., Trace_ELBO())`` with persistent chains.
3. With a dozen hidden units both log-partition functions are exact (the ssRBM's enumerates the 2^12 spike states,
   each a Gaussian integral over the visible units and the slabs), so the held-out log-likelihoods compare exactly.
4. A figure of the learned filters :math:`W_i` and of Gibbs samples of the ssRBM is saved.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pyro
import torch
from _figures import tile  # tutorials/_figures.py
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import GaussianBernoulliRBM, PersistentChains, average_log_likelihood, exact_log_partition
from dgm_ppl.energy.spike_slab_rbm import SpikeSlabRBM
from dgm_ppl.infer import train


def fit(model, x_train, args):
    """SML through SVI with persistent chains; returns the chains."""
    n = len(x_train)
    chains = PersistentChains(model, num_chains=100, steps=1, init=x_train[:100])

    def pyro_model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", model.distribution(chains), obs=batch)

    def guide(batch):  # no latent variables: the hidden units are summed (and the slabs integrated) out
        pass

    steps = args.epochs * -(-n // args.batch_size)
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "lrd": 0.1 ** (1 / steps), "clip_norm": 10.0})
    svi = SVI(pyro_model, guide, optim, Trace_ELBO())
    train(svi, x_train, epochs=args.epochs, batch_size=args.batch_size, progress=not args.no_progress)
    return chains


def main():
    ap = argparse.ArgumentParser(description="spike-and-slab RBM on the real-valued 8x8 digits through Pyro's SVI")
    ap.add_argument("--hidden", type=int, default=12, help="hidden units of both models (<= 16 for exact log Z)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--precision", type=float, default=1.0, help="the initial visible precision of both models")
    ap.add_argument("--out", default="docs", help="folder for the figure")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default, one per core)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    # dequantize: the intensities are k/16, k = 0..16; spread each uniformly over its bin (k + u) / 17, so that a
    # density on R^64 is well defined (a pixel that is always 0 would otherwise give an unbounded likelihood)
    gen = torch.Generator().manual_seed(args.seed)
    raw_train, raw_test = (
        (x * 16 + torch.rand(x.shape, generator=gen)) / 17
        for x in (load_digits("train", binarize=False), load_digits("test", binarize=False))
    )
    mean = raw_train.mean(0)
    scale = float((raw_train - mean).std())
    x_train, x_test = (raw_train - mean) / scale, (raw_test - mean) / scale

    report = {"torch_threads": torch.get_num_threads(), "hidden": args.hidden, "epochs": args.epochs}
    models = {
        "ssrbm": lambda: SpikeSlabRBM(64, args.hidden, precision=args.precision, init_std=0.1),
        "gbrbm": lambda: GaussianBernoulliRBM(64, args.hidden, std=args.precision**-0.5, learn_std=True, init_std=0.1),
    }
    trained = {}
    for key, make in models.items():
        pyro.set_rng_seed(args.seed)
        pyro.clear_param_store()
        start = time.perf_counter()
        model = make().init_from_data(x_train)
        chains = fit(model, x_train, args)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            log_z = float(exact_log_partition(model))
        report[key] = {
            "test_log_likelihood_exact": round(average_log_likelihood(model, x_test, log_z), 3),
            "train_log_likelihood_exact": round(average_log_likelihood(model, x_train, log_z), 3),
            "log_z_exact": round(log_z, 3),
            "train_seconds": round(seconds, 1),
        }
        trained[key] = (model, chains)
    ssrbm, chains = trained["ssrbm"]
    report["ssrbm"]["min_precision_eigenvalue"] = round(ssrbm.min_precision_eigenvalue(), 4)
    # the same data in pixel units ([0, 1] intensities): the density changes by the Jacobian of the scaling
    report["test_nats_per_image_in_pixel_units"] = {
        k: round(v["test_log_likelihood_exact"] - 64 * float(torch.log(torch.tensor(scale))), 3)
        for k, v in report.items()
        if isinstance(v, dict) and "test_log_likelihood_exact" in v
    }
    print(json.dumps(report, indent=1))

    # --- figure: filters and samples ---------------------------------------------------------
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = ssrbm.distribution(chains, sample_steps=1000).sample((32,)) * scale + mean
    filters = ssrbm.weight.detach().T[:16]
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.5))
    axes[0].imshow(tile(samples.clamp(0, 1), 4, 8), cmap="gray_r", interpolation="nearest", vmin=0, vmax=1)
    axes[0].set_title("ssRBM samples (1,000 Gibbs sweeps from the persistent chains)")
    rows = 1 if len(filters) <= 8 else 2
    cols = -(-len(filters) // rows)
    axes[1].imshow(tile(filters, rows, cols, normalize=True), cmap="RdBu_r", interpolation="nearest")
    axes[1].set_title("learned filters $W_i$ (one per spike-and-slab pair)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(args.out, "ssrbm_digits.png")
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
