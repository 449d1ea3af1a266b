"""Packed volume-rendering compositing (nerfacc's semantics, pure torch on CPU, nerfacc on CUDA).

Samples of all rays are concatenated ("packed"): sample ``s`` belongs to ray ``ray_indices[s]`` and the samples of
one ray are contiguous and ordered front to back. Transmittance is an *exclusive* product along each ray; the torch
twins compute it as an exclusive cumulative sum in log space over the whole packed array (float64, so long arrays
lose no precision) minus the value at each ray's first sample. No Python loop over rays; differentiable.

Also here: :func:`neus_alpha`, NeuS's unbiased opacity from signed distances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nfields.render import accel

# 1 - alpha is clamped to this before the log so a fully opaque sample gives a tiny (not -inf) log-transmittance;
# -inf would turn the segmented "cumsum minus first" into inf - inf = nan for the samples behind it.
_MIN_TRANSMIT = 1e-10


def _use_cuda(t: Tensor) -> bool:
    return t.is_cuda and accel.cuda_available()


def exclusive_sum_packed(values: Tensor, ray_indices: Tensor) -> Tensor:
    """Exclusive cumulative sum of ``values`` (S,) within each ray's contiguous run of samples.

    Example:
        >>> exclusive_sum_packed(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), torch.tensor([0, 0, 1, 1, 1]))
        tensor([0., 1., 0., 3., 7.])
    """
    if values.numel() == 0:
        return values
    v64 = values.double()
    excl = torch.cumsum(v64, 0) - v64
    # Index of the first sample of each sample's run: runs start where the ray index changes.
    starts = torch.ones_like(ray_indices, dtype=torch.bool)
    starts[1:] = ray_indices[1:] != ray_indices[:-1]
    run_id = torch.cumsum(starts.long(), 0) - 1
    first = torch.nonzero(starts).squeeze(-1)[run_id]
    return (excl - excl[first]).to(values.dtype)


def render_weight_from_density_torch(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch twin of :func:`render_weight_from_density`."""
    del n_rays  # runs are found from ray_indices; kept for the common signature
    sigmas_dt = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigmas_dt)
    trans = torch.exp(-exclusive_sum_packed(sigmas_dt, ray_indices))
    return trans * alphas, trans, alphas


def render_weight_from_alpha_torch(alphas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """Pure-torch twin of :func:`render_weight_from_alpha`."""
    del n_rays
    log_t = torch.log((1.0 - alphas).clamp_min(_MIN_TRANSMIT))
    trans = torch.exp(exclusive_sum_packed(log_t, ray_indices))
    return trans * alphas, trans


def render_weight_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Volume-rendering weights from densities: ``w_i = T_i (1 - exp(-sigma_i dt_i))``, ``T_i = exp(-sum_{j<i})``.

    Args:
        t_starts, t_ends, sigmas: (S,) packed samples; ray_indices: (S,) long, sorted (each ray's samples
        contiguous, front to back); n_rays: N.

    Returns:
        ``weights``, ``transmittance`` (before each sample), ``alphas``, each (S,).

    Example:
        >>> t0 = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        >>> sig = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> ri = torch.tensor([0, 0, 0, 1, 1, 2, 2])
        >>> w, T, a = render_weight_from_density(t0, t0 + 1, sig, ri, 3)
        >>> [round(v, 2) for v in w.tolist()]
        [0.33, 0.37, 0.03, 0.55, 0.04, 0.0, 0.59]
    """
    if _use_cuda(sigmas):
        return accel.render_weight_from_density_cuda(t_starts, t_ends, sigmas, ray_indices, n_rays)
    return render_weight_from_density_torch(t_starts, t_ends, sigmas, ray_indices, n_rays)


def render_weight_from_alpha(alphas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """Volume-rendering weights from per-sample opacities: ``w_i = T_i alpha_i``, ``T_i = prod_{j<i} (1 - alpha_j)``.

    Args:
        alphas: (S,) in [0, 1]; ray_indices: (S,) long, sorted; n_rays: N.

    Returns:
        ``weights``, ``transmittance``, each (S,).

    Example:
        >>> a = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> w, T = render_weight_from_alpha(a, torch.tensor([0, 0, 0, 1, 1, 2, 2]), 3)
        >>> [round(v, 3) for v in w.tolist()]
        [0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9]
    """
    if _use_cuda(alphas):
        return accel.render_weight_from_alpha_cuda(alphas, ray_indices, n_rays)
    return render_weight_from_alpha_torch(alphas, ray_indices, n_rays)


def accumulate_along_rays(weights: Tensor, values: Tensor | None, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Per-ray weighted sums ``sum_i w_i v_i`` (a scatter-add; the same code on every device).

    Args:
        weights: (S,); values: (S, C) or None (then the result is the opacity, C = 1); ray_indices: (S,); n_rays: N.

    Returns:
        (N, C); rays without samples get 0.

    Example:
        >>> w = torch.tensor([0.5, 0.25, 1.0])
        >>> accumulate_along_rays(w, None, torch.tensor([0, 0, 2]), 3).squeeze(-1).tolist()
        [0.75, 0.0, 1.0]
    """
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros((n_rays, src.shape[-1]), dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def neus_alpha(
    sdf: Tensor, grad: Tensor, dirs: Tensor, dt: Tensor, inv_s: Tensor | float, cos_anneal_ratio: float = 1.0
) -> Tensor:
    """NeuS's unbiased per-sample opacity from the SDF at the sample midpoint (Wang et al. 2021, eq. 13).

    The SDF at the interval ends is extrapolated from the midpoint value with the (annealed) directional derivative,
    then ``alpha = (Phi(sdf_prev) - Phi(sdf_next)) / Phi(sdf_prev)`` with ``Phi = sigmoid(s * .)``.

    Args:
        sdf: (S,) at the midpoints; grad: (S, 3) SDF gradient there; dirs: (S, 3) unit ray directions;
        dt: (S,) interval lengths; inv_s: learned sharpness s (scalar); cos_anneal_ratio: 0 -> 1 during training
        (at 0 the slope is relaxed so back faces still get gradient).

    Returns:
        alpha (S,) in [0, 1].

    Example:
        >>> sdf = torch.tensor([0.0])  # a surface crossed head-on at the midpoint
        >>> a = neus_alpha(sdf, torch.tensor([[0.0, 0, -1]]), torch.tensor([[0.0, 0, 1]]), torch.tensor([0.1]), 500.0)
        >>> round(a.item(), 3)
        1.0
    """
    cos = (dirs * grad).sum(-1)
    iter_cos = -(F.relu(-cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + F.relu(-cos) * cos_anneal_ratio)
    sdf_prev = sdf - iter_cos * dt * 0.5
    sdf_next = sdf + iter_cos * dt * 0.5
    prev_cdf = torch.sigmoid(sdf_prev * inv_s)
    next_cdf = torch.sigmoid(sdf_next * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clip(0.0, 1.0)
