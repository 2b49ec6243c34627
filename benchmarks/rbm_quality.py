"""Quality: a 500-hidden Bernoulli RBM trained by SML through SVI, scored by AIS on a held-out split.

Training: centered RBM (offsets at the data mean and a running hidden mean), persistent chains,
Adam (or SGD with momentum) with an exponentially decaying rate (``pyro.optim.ExponentialLR``,
stepped once per epoch) and weight decay, all through an unmodified
``pyro.infer.SVI`` with ``Trace_ELBO``. Scoring: AIS (Salakhutdinov & Murray schedule, 14,500
betas, 100 runs, base-rate initial model fitted to the training data), then the average
log-likelihood of the chosen split with the +-3 sd interval, and reverse AIS from the chains.

    python benchmarks/rbm_quality.py --data ../shared/data/binarized_mnist.npz --epochs 170 --save rbm500.pt
    python benchmarks/rbm_quality.py --data ../shared/data/binarized_mnist.npz --load rbm500.pt --split valid

Prints one JSON line per epoch (``--log-every``) and one per score.
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import (
    BernoulliRBM,
    PersistentChains,
    ais_log_partition,
    average_log_likelihood,
    reverse_ais_log_partition,
)
from dgm_ppl.infer import train


def emit(**record):
    print(json.dumps(record), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help=".npz with 'train' and the scored split (N x 784, binary)")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=170)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--chains", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1, help="Gibbs sweeps per update (PCD-k)")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--momentum", type=float, default=0.9, help="for --optimizer sgd")
    ap.add_argument("--lr", type=float, default=3e-3, help="per datum for sgd")
    ap.add_argument("--final-lr", type=float, default=1e-5)
    ap.add_argument("--weight-decay", type=float, default=1e-5, help="per datum (L2 on all parameters)")
    ap.add_argument("--no-center", action="store_true")
    ap.add_argument("--ais-chains", type=int, default=100)
    ap.add_argument("--ais-betas", type=int, default=14500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save", help="write the trained RBM and its chains here")
    ap.add_argument("--load", help="score a saved RBM instead of training")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train_x = load_binarized_mnist(args.data, "train").to(device)
    test_x = load_binarized_mnist(args.data, args.split).to(device)
    n = train_x.shape[0]
    common = dict(benchmark="rbm_quality", hidden=args.hidden, device=str(device), threads=torch.get_num_threads())

    rbm = BernoulliRBM(784, args.hidden, centered=not args.no_center, name="rbm").to(device)
    rbm.init_from_data(train_x)
    init = train_x[torch.randperm(n, device=device)[: args.chains]]
    chains = PersistentChains(rbm, num_chains=args.chains, steps=args.steps, init=init)
    train_seconds = 0.0
    if args.load:
        saved = torch.load(args.load, map_location=device, weights_only=False)
        rbm.load_state_dict(saved["rbm"])
        chains.load_state_dict(saved["chains"])
        emit(**common, event="loaded", path=args.load, config=saved["config"])
    else:
        # The SVI gradient is N times the per-datum one: scale the per-datum settings accordingly.
        if args.optimizer == "adam":
            optim_args = {"lr": args.lr, "weight_decay": args.weight_decay * n}
            optimizer = torch.optim.Adam
        else:
            optim_args = {"lr": args.lr / n, "momentum": args.momentum, "weight_decay": args.weight_decay * n}
            optimizer = torch.optim.SGD
        gamma = (args.final_lr / args.lr) ** (1 / max(1, args.epochs - 1))
        optim = pyro.optim.ExponentialLR({"optimizer": optimizer, "optim_args": optim_args, "gamma": gamma})

        def model(batch):
            with pyro.plate("data", n, subsample=batch):
                pyro.sample("x", rbm.distribution(chains), obs=batch)

        svi = SVI(model, lambda batch: None, optim, Trace_ELBO())
        t0 = time.perf_counter()

        def log(epoch, loss):
            optim.step()  # learning-rate decay, once per epoch
            emit(**common, event="epoch", epoch=epoch, seconds=round(time.perf_counter() - t0, 1))

        train(svi, train_x, epochs=args.epochs, batch_size=args.batch_size, progress=args.progress, callback=log)
        train_seconds = time.perf_counter() - t0
        if args.save:
            torch.save({"rbm": rbm.state_dict(), "chains": chains.state_dict(), "config": vars(args)}, args.save)

    t0 = time.perf_counter()
    ais = ais_log_partition(rbm, args.ais_chains, args.ais_betas, data=train_x, progress=args.progress)
    ais_seconds = time.perf_counter() - t0
    ll = average_log_likelihood(rbm, test_x, ais.log_z)
    lo, hi = ais.interval(3.0)
    train_ll = average_log_likelihood(rbm, train_x, ais.log_z)
    rev = reverse_ais_log_partition(rbm, chains.state, args.ais_betas, data=train_x)
    emit(
        **common,
        event="score",
        split=args.split,
        epochs=args.epochs,
        log_z=round(ais.log_z, 3),
        log_z_stderr=round(ais.stderr, 4),
        log_likelihood=round(ll, 3),
        log_likelihood_3sd=[round(ll - (hi - ais.log_z), 3), round(ll + (ais.log_z - lo), 3)],
        train_log_likelihood=round(train_ll, 3),
        reverse_ais_log_z=round(rev.log_z, 3),
        reverse_ais_log_likelihood=round(average_log_likelihood(rbm, test_x, rev.log_z), 3),
        train_seconds=round(train_seconds, 1),
        ais_seconds=round(ais_seconds, 1),
        ais_betas=args.ais_betas,
        ais_chains=args.ais_chains,
    )


if __name__ == "__main__":
    main()
