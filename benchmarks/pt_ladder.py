"""Parallel tempering on a trained RBM: which ladder of inverse temperatures swaps, and at what cost per sweep.

Replica exchange helps the negative phase only if states travel from the fast-mixing replicas (small beta, near the
data's base-rate model) up to beta = 1, so every neighbouring pair must swap often. This loads a model saved by
``rbm_quality.py --save``, runs ``ParallelTempering`` with each ladder for ``--sweeps`` sweeps (chains started at
training images, as in training) and prints one JSON line per ladder: the swap rate of every neighbouring pair, the
lowest one (the bottleneck), and the seconds per sweep (a ladder of K replicas costs about K persistent-chain sweeps).

    python benchmarks/pt_ladder.py --data ../shared/data/binarized_mnist.npz --load benchmarks/models/rbm500.pt \\
        --ladder geometric:5:0.05 linear:10:0.8 linear:20:0.5

A ladder is ``SPACING:K:LOWEST``: K inverse temperatures from LOWEST to 1, equally spaced (``linear``) or in
ratio (``geometric``), on the path from the base-rate model that ``rbm_quality.py --parallel-tempering`` uses.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _training import tempering_betas

from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import BernoulliRBM, ParallelTempering


def ladder(spec: str) -> tuple[str, torch.Tensor]:
    """``SPACING:K:LOWEST`` -> (spec, the K increasing inverse temperatures ending at 1)."""
    try:
        spacing, k, lowest = spec.split(":")
        k, lowest = int(k), float(lowest)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r}: a ladder is SPACING:K:LOWEST, e.g. linear:10:0.8") from None
    bad_lowest = not 0 <= lowest < 1 or (spacing == "geometric" and lowest <= 0)
    if spacing not in ("linear", "geometric") or k < 2 or bad_lowest:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: SPACING is linear or geometric, K >= 2, 0 <= LOWEST < 1 (> 0 for geometric)"
        )
    return spec, tempering_betas(k, spacing, lowest)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help=".npz with the 'train' images (N x 784, binary)")
    ap.add_argument("--load", required=True, help="an RBM saved by rbm_quality.py --save")
    ap.add_argument("--model", choices=["raw", "averaged"], default="raw", help="the saved RBM or its average")
    ap.add_argument("--ladder", type=ladder, nargs="+", required=True, metavar="SPACING:K:LOWEST")
    ap.add_argument("--chains", type=int, default=100, help="chains per replica")
    ap.add_argument("--sweeps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_x = load_binarized_mnist(args.data, "train")
    saved = torch.load(args.load, map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or not {"rbm", "config"} <= saved.keys():
        raise SystemExit(f"{args.load} is not an RBM saved by rbm_quality.py --save (no 'rbm' and 'config')")
    config = saved["config"]
    if args.model == "averaged":
        if saved.get("avg") is None:
            raise SystemExit(f"{args.load} has no averaged RBM (it was trained without --average-from)")
        rbm = BernoulliRBM(784, config["hidden"], centered=False, name="rbm_avg")
        rbm.load_state_dict(saved["avg"])
    else:
        rbm = BernoulliRBM(784, config["hidden"], centered=not config["no_center"], name="rbm")
        rbm.init_from_data(train_x)
        rbm.load_state_dict(saved["rbm"])
    base = rbm.base_rate(train_x).detach()
    records = []
    for spec, betas in args.ladder:
        torch.manual_seed(args.seed)
        pt = ParallelTempering(rbm, num_chains=args.chains, betas=betas, base=base)
        start = train_x[torch.randperm(len(train_x))[: args.chains]]
        with torch.no_grad():
            pt.state.copy_(start.expand(len(betas), -1, -1))
        t0 = time.perf_counter()
        for _ in range(args.sweeps):
            pt.advance()
        seconds = time.perf_counter() - t0
        rates = [round(float(r), 3) for r in pt.swap_rate]
        record = dict(benchmark="pt_ladder", model=args.model, ladder=spec, betas=[round(float(b), 4) for b in betas],
                      swap_rate=rates, lowest_swap_rate=min(rates), sweeps=args.sweeps, chains=args.chains,
                      ms_per_sweep=round(1000 * seconds / args.sweeps, 2))  # fmt: skip
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


if __name__ == "__main__":
    main()
