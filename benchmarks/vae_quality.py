"""Quality: the VAE 784-200-200-50 of Burda et al. (2016) on binarized MNIST, trained for a time budget through SVI.

Model: ``VAE(784, 50, (200, 200))`` (tanh, Bernoulli decoder) with an amortized guide (``--guide diagonal`` or
``iaf``), trained on the ``train`` split (50,000 images) by an unmodified ``pyro.infer.SVI`` on the fast path:
``dgm_ppl.infer.JitTrace_ELBO`` (or ``JitTraceMeanField_ELBO``, the analytic KL, with ``--elbo meanfield``; or
``IWAE(k, jit=True)`` with ``--elbo iwaeK``) and ``dgm_ppl.optim.Adam``. The learning rate decays exponentially from
``--lr`` to ``--final-lr`` over the planned epochs; ``--warmup-epochs`` scales the KL term by a β rising linearly
from 0 to 1 (``AnnealedELBO``). Every ``--eval-every`` epochs a bound on log p(x) of ``--monitor-points`` validation
images is printed, and the model with the best one is kept (``--keep-best``: scored instead of the last). The bound
is the training objective's: the ELBO (``valid_elbo``) for ``trace`` and ``meanfield``, the k-sample IWAE bound
(``valid_iwaeK``) for ``iwaeK``, since IWAE training with a large k widens the guide into a proposal and lowers its
single-sample ELBO while the likelihood improves; ``--monitor-k`` overrides k. A stage resumed with another monitor
starts its best-model record afresh, as bounds with different k are not comparable.

``--time-budget SECONDS`` plans the number of epochs from the second epoch's time (the first one compiles), so that
the learning-rate decay ends within the budget, and stops early if the budget runs out (the plan then ends there,
and the run counts as finished). ``--checkpoint PATH`` writes the decoder, the guide, the optimizer, the RNG states
and the counters after every epoch (atomically); ``--resume PATH`` continues such a run exactly. ``--resume PATH
--extend N`` continues a run that has finished its plan with a new stage of ``N`` epochs (or what fits
``--time-budget``, counted from the stage's start), over which the learning rate decays again from ``--lr`` to
``--final-lr``: a warm restart, as in the staged schedule of Burda et al. The optimizer's moments carry over.
``--average-from F`` keeps the running mean of the decoder's and the guide's parameters over every update from
fraction F of the stage's planned epochs on (Polyak averaging, as in ``rbm_quality.py``); the averaged model is
scored after the last one (``model="averaged"``), saved with it, and checkpointed with the run.
``--save PATH`` writes the final (or best) model; ``--load PATH`` scores a saved model (and its averaged model)
without training; ``--init PATH`` starts a new run from a saved model's parameters (a fresh optimizer), for a
stage whose options a ``--resume`` cannot change. ``--weight-decay W`` shrinks every parameter by ``lr * W`` per
update, decoupled from Adam's moments (AdamW, Loshchilov & Hutter 2019): a regularizer against the fixed
binarization's over-fitting. It is fixed for a run: a ``--resume`` keeps the checkpoint's.

Score: importance-sampled log p(x) with ``--eval-samples`` samples from the guide (``dgm_ppl.evaluation.
log_likelihood``) on the first ``--eval-points`` images of ``--split``: NLL in nats with its standard error.

    OMP_NUM_THREADS=1 python benchmarks/vae_quality.py --data ../shared/data/binarized_mnist.npz \\
        --time-budget 5400 --checkpoint outputs/vae_quality.ckpt --save benchmarks/models/vae.pt --threads 1
    OMP_NUM_THREADS=1 python benchmarks/vae_quality.py --data ../shared/data/binarized_mnist.npz \\
        --load benchmarks/models/vae.pt --eval-points 10000

Published (test set, 5,000 samples): VAE 88.71 and IWAE (k=50) 87.10 nats after 3,280 passes (Burda et al. 2016,
Table 1). Prints one JSON line per epoch and per score.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
import warnings

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl import load_checkpoint, save_checkpoint
from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.evaluation import log_likelihood
from dgm_ppl.infer import IWAE, AnnealedELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, linear_warmup
from dgm_ppl.models import VAE
from dgm_ppl.optim import Adam, AdamW

X_DIM, Z_DIM, HIDDEN = 784, 50, (200, 200)


def emit(**record):
    print(json.dumps(record), flush=True)


def build(args, example: torch.Tensor, num_data: int):
    """A fresh VAE and guide; the guide's heads are built by one call on ``example``."""
    vae = VAE(X_DIM, Z_DIM, HIDDEN)
    kwargs = {"num_flows": args.num_flows} if args.guide == "iaf" else {}
    guide = vae.guide(args.guide, **kwargs)
    guide(example, num_data=num_data)
    return vae, guide


