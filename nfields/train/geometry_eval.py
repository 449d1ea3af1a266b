"""Geometry quality of an SDF field: Chamfer-L1 and normal error against a reference surface.

Everything is measured in the scene's normalised coordinates (the space the cameras and the field live in; the
object lies inside the unit sphere). The reference is a mesh: a dataset's ground-truth scan mapped into those
coordinates, or, for the built-in demo scene, the marching-cubes mesh of the analytic :func:`demo_sdf` at high
resolution (:func:`demo_reference_mesh`).

Example::

    from nfields.train.geometry_eval import demo_reference_mesh, evaluate_geometry
    metrics = evaluate_geometry(trainer.field, demo_reference_mesh(), resolution=128)
    metrics["chamfer_l1"], metrics["normal_mae_deg"]
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch import Tensor

from nfields.data.raycast import point_mesh_distance
from nfields.errors import NFieldsError
from nfields.export.marching import extract_mesh

# The demo object lies inside radius DEMO_RADIUS (0.75); a slightly larger box keeps the grid fine.
_DEMO_BOX = (-0.8, -0.8, -0.8, 0.8, 0.8, 0.8)


@functools.lru_cache(maxsize=2)
def demo_reference_mesh(resolution: int = 160) -> trimesh.Trimesh:
    """Marching-cubes mesh of the analytic demo SDF (normalised coordinates); cached per process.

    At 160 samples over [-0.8, 0.8] the grid spacing is 0.01; marching cubes puts its vertices on the surface, so
    its distance to the exact surface is ~h^2 / (8 R) ~ 1e-4 on the tightest curvature, far below the errors a run
    reaches. Normals come from the analytic SDF instead (:func:`demo_reference_normals`).
    """
    from nfields.data.synthetic import demo_sdf

    return extract_mesh(demo_sdf, list(_DEMO_BOX), resolution=resolution, keep_largest=False)


def demo_reference_normals(x: Tensor) -> Tensor:
    """Exact unit normals of the analytic demo surface at points x (N, 3) near it."""
    from nfields.data.synthetic import demo_normals

    return demo_normals(x)


def load_reference_mesh(path: str | Path, to_normalised: np.ndarray | Tensor | None = None) -> trimesh.Trimesh:
    """Read a ground-truth mesh (PLY/OBJ/STL...); ``to_normalised`` (4, 4) maps its coordinates into the scene's
    normalised ones (for DTU: the inverse of ``scene.scale_mat``)."""
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except (OSError, ValueError) as e:
        raise NFieldsError(f"{path}: cannot read the reference mesh ({e})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise NFieldsError(f"{path}: the reference mesh has no faces")
    if to_normalised is not None:
        mesh.apply_transform(np.asarray(torch.as_tensor(to_normalised, dtype=torch.float64)))
    return mesh


def _field_sdf_and_normals(field, x: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Field SDF (M,) and unit gradient (M, 3) at points x, chunked, without building a training graph."""
    sdfs, normals = [], []
    for s in range(0, len(x), chunk):
        xs = x[s : s + chunk]
        own = getattr(field, "geometry_and_gradient", None)
        if callable(own):
            analytic = getattr(field, "normal_mode", "") == "analytic"
            with torch.enable_grad() if analytic else torch.no_grad():
                sdf, _, grad = own(xs, create_graph=False)
        else:
            with torch.enable_grad():
                xg = xs.detach().requires_grad_(True)
                sdf = field.geometry(xg)[0]
                (grad,) = torch.autograd.grad(sdf.sum(), xg)
        sdfs.append(sdf.detach())
        normals.append(torch.nn.functional.normalize(grad.detach(), dim=-1))
    return torch.cat(sdfs), torch.cat(normals)


