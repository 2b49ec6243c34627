"""Data-parallel scaling: SVI steps per second of an RBM and a VAE on 1 and 2 processes (``torchrun``).

    python benchmarks/distributed_scaling.py                      # CPU, gloo: 1 process, then 2
    python benchmarks/distributed_scaling.py --device cuda --nproc 1 2 4 8   # GPUs, NCCL

Each configuration is a fresh ``python -m torch.distributed.run --nproc_per_node K`` run of this script in worker
mode, which times ``--steps`` steps of ``DistributedSVI`` after ``--warmup`` steps, on synthetic binary 784-pixel
data (the arithmetic does not depend on the pixels): an RBM 784x500 (PCD-1, 100 chains per rank, Adam) and a VAE
784-200-200-50 with the amortized diagonal guide (``Trace_ELBO``, Adam). Two ways to scale:

* ``weak``: ``--batch`` data per rank, so K ranks take K times the data per step;
* ``strong``: a global batch of ``--batch``, split over the ranks.

One JSON line per (model, scaling, processes): median seconds per step over 5 blocks, steps/s, data/s, and the
speed-up of data/s over one process. Every process gets ``--threads`` torch threads (default 1: on this
2-core machine, 2 processes x 1 thread use both cores, as does 1 process x 2 threads, reported as ``threads=2``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import pyro
import torch
from pyro.infer import Trace_ELBO

from dgm_ppl import distributed
from dgm_ppl.energy import BernoulliRBM, PersistentChains
from dgm_ppl.models import VAE


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    rank, world = distributed.init_process_group("nccl" if args.device == "cuda" else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    pyro.set_rng_seed(0)
    n = 50_000
    per_rank = args.batch if args.scaling == "weak" else args.batch // world
    if args.model == "rbm":
        rbm = BernoulliRBM(784, 500, name="rbm").to(device)
        distributed.set_rng_seed(0)
        chains = PersistentChains(rbm, num_chains=100)

        def model(x):
            with pyro.plate("data", n, subsample=x):
                pyro.sample("x", rbm.distribution(chains), obs=x)

        svi = distributed.DistributedSVI(model, lambda x: None, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        step_args: tuple = ()
    else:
        vae = VAE(784, 50, (200, 200), name="vae").to(device)
        distributed.set_rng_seed(0)
        svi = distributed.DistributedSVI(vae.model, vae.guide("diagonal"), pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        step_args = (n,)
    batches = torch.bernoulli(torch.full((8, per_rank, 784), 0.13, device=device))
    for i in range(args.warmup):
        svi.step(batches[i % 8], *step_args)
    blocks = []
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(args.steps // 5):
            svi.step(batches[i % 8], *step_args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        blocks.append((time.perf_counter() - start) / (args.steps // 5))
    if rank == 0:
        seconds = statistics.median(blocks)
        line = {
            "benchmark": "distributed_scaling",
            "model": args.model,
            "scaling": args.scaling,
            "device": args.device,
            "processes": world,
            "threads": args.threads,
            "batch_per_rank": per_rank,
            "ms_per_step": round(1e3 * seconds, 3),
            "steps_per_second": round(1 / seconds, 2),
            "data_per_second": round(world * per_rank / seconds, 1),
        }
        print(json.dumps(line), flush=True)


def run(args, model: str, scaling: str, nproc: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += [os.path.abspath(__file__), "--worker", "--model", model, "--scaling", scaling, "--device", args.device]
    cmd += ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=["rbm", "vae"])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="rbm", help=argparse.SUPPRESS)
    ap.add_argument("--scaling", default="weak", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    for model in args.models:
        for scaling in ("weak", "strong"):
            base = None
            for nproc in args.nproc:
                line = run(args, model, scaling, nproc, args.threads)
                base = base or line["data_per_second"]
                line["speedup"] = round(line["data_per_second"] / base, 2)
                print(json.dumps(line), flush=True)
            if args.device == "cpu" and 1 in args.nproc and args.threads == 1:  # the same 2 cores, one process
                line = run(args, model, scaling, 1, 2)
                line["speedup"] = round(line["data_per_second"] / base, 2)
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
