"""Dense feature grids (2D/3D), optionally multiresolution, interpolated with ``F.grid_sample``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfields.errors import NFieldsError


class DenseGrid(nn.Module):
    """Learned feature grid(s) with bi/trilinear interpolation (``align_corners=True``).

    Input (N, in_dim) in [-1, 1] (clamped); output (N, levels * features), coarsest level first.
    With ``levels > 1`` the level resolutions halve from ``resolution`` (the finest) downwards, each with
    ``resolution`` vertices per side at the finest level. Points outside [-1, 1] read the border.

    Example::

        >>> DenseGrid(2, resolution=16, features=4, levels=2)(torch.rand(10, 2) * 2 - 1).shape
        torch.Size([10, 8])
    """

    def __init__(self, in_dim: int, resolution: int = 128, features: int = 4, levels: int = 1, init_std: float = 1e-4):
        super().__init__()
        if in_dim not in (2, 3):
            raise NFieldsError(f"DenseGrid in_dim {in_dim}: must be 2 or 3")
        if resolution < 2:
            raise NFieldsError(f"--field.resolution {resolution}: must be >= 2")
        if features < 1:
            raise NFieldsError(f"--field.features {features}: must be >= 1")
        if not 1 <= levels or resolution >> (levels - 1) < 2:
            raise NFieldsError(f"--field.levels {levels}: must be >= 1 and leave the coarsest level >= 2 vertices")
        self.in_dim, self.features, self.levels = in_dim, features, levels
        self.resolutions = [max(2, resolution >> (levels - 1 - l)) for l in range(levels)]
        # Small uniform init, as for hash tables: the decoder MLP sees near-zero features at first.
        self.grids = nn.ParameterList(
            [
                nn.Parameter(torch.empty(1, features, *([r] * in_dim)).uniform_(-init_std, init_std))
                for r in self.resolutions
            ]
        )
        self.out_dim = levels * features

    def param_groups(self, lr: float) -> list[dict]:
        """The grids in their own group without weight decay (same hook as the hash grid)."""
        return [{"params": list(self.grids), "lr": lr, "weight_decay": 0.0}]

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) in [-1, 1] -> (N, levels * features)."""
        n = x.shape[0]
        # grid_sample wants (1, N, 1[, 1], in_dim); its coordinate order (x, y, z) indexes (W, H, D).
        g = x.clamp(-1.0, 1.0).reshape(1, n, *([1] * (self.in_dim - 1)), self.in_dim)
        outs = [
            F.grid_sample(grid, g, mode="bilinear", padding_mode="border", align_corners=True).reshape(self.features, n)
            for grid in self.grids
        ]
        return torch.cat(outs, dim=0).T
