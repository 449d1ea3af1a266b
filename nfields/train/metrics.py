"""Image metrics: PSNR (optionally masked) and SSIM, in torch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """PSNR in dB of images in [0, 1] (..., 3); with ``mask`` (...,) only pixels where mask > 0.5 count."""
    err = (pred.float() - target.float()) ** 2
    if mask is not None:
        m = (mask > 0.5).reshape(err.shape[:-1])
        if not m.any():
            return float("nan")
        err = err[m]
    mse = err.mean().item()
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor) -> float:
    """Structural similarity (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) of (H, W, 3) images in [0, 1]."""
    x = pred.float().permute(2, 0, 1)[None]
    y = target.float().permute(2, 0, 1)[None]
    c = x.shape[1]
    g = _gaussian_window().to(x)
    wx = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    wy = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, wx, groups=c), wy, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean().item()
