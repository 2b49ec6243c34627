"""Quality: a 500-hidden Bernoulli RBM trained by SML through SVI, scored by AIS on a held-out split.

Training: centered RBM (offsets at the data mean and a running hidden mean), persistent chains (or
parallel tempering), Adam (or SGD with momentum) with weight decay and a learning rate decaying,
once per epoch, from ``--lr`` to ``--final-lr`` over the planned epochs (exponentially or linearly),
all through an unmodified ``pyro.infer.SVI`` with ``Trace_ELBO``. Optionally the number of Gibbs
sweeps per update grows over training, and the iterates are averaged (Polyak averaging of the
uncentered natural parameters W, b, c) into a second, non-centered RBM. Scoring: AIS (Salakhutdinov &
Murray schedule, 14,500 betas, 100 runs, base-rate initial model fitted to the training data), then
the average log-likelihood of the chosen split with the +-3 sd interval, and reverse AIS from the
chains; the averaged model, when there is one, is scored the same way (without reverse AIS).

    python benchmarks/rbm_quality.py --data ../shared/data/binarized_mnist.npz --epochs 170 --save rbm500.pt
    python benchmarks/rbm_quality.py --data ../shared/data/binarized_mnist.npz --time-budget 1800 \\
        --average-from 0.5 --checkpoint rbm500.ckpt --save rbm500.pt
    python benchmarks/rbm_quality.py --data ../shared/data/binarized_mnist.npz --time-budget 1800 \\
        --average-from 0.5 --checkpoint rbm500.ckpt --resume rbm500.ckpt --save rbm500.pt   # after a kill
    python benchmarks/rbm_quality.py --data ../shared/data/binarized_mnist.npz --load rbm500.pt --split valid
    PYTHONPATH=/path/to/rbms python benchmarks/rbm_quality.py --data ... --peer rbms --time-budget 1800

Options beyond the model and optimizer settings:

* ``--time-budget S``: seconds of training (AIS excluded). At the end of every epoch the planned
  number of epochs is set to the epochs done plus as many as the remaining budget allows at the median
  speed of the last five epochs (``--epochs``, when given, caps it), so that the learning-rate decay to ``--final-lr``,
  the sweep schedule and the averaging window follow the budget (the epoch time excludes the warm-up of
  the first SVI step; under ``--steps-schedule`` an update is costed as 1 + sweeps sweeps);
  training also stops at the end of the epoch in which the budget is exceeded.
* ``--optimizer adamw``: AdamW, whose ``--weight-decay`` (and ``--bias-decay``) is decoupled from the gradient:
  every update multiplies a weight by ``1 - lr * WD``. Under ``adam`` the decay is an L2 term per datum that
  Adam divides by the root of its second moment, so it pulls hardest on the weights with the smallest gradient.
* ``--adam-betas B1 B2``: the decay rates of Adam's (and AdamW's) first and second moments (default 0.9 0.999); a
  lower B1 makes the updates follow the SML gradient, which moves with the chains, more closely. A checkpoint
  resumes only under the betas that wrote it.
* ``--train-size N``: train on the first N images of the training split (the base-rate model of the AIS and the
  train score use them too; ``--load`` takes N from the saved config), to measure what more data is worth.
* ``--schedule {exponential,linear}``: the learning rate of epoch e is ``lr (final/lr)^(e/(P-1))`` or
  ``lr + (final - lr) e/(P-1)`` with P the planned epochs.
* ``--steps-schedule START END``: Gibbs sweeps per update rising linearly (rounded) from START in the
  first epoch to END in the last planned one (replaces ``--steps``).
* ``--matmul-dtype bfloat16``: the matrix products of the chains' sweeps and of the SML gradient in bfloat16
  (``BernoulliRBM(..., matmul_dtype=torch.bfloat16)``); the parameters, the optimizer and the AIS scoring stay
  in float32.
* ``--fast-weights LR``: fast-weights PCD (``dgm_ppl.energy.FastPersistentChains``, Tieleman & Hinton 2009):
  the chains sample under the parameters plus fast weights that follow the SML gradient at the constant SGD
  rate LR and decay by ``--fast-decay`` (default 0.95) every update.
* ``--parallel-tempering K``: K replicas (betas ``--pt-spacing`` linear from 0 or geometric from
  ``--pt-min-beta``, on the path from the data's base-rate model) instead of persistent chains.
* ``--average-from F [F ...]``: average the iterates from fraction F of the planned updates on (0.5: the
  last half); the running mean of the uncentered (W, b, c) is updated after every SVI step (and restarts
  if a longer plan moves the window's start past the current update). Several fractions keep one
  average each, so one run measures several windows: the first is scored as ``averaged``, the others as
  ``averaged_from_F``.
* ``--checkpoint PATH``: an atomic checkpoint (``dgm_ppl.save_checkpoint``) at the end of every epoch:
  the RBM, the chains, the averaged RBM, the optimizer state (with its current learning rate), the
  RNG states, the epoch and update counters, the planned epochs, the training seconds and the config.
  ``--resume PATH`` continues such a run exactly (give the same options): E epochs in one run, or k
  epochs then a resumed run to E, end with the same parameters and chains, bit for bit. The learning
  rate schedule is a closed form of (epoch, planned epochs), so there is no scheduler state to keep.
  ``--stop-after K`` stops after epoch K of the plan (as if killed there).
* ``--max-norm C``: after every update, project each hidden unit's incoming weight vector (the columns of
  ``weight``) into the ball of radius C (``dgm_ppl.energy.max_norm_``), before the iterate is averaged.
* ``--sparsity-targets P``, ``--sparsity-costs C`` (default 1e-3), ``--sparsity-damping D`` (default 0.9): a
  ``dgm_ppl.energy.SparsityTarget`` on the hidden units, checkpointed with the run.
* ``--save PATH`` writes the state dicts (float32) of the RBM, chains and averaged RBM and the config;
  ``--load PATH`` scores such a file (both models), on ``--split``. ``--no-score`` skips AIS.
* ``--peer rbms``: train the ``rbms`` package's Bernoulli-Bernoulli RBM (centered PCD, SGD on the
  normalized gradient, constant ``--peer-lr``) with the same data, hidden units, batch size, chains,
  sweeps and budget, copy it into a non-centered dgm_ppl ``BernoulliRBM`` (free energies checked to
  1e-4) and score it with the same AIS (``model="rbms"``).

Prints one JSON line per epoch and one per score (``model`` = ``raw``, ``averaged``, ``averaged_from_F`` or
``rbms``).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from types import SimpleNamespace

import pyro
import torch
from _training import (
    StepHook,
    add_averaging_arg,
    add_regularizer_args,
    ais_score,
    averages_as_modules,
    averages_state,
    averaging_step,
    check_averaging_arg,
    check_regularizer_args,
    check_resumed_optimizer,
    emit,
    float32_state,
    fold_into_averages,
    gibbs_steps,
    learning_rate,
    load_averages,
    new_averages,
    optimizer,
    optional_modules,
    replan,
    score_averages,
    sparsity_target,
    steady_epoch_seconds,
    tempering_betas,
    typical_epoch_seconds,
    with_max_norm,
    zeroed,
)
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl import load_checkpoint, save_checkpoint
from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import (
    BernoulliRBM,
    FastPersistentChains,
    ParallelTempering,
    PersistentChains,
)
from dgm_ppl.infer import train


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help=".npz with 'train' and the scored split (N x 784, binary)")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--train-size", type=int, default=None, metavar="N", help="train on the first N training images")
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument(
        "--epochs", type=int, default=None, help="epochs (default 170); with --time-budget a cap (default none)"
    )
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--chains", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1, help="Gibbs sweeps per update (PCD-k)")
    ap.add_argument(
        "--steps-schedule", type=int, nargs=2, metavar=("START", "END"), help="sweeps rising linearly over training"
    )
    ap.add_argument("--fast-weights", type=float, default=0.0, metavar="LR", help="FPCD with fast rate LR (0: off)")
    ap.add_argument("--fast-decay", type=float, default=0.95, help="the fast weights' decay per update (FPCD)")
    ap.add_argument("--parallel-tempering", type=int, default=0, metavar="K", help="K tempered replicas (K >= 2)")
    ap.add_argument("--pt-spacing", choices=["linear", "geometric"], default="linear")
    ap.add_argument("--pt-min-beta", type=float, default=None, help="lowest beta (default 0; geometric: 0.05)")
    ap.add_argument(
        "--optimizer", choices=["adam", "adamw", "sgd"], default="adam",
        help="adamw: --weight-decay is decoupled, a shrink of lr * WD per update",
    )  # fmt: skip
    ap.add_argument("--momentum", type=float, default=0.9, help="for --optimizer sgd")
    ap.add_argument("--lr", type=float, default=3e-3, help="per datum for sgd")
    ap.add_argument("--final-lr", type=float, default=1e-5)
    ap.add_argument("--schedule", choices=["exponential", "linear"], default="exponential")
    ap.add_argument(
        "--weight-decay", type=float, default=1e-5, help="per datum L2 (on the biases too, unless --bias-decay)"
    )
    ap.add_argument("--no-center", action="store_true")
    ap.add_argument(
        "--matmul-dtype", choices=["bfloat16", "float16"], help="precision of the training path's matrix products"
    )
    add_regularizer_args(ap)
    add_averaging_arg(ap)
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="training seconds (no AIS)")
    ap.add_argument("--checkpoint", help="write a checkpoint here at the end of every epoch")
    ap.add_argument("--resume", help="continue exactly from a checkpoint written by --checkpoint")
    ap.add_argument("--stop-after", type=int, default=None, metavar="K", help="stop after K epochs of the plan")
    ap.add_argument("--ais-chains", type=int, default=100)
    ap.add_argument("--ais-betas", type=int, default=14500)
    ap.add_argument("--no-score", action="store_true", help="skip the AIS scoring")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save", help="write the trained RBM, its chains, the averaged RBM and the config here")
    ap.add_argument("--load", help="score a saved RBM (and its averaged RBM) instead of training")
    ap.add_argument("--peer", choices=["rbms"], help="train and score a peer library's RBM instead")
    ap.add_argument("--peer-lr", type=float, default=0.01, help="rbms: SGD step on the normalized gradient")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.epochs is None and args.time_budget is None:
        args.epochs = 170
    if args.epochs is not None and args.epochs < 1 and not args.load:
        ap.error("--epochs must be >= 1 (--load scores a saved RBM without training)")
    if args.parallel_tempering == 1 or args.parallel_tempering < 0:
        ap.error("--parallel-tempering needs K >= 2 replicas")
    check_averaging_arg(ap, args)
    if args.steps_schedule and min(args.steps_schedule) < 1:
        ap.error("--steps-schedule needs positive sweep counts")
    if args.fast_weights < 0 or not 0 <= args.fast_decay < 1:
        ap.error("--fast-weights needs a rate >= 0 and --fast-decay one in [0, 1)")
    if args.fast_weights and args.parallel_tempering:
        ap.error("--fast-weights and --parallel-tempering are two different negative phases: choose one")
    check_regularizer_args(ap, args)
    return args


# ------------------------------------------------------------------------------------------------ schedules


# ------------------------------------------------------------------------------------------------ models
def make_chains(rbm, args, train_x, config=None):
    """PersistentChains, FastPersistentChains with ``--fast-weights``, or ParallelTempering with
    ``--parallel-tempering`` (settings from ``config`` if given)."""
    cfg = config or vars(args)
    n = train_x.shape[0]
    init = train_x[torch.randperm(n, device=train_x.device)[: cfg["chains"]]]
    k = cfg.get("parallel_tempering") or 0
    if cfg.get("fast_weights"):
        return FastPersistentChains(
            rbm,
            num_chains=cfg["chains"],
            steps=cfg.get("steps", 1),
            init=init,
            fast_lr=cfg["fast_weights"],
            fast_decay=cfg.get("fast_decay", 0.95),
        )
    if not k:
        return PersistentChains(rbm, num_chains=cfg["chains"], steps=cfg.get("steps", 1), init=init)
    spacing, lo = cfg.get("pt_spacing", "linear"), cfg.get("pt_min_beta")
    if spacing == "geometric":
        lo = 0.05 if lo is None else lo
        if lo <= 0:
            raise SystemExit("--pt-spacing geometric needs --pt-min-beta > 0")
    betas = tempering_betas(k, spacing, 0.0 if lo is None else lo)
    base = rbm.base_rate(train_x).detach()
    chains = ParallelTempering(rbm, num_chains=cfg["chains"], steps=cfg.get("steps", 1), betas=betas, base=base)
    with torch.no_grad():  # start every replica at data, as the persistent chains are
        chains.state.copy_(init.expand(k, -1, -1))
    return chains


def swap_rates(chains) -> dict:
    """``{"swap_rate": [...]}``: parallel tempering's acceptance rate of swaps between neighbouring temperatures
    since the run began (cumulative); ``{}`` for persistent chains."""
    if not isinstance(chains, ParallelTempering):
        return {}
    return {"swap_rate": [round(float(r), 3) for r in chains.swap_rate]}


def new_average(rbm) -> BernoulliRBM:
    return zeroed(BernoulliRBM(rbm.n_visible, rbm.n_hidden, centered=False, name="rbm_avg").to(rbm.weight))


def standard_tensors(p) -> list[torch.Tensor]:
    """The averaged tensors of an RBM's standard-form parameters ``p``: (W, b, c)."""
    return [p.weight, p.visible_bias, p.hidden_bias]


