"""Speed: one epoch of PCD-1 for a 784x500 Bernoulli RBM, batch 100, several ways in one run.

1. ``svi``: dgm_ppl's RBM distribution inside an unmodified ``pyro.infer.SVI`` + ``Trace_ELBO`` with
   ``pyro.optim.Adam`` (Pyro's validation on, the default; ``svi_no_validation`` is the same with it
   off), ``svi_sgd`` with ``pyro.optim.SGD`` (validation on), and ``svi_dgm_optim`` with
   ``dgm_ppl.optim.Adam`` (one multi-tensor optimizer over all parameters; validation on).
2. ``raw`` / ``raw_sgd``: a hand-written PyTorch loop doing the same arithmetic (same matrix products,
   same Gibbs sweep, same random draws in the same order, the closed-form SML gradient) with one
   ``torch.optim.Adam`` / ``torch.optim.SGD``.
3. ``svi_bf16`` / ``raw_bf16``: the same two with the matrix products of the sweep and of the gradient in bfloat16
   (``BernoulliRBM(..., matmul_dtype=torch.bfloat16)``; by hand, the operands cast to bfloat16 and the products
   back to float32), everything else in float32.
4. ``sklearn``: scikit-learn's ``BernoulliRBM`` (PCD-1, plain SGD) with the same batch size, timed
   after the interleaved epochs.

Each epoch is timed twice: wall clock, and the CPU time of this process (``cpu``), which is less
disturbed by other work on a shared machine. Prints one JSON line per measurement, then a summary
line with the medians and ratios. ``--profile N`` first runs ``N`` SVI steps under cProfile and
prints where the step's time goes (the distribution, autograd, Pyro's optimizers and trace
machinery); the profiler inflates Python-heavy parts, so read the shares, not the milliseconds.

    python benchmarks/rbm_speed.py --data ../shared/data/binarized_mnist.npz
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
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


def _mm(a, b, low):
    """``a @ b``, or the product of the operands cast to ``low``, back in ``a``'s dtype."""
    return a @ b if low is None else (a.to(low) @ b.to(low)).to(a.dtype)


def raw_epoch(x, order, params, hidden, opt, batch_size, low=None):
    """PCD-1 by hand, the same arithmetic as the SVI path: one sweep of the persistent chains
    (visible from the stored hidden sample), positive and negative phase in one matrix product,
    the loss value that ``svi.step`` returns, the closed-form SML gradient of that loss, and the
    chains' next hidden sample drawn from the conditional computed for the gradient."""
    w, b, c = params
    n = x.shape[0]
    for i in range(0, n, batch_size):
        v = x[order[i : i + batch_size]]
        with torch.no_grad():
            pv = torch.sigmoid(torch.addmm(b, hidden, w.T) if low is None else _mm(hidden, w.T, low).add_(b))
            negatives = torch.rand_like(pv).lt_(pv)
            both = torch.cat([v, negatives])
            x_all = torch.addmm(c, both, w) if low is None else _mm(both, w, low).add_(c)
            neg_free = torch.addmv(torch.nn.functional.softplus(x_all).sum(-1), both, b)
            # loss = -(N/B) sum_batch [-F(v)]  (its SML gradient adds N * mean_chains grad(-F))
            weight = torch.cat(
                [
                    torch.full_like(neg_free[: v.shape[0]], -n / v.shape[0]),
                    torch.full_like(neg_free[v.shape[0] :], n / negatives.shape[0]),
                ]
            )
            loss = float((weight[: v.shape[0]] * neg_free[: v.shape[0]]).sum())
            ph = torch.sigmoid(x_all)
            g = ph * weight[:, None]
            w.grad = _mm(both.T, g, low)
            b.grad = both.T @ weight
            c.grad = g.sum(0)
            ph_neg = ph[v.shape[0] :]
            hidden = torch.rand_like(ph_neg).lt_(ph_neg)
        opt.step()
        yield loss


def make_svi(name, init, x, args, device, optim):
    """An RBM (initialized from ``init``), its chains and an SVI over a subsampled plate."""
    n = x.shape[0]
    low = torch.bfloat16 if name.endswith("_bf16") else None
    rbm = BernoulliRBM(784, args.hidden, name=name, matmul_dtype=low).to(device)
    chains = PersistentChains(rbm, num_chains=args.batch_size, steps=1)
    with torch.no_grad():
        for t, t0 in zip((rbm.weight, rbm.visible_bias, rbm.hidden_bias, chains.hidden), init):
            t.copy_(t0)

    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    return SVI(model, lambda batch: None, optim, Trace_ELBO()), rbm


