"""The volume renderer on analytic scenes: a constant-density slab (Beer-Lambert), a sphere with occupancy-grid
skipping, an analytic SDF sphere (NeuS depth and normals), gradients into field parameters, chunked images."""

from __future__ import annotations

import math

import torch
from torch import nn

from nfields.fields.base import Field
from nfields.render.rays_box import ray_sphere_intersect
from nfields.render.renderer import RenderConfig, Renderer
from nfields.render.volume import render_weight_from_density
from nfields.types import Rays

UNIT_BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


class Slab(Field):
    """Density sigma where |z| < h, white."""

    def __init__(self, sigma: float, h: float, aabb):
        super().__init__(aabb)
        self.sigma, self.h = sigma, h

    def geometry(self, x):
        return self.sigma * (x[:, 2].abs() < self.h).float(), x

    def color(self, features, dirs, normals=None):
        return torch.ones_like(features)


class Ball(Field):
    """Density sigma inside radius r; colour from position."""

    def __init__(self, sigma: float = 20.0, r: float = 0.3):
        super().__init__(UNIT_BOX)
        self.sigma, self.r = sigma, r

    def geometry(self, x):
        return self.sigma * (x.norm(dim=-1) < self.r).float(), x

    def color(self, features, dirs, normals=None):
        return features * 0.5 + 0.5


class SphereSDF(Field):
    """sdf = |x| - r (exact), constant sharpness, constant colour; density is a shell for the occupancy grid."""

    kind = "sdf"

    def __init__(self, r: float = 0.5, inv_s: float = 500.0):
        super().__init__(UNIT_BOX)
        self.r, self._inv_s = r, inv_s

    def geometry(self, x):
        return x.norm(dim=-1) - self.r, torch.zeros(len(x), 1, device=x.device)

    def color(self, features, dirs, normals=None):
        return torch.full((len(features), 3), 0.7)

    def inv_s(self):
        return torch.tensor(self._inv_s)

    def density(self, x):
        # Every point of a cell (size 2/32, diagonal 0.108) that touches the surface lies in this shell, so one
        # jittered sample per cell never misses a surface cell.
        return 100.0 * (self.geometry(x)[0].abs() < 0.12).float()


class TinyDensityMLP(Field):
    def __init__(self):
        super().__init__(UNIT_BOX)
        self.geo = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 9))
        self.rgb = nn.Sequential(nn.Linear(8 + 3, 32), nn.ReLU(), nn.Linear(32, 3))

    def geometry(self, x):
        h = self.geo(self.normalize(x))
        return nn.functional.softplus(h[:, 0] + 1.0) * 3.0, h[:, 1:]

    def color(self, features, dirs, normals=None):
        return torch.sigmoid(self.rgb(torch.cat([features, dirs], -1)))


class TinySDFMLP(Field):
    kind = "sdf"

    def __init__(self):
        super().__init__(UNIT_BOX)
        self.geo = nn.Sequential(nn.Linear(3, 32), nn.Softplus(beta=100), nn.Linear(32, 5))
        self.rgb = nn.Sequential(nn.Linear(4 + 3 + 3, 32), nn.ReLU(), nn.Linear(32, 3))
        self.variance = nn.Parameter(torch.tensor(0.3))
        self.cos_anneal_ratio = 0.5

    def geometry(self, x):
        h = self.geo(x)
        return x.norm(dim=-1) - 0.5 + 0.1 * h[:, 0], h[:, 1:]

    def color(self, features, dirs, normals=None):
        return torch.sigmoid(self.rgb(torch.cat([features, dirs, normals], -1)))

    def inv_s(self):
        return torch.exp(self.variance * 10.0)

    def density(self, x):
        return 100.0 * torch.sigmoid((0.05 - self.geometry(x)[0].abs()) * 200.0)


def _parallel_rays(n: int, half: float, z0: float = -2.0, tilt=(0.0, 0.0)) -> Rays:
    """n*n rays on a square [-half, half]^2 at z = z0, all with the same direction (tilt_x, tilt_y, 1) normalised."""
    u = torch.linspace(-half, half, n)
    gy, gx = torch.meshgrid(u, u, indexing="ij")
    o = torch.stack([gx, gy, torch.full_like(gx, z0)], -1).reshape(-1, 3)
    d = torch.tensor([tilt[0], tilt[1], 1.0])
    return Rays(o, (d / d.norm()).expand_as(o).contiguous())


