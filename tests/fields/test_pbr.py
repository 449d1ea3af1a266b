"""The SDF + PBR field: shading follows the BRDF (white furnace), material maps are renderable, gradients reach
materials and light, and relighting swaps the light without touching the checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nfields.config import build_config
from nfields.errors import NFieldsError
from nfields.fields.pbr import PBRField
from nfields.render.envmap import EnvironmentMap
from nfields.render.shading import linear_to_srgb
from nfields.train.trainer import build_field

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


@pytest.mark.parametrize("color_dirs", ["view", "reflected"])
def test_detach_color_normals_cuts_only_the_normal_path(color_dirs):
    """``detach_color_normals``: none -- colour gradients reach the normals in both stages; neural -- not through
    the neural head, still through the PBR shading; all -- through neither. The features' path always stays."""
    x, dirs, normals = _inputs()
    reached = {}
    for mode in ("none", "neural", "all"):
        f = _field(color_dirs=color_dirs, detach_color_normals=mode)
        for shading in ("neural", "pbr"):
            f.shading = shading
            feat = f.geometry(x)[1].detach().requires_grad_(True)
            n = normals.clone().requires_grad_(True)
            f.color(feat, dirs, n).sum().backward()
            assert float(feat.grad.abs().sum()) > 0
            reached[mode, shading] = n.grad is not None and float(n.grad.abs().sum()) > 0
    assert reached == {
        ("none", "neural"): True, ("none", "pbr"): True, ("neural", "neural"): False, ("neural", "pbr"): True,
        ("all", "neural"): False, ("all", "pbr"): False,
    }  # fmt: skip
    with pytest.raises(ValueError, match="detach_color_normals"):
        _field(detach_color_normals="geometry")


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


def test_shadows_through_the_renderer_convex_shape_casts_none_and_light_learns():
    """A sphere cannot shadow itself: with shadows on, the rendered sphere matches the unshadowed one, and gradients
    still reach the light's shadow-casting texels."""
    from nfields.render.renderer import RenderConfig, Renderer
    from nfields.types import Rays

    def sphere_field(k, sky=0, cache=32):
        f = _field(shadow_lights=k, shadow_sky=sky, shadow_sky_cache=cache)
        with torch.no_grad():
            for p in f.net.parameters():
                p.zero_()  # the initial sphere of radius 0.5
            f.variance.fill_(0.8)
            f.env.log_radiance[4, 10] += 4.0  # a sun
        return f

    g = torch.Generator().manual_seed(0)
    origins = torch.nn.functional.normalize(torch.randn(256, 3, generator=g), dim=-1) * 2.0
    target = torch.randn(256, 3, generator=g) * 0.2
    rays = Rays(origins, torch.nn.functional.normalize(target - origins, dim=-1))
    outs = []
    # No shadows; the brightest texels; and the rest of the sky too (its visibility cached, and traced per ray).
    for k, sky, cache in ((0, 0, 32), (8, 0, 32), (8, 4, 32), (8, 4, 0)):
        f = sphere_field(k, sky, cache)
        r = Renderer(f, RenderConfig(n_steps=256, grid_resolution=32, stratified=False)).eval()
        r.update_grid(0)
        assert f.wants_shadows() == (k > 0)
        outs.append((f, r(rays)))
    (_, plain), *shadowed_runs = outs
    hit = plain.opacity > 0.5
    assert hit.sum() > 50
    for f, shadowed in shadowed_runs:
        assert f.shadow_volume.volume is not None  # built with the occupancy grid
        assert (f.shadow_volume.cache is not None) == (f.shadow_sky > 0 and f.shadow_sky_cache > 0)
        assert (plain.rgb[hit] - shadowed.rgb[hit]).abs().max() < 0.02
    f = shadowed_runs[0][0]
    f.env.log_radiance.grad = None
    r = Renderer(f, RenderConfig(n_steps=256, grid_resolution=32, stratified=False))
    r.update_grid(0)
    r(rays).rgb.sum().backward()
    assert f.env.log_radiance.grad[4, 10].abs().sum() > 0


@pytest.mark.parametrize(
    "kw",
    [{"shadow_sky": 4}, {"shadow_lights": 8, "shadow_sky": 3}, {"shadow_sky": -1}, {"shadow_sky_cache": 2}],
)
def test_shadow_sky_needs_lights_and_a_divisor_of_the_shadow_map(kw):
    with pytest.raises(NFieldsError, match="shadow_sky"):
        _field(**kw)


