"""DTU scan24 (real data, IDR/NeuS layout): camera decomposition, projections against the masks, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nfields.data import load_scene
from nfields.data.dtu import decompose_projection, load_dtu_cameras
from nfields.data.images import parallel_map, read_image, to_mask
from tests.conftest import data_path


@pytest.fixture(scope="module")
def dtu():
    root = data_path("dtu_scan24")
    cams, scale_mat, npz = load_dtu_cameras(root)
    return root, cams, scale_mat, dict(np.load(npz))


def test_all_cameras_decompose(dtu):
    root, cams, scale_mat, raw = dtu
    assert len(cams) == 49 and (cams.width, cams.height) == (1600, 1200)
    rot = cams.c2w[:, :, :3].double()
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(49, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(49, dtype=torch.float64), atol=1e-5)
    assert (cams.K[:, 0, 0] > 2000).all() and (cams.K[:, 1, 1] > 2000).all() and (cams.K[:, 2, 2] == 1).all()
    assert np.allclose(scale_mat, raw["scale_mat_0"])
    # Projecting with the decomposed cameras equals projecting with world_mat @ scale_mat (+0.5: pixel centres).
    pts = torch.randn(200, 3, generator=torch.Generator().manual_seed(0)) * 0.4
    for i in (0, 17, 48):
        P = raw[f"world_mat_{i}"].astype(np.float64) @ raw[f"scale_mat_{i}"]
        h = np.c_[pts.double().numpy(), np.ones(200)] @ P[:3].T
        ours, depth = cams.project(torch.full((200,), i), pts)
        assert np.abs(ours.double().numpy() - 0.5 - h[:, :2] / h[:, 2:]).max() < 5e-3
        assert (depth > 1.0).all()
    # Same decomposition whatever the projection's overall scale and sign.
    P = raw["world_mat_5"].astype(np.float64) @ raw["scale_mat_5"]
    K1, c1 = decompose_projection(P)
    K2, c2 = decompose_projection(-3.0 * P)
    assert np.allclose(K1, K2) and np.allclose(c1, c2)


def test_sphere_centre_projects_inside_every_mask(dtu):
    root, cams, _, _ = dtu
    px, depth = cams.project(torch.arange(49), torch.zeros(49, 3))
    assert (depth > 0).all()
    masks = parallel_map(read_image, sorted((root / "mask").glob("*.png")))
    inside = [
        to_mask(masks[i][int(px[i, 1]) : int(px[i, 1]) + 1, int(px[i, 0]) : int(px[i, 0]) + 1])[0, 0] == 255
        for i in range(49)
    ]
    assert sum(inside) == 49


def test_pixel_ray_pixel_round_trip(dtu):
    _, cams, _, _ = dtu
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(49, (2000,), generator=g)
    pix = torch.rand(2000, 2, generator=g) * torch.tensor([1600.0, 1200.0])
    rays = cams.rays(idx, pix)
    assert (rays.directions.norm(dim=-1) - 1).abs().max() < 1e-6
    t = 2.0 + 2.0 * torch.rand(2000, generator=g)  # the object is ~2-4 units from the cameras
    back, depth = cams.project(idx, rays.origins + t[:, None] * rays.directions)
    assert (back - pix).abs().max() < 1e-3
    # Rays through the projected sphere centre pass within ~1e-5 of the origin.
    centre_px, _ = cams.project(torch.arange(49), torch.zeros(49, 3))
    r = cams.rays(torch.arange(49), centre_px)
    closest = r.origins - (r.origins * r.directions).sum(-1, keepdim=True) * r.directions
    assert closest.norm(dim=-1).max() < 1e-4


def test_load_downscaled_subset(dtu):
    _, full, _, _ = dtu
    scene = load_scene(str(data_path("dtu_scan24")), downscale=4, max_views=6, holdout_every=3)
    assert scene.images.shape == (6, 300, 400, 3) and scene.images.dtype == torch.uint8
    assert scene.masks.shape == (6, 300, 400) and set(scene.masks.unique().tolist()) == {0, 255}
    assert scene.test_ids == [0, 3] and scene.train_ids == [1, 2, 4, 5]
    assert scene.object_radius == 1.0 and scene.background is None
    assert scene.aabb.tolist() == [-1, -1, -1, 1, 1, 1]
    dist = scene.cameras.centers.norm(dim=-1)
    assert scene.near < dist.min() - 1 + 1e-6 and scene.far > dist.max() + 1 - 1e-6
    keep = [0, 10, 19, 29, 38, 48]  # 6 views evenly spaced over 49
    assert torch.allclose(scene.cameras.c2w, full.c2w[keep])
    assert torch.allclose(scene.cameras.K[:, :2], full.K[keep, :2] / 4, rtol=1e-6)
    px, _ = scene.cameras.project(torch.arange(6), torch.zeros(6, 3))
    assert all(scene.masks[i, int(px[i, 1]), int(px[i, 0])] == 255 for i in range(6))
    # Box-filtered: the mean of the downscaled image equals the mean of the full-res image within rounding.
    raw = read_image(sorted((data_path("dtu_scan24") / "image").glob("*.png"))[keep[2]]).astype(np.float64)
    assert abs(raw.mean() - scene.images[2].double().mean().item()) < 0.6
