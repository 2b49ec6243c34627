"""Speed: posterior conversion to ArviZ and importance-sampled log-likelihoods vs hand-written PyTorch.

Two measurements, each timed in the same run against a hand-written loop doing the same arithmetic (median of
``--repeats`` runs, interleaved):

1. ``to_inference_data``: Bayesian linear regression (N points, P features, Normal noise) with a fitted
   ``AutoNormal`` guide; S draws → posterior, pointwise log-likelihood (S, N), posterior predictive (S, N), log q
   and log p(θ, y) per draw, packed into InferenceData. ``parallel`` (one vectorized pass) and ``sequential`` (one
   model run per draw) against ``raw``: the guide's Normal sampled by hand in torch, the same densities, the same
   ``az.from_dict`` call.
2. ``log_likelihood``: a VAE with Burda et al.'s 784-200-200-50 architecture (random weights: the arithmetic does
   not depend on training) on the first ``--points`` validation images of binarized MNIST, S importance samples per
   image, against a hand-written loop (encoder, reparametrized samples, Bernoulli decoder, logsumexp) over the
   same data and particle batches. Also checks that both estimates agree (same model, independent samples).

    OMP_NUM_THREADS=1 python benchmarks/arviz_speed.py --data ../shared/data/binarized_mnist.npz
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings

import arviz as az
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from dgm_ppl.arviz import to_inference_data
from dgm_ppl.datasets import load_binarized_mnist
from dgm_ppl.evaluation import log_likelihood


def emit(**record):
    print(json.dumps(record), flush=True)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def regression(n: int, p: int, num_samples: int, repeats: int, sequential_samples: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, p, generator=g)
    y = x @ torch.randn(p, generator=g) + 0.5 * torch.randn(n, generator=g)

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(p), 1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("obs", len(y)):
            pyro.sample("y", dist.Normal((x * w).sum(-1), sigma), obs=y)

    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step(x, y)
    loc_w, scale_w = pyro.param("AutoNormal.locs.w").detach(), pyro.param("AutoNormal.scales.w").detach()
    loc_s, scale_s = pyro.param("AutoNormal.locs.sigma").detach(), pyro.param("AutoNormal.scales.sigma").detach()

    def raw(num):
        with torch.no_grad():
            w = loc_w + scale_w * torch.randn(num, p)
            u = loc_s + scale_s * torch.randn(num)  # AutoNormal works on log sigma
            sigma = u.exp()
            log_q = dist.Normal(loc_w, scale_w).log_prob(w).sum(-1) + dist.Normal(loc_s, scale_s).log_prob(u) - u
            mean = (x * w[:, None, :]).sum(-1)  # the model's arithmetic
            log_lik = dist.Normal(mean, sigma[:, None]).log_prob(y)
            lp = dist.Normal(0.0, 1.0).log_prob(w).sum(-1) + dist.HalfNormal(1.0).log_prob(sigma) + log_lik.sum(-1)
            y_rep = mean + sigma[:, None] * torch.randn(num, n)
            return az.from_dict(
                posterior={"w": w[None].numpy(), "sigma": sigma[None].numpy()},
                log_likelihood={"y": log_lik[None].numpy()},
                posterior_predictive={"y": y_rep[None].numpy()},
                sample_stats={"lp": lp[None].numpy(), "log_q": log_q[None].numpy()},
                observed_data={"y": y.numpy()},
                dims={"w": ["w_dim_0"], "y": ["obs"]},
            )

    def ours(num, parallel):
        return to_inference_data(model, guide, model_args=(x, y), num_samples=num, parallel=parallel)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_raw, check_ours = raw(num_samples), ours(num_samples, True)
        t_raw = timed(lambda: raw(num_samples), repeats)
        t_par = timed(lambda: ours(num_samples, True), repeats)
        t_seq = timed(lambda: ours(sequential_samples, False), 1) * num_samples / sequential_samples
    for name, seconds in (("raw", t_raw), ("parallel", t_par), ("sequential", t_seq)):
        emit(bench="to_inference_data", impl=name, n=n, p=p, draws=num_samples, seconds=round(seconds, 4))
    emit(
        bench="to_inference_data",
        summary=True,
        parallel_over_raw=round(t_par / t_raw, 2),
        sequential_over_raw=round(t_seq / t_raw, 1),
        sequential_extrapolated_from=sequential_samples,
        lp_mean=[float(check_ours.sample_stats.lp.mean()), float(check_raw.sample_stats.lp.mean())],
        log_q_mean=[float(check_ours.sample_stats.log_q.mean()), float(check_raw.sample_stats.log_q.mean())],
    )


class VAE(nn.Module):
    def __init__(self, d=784, h=200, z=50):
        super().__init__()
        self.z = z
        self.encoder = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 2 * z))
        self.decoder = nn.Sequential(nn.Linear(z, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, d))

    def model(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def vae(data_path: str, points: int, num_samples: int, batch_size: int, particles: int, repeats: int):
    x = load_binarized_mnist(data_path, split="valid")[:points].float()
    torch.manual_seed(0)
    vae = VAE()

    def raw():
        out = []
        with torch.no_grad():
            for start in range(0, points, batch_size):
                xb = x[start : start + batch_size]
                loc, log_scale = vae.encoder(xb).chunk(2, -1)
                log_w = []
                for done in range(0, num_samples, particles):
                    k = min(particles, num_samples - done)
                    eps = torch.randn(k, *loc.shape)
                    z = loc + log_scale.exp() * eps
                    log_q = (-0.5 * eps**2 - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)
                    log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
                    logits = vae.decoder(z)
                    log_lik = -nn.functional.binary_cross_entropy_with_logits(
                        logits, xb.expand_as(logits), reduction="none"
                    ).sum(-1)
                    log_w.append(log_prior + log_lik - log_q)
                log_w = torch.cat(log_w)
                out.append(torch.logsumexp(log_w, 0) - math.log(num_samples))
        return torch.cat(out)

    def ours():
        return log_likelihood(
            vae.model, vae.guide, x, num_samples=num_samples, batch_size=batch_size, particle_batch_size=particles
        ).log_p

    a, b = raw(), ours()
    t_raw, t_ours = [], []
    for i in range(repeats):  # interleaved, order alternating
        for name in ("raw", "ours") if i % 2 == 0 else ("ours", "raw"):
            fn, times = (raw, t_raw) if name == "raw" else (ours, t_ours)
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    t_raw, t_ours = statistics.median(t_raw), statistics.median(t_ours)
    for name, seconds in (("raw", t_raw), ("dgm_ppl", t_ours)):
        emit(bench="log_likelihood", impl=name, points=points, samples=num_samples, seconds=round(seconds, 3))
    emit(
        bench="log_likelihood",
        summary=True,
        ours_over_raw=round(t_ours / t_raw, 3),
        mean_log_p=[round(b.mean().item(), 3), round(a.mean().item(), 3)],
        max_abs_difference=round((a - b).abs().max().item(), 3),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="binarized MNIST .npz with a 'valid' array")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--sequential-draws", type=int, default=200, help="sequential mode is timed on fewer draws")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--p", type=int, default=5)
    ap.add_argument("--points", type=int, default=500)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--particles", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pyro.set_rng_seed(0)
    regression(args.n, args.p, args.draws, args.repeats, args.sequential_draws)
    vae(args.data, args.points, args.samples, args.batch_size, args.particles, max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