def test_local_light_adds_albedo_times_its_irradiance_and_relighting_drops_it():
    """``local_light``: E_loc starts at 0.1 x the irradiance of a constant sky of the light's mean radiance
    everywhere and only adds ``albedo (1 - metallic) (1 - E_spec) E_loc / pi`` to the diffuse light (the specular
    term is untouched); without points, or under a relight map, the shading is the plain environment's; its
    parameters train in the PBR stage (10x lr) and get gradients."""
    from nfields.render.shading import shade_pbr, specular_albedo

    f = _field(local_light=True)
    x, dirs, normals = _inputs()
    feat = f.geometry(x)[1]
    with torch.no_grad():
        f.env.log_radiance.fill_(math.log(0.5))
    e_loc = f.local_irradiance(x, normals)
    assert e_loc.shape == (256, 3) and torch.allclose(e_loc, torch.full_like(e_loc, 0.1 * math.pi * 0.5), atol=1e-5)
    with torch.no_grad():
        f.local_light.net[-1].bias.fill_(0.5)  # a visible amount, softplus(0.5) = 0.974
    e_loc = f.local_irradiance(x, normals)
    albedo, rough, metal = f.materials(feat)
    plain = shade_pbr(normals, -dirs, albedo, rough, metal, f.env)
    nv = (normals * -dirs).sum(-1, keepdim=True).clamp(1e-4, 1.0)
    f0 = 0.04 * (1 - metal[:, None]) + albedo * metal[:, None]
    e_spec = specular_albedo(nv, rough[:, None], f0)
    expected = (plain + albedo * (1 - metal[:, None]) * (1 - e_spec) * e_loc / torch.pi).clamp(0, 1)
    assert f.wants_points()
    assert torch.allclose(f.color(feat, dirs, normals, points=x), linear_to_srgb(expected), atol=1e-5)
    assert torch.allclose(f.color(feat, dirs, normals), linear_to_srgb(plain.clamp(0, 1)), atol=1e-5)
    f.relight(EnvironmentMap(np.full((8, 16, 3), 2.0, np.float32)))
    assert not f.wants_points()
    assert torch.equal(f.color(feat, dirs, normals, points=x), f.color(feat, dirs, normals))
    f.relight(None)
    share = f.local_light_fraction(x, normals)
    assert share.item() == pytest.approx((e_loc.mean() / f.env.irradiance(normals).mean()).item(), rel=1e-5)
    (f.color(feat, dirs, normals, points=x).sum() + share).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in f.local_light.net[-1].parameters())
    ids = {id(p) for p in f.stage_parameters()}
    assert all(id(p) in ids for p in f.local_light.parameters())
    assert f.local_light.param_groups(0.01)[0]["lr"] == pytest.approx(0.1)
    assert _field().local_light is None and not _field().wants_points()
    assert _field().local_light_fraction(x, normals).item() == 0.0