def profile_svi(x, init, args, device):
    """cProfile ``args.profile`` SVI steps (Adam, validation on) and emit the step's breakdown."""
    svi, _ = make_svi("profiled", init, x, args, device, pyro.optim.Adam({"lr": args.lr}))
    pyro.enable_validation(True)
    batches = [x[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.profile + 5)]
    for batch in batches[:5]:
        svi.step(batch)
    profiler = cProfile.Profile()
    profiler.enable()
    for batch in batches[5:]:
        svi.step(batch)
    profiler.disable()
    stats = pstats.Stats(profiler).stats

    def cumulative(suffix: str) -> float:
        return 1000 * sum(v[3] for k, v in stats.items() if f"{k[0]}:{k[2]}".endswith(suffix)) / args.profile

    step = cumulative("infer/svi.py:step")
    parts = {
        "log_prob (both phases, chains, checks)": cumulative("energy/distribution.py:log_prob"),
        "rbm.distribution() (params, PyroModule)": cumulative("energy/rbm.py:distribution"),
        "backward (autograd engine)": cumulative("torch/autograd/__init__.py:backward"),
        "pyro.optim (per-parameter optimizers)": cumulative("pyro/optim/optim.py:__call__"),
        "  of which torch Adam arithmetic": cumulative("torch/optim/adam.py:_single_tensor_adam"),
        "zero_grads (zeros_like per parameter)": cumulative("pyro/infer/util.py:zero_grads"),
    }
    top = sum(v for k, v in parts.items() if not k.startswith("  "))
    parts["Pyro's trace machinery and the rest"] = step - top
    emit(
        benchmark="rbm_pcd1_svi_profile",
        steps=args.profile,
        ms_per_step_under_cprofile=round(step, 2),
        parts_ms={k: round(v, 2) for k, v in parts.items()},
        parts_share={k: round(v / step, 3) for k, v in parts.items()},
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help=".npz with a 'train' array (N x 784, binary)")
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    ap.add_argument("--sgd-lr", type=float, default=0.05, help="SGD's rate per datum (scikit-learn's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--skip-sgd", action="store_true", help="skip the SGD runs (svi_sgd, raw_sgd)")
    ap.add_argument("--skip-no-validation", action="store_true", help="skip the SVI run with validation off")
    ap.add_argument("--skip-dgm-optim", action="store_true", help="skip the SVI run with dgm_ppl.optim.Adam")
    ap.add_argument("--skip-bf16", action="store_true", help="skip the bfloat16 runs (svi_bf16, raw_bf16)")
    ap.add_argument("--chunk", type=int, default=25, help="steps per timed chunk when interleaving")
    ap.add_argument("--profile", type=int, default=0, help="cProfile this many SVI steps first")
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

    # SGD on the loss N * mean(-log p) with rate sgd_lr / N takes scikit-learn's step, sgd_lr * mean gradient
    sgd_lr = args.sgd_lr / n
    impls = ["svi", "raw"]
    impls += [] if args.skip_no_validation else ["svi_no_validation"]
    impls += [] if args.skip_sgd else ["svi_sgd", "raw_sgd"]
    impls += [] if args.skip_bf16 else ["svi_bf16", "raw_bf16"]
    try:
        from dgm_ppl.optim import Adam as MultiTensorAdam
    except ImportError:  # an older dgm_ppl
        MultiTensorAdam = None
    impls += [] if MultiTensorAdam is None or args.skip_dgm_optim else ["svi_dgm_optim"]
    wall = {name: [] for name in impls + ["sklearn"]}
    cpu = {name: [] for name in impls + ["sklearn"]}
    final = {}
    for rep in range(args.repeats):
        seed = 1000 + rep
        torch.manual_seed(seed)
        order = torch.randperm(n, device=device)
        rbm0 = BernoulliRBM(784, args.hidden).to(device)
        chains0 = PersistentChains(rbm0, num_chains=args.batch_size, steps=1)
        init = [t.detach().clone() for t in (rbm0.weight, rbm0.visible_bias, rbm0.hidden_bias, chains0.hidden)]
        pyro.clear_param_store()
        if rep == 0 and args.profile:
            profile_svi(x, init, args, device)
            pyro.clear_param_store()

        loops, weights = {}, {}
        for name in impls:
            sgd = name.endswith("_sgd")
            if name.startswith("raw"):
                w, b, c, hidden = (t.clone().requires_grad_(i < 3) for i, t in enumerate(init))
                opt = torch.optim.SGD([w, b, c], lr=sgd_lr) if sgd else torch.optim.Adam([w, b, c], lr=args.lr)
                low = torch.bfloat16 if name.endswith("_bf16") else None
                loops[name] = raw_epoch(x, order, (w, b, c), hidden, opt, args.batch_size, low)
                weights[name] = w
            else:
                if name == "svi_dgm_optim":
                    optim = MultiTensorAdam({"lr": args.lr})
                else:
                    optim = pyro.optim.SGD({"lr": sgd_lr}) if sgd else pyro.optim.Adam({"lr": args.lr})
                svi, rbm = make_svi(name, init, x, args, device, optim)
                loops[name] = svi_epoch(x, order, svi, args.batch_size, validate=name != "svi_no_validation")
                weights[name] = rbm.weight
        # The epochs run interleaved in chunks of --chunk steps, each chunk timed on its own, so
        # that drifts in machine speed hit all alike. Each has its own random stream with the
        # same seed, so all draw the same random numbers in the same order.
        streams = {name: torch.Generator().manual_seed(seed + 1).get_state() for name in impls}
        elapsed = dict.fromkeys(impls, 0.0)
        elapsed_cpu = dict.fromkeys(impls, 0.0)
        done = False
        while not done:
            for name, loop in loops.items():
                torch.set_rng_state(streams[name])
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.chunk):
                    if next(loop, None) is None:
                        done = True
                        break
                sync()
                elapsed[name] += time.perf_counter() - t0
                elapsed_cpu[name] += time.process_time() - c0
                streams[name] = torch.get_rng_state()
        for name in impls:
            wall[name].append(elapsed[name])
            cpu[name].append(elapsed_cpu[name])
            emit(
                **common,
                impl=name,
                repeat=rep,
                seconds=round(elapsed[name], 3),
                cpu_seconds=round(elapsed_cpu[name], 3),
            )
        final = {name: weights[name].detach().clone() for name in impls}

        # --- scikit-learn
        if not args.skip_sklearn:
            from sklearn.neural_network import BernoulliRBM as SkRBM

            xs = x.cpu().numpy().astype(np.float32)
            sk = SkRBM(
                n_components=args.hidden,
                learning_rate=args.sgd_lr,
                batch_size=args.batch_size,
                n_iter=1,
                random_state=seed,
            )
            t0, c0 = time.perf_counter(), time.process_time()
            sk.fit(xs)
            wall["sklearn"].append(time.perf_counter() - t0)
            cpu["sklearn"].append(time.process_time() - c0)
            emit(
                **common,
                impl="sklearn",
                repeat=rep,
                seconds=round(wall["sklearn"][-1], 3),
                cpu_seconds=round(cpu["sklearn"][-1], 3),
            )

    def ratios(times: dict) -> dict:
        med = {k: statistics.median(v) for k, v in times.items() if v}
        out = {
            "median_seconds": {k: round(v, 3) for k, v in med.items()},
            "svi_over_raw": round(med["svi"] / med["raw"], 3),
        }
        if "svi_no_validation" in med:
            out["svi_no_validation_over_raw"] = round(med["svi_no_validation"] / med["raw"], 3)
            out["validation_share_of_step"] = round(med["svi"] / med["svi_no_validation"] - 1, 3)
        if "svi_sgd" in med:
            out["svi_sgd_over_raw_sgd"] = round(med["svi_sgd"] / med["raw_sgd"], 3)
        if "svi_bf16" in med:
            out["svi_bf16_over_raw_bf16"] = round(med["svi_bf16"] / med["raw_bf16"], 3)
            out["svi_bf16_over_svi"] = round(med["svi_bf16"] / med["svi"], 3)
        if "svi_dgm_optim" in med:
            out["svi_dgm_optim_over_raw"] = round(med["svi_dgm_optim"] / med["raw"], 3)
        if "sklearn" in med:
            out["sklearn_over_svi"] = round(med["sklearn"] / med["svi"], 3)
            if "svi_dgm_optim" in med:
                out["sklearn_over_svi_dgm_optim"] = round(med["sklearn"] / med["svi_dgm_optim"], 3)
            if "svi_sgd" in med:
                out["sklearn_over_svi_sgd"] = round(med["sklearn"] / med["svi_sgd"], 3)
        return out

    summary = dict(**common, impl="summary", wall=ratios(wall), cpu=ratios(cpu))
    summary["max_abs_weight_diff_svi_vs_raw"] = float((final["svi"] - final["raw"]).abs().max())
    if "svi_bf16" in final:
        summary["max_abs_weight_diff_svi_bf16_vs_raw_bf16"] = float((final["svi_bf16"] - final["raw_bf16"]).abs().max())
        summary["max_abs_weight_diff_svi_bf16_vs_svi"] = float((final["svi_bf16"] - final["svi"]).abs().max())
    if "svi_sgd" in final:
        summary["max_abs_weight_diff_svi_sgd_vs_raw_sgd"] = float((final["svi_sgd"] - final["raw_sgd"]).abs().max())
    emit(**summary)


if __name__ == "__main__":
    main()
