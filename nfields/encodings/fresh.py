"""FreSh (Kania et al., "FreSh: Frequency Shifting for Accelerated Neural Representation Learning"): choose an
embedding hyperparameter (Fourier sigma, SIREN omega_0, positional n_freqs, hash-grid finest resolution) *before*
training, by matching the spectrum of the untrained model's output to the target's.

The spectrum (:func:`spectrum_1d`), as in the paper: the magnitude of the DFT of the signal (per channel, summed
over channels), restricted to the non-negative-frequency quadrant/octant (indices ``0 .. floor(n/2)`` per axis),
and summed over anti-diagonals, i.e. bin ``k`` collects every frequency with ``k_1 + k_2 (+ k_3) = k``. The constant
(DC) term is dropped (bin 0 is always 0: an offset carries no frequency content and an untrained network's offset is
arbitrary); the first ``n_bins`` bins are kept and normalised to sum 1. Two spectra are compared with the 1D
Wasserstein-1 distance (:func:`wasserstein_1d`), the L1 distance between their cumulative sums.

    >>> import torch
    >>> img = torch.rand(32, 32, 3)
    >>> spectrum_1d(img, n_bins=16).sum()
    tensor(1.)
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from nfields.errors import NFieldsError

# Which option each family tunes, its paper default spectrum size, and a default sweep of candidates.
FAMILIES: dict[str, dict] = {
    "fourier": {"option": "sigma", "n_bins": 128, "candidates": [1, 2, 3, 5, 8, 10, 15, 20, 30, 50]},
    # SIREN up to 500: with the sweep capped at 100, FreSh picked the cap on 9 of 12 Kodak images; up to 500 it picks
    # 80-150, inside the range, and 150 was the best trained on kodim01 (docs/results.md, session 27).
    "siren": {
        "option": "omega_0",
        "n_bins": 64,
        "candidates": [10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500],
    },
    "positional": {"option": "n_freqs", "n_bins": 128, "candidates": [4, 5, 6, 7, 8, 9, 10, 11, 12]},
    "hashgrid": {"option": "finest_res", "n_bins": 128, "candidates": [64, 128, 256, 512, 1024, 2048, 4096]},
}


def grid_coords(shape: Sequence[int]) -> Tensor:
    """Pixel/voxel-centre coordinates in (-1, 1) of a grid of ``shape`` (H, W) or (D, H, W), row-major.

    Returns (prod(shape), d) float32 with the *last* axis first: ``[..., 0]`` is x (along W), ``[..., 1]`` is y
    (along H), ``[..., 2]`` is z (along D) -- the order ``F.grid_sample`` uses -- so ``net(grid_coords((H, W)))``
    reshapes to (H, W, C).
    """
    axes = [(torch.arange(n, dtype=torch.float32) + 0.5) / n * 2.0 - 1.0 for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in reversed(mesh)], dim=-1)


def spectrum_1d(signal: Tensor | np.ndarray, n_bins: int = 128) -> Tensor:
    """1D frequency spectrum of an image (H, W, C) or a volume (D, H, W, C): (n_bins,) float64, sums to 1.

    |DFT| per channel (summed over channels) on the non-negative-frequency quadrant, summed over anti-diagonals
    (bin k = all frequencies whose index sum is k, in cycles per signal length); bin 0 (DC) is zeroed; bins past the
    signal's highest anti-diagonal are 0. A constant signal has no spectrum and raises :class:`NFieldsError`.
    """
    x = torch.as_tensor(signal).detach().to("cpu", torch.float64)
    if x.ndim not in (3, 4):
        raise NFieldsError(f"spectrum_1d: expected (H, W, C) or (D, H, W, C), got shape {tuple(x.shape)}")
    spatial = tuple(range(x.ndim - 1))
    mag = torch.fft.fftn(x, dim=spatial).abs().sum(-1)  # (H, W[, D])
    # Non-negative frequencies 0 .. n//2 along each axis.
    mag = mag[tuple(slice(0, n // 2 + 1) for n in mag.shape)]
    idx = sum(torch.arange(n).reshape([-1 if i == a else 1 for i in range(mag.ndim)]) for a, n in enumerate(mag.shape))
    diag = torch.zeros(int(idx.max()) + 1, dtype=torch.float64).index_add_(0, idx.reshape(-1), mag.reshape(-1))
    spec = torch.zeros(n_bins, dtype=torch.float64)
    k = min(n_bins, diag.numel())
    spec[:k] = diag[:k]
    spec[0] = 0.0
    total = spec.sum()
    if not total > 0:
        raise NFieldsError("spectrum_1d: the signal is constant (no frequency content to match)")
    return spec / total


def wasserstein_1d(p: Tensor, q: Tensor) -> float:
    """Wasserstein-1 distance between two histograms on the same unit-spaced bins: ``sum |cumsum(p) - cumsum(q)|``.

    p, q: (n,) non-negative, each summing to 1. Moving all mass by one bin costs 1.
    """
    p, q = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    if p.shape != q.shape:
        raise NFieldsError(f"wasserstein_1d: histograms differ in length ({p.numel()} vs {q.numel()})")
    return float((torch.cumsum(p, 0) - torch.cumsum(q, 0)).abs().sum())


@dataclass
class FreshResult:
    """Outcome of :func:`fresh_select`: the candidates, their W1 distances to the target spectrum, the argmin."""

    family: str
    option: str
    values: list[float]
    distances: list[float]
    best: float
    seconds: float = 0.0
    """Wall time of the selection itself (target and candidate spectra), without building the trained model."""

    def summary(self) -> str:
        """One line per candidate, the chosen one marked with '*'."""
        rows = [
            f"{self.option}={v:g}: W1 {d:.3f}{' *' if v == self.best else ''}"
            for v, d in zip(self.values, self.distances)
        ]
        return "\n".join(rows + [f"selection: {self.seconds:.1f} s"])


@torch.no_grad()
def model_spectrum(net: nn.Module, coords: Tensor, shape: Sequence[int], n_bins: int, chunk: int = 65536) -> Tensor:
    """Spectrum of ``net`` evaluated on ``coords`` (prod(shape), d), reshaped to ``(*shape, C)``: (n_bins,)."""
    was_training = net.training
    net.eval()
    try:
        p = next(net.parameters(), None)
        dev = p.device if p is not None else coords.device
        out = torch.cat([net(coords[i : i + chunk].to(dev)).float().cpu() for i in range(0, len(coords), chunk)])
    finally:
        net.train(was_training)
    return spectrum_1d(out.reshape(*shape, -1), n_bins)


def fresh_select(
    target: Tensor | np.ndarray,
    family: str,
    candidates: Sequence[float] | None,
    build: Callable[..., nn.Module],
    coords: Tensor | None = None,
    n_bins: int | None = None,
    n_init: int = 1,
    stride: int | None = None,
) -> FreshResult:
    """Pick the embedding hyperparameter whose *untrained* model's spectrum is closest (W1) to the target's.

    target: (H, W, C) image or (D, H, W, C) volume; family: fourier (sigma), siren (omega_0), positional
    (n_freqs) or hashgrid (finest_res); candidates: values to try (default: the family's sweep); build:
    ``build(value)`` or ``build(value, seed)`` -> network mapping (N, d) coordinates to (N, C); coords: the
    target's sample coordinates (prod(H, W), d) in the layout of :func:`grid_coords` (default: that);
    n_bins: spectrum size (default 64 for siren, 128 otherwise); n_init: untrained models per candidate (their
    spectra are averaged; needs ``build(value, seed)`` to differ); stride: compare target and models on every
    ``stride``-th sample per axis (the same points of both). Default: the largest stride that keeps the shortest
    side >= 2 * n_bins samples, so every kept bin (index sum <= n_bins) is still below the sampling limit; a
    768x512 Kodak image is then compared on 384x256 points, 4x fewer model evaluations.
    """
    t0 = time.perf_counter()
    if family not in FAMILIES:
        raise NFieldsError(f"fresh: unknown family {family!r}; one of {', '.join(FAMILIES)}")
    spec = FAMILIES[family]
    values = list(candidates if candidates is not None else spec["candidates"])
    if not values:
        raise NFieldsError("fresh: no candidate values")
    n_bins = n_bins or spec["n_bins"]
    target = torch.as_tensor(target)
    shape = tuple(target.shape[:-1])
    coords = grid_coords(shape) if coords is None else coords
    if coords.shape[0] != math.prod(shape):
        raise NFieldsError(f"fresh: {coords.shape[0]} coordinates for a target of shape {tuple(target.shape)}")
    if stride is None:
        stride = max(1, min(shape) // (2 * n_bins))
    if int(stride) < 1:
        raise NFieldsError(f"fresh: stride must be >= 1, got {stride}")
    if stride > 1:
        keep = tuple(slice(None, None, int(stride)) for _ in shape)
        coords = coords.reshape(*shape, coords.shape[-1])[keep].reshape(-1, coords.shape[-1])
        target = target[keep]
        shape = tuple(target.shape[:-1])
    want = spectrum_1d(target, n_bins)
    takes_seed = len(inspect.signature(build).parameters) >= 2
    distances = []
    for v in values:
        specs = [
            model_spectrum(build(v, seed) if takes_seed else build(v), coords, shape, n_bins) for seed in range(n_init)
        ]
        distances.append(wasserstein_1d(torch.stack(specs).mean(0), want))
    best = values[int(np.argmin(distances))]
    return FreshResult(family, spec["option"], values, distances, best, time.perf_counter() - t0)