# ------------------------------------------------------------------------------------------------ scoring
# ------------------------------------------------------------------------------------------------ training
def train_dgm(args, rbm, chains, train_x, common, before_epoch=None):
    """Train ``rbm`` in place; returns the averaged RBMs (one per ``--average-from`` window; empty without) and the
    run's counters. ``before_epoch(epoch)``, when given, runs at the start of each epoch (e.g. to redraw
    ``train_x`` in place)."""
    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / args.batch_size)
    # The SVI gradient is N times the per-datum one: scale the per-datum settings accordingly.
    optim = optimizer(args, n, lr=args.lr)
    lr_scale = 1.0 / n if args.optimizer == "sgd" else 1.0
    avgs = new_averages(lambda: new_average(rbm), len(args.average_from or []))
    # Under a time budget without --epochs the plan is made at the end of the first epoch.
    run = dict(epoch=0, planned=args.epochs or 10**9, updates=0, averaged=0, train_seconds=0.0, last_epoch_seconds=None)
    sparsity = sparsity_target(args, [rbm.n_hidden], train_x.device)
    modules = optional_modules(rbm=rbm, chains=chains, sparsity=sparsity, **averages_as_modules(avgs))
    if args.resume:
        saved = load_checkpoint(args.resume, modules, optim, map_location=train_x.device)
        check_resumed_optimizer(args, saved.get("config", {}), args.resume)
        run.update(saved["run"])
        if args.time_budget is None:
            run["planned"] = args.epochs
        emit(**common, event="resumed", path=args.resume, epoch=run["epoch"], planned_epochs=run["planned"])

    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", rbm.distribution(chains, sparsity=sparsity), obs=batch)

    svi = SVI(model, lambda batch: None, optim, Trace_ELBO())

    fold = (lambda due: fold_into_averages(avgs, rbm, standard_tensors, due)) if avgs else None
    after_step = averaging_step(run, args.average_from, steps_per_epoch, fold)
    stepper = StepHook(svi, with_max_norm(after_step, [rbm.weight], args.max_norm))
    first_epoch = True
    while run["epoch"] < run["planned"] and (args.stop_after is None or run["epoch"] < args.stop_after):
        epoch, planned = run["epoch"], run["planned"]
        if before_epoch is not None:
            before_epoch(epoch)
        lr = learning_rate(args, epoch, planned)
        optim.set_lr(lr * lr_scale)
        chains.steps = gibbs_steps(args, epoch, planned)
        t0 = time.perf_counter()
        (loss,) = train(stepper, train_x, epochs=1, batch_size=args.batch_size, progress=args.progress)
        seconds = time.perf_counter() - t0
        run.update(epoch=epoch + 1, train_seconds=run["train_seconds"] + seconds, last_epoch_seconds=seconds)
        if args.time_budget is not None:
            if run["train_seconds"] >= args.time_budget:
                run["planned"] = run["epoch"]
            else:
                typical = typical_epoch_seconds(seconds, stepper, first_epoch, steps_per_epoch)
                typical = steady_epoch_seconds(run, typical, chains.steps)
                run["planned"] = replan(args, run["epoch"], run["train_seconds"], typical, chains.steps)
        first_epoch = False
        emit(
            **common,
            event="epoch",
            epoch=epoch,
            planned_epochs=run["planned"],
            lr=lr,
            steps=chains.steps,
            averaged=run["averaged"],
            seconds=round(run["train_seconds"], 1),
            **swap_rates(chains),
        )
        if args.checkpoint:
            save_checkpoint(args.checkpoint, modules, optim, run=dict(run), config=vars(args))
    return avgs, run


