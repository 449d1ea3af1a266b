"""Ray / box and ray / sphere intersections (pure torch, any device, batched over rays).

Both return ``(t_near, t_far, hit)`` with ``t`` measured along the (not necessarily unit) direction, so the hit
points are ``origins + t * dirs``. ``t_near`` may be negative when the origin is inside the shape. Rays that miss
get ``t_near = t_far = 0`` (finite, so masks and arithmetic never meet inf - inf) and ``hit = False``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Direction components smaller than this are treated as this (with their sign), so the slab test never divides by
# zero; the resulting t for that axis is huge (the ray is parallel to those planes), which is the right limit.
_TINY = 1e-12


def ray_aabb_intersect(origins: Tensor, dirs: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of N rays against one axis-aligned box.

    Args:
        origins: (N, 3) ray origins.
        dirs: (N, 3) ray directions (need not be unit length).
        aabb: (6,) box ``xmin, ymin, zmin, xmax, ymax, zmax``.

    Returns:
        ``t_near`` (N,), ``t_far`` (N,) and ``hit`` (N,) bool; ``hit`` means the ray's line meets the box with
        ``t_far > max(t_near, 0)`` (the box is not entirely behind the origin).

    Example:
        >>> o = torch.tensor([[0.0, 0.0, -3.0], [5.0, 5.0, -3.0]])
        >>> d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
        >>> t0, t1, hit = ray_aabb_intersect(o, d, torch.tensor([-1.0, -1, -1, 1, 1, 1]))
        >>> t0.tolist(), t1.tolist(), hit.tolist()
        ([2.0, 0.0], [4.0, 0.0], [True, False])
    """
    aabb = aabb.to(origins)
    safe = torch.where(dirs.abs() < _TINY, torch.full_like(dirs, _TINY).copysign(dirs), dirs)
    inv = 1.0 / safe
    ta = (aabb[:3] - origins) * inv
    tb = (aabb[3:] - origins) * inv
    t_near = torch.minimum(ta, tb).amax(dim=-1)
    t_far = torch.maximum(ta, tb).amin(dim=-1)
    hit = (t_far > t_near) & (t_far > 0)
    zero = torch.zeros_like(t_near)
    return torch.where(hit, t_near, zero), torch.where(hit, t_far, zero), hit


def ray_sphere_intersect(
    origins: Tensor, dirs: Tensor, center: Tensor | tuple | list, radius: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Intersections of N rays with a sphere (solves ``|o + t d - c|^2 = r^2``).

    Args:
        origins: (N, 3); dirs: (N, 3) (need not be unit length).
        center: (3,) or (N, 3); radius: scalar or (N,).

    Returns:
        ``t_near`` (N,), ``t_far`` (N,) (the two roots, ascending) and ``hit`` (N,) bool (two distinct roots with
        ``t_far > 0``). Tangent rays count as misses.

    Example:
        >>> o = torch.tensor([[0.0, 0.0, -3.0]])
        >>> d = torch.tensor([[0.0, 0.0, 1.0]])
        >>> t0, t1, hit = ray_sphere_intersect(o, d, torch.zeros(3), 1.0)
        >>> t0.item(), t1.item(), hit.item()
        (2.0, 4.0, True)
    """
    center = torch.as_tensor(center, dtype=origins.dtype, device=origins.device)
    radius = torch.as_tensor(radius, dtype=origins.dtype, device=origins.device)
    oc = origins - center
    a = (dirs * dirs).sum(-1)
    half_b = (dirs * oc).sum(-1)
    c = (oc * oc).sum(-1) - radius**2
    disc = half_b**2 - a * c
    sq = disc.clamp_min(0.0).sqrt()
    t_near = (-half_b - sq) / a
    t_far = (-half_b + sq) / a
    hit = (disc > 0) & (t_far > 0)
    zero = torch.zeros_like(t_near)
    return torch.where(hit, t_near, zero), torch.where(hit, t_far, zero), hit
