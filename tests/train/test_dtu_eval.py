"""DTU's official metric (mm, observation mask, table plane) on synthetic ground truth whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.io import savemat

from nfields.data.cameras import Cameras
from nfields.errors import NFieldsError
from nfields.train.dtu_eval import (
    cull_by_masks,
    dtu_metrics,
    evaluate_dtu_official,
    load_dtu_ground_truth,
    sample_surface_mm,
    scan_number,
)

CENTRE = np.array([10.0, -20.0, 600.0])  # mm, somewhere in front of DTU's cameras


def sphere_points(radius: float, n: int = 120_000) -> np.ndarray:
    """Fibonacci points on a sphere around CENTRE (spacing ~ radius * sqrt(4 pi / n))."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return CENTRE + radius * np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def write_ground_truth(
    folder, scan: int, points: np.ndarray, observed_z_min: float, plane_z: float, res: float = 2.0
) -> None:
    """DTU's layout: Points/stl/stlNNN_total.ply, ObsMask/ObsMaskN_10.mat (a grid of spacing ``res`` around the
    points, observed where z >= observed_z_min), ObsMask/PlaneN.mat (the table at z = plane_z, the object above)."""
    (folder / "Points" / "stl").mkdir(parents=True)
    (folder / "ObsMask").mkdir()
    trimesh.PointCloud(points).export(str(folder / "Points" / "stl" / f"stl{scan:03d}_total.ply"))
    bb = np.stack([points.min(0) - 50 * res, points.max(0) + 50 * res])
    shape = tuple(int(v) for v in np.round((bb[1] - bb[0]) / res) + 1)
    z = bb[0, 2] + res * np.arange(shape[2])
    mask = np.broadcast_to(z >= observed_z_min, shape).astype(np.uint8)
    savemat(folder / "ObsMask" / f"ObsMask{scan}_10.mat", {"ObsMask": mask, "BB": bb, "Res": np.array([[res]])})
    savemat(folder / "ObsMask" / f"Plane{scan}.mat", {"P": np.array([[0.0], [0.0], [1.0], [-plane_z]])})


def test_scan_number():
    assert scan_number("dtu_scan24") == 24 and scan_number("scan105") == 105 and scan_number("lego") is None


def test_shifted_sphere_scores_its_offset(tmp_path):
    gt_r, offset = 100.0, 1.5
    write_ground_truth(tmp_path, 24, sphere_points(gt_r), observed_z_min=-1e9, plane_z=-1e9)
    gt = load_dtu_ground_truth(tmp_path, 24)
    assert gt.obs_mask.all() and gt.res == 2.0
    mesh = trimesh.creation.icosphere(subdivisions=6, radius=gt_r + offset)
    mesh.apply_translation(CENTRE)
    pts = sample_surface_mm(mesh, density=1.0)
    # Thinned to ~1 mm: about one sample per mm^2 of the sphere's ~131,000 mm^2.
    assert 0.5 * mesh.area < len(pts) < 2.0 * mesh.area
    m = dtu_metrics(pts, gt)
    # Every distance is the 1.5 mm offset, plus a little from the ground truth's ~1 mm point spacing.
    assert offset - 0.05 < m["accuracy_mm"] < offset + 0.25
    assert offset - 0.05 < m["completeness_mm"] < offset + 0.25
    assert m["chamfer_mm"] == pytest.approx((m["accuracy_mm"] + m["completeness_mm"]) / 2)


def test_observation_mask_plane_and_outlier_cut(tmp_path):
    gt_r = 100.0
    # Observed only in the upper half; the table at the sphere's equator (the lower half is no ground truth).
    write_ground_truth(tmp_path, 3, sphere_points(gt_r), observed_z_min=CENTRE[2], plane_z=CENTRE[2])
    gt = load_dtu_ground_truth(tmp_path, 3)
    mesh = trimesh.creation.icosphere(subdivisions=6, radius=gt_r)
    mesh.apply_translation(CENTRE)
    base = dtu_metrics(sample_surface_mm(mesh, density=1.0), gt)
    assert base["n_samples_observed"] < 0.6 * base["n_samples"]
    assert base["accuracy_mm"] < 0.5 and base["completeness_mm"] < 0.5

    # An 8 mm blob 10 mm below the sphere (unobserved) changes nothing; one 10 mm above it worsens accuracy; one
    # 42 mm above it is an outlier (> 20 mm), left out of the mean.
    def blob(z):
        b = trimesh.creation.icosphere(subdivisions=3, radius=8.0)
        b.apply_translation(CENTRE + [0, 0, z])
        return b

    for z, worse in ((-(gt_r + 18.0), False), (gt_r + 18.0, True), (gt_r + 50.0, False)):
        pts = sample_surface_mm(trimesh.util.concatenate([mesh, blob(z)]), density=1.0)
        m = dtu_metrics(pts, gt)
        assert (m["accuracy_mm"] > base["accuracy_mm"] + 0.1) == worse, (z, m, base)
        assert m["completeness_mm"] == pytest.approx(base["completeness_mm"], abs=0.05)


