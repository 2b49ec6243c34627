r"""Linear-Gaussian factor models: the closed-form test bed for amortized inference and likelihood estimators.

.. math::

    z_i \sim N(0, I_k), \qquad x_i \mid z_i \sim N(W z_i + \mu, \Psi), \qquad
    \Psi = \mathrm{diag}(\psi) \ \text{(factor analysis)} \quad\text{or}\quad \sigma^2 I \ \text{(PPCA)}.

Everything is Gaussian, so the marginal and the posterior are exact (Tipping & Bishop 1999; Bishop 2006, §12.2):

.. math::

    x_i \sim N(\mu, W W^\top + \Psi), \qquad
    z_i \mid x_i \sim N\big(M^{-1} W^\top \Psi^{-1} (x_i - \mu),\ M^{-1}\big), \quad M = I + W^\top \Psi^{-1} W,

and the PPCA maximum-likelihood fit is closed-form: with the eigenpairs :math:`(\lambda_j, u_j)` of the sample
covariance, :math:`\sigma^2 = \frac{1}{D - k} \sum_{j > k} \lambda_j`, :math:`W = U_k (\Lambda_k - \sigma^2 I)^{1/2}`.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ._common import check_batch, data_plate

__all__ = ["FactorAnalysis", "PPCA"]


class FactorAnalysis(nn.Module):
    """Factor analysis with ``z_dim`` factors for ``x_dim``-dimensional data (``isotropic=True``: PPCA).

    ``model(x, num_data=None)`` is the Pyro program (latent site ``"z"`` in plate ``"data"``); :meth:`log_marginal`,
    :meth:`posterior` and :meth:`exact_guide` are the closed forms.
    """

    def __init__(self, x_dim: int, z_dim: int, *, isotropic: bool = False, name: str = "fa"):
        super().__init__()
        if not 0 < z_dim <= x_dim:
            raise ValueError(f"need 0 < z_dim <= x_dim, got z_dim={z_dim}, x_dim={x_dim}")
        self.x_dim, self.z_dim, self.isotropic, self.name = x_dim, z_dim, isotropic, name
        self.weight = nn.Parameter(torch.randn(x_dim, z_dim) / z_dim**0.5)
        self.loc = nn.Parameter(torch.zeros(x_dim))
        self.log_noise = nn.Parameter(torch.zeros(1 if isotropic else x_dim))  # log of the noise standard deviation

    @property
    def noise_variance(self) -> Tensor:
        """The diagonal of Ψ, shape (x_dim,)."""
        return (2 * self.log_noise).exp().expand(self.x_dim)

    def model(self, x: Tensor, num_data: int | None = None) -> Tensor:
        check_batch("x", x, self.x_dim)
        pyro.module(self.name, self)
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            mean = z @ self.weight.T + self.loc
            return pyro.sample("x", dist.Normal(mean, self.log_noise.exp()).to_event(1), obs=x)

    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(μ, W Wᵀ + Ψ)."""
        cov = self.weight @ self.weight.T + torch.diag(self.noise_variance)
        return dist.MultivariateNormal(self.loc, covariance_matrix=cov)

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p(x_i), shape (B,)."""
        check_batch("x", x, self.x_dim)
        return self.marginal().log_prob(x)

    def posterior(self, x: Tensor) -> dist.MultivariateNormal:
        """p(z_i | x_i), batch shape (B,)."""
        check_batch("x", x, self.x_dim)
        w_over_psi = self.weight / self.noise_variance[:, None]  # Ψ⁻¹ W
        precision = torch.eye(self.z_dim, dtype=x.dtype, device=x.device) + self.weight.T @ w_over_psi
        cov = torch.linalg.inv(precision)
        cov = 0.5 * (cov + cov.T)
        mean = (x - self.loc) @ w_over_psi @ cov
        return dist.MultivariateNormal(mean, covariance_matrix=cov)

    def exact_guide(self, x: Tensor, num_data: int | None = None) -> Tensor:
        """A Pyro guide that samples the exact posterior (its ELBO equals log p(x); importance weights are constant)."""
        with data_plate(x, num_data):
            return pyro.sample("z", self.posterior(x))

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        return self.marginal().sample((num_samples,))


class PPCA(FactorAnalysis):
    """Probabilistic PCA: factor analysis with isotropic noise σ² I, and a closed-form maximum-likelihood fit."""

    def __init__(self, x_dim: int, z_dim: int, *, name: str = "ppca"):
        super().__init__(x_dim, z_dim, isotropic=True, name=name)

    @classmethod
    @torch.no_grad()
    def fit_closed_form(cls, x: Tensor, z_dim: int, **kwargs) -> PPCA:
        """The maximum-likelihood PPCA of the data x (N, D) (Tipping & Bishop 1999), up to a rotation of W."""
        if x.dim() != 2:
            raise ValueError(f"x must be a batch of shape (N, D), got {tuple(x.shape)}")
        n, d = x.shape
        if not 0 < z_dim < d:
            raise ValueError(f"need 0 < z_dim < x_dim = {d} for a closed-form fit, got {z_dim}")
        model = cls(d, z_dim, **kwargs).to(device=x.device, dtype=x.dtype)
        loc = x.mean(0)
        cov = (x - loc).T @ (x - loc) / n
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        sigma2 = eigvals[z_dim:].mean()
        model.loc.copy_(loc)
        model.weight.copy_(eigvecs[:, :z_dim] * (eigvals[:z_dim] - sigma2).clamp_min(0).sqrt())
        model.log_noise.fill_(0.5 * sigma2.log().item())
        return model
