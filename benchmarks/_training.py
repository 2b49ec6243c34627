"""What the quality benchmarks (``rbm_quality.py``, ``dbm_quality.py``) share: JSON lines, the learning-rate and
Gibbs-sweep schedules as closed forms of (epoch, planned epochs), the plan that fits a time budget, and an SVI wrapper
with a hook after each step."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable

import torch

from dgm_ppl.energy import (
    SparsityTarget,
    ais_log_partition,
    average_log_likelihood,
    max_norm_,
    reverse_ais_log_partition,
)
from dgm_ppl.optim import SGD, Adam, AdamW

ADAM_BETAS = (0.9, 0.999)  # torch's and Pyro's default


def add_regularizer_args(ap) -> None:
    """``--max-norm``, ``--sparsity-targets``, ``--sparsity-costs``, ``--sparsity-damping``, ``--bias-decay`` and
    ``--adam-betas``, shared by the RBM and DBM benchmarks."""
    ap.add_argument(
        "--max-norm", type=float, default=None, metavar="C",
        help="after every update, bound each hidden unit's incoming weight vector to norm C (max_norm_)",
    )  # fmt: skip
    ap.add_argument(
        "--sparsity-targets", type=float, nargs="+", default=None, metavar="P",
        help="target mean activation of each hidden layer (one value for all): SparsityTarget",
    )  # fmt: skip
    ap.add_argument(
        "--sparsity-costs", type=float, nargs="+", default=[1e-3], metavar="C", help="per datum, one value for all"
    )
    ap.add_argument("--sparsity-damping", type=float, default=0.9)
    ap.add_argument(
        "--bias-decay", type=float, default=None, metavar="WD",
        help="per datum L2 on the biases (default: --weight-decay's; 0 decays the weights only)",
    )  # fmt: skip
    ap.add_argument(
        "--adam-betas", type=float, nargs=2, default=None, metavar=("B1", "B2"),
        help=f"Adam's (and AdamW's) decay rates of its moments (default {ADAM_BETAS[0]} {ADAM_BETAS[1]})",
    )  # fmt: skip


def check_regularizer_args(ap, args) -> None:
    if args.max_norm is not None and not args.max_norm > 0:
        ap.error("--max-norm must be positive")
    if args.bias_decay is not None and not args.bias_decay >= 0:
        ap.error("--bias-decay must be >= 0")
    if args.adam_betas is not None:
        if not all(0 <= b < 1 for b in args.adam_betas):
            ap.error("--adam-betas must be in [0, 1)")
        if args.optimizer == "sgd":
            ap.error("--adam-betas is for --optimizer adam or adamw")


def optimizer(args, n: int, lr: float):
    """The Pyro optimizer that ``--optimizer`` names, with ``--weight-decay`` and ``--bias-decay``.

    ``adam``: Adam with the decay as an L2 term per datum, which Adam divides by the root of its second moment like
    the gradient, so it pulls hardest on the parameters whose gradient is smallest. ``adamw``: AdamW (Loshchilov &
    Hutter 2019), whose decay is decoupled from the gradient: every update multiplies a weight by ``1 - lr * WD``, the
    same pull for every weight, as Hinton's weight cost does under SGD. ``sgd``: SGD with ``--momentum`` and the L2
    term per datum; ``lr`` is then per datum (divided by ``n``, since the SVI gradient is ``n`` times the per-datum
    one). ``--adam-betas`` sets Adam's and AdamW's decay rates of the moments."""
    if args.optimizer == "sgd":
        return SGD(per_parameter_args(args, n, lr=lr / n, momentum=args.momentum))
    betas = tuple(args.adam_betas or ADAM_BETAS)
    if args.optimizer == "adamw":
        return AdamW(per_parameter_args(args, 1, lr=lr, betas=betas))
    return Adam(per_parameter_args(args, n, lr=lr, betas=betas))


def check_resumed_optimizer(args, config: dict, path: str) -> None:
    """Refuse to continue a checkpoint that was written under another ``--optimizer`` or other ``--adam-betas``: its
    state (moments, momentum) belongs to that optimizer, Adam's and AdamW's would load into each other silently while
    decaying the weights differently, and the loaded state would bring back the betas it was written with. ``config``
    is the checkpoint's (it is checked after the load, which changes nothing on disk); checkpoints written before
    ``--optimizer`` existed were Adam's, and those written before ``--adam-betas`` had the default betas."""
    written = config.get("optimizer", "adam")
    if written != args.optimizer:
        raise ValueError(
            f"{path} was written with --optimizer {written}: resume it with --optimizer {written} "
            f"(not {args.optimizer}), or start a new run"
        )
    wrote, given = (list(b or ADAM_BETAS) for b in (config.get("adam_betas"), args.adam_betas))
    if wrote != given:
        raise ValueError(
            f"{path} was written with --adam-betas {' '.join(map(str, wrote))}: resume it with them "
            f"(not {' '.join(map(str, given))}), or start a new run"
        )


