"""RayBatcher: uint8 images stay uint8, batches carry the pixels the rays go through, the stream resumes."""

from __future__ import annotations

import pytest
import torch

from nfields.data import RayBatcher, generate_demo_scene, load_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = generate_demo_scene(tmp_path_factory.mktemp("demo") / "demo", n_views=5, size=40, seed=1)
    return load_scene(str(root))


def test_batch_matches_image_pixels(scene):
    batcher = RayBatcher(scene, [1, 2, 4], batch_size=3000, seed=7)
    batch = batcher.next()
    assert scene.images.dtype == torch.uint8 and scene.masks.dtype == torch.uint8
    assert batch.rgb.dtype == torch.float32 and batch.rgb.shape == (3000, 3) and batch.mask.shape == (3000,)
    assert set(batch.cam_idx.unique().tolist()) == {1, 2, 4}
    # Recover each ray's pixel by projecting a point on it; the batch holds that pixel's values.
    px, _ = scene.cameras.project(batch.cam_idx, batch.rays.origins + 2.0 * batch.rays.directions)
    frac = px - px.floor()
    assert (frac - 0.5).abs().max() < 1e-3  # rays go through pixel centres
    col, row = px[:, 0].long(), px[:, 1].long()
    assert torch.equal(batch.rgb, scene.images[batch.cam_idx, row, col].float() / 255)
    assert torch.equal(batch.mask, scene.masks[batch.cam_idx, row, col].float() / 255)
    assert 0.1 < batch.mask.mean() < 0.7
    # Every pixel is equally likely: rows and columns cover the image.
    assert row.min() == 0 and row.max() == 39 and col.min() == 0 and col.max() == 39


def test_resume_continues_the_stream(scene):
    a = RayBatcher(scene, scene.train_ids, batch_size=64, seed=3)
    a.next()
    state = a.state_dict()
    expected = [a.next().rays.directions for _ in range(2)]
    b = RayBatcher(scene, scene.train_ids, batch_size=64, seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(b.next().rays.directions, e) for e in expected)
    c = RayBatcher(scene, scene.train_ids, batch_size=64, seed=3)
    c.batch_size = 16  # the trainer changes the batch size between steps
    assert len(c.next()) == 16
