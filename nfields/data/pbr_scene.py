"""Scenes with full ground truth for relightable reconstruction, written in the DTU (IDR/NeuS) layout.

``make_pbr_scene`` renders a shape with spatially varying PBR materials (albedo, roughness, metallic) under an HDR
environment map with shadows, using the project's own physically based renderer: primary rays by ray casting
(open3d's ``RaycastingScene`` for meshes, see :mod:`nfields.data.raycast`; sphere tracing for the analytic demo
shape), then Monte Carlo integration of the GGX + Lambert BRDF of :mod:`nfields.render.shading` against the
environment, each light sample tested for occlusion by a shadow ray. Besides the training images it writes the
ground truth that ``nfields eval`` compares against: the mesh, per-view albedo / roughness / metallic / normal
images, and the held-out views relit under a second light (the same map turned about the up axis).

Frames: the shape is normalised into radius ``SHAPE_RADIUS`` of the origin, world +z up (a y-up mesh is turned
so its +y becomes +z); ``scale_mat`` maps these normalised coordinates back to the mesh file's own, so exports
land where the source mesh was. Images are ``sRGB(clip(exposure * L))`` with one exposure per scene (in
``gt/scene.json``), so the radiance scale is known to an evaluator.

Layout::

    cameras_sphere.npz  image/%06d.png  mask/%03d.png
    gt/mesh.ply  gt/scene.json  gt/{albedo,roughness,metallic,normal}/%06d.png  gt/relit/%06d.png
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from nfields.data.cameras import Cameras
from nfields.data.synthetic import DEMO_SCALE_MAT, demo_cameras, demo_normals, sphere_trace, world_mat
from nfields.errors import NFieldsError
from nfields.render.shading import linear_to_srgb, shade_pbr_mc

SHAPE_RADIUS = 0.75
SHADOW_EPS = 2e-3


@dataclass
class PBRSceneConfig:
    """What to render."""

    n_views: int = 48
    """Training + held-out views (every 8th is held out by the loaders)."""
    size: int = 200
    """Image width = height in pixels."""
    spp: int = 128
    """Light samples per pixel (Monte Carlo, with shadow rays)."""
    up: str = "y"
    """The mesh file's up axis (y: Stanford scans, most OBJ exports; z: CAD / Blender). Ignored for the demo."""
    relight_rotation_deg: float = 90.0
    """The second light for the relit ground truth: the environment turned this much about the up axis."""
    holdout_every: int = 8
    """Relit ground truth is rendered for the held-out views (index % holdout_every == 0)."""
    seed: int = 0


