"""A discriminative and a hybrid RBM classify the 8x8 digits, against a logistic regression and an MLP.

    python tutorials/classification_rbm_digits.py            # about a minute on one CPU core

The classification RBM (Larochelle & Bengio 2008) gives :math:`p(y \\mid x)` in closed form, so the same Pyro
site ``pyro.sample("y", rbm.conditional(x), obs=y)`` trains it discriminatively under ``SVI``. Its hybrid objective
adds ``alpha`` times the joint :math:`\\log p(x, y)`, trained by SML from persistent chains on (x, one-hot y): one
Pyro model with both sites (``rbm.hybrid_model``). Two baselines see the same data, optimizer and epochs: a logistic
regression, and an MLP with one hidden layer as wide as the RBM's (sigmoid units). Each model is trained with three
seeds; the report gives the held-out accuracy (297 test digits) as mean and standard deviation, and saves a figure
of the hybrid RBM's class-conditional samples.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import pyro
import torch
from _figures import tile  # tutorials/_figures.py
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import ClassificationRBM, PersistentChains


def train_rbm(x, y, args, alpha: float, seed: int) -> ClassificationRBM:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    rbm = ClassificationRBM(64, args.hidden, 10, init_std=0.05).init_from_data(x, y)
    chains = PersistentChains(rbm.joint, num_chains=100, init=rbm.join(x[:100], y[:100])) if alpha else None
    svi = SVI(rbm.hybrid_model, lambda *a, **k: None, pyro.optim.Adam({"lr": args.lr}), Trace_ELBO())
    n = len(x)
    for _ in range(args.epochs):
        order = torch.randperm(n)
        for i in range(0, n, args.batch_size):
            idx = order[i : i + args.batch_size]
            svi.step(x[idx], y[idx], chains, alpha=alpha, num_data=n)
    return rbm


def train_net(net: nn.Module, x, y, args, seed: int) -> nn.Module:
    """The baselines: the same minibatches, Adam and rate, on the summed log-loss (as SVI's scaled loss)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    n = len(x)
    for _ in range(args.epochs):
        order = torch.randperm(n)
        for i in range(0, n, args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx]) * n
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def accuracy(predict, x, y) -> float:
    with torch.no_grad():
        return (predict(x) == y).float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="classification RBM vs logistic regression and MLP on the 8x8 digits")
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--alpha", type=float, default=0.01, help="weight of the generative term of the hybrid RBM")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="docs", help="folder for the figure")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    (x, y), (x_test, y_test) = load_digits("train", return_labels=True), load_digits("test", return_labels=True)
    start = time.perf_counter()
    scores: dict[str, list[float]] = {"discriminative_rbm": [], "hybrid_rbm": [], "logistic_regression": [], "mlp": []}
    for seed in args.seeds:
        rbm = train_rbm(x, y, args, 0.0, seed)
        scores["discriminative_rbm"].append(accuracy(rbm.predict, x_test, y_test))
        hybrid = train_rbm(x, y, args, args.alpha, seed)
        scores["hybrid_rbm"].append(accuracy(hybrid.predict, x_test, y_test))
        torch.manual_seed(seed)
        logistic = train_net(nn.Linear(64, 10), x, y, args, seed)
        scores["logistic_regression"].append(accuracy(lambda v, net=logistic: net(v).argmax(-1), x_test, y_test))
        torch.manual_seed(seed)
        mlp = train_net(
            nn.Sequential(nn.Linear(64, args.hidden), nn.Sigmoid(), nn.Linear(args.hidden, 10)), x, y, args, seed
        )
        scores["mlp"].append(accuracy(lambda v, net=mlp: net(v).argmax(-1), x_test, y_test))
    report = {
        name: {
            "mean": round(statistics.fmean(v), 4),
            "sd": round(statistics.pstdev(v), 4),
            "runs": [round(a, 4) for a in v],
        }
        for name, v in scores.items()
    }
    report["seconds"] = round(time.perf_counter() - start, 1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, _ = hybrid.sample(40, steps=500, labels=torch.arange(10).repeat_interleave(4))
    fig, ax = plt.subplots(figsize=(2.5, 6))
    ax.imshow(tile(samples, 10, 4), cmap="gray_r")  # one row per class, 0 to 9
    ax.set_title("hybrid RBM: samples of each class")
    ax.axis("off")
    fig.savefig(os.path.join(args.out, "classification_rbm_digits.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
