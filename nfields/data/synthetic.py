"""The embedded demo scene, so ``load_scene("demo")`` works with no download: an analytic shape with procedural
PBR materials under a procedural sky, in the DTU (IDR/NeuS) layout, with full ground truth.

The shape (:func:`demo_sdf`) is a smooth union of a sphere, a tilted torus and a small satellite sphere, inside
radius 0.75 of the normalised world's origin. :func:`generate_demo_scene` renders it with the physically based
scene generator (:mod:`nfields.data.pbr_scene`: sphere tracing, spatially varying albedo / roughness / metallic,
Monte Carlo GGX + Lambert with shadow rays under :func:`~nfields.data.pbr_scene.procedural_sky`) and writes the
ground truth ``nfields eval`` scores against. Cameras sit on a hemisphere (world z up) at distance 3 looking at the
origin; the background is black, the masks are the sphere-traced hits. ``scale_mat`` is a non-trivial similarity
so loaders are exercised the way DTU does. :func:`generate_lambertian_demo_scene` keeps the original diffuse
version (position-gradient colour, :func:`demo_albedo`, one fixed light).
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from nfields.data.cameras import Cameras

# Bump when the generated pictures change, so cached copies are regenerated.
DEMO_VERSION = "4"  # 2: PBR materials under a procedural sky, with ground truth; 3: light sampling, 64 spp;
# 4: quasi-random (shifted Halton) samples, 128 spp
DEMO_RADIUS = 0.75  # the object lies inside this sphere at the origin
CAMERA_DISTANCE = 3.0
_LIGHT = torch.tensor([0.45, -0.35, 0.82])
_TORUS_TILT = math.radians(30.0)
_SATELLITE = torch.tensor([0.32, -0.30, 0.40])
# normalised world -> "original" coordinates written as scale_mat_i (a scale and an offset, like DTU's).
DEMO_SCALE_MAT = np.array(
    [[1.5, 0.0, 0.0, 0.2], [0.0, 1.5, 0.0, -0.1], [0.0, 0.0, 1.5, 0.3], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)


def _smin(a: Tensor, b: Tensor, k: float) -> Tensor:
    # Polynomial smooth minimum (Quilez): blends two shapes with a fillet of width ~k.
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def demo_sdf(x: Tensor) -> Tensor:
    """Signed distance (negative inside) of the demo shape at world points x (N, 3) -> (N,).

    Exact away from the blends; a lower bound of the distance near them (safe for sphere tracing).
    """
    sphere = x.norm(dim=-1) - 0.38
    # Torus in a plane tilted about the x axis: rotate the point into the torus frame.
    c, s = math.cos(_TORUS_TILT), math.sin(_TORUS_TILT)
    y = c * x[:, 1] + s * x[:, 2]
    z = -s * x[:, 1] + c * x[:, 2]
    q = torch.stack([torch.sqrt(x[:, 0] ** 2 + y**2) - 0.52, z], -1)
    torus = q.norm(dim=-1) - 0.11
    satellite = (x - _SATELLITE.to(x)).norm(dim=-1) - 0.13
    return _smin(_smin(sphere, torus, 0.08), satellite, 0.06)


def demo_albedo(x: Tensor) -> Tensor:
    """Diffuse colour in [0, 1] at world points x (N, 3) -> (N, 3): a position gradient times a 3D checker."""
    base = (0.55 + 0.4 * x / DEMO_RADIUS).clamp(0.1, 1.0)
    checker = torch.floor(x * 6.0).sum(-1).remainder(2.0)
    return base * (0.55 + 0.45 * checker)[:, None]


def demo_normals(x: Tensor, eps: float = 1e-3) -> Tensor:
    """Unit outward normals of :func:`demo_sdf` at x (N, 3) by central differences -> (N, 3)."""
    offsets = torch.eye(3, dtype=x.dtype, device=x.device) * eps
    g = torch.stack([demo_sdf(x + o) - demo_sdf(x - o) for o in offsets], -1)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def sphere_trace(origins: Tensor, dirs: Tensor, max_steps: int = 64, eps: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Sphere-trace :func:`demo_sdf` along unit rays (M, 3) -> (hit (M,) bool, t (M,)).

    Rays start where they enter the bounding sphere of radius DEMO_RADIUS + 0.05; the state of the rays still
    marching is kept compacted, so each step costs only as much as the rays left (a few million rays take seconds).
    """
    r = DEMO_RADIUS + 0.05
    b = (origins * dirs).sum(-1)
    disc = b * b - (origins * origins).sum(-1) + r * r
    root = disc.clamp_min(0).sqrt()
    t_out = (-b - root).clamp_min(0)
    hit = torch.zeros_like(t_out, dtype=torch.bool)
    idx = torch.nonzero(disc > 0).squeeze(-1)
    # One packed (M, 8) state [origin, direction, t, t_exit]: compaction is then a single gather per step.
    state = torch.cat([origins, dirs, t_out[:, None], (-b + root)[:, None]], -1)[idx]
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        t = state[:, 6]
        dist = demo_sdf(torch.addcmul(state[:, :3], t[:, None], state[:, 3:6]))
        t = t + dist
        done = dist.abs() < eps
        fin = torch.nonzero(done).squeeze(-1)
        hit[idx[fin]] = True
        t_out[idx[fin]] = t[fin]
        state[:, 6] = t
        live = torch.nonzero(~done & (t <= state[:, 7])).squeeze(-1)
        idx, state = idx[live], state[live]
    return hit, t_out


