"""Quality: a 784-500-1000 DBM trained by variational SML through SVI, scored by the AIS test bound.

Training: greedy pretraining of the two RBMs (doubled bottom and top, ``DBM.pretrain``), then
Algorithm 20.1 through an unmodified ``pyro.infer.SVI`` with ``Trace_ELBO``: mean-field positive
phase, persistent block-Gibbs chains for the negative phase, centered parametrization, Adam with a
rate decaying once per epoch from ``--lr`` to ``--final-lr`` over the planned epochs (exponentially
or linearly). Optionally the iterates are averaged (Polyak averaging of the uncentered natural
parameters, ``DBM.params()``) into a second, non-centered DBM. Scoring: AIS over the first hidden
layer with v and h2 summed out (Salakhutdinov & Hinton 2009), then the average variational bound
minus log Z on the scored split, with the +-3 sd interval, and reverse AIS from the chains; the
averaged DBM, when there is one, is scored the same way (without reverse AIS).

    python benchmarks/dbm_quality.py --data ../shared/data/binarized_mnist.npz --epochs 60 --save dbm.pt
    python benchmarks/dbm_quality.py --data ../shared/data/binarized_mnist.npz --time-budget 3600 \\
        --average-from 0.5 --checkpoint dbm.ckpt --save dbm.pt
    python benchmarks/dbm_quality.py --data ../shared/data/binarized_mnist.npz --time-budget 3600 \\
        --average-from 0.5 --checkpoint dbm.ckpt --resume dbm.ckpt --save dbm.pt   # after a kill
    python benchmarks/dbm_quality.py --data ../shared/data/binarized_mnist.npz --load dbm.pt

Options beyond the model and optimizer settings:

* ``--time-budget S``: seconds of training, pretraining included (AIS excluded). At the end of every
  epoch the planned number of epochs is set to those done plus as many as the remaining budget
  allows at the median speed of the last five epochs (``--epochs``, when given, caps it), so that the learning-rate
  decay and the averaging window follow the budget (the epoch time excludes the warm-up of
  the first SVI step; under ``--steps-schedule`` an update is costed as 1 + sweeps sweeps);
  training also stops at the end of the epoch in which the budget is exceeded.
* ``--schedule {exponential,linear}`` and ``--steps-schedule START END``: as in ``rbm_quality.py``.
* ``--average-from F [F ...]``: average the iterates from fraction F of the planned updates on (restarting
  if a longer plan moves the window's start past the current update); several fractions keep one
  average each, scored as ``averaged`` (the first) and ``averaged_from_F``.
* ``--checkpoint PATH``: an atomic checkpoint (``dgm_ppl.save_checkpoint``) at the end of every epoch
  of the joint training: DBM, chains, averaged DBM, optimizer state, RNG states, counters, planned
  epochs, training seconds and config. ``--resume PATH`` with such a checkpoint continues exactly
  (give the same options; no pretraining): bit for bit the run that was not stopped. ``--resume``
  with a file written by ``--save`` trains further from that DBM and its chains, as before: fresh
  optimizer and schedule, no pretraining. ``--stop-after K`` stops after epoch K of the plan.
* ``--max-loss-change F`` (default 0.5): stop with an error when an epoch's loss moves by more than F times
  the magnitude of the previous epoch's (0: never). Late in training the epoch loss moves by well under 1% an
  epoch; a jump (e.g. -795 to -2,079 in one epoch of a 240-epoch run at a rate of 1.3e-4) means the persistent
  chains have lost the model and the biases are running away. The error comes before that epoch's
  ``--checkpoint`` and ``--save`` files are written, so they keep the last good epoch to resume from with other
  settings (a lower rate, more chains).
* ``--max-norm C``: after every update, project each hidden unit's incoming weight vector (the columns of
  ``weight_l``) into the ball of radius C (``dgm_ppl.energy.max_norm_``), before the iterate is averaged.
* ``--sparsity-targets P [P ...]``, ``--sparsity-costs C [C ...]`` (default 1e-3), ``--sparsity-damping D``
  (default 0.9): a ``dgm_ppl.energy.SparsityTarget`` on the hidden layers (one value for all, or one per layer),
  checkpointed with the run.
* ``--optimizer adamw``: AdamW for the joint training, whose ``--weight-decay`` (and ``--bias-decay``) is
  decoupled: every update multiplies a weight by ``1 - lr * WD`` (under ``adam`` it is an L2 term per datum).
* ``--adam-betas B1 B2``: the decay rates of Adam's (and AdamW's) first and second moments (default 0.9 0.999); a
  lower B1 makes the updates follow the SML gradient, which moves with the chains, more closely. A checkpoint
  resumes only under the betas that wrote it.
* ``--layer-lr-scale S [S ...]``: one factor per hidden layer: the rate of that layer's incoming weights and of
  its biases is the schedule's rate times S (``MultiTensorOptim.set_lr`` with a rate per parameter), the visible
  biases keep the schedule's. ``--layer-lr-scale 1 10`` trains the weights between the hidden layers ten times as
  fast as those of the first.
* ``--init-rbm PATH``: no pretraining; the DBM grows from an RBM saved by ``rbm_quality.py --save``
  (``DBM.grow_from_rbm``): the RBM (its first Polyak average, or its last iterate with ``--init-rbm-model raw``) is
  the bottom layer pair, the weights above are drawn with sd ``--init-top-std`` (default 0.01) and the biases above
  are zero, so that the DBM starts as (nearly) the RBM: its mean-field bound is then the RBM's exact log-likelihood.
  The chains start from the file's chains. The RBM's training time is not counted in ``--time-budget``.
* ``--positive-phase importance --importance-samples K``: the data's side of the gradient is the
  self-normalized importance estimate of the likelihood's (``DBM.importance_positive_phase``: the top layer drawn
  K times from the mean-field posterior, h1 summed out) instead of the mean-field bound's. The mean-field gradient
  also pulls the model towards factorial posteriors, which shrinks the weights between the hidden layers; this one
  does not. At K = 10 an epoch took 1.2 to 2.1 times as long as the mean field's (README). The score stays the
  mean-field bound.
* ``--pretrain-centered``: the RBMs of the pretraining in the centered parametrization (``DBM.pretrain(...,
  centered=True)``; the default trains them uncentered, whatever the joint training's parametrization).
* ``--pretrain-weight-decay W``: Adam's L2 term (per datum) in the RBM pretraining (default 0).
* ``--autocast bfloat16``: the joint training through ``dgm_ppl.infer.AutocastLoss``. The DBM's SML path
  (mean field, chains' sweeps, gradient) runs in full precision under it, so the run equals the float32 one: with
  the mean field and the sweeps in bfloat16 a 60-minute run ended 8 nats behind float32 (README).
* ``--save PATH`` (rewritten every epoch) holds the float32 state dicts of the DBM, chains and
  averaged DBM and the config; ``--load PATH`` scores it (both models) on ``--split``, with the layer sizes,
  parametrization and chains it was saved with. ``--no-score`` skips AIS.

Every epoch line also carries ``dead_units``: per hidden layer, the fraction of units whose mean-field mean on the
first 1,000 training images is below 0.01, and ``dead_units_chain_activation``: the chains' mean activation of those
units (``null`` when none is dead). A unit the data never turns on but the chains do is pushed further down by the SML
gradient.

``--load PATH`` also prints a ``layers`` line per model, raw and averaged (``layer_usage``): how much each weight
matrix carries (the 10th, 50th and 90th percentiles of its columns' norms, and the median over the units above of the
standard deviation of their input from below across the same 1,000 images: about 0 for a unit that acts as a bias),
and how far the training's ``--mean-field-iters`` sweeps are from the mean field's fixed point (200 sweeps). With
``--no-score`` it is a quick diagnosis of a saved DBM.

Prints one JSON line per epoch and one per score (``model`` = ``raw``, ``averaged`` or ``averaged_from_F``).
"""

