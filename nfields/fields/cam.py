"""Coordinate-Aware Modulation (CAM, Lee et al., ICLR 2024): an MLP whose hidden features are scaled and shifted by
values read from low-resolution grids at the input coordinate.

Each hidden layer computes ``relu(gamma_l(x) * norm(W_l h + b_l) + beta_l(x))`` where ``norm`` is a LayerNorm over
the feature channels without affine parameters (what the authors' ``F.instance_norm`` on a (1, N, C) tensor does)
and ``gamma_l, beta_l`` are *scalars per point*, bi/trilinearly interpolated (``align_corners=True``) from a grid with
two channels per layer. The grids start at gamma = 1, beta = 0 and train with ``grid_lr_mult`` times the learning rate.

Speed: all layers' gamma/beta channels live in one grid tensor (2 * layers channels), so one ``grid_sample`` serves
every layer; the normalisation is one ``F.layer_norm`` and the modulation one ``torch.addcmul``.
:meth:`CAMNetwork.forward_plain` is the straightforward version (one lookup per layer, instance norm, separate
multiply and add) kept as the reference for tests and the speed comparison in ``apps/bench_backends.py``.

    >>> from nfields.registry import build_network
    >>> net = build_network("cam", 2, 3, hidden=32, layers=2, grid_res=16)
    >>> net(torch.zeros(5, 2)).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nfields.encodings.frequency import FourierFeatures, PositionalEncoding
from nfields.errors import NFieldsError
from nfields.fields.mlp import ENCODINGS, _Identity, check_option, make_mlp
from nfields.registry import register

GRID_KINDS = ("grid", "triplane")
NORMS = ("layer", "none")
# Tri-plane: the three axis pairs a point is projected onto (x indexes W, y indexes H of each plane).
_PLANE_AXES = ((0, 1), (0, 2), (1, 2))


class _NormModulateReLU(torch.autograd.Function):
    """``relu(gamma * norm(h) + beta)`` for h (N, C) and per-point gamma, beta (N, 1), with a hand-written backward.

    Folding the normalisation into per-point scalars, ``gamma * (h - m) * r + beta = a * h + b`` with
    ``a = gamma * r``, ``b = beta - a * m``, makes the forward two reductions plus one fused multiply-add, and the
    backward ``dh = a * dy + c1 * h + c0`` (per-point c0, c1). On a CPU the cost of these (N, C) passes is mostly
    the page faults of freshly allocated outputs (~35 ms per 100 MB with glibc's mmap'd large blocks, against
    ~4 ms for an in-place pass), so the forward allocates one tensor and the backward works in place in the
    incoming gradient (which comes straight from the next Linear's backward and is used by no one else).
    """

    @staticmethod
    def forward(ctx, h: Tensor, gamma: Tensor, beta: Tensor, normalize: bool, eps: float) -> Tensor:
        if normalize:
            c = h.shape[1]
            m = h.sum(1, keepdim=True) / c
            # Row dot products as a batched GEMM: one read of h, no (N, C) temporary.
            sq = torch.bmm(h.unsqueeze(1), h.unsqueeze(2)).reshape(-1, 1) / c
            r = torch.rsqrt((sq - m * m).clamp_min_(0.0) + eps)
        else:
            m, r = torch.zeros_like(gamma), torch.ones_like(gamma)
        a = gamma * r
        y = torch.addcmul(beta - a * m, h, a).relu_()
        ctx.save_for_backward(h, y, gamma, m, r)
        ctx.normalize = normalize
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        h, y, gamma, m, r = ctx.saved_tensors
        g = g.contiguous()
        gy = torch.ops.aten.threshold_backward.grad_input(g, y, 0.0, grad_input=g)  # relu' in place
        s1 = gy.sum(1, keepdim=True)  # sum_c dy
        s2 = torch.bmm(gy.unsqueeze(1), h.unsqueeze(2)).reshape(-1, 1)  # sum_c dy * h
        sxh = (s2 - m * s1) * r  # sum_c dy * xhat
        a = gamma * r
        if ctx.normalize:
            c = h.shape[1]
            # dh = a (dy - mean(dy) - xhat mean(dy xhat)) with xhat = (h - m) r, regrouped as a dy + c1 h + c0.
            c1 = -a * r * sxh / c
            c0 = -a * s1 / c - c1 * m
            dh = gy.mul_(a).addcmul_(h, c1).add_(c0)
        else:
            dh = gy.mul_(a)
        return dh, sxh, s1, None, None


class CAMNetwork(nn.Module):
    """CAM MLP: (N, in_dim) in [-1, 1] -> (N, out_dim).

    The modulation grid ``grid`` has channels ``[gamma_0 .. gamma_{L-1}, beta_0 .. beta_{L-1}]`` and shape
    ``(1, 2L, R)`` as ``(1, 2L, 1, R)`` for a 1D (time) grid, ``(1, 2L, R, R)`` in 2D, ``(1, 2L, R, R, R)`` in 3D,
    or ``(3, 2L, R, R)`` for a tri-plane (the three planes' values are summed, so each plane starts at gamma = 1/3).
    ``modulation = False`` skips the grids entirely (the network is then the plain MLP with normalisation).
    """

    def __init__(
        self,
        encoding: nn.Module,
        linears: list[nn.Linear],
        out: nn.Linear,
        in_dim: int,
        grid_res: int,
        grid_kind: str,
        time_axis: bool,
        norm: str,
        grid_lr_mult: float,
    ):
        super().__init__()
        self.encoding = encoding
        self.linears = nn.ModuleList(linears)
        self.out = out
        self.in_dim, self.out_dim = in_dim, out.out_features
        self.norm, self.grid_lr_mult, self.grid_kind = norm, grid_lr_mult, grid_kind
        self.modulation = True
        n_layers = len(linears)
        # Which coordinates drive the modulation and in which layout.
        if time_axis or in_dim == 1:
            self.layout, shape, n_planes = "line", (1, 2 * n_layers, 1, grid_res), 1
        elif in_dim == 2:
            self.layout, shape, n_planes = "grid2d", (1, 2 * n_layers, grid_res, grid_res), 1
        elif in_dim == 3 and grid_kind == "grid":
            self.layout, shape, n_planes = "grid3d", (1, 2 * n_layers, grid_res, grid_res, grid_res), 1
        elif in_dim == 3:
            self.layout, shape, n_planes = "triplane", (3, 2 * n_layers, grid_res, grid_res), 3
        else:
            raise NFieldsError(f"cam: in_dim {in_dim} needs time_axis=True (only 1D, 2D and 3D grids exist)")
        grid = torch.zeros(shape)
        grid[:, :n_layers] = 1.0 / n_planes  # gamma = 1 after summing planes, beta = 0
        self.grid = nn.Parameter(grid)

    @property
    def n_layers(self) -> int:
        return len(self.linears)

    def param_groups(self, lr: float) -> list[dict]:
        """MLP weights at ``lr``; the modulation grid at ``lr * grid_lr_mult`` without weight decay."""
        rest = [p for n, p in self.named_parameters() if n != "grid"]
        return [
            {"params": rest, "lr": lr},
            {"params": [self.grid], "lr": lr * self.grid_lr_mult, "weight_decay": 0.0},
        ]

    def freeze_modulation(self) -> None:
        """Reset the grids to gamma = 1, beta = 0 and stop training them (for ablations and tests)."""
        with torch.no_grad():
            n_planes = self.grid.shape[0]
            self.grid.zero_()
            self.grid[:, : self.n_layers] = 1.0 / n_planes
        self.grid.requires_grad_(False)

    def _sample_channels(self, grid: Tensor, x: Tensor) -> Tensor:
        """Interpolate ``grid`` (P, C, ...) at x (N, in_dim) -> (C, N), summing tri-planes."""
        n = x.shape[0]
        x = x.clamp(-1.0, 1.0)
        if self.layout == "line":
            t = x[:, -1:]
            g = torch.cat([t, torch.zeros_like(t)], -1).reshape(1, n, 1, 2)
        elif self.layout == "grid2d":
            g = x.reshape(1, n, 1, 2)
        elif self.layout == "grid3d":
            g = x.reshape(1, n, 1, 1, 3)
        else:
            g = torch.stack([x[:, list(a)] for a in _PLANE_AXES]).reshape(3, n, 1, 2)
        v = F.grid_sample(grid, g, mode="bilinear", padding_mode="border", align_corners=True)
        v = v.reshape(grid.shape[0], grid.shape[1], n)
        return v[0] if v.shape[0] == 1 else v.sum(0)

    def modulation_values(self, x: Tensor) -> Tensor:
        """gamma/beta of every layer at x (N, in_dim): (N, 2L), gammas first. One ``grid_sample`` call."""
        return self._sample_grid(self.grid, x)

    def _sample_grid(self, grid: Tensor, x: Tensor) -> Tensor:
        """Interpolate ``grid`` (P, C, ...) at x (N, in_dim) -> (N, C), summing tri-planes."""
        return self._sample_channels(grid, x).T

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        h = self.encoding(x)
        # (2L, N): each layer's gamma/beta row is then a contiguous (N, 1) column.
        mod = self._sample_channels(self.grid, x) if self.modulation else None
        L = self.n_layers
        # The hand-written backward is first-order only; gradients w.r.t. positions (Eikonal terms) need autograd.
        fused = mod is not None and not (x.requires_grad and torch.is_grad_enabled())
        for l, lin in enumerate(self.linears):
            if fused:
                gamma, beta = mod[l].unsqueeze(1), mod[L + l].unsqueeze(1)
                h = _NormModulateReLU.apply(lin(h), gamma, beta, self.norm == "layer", 1e-5)
                continue
            h = lin(h)
            if self.norm == "layer":
                h = F.layer_norm(h, h.shape[-1:])
            if mod is not None:
                h = torch.addcmul(mod[L + l].unsqueeze(1), h, mod[l].unsqueeze(1))  # beta + gamma * h
            h = F.relu(h)
        return self.out(h)

    def forward_plain(self, x: Tensor) -> Tensor:
        """Reference implementation: a separate grid lookup per layer, instance norm, multiply then add.
        Same result as :meth:`forward` (up to float rounding); slower. (N, in_dim) -> (N, out_dim)."""
        h = self.encoding(x)
        L = self.n_layers
        for l, lin in enumerate(self.linears):
            h = lin(h)
            if self.norm == "layer":
                h = F.instance_norm(h[None]).squeeze(0)  # (1, N, C): normalises each point over its channels
            if self.modulation:
                gb = self._sample_grid(self.grid[:, [l, L + l]], x)
                h = h * gb[:, :1]
                h = h + gb[:, 1:]
            h = F.relu(h)
        return self.out(h)


@register("cam")
@dataclass
class CAMConfig:
    """Coordinate-Aware Modulation: a frequency-encoded MLP whose hidden features are scaled and shifted per point
    by values interpolated from low-resolution grids (2D grid for images, 3D grid or tri-plane for 3D)."""

    hidden: int = 256
    """Width of each hidden layer."""
    layers: int = 4
    """Number of modulated hidden layers, followed by a linear output layer."""
    encoding: str = "positional"
    """Input encoding: positional, fourier, none (as for the mlp backend)."""
    n_freqs: int = 10
    """Positional encoding: number of octaves."""
    sigma: float = 10.0
    """Fourier features: standard deviation of the random frequencies."""
    n_fourier: int = 256
    """Fourier features: number of random frequencies."""
    grid_res: int | None = None
    """Vertices per side of the modulation grids (default 64 for 1D/2D inputs, 32 for 3D)."""
    grid_kind: str = "grid"
    """3D inputs: grid (dense R^3) or triplane (sum of three R^2 planes)."""
    time_axis: bool = False
    """Modulate along the last input coordinate only (time, for video-like x, y, t inputs) with a 1D grid."""
    norm: str = "layer"
    """Feature normalisation before the modulation: layer (LayerNorm without affine) or none."""
    grid_lr_mult: float = 10.0
    """Learning-rate multiplier of the modulation grids."""
    seed: int = 0
    """Seed of the Fourier frequencies and the weight initialisation (same seed => same weights as mlp)."""

    def __post_init__(self):
        check_option("encoding", self.encoding, self.encoding in ENCODINGS, f"one of {', '.join(ENCODINGS)}")
        check_option("hidden", self.hidden, self.hidden >= 1, ">= 1")
        check_option("layers", self.layers, self.layers >= 1, ">= 1")
        check_option("n_freqs", self.n_freqs, 0 <= self.n_freqs <= 20, "in 0..20")
        check_option("n_fourier", self.n_fourier, self.n_fourier >= 1, ">= 1")
        check_option("sigma", self.sigma, self.sigma > 0 and math.isfinite(self.sigma), "> 0")
        check_option("grid_res", self.grid_res, self.grid_res is None or self.grid_res >= 2, ">= 2 (or unset)")
        check_option("grid_kind", self.grid_kind, self.grid_kind in GRID_KINDS, f"one of {', '.join(GRID_KINDS)}")
        check_option("norm", self.norm, self.norm in NORMS, f"one of {', '.join(NORMS)}")
        check_option("grid_lr_mult", self.grid_lr_mult, self.grid_lr_mult > 0, "> 0")

    def build(self, in_dim: int, out_dim: int) -> CAMNetwork:
        """(N, in_dim) in [-1, 1] -> (N, out_dim)."""
        if self.encoding == "positional":
            enc: nn.Module = PositionalEncoding(in_dim, self.n_freqs)
        elif self.encoding == "fourier":
            enc = FourierFeatures(in_dim, self.n_fourier, self.sigma, self.seed)
        else:
            enc = _Identity(in_dim)
        # Built by make_mlp under the same seed as MLPConfig, so equal options give the mlp backend's weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            seq = make_mlp(enc.out_dim, out_dim, self.hidden, self.layers, "relu")
        linears = [m for m in seq if isinstance(m, nn.Linear)]
        res = self.grid_res or (32 if in_dim == 3 and not self.time_axis else 64)
        return CAMNetwork(
            enc, linears[:-1], linears[-1], in_dim, res, self.grid_kind, self.time_axis, self.norm, self.grid_lr_mult
        )