def demo_cameras(n_views: int, size: int, seed: int = 0) -> Cameras:
    """n_views cameras (size x size pixels, 34 degree field of view) on the upper hemisphere, looking at the origin.

    Directions follow a golden-angle spiral between 12 and 72 degrees of elevation, with a little seeded jitter.
    """
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(n_views, dtype=torch.float64)
    jitter = torch.rand(2, n_views, generator=g, dtype=torch.float64) - 0.5
    elev = torch.deg2rad(12.0 + 60.0 * (k + 0.5) / n_views + 3.0 * jitter[0])
    azim = k * math.pi * (3.0 - math.sqrt(5.0)) + 0.1 * jitter[1]
    eye = CAMERA_DISTANCE * torch.stack([elev.cos() * azim.cos(), elev.cos() * azim.sin(), elev.sin()], -1)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    z = -eye / eye.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(z, up.expand_as(z))
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)  # OpenCV: y points down (away from world up)
    c2w = torch.stack([x, y, z, eye], dim=-1)
    focal = 0.5 * size / math.tan(math.radians(17.0))
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Cameras(K=K.expand(n_views, 3, 3).float().clone(), c2w=c2w.float(), width=size, height=size)


def _shade(origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Trace and shade rays -> (rgb (M, 3) on black, hit (M,) bool): albedo x (ambient + Lambert, fixed light)."""
    hit, t = sphere_trace(origins, dirs)
    rgb = torch.zeros(origins.shape[0], 3)
    p = origins[hit] + t[hit, None] * dirs[hit]
    n = demo_normals(p)
    light = _LIGHT / _LIGHT.norm()
    shade = 0.4 + 0.6 * (n @ light).clamp_min(0.0)
    rgb[hit] = demo_albedo(p) * shade[:, None]
    return rgb, hit


@torch.no_grad()
def render_demo_views(cams: Cameras, ids: list[int], supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Render views ``ids`` -> images (V, H, W, 3) uint8 on black and masks (V, H, W) uint8 0/255.

    One ray per pixel centre, then silhouette pixels (whose hit differs from a 4-neighbour's) are re-rendered with
    s x s samples and box-filtered: anti-aliased edges at a few percent of the cost of supersampling everything.
    A pixel is foreground when most of its samples hit. All views are traced as one batch.
    """
    h, w, v = cams.height, cams.width, len(ids)
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    pix = cams.pixel_grid()
    rays = cams.rays(ids_t.repeat_interleave(pix.shape[0]), pix.repeat(v, 1))
    rgb, hit = _shade(rays.origins, rays.directions)
    rgb, cover = rgb.reshape(v, h, w, 3), hit.float().reshape(v, h, w)
    # Silhouette pixels: a 4-neighbour disagrees about the hit.
    hm = hit.reshape(v, h, w)
    edge = torch.zeros_like(hm)
    edge[:, 1:] |= hm[:, 1:] != hm[:, :-1]
    edge[:, :-1] |= hm[:, 1:] != hm[:, :-1]
    edge[:, :, 1:] |= hm[:, :, 1:] != hm[:, :, :-1]
    edge[:, :, :-1] |= hm[:, :, 1:] != hm[:, :, :-1]
    e_view, e_row, e_col = torch.nonzero(edge, as_tuple=True)
    if supersample > 1 and e_view.numel():
        s = supersample
        offs = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        oy, ox = torch.meshgrid(offs, offs, indexing="ij")
        sub = torch.stack([ox.reshape(-1), oy.reshape(-1)], -1)  # (s*s, 2)
        corner = torch.stack([e_col, e_row], -1).float()  # pixel (row, col) spans [col, col+1] x [row, row+1]
        spix = (corner[:, None] + sub[None]).reshape(-1, 2)
        sray = cams.rays(ids_t[e_view].repeat_interleave(s * s), spix)
        srgb, shit = _shade(sray.origins, sray.directions)
        rgb[e_view, e_row, e_col] = srgb.reshape(-1, s * s, 3).mean(1)
        cover[e_view, e_row, e_col] = shit.float().reshape(-1, s * s).mean(1)
    img = (rgb.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    mask = ((cover >= 0.5).to(torch.uint8) * 255).numpy()
    return img, mask


def world_mat(K: np.ndarray, c2w: np.ndarray, scale_mat: np.ndarray = DEMO_SCALE_MAT) -> np.ndarray:
    """DTU ``world_mat`` (4, 4) for a camera in this package's convention (pixel centres at +0.5), given the
    ``scale_mat`` that maps normalised -> original coordinates."""
    K_int = K.copy()
    K_int[:2, 2] -= 0.5  # IDR/NeuS put pixel centres at integers
    w2c = np.eye(4)
    w2c[:3, :3] = c2w[:, :3].T
    w2c[:3, 3] = -c2w[:, :3].T @ c2w[:, 3]
    P = np.eye(4)
    P[:3, :3] = K_int
    # P_normalised = world_mat @ scale_mat, so world_mat = P_normalised @ scale_mat^-1.
    return P @ w2c @ np.linalg.inv(scale_mat)


def generate_demo_scene(out: Path, n_views: int = 40, size: int = 200, seed: int = 0, spp: int = 128) -> Path:
    """Write the built-in demo scene into ``out`` and return it: the analytic shape with procedural PBR materials
    under a procedural sky (:func:`nfields.data.pbr_scene.make_pbr_scene` with ``envmap=None``), DTU layout, with
    the full ground truth in ``gt/`` (albedo, roughness, metallic, normals, relit views, the sky itself).

    Files: ``cameras_sphere.npz`` (world_mat_i, scale_mat_i = DEMO_SCALE_MAT), ``image/%06d.png`` (RGB),
    ``mask/%03d.png`` (grey 0/255), ``gt/``, ``README.txt``. About 50 s at the defaults on one CPU core.
    """
    from nfields.data.pbr_scene import PBRSceneConfig, make_pbr_scene

    # One intra-op thread: these are many small memory-bound ops, where OpenMP threads only add overhead -- and on a
    # busy 2-core machine 2 threads were measured ~8x slower than 1 thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = PBRSceneConfig(n_views=n_views, size=size, spp=spp, seed=seed)
        return make_pbr_scene(Path(out), None, None, cfg)
    finally:
        torch.set_num_threads(threads)


def generate_lambertian_demo_scene(out: Path, n_views: int = 40, size: int = 200, seed: int = 0) -> Path:
    """The demo shape with its position-gradient colour under a fixed diffuse light (no materials, no ground
    truth beyond the shape): the original demo, kept for quick radiance-field checks."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate(Path(out), n_views, size, seed)
    finally:
        torch.set_num_threads(threads)


def _generate(out: Path, n_views: int, size: int, seed: int) -> Path:
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "mask").mkdir(parents=True, exist_ok=True)
    cams = demo_cameras(n_views, size, seed)
    mats = {}
    for i in range(n_views):
        mats[f"world_mat_{i}"] = world_mat(cams.K[i].double().numpy(), cams.c2w[i].double().numpy())
        mats[f"scale_mat_{i}"] = DEMO_SCALE_MAT.copy()
    # Batches of ~1.5M rays: fast, and memory stays in the hundreds of MB at any image size.
    per_batch = max(1, 1_500_000 // (size * size))
    for start in range(0, n_views, per_batch):
        ids = list(range(start, min(start + per_batch, n_views)))
        imgs, masks = render_demo_views(cams, ids)
        for j, i in enumerate(ids):
            Image.fromarray(imgs[j]).save(out / "image" / f"{i:06d}.png", compress_level=1)
            Image.fromarray(masks[j]).save(out / "mask" / f"{i:03d}.png", compress_level=1)
    np.savez(out / "cameras_sphere.npz", **mats)
    (out / "README.txt").write_text(
        f"nfields demo scene (generator version {DEMO_VERSION}): {n_views} views of {size}x{size}, seed {seed}.\n"
        "Analytic shape nfields.data.synthetic.demo_sdf, colours demo_albedo, DTU/IDR layout; the object lies\n"
        f"inside radius {DEMO_RADIUS} of the normalised world's origin (scale_mat maps normalised -> original).\n"
    )
    return out


def cache_dir() -> Path:
    """``$NFIELDS_CACHE``, else ``~/.cache/nfields``."""
    env = os.environ.get("NFIELDS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nfields"


def demo_scene_path() -> Path:
    """``<cache>/scenes/demo``, generated on first use.

    Generation writes to a temporary folder and renames it into place, so an interrupted run or two processes
    starting together never leave a half-written scene; a copy from an older generator version is replaced.
    """
    scenes = cache_dir() / "scenes"
    final = scenes / "demo"
    marker = final / ".complete"

    def current() -> bool:
        return marker.is_file() and marker.read_text().strip() == DEMO_VERSION

    if current():
        return final
    scenes.mkdir(parents=True, exist_ok=True)
    tmp = scenes / f".demo-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate_demo_scene(tmp)
        (tmp / ".complete").write_text(DEMO_VERSION + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if current():  # another process finished first: keep its copy (it may be reading it already)
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    if final.exists():
        # Stale (older version or incomplete): move it aside first; rename cannot replace a non-empty folder.
        old = scenes / f".demo-old-{uuid.uuid4().hex[:8]}"
        try:
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    try:
        tmp.rename(final)
    except OSError:
        # Another process won the race; use its copy if it is complete.
        shutil.rmtree(tmp, ignore_errors=True)
        if not current():
            raise
    return final