def is_bias(name: str) -> bool:
    """Whether the parameter called ``name`` (as ``named_parameters`` spells it) is a bias rather than a weight."""
    return "bias" in name.rsplit(".", 1)[-1]


def per_parameter_args(args, n: int, **fixed) -> Callable[[str], dict]:
    """Pyro optimizer arguments per parameter name: ``fixed`` plus the weight decay, ``--weight-decay`` on the
    weights and ``--bias-decay`` (default the same) on the biases, both times ``n``: for an L2 term per datum ``n``
    is the training set's size, since the SVI gradient is ``n`` times the per-datum one; for AdamW's decoupled decay
    (a shrink of ``lr * decay`` per update, whatever the gradient's scale) ``n`` is 1."""
    bias_decay = args.weight_decay if args.bias_decay is None else args.bias_decay

    def optim_args(name: str) -> dict:
        return {**fixed, "weight_decay": (bias_decay if is_bias(name) else args.weight_decay) * n}

    return optim_args


def sparsity_target(args, hidden_sizes: list[int], device) -> SparsityTarget | None:
    """The ``SparsityTarget`` of ``--sparsity-*`` over the hidden layers (None without ``--sparsity-targets``)."""
    if not args.sparsity_targets:
        return None
    per_layer = [v if len(v) > 1 else v * len(hidden_sizes) for v in (args.sparsity_targets, args.sparsity_costs)]
    return SparsityTarget(hidden_sizes, *per_layer, damping=args.sparsity_damping).to(device)


def with_max_norm(after_step: Callable[[], None], weights: list[torch.Tensor], max_norm: float | None):
    """``after_step`` preceded by the max-norm projection of ``weights`` (columns: one per hidden unit), so that
    an averaged iterate is an average of projected ones; ``after_step`` itself without ``max_norm``."""
    if max_norm is None:
        return after_step

    def project_then(*args) -> None:
        for w in weights:
            max_norm_(w, max_norm)
        after_step(*args)

    return project_then


def optional_modules(**modules) -> dict:
    """A checkpoint's modules, without those this run does not have (None)."""
    return {k: m for k, m in modules.items() if m is not None}


def emit(**record):
    print(json.dumps(record), flush=True)


def learning_rate(args, epoch: int, planned: int) -> float:
    """The learning rate of ``epoch`` (0-based) of ``planned``: ``--lr`` at the first, ``--final-lr`` at the last."""
    t = min(1.0, epoch / max(1, planned - 1))
    if args.schedule == "linear":
        return args.lr + (args.final_lr - args.lr) * t
    return args.lr * (args.final_lr / args.lr) ** t


def gibbs_steps(args, epoch: int, planned: int) -> int:
    if not args.steps_schedule:
        return args.steps
    start, end = args.steps_schedule
    t = min(1.0, epoch / max(1, planned - 1))
    return max(1, round(start + (end - start) * t))


