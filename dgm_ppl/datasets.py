"""Data sets: the embedded 8x8 digits, a loader for a local binarized-MNIST file, and 2-D Gaussian mixtures.

Nothing here touches the network. The 8x8 digits (1,797 images, UCI ML hand-written digits, as
shipped by scikit-learn) are embedded in the package. The ring and grid mixtures are the mode-collapse
benchmarks of VEEGAN and PacGAN (Srivastava et al. 2017; Lin et al. 2018).
"""

from __future__ import annotations

import math
import os
from importlib import resources

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "load_digits",
    "load_binarized_mnist",
    "ring_of_gaussians",
    "grid_of_gaussians",
    "ring_centers",
    "grid_centers",
    "RING_STD",
    "GRID_STD",
]

RING_STD = 0.01
GRID_STD = 0.05

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
    # the .npz may be column-major: rows must be contiguous, or every minibatch slice is strided (about 2x slower)
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), dtype=dtype)


def ring_centers(num_modes: int = 8, radius: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``(num_modes, 2)`` centres ``radius (cos 2πk/K, sin 2πk/K)``, k = 0..K-1: all distinct
    (``linspace(0, 2π, K)`` would repeat the first one)."""
    if num_modes < 1:
        raise ValueError(f"num_modes must be positive, got {num_modes}")
    angle = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    return (radius * torch.stack([angle.cos(), angle.sin()], dim=-1)).to(dtype)


def grid_centers(side: int = 5, spacing: float = 2.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``(side², 2)`` centres of a square grid with the given spacing, centred at 0:
    {-4, -2, 0, 2, 4}² by default."""
    if side < 1:
        raise ValueError(f"side must be positive, got {side}")
    axis = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    return torch.cartesian_prod(axis, axis).to(dtype)


def _mixture(centers: Tensor, std: float, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    k = torch.randint(len(centers), (n,), generator=generator)
    noise = torch.randn(n, centers.shape[-1], generator=generator, dtype=torch.float64)
    return (centers.double()[k] + std * noise).to(dtype)


def ring_of_gaussians(
    n: int,
    *,
    num_modes: int = 8,
    radius: float = 1.0,
    std: float = RING_STD,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` draws, ``(n, 2)``, from an equal mixture of ``num_modes`` isotropic Gaussians with
    standard deviation ``std`` centred on a circle of the given radius (PacGAN's ring: 8 modes,
    radius 1, σ = 0.01). The centres are :func:`ring_centers`."""
    return _mixture(ring_centers(num_modes, radius), std, n, generator, dtype)


def grid_of_gaussians(
    n: int,
    *,
    side: int = 5,
    spacing: float = 2.0,
    std: float = GRID_STD,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` draws, ``(n, 2)``, from an equal mixture of ``side²`` isotropic Gaussians with standard
    deviation ``std`` on a square grid (PacGAN's grid: 25 modes on {-4, -2, 0, 2, 4}², σ = 0.05).
    The centres are :func:`grid_centers`."""
    return _mixture(grid_centers(side, spacing), std, n, generator, dtype)
