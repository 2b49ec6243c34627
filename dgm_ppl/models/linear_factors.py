r"""Linear factor models with non-Gaussian or temporal priors (Goodfellow et al. 2016, §13): ICA, sparse coding, SFA.

:class:`ICA` (noiseless, square; Bell & Sejnowski 1995): :math:`x = A s + \mu` with independent non-Gaussian sources
(logistic or Laplace). With the unmixing matrix :math:`W = A^{-1}` the change of variables gives the exact density

.. math::

    \log p(x) = \sum_j \log p_s\big((W (x - \mu))_j\big) + \log |\det W|,

the log-density of the model's observed site, so SVI with the empty guide is maximum likelihood. :func:`amari_index`
scores a recovered :math:`W` against the true :math:`A` (0 iff :math:`W A` is a scaled permutation).

:class:`SparseCoding` (Olshausen & Field 1996): :math:`h \sim \mathrm{Laplace}(0, 1/\lambda)^{K}`,
:math:`x \mid h \sim N(D h, \sigma^2 I)` with unit-norm atoms (the columns of D). The guide puts a point mass on the
MAP code, found by FISTA (Beck & Teboulle 2009) with the current dictionary,

.. math::

    h^*(x) = \arg\min_h \tfrac12 \|x - D h\|^2 + \lambda \sigma^2 \|h\|_1,

so that ``Trace_ELBO`` is :math:`-\log p(x, h^*)` and its gradient learns the dictionary (alternating MAP).

:class:`SlowFeatureAnalysis` (Wiskott & Sejnowski 2002), closed form: whiten :math:`x_t`, then the directions of least
variance of the whitened time difference, :math:`\min_w \mathbb E[(w^\top \Delta z_t)^2]` subject to unit variance and
decorrelation, are the eigenvectors of :math:`\mathrm{Cov}(\Delta z)` with the smallest eigenvalues (slowest first).
:class:`ProbabilisticSFA` (Turner & Sahani 2007) is its linear-Gaussian state-space form,

.. math::

    y_{t,j} = \lambda_j y_{t-1,j} + \sqrt{1 - \lambda_j^2}\, \epsilon_{t,j}, \quad y_0 \sim N(0, I), \qquad
    x_t = C y_t + \mu + N(0, \mathrm{diag}\,\psi),

each latent a stationary unit-variance AR(1) process (slow for :math:`\lambda_j \to 1`); the exact likelihood is
Pyro's ``GaussianHMM`` (a Kalman filter by parallel scan), so SVI with the empty guide is maximum likelihood.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import Tensor, nn

from .._data import as_data_tensor
from ._common import check_batch, data_plate

__all__ = ["ICA", "amari_index", "SparseCoding", "SlowFeatureAnalysis", "ProbabilisticSFA"]

PRIORS = ("logistic", "laplace")
_PRIOR_STD = {"logistic": math.pi / math.sqrt(3), "laplace": math.sqrt(2)}


def _data(x, name: str, dim: int | None = None) -> Tensor:
    """``x`` as a finite (N, dim) tensor (NumPy accepted), else a ``ValueError`` naming it."""
    x = as_data_tensor(x, name)
    if x.dim() != 2 or (dim is not None and x.shape[1] != dim) or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty batch of shape (N, {dim or 'D'}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _check_finite(name: str, x: Tensor) -> None:
    if not torch.jit.is_tracing() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# -- ICA -------------------------------------------------------------------------------------------------------------
def _source_log_prob(s: Tensor, prior: str) -> Tensor:
    if prior == "logistic":
        return -s - 2 * F.softplus(-s)
    return -s.abs() - math.log(2.0)


class _ICADistribution(dist.TorchDistribution):
    """The density of x = W⁻¹ s + μ, s with i.i.d. ``prior`` components (event shape (n,))."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, unmixing: Tensor, loc: Tensor, prior: str, batch_shape=()):
        self.unmixing, self.loc, self.prior = unmixing, loc, prior
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return _ICADistribution(self.unmixing, self.loc, self.prior, batch_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        s = (value - self.loc) @ self.unmixing.T
        return _source_log_prob(s, self.prior).sum(-1) + torch.linalg.slogdet(self.unmixing)[1]

    def sample(self, sample_shape=()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        with torch.no_grad():
            if self.prior == "logistic":
                u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-7, 1 - 1e-7)
                s = u.log() - (-u).log1p()
            else:
                s = torch.distributions.Laplace(self.loc.new_zeros(()), 1.0).sample(shape)
            return s @ torch.linalg.inv(self.unmixing).T + self.loc


class ICA(nn.Module):
    """Noiseless square ICA of ``n_sources``-dimensional data by maximum likelihood.

    ``model(x, num_data=None)`` observes ``x`` (B, n) at site ``"x"`` with the exact density above; ``guide`` is
    empty (no latent sites), so ``SVI(ica.model, ica.guide, optim, Trace_ELBO())`` maximizes the likelihood.
    :meth:`fit` does that after :meth:`init_whitening`. The unmixing matrix is :math:`W = R S`: the parameter
    ``weight`` (R) times a fixed preconditioner ``whitening`` (S, the identity until :meth:`init_whitening`), so that
    a first-order optimizer learns a well-scaled, nearly orthogonal R.

    :param n_sources: the number of sources (= data dimension).
    :param prior: the source density, ``"logistic"`` or ``"laplace"`` (super-Gaussian: suited to super-Gaussian
        sources; sub-Gaussian ones such as uniform need a sub-Gaussian prior, not offered).
    :param name: the module's name in Pyro's param store.
    """

    def __init__(self, n_sources: int, prior: str = "logistic", *, name: str = "ica"):
        super().__init__()
        _positive_int("n_sources", n_sources)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        self.n_sources, self.prior, self.name = n_sources, prior, name
        self.weight = nn.Parameter(torch.eye(n_sources))
        self.loc = nn.Parameter(torch.zeros(n_sources))
        self.register_buffer("whitening", torch.eye(n_sources))

    @property
    def unmixing(self) -> Tensor:
        """W = R S."""
        return self.weight @ self.whitening

    @property
    def mixing(self) -> Tensor:
        """A = W⁻¹."""
        return torch.linalg.inv(self.unmixing)

    def distribution(self, batch_shape=()) -> dist.TorchDistribution:
        """p(x) with the given batch shape."""
        return _ICADistribution(self.unmixing, self.loc, self.prior, batch_shape)

    def model(self, x: Tensor, num_data: int | None = None) -> Tensor:
        check_batch("x", x, self.n_sources)
        _check_finite("x", x)
        pyro.module(self.name, self)
        with data_plate(x, num_data):
            return pyro.sample("x", self.distribution(x.shape[:1]), obs=x)

    def guide(self, x: Tensor, num_data: int | None = None) -> None:
        """No latent sites: SVI's loss is the negative log-likelihood."""

    def log_prob(self, x) -> Tensor:
        """log p(x_i), shape (N,)."""
        return self.distribution().log_prob(_data(x, "x", self.n_sources))

    @torch.no_grad()
    def transform(self, x) -> Tensor:
        """The sources s = W (x - μ), (N, n)."""
        return (_data(x, "x", self.n_sources) - self.loc) @ self.unmixing.T

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        return self.distribution().sample((_positive_int("num_samples", num_samples),))

    @torch.no_grad()
    def init_whitening(self, x) -> ICA:
        """μ = mean, S = c Σ^{-1/2} (Σ the data covariance, c the prior's standard deviation) and R = I: the sources
        start white with the prior's variance, and what remains to learn is (nearly) a rotation R."""
        x = _data(x, "x", self.n_sources)
        loc = x.mean(0)
        vals, vecs = torch.linalg.eigh((x - loc).T @ (x - loc) / len(x))
        self.loc.copy_(loc)
        self.whitening.copy_(_PRIOR_STD[self.prior] * (vecs / vals.clamp_min(1e-12).sqrt()) @ vecs.T)
        self.weight.copy_(torch.eye(self.n_sources))
        return self

    def fit(self, x, num_steps: int = 300, lr: float = 0.05, batch_size: int | None = None) -> ICA:
        """:meth:`init_whitening`, then ``num_steps`` SVI steps (Adam, ``Trace_ELBO``) on the whole data (or on
        minibatches of ``batch_size``). Returns ``self``. This module's entries in Pyro's param store (``name$$$...``)
        are replaced, so that the fit starts from the whitening (``pyro.module`` would restore stale values)."""
        x = _data(x, "x", self.n_sources)
        self.init_whitening(x)
        store = pyro.get_param_store()
        for key in [k for k in store.keys() if k.startswith(f"{self.name}$$$")]:
            del store[key]
        svi = pyro.infer.SVI(self.model, self.guide, pyro.optim.Adam({"lr": lr}), pyro.infer.Trace_ELBO())
        n = len(x)
        for _ in range(_positive_int("num_steps", num_steps)):
            batch = x if batch_size is None else x[torch.randint(0, n, (batch_size,))]
            svi.step(batch, n)
        return self


def amari_index(unmixing, mixing) -> float:
    r"""The normalized Amari index of :math:`P = |W A|` (n × n), in [0, 1]; 0 iff P is a scaled permutation:

    .. math::

        \frac{1}{2n(n-1)} \Big[\sum_i \Big(\frac{\sum_j p_{ij}}{\max_j p_{ij}} - 1\Big)
        + \sum_j \Big(\frac{\sum_i p_{ij}}{\max_i p_{ij}} - 1\Big)\Big].
    """
    w, a = as_data_tensor(unmixing, "unmixing").double(), as_data_tensor(mixing, "mixing").double()
    if w.dim() != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 2:
        raise ValueError(f"unmixing must be a square matrix of size at least 2, got {tuple(w.shape)}")
    if a.shape != w.shape:
        raise ValueError(f"mixing must have the shape of unmixing {tuple(w.shape)}, got {tuple(a.shape)}")
    p = (w @ a).abs()
    n = p.shape[0]
    rows = (p.sum(1) / p.max(1).values - 1).sum()
    cols = (p.sum(0) / p.max(0).values - 1).sum()
    return ((rows + cols) / (2 * n * (n - 1))).item()


# -- sparse coding ---------------------------------------------------------------------------------------------------
class SparseCoding(nn.Module):
    """Sparse coding of ``n_features``-dimensional data with a dictionary of ``n_atoms`` unit-norm atoms.

    ``model(x, num_data=None)``: codes at site ``"h"`` (Laplace prior), data at ``"x"``, in plate ``"data"``;
    ``guide(x, num_data=None)``: ``Delta`` at the MAP code :meth:`encode` (no parameters, no gradient through it).

    :param n_features: the data size.
    :param n_atoms: the number of atoms K.
    :param sparsity: λ, the rate of the Laplace prior (its scale is 1/λ).
    :param noise_scale: σ, the standard deviation of the Gaussian likelihood.
    :param num_iters: FISTA iterations per encoding.
    :param name: the module's name in Pyro's param store.
    """

    def __init__(
        self,
        n_features: int,
        n_atoms: int,
        sparsity: float = 1.0,
        *,
        noise_scale: float = 0.1,
        num_iters: int = 100,
        name: str = "sparse_coding",
    ):
        super().__init__()
        _positive_int("n_features", n_features)
        _positive_int("n_atoms", n_atoms)
        _positive_int("num_iters", num_iters)
        if not (math.isfinite(sparsity) and sparsity > 0):
            raise ValueError(f"sparsity must be positive, got {sparsity}")
        if not (math.isfinite(noise_scale) and noise_scale > 0):
            raise ValueError(f"noise_scale must be positive, got {noise_scale}")
        self.n_features, self.n_atoms, self.name = n_features, n_atoms, name
        self.sparsity, self.noise_scale, self.num_iters = float(sparsity), float(noise_scale), num_iters
        self.raw_dictionary = nn.Parameter(torch.randn(n_features, n_atoms))

    @property
    def dictionary(self) -> Tensor:
        """D (n_features, n_atoms), unit-norm columns."""
        return self.raw_dictionary / self.raw_dictionary.norm(dim=0).clamp_min(1e-12)

    @torch.no_grad()
    def init_from_data(self, x, generator: torch.Generator | None = None) -> SparseCoding:
        """Atoms set to randomly chosen data points (normalized), a common initialization."""
        x = _data(x, "x", self.n_features)
        self.raw_dictionary.copy_(x[torch.randint(0, len(x), (self.n_atoms,), generator=generator)].T)
        return self

    @torch.no_grad()
    def encode(self, x) -> Tensor:
        """The MAP codes (N, n_atoms), by FISTA with the current dictionary."""
        x = as_data_tensor(x, "x")
        check_batch("x", x, self.n_features)
        d = self.dictionary.detach()
        step = 1.0 / torch.linalg.matrix_norm(d, ord=2).pow(2).clamp_min(1e-12)
        threshold = step * self.sparsity * self.noise_scale**2
        h = y = x.new_zeros(x.shape[0], self.n_atoms)
        momentum = 1.0
        for _ in range(self.num_iters):
            z = y + step * (x - y @ d.T) @ d
            h_new = z.sign() * (z.abs() - threshold).clamp_min(0)
            m_new = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
            y = h_new + (momentum - 1) / m_new * (h_new - h)
            h, momentum = h_new, m_new
        return h

    def model(self, x: Tensor, num_data: int | None = None) -> Tensor:
        check_batch("x", x, self.n_features)
        _check_finite("x", x)
        pyro.module(self.name, self)
        with data_plate(x, num_data):
            prior = dist.Laplace(x.new_zeros(self.n_atoms), 1.0 / self.sparsity).to_event(1)
            h = pyro.sample("h", prior)
            return pyro.sample("x", dist.Normal(h @ self.dictionary.T, self.noise_scale).to_event(1), obs=x)

    def guide(self, x: Tensor, num_data: int | None = None) -> Tensor:
        check_batch("x", x, self.n_features)
        _check_finite("x", x)
        with data_plate(x, num_data):
            return pyro.sample("h", dist.Delta(self.encode(x), event_dim=1))

    @torch.no_grad()
    def reconstruct(self, x) -> Tensor:
        """D h*(x)."""
        return self.encode(x) @ self.dictionary.T


# -- slow feature analysis -------------------------------------------------------------------------------------------
def _sequence(x, name: str, dim: int | None = None, min_length: int = 2) -> Tensor:
    x = as_data_tensor(x, name)
    if x.dim() != 2 or x.shape[0] < min_length or (dim is not None and x.shape[1] != dim):
        shape = f"(T >= {min_length}, {dim or 'D'})"
        raise ValueError(f"{name} must be a time series of shape {shape}, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


class SlowFeatureAnalysis:
    """Linear SFA in closed form: :meth:`fit` on a time series ``x`` (T, D), then :meth:`transform` gives the
    ``n_components`` slowest unit-variance, decorrelated features (slowest first).

    After :meth:`fit`: ``mean_`` (D,), ``projection_`` (D, n_components) and ``slowness_`` (n_components,), the
    eigenvalues :math:`\\mathbb E[(\\Delta y_j)^2]` (ascending). Directions of the data with variance below
    ``rtol`` times the largest are dropped before whitening.
    """

    def __init__(self, n_components: int, *, rtol: float = 1e-8):
        self.n_components = _positive_int("n_components", n_components)
        self.rtol = rtol
        self.mean_: Tensor | None = None
        self.projection_: Tensor | None = None
        self.slowness_: Tensor | None = None

    @torch.no_grad()
    def fit(self, x) -> SlowFeatureAnalysis:
        x = _sequence(x, "x")
        self.mean_ = x.mean(0)
        xc = x - self.mean_
        vals, vecs = torch.linalg.eigh(xc.T @ xc / len(x))
        keep = vals > self.rtol * vals.max().clamp_min(1e-30)
        if int(keep.sum()) < self.n_components:
            raise ValueError(
                f"n_components ({self.n_components}) exceeds the rank of the data ({int(keep.sum())} directions)"
            )
        whiten = vecs[:, keep] / vals[keep].sqrt()
        dz = torch.diff(xc @ whiten, dim=0)
        slowness, directions = torch.linalg.eigh(dz.T @ dz / len(dz))  # ascending: slowest first
        self.projection_ = whiten @ directions[:, : self.n_components]
        self.slowness_ = slowness[: self.n_components]
        return self

    @torch.no_grad()
    def transform(self, x) -> Tensor:
        if self.projection_ is None:
            raise RuntimeError("call fit before transform")
        x = _sequence(x, "x", len(self.mean_), min_length=1)
        return (x - self.mean_) @ self.projection_

    def fit_transform(self, x) -> Tensor:
        return self.fit(x).transform(x)


class ProbabilisticSFA(nn.Module):
    """Probabilistic SFA: ``n_components`` AR(1) latents with coefficients λ ∈ (-1, 1), linear-Gaussian
    observations of size ``x_dim`` (see the module's notes).

    ``model(x, num_data=None)`` observes sequences ``x`` (B, T, x_dim) (or one (T, x_dim)) at site ``"x"`` whose
    distribution is the exact ``GaussianHMM`` marginal; ``guide`` is empty, so SVI with ``Trace_ELBO`` is maximum
    likelihood. Offered: :meth:`log_likelihood` (exact), :attr:`coefficients` (λ), :meth:`distribution` and
    :meth:`sample`; no smoother (``GaussianHMM.filter`` gives the last state's filtering distribution).

    :param x_dim: the observation size.
    :param n_components: the number of latent processes.
    :param name: the module's name in Pyro's param store.
    """

    def __init__(self, x_dim: int, n_components: int, *, name: str = "psfa"):
        super().__init__()
        self.x_dim, self.n_components, self.name = _positive_int("x_dim", x_dim), n_components, name
        _positive_int("n_components", n_components)
        self.raw_coefficients = nn.Parameter(torch.linspace(0.0, 1.0, n_components))
        self.weight = nn.Parameter(torch.randn(x_dim, n_components) / math.sqrt(n_components))
        self.loc = nn.Parameter(torch.zeros(x_dim))
        self.log_noise = nn.Parameter(torch.zeros(x_dim))  # log of the noise standard deviation

    @property
    def coefficients(self) -> Tensor:
        """λ (n_components,)."""
        return torch.tanh(self.raw_coefficients)

    def distribution(self, num_steps: int) -> dist.GaussianHMM:
        """p(x_{1:T}), event shape (T, x_dim)."""
        lam = self.coefficients
        k = self.n_components
        return dist.GaussianHMM(
            dist.Normal(lam.new_zeros(k), 1.0).to_event(1),
            torch.diag_embed(lam),
            dist.Normal(lam.new_zeros(k), (1 - lam**2).clamp_min(1e-6).sqrt()).to_event(1),
            self.weight.T,
            dist.Normal(self.loc, self.log_noise.exp()).to_event(1),
            duration=_positive_int("num_steps", num_steps),
        )

    def _sequences(self, x) -> Tensor:
        x = as_data_tensor(x, "x")
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.x_dim or x.shape[1] < 1:
            raise ValueError(f"x must be (B, T, {self.x_dim}) or (T, {self.x_dim}), got {tuple(x.shape)}")
        _check_finite("x", x)
        return x

    def model(self, x: Tensor, num_data: int | None = None) -> Tensor:
        x = self._sequences(x)
        pyro.module(self.name, self)
        with data_plate(x, num_data):
            return pyro.sample("x", self.distribution(x.shape[1]), obs=x)

    def guide(self, x: Tensor, num_data: int | None = None) -> None:
        """No latent sites: SVI's loss is the negative log-likelihood."""

    def log_likelihood(self, x) -> Tensor:
        """log p(x_{1:T}) per sequence, shape (B,) (or () for one (T, x_dim) sequence)."""
        single = as_data_tensor(x, "x").dim() == 2
        x = self._sequences(x)
        out = self.distribution(x.shape[1]).log_prob(x)
        return out[0] if single else out

    @torch.no_grad()
    def sample(self, num_steps: int, num_sequences: int = 1) -> Tensor:
        """(num_sequences, T, x_dim) draws."""
        return self.distribution(num_steps).sample((_positive_int("num_sequences", num_sequences),))