from __future__ import annotations

import argparse
import math
import time

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
    typical_epoch_seconds,
    with_max_norm,
    zeroed,
)
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl import load_checkpoint, save_checkpoint
from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.energy import DBM, BernoulliRBM, PersistentChains
from dgm_ppl.infer import AutocastLoss, train

DEAD_UNIT = 0.01  # a hidden unit whose mean activation on the data is below this is counted as dead
PROBE_IMAGES = 1000
AUTOCAST = {"bfloat16": torch.bfloat16}


@torch.no_grad()
def dead_units(dbm, chains, probe, mean_field_iters: int) -> dict:
    """Per hidden layer, the fraction of dead units (mean-field mean on ``probe`` below ``DEAD_UNIT``) and the
    chains' mean activation of those units. Deterministic: draws no random numbers, so a resumed run is unchanged."""
    means = dbm.mean_field(probe, num_iters=mean_field_iters, tol=None)
    fractions, chain_activation = [], []
    for mean, states in zip(means, chains.states()[1:]):
        dead = mean.mean(0) < DEAD_UNIT
        fractions.append(round(float(dead.float().mean()), 3))
        chain_activation.append(round(float(states.mean(0)[dead].mean()), 4) if bool(dead.any()) else None)
    return {"dead_units": fractions, "dead_units_chain_activation": chain_activation}


