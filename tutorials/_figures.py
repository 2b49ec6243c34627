"""Plotting helpers shared by the tutorials."""

import torch


def tile(images: torch.Tensor, rows: int, cols: int, normalize: bool = False) -> torch.Tensor:
    """8x8 images as one (rows * 10, cols * 10) mosaic with NaN borders; ``normalize`` scales each to max |.| = 1."""
    images = images.reshape(-1, 8, 8)[: rows * cols]
    if normalize:
        images = images / images.abs().amax((1, 2), keepdim=True)
    pad = torch.full((rows * cols, 10, 10), float("nan"))
    pad[: len(images), 1:9, 1:9] = images
    return pad.reshape(rows, cols, 10, 10).permute(0, 2, 1, 3).reshape(rows * 10, cols * 10)
