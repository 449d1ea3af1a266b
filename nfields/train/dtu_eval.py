"""DTU's official surface metric in millimetres (Aanaes et al., IJCV 2016), for users who have DTU's ground truth.

The DTU MVS benchmark scores a reconstruction against the structured-light scan ``Points/stl/stlNNN_total.ply``
(``NNN`` the three-digit scan number), only where the scan observed the object (``ObsMask/ObsMaskN_10.mat``: a
boolean voxel grid ``ObsMask`` over the box ``BB`` at spacing ``Res``) and only above the table for completeness
(``ObsMask/PlaneN.mat``: a plane ``P``). Those files come from DTU's "Points" and "SampleSet" releases; they are not
in ``../shared/data`` and are never downloaded: pass the folder that holds ``Points/`` and ``ObsMask/`` (e.g.
``SampleSet/MVS Data``) as ``nfields eval RUN --dtu-gt DIR``.

The protocol, as the benchmark's MATLAB toolbox and the Python re-implementations used by IDR / NeuS / NeuS2 compute
it (our own code, written from the protocol):

1. The extracted mesh (normalised frame) loses what no training camera sees inside its mask (:func:`cull_by_masks`:
   a vertex goes when some view sees it outside its dilated mask), is mapped to millimetres by the scene's
   ``scale_mat`` and sampled densely (:func:`sample_surface_mm`: area-proportional samples thinned to one per
   ``density``-sized voxel; the toolbox thins greedily within a 0.2 mm radius, which gives the same spacing).
2. Accuracy: for the samples inside the observation mask, the distance to the nearest ground-truth point; the mean
   over the distances below ``max_dist`` (20 mm).
3. Completeness: for the ground-truth points above the table plane, the distance to the nearest kept sample; the
   mean over the distances below ``max_dist``.
4. Overall ("Chamfer" in the papers): the mean of the two.

Example::

    gt = load_dtu_ground_truth("SampleSet/MVS Data", scan=24)
    metrics = dtu_metrics(points_mm, gt)   # {"accuracy_mm": ..., "completeness_mm": ..., "chamfer_mm": ...}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from nfields.errors import NFieldsError

MAX_DIST_MM = 20.0  # distances above this are outliers, left out of both means (the toolbox's default)
DENSITY_MM = 0.2  # sample spacing on the reconstruction (the toolbox's default)
MAX_SAMPLES = 30_000_000  # before thinning; bounds memory (~1 GB) on huge meshes


@dataclass
class DTUGroundTruth:
    """One scan's ground truth, in DTU's world frame (mm)."""

    scan: int
    points: np.ndarray  # (M, 3) the structured-light scan
    obs_mask: np.ndarray  # (X, Y, Z) bool: voxels the scan observed
    bb: np.ndarray  # (2, 3) the observation grid's box: voxel (i, j, k) is centred at bb[0] + res * (i, j, k)
    res: float  # the observation grid's spacing
    plane: np.ndarray  # (4,) the table plane; completeness counts points with plane . (x, 1) > 0


def scan_number(name: str) -> int | None:
    """The DTU scan number in a scene name (``dtu_scan24`` -> 24, ``scan105`` -> 105), else None."""
    m = re.search(r"scan_?(\d+)", name)
    return int(m.group(1)) if m else None


def ground_truth_files(folder: str | Path, scan: int) -> tuple[Path, Path, Path]:
    """(stl point cloud, observation mask, table plane) paths of ``scan`` under ``folder``; a one-line error naming
    what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NFieldsError(f"{folder}: DTU ground-truth folder not found (it holds Points/stl and ObsMask)")
    stl = folder / "Points" / "stl" / f"stl{scan:03d}_total.ply"
    obs = folder / "ObsMask" / f"ObsMask{scan}_10.mat"
    plane = folder / "ObsMask" / f"Plane{scan}.mat"
    missing = [str(p.relative_to(folder)) for p in (stl, obs, plane) if not p.is_file()]
    if missing:
        raise NFieldsError(
            f"{folder}: missing {', '.join(missing)} for scan {scan} (DTU's Points and SampleSet releases)"
        )
    return stl, obs, plane