@torch.no_grad()
def layer_usage(dbm: DBM, probe: torch.Tensor, mean_field_iters: int, fixed_point_iters: int = 200) -> dict:
    """How much each layer of ``dbm`` is used on the images ``probe``, and how far ``mean_field_iters`` mean-field
    sweeps are from ``fixed_point_iters``.

    :returns: ``weight_column_norms`` (per weight matrix, the 10th, 50th and 90th percentiles of the norms of its
        columns, in the uncentered parameters), ``input_sd`` (per hidden layer, the median over its units of the
        standard deviation across ``probe`` of the input from the layer below, the layer below at its mean-field
        means), ``dead_units`` (as in the epoch lines), ``mean_field_max_change`` (the largest change of any mean
        from ``mean_field_iters`` sweeps to ``fixed_point_iters``) and ``mean_field_bound_gain`` (the mean bound's
        gain, nats per image, from those further sweeps)."""
    p = dbm.params()
    fixed = dbm.mean_field(probe, num_iters=fixed_point_iters, tol=None)
    short = dbm.mean_field(probe, num_iters=mean_field_iters, tol=None)
    below = [probe, *fixed[:-1]]
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    bounds = [dbm.variational_bound(probe, num_iters=k, tol=None).mean() for k in (mean_field_iters, fixed_point_iters)]
    return {
        "weight_column_norms": [[round(v, 3) for v in torch.quantile(w.norm(dim=0).double().cpu(), q).tolist()]
                                for w in p.weights],
        "input_sd": [round(float((x @ w).std(0).median()), 3) for x, w in zip(below, p.weights)],
        "dead_units": [round(float((m.mean(0) < DEAD_UNIT).float().mean()), 3) for m in fixed],
        "mean_field_max_change": float(max((a - b).abs().max() for a, b in zip(short, fixed))),
        "mean_field_bound_gain": float(bounds[1] - bounds[0]),
    }  # fmt: skip


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help=".npz with 'train' and the scored split (N x 784, binary)")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--layers", type=int, nargs="+", default=[500, 1000], help="hidden layer sizes")
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument(
        "--pretrain-centered", action="store_true", help="pretrain the RBMs centered (DBM.pretrain(centered=True))"
    )
    ap.add_argument(
        "--pretrain-weight-decay", type=float, default=0.0, help="per datum: Adam's L2 term in the RBM pretraining"
    )
    ap.add_argument(
        "--init-rbm", metavar="PATH",
        help="no pretraining: grow the DBM from an RBM saved by rbm_quality.py --save (DBM.grow_from_rbm)",
    )  # fmt: skip
    ap.add_argument(
        "--init-rbm-model", choices=["averaged", "raw"], default="averaged",
        help="which of the --init-rbm file's RBMs: its first Polyak average, or its last iterate",
    )  # fmt: skip
    ap.add_argument("--init-top-std", type=float, default=0.01, help="with --init-rbm: the sd of the weights above h1")
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs (default 60; 0: score the initial DBM); with --time-budget a cap",
    )
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--chains", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1, help="Gibbs sweeps per update")
    ap.add_argument(
        "--steps-schedule", type=int, nargs=2, metavar=("START", "END"), help="sweeps rising linearly over training"
    )
    ap.add_argument("--mean-field-iters", type=int, default=10)
    ap.add_argument(
        "--positive-phase",
        choices=["mean_field", "importance"],
        default="mean_field",
        help="the data's side of the gradient: the mean-field bound's (Algorithm 20.1), or an importance estimate "
        "of the likelihood's with the top layer drawn --importance-samples times from the mean field",
    )
    ap.add_argument("--importance-samples", type=int, default=10, metavar="K", help="draws per image (importance)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--final-lr", type=float, default=1e-5)
    ap.add_argument("--schedule", choices=["exponential", "linear"], default="exponential")
    ap.add_argument(
        "--layer-lr-scale", type=float, nargs="+", metavar="S",
        help="per hidden layer: its incoming weights and its biases at S times the rate",
    )  # fmt: skip
    ap.add_argument(
        "--weight-decay", type=float, default=1e-5, help="per datum L2 (on the biases too, unless --bias-decay)"
    )
    ap.add_argument(
        "--optimizer", choices=["adam", "adamw"], default="adam",
        help="adamw: --weight-decay is decoupled, a shrink of lr * WD per update",
    )  # fmt: skip
    ap.add_argument("--no-center", action="store_true")
    add_regularizer_args(ap)
    add_averaging_arg(ap)
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="training seconds (no AIS)")
    ap.add_argument("--checkpoint", help="write a checkpoint here at the end of every epoch")
    ap.add_argument(
        "--max-loss-change", type=float, default=0.5, metavar="F",
        help="stop when an epoch's loss moves by more than F times the previous one's magnitude (0: never)",
    )  # fmt: skip
    ap.add_argument("--stop-after", type=int, default=None, metavar="K", help="stop after K epochs of the plan")
    ap.add_argument("--ais-chains", type=int, default=100)
    ap.add_argument("--ais-betas", type=int, default=20000)
    ap.add_argument(
        "--is-samples", type=int, default=0, metavar="K",
        help="also score DBM.importance_log_prob with K draws per image (the odd layers summed out; 0: off)",
    )  # fmt: skip
    ap.add_argument("--no-score", action="store_true", help="skip the AIS scoring")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save", help="write the trained DBM, its chains and the averaged DBM here (every epoch)")
    ap.add_argument("--load", help="score a saved DBM instead of training")
    ap.add_argument(
        "--resume",
        help="a --checkpoint file: continue exactly; a --save file: train further (fresh optimizer, no pretraining)",
    )
    ap.add_argument(
        "--autocast",
        choices=tuple(AUTOCAST),
        help="the joint training through AutocastLoss (the DBM's SML path keeps full precision under it)",
    )
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.epochs is None and args.time_budget is None:
        args.epochs = 60
    check_averaging_arg(ap, args)
    if args.epochs is not None and args.epochs < 0:
        ap.error("--epochs must be >= 0 (0: no joint training, score the pretrained or grown DBM)")
    if args.init_rbm and (args.resume or args.load):
        ap.error("--init-rbm starts a new run; it cannot be combined with --resume or --load")
    if not (math.isfinite(args.init_top_std) and args.init_top_std >= 0):
        ap.error("--init-top-std must be finite and >= 0")
    if not args.max_loss_change >= 0:
        ap.error("--max-loss-change must be >= 0")
    check_regularizer_args(ap, args)
    if args.steps_schedule and min(args.steps_schedule) < 1:
        ap.error("--steps-schedule needs positive sweep counts")
    if args.is_samples < 0:
        ap.error("--is-samples must be >= 0")
    scales = args.layer_lr_scale
    if scales is not None and (len(scales) != len(args.layers) or not all(0 < x < float("inf") for x in scales)):
        ap.error(f"--layer-lr-scale needs {len(args.layers)} positive factors, one per hidden layer (--layers)")
    return args


