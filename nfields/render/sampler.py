"""Occupancy-grid ray marching (Instant-NGP / nerfacc style) with a vectorised pure-torch path for CPUs.

Samples sit on a lattice that starts at each ray's ``near`` plane: ``t_0 = near``, ``t_{k+1} = t_k + dt(t_k)`` with
``dt(t) = clamp(t * cone_angle, step_size, inf)`` (constant steps when ``cone_angle == 0``). Interval ``k`` is kept
when its midpoint lies inside ``[max(near, t_box_in), min(far, t_box_out))`` and inside an occupied grid cell — the
same rule nerfacc's ``traverse_grids`` kernel applies, which is what the CUDA path calls.

The torch path never loops over rays: it turns each ray's index range of candidate intervals into one packed array
(``repeat_interleave``), evaluates every candidate's midpoint cell in one gather, and keeps the occupied ones with a
boolean mask; long batches are split into chunks of at most ``max_candidates`` candidates to bound memory. With
constant steps it first discards whole blocks of candidates that lie in empty space (one gather per block of a few
steps, against the grid dilated by a cell), so only the candidates near occupied cells take the exact test.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfields.render import accel
from nfields.render.rays_box import ray_aabb_intersect


class OccupancyGrid(nn.Module):
    """Instant-NGP-style occupancy grid over an aabb: an EMA of max density per cell + a binary mask.

    Buffers (saved in ``state_dict``): ``aabb`` (6,), ``occs`` (R^3,) float EMA of the per-cell occupancy value,
    ``binary`` (R, R, R) bool. Cell ``(i, j, k)`` covers ``aabb_min + [i, i+1) * cell_size`` along x (then y, z);
    ``occs`` is flattened in the same (x-major) order, as nerfacc's ``OccGridEstimator`` does.

    A new grid starts with every cell occupied (:meth:`mark_all`), so rendering before the first update is exact.

    Example:
        >>> grid = OccupancyGrid(torch.tensor([-1.0, -1, -1, 1, 1, 1]), resolution=16)
        >>> grid.update(0, lambda x: (x.norm(dim=-1) < 0.5).float())
        >>> grid.occupied(torch.tensor([[0.0, 0, 0], [0.9, 0.9, 0.9]])).tolist()
        [True, False]
    """

    def __init__(self, aabb: Tensor, resolution: int = 128):
        super().__init__()
        self.resolution = int(resolution)
        r = self.resolution
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(6).clone())
        self.register_buffer("occs", torch.zeros(r**3))
        self.register_buffer("binary", torch.ones(r, r, r, dtype=torch.bool))

    @torch.no_grad()
    def mark_all(self) -> None:
        """Mark every cell occupied (the start state; marching then equals uniform marching inside the aabb)."""
        self.binary.fill_(True)

    def cell_index(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Flat cell index (M,) long (clamped into the grid) and an inside-the-aabb mask (M,) for points x (M, 3)."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        u = (x - lo) / (hi - lo)
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        ijk = (u * self.resolution).long().clamp(0, self.resolution - 1)
        flat = (ijk[:, 0] * self.resolution + ijk[:, 1]) * self.resolution + ijk[:, 2]
        return flat, inside

    def occupied(self, x: Tensor) -> Tensor:
        """(M,) bool: is the cell containing each point (M, 3) occupied? Points outside the aabb are not."""
        flat, inside = self.cell_index(x)
        return self.binary.reshape(-1)[flat] & inside

    def _cells_to_visit(self, step: int, warmup_steps: int) -> Tensor:
        n_cells = self.resolution**3
        dev = self.occs.device
        if step < warmup_steps:
            return torch.arange(n_cells, device=dev)
        # After warmup: a quarter of all cells at random plus (at most as many) currently occupied ones, so empty
        # space is re-checked slowly and occupied space is kept fresh (nerfacc's schedule).
        n = n_cells // 4
        uniform = torch.randint(n_cells, (n,), device=dev)
        occupied = torch.nonzero(self.binary.reshape(-1)).squeeze(-1)
        if occupied.numel() > n:
            occupied = occupied[torch.randint(occupied.numel(), (n,), device=dev)]
        return torch.cat([uniform, occupied])

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n_samples_per_cell: int = 1,
        chunk: int = 65536,
    ) -> None:
        """One EMA update of the grid (call it every few training steps).

        Before ``warmup_steps`` every cell is evaluated, afterwards 1/4 of the cells at random plus the occupied ones.
        Each visited cell gets ``max(occ * ema_decay, max of density_fn over n jittered points in the cell)``; then
        ``binary = occs > min(occ_thre, mean(occs))``.

        Args:
            step: training step (decides warmup vs. partial update).
            density_fn: (M, 3) world points -> (M,) occupancy values (the renderer passes density * step_size, an
                opacity-like value, as nerfacc's examples do; ``occ_thre`` is on that scale).
            occ_thre, ema_decay, warmup_steps: nerfacc's meanings and defaults.
            n_samples_per_cell: jittered points per visited cell (more = fewer missed thin structures).
            chunk: points per ``density_fn`` call (memory bound).
        """
        cells = self._cells_to_visit(step, warmup_steps)
        r = self.resolution
        lo, hi = self.aabb[:3], self.aabb[3:]
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).to(self.occs.dtype)
        occ = torch.zeros(cells.numel(), device=self.occs.device, dtype=self.occs.dtype)
        for _ in range(max(1, n_samples_per_cell)):
            for a in range(0, cells.numel(), chunk):
                c = ijk[a : a + chunk]
                x = lo + (c + torch.rand_like(c)) / r * (hi - lo)
                occ[a : a + chunk] = torch.maximum(occ[a : a + chunk], density_fn(x).reshape(-1).to(occ))
        self.occs[cells] = torch.maximum(self.occs[cells] * ema_decay, occ)
        thre = min(float(occ_thre), self.occs.mean().item())
        self.binary.copy_((self.occs > thre).reshape(r, r, r))

    @torch.no_grad()
    def update_from_sdf(
        self,
        sdf_fn: Callable[[Tensor], Tensor],
        shell: float,
        lipschitz: float = 1.5,
        coarse: int = 4,
        chunk: int = 65536,
    ) -> None:
        """Mark exactly the cells that can hold a sample of an SDF's visible shell ``|sdf| < shell`` (no EMA).

        A cell is occupied when ``|sdf(centre)| < shell + lipschitz * half_diagonal``: exact for an SDF whose
        gradient norm stays below ``lipschitz`` (the Eikonal loss keeps it near 1), so unlike random points per
        cell it never misses a thin shell and it empties cells as soon as the surface leaves them. Hierarchical:
        cells of a ``coarse``-times coarser grid are tested first and only the children of occupied ones are
        evaluated (~1/coarse^2 of the fine cells near a surface), so a whole update costs a few forward passes.
        """
        r = self.resolution
        lo, hi = self.aabb[:3], self.aabb[3:]
        size = hi - lo
        dev = self.occs.device

        def occupied_cells(res: int, cells: Tensor) -> Tensor:
            ijk = torch.stack([cells // (res * res), (cells // res) % res, cells % res], dim=-1).to(lo.dtype)
            half_diag = float((size / res).norm()) / 2
            keep = torch.empty(cells.numel(), dtype=torch.bool, device=dev)
            for a in range(0, cells.numel(), chunk):
                x = lo + (ijk[a : a + chunk] + 0.5) / res * size
                keep[a : a + chunk] = sdf_fn(x).reshape(-1).abs() < shell + lipschitz * half_diag
            return cells[keep]

        f = coarse if coarse > 1 and r % coarse == 0 else 1
        rc = r // f
        cells = occupied_cells(rc, torch.arange(rc**3, device=dev))
        if f > 1:  # children of the occupied coarse cells, in fine indices
            ci, cj, ck = cells // (rc * rc), (cells // rc) % rc, cells % rc
            o = torch.arange(f, device=dev)
            di, dj, dk = torch.meshgrid(o, o, o, indexing="ij")
            fi = (ci[:, None] * f + di.reshape(1, -1)).reshape(-1)
            fj = (cj[:, None] * f + dj.reshape(1, -1)).reshape(-1)
            fk = (ck[:, None] * f + dk.reshape(1, -1)).reshape(-1)
            cells = occupied_cells(r, (fi * r + fj) * r + fk)
        self.occs.zero_()
        self.occs[cells] = 1.0
        self.binary.copy_((self.occs > 0.5).reshape(r, r, r))


@dataclass
class PackedSamples:
    """Samples of N rays, concatenated; each ray's samples are contiguous and front to back (ray_indices sorted).

    ray_indices: (S,) long; t_starts, t_ends: (S,) interval ends along the ray; n_rays: N.
    """

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    n_rays: int

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    @property
    def t_mids(self) -> Tensor:
        """(S,) interval midpoints, where fields are evaluated."""
        return (self.t_starts + self.t_ends) * 0.5

    @property
    def counts(self) -> Tensor:
        """(N,) number of samples per ray."""
        return torch.bincount(self.ray_indices, minlength=self.n_rays)

    @property
    def packed_info(self) -> Tensor:
        """(N, 2) long ``[start, count]`` of each ray's run (nerfacc's packed_info)."""
        counts = self.counts
        return torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)


def _lattice(k: Tensor, near: Tensor, step_size: float, cone_angle: float, k1: Tensor | None) -> Tensor:
    """t_k of the marching lattice (float k allowed; k1 = index where cone steps start, None for uniform)."""
    t_uniform = near + k * step_size
    if k1 is None:
        return t_uniform
    t_k1 = near + k1 * step_size
    t_cone = t_k1 * torch.exp((k - k1).clamp_min(0) * math.log1p(cone_angle))
    return torch.where(k <= k1, t_uniform, t_cone)


def _lattice_index(t: Tensor, near: Tensor, step_size: float, cone_angle: float, k1: Tensor | None) -> Tensor:
    """Inverse of :func:`_lattice`: the (fractional) lattice index at distance t."""
    k_uniform = (t - near) / step_size
    if k1 is None:
        return k_uniform
    t_k1 = near + k1 * step_size
    k_cone = k1 + torch.log(t.clamp_min(1e-30) / t_k1.clamp_min(1e-30)) / math.log1p(cone_angle)
    return torch.where(t <= t_k1, k_uniform, k_cone)


def march_rays_torch(
    origins: Tensor,
    dirs: Tensor,
    near: Tensor,
    far: Tensor,
    step_size: float,
    binary: Tensor | None,
    aabb: Tensor,
    cone_angle: float = 0.0,
    max_candidates: int = 1 << 22,
    blocks: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch twin of the nerfacc traversal: ``(ray_indices, t_starts, t_ends)`` packed and sorted by ray.

    Args:
        origins, dirs: (N, 3); near, far: (N,) per-ray planes (already jittered if stratified);
        step_size: minimum step; binary: (R, R, R) bool occupancy over ``aabb`` or None (no skipping);
        aabb: (6,); cone_angle: step growth with t; max_candidates: candidates evaluated per chunk; blocks: skip
        empty space in blocks first (below; the same samples, fewer candidates).

    With ``cone_angle > 0`` the lattice is the ideal geometric one; nerfacc keeps ``dt`` frozen while it skips empty
    cells, so its sample positions differ there (both are valid marchings; the parity test uses cone_angle = 0).

    Blocks (``cone_angle == 0`` with a grid): each ray's candidates are first taken ``B`` at a time, a block kept
    when its midpoint lies in the grid dilated by one cell, with ``B`` the most steps for which every candidate
    midpoint of the block lies within one cell (per axis) of the block's midpoint, so no block holding an
    occupied candidate is dropped; the kept blocks' candidates then take the exact test. Surfaces fill a small part
    of the box, so far fewer candidates reach the exact test (the output is identical).
    """
    dev = origins.device
    t_in, t_out, hit = ray_aabb_intersect(origins, dirs, aabb)
    t_entry = torch.maximum(near, t_in)
    t_exit = torch.minimum(far, t_out)
    valid = hit & (t_exit > t_entry)
    k1 = None
    if cone_angle > 0:
        # Steps stay at step_size while t * cone_angle < step_size, i.e. for t below step_size / cone_angle.
        k1 = torch.ceil((step_size / cone_angle - near) / step_size).clamp_min(0)
    # Candidate index range, one interval of margin on both ends against rounding; the exact rule is applied below.
    k_lo = (torch.floor(_lattice_index(t_entry, near, step_size, cone_angle, k1)) - 1).clamp_min(0)
    k_hi = torch.ceil(_lattice_index(t_exit, near, step_size, cone_angle, k1))
    counts = torch.where(valid, (k_hi - k_lo + 1).clamp_min(0), torch.zeros_like(k_hi)).long()
    k_lo = torch.where(valid, k_lo, torch.zeros_like(k_lo)).long()

    flat_binary = binary.reshape(-1) if binary is not None else None
    res = binary.shape[0] if binary is not None else 1
    lo, hi = aabb[:3].to(origins), aabb[3:].to(origins)

    def exact(ri: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Candidates (ray ri, lattice index k) whose midpoint is in the ray's range and an occupied cell."""
        k = k.to(origins.dtype)
        r_k1 = k1[ri] if k1 is not None else None
        t0 = _lattice(k, near[ri], step_size, cone_angle, r_k1)
        t1 = _lattice(k + 1, near[ri], step_size, cone_angle, r_k1)
        mid = (t0 + t1) * 0.5
        keep = (mid >= t_entry[ri]) & (mid < t_exit[ri])
        if flat_binary is not None:
            keep &= flat_binary[_cells(origins[ri] + dirs[ri] * mid[:, None], lo, hi, res)]
        return ri[keep], t0[keep], t1[keep]

    block = 1
    if blocks and flat_binary is not None and cone_angle == 0:
        block = int(0.999 * 2.0 * float(((hi - lo) / res).min()) / step_size) + 1  # (B - 1) / 2 steps < one cell
    dilated = _dilated(binary) if block >= 3 else None
    block = block if dilated is not None else 1
    n_blocks = (counts + block - 1) // block
    out: list[tuple[Tensor, Tensor, Tensor]] = []
    # Chunks over rays so that no chunk holds more than max_candidates candidates (one ray may exceed it).
    for a, b in _chunks(n_blocks, max(1, max_candidates // block)):
        c = n_blocks[a:b]
        m = int(c.sum())
        if m == 0:
            continue
        ri = torch.repeat_interleave(torch.arange(a, b, device=dev), c)
        j = torch.arange(m, device=dev) - (torch.cumsum(c, 0) - c)[ri - a]  # block (= candidate) number in its ray
        if dilated is None:
            out.append(exact(ri, k_lo[ri] + j))
            continue
        # Blocks first: kept when the block's midpoint is in the dilated grid (see the docstring).
        mid = near[ri] + ((k_lo[ri] + j * block).to(origins.dtype) + 0.5 * block) * step_size
        keep = dilated[_cells(origins[ri] + dirs[ri] * mid[:, None], lo, hi, res)]
        ri, j = ri[keep], j[keep]
        # The kept blocks' candidates (a ray's last block may be partial).
        jj = (j[:, None] * block + torch.arange(block, device=dev)).reshape(-1)
        ri = ri.repeat_interleave(block)
        inside = jj < counts[ri]
        ri, jj = ri[inside], jj[inside]
        out.append(exact(ri, k_lo[ri] + jj))
    if not out:
        empty = origins.new_zeros(0)
        return torch.zeros(0, dtype=torch.long, device=dev), empty, empty.clone()
    return tuple(torch.cat(parts) for parts in zip(*out))  # type: ignore[return-value]


_DILATED: dict[str, object] = {}


def _dilated(binary: Tensor) -> Tensor:
    """The grid (R, R, R) dilated by one cell (3x3x3 max), flat. The last result is kept for the same tensor at the
    same version (a training run marches one grid for ``grid_update_every`` steps; updates are in place and bump
    the version)."""
    src = _DILATED.get("src")
    if src is None or src() is not binary or _DILATED.get("version") != binary._version:
        pooled = F.max_pool3d(binary[None, None].float(), 3, stride=1, padding=1)
        _DILATED.update(src=weakref.ref(binary), version=binary._version, out=pooled.reshape(-1) > 0)
    return _DILATED["out"]  # type: ignore[return-value]


def _cells(x: Tensor, lo: Tensor, hi: Tensor, res: int) -> Tensor:
    """Flat cell index (M,) of points (M, 3) in an (R, R, R) grid over [lo, hi], clamped to the grid."""
    ijk = ((x - lo) / (hi - lo) * res).long().clamp(0, res - 1)
    return (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]


def _chunks(counts: Tensor, max_items: int) -> list[tuple[int, int]]:
    """Ray ranges [a, b) holding at most ``max_items`` of ``counts`` each (a single ray may exceed it)."""
    n = counts.shape[0]
    ends = torch.cumsum(counts, 0)
    bounds = [0]
    while bounds[-1] < n:
        start = int(ends[bounds[-1] - 1]) if bounds[-1] > 0 else 0
        nxt = int(torch.searchsorted(ends, start + max_items, right=True))
        bounds.append(min(n, max(nxt, bounds[-1] + 1)))
    return list(zip(bounds[:-1], bounds[1:]))


def march_rays(
    origins: Tensor,
    dirs: Tensor,
    near: Tensor | float,
    far: Tensor | float,
    step_size: float,
    grid: OccupancyGrid | None,
    aabb: Tensor,
    cone_angle: float = 0.0,
    stratified: bool = False,
) -> PackedSamples:
    """March N rays through ``aabb`` with fixed (or cone-growing) steps, skipping cells the grid marks empty.

    Args:
        origins: (N, 3); dirs: (N, 3) unit directions.
        near, far: scalars or (N,) planes; sampling covers ``[max(near, t_box_in), min(far, t_box_out))``.
        step_size: step length (``aabb diagonal / n_steps`` is the usual choice).
        grid: occupancy grid with ``grid.aabb == aabb`` (its binary mask decides which midpoints survive), or None
            to keep all.
        aabb: (6,) box outside which nothing is sampled.
        cone_angle: > 0 makes the step ``clamp(t * cone_angle, step_size)`` (fewer samples far away).
        stratified: jitter each ray's lattice by ``U[0, step_size)`` (training) instead of starting at ``near``.

    Returns:
        :class:`PackedSamples` sorted by ray. CUDA tensors with nerfacc available go through
        ``nerfacc.grid.traverse_grids``; everything else through :func:`march_rays_torch`.

    Example:
        >>> o = torch.tensor([[0.0, 0.0, -2.0]])
        >>> d = torch.tensor([[0.0, 0.0, 1.0]])
        >>> s = march_rays(o, d, 0.0, 1e10, 0.25, None, torch.tensor([-1.0, -1, -1, 1, 1, 1]))
        >>> len(s), s.t_starts[0].item(), s.t_ends[-1].item()
        (8, 1.0, 3.0)
    """
    n = origins.shape[0]
    near_t = torch.as_tensor(near, dtype=origins.dtype, device=origins.device).expand(n).clone()
    far_t = torch.as_tensor(far, dtype=origins.dtype, device=origins.device).expand(n).contiguous()
    if stratified:
        near_t = near_t + torch.rand_like(near_t) * step_size
    aabb = aabb.to(origins)
    if grid is not None and not torch.equal(grid.aabb.to(aabb), aabb):
        raise ValueError("march_rays: grid.aabb must equal aabb (the grid's cells are laid over that box)")
    if origins.is_cuda and accel.cuda_available():
        binary = grid.binary if grid is not None else torch.ones(1, 1, 1, dtype=torch.bool, device=origins.device)
        ri, t0, t1 = accel.traverse_grid_cuda(origins, dirs, binary, aabb, near_t, far_t, step_size, cone_angle)
    else:
        binary = grid.binary if grid is not None else None
        ri, t0, t1 = march_rays_torch(origins, dirs, near_t, far_t, step_size, binary, aabb, cone_angle)
    return PackedSamples(ri, t0, t1, n)
