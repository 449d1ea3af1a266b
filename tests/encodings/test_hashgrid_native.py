"""The fused C++ hash-grid kernels against their pure-torch twin (the level-by-level code in hashgrid.py)."""

import pytest
import torch

from nfields.encodings import hashgrid_native
from nfields.encodings.hashgrid import HashGridEncoding

pytestmark = pytest.mark.skipif(
    hashgrid_native.native_kernels() is None, reason="the fused hash-grid kernels need a C++ compiler (g++)"
)

CONFIGS = [
    (3, 2, dict(levels=6, log2_table=12, base_res=4, finest_res=96)),  # dense and hashed levels
    (3, 4, dict(levels=3, log2_table=11, base_res=8, finest_res=64)),
    (2, 2, dict(levels=5, log2_table=10, base_res=4, finest_res=256)),
    (1, 1, dict(levels=3, log2_table=10, base_res=4, finest_res=2000)),
]


def _run(enc, x, w, native):
    """Encoding, its position gradient (weighted by w) and the table and head gradients of an Eikonal-style loss."""
    enc.native = native
    enc.table.grad = None
    xg = x.clone().requires_grad_()
    out = enc(xg)
    (gx,) = torch.autograd.grad((out * w).sum(), xg, create_graph=True)
    (out.square().sum() + ((gx.norm(dim=-1) - 1) ** 2).sum()).backward()
    return out.detach(), gx.detach(), enc.table.grad.clone()


@pytest.mark.parametrize("in_dim,features,opts", CONFIGS)
@pytest.mark.parametrize("drop_levels", [0, 2])
def test_native_matches_torch(in_dim, features, opts, drop_levels):
    """Values, position gradients and the table gradient through the double backward agree with the torch code, for
    points outside [0, 1] (clamped, zero gradient) and with coarse-to-fine levels switched off."""
    gen = torch.Generator().manual_seed(0)
    enc = HashGridEncoding(in_dim, features_per_level=features, init_scale=1.0, **opts)
    enc.active_levels = enc.levels - drop_levels
    x = torch.rand(2000, in_dim, generator=gen) * 1.2 - 0.1
    w = torch.randn(2000, enc.out_dim, generator=gen)
    ref, got = _run(enc, x, w, False), _run(enc, x, w, True)
    assert enc._use_native(x)
    for a, b in zip(ref, got):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))
    outside = (x < 0) | (x > 1)
    assert outside.any() and (got[1][outside] == 0).all()
    if drop_levels:
        assert (got[0][:, enc.n_active() * features :] == 0).all()


def test_native_table_gradient_only_and_bad_points():
    """Without position gradients only the table's is taken; NaN/inf positions encode like clamped ones instead of
    reading outside the table."""
    enc = HashGridEncoding(3, levels=4, log2_table=10, base_res=4, finest_res=64, init_scale=1.0)
    x = torch.rand(100, 3)
    x[0] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    out = enc(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], enc(torch.tensor([[0.0, 1.0, 0.0]]))[0])
    out.sum().backward()
    enc.native = False
    g = enc.table.grad.clone()
    enc.table.grad = None
    enc(x[1:]).sum().backward()
    g_ref = enc.table.grad
    enc.native = True
    enc.table.grad = None
    enc(x[1:]).sum().backward()
    torch.testing.assert_close(enc.table.grad, g_ref, rtol=1e-5, atol=1e-6)
    assert g.abs().sum() > 0


def test_native_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("NFIELDS_NATIVE", "0")
    assert hashgrid_native.native_kernels() is None
    enc = HashGridEncoding(3, levels=2, log2_table=10, base_res=4, finest_res=16)
    assert not enc._use_native(torch.rand(4, 3))
