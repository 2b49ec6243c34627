"""A small local feature extractor for sample-quality metrics: an MLP classifier trained on the data at hand.

FID, KID and precision/recall are computed on features, conventionally Inception-v3's, which need downloaded weights
and natural images. For small data sets such as the 8x8 digits or binarized MNIST, the penultimate layer of an MLP
trained to classify the real data is a light, local substitute (in the spirit of the "domain-specific" classifiers of
Lucic et al. 2018 and Bińkowski et al. 2018). Its figures are comparable only between runs that use the same
extractor: same data, configuration and seed. Training is deterministic given the seed, and the weights can be cached
in a file. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._data import as_data_tensor
from ..checkpoint import atomic_save

__all__ = ["FeatureExtractor", "train_feature_extractor", "digits_feature_extractor"]

_FORMAT = "dgm_ppl.evaluation.FeatureExtractor/1"


class FeatureExtractor(nn.Module):
    """An MLP classifier ``in_features → hidden[0] → … → hidden[-1] → num_classes`` with ReLU units; its features
    are the activations of the last hidden layer.

    :param in_features: the input size (trailing dimensions of the input are flattened).
    :param num_classes: the number of classes.
    :param hidden: the hidden layer widths; the last one is the feature dimension.
    :ivar held_out_accuracy: the accuracy on the held-out split after training (None if there was none).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (128, 64)):
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)
        self.in_features, self.num_classes, self.hidden = in_features, num_classes, tuple(hidden)
        self.held_out_accuracy: float | None = None

    @property
    def feature_dim(self) -> int:
        """The dimension d of the features."""
        return self.hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        """The class logits, ``(N, num_classes)``."""
        return self.head(self.body(x.flatten(1)))

    @torch.no_grad()
    def extract(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        """The features of ``x`` ``(N, in_features)`` (or ``(N, ...)`` with that many entries), ``(N, d)``.

        :param x: the inputs (tensor or NumPy array), on the same scale as the training data.
        :param batch_size: the inputs processed at a time.
        :returns: the features, float32, on the CPU.
        :raises ValueError: for input of the wrong size, or with NaN or inf.
        """
        x = as_data_tensor(x, "x")
        if x.dim() < 2 or x.shape[1:].numel() != self.in_features:
            raise ValueError(f"x must be (N, {self.in_features}) inputs, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or inf")
        was_training = self.training
        self.eval()
        param = self.head.weight
        out = [self.body(b.flatten(1).to(param)).float().cpu() for b in x.split(batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.feature_dim)


def _fingerprint(x: Tensor, y: Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(y.cpu().numpy(), dtype=np.int64).tobytes())
    return digest.hexdigest()


def _load(path: str, config: dict) -> FeatureExtractor | None:
    """The cached extractor at ``path`` if it was trained with ``config``; None (after a warning) if not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or empty files, non-torch files: EOFError, RuntimeError, UnpicklingError, ...
        reason = f"{type(e).__name__}: {e}"
        raise ValueError(f"feature-extractor cache {path!r} is damaged or not a torch file ({reason})") from e
    if not isinstance(state, dict) or state.get("format") != _FORMAT or not {"config", "state"} <= set(state):
        raise ValueError(f"{path!r} is not a dgm_ppl feature-extractor cache; give another path")
    if state["config"] != config:
        changed = sorted(k for k in config if state["config"].get(k) != config[k])
        message = f"feature-extractor cache {path!r} was trained with other settings ({changed}); retraining"
        warnings.warn(message, stacklevel=3)
        return None
    model = FeatureExtractor(config["in_features"], config["num_classes"], config["hidden"])
    try:
        model.load_state_dict(state["state"])
    except RuntimeError as e:
        raise ValueError(f"feature-extractor cache {path!r} is damaged: {e}") from e
    model.held_out_accuracy = state.get("held_out_accuracy")
    return model.eval()


def train_feature_extractor(
    x: Tensor,
    y: Tensor,
    *,
    path: str | os.PathLike | None = None,
    hidden: Sequence[int] = (128, 64),
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    holdout: float = 0.1,
    seed: int = 0,
) -> FeatureExtractor:
    """Train a :class:`FeatureExtractor` to classify ``x`` by the labels ``y`` (Adam, cross-entropy), or load it
    from the cache file ``path``.

    The cache holds the weights and the configuration, including a SHA-256 fingerprint of the data: it is reused only
    when everything matches, and is otherwise retrained and overwritten (with a warning). Training runs on the CPU and
    is deterministic given ``seed``; the global random state is left as it was.

    :param x: ``(N, D)`` (or ``(N, ...)``) training inputs (tensor or NumPy array), e.g. digits scaled to [0, 1].
    :param y: ``(N,)`` integer class labels 0, 1, ….
    :param path: the cache file, or None for no cache.
    :param hidden: the hidden layer widths; the last one is the feature dimension.
    :param epochs: passes over the training data.
    :param batch_size: the minibatch size.
    :param lr: Adam's learning rate.
    :param weight_decay: Adam's weight decay.
    :param holdout: the fraction of the data held out to measure the accuracy (``held_out_accuracy``); 0 for none.
    :param seed: the seed of the split, the initialization and the minibatch order.
    :returns: the trained extractor, in eval mode.
    :raises ValueError: for inconsistent or non-finite data, bad options, or a damaged cache file.
    """
    x = as_data_tensor(x, "x", dtype=torch.float32)
    y = as_data_tensor(y, "y")
    if x.dim() < 2 or len(x) < 2:
        raise ValueError(f"x must hold at least 2 inputs, (N, D), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    if y.shape != (len(x),) or y.is_floating_point() and not (y == y.round()).all() or (y < 0).any():
        raise ValueError(f"y must be {len(x)} non-negative integer labels, got shape {tuple(y.shape)}")
    y = y.long()
    hidden = [int(h) for h in hidden]
    if not hidden or min(hidden) < 1 or epochs < 1 or batch_size < 1 or not 0 <= holdout < 1:
        raise ValueError("hidden widths, epochs and batch_size must be positive and holdout in [0, 1)")
    x = x.flatten(1)
    config = {
        "in_features": x.shape[1],
        "num_classes": int(y.max()) + 1,
        "hidden": hidden,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "holdout": float(holdout),
        "seed": seed,
        "data": _fingerprint(x, y),
    }
    if path is not None and os.path.exists(path):
        model = _load(os.fspath(path), config)
        if model is not None:
            return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _train(x, y, config)
    if path is not None:
        state = {"format": _FORMAT, "config": config, "state": model.state_dict()}
        atomic_save({**state, "held_out_accuracy": model.held_out_accuracy}, path)
    return model


def _train(x: Tensor, y: Tensor, config: dict) -> FeatureExtractor:
    order = torch.randperm(len(x))
    n_out = round(config["holdout"] * len(x))
    train, held = order[n_out:], order[:n_out]
    model = FeatureExtractor(config["in_features"], config["num_classes"], config["hidden"])
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    model.train()
    for _ in range(config["epochs"]):
        for batch in train[torch.randperm(len(train))].split(config["batch_size"]):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    if n_out > 0:
        with torch.no_grad():
            model.held_out_accuracy = (model(x[held]).argmax(-1) == y[held]).float().mean().item()
    return model


def digits_feature_extractor(
    path: str | os.PathLike | None = None, *, binarize: bool = True, **kwargs
) -> FeatureExtractor:
    """A :class:`FeatureExtractor` trained on the training split of the embedded 8x8 digits
    (:func:`dgm_ppl.datasets.load_digits`), so that its test split stays out of the extractor.

    :param path: the cache file, or None for no cache.
    :param binarize: train on the binarized digits (as the package's models see them), else on intensities in [0, 1].
    :param kwargs: passed to :func:`train_feature_extractor`.
    :returns: the trained extractor.
    """
    from ..datasets import load_digits

    x, y = load_digits("train", binarize=binarize, return_labels=True)
    return train_feature_extractor(x, y, path=path, **kwargs)
