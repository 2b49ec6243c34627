r"""Network layers for discriminators that see the whole minibatch, against mode collapse.

- :class:`MinibatchDiscrimination` (Salimans et al. 2016): features :math:`M_i = x_i T \in \mathbb R^{B \times C}`,
  :math:`o_b(x_i) = \sum_{j \ne i} \exp(-\|M_{i,b} - M_{j,b}\|_1)`, appended to the input.
- :class:`MinibatchStddev` (Karras et al. 2018): the mean over features of the per-feature standard deviation
  across the batch, appended as one constant feature (channel).

Both make the discriminator's output for one sample depend on the others, so it can notice fakes that are
too similar to each other. (Packing, ``GANLoss(packing=m)``, is the other remedy.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MinibatchDiscrimination", "MinibatchStddev"]


class MinibatchDiscrimination(nn.Module):
    """Append ``num_kernels`` minibatch features to ``(B, in_features)`` inputs → ``(B, in_features + num_kernels)``."""

    def __init__(self, in_features: int, num_kernels: int = 16, kernel_dim: int = 8):
        super().__init__()
        self.num_kernels, self.kernel_dim = num_kernels, kernel_dim
        self.T = nn.Parameter(torch.randn(in_features, num_kernels * kernel_dim) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.T.shape[0]:
            raise ValueError(f"expected (B, {self.T.shape[0]}) inputs, got {tuple(x.shape)}")
        m = (x @ self.T).reshape(-1, self.num_kernels, self.kernel_dim)
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(-1)  # (B, B, num_kernels)
        o = torch.exp(-l1).sum(1) - 1  # leave out j = i, where exp(0) = 1
        return torch.cat([x, o], dim=1)


class MinibatchStddev(nn.Module):
    """Append one feature (channel), the mean across features of the batch standard deviation:
    ``(B, C, ...)`` → ``(B, C + 1, ...)``."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(f"expected a batch of at least 2 samples (B, C, ...), got {tuple(x.shape)}")
        std = (x.var(0, unbiased=False) + self.eps).sqrt().mean()
        return torch.cat([x, std.expand(x.shape[0], 1, *x.shape[2:])], dim=1)
