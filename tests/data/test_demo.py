"""The generated demo scene: written in the DTU layout, loaded back with the cameras it was made with."""

from __future__ import annotations

import functools

import torch

import nfields.data.synthetic as synthetic
from nfields.data import demo_albedo, demo_sdf, generate_demo_scene, load_scene
from nfields.data.synthetic import DEMO_RADIUS, demo_cameras


def test_sdf_and_albedo():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(4000, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    assert (demo_sdf(d * DEMO_RADIUS) > 0).all()  # everything lies inside radius DEMO_RADIUS
    assert demo_sdf(torch.zeros(1, 3)).item() < -0.3
    x = torch.rand(4000, 3, generator=g) * 1.6 - 0.8
    c = demo_albedo(x)
    assert c.shape == (4000, 3) and c.min() >= 0 and c.max() <= 1 and c.std(0).min() > 0.1
    # |grad sdf| = 1 away from the blends and the medial axes (a distance, not just an implicit function), and
    # never above 1 (a lower bound of the distance: sphere tracing cannot overshoot).
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(demo_sdf(x).sum(), x)
    norm = grad.norm(dim=-1)
    assert ((norm - 1).abs() < 0.05).float().mean() > 0.8 and norm.max() < 1 + 1e-4


def test_generate_and_load(tmp_path):
    root = generate_demo_scene(tmp_path / "demo", n_views=6, size=48, seed=3)
    assert len(list((root / "image").glob("*.png"))) == 6 and len(list((root / "mask").glob("*.png"))) == 6
    scene = load_scene(str(root), holdout_every=3)
    ref = demo_cameras(6, 48, seed=3)
    # Written as world_mat @ scale_mat^-1 and decomposed back: the same cameras in the normalised world.
    assert torch.allclose(scene.cameras.K, ref.K, atol=1e-3)
    assert torch.allclose(scene.cameras.c2w, ref.c2w, atol=1e-5)
    assert torch.allclose(scene.scale_mat, torch.as_tensor(synthetic.DEMO_SCALE_MAT, dtype=torch.float32))
    assert scene.object_radius == 1.0 and scene.test_ids == [0, 3]
    px, _ = scene.cameras.project(torch.arange(6), torch.zeros(6, 3))
    assert all(scene.masks[i, int(px[i, 1]), int(px[i, 0])] == 255 for i in range(6))
    frac = scene.masks.float().mean().item() / 255
    assert 0.15 < frac < 0.6
    fg = scene.masks > 0
    assert scene.images[fg].float().mean() > 40 and scene.images[~fg].float().mean() < 5  # lit object, black bg


def test_load_demo_by_name_uses_the_cache(tmp_path, monkeypatch):
    # A tiny scene stands in for the default one; its own cache keeps it from other tests' "demo".
    monkeypatch.setenv("NFIELDS_CACHE", str(tmp_path / "cache"))
    calls = []

    def tiny(out):
        calls.append(out)
        return generate_demo_scene(out, n_views=3, size=32)

    monkeypatch.setattr(synthetic, "generate_demo_scene", functools.partial(tiny))
    monkeypatch.chdir(tmp_path)
    scene = load_scene("demo")
    assert scene.name == "demo" and scene.images.shape == (3, 32, 32, 3)
    assert (tmp_path / "cache" / "scenes" / "demo" / ".complete").is_file()
    assert not [p for p in (tmp_path / "cache" / "scenes").iterdir() if p.name.startswith(".demo-")]
    load_scene("demo")
    assert len(calls) == 1  # generated once, then read from the cache
    # A copy from an older generator version is replaced.
    (tmp_path / "cache" / "scenes" / "demo" / ".complete").write_text("0\n")
    load_scene("demo")
    assert (
        len(calls) == 2
        and (tmp_path / "cache" / "scenes" / "demo" / ".complete").read_text().strip() == synthetic.DEMO_VERSION
    )
