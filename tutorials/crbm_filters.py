"""A convolutional RBM with probabilistic max pooling on the embedded 8x8 digits, trained by SML inside Pyro's SVI.

    python tutorials/crbm_filters.py            # about a minute on one CPU core

It runs on one torch thread (``--threads`` to change).

1. **The model** (Lee, Grosse, Ranganath & Ng 2009): ``K`` filters ``W^k`` of size ``r x r`` slide over the binary
   8x8 image ("valid" convolution), giving ``K`` detection layers of ``(9 - r) x (9 - r)`` binary units; the
   detection layers are cut into ``2 x 2`` pooling blocks in which at most one unit is on (probabilistic max
   pooling), and a pooling unit is the OR of its block. Each block is a softmax over its ``C^2 + 1`` states, so the
   hidden units sum out block by block and the free energy ``F(v)`` is exact:
   ``-F(v) = c sum(v) + sum_k sum_blocks log(1 + sum_block exp(W^k * v + b_k))``.
2. **Training inside Pyro.** The model is a Pyro distribution over flattened images:
   ``pyro.sample("x", crbm.distribution(chains), obs=batch)`` in a subsampled ``pyro.plate``; its ``log_prob``
   carries the stochastic-maximum-likelihood gradient from persistent block-Gibbs chains (hidden blocks drawn as
   categoricals, then pixels from ``sigmoid(c + sum_k W^k (full conv) h^k)``), so a plain
   ``SVI(..., Trace_ELBO())`` with an empty guide trains it. Lee et al.'s sparsity penalty (the detection units'
   mean activation pulled towards ``--target``, gradient on the hidden biases only) enters as a ``pyro.factor``.
3. **Evaluation.** AIS (and reverse AIS from the persistent chains) estimates ``log Z`` over the 64 pixels, giving
   the held-out log-likelihood; the report also gives the mean activation of the pooling units and the fraction of
   pooling units that are on in a posterior sample (sparsity), and the seconds taken.
4. **A figure** of the learned filters, of Gibbs samples, and of the pooling-unit probabilities of a test digit.
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
from dgm_ppl.energy import (
    PersistentChains,
    ais_log_partition,
    average_log_likelihood,
    reverse_ais_log_partition,
)
from dgm_ppl.energy.convolutional_rbm import ConvolutionalRBM
from dgm_ppl.infer import train


def main():
    ap = argparse.ArgumentParser(description="Convolutional RBM with probabilistic max pooling on the 8x8 digits")
    ap.add_argument("--filters", type=int, default=12)
    ap.add_argument("--filter-size", type=int, default=3)
    ap.add_argument("--pool", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--sparsity", type=float, default=10.0, help="weight of the sparsity penalty per datum (0: off)")
    ap.add_argument("--target", type=float, default=0.05, help="target mean activation of the detection units")
    ap.add_argument("--ais-betas", type=int, default=3000)
    ap.add_argument("--out", default="docs", help="folder for the figure")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default, one per core)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()

    x_train, x_test = load_digits("train"), load_digits("test")
    n = len(x_train)

    # --- the model: a Pyro program with a convolutional-RBM factor --------------------------
    crbm = ConvolutionalRBM((8, 8), args.filters, args.filter_size, args.pool, init_std=0.1).init_from_data(x_train)
    chains = PersistentChains(crbm, num_chains=100, steps=1, init=x_train[:100])

    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", crbm.distribution(chains), obs=batch)
        if args.sparsity > 0:  # Lee et al.'s regularizer, scaled like the N data terms
            pyro.factor("sparsity", -args.sparsity * n * crbm.sparsity_penalty(batch, args.target))

    def guide(batch):  # no latent variables: the hidden units are summed out in the free energy
        pass

    steps = args.epochs * -(-n // 50)
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(model, guide, optim, Trace_ELBO())
    train(svi, x_train, epochs=args.epochs, batch_size=50, progress=not args.no_progress)
    train_seconds = time.perf_counter() - start

    # --- evaluation --------------------------------------------------------------------------
    ais = ais_log_partition(crbm, num_chains=100, num_betas=args.ais_betas, data=x_train, progress=not args.no_progress)
    rev = reverse_ais_log_partition(crbm, chains.state, num_betas=args.ais_betas, data=x_train)
    ll = average_log_likelihood(crbm, x_test, ais.log_z)
    lo, hi = ais.interval(3)
    with torch.no_grad():
        pooling = crbm.pooling_probs(x_test)  # (N, K, P_h, P_w)
        detection = crbm.hidden_probs(x_test)  # (N, K, H', W')
        # hidden samples are in block order: a pooling unit is on when a unit of its block is
        pooling_on = crbm.sample_hidden(x_test).reshape(len(x_test), crbm.n_pools, -1).amax(-1)
    report = {
        "torch_threads": torch.get_num_threads(),
        "filters": f"{args.filters} x {args.filter_size}x{args.filter_size}, pooling {args.pool}x{args.pool}",
        "test_log_likelihood_ais": round(ll, 3),
        "error_bar_3sd": [round(ll - (hi - ais.log_z), 3), round(ll + (ais.log_z - lo), 3)],
        "test_log_likelihood_reverse_ais": round(average_log_likelihood(crbm, x_test, rev.log_z), 3),
        "train_log_likelihood_ais": round(average_log_likelihood(crbm, x_train, ais.log_z), 3),
        "log_z_ais": round(ais.log_z, 4),
        "log_z_stderr": round(ais.stderr, 4),
        "pooling_mean_activation": round(float(pooling.mean()), 4),
        "pooling_fraction_on_in_a_sample": round(float(pooling_on.mean()), 4),
        "detection_mean_activation": round(float(detection.mean()), 4),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=1))

    # --- figure: filters, samples, pooling maps of a test digit -----------------------------------
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = crbm.distribution(chains, sample_steps=1000).sample((32,))
    filters = crbm.weight.detach()
    k = args.filters
    fig = plt.figure(figsize=(9, 6.5))
    grid = fig.add_gridspec(3, k + 1, height_ratios=[1, 3.2, 1])  # column 0: the test digit; then one per filter
    limit = float(filters.abs().max())
    for i in range(k):
        ax = fig.add_subplot(grid[0, i + 1])
        ax.imshow(filters[i], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.axis("off")
        if i == 0:
            ax.set_title(f"learned {args.filter_size}x{args.filter_size} filters", loc="left", fontsize=9)
    ax = fig.add_subplot(grid[1, :])
    ax.imshow(tile(samples, 4, 8), cmap="gray_r", interpolation="nearest")
    ax.set_title("Gibbs samples (1,000 sweeps from the persistent chains)", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[2, 0])
    ax.imshow(x_test[0].reshape(8, 8), cmap="gray_r", interpolation="nearest")
    ax.set_title("test digit", fontsize=8)
    ax.axis("off")
    for i in range(k):
        ax = fig.add_subplot(grid[2, i + 1])
        ax.imshow(pooling[0, i], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
        if i == 0:
            ax.set_title("p(pooling unit on | digit), per filter (below its filter)", loc="left", fontsize=8)
    path = os.path.join(args.out, "crbm_filters.png")
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
