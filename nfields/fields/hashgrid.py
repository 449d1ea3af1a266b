"""Grid backends: "hashgrid" (Instant-NGP hash encoding + small MLP) and "densegrid" (dense feature grid + MLP).

Both map (N, in_dim) coordinates in [-1, 1] to (N, out_dim); the grids' tables get their own optimizer group
through ``param_groups`` (see :func:`nfields.fields.base.param_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from nfields.encodings.grid import DenseGrid
from nfields.encodings.hashgrid import check_hashgrid_options
from nfields.encodings.tcnn import BACKENDS, make_hash_encoding
from nfields.fields.mlp import check_option, make_mlp
from nfields.registry import register


class GridNetwork(nn.Module):
    """Grid encoding + MLP decoder: (N, in_dim) in [-1, 1] -> (N, out_dim).

    ``unit_input`` encodings (hash grids) read [0, 1], so the input is remapped first.
    """

    def __init__(self, encoding: nn.Module, mlp: nn.Module, in_dim: int, out_dim: int, unit_input: bool):
        super().__init__()
        self.encoding, self.mlp = encoding, mlp
        self.in_dim, self.out_dim, self.unit_input = in_dim, out_dim, unit_input

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        if self.unit_input:
            x = (x + 1.0) * 0.5
        return self.mlp(self.encoding(x))


@register("hashgrid")
@dataclass
class HashGridConfig:
    """Instant-NGP multiresolution hash encoding followed by a small ReLU MLP.

    CPU-friendly setting: ``levels=8, log2_table=17, finest_res=512`` (1.5M table entries instead of 12M; about 3x
    the points per second of this GPU-sized default in a training step on a 2-core CPU).
    """

    levels: int = 16
    """Number of resolution levels (1..32)."""
    features_per_level: int = 2
    """Features stored per table row (1, 2, 4 or 8)."""
    log2_table: int = 19
    """log2 of the rows per level (10..24); coarse levels that fit are stored densely instead of hashed."""
    base_res: int = 16
    """Coarsest grid resolution (cells per side)."""
    finest_res: int = 2048
    """Finest grid resolution (cells per side); levels grow geometrically from base_res."""
    hidden: int = 64
    """Width of the decoder MLP."""
    layers: int = 2
    """Hidden layers of the decoder MLP."""
    backend: str = "auto"
    """auto (tinycudann when installed and CUDA is present, else torch), torch, or tcnn."""

    def __post_init__(self):
        check_hashgrid_options(self.levels, self.features_per_level, self.log2_table, self.base_res, self.finest_res)
        check_option("hidden", self.hidden, self.hidden >= 1, ">= 1")
        check_option("layers", self.layers, self.layers >= 1, ">= 1")
        check_option("backend", self.backend, self.backend in BACKENDS, f"one of {', '.join(BACKENDS)}")

    def build(self, in_dim: int, out_dim: int) -> GridNetwork:
        """(N, in_dim) in [-1, 1] -> (N, out_dim)."""
        enc = make_hash_encoding(
            self.backend,
            in_dim=in_dim,
            levels=self.levels,
            features_per_level=self.features_per_level,
            log2_table=self.log2_table,
            base_res=self.base_res,
            finest_res=self.finest_res,
        )
        mlp = make_mlp(enc.out_dim, out_dim, self.hidden, self.layers, "relu")
        return GridNetwork(enc, mlp, in_dim, out_dim, unit_input=True)


@register("densegrid")
@dataclass
class DenseGridConfig:
    """Dense (optionally multiresolution) feature grid, bi/trilinearly interpolated, followed by a small ReLU MLP."""

    resolution: int = 128
    """Vertices per side of the finest grid (memory grows as resolution^dim * features)."""
    features: int = 4
    """Features per grid vertex and level."""
    levels: int = 1
    """Number of grids; each coarser one has half the resolution of the next."""
    hidden: int = 64
    """Width of the decoder MLP."""
    layers: int = 2
    """Hidden layers of the decoder MLP."""

    def __post_init__(self):
        check_option("resolution", self.resolution, 2 <= self.resolution <= 4096, "in 2..4096")
        check_option("features", self.features, self.features >= 1, ">= 1")
        check_option(
            "levels",
            self.levels,
            self.levels >= 1 and self.resolution >> (self.levels - 1) >= 2,
            f"in 1..{max(1, self.resolution.bit_length() - 1)} for resolution {self.resolution}",
        )
        check_option("hidden", self.hidden, self.hidden >= 1, ">= 1")
        check_option("layers", self.layers, self.layers >= 1, ">= 1")

    def build(self, in_dim: int, out_dim: int) -> GridNetwork:
        """(N, in_dim) in [-1, 1] -> (N, out_dim); in_dim must be 2 or 3."""
        enc = DenseGrid(in_dim, self.resolution, self.features, self.levels)
        mlp = make_mlp(enc.out_dim, out_dim, self.hidden, self.layers, "relu")
        return GridNetwork(enc, mlp, in_dim, out_dim, unit_input=False)
