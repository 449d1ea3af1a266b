"""Environment shadows: soft sphere tracing through the cached SDF finds the blocker (and nothing else), the chosen
texels are the light's brightest, and shading with everything visible is exactly the unshadowed split sum."""

from __future__ import annotations

import math

import pytest
import torch

from nfields.errors import NFieldsError
from nfields.render.envmap import EnvironmentMap, LearnedEnvironment, texel_solid_angle
from nfields.render.shading import shade_pbr
from nfields.render.shadows import ShadowVolume, brightest_texels, shadow_lights

AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


def _ball_over_floor(x: torch.Tensor) -> torch.Tensor:
    """A ball of radius 0.3 centred 0.5 above the floor z = -0.5."""
    ball = (x - torch.tensor([0.0, 0.0, 0.0])).norm(dim=-1) - 0.3
    return torch.minimum(ball, x[:, 2] + 0.5)


@pytest.fixture(scope="module")
def volume():
    v = ShadowVolume(AABB, resolution=64)
    v.update(_ball_over_floor)
    return v


def test_cached_sdf_matches_the_function(volume):
    x = torch.rand(2000, 3) * 1.6 - 0.8
    assert (volume.sdf(x) - _ball_over_floor(x)).abs().max() < 0.02  # trilinear at 1/32 spacing: creases


def test_shadow_under_the_ball_light_beside_it(volume):
    up = torch.tensor([[0.0, 0.0, 1.0]])
    slanted = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 1.0]]), dim=-1)
    points = torch.tensor([[0.0, 0.0, -0.5], [0.7, 0.0, -0.5], [0.0, 0.0, 0.3], [-0.5, 0.0, -0.5]])
    normals = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    vis = volume.visibility(points, normals, torch.cat([up, slanted]))
    assert vis[0, 0] < 0.05  # straight under the ball, light from above: shadowed
    assert vis[1, 0] > 0.95  # on the floor beside it: lit
    assert vis[2, 0] > 0.95  # top of the ball: lit (no self-shadowing)
    assert vis[3, 1] < 0.05  # up-left of the ball the slanted light is blocked by it ...
    assert vis[3, 0] > 0.95  # ... the overhead one is not
    below = torch.tensor([[0.0, 0.0, -1.0]])
    assert volume.visibility(points[1:2], normals[:1], below)[0, 0] == 0  # below the horizon


def test_brightest_texels_find_the_sun():
    tex = torch.full((16, 32, 3), 0.1)
    tex[3, 20] = 50.0
    env = EnvironmentMap(tex, up_axis="z")
    lights = brightest_texels(env, 4)
    sun_dir = env.radiance(lights.dirs[:1])
    assert lights.radiance[0].min() == 50.0 and sun_dir.min() > 10.0
    assert torch.allclose(lights.dirs.norm(dim=-1), torch.ones(4))
    # A learned light: the texel radiance carries gradients.
    learned = LearnedEnvironment(16, 32, up_axis="-y")
    learned.log_radiance.data[5, 7] += 3.0
    lk = brightest_texels(learned, 3)
    lk.radiance.sum().backward()
    assert learned.log_radiance.grad[5, 7].abs().sum() > 0


def test_shading_with_full_visibility_is_unshadowed_and_blocking_removes_the_sun():
    tex = torch.full((16, 32, 3), 0.2)
    tex[4, 10] = 40.0
    env = EnvironmentMap(tex, up_axis="z")
    lights = brightest_texels(env, 2)
    n = torch.nn.functional.normalize(lights.dirs[:1] + torch.tensor([[0.0, 0.0, 0.3]]), dim=-1).expand(8, 3)
    v = n.clone()
    albedo, rough, metal = torch.full((8, 3), 0.8), torch.full((8,), 0.6), torch.zeros(8)
    plain = shade_pbr(n, v, albedo, rough, metal, env)
    lit = shade_pbr(n, v, albedo, rough, metal, env, shadow=(torch.ones(8, 2), lights))
    assert torch.allclose(plain, lit)
    blocked = shade_pbr(n, v, albedo, rough, metal, env, shadow=(torch.zeros(8, 2), lights))
    sun = (lights.radiance[0] * lights.solid_angle[0] * (n[0] @ lights.dirs[0])).mean()
    assert sun > 0.2 * env.irradiance(n[:1]).mean()  # the sun is a large part of the light here
    assert (blocked < 0.8 * plain).all() and (blocked >= 0).all()
    assert math.isfinite(float(blocked.sum()))


