"""How far a saved DBM's mean-field posterior is from its true one: for each ``--load`` file (written by
``dbm_quality.py --save``), on the first ``--images`` images of ``--split``, the effective sample size of the
importance weights of ``DBM.importance_log_prob`` (K draws of the even layers from the mean field) and the gap
between that estimate and the mean-field bound (both unnormalized, so no log Z is needed). One JSON line per file
and K::

    python benchmarks/dbm_posterior_gap.py --data ../shared/data/binarized_mnist.npz \\
        --load benchmarks/models/dbm_stage4.pt benchmarks/models/dbm_grown.pt
"""

from __future__ import annotations

import argparse
import json

import torch

from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import DBM


def load_dbm(path: str) -> DBM:
    """The raw DBM of a ``dbm_quality.py --save`` file, with its sizes and parametrization."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = saved["dbm"]
    weights = [state[f"weight_{l}"] for l in range(sum(k.startswith("weight_") for k in state))]
    sizes = [weights[0].shape[0], *(w.shape[1] for w in weights)]
    dbm = DBM(sizes, centered=not saved["config"].get("no_center"), name="dbm")
    dbm.load_state_dict(state)
    return dbm


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--load", nargs="+", required=True)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--samples", type=int, nargs="+", default=[10, 100], metavar="K")
    ap.add_argument("--mean-field-iters", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = load_binarized_mnist(args.data, args.split)[: args.images]
    for path in args.load:
        dbm = load_dbm(path)
        with torch.no_grad():
            bound = float(dbm.variational_bound(x, num_iters=args.mean_field_iters).mean())
            for k in args.samples:
                torch.manual_seed(args.seed)
                log_w = dbm.importance_log_weights(x, k, num_iters=args.mean_field_iters)
                w = torch.softmax(log_w, -1)
                ess = 1 / (w**2).sum(-1)
                estimate = float((torch.logsumexp(log_w, -1) - torch.log(torch.tensor(float(k)))).mean())
                record = dict(benchmark="dbm_posterior_gap", path=path, split=args.split, images=len(x), samples=k)
                record.update(ess_median=round(float(ess.median()), 2), ess_mean=round(float(ess.mean()), 2))
                record.update(importance_minus_bound=round(estimate - bound, 3))
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