def replan(args, epochs_done: int, elapsed: float, epoch_seconds: float, epoch_steps: int) -> int:
    """Planned epochs under ``--time-budget``: those done plus as many as fit in the remaining budget, at
    the speed of an epoch that took ``epoch_seconds`` with ``epoch_steps`` sweeps per update (an update
    costs about 1 + sweeps sweeps, which matters under ``--steps-schedule``); capped by ``--epochs``."""
    remaining = args.time_budget - elapsed
    cap = args.epochs or 10**5
    if not args.steps_schedule:
        more = math.floor(max(0.0, remaining) / max(epoch_seconds, 1e-9))
        return max(epochs_done, min(epochs_done + more, cap))
    unit = epoch_seconds / (1 + epoch_steps)

    def fits(planned):
        return sum(unit * (1 + gibbs_steps(args, e, planned)) for e in range(epochs_done, planned)) <= remaining

    if not fits(epochs_done + 1):
        return epochs_done
    lo, hi = epochs_done + 1, epochs_done + 2  # the largest plan that fits: double, then bisect
    while hi <= cap and fits(hi):
        lo, hi = hi, 2 * hi
    hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


class StepHook:
    """Wraps an SVI object: ``step`` runs ``svi.step`` and then ``after_step()`` (train() only calls ``step``).
    Times the process's first step (set-up, warm-up), which the epoch-time estimate of the plan leaves out."""

    def __init__(self, svi, after_step):
        self.svi, self.after_step = svi, after_step
        self.first_step_seconds = None

    def step(self, *args, **kwargs):
        t0 = time.perf_counter() if self.first_step_seconds is None else None
        loss = self.svi.step(*args, **kwargs)
        if t0 is not None:
            self.first_step_seconds = time.perf_counter() - t0
        self.after_step()
        return loss


def typical_epoch_seconds(seconds: float, hook: StepHook, first_epoch: bool, steps_per_epoch: int) -> float:
    """An epoch's time without the warm-up of the process's first step (for planning only)."""
    if not first_epoch or steps_per_epoch < 2 or hook.first_step_seconds is None:
        return seconds
    return (seconds - hook.first_step_seconds) * steps_per_epoch / (steps_per_epoch - 1)


def steady_epoch_seconds(run: dict, seconds: float, steps: int, window: int = 5) -> float:
    """The epoch time to plan on: the median, over the last ``window`` epochs, of an epoch's time per unit of an
    update's cost (1 + sweeps), times the cost at ``steps`` sweeps. One epoch slowed by another process then does not
    swing the plan, and the rate schedule and averaging window with it; a lasting change moves it within a few epochs.
    The recent times live in ``run["recent_epoch_units"]``, and so in the checkpoint."""
    recent = [*run.get("recent_epoch_units", []), seconds / (1 + steps)][-window:]
    run["recent_epoch_units"] = recent
    return statistics.median(recent) * (1 + steps)


def tempering_betas(k: int, spacing: str, lowest: float) -> torch.Tensor:
    """K increasing inverse temperatures from ``lowest`` to exactly 1: equally spaced (``linear``) or in ratio
    (``geometric``, ``lowest > 0``), the ladder of ``ParallelTempering`` in the RBM benchmarks."""
    if spacing == "geometric":
        betas = torch.logspace(math.log10(lowest), 0.0, k)
    else:
        betas = torch.linspace(lowest, 1.0, k)
    betas[-1] = 1.0
    return betas


def float32_state(module) -> dict:
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in module.state_dict().items()}


def add_averaging_arg(ap) -> None:
    """``--average-from F [F ...]``, shared by the RBM and DBM benchmarks."""
    ap.add_argument(
        "--average-from", type=float, nargs="+", default=None, metavar="F",
        help="Polyak averaging from fraction F of the planned updates; several fractions keep one average each "
        "(one run, several windows; the first is the 'averaged' model)",
    )  # fmt: skip


