"""The greedy step for a DBM: its top layer trained on a frozen RBM's posterior draws of h1 (JSON lines).

A DBM grown from a trained 784-500 RBM ``R`` (``DBM.grow_from_rbm``) keeps ``W_0`` and the visible bias frozen;
its top layer (``W_1``, the biases of ``h_1`` and ``h_2``) maximizes
:math:`\\mathbb E_{v \\sim \\text{data}}\\,\\mathbb E_{h_1 \\sim p_R(h_1|v)}[\\log p_\\theta(v, h_1)]` by SML: the
positive phase is :math:`-F(v, h_1)` with ``h_2`` summed out at fresh draws of ``h_1`` from the RBM's posterior
(``--fixed-draws``: one draw per image, as in ``dbm_top_rbm.py``), the negative phase persistent DBM chains
(PCD-``--steps``), Adam with beta1 = 0.5 and the rate decaying exponentially from ``--lr`` to ``--final-lr`` over
the epochs that fit ``--time-budget``. Since ``p(v | h_1)`` is the RBM's, the objective is, up to a constant,
:math:`\\mathbb E_q[\\log p_\\theta(h_1)]` with :math:`p_\\theta(h_1) \\propto p^*_R(h_1) \\sum_{h_2}
e^{h_1^\\top W_1 h_2 + b_2^\\top h_2}`: the top layer models the ratio of the aggregate posterior to the RBM's
prior, and the bound with ``q = p_R(h_1 | v)`` is ``log p_R(v) + headroom`` as in ``dbm_top_rbm.py``. The score
line gives that bound, the DBM's mean-field bound, and log Z by forward AIS and by reverse AIS from the chains,
with a warning where the two disagree::

    OMP_NUM_THREADS=1 python benchmarks/dbm_greedy_top.py --data ../shared/data/binarized_mnist.npz \\
        --rbm benchmarks/models/rbm500_30min_beta05.pt --lr 1e-4 --weight-decay 3e-4 --time-budget 1800 \\
        --save outputs/dbm_greedy_top.pt
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _training import AIS_DISAGREEMENT, emit
from dbm_top_rbm import hidden_draws, hidden_log_marginal, load_rbm

from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import DBM, ais_log_partition, reverse_ais_log_partition


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--rbm", required=True, help="an rbm_quality.py --save file: the bottom RBM (its average)")
    ap.add_argument("--top-size", type=int, default=1000)
    ap.add_argument("--top-std", type=float, default=0.01, help="the initial sd of W_1 (DBM.grow_from_rbm)")
    ap.add_argument("--time-budget", type=float, default=1800, metavar="SECONDS")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--final-lr", type=float, default=1e-5)
    ap.add_argument("--weight-decay", type=float, default=3e-4, help="Adam's L2 term")
    ap.add_argument("--steps", type=int, default=5, help="Gibbs sweeps of the chains per update")
    ap.add_argument("--chains", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--fixed-draws", action="store_true", help="one draw of h1 per image for all epochs")
    ap.add_argument("--rbm-ais-betas", type=int, default=14500)
    ap.add_argument("--ais-chains", type=int, default=100)
    ap.add_argument("--ais-betas", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", help="write the DBM and its chains here")
    return ap.parse_args(argv)


def clamped_statistic(dbm: DBM, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """:math:`-F(v, h_1)` of a two-layer DBM, ``h_2`` summed out."""
    p = dbm.params()
    top = F.softplus(p.biases[2] + h @ p.weights[1]).sum(-1)
    return v @ p.biases[0] + ((v @ p.weights[0]) * h).sum(-1) + h @ p.biases[1] + top


def hidden_prior(dbm: DBM, h: torch.Tensor) -> torch.Tensor:
    """Unnormalized :math:`\\log p_\\theta(h_1)` of a two-layer binary DBM: ``v`` and ``h_2`` (the even layers)
    summed out."""
    return -dbm.free_energy([None, h, None], parity=0)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_v, test_v = load_binarized_mnist(args.data, "train"), load_binarized_mnist(args.data, args.split)
    bottom = load_rbm(args.rbm, "averaged", train_v)
    g = torch.Generator().manual_seed(0)
    train_h, test_h = hidden_draws(bottom, train_v, g), hidden_draws(bottom, test_v, g)
    common = dict(benchmark="dbm_greedy_top", bottom=args.rbm)
    t0 = time.perf_counter()
    ais_r = ais_log_partition(bottom, 100, args.rbm_ais_betas, data=train_v)
    with torch.no_grad():
        log_p_v = float(bottom.unnormalized_log_prob(test_v).double().mean() - ais_r.log_z)
        log_prior_r = float(hidden_log_marginal(bottom, test_h).double().mean() - ais_r.log_z)
    emit(**common, event="bottom", log_z=round(ais_r.log_z, 3), log_likelihood=round(log_p_v, 3),
         hidden_log_prior=round(log_prior_r, 3), seconds=round(time.perf_counter() - t0, 1))  # fmt: skip

    dbm = DBM([bottom.n_visible, bottom.n_hidden, args.top_size])
    dbm.grow_from_rbm(bottom, top_std=args.top_std, generator=torch.Generator().manual_seed(1))
    dbm.weight_0.requires_grad_(False)
    dbm.bias_0.requires_grad_(False)
    opt = torch.optim.Adam(
        [dbm.weight_1, dbm.bias_1, dbm.bias_2], lr=args.lr, betas=(0.5, 0.999), weight_decay=args.weight_decay
    )
    start = torch.randperm(len(train_v))[: args.chains]
    with torch.no_grad():
        p = dbm.params()
        h2 = torch.bernoulli(torch.sigmoid(p.biases[2] + train_h[start] @ p.weights[1]))
    states = [train_v[start].clone(), train_h[start].clone(), h2]
    n, seconds, epoch, planned = len(train_v), 0.0, 0, None
    while planned is None or epoch < planned:
        t1 = time.perf_counter()
        lr = args.lr * (args.final_lr / args.lr) ** (epoch / planned if planned else 0.0)
        for group in opt.param_groups:
            group["lr"] = lr
        order, total = torch.randperm(n), torch.zeros(())  # summed as a tensor: no sync per step
        for b in range(n // args.batch_size):
            i = order[b * args.batch_size : (b + 1) * args.batch_size]
            with torch.no_grad():
                states = dbm.gibbs(states, args.steps)
                h = train_h[i] if args.fixed_draws else hidden_draws(bottom, train_v[i], None)
            loss = dbm.chain_statistic(states).mean() - clamped_statistic(dbm, train_v[i], h).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach()
        seconds += time.perf_counter() - t1
        epoch += 1
        if planned is None:
            planned = max(1, int(args.time_budget / seconds))
        emit(**common, event="epoch", epoch=epoch, planned_epochs=planned, lr=lr,
             loss=float(total) / (n // args.batch_size),
             top_column_norm_median=round(float(dbm.weight_1.detach().norm(dim=0).median()), 4),
             seconds=round(seconds, 1))  # fmt: skip
        if seconds > args.time_budget:
            break
    if args.save:
        torch.save({"dbm": dbm.state_dict(), "states": states, "config": vars(args)}, args.save)
    t0 = time.perf_counter()
    ais = ais_log_partition(dbm, args.ais_chains, args.ais_betas, data=train_v)
    with torch.no_grad():
        prior = float(hidden_prior(dbm, test_h).double().mean() - ais.log_z)
        mf = float(dbm.unnormalized_log_prob(test_v).double().mean() - ais.log_z)
    rev = reverse_ais_log_partition(dbm, states, args.ais_betas, data=train_v)
    lo, hi = ais.interval(3.0)
    warning = {}
    if abs(rev.log_z - ais.log_z) > AIS_DISAGREEMENT:  # forward AIS a stochastic lower bound, reverse an upper one
        warning["warning"] = (
            f"forward and reverse AIS disagree on log Z by {rev.log_z - ais.log_z:+.2f} nats: "
            "the scores are not reliable"
        )
    emit(
        **common, event="score", epochs=epoch, log_z=round(ais.log_z, 3), log_z_stderr=round(ais.stderr, 4),
        reverse_ais_log_z=round(rev.log_z, 3), headroom=round(prior - log_prior_r, 3),
        fixed_q_bound=round(log_p_v + prior - log_prior_r, 3), mean_field_bound=round(mf, 3),
        mean_field_bound_3sd=[round(mf - (hi - ais.log_z), 3), round(mf + (ais.log_z - lo), 3)],
        reverse_ais_mean_field_bound=round(mf + ais.log_z - rev.log_z, 3), ais_seconds=round(time.perf_counter() - t0),
        **warning,
    )  # fmt: skip


if __name__ == "__main__":
    main()
