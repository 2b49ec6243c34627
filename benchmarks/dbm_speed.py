"""Speed: one update of a 784-500-1000 DBM (batch 100, 10 mean-field sweeps, 100 persistent chains,
one block-Gibbs sweep), two ways in one run, interleaved in chunks.

1. ``svi``: ``dbm.distribution(chains)`` inside an unmodified ``pyro.infer.SVI`` + ``Trace_ELBO``
   (Pyro's validation on, the default; ``svi_no_validation`` is the same with it off; ``svi_dgm_optim``
   uses ``dgm_ppl.optim.Adam``, one multi-tensor optimizer over all parameters, validation on;
   ``svi_autocast`` runs the forward pass under ``torch.autocast`` in bfloat16 through
   ``dgm_ppl.infer.AutocastLoss``; the DBM's SML path keeps full precision under it, so this times the cost of the
   wrapper: a bfloat16 mean field and sweep were 0.72 of the time but 8 nats worse on MNIST, see the README).
2. ``raw``: a hand-written PyTorch loop doing the same arithmetic: the same mean-field updates, the
   same Gibbs sweep, the closed-form gradient (data statistics under mean field minus chain
   statistics with the odd layer summed out), and Adam.

Each chunk is timed twice: wall clock, and the CPU time of this process (``cpu``), which is less
disturbed by other work on a shared machine. Prints one JSON line per implementation and a summary
line with the ratios of the medians.

    python benchmarks/dbm_speed.py --data ../shared/data/binarized_mnist.npz
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import DBM, PersistentChains
from dgm_ppl.infer import AutocastLoss
from dgm_ppl.optim import Adam as MultiTensorAdam


def emit(**record):
    print(json.dumps(record), flush=True)


def raw_step(v, p, chains, opt, n, iters):
    """Algorithm 20.1 by hand for a two-layer DBM (standard parametrization), with the fused
    products (bias and matrix product in one ``addmm``) that dgm_ppl uses."""
    w0, w1, b0, b1, b2 = p
    with torch.no_grad():
        vw = v @ w0
        bottom = vw + b1
        mu1 = torch.sigmoid(torch.add(b1, vw, alpha=2))
        mu2 = torch.sigmoid(torch.addmm(b2, mu1, w1))
        for _ in range(iters):
            mu1 = torch.sigmoid(torch.addmm(bottom, mu2, w1.T))
            mu2 = torch.sigmoid(torch.addmm(b2, mu1, w1))
        cv, ch1, ch2 = chains
        ch1 = torch.rand_like(ch1).lt_(torch.sigmoid(torch.addmm(torch.addmm(b1, cv, w0), ch2, w1.T)))
        cv = torch.rand_like(cv).lt_(torch.sigmoid(torch.addmm(b0, ch1, w0.T)))
        ch2 = torch.rand_like(ch2).lt_(torch.sigmoid(torch.addmm(b2, ch1, w1)))
        m1 = torch.sigmoid(torch.addmm(torch.addmm(b1, cv, w0), ch2, w1.T))  # the odd layer summed out
        s_pos, s_neg = -n / v.shape[0], n / cv.shape[0]
        w0.grad = s_pos * v.T @ mu1 + s_neg * cv.T @ m1
        w1.grad = s_pos * mu1.T @ mu2 + s_neg * m1.T @ ch2
        b0.grad = s_pos * v.sum(0) + s_neg * cv.sum(0)
        b1.grad = s_pos * mu1.sum(0) + s_neg * m1.sum(0)
        b2.grad = s_pos * mu2.sum(0) + s_neg * ch2.sum(0)
    opt.step()
    return cv, ch1, ch2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--layers", type=int, nargs="+", default=[500, 1000])
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--mean-field-iters", type=int, default=10)
    ap.add_argument("--steps", type=int, default=300, help="updates per implementation")
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    x = load_binarized_mnist(args.data, "train").to(device)
    n, bs = x.shape[0], args.batch_size
    sizes = [784, *args.layers]
    if len(sizes) != 3:
        raise SystemExit("the raw loop is written for two hidden layers")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(0)
    dbm = DBM(sizes, name="dbm").to(device).init_from_data(x)
    chains = PersistentChains(dbm, num_chains=bs)
    raw_p = [
        t.detach().clone().requires_grad_() for t in (dbm.weight_0, dbm.weight_1, dbm.bias_0, dbm.bias_1, dbm.bias_2)
    ]
    raw_opt = torch.optim.Adam(raw_p, lr=1e-4)
    raw_chains = [t.clone() for t in chains.states()]

    def make_svi(name: str, optim, loss=None) -> SVI:
        """SVI on a copy of the model and chains under its own param-store name: the same start for every way."""
        copy = DBM(sizes, name=name).to(device)
        copy.load_state_dict(dbm.state_dict())
        copy_chains = PersistentChains(copy, num_chains=bs)
        copy_chains.load_state_dict(chains.state_dict())

        def model(batch):
            with pyro.plate("data", n, subsample=batch):
                pyro.sample("x", copy.distribution(copy_chains, mean_field_iters=args.mean_field_iters), obs=batch)

        return SVI(model, lambda batch: None, optim, loss or Trace_ELBO())

    svis = {
        "svi": make_svi("dbm_svi", pyro.optim.Adam({"lr": 1e-4})),
        # the same updates with Pyro's validation off
        "svi_no_validation": make_svi("dbm_no_validation", pyro.optim.Adam({"lr": 1e-4})),
        "svi_dgm_optim": make_svi("dbm_dgm_optim", MultiTensorAdam({"lr": 1e-4})),
        "svi_autocast": make_svi(
            "dbm_autocast", pyro.optim.Adam({"lr": 1e-4}), AutocastLoss(Trace_ELBO(), device.type, torch.bfloat16)
        ),
    }
    names = ["svi", "raw", *list(svis)[1:]]
    order = torch.randperm(n, device=device)
    batches = [x[order[(i * bs) % n : (i * bs) % n + bs]] for i in range(args.steps)]

    def step(name, v):
        nonlocal raw_chains
        if name == "raw":
            raw_chains = raw_step(v, raw_p, raw_chains, raw_opt, n, args.mean_field_iters)
        else:
            pyro.enable_validation(name != "svi_no_validation")  # global flag: set per step (interleaved loops)
            svis[name].step(v)

    for name in names:
        step(name, batches[0])  # warm-up (creates the optimizer state)
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for start in range(0, args.steps, args.chunk):
        chunk = batches[start : start + args.chunk]
        for name in names if (start // args.chunk) % 2 == 0 else names[::-1]:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            for v in chunk:
                step(name, v)
            sync()
            times[name].append((time.perf_counter() - t0) / len(chunk))
            cpu[name].append((time.process_time() - c0) / len(chunk))
    common = dict(benchmark="dbm_update", layers=sizes, batch=bs, mean_field_iters=args.mean_field_iters)
    common.update(device=str(device), threads=torch.get_num_threads())
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    cpu_ms = {k: 1000 * statistics.median(v) for k, v in cpu.items()}
    for name, value in ms.items():
        emit(
            **common,
            impl=name,
            ms_per_update=round(value, 2),
            cpu_ms_per_update=round(cpu_ms[name], 2),
            epoch_seconds=round(value * n / bs / 1000, 1),
        )
    emit(
        **common,
        event="summary",
        svi_over_raw=round(ms["svi"] / ms["raw"], 3),
        svi_no_validation_over_raw=round(ms["svi_no_validation"] / ms["raw"], 3),
        cpu_svi_over_raw=round(cpu_ms["svi"] / cpu_ms["raw"], 3),
        cpu_svi_no_validation_over_raw=round(cpu_ms["svi_no_validation"] / cpu_ms["raw"], 3),
        **(
            {
                "svi_dgm_optim_over_raw": round(ms["svi_dgm_optim"] / ms["raw"], 3),
                "cpu_svi_dgm_optim_over_raw": round(cpu_ms["svi_dgm_optim"] / cpu_ms["raw"], 3),
            }
            if "svi_dgm_optim" in ms
            else {}
        ),
        svi_autocast_over_svi=round(ms["svi_autocast"] / ms["svi"], 3),
        svi_autocast_over_raw=round(ms["svi_autocast"] / ms["raw"], 3),
    )


if __name__ == "__main__":
    main()