class DemoSurface:
    """The analytic demo shape (:func:`nfields.data.synthetic.demo_sdf`) behind the ray-casting interface."""

    def intersect(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Closest hits -> (hit, t, outward normal)."""
        hit, t = sphere_trace(origins, dirs)
        n = torch.zeros_like(origins)
        if hit.any():
            n[hit] = demo_normals(origins[hit] + t[hit, None] * dirs[hit])
        return hit, t, n

    def occluded(self, origins: Tensor, dirs: Tensor) -> Tensor:
        """Whether rays leaving the surface hit the shape again."""
        return sphere_trace(origins, dirs)[0]


def procedural_materials(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Spatially varying PBR materials at normalised points x (N, 3) -> albedo (N, 3) linear, roughness (N,),
    metallic (N,).

    Albedo: smooth colour waves with thin darker stripes (detail to recover); roughness: a smooth 0.3-0.8 field;
    metallic: a metal cap above z = 0.4 (soft 0/1 edge), the rest dielectric.
    """
    waves = 0.5 + 0.5 * torch.sin(torch.stack([4.0 * x[:, 0], 4.0 * x[:, 1] + 2.0, 4.0 * x[:, 2] + 4.0], -1))
    stripes = 1.0 - 0.35 * (torch.sin(14.0 * (x[:, 0] + 0.6 * x[:, 1])) > 0.75).float()
    albedo = (0.12 + 0.7 * waves) * stripes[:, None]
    roughness = 0.3 + 0.5 * (0.5 + 0.5 * torch.sin(5.0 * x[:, 0] - 3.0 * x[:, 2]))
    metallic = torch.sigmoid(60.0 * (x[:, 2] - 0.4))
    return albedo, roughness, metallic


def normalise_mesh(mesh: trimesh.Trimesh, up: str = "y") -> tuple[trimesh.Trimesh, np.ndarray]:
    """Turn ``up`` to +z and fit the mesh into radius SHAPE_RADIUS at the origin.

    Returns the normalised mesh and ``scale_mat`` (4, 4), which maps normalised -> the file's coordinates.
    """
    if up not in ("y", "z"):
        raise NFieldsError(f"up axis must be y or z, got {up!r}")
    rot = np.eye(4)
    if up == "y":
        rot[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # file +y -> world +z (a proper rotation)
    lo, hi = mesh.bounds
    centre = (lo + hi) / 2
    radius = float(np.linalg.norm(mesh.vertices - centre, axis=1).max())
    to_norm = np.eye(4)
    to_norm[:3, :3] = rot[:3, :3] * (SHAPE_RADIUS / radius)
    to_norm[:3, 3] = -(rot[:3, :3] @ centre) * (SHAPE_RADIUS / radius)
    out = mesh.copy()
    out.apply_transform(to_norm)
    return out, np.linalg.inv(to_norm)


def auto_exposure(env) -> float:
    """One exposure for a scene: a white Lambertian surface averages 0.5 over all normal directions.

    Averaged over uniformly distributed normals, ``E(n) / pi`` equals the solid-angle mean of the radiance (the
    mean of ``max(n.l, 0)`` over normals is 1/4, and ``integral L dl = 4 pi mean L``), so no pre-filtering is needed.
    """
    from nfields.render.envmap import mean_radiance

    mean_l = mean_radiance(env.texels()).mean()
    return float(0.5 / mean_l.clamp_min(1e-8))


@torch.no_grad()
def render_pbr_view(
    surface, cams: Cameras, i: int, env, spp: int, exposure: float, generator: torch.Generator, chunk: int = 8192
) -> dict[str, np.ndarray]:
    """Render view i -> dict of uint8 images: rgb (sRGB), mask, albedo (sRGB), roughness, metallic, normal.

    Pixel centres, one primary ray each; ``spp`` MIS light samples with shadow rays per hit.
    """
    rays = cams.image_rays(i)
    h, w = cams.height, cams.width
    hit, t, n = surface.intersect(rays.origins, rays.directions)
    idx = torch.nonzero(hit).squeeze(-1)
    rgb = torch.zeros(h * w, 3)
    alb = torch.zeros(h * w, 3)
    rough = torch.zeros(h * w)
    metal = torch.zeros(h * w)
    for s in range(0, idx.numel(), chunk):
        j = idx[s : s + chunk]
        p = rays.origins[j] + t[j, None] * rays.directions[j]
        nj = n[j]
        a, r, m = procedural_materials(p)
        start = p + SHADOW_EPS * nj

        def visibility(dirs: Tensor, start=start) -> Tensor:
            k = dirs.shape[1]
            o = start[:, None].expand(-1, k, -1).reshape(-1, 3)
            return (~surface.occluded(o, dirs.reshape(-1, 3))).float().reshape(-1, k)

        rgb[j] = shade_pbr_mc(nj, -rays.directions[j], a, r, m, env, spp, generator, visibility=visibility)
        alb[j], rough[j], metal[j] = a, r, m

    def u8(x: Tensor) -> np.ndarray:
        return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).reshape(h, w, *x.shape[1:]).numpy()

    return {
        "rgb": u8(linear_to_srgb((rgb * exposure).clamp(0, 1))),
        "mask": u8(hit.float()),
        "albedo": u8(linear_to_srgb(alb)),
        "roughness": u8(rough),
        "metallic": u8(metal),
        "normal": u8(torch.where(hit[:, None], n * 0.5 + 0.5, torch.zeros_like(n))),
    }


@torch.no_grad()
def procedural_sky(height: int = 64, sun_elevation_deg: float = 35.0, sun_azimuth_deg: float = 60.0) -> np.ndarray:
    """A clear-sky HDR environment (height, 2 height, 3), linear radiance, world +z up (the map's top row).

    A sky that goes from a deep blue zenith to a bright hazy horizon, a warm sun (a narrow lobe ~3 degrees wide
    carrying about as much irradiance as the whole sky, so objects cast clear shadows) and a dim brown ground below
    the horizon. Deterministic; used by the built-in demo scene so it needs no file.
    """
    from nfields.render.envmap import texel_uv, uv_to_dir

    d = uv_to_dir(texel_uv(height, 2 * height), "z").double()  # (H, W, 3)
    up = d[..., 2]
    el, az = math.radians(sun_elevation_deg), math.radians(sun_azimuth_deg)
    sun = torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=d.dtype)
    zenith = torch.tensor([0.10, 0.22, 0.55], dtype=d.dtype)
    horizon = torch.tensor([0.75, 0.80, 0.90], dtype=d.dtype)
    ground = torch.tensor([0.12, 0.10, 0.08], dtype=d.dtype)
    t = (1.0 - up.clamp(0.0, 1.0)) ** 3  # 1 at the horizon, 0 at the zenith
    sky = zenith + (horizon - zenith) * t[..., None]
    below = torch.sigmoid(-up / 0.02)[..., None]  # a soft horizon line
    img = sky * (1 - below) + ground * below
    ang = torch.acos((d @ sun).clamp(-1.0, 1.0))
    lobe = math.radians(1.5)
    img = img + torch.tensor([60.0, 52.0, 40.0], dtype=d.dtype) * torch.exp(-0.5 * (ang / lobe) ** 2)[..., None]
    return img.float().numpy()


