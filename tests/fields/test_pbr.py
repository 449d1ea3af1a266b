"""The SDF + PBR field: shading follows the BRDF (white furnace), material maps are renderable, gradients reach
materials and light, and relighting swaps the light without touching the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nfields.errors import NFieldsError
from nfields.fields.pbr import PBRField
from nfields.render.envmap import EnvironmentMap
from nfields.render.shading import linear_to_srgb

AABB = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def _field(**kw):
    torch.manual_seed(0)
    return PBRField(AABB, network="mlp", network_options={"hidden": 32, "layers": 2}, **kw)


def _inputs(n=256):
    x = torch.randn(n, 3) * 0.3
    normals = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    dirs = -normals  # looking straight at the surface
    return x, dirs, normals


def test_white_furnace_through_the_field():
    f = _field(env_init=0.5)
    with torch.no_grad():  # albedo -> 1, metallic -> 0: a white dielectric reflects all of a constant sky
        f.material_net[-1].bias.copy_(torch.tensor([20.0, 20.0, 20.0, 0.0, -20.0]))
        f.material_net[-1].weight.zero_()
    x, dirs, normals = _inputs()
    rgb = f.color(f.geometry(x)[1], dirs, normals)
    expected = linear_to_srgb(torch.tensor(0.5))
    assert (rgb - expected).abs().max() < 0.02


def test_render_modes_and_ranges():
    f = _field()
    x, dirs, normals = _inputs()
    feat = f.geometry(x)[1]
    albedo, rough, metal = f.materials(feat)
    assert albedo.min() >= 0.03 and rough.min() >= 0.08 and 0 <= metal.min() and metal.max() <= 1
    f.render_mode = "roughness"
    assert torch.allclose(f.color(feat, dirs, normals), rough[:, None].expand(-1, 3))
    f.render_mode = "albedo"
    assert torch.allclose(f.color(feat, dirs, normals), linear_to_srgb(albedo))
    f.render_mode = "nope"
    with pytest.raises(NFieldsError, match="render_mode"):
        f.color(feat, dirs, normals)
    f.render_mode, f.shading = "rgb", "neural"  # stage one: the neural colour head of SDFField
    out = f.color(feat, dirs, normals)
    assert out.shape == (256, 3) and torch.allclose(out, torch.sigmoid(f.color_net(
        torch.cat([normals, f.dir_enc(dirs), feat], -1))))  # fmt: skip


def test_gradients_reach_materials_light_and_geometry():
    f = _field()
    x, dirs, _ = _inputs()
    sdf, feat, grad = f.geometry_and_gradient(x)
    normals = torch.nn.functional.normalize(grad, dim=-1)
    loss = f.color(feat, dirs, normals).mean() + f.material_smoothness(x)
    loss.backward()
    assert f.env.log_radiance.grad.abs().sum() > 0
    assert f.material_net[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in f.net.parameters())


def test_relight_is_not_part_of_the_checkpoint():
    f = _field()
    keys = set(f.state_dict())
    env = EnvironmentMap(np.full((8, 16, 3), 2.0, np.float32))
    f.relight(env)
    assert set(f.state_dict()) == keys
    x, dirs, normals = _inputs(64)
    feat = f.geometry(x)[1]
    lit = f.color(feat, dirs, normals)
    f.relight(None)
    assert not torch.allclose(lit, f.color(feat, dirs, normals))
