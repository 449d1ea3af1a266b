"""Environment maps: Radiance .hdr I/O (RLE), equirect conventions, rotation, irradiance and pre-filtering,
the learnable environment, and the real venice_sunset map."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nfields.data.hdr import float_to_rgbe, read_envmap, read_hdr, rgbe_to_float, write_hdr
from nfields.errors import NFieldsError
from nfields.render.envmap import (
    EnvironmentMap,
    LearnedEnvironment,
    dir_to_uv,
    texel_solid_angle,
    texel_uv,
    uv_to_dir,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VENICE = DATA / "envmaps" / "venice_sunset_1k.hdr"


def _venice() -> Path:
    if not VENICE.exists():
        pytest.skip(f"real data not found at {VENICE} (clone beside ../shared/data, as CI does)")
    return VENICE


def _unit(k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(k, 3, generator=g), dim=-1)


# ------------------------------------------------------------------------------------------------ .hdr files
def test_hdr_roundtrip_rle_and_flat(tmp_path):
    rng = np.random.default_rng(0)
    img = np.exp(rng.normal(0, 3, (6, 40, 3))).astype(np.float32)
    img[:, 10:30] = [2.0, 0.5, 0.25]  # long runs exercise the run branch of the RLE
    img[2] = 0.0
    expected = rgbe_to_float(float_to_rgbe(img))
    # RGBE: one shared exponent, 8-bit mantissas truncated -> error below 1/128 of the pixel's largest channel.
    assert (np.abs(expected - img) <= img.max(-1, keepdims=True) / 128).all()
    for rle in (True, False):
        path = tmp_path / f"x_{rle}.hdr"
        write_hdr(path, img, rle=rle)
        assert np.array_equal(read_hdr(path), expected)
    assert (tmp_path / "x_True.hdr").stat().st_size < (tmp_path / "x_False.hdr").stat().st_size


def test_hdr_hand_encoded_new_and_old_rle(tmp_path):
    header = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 8\n"
    # Row 0, new-style RLE: R = run of 8 x 128; G = literal 8 bytes; B = run 5 x 64 + literal 3; E = run 8 x 129.
    row0 = bytes([2, 2, 0, 8, 136, 128, 8, *range(8), 133, 64, 3, 1, 2, 3, 136, 129])
    # Row 1, old-style RLE: one pixel, then (1, 1, 1, 7) repeats it 7 times.
    row1 = bytes([128, 64, 32, 130, 1, 1, 1, 7])
    path = tmp_path / "hand.hdr"
    path.write_bytes(header + row0 + row1)
    img = read_hdr(path)
    assert img.shape == (2, 8, 3)
    scale0 = 2.0 ** (129 - 136)
    assert np.allclose(img[0, :, 0], 128 * scale0)
    assert np.allclose(img[0, :, 1], np.arange(8) * scale0)
    assert np.allclose(img[0, :, 2], np.array([64] * 5 + [1, 2, 3]) * scale0)
    assert np.allclose(img[1], np.array([128, 64, 32]) * 2.0 ** (130 - 136))


def test_hdr_errors(tmp_path):
    bad = tmp_path / "bad.hdr"
    bad.write_bytes(b"P6\n2 2\n255\n" + bytes(12))
    with pytest.raises(NFieldsError, match="not a Radiance .hdr"):
        read_hdr(bad)
    trunc = tmp_path / "trunc.hdr"
    write_hdr(trunc, np.ones((4, 16, 3), np.float32))
    trunc.write_bytes(trunc.read_bytes()[:-10])
    with pytest.raises(NFieldsError, match="truncated"):
        read_hdr(trunc)
    wide = tmp_path / "wide.hdr"
    write_hdr(wide, np.ones((300, 1000, 3), np.float32))
    with pytest.raises(NFieldsError, match=r"wide\.hdr: 1000x300 is not an equirectangular \(2:1\) map"):
        read_envmap(wide)
    with pytest.raises(NFieldsError, match="1000x300 is not an equirectangular"):
        EnvironmentMap(np.ones((300, 1000, 3), np.float32))
    with pytest.raises(NFieldsError, match="no such file"):
        read_hdr(tmp_path / "missing.hdr")


def test_venice_sunset_loads(tmp_path):
    img = read_envmap(_venice())
    assert img.shape == (512, 1024, 3) and img.dtype == np.float32
    # imageio has no .hdr plugin here (needs freeimage/opencv), so check known facts and our own round trip:
    # the sun peaks at 6496 (exact RGBE value) in the lower half of the sky, the rest is ~0.46 on average.
    assert img.max() > 1000 and float(img.max()) == 6496.0
    row, col = np.unravel_index(img.sum(-1).argmax(), img.shape[:2])
    assert 200 < row < 256 and 560 < col < 660
    assert 0.3 < img.mean() < 0.6 and img.min() >= 0
    write_hdr(tmp_path / "v.hdr", img)
    assert np.array_equal(read_hdr(tmp_path / "v.hdr"), img)


# ------------------------------------------------------------------------------------------------ conventions
@pytest.mark.parametrize("up", ["z", "y", "-y", "x", "-z"])
def test_dir_uv_roundtrip(up):
    d = _unit(500)
    for rot in (0.0, 37.0):
        assert torch.allclose(uv_to_dir(dir_to_uv(d, up, rot), up, rot), d, atol=1e-5)
    uv = torch.rand(500, 2) * torch.tensor([1.0, 0.98]) + torch.tensor([0.0, 0.01])
    assert torch.allclose(dir_to_uv(uv_to_dir(uv, up), up), uv, atol=1e-5)


def test_uv_convention_z_up():
    d = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, 0, 0]])
    uv = dir_to_uv(d)
    assert torch.allclose(uv[:3], torch.tensor([[0.5, 0.5], [0.25, 0.5], [0.5, 0.0]]), atol=1e-6)
    assert abs(float(uv[3, 0]) % 1.0) < 1e-6 or abs(float(uv[3, 0]) - 1) < 1e-6
    assert torch.allclose(dir_to_uv(torch.tensor([[0.0, 1.0, 0.0]]), up_axis="y")[0, 1], torch.tensor(0.0))
    # Texel solid angles cover the sphere.
    assert abs(float(texel_solid_angle(16, 32).sum() * 32) - 4 * math.pi) < 1e-4


def test_rotation_moves_feature_a_quarter_width():
    h, w = 32, 64
    img = torch.full((h, w, 3), 0.1)
    img[12, 40] = 100.0
    dirs = uv_to_dir(texel_uv(h, w).reshape(-1, 2))
    cols = []
    for rot in (0.0, 90.0):
        lum = EnvironmentMap(img, rotation_deg=rot).radiance(dirs)[:, 0].reshape(h, w)
        r, c = divmod(int(lum.argmax()), w)
        assert r == 12
        cols.append(c)
    assert (cols[0] - cols[1]) % w == w // 4  # +90 deg turns the feature a quarter width to the left
    # And the feature's world direction turned by +90 deg about z: +x -> +y.
    env = EnvironmentMap(img, rotation_deg=90.0)
    d0 = uv_to_dir(torch.tensor([[40.5 / w, 12.5 / h]]))
    rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert float(env.radiance(d0 @ rz.T)[0, 0]) == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------------ lighting tables
def test_constant_map_irradiance_and_prefiltered():
    L = torch.tensor([0.5, 1.0, 2.0])
    env = EnvironmentMap(L.expand(16, 32, 3).clone())
    n = _unit(200)
    assert torch.allclose(env.irradiance(n), math.pi * L.expand(200, 3), rtol=1e-5)
    for r in (0.0, 0.1, 0.4, 0.9, 1.0):
        assert torch.allclose(env.prefiltered(n, torch.full((200,), r)), L.expand(200, 3), rtol=1e-5)
    assert torch.allclose(env.radiance(n), L.expand(200, 3))


def test_irradiance_of_linear_sky_is_analytic():
    # L(d) = 2 + d_z  ->  E(n) = pi (2 + 2/3 n_z) exactly (the cosine lobe integrates d_z to 2 pi n_z / 3).
    h, w = 64, 128
    v = (torch.arange(h) + 0.5) / h
    sky = (2 + torch.cos(v * math.pi))[:, None, None].expand(h, w, 3).contiguous()
    env = EnvironmentMap(sky)
    n = _unit(300, seed=1)
    expect = math.pi * (2 + 2 / 3 * n[:, 2:])
    assert ((env.irradiance(n) - expect).abs() / expect).max() < 1e-2


def test_venice_irradiance_matches_full_resolution_integral():
    env = EnvironmentMap.from_file(_venice())
    img = env.image
    h, w = img.shape[:2]
    dirs = uv_to_dir(texel_uv(h, w).reshape(-1, 2))
    dw = texel_solid_angle(h, w).expand(h, w).reshape(-1, 1)
    n = torch.cat([_unit(6, seed=2), torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])])
    brute = (dirs @ n.T).clamp_min(0).T @ (img.reshape(-1, 3) * dw)  # (6, 3), the sun included
    rel = (env.irradiance(n) - brute).abs() / brute
    assert rel.max() < 1e-2
    # Pre-filtered levels: blurrier with roughness, same mean energy (within the pole/sampling error).
    pre = env.prefilter(roughness_levels=4)
    assert [lv.shape[1] for lv in pre.levels] == [1024, 128, 32, 32]
    means = [float((lv * texel_solid_angle(*lv.shape[:2])[..., None]).sum() / (4 * math.pi)) for lv in pre.levels]
    assert max(abs(m / means[0] - 1) for m in means) < 5e-2
    assert pre.levels[1].max() < img.max() and pre.levels[3].max() < pre.levels[1].max()


def test_learned_environment_gradients_and_init():
    env = LearnedEnvironment(8, 16, init=0.5)
    d = _unit(64, seed=3)
    assert torch.allclose(env.radiance(d), torch.full((64, 3), 0.5))
    assert torch.allclose(env.irradiance(d), torch.full((64, 3), 0.5 * math.pi), rtol=1e-5)
    loss = env.radiance(d).sum() + env.irradiance(d).sum() + env.prefiltered(d, torch.rand(64)).sum()
    loss.backward()
    g = env.log_radiance.grad
    assert g is not None and torch.isfinite(g).all() and (g > 0).all()  # every texel feeds the irradiance
    # A few Adam steps pull the learned map towards a target sky.
    target = EnvironmentMap(torch.linspace(3.0, 0.2, 8)[:, None, None].expand(8, 16, 3).contiguous())
    opt = torch.optim.Adam(env.parameters(), lr=0.1)
    d = _unit(512, seed=4)
    errs = []
    for _ in range(30):
        opt.zero_grad()
        err = ((env.irradiance(d) - target.irradiance(d)) ** 2).mean()
        err.backward()
        opt.step()
        errs.append(float(err.detach()))
    assert errs[-1] < 0.05 * errs[0]
    with pytest.raises(NFieldsError, match="not an equirectangular"):
        LearnedEnvironment(8, 8)
    init = LearnedEnvironment.from_image(torch.full((32, 64, 3), 2.0), 8, 16)
    assert torch.allclose(init.texels(), torch.full((8, 16, 3), 2.0), rtol=1e-5)


def test_light_chroma_variation_ignores_brightness_and_sees_colour():
    env = LearnedEnvironment(8, 16)
    with torch.no_grad():
        # A grey sky with a sun 100x brighter than the rest: brightness changes, colour does not.
        env.log_radiance.copy_(torch.linspace(0.0, -2.0, 8)[:, None, None].expand(8, 16, 3))
        env.log_radiance[2, 5] += math.log(100.0)
    assert float(env.chroma_variation().detach()) < 1e-6
    with torch.no_grad():
        env.log_radiance[4, 9] += torch.tensor([1.0, -1.0, 0.0])  # one red texel
    # 4 neighbour pairs see it; each differs by |(1, -1, 0)| / 3 channels on average.
    pairs_u, pairs_v = 8 * 16, 7 * 16
    want = 2 * (2 / 3) / pairs_u + 2 * (2 / 3) / pairs_v
    assert float(env.chroma_variation().detach()) == pytest.approx(want, rel=1e-5)
    env.chroma_variation().backward()
    assert env.log_radiance.grad.abs().sum() > 0
    # Along u only: a colour that changes with elevation alone (blue above, brown below) costs nothing.
    with torch.no_grad():
        env.log_radiance.zero_()
        env.log_radiance[:4] += torch.tensor([-0.5, 0.0, 0.5])
        env.log_radiance[4:] += torch.tensor([0.3, 0.0, -0.6])
    assert float(env.chroma_variation("u").detach()) < 1e-6 < float(env.chroma_variation().detach())
    # Per hemisphere: that sky-and-ground light costs nothing either; a colour change within the sky does.
    assert float(env.chroma_variation("hemispheres").detach()) < 1e-6
    with torch.no_grad():
        env.log_radiance[1] += torch.tensor([0.6, 0.0, -0.6])
    assert float(env.chroma_variation("hemispheres").detach()) > 0.05
    with pytest.raises(NFieldsError, match="along 'v'"):
        env.chroma_variation("v")


def test_learned_environment_pyramid_levels():
    """The light as a pyramid: starts where one level does; a coarse texel moves its region (wrapping in u);
    gradients and the optimiser group reach every level; impossible sizes are one-line errors."""
    one, pyr = LearnedEnvironment(8, 16, init=2.0), LearnedEnvironment(8, 16, init=2.0, levels=3)
    assert [tuple(c.shape) for c in pyr.coarse] == [(4, 8, 3), (2, 4, 3)]
    assert torch.allclose(pyr.texels(), one.texels())
    with torch.no_grad():
        pyr.coarse[1].fill_(math.log(3.0))  # a constant coarse level scales the whole map, poles and seam included
    assert torch.allclose(pyr.texels(), torch.full((8, 16, 3), 6.0), rtol=1e-5)
    with torch.no_grad():
        pyr.coarse[1].zero_()
        pyr.coarse[0][1, 0] = 1.0  # one coarse texel in the first column: bilinear weights 1/4, 3/4, 3/4, 1/4
    wv, wu = torch.zeros(8), torch.zeros(16)  # over fine rows 1-4 and fine columns 15 (wrapping), 0, 1, 2
    wv[1:5] = torch.tensor([0.25, 0.75, 0.75, 0.25])
    wu[[15, 0, 1, 2]] = torch.tensor([0.25, 0.75, 0.75, 0.25])
    want = (wv[:, None] * wu[None, :])[..., None].expand(8, 16, 3)
    assert torch.allclose(pyr.full_log_radiance() - math.log(2.0), want, atol=1e-6)
    # Bilinear upsampling by 2 keeps a coarse level's mean, so coarse and fine levels stay on one scale.
    with torch.no_grad():
        pyr.coarse[0].copy_(torch.randn(4, 8, 3))
    assert float((pyr.full_log_radiance().detach() - math.log(2.0)).mean()) == pytest.approx(
        float(pyr.coarse[0].detach().mean()), abs=1e-5
    )
    pyr.irradiance(torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)).sum().backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in [pyr.log_radiance, *pyr.coarse])
    (group,) = pyr.param_groups(0.01)
    assert len(group["params"]) == 3 and group["light"]
    with pytest.raises(NFieldsError, match="levels 4"):
        LearnedEnvironment(6, 12, levels=4)


def test_sun_lobe_keeps_its_power_moves_smoothly_and_learns():
    """The sun lobe carries exactly its power wherever it points (between texel centres too), its map changes
    little for a small turn, and gradients reach its direction and power through the shading lookups."""
    env = LearnedEnvironment(8, 16, init=0.5, sun=True)
    assert torch.allclose(env.texels(), torch.full((8, 16, 3), 0.5))  # off until extracted
    sa = texel_solid_angle(8, 16)
    with torch.no_grad():
        env.sun_on.fill_(1.0)
        env.sun_log_power.copy_(torch.tensor([2.0, 1.0, 0.5]).log())
    maps = []
    for az in torch.linspace(0.0, 0.6, 7):  # radians: across several texel columns, 30 deg up
        with torch.no_grad():
            env.sun_dir.copy_(torch.tensor([math.cos(az) * 0.866, math.sin(az) * 0.866, 0.5]))
        sun = env.sun_map()
        assert torch.allclose((sun * sa[..., None]).sum((0, 1)), torch.tensor([2.0, 1.0, 0.5]), rtol=1e-5)
        maps.append(sun.detach())
    steps = [float((b - a).abs().sum() / a.abs().sum()) for a, b in zip(maps, maps[1:])]
    assert max(steps) < 0.6  # a 5.7 degree turn (a seventh of a texel's 22.5) moves well under all of it
    # Its power is where it points: facing it, a surface gets (nearly) all of it on top of the sky; facing away,
    # the sky's pi x 0.5 alone.
    d = torch.nn.functional.normalize(env.sun_dir.detach(), dim=0)
    e = env.irradiance(torch.stack([d, -d])).detach()
    assert torch.allclose(e[1], torch.full((3,), 0.5 * math.pi), rtol=0.02)
    assert torch.allclose(e[0] - e[1], torch.tensor([2.0, 1.0, 0.5]), rtol=0.1)
    (env.irradiance(_unit(64)).sum() + env.prefiltered(_unit(64, 1), torch.rand(64)).sum()).backward()
    assert float(env.sun_dir.grad.abs().sum()) > 0 and (env.sun_log_power.grad > 0).all()
    (group,) = env.param_groups(0.01)
    assert any(p is env.sun_dir for p in group["params"]) and any(p is env.sun_log_power for p in group["params"])
    with pytest.raises(NFieldsError, match="no sun lobe"):
        LearnedEnvironment(8, 16).extract_sun()


def test_extract_sun_moves_a_smeared_sun_into_the_lobe():
    """A sun learned as a bright texel and its smear: extraction finds its direction (within a few degrees),
    keeps the light's power, leaves the rest of the sky alone and turns the lobe on; state_dict keeps it on."""
    env = LearnedEnvironment(16, 32, init=0.3, sun=True, up_axis="z")
    sun_world = torch.nn.functional.normalize(torch.tensor([0.45, 0.7, 0.55]), dim=0)
    texel_dirs = uv_to_dir(texel_uv(16, 32), "z")
    ang = torch.acos((texel_dirs @ sun_world).clamp(-1, 1))
    smear = 40.0 * torch.exp(-0.5 * (ang / 0.15) ** 2)  # ~ one texel wide, centred between texel centres
    with torch.no_grad():
        env.log_radiance.copy_((0.3 + smear)[..., None].expand(16, 32, 3).log())
    sa = texel_solid_angle(16, 32)
    before = env.texels().detach()
    got = env.extract_sun()
    after = env.texels().detach()
    assert bool(env.sun_on)
    assert math.degrees(math.acos(float(got @ sun_world))) < 4.0
    total = lambda t: (t * sa[..., None]).sum((0, 1))  # noqa: E731
    assert torch.allclose(total(after), total(before), rtol=0.03)
    far = ang > 0.8  # more than ~45 degrees from the sun: untouched
    assert torch.allclose(after[far], before[far], rtol=1e-4)
    fresh = LearnedEnvironment(16, 32, sun=True)
    fresh.load_state_dict(env.state_dict())
    assert bool(fresh.sun_on) and torch.allclose(fresh.texels(), after, rtol=1e-5)
