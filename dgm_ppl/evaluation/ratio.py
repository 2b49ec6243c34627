r"""Density-ratio estimation by probabilistic classification.

A classifier with logit :math:`f(x)` learns to tell samples of P (label 1) from samples of Q (label 0). With the
log-loss weighted so that each class carries a total weight proportional to :math:`\pi_p` and :math:`\pi_q`, the
optimal classifier is :math:`\sigma(f^*(x)) = \pi_p p(x) / (\pi_p p(x) + \pi_q q(x))` (Bayes' rule), so

.. math::

    \log \frac{p(x)}{q(x)} = f^*(x) + \log \frac{\pi_q}{\pi_p}.

With balanced class weighting (each class's mean loss counts equally) :math:`\pi_p = \pi_q` and the correction
vanishes; with the plain, unweighted log-loss :math:`\pi_p / \pi_q = n_p / n_q`, the ratio of the training set sizes
(Sugiyama et al. 2012, ch. 4). A held-out split of each class gives a check: its balanced log-loss is :math:`\log 2`
for a classifier no better than chance and falls as P and Q grow apart. Optionally, the logit is recalibrated on that
split: ``"temperature"`` fits :math:`f / T`, ``"platt"`` fits :math:`a f + b` (Platt 1999; Guo et al. 2017); the
held-out figures are then measured on the data the calibration saw, so they are slightly optimistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._data import as_data_tensor

__all__ = ["density_ratio", "DensityRatio"]

_CLASSIFIERS = ("mlp", "linear", "quadratic")
_CALIBRATIONS = (None, "temperature", "platt")


class _Standardized(nn.Module):
    """``head((x - mean) / std)``, squeezed to ``(N,)`` logits; ``quadratic`` appends the products
    :math:`z_i z_j`, i ≤ j, of the standardized inputs (logistic regression on them is exact for two Gaussians)."""

    def __init__(self, mean: Tensor, std: Tensor, head: nn.Module, quadratic: bool = False):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.head, self.quadratic = head, quadratic

    def forward(self, x: Tensor) -> Tensor:
        z = (x - self.mean) / self.std
        if self.quadratic:
            i, j = torch.triu_indices(z.shape[-1], z.shape[-1], device=z.device)
            z = torch.cat([z, z[:, i] * z[:, j]], dim=-1)
        return self.head(z).squeeze(-1)


def _default_classifier(kind: str, x: Tensor, hidden: int) -> nn.Module:
    d = x.shape[-1]
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    if kind == "mlp":
        layers = [nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)]
        head = nn.Sequential(*layers)
    else:
        head = nn.Linear(d + (d * (d + 1) // 2 if kind == "quadratic" else 0), 1)
    return _Standardized(mean, std, head, kind == "quadratic").to(x.dtype)


@dataclass
class DensityRatio:
    """A fitted density-ratio estimate; see :func:`density_ratio`.

    The estimate is ``scale * (classifier(x) + prior_correction) + shift``.

    :ivar classifier: the trained module, ``(N, d)`` to ``(N,)`` logits.
    :ivar scale: the calibration's multiplier (1 without calibration; 1/T for ``"temperature"``).
    :ivar shift: the calibration's offset (0 unless ``"platt"``).
    :ivar prior_correction: :math:`\\log(\\pi_q / \\pi_p)`: 0 with balanced weighting, :math:`\\log(n_q / n_p)`
        (training split sizes) without.
    :ivar held_out_log_loss: the balanced log-loss (nats) on the held-out split; :math:`\\log 2` is chance.
        None without a held-out split.
    :ivar held_out_accuracy: the balanced accuracy on the held-out split (0.5 is chance), or None.
    :ivar train_loss: the weighted training loss of each epoch (summed over its minibatches as they were trained).
    """

    classifier: nn.Module
    scale: float
    shift: float
    prior_correction: float
    held_out_log_loss: float | None
    held_out_accuracy: float | None
    train_loss: list[float] = field(default_factory=list)

    def log_ratio(self, x: Tensor) -> Tensor:
        """The estimate of :math:`\\log p(x) / q(x)`, ``(N,)``, at points ``x`` ``(N, d)`` (tensor or NumPy array)."""
        x = as_data_tensor(x, "x")
        param = next(iter(self.classifier.parameters()))
        with torch.no_grad():
            logits = self.classifier(x.to(device=param.device, dtype=param.dtype))
        return self.scale * (logits + self.prior_correction) + self.shift

    def ratio(self, x: Tensor) -> Tensor:
        """The estimate of :math:`p(x) / q(x)`, ``(N,)``."""
        return self.log_ratio(x).exp()


def _samples(x, name: str) -> Tensor:
    x = as_data_tensor(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (N, d) array of samples, got shape {tuple(x.shape)}")
    if len(x) < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {len(x)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x.detach()


def _weighted_loss(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    return (weights * F.binary_cross_entropy_with_logits(logits, labels, reduction="none")).sum() / weights.sum()


def _fit_calibration(logits: Tensor, labels: Tensor, weights: Tensor, method: str) -> tuple[float, float]:
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    shift = torch.zeros((), dtype=torch.float64, requires_grad=True)
    params = [log_scale, shift] if method == "platt" else [log_scale]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")
    logits, labels, weights = logits.double(), labels.double(), weights.double()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _weighted_loss(log_scale.exp() * logits + shift, labels, weights)
        loss.backward()
        return loss

    opt.step(closure)
    return log_scale.exp().item(), shift.item()


def density_ratio(
    x_p: Tensor,
    x_q: Tensor,
    classifier: nn.Module | str | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    hidden: int = 64,
    holdout: float = 0.2,
    balanced: bool = True,
    calibrate: str | None = None,
    seed: int | None = 0,
) -> DensityRatio:
    """Estimate :math:`\\log p(x) / q(x)` from samples ``x_p ~ P`` and ``x_q ~ Q`` by training a classifier.

    Training uses Adam on minibatches of both classes shuffled together; ``x_p`` gets label 1. Built-in classifiers
    standardize the inputs with the training split's mean and standard deviation.

    :param x_p: ``(n_p, d)`` samples of P (tensor or NumPy array).
    :param x_q: ``(n_q, d)`` samples of Q.
    :param classifier: None or ``"mlp"`` (two hidden layers of ``hidden`` SiLU units), ``"linear"`` (logistic
        regression), ``"quadratic"`` (logistic regression on the inputs and their pairwise products), or an
        ``nn.Module`` mapping ``(N, d)`` to ``(N,)`` logits, trained in place.
    :param epochs: passes over the training split.
    :param batch_size: the minibatch size.
    :param lr: Adam's learning rate.
    :param weight_decay: Adam's weight decay.
    :param hidden: the width of the built-in MLP.
    :param holdout: the fraction of each class held out to check (and calibrate) the classifier; 0 for none.
    :param balanced: weight the classes so that each carries half the loss (else the plain log-loss, corrected
        by :math:`\\log(n_q/n_p)`).
    :param calibrate: None, ``"temperature"`` or ``"platt"``: recalibrate the logit on the held-out split.
    :param seed: seeds the split, the initialization of built-in classifiers and the minibatch order (the global
        random state is left as it was); None to use the global random state.
    :returns: a :class:`DensityRatio`.
    :raises ValueError: for non-2-D input, different dimensions, fewer than 2 samples in a set, NaN or inf, or bad
        options (including calibration without a held-out split).
    """
    classifier = "mlp" if classifier is None else classifier
    if not (isinstance(classifier, nn.Module) or classifier in _CLASSIFIERS):
        raise ValueError(f"classifier must be an nn.Module or one of {_CLASSIFIERS}, got {classifier!r}")
    if calibrate not in _CALIBRATIONS:
        raise ValueError(f"calibrate must be one of {_CALIBRATIONS}, got {calibrate!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if calibrate is not None and holdout == 0:
        raise ValueError("calibration needs a held-out split: give holdout > 0")
    x_p, x_q = _samples(x_p, "x_p"), _samples(x_q, "x_q")
    if x_p.shape[1] != x_q.shape[1]:
        raise ValueError(f"x_p and x_q have different dimensions: {x_p.shape[1]} and {x_q.shape[1]}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return _fit(x_p, x_q, classifier, epochs, batch_size, lr, weight_decay, hidden, holdout, balanced, calibrate)


def _split(x: Tensor, holdout: float) -> tuple[Tensor, Tensor]:
    n_out = round(holdout * len(x))
    if holdout > 0 and not 1 <= n_out <= len(x) - 1:
        raise ValueError(f"holdout={holdout} of {len(x)} samples leaves an empty split")
    order = torch.randperm(len(x)).to(x.device)
    return x[order[n_out:]], x[order[:n_out]]


def _class_weights(n_p: int, n_q: int) -> Tensor:
    return torch.cat([torch.full((n_p,), 1 / n_p), torch.full((n_q,), 1 / n_q)])


def _fit(x_p, x_q, classifier, epochs, batch_size, lr, weight_decay, hidden, holdout, balanced, calibrate):
    (p_train, p_out), (q_train, q_out) = _split(x_p, holdout), _split(x_q, holdout)
    n_p, n_q = len(p_train), len(q_train)
    x = torch.cat([p_train, q_train])
    labels = torch.cat([torch.ones(n_p), torch.zeros(n_q)]).to(x)
    # balanced: every class's weights sum to half the total; else every point weighs 1
    weights = _class_weights(n_p, n_q).to(x) if balanced else torch.ones_like(labels)
    if isinstance(classifier, str):
        classifier = _default_classifier(classifier, x, hidden).to(x.device)
    param = next(iter(classifier.parameters()), None)
    if param is None:
        raise ValueError("the classifier has no parameters to train")
    x, labels, weights = x.to(param), labels.to(param), weights.to(param)
    opt = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    classifier.train()
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(x)).to(x.device).split(batch_size):
            logits = classifier(x[batch])
            if logits.shape != batch.shape:
                raise ValueError(f"the classifier must map (N, d) to (N,) logits, got shape {tuple(logits.shape)}")
            # each minibatch's loss is its share of the full weighted mean, so that an epoch sums to it
            loss = (weights[batch] * F.binary_cross_entropy_with_logits(logits, labels[batch], reduction="none")).sum()
            loss = loss / weights.sum()
            opt.zero_grad()
            (loss * len(x) / len(batch)).backward()
            opt.step()
            total += loss.item()
        history.append(total)
    classifier.eval()
    result = DensityRatio(classifier, 1.0, 0.0, 0.0 if balanced else math.log(n_q / n_p), None, None, history)
    if holdout == 0:
        return result
    x_out = torch.cat([p_out, q_out]).to(param)
    y_out = torch.cat([torch.ones(len(p_out)), torch.zeros(len(q_out))]).to(param)
    w_out = _class_weights(len(p_out), len(q_out)).to(param)
    with torch.no_grad():
        raw = classifier(x_out)
    if calibrate is not None:
        # calibrate the balanced logit, i.e. the log ratio: the prior correction goes in first
        result.scale, result.shift = _fit_calibration(raw + result.prior_correction, y_out, w_out, calibrate)
    balanced_logit = result.scale * (raw + result.prior_correction) + result.shift
    result.held_out_log_loss = _weighted_loss(balanced_logit, y_out, w_out).item()
    result.held_out_accuracy = (w_out * ((balanced_logit > 0) == (y_out > 0.5))).sum().item() / w_out.sum().item()
    return result
