"""Encodings: shapes, dtypes, gradients, and the hash grid against plain interpolation and tcnn's hash."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nfields.encodings import (
    DenseGrid,
    FourierFeatures,
    HashGridEncoding,
    PositionalEncoding,
    SphericalHarmonics,
    level_resolutions,
    make_hash_encoding,
    tcnn_available,
)
from nfields.encodings.hashgrid import PRIMES, _InterpolateTable
from nfields.errors import NFieldsError

SMALL_HASH = dict(levels=4, features_per_level=2, log2_table=10, base_res=4, finest_res=32)


def _encoders(in_dim: int):
    yield PositionalEncoding(in_dim, 4)
    yield FourierFeatures(in_dim, 8, sigma=2.0)
    yield DenseGrid(in_dim, resolution=8, features=3, levels=2)
    yield HashGridEncoding(in_dim, **SMALL_HASH)


@pytest.mark.parametrize("in_dim", [2, 3])
def test_shapes_dtypes_gradients(in_dim):
    torch.manual_seed(0)
    for enc in _encoders(in_dim):
        x = (torch.rand(33, in_dim) * 0.98 + 0.01).requires_grad_()  # inside [0, 1] and [-1, 1]
        y = enc(x)
        assert y.shape == (33, enc.out_dim) and y.dtype == torch.float32, type(enc).__name__
        # A random projection, not y.square(): sin^2 + cos^2 has zero gradient.
        (y * torch.randn_like(y)).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, type(enc).__name__
        for p in enc.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, type(enc).__name__


def test_positional_encoding_values():
    enc = PositionalEncoding(1, n_freqs=3)
    x = torch.tensor([[0.25]])
    k = torch.tensor([1.0, 2.0, 4.0]) * math.pi * 0.25
    expected = torch.cat([x[0], torch.sin(k), torch.cos(k)])
    assert enc.out_dim == 7
    torch.testing.assert_close(enc(x)[0], expected)
    assert PositionalEncoding(3, 10, include_input=False).out_dim == 60


def test_fourier_features_fixed_and_seeded():
    a, b = FourierFeatures(2, 16, sigma=5.0, seed=3), FourierFeatures(2, 16, sigma=5.0, seed=3)
    assert not list(a.parameters())  # B is a buffer: never trained
    torch.testing.assert_close(a.B, b.B)
    x = torch.rand(4, 2)
    proj = x @ a.B.T
    torch.testing.assert_close(a(x), torch.cat([proj.sin(), proj.cos()], -1))
    assert a.B.std() / (2 * math.pi) == pytest.approx(5.0, rel=0.5)
    with pytest.raises(NFieldsError, match="sigma"):
        FourierFeatures(2, 16, sigma=-1.0)


def test_spherical_harmonics_orthonormal():
    # Fibonacci sphere: near-uniform, deterministic quadrature points.
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = (1 - z * z).sqrt()
    dirs = torch.stack([r * phi.cos(), r * phi.sin(), z], -1)
    sh = SphericalHarmonics(4)
    y = sh(dirs)
    assert y.shape == (n, 16) and sh.out_dim == 16
    gram = y.T @ y * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)
    assert SphericalHarmonics(2).out_dim == 4


def test_dense_grid_matches_vertices():
    g = DenseGrid(2, resolution=5, features=2)
    with torch.no_grad():
        g.grids[0].normal_()
    # Vertex (i, j) sits at x = -1 + 2 i / 4 along W (x) and H (y).
    x = torch.tensor([[-1.0, -1.0], [0.0, -0.5], [1.0, 1.0]])
    ref = torch.stack([g.grids[0][0, :, 0, 0], g.grids[0][0, :, 1, 2], g.grids[0][0, :, 4, 4]])
    torch.testing.assert_close(g(x), ref)


def test_level_resolutions_geometric():
    res = level_resolutions(16, 16, 2048)
    assert res[0] == 16 and res[-1] == 2048 and all(a < b for a, b in zip(res, res[1:]))
    assert level_resolutions(1, 16, 512) == [16]


@pytest.mark.parametrize("in_dim", [2, 3])
def test_hash_dense_levels_equal_grid_sample(in_dim):
    torch.manual_seed(0)
    enc = HashGridEncoding(in_dim, levels=4, features_per_level=2, log2_table=12, base_res=4, finest_res=64)
    assert any(enc.dense) and not all(enc.dense)
    with torch.no_grad():
        enc.table.normal_()
    x = torch.rand(200, in_dim)
    x[:3] = torch.tensor([[0.0] * in_dim, [1.0] * in_dim, [0.5] * in_dim])  # corners of the domain included
    out = enc(x)
    for level, dense in enumerate(enc.dense):
        if not dense:
            continue
        n = enc.resolutions[level] + 1
        rows = enc.table[enc.offsets[level] : enc.offsets[level] + enc.sizes[level]]
        # Row = x + y n + z n^2, so the reshaped grid is (z, y, x) = (D, H, W) as grid_sample wants.
        grid = rows.reshape(*([n] * in_dim), 2).movedim(-1, 0)[None]
        ref = F.grid_sample(grid, (x * 2 - 1).reshape(1, -1, *([1] * (in_dim - 1)), in_dim), align_corners=True)
        torch.testing.assert_close(out[:, 2 * level : 2 * level + 2], ref.reshape(2, -1).T, atol=1e-5, rtol=1e-5)


def test_hash_indices_in_range_and_match_tcnn_hash():
    enc = HashGridEncoding(3, **SMALL_HASH)
    x = torch.rand(100, 3)
    rows, w = enc.corner_indices(x)
    assert rows.shape == (8, enc.levels, 100) and w.shape == rows.shape
    torch.testing.assert_close(w.sum(0), torch.ones(enc.levels, 100))
    for level in range(enc.levels):
        lo, hi = enc.offsets[level], enc.offsets[level] + enc.sizes[level]
        assert rows[:, level].min() >= lo and rows[:, level].max() < hi
        if enc.dense[level]:
            continue
        # Reference: tcnn's uint32 hash of the lower corner (corner 0) for a few points, in Python integers.
        res = enc.resolutions[level]
        for p in range(5):
            v = [min(math.floor(c * res), res - 1) for c in x[p].tolist()]
            h = 0
            for c, prime in zip(v, PRIMES):
                h ^= (c * prime) & 0xFFFFFFFF
            assert rows[0, level, p].item() == lo + h % enc.sizes[level]


def test_hash_interpolation_is_continuous():
    torch.manual_seed(0)
    enc = HashGridEncoding(3, **SMALL_HASH)
    with torch.no_grad():
        enc.table.normal_()
    x = torch.rand(500, 3) * 0.98 + 0.01
    step = enc(x + 1e-5) - enc(x)
    # Lipschitz bound: finest resolution * max |feature difference| * step, summed over 3 axes.
    assert step.abs().max() < 1e-5 * 32 * 2 * enc.table.abs().max() * 3


def test_hash_table_gradient_is_local():
    enc = HashGridEncoding(3, **SMALL_HASH)
    x = torch.tensor([[0.3, 0.6, 0.2]])
    enc(x).sum().backward()
    touched = enc.table.grad.abs().sum(1).nonzero().flatten()
    rows, _ = enc.corner_indices(x)
    assert set(touched.tolist()) <= set(rows.flatten().tolist())
    assert 0 < len(touched) <= 8 * enc.levels


def test_hash_fast_path_matches_autograd_path():
    torch.manual_seed(0)
    enc = HashGridEncoding(3, **SMALL_HASH)
    with torch.no_grad():
        enc.table.normal_()
    x, w = torch.rand(64, 3), torch.randn(64, enc.out_dim)
    (enc(x) * w).sum().backward()  # custom autograd function (table gradient only)
    fast = enc.table.grad.clone()
    enc.table.grad = None
    (enc(x.clone().requires_grad_()) * w).sum().backward()  # plain autograd ops
    torch.testing.assert_close(fast, enc.table.grad)


def test_hash_gradcheck_double():
    torch.manual_seed(0)
    enc = HashGridEncoding(2, levels=2, features_per_level=2, log2_table=10, base_res=3, finest_res=40).double()
    assert enc.dense == [True, False]
    x = torch.rand(6, 2, dtype=torch.float64) * 0.9 + 0.05
    # Position gradient (the twice-differentiable autograd path SDF fields use).
    assert torch.autograd.gradcheck(enc, (x.clone().requires_grad_(),), fast_mode=True)
    # Table gradient of the fast custom function.
    flat = [t for name, hashed in enc._groups for t in enc._group_corners(x.T, name, hashed)]
    table = enc.table.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: _InterpolateTable.apply(t, *flat), (table,), fast_mode=True)


@pytest.mark.parametrize("in_dim", [2, 3])
def test_hash_closed_form_position_gradient_matches_autograd(in_dim):
    """The closed-form position gradient (and its own backward: Eikonal-style losses on the SDF gradient) equals
    plain autograd's double backward, outside [0, 1] (clamped: zero gradient) included."""
    torch.manual_seed(0)
    enc = HashGridEncoding(in_dim, levels=4, features_per_level=2, log2_table=12, base_res=4, finest_res=64).double()
    assert any(enc.dense) and not all(enc.dense)
    with torch.no_grad():
        enc.table.normal_()
    head = torch.nn.Sequential(torch.nn.Linear(enc.out_dim, 16), torch.nn.Softplus(), torch.nn.Linear(16, 1)).double()
    x = torch.rand(300, in_dim, dtype=torch.float64) * 1.1 - 0.05
    got = {}
    for mode in ("autograd", "closed_form"):
        enc.position_grad = mode
        enc.zero_grad()
        head.zero_grad()
        xg = x.clone().requires_grad_()
        y = head(enc(xg)).squeeze(-1)
        (g,) = torch.autograd.grad(y.sum(), xg, create_graph=True)
        (((g.norm(dim=-1) - 1) ** 2).mean() + (y**2).mean()).backward()
        got[mode] = (y.detach(), g.detach(), enc.table.grad.clone(), head[0].weight.grad.clone())
    assert got["closed_form"][1].abs().max() > 1.0  # a non-trivial gradient
    outside = (x < 0) | (x > 1)
    assert outside.any() and (got["closed_form"][1][outside] == 0).all()  # clamped axes carry no gradient
    for a, b in zip(got["autograd"], got["closed_form"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_hash_closed_form_gradcheck():
    """The closed-form gradient's own backward (w.r.t. the table and the incoming gradient) by finite differences."""
    from nfields.encodings.hashgrid import _GradX

    torch.manual_seed(0)
    enc = HashGridEncoding(3, levels=2, features_per_level=2, log2_table=10, base_res=3, finest_res=40).double()
    x = torch.rand(5, 3, dtype=torch.float64) * 0.9 + 0.05
    groups = [t for name, hashed in enc._groups for t in enc._group_corners(x.T, name, hashed, weight_grads=True)]
    grads = [t for rows, _, dw in zip(groups[0::3], groups[1::3], groups[2::3]) for t in (rows, dw)]
    table = torch.randn_like(enc.table).requires_grad_()
    grad_out = torch.randn(2, enc.levels, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, g: _GradX.apply(t, g, *grads), (table, grad_out), fast_mode=True)


def test_hash_param_groups_and_validation():
    enc = HashGridEncoding(3, **SMALL_HASH)
    (group,) = enc.param_groups(1e-2)
    assert group["params"] == [enc.table] and group["lr"] == 1e-2
    for bad, name in [
        (dict(levels=0), "levels"),
        (dict(log2_table=25), "log2_table"),
        (dict(features_per_level=3), "features_per_level"),
        (dict(finest_res=8, base_res=16), "finest_res"),
    ]:
        with pytest.raises(NFieldsError, match=name):
            HashGridEncoding(3, **{**SMALL_HASH, **bad})


def test_backend_selection_without_tcnn():
    if tcnn_available():
        pytest.skip("tinycudann is installed here")
    assert isinstance(make_hash_encoding("auto", **SMALL_HASH), HashGridEncoding)
    assert isinstance(make_hash_encoding("torch", **SMALL_HASH), HashGridEncoding)
    with pytest.raises(NFieldsError, match=r"--field.backend tcnn: tinycudann is not installed.*use backend=torch"):
        make_hash_encoding("tcnn", **SMALL_HASH)
    with pytest.raises(NFieldsError, match="backend"):
        make_hash_encoding("cuda", **SMALL_HASH)


@pytest.mark.gpu
def test_tcnn_hash_grid_trains_like_torch():
    if not tcnn_available():
        pytest.skip("needs tinycudann and CUDA")
    torch.manual_seed(0)
    enc = make_hash_encoding("tcnn", in_dim=3, **SMALL_HASH).cuda()
    x = torch.rand(1024, 3, device="cuda")
    y = enc(x)
    assert y.shape == (1024, enc.out_dim) and y.dtype == torch.float32
    y.square().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_hash_position_gradient_is_twice_differentiable():
    # SDF fields take autograd normals (create_graph) and put an Eikonal loss on them.
    torch.manual_seed(0)
    enc = HashGridEncoding(3, **SMALL_HASH)
    with torch.no_grad():
        enc.table.normal_()
    x = (torch.rand(16, 3) * 0.9 + 0.05).requires_grad_()
    (grad,) = torch.autograd.grad(enc(x)[:, 0].sum(), x, create_graph=True)
    (grad.norm(dim=-1) - 1).square().mean().backward()
    assert enc.table.grad is not None and enc.table.grad.abs().sum() > 0
