"""PBR scenes with ground truth: the ray-casting twins agree, shadows darken, the written scene loads and its
ground-truth images hold the procedural materials."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from nfields.data import load_scene
from nfields.data.pbr_scene import (
    DemoSurface,
    PBRSceneConfig,
    make_pbr_scene,
    normalise_mesh,
    procedural_materials,
    render_pbr_view,
)
from nfields.data.raycast import MeshRaycaster
from nfields.data.synthetic import demo_cameras
from nfields.errors import NFieldsError
from nfields.render.envmap import EnvironmentMap
from nfields.render.shading import srgb_to_linear
from tests.conftest import data_path


def _rays(n=1500, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.tensor([0.0, 0.0, -3.0]).expand(n, 3).clone()
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.25 + torch.tensor([0.0, 0, 1]), dim=-1)
    return o, d


def test_open3d_and_torch_raycasters_agree():
    pytest.importorskip("open3d")
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.6)
    mesh.apply_translation([0.1, -0.05, 0.0])
    o, d = _rays()
    a, b = MeshRaycaster(mesh, "open3d"), MeshRaycaster(mesh, "torch")
    assert (a.backend, b.backend) == ("open3d", "torch")
    ha, ta, na = a.intersect(o, d)
    hb, tb, nb = b.intersect(o, d)
    assert ha.sum() > 300 and torch.equal(ha, hb)
    assert (ta[ha] - tb[ha]).abs().max() < 1e-4
    assert (na[ha] - nb[ha]).abs().max() < 1e-4
    assert torch.equal(a.occluded(o, d), b.occluded(o, d))


def test_raycaster_hits_a_sphere_where_the_analytic_answer_says():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    o, d = _rays(400)
    hit, t, n = MeshRaycaster(mesh).intersect(o, d)
    b = (o * d).sum(-1)
    disc = b * b - (o * o).sum(-1) + 0.25
    assert torch.equal(hit[disc > 1e-3], torch.ones_like(hit[disc > 1e-3]))
    t_exact = -b - disc.clamp_min(0).sqrt()
    assert (t[hit] - t_exact[hit]).abs().max() < 5e-3  # flat facets sit slightly inside the sphere
    p = o[hit] + t[hit, None] * d[hit]
    cos = (n[hit] * torch.nn.functional.normalize(p, dim=-1)).sum(-1)
    assert cos.min() > 0.995  # smooth (interpolated) normals, facing outward


def test_shadows_darken_and_materials_are_in_range():
    env = EnvironmentMap(np.full((16, 32, 3), 1.0, np.float32))
    env.prefilter()
    cams = demo_cameras(2, 40)
    g = torch.Generator().manual_seed(0)
    lit = render_pbr_view(DemoSurface(), cams, 0, env, 32, 1.0, g)

    class NoShadows(DemoSurface):
        def occluded(self, origins, dirs):
            return torch.zeros(origins.shape[0], dtype=torch.bool)

    open_sky = render_pbr_view(NoShadows(), cams, 0, env, 32, 1.0, torch.Generator().manual_seed(0))
    m = lit["mask"] > 0
    assert m.sum() > 200
    # The torus and satellite shadow parts of the sphere: occlusion can only remove light, and does somewhere.
    a, b = lit["rgb"][m].astype(float), open_sky["rgb"][m].astype(float)
    assert (a <= b + 1).all() and (b - a).mean() > 3.0
    x = torch.rand(1000, 3) * 1.5 - 0.75
    alb, rough, metal = procedural_materials(x)
    assert alb.min() >= 0 and alb.max() <= 1 and rough.min() >= 0.3 and rough.max() <= 0.8
    assert (metal > 0.99).any() and (metal < 0.01).any()


def test_make_scene_writes_a_loadable_scene_with_ground_truth(tmp_path):
    env_file = data_path("envmaps") / "venice_sunset_1k.hdr"
    cfg = PBRSceneConfig(n_views=9, size=40, spp=8)
    out = make_pbr_scene(tmp_path / "s", env_file, None, cfg)
    meta = json.loads((out / "gt" / "scene.json").read_text())
    assert meta["exposure"] > 0 and meta["n_views"] == 9
    scene = load_scene(str(out))
    assert len(scene.cameras) == 9 and scene.masks is not None
    assert sorted(p.name for p in (out / "gt" / "relit").iterdir()) == ["000000.png", "000008.png"]
    # The albedo ground truth at a foreground pixel is the procedural albedo at the surface point there.
    cams = demo_cameras(9, 40)
    hit, t, n = DemoSurface().intersect(cams.image_rays(3).origins, cams.image_rays(3).directions)
    k = int(torch.nonzero(hit)[len(torch.nonzero(hit)) // 2])
    p = cams.image_rays(3).origins[k] + t[k] * cams.image_rays(3).directions[k]
    alb_png = np.asarray(Image.open(out / "gt" / "albedo" / "000003.png")).reshape(-1, 3)[k] / 255.0
    expected = procedural_materials(p[None])[0][0]
    assert np.abs(srgb_to_linear(torch.tensor(alb_png)).numpy() - expected.numpy()).max() < 0.02
    # The loader's cameras reproduce the generator's (scale_mat / world_mat round trip).
    assert torch.allclose(scene.cameras.c2w[3], cams.c2w[3], atol=1e-4)
    with pytest.raises(NFieldsError, match="not empty"):
        make_pbr_scene(out, env_file, None, cfg)


def test_mesh_scene_from_armadillo(tmp_path):
    pytest.importorskip("open3d")
    mesh_file = data_path("meshes") / "armadillo.obj"
    env_file = data_path("envmaps") / "venice_sunset_1k.hdr"
    norm, scale_mat = normalise_mesh(trimesh.load(mesh_file))
    assert np.linalg.norm(norm.vertices, axis=1).max() == pytest.approx(0.75, rel=1e-4)
    back = trimesh.transform_points(norm.vertices, scale_mat)
    assert np.abs(back - trimesh.load(mesh_file).vertices).max() < 1e-3
    out = make_pbr_scene(tmp_path / "arm", env_file, mesh_file, PBRSceneConfig(n_views=2, size=48, spp=4))
    assert (out / "gt" / "mesh.ply").exists()
    mask = np.asarray(Image.open(out / "mask" / "000.png"))
    assert 0.05 < (mask > 0).mean() < 0.7
