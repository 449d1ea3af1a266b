"""Ray/box and ray/sphere intersections vs brute force; packed compositing vs a per-ray Python loop; the torch
marcher vs a per-ray reference of nerfacc's traversal rule; occupancy-grid semantics."""

from __future__ import annotations

import math

import pytest
import torch

from nfields.render.rays_box import ray_aabb_intersect, ray_sphere_intersect
from nfields.render.sampler import OccupancyGrid, march_rays
from nfields.render.volume import (
    accumulate_along_rays,
    exclusive_sum_packed,
    render_weight_from_alpha,
    render_weight_from_density,
)

AABB = torch.tensor([-1.0, -0.5, -0.8, 1.0, 0.7, 0.6])


def _random_rays(n: int, seed: int = 0, spread: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    o = (torch.rand(n, 3, generator=g) - 0.5) * 2 * spread
    target = (torch.rand(n, 3, generator=g) - 0.5) * 2.0
    d = target - o
    return o, d / d.norm(dim=-1, keepdim=True)


T_MAX, N_T = 12.0, 24001
SPACING = T_MAX / (N_T - 1)


def _brute_intervals(o, d, inside_fn):
    """First and last t in [0, T_MAX] where inside_fn holds, on a fine grid, for all rays at once.

    Returns (first (N,), last (N,), any (N,) bool)."""
    t = torch.linspace(0.0, T_MAX, N_T, dtype=torch.float64)
    x = o.double()[:, None] + t[None, :, None] * d.double()[:, None]
    ins = inside_fn(x)  # (N, T)
    idx = torch.arange(N_T)
    first = torch.where(ins, idx, N_T).amin(-1).clamp(max=N_T - 1)
    last = torch.where(ins, idx, -1).amax(-1).clamp(min=0)
    return t[first], t[last], ins.any(-1)


def test_ray_aabb_matches_brute_force():
    o, d = _random_rays(64)
    t0, t1, hit = ray_aabb_intersect(o, d, AABB)
    lo, hi = AABB[:3].double(), AABB[3:].double()
    first, last, seen = _brute_intervals(o, d, lambda x: ((x >= lo) & (x <= hi)).all(-1))
    # A box hit so thin that the grid skips it has a chord shorter than the grid spacing.
    assert torch.all(seen <= hit) and torch.all((hit & ~seen) <= ((t1 - t0) < 2 * SPACING))
    assert torch.allclose(t0.clamp_min(0)[seen].double(), first[seen], atol=2 * SPACING)
    assert torch.allclose(t1[seen].double(), last[seen], atol=2 * SPACING)
    assert int(seen.sum()) > 20  # the rays aim at the box region, most hit


def test_ray_aabb_axis_parallel_and_inside():
    o = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -3.0], [2.0, 0.0, -3.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    t0, t1, hit = ray_aabb_intersect(o, d, AABB)
    assert hit.tolist() == [True, True, False]
    assert t0[0].item() == pytest.approx(-1.0) and t1[0].item() == pytest.approx(1.0)
    assert t0[1].item() == pytest.approx(2.2) and t1[1].item() == pytest.approx(3.6)
    assert t0[2].item() == 0.0 and t1[2].item() == 0.0


def test_ray_sphere_matches_brute_force():
    o, d = _random_rays(64, seed=1)
    c, r = torch.tensor([0.1, -0.2, 0.3]), 0.6
    t0, t1, hit = ray_sphere_intersect(o, d, c, r)
    first, last, seen = _brute_intervals(o, d, lambda x: (x - c.double()).norm(dim=-1) <= r)
    assert torch.all(seen <= hit) and torch.all((hit & ~seen) <= ((t1 - t0) < 0.05))
    assert torch.allclose(t0.clamp_min(0)[seen].double(), first[seen], atol=2 * SPACING)
    assert torch.allclose(t1[seen].double(), last[seen], atol=2 * SPACING)
    assert int(seen.sum()) > 10
    # Hit points lie on the sphere.
    p = o[hit] + t0[hit, None] * d[hit]
    assert torch.allclose((p - c).norm(dim=-1), torch.full((int(hit.sum()),), r), atol=1e-5)


def _random_packed(n_rays: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 9, (n_rays,), generator=g)
    counts[3] = 0  # always some empty rays
    ri = torch.repeat_interleave(torch.arange(n_rays), counts)
    s = len(ri)
    dt = torch.rand(s, generator=g) * 0.3 + 0.01
    t0 = torch.rand(s, generator=g)  # positions do not matter for compositing, only dt
    sig = torch.rand(s, generator=g) * 5.0
    return ri, t0, t0 + dt, sig, g


def test_weights_from_density_match_per_ray_loop():
    n = 40
    ri, t0, t1, sig, _ = _random_packed(n)
    w, trans, alpha = render_weight_from_density(t0, t1, sig, ri, n)
    ref_w, ref_t, ref_a = torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w)
    for r in range(n):
        T = 1.0
        for s in torch.nonzero(ri == r).squeeze(-1).tolist():
            a = 1.0 - math.exp(-sig[s].item() * (t1[s] - t0[s]).item())
            ref_t[s], ref_a[s], ref_w[s] = T, a, T * a
            T *= 1.0 - a
    assert torch.allclose(w, ref_w, atol=1e-6)
    assert torch.allclose(trans, ref_t, atol=1e-6)
    assert torch.allclose(alpha, ref_a, atol=1e-6)
    # Accumulation: colour and opacity per ray.
    rgb = torch.rand(len(ri), 3)
    acc = accumulate_along_rays(w, rgb, ri, n)
    opa = accumulate_along_rays(w, None, ri, n)
    for r in range(n):
        m = ri == r
        assert torch.allclose(acc[r], (ref_w[m, None] * rgb[m]).sum(0), atol=1e-6)
        assert opa[r, 0].item() == pytest.approx(ref_w[m].sum().item(), abs=1e-6)
    assert opa[3, 0].item() == 0.0


