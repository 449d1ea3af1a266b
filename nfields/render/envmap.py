"""Environment lighting from equirectangular HDR maps: lookups, split-sum pre-filtering and irradiance.

Conventions (one place, used everywhere):

- **Directions** are unit vectors pointing *from the scene towards the light* (``radiance(d)`` is what arrives
  from direction ``d``).
- **Up axis.** The map's top row is the ``up_axis`` direction (default ``"z"``: world +z is up, as in Blender).
  ``"y"`` (OpenGL / three.js style, +y up) and ``"-y"`` (OpenCV-style worlds such as normalised DTU, where "down" is
  +y) are supported too; each is a proper rotation of the z-up frame.
- **Longitude.** In the z-up frame ``u = 0.5 - atan2(d_y, d_x) / 2pi`` and ``v = acos(d_z) / pi``: the image centre
  looks along +x, ``u = 0.25`` along +y, and the map is seen from the inside (not mirrored), as Blender does.
  Pixel ``(i, j)`` has its centre at ``u = (j + 0.5) / W``, ``v = (i + 0.5) / H``. Lookups wrap in ``u`` and clamp
  in ``v``.
- **rotation_deg** turns the environment about the up axis: with +90 a feature that was in direction ``+x`` is now
  in direction ``+y`` and appears a quarter of the width to the left in the image.
- **Irradiance** ``E(n) = integral L(l) max(n.l, 0) dl`` (so a constant map ``L`` gives ``E = pi L``; a Lambertian
  surface of albedo ``a`` reflects ``a E / pi``).
- **Pre-filtered radiance** (the split-sum "LD" term, Karis 2013) at roughness ``r`` (GGX ``alpha = r^2``):
  ``LD(R) = sum_k L(l_k) (n.l_k) / sum_k (n.l_k)`` with ``l_k`` drawn from the GGX lobe around ``R`` under the
  ``n = v = R`` assumption. It is computed by *filtered importance sampling* (Krivanek & Colbert 2008): a fixed
  Hammersley sample set, each sample read from the mip level whose texel matches its solid angle, so a few dozen
  samples give a smooth result and the whole thing is a differentiable function of the texels.

Objects that :func:`nfields.render.shading.shade_pbr` accepts as ``env`` provide ``radiance(dirs)``,
``irradiance(normals)`` and ``prefiltered(dirs, roughness)``, all ``(N, 3) -> (N, 3)`` linear HDR.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfields.data.hdr import check_equirect, read_envmap
from nfields.errors import NFieldsError
from nfields.render.shading import hammersley, orthonormal_basis

# Rows are the z-up "map frame" axes written in world coordinates; each is a proper rotation (det +1).
_UP_FRAMES = {
    "z": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "-z": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
    "y": ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "-y": ((0.0, 0.0, 1.0), (-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "x": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)),
}
DEFAULT_ROUGHNESS_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


def world_to_map(up_axis: str = "z", rotation_deg: float = 0.0) -> Tensor:
    """(3, 3) rotation taking world directions into the z-up map frame: ``d_map = M @ d_world``."""
    if up_axis not in _UP_FRAMES:
        raise NFieldsError(f"up_axis {up_axis!r}: must be one of {', '.join(_UP_FRAMES)}")
    frame = torch.tensor(_UP_FRAMES[up_axis], dtype=torch.float64)
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    # Rotating the *environment* by +angle means looking the map up at the world direction rotated by -angle.
    rz = torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return (rz @ frame).float()


def dir_to_uv(dirs: Tensor, up_axis: str = "z", rotation_deg: float = 0.0) -> Tensor:
    """Unit directions (..., 3) -> equirect coordinates (..., 2) = (u, v) in [0, 1) x [0, 1], v = 0 at the top."""
    m = world_to_map(up_axis, rotation_deg).to(dirs)
    return _map_dir_to_uv(dirs @ m.T)


def uv_to_dir(uv: Tensor, up_axis: str = "z", rotation_deg: float = 0.0) -> Tensor:
    """Equirect coordinates (..., 2) -> unit world directions (..., 3); inverse of :func:`dir_to_uv`."""
    m = world_to_map(up_axis, rotation_deg).to(uv)
    return _map_uv_to_dir(uv) @ m


def _map_dir_to_uv(d: Tensor) -> Tensor:
    x, y, z = d.unbind(-1)
    r2 = x * x + y * y
    # At the poles atan2(0, 0) has a NaN gradient; nudge x there (u is arbitrary at a pole anyway).
    x = torch.where(r2 < 1e-24, torch.full_like(x, 1e-12), x)
    u = torch.remainder(0.5 - torch.atan2(y, x) / (2 * math.pi), 1.0)
    v = torch.atan2(torch.sqrt(r2 + 1e-30), z) / math.pi
    return torch.stack([u, v], dim=-1)


def _map_uv_to_dir(uv: Tensor) -> Tensor:
    phi = (0.5 - uv[..., 0]) * (2 * math.pi)
    theta = uv[..., 1] * math.pi
    st = torch.sin(theta)
    return torch.stack([st * torch.cos(phi), st * torch.sin(phi), torch.cos(theta)], dim=-1)


def texel_uv(h: int, w: int, device=None) -> Tensor:
    """(h, w, 2) uv of the texel centres of an h x w equirect map."""
    v = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    u = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def texel_solid_angle(h: int, w: int, device=None) -> Tensor:
    """(h, 1) exact solid angle of each texel row (the rows sum, times w, to 4 pi)."""
    edges = torch.arange(h + 1, device=device, dtype=torch.float64) / h * math.pi
    band = torch.cos(edges[:-1]) - torch.cos(edges[1:])
    return (band * (2 * math.pi / w)).float()[:, None]


def mean_radiance(texels: Tensor) -> Tensor:
    """Solid-angle weighted mean (3,) of an equirect map (H, W, 3): the light's average radiance."""
    h, w, _ = texels.shape
    sa = texel_solid_angle(h, w, texels.device).to(texels.dtype)  # (h, 1)
    return (texels * sa[..., None]).sum((0, 1)) / (sa.sum() * w)


