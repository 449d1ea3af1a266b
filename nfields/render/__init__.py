"""Rendering: ray-box tests, occupancy-grid marching, packed compositing and the volume renderer.

nerfacc (the optional ``[cuda]`` extra) is imported only by :mod:`nfields.render.accel`, lazily; everything here
runs in pure torch on CPU.
"""

from nfields.render.accel import cuda_available
from nfields.render.rays_box import ray_aabb_intersect, ray_sphere_intersect
from nfields.render.renderer import RenderConfig, Renderer
from nfields.render.sampler import OccupancyGrid, PackedSamples, march_rays
from nfields.render.volume import (
    accumulate_along_rays,
    neus_alpha,
    render_weight_from_alpha,
    render_weight_from_density,
)

__all__ = [
    "OccupancyGrid",
    "PackedSamples",
    "RenderConfig",
    "Renderer",
    "accumulate_along_rays",
    "cuda_available",
    "march_rays",
    "neus_alpha",
    "ray_aabb_intersect",
    "ray_sphere_intersect",
    "render_weight_from_alpha",
    "render_weight_from_density",
]