def training_subset(train_x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The first ``size`` training images (all of them when ``size`` is None)."""
    if size is None:
        return train_x
    if not 1 <= size <= train_x.shape[0]:
        raise SystemExit(f"--train-size {size}: the training split has {train_x.shape[0]} images")
    return train_x[:size]


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train_x = load_binarized_mnist(args.data, "train").to(device)
    test_x = load_binarized_mnist(args.data, args.split).to(device)
    common = dict(benchmark="rbm_quality", hidden=args.hidden, device=str(device), threads=torch.get_num_threads())
    config = vars(args)
    if args.load:
        saved = torch.load(args.load, map_location=device, weights_only=False)
        config = {**config, **saved["config"]}
        common["hidden"] = config["hidden"]
    train_x = training_subset(train_x, config.get("train_size"))
    if args.peer:
        return run_peer(args, train_x, test_x, common)

    low = config.get("matmul_dtype")
    rbm = BernoulliRBM(
        784, config["hidden"], centered=not config["no_center"], name="rbm", matmul_dtype=low and getattr(torch, low)
    ).to(device)
    rbm.init_from_data(train_x)
    chains = make_chains(rbm, args, train_x, config)
    avgs = []
    run = dict(epoch=config.get("epochs"), planned=config.get("epochs"), train_seconds=0.0)
    if args.load:
        rbm.load_state_dict(saved["rbm"])
        if saved.get("chains") is not None:
            chains.load_state_dict(saved["chains"])
        else:  # a --peer file: no chains, no reverse AIS
            chains = None
        avgs = load_averages(saved, lambda: new_average(rbm))
        run.update(saved.get("run", {}))
        emit(**common, event="loaded", path=args.load, config=saved["config"])
    else:
        avgs, run = train_dgm(args, rbm, chains, train_x, common)
        if args.save:
            state = {
                "rbm": float32_state(rbm),
                "chains": float32_state(chains),
                **averages_state(avgs),
                "config": config,
                "run": run,
            }
            torch.save(state, args.save)
    avg = avgs[0] if avgs else None  # the first window's: what callers (and the tests) take as "the" average
    if args.no_score:
        return rbm, chains, avg, run
    extra = dict(
        epochs=run["epoch"],
        planned_epochs=run["planned"],
        train_seconds=round(run["train_seconds"], 1),
        time_budget=args.time_budget,
    )
    ais_score(
        rbm, config.get("peer") or "raw", args, train_x, test_x, common, extra,
        reverse_from=lambda: chains.initial_samples(chains.num_chains),
    )  # fmt: skip
    score_averages(avgs, config, run, lambda model, label, more: ais_score(
        model, label, args, train_x, test_x, common, {**extra, **more}
    ))  # fmt: skip
    return rbm, chains, avg, run


# ------------------------------------------------------------------------------------------------ peer
def run_peer(args, train_x, test_x, common):
    """Train the ``rbms`` package's Bernoulli-Bernoulli RBM (its centered PCD gradient and normalized SGD
    step), then score a dgm_ppl copy of it with dgm_ppl's AIS."""
    try:
        from rbms.bernoulli_bernoulli.classes import BBRBM
    except ImportError as e:
        sys.exit(f"--peer rbms: the 'rbms' package is not importable ({e}); install it or put it on PYTHONPATH")
    n, dtype = train_x.shape[0], train_x.dtype
    planned = args.epochs or 1
    params = BBRBM.init_parameters(args.hidden, SimpleNamespace(data=train_x), train_x.device, dtype)
    params.init_grad()
    chains = params.init_chains(args.chains)
    optimizer = torch.optim.SGD(params.parameters(), lr=args.peer_lr, maximize=True)
    ones = torch.ones(args.batch_size, device=train_x.device, dtype=dtype)
    epoch, elapsed = 0, 0.0
    while epoch < planned:
        steps = gibbs_steps(args, epoch, planned)
        t0 = time.perf_counter()
        with torch.no_grad():
            order = torch.randperm(n, device=train_x.device)
            for i in range(0, n, args.batch_size):
                batch = train_x[order[i : i + args.batch_size]]
                data = params.init_chains(batch.shape[0], weights=ones[: batch.shape[0]], start_v=batch)
                chains = params.sample_state(chains, n_steps=steps)
                optimizer.zero_grad(set_to_none=False)
                params.compute_gradient(data, chains, centered=not args.no_center)
                params.normalize_grad()
                optimizer.step()
        seconds = time.perf_counter() - t0
        epoch, elapsed = epoch + 1, elapsed + seconds
        if args.time_budget is not None:
            planned = epoch if elapsed >= args.time_budget else replan(args, epoch, elapsed, seconds, steps)
        emit(**common, event="epoch", model="rbms", epoch=epoch - 1, planned_epochs=planned, seconds=round(elapsed, 1))

    # rbms: E(v, h) = -v.vbias - h.hbias - v^T W h with W of shape (visible, hidden): dgm_ppl's convention.
    rbm = BernoulliRBM(784, args.hidden, centered=False, name="rbm_peer").to(train_x.device)
    with torch.no_grad():
        rbm.weight.copy_(params.weight_matrix)
        rbm.visible_bias.copy_(params.vbias)
        rbm.hidden_bias.copy_(params.hbias)
    check_peer_copy(params, rbm, train_x[:10])
    if args.save:
        config = {**vars(args), "no_center": True, "parallel_tempering": 0}  # the copy is a plain RBM
        run = dict(epoch=epoch, planned=planned, train_seconds=elapsed)
        torch.save({"rbm": float32_state(rbm), "chains": None, "config": config, "run": run}, args.save)
    if not args.no_score:
        extra = dict(epochs=epoch, planned_epochs=planned, train_seconds=round(elapsed, 1))
        extra["time_budget"] = args.time_budget
        ais_score(rbm, "rbms", args, train_x, test_x, common, extra)
    return rbm, params


def check_peer_copy(params, rbm, v, tol=1e-4):
    """The free energy of the copy against one computed from the peer's parameters in float64 (softplus in
    full), and against the peer's own ``compute_energy_visibles`` (which cuts softplus(x) to x above 10)."""
    ours = copy.deepcopy(rbm).double().free_energy(v.double()).detach()
    w, b, c = (t.detach().double() for t in (params.weight_matrix, params.vbias, params.hbias))
    vd = v.double()
    reference = -(vd @ b) - torch.nn.functional.softplus(c + vd @ w).sum(-1)
    theirs = params.compute_energy_visibles(v).double()
    gap = float((ours - reference).abs().max())
    if gap > tol:
        raise RuntimeError(f"the copied RBM's free energies differ from the peer's parameters' by {gap:.3g}")
    emit(event="peer_copy_check", max_abs_diff=gap, max_abs_diff_peer_energy=float((ours - theirs).abs().max()))


if __name__ == "__main__":
    main()
