"""Data-parallel training: an RBM and a VAE on the embedded 8x8 digits, on several processes.

    python -m torch.distributed.run --nproc_per_node 2 tutorials/distributed.py --steps 200   # 2 CPU processes
    python -m torch.distributed.run --nproc_per_node 8 tutorials/distributed.py --device cuda  # 8 GPUs, NCCL
    python tutorials/distributed.py                                                             # one process

Every process (rank) runs this same script. ``dgm_ppl.distributed.init_process_group()`` joins the group that
``torchrun`` describes (gloo on CPU, NCCL on GPU). The models are ordinary Pyro programs, with the data plate sized
by the whole data set; the only change from one process is ``DistributedSVI`` in place of ``SVI``:

1. The RBM keeps 50 persistent chains on each rank: the ranks' negative phases are averaged with the gradients,
   so two ranks train with 100 chains. Its centering offsets are averaged too (``modules=[rbm]``).
2. The VAE's amortized guide makes its heads at its first call; the step that made them is computed again from
   rank 0's values, so the ranks start alike.
3. ``train`` gives each rank its slice of every global batch (``--batch-size`` per rank), and shows its progress
   bar on rank 0 only.

Each rank prints one JSON line with its ``rank`` and the ``param_checksum`` of everything it trained: equal
checksums mean bit-identical parameters on every rank.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pyro
import torch
from pyro.infer import Trace_ELBO

from dgm_ppl import distributed
from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import BernoulliRBM, PersistentChains, average_log_likelihood, exact_log_partition
from dgm_ppl.infer import train
from dgm_ppl.models import VAE


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="data-parallel RBM and VAE on the 8x8 digits (launch with torchrun)")
    ap.add_argument("--steps", type=int, default=200, help="SVI steps for each model")
    ap.add_argument("--batch-size", type=int, default=50, help="data points per rank and step")
    ap.add_argument("--hidden", type=int, default=16, help="RBM hidden units (exact log Z up to about 20)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank, NCCL)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rank, world = distributed.init_process_group("nccl" if args.device == "cuda" else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    progress = not args.no_progress

    x, x_test = load_digits("train").to(device), load_digits("test").to(device)
    n = len(x)
    pyro.set_rng_seed(args.seed)  # the same on every rank: the models start alike ...

    # --- an RBM trained by SML: persistent chains on every rank --------------------------------------------
    rbm = BernoulliRBM(64, args.hidden, centered=True, name="rbm").init_from_data(x).to(device)
    distributed.set_rng_seed(args.seed)  # ... and from here each rank draws its own numbers
    chains = PersistentChains(rbm, num_chains=50, init=x[torch.randint(n, (50,), device=device)])

    def rbm_model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    svi = distributed.DistributedSVI(
        rbm_model, lambda batch: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO(), modules=[rbm]
    )
    start = time.perf_counter()
    train(svi, x, epochs=args.steps, batch_size=args.batch_size, max_steps=args.steps, progress=progress)
    rbm_seconds = time.perf_counter() - start

    # --- a VAE with an amortized guide ----------------------------------------------------------------------
    vae = VAE(64, 8, (64,), name="vae").to(device)
    guide = vae.guide("diagonal")
    svi = distributed.DistributedSVI(vae.model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    start = time.perf_counter()
    history = train(
        svi, x, epochs=args.steps, batch_size=args.batch_size, max_steps=args.steps, progress=progress, args=(n,)
    )
    vae_seconds = time.perf_counter() - start

    with torch.no_grad():
        rbm_test = average_log_likelihood(rbm, x_test, exact_log_partition(rbm))
    report = {
        "rank": rank,
        "world_size": world,
        "steps": args.steps,
        "global_batch": world * args.batch_size,
        "rbm_test_log_likelihood": round(rbm_test, 4),
        "vae_train_elbo_per_image": round(-history[-1], 4),
        "rbm_steps_per_second": round(args.steps / rbm_seconds, 2),
        "vae_steps_per_second": round(args.steps / vae_seconds, 2),
        "param_checksum": distributed.param_checksum({"rbm": rbm, "vae": vae, "guide": guide}),
    }
    # one write of the whole line: the ranks share stdout, and a write under PIPE_BUF bytes is not interleaved
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return report


if __name__ == "__main__":
    main()