def test_weights_from_alpha_match_per_ray_loop_with_opaque_samples():
    n = 30
    ri, _, _, _, g = _random_packed(n, seed=2)
    alphas = torch.rand(len(ri), generator=g)
    alphas[::7] = 1.0  # fully opaque samples: everything behind them gets zero weight, never nan
    w, trans = render_weight_from_alpha(alphas, ri, n)
    assert torch.isfinite(w).all() and torch.isfinite(trans).all()
    for r in range(n):
        T = 1.0
        for s in torch.nonzero(ri == r).squeeze(-1).tolist():
            assert trans[s].item() == pytest.approx(T, abs=1e-6)
            assert w[s].item() == pytest.approx(T * alphas[s].item(), abs=1e-6)
            T *= 1.0 - alphas[s].item()


def test_compositing_gradients_match_finite_differences():
    ri = torch.tensor([0, 0, 0, 2, 2])
    t0 = torch.tensor([0.0, 0.1, 0.3, 0.0, 0.2], dtype=torch.float64)
    t1 = t0 + torch.tensor([0.1, 0.2, 0.1, 0.2, 0.3], dtype=torch.float64)
    sig = torch.tensor([1.0, 3.0, 0.5, 2.0, 4.0], dtype=torch.float64, requires_grad=True)
    col = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)

    def f(s, c):
        w, _, _ = render_weight_from_density(t0, t1, s, ri, 3)
        return accumulate_along_rays(w, c, ri, 3)

    assert torch.autograd.gradcheck(f, (sig, col))
    a = torch.tensor([0.2, 0.5, 0.9, 0.3, 0.6], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: render_weight_from_alpha(a, ri, 3)[0], (a,))


def test_exclusive_sum_packed_long_array_keeps_precision():
    # 200k samples of 1 ray + 1 short ray after it: float32 cumsum would lose ~1e-2 here; float64 keeps it exact.
    v = torch.full((200_003,), 0.1)
    ri = torch.zeros(200_003, dtype=torch.long)
    ri[-3:] = 1
    ex = exclusive_sum_packed(v, ri)
    assert ex[-3:].tolist() == pytest.approx([0.0, 0.1, 0.2], abs=1e-6)
    assert ex[-4].item() == pytest.approx(0.1 * 199_999, rel=1e-6)


def _reference_march(o, d, near, far, step, cone, aabb, occupied_fn):
    """nerfacc's rule, one ray at a time, in float64."""
    t0, t1, hit = ray_aabb_intersect(o[None].double(), d[None].double(), aabb.double())
    if not hit[0]:
        return []
    t_entry, t_exit = max(near, t0.item()), min(far, t1.item())
    out, t = [], near
    while True:
        dt = max(t * cone, step)
        mid = t + dt / 2
        if mid >= t_exit:
            break
        if mid >= t_entry and occupied_fn((o.double() + d.double() * mid)[None].float())[0]:
            out.append((t, t + dt))
        t += dt
    return out


@pytest.mark.parametrize("cone", [0.0, 0.05])
def test_march_rays_matches_per_ray_reference(cone):
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    grid = OccupancyGrid(aabb, resolution=8)
    torch.manual_seed(0)
    grid.binary.copy_(torch.rand(8, 8, 8) < 0.4)
    o, d = _random_rays(24, seed=3)
    near = torch.rand(24) * 0.5
    step = 0.037
    s = march_rays(o, d, near, 1e10, step, grid, aabb, cone_angle=cone)
    assert torch.all(s.ray_indices[1:] >= s.ray_indices[:-1])
    total = 0
    for i in range(24):
        ref = _reference_march(o[i], d[i], near[i].item(), 1e10, step, cone, aabb, grid.occupied)
        m = s.ray_indices == i
        assert int(m.sum()) == len(ref), f"ray {i}"
        if ref:
            ref_t = torch.tensor(ref, dtype=torch.float32)
            assert torch.allclose(s.t_starts[m], ref_t[:, 0], atol=1e-4)
            assert torch.allclose(s.t_ends[m], ref_t[:, 1], atol=1e-4)
        total += len(ref)
    assert total > 100
    info = s.packed_info
    assert info[:, 1].sum().item() == len(s) and torch.equal(info[1:, 0], torch.cumsum(info[:, 1], 0)[:-1])