def new_average(dbm: DBM) -> DBM:
    return zeroed(DBM(dbm.layer_sizes, centered=False, name="dbm_avg").to(dbm.weight_0))


def standard_tensors(p) -> list[torch.Tensor]:
    """The averaged tensors of a DBM's standard-form parameters ``p``: its weights, then its biases."""
    return [*p.weights, *p.biases]


def layer_rates(scales: list[float] | None, lr: float):
    """The rate of each DBM parameter under ``--layer-lr-scale``: ``lr`` times the factor of the hidden layer that
    ``weight_{l}`` feeds (l + 1) or that ``bias_{l}`` belongs to (l; the visible biases, l = 0, keep ``lr``)."""
    if not scales:
        return lr

    def rate(name: str) -> float:
        kind, _, index = name.rsplit(".", 1)[-1].partition("_")
        layer = int(index) + (kind == "weight")
        return lr * (scales[layer - 1] if layer >= 1 else 1.0)

    return rate


BOUND = "log_likelihood_bound"  # a DBM is scored by its variational bound


def is_checkpoint(saved) -> bool:
    return isinstance(saved, dict) and {"modules", "optim", "rng"} <= set(saved)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train_x = load_binarized_mnist(args.data, "train").to(device)
    test_x = load_binarized_mnist(args.data, args.split).to(device)
    n = train_x.shape[0]
    saved = torch.load(args.load, map_location=device, weights_only=False) if args.load else None
    if saved is not None:  # a saved DBM keeps its own sizes and parametrization, whatever --layers says
        weights = [saved["dbm"][f"weight_{l}"] for l in range(sum(k.startswith("weight_") for k in saved["dbm"]))]
        sizes, centered = [weights[0].shape[0], *(w.shape[1] for w in weights)], not saved["config"].get("no_center")
    else:
        sizes, centered = [784, *args.layers], not args.no_center
    common = dict(benchmark="dbm_quality", layers=sizes, device=str(device), threads=torch.get_num_threads())

    dbm = DBM(sizes, centered=centered, name="dbm").to(device)
    dbm.init_from_data(train_x)
    avgs, config = [], vars(args)
    run = dict(
        epoch=0,
        planned=10**9 if args.epochs is None else args.epochs,
        updates=0,
        averaged=0,
        pretrain_seconds=0.0,
        train_seconds=0.0,
    )
    if saved is not None:
        dbm.load_state_dict(saved["dbm"])
        chains = PersistentChains(dbm, num_chains=len(saved["chains"]["state"]), steps=args.steps)  # the file's count
        chains.load_state_dict(saved["chains"])
        avgs, config = load_averages(saved, lambda: new_average(dbm)), saved["config"]
        run.update(saved.get("run", {"epoch": saved["config"].get("epochs"), "planned": saved["config"].get("epochs")}))
        emit(**common, event="loaded", path=args.load, config=saved["config"])
        for label, model in [("raw", dbm), *(("averaged", a) for a in avgs[:1])]:
            usage = layer_usage(model, train_x[:PROBE_IMAGES], args.mean_field_iters)
            emit(**common, event="layers", model=label, **usage)
    else:
        avgs, run, chains = train_dbm(args, dbm, train_x, n, common, run)
    avg = avgs[0] if avgs else None  # the first window's: what callers (and the tests) take as "the" average
    if args.no_score:
        return dbm, chains, avg, run
    extra = dict(
        epochs=run["epoch"],
        planned_epochs=run["planned"],
        pretrain_seconds=round(run["pretrain_seconds"], 1),
        train_seconds=round(run["train_seconds"], 1),
        time_budget=args.time_budget,
    )

    def estimators(model) -> dict:
        """The importance-sampled estimate of log p*(v) (``--is-samples``), beside the mean-field bound."""
        k = args.is_samples
        return {f"importance_log_likelihood_{k}": lambda v: model.importance_log_prob(v, k)} if k else {}

    ais_score(
        dbm, "raw", args, train_x, test_x, common, extra, reverse_from=chains.states, key=BOUND, train_points=10000,
        estimators=estimators(dbm),
    )  # fmt: skip
    score_averages(avgs, config, run, lambda model, label, more: ais_score(
        model, label, args, train_x, test_x, common, {**extra, **more}, key=BOUND, train_points=10000,
        estimators=estimators(model),
    ))  # fmt: skip
    return dbm, chains, avg, run


