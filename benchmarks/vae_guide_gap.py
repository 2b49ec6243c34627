"""Why an ``AmortizedNormal`` guide learned slower than the hand-written guide of Pyro's VAE example (issue 14).

Pyro's ``examples/vae/vae.py`` networks (encoder ``784 -> 400`` softplus, heads ``fc21``/``fc22``, ``z_scale =
exp(fc22(h))``; decoder ``50 -> 400`` softplus ``-> 784`` sigmoid), Adam 1e-3, batch 128, on the first ``--train``
images of binarized MNIST's train split, each epoch in the same shuffled order for every variant. Every variant starts
from the same encoder trunk and decoder weights; only the guide's two heads and its scale transform differ:

- ``hand``: Pyro's guide, heads at PyTorch's ``nn.Linear`` initialization, ``exp`` scale;
- ``amortized``: ``AmortizedNormal`` with its defaults (this tree's: ``loc_init="torch"``, ``init_scale=0.1``,
  softplus);
- ``amortized_<loc>_<scale>_<transform>``: ``AmortizedNormal`` with ``loc_init`` in ``small``/``torch``,
  ``init_scale`` in ``0.1``/``1.0``/``torch`` (None: the head keeps PyTorch's initialization) and the
  ``scale_transform`` ``softplus``/``exp``.

Scores are importance-sampled ``log p(x)`` (``--samples`` draws from each guide's own q) on the first ``--valid``
images of the valid split, mean nats per image. Prints one JSON line per run and a table.

    OMP_NUM_THREADS=1 python benchmarks/vae_guide_gap.py --epochs 20 --seeds 0 1

Result of that command (20 epochs, 5,000 train images, 1,000 valid images, 500 samples; seeds 0 / 1 -> mean; it ran
with dgm_ppl 0.1.0's defaults, ``loc_init="small"``, so its ``amortized`` row is the ``small_0.1_softplus`` one):

============================  =====================  ===================================================
variant                       IS log p(x)            reading
============================  =====================  ===================================================
hand                          -124.31 / -123.41      Pyro's guide
small_0.1_softplus (0.1.0)    -135.25 / -135.88      11.7 nats behind: a long plateau (ELBO -194 at ep. 5)
small_1.0_softplus            -132.20 / -133.69      the scale's start barely matters
small_torch_softplus          -133.68 / -134.73
small_0.1_exp                 -136.27 / -136.62      neither does exp vs softplus
torch_0.1_softplus (now)      -122.54 / -122.35      PyTorch's init of the location head closes the gap
torch_torch_softplus          -122.20 / -121.98
torch_torch_exp               -123.91 / -123.50      the hand-written guide's arithmetic
============================  =====================  ===================================================

The cause is the location head's shrunk start (weights clamped to 1e-2, zero bias): q(z | x) starts at nearly the
same mean for every x (probably why the decoder sits longer on the plateau where z is ignored; not checked).
``loc_init="torch"`` is the default since.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from dgm_ppl.guides import AmortizedNormal

PIXELS, HIDDEN, ZDIM, BATCH, LR = 784, 400, 50, 128, 1e-3
VARIANTS = {  # name -> AmortizedNormal options (None: the hand-written guide; {}: the defaults)
    "hand": None,
    "amortized": {},
    "amortized_small_0.1_softplus": {"loc_init": "small", "init_scale": 0.1, "scale_transform": "softplus"},  # 0.1.0
    "amortized_small_1.0_softplus": {"loc_init": "small", "init_scale": 1.0, "scale_transform": "softplus"},
    "amortized_torch_0.1_softplus": {"loc_init": "torch", "init_scale": 0.1, "scale_transform": "softplus"},
    "amortized_small_torch_softplus": {"loc_init": "small", "init_scale": None, "scale_transform": "softplus"},
    "amortized_torch_torch_softplus": {"loc_init": "torch", "init_scale": None, "scale_transform": "softplus"},
    "amortized_torch_torch_exp": {"loc_init": "torch", "init_scale": None, "scale_transform": "exp"},
    "amortized_small_0.1_exp": {"loc_init": "small", "init_scale": 0.1, "scale_transform": "exp"},
}


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(ZDIM, HIDDEN), nn.Linear(HIDDEN, PIXELS)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # pixel logits (the example's sigmoid, inside Bernoulli)
        return self.fc21(F.softplus(self.fc1(z)))


def make_model(decoder: Decoder):
    def model(x: torch.Tensor) -> None:
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([x.shape[0], ZDIM]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(1), obs=x)

    return model


class HandGuide(nn.Module):
    """Pyro's example guide: ``z_loc = fc21(h)``, ``z_scale = exp(fc22(h))``."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk, self.fc21, self.fc22 = trunk, nn.Linear(HIDDEN, ZDIM), nn.Linear(HIDDEN, ZDIM)

    def q(self, x: torch.Tensor) -> dist.TorchDistribution:
        h = self.trunk(x)
        return dist.Normal(self.fc21(h), torch.exp(self.fc22(h))).to_event(1)

    def __call__(self, x: torch.Tensor) -> None:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x))


