"""Environment-light shadows for SDF + PBR fields: the brightest texels of the light, tested for visibility by soft
sphere tracing through a cached low-resolution copy of the SDF.

Why: split-sum shading assumes every direction of the environment reaches every point. Under a sky with a sun (the
generated scenes, and most real captures) the missing cast shadows are then explained by darker albedo and a
dimmer, bluer light -- the decomposition goes wrong exactly where shadows fall. Computing the visibility of the
*whole* environment per point is a Monte Carlo integral (too costly on a CPU per training step); most of the
shadowing energy comes from a few bright texels, so the K brightest texels of a 16 x 32 copy of the light (by
radiance x solid angle: the sun and the bright sky around it) are treated as area lights with visibility, the
rest of the sky stays unshadowed:

    E_shadowed(x, n) = E(n) - sum_k (1 - V(x, w_k)) L_k max(n . w_k, 0) dw_k

``E(n)`` is the split-sum irradiance; the subtracted term is exact for those texels (as point lights at their
centres) and differentiable in their radiance ``L_k``, so a learned light is taught how bright its sun must be to
cast the shadows it sees. Specular light is scaled by the same ratio ``E_shadowed / E`` (ambient-occlusion style
specular occlusion).

Visibility ``V`` (no gradient) comes from :class:`ShadowVolume`: the SDF sampled on an R^3 lattice (refreshed with the
occupancy grid) and sphere traced with the soft-shadow estimate ``min_i k h_i / t_i`` (Quilez), whose penumbra
``k = 1 / tan(texel radius)`` matches the angular size of a texel. It is evaluated once per *ray*, at the expected
surface point, not per sample.

The sky's many broad lights (``shadow_sky``: 128 directions at 8 x 16) would multiply that cost by ~10; their
visibility changes slowly over the surface (soft, wide penumbrae), so :meth:`ShadowVolume.cache_visibility` traces
them once per lattice update from the near-surface vertices of a coarse lattice (each projected onto the surface) and
:meth:`ShadowVolume.cached_visibility` interpolates them per ray -- trilinearly, over the cell's corners whose surface
faces the same way as the ray's (so the two faces of a thin part do not mix).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nfields.errors import NFieldsError
from nfields.render.envmap import _map_uv_to_dir, downsample_equirect, texel_solid_angle, texel_uv

SHADOW_MAP_HW = (16, 32)


class ShadowLights(NamedTuple):
    """The environment texels treated as shadow-casting lights."""

    dirs: Tensor
    """(K, 3) unit world directions towards the texel centres."""
    radiance: Tensor
    """(K, 3) linear radiance (differentiable for a learned light)."""
    solid_angle: Tensor
    """(K,) steradians."""
    softness: Tensor | None = None
    """(K,) penumbra factor of each light for :meth:`ShadowVolume.visibility` (``1 / tan`` of its angular radius);
    None: every light is a 16 x 32 texel."""


def _texel_lights(tex: Tensor, world_to_map: Tensor) -> ShadowLights:
    """Every texel of an (h, w, 3) equirect map as a light at its centre."""
    h, w = tex.shape[:2]
    uv = texel_uv(h, w, tex.device).reshape(-1, 2)
    dirs = _map_uv_to_dir(uv) @ world_to_map.to(uv)  # map frame -> world (the matrix is orthonormal)
    sa = texel_solid_angle(h, w, tex.device).to(tex.dtype).expand(h, w).reshape(-1)
    return ShadowLights(dirs, tex.reshape(-1, 3), sa)


def _brightest(env, k: int, hw: tuple[int, int]) -> tuple[ShadowLights, Tensor]:
    """Every texel of ``env`` area-averaged to ``hw`` as lights, and the indices of the ``k`` with the most power."""
    tex = env.texels()
    if tuple(tex.shape[:2]) != tuple(hw):
        tex = downsample_equirect(tex, *hw)
    every = _texel_lights(tex, env.world_to_map)
    idx = (every.radiance.detach().mean(-1) * every.solid_angle).topk(min(k, len(every.dirs))).indices
    return every, idx


def brightest_texels(env, k: int, hw: tuple[int, int] = SHADOW_MAP_HW) -> ShadowLights:
    """The ``k`` texels of ``env`` (area-averaged to ``hw``) carrying the most power (mean radiance x solid angle).

    ``env``: an :class:`~nfields.render.envmap.EnvironmentMap` or :class:`~nfields.render.envmap.LearnedEnvironment`;
    the choice of texels is not differentiated, their radiance is.
    """
    every, idx = _brightest(env, k, hw)
    return _subset(every, idx)


def _subset(lights: ShadowLights, idx: Tensor) -> ShadowLights:
    return ShadowLights(*(None if f is None else f[idx] for f in lights))


def _texel_softness(rows: int) -> float:
    """``1 / tan`` of the angular radius of a texel of a ``rows`` x 2 ``rows`` map (the soft-shadow penumbra)."""
    return 1.0 / math.tan(0.5 * math.pi / rows)


def shadow_lights(env, k: int, sky_rows: int = 0, hw: tuple[int, int] = SHADOW_MAP_HW) -> ShadowLights:
    """The shadow-casting lights of ``env``: its ``k`` brightest texels (:func:`brightest_texels`) and, with
    ``sky_rows`` > 0, the rest of the sky as broad lights -- every texel of the light *without* those ``k``
    (area-averaged to ``sky_rows`` x 2 ``sky_rows``), so the whole environment is shadowed, the sun sharply and
    the sky softly (ambient occlusion of the sky: concave parts and the undersides of overhangs see less of it).

    Why: with only the brightest texels shadowed, the rest of the sky reaches every point unblocked; where it is in
    fact hidden the images are darker than the model can explain, and the albedo takes it (measured on the demo with
    its true geometry, materials and light: albedo recovered by inverting the shader per pixel, 24.2 dB with 16
    texels shadowed, 27.0 dB with 256; ``python apps/diag_pbr.py ceiling``).
    """
    every, idx = _brightest(env, k, hw)
    sun = _subset(every, idx)
    soft_sun = torch.full((len(idx),), _texel_softness(hw[0]), device=sun.dirs.device)
    if sky_rows <= 0:
        return sun._replace(softness=soft_sun)
    if sky_rows > hw[0] or hw[0] % sky_rows:
        raise NFieldsError(f"model.shadow_sky {sky_rows}: must divide the shadow map's {hw[0]} rows")
    keep = torch.ones_like(every.solid_angle)
    keep[idx] = 0.0
    rest = (every.radiance * keep[:, None]).reshape(*hw, 3)
    sky = _texel_lights(downsample_equirect(rest, sky_rows, 2 * sky_rows), env.world_to_map)
    soft_sky = torch.full((len(sky.dirs),), _texel_softness(sky_rows), device=sky.dirs.device)
    return ShadowLights(
        *(torch.cat(pair) for pair in zip(sun._replace(softness=soft_sun), sky._replace(softness=soft_sky)))
    )


def light_visibility(
    volume: ShadowVolume, points: Tensor, normals: Tensor, lights: ShadowLights, sky_rows: int = 0, cache: int = 0
) -> Tensor:
    """Visibility (M, K) of the K ``lights`` (:func:`shadow_lights` with ``sky_rows``) from surface points (M, 3)
    with unit normals (M, 3): traced per point, except -- with ``sky_rows`` > 0 and ``cache`` > 0 -- the sky's
    ``2 sky_rows^2`` lights (the last ones), interpolated from ``volume``'s cache on a ``cache``^3 lattice (built
    first when it holds other directions; points no cached vertex covers are traced)."""
    n_sky = 2 * sky_rows**2
    if not (n_sky and cache):
        return volume.visibility(points, normals, lights.dirs, softness=lights.softness)
    n_sun = len(lights.dirs) - n_sky
    sky_dirs, sky_soft = lights.dirs[n_sun:], lights.softness[n_sun:]
    if not volume.cache_matches(sky_dirs, cache):
        volume.cache_visibility(sky_dirs, sky_soft, cache)
    sun = volume.visibility(points, normals, lights.dirs[:n_sun], softness=lights.softness[:n_sun])
    sky, ok = volume.cached_visibility(points, normals)
    if not bool(ok.all()):
        miss = ~ok
        sky[miss] = volume.visibility(points[miss], normals[miss], sky_dirs, softness=sky_soft)
    return torch.cat([sun, sky], -1)


class SkyCache(NamedTuple):
    """What :meth:`ShadowVolume.cache_visibility` traced, and the directions it traced (to refresh it)."""

    dirs: Tensor
    """(K, 3) the cached directions."""
    softness: Tensor | float | None
    """Their penumbra factors (see :meth:`ShadowVolume.visibility`)."""
    resolution: int
    """Vertices per side of the cache's lattice."""
    visibility: Tensor
    """(R^3, K) at each vertex (1 away from the surface)."""
    normals: Tensor
    """(R^3, 3) each vertex's unit normal; zero away from the surface (such vertices never weigh in)."""


