r"""A Bayesian workflow with Pyro and ArviZ: check the prior, fit, check the fit, compare models, trust the numbers.

    python tutorials/bayesian_workflow.py    # about 75 seconds on one CPU core

``dgm_ppl.arviz.to_inference_data`` turns a Pyro model and its posterior (a fitted guide, an MCMC run, or no
posterior at all for a prior check) into an ArviZ ``InferenceData``: it runs the model for every draw
:math:`\theta_s` (all at once with ``parallel=True``, under a ``pyro.plate`` over draws) and records the latent
sites (``posterior``), :math:`\log p(y_i \mid \theta_s)` for every data point (``log_likelihood``), replicated
data :math:`\tilde y \sim p(y \mid \theta_s)` (``posterior_predictive``) and, for a guide,
:math:`\log p(\theta_s, y)` and :math:`\log q(\theta_s)` (``sample_stats.lp``, ``log_q``). The rest of
the workflow (Gelman et al. 2020, "Bayesian workflow") is ArviZ.

**Part 1: a straight line through data with outliers** (80 points, ``y = 1 + 0.6 x + N(0, 0.6²)`` on
``x ∈ [0, 10]``, 6 of them pushed up by 4 to 8). Two models share the priors
``a ~ N(0, 5)``, ``b ~ N(0, 2)``, ``σ ~ HalfNormal(5)`` and differ in the likelihood, in a plate named ``obs``::

    A:  y_i ~ Normal(a + b x_i, σ)
    B:  y_i ~ StudentT(ν, a + b x_i, σ),   ν ~ Gamma(2, 0.1)   (Juárez & Steel 2010: mean 20, mass near 1 too)

1. *Prior predictive check.* ``to_inference_data(model, prior=True, model_args=(x, y))`` without a posterior draws
   :math:`\theta \sim p(\theta)`, :math:`\tilde y \sim p(y \mid \theta)`. The lines ``a + b x`` and the spread of
   :math:`\tilde y` should cover the data with room to spare without being absurd (a vague ``b ~ N(0, 100)`` would
   put typical replicated data hundreds of units away from 0). The prior on ν gives a few draws with ν near 1:
   Cauchy-like tails, visible as rare huge :math:`\tilde y`.
2. *Variational fits of B.* A mean-field guide (``AutoNormal``: independent Normals in the unconstrained space) and a
   normalizing-flow guide (``AutoIAFNormal``: two affine autoregressive steps, so correlations and skew are
   representable) are fitted by SVI. As x is not centred, a and b are strongly anti-correlated a posteriori
   (ρ ≈ -0.83); a mean-field guide cannot represent that and, minimizing KL(q‖p), it under-covers the posterior.
3. *Posterior predictive check.* 50% and 90% intervals of :math:`\tilde y` over x, and their coverage of the data.
   The Normal widens σ to reach the outliers and tilts the line towards them: its intervals are too wide for the
   bulk of the points (they cover far more than 50%/90% of them) and still miss the outliers. The Student-t puts the
   outliers in its tails and fits the bulk.
4. *PSIS-LOO that is valid for VI.* The expected log predictive density of a new point is estimated by
   leave-one-out, :math:`\mathrm{elpd}_{\mathrm{loo}} = \sum_i \log p(y_i \mid y_{-i})`, from the draws of the
   full-data posterior reweighted by :math:`1/p(y_i \mid \theta_s)` (Vehtari, Gelman & Gabry 2017), with Pareto-
   smoothed weights; the fitted Pareto shape :math:`\hat k_i` of each point's weights says whether its estimate can
   be trusted (below 0.7). ``az.loo`` assumes the draws come from the posterior. Guide draws do not: the
   leave-one-out posterior is reached from q by the ratios

   .. math::

       w_{is} \propto \frac{r_s}{p(y_i \mid \theta_s)}, \qquad r_s = \frac{p(\theta_s, y)}{q(\theta_s)},

   which ``dgm_ppl.arviz.loo`` uses (Magnusson et al. 2019). The Pareto :math:`\hat k` of the :math:`r_s` alone,
   ``guide_pareto_k``, diagnoses the guide itself (Yao et al. 2018): below 0.5 it is close to the posterior, above
   0.7 importance weighting cannot repair it.
5. *Model comparison.* ``az.compare`` ranks the LOO estimates of A and B; ``elpd_diff`` comes with ``dse``, the
   standard error of the difference computed from the paired pointwise values (which is much smaller than the two
   SEs combined, as both models find the same points easy or hard).
6. *A reference.* NUTS (``MCMC(NUTS(model_B))``, converted with ``to_inference_data(model_B, mcmc=mcmc)``) gives
   posterior draws and the standard ``az.loo``; the reweighted VI LOO should agree with it to within Monte Carlo
   error, the unweighted one need not. The Monte Carlo error of an elpd_loo from 500-1,000 draws is 0.1-0.2 nats
   here (compare the two NUTS chains alone): smaller differences mean nothing.

**Part 2: deep generative models on held-out data.** Two VAEs on the binarized 8x8 digits (pixel on when its
intensity is at least half the maximum; 1,500 training and 297 test images from ``load_digits``) share the model

.. math::

    z_i \sim N(0, I_8), \qquad x_i \mid z_i \sim \mathrm{Bernoulli}(\mathrm{sigmoid}(f_\theta(z_i)))
    \quad (64\ \text{pixels}),

and differ in the amortized guide: (a) a diagonal Normal :math:`q(z \mid x) = N(\mu(x), \mathrm{diag}\,\sigma^2(x))`;
(b) the same Normal pushed through two conditional affine autoregressive steps
:math:`z_j \leftarrow \mu_j(z_{<j}, h(x)) + \sigma_j(z_{<j}, h(x))\, z_j` (IAF, Kingma et al. 2016), whose context is
the encoder's features h(x) (``pyro.distributions.transforms.conditional_affine_autoregressive``). Both are trained
by ``Trace_ELBO``. The decoder weights are point estimates, so the held-out ELPD is :math:`\sum_i \log p(x_i)` over
test images, each estimated by importance sampling with the guide as proposal (``dgm_ppl.evaluation.
log_likelihood``: :math:`\log \frac1S \sum_s p(x_i, z_s)/q(z_s \mid x_i)`, the IWAE bound with S = 1000), with the
effective sample size and :math:`\hat k` of the weights per image. ``heldout_elpd`` wraps the per-image values so
that ``az.compare`` gives the ELPD difference and its paired standard error. ``log_likelihood`` draws the S samples
in an outer ``pyro.plate("_num_particles", S, dim=-2)``, so the guide must put z in ``pyro.plate("data", ...)`` and
the flow must accept extra leading batch dimensions; the script checks this (``vectorized_guide_check``: the
log-density of a vectorized draw against the same point's log-density recomputed one particle at a time).

Small VAEs fall easily into *posterior collapse*: early in training the decoder learns the pixel means, the KL term
pushes q(z | x) onto the prior, and the model stays the independent-pixel model (-25.3 nats per test image here),
which is what a first version of this script (softplus units, initial q scale near 0.7) did. Three standard remedies
avoid it: the decoder's output biases start at the pixel log-odds, the guide's scales start small (0.05), and the KL
term is warmed up (its weight rises linearly from 0 to 1 over the first 10 epochs, a ``poutine.scale`` around z in
model and guide, Sønderby et al. 2016); evaluation uses weight 1.

Prints a JSON report and saves ``bayesian_workflow.png`` in ``--out``. With the defaults (seed 0, one CPU thread) it
prints, abridged:

- prior predictive: the 90% prior predictive intervals cover every observed y; 0.2% of ỹ lie beyond ±60;
- posterior predictive: the Normal's 50% / 90% intervals cover 81% / 92% of the points (σ = 1.84 against a true
  0.6), the Student-t's (flow guide) 52% / 90% (σ = 0.35, ν = 1.3: the outliers sit in its tails);
- posterior correlation of a and b: -0.83 (NUTS), -0.85 (flow guide), -0.01 (mean field);
- LOO of the Student-t model: NUTS -103.26 ± 15.0 (its two chains alone: -103.17 and -103.38, so the Monte Carlo
  error of such an estimate is about 0.1-0.2); flow guide (k̂ 0.25): **-103.21 reweighted**, -103.48 unweighted, all
  pointwise k̂ < 0.41; mean field (k̂ 0.81): -102.13 reweighted, with k̂ > 0.7 at all 80 points, i.e. flagged
  as unreliable, and -103.40 unweighted, whose k̂ (all < 0.3) cannot see that the draws are not from the posterior;
- compare: the Student-t model is ahead of the Normal one (-164.6) by 62.5 with dse 7.9 (8 dse);
- VAEs: held-out log-likelihood -17.91 (diagonal) and -17.62 (flow) nats per image (test ELBO -18.67 and -18.62):
  the flow is ahead by 85.8 ± 18.7 nats over the 297 images (4.6 dse). Its importance weights have heavier tails,
  though: mean ESS 163 against 282 of 1000, k̂ > 0.7 for 22% of the images against 9% (max 1.47 and 1.08). Those
  estimates are stochastic lower bounds that err low where k̂ is high; the per-image values there are not to be
  trusted, and the flow's better ELBO did not buy a better proposal.

A check of the Monte Carlo error, not part of the script. From one set of 1,000 flow draws to the next, the
reweighted and unweighted estimates move together by about ±0.15, while the shift between them (``reweighting_shift``
in the report) stays at 0.1-0.3. With 8,000 flow draws: -103.35 reweighted, -103.57 unweighted; 4,000 NUTS draws (at
another seed) give -103.35. So the reweighted estimate is unbiased and the unweighted one about 0.2 nats low; at
1,000 draws both are within Monte Carlo error of one NUTS run, and the shift is what is measured well. The
correction matters more for worse guides: after 250 SVI steps instead of 1,000 (the test's settings), the flow guide
(k̂ 0.3) gives -102.9 reweighted and -104.0 unweighted against the -103.35 above, and the mean-field guide (k̂ 0.93,
flagged) -102.8 and -106.9.

It takes about 75 s on one core: the three SVI fits with their conversions 36 s (a conversion of 1,000 draws takes
about 0.1 s with ``parallel=True``, 7 s one draw at a time), NUTS (two chains of 200 + 500 steps) 27 s, the two VAEs
12 s. The test (``--svi-steps 250 --draws 200
--prior-draws 100 --nuts-warmup 60 --nuts-samples 100 --vae-epochs 6 --is-samples 200``) takes about 35 s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from _figures import tile  # tutorials/_figures.py
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal
from torch import nn

from dgm_ppl.arviz import guide_pareto_k, heldout_elpd, loo, to_inference_data
from dgm_ppl.datasets import load_digits
from dgm_ppl.evaluation import log_likelihood

VARS = ["a", "b", "sigma", "nu"]
PRIOR_RANGE = 60  # the prior predictive histogram's range


def main():
    ap = argparse.ArgumentParser(description="Predictive checks, VI-corrected LOO and model comparison in ArviZ")
    ap.add_argument("--n-data", type=int, default=80, help="points of the regression data (6 of them outliers)")
    ap.add_argument("--svi-steps", type=int, default=1000, help="SVI steps per regression fit")
    ap.add_argument("--particles", type=int, default=8, help="ELBO particles per SVI step (vectorized)")
    ap.add_argument("--draws", type=int, default=1000, help="guide draws converted to InferenceData")
    ap.add_argument("--prior-draws", type=int, default=500, help="prior predictive draws")
    ap.add_argument("--chains", type=int, default=2, help="NUTS chains")
    ap.add_argument("--nuts-samples", type=int, default=500, help="NUTS draws per chain")
    ap.add_argument("--nuts-warmup", type=int, default=200, help="NUTS warm-up steps per chain")
    ap.add_argument("--vae-epochs", type=int, default=40, help="epochs over the 1,500 training digits, per VAE")
    ap.add_argument("--kl-warmup", type=int, default=10, help="epochs over which the KL weight rises to 1")
    ap.add_argument("--zdim", type=int, default=8, help="VAE latent dimension")
    ap.add_argument("--flow-steps", type=int, default=2, help="conditional affine autoregressive steps in guide (b)")
    ap.add_argument("--is-samples", type=int, default=1000, help="importance samples per test image")
    ap.add_argument("--out", default="outputs", help="folder for the figure")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and polite on shared machines
    progress = not args.no_progress
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    report: dict = {}
    seconds: dict = {}

    # ==========================================================================================
    # Part 1. Linear regression with outliers: Normal vs Student-t likelihood.
    # ==========================================================================================
    x, y, outlier = make_regression_data(args.n_data, args.seed)
    report["data"] = {"n": len(x), "outliers": int(outlier.sum())}

    # --- 1. prior predictive check: no posterior yet, just the model ------------------------
    pyro.set_rng_seed(args.seed)
    # parallel=True: all draws in one vectorized pass (the models broadcast over a leading draw dim)
    prior = to_inference_data(
        student_t_model, prior=True, model_args=(x, y), num_samples=args.prior_draws, parallel=True
    )
    y_prior = prior.prior_predictive["y"].values.reshape(-1, len(x))  # (draws, n)
    lo, hi = np.quantile(y_prior, [0.05, 0.95], axis=0)
    report["prior_predictive"] = {
        "num_samples": args.prior_draws,
        "y_rep_quantiles_5_50_95": [round(float(q), 2) for q in np.quantile(y_prior, [0.05, 0.5, 0.95])],
        "observed_y_range": [round(float(y.min()), 2), round(float(y.max()), 2)],
        "fraction_of_y_inside_90pct": round(float(((y.numpy() >= lo) & (y.numpy() <= hi)).mean()), 3),
        "fraction_beyond_range": round(float((np.abs(y_prior) > PRIOR_RANGE).mean()), 4),
    }

    # --- 2. variational fits: A with a mean-field guide, B with mean-field and flow guides ---
    fits = {
        "normal": (normal_model, AutoNormal),
        "student_t_meanfield": (student_t_model, AutoNormal),
        "student_t_flow": (student_t_model, lambda m: AutoIAFNormal(m, hidden_dim=[32], num_transforms=2)),
    }
    idata, losses = {}, {}
    for name, (model, make_guide) in fits.items():
        tic = time.perf_counter()
        pyro.set_rng_seed(args.seed)
        pyro.clear_param_store()
        guide = make_guide(model)
        losses[name] = fit_svi(model, guide, (x, y), args.svi_steps, args.particles)
        # The conversion: `draws` guide draws in chain 0, each run through the model for log p(y_i | θ_s),
        # replicated data and log p(θ_s, y) - log q(θ_s).
        idata[name] = to_inference_data(model, guide, model_args=(x, y), num_samples=args.draws, parallel=True)
        seconds[name] = round(time.perf_counter() - tic, 1)

    # --- 3. posterior predictive check: interval coverage -------------------------------------
    report["posterior_predictive"] = {
        name: ppc_coverage(idata[name], y) for name in ("normal", "student_t_meanfield", "student_t_flow")
    }

    # --- 6. the NUTS reference (run before LOO so that all LOO numbers sit together) -----------
    tic = time.perf_counter()
    pyro.set_rng_seed(args.seed)
    # A dense mass matrix (full_mass) adapts to the a-b correlation; jit_compile traces the potential once; trees of
    # at most 2^6 leapfrog steps bound the cost of the first warm-up steps (tiny step sizes), and are plenty after.
    kernel = NUTS(student_t_model, full_mass=True, max_tree_depth=6, jit_compile=True, ignore_jit_warnings=True)
    mcmc = MCMC(
        kernel,
        num_samples=args.nuts_samples,
        warmup_steps=args.nuts_warmup,
        num_chains=args.chains,
        disable_progbar=not progress,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "num_chains=2 is more than available_cpu=1": chains run one after another
        mcmc.run(x, y)
    idata["nuts"] = to_inference_data(student_t_model, mcmc=mcmc, parallel=True)
    seconds["nuts"] = round(time.perf_counter() - tic, 1)
    summary = az.summary(idata["nuts"], var_names=VARS)
    nuts_loo = loo(idata["nuts"])  # no log_q in sample_stats: this is plain az.loo

    # --- 4. LOO: reweighted for the guide, plain az.loo for comparison, guide k-hat ---------
    report["loo"] = {}
    loos, plain_loos = {"nuts": nuts_loo}, {}
    for name in ("normal", "student_t_meanfield", "student_t_flow"):
        loos[name] = loo(idata[name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # az.loo warns on high k-hat; we report it
            plain = plain_loos[name] = az.loo(idata[name], pointwise=True)
        report["loo"][name] = {
            "reweighted": elpd_summary(loos[name]),
            "unweighted": elpd_summary(plain),
            "guide_k": round(guide_pareto_k(idata[name]), 3),
        }
        entry = report["loo"][name]
        # Same draws, two estimates: their shift, the correction for q != p, is far less noisy than either one.
        entry["reweighting_shift"] = round(entry["reweighted"]["elpd"] - entry["unweighted"]["elpd"], 3)
        if name != "normal":
            entry["reweighted_minus_nuts"] = round(entry["reweighted"]["elpd"] - float(nuts_loo.elpd_loo), 3)
            entry["unweighted_minus_nuts"] = round(entry["unweighted"]["elpd"] - float(nuts_loo.elpd_loo), 3)
            entry["pointwise_max_abs_diff_to_nuts"] = {
                "reweighted": round(float(np.abs(loos[name].loo_i.values - nuts_loo.loo_i.values).max()), 3),
                "unweighted": round(float(np.abs(plain.loo_i.values - nuts_loo.loo_i.values).max()), 3),
            }
    report["loo"]["nuts"] = elpd_summary(nuts_loo)
    report["loo"]["nuts"].update(
        num_draws=int(args.chains * args.nuts_samples),
        max_r_hat=round(float(summary["r_hat"].max()), 3),
        min_ess_bulk=round(float(summary["ess_bulk"].min()), 1),
        divergences=int(idata["nuts"].sample_stats["diverging"].sum()),
        # Each chain's draws alone: their spread is the Monte Carlo error of a LOO estimate from that many draws.
        per_chain=[round(float(loo(idata["nuts"].isel(chain=[c])).elpd_loo), 3) for c in range(args.chains)],
    )
    report["posterior_means"] = {
        name: {v: round(float(idata[name].posterior[v].mean()), 3) for v in VARS if v in idata[name].posterior}
        for name in ("normal", "student_t_meanfield", "student_t_flow", "nuts")
    }
    report["posterior_corr_a_b"] = {
        name: round(float(np.corrcoef(*(idata[name].posterior[v].values.ravel() for v in "ab"))[0, 1]), 3)
        for name in ("student_t_meanfield", "student_t_flow", "nuts")
    }

    # --- 5. model comparison -----------------------------------------------------------------
    compare = az.compare({"normal": loos["normal"], "student_t": loos["student_t_meanfield"]})
    report["compare"] = {
        "ranking": list(compare.index),
        "elpd_diff": round(float(compare.loc["normal", "elpd_diff"]), 3),
        "dse": round(float(compare.loc["normal", "dse"]), 3),
        "weight_student_t": round(float(compare.loc["student_t", "weight"]), 3),
    }

    # ==========================================================================================
    # Part 2. Two VAEs on the binarized digits: held-out ELPD by importance sampling.
    # ==========================================================================================
    x_train = load_digits("train")  # (1500, 64) in {0, 1}: pixel on when intensity >= 8 of 16
    x_test = load_digits("test")  # (297, 64), a fixed split
    vae: dict = {"epochs": args.vae_epochs, "zdim": args.zdim, "is_samples": args.is_samples}
    estimates, vae_images = {}, {}
    for name, flow_steps in (("diagonal", 0), ("flow", args.flow_steps)):
        tic = time.perf_counter()
        pyro.set_rng_seed(args.seed)
        pyro.clear_param_store()
        model, guide, encoder, decoder = make_vae(name, args.zdim, flow_steps, x_train)
        if flow_steps:
            vae["vectorized_guide_check"] = check_vectorized_guide(guide, x_test[:20], particles=3)
        elbo = train_vae(model, guide, x_train, args.vae_epochs, min(args.kl_warmup, args.vae_epochs // 2), args.seed)
        # Evaluate right away: the next VAE has its own parameter names, but evaluation should not depend on that.
        est = log_likelihood(model, guide, x_test, num_samples=args.is_samples, batch_size=100, pareto_k=True)
        estimates[name] = est
        vae[name] = {
            "test_log_likelihood": round(est.mean(), 3),
            "test_elbo": round(float(test_elbo(model, guide, x_test)), 3),
            "final_train_elbo": round(-elbo[-1], 3),
            "mean_ess": round(float(est.ess.mean()), 1),
            "max_k": round(float(est.pareto_k.max()), 3),
            "fraction_k_above_0.7": round(float((est.pareto_k > 0.7).float().mean()), 4),
            "seconds": round(time.perf_counter() - tic, 1),
        }
        vae_images[name] = vae_samples(decoder, encoder, x_test[:8], args.zdim)
    vae_compare = az.compare({"diagonal": heldout_elpd(estimates["diagonal"]), "flow": heldout_elpd(estimates["flow"])})
    second = vae_compare.index[1]
    vae.update(
        ranking=list(vae_compare.index),
        elpd_diff=round(float(vae_compare.loc[second, "elpd_diff"]), 3),
        dse=round(float(vae_compare.loc[second, "dse"]), 3),
    )
    report["vae"] = vae
    report["seconds"] = seconds
    report["total_seconds"] = round(time.perf_counter() - start, 1)

    print(json.dumps(report, indent=1))

    path = os.path.join(args.out, "bayesian_workflow.png")
    make_figure(path, report, x, y, outlier, prior, idata, loos, plain_loos, estimates, vae_images, x_test)
    print(f"saved {path}")


# ----------------------------------------------------------------------------------------------
# Part 1: data, models, fitting, checks.
# ----------------------------------------------------------------------------------------------
def make_regression_data(n: int, seed: int, n_outliers: int = 6):
    """``y = 1 + 0.6 x + N(0, 0.6²)`` at ``x ~ U(0, 10)``; ``n_outliers`` points pushed up by U(4, 8)."""
    gen = torch.Generator().manual_seed(seed)
    x = 10 * torch.rand(n, generator=gen)
    y = 1.0 + 0.6 * x + 0.6 * torch.randn(n, generator=gen)
    outlier = torch.zeros(n, dtype=torch.bool)
    outlier[torch.randperm(n, generator=gen)[:n_outliers]] = True
    y[outlier] += 4 + 4 * torch.rand(n_outliers, generator=gen)
    return x, y, outlier


def normal_model(x, y):
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    b = pyro.sample("b", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(5.0))
    with pyro.plate("obs", len(x)):
        pyro.sample("y", dist.Normal(a + b * x, sigma), obs=y)


def student_t_model(x, y):
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    b = pyro.sample("b", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(5.0))
    nu = pyro.sample("nu", dist.Gamma(2.0, 0.1))
    with pyro.plate("obs", len(x)):
        pyro.sample("y", dist.StudentT(nu, a + b * x, sigma), obs=y)


def fit_svi(model, guide, data: tuple, steps: int, particles: int) -> list[float]:
    """Adam with a learning rate decaying from 0.03 to 0.003; the ELBO averaged over vectorized particles."""
    optim = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=particles, vectorize_particles=True))
    return [svi.step(*data) for _ in range(steps)]


def ppc_coverage(data, y: torch.Tensor) -> dict:
    """Fraction of the observed points inside the central 50% and 90% posterior predictive intervals."""
    y_rep = data.posterior_predictive["y"].values.reshape(-1, len(y))
    out = {}
    for level in (50, 90):
        lo, hi = np.quantile(y_rep, [0.5 - level / 200, 0.5 + level / 200], axis=0)
        out[f"coverage_{level}"] = round(float(((y.numpy() >= lo) & (y.numpy() <= hi)).mean()), 3)
    return out


def elpd_summary(elpd) -> dict:
    return {
        "elpd": round(float(elpd.elpd_loo), 3),
        "se": round(float(elpd.se), 3),
        "p_loo": round(float(elpd.p_loo), 3),
        "max_k": round(float(elpd.pareto_k.max()), 3),
        "num_k_above_0.7": int((elpd.pareto_k > 0.7).sum()),
    }


# ----------------------------------------------------------------------------------------------
# Part 2: the VAEs.
# ----------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """x (64 pixels) -> features h -> (loc, scale) of a diagonal Normal, plus optional conditional flows on h."""

    def __init__(self, zdim: int, hidden: int = 128, flow_steps: int = 0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 2 * zdim)
        # Each step: z_j <- mu_j(z_<j, h) + sigma_j(z_<j, h) z_j, a MADE network on [h, z] (a new random order of
        # the coordinates per step).
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(zdim, context_dim=hidden, hidden_dims=[64]) for _ in range(flow_steps)
        )

    def forward(self, x):
        h = self.body(x)
        loc, raw = self.head(h).chunk(2, dim=-1)
        return h, loc, F.softplus(raw - 3.0) + 1e-4  # starts near 0.05: z carries information from the start


def make_vae(name: str, zdim: int, flow_steps: int, x_train: torch.Tensor):
    """The model, the guide and their networks. ``kl_weight`` (1 by default, and in evaluation) scales log p(z) and
    log q(z | x) alike, i.e. the KL term of the ELBO, for a warm-up during training."""
    encoder = Encoder(zdim, flow_steps=flow_steps)
    decoder = nn.Sequential(nn.Linear(zdim, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    with torch.no_grad():  # start from the independent-pixel model: the pixel means as output biases
        decoder[-1].bias.copy_(torch.logit(x_train.mean(0).clamp(0.01, 0.99)))

    def model(x, kl_weight=1.0):
        pyro.module(f"{name}_decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([zdim]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x, kl_weight=1.0):
        pyro.module(f"{name}_encoder", encoder)
        h, loc, scale = encoder(x)  # (N, hidden), (N, zdim), (N, zdim)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_weight):
            q = dist.Normal(loc, scale).to_event(1)
            if len(encoder.flows):
                # Conditioning on h binds the context; the MADE nets expand h over any leading particle dims.
                q = dist.TransformedDistribution(q, [flow.condition(h) for flow in encoder.flows])
            pyro.sample("z", q)

    return model, guide, encoder, decoder


def train_vae(model, guide, x: torch.Tensor, epochs: int, warmup: int, seed: int, batch_size: int = 100):
    """SVI with Trace_ELBO on minibatches; the KL weight rises linearly to 1 over the first ``warmup`` epochs.
    Returns the loss per datum and epoch. The plate has the minibatch's size (no subsampling scale), which only
    rescales the loss of a model whose weights are point estimates."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        kl_weight = min(1.0, (epoch + 1) / warmup) if warmup else 1.0
        order = torch.randperm(len(x), generator=gen)
        total = sum(svi.step(x[order[i : i + batch_size]], kl_weight) for i in range(0, len(x), batch_size))
        history.append(total / len(x))
    return history