def _loadmat(path: Path, keys: tuple[str, ...]) -> dict:
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
    except Exception as e:  # scipy raises several types for a damaged or non-MATLAB file
        raise NFieldsError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from None
    missing = [k for k in keys if k not in data]
    if missing:
        raise NFieldsError(f"{path}: no {', '.join(missing)} in the file (expected {', '.join(keys)})")
    return data


def load_dtu_ground_truth(folder: str | Path, scan: int) -> DTUGroundTruth:
    """Read scan ``scan``'s point cloud, observation mask and table plane from ``folder`` (see the module
    docstring)."""
    stl, obs, plane = ground_truth_files(folder, scan)
    try:
        cloud = trimesh.load(str(stl), process=False)
    except Exception as e:  # trimesh raises several types for a damaged PLY
        raise NFieldsError(f"{stl}: cannot read the point cloud ({type(e).__name__}: {e})") from None
    points = np.asarray(getattr(cloud, "vertices", np.zeros((0, 3))), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise NFieldsError(f"{stl}: no points")
    o = _loadmat(obs, ("ObsMask", "BB", "Res"))
    mask = np.asarray(o["ObsMask"]).astype(bool)
    bb = np.asarray(o["BB"], dtype=np.float64).reshape(2, 3)
    res = float(np.asarray(o["Res"]).reshape(-1)[0])
    if mask.ndim != 3 or not res > 0:
        raise NFieldsError(f"{obs}: ObsMask must be a 3-D grid and Res > 0 (got {mask.shape}, {res})")
    p = np.asarray(_loadmat(plane, ("P",))["P"], dtype=np.float64).reshape(-1)
    if p.shape != (4,):
        raise NFieldsError(f"{plane}: P must hold 4 numbers (a plane), got {p.size}")
    return DTUGroundTruth(scan, points, mask, bb, res, p)


def cull_by_masks(mesh: trimesh.Trimesh, cameras, masks: torch.Tensor, dilate_px: int = 6) -> trimesh.Trimesh:
    """Drop the parts of ``mesh`` (normalised frame) that some camera sees outside its object mask.

    A vertex is dropped when, in any view where it projects into the image in front of the camera, the mask
    dilated by ``dilate_px`` pixels (at the masks' resolution) is empty there; a face goes with any of its vertices.
    masks: (V, H, W) uint8/bool at the cameras' resolution.
    """
    if len(mesh.faces) == 0:
        return mesh
    m = (torch.as_tensor(masks) > 0).float()[:, None]  # binary masks (0/255 or bool)
    if dilate_px > 0:
        k = 2 * dilate_px + 1
        m = torch.nn.functional.max_pool2d(m, k, stride=1, padding=dilate_px)
    m = m[:, 0] > 0.5
    v = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    keep = torch.ones(len(v), dtype=torch.bool)
    h, w = m.shape[1:]
    for i in range(len(m)):
        pix, seen = cameras.in_image(i, v)
        x, y = pix[:, 0].floor().long(), pix[:, 1].floor().long()
        seen &= (x < w) & (y < h)  # masks at another size than the cameras
        inside = torch.zeros_like(seen)
        inside[seen] = m[i, y[seen], x[seen]]
        keep &= ~seen | inside
    faces = np.asarray(mesh.faces)
    face_keep = keep.numpy()[faces].all(1)
    out = mesh.copy()
    out.update_faces(face_keep)
    out.remove_unreferenced_vertices()
    return out


def sample_surface_mm(mesh_mm: trimesh.Trimesh, density: float = DENSITY_MM, seed: int = 0) -> np.ndarray:
    """Points on ``mesh_mm`` spaced about ``density`` apart: area-proportional random samples (two per
    ``density``-sized square of area, at most :data:`MAX_SAMPLES`), then one kept per ``density``-sized voxel."""
    if len(mesh_mm.faces) == 0:
        return np.zeros((0, 3))
    n = int(min(max(2.0 * mesh_mm.area / density**2, 1000), MAX_SAMPLES))
    pts = np.asarray(trimesh.sample.sample_surface(mesh_mm, n, seed=seed)[0], dtype=np.float64)
    cells = np.floor((pts - pts.min(0)) / density).astype(np.int64)
    dims = cells.max(0) + 1
    keys = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]  # one int64 per voxel: a 1-D unique
    _, first = np.unique(keys, return_index=True)
    return pts[np.sort(first)]


