"""dgm_ppl.optim: one torch optimizer over all SVI parameters, step for step the arithmetic of pyro.optim's
per-parameter optimizers, with its state format (checkpoints move both ways and resume bit-for-bit)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import dgm_ppl.optim as dopt
from dgm_ppl import load_checkpoint, save_checkpoint
from dgm_ppl.infer import DivergenceError, train

X, B = 5, 16


class Net(nn.Module):
    """A regression with several parameter tensors; ``extra`` is used only when ``use_extra`` (a late parameter)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(X, 8), nn.Tanh(), nn.Linear(8, 1))
        self.extra = nn.Linear(X, 1)
        self.log_scale = nn.Parameter(torch.zeros(()))


def make(use_extra=lambda step: True, seed: int = 0):
    torch.manual_seed(seed)
    net = Net()
    state = {"step": 0}

    def model(xy):
        pyro.module("net", net)
        x, y = xy[:, :X], xy[:, X]
        out = net.body(x).squeeze(-1)
        if use_extra(state["step"]):
            out = out + net.extra(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(out, net.log_scale.exp()), obs=y)
        state["step"] += 1

    return net, model, state


def data(seed: int = 1) -> torch.Tensor:
    """(64, X + 1): inputs and a noisy nonlinear response."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, X, generator=g, device="cpu")
    y = x.sum(-1).sin() + 0.1 * torch.randn(64, generator=g, device="cpu")
    return torch.cat([x, y[:, None]], -1).to(torch.get_default_device())


def batches(steps: int) -> list[torch.Tensor]:
    xy = data()
    return [xy[(i * B) % 64 :][:B] for i in range(steps)]


def params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def run(optim, steps: int = 6, use_extra=lambda step: True):
    """Params (by name) and losses after ``steps`` SVI steps from a fixed start and data."""
    pyro.clear_param_store()
    _, model, _ = make(use_extra)
    svi = SVI(model, lambda xy: None, optim, Trace_ELBO())
    losses = [svi.step(xy) for xy in batches(steps)]
    return params(), losses


def assert_params(a: dict, b: dict, exact: bool = True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


ARGS = {
    "adam": ({"lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 1e-3}, pyro.optim.Adam, dopt.Adam),
    "sgd": ({"lr": 0.02, "momentum": 0.9, "nesterov": True}, pyro.optim.SGD, dopt.SGD),
    "adagrad": ({"lr": 0.1}, pyro.optim.Adagrad, dopt.Adagrad),
    "rmsprop": ({"lr": 0.01, "momentum": 0.5}, pyro.optim.RMSprop, dopt.RMSprop),
}


@pytest.mark.parametrize("name", list(ARGS))
def test_same_trajectory_as_pyro_optim_bit_for_bit(name):
    args, pyro_cls, ours = ARGS[name]
    expected, expected_losses = run(pyro_cls(dict(args)))
    actual, losses = run(ours(dict(args)))
    assert losses == expected_losses
    assert_params(actual, expected)
    start = make()[0].body[0].weight
    assert not torch.equal(start, actual["net$$$body.0.weight"])


@pytest.mark.parametrize("kernel", ["foreach", "fused"])
def test_multi_tensor_kernels_agree_to_rounding(kernel):
    args = {"lr": 0.05, "betas": (0.8, 0.99)}
    expected, _ = run(pyro.optim.Adam(dict(args)))
    actual, _ = run(dopt.Adam({**args, kernel: True}))
    assert_params(actual, expected, exact=False)


def test_per_parameter_args_clipping_and_late_or_idle_parameters_as_pyro():
    def args(name):
        return {"lr": 0.1 if "extra" in name else 0.03, "betas": (0.9, 0.95)}

    clip = {"clip_norm": 0.5}

    def use_extra(step):  # the extra layer joins at step 2, sits out step 4
        return step >= 2 and step != 4

    expected, _ = run(pyro.optim.Adam(args, clip), steps=7, use_extra=use_extra)
    optim = dopt.Adam(args, clip)
    actual, _ = run(optim, steps=7, use_extra=use_extra)
    assert_params(actual, expected)
    assert len(optim.optimizer.param_groups) == 2  # one per distinct set of arguments


def test_schedulers_as_pyro():
    def sched(cls):
        return cls({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.05, "momentum": 0.5}, "gamma": 0.7})

    results = []
    for scheduler in (sched(pyro.optim.ExponentialLR), sched(dopt.ExponentialLR)):
        pyro.clear_param_store()
        _, model, _ = make()
        svi = SVI(model, lambda xy: None, scheduler, Trace_ELBO())
        for _ in range(3):
            for xy in batches(2):
                svi.step(xy)
            scheduler.step()
        results.append(params())
    assert_params(results[1], results[0])
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.7**3)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in scheduler.optimizer.param_groups]
    with pytest.raises(ValueError, match="scheduler cannot take a new parameter group"):
        scheduler.set_lr(lambda name: 0.1 if "extra" in name else 0.2)  # would split the one group
    assert [{k: v for k, v in g.items() if k != "params"} for g in scheduler.optimizer.param_groups] == groups


def make_optim(kind: str):
    if kind.endswith("sched"):
        cls = pyro.optim.ExponentialLR if kind.startswith("pyro") else dopt.ExponentialLR
        return cls({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.8})
    return (pyro.optim.Adam if kind == "pyro" else dopt.Adam)({"lr": 0.05})


@pytest.mark.parametrize(
    "writer,reader",
    [("dgm", "dgm"), ("pyro", "dgm"), ("dgm", "pyro"), ("dgm_sched", "dgm_sched"), ("pyro_sched", "dgm_sched")],
)
def test_checkpoints_resume_bit_for_bit_across_both_optimizers(tmp_path, writer, reader):
    """Train 3 steps (and a scheduler step), checkpoint, then 3 more steps; a fresh start resumed from the checkpoint,
    by either optimizer, ends exactly where the uninterrupted run does."""
    todo = batches(6)

    def epoch(svi, opt, part):
        for xy in part:
            svi.step(xy)
        if isinstance(opt, pyro.optim.lr_scheduler.PyroLRScheduler | dopt.MultiTensorLRScheduler):
            opt.step()

    pyro.clear_param_store()
    net, model, _ = make()
    opt = make_optim(writer)
    svi = SVI(model, lambda xy: None, opt, Trace_ELBO())
    epoch(svi, opt, todo[:3])
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"net": net}, opt)
    epoch(svi, opt, todo[3:])
    expected = params()

    pyro.clear_param_store()
    net, model, _ = make(seed=5)  # other weights: everything must come from the checkpoint
    opt = make_optim(reader)
    svi = SVI(model, lambda xy: None, opt, Trace_ELBO())
    load_checkpoint(path, {"net": net}, opt)
    epoch(svi, opt, todo[3:])
    assert_params(params(), expected)


def scheduled_pyro_adam(lrs, todo, decay=lambda name: 0.0, scale=lambda i, name: 1.0) -> dict[str, torch.Tensor]:
    """The reference by hand: ``pyro.optim.Adam`` with the rate ``lrs[i] * scale(i, name)`` set on each parameter's
    optimizer before step ``i`` (the late parameter ``extra`` joins at step 3), and the weight decay ``decay(name)``;
    the parameters after the steps."""
    pyro.clear_param_store()
    _, model, _ = make(use_extra=lambda step: step >= 3)
    state = {"i": 0}
    store = pyro.get_param_store()

    def args(module, name):
        full = f"{module}.{name}"
        return {"lr": lrs[state["i"]] * scale(state["i"], full), "weight_decay": decay(full)}

    ref = pyro.optim.Adam(args)
    svi = SVI(model, lambda xy: None, ref, Trace_ELBO())
    for i, xy in enumerate(todo):
        state["i"] = i
        for p, obj in ref.optim_objs.items():
            for group in obj.param_groups:
                group["lr"] = lrs[i] * scale(i, store.param_name(p))
        svi.step(xy)
    return params()


def test_set_lr_reaches_stepped_pending_and_future_parameters(tmp_path):
    """A per-epoch schedule by ``set_lr``: the rate reaches the built optimizer, the state a resumed checkpoint holds
    for its first step, and parameters that appear later; the trajectory equals the torch optimizer's with the same
    rates, and a resumed run equals the uninterrupted one."""
    lrs, todo = [0.05, 0.05, 0.04, 0.02, 0.01, 0.01], batches(6)

    def steps(svi, opt, part, lrs):
        for xy, lr in zip(part, lrs):
            opt.set_lr(lr)
            svi.step(xy)

    pyro.clear_param_store()
    net, model, _ = make(use_extra=lambda step: step >= 3)  # "extra" joins after the first rate change
    opt = dopt.Adam({"lr": 1.0})
    svi = SVI(model, lambda xy: None, opt, Trace_ELBO())
    steps(svi, opt, todo[:3], lrs[:3])
    save_checkpoint(tmp_path / "ck.pt", {"net": net}, opt)
    steps(svi, opt, todo[3:], lrs[3:])
    expected = params()
    assert all(g["lr"] == 0.01 for g in opt.optimizer.param_groups)

    assert_params(scheduled_pyro_adam(lrs, todo), expected)

    pyro.clear_param_store()  # resumed: the loaded state carries lr 0.04, replaced before its first step
    net, model, _ = make(use_extra=lambda step: step >= 0, seed=5)
    opt = dopt.Adam({"lr": 1.0})
    svi = SVI(model, lambda xy: None, opt, Trace_ELBO())
    load_checkpoint(tmp_path / "ck.pt", {"net": net}, opt)
    steps(svi, opt, todo[3:], lrs[3:])
    assert_params(params(), expected)
    with pytest.raises(ValueError, match="finite"):
        opt.set_lr(float("nan"))


def test_set_lr_keeps_per_parameter_options():
    """With a callable ``optim_args`` (weight decay on the weights only), ``set_lr`` moves every parameter's rate and
    keeps the other options: the trajectory equals pyro.optim's per-parameter Adam with the same rates and decays,
    for the parameters stepped before the rate changes and for one that appears after."""
    lrs, todo = [0.05, 0.03, 0.03, 0.01, 0.01, 0.005], batches(6)

    def decay(name: str) -> float:
        return 0.0 if "bias" in name else 0.1

    pyro.clear_param_store()
    net, model, _ = make(use_extra=lambda step: step >= 3)
    opt = dopt.Adam(lambda name: {"lr": 1.0, "weight_decay": decay(name)})
    svi = SVI(model, lambda xy: None, opt, Trace_ELBO())
    for xy, lr in zip(todo, lrs):
        opt.set_lr(lr)
        svi.step(xy)
    expected = params()
    groups = {(g["lr"], g["weight_decay"]) for g in opt.optimizer.param_groups}
    assert groups == {(0.005, 0.0), (0.005, 0.1)}
    assert opt.pt_optim_args("net.extra.weight") == {"lr": 0.005, "weight_decay": 0.1}  # no nesting of rates

    assert_params(scheduled_pyro_adam(lrs, todo, decay), expected)


def test_set_lr_per_parameter_rates_split_groups_keep_state_and_resume(tmp_path):
    """``set_lr`` with a callable of the name: one schedule with a rate per layer. Parameters that shared one group
    (dict ``optim_args``) move to groups of their own when their rates part at step 2, with their Adam moments kept;
    the late ``extra`` joins at its own rate, a resumed checkpoint's pending states take theirs; the trajectory equals
    pyro.optim's per-parameter Adam bit for bit, and a rate the callable gets wrong is refused naming the parameter."""
    lrs, todo = [0.05, 0.05, 0.04, 0.02, 0.01, 0.01], batches(6)

    def scale(i: int, name: str) -> float:  # from step 2 the body's last layer and extra at 10x, the scale at 0.5x
        if i < 2:
            return 1.0
        return 10.0 if ("body.2" in name or "extra" in name) else 0.5 if "log_scale" in name else 1.0

    def steps(svi, opt, part, first):
        for i, xy in enumerate(part, first):
            opt.set_lr(lambda name, i=i: lrs[i] * scale(i, name))
            svi.step(xy)

    pyro.clear_param_store()
    net, model, _ = make(use_extra=lambda step: step >= 3)
    opt = dopt.Adam({"lr": 1.0})
    svi = SVI(model, lambda xy: None, opt, Trace_ELBO())
    steps(svi, opt, todo[:3], 0)
    assert len(opt.optimizer.param_groups) == 3  # 0.04 (body.0), 0.4 (body.2), 0.02 (log_scale)
    save_checkpoint(tmp_path / "ck.pt", {"net": net}, opt)
    steps(svi, opt, todo[3:], 3)
    expected = params()
    rates = {pyro.get_param_store().param_name(p): g["lr"] for g in opt.optimizer.param_groups for p in g["params"]}
    assert rates == {"net$$$body.0.weight": 0.01, "net$$$body.0.bias": 0.01, "net$$$body.2.weight": 0.1,
                     "net$$$body.2.bias": 0.1, "net$$$extra.weight": 0.1, "net$$$extra.bias": 0.1,
                     "net$$$log_scale": 0.005}  # fmt: skip

    assert_params(scheduled_pyro_adam(lrs, todo, scale=scale), expected)

    pyro.clear_param_store()  # resumed: every state waits for its first step, each takes its own rate
    net, model, _ = make(use_extra=lambda step: step >= 0, seed=5)
    opt = dopt.Adam({"lr": 1.0})
    svi = SVI(model, lambda xy: None, opt, Trace_ELBO())
    load_checkpoint(tmp_path / "ck.pt", {"net": net}, opt)
    steps(svi, opt, todo[3:], 3)
    assert_params(params(), expected)
    with pytest.raises(ValueError, match="log_scale"):
        opt.set_lr(lambda name: math.nan if "log_scale" in name else 0.1)
    assert all(g["lr"] in (0.01, 0.1, 0.005) for g in opt.optimizer.param_groups)  # nothing changed


