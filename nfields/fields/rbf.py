"""Gaussian RBF network ("rbf"): multi-scale low-resolution feature grids, one layer of Gaussian neurons, and a
linear read-out (in the spirit of Gaussian RBFNet).

    f(x)   = concat_l grid_l(x)                                 (N, D), D = len(grid_levels) * grid_features
    phi_k  = exp(-|| s_k * (f - mu_k) ||^2)                     (N, K), learnable centres mu_k and diagonal scales s_k
    out    = phi @ W + b                                        (N, out_dim)

The squared distance is expanded into one matrix product instead of an (N, K, D) broadcast:
``sum_j s_kj^2 f_j^2 - 2 sum_j s_kj^2 mu_kj f_j + sum_j s_kj^2 mu_kj^2 = [f^2, f] @ [s^2, -2 s^2 mu]^T + c_k``,
so memory is O(N (D + K)) and the work is one GEMM. :func:`rbf_sq_dist_naive` is the broadcast reference.

    >>> from nfields.registry import build_network
    >>> net = build_network("rbf", 2, 3, n_rbf=32, grid_levels=(4, 8), grid_features=2)
    >>> net(torch.zeros(5, 2)).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfields.errors import NFieldsError
from nfields.fields.mlp import check_option
from nfields.registry import register


def rbf_sq_dist(f: Tensor, mu: Tensor, s: Tensor) -> Tensor:
    """``||s_k * (f_n - mu_k)||^2`` for all n, k via one matmul. f (N, D), mu (K, D), s (K, D) -> (N, K), >= 0."""
    s2 = s * s
    w = torch.cat([s2, -2.0 * s2 * mu], dim=1)  # (K, 2D)
    const = (s2 * mu * mu).sum(1)  # (K,)
    d2 = torch.addmm(const, torch.cat([f * f, f], dim=1), w.T)
    # Cancellation can leave tiny negatives where f ~ mu_k; a distance is never negative.
    return d2.clamp_min(0.0)


def rbf_sq_dist_naive(f: Tensor, mu: Tensor, s: Tensor) -> Tensor:
    """Broadcast reference of :func:`rbf_sq_dist` (O(N K D) memory). f (N, D), mu (K, D), s (K, D) -> (N, K)."""
    return ((s[None] * (f[:, None, :] - mu[None])) ** 2).sum(-1)


class RBFNetwork(nn.Module):
    """Multi-scale grids -> K Gaussian neurons -> linear read-out: (N, in_dim) in [-1, 1] -> (N, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, n_rbf: int, grid_levels: tuple[int, ...], grid_features: int):
        super().__init__()
        if in_dim not in (2, 3):
            raise NFieldsError(f"rbf: in_dim {in_dim}: must be 2 or 3 (the feature grids are 2D or 3D)")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.grid_features = grid_features
        # Features start spread over [-1, 1] so the Gaussians see distinct inputs from the first step; a grid
        # starting near zero would give every point the same activations.
        self.grids = nn.ParameterList(
            [nn.Parameter(torch.empty(1, grid_features, *([r] * in_dim)).uniform_(-1.0, 1.0)) for r in grid_levels]
        )
        d = len(grid_levels) * grid_features
        self.feature_dim = d
        self.mu = nn.Parameter(torch.empty(n_rbf, d).uniform_(-1.0, 1.0))
        # E||f - mu||^2 = D * 2/3 for independent U(-1, 1) entries: this scale puts a typical exponent near -1.
        self.s = nn.Parameter(torch.full((n_rbf, d), math.sqrt(1.5 / d)))
        self.readout = nn.Linear(n_rbf, out_dim)

    def param_groups(self, lr: float) -> list[dict]:
        """Grids without weight decay (as for the other grid encodings); everything at ``lr``."""
        rest = [p for n, p in self.named_parameters() if not n.startswith("grids.")]
        return [{"params": list(self.grids), "lr": lr, "weight_decay": 0.0}, {"params": rest, "lr": lr}]

    def features(self, x: Tensor) -> Tensor:
        """Concatenated grid features, coarsest first: (N, in_dim) -> (N, D)."""
        n = x.shape[0]
        g = x.clamp(-1.0, 1.0).reshape(1, n, *([1] * (self.in_dim - 1)), self.in_dim)
        outs = [
            F.grid_sample(grid, g, mode="bilinear", padding_mode="border", align_corners=True).reshape(grid.shape[1], n)
            for grid in self.grids
        ]
        return torch.cat(outs, 0).T

    def activations(self, x: Tensor) -> Tensor:
        """Gaussian neuron outputs phi (N, K) in (0, 1]."""
        return torch.exp(-rbf_sq_dist(self.features(x), self.mu, self.s))

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        return self.readout(self.activations(x))


@register("rbf")
@dataclass
class RBFConfig:
    """Gaussian RBF network: multi-scale low-resolution dense grids, one layer of Gaussian neurons with learnable
    centres and diagonal scales, linear read-out."""

    n_rbf: int = 256
    """Number of Gaussian neurons."""
    grid_levels: tuple[int, ...] | None = None
    """Vertices per side of each feature grid (default 8, 16, 32, 64, 128 in 2D; 4, 8, 16, 32, 64 in 3D)."""
    grid_features: int = 4
    """Features per grid vertex and level."""
    seed: int = 0
    """Seed of the initialisation (equal configs build equal networks)."""

    def __post_init__(self):
        check_option("n_rbf", self.n_rbf, self.n_rbf >= 1, ">= 1")
        check_option("grid_features", self.grid_features, self.grid_features >= 1, ">= 1")
        if self.grid_levels is not None:
            levels = tuple(self.grid_levels) if isinstance(self.grid_levels, (list, tuple)) else None
            ok = bool(levels) and all(isinstance(r, int) and r >= 2 for r in levels)
            check_option("grid_levels", self.grid_levels, ok, "a non-empty list of resolutions >= 2")
            self.grid_levels = levels

    def build(self, in_dim: int, out_dim: int) -> RBFNetwork:
        """(N, in_dim) in [-1, 1] -> (N, out_dim); in_dim 2 or 3."""
        levels = self.grid_levels or ((4, 8, 16, 32, 64) if in_dim == 3 else (8, 16, 32, 64, 128))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return RBFNetwork(in_dim, out_dim, self.n_rbf, levels, self.grid_features)
