"""Quality: a 784-500-1000 DBM trained by variational SML through SVI, scored by the AIS test bound.

Training: greedy pretraining of the two RBMs (doubled bottom and top, ``DBM.pretrain``), then
Algorithm 20.1 through an unmodified ``pyro.infer.SVI`` with ``Trace_ELBO``: mean-field positive
phase, persistent block-Gibbs chains for the negative phase, centered parametrization, Adam with an
exponentially decaying rate (``pyro.optim.ExponentialLR``, stepped once per epoch). Scoring: AIS over
the first hidden layer with v and h2 summed out (Salakhutdinov & Hinton 2009), then the average
variational bound minus log Z on the scored split, with the +-3 sd interval, and reverse AIS from
the chains.

    python benchmarks/dbm_quality.py --data ../shared/data/binarized_mnist.npz --epochs 60 --save dbm.pt
    python benchmarks/dbm_quality.py --data ../shared/data/binarized_mnist.npz --load dbm.pt

Prints one JSON line per epoch and one per score.
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import DBM, PersistentChains, ais_log_partition, average_log_likelihood, reverse_ais_log_partition
from dgm_ppl.infer import train


def emit(**record):
    print(json.dumps(record), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help=".npz with 'train' and the scored split (N x 784, binary)")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--layers", type=int, nargs="+", default=[500, 1000], help="hidden layer sizes")
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--chains", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1, help="Gibbs sweeps per update")
    ap.add_argument("--mean-field-iters", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--final-lr", type=float, default=1e-5)
    ap.add_argument("--weight-decay", type=float, default=1e-5, help="per datum (L2 on all parameters)")
    ap.add_argument("--no-center", action="store_true")
    ap.add_argument("--ais-chains", type=int, default=100)
    ap.add_argument("--ais-betas", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save", help="write the trained DBM and its chains here")
    ap.add_argument("--load", help="score a saved DBM instead of training")
    ap.add_argument("--resume", help="train further from a saved DBM and its chains (fresh optimizer, no pretraining)")
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
    sizes = [784, *args.layers]
    common = dict(benchmark="dbm_quality", layers=sizes, device=str(device), threads=torch.get_num_threads())

    dbm = DBM(sizes, centered=not args.no_center, name="dbm").to(device)
    dbm.init_from_data(train_x)
    pretrain_seconds = train_seconds = 0.0
    if args.load:
        saved = torch.load(args.load, map_location=device, weights_only=False)
        dbm.load_state_dict(saved["dbm"])
        chains = PersistentChains(dbm, num_chains=args.chains, steps=args.steps)
        chains.load_state_dict(saved["chains"])
        emit(**common, event="loaded", path=args.load, config=saved["config"])
    else:
        if args.resume:
            saved = torch.load(args.resume, map_location=device, weights_only=False)
            dbm.load_state_dict(saved["dbm"])
            chains = PersistentChains(dbm, num_chains=args.chains, steps=args.steps)
            chains.load_state_dict(saved["chains"])
            dbm.log_z = None
            emit(**common, event="resumed", path=args.resume, config=saved["config"])
        else:
            t0 = time.perf_counter()
            dbm.pretrain(
                train_x, args.pretrain_epochs, lr=args.pretrain_lr, batch_size=args.batch_size, progress=args.progress
            )
            pretrain_seconds = time.perf_counter() - t0
            emit(**common, event="pretrained", seconds=round(pretrain_seconds, 1))
            init = train_x[torch.randperm(n, device=device)[: args.chains]]
            chains = PersistentChains(dbm, num_chains=args.chains, steps=args.steps, init=init)
        # The SVI gradient is N times the per-datum one: scale the per-datum weight decay accordingly.
        optim_args = {"lr": args.lr, "weight_decay": args.weight_decay * n}
        gamma = (args.final_lr / args.lr) ** (1 / max(1, args.epochs - 1))
        optim = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": optim_args, "gamma": gamma})

        def model(batch):
            with pyro.plate("data", n, subsample=batch):
                pyro.sample("x", dbm.distribution(chains, mean_field_iters=args.mean_field_iters), obs=batch)

        svi = SVI(model, lambda batch: None, optim, Trace_ELBO())
        t0 = time.perf_counter()

        def log(epoch, loss):
            optim.step()  # learning-rate decay, once per epoch
            emit(**common, event="epoch", epoch=epoch, loss=round(loss, 3), seconds=round(time.perf_counter() - t0, 1))
            if args.save:
                torch.save({"dbm": dbm.state_dict(), "chains": chains.state_dict(), "config": vars(args)}, args.save)

        train(svi, train_x, epochs=args.epochs, batch_size=args.batch_size, progress=args.progress, callback=log)
        train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    ais = ais_log_partition(dbm, args.ais_chains, args.ais_betas, data=train_x, progress=args.progress)
    ais_seconds = time.perf_counter() - t0
    ll = average_log_likelihood(dbm, test_x, ais.log_z)
    lo, hi = ais.interval(3.0)
    train_ll = average_log_likelihood(dbm, train_x[:10000], ais.log_z)
    rev = reverse_ais_log_partition(dbm, chains.states(), args.ais_betas, data=train_x)
    emit(
        **common,
        event="score",
        split=args.split,
        epochs=args.epochs,
        log_z=round(ais.log_z, 3),
        log_z_stderr=round(ais.stderr, 4),
        log_likelihood_bound=round(ll, 3),
        log_likelihood_bound_3sd=[round(ll - (hi - ais.log_z), 3), round(ll + (ais.log_z - lo), 3)],
        train_log_likelihood_bound=round(train_ll, 3),
        reverse_ais_log_z=round(rev.log_z, 3),
        reverse_ais_log_likelihood_bound=round(average_log_likelihood(dbm, test_x, rev.log_z), 3),
        pretrain_seconds=round(pretrain_seconds, 1),
        train_seconds=round(train_seconds, 1),
        ais_seconds=round(ais_seconds, 1),
        ais_betas=args.ais_betas,
        ais_chains=args.ais_chains,
    )


if __name__ == "__main__":
    main()