def equirect_lookup(image: Tensor, uv: Tensor, pole_rows: bool = False) -> Tensor:
    """Bilinear lookup of an (H, W, C) equirect map at uv (..., 2) -> (..., C); wraps in u, clamps in v.

    ``pole_rows=True`` reads a map whose rows sit at ``v = i / (H - 1)`` (first and last row *on* the poles, as
    the irradiance maps are stored) instead of at texel centres. Differentiable in both the texels and uv.
    """
    h, w, c = image.shape
    x = uv[..., 0] * w - 0.5
    y = uv[..., 1] * (h - 1) if pole_rows else uv[..., 1] * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0i = torch.remainder(x0.long(), w)
    x1i = torch.remainder(x0i + 1, w)
    y0i = y0.long().clamp(0, h - 1)
    y1i = (y0.long() + 1).clamp(0, h - 1)
    flat = image.reshape(h * w, c)

    def at(yi: Tensor, xi: Tensor) -> Tensor:
        return flat[(yi * w + xi).reshape(-1)].reshape(*uv.shape[:-1], c)

    top = at(y0i, x0i) * (1 - fx) + at(y0i, x1i) * fx
    bottom = at(y1i, x0i) * (1 - fx) + at(y1i, x1i) * fx
    return top * (1 - fy) + bottom * fy


def downsample_equirect(image: Tensor, h: int, w: int) -> Tensor:
    """Area-average an (H, W, C) equirect map to (h, w, C), weighting rows by solid angle so energy is kept."""
    hh, ww, _ = image.shape
    if (hh, ww) == (h, w):
        return image
    sa = texel_solid_angle(hh, ww, image.device).to(image.dtype)  # (H, 1)
    num = F.adaptive_avg_pool2d((image * sa[..., None]).permute(2, 0, 1)[None], (h, w))[0]
    den = F.adaptive_avg_pool2d(sa.expand(hh, ww)[None, None], (h, w))[0]
    return (num / den).permute(1, 2, 0)