class ShadowVolume:
    """A cached SDF on a ``resolution``^3 lattice spanning ``aabb`` (6,), for soft shadow rays (see module docstring).

    Not a module and not checkpointed: it is a function of the SDF, rebuilt with :meth:`update`.
    """

    def __init__(self, aabb: Tensor, resolution: int = 64):
        self.aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(6)
        self.resolution = int(resolution)
        self.volume: Tensor | None = None
        self.cache: SkyCache | None = None
        """:meth:`cache_visibility`'s result, refreshed by every :meth:`update`."""

    @property
    def voxel(self) -> float:
        """Lattice spacing (the largest over the three axes)."""
        size = self.aabb[3:] - self.aabb[:3]
        return float(size.max()) / (self.resolution - 1)

    @torch.no_grad()
    def update(self, sdf_fn: Callable[[Tensor], Tensor], device=None, chunk: int = 1 << 16) -> None:
        """Sample ``sdf_fn`` ((M, 3) -> (M,) or (M, 1), on ``device``) at every lattice vertex."""
        r = self.resolution
        self.aabb = self.aabb.to(device)
        pts = self._lattice(r)
        out = torch.cat([sdf_fn(pts[a : a + chunk]).reshape(-1).float() for a in range(0, len(pts), chunk)])
        self.volume = out.reshape(1, 1, r, r, r)
        if self.cache is not None:  # the cached visibility is a function of the SDF too
            self.cache_visibility(self.cache.dirs, self.cache.softness, self.cache.resolution)

    def _lattice(self, r: int) -> Tensor:
        """The (r^3, 3) vertices of an r^3 lattice spanning the box, x fastest (flat index x + r y + r^2 z: the
        order of grid_sample's (D, H, W) = (z, y, x) axes)."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        lin = torch.linspace(0.0, 1.0, r, device=self.aabb.device)
        zz, yy, xx = torch.meshgrid(lin, lin, lin, indexing="ij")
        return lo + torch.stack([xx, yy, zz], -1).reshape(-1, 3) * (hi - lo)

    def sdf(self, x: Tensor) -> Tensor:
        """Trilinear SDF at points (..., 3) inside the box -> (...)."""
        lo, hi = self.aabb[:3].to(x), self.aabb[3:].to(x)
        g = ((x - lo) / (hi - lo) * 2 - 1).reshape(1, -1, 1, 1, 3)
        v = F.grid_sample(self.volume.to(x), g, mode="bilinear", padding_mode="border", align_corners=True)
        return v.reshape(x.shape[:-1])

    @torch.no_grad()
    def visibility(
        self, points: Tensor, normals: Tensor, dirs: Tensor, steps: int = 24, softness: float | Tensor | None = None
    ) -> Tensor:
        """Soft visibility (M, K) in [0, 1] of directions ``dirs`` (K, 3) from surface points (M, 3) with unit
        normals (M, 3). Rays start 1.5 voxels off the surface (along the normal), march by the cached SDF (at least
        half a voxel per step) and count as visible once they leave the box or run out of ``steps``. ``softness``
        (k of ``min k h / t``; a number, or one per direction (K,)) defaults to the angular radius of a 16 x 32
        light texel."""
        if self.volume is None:
            raise RuntimeError("ShadowVolume.visibility before update()")
        if softness is None:
            softness = _texel_softness(SHADOW_MAP_HW[0])
        m, k = points.shape[0], dirs.shape[0]
        soft = torch.as_tensor(softness, dtype=points.dtype, device=points.device).expand(k)
        soft = soft[None].expand(m, k).reshape(-1)
        vox = self.voxel
        lo, hi = self.aabb[:3].to(points), self.aabb[3:].to(points)
        origin = (points + 1.5 * vox * normals)[:, None, :].expand(m, k, 3).reshape(-1, 3)
        d = dirs.to(points)[None].expand(m, k, 3).reshape(-1, 3)
        vis = torch.ones(m * k, device=points.device)
        t = torch.full((m * k,), 0.5 * vox, device=points.device)
        active = torch.arange(m * k, device=points.device)
        # Directions below the surface's horizon are blocked by the surface itself.
        facing = (normals @ dirs.to(points).T).reshape(-1) > 0
        vis[~facing] = 0.0
        active = active[facing]
        for _ in range(steps):
            if active.numel() == 0:
                break
            p = origin[active] + t[active, None] * d[active]
            inside = ((p >= lo) & (p <= hi)).all(-1)
            h = self.sdf(p)
            est = torch.where(inside, soft[active] * h / t[active], torch.ones_like(h))
            vis[active] = torch.minimum(vis[active], est.clamp(0.0, 1.0))
            t[active] += h.clamp_min(0.5 * vox)
            active = active[inside & (h > 0) & (vis[active] > 0)]
        return vis.reshape(m, k)

    def normals(self, x: Tensor) -> Tensor:
        """Unit normals (M, 3) of the cached SDF at points (M, 3) (central differences of half a voxel)."""
        e = 0.5 * self.voxel
        off = torch.eye(3, device=x.device, dtype=x.dtype) * e
        grad = torch.stack([self.sdf(x + off[i]) - self.sdf(x - off[i]) for i in range(3)], -1)
        return F.normalize(grad, dim=-1)

    @torch.no_grad()
    def cache_visibility(
        self, dirs: Tensor, softness: float | Tensor | None = None, resolution: int = 32, chunk: int = 2048
    ) -> None:
        """Trace the visibility of ``dirs`` (K, 3) once, from every vertex of a ``resolution``^3 lattice (spanning
        the box) within ~2 of its cells of the surface -- each vertex projected onto the cached SDF's surface along
        its normal -- for :meth:`cached_visibility` (see the module docstring). Call after :meth:`update`; every
        later :meth:`update` refreshes it."""
        if self.volume is None:
            raise RuntimeError("ShadowVolume.cache_visibility before update()")
        r = int(resolution)
        dev = self.volume.device
        verts = self._lattice(r).to(dev)
        cell = float((self.aabb[3:] - self.aabb[:3]).max()) / (r - 1)
        h = self.sdf(verts)
        near = torch.nonzero(h.abs() < 2.0 * cell).squeeze(-1)
        n = self.normals(verts[near])
        surf = verts[near] - h[near, None] * n
        vis = torch.ones(r**3, dirs.shape[0], device=dev)
        for a in range(0, len(near), chunk):
            sl = slice(a, a + chunk)
            vis[near[sl]] = self.visibility(surf[sl], n[sl], dirs.to(dev), softness=softness)
        normals = torch.zeros(r**3, 3, device=dev)
        normals[near] = n
        self.cache = SkyCache(dirs.detach().clone(), softness, r, vis, normals)

    def cache_matches(self, dirs: Tensor, resolution: int) -> bool:
        """Whether :meth:`cache_visibility` was last run for these directions on this lattice."""
        c = self.cache
        return (
            c is not None
            and c.resolution == resolution
            and c.dirs.shape == dirs.shape
            and bool(torch.allclose(c.dirs, dirs.to(c.dirs)))
        )

    @torch.no_grad()
    def cached_visibility(self, points: Tensor, normals: Tensor) -> tuple[Tensor, Tensor]:
        """Visibility (M, K) of the cached directions at surface points (M, 3) with unit normals (M, 3), interpolated
        from :meth:`cache_visibility`'s vertices: trilinear weights over the cell's near-surface corners whose normal is
        within 90 degrees of the point's (vertices away from the surface have none). Also returns (M,) bool: False where
        no corner qualified (the caller traces those points instead; their rows here are 1)."""
        r, vis, vnorm = self.cache.resolution, self.cache.visibility, self.cache.normals
        lo, hi = self.aabb[:3].to(points), self.aabb[3:].to(points)
        u = ((points - lo) / (hi - lo) * (r - 1)).clamp(0.0, r - 1.0)
        i0 = u.floor().clamp(max=r - 2).long()
        f = u - i0
        bits = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], device=points.device)  # (8, 3)
        idx = i0[:, None, :] + bits  # (M, 8, 3): the cell's corners
        flat = idx[..., 0] + r * idx[..., 1] + r * r * idx[..., 2]
        w = torch.where(bits.bool(), f[:, None, :], 1.0 - f[:, None, :]).prod(-1)  # (M, 8) trilinear
        w = w * ((vnorm[flat] * normals[:, None, :]).sum(-1) > 0)
        acc = torch.einsum("mc,mck->mk", w, vis[flat])
        wsum = w.sum(-1)
        ok = wsum > 1e-4
        out = torch.ones_like(acc)
        out[ok] = acc[ok] / wsum[ok, None]
        return out, ok
