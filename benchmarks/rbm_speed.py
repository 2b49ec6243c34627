"""Speed: one epoch of PCD-1 for a 784x500 Bernoulli RBM, batch 100, three ways in one run.

1. ``svi``: dgm_ppl's RBM distribution inside an unmodified ``pyro.infer.SVI`` + ``Trace_ELBO``
   (Pyro's validation on, the default; ``svi_no_validation`` is the same with it off).
2. ``raw``: a hand-written PyTorch loop doing the same arithmetic (same matrix products, same
   Gibbs sweep, same random draws in the same order, Adam on the closed-form SML gradient).
3. ``sklearn``: scikit-learn's ``BernoulliRBM`` (PCD-1, SGD) with the same batch size.

Prints one JSON line per measurement, then a summary line with the ratios.

    python benchmarks/rbm_speed.py --data ../shared/data/binarized_mnist.npz
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import BernoulliRBM, PersistentChains


def emit(**record):
    print(json.dumps(record), flush=True)


def svi_epoch(x, order, svi, batch_size, validate=True):
    for i in range(0, x.shape[0], batch_size):
        pyro.enable_validation(validate)  # global flag: set per step, as the loops are interleaved
        yield svi.step(x[order[i : i + batch_size]])


def raw_epoch(x, order, params, hidden, opt, batch_size):
    """PCD-1 by hand, the same arithmetic as the SVI path: one sweep of the persistent chains
    (visible from the stored hidden sample), positive and negative phase in one matrix product,
    the loss value that ``svi.step`` returns, the closed-form SML gradient of that loss, and the
    chains' next hidden sample drawn from the conditional computed for the gradient."""
    w, b, c = params
    n = x.shape[0]
    for i in range(0, n, batch_size):
        v = x[order[i : i + batch_size]]
        with torch.no_grad():
            pv = torch.sigmoid(hidden @ w.T + b)
            negatives = torch.rand_like(pv).lt_(pv)
            both = torch.cat([v, negatives])
            x_all = both @ w + c
            neg_free = both @ b + torch.nn.functional.softplus(x_all).sum(-1)
            # loss = -(N/B) sum_batch [-F(v)]  (its SML gradient adds N * mean_chains grad(-F))
            weight = torch.cat(
                [torch.full((v.shape[0],), -n / v.shape[0]), torch.full((negatives.shape[0],), n / negatives.shape[0])]
            ).to(x_all)
            loss = float((weight[: v.shape[0]] * neg_free[: v.shape[0]]).sum())
            ph = torch.sigmoid(x_all)
            g = ph * weight[:, None]
            w.grad = both.T @ g
            b.grad = both.T @ weight
            c.grad = g.sum(0)
            ph_neg = ph[v.shape[0] :]
            hidden = torch.rand_like(ph_neg).lt_(ph_neg)
        opt.step()
        yield loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help=".npz with a 'train' array (N x 784, binary)")
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--skip-no-validation", action="store_true", help="skip the SVI run with validation off")
    ap.add_argument("--chunk", type=int, default=25, help="steps per timed chunk when interleaving")
    args = ap.parse_args()
    device = torch.device(args.device)
    x = load_binarized_mnist(args.data, "train").to(device)
    n = x.shape[0]
    common = dict(
        benchmark="rbm_pcd1_epoch",
        n=n,
        visible=784,
        hidden=args.hidden,
        batch=args.batch_size,
        device=str(device),
        threads=torch.get_num_threads(),
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    impls = ["svi", "raw"] + ([] if args.skip_no_validation else ["svi_no_validation"])
    times = {name: [] for name in impls + ["sklearn"]}
    final = {}
    for rep in range(args.repeats):
        seed = 1000 + rep
        torch.manual_seed(seed)
        order = torch.randperm(n, device=device)
        rbm0 = BernoulliRBM(784, args.hidden).to(device)
        chains0 = PersistentChains(rbm0, num_chains=args.batch_size, steps=1)
        init = [t.detach().clone() for t in (rbm0.weight, rbm0.visible_bias, rbm0.hidden_bias, chains0.hidden)]
        pyro.clear_param_store()

        def svi_loop(name, validate, init, order):
            rbm = BernoulliRBM(784, args.hidden, name=name).to(device)
            chains = PersistentChains(rbm, num_chains=args.batch_size, steps=1)
            with torch.no_grad():
                for t, t0 in zip((rbm.weight, rbm.visible_bias, rbm.hidden_bias, chains.hidden), init):
                    t.copy_(t0)

            def model(batch):
                with pyro.plate("data", n, subsample=batch):
                    pyro.sample("x", rbm.distribution(chains), obs=batch)

            svi = SVI(model, lambda batch: None, pyro.optim.Adam({"lr": args.lr}), Trace_ELBO())

            return svi_epoch(x, order, svi, args.batch_size, validate), rbm.weight

        loops, weights = {}, {}
        for name in impls:
            if name == "raw":
                w, b, c, hidden = (t.clone().requires_grad_(i < 3) for i, t in enumerate(init))
                opt = torch.optim.Adam([w, b, c], lr=args.lr)
                loops[name], weights[name] = raw_epoch(x, order, (w, b, c), hidden, opt, args.batch_size), w
            else:
                loops[name], weights[name] = svi_loop(name, name == "svi", init, order)
        # The epochs run interleaved in chunks of --chunk steps, each chunk timed on its own, so
        # that drifts in machine speed hit all alike. Each has its own random stream with the
        # same seed, so all draw the same random numbers in the same order.
        streams = {name: torch.Generator().manual_seed(seed + 1).get_state() for name in impls}
        elapsed = dict.fromkeys(impls, 0.0)
        done = False
        while not done:
            for name, loop in loops.items():
                torch.set_rng_state(streams[name])
                sync()
                t0 = time.perf_counter()
                for _ in range(args.chunk):
                    if next(loop, None) is None:
                        done = True
                        break
                sync()
                elapsed[name] += time.perf_counter() - t0
                streams[name] = torch.get_rng_state()
        for name in impls:
            times[name].append(elapsed[name])
            emit(**common, impl=name, repeat=rep, seconds=round(elapsed[name], 3))
        final = {name: weights[name].detach().clone() for name in impls}

        # --- scikit-learn
        if not args.skip_sklearn:
            from sklearn.neural_network import BernoulliRBM as SkRBM

            xs = x.cpu().numpy().astype(np.float32)
            sk = SkRBM(
                n_components=args.hidden, learning_rate=0.05, batch_size=args.batch_size, n_iter=1, random_state=seed
            )
            t0 = time.perf_counter()
            sk.fit(xs)
            times["sklearn"].append(time.perf_counter() - t0)
            emit(**common, impl="sklearn", repeat=rep, seconds=round(times["sklearn"][-1], 3))

    med = {k: statistics.median(v) for k, v in times.items() if v}
    summary = dict(
        **common,
        impl="summary",
        median_seconds={k: round(v, 3) for k, v in med.items()},
        svi_over_raw=round(med["svi"] / med["raw"], 3),
        max_abs_weight_diff_svi_vs_raw=float((final["svi"] - final["raw"]).abs().max()),
    )
    if "sklearn" in med:
        summary["sklearn_over_svi"] = round(med["sklearn"] / med["svi"], 3)
    emit(**summary)


if __name__ == "__main__":
    main()