def make_elbo(args, steps_per_epoch: int):
    if args.elbo == "trace":
        elbo = JitTrace_ELBO(ignore_jit_warnings=True) if args.jit else Trace_ELBO()
    elif args.elbo == "meanfield":
        elbo = JitTraceMeanField_ELBO(ignore_jit_warnings=True)
    elif args.elbo.startswith("iwae") and args.elbo[4:].isdigit():
        elbo = IWAE(int(args.elbo[4:]), vectorize_particles=True, max_plate_nesting=1, jit=args.jit)
    else:
        raise SystemExit(f"--elbo: choose trace, meanfield or iwaeK, got {args.elbo!r}")
    if args.warmup_epochs > 0:
        elbo = AnnealedELBO(elbo, beta=linear_warmup(args.warmup_epochs * steps_per_epoch))
    return elbo


def monitor_k(args) -> int:
    """Particles of the validation bound: ``--monitor-k``, else the training objective's k (1 for the ELBO)."""
    if args.monitor_k is not None:
        if args.monitor_k < 1:
            raise SystemExit(f"--monitor-k: give k >= 1, got {args.monitor_k}")
        return args.monitor_k
    return int(args.elbo[4:]) if args.elbo.startswith("iwae") and args.elbo[4:].isdigit() else 1


@torch.no_grad()
def monitor(vae, guide, x: torch.Tensor, k: int = 1) -> float:
    """Mean per image of ``x`` of the k-sample importance-weighted bound on log p(x) (k = 1: the ELBO), in nats.

    The images go through in chunks of about 10,000 particles, so a large k does not hold k copies of ``x`` at once.
    """
    bound = Trace_ELBO() if k == 1 else IWAE(k, vectorize_particles=True, max_plate_nesting=1)
    step = max(1, 10_000 // k)
    total = sum(bound.loss(vae.model, guide, chunk, num_data=chunk.shape[0]) for chunk in x.split(step))
    return -total / x.shape[0]


def parameters(vae, guide) -> dict[str, torch.Tensor]:
    """The decoder's and the guide's parameters by name (``decoder.*``, ``guide.*``): the averaged tensors."""
    return {f"{prefix}.{name}": p for prefix, module in (("decoder", vae), ("guide", guide))
            for name, p in module.named_parameters()}  # fmt: skip


@torch.no_grad()
def fold(average: dict[str, torch.Tensor], current: dict[str, torch.Tensor], count: int) -> None:
    """Fold ``current`` into ``average``, the running mean of ``count - 1`` iterates (count 1 overwrites it)."""
    for name, value in current.items():
        if count == 1:
            average[name] = value.detach().clone()
        else:
            average[name].add_(value.detach() - average[name], alpha=1.0 / count)


@torch.no_grad()
def load_average(vae, guide, average: dict[str, torch.Tensor]) -> None:
    for name, p in parameters(vae, guide).items():
        p.copy_(average[name])


def load_model(args, path: str) -> dict:
    """A model written by ``--save``; its guide's kind and flow count replace ``args``' (they shape the guide)."""
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no such model file (write one with --save)")
    saved = torch.load(path, weights_only=False)
    for key in ("guide", "num_flows"):
        setattr(args, key, saved["config"][key])
    return saved


def score(vae, guide, x: torch.Tensor, args, common: dict, label: str) -> None:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # large Pareto k warnings: the ESS is reported
        est = log_likelihood(
            vae.model, guide, x, num_samples=args.eval_samples, batch_size=100, particle_batch_size=500,
            progress=args.progress,
        )  # fmt: skip
    log_p = est.log_p.double()
    emit(
        **common,
        event="score",
        model=label,
        split=args.split,
        points=x.shape[0],
        samples=args.eval_samples,
        nll=round(-log_p.mean().item(), 3),
        nll_se=round(log_p.std().item() / math.sqrt(x.shape[0]), 3) if x.shape[0] > 1 else None,
        ess_median=round(est.ess.double().median().item(), 1),
        eval_seconds=round(time.perf_counter() - t0, 1),
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help=".npz with 'train' and the scored split (N x 784, binary)")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--guide", choices=["diagonal", "iaf"], default="diagonal")
    ap.add_argument("--num-flows", type=int, default=2, help="IAF steps for --guide iaf")
    ap.add_argument("--elbo", default="meanfield", help="trace, meanfield (analytic KL) or iwaeK (e.g. iwae5)")
    ap.add_argument("--no-jit", dest="jit", action="store_false", help="plain Trace_ELBO / IWAE without JIT")
    ap.add_argument("--epochs", type=int, default=1000, help="planned epochs (or fewer, with --time-budget)")
    ap.add_argument("--time-budget", type=float, help="seconds of training: plan the epochs to fit and stop there")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--final-lr", type=float, default=1e-4)
    ap.add_argument("--warmup-epochs", type=int, default=0, help="KL annealing: β from 0 to 1 over these epochs")
    ap.add_argument("--eval-every", type=int, default=10, help="epochs between validation ELBO checks")
    ap.add_argument("--monitor-points", type=int, default=2000, help="validation images for the bound check")
    ap.add_argument("--average-from", type=float, metavar="F", help="Polyak averaging from fraction F of the stage")
    ap.add_argument("--monitor-k", type=int, help="particles of the validation bound (default: the objective's k)")
    ap.add_argument("--keep-best", action="store_true", help="score the model with the best validation bound")
    ap.add_argument("--eval-points", type=int, default=10000, help="first images of --split to score")
    ap.add_argument("--eval-samples", type=int, default=5000, help="importance samples per image")
    ap.add_argument("--checkpoint", help="write a resumable checkpoint here after every epoch")
    ap.add_argument("--resume", help="continue the run saved in this checkpoint")
    ap.add_argument("--extend", type=int, help="with --resume of a finished run: a new stage of this many epochs")
    ap.add_argument("--stop-after", type=int, help="stop after this many epochs (as if killed there)")
    ap.add_argument("--save", help="write the trained (or best) model here")
    ap.add_argument("--load", help="score a model written by --save instead of training")
    ap.add_argument("--init", help="start a new run from the parameters of a model written by --save")
    ap.add_argument("--weight-decay", type=float, help="decoupled weight decay (AdamW); default 0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    if args.average_from is not None and not 0 <= args.average_from < 1:
        ap.error("--average-from must be in [0, 1)")
    if args.weight_decay is not None and not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        ap.error("--weight-decay must be a finite number >= 0")
    if args.init and (args.resume or args.load):
        ap.error("--init starts a new run: not with --resume or --load")
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    train_x = load_binarized_mnist(args.data, "train")
    test_x = load_binarized_mnist(args.data, args.split)[: args.eval_points]
    valid_x = load_binarized_mnist(args.data, "valid")[: args.monitor_points]
    n, b = train_x.shape[0], args.batch_size
    steps_per_epoch = math.ceil(n / b)
    common = dict(benchmark="vae_quality", guide=args.guide, elbo=args.elbo, threads=torch.get_num_threads())
    k_monitor = monitor_k(args)
    monitor_key = "valid_elbo" if k_monitor == 1 else f"valid_iwae{k_monitor}"

    if args.load:
        saved = load_model(args, args.load)
        vae, guide = build(args, train_x[:b], n)
        vae.load_state_dict(saved["decoder"])
        guide.load_state_dict(saved["guide"])
        emit(**common, event="loaded", path=args.load, config=saved["config"], epochs=saved["epochs"])
        score(vae, guide, test_x, args, common, "loaded")
        if saved.get("averaged"):
            load_average(vae, guide, saved["averaged"]["parameters"])
            score(vae, guide, test_x, args, common, "averaged")
        return vae, guide, saved

    init = load_model(args, args.init) if args.init else None
    vae, guide = build(args, train_x[:b], n)
    if init is not None:
        vae.load_state_dict(init["decoder"])
        guide.load_state_dict(init["guide"])
        emit(**common, event="initialized", path=args.init, epochs=init["epochs"])
    weight_decay = args.weight_decay or 0.0
    if args.resume:
        saved_decay = torch.load(args.resume, weights_only=False)["extra"].get("weight_decay", 0.0)
        if args.weight_decay is not None and args.weight_decay != saved_decay:
            raise SystemExit(
                f"--weight-decay {args.weight_decay}: {args.resume} was trained with {saved_decay}, and a run keeps "
                "its weight decay; start a new run from its saved model with --init to change it"
            )
        weight_decay = saved_decay
    optim = AdamW({"lr": args.lr, "weight_decay": weight_decay}) if weight_decay else Adam({"lr": args.lr})
    elbo = make_elbo(args, steps_per_epoch)
    svi = SVI(vae.model, guide, optim, elbo)
    state = {"epoch": 0, "planned": args.epochs, "seconds": 0.0, "history": [], "best": None, "best_elbo": None,
             "monitor_k": k_monitor, "average": {}, "averaged": 0, "weight_decay": weight_decay}  # fmt: skip
    if args.extend is not None and (not args.resume or args.extend < 2):
        raise SystemExit("--extend N: give N >= 2 epochs and the checkpoint of a finished run to --resume")
    if args.resume:
        state = load_checkpoint(args.resume, {"decoder": vae, "guide": guide}, optim)
        if isinstance(elbo, AnnealedELBO):
            elbo.step = state["epoch"] * steps_per_epoch  # the β schedule's step count
        if args.extend is not None:
            if state["epoch"] < state["planned"]:
                raise SystemExit(
                    f"--extend: {args.resume} stopped at epoch {state['epoch']} of {state['planned']}; "
                    "resume it without --extend to finish its plan first"
                )
            state.update(stage_start=state["epoch"], stage_seconds=state["seconds"], stage_epochs=args.extend)
            state.update(average={}, averaged=0)  # each stage averages its own iterates
            state["planned"] = state["epoch"] + args.extend
        if state.get("monitor_k", 1) != k_monitor and state["best"] is not None:
            # a best model chosen by another bound: not comparable, so this run's record starts afresh
            emit(**common, event="monitor_changed", previous_k=state.get("monitor_k", 1), k=k_monitor,
                 dropped_best_epoch=state["best"]["epoch"])  # fmt: skip
            state.update(best=None, best_elbo=None)
        state["monitor_k"] = k_monitor
        state["weight_decay"] = weight_decay
        state.setdefault("average", {})
        state.setdefault("averaged", 0)
        emit(**common, event="resumed", path=args.resume, epoch=state["epoch"], planned=state["planned"])
    start, start_seconds = state.get("stage_start", 0), state.get("stage_seconds", 0.0)
    current = parameters(vae, guide)

    def write_checkpoint():
        if args.checkpoint:
            save_checkpoint(args.checkpoint, {"decoder": vae, "guide": guide}, optim, **state)

    while state["epoch"] < state["planned"]:
        if args.time_budget is not None and state["seconds"] - start_seconds >= args.time_budget:
            state["planned"] = state["epoch"]  # the budget ends the plan: a finished run, which --extend may continue
            write_checkpoint()
            break
        if args.stop_after is not None and state["epoch"] >= args.stop_after:
            return vae, guide, state
        epoch = state["epoch"]
        frac = (epoch - start) / max(1, state["planned"] - start - 1)
        lr = args.lr * (args.final_lr / args.lr) ** frac
        t0 = time.perf_counter()
        order = torch.randperm(n)
        total = 0.0
        optim.set_lr(lr)
        averaging = args.average_from is not None and epoch - start >= args.average_from * (state["planned"] - start)
        if not averaging and state["averaged"]:
            state.update(average={}, averaged=0)  # a longer plan moved the window's start past this epoch
        for i in range(0, n, b):
            loss = svi.step(train_x[order[i : i + b]], num_data=n)
            if not math.isfinite(loss):
                raise RuntimeError(f"the loss became {loss} at epoch {epoch}, step {i // b}: diverged")
            total += loss
            if averaging:
                state["averaged"] += 1
                fold(state["average"], current, state["averaged"])
        epoch_seconds = time.perf_counter() - t0
        state["seconds"] += epoch_seconds
        state["epoch"] = epoch + 1
        if epoch == start + 1 and args.time_budget is not None:  # the stage's second epoch: the first one compiles
            fit = 2 + int((args.time_budget - (state["seconds"] - start_seconds)) / (1.02 * epoch_seconds))
            state["planned"] = start + max(2, min(state.get("stage_epochs", args.epochs), fit))
        record = dict(epoch=epoch + 1, lr=lr, train_loss=round(total / steps_per_epoch / n, 3))
        if state["averaged"]:
            record["averaged"] = state["averaged"]
        if (epoch + 1) % args.eval_every == 0 or state["epoch"] == state["planned"]:
            bound = monitor(vae, guide, valid_x, k_monitor)
            record[monitor_key] = round(bound, 3)
            if state["best_elbo"] is None or bound > state["best_elbo"]:
                state["best_elbo"] = bound
                state["best"] = {"epoch": epoch + 1, "decoder": copy.deepcopy(vae.state_dict()),
                                 "guide": copy.deepcopy(guide.state_dict())}  # fmt: skip
        state["history"].append(record)
        emit(**common, event="epoch", planned=state["planned"], seconds=round(state["seconds"], 1), **record)
        write_checkpoint()

    emit(**common, event="trained", epochs=state["epoch"], planned=state["planned"],
         train_seconds=round(state["seconds"], 1), best_epoch=state["best"] and state["best"]["epoch"],
         averaged_updates=state["averaged"])  # fmt: skip
    if args.keep_best and state["best"] is not None:
        vae.load_state_dict(state["best"]["decoder"])
        guide.load_state_dict(state["best"]["guide"])
    averaged = {"parameters": state["average"], "updates": state["averaged"]} if state["averaged"] else None
    if args.save:
        os.makedirs(os.path.dirname(os.path.abspath(args.save)), exist_ok=True)
        torch.save(
            {"config": vars(args), "epochs": state["epoch"], "train_seconds": state["seconds"],
             "decoder": vae.state_dict(), "guide": guide.state_dict(), "averaged": averaged},
            args.save,
        )  # fmt: skip
    score(vae, guide, test_x, args, common, "best" if args.keep_best else "last")
    if averaged:
        scored = {name: p.detach().clone() for name, p in current.items()}
        load_average(vae, guide, state["average"])
        score(vae, guide, test_x, args, common, "averaged")
        load_average(vae, guide, scored)  # the modules are returned as trained (or best)
    return vae, guide, state


if __name__ == "__main__":
    main()
