"""Export a finished run as a mesh file: marching cubes on its field, clean-up, UV bake, GLB/glTF/OBJ/PLY.

This is the logic behind ``nfields export RUN``; it only glues a reopened run to the callables-based pieces of this
package (:func:`extract_mesh`, :func:`cull_unseen`, :func:`decimate`, :func:`bake_pbr_textures`, the writers).

Surface: the zero level of an SDF field (``field.kind == "sdf"``), or the ``level`` set of a density field (density
above the level = inside; the density is taken as 0 in cells the run's occupancy grid marks empty, which the
renderer never samples, so untrained floaters there do not become geometry).

Coordinates: the mesh is written in the dataset's original coordinates: the scene's ``scale_mat`` (DTU's
``scale_mat_0``, the demo's similarity; identity for NeRF-synthetic and transforms.json scenes, whose world is
already the original one) is applied to the vertices. GLB/glTF are then rotated to +Y up as the glTF writer
documents; OBJ and PLY keep the world axes.

Material: a field with a material head (``materials(features) -> (albedo linear (N,3), roughness (N,), metallic
(N,))``, e.g. :class:`~nfields.fields.pbr.PBRField`) is baked from it. Otherwise the albedo is the field's colour
seen head-on
(``field.color(features, dirs=-normal, normal)``, i.e. with the lighting of the training photos baked in),
roughness 1, metallic 0; for SDF fields the normal map carries the field's normals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch import Tensor

from nfields.errors import NFieldsError
from nfields.export.bake import bake_pbr_textures, srgb_to_linear, unwrapped_mesh
from nfields.export.gltf import write_glb, write_gltf
from nfields.export.marching import cull_unseen, decimate, extract_mesh
from nfields.export.obj import write_obj
from nfields.export.ply import write_ply

FORMATS = ("glb", "gltf", "obj", "ply")
# instant-ngp's default marching-cubes density threshold; lower it for a barely trained run.
DEFAULT_DENSITY_LEVEL = 2.5


@dataclass
class ExportResult:
    """What :func:`export_run` wrote.

    path: the main file (siblings such as .mtl/.bin/PNGs lie beside it); faces, vertices: mesh size as written;
    seconds: wall time of the whole export; kind: the field kind ("density" or "sdf"); level: the iso-level used;
    material: "field" (the field's own material head) or "color" (albedo from the field colour, roughness 1,
    metallic 0); None for PLY (vertex colours); frame: "original" when a non-identity ``scale_mat`` was applied,
    else "world" (the scene's world is its original frame); stages: seconds per stage (open, marching cubes, cull,
    decimate, unwrap, bake, write).
    """

    path: Path
    faces: int
    vertices: int
    seconds: float
    kind: str
    level: float
    material: str | None
    frame: str
    stages: dict[str, float] = dc_field(default_factory=dict)


TEXTURED_FACES = 200_000
"""Default face budget of textured exports (glb/gltf/obj): a 2048^2 atlas gives each of 200k faces ~20 texels.
Many more faces shrink UV charts below a texel and multiply xatlas' charts: the demo at 512^3 (784k faces, no
decimation) unwraps into 30k charts in 152 s, against 21 s at 200k."""


def _check_args(run_dir: Path, fmt: str, resolution: int, texture_size: int, decimate_faces: int | None) -> None:
    if fmt not in FORMATS:
        raise NFieldsError(f"export: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if resolution < 16:
        raise NFieldsError(f"export: --resolution must be >= 16, got {resolution}")
    if texture_size < 16:
        raise NFieldsError(f"export: --texture-size must be >= 16, got {texture_size}")
    if decimate_faces is not None and (decimate_faces < 0 or 0 < decimate_faces < 4):
        raise NFieldsError(f"export: --decimate must be 0 (off) or >= 4 faces, got {decimate_faces}")
    if not run_dir.is_dir():
        raise NFieldsError(f"{run_dir}: no such run folder")
    if not (run_dir / "config.yaml").is_file():
        raise NFieldsError(f"{run_dir}: not a run folder (no config.yaml)")
    from nfields.train.checkpoint import list_checkpoints

    if not list_checkpoints(run_dir):
        raise NFieldsError(f"{run_dir}: the run has no checkpoint yet (train it first: ckpt/ is empty)")


def surface_fn(field, grid=None, level: float | None = None) -> tuple[Callable[[Tensor], Tensor], float]:
    """``(sdf_fn, level)`` for :func:`extract_mesh`: negative inside, the surface at 0.

    SDF fields: their signed distance minus ``level`` (default 0). Density fields: ``level - density`` (default
    level :data:`DEFAULT_DENSITY_LEVEL`), with density 0 where ``grid`` (an :class:`OccupancyGrid`) is empty.
    """
    if field.kind == "sdf":
        lv = 0.0 if level is None else float(level)
        sdf = getattr(field, "sdf", None) or (lambda x: field.geometry(x)[0])
        return (lambda x: sdf(x) - lv), lv
    lv = DEFAULT_DENSITY_LEVEL if level is None else float(level)
    if lv <= 0:
        raise NFieldsError(f"export: --level for a density field must be > 0 (a density), got {lv}")

    def density_fn(x: Tensor) -> Tensor:
        if grid is None:
            return lv - field.density(x)
        # Evaluate the field only in occupied cells: most of the box is empty, and that is where the time goes.
        d = torch.zeros(len(x), device=x.device)
        occ = grid.occupied(x)
        if occ.any():
            d[occ] = field.density(x[occ]).to(d.dtype)
        return lv - d

    return density_fn, lv


def surface_normals_and_features(field, x: Tensor) -> tuple[Tensor, Tensor]:
    """Unit outward normals (M,3) and geometry features (M,F) at points x (M,3) of a field (no graph kept).

    SDF: the normalised SDF gradient; density: the normalised negative density gradient (autograd).
    """
    if field.kind == "sdf" and hasattr(field, "geometry_and_gradient"):
        _, feat, grad = field.geometry_and_gradient(x)
    else:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            value, feat = field.geometry(xg)
            (grad,) = torch.autograd.grad(value.sum(), xg)
        if field.kind != "sdf":
            grad = -grad  # density grows inwards
    normals = torch.nn.functional.normalize(grad.detach(), dim=-1)
    return normals, feat.detach()


def field_color(field, x: Tensor) -> Tensor:
    """The field's colour (M,3) in [0,1] (sRGB-encoded, as the training photos) seen head-on at points x (M,3)."""
    n, feat = surface_normals_and_features(field, x)
    kw = {"points": x} if getattr(field, "wants_points", lambda: False)() else {}
    with torch.no_grad():
        return field.color(feat, -n, n, **kw).clamp(0.0, 1.0)


