"""Pinhole cameras (optionally with OpenCV radial-tangential distortion) and the rays through their pixels.

Conventions (the whole package uses them):

- **Camera frame: OpenCV.** x right, y down, z forward; a camera looks along its +z axis. ``c2w`` (N, 3, 4) maps
  camera coordinates to world coordinates: ``x_world = c2w[:, :3] @ x_cam + c2w[:, 3]``, so ``c2w[:, :, 3]`` is
  the camera centre and ``c2w[:, :, 2]`` the viewing direction. Blender/OpenGL poses (y up, looking along -z) are
  converted on load by negating their y and z columns.
- **Pixels: continuous coordinates, image spans [0, W] x [0, H].** The centre of pixel (row i, column j) is
  ``(x, y) = (j + 0.5, i + 0.5)``. ``K`` maps normalised camera coordinates to these pixel coordinates. Loaders whose
  calibration puts pixel centres at integers (DTU/IDR, Bouguet's toolbox) shift the principal point by +0.5 on load,
  so that the same physical ray goes through the same pixel.
- **Distortion: OpenCV** ``(k1, k2, p1, p2)`` applied to normalised coordinates (see :func:`distort`); ``rays()``
  undoes it with Newton iterations (:func:`undistort`), ``project()`` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nfields.types import Rays


def distort(xy: Tensor, dist: Tensor) -> Tensor:
    """Apply OpenCV radial-tangential distortion to normalised coordinates.

    xy: (M, 2) undistorted normalised coordinates (x/z, y/z); dist: (M, 4) or (4,) ``k1, k2, p1, p2``.
    Returns (M, 2) distorted normalised coordinates.
    """
    dist = dist.expand(xy.shape[0], 4)
    k1, k2, p1, p2 = dist.unbind(-1)
    x, y = xy.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + k2 * r2)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([xd, yd], -1)


def undistort(xy_d: Tensor, dist: Tensor, iters: int = 10) -> Tensor:
    """Invert :func:`distort`: (M, 2) distorted normalised coordinates -> (M, 2) undistorted ones.

    Newton's method on ``distort(p) - xy_d = 0`` with the analytic 2x2 Jacobian, started at ``xy_d`` (the usual
    fixed-point start); for lens distortions of real cameras 10 steps reach float32 precision.
    """
    dist = dist.expand(xy_d.shape[0], 4)
    k1, k2, p1, p2 = dist.unbind(-1)
    xd, yd = xy_d.unbind(-1)
    x, y = xd.clone(), yd.clone()
    for _ in range(iters):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + k2 * r2)
        d_radial = k1 + 2 * k2 * r2  # d radial / d r2
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        # Jacobian of (fx, fy) with respect to (x, y); d r2/dx = 2x.
        fx_x = radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x
        fx_y = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        fy_x = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        fy_y = radial + 2 * y * y * d_radial + 6 * p1 * y + 2 * p2 * x
        det = fx_x * fy_y - fx_y * fy_x
        # A vanishing Jacobian only happens far outside any real lens' field of view: leave such points alone.
        ok = det.abs() > 1e-12
        det = torch.where(ok, det, torch.ones_like(det))
        step_x = torch.where(ok, (fx * fy_y - fy * fx_y) / det, torch.zeros_like(det))
        step_y = torch.where(ok, (fy * fx_x - fx * fy_x) / det, torch.zeros_like(det))
        x = x - step_x
        y = y - step_y
    return torch.stack([x, y], -1)


def _as_index(idx, n: int) -> Tensor | slice:
    # An integer keeps the camera axis (cams[3] is a 1-camera Cameras), like a slice would.
    if isinstance(idx, slice):
        return idx
    if not isinstance(idx, int) and torch.as_tensor(idx).ndim == 0:
        idx = int(idx)  # numpy / 0-d tensor integers
    if isinstance(idx, int):
        if not -n <= idx < n:
            raise IndexError(f"camera index {idx} out of range for {n} cameras")
        idx = idx % n
        return slice(idx, idx + 1)
    return torch.as_tensor(idx, dtype=torch.long)


@dataclass
class Cameras:
    """N pinhole cameras sharing one image size (OpenCV convention, see the module docstring).

    K: (N, 3, 3) float32 pixel intrinsics (skew allowed); c2w: (N, 3, 4) float32 camera-to-world;
    width, height: image size in pixels; distortion: (N, 4) OpenCV ``k1, k2, p1, p2`` or None (pinhole).
    """

    K: Tensor
    c2w: Tensor
    width: int
    height: int
    distortion: Tensor | None = None

    def __post_init__(self) -> None:
        if self.K.ndim != 3 or self.K.shape[1:] != (3, 3):
            raise ValueError(f"Cameras.K must be (N, 3, 3), got {tuple(self.K.shape)}")
        if self.c2w.ndim != 3 or self.c2w.shape[1:] != (3, 4) or self.c2w.shape[0] != self.K.shape[0]:
            raise ValueError(f"Cameras.c2w must be (N, 3, 4) with N={self.K.shape[0]}, got {tuple(self.c2w.shape)}")
        if self.distortion is not None and self.distortion.shape != (self.K.shape[0], 4):
            raise ValueError(f"Cameras.distortion must be (N, 4), got {tuple(self.distortion.shape)}")
        self.width, self.height = int(self.width), int(self.height)

    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, idx) -> Cameras:
        """Subset of the cameras: int (kept as a 1-camera set), slice, list or LongTensor."""
        i = _as_index(idx, len(self))
        dist = None if self.distortion is None else self.distortion[i]
        return Cameras(self.K[i], self.c2w[i], self.width, self.height, dist)

    @property
    def centers(self) -> Tensor:
        """(N, 3) camera centres in world coordinates."""
        return self.c2w[:, :, 3]

    def rays(self, cam_idx: Tensor, pixels: Tensor) -> Rays:
        """World-space rays through continuous pixel positions.

        cam_idx: (M,) long camera indices; pixels: (M, 2) float ``(x, y)`` (pixel (i, j)'s centre is (j+0.5, i+0.5)).
        Returns Rays with origins (M, 3) at the camera centres and unit directions (M, 3).
        """
        cam_idx = torch.as_tensor(cam_idx, dtype=torch.long, device=self.K.device).reshape(-1)
        pixels = torch.as_tensor(pixels, dtype=torch.float32, device=self.K.device).reshape(-1, 2)
        # Inverting all N intrinsics once is cheaper than M per-ray inverses.
        k_inv = torch.linalg.inv(self.K.double()).float()[cam_idx]
        ones = torch.ones_like(pixels[:, :1])
        xy = torch.einsum("mij,mj->mi", k_inv, torch.cat([pixels, ones], -1))
        xy = xy[:, :2] / xy[:, 2:]
        if self.distortion is not None:
            xy = undistort(xy, self.distortion[cam_idx])
        d_cam = torch.cat([xy, ones], -1)
        c2w = self.c2w[cam_idx]
        dirs = torch.einsum("mij,mj->mi", c2w[:, :, :3], d_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        return Rays(origins=c2w[:, :, 3].contiguous(), directions=dirs)

    def pixel_grid(self, downscale: int = 1) -> Tensor:
        """(H // downscale * W // downscale, 2) pixel centres, row-major, in full-resolution pixel coordinates.

        With ``downscale`` k each output pixel is the centre of a k x k block, i.e. the pixel that
        ``avg_pool2d(image[:H//k*k, :W//k*k], k)`` produces.
        """
        k = max(int(downscale), 1)
        h, w = self.height // k, self.width // k
        ys = (torch.arange(h, dtype=torch.float32, device=self.K.device) + 0.5) * k
        xs = (torch.arange(w, dtype=torch.float32, device=self.K.device) + 0.5) * k
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)

    def image_rays(self, i: int, downscale: int = 1) -> Rays:
        """All rays of camera ``i``, row-major: H*W rays, or (H//k)*(W//k) through k x k block centres (see
        :meth:`pixel_grid`)."""
        pix = self.pixel_grid(downscale)
        idx = torch.full((pix.shape[0],), int(i), dtype=torch.long, device=self.K.device)
        return self.rays(idx, pix)

    def project(self, cam_idx: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points into cameras.

        cam_idx: (M,) long; points: (M, 3) world. Returns pixels (M, 2) ``(x, y)`` in continuous pixel coordinates
        (distortion applied) and depth (M,) = z in the camera frame (negative behind the camera).
        """
        cam_idx = torch.as_tensor(cam_idx, dtype=torch.long, device=self.K.device).reshape(-1)
        c2w = self.c2w[cam_idx]
        rot, t = c2w[:, :, :3], c2w[:, :, 3]
        # World -> camera is R^T (p - t) because R is orthonormal.
        p_cam = torch.einsum("mji,mj->mi", rot, points - t)
        depth = p_cam[:, 2]
        xy = p_cam[:, :2] / depth[:, None]
        if self.distortion is not None:
            xy = distort(xy, self.distortion[cam_idx])
        uvw = torch.einsum("mij,mj->mi", self.K[cam_idx], torch.cat([xy, torch.ones_like(depth)[:, None]], -1))
        return uvw[:, :2] / uvw[:, 2:], depth

    def in_image(self, i: int, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points (M, 3) into camera ``i`` -> pixels (M, 2) ``(x, y)`` and (M,) bool: in front of the
        camera and inside its image."""
        pix, depth = self.project(torch.full((len(points),), int(i), dtype=torch.long), points.float())
        inside = (depth > 1e-8) & (pix[:, 0] >= 0) & (pix[:, 0] < self.width) & (pix[:, 1] >= 0)
        return pix, inside & (pix[:, 1] < self.height)

    def scaled(self, factor: float) -> Cameras:
        """Cameras for images resized by ``factor`` (downscale 4 -> 0.25); width/height are rounded.

        The intrinsics are scaled by the exact per-axis ratios ``new_width / width`` and ``new_height / height``,
        which is what resizing the whole image (PIL ``resize``) does to continuous pixel coordinates.
        """
        new_w, new_h = max(round(self.width * factor), 1), max(round(self.height * factor), 1)
        sx, sy = new_w / self.width, new_h / self.height
        scale = torch.tensor([sx, sy, 1.0], dtype=self.K.dtype, device=self.K.device)
        return Cameras(self.K * scale[None, :, None], self.c2w.clone(), new_w, new_h, self.distortion)

    def to(self, device) -> Cameras:
        """The same cameras on ``device``."""
        dist = None if self.distortion is None else self.distortion.to(device)
        return Cameras(self.K.to(device), self.c2w.to(device), self.width, self.height, dist)
