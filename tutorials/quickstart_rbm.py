"""Quickstart: a Bernoulli RBM on the embedded 8x8 digits, trained by SML inside Pyro's SVI.

    python tutorials/quickstart_rbm.py            # 20 to 30 seconds on one CPU core

It runs on one torch thread (``--threads`` to change): the model is small, so more threads only add
synchronization, and on a loaded machine torch's default (one thread per core) oversubscribes the cores.

1. The RBM is a Pyro distribution: ``pyro.sample("x", rbm.distribution(chains), obs=batch)``
   inside a subsampled ``pyro.plate``. Its ``log_prob`` carries the stochastic-maximum-likelihood
   gradient from persistent Gibbs chains, so a plain ``SVI(..., Trace_ELBO())`` trains it.
2. AIS estimates log Z, giving the held-out log-likelihood with +-3 sd error bars; with 20 hidden
   units the exact log Z (enumerating 2^20 hidden states) checks the estimate.
3. A figure of Gibbs samples and of the learned filters is saved.
"""

from __future__ import annotations

import argparse
import json
import os

import pyro
import torch
from _figures import tile  # tutorials/_figures.py
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import (
    BernoulliRBM,
    PersistentChains,
    ais_log_partition,
    average_log_likelihood,
    exact_log_partition,
    reverse_ais_log_partition,
)
from dgm_ppl.infer import train


def main():
    ap = argparse.ArgumentParser(description="Bernoulli RBM on the 8x8 digits through Pyro's SVI")
    ap.add_argument("--hidden", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--ais-betas", type=int, default=14500)
    ap.add_argument("--out", default="outputs", help="folder for the figure and the trained model")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default, one per core)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # a small model: one thread is fastest, and polite on shared machines
    pyro.set_rng_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    x_train, x_test = load_digits("train"), load_digits("test")
    n = len(x_train)

    # --- the model: a Pyro program with an RBM factor ----------------------------------
    rbm = BernoulliRBM(64, args.hidden, centered=True).init_from_data(x_train)
    chains = PersistentChains(rbm, num_chains=100, steps=1, init=x_train[:100])

    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    def guide(batch):  # no latent variables: the hidden units are summed out in the free energy
        pass

    steps = args.epochs * -(-n // 50)
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "lrd": 0.01 ** (1 / steps), "clip_norm": 1e12})
    svi = SVI(model, guide, optim, Trace_ELBO())
    train(svi, x_train, epochs=args.epochs, batch_size=50, progress=not args.no_progress)

    # --- evaluation --------------------------------------------------------------------
    ais = ais_log_partition(rbm, num_chains=100, num_betas=args.ais_betas, data=x_train, progress=not args.no_progress)
    rev = reverse_ais_log_partition(rbm, chains.state, num_betas=args.ais_betas, data=x_train)
    ll = average_log_likelihood(rbm, x_test, ais.log_z)
    lo, hi = ais.interval(3)
    report = {
        "torch_threads": torch.get_num_threads(),
        "test_log_likelihood_ais": round(ll, 3),
        "error_bar_3sd": [round(ll - (hi - ais.log_z), 3), round(ll + (ais.log_z - lo), 3)],
        "test_log_likelihood_reverse_ais": round(average_log_likelihood(rbm, x_test, rev.log_z), 3),
        "train_log_likelihood_ais": round(average_log_likelihood(rbm, x_train, ais.log_z), 3),
        "log_z_ais": round(ais.log_z, 4),
        "log_z_stderr": round(ais.stderr, 4),
    }
    if args.hidden <= 20:
        exact = float(exact_log_partition(rbm, record=False).detach())
        report["log_z_exact"] = round(exact, 4)
        report["test_log_likelihood_exact"] = round(average_log_likelihood(rbm, x_test, exact), 3)
    print(json.dumps(report, indent=1))
    torch.save({"rbm": rbm.state_dict(), "chains": chains.state_dict()}, os.path.join(args.out, "quickstart_rbm.pt"))

    # --- figure: Gibbs samples and filters ------------------------------------------------
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = rbm.distribution(chains, sample_steps=1000).sample((32,))
    filters = rbm.weight.detach().T[:20]
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.5))
    axes[0].imshow(tile(samples, 4, 8), cmap="gray_r", interpolation="nearest")
    axes[0].set_title("Gibbs samples (1,000 sweeps from the persistent chains)")
    axes[1].imshow(tile(filters, 2, 10, normalize=True), cmap="RdBu_r", interpolation="nearest")
    axes[1].set_title("learned filters (columns of W)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(args.out, "quickstart_rbm.png")
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
