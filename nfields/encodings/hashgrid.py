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
When the positions need gradients (SDF normals, Eikonal loss), the gradient w.r.t. x is computed in closed form
(:class:`_PositionGradient`: the d-linear weights' derivatives times the gathered features), by custom functions
that are themselves differentiable once more w.r.t. the table and the incoming gradient -- what an Eikonal loss or
shading with the normals needs (x itself gets no second derivative: sample points are not parameters). The plain
autograd ops (``position_grad = "autograd"``) remain as the reference the tests compare against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nfields.encodings.hashgrid_native import LevelSpec, native_encode, native_kernels
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
    native: bool = True
    """Use the fused C++ kernels (hashgrid_native.py) on CPU float32 inputs when they build here; False (or
    ``NFIELDS_NATIVE=0``) keeps the level-by-level torch code below, the reference the kernels are tested against."""
    position_grad: str = "closed_form"
    """How gradients w.r.t. the positions are taken: ``"closed_form"`` (custom functions, see the module docstring)
    or ``"autograd"`` (plain ops and their double backward; the reference the tests compare against)."""

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
        self._native_spec = LevelSpec(self.resolutions, offsets, self.dense, log2_table, in_dim, features_per_level)

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

    def _group_corners(self, xt: Tensor, name: str, hashed: bool, weight_grads: bool = False):
        """Rows and weights (2^d, G, N) of one level group; ``xt`` (d, N) is the clamped, transposed input.

        ``weight_grads``: also return the weights' derivatives w.r.t. the (clamped) input, (d, 2^d, G, N), computed
        without autograd (for :class:`_PositionGradient`)."""
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
        factors = [torch.stack([1.0 - frac[j], frac[j]]) for j in range(d)]  # (2, G, N): lower / upper vertex
        w = _corner_products(factors)
        if not weight_grads:
            return rows, w
        # d w_c / d x_j: the factor of axis j replaced by its derivative (-res, +res), the others kept.
        slope = torch.stack([-res, res])[:, :, None].expand(2, g, n)
        dw = torch.stack([_corner_products([slope if i == j else f for i, f in enumerate(factors)]) for j in range(d)])
        return rows, w, dw

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) in [0, 1] -> (N, levels * features_per_level)."""
        n, f = x.shape[0], self.features_per_level
        active = self.n_active()
        if self._use_native(x):
            return native_encode(self.table, x, self._native_spec, active)
        xt = x.clamp(0.0, 1.0).T
        groups = [g for g, start in zip(self._groups, self._group_starts) if start < active]
        position_grad = x.requires_grad and torch.is_grad_enabled()
        if position_grad and self.position_grad == "autograd":
            # The reference: plain autograd ops, twice differentiable (slower).
            outs = []
            for rows, w in (self._group_corners(xt, name, hashed) for name, hashed in groups):
                feats = self.table.index_select(0, rows.reshape(-1).long()).view(*rows.shape, f)
                outs.append(torch.stack([(feats[..., k] * w).sum(0) for k in range(f)]))
            out = torch.cat(outs, dim=1)
        elif position_grad:
            xd = xt.detach()
            parts = [self._group_corners(xd, name, hashed, weight_grads=True) for name, hashed in groups]
            out = _InterpolateTable.apply(self.table, *[t for rows, w, _ in parts for t in (rows, w)])
            grads = [t for rows, _, dw in parts for t in (rows, dw)]
            out = _PositionGradient.apply(out, x, self.table, *grads)
        else:
            parts = [self._group_corners(xt, name, hashed) for name, hashed in groups]
            out = _InterpolateTable.apply(self.table, *[t for part in parts for t in part])
        # (F, L, N) -> (N, L * F), level-major like tcnn.
        out = out.permute(2, 1, 0).reshape(n, out.shape[0] * out.shape[1])
        if active < self.levels:
            keep = out[:, : active * f]
            out = torch.cat([keep, keep.new_zeros(n, self.out_dim - keep.shape[1])], dim=1)
        return out

    def _use_native(self, x: Tensor) -> bool:
        if not self.native or self.position_grad != "closed_form":
            return False
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.table.dtype != torch.float32:
            return False
        return self.table.is_contiguous() and native_kernels() is not None


def _corner_products(factors: list[Tensor]) -> Tensor:
    """Per-corner products of per-axis factors: ``factors[j]`` (2, G, N) holds axis j's lower / upper value; returns
    (2^d, G, N) with corner c taking the upper value on axis j when its bit ``d-1-j`` is set."""
    out = factors[0]
    for f in factors[1:]:
        out = (out[:, None] * f[None]).reshape(out.shape[0] * 2, *f.shape[1:])
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


class _PositionGradient(torch.autograd.Function):
    """Identity on the encoding ``out`` (F, L, N) whose backward adds the gradient w.r.t. the positions x (N, d).

    Inputs: ``out``, ``x``, ``table`` (R, F) and, per level group, rows (C, G, N) and the weights' derivatives
    ``dw`` (d, C, G, N) w.r.t. the clamped x. Backward: ``grad_x[n, j] = sum_{c,l,f} dw[j, c, l, n]
    table[rows[c, l, n], f] grad_out[f, l, n]``, through :class:`_GradX` so that it is differentiable again (w.r.t.
    the table and ``grad_out``), zero where x_j is outside [0, 1] (the encoding clamps); the table's own gradient
    comes from the :class:`_InterpolateTable` that made ``out``.
    """

    @staticmethod
    def forward(ctx, out: Tensor, x: Tensor, table: Tensor, *groups: Tensor) -> Tensor:
        ctx.save_for_backward(((x >= 0) & (x <= 1)).to(x.dtype), table, *groups)
        return out.clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        inside, table, *groups = ctx.saved_tensors
        grad_x = _GradX.apply(table, grad_out, *groups) * inside if ctx.needs_input_grad[1] else None
        return (grad_out, grad_x, None, *([None] * len(groups)))


class _GradX(torch.autograd.Function):
    """``grad_x`` (N, d) from the table, the encoding's incoming gradient (F, L, N) and per group rows (C, G, N)
    and ``dw`` (d, C, G, N); its own backward gives the gradients w.r.t. the table and ``grad_out`` (not w.r.t. x:
    sample positions are not parameters)."""

    @staticmethod
    def forward(ctx, table: Tensor, grad_out: Tensor, *groups: Tensor) -> Tensor:
        f = table.shape[1]
        d, n = groups[1].shape[0], grad_out.shape[2]
        grad_x = grad_out.new_zeros(d, n)
        start, gathered = 0, []
        for rows, dw in zip(groups[0::2], groups[1::2]):
            g = rows.shape[1]
            feats = _gather_rows(table, rows.reshape(-1)).view(*rows.shape, f)
            s = feats[..., 0] * grad_out[0, start : start + g]
            for k in range(1, f):
                s += feats[..., k] * grad_out[k, start : start + g]  # (C, G, N)
            grad_x += (dw * s).sum((1, 2))
            gathered.append(feats)
            start += g
        ctx.save_for_backward(table, grad_out, *groups)
        ctx.gathered = gathered  # the backward needs the same rows again (once_differentiable: no graph needed)
        return grad_x.T

    @staticmethod
    @once_differentiable
    def backward(ctx, gg: Tensor):
        table, grad_out, *groups = ctx.saved_tensors
        f = table.shape[1]
        ggt = gg.T.contiguous()  # (d, N)
        g_table = torch.zeros_like(table) if ctx.needs_input_grad[0] else None
        g_out = torch.zeros_like(grad_out) if ctx.needs_input_grad[1] else None
        start = 0
        for rows, dw, feats in zip(groups[0::2], groups[1::2], ctx.gathered):
            g = rows.shape[1]
            u = dw[0] * ggt[0]
            for j in range(1, dw.shape[0]):
                u += dw[j] * ggt[j]  # (C, G, N): the corners' weights seen from the loss
            if g_out is not None:
                for k in range(f):
                    g_out[k, start : start + g] = (feats[..., k] * u).sum(0)
            if g_table is not None:
                idx = rows.reshape(-1).long()
                for k in range(f):
                    g_table[:, k].index_add_(0, idx, (u * grad_out[k, start : start + g]).reshape(-1))
            start += g
        return (g_table, g_out, *([None] * len(groups)))