@torch.no_grad()
def is_log_px(decoder: Decoder, q_of, x: torch.Tensor, samples: int, chunk: int = 100) -> float:
    """Mean over the images of ``log (1/K) sum_k p(x, z_k) / q(z_k | x)``, ``z_k ~ q(z | x)``."""
    total = 0.0
    prior = dist.Normal(0.0, 1.0)
    for i in range(0, x.shape[0], chunk):
        xb = x[i : i + chunk]
        q = q_of(xb)
        z = q.sample((samples,))  # (K, B, Z)
        log_w = (
            prior.log_prob(z).sum(-1)
            - q.log_prob(z)
            - F.binary_cross_entropy_with_logits(decoder(z), xb.expand(samples, *xb.shape), reduction="none").sum(-1)
        )
        total += (torch.logsumexp(log_w, 0) - math.log(samples)).sum().item()
    return total / x.shape[0]


def run(name: str, options: dict | None, train: torch.Tensor, valid: torch.Tensor, args) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    decoder = Decoder()
    trunk = nn.Sequential(nn.Linear(PIXELS, HIDDEN), nn.Softplus())
    model = make_model(decoder)
    if options is None:
        guide = HandGuide(trunk)
        q_of = guide.q
    else:
        guide = AmortizedNormal(model, trunk, site="z", **options)
        guide(train[:BATCH])  # builds the heads (same RNG state for every amortized variant)

        def q_of(x):
            return guide.posterior(x)["z"]

    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    order = torch.Generator().manual_seed(1000 + args.seed)
    start, curve = time.perf_counter(), []
    pyro.set_rng_seed(args.seed)
    for _ in range(args.epochs):
        perm = torch.randperm(train.shape[0], generator=order)
        loss = sum(svi.step(train[perm[i : i + BATCH]]) for i in range(0, train.shape[0], BATCH))
        curve.append(round(-loss / train.shape[0], 2))
    seconds = time.perf_counter() - start
    torch.manual_seed(10_000 + args.seed)
    score = is_log_px(decoder, q_of, valid, args.samples)
    return {
        "variant": name,
        "seed": args.seed,
        "epochs": args.epochs,
        "is_log_px_valid": round(score, 2),
        "train_elbo_per_epoch": curve,
        "train_s": round(seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/binarized_mnist.npz")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--valid", type=int, default=1000)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    torch.set_num_threads(1)
    data = np.load(args.data)
    train = torch.from_numpy(data["train"][: args.train]).float()
    valid = torch.from_numpy(data["valid"][: args.valid]).float()
    results: dict[str, list[float]] = {}
    for seed in args.seeds:
        args.seed = seed
        for name in args.variants:
            row = run(name, VARIANTS[name], train, valid, args)
            print(json.dumps(row), flush=True)
            results.setdefault(name, []).append(row["is_log_px_valid"])
    print(f"\n| variant | IS log p(x), valid (mean over seeds {args.seeds}) | epochs |\n|---|---|---|")
    for name, scores in results.items():
        print(f"| {name} | {statistics.mean(scores):.2f} | {args.epochs} |")


if __name__ == "__main__":
    main()