def check_loss_change(args, epoch: int, previous: float | None, loss: float, common: dict) -> None:
    """Raise when the epoch loss moved by more than ``--max-loss-change`` times the previous one's magnitude."""
    if not args.max_loss_change or previous is None:
        return
    if abs(loss - previous) <= args.max_loss_change * max(abs(previous), 1.0):
        return
    emit(**common, event="diverged", epoch=epoch, previous_loss=round(previous, 3), loss=round(loss, 3))
    kept = " and ".join(f"--{k} {getattr(args, k)}" for k in ("checkpoint", "save") if getattr(args, k))
    if epoch == 0 and args.resume:  # the first epoch from a --save file: this run has written nothing yet
        where = f"nothing was written, and --resume {args.resume} is unchanged; train further from it"
    elif kept:
        where = f"{kept} still hold the state after epoch {epoch - 1}; resume from it"
    else:
        where = "Train again"
    raise RuntimeError(
        f"epoch {epoch}: the loss went from {previous:.6g} to {loss:.6g}, a change of more than "
        f"--max-loss-change {args.max_loss_change:g} times the previous epoch's: the persistent chains have "
        f"lost the model. {where} with a lower --lr/--final-lr or more --chains (or raise --max-loss-change)."
    )


def rbm_to_grow_from(args, train_x: torch.Tensor, dbm: DBM) -> tuple[BernoulliRBM, torch.Tensor]:
    """The RBM of an ``rbm_quality.py --save`` file (``--init-rbm-model``), and the chains' initial visible states:
    the file's own chains where it has enough, else random training images."""
    saved = torch.load(args.init_rbm, map_location=train_x.device, weights_only=False)
    if not isinstance(saved, dict) or "rbm" not in saved or "config" not in saved:
        raise SystemExit(f"--init-rbm {args.init_rbm}: not a file written by rbm_quality.py --save")
    if args.init_rbm_model == "averaged":
        if saved.get("avg") is None:
            raise SystemExit(f"--init-rbm {args.init_rbm} holds no averaged RBM; give --init-rbm-model raw")
        state, centered = saved["avg"], False  # averages are stored uncentered
    else:
        state, centered = saved["rbm"], not saved["config"].get("no_center")
    n_visible, n_hidden = state["weight"].shape
    if [n_visible, n_hidden] != dbm.layer_sizes[:2]:
        raise SystemExit(
            f"--init-rbm {args.init_rbm} is a {n_visible}x{n_hidden} RBM; --layers must start with {n_hidden}"
        )
    rbm = BernoulliRBM(n_visible, n_hidden, centered=centered, name="rbm_init").to(train_x)
    rbm.load_state_dict(state)
    chains = (saved.get("chains") or {}).get("state")
    if chains is not None and len(chains) >= args.chains:
        return rbm, chains[: args.chains].to(train_x)
    return rbm, train_x[torch.randperm(len(train_x), device=train_x.device)[: args.chains]]