def equirect_pyramid(image: Tensor) -> list[Tensor]:
    """Mip chain of an equirect map: level 0 is the map, each next level halves both sides down to height 1."""
    levels = [image]
    while levels[-1].shape[0] >= 2 and levels[-1].shape[1] >= 4:
        h, w = levels[-1].shape[:2]
        levels.append(downsample_equirect(levels[-1], h // 2, w // 2))
    return levels


def prefilter_ggx(pyramid: list[Tensor], roughness: float, out_hw: tuple[int, int], n_samples: int = 64) -> Tensor:
    """Split-sum pre-filtered radiance of an equirect map for one GGX roughness -> (h, w, C).

    ``pyramid`` is :func:`equirect_pyramid` of the map. Filtered importance sampling (see the module docstring):
    deterministic, and differentiable with respect to the texels. Roughness 0 returns the map resampled.
    """
    h, w = out_hw
    base = pyramid[0]
    dev = base.device
    r_map = _map_uv_to_dir(texel_uv(h, w, dev)).reshape(-1, 3)
    alpha = max(roughness * roughness, 1e-3)
    if roughness <= 0.0:
        return equirect_lookup(base, _map_dir_to_uv(r_map)).reshape(h, w, -1)
    xi = torch.stack(hammersley(n_samples), -1).float().to(dev)
    a2 = alpha * alpha
    cos_h = torch.sqrt((1 - xi[:, 0]) / (1 + (a2 - 1) * xi[:, 0]))
    sin_h = torch.sqrt((1 - cos_h * cos_h).clamp_min(0))
    phi = 2 * math.pi * xi[:, 1]
    hl = torch.stack([sin_h * torch.cos(phi), sin_h * torch.sin(phi), cos_h], dim=-1)
    ll = 2 * cos_h[:, None] * hl - torch.tensor([0.0, 0.0, 1.0], device=dev)  # reflect n = v = R about h
    keep = ll[:, 2] > 1e-4
    ll, cos_h = ll[keep], cos_h[keep]
    n_dot_l = ll[:, 2]
    # pdf(l) = D(h) (n.h) / (4 v.h) = D / 4 with n = v; a sample "covers" 1 / (M pdf) steradians.
    d = a2 / (math.pi * ((cos_h * cos_h) * (a2 - 1) + 1) ** 2)
    omega_s = 4.0 / (n_samples * d)
    omega_p = (math.pi / base.shape[0]) * (2 * math.pi / base.shape[1])
    lod = (0.5 * torch.log2(omega_s / omega_p) + 1.0).clamp(0, len(pyramid) - 1)
    t, b = orthonormal_basis(r_map)
    dirs = t[:, None] * ll[None, :, 0:1] + b[:, None] * ll[None, :, 1:2] + r_map[:, None] * ll[None, :, 2:3]
    uv = _map_dir_to_uv(dirs)  # (P, M, 2)
    acc = 0.0
    for j, level in enumerate(pyramid):
        wj = (1 - (lod - j).abs()).clamp_min(0) * n_dot_l
        idx = torch.nonzero(wj > 0).squeeze(-1)
        if idx.numel() == 0:
            continue
        acc = acc + (equirect_lookup(level, uv[:, idx]) * wj[idx, None]).sum(1)
    return (acc / n_dot_l.sum()).reshape(h, w, -1)


def prefilter_resolution(roughness: float, width: int, max_width: int = 128, min_width: int = 32) -> int:
    """Map width for a pre-filtered level: texels at most about a quarter of the GGX lobe (lobe ~ 2 alpha rad)."""
    if roughness <= 0:
        return width
    alpha = max(roughness * roughness, 1e-3)
    want = 2 ** math.ceil(math.log2(4 * math.pi / alpha))
    return int(min(width, max_width, max(min_width, want)))


def irradiance_map(image: Tensor, src_hw: tuple[int, int] = (128, 256), out_rows: int | None = None) -> Tensor:
    """Cosine-convolved (Lambert) irradiance ``E`` of an (H, W, C) equirect map -> (out_rows, w, C) on a pole-row
    grid (read it with ``equirect_lookup(..., pole_rows=True)``); ``E = pi L`` exactly for a constant map.

    The map is area-averaged to at most ``src_hw`` = (h, w); the output has the same w columns and
    ``out_rows`` (default h // 2 + 1) rows from pole to pole. The kernel ``max(n.l, 0) dw`` only depends on the
    two polar angles and the azimuth difference, so the convolution is a per-frequency matrix product after an FFT
    along u: exact for the discretised map, differentiable, ~0.15 s for a 1k map. Rows sit on the poles so that
    a bright source near the horizon (a setting sun) is not smeared by a half-texel tilt at the zenith; against the
    full-resolution integral of venice_sunset the result is within 1 % (normals in every direction).
    """
    hh, ww, c = image.shape
    src = downsample_equirect(image, min(src_hw[0], hh), min(src_hw[1], ww))
    h, w = src.shape[:2]
    ho = out_rows or h // 2 + 1
    dtype = torch.float64
    th_o = torch.linspace(0, math.pi, ho, dtype=dtype, device=image.device)[:, None, None]
    th_i = ((torch.arange(h, dtype=dtype, device=image.device) + 0.5) / h * math.pi)[None, :, None]
    dphi = (torch.arange(w, dtype=dtype, device=image.device) * (2 * math.pi / w))[None, None, :]
    cos = torch.cos(th_o) * torch.cos(th_i) + torch.sin(th_o) * torch.sin(th_i) * torch.cos(dphi)
    kernel = cos.clamp_min(0) * texel_solid_angle(h, w, image.device).to(dtype)[None]  # (ho, h, w)
    kernel = kernel * (math.pi / kernel.sum((1, 2), keepdim=True))  # quadrature-exact pi for a constant map
    # E[i, col] = sum_j sum_m K[i, j, m] L[j, col + m]; K is even in m, so its spectrum is real.
    k_hat = torch.fft.rfft(kernel, dim=-1).real.to(src.dtype)  # (ho, h, w//2+1)
    l_hat = torch.fft.rfft(src, dim=1)  # (h, w//2+1, C)
    e_hat = torch.einsum("ijk,jkc->ikc", k_hat.to(l_hat.dtype), l_hat)
    return torch.fft.irfft(e_hat, n=w, dim=1)


class PrefilteredEnv(NamedTuple):
    """Split-sum lighting tables of one map: GGX pre-filtered levels (one (h_k, w_k, 3) map per roughness in
    ``roughness``, finest first) and the Lambert irradiance map (h, w, 3) on a pole-row grid."""

    levels: list[Tensor]
    roughness: Tensor
    irradiance: Tensor


def _lookup_levels(levels: list[Tensor], level_roughness: Tensor, uv: Tensor, roughness: Tensor) -> Tensor:
    """Read every pre-filtered level at uv (N, 2) and interpolate linearly in roughness (N,) -> (N, 3)."""
    rl = level_roughness.to(uv)
    r = roughness.reshape(-1).clamp(float(rl[0]), float(rl[-1]))
    k = torch.searchsorted(rl, r.detach().contiguous(), right=True).clamp(1, len(rl) - 1)
    t = ((r - rl[k - 1]) / (rl[k] - rl[k - 1]))[:, None]
    out = 0.0
    for j, level in enumerate(levels):
        wj = torch.where((k - 1 == j)[:, None], 1 - t, torch.zeros_like(t)) + torch.where(
            (k == j)[:, None], t, torch.zeros_like(t)
        )
        if bool((wj > 0).any()) or wj.requires_grad:
            out = out + equirect_lookup(level, uv) * wj
    return out


def _levels_arg(roughness_levels) -> list[float]:
    if isinstance(roughness_levels, int):
        if roughness_levels < 2:
            raise NFieldsError(f"roughness_levels {roughness_levels}: need at least 2 levels")
        return [i / (roughness_levels - 1) for i in range(roughness_levels)]
    levels = [float(r) for r in roughness_levels]
    if len(levels) < 2 or levels[0] != 0.0 or any(b <= a for a, b in zip(levels, levels[1:])) or levels[-1] > 1:
        raise NFieldsError(f"roughness_levels {levels}: must increase from 0 to at most 1 (at least 2 levels)")
    return levels


def build_prefiltered(
    image: Tensor, roughness_levels=DEFAULT_ROUGHNESS_LEVELS, n_samples: int = 64, max_width: int = 128
) -> PrefilteredEnv:
    """Pre-filtered GGX mip chain and irradiance map of an (H, W, 3) equirect map (differentiable in the texels)."""
    levels = _levels_arg(roughness_levels)
    pyr = equirect_pyramid(image)
    w0 = image.shape[1]
    out = []
    for r in levels:
        w = prefilter_resolution(r, w0, max_width)
        if r <= 0:
            out.append(image)  # the mirror level is the map itself, at full resolution
        else:
            out.append(prefilter_ggx(pyr, r, (w // 2, w), n_samples))
    return PrefilteredEnv(out, torch.tensor(levels, device=image.device), irradiance_map(image))


class _EquirectLight(nn.Module):
    """Shared lookups of the two environment kinds; subclasses provide ``texels()`` and ``tables()``."""

    def __init__(self, up_axis: str = "z", rotation_deg: float = 0.0):
        super().__init__()
        self.up_axis, self.rotation_deg = up_axis, float(rotation_deg)
        self.register_buffer("world_to_map", world_to_map(up_axis, rotation_deg), persistent=False)

    def texels(self) -> Tensor:
        """The (H, W, 3) linear HDR radiance map."""
        raise NotImplementedError

    def tables(self) -> PrefilteredEnv:
        """Pre-filtered levels and irradiance map for the current texels."""
        raise NotImplementedError

    def irradiance_table(self) -> Tensor:
        """The pole-row irradiance map (h, w, 3) (see :func:`irradiance_map`)."""
        return self.tables().irradiance

    def prefiltered_levels(self) -> tuple[list[Tensor], Tensor]:
        """The pre-filtered GGX maps, finest first, and their roughness values."""
        t = self.tables()
        return t.levels, t.roughness

    def uv(self, dirs: Tensor) -> Tensor:
        """World directions (..., 3) -> map uv (..., 2), including up axis and rotation."""
        return _map_dir_to_uv(dirs @ self.world_to_map.to(dirs).T)

    def radiance(self, dirs: Tensor) -> Tensor:
        """Radiance L arriving from unit world directions (N, 3) -> (N, 3), bilinear."""
        return equirect_lookup(self.texels(), self.uv(dirs))

    def irradiance(self, normals: Tensor) -> Tensor:
        """Irradiance E(n) = integral L(l) max(n.l, 0) dl for unit normals (N, 3) -> (N, 3) (constant L: pi L)."""
        return equirect_lookup(self.irradiance_table(), self.uv(normals), pole_rows=True)

    def prefiltered(self, dirs: Tensor, roughness: Tensor) -> Tensor:
        """Split-sum pre-filtered radiance LD at unit reflection directions (N, 3) and roughness (N,) or (N, 1)
        in [0, 1] -> (N, 3); linear interpolation between the pre-filtered roughness levels."""
        levels, rough = self.prefiltered_levels()
        return _lookup_levels(levels, rough, self.uv(dirs), roughness)


class EnvironmentMap(_EquirectLight):
    """A fixed HDR environment from an equirect image (H, 2H, 3) (numpy or tensor), linear radiance.

    ``rotation_deg`` turns it about ``up_axis`` (see the module docstring for the conventions). The split-sum tables
    are built on first use with the defaults, or explicitly with :meth:`prefilter`.

    Example::

        env = EnvironmentMap.from_file("venice_sunset_1k.hdr", rotation_deg=90)
        env.prefilter(roughness_levels=6)
        rgb = shade_pbr(normals, view_dirs, albedo, roughness, metallic, env)
    """

    def __init__(self, image, rotation_deg: float = 0.0, up_axis: str = "z", name: str = "image"):
        super().__init__(up_axis, rotation_deg)
        check_equirect(image, name)
        img = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image, dtype=torch.float32)
        if not torch.isfinite(img).all() or (img < 0).any():
            raise NFieldsError(f"{name}: environment map has negative or non-finite values")
        self.register_buffer("image", img.contiguous(), persistent=False)
        self._tables: PrefilteredEnv | None = None

    @classmethod
    def from_file(cls, path: str | Path, rotation_deg: float = 0.0, up_axis: str = "z") -> EnvironmentMap:
        """Load a 2:1 equirect ``.hdr`` (see :func:`nfields.data.hdr.read_envmap`)."""
        return cls(read_envmap(path), rotation_deg=rotation_deg, up_axis=up_axis, name=str(path))

    def texels(self) -> Tensor:
        return self.image

    def prefilter(self, roughness_levels=DEFAULT_ROUGHNESS_LEVELS, n_samples: int = 64, max_width: int = 128):
        """Build (and keep) the split-sum tables: pre-filtered GGX levels at ``roughness_levels`` (an int = that
        many evenly spaced levels in [0, 1], or an increasing list starting at 0) and the irradiance map.

        Levels are ``max_width`` wide at most (the 0-roughness level is the map itself). Returns the
        :class:`PrefilteredEnv`. Under 1 s for a 1k map on one CPU core.
        """
        with torch.no_grad():
            self._tables = build_prefiltered(self.image, roughness_levels, n_samples, max_width)
        return self._tables

    def tables(self) -> PrefilteredEnv:
        if self._tables is None or self._tables.irradiance.device != self.image.device:
            self.prefilter()
        return self._tables


CHROMA_ALONG = ("uv", "u", "hemispheres")


class LearnedEnvironment(_EquirectLight):
    """A learnable HDR environment: ``height x width`` equirect texels stored as log-radiance, ``exp`` activation.

    Why texels (and not an MLP or spherical Gaussians): every quantity the split-sum shader needs is *linear* in the
    texels -- bilinear radiance, the cosine convolution (an FFT along u and a per-frequency matrix) and the filtered
    importance sampled GGX levels -- so lighting stays exact, deterministic and cheap to differentiate, with no
    Monte Carlo noise in the gradients. An MLP would need sampling to convolve; spherical Gaussians convolve in
    closed form but only against an SG fit of GGX (inconsistent with the BRDF the MC reference uses) and fitting
    lobe axes is non-convex. The log parameterisation keeps radiance positive and gives gradients relative
    precision across the 1e-2 .. 1e4 range of real skies; the low resolution caps the light's bandwidth, a useful
    prior against the light/material ambiguity of inverse rendering.

    The tables are rebuilt from the current texels on every :meth:`irradiance` / :meth:`prefiltered` call (a few
    ms at 16x32), so call each once per batch.

    ``levels`` > 1 adds coarser log-radiance grids (each half the size of the one before: 8x16, 4x8, ... for a
    16x32 map), upsampled bilinearly (wrapping in u) and summed with the finest: a coarse texel moves a whole
    region of the sky at once, driven by every pixel that region lights, so broad structure (where the sun and the
    bright half of the sky are) is found in a few steps while the finest level adds detail. The coarse grids start
    at 0, so the map starts where a single-level one does; ``log_radiance`` stays the finest level's parameter.

    ``sun=True`` adds an explicit sun lobe on top of the texels: a direction and an RGB power (radiance x solid
    angle), drawn into the map as a spherical Gaussian of fixed width (``sun_width`` texels, standard deviation),
    normalised over the texels so it always carries exactly its power wherever it sits between texel centres (and
    so moves smoothly with its direction). Why: a sun is far smaller than a 16 x 32 texel, and free texels learn it
    as a smear -- bright texels spread along its ring of elevation, each taking part of its power, which lights
    surfaces from the wrong directions and blurs its shadows; one lobe cannot be in two places. The lobe is off
    until :meth:`extract_sun` moves the texels' brightest spot into it (the trainer does so once the light has
    found its sun, ``model.env_sun_after`` steps into the PBR stage); from then on it learns with the texels.
    """

    def __init__(
        self,
        height: int = 16,
        width: int = 32,
        init: float = 1.0,
        up_axis: str = "z",
        rotation_deg: float = 0.0,
        roughness_levels=DEFAULT_ROUGHNESS_LEVELS,
        n_samples: int = 32,
        lr_mult: float = 1.0,
        levels: int = 1,
        sun: bool = False,
        sun_width: float = 0.5,
    ):
        super().__init__(up_axis, rotation_deg)
        if width != 2 * height or height < 2:
            raise NFieldsError(f"LearnedEnvironment: {width}x{height} is not an equirectangular (2:1) map")
        if init <= 0:
            raise NFieldsError(f"LearnedEnvironment init {init}: radiance must be > 0")
        if levels < 1 or height % (1 << (levels - 1)):
            raise NFieldsError(
                f"LearnedEnvironment levels {levels}: need >= 1, and the height ({height}) divisible by 2^(levels-1)"
            )
        self.log_radiance = nn.Parameter(torch.full((height, width, 3), math.log(init)))
        self.coarse = nn.ParameterList(
            [nn.Parameter(torch.zeros(height >> k, width >> k, 3)) for k in range(1, levels)]
        )
        self.roughness_levels = _levels_arg(roughness_levels)
        self.n_samples = n_samples
        self.lr_mult = float(lr_mult)
        self.sun = bool(sun)
        if sun:
            if not sun_width > 0:
                raise NFieldsError(f"LearnedEnvironment sun_width {sun_width}: must be > 0 (texels)")
            # Direction in the map frame (unnormalised; used normalised), log power per channel, and whether the
            # lobe is on (a buffer, so a resumed run knows the sun was already extracted).
            self.sun_dir = nn.Parameter(torch.tensor([1.0, 0.0, 0.0]))
            self.sun_log_power = nn.Parameter(torch.zeros(3))
            self.register_buffer("sun_on", torch.zeros(()))
            # exp(sharpness (cos - 1)) ~ exp(-angle^2 / 2 sigma^2) with sigma = sun_width texel heights.
            self.sun_sharpness = 1.0 / (sun_width * math.pi / height) ** 2
            self.register_buffer("texel_dirs", _map_uv_to_dir(texel_uv(height, width)), persistent=False)
            self.register_buffer("texel_sa", texel_solid_angle(height, width), persistent=False)

    def param_groups(self, lr: float) -> list[dict]:
        """The light's optimiser group: ``lr * lr_mult``, marked ``light`` (the trainer's light warm-up keys on it;
        see :func:`nfields.fields.base.param_groups`)."""
        sun = [self.sun_dir, self.sun_log_power] if self.sun else []
        return [{"params": [self.log_radiance, *self.coarse, *sun], "lr": lr * self.lr_mult, "light": True}]

    def sun_map(self) -> Tensor | None:
        """The sun lobe drawn into the texels, (H, W, 3) radiance, or None while it is off (see the class
        docstring): a spherical Gaussian about the sun's direction, normalised so that radiance x solid angle sums
        to its power."""
        if not self.sun or not bool(self.sun_on):
            return None
        mu = F.normalize(self.sun_dir, dim=0)
        lobe = torch.exp(self.sun_sharpness * (self.texel_dirs @ mu - 1.0))  # (H, W)
        lobe = lobe / (lobe * self.texel_sa).sum()
        return lobe[..., None] * self.sun_log_power.exp()

    def sun_direction(self) -> Tensor:
        """The sun lobe's unit world direction (3,) (meaningful once :meth:`extract_sun` has run)."""
        return F.normalize(self.sun_dir.detach(), dim=0) @ self.world_to_map.to(self.sun_dir)

    @torch.no_grad()
    def extract_sun(self) -> Tensor:
        """Move the map's brightest spot into the sun lobe and turn the lobe on; returns its world direction (3,).

        The brightest texel (by mean radiance: by power, radiance x solid angle, the horizon's large texels win
        while the sun is still forming) and its 3 x 3 neighbours: their radiance above the median of the texel's
        row (the sky at the sun's elevation) becomes the lobe's power, its power-weighted mean direction the lobe's
        direction, and those texels drop to that median -- the map renders about the same right after, with the
        sun in one place.
        """
        if not self.sun:
            raise NFieldsError("LearnedEnvironment.extract_sun: this light has no sun lobe (sun=False)")
        tex = self.texels()
        h, w, _ = tex.shape
        sa = self.texel_sa.to(tex)
        i, j = divmod(int(tex.mean(-1).argmax()), w)
        rows = torch.arange(max(i - 1, 0), min(i + 2, h), device=tex.device)
        cols = torch.remainder(torch.arange(j - 1, j + 2, device=tex.device), w)
        background = tex[i].median(dim=0).values  # (3,)
        patch = tex[rows][:, cols]
        kept = torch.minimum(patch, background)
        excess = patch - kept
        power = (excess * sa[rows][:, :, None]).sum((0, 1)).clamp_min(1e-8)
        mu = ((excess.mean(-1) * sa[rows])[..., None] * self.texel_dirs[rows][:, cols]).sum((0, 1))
        if float(mu.norm()) < 1e-8:
            mu = self.texel_dirs[i, j]
        self.sun_dir.copy_(F.normalize(mu, dim=0))
        self.sun_log_power.copy_(power.log())
        # Lower those texels to the background by their finest level (the coarse levels stay as they are).
        self.log_radiance[rows[:, None], cols[None, :]] += (kept.clamp_min(1e-6) / patch.clamp_min(1e-6)).log()
        self.sun_on.fill_(1.0)
        return self.sun_direction()

    @classmethod
    def from_image(cls, image, height: int = 16, width: int = 32, **kwargs) -> LearnedEnvironment:
        """Initialise from an equirect image (area-averaged down to height x width)."""
        check_equirect(image)
        img = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image, dtype=torch.float32)
        env = cls(height, width, **kwargs)
        with torch.no_grad():
            env.log_radiance.copy_(downsample_equirect(img, height, width).clamp_min(1e-6).log())
        return env

    def full_log_radiance(self) -> Tensor:
        """The (H, W, 3) log-radiance map: the finest level plus every coarser level upsampled (see ``levels``)."""
        out = self.log_radiance
        h, w, _ = out.shape
        for c in self.coarse:
            s = h // c.shape[0]
            x = c.permute(2, 0, 1)[None]
            x = torch.cat([x[..., -1:], x, x[..., :1]], -1)  # wrap in u; v clamps at the poles
            x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            out = out + x[0, :, :, s : s + w].permute(1, 2, 0)
        return out

    def texels(self) -> Tensor:
        tex = self.full_log_radiance().exp()
        sun = self.sun_map()
        return tex if sun is None else tex + sun

    def chroma_variation(self, along: str = "uv") -> Tensor:
        """Mean absolute difference of log-chromaticity (log radiance minus its mean over the channels) between
        neighbouring texels, along u (wrapping) and v: how much the light's *colour* changes from texel to texel,
        whatever its brightness does (the prior of ``train.light_chroma_smoothness``). ``along="u"``: between
        neighbours in azimuth only, so the colour may change with elevation (blue sky above, a brown ground below)
        but not around the horizon. ``along="hemispheres"``: along u and v, except across the horizon (between the
        map's two middle rows), so each hemisphere keeps one slowly varying colour of its own (a sky and a ground)."""
        if along not in CHROMA_ALONG:
            raise NFieldsError(f"chroma variation along {along!r}: valid: {', '.join(CHROMA_ALONG)}")
        log_radiance = self.full_log_radiance()
        c = log_radiance - log_radiance.mean(-1, keepdim=True)
        du = (c - c.roll(1, dims=1)).abs().mean()
        if along == "u":
            return du
        dv = (c[1:] - c[:-1]).abs()
        if along == "hemispheres":
            dv = torch.cat([dv[: c.shape[0] // 2 - 1], dv[c.shape[0] // 2 :]])
        return du + dv.mean()

    def irradiance_table(self) -> Tensor:
        tex = self.texels()
        return irradiance_map(tex, tex.shape[:2], out_rows=tex.shape[0] + 1)

    def prefiltered_levels(self) -> tuple[list[Tensor], Tensor]:
        tex = self.texels()
        h, w, _ = tex.shape
        pyr = equirect_pyramid(tex)
        levels = [tex if r <= 0 else prefilter_ggx(pyr, r, (h, w), self.n_samples) for r in self.roughness_levels]
        return levels, torch.tensor(self.roughness_levels, device=tex.device)

    def tables(self) -> PrefilteredEnv:
        levels, rough = self.prefiltered_levels()
        return PrefilteredEnv(levels, rough, self.irradiance_table())