@torch.no_grad()
def evaluate_geometry(
    field,
    reference: trimesh.Trimesh,
    aabb: Tensor | list[float] | None = None,
    resolution: int = 128,
    n_points: int = 50_000,
    keep_largest: bool = False,
    seed: int = 0,
    chunk: int = 65536,
    save_mesh: str | Path | None = None,
    reference_normals=None,
    cameras=None,
) -> dict[str, float]:
    """Extract the zero level set of an SDF field and compare it with a reference surface.

    Args:
        field: an SDF field (``kind == "sdf"``, ``sdf(x)``; ``geometry_and_gradient`` if it has one) in the same
            normalised coordinates as ``reference``.
        reference: ground-truth surface mesh in those coordinates.
        aabb: box to run marching cubes in (default: ``field.aabb``).
        resolution: marching-cubes samples per axis.
        n_points: surface samples drawn from each mesh for the Chamfer distance and the normal error.
        keep_largest: keep only the largest connected component of the extracted mesh (drops floaters).
        save_mesh: if given, the extracted mesh is written there (any format trimesh writes, e.g. ``.ply``).
        reference_normals: exact normals of the reference surface, (N, 3) points -> (N, 3) unit normals (e.g.
            :func:`demo_reference_normals`); default: the reference mesh's face normals.
        cameras: the training cameras (:class:`~nfields.data.cameras.Cameras`, same coordinates): the normal error
            is also reported over the reference points that at least one of them sees (``normal_mae_deg_seen``,
            ``seen_fraction``); surface no camera sees (an object's underside) is unconstrained by the images.

    Returns:
        ``chamfer_l1`` (mean of ``accuracy`` -- extracted -> reference -- and ``completeness`` -- reference ->
        extracted -- mean distances from surface samples to the other surface), ``normal_mae_deg`` (mean angle
        between the field's SDF gradient and the reference normal at reference surface points),
        ``mesh_vertices``, ``mesh_faces``.
        A field with no zero crossing gives ``inf`` distances and ``nan`` normal error.
    """
    if getattr(field, "kind", None) != "sdf":
        raise NFieldsError("evaluate_geometry: the field is not an SDF field (model.kind must be sdf)")
    box = field.aabb if aabb is None else aabb
    was_training = field.training
    field.eval()
    try:
        try:
            mesh = extract_mesh(field.sdf, box, resolution=resolution, keep_largest=keep_largest, chunk=chunk)
        except NFieldsError:
            mesh = None
        p_ref, face_ref = trimesh.sample.sample_surface(reference, n_points, seed=seed)
        x_ref = torch.as_tensor(np.asarray(p_ref), dtype=torch.float32)
        if reference_normals is not None:
            n_ref = reference_normals(x_ref).float()
        else:
            n_ref = torch.as_tensor(np.asarray(reference.face_normals)[face_ref], dtype=torch.float32)
        _, n_pred = _field_sdf_and_normals(field, x_ref, chunk)
        cos = (n_pred * n_ref).sum(-1).clamp(-1.0, 1.0)
        err = torch.rad2deg(torch.acos(cos))
        normal_mae = float(err.mean())
        seen = None if cameras is None else seen_by_cameras(reference, x_ref, n_ref, cameras)
    finally:
        field.train(was_training)
    visible = {}
    if seen is not None:
        visible["seen_fraction"] = float(seen.float().mean())
        visible["normal_mae_deg_seen"] = float(err[seen].mean()) if seen.any() else math.nan
    if mesh is None or len(mesh.faces) == 0:
        return {
            "chamfer_l1": math.inf, "accuracy": math.inf, "completeness": math.inf, "normal_mae_deg": normal_mae,
            "mesh_vertices": 0, "mesh_faces": 0, **visible,
        }  # fmt: skip
    if save_mesh is not None:
        mesh.export(str(save_mesh))
    # Point-to-surface distances (sample-to-sample nearest neighbours would add a floor set by the sampling density).
    p_pred = np.asarray(trimesh.sample.sample_surface(mesh, n_points, seed=seed + 1)[0])
    acc = float(point_mesh_distance(reference, p_pred).mean())
    comp = float(point_mesh_distance(mesh, np.asarray(p_ref)).mean())
    return {
        "chamfer_l1": (acc + comp) / 2,
        "accuracy": acc,
        "completeness": comp,
        "normal_mae_deg": normal_mae,
        **visible,
        "mesh_vertices": len(mesh.vertices),
        "mesh_faces": len(mesh.faces),
    }


def seen_by_cameras(reference: trimesh.Trimesh, x: Tensor, n: Tensor, cameras, offset: float = 1e-3) -> Tensor:
    """Which surface points x (N, 3) with outward normals n (N, 3) at least one camera sees -> (N,) bool: inside
    its image, in front of it, facing it, and not hidden by the ``reference`` surface (a shadow ray to the camera
    centre, from ``offset`` off the surface)."""
    from nfields.data.raycast import MeshRaycaster

    caster = MeshRaycaster(reference)
    seen = torch.zeros(len(x), dtype=torch.bool)
    x, n = x.float(), n.float()
    for i in range(len(cameras)):
        to_cam = cameras.centers[i].float() - x
        cand = ~seen & cameras.in_image(i, x)[1] & ((n * to_cam).sum(-1) > 0)
        if cand.any():
            d = torch.nn.functional.normalize(to_cam[cand], dim=-1)
            seen[cand] = ~caster.occluded(x[cand] + offset * n[cand], d)
    return seen
