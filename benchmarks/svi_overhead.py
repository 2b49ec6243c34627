"""Overhead of the SVI path: median ms per step of an unmodified ``pyro.infer.SVI`` against a hand-written PyTorch loop
doing the same arithmetic, for every pillar, in one run.

Pillars (``--only``):

- ``rbm``: 784x500 Bernoulli RBM, PCD-1, batch 100, Adam and SGD (``rbm_speed.raw_epoch`` is the hand-written loop:
  closed-form SML gradient); also scikit-learn's ``BernoulliRBM`` (its own loop, ``fit`` with ``n_iter=1`` on
  ``steps`` batches, CPU/numpy) and the ``rbms`` package's PCD-1 step (``fit_batch_pcd`` + ``torch.optim.SGD``, centered
  gradient, as its trainer does), each skipped with a note when not installed;
- ``dbm``: 784-500-1000 DBM, 10 mean-field sweeps, 100 persistent chains (``dbm_speed.raw_step``);
- ``vae``: ``VAE(784, 50, (200, 200))`` with the diagonal and the IAF guide (2 steps) under ``Trace_ELBO`` and
  ``JitTrace_ELBO`` (``num_data`` passed as a keyword), and the fast path: dgm_ppl's ``JitTrace_ELBO`` with
  ``svi.step(x, N)`` (``dgmjit``), alone and with ``dgm_ppl.optim.Adam`` (``dgmadam``), against ``vae_mnist.RawVAE``
  and an IAF written out by hand on the guide's own networks;
- ``gan``: ``GANLoss(kind="nonsaturating")`` and ``MMDLoss`` on the small nets (G 3x128, D 2x128, batch 256) and at
  PacGAN size (G 4x400 with batch norm, D 3x200, batch 500) against ``gan_speed``'s hand-written steps;
- ``optim``: the optimizer alone: ``pyro.optim.Adam`` (one torch Adam per tensor) against ``dgm_ppl.optim.Adam`` (one
  torch Adam over all tensors: default, ``foreach`` and ``fused``) on the VAE (diagonal guide, ``Trace_ELBO``) and the
  small GAN.

Every implementation of a pillar starts from the same weights and keeps its own Pyro param store
(``ParamStoreDict.scope``). After ``--warmup`` steps each, ``--rounds`` rounds time ``--steps`` steps of each
implementation in turn (the order alternating between rounds, so that drifts in machine speed hit all alike; Pyro's
validation flag is set for each, on unless the name says ``novalid``); on CUDA the device is synchronized before the
clock is read. Prints one JSON line per implementation (median and all rounds' ms per step) and per ratio, then a
markdown table.

    OMP_NUM_THREADS=1 python benchmarks/svi_overhead.py --data ../shared/data/binarized_mnist.npz
    python benchmarks/svi_overhead.py --device cuda --steps 50 --only vae,gan,optim
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling benchmarks

from dbm_speed import raw_step as dbm_raw_step  # noqa: E402
from gan_modes import BANDWIDTHS, Critic, mlp  # noqa: E402
from gan_speed import SIZES, make_raw_gan, make_raw_mmd, make_svi  # noqa: E402
from rbm_speed import raw_epoch as rbm_raw_epoch  # noqa: E402
from vae_mnist import RawVAE  # noqa: E402
from vae_mnist import build as build_vae  # noqa: E402

from dgm_ppl import optim as dgm_optim  # noqa: E402
from dgm_ppl.datasets import grid_of_gaussians, load_binarized_mnist  # noqa: E402
from dgm_ppl.energy import DBM, BernoulliRBM, PersistentChains  # noqa: E402
from dgm_ppl.models import VAE  # noqa: E402

PILLARS = ("rbm", "dbm", "vae", "gan", "optim")


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


@dataclass
class Impl:
    """One implementation: ``step()`` runs one training step (it draws its own next batch)."""

    step: Callable[[], object]
    validate: bool = True
    scope: dict = field(default_factory=lambda: {"params": {}, "constraints": {}})
    device: str = ""


@dataclass
class Pillar:
    name: str
    impls: dict[str, Impl]
    ratios: list[tuple[str, str]]  # (numerator, denominator)
    notes: list[str] = field(default_factory=list)


def cycle(batches: list[torch.Tensor]):
    return itertools.cycle(batches)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_scope(impl: Impl, fn: Callable[[], object]) -> object:
    """Run ``fn`` with ``impl``'s own param store and validation setting."""
    pyro.enable_validation(impl.validate)
    with pyro.get_param_store().scope(impl.scope):
        return fn()