def test_material_grid_needs_points_trains_with_the_stage_and_holds_texture():
    """``material_grid``: the material head also reads its own hash grid at the point. It asks for the points, its
    parameters train with the PBR stage, and it fits an albedo checker that smooth geometry features cannot."""
    with pytest.raises(NFieldsError, match="model.material_grid -1"):
        _field(material_grid=-1)
    f = _field(material_grid=64)
    x, dirs, normals = _inputs()
    feat = f.geometry(x)[1]
    with pytest.raises(NFieldsError, match="needs the points"):
        f.materials(feat)
    assert f.wants_points() and not _field().wants_points()
    f.shading = "neural"
    assert not f.wants_points()  # the neural head's rgb needs no materials ...
    f.render_mode = "albedo"
    assert f.wants_points()  # ... an albedo view does
    f.shading, f.render_mode = "pbr", "rgb"
    f.color(feat, dirs, normals, points=x).mean().backward()
    ids = {id(p) for p in f.stage_parameters()}
    assert all(id(p) in ids and p.grad.abs().sum() > 0 for p in f.material_grid.parameters())

    # A checker of 8 cells across the box, seen through fixed features: with and without the grid.
    torch.manual_seed(1)
    pts = torch.rand(4096, 3) * 1.6 - 0.8
    target = torch.floor(pts * 4.0).sum(-1).remainder(2.0)[:, None].expand(-1, 3) * 0.8 + 0.1
    errors = {}
    for grid in (0, 64):
        g = _field(material_grid=grid)
        with torch.no_grad():
            feats = g.geometry(pts)[1]
        params = [*g.material_net.parameters(), *([] if grid == 0 else g.material_grid.parameters())]
        opt = torch.optim.Adam(params, lr=1e-2)
        for _ in range(150):
            loss = torch.nn.functional.mse_loss(g.materials(feats, pts)[0], target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        errors[grid] = loss.item()
    assert errors[64] < 0.25 * errors[0] and errors[64] < 0.03, errors


def test_camera_attached_light_follows_the_view_and_relighting_drops_it():
    """``camera_light``: per-ray frames are right-handed with ``y`` towards the camera and ``z`` the world's up made
    perpendicular; a light texel at the camera (``+y`` of the attached map) lights every surface that faces its
    camera the same whatever the view -- a headlight -- and leaves surfaces seen edge-on dark; relighting drops it;
    it trains with the PBR stage, gets gradients and is part of the checkpoint."""
    from nfields.fields.pbr import camera_frames

    torch.manual_seed(1)
    dirs = torch.nn.functional.normalize(torch.randn(512, 3), dim=-1)
    dirs[0] = torch.tensor([0.0, 0.0, 1.0])  # along the up axis: a fallback frame
    fr = camera_frames(dirs, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(fr @ fr.transpose(1, 2), torch.eye(3).expand(512, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(fr), torch.ones(512), atol=1e-5)
    assert torch.allclose(fr[:, 1], -dirs, atol=1e-6)
    assert (fr[1:, 2, 2] >= 0).all()  # z leans to the world's up

    f = _field(env_init=1e-4, camera_light=1e-4, up_axis="z")
    with torch.no_grad():  # white matte dielectric; the attached light: a bright patch at the camera (u 0.25, v 0.5)
        f.material_net[-1].bias.copy_(torch.tensor([20.0, 20.0, 20.0, 20.0, -20.0]))
        f.material_net[-1].weight.zero_()
        f.camera_env.log_radiance[6:10, 6:10] = math.log(2.0)
    x = torch.randn(512, 3) * 0.3
    feat = f.geometry(x)[1]
    facing = f.color(feat, dirs, -dirs)
    assert facing.min() > 0.3 and (facing.max() - facing.min()) < 0.02  # lit alike from every view
    side = torch.nn.functional.normalize(torch.cross(dirs, fr[:, 2], dim=-1), dim=-1)  # normal across the view
    assert (f.color(feat, dirs, side) < facing - 0.2).all()
    f.relight(EnvironmentMap(np.full((8, 16, 3), 1e-4, np.float32)))
    assert f.color(feat, dirs, -dirs).max() < 0.05
    f.relight(None)
    f.color(feat, dirs, -dirs).sum().backward()
    assert f.camera_env.log_radiance.grad.abs().sum() > 0
    ids = {id(p) for p in f.stage_parameters()}
    assert id(f.camera_env.log_radiance) in ids
    assert any(k.startswith("camera_env.") for k in f.state_dict())
    assert _field().camera_env is None
    with pytest.raises(NFieldsError, match="camera_light"):
        _field(camera_light=-1.0)


def test_near_light_lookups_leave_the_sphere_and_move_a_highlight():
    """``env_radius``: lookups go from the centre to where the ray leaves the sphere (on it, and along the ray; the
    ray's own direction from the centre; the distant light as the radius grows); a lamp painted on the sphere lights
    the points that face it and not those beside it under the same normal -- which no distant light can do; the
    sample positions are asked for, relighting drops it, and radii inside the box are refused."""
    from nfields.fields.pbr import sphere_exit_dirs

    torch.manual_seed(2)
    p = torch.rand(256, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(256, 3), dim=-1)
    q = sphere_exit_dirs(p, d, 3.0)
    hit = 3.0 * q - p
    assert torch.allclose(torch.cross(hit, d, dim=-1), torch.zeros_like(d), atol=1e-4)
    assert ((hit * d).sum(-1) > 0).all()
    assert torch.allclose(sphere_exit_dirs(torch.zeros_like(p), d, 3.0), d, atol=1e-6)
    assert (sphere_exit_dirs(p, d, 1e4) - d).norm(dim=-1).max() < 1e-3

    f = _field(env_init=1e-4, up_axis="z", env_radius=2.0)
    with torch.no_grad():  # white matte dielectric under a lamp on the sphere's +z pole, a cap of ~40 degrees
        f.material_net[-1].bias.copy_(torch.tensor([20.0, 20.0, 20.0, 20.0, -20.0]))
        f.material_net[-1].weight.zero_()
        f.env.log_radiance[:4] = math.log(4.0)
    f.shading = "pbr"
    assert f.wants_points()
    n = torch.tensor([[1.0, 0.0, 0.0]]).expand(2, 3)  # normals sideways, the same for both points
    x = torch.tensor([[0.9, 0.0, 1.0], [0.9, 0.0, -1.0]])  # one just below the lamp, one far beneath it
    feat = f.geometry(x)[1]
    near = f.color(feat, -n, n, points=x)
    assert near[0].mean() > near[1].mean() + 0.1, near
    distant = f.color(feat, -n, n)  # without points: the distant light, alike at both
    assert (distant[0] - distant[1]).abs().max() < 1e-5
    f.relight(EnvironmentMap(np.full((8, 16, 3), 0.5, np.float32)))
    assert not f.wants_points()
    relit = f.color(feat, -n, n, points=x)
    assert (relit[0] - relit[1]).abs().max() < 1e-5
    with pytest.raises(NFieldsError, match="env_radius"):
        _field(env_radius=1.5)


def test_view_light_starts_neutral_follows_the_pose_and_relighting_drops_it():
    """``view_light``: starts as the world light alone (zero log-gain); a gain that depends on the camera's direction
    changes a point's shading between poses (diffuse term included), not within one pose's normal; relighting
    drops it; it trains with the PBR stage, gets gradients and is part of the checkpoint."""
    from nfields.fields.pbr import ViewLight

    x, dirs, normals = _inputs(512)
    plain, lit = _field(env_init=0.3), _field(env_init=0.3, view_light=True)
    lit.load_state_dict(plain.state_dict(), strict=False)
    feat = plain.geometry(x)[1]
    assert torch.allclose(lit.color(feat, dirs, normals), plain.color(feat, dirs, normals), atol=1e-6)
    with torch.no_grad():  # white matte dielectric; a gain above 1 with the camera on the +x side, below 1 on -x
        for f in (plain, lit):
            f.material_net[-1].bias.copy_(torch.tensor([20.0, 20.0, 20.0, 20.0, -20.0]))
            f.material_net[-1].weight.zero_()
        n_sh = lit.view_light.sh.out_dim
        lit.view_light.net[-1].weight.zero_()
        lit.view_light.net[-1].bias.zero_()
        lit.view_light.net[0].weight.zero_()
        lit.view_light.net[0].bias.zero_()
        # SH band 1 holds the direction's x in entry 3 (up to a constant): route it through one hidden unit.
        lit.view_light.net[0].weight[0, n_sh + 3] = 2.0
        lit.view_light.net[0].weight[1, n_sh + 3] = -2.0
        hidden = lit.view_light.net[-1].weight.shape[1]
        w = torch.zeros(hidden)
        w[0], w[1] = 1.0, -1.0
        for layer in lit.view_light.net[2:-1]:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.copy_(torch.eye(*layer.weight.shape))
                layer.bias.zero_()
        lit.view_light.net[-1].weight.copy_(w.expand(3, -1))
    n = torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3)
    to_cam = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]), dim=-1)
    f1 = lit.geometry(torch.zeros(2, 3))[1]
    a, b = lit.color(f1, -to_cam, n), plain.color(f1, -to_cam, n)
    assert a[0].mean() > b[0].mean() + 0.05 and a[1].mean() < b[1].mean() - 0.05  # brighter from +x, darker from -x
    assert torch.allclose(b[0], b[1], atol=1e-4)  # the world light alone: the same from both poses
    lit.relight(EnvironmentMap(np.ones((8, 16, 3), np.float32)))
    plain.relight(EnvironmentMap(np.ones((8, 16, 3), np.float32)))
    assert torch.allclose(lit.color(f1, -to_cam, n), plain.color(f1, -to_cam, n), atol=1e-6)
    lit.relight(None)
    lit.color(f1, -to_cam, n).sum().backward()
    assert lit.view_light.net[-1].weight.grad.abs().sum() > 0
    assert {id(p) for p in lit.view_light.parameters()} <= {id(p) for p in lit.stage_parameters()}
    assert any(k.startswith("view_light.") for k in lit.state_dict())
    assert plain.view_light is None and isinstance(lit.view_light, ViewLight)
    assert _field(view_light=True, view_light_bands=4).view_light.sh.out_dim == 16
    assert _field(view_light=True, view_light_hidden=8).view_light.net[0].out_features == 8
    # An empty chunk (no sample to shade; an evaluation image's background tiles) shades to nothing, no error.
    assert lit.color(f1[:0], -to_cam[:0], n[:0]).shape == (0, 3)
    cfg = build_config("demo", None, "tiny", ["model.view_light=true", "model.view_light_bands=7"])
    with pytest.raises(NFieldsError, match="model.view_light_bands 7: must be in 1..4"):
        build_field(cfg, torch.tensor(AABB))
    cfg = build_config("demo", None, "tiny", ["model.view_light=true", "model.view_light_hidden=0"])
    with pytest.raises(NFieldsError, match="model.view_light_hidden 0: must be >= 1"):
        build_field(cfg, torch.tensor(AABB))
