"""Headroom for a second hidden layer: a top RBM trained on a trained RBM's hidden states (JSON lines).

A 784-500 RBM ``R`` with exact ``log p(v) = log p(v | h_1) + log p_R(h_1) - log p_R(h_1 | v)`` gains a second
layer in one of two ways. A DBN replaces the prior ``p_R(h_1)`` by a top RBM ``T`` fitted to the aggregate posterior
``q(h_1) = E_data p_R(h_1 | v)``, and its variational bound with ``q = p_R(h_1 | v)`` is

.. math::

    \\log p(v) \\ge \\log p_R(v) + \\mathbb E_{p_R(h_1|v)}\\big[\\log p_T(h_1) - \\log p_R(h_1)\\big],

so the mean of ``log p_T(h_1) - log p_R(h_1)`` over validation images (one ``h_1`` drawn per image) is exactly what
the second layer adds to the DBN bound: the *headroom* of the prior. A DBM instead *multiplies* ``p_R(h_1)`` by
the top layer's marginal, which has to model the ratio ``q / p_R`` and is therefore nearly flat when ``R`` fits
``q`` (the headroom near zero).

This script draws ``h_1 ~ p_R(h_1 | v)`` once per image (train and the scored split; with ``--fresh-draws`` the
training draws are made afresh at each epoch), trains ``T`` (500-1000, PCD with ``rbm_quality.py``'s training
loop and options), scores it with AIS on the drawn validation states, and prints ``log p_R(h_1)`` (normalized
with ``log Z_R`` from AIS), the headroom and the DBN bound::

    OMP_NUM_THREADS=1 python benchmarks/dbm_top_rbm.py --data ../shared/data/binarized_mnist.npz \\
        --rbm benchmarks/models/rbm500_30min_beta05.pt --threads 1 --time-budget 1200 --save outputs/top_rbm.pt -- \\
        --hidden 1000 --batch-size 200 --chains 200 --lr 6e-3 --weight-decay 3e-4 --bias-decay 0 \\
        --adam-betas 0.5 0.999 --matmul-dtype bfloat16 --average-from 0.5

Everything after ``--`` goes to ``rbm_quality.py``'s parser (its ``--data`` is filled in).
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from _training import emit, float32_state
from rbm_quality import make_chains, train_dgm
from rbm_quality import parse_args as rbm_args

from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import BernoulliRBM, ais_log_partition


def load_rbm(path: str, which: str, like: torch.Tensor) -> BernoulliRBM:
    """The averaged (or raw) RBM of an ``rbm_quality.py --save`` file."""
    saved = torch.load(path, map_location=like.device, weights_only=False)
    state = saved["avg"] if which == "averaged" else saved["rbm"]
    centered = which != "averaged" and not saved["config"].get("no_center")
    n_visible, n_hidden = state["weight"].shape
    rbm = BernoulliRBM(n_visible, n_hidden, centered=centered, name=f"bottom_{which}").to(like)
    rbm.load_state_dict(state)
    return rbm


@torch.no_grad()
def hidden_draws(rbm: BernoulliRBM, v: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw of ``h ~ p(h | v)`` per row of ``v``."""
    probs = torch.sigmoid(rbm.hidden_preactivation(v))
    return torch.bernoulli(probs, generator=generator)


