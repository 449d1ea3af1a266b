"""The one place nfields touches nerfacc (the optional ``[cuda]`` extra).

nerfacc's packed kernels only run on CUDA tensors, and its extension is JIT-built on first use, so it is imported
lazily, inside functions, and only when a CUDA device exists. Every function here has a pure-torch twin in
:mod:`nfields.render.sampler` / :mod:`nfields.render.volume`; the dispatchers there call into this module only when
the tensors are on CUDA and :func:`cuda_available` is true (the gsplat pattern), and the parity tests compare the two.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from nfields.errors import NFieldsError

_MISSING = "nerfacc with CUDA support is not available; install the [cuda] extra (pip install 'nfields[cuda]')"


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when torch sees a CUDA device and nerfacc imports with its CUDA extension built.

    Cached: the first call on a CUDA machine may take minutes while nerfacc JIT-compiles its kernels.

    Example:
        >>> isinstance(cuda_available(), bool)
        True
    """
    if not torch.cuda.is_available():
        return False
    try:
        import nerfacc  # noqa: F401
        from nerfacc.cuda._backend import _C
    except Exception:  # noqa: BLE001 - any import or build failure means "use the torch path"
        return False
    return _C is not None


def _nerfacc():
    if not cuda_available():
        raise NFieldsError(_MISSING)
    import nerfacc

    return nerfacc


def traverse_grid_cuda(
    origins: Tensor,
    dirs: Tensor,
    binary: Tensor,
    aabb: Tensor,
    near: Tensor,
    far: Tensor,
    step_size: float,
    cone_angle: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """nerfacc's grid traversal (the CUDA twin of :func:`nfields.render.sampler.march_rays_torch`).

    Args:
        origins, dirs: (N, 3) CUDA tensors; binary: (R, R, R) bool occupancy; aabb: (6,);
        near, far: (N,) per-ray planes; step_size, cone_angle: as in :func:`~nfields.render.sampler.march_rays`.

    Returns:
        ``ray_indices`` (S,) long, ``t_starts`` (S,), ``t_ends`` (S,), sorted by ray.
    """
    _nerfacc()
    from nerfacc.grid import traverse_grids

    intervals, samples, _ = traverse_grids(
        origins.float().contiguous(),
        dirs.float().contiguous(),
        binary[None].contiguous(),
        aabb.float().reshape(1, 6).contiguous(),
        near_planes=near.float().contiguous(),
        far_planes=far.float().contiguous(),
        step_size=float(step_size),
        cone_angle=float(cone_angle),
    )
    t_starts = intervals.vals[intervals.is_left]
    t_ends = intervals.vals[intervals.is_right]
    return samples.ray_indices.long(), t_starts, t_ends


def render_weight_from_density_cuda(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> tuple[Tensor, Tensor, Tensor]:
    """nerfacc's ``render_weight_from_density`` on packed samples: weights, transmittance, alphas (S,) each."""
    nerfacc = _nerfacc()
    return nerfacc.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=n_rays)


def render_weight_from_alpha_cuda(alphas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """nerfacc's ``render_weight_from_alpha`` on packed samples: weights, transmittance (S,) each."""
    nerfacc = _nerfacc()
    return nerfacc.render_weight_from_alpha(alphas, ray_indices=ray_indices, n_rays=n_rays)