def train_dbm(args, dbm, train_x, n, common, run):
    device = train_x.device
    steps_per_epoch = math.ceil(n / args.batch_size)
    probe = train_x[:PROBE_IMAGES]  # the fixed images on which dead units are counted
    sparsity = sparsity_target(args, list(dbm.layer_sizes[1:]), device)
    # The SVI gradient is N times the per-datum one: scale the per-datum weight decay accordingly.
    optim = optimizer(args, n, lr=args.lr)
    avgs = new_averages(lambda: new_average(dbm), len(args.average_from or []))
    saved = torch.load(args.resume, map_location=device, weights_only=False) if args.resume else None
    if saved is not None and is_checkpoint(saved):  # exact continuation
        chains = PersistentChains(dbm, num_chains=args.chains, steps=args.steps)
        modules = optional_modules(dbm=dbm, chains=chains, sparsity=sparsity, **averages_as_modules(avgs))
        written = load_checkpoint(args.resume, modules, optim, map_location=device)
        check_resumed_optimizer(args, written.get("config", {}), args.resume)
        run.update(written["run"])
        if args.time_budget is None:
            run["planned"] = args.epochs
        emit(**common, event="resumed", path=args.resume, epoch=run["epoch"], planned_epochs=run["planned"])
    elif saved is not None:  # a --save file: its DBM and chains, a fresh optimizer and schedule
        dbm.load_state_dict(saved["dbm"])
        chains = PersistentChains(dbm, num_chains=args.chains, steps=args.steps)
        chains.load_state_dict(saved["chains"])
        dbm.log_z = None
        run["loss"] = saved.get("run", {}).get("loss")  # the first epoch is checked against the file's last
        emit(**common, event="resumed", path=args.resume, config=saved["config"])
    elif args.init_rbm:
        rbm, init = rbm_to_grow_from(args, train_x, dbm)
        dbm.grow_from_rbm(rbm, top_std=args.init_top_std, data=train_x)
        chains = PersistentChains(dbm, num_chains=args.chains, steps=args.steps, init=init)
        activity = dead_units(dbm, chains, probe, args.mean_field_iters)
        emit(**common, event="grown", path=args.init_rbm, model=args.init_rbm_model, **activity)
    else:
        t0 = time.perf_counter()
        dbm.pretrain(
            train_x,
            args.pretrain_epochs,
            lr=args.pretrain_lr,
            weight_decay=args.pretrain_weight_decay,
            centered=args.pretrain_centered,
            batch_size=args.batch_size,
            progress=args.progress,
        )
        run["pretrain_seconds"] = time.perf_counter() - t0
        init = train_x[torch.randperm(n, device=device)[: args.chains]]
        chains = PersistentChains(dbm, num_chains=args.chains, steps=args.steps, init=init)
        activity = dead_units(dbm, chains, probe, args.mean_field_iters)
        emit(**common, event="pretrained", seconds=round(run["pretrain_seconds"], 1), **activity)
    modules = optional_modules(dbm=dbm, chains=chains, sparsity=sparsity, **averages_as_modules(avgs))

    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            d = dbm.distribution(
                chains,
                mean_field_iters=args.mean_field_iters,
                positive_phase=args.positive_phase,
                importance_samples=args.importance_samples,
                sparsity=sparsity,
            )
            pyro.sample("x", d, obs=batch)

    loss = Trace_ELBO() if args.autocast is None else AutocastLoss(Trace_ELBO(), device.type, AUTOCAST[args.autocast])
    svi = SVI(model, lambda batch: None, optim, loss)

    fold = (lambda due: fold_into_averages(avgs, dbm, standard_tensors, due)) if avgs else None
    weights = [getattr(dbm, f"weight_{l}") for l in range(dbm.num_layers)]
    after_step = averaging_step(run, args.average_from, steps_per_epoch, fold)
    stepper = StepHook(svi, with_max_norm(after_step, weights, args.max_norm))
    first_epoch = True
    while run["epoch"] < run["planned"] and (args.stop_after is None or run["epoch"] < args.stop_after):
        epoch, planned = run["epoch"], run["planned"]
        lr = learning_rate(args, epoch, planned)
        optim.set_lr(layer_rates(args.layer_lr_scale, lr))
        chains.steps = gibbs_steps(args, epoch, planned)
        t0 = time.perf_counter()
        (loss,) = train(stepper, train_x, epochs=1, batch_size=args.batch_size, progress=args.progress)
        seconds = time.perf_counter() - t0
        check_loss_change(args, epoch, run.get("loss"), loss, common)
        run.update(epoch=epoch + 1, train_seconds=run["train_seconds"] + seconds, loss=loss)
        if args.time_budget is not None:
            elapsed = run["pretrain_seconds"] + run["train_seconds"]
            over = elapsed >= args.time_budget
            typical = typical_epoch_seconds(seconds, stepper, first_epoch, steps_per_epoch)
            typical = steady_epoch_seconds(run, typical, chains.steps)
            run["planned"] = run["epoch"] if over else replan(args, run["epoch"], elapsed, typical, chains.steps)
        first_epoch = False
        emit(
            **common,
            event="epoch",
            epoch=epoch,
            planned_epochs=run["planned"],
            lr=lr,
            steps=chains.steps,
            loss=round(loss, 3),
            averaged=run["averaged"],
            seconds=round(run["train_seconds"], 1),
            **dead_units(dbm, chains, probe, args.mean_field_iters),
        )
        if args.checkpoint:
            save_checkpoint(args.checkpoint, modules, optim, run=dict(run), config=vars(args))
        if args.save:
            write_save(args, dbm, chains, avgs, run)
    if args.save and run["epoch"] == 0:  # --epochs 0: the pretrained or grown DBM
        write_save(args, dbm, chains, avgs, run)
    return avgs, run, chains


def write_save(args, dbm: DBM, chains, avgs: list, run: dict) -> None:
    """The ``--save`` file: float32 state dicts of the DBM, its chains and averages, the config and the counters."""
    state = {
        "dbm": float32_state(dbm),
        "chains": float32_state(chains),
        **averages_state(avgs),
        "config": vars(args),
        "run": dict(run),
    }
    torch.save(state, args.save)


if __name__ == "__main__":
    main()
