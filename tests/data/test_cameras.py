"""Cameras: ray/projection round trips, distortion inversion, subsets, resizing, and transforms.json loading."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nfields.data import Cameras, distort, load_scene, undistort
from nfields.data.synthetic import demo_cameras

DIST = torch.tensor([-0.12, 0.03, 0.002, -0.001])


def _cams(distortion: bool = False) -> Cameras:
    cams = demo_cameras(5, 64, seed=1)
    cams.K[:, 0, 1] = 0.7  # skew, as DTU decompositions have
    cams.K[:, 1, 1] *= 1.1
    if distortion:
        cams.distortion = DIST.expand(5, 4).clone()
    return cams


@pytest.mark.parametrize("distortion", [False, True])
def test_pixel_ray_pixel_round_trip(distortion):
    cams = _cams(distortion)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(cams), (500,), generator=g)
    pix = torch.rand(500, 2, generator=g) * torch.tensor([cams.width, cams.height])
    rays = cams.rays(idx, pix)
    assert torch.allclose(rays.directions.norm(dim=-1), torch.ones(500), atol=1e-6)
    assert torch.allclose(rays.origins, cams.centers[idx])
    depth_t = 1.0 + 3.0 * torch.rand(500, generator=g)
    back, depth = cams.project(idx, rays.origins + depth_t[:, None] * rays.directions)
    assert (back - pix).abs().max() < 1e-3
    assert (depth > 0).all()


def test_principal_point_ray_is_the_optical_axis():
    cams = demo_cameras(3, 64)
    centre = cams.K[:, :2, 2]  # (32, 32): the corner shared by the four central pixels
    rays = cams.rays(torch.arange(3), centre)
    assert torch.allclose(rays.directions, cams.c2w[:, :, 2], atol=1e-6)


def test_undistort_inverts_distort():
    g = torch.Generator().manual_seed(0)
    xy = (torch.rand(2000, 2, generator=g) - 0.5) * 1.2  # normalised coordinates up to ~35 degrees off axis
    und = undistort(xy, DIST)
    assert (distort(und, DIST) - xy).abs().max() < 1e-6
    assert (und - xy).abs().max() > 1e-2  # the distortion is not negligible


def test_subset_scaled_and_image_rays():
    cams = _cams()
    sub = cams[[1, 3]]
    assert len(sub) == 2 and torch.equal(sub.c2w[1], cams.c2w[3])
    assert len(cams[2]) == 1 and len(cams[1:4]) == 3 and len(cams[torch.tensor([0, 4])]) == 2
    assert torch.equal(cams[np.int64(-1)].K, cams.K[4:]) and torch.equal(cams[torch.tensor(1)].c2w, cams.c2w[1:2])
    half = cams.scaled(0.5)
    assert (half.width, half.height) == (32, 32)
    # A point projects to half the pixel coordinates in the half-size image.
    p = torch.tensor([[0.1, -0.2, 0.3]]).expand(5, 3)
    full_px, _ = cams.project(torch.arange(5), p)
    half_px, _ = half.project(torch.arange(5), p)
    assert torch.allclose(half_px, full_px * 0.5, atol=1e-4)
    # image_rays with downscale k: one ray per k x k block centre, row-major.
    r = cams.image_rays(2, downscale=4)
    assert len(r) == 16 * 16
    ref = cams.rays(torch.tensor([2]), torch.tensor([[(5 + 0.5) * 4, (3 + 0.5) * 4]]))
    assert torch.allclose(r.directions[3 * 16 + 5], ref.directions[0], atol=1e-6)
    assert len(cams.image_rays(0)) == 64 * 64


def _write_transforms(root, aabb_scale=4):
    """A 4-frame transforms.json capture of 40x30 RGB images with OpenCV distortion; frame 1 overrides fl_x."""
    (root / "images").mkdir(parents=True)
    cams = demo_cameras(4, 40, seed=2)
    frames = []
    for i in range(4):
        Image.fromarray(np.full((30, 40, 3), 40 * i, np.uint8)).save(root / "images" / f"f{i}.png")
        c2w = np.eye(4)
        c2w[:3] = cams.c2w[i].double().numpy() @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV -> OpenGL
        f = {"file_path": f"images/f{i}.png", "transform_matrix": c2w.tolist()}
        if i == 1:
            f["fl_x"] = 50.0
        frames.append(f)
    meta = {"camera_model": "OPENCV", "fl_x": 45.0, "fl_y": 46.0, "cx": 20.5, "cy": 14.0, "w": 40, "h": 30}
    meta.update(dict(zip(["k1", "k2", "p1", "p2"], DIST.tolist())), aabb_scale=aabb_scale, frames=frames)
    (root / "transforms.json").write_text(json.dumps(meta))
    return cams


def test_transforms_json_with_distortion(tmp_path):
    ref = _write_transforms(tmp_path)
    scene = load_scene(str(tmp_path), holdout_every=2)
    cams = scene.cameras
    assert (cams.width, cams.height) == (40, 30) and scene.images.shape == (4, 30, 40, 3)
    assert scene.masks is None and scene.background is None
    assert torch.allclose(cams.distortion, DIST.expand(4, 4))
    assert cams.K[0, 0, 0] == 45.0 and cams.K[1, 0, 0] == 50.0 and cams.K[0, 1, 1] == 46.0
    assert cams.K[0, 0, 2] == 20.5 and cams.K[0, 1, 2] == 14.0
    assert torch.allclose(cams.c2w, ref.c2w, atol=1e-6)  # OpenGL poses came back as the OpenCV ones
    assert scene.train_ids == [1, 3] and scene.test_ids == [0, 2]
    # aabb_scale 4 with instant-ngp's default scale 0.33: half-size 4 / 0.66.
    assert torch.allclose(scene.aabb, torch.tensor([-1.0] * 3 + [1.0] * 3) * 4 / 0.66, atol=1e-4)
    assert scene.images[2].float().mean() == 80.0
    # Distorted pixel -> undistorted ray -> point -> distorted projection is the identity, corners included.
    pix = torch.tensor([[0.5, 0.5], [39.5, 29.5], [20.0, 15.0], [3.2, 27.9]]).repeat(4, 1)
    idx = torch.arange(4).repeat_interleave(4)
    rays = cams.rays(idx, pix)
    back, _ = cams.project(idx, rays.origins + 2.5 * rays.directions)
    assert (back - pix).abs().max() < 1e-3
    # Against a pinhole camera the corner rays bend (barrel distortion, k1 < 0: rays go wider).
    pinhole = Cameras(cams.K, cams.c2w, 40, 30)
    d0, d1 = rays.directions[1], pinhole.rays(idx[1:2], pix[1:2]).directions[0]
    assert math.degrees(torch.arccos((d0 * d1).sum().clamp(max=1.0)).item()) > 0.5


def test_scaled_cameras_keep_distortion(tmp_path):
    _write_transforms(tmp_path)
    scene = load_scene(str(tmp_path), downscale=2)
    assert scene.images.shape == (4, 15, 20, 3) and scene.cameras.distortion is not None
    assert torch.allclose(scene.cameras.K[0, :2, 2], torch.tensor([10.25, 7.0]))
