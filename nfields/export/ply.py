"""Binary PLY with per-vertex colours (the quick look for a mesh coloured by the field, no UVs needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh

from nfields.errors import NFieldsError
from nfields.export.validate import atomic_export


def write_ply(path: str | Path, mesh: trimesh.Trimesh, vertex_colors: np.ndarray | torch.Tensor | None = None) -> Path:
    """Write ``mesh`` as binary little-endian PLY with ``vertex_colors``, atomically.

    Args:
        vertex_colors: (V,3) or (V,4); uint8 in [0,255], or floats in [0,1] (sRGB-encoded values, as displayed).
            None keeps the mesh's own vertex colours (if any).
    """
    colors = None
    if vertex_colors is not None:
        c = vertex_colors.detach().cpu().numpy() if isinstance(vertex_colors, torch.Tensor) else vertex_colors
        c = np.asarray(c)
        if c.ndim != 2 or c.shape[0] != len(mesh.vertices) or c.shape[1] not in (3, 4):
            raise NFieldsError(f"write_ply: vertex_colors must be (V,3|4) with V={len(mesh.vertices)}, got {c.shape}")
        if c.dtype != np.uint8:
            c = np.round(np.clip(c.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
        colors = c
    out = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    if colors is not None:
        out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=colors)
    elif mesh.visual.kind == "vertex":
        out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=mesh.visual.vertex_colors)
    data = out.export(file_type="ply", encoding="binary")
    return atomic_export(path, lambda tmp: Path(tmp).write_bytes(data))