def test_bad_options_are_refused():
    for lr in (math.nan, math.inf, -1.0, "fast"):
        with pytest.raises(ValueError, match="lr"):
            dopt.Adam({"lr": lr})
    with pytest.raises(ValueError, match="unknown option.*'lrr'"):
        dopt.Adam({"lrr": 0.1})
    with pytest.raises(ValueError, match="optim_constructor"):
        dopt.MultiTensorOptim(pyro.optim.Adam, {"lr": 0.1})
    with pytest.raises(ValueError, match="unknown option"):
        dopt.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "gama": 0.9})
    opt = dopt.Adam(lambda name: {"lr": math.nan} if "extra" in name else {"lr": 0.1})
    with pytest.raises(ValueError, match="extra.*lr must be finite"):
        run(opt, steps=1)
    opt = dopt.Adam({"lr": 0.1})
    run(opt, steps=1)
    with pytest.raises(ValueError, match="one-parameter torch optimizer state"):
        opt.set_state({"net$$$log_scale": {"state": {}, "param_groups": []}})


def test_divergence_is_still_detected():
    pyro.enable_validation(False)  # else Normal refuses the collapsed scale first
    _, model, _ = make()
    svi = SVI(model, lambda xy: None, dopt.SGD({"lr": 1e30}), Trace_ELBO())
    with pytest.raises(DivergenceError):
        train(svi, data(), epochs=3, batch_size=B, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel", [{}, {"foreach": True}, {"fused": True}])
def test_cuda_matches_pyro_optim(kernel):
    torch.set_default_device("cuda")
    try:
        expected, _ = run(pyro.optim.Adam({"lr": 0.05}))
        actual, _ = run(dopt.Adam({"lr": 0.05, **kernel}))
    finally:
        torch.set_default_device("cpu")
    assert all(v.is_cuda for v in actual.values())
    assert_params(actual, expected, exact=not kernel)