def make_pbr_scene(
    out: str | Path, envmap: str | Path | None, mesh: str | Path | None = None, cfg: PBRSceneConfig | None = None
) -> Path:
    """Write a DTU-layout scene with ground truth into ``out`` (see the module docstring); returns ``out``.

    ``mesh``: a watertight mesh file, or None for the analytic demo shape. ``envmap``: an equirect ``.hdr``, or
    None for :func:`procedural_sky` (written to ``gt/sky.hdr``). Written into a temporary folder and renamed, so a
    crash never leaves a half scene behind.
    """
    from nfields.data.hdr import write_hdr
    from nfields.render.envmap import EnvironmentMap

    cfg = cfg or PBRSceneConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise NFieldsError(f"{out}: exists and is not empty; choose a new folder")
    if envmap is None:
        sky = procedural_sky()
        env = EnvironmentMap(sky, name="procedural sky")
        env_relit = EnvironmentMap(sky, rotation_deg=cfg.relight_rotation_deg, name="procedural sky")
    else:
        env = EnvironmentMap.from_file(envmap)
        env_relit = EnvironmentMap.from_file(envmap, rotation_deg=cfg.relight_rotation_deg)
    if mesh is None:
        surface, scale_mat, gt_mesh = DemoSurface(), DEMO_SCALE_MAT.copy(), None
        shape = "demo"
    else:
        from nfields.data.raycast import MeshRaycaster
        from nfields.tasks.sdf import load_mesh  # watertight check with a one-line error

        gt_mesh, scale_mat = normalise_mesh(load_mesh(mesh), cfg.up)
        surface = MeshRaycaster(gt_mesh)
        shape = str(mesh)
    cams = demo_cameras(cfg.n_views, cfg.size, cfg.seed)
    exposure = auto_exposure(env)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("image", "mask", "gt/albedo", "gt/roughness", "gt/metallic", "gt/normal", "gt/relit"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    if envmap is None:
        write_hdr(tmp / "gt" / "sky.hdr", sky)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    mats = {}
    for i in tqdm(range(cfg.n_views), desc=f"make-scene {out.name}", mininterval=1.0):
        K, c2w = cams.K[i].double().numpy(), cams.c2w[i].double().numpy()
        mats[f"world_mat_{i}"] = world_mat(K, c2w, scale_mat)
        mats[f"scale_mat_{i}"] = scale_mat.copy()
        v = render_pbr_view(surface, cams, i, env, cfg.spp, exposure, gen)
        Image.fromarray(v["rgb"]).save(tmp / "image" / f"{i:06d}.png")
        Image.fromarray(v["mask"]).save(tmp / "mask" / f"{i:03d}.png")
        for key in ("albedo", "roughness", "metallic", "normal"):
            Image.fromarray(v[key]).save(tmp / "gt" / key / f"{i:06d}.png")
        if i % cfg.holdout_every == 0:
            relit = render_pbr_view(surface, cams, i, env_relit, cfg.spp, exposure, gen)
            Image.fromarray(relit["rgb"]).save(tmp / "gt" / "relit" / f"{i:06d}.png")
    np.savez(tmp / "cameras_sphere.npz", **mats)
    if gt_mesh is not None:
        gt_mesh.export(tmp / "gt" / "mesh.ply")
    meta = {
        "shape": shape,
        "envmap": str(envmap) if envmap is not None else "gt/sky.hdr",  # relative: inside the scene
        "exposure": exposure,
        "image_encoding": "srgb(clip(exposure * linear radiance))",
        "up_axis": "z",
        "materials": "nfields.data.pbr_scene.procedural_materials",
        "normals": "world-space, stored as (n + 1) / 2",
        "seconds": round(time.perf_counter() - t0, 1),
        "raycaster": getattr(surface, "backend", "sphere tracing"),
        **asdict(cfg),
    }
    (tmp / "gt" / "scene.json").write_text(json.dumps(meta, indent=1))
    (tmp / "README.txt").write_text(
        "nfields PBR scene with ground truth (nfields make-scene); DTU/IDR layout. See gt/scene.json.\n"
    )
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
