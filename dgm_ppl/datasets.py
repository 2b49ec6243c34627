"""Data sets: the embedded 8x8 digits and a loader for a local binarized-MNIST file.

Nothing here touches the network. The 8x8 digits (1,797 images, UCI ML hand-written digits, as
shipped by scikit-learn) are embedded in the package.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_digits", "load_binarized_mnist"]

_SPLITS = ("train", "test", "all")


def load_digits(
    split: str = "train",
    *,
    binarize: bool = True,
    threshold: int = 8,
    test_size: int = 297,
    seed: int = 0,
    return_labels: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor | tuple[Tensor, Tensor]:
    """The embedded 8x8 digits as an ``(N, 64)`` tensor.

    Pixel intensities run from 0 to 16; with ``binarize`` a pixel is 1 when it is ``>= threshold``,
    otherwise intensities are scaled to [0, 1]. ``split`` is ``"train"`` (1,500 images by default),
    ``"test"`` (``test_size`` images) or ``"all"``; the split is a fixed permutation given ``seed``.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    with resources.files("dgm_ppl").joinpath("data/digits.npz").open("rb") as f:
        archive = np.load(f)
        images, labels = archive["images"], archive["target"]
    order = np.random.default_rng(seed).permutation(len(images))
    if split == "train":
        order = order[test_size:]
    elif split == "test":
        order = order[:test_size]
    x = images[order]
    x = (x >= threshold).astype(np.float32) if binarize else x.astype(np.float32) / 16.0
    x = torch.as_tensor(x, dtype=dtype)
    if return_labels:
        return x, torch.as_tensor(labels[order], dtype=torch.long)
    return x


def load_binarized_mnist(path: str | os.PathLike, split: str = "train", dtype: torch.dtype = torch.float32) -> Tensor:
    """Load one split (an array such as ``train``, ``valid`` or ``test``) of a local ``.npz`` holding
    the fixed binarization of MNIST (Larochelle & Murray 2011), as an ``(N, 784)`` tensor."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no binarized-MNIST file at {path!r}: pass the path of a local .npz with arrays such as "
            "'train' and 'valid' (uint8, N x 784); dgm_ppl never downloads data"
        )
    with np.load(path) as archive:
        if split not in archive.files:
            raise KeyError(f"{path!r} has no split {split!r}; it has {archive.files}")
        x = archive[split]
    if x.ndim != 2 or x.shape[1] != 784:
        raise ValueError(f"split {split!r} of {path!r} has shape {x.shape}, expected (N, 784)")
    return torch.as_tensor(x.astype(np.float32), dtype=dtype)