@torch.no_grad()
def test_elbo(model, guide, x: torch.Tensor, particles: int = 100) -> float:
    """The ELBO per datum on x: what the training optimizes, and a looser bound than the IWAE estimate."""
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    return -elbo.loss(model, guide, x) / len(x)


@torch.no_grad()
def check_vectorized_guide(guide, x: torch.Tensor, particles: int = 3) -> dict:
    """Run the guide in an outer particle plate (as ``log_likelihood`` does) and check that each vectorized draw's
    log q(z | x) equals the one recomputed, one particle at a time, by a fresh guide run (which must invert the flow,
    having no cache for these z)."""
    with pyro.plate("_num_particles", particles, dim=-2):
        site = poutine.trace(guide).get_trace(x).nodes["z"]
    z, log_q = site["value"], site["fn"].log_prob(site["value"])
    fresh = torch.stack([poutine.trace(guide).get_trace(x).nodes["z"]["fn"].log_prob(z[p]) for p in range(particles)])
    return {
        "z_shape": list(z.shape),
        "log_q_shape": list(log_q.shape),
        "max_abs_diff": float((log_q - fresh).abs().max()),
    }


@torch.no_grad()
def vae_samples(decoder, encoder, x: torch.Tensor, zdim: int) -> dict:
    """Pixel probabilities: reconstructions of x (decoder at the encoder's mean) and decodings of prior draws."""
    _, loc, _ = encoder(x)
    return {"reconstructions": torch.sigmoid(decoder(loc)), "samples": torch.sigmoid(decoder(torch.randn(16, zdim)))}