# -- RBM ----------------------------------------------------------------------------------------------------------


def rbm_pillar(x: torch.Tensor, args, device: torch.device) -> Pillar:
    n, bs, hidden, lr_adam, lr_sgd = x.shape[0], 100, 500, 1e-3, 1e-6  # SGD: lr * N ~ 0.05 per mean gradient
    torch.manual_seed(args.seed)
    rbm0 = BernoulliRBM(784, hidden).to(device)
    init = [t.detach().clone() for t in (rbm0.weight, rbm0.visible_bias, rbm0.hidden_bias)]
    hidden0 = torch.bernoulli(torch.full((bs, hidden), 0.5, device=device))
    order = torch.randperm(n, device=device)
    impls, notes = {}, []

    def svi_impl(name: str, optim, validate: bool) -> Impl:
        impl = Impl(lambda: None, validate)

        def setup():
            rbm = BernoulliRBM(784, hidden, name=name).to(device)
            chains = PersistentChains(rbm, num_chains=bs, steps=1)
            with torch.no_grad():
                for t, t0 in zip((rbm.weight, rbm.visible_bias, rbm.hidden_bias), init):
                    t.copy_(t0)

            def model(batch):
                with pyro.plate("data", n, subsample=batch):
                    pyro.sample("x", rbm.distribution(chains), obs=batch)

            svi = SVI(model, lambda batch: None, optim, Trace_ELBO())
            batches = cycle([x[order[i : i + bs]] for i in range(0, n - bs + 1, bs)])
            impl.step = lambda: svi.step(next(batches))

        in_scope(impl, setup)
        return impl

    def raw_impl(optimizer, lr: float) -> Impl:
        w, b, c = (t.clone().requires_grad_() for t in init)
        opt = optimizer([w, b, c], lr=lr)

        def epochs():
            while True:
                yield from rbm_raw_epoch(x, order, (w, b, c), hidden0.clone(), opt, bs)

        loop = epochs()
        return Impl(lambda: next(loop))

    impls["svi_adam"] = svi_impl("rbm_adam", pyro.optim.Adam({"lr": lr_adam}), True)
    impls["svi_adam_novalid"] = svi_impl("rbm_adam_nv", pyro.optim.Adam({"lr": lr_adam}), False)
    impls["raw_adam"] = raw_impl(torch.optim.Adam, lr_adam)
    impls["svi_dgmadam"] = svi_impl("rbm_dgmadam", dgm_optim.Adam({"lr": lr_adam}), True)
    impls["svi_sgd"] = svi_impl("rbm_sgd", pyro.optim.SGD({"lr": lr_sgd}), True)
    impls["svi_dgmsgd"] = svi_impl("rbm_dgmsgd", dgm_optim.SGD({"lr": lr_sgd}), True)
    impls["raw_sgd"] = raw_impl(torch.optim.SGD, lr_sgd)
    ratios = [
        ("svi_adam", "raw_adam"),
        ("svi_adam_novalid", "raw_adam"),
        ("svi_dgmadam", "raw_adam"),
        ("svi_sgd", "raw_sgd"),
        ("svi_dgmsgd", "raw_sgd"),
    ]

    try:
        from sklearn.neural_network import BernoulliRBM as SkRBM

        xs = x[: bs * args.steps].cpu().numpy().astype(np.float32)

        def sk_steps():  # its own loop: fit() over `steps` batches, one pass
            SkRBM(n_components=hidden, learning_rate=0.05, batch_size=bs, n_iter=1, random_state=args.seed).fit(xs)

        impls["sklearn"] = Impl(sk_steps, device="cpu")
        impls["sklearn"].per_call = args.steps  # type: ignore[attr-defined]
        ratios.append(("sklearn", "svi_sgd"))
    except ImportError:
        notes.append("scikit-learn not installed: BernoulliRBM skipped")

    try:
        from rbms.bernoulli_bernoulli.classes import BBRBM
        from rbms.training.pcd import fit_batch_pcd

        params = BBRBM(init[0].clone(), init[1].clone(), init[2].clone())
        for t in params.parameters():
            t.grad = torch.zeros_like(t)
        state = {"chains": params.init_chains(bs)}
        opt = torch.optim.SGD(params.parameters(), lr=0.05, maximize=True)  # its gradients are means
        ones = torch.ones(bs, device=device)
        batches = cycle([x[order[i : i + bs]] for i in range(0, n - bs + 1, bs)])

        @torch.no_grad()
        def rbms_step():
            opt.zero_grad(set_to_none=False)
            state["chains"], _ = fit_batch_pcd((next(batches), ones), state["chains"], params, 1, 1.0)
            opt.step()

        impls["rbms"] = Impl(rbms_step)
        ratios.append(("rbms", "svi_sgd"))
    except Exception as e:  # not installed, or its API changed
        notes.append(f"rbms package skipped ({type(e).__name__}: {e})")
    return Pillar("rbm", impls, ratios, notes)