def test_sky_lights_partition_the_light_and_shadow_the_sky_under_an_overhang(volume):
    tex = torch.full((16, 32, 3), 0.5)
    tex[4, 10] = 40.0
    env = EnvironmentMap(tex, up_axis="z")
    sun_only = shadow_lights(env, 4)
    assert torch.equal(sun_only.dirs, brightest_texels(env, 4).dirs) and sun_only.softness.shape == (4,)
    with_sky = shadow_lights(env, 4, sky_rows=4)
    assert len(with_sky.dirs) == 4 + 32 and with_sky.softness[4:].max() < with_sky.softness[:4].min()
    # The sun texels and the coarse copy of the rest carry exactly the light's power, once.
    power = (with_sky.radiance * with_sky.solid_angle[:, None]).sum(0)
    assert torch.allclose(power, (tex * texel_solid_angle(16, 32)[..., None]).sum((0, 1)), rtol=1e-4)
    # A uniform sky (no sun): on the floor under the ball (radius 0.3, centre 0.5 up) the ball hides the cosine-
    # weighted fraction sin^2(asin(0.3 / 0.5)) = 0.36 of the sky; far away, next to nothing. The soft-shadow estimate
    # is one-sided (rays that pass close to the ball count as partly blocked), so even every texel of the 16 x 32
    # map as a light gives ~0.50 lit, not 0.64; the coarse sky converges to that as it gets finer.
    sky = EnvironmentMap(torch.full((16, 32, 3), 1.0), up_axis="z")
    points = torch.tensor([[0.0, 0.0, -0.5], [0.95, 0.95, -0.5]])
    normals = torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3)
    ones, rough, metal = torch.ones(2, 3), torch.full((2,), 1.0), torch.zeros(2)
    plain = shade_pbr(normals, normals, ones, rough, metal, sky)

    def lit(k, rows):
        lights = shadow_lights(sky, k, sky_rows=rows)
        vis = volume.visibility(points, normals, lights.dirs, softness=lights.softness)
        return (shade_pbr(normals, normals, ones, rough, metal, sky, shadow=(vis, lights)) / plain).mean(-1)

    every = lit(16 * 32, 0)
    assert 0.4 < every[0] < 0.6 and every[1] > 0.95
    errors = [float((lit(4, rows) - every).abs().max()) for rows in (4, 8)]
    assert errors[0] < 0.1 and errors[1] < 0.05, errors
    with pytest.raises(NFieldsError, match="shadow_sky 3"):
        shadow_lights(sky, 4, sky_rows=3)


def _sky_irradiance_fraction(vis, normals, dirs):
    cos = (normals @ dirs.T).clamp_min(0.0)
    return (vis * cos).sum(-1) / cos.sum(-1)


def test_cached_sky_visibility_matches_tracing_and_keeps_a_thin_plates_faces_apart(volume):
    """The sky's visibility interpolated from the coarse lattice's cache is what tracing per point gives: the
    cosine-weighted lit fraction of the sky within 0.01 on average (0.05 at worst) on the floor under the ball and on
    the ball; and on a plate thinner than a lattice cell the top face is not darkened by the underside's vertices."""
    sky = shadow_lights(LearnedEnvironment(16, 32, init=1.0, up_axis="z"), 0, sky_rows=8)
    volume.cache_visibility(sky.dirs, sky.softness, resolution=32)
    assert volume.cache_matches(sky.dirs, 32) and not volume.cache_matches(sky.dirs[:-1], 32)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1000, 2, generator=g) * 1.6 - 0.8
    floor = torch.cat([xy, torch.full((1000, 1), -0.5)], -1), torch.tensor([[0.0, 0.0, 1.0]]).expand(1000, 3)
    d = torch.nn.functional.normalize(torch.randn(1000, 3, generator=g), dim=-1)
    for p, n in (floor, (0.3 * d, d)):
        traced = _sky_irradiance_fraction(volume.visibility(p, n, sky.dirs, softness=sky.softness), n, sky.dirs)
        cached, ok = volume.cached_visibility(p, n)
        err = (_sky_irradiance_fraction(cached, n, sky.dirs) - traced).abs()
        assert ok.all() and err.mean() < 0.01 and err.max() < 0.05, (err.mean(), err.max())
    plate = ShadowVolume(AABB, resolution=64)
    plate.update(lambda x: (x[:, 2] - 0.01).abs() - 0.02)  # 0.04 thick; the cache's cells are 0.065
    plate.cache_visibility(sky.dirs, sky.softness, resolution=32)
    top = torch.cat([xy, torch.full((1000, 1), 0.03)], -1), torch.tensor([[0.0, 0.0, 1.0]]).expand(1000, 3)
    cached, ok = plate.cached_visibility(*top)
    assert ok.all() and _sky_irradiance_fraction(cached, top[1], sky.dirs).min() > 0.95