def material_fn_for(field) -> tuple[Callable[[Tensor], dict[str, Tensor]], str]:
    """A :func:`bake_pbr_textures` material callback for a field, and "field" or "color" (see the module doc)."""
    materials = getattr(field, "materials", None)
    if callable(materials):

        def from_materials(x: Tensor) -> dict[str, Tensor]:
            n, feat = surface_normals_and_features(field, x)
            with torch.no_grad():
                albedo, roughness, metallic = materials(feat, x)
            return {"albedo": albedo, "roughness": roughness, "metallic": metallic, "normal": n}

        return from_materials, "field"

    def from_color(x: Tensor) -> dict[str, Tensor]:
        n, feat = surface_normals_and_features(field, x)
        with torch.no_grad():
            rgb = field.color(feat, -n, n).clamp(0.0, 1.0)
        # The field's colour is display (sRGB) values; the baker wants linear albedo and encodes it to sRGB.
        albedo = torch.from_numpy(srgb_to_linear(rgb.cpu().numpy()).astype(np.float32))
        out = {"albedo": albedo, "roughness": torch.ones(len(x)), "metallic": torch.zeros(len(x))}
        if field.kind == "sdf":
            out["normal"] = n  # SDF normals are smooth; density gradients are too noisy for a normal map
        return out

    return from_color, "color"