# -- DBM ----------------------------------------------------------------------------------------------------------


def dbm_pillar(x: torch.Tensor, args, device: torch.device) -> Pillar:
    n, bs, iters, lr = x.shape[0], 100, 10, 1e-4
    torch.manual_seed(args.seed)
    dbm0 = DBM([784, 500, 1000]).to(device).init_from_data(x)
    chains0 = PersistentChains(dbm0, num_chains=bs)
    order = torch.randperm(n, device=device)
    batches = [x[order[i : i + bs]] for i in range(0, n - bs + 1, bs)]
    impls = {}

    def svi_impl(name: str, validate: bool, optim=pyro.optim.Adam) -> Impl:
        impl = Impl(lambda: None, validate)

        def setup():
            dbm = DBM([784, 500, 1000], name=name).to(device)
            dbm.load_state_dict(dbm0.state_dict())
            chains = PersistentChains(dbm, num_chains=bs)
            chains.load_state_dict(chains0.state_dict())

            def model(batch):
                with pyro.plate("data", n, subsample=batch):
                    pyro.sample("x", dbm.distribution(chains, mean_field_iters=iters), obs=batch)

            svi = SVI(model, lambda batch: None, optim({"lr": lr}), Trace_ELBO())
            data = cycle(batches)
            impl.step = lambda: svi.step(next(data))

        in_scope(impl, setup)
        return impl

    impls["svi"] = svi_impl("dbm", True)
    impls["svi_novalid"] = svi_impl("dbm_nv", False)
    impls["svi_dgmadam"] = svi_impl("dbm_dgmadam", True, dgm_optim.Adam)
    p = [
        t.detach().clone().requires_grad_()
        for t in (dbm0.weight_0, dbm0.weight_1, dbm0.bias_0, dbm0.bias_1, dbm0.bias_2)
    ]
    opt = torch.optim.Adam(p, lr=lr)
    state = {"chains": [t.clone() for t in chains0.states()]}
    data = cycle(batches)

    def raw():
        state["chains"] = dbm_raw_step(next(data), p, state["chains"], opt, n, iters)

    impls["raw"] = Impl(raw)
    return Pillar("dbm", impls, [("svi", "raw"), ("svi_novalid", "raw"), ("svi_dgmadam", "raw")])


# -- VAE ----------------------------------------------------------------------------------------------------------