def test_missing_or_bad_ground_truth_is_a_one_line_error(tmp_path):
    with pytest.raises(NFieldsError, match="not found"):
        load_dtu_ground_truth(tmp_path / "nope", 24)
    with pytest.raises(NFieldsError, match=r"missing Points/stl/stl024_total.ply, ObsMask/ObsMask24_10.mat"):
        load_dtu_ground_truth(tmp_path, 24)
    write_ground_truth(tmp_path, 24, sphere_points(10.0, 100), 0.0, 0.0)
    (tmp_path / "ObsMask" / "Plane24.mat").write_bytes(b"not a mat file")
    with pytest.raises(NFieldsError) as e:
        load_dtu_ground_truth(tmp_path, 24)
    assert "Plane24.mat" in str(e.value) and "\n" not in str(e.value)


def look_at_origin(distance: float = 3.0, size: int = 64) -> Cameras:
    """One camera on +z looking at the origin (OpenCV axes: x right, y down, z forward)."""
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, distance]])[None]
    K = torch.tensor([[[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]]], dtype=torch.float32)
    return Cameras(K=K, c2w=c2w, width=size, height=size)


def test_cull_by_masks_drops_what_a_view_sees_outside_its_mask():
    cams = look_at_origin()
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 16:48, 16:48] = 255  # the central half of the image
    centre = trimesh.creation.box((0.2, 0.2, 0.2))
    side = trimesh.creation.box((0.2, 0.2, 0.2))
    side.apply_translation([1.2, 0, 0])  # projects to x ~ 32 + 64 * 1.2 / 3 ~ 58: outside the mask
    behind = trimesh.creation.box((0.2, 0.2, 0.2))
    behind.apply_translation([1.2, 0, 4.0])  # behind the camera: this view says nothing about it
    mesh = trimesh.util.concatenate([centre, side, behind])
    out = cull_by_masks(mesh, cams, mask, dilate_px=2)
    assert len(out.faces) == 2 * len(centre.faces)
    assert np.abs(out.vertices[:, 0]).max() > 1.0  # the one behind the camera stayed
    assert len(cull_by_masks(mesh, cams, mask, dilate_px=30).faces) == 3 * len(centre.faces)


class SphereField(torch.nn.Module):
    """An analytic SDF 'field' of radius r in the normalised frame."""

    kind = "sdf"

    def __init__(self, r: float):
        super().__init__()
        self.r = r
        self.aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])

    def sdf(self, x):
        return x.norm(dim=-1) - self.r


class Scene:
    masks = None
    cameras = None
    scale_mat = torch.tensor([[80.0, 0, 0, CENTRE[0]], [0, 80.0, 0, CENTRE[1]], [0, 0, 80.0, CENTRE[2]], [0, 0, 0, 1]])


@pytest.mark.parametrize("r, expected_mm", [(0.5, 0.0), (0.52, 1.6)])
def test_official_metric_of_a_field_maps_to_millimetres(tmp_path, r, expected_mm):
    # Ground truth: a 40 mm sphere = radius 0.5 in the normalised frame (scale_mat scales by 80 mm).
    write_ground_truth(tmp_path, 24, sphere_points(40.0, 60_000), observed_z_min=-1e9, plane_z=-1e9)
    gt = load_dtu_ground_truth(tmp_path, 24)
    m = evaluate_dtu_official(SphereField(r), Scene(), gt, resolution=64, density=0.5, save_mesh=tmp_path / "m.ply")
    assert abs(m["chamfer_mm"] - expected_mm) < 0.35, m  # ~0.2 mm: the ground truth's 0.6 mm point spacing
    saved = trimesh.load(str(tmp_path / "m.ply"))
    assert np.linalg.norm(saved.vertices - CENTRE, axis=1).mean() == pytest.approx(80 * r, rel=0.01)  # in mm
