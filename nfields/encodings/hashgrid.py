"""Instant-NGP multiresolution hash encoding in pure torch (the CPU hot path; tcnn.py has the CUDA twin).

All levels share one flat table ``(total_rows, features_per_level)``; level ``l`` owns rows
``offsets[l] : offsets[l] + sizes[l]``. A level whose vertex grid ``(res_l + 1)^d`` fits in ``2^log2_table`` rows is
stored densely (row = x + y*n + z*n^2); finer levels hash the integer vertex with the primes
(1, 2654435761, 805459861) XOR-combined, modulo the table size, exactly as tcnn does with uint32 arithmetic.

Speed notes (2-core CPU, 65536 points, default config, forward + backward): the first straightforward version
(all levels in one tensor, (N, L, 8) layout, advanced indexing) took ~780 ms; this one ~200 ms. What mattered:
- point axis last, (2^d, L, N) layout: elementwise ops run over long contiguous rows; broadcasting over small
  trailing dims (.., 8, 2) was 5-10x slower per element;
- one level at a time (a Python loop): the (2^d, N) temporaries stay in cache; an all-levels tensor streams through
  DRAM at every op (measured 1.3-2.6x slower, despite fewer kernel launches);
- the gather reads each 2-float row as one float64 via ``index_select`` (2-3x faster than ``table[rows]``);
- a custom autograd function for the table gradient: feature planes weighted separately, ``index_add_`` with int64
  indices (int32 indices hit a 5x slower kernel), one gradient buffer for all levels;
- int32 vertex arithmetic: half the memory traffic of int64 and the same wrap-around as tcnn's uint32 hash.
When the positions need gradients (SDF normals, Eikonal loss) plain autograd ops are used instead (slower backward,
but twice differentiable).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nfields.errors import NFieldsError

# tcnn's primes; 2654435761 does not fit int32, so it is stored wrapped (same low 32 bits => same hash).
PRIMES = (1, 2654435761, 805459861)


def _wrap_int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def level_resolutions(levels: int, base_res: int, finest_res: int) -> list[int]:
    """Instant-NGP level resolutions (cells per side) ``floor(base_res * b^l)``, l = 0..levels-1,
    with growth ``b = exp((ln finest_res - ln base_res) / (levels - 1))``."""
    growth = math.exp((math.log(finest_res) - math.log(base_res)) / (levels - 1)) if levels > 1 else 1.0
    # The tiny epsilon keeps floor(16 * 2.0^1) from landing on 31.999...
    return [int(math.floor(base_res * growth**l + 1e-6)) for l in range(levels)]


def check_hashgrid_options(levels: int, features_per_level: int, log2_table: int, base_res: int, finest_res: int):
    """Raise :class:`NFieldsError` naming the first out-of-range hash-grid option."""
    if levels < 1 or levels > 32:
        raise NFieldsError(f"--field.levels {levels}: must be in 1..32")
    if features_per_level not in (1, 2, 4, 8):
        raise NFieldsError(f"--field.features_per_level {features_per_level}: must be one of 1, 2, 4, 8")
    if not 10 <= log2_table <= 24:
        raise NFieldsError(f"--field.log2_table {log2_table}: must be in 10..24")
    if base_res < 2:
        raise NFieldsError(f"--field.base_res {base_res}: must be >= 2")
    if finest_res < base_res:
        raise NFieldsError(f"--field.finest_res {finest_res}: must be >= base_res ({base_res})")


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding (Müller et al. 2022), pure torch.

    Input (N, in_dim) in [0, 1] (clamped); output (N, levels * features_per_level), coarsest level first,
    float32. Differentiable w.r.t. both the table and the input positions (double backward works too, so SDF
    fields can take autograd normals and an Eikonal loss).

    Example::

        >>> enc = HashGridEncoding(3, levels=8, log2_table=15, finest_res=256)
        >>> enc(torch.rand(4, 3)).shape
        torch.Size([4, 16])
    """

    levels_per_group: int = 1
    """Levels vectorised together (1 = a Python loop over levels, measured fastest on CPU; see __init__)."""

    def __init__(
        self,
        in_dim: int = 3,
        levels: int = 16,
        features_per_level: int = 2,
        log2_table: int = 19,
        base_res: int = 16,
        finest_res: int = 2048,
        init_scale: float = 1e-4,
    ):
        super().__init__()
        if in_dim not in (1, 2, 3):
            raise NFieldsError(f"HashGridEncoding in_dim {in_dim}: must be 1, 2 or 3")
        check_hashgrid_options(levels, features_per_level, log2_table, base_res, finest_res)
        self.in_dim, self.levels, self.features_per_level = in_dim, levels, features_per_level
        self.log2_table, self.base_res, self.finest_res = log2_table, base_res, finest_res
        self.out_dim = levels * features_per_level
        table_size = 2**log2_table
        self.resolutions = level_resolutions(levels, base_res, finest_res)
        self.dense = [(r + 1) ** in_dim <= table_size for r in self.resolutions]
        self.sizes = [(r + 1) ** in_dim if d else table_size for r, d in zip(self.resolutions, self.dense)]
        offsets = [0]
        for s in self.sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.offsets = offsets
        self.table = nn.Parameter(torch.empty(sum(self.sizes), features_per_level).uniform_(-init_scale, init_scale))

        # Levels are processed in small groups of one kind (dense or hashed), each with its constants as buffers.
        # One level per group measured fastest on CPU: the per-level temporaries (2^d x N) stay in cache, while
        # all-levels-at-once tensors (2^d x L x N) stream through DRAM at every elementwise op.
        self._groups: list[tuple[str, bool]] = []
        self._group_starts: list[int] = []
        # Coarse-to-fine training (Neuralangelo): only the first ``active_levels`` levels contribute; the finer ones
        # are neither evaluated nor trained and encode as zeros. All levels by default.
        self.active_levels = levels
        start = 0
        while start < levels:
            stop = start + 1
            while stop < levels and stop - start < self.levels_per_group and self.dense[stop] == self.dense[start]:
                stop += 1
            lv, hashed, name = range(start, stop), not self.dense[start], f"g{start}"
            res = torch.tensor([self.resolutions[l] for l in lv], dtype=torch.float32)
            if hashed:
                mult = torch.tensor([[_wrap_int32(p) for p in PRIMES[:in_dim]]] * len(lv), dtype=torch.int32)
            else:
                mult = torch.tensor([[(self.resolutions[l] + 1) ** j for j in range(in_dim)] for l in lv])
            self.register_buffer(f"_{name}_res", res, persistent=False)
            self.register_buffer(f"_{name}_mult", mult.T.contiguous().to(torch.int32), persistent=False)  # (d, G)
            self.register_buffer(
                f"_{name}_offset", torch.tensor([offsets[l] for l in lv], dtype=torch.int32), persistent=False
            )
            self._groups.append((name, hashed))
            self._group_starts.append(start)
            start = stop

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, levels={self.levels}, features_per_level={self.features_per_level}, "
            f"log2_table={self.log2_table}, res={self.resolutions[0]}..{self.resolutions[-1]}, "
            f"dense_levels={sum(self.dense)}"
        )

    def n_active(self) -> int:
        """Levels in use: ``active_levels`` clamped to 1..levels (coarse-to-fine training lowers it)."""
        return min(max(int(self.active_levels), 1), self.levels)

    def param_groups(self, lr: float) -> list[dict]:
        """The table in its own group without weight decay (Instant-NGP regularises only the MLP)."""
        return [{"params": [self.table], "lr": lr, "weight_decay": 0.0}]

    def corner_indices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Flat table rows and d-linear weights of every level's 2^d cell corners.

        x: (N, in_dim) in [0, 1]. Returns ``rows`` (2^d, levels, N) int32 into ``table`` and ``weights``
        (2^d, levels, N) float (differentiable w.r.t. x). Corner c has bit ``d-1-j`` set when it takes the upper
        vertex on axis j. The point axis is last so every elementwise op runs over long contiguous rows (broadcasting
        over small trailing dims is 5-10x slower on CPU).
        """
        parts = [self._group_corners(x.clamp(0.0, 1.0).T, name, hashed) for name, hashed in self._groups]
        return torch.cat([r for r, _ in parts], dim=1), torch.cat([w for _, w in parts], dim=1)

    def _group_corners(self, xt: Tensor, name: str, hashed: bool) -> tuple[Tensor, Tensor]:
        """Rows and weights (2^d, G, N) of one level group; ``xt`` (d, N) is the clamped, transposed input."""
        res: Tensor = getattr(self, f"_{name}_res")  # (G,)
        mult: Tensor = getattr(self, f"_{name}_mult")[..., None]  # (d, G, 1) int32
        offset: Tensor = getattr(self, f"_{name}_offset")[:, None]  # (G, 1) int32
        d, g, n = self.in_dim, res.shape[0], xt.shape[1]
        pos = xt[:, None, :] * res[:, None]  # (d, G, N)
        with torch.no_grad():
            # Clamp the lower vertex to res-1 so x = 1 interpolates inside the last cell (weight 1 on its top).
            lower = torch.minimum(pos.detach().floor(), (res - 1)[:, None])
            base = lower.to(torch.int32) * mult  # int32 products wrap exactly like tcnn's uint32 hash
            cand = torch.stack([base, base + mult], dim=1)  # (d, 2, G, N): lower / upper vertex per axis
            rows = cand[0]
            if not hashed:
                rows = rows + offset  # dense rows never wrap, so the offset can go in first (one pass less)
            for j in range(1, d):
                # Broadcasting over leading dims doubles the corner count per axis: 2^j x 2 -> 2^(j+1).
                rows = (rows[:, None] ^ cand[j, None]) if hashed else (rows[:, None] + cand[j, None])
                rows = rows.reshape(2 ** (j + 1), g, n)
            if hashed:
                rows = rows.bitwise_and_(2**self.log2_table - 1).add_(offset)
        frac = pos - lower  # (d, G, N), carries the gradient w.r.t. x
        w = torch.stack([1.0 - frac[0], frac[0]])
        for j in range(1, d):
            w = (w[:, None] * torch.stack([1.0 - frac[j], frac[j]])[None]).reshape(2 ** (j + 1), g, n)
        return rows, w

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) in [0, 1] -> (N, levels * features_per_level)."""
        n, f = x.shape[0], self.features_per_level
        xt = x.clamp(0.0, 1.0).T
        active = self.n_active()
        groups = [g for g, start in zip(self._groups, self._group_starts) if start < active]
        parts = [self._group_corners(xt, name, hashed) for name, hashed in groups]
        if x.requires_grad:
            # Positions need gradients (SDF normals, Eikonal loss): plain autograd ops, twice differentiable.
            outs = []
            for rows, w in parts:
                feats = self.table.index_select(0, rows.reshape(-1).long()).view(*rows.shape, f)
                outs.append(torch.stack([(feats[..., k] * w).sum(0) for k in range(f)]))
            out = torch.cat(outs, dim=1)
        else:
            out = _InterpolateTable.apply(self.table, *[t for part in parts for t in part])
        # (F, L, N) -> (N, L * F), level-major like tcnn.
        out = out.permute(2, 1, 0).reshape(n, out.shape[0] * out.shape[1])
        if active < self.levels:
            keep = out[:, : active * f]
            out = torch.cat([keep, keep.new_zeros(n, self.out_dim - keep.shape[1])], dim=1)
        return out


