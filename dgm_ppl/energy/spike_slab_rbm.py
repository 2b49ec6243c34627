r"""The spike-and-slab RBM for real-valued data (Courville, Bergstra & Bengio 2011; Goodfellow et al. §20.5.3).

Real visible units :math:`v \in \mathbb R^D`, binary *spikes* :math:`h_i` and real *slabs* :math:`s_i` (one scalar slab
per spike, :math:`i = 1 \dots n`; :math:`W_i` is the :math:`i`-th column of ``weight``) have the energy of the
:math:`\mu`-ssRBM without the :math:`\Phi` terms,

.. math::

    E(v, s, h) = \tfrac12 v^\top \Lambda v - c^\top v - \sum_i v^\top W_i\, s_i h_i
        + \tfrac12 \sum_i \alpha_i (s_i - \mu_i h_i)^2 - \sum_i b_i h_i,

with a diagonal visible precision :math:`\Lambda` and slab precisions :math:`\alpha_i > 0`
(``slab_mean`` :math:`\mu = 0` and ``visible_bias`` :math:`c = 0` give the basic ssRBM).
Write :math:`x_i = v^\top W_i`. The conditionals are

.. math::

    p(h_i = 1 \mid v) = \sigma\Big(b_i + \mu_i x_i + \frac{x_i^2}{2\alpha_i}\Big), \qquad
    p(s_i \mid v, h_i) = \mathcal N\Big(h_i\big(\mu_i + \tfrac{x_i}{\alpha_i}\big), \alpha_i^{-1}\Big), \qquad
    p(v \mid s, h) = \mathcal N\Big(\Lambda^{-1}\big(c + \textstyle\sum_i W_i s_i h_i\big), \Lambda^{-1}\Big).

The slab of a unit that is off keeps its prior :math:`\mathcal N(0, \alpha_i^{-1})`, so the factor
:math:`\sqrt{2\pi/\alpha_i}` is common to both spike states and no :math:`\log\alpha_i` enters the spike's logit.
Integrating each slab and summing each spike gives the free energy in closed form,

.. math::

    -F(v) = c^\top v - \tfrac12 v^\top \Lambda v + \sum_i \Big[\operatorname{softplus}\Big(b_i + \mu_i x_i
        + \frac{x_i^2}{2\alpha_i}\Big) + \tfrac12 \log\frac{2\pi}{\alpha_i}\Big].

Given the spikes, :math:`v` and :math:`s` are jointly Gaussian; with the slabs integrated out,
:math:`p(v \mid h) = \mathcal N(P_h^{-1} m_h, P_h^{-1})` with

.. math::

    P_h = \Lambda - \sum_i \frac{h_i}{\alpha_i} W_i W_i^\top, \qquad m_h = c + \sum_i h_i \mu_i W_i,

and the partition function is a sum of :math:`2^n` Gaussian integrals,

.. math::

    \log Z = \log \sum_h \exp\Big(b^\top h + \tfrac D2 \log 2\pi - \tfrac12\log\det P_h + \tfrac12 m_h^\top P_h^{-1} m_h
        \Big) + \sum_i \tfrac12 \log\frac{2\pi}{\alpha_i}.

**The constraint.** :math:`Z` is finite only when every :math:`P_h` is positive definite, i.e. when
:math:`P_{\mathbf 1} = \Lambda - W \operatorname{diag}(\alpha)^{-1} W^\top \succ 0` (the others add positive
semi-definite terms back); otherwise :math:`e^{-F(v)}` grows without bound along some direction and the model has no
distribution. Courville et al. bound :math:`v` to a ball; here, by default (``bounded_precision=True``), the
parametrization guarantees it:

.. math::

    \Lambda = \operatorname{diag}(e^{\ell}) + \big\|W \operatorname{diag}(\alpha)^{-1/2}\big\|_2^2\, I
    \quad\Rightarrow\quad P_h \succeq \min_j e^{\ell_j}\, I,

(:math:`\ell` is ``log_precision``; :math:`\|\cdot\|_2` the spectral norm, the largest eigenvalue of the smaller
Gram matrix, differentiated by autograd). With
``bounded_precision=False``, :math:`\Lambda = \operatorname{diag}(e^{\ell})` is free, and
:meth:`SpikeSlabRBM.enumeration` (hence :func:`~dgm_ppl.energy.exact_log_partition`) and the collapsed draw of
:math:`v \mid h` raise ``ValueError`` when :math:`P_{\mathbf 1}` is not positive definite
(:meth:`SpikeSlabRBM.min_precision_eigenvalue` tells). The slab precisions are
:math:`\alpha = e^{\text{log\_slab\_precision}}`.

Sampling. :meth:`SpikeSlabRBM.gibbs` sweeps :math:`h \sim p(h \mid v)`, :math:`s \sim p(s \mid v, h)`,
:math:`v \sim p(v \mid s, h)` (all factorial, no matrix factorization);
:meth:`SpikeSlabRBM.sample_visible`, with which :class:`~dgm_ppl.energy.PersistentChains` completes a sweep from its
stored spikes, draws :math:`v \sim p(v \mid h)` with the slabs integrated out (one batched Cholesky factorization, of
``n x n`` matrices through the Woodbury identity when :math:`n < D`).

Annealing (AIS, parallel tempering) follows :math:`E_\beta = \tfrac12 v^\top\Lambda v - c_\beta^\top v
+ \tfrac12\sum_i\alpha_i s_i^2 - \beta\sum_i\big(v^\top W_i s_i h_i + \alpha_i\mu_i s_i h_i
- \tfrac12\alpha_i\mu_i^2 h_i + b_i h_i\big)` with :math:`c_\beta = (1-\beta) a + \beta c`, so that

.. math::

    \log p^*_\beta(v) = c_\beta^\top v - \tfrac12 v^\top\Lambda v + \sum_i \Big[\operatorname{softplus}\Big(\beta b_i
        + \frac{\beta^2 (x_i + \alpha_i\mu_i)^2}{2\alpha_i} - \frac{\beta\alpha_i\mu_i^2}2\Big)
        + \tfrac12\log\frac{2\pi}{\alpha_i}\Big];

every intermediate model is proper when the model is
(:math:`P_{h,\beta} = \Lambda - \beta^2 \sum_i h_i W_i W_i^\top/\alpha_i`),
and the base model at :math:`\beta = 0` is :math:`v \sim \mathcal N(\Lambda^{-1} a, \Lambda^{-1})` with uniform spikes
and the slabs at their prior, :math:`\log Z_0 = \tfrac D2\log 2\pi - \tfrac12\sum_j \log\Lambda_{jj}
+ \tfrac12 a^\top\Lambda^{-1}a + n\log 2 + \sum_i \tfrac12\log(2\pi/\alpha_i)`.

The model is a :class:`~dgm_ppl.energy.protocol.FreeEnergyModel` (plain autograd for the SML surrogate), so
:class:`~dgm_ppl.energy.PersistentChains`, :class:`~dgm_ppl.energy.ParallelTempering`,
:class:`~dgm_ppl.energy.EnergyBasedDistribution` (``rbm.distribution(chains)``, or ``rbm(chains)``),
:func:`~dgm_ppl.energy.exact_log_partition` and :func:`~dgm_ppl.energy.ais_log_partition` take it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import Tensor, nn

from ._ops import Beta, as_tensor_like, bernoulli, check_count, check_finite, full_precision
from .chains import NegativePhase, PersistentChains
from .distribution import EnergyBasedDistribution
from .protocol import Enumeration

__all__ = ["SpikeSlabRBM", "SpikeSlabParams"]

_counter = itertools.count()
_LOG_2PI = math.log(2 * math.pi)


class SpikeSlabParams(NamedTuple):
    r"""The parameters of a :class:`SpikeSlabRBM` in standard form: ``weight`` :math:`W` ``(D, n)``, ``visible_bias``
    :math:`c` ``(D,)``, ``hidden_bias`` :math:`b` ``(n,)``, ``precision`` the diagonal of :math:`\Lambda` ``(D,)``,
    ``slab_precision`` :math:`\alpha` ``(n,)`` and ``slab_mean`` :math:`\mu` ``(n,)``."""

    weight: Tensor
    visible_bias: Tensor
    hidden_bias: Tensor
    precision: Tensor
    slab_precision: Tensor
    slab_mean: Tensor


def _is_one(beta: Beta) -> bool:
    return isinstance(beta, float) and beta == 1.0


def _squeeze(beta: Beta) -> Beta:
    """``beta`` for per-state scalars: a ``(T, 1, 1)`` tensor becomes ``(T, 1)``."""
    return beta if isinstance(beta, float) else beta.squeeze(-1)


class SpikeSlabRBM(PyroModule):
    r"""A spike-and-slab RBM with ``n_visible`` real visible units and ``n_hidden`` spike/slab pairs; see the module's
    notes for the energy, the conditionals, the free energy and the positivity constraint.

    Parameters: ``weight`` (``n_visible x n_hidden``, columns :math:`W_i`), ``visible_bias`` (:math:`c`),
    ``hidden_bias`` (:math:`b`), ``slab_mean`` (:math:`\mu`, learned when ``learn_slab_mean``), ``log_precision``
    (:math:`\ell`, learned when ``learn_precision``), ``log_slab_precision`` (:math:`\log\alpha`, learned when
    ``learn_slab_precision``); :meth:`params` gives them in standard form.

    :param n_visible: real visible units :math:`D`.
    :param n_hidden: spike-and-slab pairs :math:`n`.
    :param precision: the initial visible precision :math:`e^{\ell}` (a float or a ``(n_visible,)`` tensor).
    :param slab_precision: the initial slab precisions :math:`\alpha` (a float or a ``(n_hidden,)`` tensor).
    :param bounded_precision: add :math:`\|W\operatorname{diag}(\alpha)^{-1/2}\|_2^2` to the visible precision so that
        the model is always proper (module notes); ``False`` leaves :math:`\Lambda` free.
    :param learn_precision: learn :math:`\ell` (else a buffer).
    :param learn_slab_precision: learn :math:`\log\alpha` (else a buffer).
    :param learn_slab_mean: learn :math:`\mu` (else a zero buffer: the basic ssRBM).
    :param init_std: standard deviation of the initial weights.
    :param name: the prefix of the parameters in Pyro's param store (unique by default).
    :raises ValueError: for counts that are not positive ints, or precisions that are not positive and finite.
    """

    support = constraints.independent(constraints.real, 1)
    centered = False
    binary_visible = False
    #: the class of this model's persistent chains, built by ``PersistentChains(rbm, ...)``
    chain_class: type = PersistentChains
    pending_hidden_means = None

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        precision: float | Tensor = 1.0,
        slab_precision: float | Tensor = 1.0,
        bounded_precision: bool = True,
        learn_precision: bool = True,
        learn_slab_precision: bool = True,
        learn_slab_mean: bool = True,
        init_std: float = 0.01,
        name: str | None = None,
    ):
        check_count("n_visible", n_visible)
        check_count("n_hidden", n_hidden)
        super().__init__(name if name is not None else f"SpikeSlabRBM_{next(_counter)}")
        self.n_visible, self.n_hidden = n_visible, n_hidden
        self.bounded_precision = bool(bounded_precision)
        dtype = torch.get_default_dtype()
        log_prec = self._log_positive("precision", precision, n_visible, dtype)
        log_slab = self._log_positive("slab_precision", slab_precision, n_hidden, dtype)
        self.weight = nn.Parameter(torch.randn(n_visible, n_hidden) * init_std)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self._tensor("log_precision", log_prec, learn_precision)
        self._tensor("log_slab_precision", log_slab, learn_slab_precision)
        self._tensor("slab_mean", torch.zeros(n_hidden), learn_slab_mean)
        self.log_z: float | None = None

    @staticmethod
    def _log_positive(label: str, value: float | Tensor, n: int, dtype: torch.dtype) -> Tensor:
        t = torch.as_tensor(value, dtype=dtype)
        if t.dim() > 1 or (t.dim() == 1 and t.shape != (n,)):
            raise ValueError(f"{label} must be a float or a tensor of shape {(n,)}, got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
            raise ValueError(f"{label} must be positive and finite")
        return torch.log(t.expand(n).clone())

    def _tensor(self, label: str, value: Tensor, learn: bool) -> None:
        if learn:
            setattr(self, label, nn.Parameter(value))
        else:
            self.register_buffer(label, value)

    def get_extra_state(self) -> dict:
        return {"log_z": self.log_z}

    def set_extra_state(self, state: dict) -> None:
        self.log_z = state.get("log_z")

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, bounded_precision={self.bounded_precision}"

    # ------------------------------------------------------------------ parameters and data
    @full_precision
    def params(self) -> SpikeSlabParams:
        """The parameters in standard form (:class:`SpikeSlabParams`); differentiable."""
        w = self.weight
        alpha = self.log_slab_precision.exp()
        precision = self.log_precision.exp()
        if self.bounded_precision:
            v = w * alpha.rsqrt()
            gram = v.T @ v if self.n_hidden <= self.n_visible else v @ v.T
            precision = precision + torch.linalg.eigvalsh(gram)[-1]  # the squared spectral norm of v
        return SpikeSlabParams(w, self.visible_bias, self.hidden_bias, precision, alpha, self.slab_mean)

    def to_tensor(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor: tensors pass through, NumPy arrays and lists are converted to the parameters' dtype
        and device. No check of the values.

        :raises TypeError: for data that is neither a tensor nor a numeric array.
        """
        return as_tensor_like(data, self.weight, name)

    def check_data(self, data: Any, name: str = "data") -> Tensor:
        """``data`` as a tensor (:meth:`to_tensor`), after checking that it holds visible states: width ``n_visible``
        and finite values.

        :param name: the argument, as error messages name it.
        :raises ValueError: for the wrong width, or NaN or inf.
        """
        v = self.to_tensor(data, name)
        if v.shape[-1:] != (self.n_visible,):
            raise ValueError(
                f"{name}: expected the last dimension to be n_visible={self.n_visible}, got shape {tuple(v.shape)}"
            )
        if not check_finite(v):
            raise ValueError(f"{name}: values contain NaN or inf")
        return v

    def _hidden(self, h: Any, name: str = "h") -> Tensor:
        h = self.to_tensor(h, name).to(self.weight)
        if h.shape[-1:] != (self.n_hidden,):
            raise ValueError(
                f"{name}: expected the last dimension to be n_hidden={self.n_hidden}, got shape {tuple(h.shape)}"
            )
        return h

    def _default_base(self, base: Any, like: Tensor) -> Tensor:
        if base is None:
            return torch.zeros(self.n_visible, dtype=like.dtype, device=like.device)
        a = self.to_tensor(base, "base").to(like)
        if a.shape != (self.n_visible,):
            raise ValueError(f"base must have shape {(self.n_visible,)}, got {tuple(a.shape)}")
        return a

    # ------------------------------------------------------------------ energy and free energy
    def energy(self, states: Sequence[Tensor], *, params: SpikeSlabParams | None = None) -> Tensor:
        r"""The energy :math:`E(v, s, h)` of joint states ``[v, s, h]`` (module notes), shape ``batch``.

        :param states: visible states ``(..., n_visible)``, slabs and spikes ``(..., n_hidden)``.
        :raises ValueError: when ``states`` is not the three tensors ``[v, s, h]``.
        """
        if len(states) != 3:
            raise ValueError(f"expected the states [v, s, h], got {len(states)} states")
        p = self.params() if params is None else params
        v, s, h = (self.to_tensor(t, k).to(p.weight) for t, k in zip(states, ("v", "s", "h")))
        x = v @ p.weight
        quad = 0.5 * (p.precision * v * v).sum(-1) - v @ p.visible_bias
        slab = 0.5 * (p.slab_precision * (s - p.slab_mean * h) ** 2).sum(-1)
        return quad - (x * s * h).sum(-1) + slab - h @ p.hidden_bias

    def _pre(self, p: SpikeSlabParams, x: Tensor, beta: Beta = 1.0) -> Tensor:
        """The spikes' logits at inverse temperature ``beta`` from ``x = v W``."""
        if _is_one(beta):
            return p.hidden_bias + p.slab_mean * x + x * x / (2 * p.slab_precision)
        u = x + p.slab_precision * p.slab_mean
        return (
            beta * p.hidden_bias
            + beta**2 * u * u / (2 * p.slab_precision)
            - beta * p.slab_precision * p.slab_mean**2 / 2
        )

    def _slab_const(self, p: SpikeSlabParams) -> Tensor:
        return 0.5 * (_LOG_2PI - torch.log(p.slab_precision)).sum()

    def _neg_free(
        self, p: SpikeSlabParams, v: Tensor, beta: Beta = 1.0, a: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """:math:`\\log p^*_\\beta(v)` and the spikes' logits."""
        x = v @ p.weight
        pre = self._pre(p, x, beta)
        if _is_one(beta):
            lin = v @ p.visible_bias
        else:
            b = _squeeze(beta)
            lin = (1 - b) * (v @ a) + b * (v @ p.visible_bias)
        quad = 0.5 * (p.precision * v * v).sum(-1)
        return lin - quad + F.softplus(pre).sum(-1) + self._slab_const(p), pre

    def free_energy(self, v: Any) -> Tensor:
        r"""The free energy :math:`F(v) = -\log\int\sum_h e^{-E(v,s,h)}\,ds` (module notes); plain autograd."""
        p = self.params()
        return -self._neg_free(p, self.to_tensor(v, "v").to(p.weight))[0]

    def unnormalized_log_prob(self, v: Tensor, *, params: SpikeSlabParams | None = None) -> Tensor:
        r"""The unnormalized :math:`\log p^*(v) = -F(v)`; no check of the values.

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        return self._neg_free(p, self.to_tensor(v, "v").to(p.weight))[0]

    def log_prob(self, v: Any) -> Tensor:
        r"""The normalized :math:`\log p(v) = -F(v) - \log Z` with the exact :math:`\log Z` (enumerating the
        :math:`2^n` spike states; differentiable, for small models).

        :raises ValueError: for bad values, or when the model is improper.
        """
        from .partition import exact_log_partition

        v = self.check_data(v, "v")
        return self.unnormalized_log_prob(v) - exact_log_partition(self, record=False)

    def sml_terms(
        self, v: Tensor, num_data: int, *, params: SpikeSlabParams | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""The SML surrogate of the rows of 2-D ``v`` (``num_data`` data rows, then chain states): :math:`-F` of the
        data rows with the gradient :math:`\nabla(-F(v_n)) - \frac1C\sum_c \nabla(-F(\tilde v_c))`; the chains' mean
        :math:`-F` and the spike probabilities of all rows (both without gradient). Plain autograd.

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        neg_free, pre = self._neg_free(p, v)
        s = neg_free[num_data:].mean()
        return neg_free[:num_data] - (s - s.detach()), s.detach(), torch.sigmoid(pre.detach())

    def tempered_log_prob(
        self, v: Tensor, beta: Beta = 1.0, base: Tensor | None = None, *, params: SpikeSlabParams | None = None
    ) -> Tensor:
        r"""The unnormalized :math:`\log p^*_\beta(v)` on the path from the base model (visible bias ``base``, default
        0) at ``beta=0`` to the model at ``beta=1`` (module notes).

        :param beta: a float, or a tensor ``(T, 1, 1)`` for states ``(T, C, n_visible)``.
        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        v = self.to_tensor(v, "v").to(p.weight)
        a = None if _is_one(beta) else self._default_base(base, p.weight)
        return self._neg_free(p, v, beta, a)[0]

    # ------------------------------------------------------------------ conditionals
    def hidden_probs(self, v: Any, *, params: SpikeSlabParams | None = None) -> Tensor:
        r""":math:`p(h_i = 1 \mid v) = \sigma(b_i + \mu_i x_i + x_i^2 / (2\alpha_i))`, shape ``batch + (n_hidden,)``."""
        p = self.params() if params is None else params
        return torch.sigmoid(self._pre(p, self.to_tensor(v, "v").to(p.weight) @ p.weight))

    def hidden_given_visible(self, v: Any) -> dist.Distribution:
        r"""The factorial :math:`p(h \mid v)` (slabs integrated out), a Bernoulli with event dim 1."""
        p = self.params()
        return dist.Bernoulli(logits=self._pre(p, self.to_tensor(v, "v").to(p.weight) @ p.weight)).to_event(1)

    def slab_given(self, v: Any, h: Any) -> dist.Distribution:
        r"""The factorial :math:`p(s \mid v, h) = \mathcal N(h(\mu + x/\alpha), \alpha^{-1})`, event dim 1."""
        p = self.params()
        v, h = self.to_tensor(v, "v").to(p.weight), self._hidden(h)
        return dist.Normal(h * (p.slab_mean + (v @ p.weight) / p.slab_precision), p.slab_precision.rsqrt()).to_event(1)

    def visible_given_slab(self, s: Any, h: Any) -> dist.Distribution:
        r"""The factorial :math:`p(v \mid s, h) = \mathcal N(\Lambda^{-1}(c + W(s \odot h)), \Lambda^{-1})`,
        event dim 1."""
        p = self.params()
        s, h = self._hidden(s, "s"), self._hidden(h)
        return dist.Normal(((s * h) @ p.weight.T + p.visible_bias) / p.precision, p.precision.rsqrt()).to_event(1)

    def visible_precision(self, h: Any, beta: Beta = 1.0, *, params: SpikeSlabParams | None = None) -> Tensor:
        r"""The precision :math:`P_h = \Lambda - \beta^2 \sum_i h_i W_i W_i^\top / \alpha_i` of
        :math:`p_\beta(v \mid h)` (slabs integrated out), shape ``batch + (n_visible, n_visible)``."""
        p = self.params() if params is None else params
        h = self._hidden(h)
        scale = h / p.slab_precision
        if not _is_one(beta):
            scale = scale * beta**2
        low = (p.weight * scale[..., None, :]) @ p.weight.T
        return torch.diag_embed(p.precision.expand(low.shape[:-1])) - low

    def min_precision_eigenvalue(self) -> float:
        r"""The smallest eigenvalue of :math:`P_{\mathbf 1} = \Lambda - W\operatorname{diag}(\alpha)^{-1}W^\top`:
        the model is proper (finite :math:`Z`) exactly when it is positive."""
        with torch.no_grad():
            p = self.params()
            ones = torch.ones(self.n_hidden, dtype=p.weight.dtype, device=p.weight.device)
            return float(torch.linalg.eigvalsh(self.visible_precision(ones, params=p)).min())

    def _collapsed(
        self, p: SpikeSlabParams, h: Tensor, beta: Beta, a: Tensor | None
    ) -> tuple[Tensor, Tensor, Callable[[], Tensor]]:
        r"""The mean of :math:`p_\beta(v \mid h)`, :math:`\log\det P_{h,\beta}`, and a function that draws from it.

        With fewer spikes than visible units, :math:`P_h = \Lambda - V V^\top` (:math:`V = \beta W \operatorname{diag}
        (h/\sqrt\alpha)`) is inverted through the ``n x n`` matrix :math:`K = I - V^\top\Lambda^{-1}V` (Woodbury;
        :math:`\det P_h = \det\Lambda \det K`, and :math:`P_h \succ 0 \iff K \succ 0`), else factorized directly.

        :raises ValueError: when :math:`P_{h,\beta}` is not positive definite (the model is improper).
        """
        if _is_one(beta):
            lin = p.visible_bias + (h * p.slab_mean) @ p.weight.T
            coef = h * p.slab_precision.rsqrt()
        else:
            lin = (1 - beta) * a + beta * p.visible_bias + beta**2 * ((h * p.slab_mean) @ p.weight.T)
            coef = beta * h * p.slab_precision.rsqrt()
        lam = p.precision
        lin = lin.expand(h.shape[:-1] + (self.n_visible,))
        if self.n_hidden < self.n_visible:
            v = p.weight * coef[..., None, :]  # (..., D, n)
            lv = v / lam[:, None]
            eye = torch.eye(self.n_hidden, dtype=v.dtype, device=v.device)
            chol, info = torch.linalg.cholesky_ex(eye - v.transpose(-1, -2) @ lv)
        else:
            chol, info = torch.linalg.cholesky_ex(self.visible_precision(h, beta, params=p))
        if bool((info != 0).any()):
            raise ValueError(
                "the spike-and-slab RBM is improper: Lambda - sum_i h_i W_i W_i^T / alpha_i is not positive definite "
                "(use bounded_precision=True, or raise the visible precision)"
            )
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        if self.n_hidden < self.n_visible:
            u = (lin.unsqueeze(-2) @ lv).transpose(-1, -2)  # V^T Lambda^-1 m, (..., n, 1)
            mean = lin / lam + (lv @ torch.cholesky_solve(u, chol)).squeeze(-1)
            logdet = logdet + torch.log(lam).sum()

            def draw() -> Tensor:
                # covariance Lambda^-1 + Lambda^-1 V K^-1 V^T Lambda^-1, with K = L L^T
                z = torch.randn(chol.shape[:-1] + (1,), dtype=mean.dtype, device=mean.device)
                low = (lv @ torch.linalg.solve_triangular(chol.transpose(-1, -2), z, upper=True)).squeeze(-1)
                return mean + lam.rsqrt() * torch.randn_like(mean) + low

        else:
            mean = torch.cholesky_solve(lin.unsqueeze(-1), chol).squeeze(-1)

            def draw() -> Tensor:
                # v = mean + L^{-T} z has covariance (L L^T)^{-1}
                z = torch.randn_like(mean).unsqueeze(-1)
                return mean + torch.linalg.solve_triangular(chol.transpose(-1, -2), z, upper=True).squeeze(-1)

        return mean, logdet, draw

    def visible_given_hidden(self, h: Any) -> dist.Distribution:
        r""":math:`p(v \mid h) = \mathcal N(P_h^{-1} m_h, P_h^{-1})` with the slabs integrated out (module notes), a
        ``MultivariateNormal``.

        :raises ValueError: when :math:`P_h` is not positive definite.
        """
        p = self.params()
        h = self._hidden(h)
        mean = self._collapsed(p, h, 1.0, None)[0]
        return dist.MultivariateNormal(mean, precision_matrix=self.visible_precision(h, params=p))

    # ------------------------------------------------------------------ sampling
    def _draw_spikes(self, p: SpikeSlabParams, v: Tensor, beta: Beta) -> tuple[Tensor, Tensor]:
        x = v @ p.weight
        return bernoulli(torch.sigmoid(self._pre(p, x, beta))), x

    def _sweep(self, p: SpikeSlabParams, v: Tensor, beta: Beta, a: Tensor | None) -> Tensor:
        """One sweep ``v -> h -> s -> v`` at ``beta``."""
        h, x = self._draw_spikes(p, v, beta)
        alpha = p.slab_precision
        if _is_one(beta):
            mean_s = h * (p.slab_mean + x / alpha)
            lin = p.visible_bias
        else:
            mean_s = beta * h * (p.slab_mean + x / alpha)
            lin = (1 - beta) * a + beta * p.visible_bias
        s = mean_s + alpha.rsqrt() * torch.randn_like(mean_s)
        sh = s * h if _is_one(beta) else beta * s * h
        mean_v = (sh @ p.weight.T + lin) / p.precision
        return mean_v + p.precision.rsqrt() * torch.randn_like(mean_v)

    @torch.no_grad()
    def sample_hidden(self, v: Tensor, beta: Beta = 1.0) -> Tensor:
        r"""Draw spikes :math:`h \sim p_\beta(h \mid v)` (slabs integrated out)."""
        p = self.params()
        return self._draw_spikes(p, self.to_tensor(v, "v").to(p.weight), beta)[0]

    @torch.no_grad()
    def sample_slab(self, v: Tensor, h: Tensor) -> Tensor:
        r"""Draw slabs :math:`s \sim p(s \mid v, h)`."""
        return self.slab_given(v, h).sample()

    @torch.no_grad()
    def sample_visible(
        self, h: Tensor, beta: Beta = 1.0, base: Tensor | None = None, *, params: SpikeSlabParams | None = None
    ) -> Tensor:
        r"""Draw :math:`v \sim p_\beta(v \mid h)` with the slabs integrated out (a batched Cholesky factorization).

        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        :raises ValueError: when the model is improper (:math:`P_h` not positive definite).
        """
        p = self.params() if params is None else params
        h = self._hidden(h)
        a = None if _is_one(beta) else self._default_base(base, p.weight)
        return self._collapsed(p, h, beta, a)[2]()

    @torch.no_grad()
    def gibbs(
        self,
        states: Tensor,
        steps: int = 1,
        beta: Beta = 1.0,
        base: Tensor | None = None,
        *,
        params: SpikeSlabParams | None = None,
    ) -> Tensor:
        """``steps`` block-Gibbs sweeps ``v -> h -> s -> v`` at inverse temperature ``beta``, without gradient.

        :param states: visible states ``(..., n_visible)``.
        :param beta: inverse temperature on the path from the base model ``base``; a tensor of shape ``(T, 1, 1)``
            for states of shape ``(T, C, n_visible)``.
        :param params: the parameters in standard form (``self.params()``), when the caller has them.
        """
        p = self.params() if params is None else params
        v = self.to_tensor(states, "states").to(p.weight)
        a = None if _is_one(beta) else self._default_base(base, p.weight)
        for _ in range(steps):
            v = self._sweep(p, v, beta, a)
        return v

    @torch.no_grad()
    def sample_base(self, num_samples: int, base: Tensor | None = None) -> Tensor:
        r"""Exact draws of the base model at :math:`\beta = 0`:
        :math:`v \sim \mathcal N(\Lambda^{-1} a, \Lambda^{-1})`."""
        p = self.params()
        a = self._default_base(base, p.weight)
        noise = torch.randn(num_samples, self.n_visible, dtype=a.dtype, device=a.device)
        return a / p.precision + p.precision.rsqrt() * noise

    def random_state(self, num_samples: int) -> Tensor:
        """Initial chain states from the base model with the visible bias :math:`c`."""
        return self.sample_base(num_samples, self.visible_bias.detach())

    @torch.no_grad()
    def sample(self, num_samples: int, steps: int = 1000, init: Any = None) -> Tensor:
        """Visible samples after ``steps`` Gibbs sweeps from ``init`` (default: :meth:`random_state`)."""
        v = self.random_state(num_samples) if init is None else self.check_data(init, "init")
        return self.gibbs(v, steps=steps)

    def persistent_chains(self, num_chains: int = 100, steps: int = 1, init: Any = None) -> NegativePhase:
        """This model's persistent chains, ``chain_class(self, num_chains, steps, init)``."""
        return self.chain_class(self, num_chains, steps, init)

    # ------------------------------------------------------------------ training
    def base_rate(self, data: Tensor) -> Tensor:
        r"""The base model fitted to ``data``: the visible bias :math:`a = \Lambda\bar v` that puts the base model's
        mean at the data mean."""
        v = self.to_tensor(data, "data").to(self.weight).reshape(-1, self.n_visible)
        with torch.no_grad():
            return self.params().precision * v.mean(0)

    @torch.no_grad()
    def init_from_data(self, data: Any) -> SpikeSlabRBM:
        r"""Set the visible bias to :math:`\Lambda \bar v` (:meth:`base_rate`), so that :math:`p(v \mid h = 0)` is
        centred on the data mean; returns the model.

        :raises ValueError: for data of the wrong width, or with NaN or inf.
        """
        v = self.check_data(data, "init_from_data(data)")
        self.visible_bias.copy_(self.base_rate(v))
        return self

    def forward(self, chains: NegativePhase, **kwargs: Any) -> EnergyBasedDistribution:
        # Reading the parameters inside the PyroModule records them as param sites for SVI.
        return EnergyBasedDistribution(self, chains, params=self.params(), **kwargs)

    def distribution(self, chains: NegativePhase, **kwargs: Any) -> EnergyBasedDistribution:
        """The Pyro distribution of the visible units whose ``log_prob`` is :math:`-F(v) - \\log\\hat Z` with the SML
        gradient (:class:`~dgm_ppl.energy.EnergyBasedDistribution`); the same as ``rbm(chains)``.

        :param chains: the negative phase, e.g. ``PersistentChains(rbm, 100)``.
        :param kwargs: passed to :class:`~dgm_ppl.energy.EnergyBasedDistribution` (``sample_steps``).
        """
        return self(chains, **kwargs)

    @full_precision
    def update_offsets(self, hidden_means: Any, *, defer: bool = False) -> None:
        """Nothing: the spike-and-slab RBM is not centered."""

    # ------------------------------------------------------------------ partition functions
    def base_log_partition(self, base: Tensor | None = None) -> Tensor:
        r""":math:`\log Z_0` of the base model (module notes)."""
        with torch.no_grad():
            p = self.params()
        a = self._default_base(base, p.weight)
        gauss = 0.5 * (self.n_visible * _LOG_2PI - torch.log(p.precision).sum() + (a * a / p.precision).sum())
        return gauss + self.n_hidden * math.log(2.0) + self._slab_const(p)

    def annealing_path(self, base: Tensor | None = None) -> _SpikeSlabAnnealingPath:
        """The AIS path over visible states from the base model ``base`` (default: zero visible bias) to the model."""
        return _SpikeSlabAnnealingPath(self, base)

    def enumeration(self) -> Enumeration:
        r"""Exact :math:`\log Z` enumerates the :math:`2^n` spike states; given the spikes, :math:`v` and the slabs are
        integrated out in closed form (module notes). Differentiable in the parameters.

        :raises ValueError: (when called by the plan) if the model is improper.
        """
        p = self.params()
        d = self.n_visible

        def over_spikes(h: Tensor) -> Tensor:
            mean, logdet, _ = self._collapsed(p, h, 1.0, None)
            lin = p.visible_bias + (h * p.slab_mean) @ p.weight.T
            return h @ p.hidden_bias + 0.5 * (d * _LOG_2PI - logdet + (lin * mean).sum(-1))

        return Enumeration(self.n_hidden, "spike states", over_spikes, p.weight, self._slab_const(p))


class _SpikeSlabAnnealingPath:
    r"""The AIS path of a :class:`SpikeSlabRBM` over visible states (``state = [v]``), spikes and slabs integrated out,
    with one sweep ``v -> h -> s -> v`` at :math:`\beta` as the transition; the cache is ``None``."""

    def __init__(self, model: SpikeSlabRBM, base: Tensor | None):
        self.model = model
        with torch.no_grad():
            self.params = SpikeSlabParams(*(t.detach() for t in model.params()))
        self.base = model._default_base(base, self.params.weight)

    def initial_state(self, num_chains: int) -> list[Tensor]:
        p = self.params
        noise = torch.randn(num_chains, self.model.n_visible, dtype=p.weight.dtype, device=p.weight.device)
        return [self.base / p.precision + p.precision.rsqrt() * noise]

    def state_from_samples(self, samples: Any) -> list[Tensor]:
        return [self.model.check_data(samples, "samples").to(self.params.weight)]

    def prepare(self, state: list[Tensor]) -> None:
        return None

    def log_prob(self, state: list[Tensor], beta: float, cache: Any) -> Tensor:
        return self.model._neg_free(self.params, state[0], float(beta), self.base)[0]

    def transition(self, state: list[Tensor], beta: float, cache: Any) -> list[Tensor]:
        return [self.model._sweep(self.params, state[0], float(beta), self.base)]