def in_observed_region(points: np.ndarray, gt: DTUGroundTruth) -> np.ndarray:
    """(N,) bool: the points whose nearest observation-grid voxel exists and was observed."""
    idx = np.round((points - gt.bb[0]) / gt.res).astype(np.int64)
    ok = ((idx >= 0) & (idx < np.array(gt.obs_mask.shape))).all(1)
    out = np.zeros(len(points), dtype=bool)
    out[ok] = gt.obs_mask[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
    return out


def _truncated_mean(d: np.ndarray, max_dist: float) -> float:
    d = d[d < max_dist]
    return float(d.mean()) if len(d) else math.inf


def dtu_metrics(points_mm: np.ndarray, gt: DTUGroundTruth, max_dist: float = MAX_DIST_MM) -> dict[str, float]:
    """Accuracy, completeness and their mean (mm) of reconstruction samples ``points_mm`` (N, 3) against ``gt``
    (see the module docstring), with the point counts used."""
    data = points_mm[in_observed_region(points_mm, gt)]
    above = gt.points[(gt.points @ gt.plane[:3] + gt.plane[3]) > 0]
    out = {"n_samples": int(len(points_mm)), "n_samples_observed": int(len(data)), "n_gt_points": int(len(above))}
    if len(data) == 0 or len(above) == 0:
        return {"accuracy_mm": math.inf, "completeness_mm": math.inf, "chamfer_mm": math.inf, **out}
    acc = _truncated_mean(cKDTree(gt.points).query(data, workers=-1)[0], max_dist)
    comp = _truncated_mean(cKDTree(data).query(above, workers=-1)[0], max_dist)
    return {"accuracy_mm": acc, "completeness_mm": comp, "chamfer_mm": (acc + comp) / 2, **out}


def culled_mesh_mm(field, scene, resolution: int = 512, dilate: float = 0.015) -> trimesh.Trimesh:
    """The mesh the official metric scores: marching cubes of an SDF ``field`` at ``resolution``, mask culling
    (:func:`cull_by_masks` with masks dilated by ``dilate`` of the image width, 24 px on DTU's 1600-px images;
    skipped for scenes without masks), then ``scene.scale_mat`` to millimetres. Empty when there is no surface."""
    from nfields.export.marching import extract_mesh

    was_training = field.training
    field.eval()
    try:
        with torch.no_grad():
            # An SDF bounds the distance to its surface: the fine grid only in a narrow band around it.
            mesh = extract_mesh(field.sdf, field.aabb, resolution=resolution, keep_largest=False, narrow_band=3.0)
    except NFieldsError:
        mesh = trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    finally:
        field.train(was_training)
    if scene.masks is not None and len(mesh.faces):
        mesh = cull_by_masks(mesh, scene.cameras, scene.masks, max(1, round(dilate * scene.cameras.width)))
    mesh.apply_transform(scene.scale_mat.detach().cpu().double().numpy())
    return mesh


def evaluate_dtu_official(
    field,
    scene,
    gt: DTUGroundTruth,
    resolution: int = 512,
    density: float = DENSITY_MM,
    save_mesh: str | Path | None = None,
) -> dict[str, float]:
    """The official metric of an SDF ``field`` trained on a DTU ``scene``: :func:`culled_mesh_mm`, then
    :func:`sample_surface_mm` and :func:`dtu_metrics`. ``save_mesh``: also write the culled mesh (mm) there."""
    mesh = culled_mesh_mm(field, scene, resolution)
    if save_mesh is not None and len(mesh.faces):
        mesh.export(str(save_mesh))
    out = dtu_metrics(sample_surface_mm(mesh, density), gt)
    out["mesh_faces"] = int(len(mesh.faces))
    return out