def _gather_rows(table: Tensor, rows: Tensor) -> Tensor:
    """table[rows] for flat ``rows`` (M,) -> (M, F), reading 8-byte rows as one float64 when F == 2 (2-3x faster)."""
    f = table.shape[1]
    if f * table.element_size() == 8 and table.is_contiguous():
        return table.view(torch.float64).view(-1).index_select(0, rows).view(table.dtype).view(-1, f)
    return table.index_select(0, rows)


class _InterpolateTable(torch.autograd.Function):
    """``out[f, l, n] = sum_c w[c, l, n] * table[rows[c, l, n], f]`` over level groups; gradient for the table only.

    Inputs: table (R, F) and, per level group, rows (C, G, N) int32 and weights (C, G, N) (no grad needed).
    Output (F, levels, N). Feature planes are handled one at a time: planar multiply-adds vectorise, interleaved
    (.., 2)-shaped broadcasts do not. One gradient buffer serves all groups.
    """

    @staticmethod
    def forward(ctx, table: Tensor, *groups: Tensor) -> Tensor:
        f = table.shape[1]
        outs = []
        for rows, w in zip(groups[0::2], groups[1::2]):
            feats = _gather_rows(table, rows.reshape(-1)).view(*rows.shape, f)
            outs.append(torch.stack([(feats[..., k] * w).sum(0) for k in range(f)]))  # (F, G, N)
        ctx.save_for_backward(*groups)
        ctx.table_shape = table.shape
        return torch.cat(outs, dim=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        groups = ctx.saved_tensors
        grad = grad_out.new_zeros(ctx.table_shape)
        start = 0
        for rows, w in zip(groups[0::2], groups[1::2]):
            g = rows.shape[1]
            idx = rows.reshape(-1).long()  # index_add_ with int32 indices takes a 5x slower path
            for k in range(ctx.table_shape[1]):
                vals = w * grad_out[k, start : start + g].contiguous()  # (C, G, N)
                grad[:, k].index_add_(0, idx, vals.reshape(-1))
            start += g
        return (grad, *([None] * len(groups)))
