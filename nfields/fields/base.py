"""The Field protocol: what the renderer knows about a field.

A field takes raw world positions (not sample objects). ``kind`` is ``"density"`` or ``"sdf"``.

- ``geometry(x)`` -> ``(density_or_sdf (N,), features (N, F))``
- ``color(features, dirs, normals)`` -> ``rgb (N, 3)`` in [0, 1]
- ``aabb`` (6,) buffer: xmin, ymin, zmin, xmax, ymax, zmax; the field is empty outside it.

Networks (backbones) inside fields follow a smaller contract: an ``nn.Module`` whose ``forward`` maps
(N, in_dim) coordinates in [-1, 1] to (N, out_dim), optionally with ``param_groups(lr) -> list[dict]`` when some
parameters want their own learning rate (hash tables, CAM grids). See :func:`param_groups`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class Field(nn.Module):
    """Base class of every field the renderer can draw. Subclasses set ``kind`` and implement the two methods."""

    kind: ClassVar[str] = "density"

    def __init__(self, aabb: Tensor | list[float]):
        super().__init__()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(6))

    def normalize(self, x: Tensor) -> Tensor:
        """World positions (N, 3) -> [-1, 1]^3 inside the aabb."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        return (x - lo) / (hi - lo) * 2.0 - 1.0

    def geometry(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density (>= 0) or signed distance at x (N, 3), and features for :meth:`color`."""
        raise NotImplementedError

    def color(self, features: Tensor, dirs: Tensor, normals: Tensor | None = None) -> Tensor:
        """RGB in [0, 1] from geometry features, unit view directions (N, 3) and optional normals."""
        raise NotImplementedError

    def density(self, x: Tensor) -> Tensor:
        """Density used by the occupancy grid; SDF fields override it to turn distance into density."""
        return self.geometry(x)[0]


def param_groups(module: nn.Module, lr: float) -> list[dict]:
    """Optimizer parameter groups for ``module``: sub-modules with their own ``param_groups(lr)`` choose their
    learning rates; every other parameter gets ``lr``. Each parameter appears in exactly one group."""
    groups: list[dict] = []
    claimed: set[int] = set()

    def visit(m: nn.Module) -> None:
        for child in m.children():
            own = getattr(child, "param_groups", None)
            if callable(own):
                for g in own(lr):
                    params = [p for p in g["params"] if id(p) not in claimed]
                    claimed.update(id(p) for p in params)
                    if params:
                        groups.append({**g, "params": params})
            else:
                visit(child)

    own = getattr(module, "param_groups", None)
    if callable(own) and not isinstance(module, Field):
        return own(lr)
    visit(module)
    rest = [p for p in module.parameters() if id(p) not in claimed]
    if rest:
        groups.append({"params": rest, "lr": lr})
    return groups


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