class RawIAFVAE(RawVAE):
    """:class:`vae_mnist.RawVAE` with the IAF guide's steps written out: ``z ← σ ⊙ z + μ`` with ``(μ, log σ)`` from
    each step's autoregressive network (log σ clipped to [-5, 3] with its gradient kept, as Pyro does), the
    coordinates reversed between steps, and ``log q`` lowered by ``Σ log σ``."""

    def __init__(self, vae: VAE, guide):
        super().__init__(vae, guide)
        self.arns = nn.ModuleList(copy.deepcopy(step.nn) for step in guide.steps["z"])

    def loss(self, x: torch.Tensor, num_data: int) -> torch.Tensor:
        h = self.encoder(x)
        loc, scale = self.loc(h), F.softplus(self.scale(h))
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        log_q = (-0.5 * eps**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        for k, arn in enumerate(self.arns):
            if k:
                z = z.flip(-1)
            mean, log_s = arn(z, context=h)
            log_s = log_s + (log_s.clamp(-5.0, 3.0) - log_s).detach()
            z = log_s.exp() * z + mean
            log_q = log_q - log_s.sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_lik = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        return -(num_data / x.shape[0]) * (log_prior + log_lik - log_q).sum()


def vae_impls(x: torch.Tensor, args, device: torch.device, kind: str, variants: dict) -> dict[str, Impl]:
    """``variants``: name -> (ELBO class, optimizer factory, validate[, num_data positional]) for SVI, or None for the
    hand-written step."""
    n, bs, lr = x.shape[0], 100, 1e-3
    order = torch.randperm(n, device=device)
    batches = [x[order[i : i + bs]] for i in range(0, n - bs + 1, bs)]
    guide_kwargs = {"num_flows": 2} if kind == "iaf" else {}
    impls, ref = {}, None
    for name, spec in variants.items():
        impl = Impl(lambda: None, True if spec is None else spec[2])

        def setup(impl=impl, spec=spec):
            nonlocal ref
            torch.manual_seed(args.seed)
            vae, guide = build_vae(kind, batches[0], device, {"num_data": n}, **guide_kwargs)
            if ref is None:
                ref = (vae, guide)
            else:  # the same weights for all
                vae.load_state_dict(ref[0].state_dict())
                guide.load_state_dict(ref[1].state_dict())
            data = cycle(batches)
            if spec is None:
                raw = (RawIAFVAE if kind == "iaf" else RawVAE)(vae, guide).to(device)
                opt = torch.optim.Adam(raw.parameters(), lr=lr)

                def raw_step():
                    opt.zero_grad(set_to_none=True)
                    loss = raw.loss(next(data), n)
                    loss.backward()
                    opt.step()
                    return loss.item()  # as svi.step does

                impl.step = raw_step
            else:
                elbo, optim, _, *positional = spec
                svi = SVI(vae.model, guide, optim({"lr": lr}), elbo())
                if positional and positional[0]:
                    impl.step = lambda: svi.step(next(data), n)
                else:
                    impl.step = lambda: svi.step(next(data), num_data=n)

        in_scope(impl, setup)
        impls[name] = impl
    return impls


def vae_pillar(x: torch.Tensor, args, device: torch.device) -> Pillar:
    impls, ratios = {}, []
    adam = pyro.optim.Adam
    try:  # the fast path, when this tree has it
        from dgm_ppl.infer.objectives import JitTrace_ELBO as dgm_jit
        from dgm_ppl.optim import Adam as dgm_adam
    except ImportError:
        dgm_jit = dgm_adam = None
    for kind in ("diagonal", "iaf"):
        variants = {
            f"{kind}_trace": (Trace_ELBO, adam, True),
            f"{kind}_trace_novalid": (Trace_ELBO, adam, False),
            f"{kind}_jit": (JitTrace_ELBO, adam, True),
            f"{kind}_raw": None,
        }
        if dgm_jit is not None:  # dgm_ppl's JIT ELBO (num_data positional), and with dgm_ppl's optimizer
            variants[f"{kind}_dgmjit"] = (dgm_jit, adam, True, True)
            variants[f"{kind}_dgmjit_dgmadam"] = (dgm_jit, dgm_adam, True, True)
            variants[f"{kind}_trace_dgmadam"] = (Trace_ELBO, dgm_adam, True)
        impls.update(vae_impls(x, args, device, kind, variants))
        ratios += [(v, f"{kind}_raw") for v in variants if v != f"{kind}_raw"]
    return Pillar("vae", impls, ratios)


# -- GAN and MMD --------------------------------------------------------------------------------------------------


def gan_impls(size: str, args, device: torch.device, optims: dict | None = None) -> dict[str, Impl]:
    """The GAN/MMD steps at ``size``; ``optims`` (name -> pyro optimizer factory) replaces the default variants by
    SVI GAN steps that differ only in the generator's optimizer."""
    cfg, zdim, lr = SIZES[size], 2, 1e-4
    data = grid_of_gaussians(100_000, generator=torch.Generator().manual_seed(args.seed)).to(device)
    n, bs = len(data), cfg["batch"]
    torch.manual_seed(args.seed)
    G0 = mlp([zdim] + [cfg["g_hidden"]] * cfg["g_layers"] + [2], nn.ReLU, batch_norm=True).to(device)
    D0 = Critic(2, cfg["d_hidden"], cfg["d_layers"]).to(device)
    order = torch.randperm(n, device=device)
    batches = [data[order[i : i + bs]] for i in range(0, n - bs + 1, bs)]
    if optims is None:
        names = ("gan_svi", "gan_svi_novalid", "gan_svi_fast", "gan_raw", "mmd_svi", "mmd_svi_fast", "mmd_raw")
    else:
        names = tuple(f"gan_{o}" for o in optims)
    impls = {}
    for name in names:
        impl = Impl(lambda: None, not name.endswith("novalid"))

        def setup(impl=impl, name=name):
            G, D = copy.deepcopy(G0), copy.deepcopy(D0)
            if name == "gan_raw":
                step = make_raw_gan(G, D, zdim, lr)
            elif name == "mmd_raw":
                step = make_raw_mmd(G, zdim, lr, BANDWIDTHS)
            else:
                step = make_svi(name, G, None if name.startswith("mmd") else D, n, zdim, lr, BANDWIDTHS)
                if name.endswith("_fast"):  # the package's optimizer: one fused Adam over the generator
                    step.__self__.optim = dgm_optim.Adam({"lr": lr, "betas": (0.5, 0.999), "fused": True})
                if optims is not None:
                    svi = step.__self__
                    svi.optim = optims[name[4:]]({"lr": lr, "betas": (0.5, 0.999)})
            it = cycle(batches)
            impl.step = lambda: step(next(it))

        in_scope(impl, setup)
        impls[f"{size}_{name}"] = impl
    return impls


def gan_pillar(x, args, device: torch.device) -> Pillar:
    impls, ratios = {}, []
    for size in ("small", "pacgan"):
        impls.update(gan_impls(size, args, device))
        ratios += [(f"{size}_gan_svi", f"{size}_gan_raw"), (f"{size}_gan_svi_novalid", f"{size}_gan_raw")]
        ratios += [(f"{size}_gan_svi_fast", f"{size}_gan_raw")]
        ratios += [(f"{size}_mmd_svi", f"{size}_mmd_raw"), (f"{size}_mmd_svi_fast", f"{size}_mmd_raw")]
    return Pillar("gan", impls, ratios)


# -- the optimizer alone ------------------------------------------------------------------------------------------


def optim_pillar(x, args, device: torch.device) -> Pillar:
    try:
        from dgm_ppl import optim as dgm_optim
    except ImportError as e:
        return Pillar("optim", {}, [], [f"dgm_ppl.optim not importable ({e})"])

    def all_adam(**extra):
        return lambda optim_args: dgm_optim.Adam({**optim_args, **extra})

    optims = {"pyro_adam": pyro.optim.Adam, "all_adam": all_adam(), "all_adam_foreach": all_adam(foreach=True)}
    optims["all_adam_fused"] = all_adam(fused=True)
    impls = vae_impls(
        x, args, device, "diagonal", {f"vae_{k}": (Trace_ELBO, v, True) for k, v in optims.items()} | {"vae_raw": None}
    )
    impls.update(gan_impls("small", args, device, optims))
    ratios = [(f"vae_{k}", "vae_raw") for k in optims]
    ratios += [(f"small_gan_{k}", "small_gan_pyro_adam") for k in optims if k != "pyro_adam"]
    return Pillar("optim", impls, ratios)


# -- the runner ---------------------------------------------------------------------------------------------------


def run_pillar(pillar: Pillar, args, device: torch.device, common: dict) -> dict[str, float]:
    for note in pillar.notes:
        emit(**common, pillar=pillar.name, note=note)

    def timed(impl: Impl, steps: int) -> float:
        per_call = getattr(impl, "per_call", 1)  # sklearn's fit runs `steps` steps in one call
        calls = max(1, steps // per_call)

        def go():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                impl.step()
            sync(device)
            return (time.perf_counter() - t0) / (calls * per_call)

        return in_scope(impl, go)

    names, failed = list(pillar.impls), {}
    for name in names:  # warm-up (JIT compilation, optimizer states); an implementation that fails is reported
        try:
            timed(pillar.impls[name], args.warmup)
        except Exception as e:
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            emit(**common, pillar=pillar.name, impl=name, error=failed[name])
    names = [k for k in names if k not in failed]
    times = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(1000 * timed(pillar.impls[name], args.steps))
    pyro.enable_validation(True)
    ms = {k: statistics.median(v) for k, v in times.items()}
    for name in names:
        impl_device = pillar.impls[name].device or str(device)
        emit(
            **dict(common, device=impl_device),
            pillar=pillar.name,
            impl=name,
            ms_per_step=round(ms[name], 3),
            rounds=[round(t, 3) for t in times[name]],
        )
    for a, b in pillar.ratios:
        if a in ms and b in ms:
            emit(**common, pillar=pillar.name, ratio=f"{a}/{b}", value=round(ms[a] / ms[b], 3))
    return ms


def load_data(path: str | None, device: torch.device, seed: int) -> tuple[torch.Tensor, str]:
    if path and os.path.exists(path):
        return load_binarized_mnist(path, "train").to(device), path
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((50_000, 784), 0.13), generator=g).to(device), "random binary 50000x784"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    ap.add_argument("--steps", type=int, default=20, help="steps per implementation per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", default=",".join(PILLARS), help=f"comma-separated subset of {PILLARS}")
    ap.add_argument("--data", default=None, help="binarized MNIST .npz (random binary data of its shape if missing)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(only) - set(PILLARS))
    if unknown:
        ap.error(f"unknown pillar(s) {unknown}: choose among {PILLARS}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, source = load_data(args.data, device, args.seed)
    common = dict(benchmark="svi_overhead", device=str(device), threads=torch.get_num_threads())
    emit(
        **common,
        event="config",
        data=source,
        steps=args.steps,
        rounds=args.rounds,
        warmup=args.warmup,
        torch=torch.__version__,
        pyro=pyro.__version__,
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    )
    builders = {"rbm": rbm_pillar, "dbm": dbm_pillar, "vae": vae_pillar, "gan": gan_pillar, "optim": optim_pillar}
    rows = []
    for name in only:
        pyro.clear_param_store()
        pillar = builders[name](x, args, device)
        ms = run_pillar(pillar, args, device, common)
        rows += [(name, a, b, ms[a], ms[b]) for a, b in pillar.ratios if a in ms and b in ms]
    print(f"\n{args.device}, {torch.get_num_threads()} thread(s), median of {args.rounds} rounds of {args.steps} steps")
    print("| pillar | SVI / reference | ms per step | ratio |\n|---|---|---|---|")
    for pillar, a, b, ma, mb in rows:
        print(f"| {pillar} | `{a}` / `{b}` | {ma:.2f} / {mb:.2f} | {ma / mb:.2f} |")


if __name__ == "__main__":
    main()
