"""NeRF-synthetic lego (real data, train split only): cameras, alpha compositing, the split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nfields.data import load_scene
from nfields.data.images import read_image
from tests.conftest import data_path


@pytest.fixture(scope="module")
def lego():
    return load_scene(str(data_path("lego")), max_views=3, holdout_every=2, background=(1.0, 1.0, 1.0))


def test_cameras_and_split(lego):
    root = data_path("lego")
    meta = json.loads((root / "transforms_train.json").read_text())
    assert lego.images.shape == (3, 800, 800, 3) and lego.images.dtype == torch.uint8
    assert lego.masks.shape == (3, 800, 800)
    assert lego.train_ids == [1] and lego.test_ids == [0, 2]  # views 0, 50, 99 of the 100; ids % 2 == 0 held out
    focal = float(400.0 / np.tan(0.5 * meta["camera_angle_x"]))
    assert torch.allclose(lego.cameras.K[0], torch.tensor([[focal, 0, 400], [0, focal, 400], [0, 0, 1.0]]))
    # OpenGL -> OpenCV: same centre, the camera axis (OpenCV +z) is Blender's -z column.
    gl = torch.tensor(meta["frames"][50]["transform_matrix"], dtype=torch.float32)
    assert torch.allclose(lego.cameras.c2w[1, :, 3], gl[:3, 3])
    assert torch.allclose(lego.cameras.c2w[1, :, 2], -gl[:3, 2]) and torch.allclose(
        lego.cameras.c2w[1, :, 1], -gl[:3, 1]
    )
    assert (lego.near, lego.far) == (2.0, 6.0) and lego.aabb.tolist() == [-1.5] * 3 + [1.5] * 3
    assert lego.object_radius is None and lego.scale_mat.equal(torch.eye(4))


def test_round_trip_and_origin_in_alpha(lego):
    cams = lego.cameras
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(3, (1000,), generator=g)
    pix = torch.rand(1000, 2, generator=g) * 800
    rays = cams.rays(idx, pix)
    assert (rays.directions.norm(dim=-1) - 1).abs().max() < 1e-6
    back, _ = cams.project(idx, rays.origins + (2 + 4 * torch.rand(1000, generator=g))[:, None] * rays.directions)
    assert (back - pix).abs().max() < 1e-3
    px, depth = cams.project(torch.arange(3), torch.zeros(3, 3))
    assert (depth > 3.0).all()  # the cameras are ~4 units from the origin
    assert all(lego.masks[i, int(px[i, 1]), int(px[i, 0])] > 200 for i in range(3))


def test_rgba_composited_on_background(lego):
    raw = read_image(data_path("lego", "train", "r_0.png"))
    assert raw.shape == (800, 800, 4)
    alpha = raw[:, :, 3]
    img = lego.images[0].numpy()
    assert (img[alpha == 0] == 255).all()  # fully transparent -> the white background
    assert np.array_equal(lego.masks[0].numpy(), alpha)  # alpha kept as a soft mask
    opaque = alpha == 255
    assert np.array_equal(img[opaque], raw[opaque][:, :3])
    edge = (alpha > 20) & (alpha < 235)
    expect = raw[edge][:, :3] * (alpha[edge, None] / 255.0) + 255.0 * (1 - alpha[edge, None] / 255.0)
    assert edge.sum() > 100 and np.abs(img[edge] - expect).max() <= 0.51
    assert torch.allclose(lego.background, torch.ones(3))


def test_black_background_and_downscale():
    scene = load_scene(str(data_path("lego")), max_views=1, downscale=4, background=(0.0, 0.0, 0.0))
    assert scene.images.shape == (1, 200, 200, 3)
    raw = read_image(data_path("lego", "train", "r_0.png")).astype(np.float64)
    premult = raw[:, :, :3] * raw[:, :, 3:] / 255.0
    box = premult.reshape(200, 4, 200, 4, 3).mean(axis=(1, 3))
    # Composite at full resolution, then box-filter == box-filter of the premultiplied colours.
    assert np.abs(scene.images[0].numpy() - box).max() <= 1.0
    assert torch.allclose(scene.cameras.K[0, :2, 2], torch.tensor([100.0, 100.0]))