def test_march_rays_chunked_equals_unchunked_and_far_plane_clips():
    from nfields.render.sampler import march_rays_torch

    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    o, d = _random_rays(50, seed=4)
    near, far = torch.zeros(50), torch.full((50,), 4.0)
    a = march_rays_torch(o, d, near, far, 0.01, None, aabb)
    b = march_rays_torch(o, d, near, far, 0.01, None, aabb, max_candidates=97)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    mids = (a[1] + a[2]) / 2
    assert mids.max().item() < 4.0
    # Without a grid every sample of a hit ray is inside the box and the steps are uniform.
    x = o[a[0]] + d[a[0]] * mids[:, None]
    assert ((x >= aabb[:3] - 1e-5) & (x <= aabb[3:] + 1e-5)).all()
    assert torch.allclose(a[2] - a[1], torch.full_like(a[1], 0.01), atol=1e-5)


def test_march_rays_blocks_give_the_same_samples():
    """Skipping empty space a block of steps at a time (a one-cell-dilated grid at block midpoints) keeps exactly
    the samples of the candidate-by-candidate marcher: thin shells, a random grid, jittered starts, rays that start
    inside the box, chunking, boxes that are not cubes and steps of several sizes."""
    from nfields.render.sampler import march_rays_torch

    gen = torch.Generator().manual_seed(7)
    for aabb, res, step in [
        (torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), 64, 2 * 3**0.5 / 384),
        (torch.tensor([-1.0, -0.5, -2.0, 1.5, 0.5, 1.0]), 32, 0.013),
        (torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), 16, 0.004),
    ]:
        lo, hi = aabb[:3], aabb[3:]
        c = (torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1) + 0.5) / res
        x = lo + c * (hi - lo)
        shell = ((x - (lo + hi) / 2).norm(dim=-1) - 0.6).abs() < 1.0 / res  # a thin sphere shell
        noise = torch.rand(res, res, res, generator=gen) < 0.002  # and isolated cells
        for binary in (shell | noise, noise):
            o, d = _random_rays(400, seed=int(res))
            o = torch.cat([o, (torch.rand(40, 3, generator=gen) - 0.5) * (hi - lo) * 0.8 + (lo + hi) / 2])
            d = torch.cat([d, torch.nn.functional.normalize(torch.randn(40, 3, generator=gen), dim=-1)])
            near = torch.rand(len(o), generator=gen) * step
            far = torch.full((len(o),), 3.5)
            ref = march_rays_torch(o, d, near, far, step, binary, aabb, blocks=False)
            for chunk in (1 << 22, 1000):
                got = march_rays_torch(o, d, near, far, step, binary, aabb, max_candidates=chunk)
                for a, b in zip(ref, got):
                    assert torch.equal(a, b)
            assert len(ref[0]) > 0


def test_occupancy_grid_update_semantics():
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    grid = OccupancyGrid(aabb, resolution=16)
    assert grid.binary.all()  # start state: everything occupied
    calls = []

    def density(x):
        calls.append(len(x))
        return 5.0 * (x.norm(dim=-1) < 0.5).float()

    for step in range(4):
        grid.update(step, density, warmup_steps=4)
    assert sum(calls) == 4 * 16**3  # warmup: every cell each time
    centre = grid.occupied(torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.9, 0.9, 0.9], [3.0, 0.0, 0.0]]))
    assert centre.tolist() == [True, True, False, False]
    frac = grid.binary.float().mean().item()
    sphere_frac = 4 / 3 * math.pi * 0.5**3 / 8
    assert sphere_frac * 0.9 < frac < sphere_frac * 2.0  # the sphere's cells plus its boundary shell
    # After warmup: a quarter of the cells + occupied ones; the EMA decays cells that emptied.
    calls.clear()
    occs_before = grid.occs.clone()
    n_bin = int(grid.binary.sum())
    grid.update(10, lambda x: density(x) * 0.0, warmup_steps=4)
    assert sum(calls) == 16**3 // 4 + min(n_bin, 16**3 // 4)
    visited = grid.occs < occs_before
    assert torch.allclose(grid.occs[visited], occs_before[visited] * 0.95)
    # State dict round trip.
    g2 = OccupancyGrid(aabb, resolution=16)
    g2.load_state_dict(grid.state_dict())
    assert torch.equal(g2.binary, grid.binary) and torch.equal(g2.occs, grid.occs)
