"""Frequency encodings for coordinate MLPs: NeRF positional encoding and random Fourier features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nfields.errors import NFieldsError


class PositionalEncoding(nn.Module):
    """NeRF positional encoding: ``[x, sin(2^k pi x), cos(2^k pi x)]`` for ``k = 0 .. n_freqs - 1``.

    Input (N, in_dim), usually in [-1, 1]; output (N, out_dim) with
    ``out_dim = in_dim * (include_input + 2 * n_freqs)``, laid out as ``[x | sin (k-major, dim-minor) | cos (same)]``.

    Example::

        >>> enc = PositionalEncoding(2, n_freqs=4)
        >>> enc(torch.zeros(5, 2)).shape
        torch.Size([5, 18])
    """

    def __init__(self, in_dim: int, n_freqs: int, include_input: bool = True):
        super().__init__()
        if n_freqs < 0:
            raise NFieldsError(f"--field.n_freqs {n_freqs}: must be >= 0")
        self.in_dim, self.n_freqs, self.include_input = in_dim, n_freqs, include_input
        # pi is folded into the frequencies so forward is one multiply.
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freqs, dtype=torch.float32), persistent=False)
        self.out_dim = in_dim * (int(include_input) + 2 * n_freqs)

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        angles = (x[:, None, :] * self.freqs[:, None]).flatten(1)  # (N, n_freqs * in_dim)
        parts = [x] if self.include_input else []
        return torch.cat([*parts, torch.sin(angles), torch.cos(angles)], dim=-1)


class FourierFeatures(nn.Module):
    """Random Fourier features (Tancik et al. 2020): ``[sin(2 pi B x), cos(2 pi B x)]``, ``B ~ N(0, sigma^2)``.

    ``B`` (n_features, in_dim) is a fixed buffer drawn from ``seed`` (saved in checkpoints, never trained).
    Input (N, in_dim); output (N, 2 * n_features).
    """

    def __init__(self, in_dim: int, n_features: int = 256, sigma: float = 10.0, seed: int = 0):
        super().__init__()
        if not sigma > 0:
            raise NFieldsError(f"--field.sigma {sigma}: must be > 0")
        if n_features < 1:
            raise NFieldsError(f"--field.n_fourier {n_features}: must be >= 1")
        gen = torch.Generator().manual_seed(seed)
        B = torch.randn(n_features, in_dim, generator=gen) * sigma
        self.register_buffer("B", 2.0 * math.pi * B)  # 2 pi folded in
        self.in_dim, self.sigma, self.out_dim = in_dim, sigma, 2 * n_features

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, 2 * n_features)."""
        proj = x @ self.B.T
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