# ----------------------------------------------------------------------------------------------
# The figure.
# ----------------------------------------------------------------------------------------------
def make_figure(path, report, x, y, outlier, prior, idata, loos, plain_loos, estimates, vae_images, x_test):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(16, 14))
    xs = np.linspace(0, 10, 50)
    xn, yn, out = x.numpy(), y.numpy(), outlier.numpy()

    def data_points(ax):
        ax.scatter(xn[~out], yn[~out], s=12, color="k", zorder=3, label="data")
        ax.scatter(xn[out], yn[out], s=30, marker="x", color="tab:red", zorder=3, label="outliers")

    # Prior predictive: lines a + b x from the prior, and the replicated data's histogram.
    ax = axes[0, 0]
    a, b = (prior.prior[v].values.ravel()[:100] for v in ("a", "b"))
    ax.plot(xs, a[None, :] + b[None, :] * xs[:, None], color="tab:blue", alpha=0.15, lw=1)
    data_points(ax)
    ax.set(title="prior predictive: 100 lines a + b x from the prior", xlabel="x", ylabel="y")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[0, 1]
    pp = report["prior_predictive"]
    bins = np.linspace(-PRIOR_RANGE, PRIOR_RANGE, 81)
    y_rep = prior.prior_predictive["y"].values.ravel()
    ax.hist(y_rep, bins=bins, density=True, color="tab:blue", alpha=0.5, label="prior predictive ỹ")
    ax.hist(yn, bins=bins, density=True, histtype="step", lw=2, color="k", label="observed y")
    ax.set(
        title=f"prior predictive ỹ: 90% intervals cover {pp['fraction_of_y_inside_90pct']:.0%} of y,\n"
        f"{pp['fraction_beyond_range']:.1%} of ỹ beyond ±{PRIOR_RANGE} (small ν: heavy tails)",
        xlabel="y",
        ylabel="density",
    )
    ax.legend(fontsize=8)

    # The posterior of (a, b): NUTS vs the two guides.
    ax = axes[0, 2]
    for name, color, label in (
        ("nuts", "k", "NUTS"),
        ("student_t_meanfield", "tab:orange", "mean-field guide"),
        ("student_t_flow", "tab:green", "IAF flow guide"),
    ):
        post = idata[name].posterior
        k = report["loo"][name]["guide_k"] if name != "nuts" else None
        ax.scatter(
            post["a"].values.ravel()[:400],
            post["b"].values.ravel()[:400],
            s=4,
            alpha=0.4,
            color=color,
            label=label + (f" (guide k̂ {k:.2f})" if k is not None else ""),
        )
    ax.set(title="Student-t model: posterior of (a, b)", xlabel="a (intercept)", ylabel="b (slope)")
    ax.legend(fontsize=8, markerscale=3)

    # Posterior predictive intervals over x for A and B.
    order = np.argsort(xn)
    for ax, name, label in (
        (axes[1, 0], "normal", "A, Normal"),
        (axes[1, 1], "student_t_meanfield", "B, Student-t"),
    ):
        y_rep = idata[name].posterior_predictive["y"].values.reshape(-1, len(xn))[:, order]
        q = np.quantile(y_rep, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
        ax.fill_between(xn[order], q[0], q[4], color="tab:blue", alpha=0.2, lw=0, label="90% predictive")
        ax.fill_between(xn[order], q[1], q[3], color="tab:blue", alpha=0.35, lw=0, label="50% predictive")
        ax.plot(xn[order], q[2], color="tab:blue", lw=1.5)
        data_points(ax)
        cov = report["posterior_predictive"][name]
        ax.set(
            title=f"posterior predictive, {label}:\n50% / 90% intervals cover {cov['coverage_50']:.0%} / "
            f"{cov['coverage_90']:.0%} of the points",
            xlabel="x",
            ylabel="y",
        )
        ax.legend(loc="upper left", fontsize=8)
    axes[1, 1].set_ylim(axes[1, 0].get_ylim())

    # Pointwise Pareto k-hat: plain az.loo on guide draws looks fine; the reweighted LOO sees the guide's error.
    ax = axes[1, 2]
    for elpd, color, label in (
        (plain_loos["student_t_meanfield"], "tab:red", "mean field, az.loo (ignores q ≠ p)"),
        (loos["student_t_meanfield"], "tab:orange", "mean field, reweighted"),
        (loos["student_t_flow"], "tab:green", "IAF flow, reweighted"),
        (loos["nuts"], "k", "NUTS, az.loo"),
    ):
        az.plot_khat(
            elpd,
            ax=ax,
            color=color,
            show_hlines=color == "k",
            hlines_kwargs={"color": "gray"},
            markersize=12,
            label=label,
        )
    ax.set(title="Student-t model, PSIS-LOO: k̂ per point", xlabel="data point", ylabel="k̂")
    ax.legend(fontsize=8, loc="center")

    # LOO estimates minus the NUTS reference; the spread of NUTS LOO over its chains shows the Monte Carlo error.
    ax = axes[2, 0]
    ref = report["loo"]["nuts"]
    rows = []
    for name, label in (("student_t_meanfield", "mean field"), ("student_t_flow", "IAF flow")):
        for kind in ("unweighted", "reweighted"):
            rows.append((f"{label}, {kind}", report["loo"][name][kind]["elpd"] - ref["elpd"]))
    for c, value in enumerate(ref["per_chain"]):
        rows.append((f"NUTS chain {c} alone", value - ref["elpd"]))
    colors = ["tab:red", "tab:orange", "tab:red", "tab:green"] + ["k"] * len(ref["per_chain"])
    ax.barh(range(len(rows)), [r[1] for r in rows], color=colors, alpha=0.7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    cmp = report["compare"]
    ax.set(
        title=f"Student-t elpd_loo minus NUTS ({ref['elpd']:.1f} ± {ref['se']:.1f})\n"
        f"vs Normal: Student-t ahead by {cmp['elpd_diff']:.1f} ± {cmp['dse']:.1f} (dse)",
        xlabel="nats",
    )

    # VAEs: test images, reconstructions, samples.
    ax = axes[2, 1]
    tiles = [x_test[:8]]
    for name in ("diagonal", "flow"):
        tiles += [vae_images[name]["reconstructions"], vae_images[name]["samples"][:8]]
    ax.imshow(tile(torch.cat(tiles), 5, 8), cmap="gray_r", interpolation="nearest", vmin=0, vmax=1)
    rows = ["test", "diag. recon.", "diag. samples", "flow recon.", "flow samples"]
    ax.set_yticks([5 + 10 * i for i in range(len(rows))], rows)
    ax.set_xticks([])
    ax.set_title("VAEs: pixel probabilities")

    # VAEs: per-image importance weights' k-hat and the held-out log-likelihoods.
    ax = axes[2, 2]
    vae = report["vae"]
    bins = np.linspace(-0.2, 1.6, 37)
    for name, color in (("diagonal", "tab:blue"), ("flow", "tab:green")):
        ax.hist(
            estimates[name].pareto_k.numpy(),
            bins=bins,
            histtype="step",
            lw=2,
            color=color,
            label=f"{name}: log p(x) {vae[name]['test_log_likelihood']:.2f} per image, "
            f"mean ESS {vae[name]['mean_ess']:.0f}",
        )
    ax.axvline(0.7, color="k", ls="--", lw=0.8)
    ax.set(
        title=f"VAE importance weights (S = {vae['is_samples']}): k̂ per image\n"
        f"held-out ELPD: {vae['ranking'][0]} ahead by {vae['elpd_diff']:.1f} ± {vae['dse']:.1f}",
        xlabel="Pareto k̂",
        ylabel="test images",
    )
    ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # room for the legend
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