def check_averaging_arg(ap, args) -> None:
    if args.average_from is not None and not all(0 <= f < 1 for f in args.average_from):
        ap.error("--average-from must be in [0, 1)")


def window_label(average_from: list[float], i: int) -> str:
    """The score label of averaging window ``i``: ``averaged`` for the first, ``averaged_from_F`` for the others."""
    return "averaged" if i == 0 else f"averaged_from_{average_from[i]:g}"


def averages_as_modules(avgs: list) -> dict:
    """A checkpoint's names of the averaged models: ``avg`` for the first window (as before there were several),
    ``avg_1``, ``avg_2``, ... for the others."""
    return {("avg" if i == 0 else f"avg_{i}"): a for i, a in enumerate(avgs)}


def averages_state(avgs: list) -> dict:
    """The averaged models' entries of a ``--save`` file (float32): ``avg`` (the first window's, or None) and
    ``avg_windows`` (the others')."""
    return {"avg": float32_state(avgs[0]) if avgs else None, "avg_windows": [float32_state(a) for a in avgs[1:]]}


def new_averages(new: Callable[[], torch.nn.Module], count: int) -> list:
    """``count`` models from ``new()``, one per averaging window. Those after the first are built without drawing from
    the global random stream, so that extra windows leave the run (and a one-window run as it was) unchanged."""
    if count == 0:
        return []
    first = new()
    with torch.random.fork_rng(devices=[]):
        return [first, *(new() for _ in range(count - 1))]


def load_averages(saved: dict, new: Callable[[], torch.nn.Module]) -> list:
    """The averaged models of a ``--save`` file, each a ``new()`` model with the saved state (none without)."""
    states = [saved["avg"], *saved.get("avg_windows", [])] if saved.get("avg") is not None else []
    avgs = new_averages(new, len(states))
    for avg, state in zip(avgs, states):
        avg.load_state_dict(state)
    return avgs


def score_averages(avgs: list, config: dict, run: dict, score: Callable[[object, str, dict], None]) -> None:
    """``score(model, label, extra)`` for each averaged model that averaged at least one iterate (files written before
    there were several windows hold one fraction and one count)."""
    fractions = config.get("average_from")
    fractions = [fractions] if not isinstance(fractions, list) else fractions
    counts = run.get("averaged_windows") or [run.get("averaged")]
    for i, (model, count) in enumerate(zip(avgs, counts)):
        if count is None or count > 0:
            score(model, window_label(fractions, i), {"averaged_updates": count, "average_from": fractions[i]})


