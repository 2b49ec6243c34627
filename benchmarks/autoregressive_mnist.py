"""Quality: NADE, MADE and the FVSBN on binarized MNIST, trained by SVI for a time budget, scored by exact log p(x).

Models (``dgm_ppl.models.autoregressive``): ``--model nade``: ``NADE(784, 500)`` (sigmoid hidden layer of 500 units,
tied weights, as in Larochelle & Murray 2011); ``--model made``: ``MADE(784, (500,))`` (one ReLU hidden layer of
500; ``--made-hidden 500 500`` for two) trained over ``--num-masks`` masks (connectivity-agnostic, and
order-agnostic unless ``--natural-ordering``; one mask per SVI step, cycled), scored as the ensemble
:math:`\\log \\frac1K \\sum_k p_k(x)` (and its first mask alone); ``--model fvsbn``: ``FVSBN(784)``.

Training: each model is the observed site of a Pyro program with a subsampled plate over the 50,000 ``train`` images
and an empty guide, so ``SVI(model, guide, dgm_ppl.optim.Adam, Trace_ELBO())`` is stochastic maximum likelihood
(batch ``--batch-size``). The output biases start at the pixel log-odds; the learning rate decays exponentially
from ``--lr`` to ``--final-lr`` over the planned epochs (``_training.learning_rate``).

``--time-budget SECONDS`` plans the epochs to fit (``_training.replan``, from the median time of the last five epochs,
re-planned after every epoch), so that the learning-rate decay ends within the budget; ``--epochs`` caps the plan.
``--checkpoint PATH`` writes the model, the optimizer, the RNG states and the counters after every epoch (atomically);
``--resume`` (with ``--checkpoint``) continues that run exactly: E epochs in one run, or k epochs then a resumed run,
give the same parameters bit for bit (for a fixed plan, i.e. ``--epochs`` without ``--time-budget``).

Score: the exact mean log p(x) (nats per image) of the first ``--eval-points`` images of ``--split`` (``valid``,
10,000) and of the first ``--train-points`` training images, and of the independent-pixel baseline.

    OMP_NUM_THREADS=1 python benchmarks/autoregressive_mnist.py --data ../shared/data/binarized_mnist.npz \\
        --model nade --time-budget 900 --checkpoint outputs/arm_nade.ckpt
    OMP_NUM_THREADS=1 python benchmarks/autoregressive_mnist.py --data ../shared/data/binarized_mnist.npz \\
        --model nade --time-budget 900 --checkpoint outputs/arm_nade.ckpt --resume            # after a kill

Speed (one thread): ``NADE._logits`` materializes the (B, 784, 500) pre-activations, about 10-18 ms per image and
step, so one epoch of NADE takes 500-900 s (``--batch-size 25`` with glibc's ``MALLOC_MMAP_THRESHOLD_=2000000000
MALLOC_TRIM_THRESHOLD_=2000000000 MALLOC_TOP_PAD_=1000000000``, which keeps the large buffers mapped between steps, is
the fastest measured: about 10 ms per image); MADE 784-500-784 takes a few seconds per epoch.

Published test NLLs (nats; **test** split, whereas the score here is on ``valid``, 10,000 images of the same
binarization), in ``PUBLISHED``. Prints one JSON line per epoch and one per score.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import pyro
import torch
from _training import (  # benchmarks/_training.py
    StepHook,
    emit,
    learning_rate,
    replan,
    steady_epoch_seconds,
    typical_epoch_seconds,
)
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl import load_checkpoint, save_checkpoint
from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.models.autoregressive import FVSBN, MADE, NADE, AutoregressiveModel
from dgm_ppl.optim import Adam

X_DIM = 784
# Test-set NLL in nats, as published. None of these could be checked against the papers while writing this script
# (no copy of their tables was at hand): each is marked "unverified" until someone checks it.
PUBLISHED = {
    "nade": [{"nll": 88.86, "what": "NADE, 500 hidden units", "source": "Larochelle & Murray 2011 (unverified)"}],
    "made": [
        {"nll": 88.40, "what": "MADE, 1 hidden layer, 1 mask", "source": "Germain et al. 2015 (unverified)"},
        {"nll": 86.64, "what": "MADE, 1 hidden layer, 32 masks", "source": "Germain et al. 2015 (unverified)"},
    ],
    "fvsbn": [{"nll": 97.45, "what": "FVSBN", "source": "Larochelle & Murray 2011 (unverified)"}],
}


def build(args) -> AutoregressiveModel:
    if args.model == "nade":
        return NADE(X_DIM, args.hidden)
    if args.model == "made":
        return MADE(
            X_DIM, args.made_hidden, num_masks=args.num_masks, natural_ordering=args.natural_ordering, seed=args.seed
        )
    return FVSBN(X_DIM)


def output_bias(model: AutoregressiveModel) -> torch.Tensor:
    return model.layers[-1].bias if isinstance(model, MADE) else model.bias


@torch.no_grad()
def mean_log_prob(model: AutoregressiveModel, x: torch.Tensor, batch: int = 100, **options) -> tuple[float, float]:
    """Exact mean log p(x) over the rows of ``x`` and its standard error."""
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    lp = torch.cat([model.log_prob(x[i : i + batch], **options).double() for i in range(0, x.shape[0], batch)])
    se = lp.std().item() / math.sqrt(len(lp)) if len(lp) > 1 else float("nan")
    return lp.mean().item(), se


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help=".npz with 'train' and the scored split (N x 784, binary)")
    ap.add_argument("--model", choices=("nade", "made", "fvsbn"), default="nade")
    ap.add_argument("--split", default="valid", help="the scored split")
    ap.add_argument("--hidden", type=int, default=500, help="NADE's hidden units")
    ap.add_argument("--made-hidden", type=int, nargs="+", default=[500], help="MADE's hidden layer widths")
    ap.add_argument("--num-masks", type=int, default=1, help="MADE's masks, cycled one per step")
    ap.add_argument("--natural-ordering", action="store_true", help="MADE: pixels in raster order under every mask")
    ap.add_argument("--epochs", type=int, default=1000, help="planned epochs (or fewer, with --time-budget)")
    ap.add_argument("--time-budget", type=float, help="seconds of training: plan the epochs to fit and stop there")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--final-lr", type=float, default=5e-5)
    ap.add_argument("--schedule", choices=("exp", "linear"), default="exp")
    ap.add_argument("--monitor-points", type=int, default=1000, help="images of --split scored after each epoch")
    ap.add_argument("--eval-points", type=int, default=10000, help="first images of --split to score")
    ap.add_argument("--train-points", type=int, default=10000, help="first training images to score")
    ap.add_argument("--checkpoint", help="write a resumable checkpoint here after every epoch")
    ap.add_argument("--resume", action="store_true", help="continue exactly the run saved in --checkpoint")
    ap.add_argument("--stop-after", type=int, help="stop after this many epochs (as if killed there)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    args.steps_schedule = None  # for _training.replan
    if args.resume and not args.checkpoint:
        ap.error("--resume needs --checkpoint PATH")
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    t_start = time.perf_counter()

    train_x = load_binarized_mnist(args.data, "train")
    test_x = load_binarized_mnist(args.data, args.split)[: args.eval_points]
    monitor_x = test_x[: args.monitor_points]
    n, b = train_x.shape[0], min(args.batch_size, train_x.shape[0])
    steps_per_epoch = math.ceil(n / b)
    common = dict(benchmark="autoregressive_mnist", model=args.model, threads=torch.get_num_threads())
    if args.model == "made":
        common.update(made_hidden=args.made_hidden, num_masks=args.num_masks, natural_ordering=args.natural_ordering)
    elif args.model == "nade":
        common.update(hidden=args.hidden)

    ar = build(args)
    log_odds = torch.logit(train_x.mean(0).clamp(1e-3, 1 - 1e-3))
    with torch.no_grad():
        output_bias(ar).copy_(log_odds)
    parameters = sum(p.numel() for p in ar.parameters())

    def model(batch):
        pyro.module("ar", ar)
        if isinstance(ar, MADE) and ar.num_masks > 1:
            ar.resample_mask()  # a new mask per step: connectivity- (and order-) agnostic training
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", ar(), obs=batch)

    def guide(batch):
        pass

    optim = Adam({"lr": args.lr})
    svi = SVI(model, guide, optim, Trace_ELBO())
    stepper = StepHook(svi, lambda: None)
    run = {"epoch": 0, "planned": args.epochs, "train_seconds": 0.0, "mask_index": 0, "history": []}
    if args.resume:
        if not os.path.exists(args.checkpoint):
            raise FileNotFoundError(f"--resume: no checkpoint at {args.checkpoint!r}")
        run = load_checkpoint(args.checkpoint, {"ar": ar}, optim)["run"]
        if isinstance(ar, MADE):
            ar.mask_index = run["mask_index"]
        emit(**common, event="resumed", path=args.checkpoint, epoch=run["epoch"], planned=run["planned"])
    else:
        emit(**common, event="config", parameters=parameters, train=n, scored=test_x.shape[0], split=args.split,
             batch_size=b, lr=args.lr, final_lr=args.final_lr, time_budget=args.time_budget, epochs=args.epochs,
             published=PUBLISHED[args.model])  # fmt: skip

    first_epoch = True
    while run["epoch"] < run["planned"]:
        if args.time_budget is not None and run["train_seconds"] >= args.time_budget:
            break
        if args.stop_after is not None and run["epoch"] >= args.stop_after:
            return ar, run
        epoch = run["epoch"]
        lr = learning_rate(args, epoch, run["planned"])
        optim.set_lr(lr)
        t0 = time.perf_counter()
        order = torch.randperm(n)
        total = 0.0
        for i in range(0, n, b):
            loss = stepper.step(train_x[order[i : i + b]])
            if not math.isfinite(loss):
                raise RuntimeError(f"the loss became {loss} at epoch {epoch}, step {i // b}: diverged")
            total += loss
        seconds = time.perf_counter() - t0
        run["train_seconds"] += seconds
        run["epoch"] = epoch + 1
        if isinstance(ar, MADE):
            run["mask_index"] = ar.mask_index
        if args.time_budget is not None:
            typical = typical_epoch_seconds(seconds, stepper, first_epoch, steps_per_epoch)
            typical = steady_epoch_seconds(run, typical, 0)
            run["planned"] = replan(args, run["epoch"], run["train_seconds"], typical, 0)
        first_epoch = False
        options = {"ensemble": True} if isinstance(ar, MADE) and ar.num_masks > 1 else {}
        monitor, _ = mean_log_prob(ar, monitor_x, **options)
        record = dict(epoch=epoch + 1, lr=round(lr, 7), train_log_likelihood=round(-total / steps_per_epoch / n, 3),
                      monitor_log_likelihood=round(monitor, 3))  # fmt: skip
        run["history"].append(record)
        emit(**common, event="epoch", planned=run["planned"], seconds=round(run["train_seconds"], 1), **record)
        if args.checkpoint:
            save_checkpoint(args.checkpoint, {"ar": ar}, optim, run=run)

    emit(**common, event="trained", epochs=run["epoch"], planned=run["planned"],
         train_seconds=round(run["train_seconds"], 1))  # fmt: skip
    t0 = time.perf_counter()
    options = {"ensemble": True} if isinstance(ar, MADE) and ar.num_masks > 1 else {}
    ll, se = mean_log_prob(ar, test_x, **options)
    train_ll, _ = mean_log_prob(ar, train_x[: args.train_points], **options)
    independent = torch.distributions.Bernoulli(logits=log_odds).log_prob(test_x).sum(-1).mean().item()
    record = dict(
        **common,
        event="score",
        split=args.split,
        points=test_x.shape[0],
        log_likelihood=round(ll, 3),
        log_likelihood_se=round(se, 3),
        train_log_likelihood=round(train_ll, 3),
        train_points=min(args.train_points, n),
        independent_pixels=round(independent, 3),
        epochs=run["epoch"],
        train_seconds=round(run["train_seconds"], 1),
        parameters=parameters,
    )
    if options:
        record["first_mask_log_likelihood"] = round(mean_log_prob(ar, test_x, mask=0)[0], 3)
    record.update(eval_seconds=round(time.perf_counter() - t0, 1), wall_s=round(time.perf_counter() - t_start, 1))
    record["published_test_nll"] = PUBLISHED[args.model]
    record["note"] = f"published figures are on the test split; this score is on {args.split!r}"
    emit(**record)
    return ar, run


if __name__ == "__main__":
    main()
