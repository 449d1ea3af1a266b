"""Baseline network backends (mlp, siren, hashgrid, densegrid) and the radiance field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nfields.errors import NFieldsError
from nfields.fields import RadianceField, param_groups, trunc_exp
from nfields.registry import build_network, network_config

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# Tiny settings per backend so every test stays well under a second; lr is what Adam wants for each.
SMALL = {
    "mlp": (dict(hidden=64, layers=3, n_freqs=6), 1e-2),
    "siren": (dict(hidden=64, layers=3), 1e-3),
    "hashgrid": (dict(levels=4, log2_table=12, base_res=4, finest_res=32, hidden=32, layers=1, backend="torch"), 1e-2),
    "densegrid": (dict(resolution=16, features=4, levels=2, hidden=32, layers=1), 2e-2),
}
BACKENDS = sorted(SMALL)


def _image_32() -> tuple[torch.Tensor, str]:
    """(32, 32, 3) float target: a crop of Kodak kodim05 (4x box-downsampled) when the shared data exists, else a
    synthetic pattern with smooth shading and a sharp disc edge."""
    path = DATA / "kodak" / "kodim05.png"
    if path.exists():
        from PIL import Image

        im = Image.open(path).convert("RGB")
        im = im.resize((im.width // 4, im.height // 4), Image.BOX)
        return torch.from_numpy(np.asarray(im)[40:72, 60:92].astype(np.float32) / 255.0), "kodim05"
    u = torch.linspace(-1, 1, 32)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    r = 0.5 + 0.4 * torch.sin(3 * xx) * torch.cos(2 * yy)
    g = ((xx**2 + yy**2) < 0.4).float() * 0.8 + 0.1
    b = 0.5 + 0.5 * torch.tanh(4 * (xx - yy))
    return torch.stack([r, g, b], -1), "synthetic"


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("in_dim", [2, 3])
def test_network_protocol(name, in_dim):
    torch.manual_seed(0)
    net = build_network(name, in_dim, 5, **SMALL[name][0])
    x = torch.rand(17, in_dim) * 2 - 1
    y = net(x)
    assert y.shape == (17, 5) and y.dtype == torch.float32
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    groups = param_groups(net, 1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert net(x[:0]).shape == (0, 5)  # an empty batch (a chunk where every ray missed the occupancy grid)


@pytest.mark.parametrize("name", BACKENDS)
def test_fits_small_image(name):
    img, source = _image_32()
    u = torch.linspace(-1, 1, 32)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    x, target = torch.stack([xx, yy], -1).reshape(-1, 2), img.reshape(-1, 3)
    torch.manual_seed(0)
    options, lr = SMALL[name]
    net = build_network(name, 2, 3, **options)
    opt = torch.optim.Adam(param_groups(net, lr))
    for _ in range(200):
        loss = (net(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        psnr = -10 * torch.log10((net(x).clamp(0, 1) - target).square().mean()).item()
    assert psnr > 25.0, f"{name} on {source}: {psnr:.1f} dB"


@pytest.mark.parametrize(
    "name, options, option",
    [
        ("mlp", dict(sigma=-1.0, encoding="fourier"), "sigma"),
        ("mlp", dict(encoding="hash"), "encoding"),
        ("mlp", dict(activation="swish"), "activation"),
        ("mlp", dict(hidden=0), "hidden"),
        ("siren", dict(layers=0), "layers"),
        ("hashgrid", dict(levels=0), "levels"),
        ("hashgrid", dict(log2_table=25), "log2_table"),
        ("hashgrid", dict(backend="cuda"), "backend"),
        ("densegrid", dict(levels=9, resolution=128), "levels"),
    ],
)
def test_bad_options_name_the_option(name, options, option):
    with pytest.raises(NFieldsError, match=rf"--field\.{option} .*must be"):
        network_config(name, **options)


def test_seeded_builds_are_identical():
    for name in ("mlp", "siren"):
        a, b = build_network(name, 2, 3, hidden=8, layers=1), build_network(name, 2, 3, hidden=8, layers=1)
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb)


def _radiance() -> RadianceField:
    torch.manual_seed(0)
    return RadianceField(
        [-2, -1, -1, 2, 1, 1], network_options=dict(levels=4, log2_table=12, base_res=4, finest_res=32, backend="torch")
    )


def test_radiance_field_outputs():
    field = _radiance()
    assert field.kind == "density"
    x = torch.rand(64, 3) * torch.tensor([4.0, 2.0, 2.0]) - torch.tensor([2.0, 1.0, 1.0])
    x[:8] = torch.tensor([2.5, 0.0, 0.0])  # outside the aabb along x only
    x[8:16] = torch.tensor([0.0, 0.0, -1.2])
    density, feats = field.geometry(x)
    assert density.shape == (64,) and feats.shape == (64, 15)
    assert (density >= 0).all() and (density[:16] == 0).all() and (density[16:] > 0).all()
    # Near-empty start: exp(-1 + small) ~ 0.37.
    assert density[16:].max() < 1.0
    dirs = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    rgb = field.color(feats, dirs)
    assert rgb.shape == (64, 3) and ((rgb >= 0) & (rgb <= 1)).all()
    torch.testing.assert_close(field.density(x), density)


def test_radiance_field_gradients_and_groups():
    field = _radiance()
    x = torch.rand(128, 3) * 2 - 1
    density, feats = field.geometry(x)
    rgb = field.color(feats, torch.nn.functional.normalize(torch.randn(128, 3), dim=-1))
    (density.sum() + rgb.sum()).backward()
    for pname, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    groups = param_groups(field, 1e-2)
    table = field.backbone.encoding.table
    assert any(g["params"] == [table] for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(field.parameters()))


def test_trunc_exp_clamps_gradient():
    x = torch.tensor([0.0, 1.0, 50.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y[:2], torch.exp(x[:2]))
    y.sum().backward()
    assert x.grad[2] == pytest.approx(torch.exp(torch.tensor(15.0)).item(), rel=1e-5)


def test_radiance_field_on_mlp_backbone():
    field = RadianceField([-1, -1, -1, 1, 1, 1], network="mlp", network_options=dict(hidden=16, layers=1, n_freqs=2))
    density, feats = field.geometry(torch.rand(5, 3) * 2 - 1)
    assert density.shape == (5,) and feats.shape == (5, 15)
