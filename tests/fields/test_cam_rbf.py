"""CAM and the Gaussian RBF network: reference equalities, the network protocol, and fitting a small image."""

from __future__ import annotations

import pytest
import torch

from nfields.errors import NFieldsError
from nfields.fields.cam import CAMNetwork
from nfields.fields.rbf import rbf_sq_dist, rbf_sq_dist_naive
from nfields.registry import build_network
from nfields.tasks.image import fit_image

SMALL = {
    "cam": {"hidden": 32, "layers": 3, "n_freqs": 4, "grid_res": 8},
    "rbf": {"n_rbf": 32, "grid_levels": (4, 8), "grid_features": 3},
}


@pytest.mark.parametrize("encoding", ["positional", "fourier"])
def test_cam_without_modulation_is_the_plain_mlp(encoding):
    opts = {"hidden": 48, "layers": 3, "encoding": encoding, "n_freqs": 5, "n_fourier": 32, "sigma": 3.0, "seed": 7}
    cam = build_network("cam", 2, 3, norm="none", grid_res=8, **opts)
    mlp = build_network("mlp", 2, 3, **opts)  # same seed -> same weights (both built by make_mlp)
    with torch.no_grad():
        cam.grid.normal_()  # modulation would change the output ...
    cam.freeze_modulation()  # ... until frozen at gamma = 1, beta = 0
    assert not cam.grid.requires_grad and cam.grid[0, :3].eq(1).all() and cam.grid[0, 3:].eq(0).all()
    x = torch.rand(500, 2) * 2 - 1
    assert (cam(x) - mlp(x)).abs().max().item() < 1e-6
    cam.modulation = False
    assert (cam(x) - mlp(x)).abs().max().item() < 1e-6


@pytest.mark.parametrize(
    "in_dim,opts",
    [
        (2, {}),
        (3, {"grid_kind": "grid"}),
        (3, {"grid_kind": "triplane"}),
        (3, {"time_axis": True}),
        (2, {"norm": "none"}),
    ],
)
def test_cam_fused_equals_plain_reference(in_dim, opts):
    net = build_network("cam", in_dim, 2, hidden=32, layers=3, n_freqs=3, grid_res=6, **opts)
    with torch.no_grad():
        net.grid.add_(0.3 * torch.randn_like(net.grid))
    x = torch.rand(400, in_dim) * 2 - 1

    def grads(f):
        net.zero_grad()
        y = f(x)
        (y.sin().sum()).backward()
        return y.detach(), [p.grad.clone() for p in net.parameters()]

    y1, g1 = grads(net.forward)
    y2, g2 = grads(net.forward_plain)
    torch.testing.assert_close(y1, y2, atol=2e-5, rtol=1e-4)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()) + 1e-6, rtol=1e-3)


def test_cam_grid_layout_and_lr_groups():
    net = build_network("cam", 2, 3, hidden=16, layers=4, grid_res=8, grid_lr_mult=10.0)
    assert net.grid.shape == (1, 8, 8, 8)  # 4 gammas + 4 betas, one grid_sample for all
    gb = net.modulation_values(torch.rand(10, 2) * 2 - 1)
    torch.testing.assert_close(gb, torch.cat([torch.ones(10, 4), torch.zeros(10, 4)], 1))
    groups = net.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-2)] and groups[1]["params"][0] is net.grid
    assert build_network("cam", 3, 1, hidden=8, layers=2).grid.shape == (1, 4, 32, 32, 32)  # 3D default res 32
    tri = build_network("cam", 3, 1, hidden=8, layers=2, grid_kind="triplane", grid_res=4)
    torch.testing.assert_close(tri.modulation_values(torch.rand(5, 3))[:, :2], torch.ones(5, 2))  # planes sum to 1
    with pytest.raises(NFieldsError, match="grid_kind"):
        build_network("cam", 3, 1, grid_kind="cube")
    with pytest.raises(NFieldsError, match="norm"):
        build_network("cam", 2, 1, norm="batch")
    with pytest.raises(NFieldsError, match="in_dim 4"):
        build_network("cam", 4, 1, hidden=8, layers=1)
    assert isinstance(net, CAMNetwork)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_rbf_matmul_distance_equals_naive(dtype, tol):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 12, generator=g, dtype=dtype)
    mu = torch.randn(40, 12, generator=g, dtype=dtype)
    s = torch.rand(40, 12, generator=g, dtype=dtype) + 0.1
    fast, naive = rbf_sq_dist(f, mu, s), rbf_sq_dist_naive(f, mu, s)
    assert fast.shape == (300, 40) and fast.min() >= 0
    assert (fast - naive).abs().max().item() < tol * naive.abs().max().item()
    # A point at a centre is at distance 0 (the clamp keeps cancellation from going negative).
    assert rbf_sq_dist(mu[:1], mu, s)[0, 0].item() == pytest.approx(0.0, abs=1e-5)


def test_rbf_network_uses_the_matmul_distance():
    net = build_network("rbf", 2, 3, **SMALL["rbf"])
    x = torch.rand(50, 2) * 2 - 1
    phi_ref = torch.exp(-rbf_sq_dist_naive(net.features(x), net.mu, net.s))
    torch.testing.assert_close(net.activations(x), phi_ref, atol=1e-5, rtol=1e-4)
    assert net.feature_dim == 6 and net(x).shape == (50, 3)
    with pytest.raises(NFieldsError, match="grid_levels"):
        build_network("rbf", 2, 3, grid_levels=(1, 8))
    with pytest.raises(NFieldsError, match="n_rbf"):
        build_network("rbf", 2, 3, n_rbf=0)


@pytest.mark.parametrize("name", ["cam", "rbf"])
@pytest.mark.parametrize("in_dim", [2, 3])
def test_protocol(name, in_dim):
    net = build_network(name, in_dim, 4, **SMALL[name])
    x = torch.rand(64, in_dim) * 2 - 1
    y = net(x)
    assert y.shape == (64, 4) and y.dtype == torch.float32
    y.square().mean().backward()
    names = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not names, f"no gradient reached {names}"
    # Equal configs build equal networks.
    torch.testing.assert_close(build_network(name, in_dim, 4, **SMALL[name])(x), y.detach())
    assert net(x[:0]).shape == (0, 4)  # an empty batch (a chunk where every ray missed the occupancy grid)


@pytest.mark.parametrize("name,opts,lr,bar", [("cam", SMALL["cam"], 3e-3, 33.0), ("rbf", SMALL["rbf"], 1e-2, 30.0)])
def test_fits_small_image(name, opts, lr, bar):
    # A smooth 32x32 image: two colour gradients and a blob.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    img = torch.stack([xx, yy, torch.exp(-((xx - 0.4) ** 2 + (yy - 0.6) ** 2) / 0.05)], -1)
    r = fit_image(img, name, {**opts, "hidden": 32} if name == "cam" else opts, steps=300, lr=lr)
    assert r.steps == 300 and r.params > 0
    assert r.psnr > bar, f"{name}: {r.psnr:.2f} dB"