class StubCameras:
    """Orthographic 'cameras' looking down +z: just enough for Renderer.render_image."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height

    def image_rays(self, i: int, downscale: int = 1) -> Rays:
        h, w = self.height // downscale, self.width // downscale
        y, x = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
        o = torch.stack([x, y, torch.full_like(x, -2.0)], -1).reshape(-1, 3)
        d = torch.tensor([0.2 * i, 0.0, 1.0])
        return Rays(o, (d / d.norm()).expand_as(o).contiguous())


def test_constant_density_slab_beer_lambert():
    sigma, h = 2.0, 0.2
    field = Slab(sigma, h, [-3.0, -1.0, -0.3, 3.0, 1.0, 0.3])
    r = Renderer(field, RenderConfig(step_size=5e-4, use_grid=False, stratified=False)).eval()
    for theta_deg in (0.0, 30.0, 60.0):
        th = math.radians(theta_deg)
        rays = _parallel_rays(4, 0.2, z0=-1.0, tilt=(math.tan(th), 0.0))
        out = r(rays)
        d = 2 * h / math.cos(th)  # path length through the slab
        expected = 1.0 - math.exp(-sigma * d)
        assert torch.allclose(out.opacity, torch.full_like(out.opacity, expected), atol=1e-3), theta_deg
        # Transmittance behind the slab = exp(-sigma d).
        ex = out.extras

        mid = (ex["t_starts"] + ex["t_ends"]) / 2
        z = rays.origins[ex["ray_indices"], 2] + rays.directions[ex["ray_indices"], 2] * mid
        sig = sigma * (z.abs() < h).float()
        _, trans, _ = render_weight_from_density(ex["t_starts"], ex["t_ends"], sig, ex["ray_indices"], len(rays))
        after = z > h + 1e-3
        assert torch.allclose(trans[after], torch.full_like(trans[after], math.exp(-sigma * d)), atol=1e-3)
        # Black background -> white * opacity; white background -> 1 everywhere.
        assert torch.allclose(out.rgb, out.opacity[:, None].expand(-1, 3), atol=1e-5)
        assert torch.allclose(r(rays, torch.ones(3)).rgb, torch.ones(len(rays), 3), atol=1e-5)


def test_occupancy_grid_skips_empty_space_without_changing_the_image():
    torch.manual_seed(0)
    field = Ball(sigma=20.0, r=0.3)
    rays = _parallel_rays(24, 0.6, tilt=(0.1, -0.05))
    uniform = Renderer(field, RenderConfig(n_steps=256, use_grid=False, stratified=False)).eval()
    gridded = Renderer(field, RenderConfig(n_steps=256, grid_resolution=32, grid_update_every=1, stratified=False))
    ref = uniform(rays)
    for step in range(8):
        gridded.update_grid(step)
    gridded.eval()
    out = gridded(rays)
    assert ref.n_samples >= 5 * out.n_samples, (ref.n_samples, out.n_samples)
    mse = ((out.rgb - ref.rgb) ** 2).mean().item()
    psnr = -10 * math.log10(max(mse, 1e-12))
    assert psnr > 40.0, psnr
    # One jittered point per cell can miss a cell holding only a sliver of the hard-edged ball (nerfacc's grid does
    # the same); across seeds that costs at most a few of the 576 pixels, so bound the mean and the count.
    diff = (out.opacity - ref.opacity).abs()
    assert diff.mean().item() < 1e-3
    assert int((diff > 0.01).sum()) <= 6
    # Sanity: the image is not empty (a lit ball with opacity ~ 1 in the centre).
    assert ref.opacity.max().item() > 0.99


def test_analytic_sdf_sphere_depth_and_normals():
    field = SphereSDF(r=0.5, inv_s=500.0)
    # color_weight_thre=0: every sample is coloured, so rgb == colour x opacity exactly (checked below).
    r = Renderer(field, RenderConfig(n_steps=512, grid_resolution=32, stratified=False, color_weight_thre=0.0))
    r.update_grid(0)
    r.eval()
    g = torch.Generator().manual_seed(0)
    o = torch.tensor([0.3, -0.2, -2.5]).expand(200, 3).contiguous()
    target = (torch.rand(200, 3, generator=g) - 0.5) * 1.4
    d = target - o
    d = d / d.norm(dim=-1, keepdim=True)
    out = r(Rays(o, d))
    t0, _, hit = ray_sphere_intersect(o, d, torch.zeros(3), 0.5)
    # Rays that clearly hit (not grazing): impact parameter below 0.8 r.
    closest = (o + (-(o * d).sum(-1, keepdim=True)) * d).norm(dim=-1)
    clear = hit & (closest < 0.4)
    assert int(clear.sum()) > 40
    assert (out.opacity[clear] > 0.99).all()
    assert (out.depth[clear] - t0[clear]).abs().max().item() < 0.01
    n_true = o[clear] + t0[clear, None] * d[clear]
    n_true = n_true / n_true.norm(dim=-1, keepdim=True)
    n = out.normals[clear] / out.normals[clear].norm(dim=-1, keepdim=True)
    ang = torch.rad2deg(torch.acos((n * n_true).sum(-1).clamp(-1, 1)))
    assert ang.max().item() < 2.0, ang.max().item()
    # Misses stay empty; colour is the constant times opacity.
    far_miss = ~hit & (closest > 0.6)
    assert out.opacity[far_miss].max().item() < 1e-3
    assert torch.allclose(out.rgb, 0.7 * out.opacity[:, None].expand(-1, 3), atol=1e-4)
    assert out.extras["sdf_grad"].shape == (out.n_samples, 3)
    # The default skips colouring samples with weight < 1e-4: the image moves by at most their summed weight.
    r.cfg.color_weight_thre = 1e-4
    skipped = r(Rays(o, d))
    assert (skipped.rgb - out.rgb).abs().max().item() < 5e-3


def test_sdf_cull_drops_hidden_samples_without_changing_the_image():
    field = SphereSDF(r=0.5, inv_s=200.0)
    g = torch.Generator().manual_seed(1)
    o = torch.tensor([0.2, 0.1, -2.5]).expand(300, 3).contiguous()
    d = (torch.rand(300, 3, generator=g) - 0.5) * 1.6 - o
    d = d / d.norm(dim=-1, keepdim=True)
    outs = {}
    for thre in (0.0, 1e-3):
        r = Renderer(field, RenderConfig(n_steps=512, use_grid=False, stratified=False, sdf_cull_transmittance=thre))
        outs[thre] = r.eval()(Rays(o, d))
    full, culled = outs[0.0], outs[1e-3]
    # Behind the front surface nothing shows: every sample inside the sphere and past it goes.
    t_hit, _, hit_any = ray_sphere_intersect(o, d, torch.zeros(3), 0.5)
    ex = culled.extras
    t_mid = (ex["t_starts"] + ex["t_ends"]) / 2
    ri = ex["ray_indices"]
    closest = (o + (-(o * d).sum(-1, keepdim=True)) * d).norm(dim=-1)
    clear = hit_any & (closest < 0.45)  # grazing rays may pass the front shell with light left, and rightly so
    behind = clear[ri] & (t_mid > t_hit[ri] + 0.15)  # s = 200: T < 1e-3 within ~0.1 past oblique hits
    assert not behind.any()
    assert culled.n_samples < 0.85 * full.n_samples, (culled.n_samples, full.n_samples)
    assert int(culled.extras["n_marched"]) == full.n_samples
    assert (culled.rgb - full.rgb).abs().max().item() < 2e-3
    assert (culled.opacity - full.opacity).abs().max().item() < 2e-3
    hit = full.opacity > 0.5
    assert (culled.depth[hit] - full.depth[hit]).abs().max().item() < 1e-3


def test_sdf_cull_in_two_passes_keeps_the_same_samples():
    """The cull's second pass (only rays still transparent after their first samples) keeps exactly the samples
    one pass keeps, with fewer SDF evaluations (the back of the sphere is skipped)."""

    class Counting(SphereSDF):
        evaluated = 0

        def geometry(self, x):
            if not torch.is_grad_enabled():
                Counting.evaluated += len(x)
            return super().geometry(x)

    field = Counting(r=0.5, inv_s=200.0)
    g = torch.Generator().manual_seed(2)
    o = torch.tensor([0.2, 0.1, -2.5]).expand(400, 3).contiguous()
    d = (torch.rand(400, 3, generator=g) - 0.5) * 1.6 - o  # hits, grazing rays and misses
    d = d / d.norm(dim=-1, keepdim=True)
    outs, counts = {}, {}
    for first in (0, 40):
        r = Renderer(field, RenderConfig(n_steps=512, grid_resolution=32, stratified=False, sdf_cull_first=first))
        torch.manual_seed(0)
        r.update_grid(0)  # the shell's cells: marching starts at the front surface
        Counting.evaluated = 0
        with torch.no_grad():
            outs[first] = r.eval()(Rays(o, d))
        counts[first] = Counting.evaluated
    one, two = outs[0].extras, outs[40].extras
    assert torch.equal(one["ray_indices"], two["ray_indices"]) and torch.equal(one["t_starts"], two["t_starts"])
    torch.testing.assert_close(outs[0].rgb, outs[40].rgb)
    assert counts[40] < 0.8 * counts[0], counts


def test_sdf_occupancy_grid_holds_exactly_the_shell():
    from nfields.fields.sdf import SDFField

    field = SDFField([-1, -1, -1, 1, 1, 1], network="mlp", init_radius=0.5, normals="analytic")
    with torch.no_grad():
        for p in field.net.parameters():
            p.zero_()  # the field is its initial sphere of radius 0.5
        field.variance.fill_(0.6)  # s = e^6 ~ 400: shell 9/s + step ~ 0.03
    r = Renderer(field, RenderConfig(n_steps=256, grid_resolution=64, grid_update_every=1))
    r.update_grid(0)
    occ = r.grid.binary
    # Every point of the surface lies in an occupied cell; the grid holds only a thin band around it.
    g = torch.Generator().manual_seed(0)
    p = torch.randn(20000, 3, generator=g)
    p = 0.5 * p / p.norm(dim=-1, keepdim=True)
    assert r.grid.occupied(p).all()
    assert r.grid.occupied(torch.zeros(1, 3)).item() is False  # the inside is not marched
    shell = field.shell_width(r.step_size)
    cell = 2.0 / 64
    band = (
        4 / 3 * math.pi * ((0.5 + shell + 1.5 * cell * 3**0.5 / 2) ** 3 - (0.5 - shell - 1.5 * cell * 3**0.5 / 2) ** 3)
    )
    assert occ.float().mean().item() * 8.0 < band * 1.05  # no cell beyond the guaranteed band
    # A sharper surface gives a thinner band (no EMA lag: the grid follows at once).
    n_before = int(occ.sum())
    with torch.no_grad():
        field.variance.fill_(0.9)
    r.update_grid(1)
    assert int(r.grid.binary.sum()) < n_before


def test_gradients_reach_density_field_parameters():
    torch.manual_seed(0)
    field = TinyDensityMLP()
    r = Renderer(field, RenderConfig(n_steps=64, grid_resolution=16))
    r.train()
    rays = _parallel_rays(8, 0.5, tilt=(0.2, 0.1))
    out = r(rays, background=torch.ones(3))
    loss = ((out.rgb - 0.3) ** 2).mean()
    loss.backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum().item() > 0, name
    assert out.normals is None


def test_gradients_reach_sdf_field_parameters_including_eikonal():
    torch.manual_seed(0)
    field = TinySDFMLP()
    r = Renderer(field, RenderConfig(n_steps=64, grid_resolution=16))
    r.update_grid(0)
    r.train()
    rays = _parallel_rays(8, 0.5, tilt=(0.2, 0.1))
    out = r(rays)
    eik = ((out.extras["sdf_grad"].norm(dim=-1) - 1) ** 2).mean()
    loss = ((out.rgb - 0.3) ** 2).mean() + 0.1 * eik
    loss.backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum().item() > 0, name
    # The Eikonal term alone trains the geometry through the double backward (create_graph in training).
    field.zero_grad()
    r(rays).extras["sdf_grad"].norm(dim=-1).sum().backward()
    assert field.geo[0].weight.grad.abs().sum().item() > 0


def test_render_image_chunking_is_exact():
    field = Ball(sigma=15.0, r=0.35)
    cams = StubCameras(20, 14)
    small = Renderer(field, RenderConfig(n_steps=128, grid_resolution=16, chunk=64))
    big = Renderer(field, RenderConfig(n_steps=128, grid_resolution=16, chunk=100000))
    small.update_grid(0)
    big.grid.load_state_dict(small.grid.state_dict())
    a = small.render_image(cams, 1, background=torch.tensor([0.1, 0.2, 0.3]))
    b = big.render_image(cams, 1, background=torch.tensor([0.1, 0.2, 0.3]))
    assert a["rgb"].shape == (14, 20, 3) and a["depth"].shape == (14, 20) and a["opacity"].shape == (14, 20)
    for k in ("rgb", "depth", "opacity"):
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert a["opacity"].max().item() > 0.9 and a["opacity"].min().item() < 1e-3
    assert small.training  # render_image restores the mode it found
    half = small.render_image(cams, 0, downscale=2)
    assert half["rgb"].shape == (7, 10, 3)
    # SDF fields add normals.
    sdf = Renderer(SphereSDF(), RenderConfig(n_steps=128, use_grid=False, chunk=50)).render_image(cams, 0)
    assert sdf["normals"].shape == (14, 20, 3)


def test_rays_that_miss_everything():
    field = TinyDensityMLP()
    r = Renderer(field, RenderConfig(n_steps=32, grid_resolution=8))
    rays = Rays(torch.tensor([[5.0, 5.0, 5.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    out = r(rays, background=torch.tensor([0.2, 0.4, 0.6]))
    assert out.n_samples == 0
    assert torch.allclose(out.rgb, torch.tensor([[0.2, 0.4, 0.6]]))
    assert out.depth.item() == 0.0 and out.opacity.item() == 0.0
