"""Relight check of an exported asset: does the GLB relight like the field it came from?

The exported GLB is loaded back (trimesh), moved from glTF's +Y-up original coordinates into the scene's normalised
frame, and rendered by the project's own renderer under a new environment map: primary rays by ray casting
(:class:`~nfields.data.raycast.MeshRaycaster`), material from the baked textures at the hit's UV (albedo sRGB ->
linear, roughness = ORM green, metallic = ORM blue), interpolated vertex normals, and the same split-sum GGX +
Lambert shading the field uses (:func:`~nfields.render.shading.shade_pbr`). The field is rendered under the same
light (:meth:`~nfields.fields.pbr.PBRField.relight`); both on black, and compared by PSNR over the pixels either
covers, on the scene's held-out views. The normal map is not applied (the mesh's own normals are used), so fine
normal detail the field has and the mesh lacks counts against the asset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from nfields.errors import NFieldsError


def load_glb_in_scene(path: Path, scale_mat: np.ndarray) -> tuple[trimesh.Trimesh, np.ndarray, np.ndarray]:
    """The GLB's mesh in the scene's normalised frame, with its albedo and ORM textures (H, W, 3) float in [0, 1]."""
    from nfields.export.gltf import Z_UP_TO_Y_UP

    loaded = trimesh.load(str(path), force="scene", process=False)
    meshes = [g for g in loaded.geometry.values() if isinstance(g, trimesh.Trimesh)]
    if len(meshes) != 1:
        raise NFieldsError(f"{path}: expected one mesh, found {len(meshes)}")
    mesh = meshes[0]
    mat = getattr(mesh.visual, "material", None)
    albedo = getattr(mat, "baseColorTexture", None)
    orm = getattr(mat, "metallicRoughnessTexture", None)
    if albedo is None or orm is None or getattr(mesh.visual, "uv", None) is None:
        raise NFieldsError(f"{path}: no baked PBR material (base colour + metallic-roughness textures and UVs)")
    v = np.asarray(mesh.vertices, dtype=np.float64) @ Z_UP_TO_Y_UP  # glTF +Y up -> the project's +Z up
    v = (np.c_[v, np.ones(len(v))] @ np.linalg.inv(np.asarray(scale_mat, dtype=np.float64)).T)[:, :3]
    out = trimesh.Trimesh(v, np.asarray(mesh.faces), process=False)
    out.visual = trimesh.visual.TextureVisuals(uv=np.asarray(mesh.visual.uv))

    def img(im) -> np.ndarray:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0

    return out, img(albedo), img(orm)


def _sample(image: np.ndarray, uv: np.ndarray) -> torch.Tensor:
    """Bilinear lookup of (H, W, C) at trimesh UVs (M, 2) (v up: row 0 is v = 1) -> (M, C)."""
    t = torch.from_numpy(image).permute(2, 0, 1)[None]
    grid = torch.from_numpy(np.stack([uv[:, 0] * 2 - 1, (1 - uv[:, 1]) * 2 - 1], -1).astype(np.float32))
    out = torch.nn.functional.grid_sample(t, grid[None, None], mode="bilinear", align_corners=False)
    return out[0, :, 0].T


@torch.no_grad()
def render_asset(mesh: trimesh.Trimesh, albedo: np.ndarray, orm: np.ndarray, rays, env) -> tuple[torch.Tensor, ...]:
    """Shade the textured mesh along rays under ``env`` -> (rgb sRGB (M, 3) on black, hit (M,) bool)."""
    from nfields.data.raycast import MeshRaycaster
    from nfields.render.shading import linear_to_srgb, shade_pbr, srgb_to_linear

    caster = MeshRaycaster(mesh)
    hit, t, prim = caster.closest_hits(rays.origins, rays.directions)
    rgb = torch.zeros(len(hit), 3)
    if hit.any():
        o, d = rays.origins[hit], rays.directions[hit]
        p = o + t[hit, None] * d
        faces = np.asarray(mesh.faces)[prim[hit].numpy()]
        bary = trimesh.triangles.points_to_barycentric(np.asarray(mesh.vertices)[faces], p.double().numpy())
        uv = (bary[..., None] * np.asarray(mesh.visual.uv)[faces]).sum(1)
        n = caster.smooth_normals(prim[hit], p)
        n = torch.where(((n * d).sum(-1) > 0)[:, None], -n, n)
        a = srgb_to_linear(_sample(albedo, uv).clamp(0, 1))
        m = _sample(orm, uv)
        lin = shade_pbr(n, -d, a, m[:, 1].clamp(0.0, 1.0), m[:, 2].clamp(0.0, 1.0), env)
        rgb[hit] = linear_to_srgb(lin.clamp(0.0, 1.0))
    return rgb, hit


@torch.no_grad()
def relight_check(
    trainer, glb: Path, envmap: Path, rotate: float = 90.0, downscale: int = 2, max_views: int = 4
) -> dict:
    """Compare the exported ``glb`` with the field under ``envmap`` turned ``rotate`` degrees (see the module
    docstring) on up to ``max_views`` held-out views; writes ``relight_check.json`` and side-by-side PNGs (asset |
    field) next to the GLB and returns ``{"psnr": mean dB, "views": [...], ...}``."""
    from nfields.fields.pbr import PBRField
    from nfields.train.metrics import psnr
    from nfields.train.render_run import relight_environment

    field, scene, renderer = trainer.field, trainer.scene, trainer.renderer
    if not isinstance(field, PBRField) or field.shading != "pbr":
        raise NFieldsError("relight check: needs an SDF + PBR run (its field has no materials to relight)")
    mesh, albedo, orm = load_glb_in_scene(Path(glb), scene.scale_mat.double().numpy())
    env, exposure = relight_environment(field, Path(envmap), rotate)
    out_dir = Path(glb).parent
    results = []
    field.relight(env)
    try:
        for i in list(scene.test_ids)[:max_views]:
            ref = renderer.render_image(scene.cameras, i, background=None, downscale=downscale)
            h, w = ref["rgb"].shape[:2]
            rgb, hit = render_asset(mesh, albedo, orm, scene.cameras.image_rays(i, downscale), env)
            rgb, hit = rgb.reshape(h, w, 3), hit.reshape(h, w)
            cover = hit | (ref["opacity"] > 0.5)
            p = psnr(rgb.clamp(0, 1)[cover], ref["rgb"].clamp(0, 1)[cover])
            results.append({"view": int(i), "psnr": round(float(p), 3), "pixels": int(cover.sum())})
            side = torch.cat([rgb, ref["rgb"].clamp(0, 1)], dim=1)
            Image.fromarray((side.numpy() * 255).round().astype(np.uint8)).save(out_dir / f"relight_check_{i:03d}.png")
    finally:
        field.relight(None)
    summary = {
        "psnr": round(float(np.mean([r["psnr"] for r in results])), 3) if results else float("nan"),
        "envmap": str(envmap),
        "rotate_deg": rotate,
        "exposure": exposure,
        "downscale": downscale,
        "views": results,
        "glb": str(glb),
    }
    (out_dir / "relight_check.json").write_text(json.dumps(summary, indent=1))
    return summary