@torch.no_grad()
def hidden_log_marginal(rbm: BernoulliRBM, h: torch.Tensor) -> torch.Tensor:
    """Unnormalized ``log p_R(h) = c'h + sum_i softplus(b_i + (W h)_i)`` from the RBM's standard form, with its
    constant (nonzero for a centered RBM), so that it is normalized by the same ``log Z`` as ``log p_R(v)``."""
    p = rbm.params()
    return p.const + h @ p.hidden_bias + torch.nn.functional.softplus(h @ p.weight.T + p.visible_bias).sum(-1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--rbm", required=True, help="an rbm_quality.py --save file: the bottom RBM")
    ap.add_argument("--rbm-model", choices=["averaged", "raw"], default="averaged")
    ap.add_argument("--rbm-ais-chains", type=int, default=100)
    ap.add_argument("--rbm-ais-betas", type=int, default=14500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--fresh-draws",
        action="store_true",
        help="draw the training h1 afresh each epoch (default: one draw per image)",
    )
    ap.add_argument("--save", help="write the top RBM, its chains and its average here")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then rbm_quality.py options for the top RBM")
    args = ap.parse_args(argv)
    rest = [a for a in args.rest if a != "--"]
    top_args = rbm_args(["--data", args.data, "--split", args.split, "--seed", str(args.seed), *rest])
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    train_v = load_binarized_mnist(args.data, "train")
    test_v = load_binarized_mnist(args.data, args.split)
    bottom = load_rbm(args.rbm, args.rbm_model, train_v)
    g = torch.Generator().manual_seed(args.seed)
    train_h, test_h = hidden_draws(bottom, train_v, g), hidden_draws(bottom, test_v, g)
    common = dict(benchmark="dbm_top_rbm", bottom=args.rbm, top_hidden=top_args.hidden)

    t0 = time.perf_counter()
    ais = ais_log_partition(bottom, args.rbm_ais_chains, args.rbm_ais_betas, data=train_v, progress=False)
    with torch.no_grad():
        log_p_v = float(bottom.unnormalized_log_prob(test_v).double().mean() - ais.log_z)
        log_prior = float(hidden_log_marginal(bottom, test_h).double().mean() - ais.log_z)
    emit(
        **common, event="bottom", log_z=round(ais.log_z, 3), log_z_stderr=round(ais.stderr, 4),
        log_likelihood=round(log_p_v, 3), hidden_log_prior=round(log_prior, 3),
        hidden_mean=round(float(test_h.mean()), 4), seconds=round(time.perf_counter() - t0, 1),
    )  # fmt: skip

    low = top_args.matmul_dtype
    top = BernoulliRBM(
        bottom.n_hidden, top_args.hidden, centered=not top_args.no_center, name="top",
        matmul_dtype=low and getattr(torch, low),
    )  # fmt: skip
    top.init_from_data(train_h)
    chains = make_chains(top, top_args, train_h)
    redraw = None
    if args.fresh_draws:  # epoch e's draws from a generator seeded by (seed, e): a resumed run draws the same

        def redraw(epoch: int) -> None:
            train_h.copy_(hidden_draws(bottom, train_v, torch.Generator().manual_seed(args.seed * 100003 + epoch + 1)))

    avgs, run = train_dgm(top_args, top, chains, train_h, {**common, "stage": "top"}, before_epoch=redraw)
    if args.save:
        torch.save(
            {
                "rbm": float32_state(top),
                "chains": float32_state(chains),
                "avg": float32_state(avgs[0]) if avgs else None,
                "config": vars(top_args),
                "bottom": {
                    "path": args.rbm,
                    "model": args.rbm_model,
                    "seed": args.seed,
                    "fresh_draws": args.fresh_draws,
                },
                "run": run,
            },
            args.save,
        )
    if top_args.no_score:
        return top, avgs, run
    for label, model in [("raw", top), *(("averaged", a) for a in avgs[:1])]:
        ais_t = ais_log_partition(model, top_args.ais_chains, top_args.ais_betas, data=train_h, progress=False)
        with torch.no_grad():
            log_top = float(model.unnormalized_log_prob(test_h).double().mean() - ais_t.log_z)
        lo, hi = ais_t.interval(3.0)
        emit(
            **common, event="top", model=label, epochs=run["epoch"], train_seconds=round(run["train_seconds"], 1),
            log_z=round(ais_t.log_z, 3), log_z_stderr=round(ais_t.stderr, 4), hidden_log_prior=round(log_top, 3),
            headroom=round(log_top - log_prior, 3), headroom_3sd=[round(log_top - log_prior - (hi - ais_t.log_z), 3),
            round(log_top - log_prior + (ais_t.log_z - lo), 3)], dbn_bound=round(log_p_v + log_top - log_prior, 3),
        )  # fmt: skip


if __name__ == "__main__":
    main()
