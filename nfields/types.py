"""Plain data types that flow between data/, render/, fields/ and train/.

Shapes use ``N`` for rays and ``S`` for packed samples (all rays' samples concatenated).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Rays:
    """A batch of rays in world space.

    origins: (N, 3) float32; directions: (N, 3) float32, unit length.
    """

    origins: Tensor
    directions: Tensor

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, idx) -> Rays:
        return Rays(self.origins[idx], self.directions[idx])

    def to(self, device) -> Rays:
        return Rays(self.origins.to(device), self.directions.to(device))


@dataclass
class RenderOutput:
    """What the renderer returns for N rays.

    rgb: (N, 3) composited colour (background included);
    depth: (N,) expected ray distance t (0 where nothing was hit);
    opacity: (N,) accumulated weight in [0, 1];
    normals: (N, 3) weight-averaged field normals, or None when the field gives none;
    n_samples: number of packed samples the field was evaluated at (for throughput and tests);
    extras: per-sample tensors losses need (e.g. ``"sdf_grad"`` (S, 3) for the Eikonal loss,
    ``"weights"`` (S,), ``"ray_indices"`` (S,)), and anything else a field wants to return.
    """

    rgb: Tensor
    depth: Tensor
    opacity: Tensor
    normals: Tensor | None = None
    n_samples: int = 0
    extras: dict[str, Tensor] = field(default_factory=dict)


def as_float_image(img: Tensor) -> Tensor:
    """uint8 (..., C) -> float32 in [0, 1]; float input is returned unchanged."""
    if img.dtype == torch.uint8:
        return img.float() / 255.0
    return img