def zeroed(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every parameter set to zero (an empty running mean)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


@torch.no_grad()
def fold_into_averages(
    avgs: list, model, tensors: Callable[[object], list[torch.Tensor]], due: list[tuple[int, int]]
) -> None:
    r"""Polyak averaging: for every ``(i, count)`` in ``due``, fold the iterate's parameters in standard (uncentered)
    form, ``tensors(model.params())`` computed once, into the running mean of ``count - 1`` iterates that the
    uncentered ``avgs[i]`` holds, whose ``params()`` are its own tensors:
    :math:`\bar\theta \leftarrow \bar\theta + (\theta - \bar\theta) / \text{count}` (count 1 overwrites)."""
    current = tensors(model.params())
    for i, count in due:
        for dst, src in zip(tensors(avgs[i].params()), current, strict=True):
            dst.add_(src.detach() - dst, alpha=1.0 / count)


def averaging_step(
    run: dict,
    average_from: list[float] | None,
    steps_per_epoch: int,
    fold: Callable[[list[tuple[int, int]]], None] | None,
) -> Callable[[], None]:
    """The hook run after each SVI step: counts the updates in ``run["updates"]`` and folds the current iterate into
    the running mean of every averaging window it falls in (updates past ``average_from[i]`` of the planned ones) by
    one call ``fold([(i, count), ...])``, so that the iterate's parameters are computed once per step however many
    windows are open (count 1 overwrites the average). ``run["averaged_windows"]`` holds the windows' counts and
    ``run["averaged"]`` the first's. A longer plan that moves a window's start past the current update restarts its
    average when the window comes."""
    if fold is not None and not run.get("averaged_windows"):  # a fresh run, or a checkpoint of one window's count
        run["averaged_windows"] = [run["averaged"]] + [0] * (len(average_from) - 1)

    def after_step() -> None:
        run["updates"] += 1
        if fold is None:
            return
        counts = run["averaged_windows"]
        due = []
        for i, fraction in enumerate(average_from):
            if run["updates"] > fraction * run["planned"] * steps_per_epoch:
                counts[i] += 1
                due.append((i, counts[i]))
            else:
                counts[i] = 0
        if due:
            fold(due)
        run["averaged"] = counts[0]

    return after_step


#: nats of log Z between forward and reverse AIS above which a score line carries a ``warning``
AIS_DISAGREEMENT = 1.0


def ais_score(
    model,
    label: str,
    args,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    common: dict,
    extra: dict,
    *,
    reverse_from: Callable[[], torch.Tensor | list[torch.Tensor]] | None = None,
    key: str = "log_likelihood",
    train_points: int | None = None,
    estimators: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> None:
    """Emit the score line of ``model``: AIS log Z (``args.ais_chains`` runs of ``args.ais_betas`` betas, base rates
    from ``train_x``), the mean ``key`` (log-likelihood, or its bound) of ``test_x`` with the +-3 sd interval, that of
    the first ``train_points`` training images, and reverse AIS from the states ``reverse_from()`` when given.
    ``estimators`` maps names to other estimates of the unnormalized ``log p*(v)`` of a batch; each adds the mean of
    ``name`` minus the AIS log Z over ``test_x`` (and the seconds it took)."""
    t0 = time.perf_counter()
    ais = ais_log_partition(model, args.ais_chains, args.ais_betas, data=train_x, progress=args.progress)
    ais_seconds = time.perf_counter() - t0
    ll = average_log_likelihood(model, test_x, ais.log_z)
    lo, hi = ais.interval(3.0)
    record = dict(
        **common,
        event="score",
        model=label,
        split=args.split,
        log_z=round(ais.log_z, 3),
        log_z_stderr=round(ais.stderr, 4),
        **{
            key: round(ll, 3),
            f"{key}_3sd": [round(ll - (hi - ais.log_z), 3), round(ll + (ais.log_z - lo), 3)],
            f"train_{key}": round(average_log_likelihood(model, train_x[:train_points], ais.log_z), 3),
        },
    )
    for name, estimate in (estimators or {}).items():
        t1, total = time.perf_counter(), 0.0
        for batch in test_x.split(100):
            total += float(estimate(batch).double().sum())
        record[name] = round(total / len(test_x) - ais.log_z, 3)
        record[f"{name}_seconds"] = round(time.perf_counter() - t1, 1)
    if reverse_from is not None:
        rev = reverse_ais_log_partition(model, reverse_from(), args.ais_betas, data=train_x)
        record.update(
            reverse_ais_log_z=round(rev.log_z, 3),
            **{f"reverse_ais_{key}": round(average_log_likelihood(model, test_x, rev.log_z), 3)},
        )
        gap = rev.log_z - ais.log_z
        if abs(gap) > AIS_DISAGREEMENT:
            # forward AIS is a stochastic lower bound on log Z, reverse AIS from the chains an upper one: far apart,
            # either AIS did not anneal, or (forward above reverse) the chains have missed a mode that AIS found
            record["warning"] = (
                f"forward and reverse AIS disagree on log Z by {gap:+.2f} nats (reverse - forward): the score is not "
                + ("reliable; rescore with more --ais-chains and --ais-betas" if gap > 0 else "reliable; the chains "
                   "may have missed a mode of the model that forward AIS found")
            )  # fmt: skip
    emit(**record, **extra, ais_seconds=round(ais_seconds, 1), ais_betas=args.ais_betas, ais_chains=args.ais_chains)