def _vertex_colors(field, vertices_field: np.ndarray, chunk: int) -> np.ndarray:
    out = []
    for s in range(0, len(vertices_field), chunk):
        x = torch.from_numpy(vertices_field[s : s + chunk].astype(np.float32)).to(field.aabb.device)
        out.append(field_color(field, x).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


def export_run(
    run_dir: str | Path,
    fmt: str = "glb",
    out: str | Path | None = None,
    resolution: int = 256,
    texture_size: int = 1024,
    decimate_faces: int | None = None,
    level: float | None = None,
    cull: bool = True,
    chunk: int = 2**16,
) -> ExportResult:
    """Export the mesh of a run's latest checkpoint (see the module docstring for surface, frame and material).

    Args:
        run_dir: run folder (``runs/<name>``) with ``config.yaml`` and at least one checkpoint.
        fmt: ``glb`` | ``gltf`` | ``obj`` (with .mtl and PBR PNGs) | ``ply`` (vertex colours, no UVs).
        out: output file; default ``<run>/export/mesh.<fmt>``.
        resolution: marching-cubes samples per axis over the field's aabb.
        texture_size: baked texture side in texels (glb/gltf/obj).
        decimate_faces: quadric decimation to about this many faces (0 = keep all; None = :data:`TEXTURED_FACES`
            for the textured formats, all faces for PLY).
        level: iso-level: SDF value (default 0) or density (default :data:`DEFAULT_DENSITY_LEVEL`).
        cull: drop faces no training camera sees (after keeping the largest component).
        chunk: points per field call.

    Example:
        >>> r = export_run("runs/demo_hashgrid_cpu", "glb", resolution=128)  # doctest: +SKIP
        >>> r.path, r.faces  # doctest: +SKIP
        (PosixPath('runs/demo_hashgrid_cpu/export/mesh.glb'), 41230)
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    fmt = str(fmt).lower()
    _check_args(run_dir, fmt, int(resolution), int(texture_size), decimate_faces)
    path = Path(out) if out is not None else run_dir / "export" / f"mesh.{fmt}"
    if path.suffix.lower() != f".{fmt}":
        raise NFieldsError(f"{path}: the file name must end in .{fmt} for --format {fmt}")

    from nfields.train.render_run import open_run

    trainer = open_run(run_dir)
    opened = time.perf_counter() - t0
    result = export_trainer(
        trainer, path, resolution=resolution, texture_size=texture_size, decimate_faces=decimate_faces, level=level,
        cull=cull, chunk=chunk, t0=t0,
    )  # fmt: skip
    result.stages = {"open run": opened, **result.stages}
    return result


def export_trainer(
    trainer,
    path: str | Path,
    resolution: int = 256,
    texture_size: int = 1024,
    decimate_faces: int | None = None,
    level: float | None = None,
    cull: bool = True,
    chunk: int = 2**16,
    t0: float | None = None,
) -> ExportResult:
    """:func:`export_run` on an open Trainer (a live or reopened run); the format follows ``path``'s suffix."""
    t0 = time.perf_counter() if t0 is None else t0
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise NFieldsError(f"{path}: unknown mesh format {path.suffix!r} (expected one of {', '.join(FORMATS)})")
    run_dir, resolution = trainer.run_dir, int(resolution)
    # No train/eval switch: the field has no mode-dependent layers and only the renderer's grid is used here, so
    # a trainer that is training meanwhile is not disturbed.
    field, scene, renderer = trainer.field, trainer.scene, trainer.renderer
    device = field.aabb.device
    grid = renderer.grid if getattr(renderer.cfg, "use_grid", False) else None
    fn, lv = surface_fn(field, grid, level)

    aabb = field.aabb.detach().cpu().double().numpy()
    if field.kind != "sdf":
        # A density field is empty outside its aabb: a margin of a few cells lets the surface close there.
        pad = (aabb[3:] - aabb[:3]) * 4.0 / (resolution - 1)
        aabb = np.concatenate([aabb[:3] - pad, aabb[3:] + pad])
    seen = [math.inf, -math.inf]  # range of fn over the grid, for a useful message when there is no surface

    def tracked(x: Tensor) -> Tensor:
        v = fn(x)
        seen[0], seen[1] = min(seen[0], float(v.min())), max(seen[1], float(v.max()))
        return v

    stages: dict[str, float] = {}
    tick = [time.perf_counter()]

    def done(stage: str) -> None:
        now = time.perf_counter()
        stages[stage] = now - tick[0]
        tick[0] = now

    # An SDF bounds the distance to its surface: evaluate the fine grid only in a narrow band around it.
    band = 3.0 if field.kind == "sdf" else 0.0
    try:
        mesh = extract_mesh(
            tracked, aabb, resolution=resolution, level=0.0, chunk=chunk, device=device, narrow_band=band
        )
    except NFieldsError as e:
        if "no surface" not in str(e):
            raise
        if field.kind == "sdf":
            why = f"the SDF minus --level {lv:g} never changes sign (range {seen[0]:.3g}..{seen[1]:.3g})"
        else:
            top = lv - seen[0]
            why = f"the density never exceeds --level {lv:g} (max {top:.3g}; try --level {top / 2:.3g})"
        raise NFieldsError(f"{run_dir}: no surface: {why}") from None
    done(f"marching cubes {resolution}^3")
    if cull:
        cams, ids = scene.cameras, scene.train_ids
        mesh = cull_unseen(mesh, cams.c2w[ids], cams.K[ids], cams.width, cams.height)
        if len(mesh.faces) == 0:
            raise NFieldsError(f"{run_dir}: no part of the extracted surface is seen by a training camera")
        done("cull unseen")
    if decimate_faces is None:
        decimate_faces = 0 if fmt == "ply" else TEXTURED_FACES
    if decimate_faces and len(mesh.faces) > int(decimate_faces):
        mesh = decimate(mesh, int(decimate_faces))
        done("decimate")

    # Normalised world (where the field lives) -> the dataset's original coordinates.
    to_original = scene.scale_mat.detach().cpu().double().numpy()
    identity = np.allclose(to_original, np.eye(4))
    field_from_mesh = None
    if not identity:
        field_from_mesh = np.linalg.inv(to_original)
    vertices_field = np.asarray(mesh.vertices, dtype=np.float64)
    out_mesh = trimesh.Trimesh(vertices_field, mesh.faces, process=False)
    if not identity:
        out_mesh.apply_transform(to_original)  # flips the winding if it is a reflection (normals stay outward)

    material = None
    if fmt == "ply":
        colors = _vertex_colors(field, vertices_field, chunk)
        write_ply(path, out_mesh, colors)
        written = out_mesh
        done("colour + write")
    else:
        uv_mesh = unwrapped_mesh(out_mesh)
        done("unwrap (xatlas)")
        material_fn, material = material_fn_for(field)
        textures = bake_pbr_textures(
            uv_mesh, material_fn, texture_size=int(texture_size), chunk=chunk, field_from_mesh=field_from_mesh,
            device=device,
        )  # fmt: skip
        done(f"bake {int(texture_size)}^2")
        writer = {"glb": write_glb, "gltf": write_gltf, "obj": write_obj}[fmt]
        writer(path, uv_mesh, textures)
        written = uv_mesh
        done("write")
    return ExportResult(
        path=path,
        faces=len(written.faces),
        vertices=len(written.vertices),
        seconds=time.perf_counter() - t0,
        kind=field.kind,
        level=lv,
        material=material,
        frame="world" if identity else "original",
        stages=stages,
    )
