"""Physically based, differentiable shading: a GGX microfacet BRDF, split-sum image-based lighting and a Monte Carlo
reference renderer for the same BRDF.

Conventions
-----------
- All vectors are unit length, shape (N, 3), in world space. ``view_dirs`` point **from the surface towards the
  viewer** (``v = -ray_direction``); light directions ``l`` point from the surface towards the light.
- Materials: ``albedo`` (N, 3) linear base colour in [0, 1]; ``roughness`` and ``metallic`` (N,) or (N, 1) in
  [0, 1]. GGX ``alpha = roughness^2`` (Burley's remapping), clamped below at ``MIN_ALPHA`` so a mirror stays finite.
  ``f0 = lerp(0.04, albedo, metallic)``.
- Colours are linear radiance (HDR) until :func:`tonemap` / :func:`linear_to_srgb`.

The BRDF (:func:`brdf_cook_torrance`)
-------------------------------------
``f = F(v.h) D(h) G2(v, l) / (4 (n.v)(n.l))  +  (1 - metallic) albedo / pi * (1 - E(v)) (1 - E(l)) / (1 - E_avg)``

- ``D``: GGX / Trowbridge-Reitz normal distribution (:func:`ggx_ndf`).
- ``G2``: the *height-correlated* Smith masking-shadowing of GGX (Heitz 2014), the exact Smith form for GGX
  (:func:`smith_g`); it is symmetric in v and l.
- ``F``: Schlick's Fresnel.
- The diffuse lobe is Lambert scaled by the energy the specular layer does not reflect. ``E(w) = f0 A + B`` is the
  specular directional albedo from the split-sum table (:func:`split_sum_lut`) and ``E_avg`` its cosine-weighted
  hemispherical average (Kelemen & Szirmay-Kalos 2001; the same term Kulla & Conty use). Why not the simpler
  ``(1 - F(v.h))`` weight: measured, it reflects up to 1.32x the incoming energy at grazing view for roughness 0.2
  (the specular lobe's Fresnel grows while the diffuse lobe barely shrinks). The coupled form is reciprocal,
  keeps every directional albedo <= 1, and makes a white dielectric reflect *exactly* all the energy (white
  furnace), which the split-sum shader reproduces.
- Single-scattering GGX loses energy at high roughness (no multiple bounces between microfacets): a white metal
  reflects ``A + B`` of the light, down to ``1 - ln 2 = 0.307`` at roughness 1 and normal incidence (the exact
  value for alpha = 1), ~0.85 at roughness 0.5, > 0.95 below roughness 0.3. This is the documented bound the white
  furnace test checks.

Split-sum image-based lighting (:func:`shade_pbr`)
-------------------------------------------------
``rgb = albedo (1 - metallic) (1 - E(v)) E_irr(n) / pi  +  LD(reflect(v, n), roughness) (f0 A(n.v, r) + B(n.v, r))``

with ``E_irr(n) = integral L(l) max(n.l, 0) dl`` (so a constant environment ``L`` has ``E_irr = pi L`` and the
diffuse term is ``albedo L`` times the non-specular fraction) and ``LD`` the GGX pre-filtered radiance
(see :mod:`nfields.render.envmap`). Under a constant environment this equals the exact integral of the BRDF above;
otherwise it is Karis' split-sum approximation (lighting and BRDF integrated separately, ``n = v = R`` lobe).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from nfields.render.shadows import ShadowLights

MIN_ALPHA = 1e-3
DIELECTRIC_F0 = 0.04
LUT_SAMPLES = 256  # per table cell; A, B within ~1e-3 of a 2048-sample table

_LUT_CACHE: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}


# ---------------------------------------------------------------------------------------------- colour helpers
def linear_to_srgb(x: Tensor) -> Tensor:
    """Linear [0, 1] -> sRGB-encoded [0, 1] (IEC 61966-2-1 piecewise curve); values are clamped to [0, 1] first.

    Differentiable everywhere (the power branch never sees values below its threshold, so no infinite slope at 0).
    """
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def srgb_to_linear(x: Tensor) -> Tensor:
    """sRGB-encoded [0, 1] -> linear [0, 1] (inverse of :func:`linear_to_srgb`)."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def tonemap(rgb: Tensor, exposure: float = 0.0, curve: str = "aces") -> Tensor:
    """HDR linear radiance (..., 3) -> display sRGB in [0, 1]: scale by ``2**exposure`` (stops), apply ``curve``
    (``"aces"``: Narkowicz's ACES filmic fit; ``"reinhard"``: x / (1 + x); ``"clip"``: clamp), then sRGB-encode."""
    x = rgb.clamp_min(0.0) * (2.0**exposure)
    if curve == "aces":
        x = (x * (2.51 * x + 0.03)) / (x * (2.43 * x + 0.59) + 0.14)
    elif curve == "reinhard":
        x = x / (1.0 + x)
    elif curve != "clip":
        from nfields.errors import NFieldsError

        raise NFieldsError(f"tonemap curve {curve!r}: must be one of aces, reinhard, clip")
    return linear_to_srgb(x)


# ---------------------------------------------------------------------------------------------- BRDF pieces
def roughness_to_alpha(roughness: Tensor) -> Tensor:
    """GGX alpha = roughness^2 (roughness clamped to [0, 1]), at least ``MIN_ALPHA``."""
    return (roughness.clamp(0.0, 1.0) ** 2).clamp_min(MIN_ALPHA)


def fresnel_schlick(cos: Tensor, f0: Tensor) -> Tensor:
    """Schlick's Fresnel ``f0 + (1 - f0)(1 - cos)^5``; ``cos`` (N, 1) or (N,) broadcast against ``f0`` (N, 3)."""
    return f0 + (1.0 - f0) * (1.0 - cos.clamp(0.0, 1.0)) ** 5


def ggx_ndf(n_dot_h: Tensor, alpha: Tensor | float) -> Tensor:
    """GGX normal distribution ``D(h) = alpha^2 / (pi ((n.h)^2 (alpha^2 - 1) + 1)^2)`` (0 for n.h <= 0).

    Normalised so that ``integral D(h) (n.h) dh = 1`` over the hemisphere of half vectors.
    """
    a2 = alpha * alpha
    c = n_dot_h.clamp(0.0, 1.0)
    d = a2 / (math.pi * (c * c * (a2 - 1.0) + 1.0) ** 2)
    return torch.where(n_dot_h > 0, d, torch.zeros_like(d))


def smith_g1(n_dot_w: Tensor, alpha: Tensor | float) -> Tensor:
    """Smith masking of GGX for one direction: ``2 mu / (mu + sqrt(alpha^2 + (1 - alpha^2) mu^2))``."""
    a2 = alpha * alpha
    mu = n_dot_w.clamp(1e-6, 1.0)
    return 2 * mu / (mu + torch.sqrt(a2 + (1 - a2) * mu * mu))


def smith_g(n_dot_v: Tensor, n_dot_l: Tensor, alpha: Tensor | float) -> Tensor:
    """Height-correlated Smith masking-shadowing of GGX (Heitz 2014): ``G2 = 1 / (1 + Lambda(v) + Lambda(l))``,
    written as ``2 (n.v)(n.l) / ((n.l) sqrt(a2 + (1-a2)(n.v)^2) + (n.v) sqrt(a2 + (1-a2)(n.l)^2))``. Symmetric in
    v and l; always <= the separable product G1(v) G1(l)."""
    a2 = alpha * alpha
    nv, nl = n_dot_v.clamp(1e-6, 1.0), n_dot_l.clamp(1e-6, 1.0)
    return 2 * nv * nl / (nl * torch.sqrt(a2 + (1 - a2) * nv * nv) + nv * torch.sqrt(a2 + (1 - a2) * nl * nl))


def reflect(v: Tensor, n: Tensor) -> Tensor:
    """Mirror direction of ``v`` (pointing away from the surface) about ``n``: ``2 (n.v) n - v``."""
    return 2 * (n * v).sum(-1, keepdim=True) * n - v


def orthonormal_basis(n: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit tangents (t, b) with (t, b, n) right-handed for unit n (..., 3) (Duff et al. 2017, branchless)."""
    x, y, z = n.unbind(-1)
    sign = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    a = -1.0 / (sign + z)
    b = x * y * a
    return (
        torch.stack([1.0 + sign * x * x * a, sign * b, -sign * x], dim=-1),
        torch.stack([b, sign + y * y * a, -y], dim=-1),
    )


def sample_ggx_vndf(v_local: Tensor, alpha: Tensor, u1: Tensor, u2: Tensor) -> Tensor:
    """Half vector drawn from GGX's distribution of *visible* normals (Heitz 2018), in the local frame (n = +z).

    ``v_local`` (..., 3) with v_z > 0, ``alpha``/``u1``/``u2`` broadcastable (...). The reflected direction
    ``l = 2 (v.h) h - v`` then has pdf ``D(h) G1(v) / (4 n.v)``.
    """
    vh = F.normalize(torch.stack([alpha * v_local[..., 0], alpha * v_local[..., 1], v_local[..., 2]], -1), dim=-1)
    lensq = vh[..., 0] ** 2 + vh[..., 1] ** 2
    inv = torch.where(lensq > 1e-12, torch.rsqrt(lensq.clamp_min(1e-12)), torch.zeros_like(lensq))
    t1 = torch.stack([-vh[..., 1] * inv, vh[..., 0] * inv, torch.zeros_like(lensq)], -1)
    t1 = torch.where((lensq > 1e-12)[..., None], t1, torch.tensor([1.0, 0.0, 0.0], device=v_local.device))
    t2 = torch.cross(vh, t1, dim=-1)
    r = torch.sqrt(u1)
    phi = 2 * math.pi * u2
    p1, p2 = r * torch.cos(phi), r * torch.sin(phi)
    s = 0.5 * (1.0 + vh[..., 2])
    p2 = (1.0 - s) * torch.sqrt((1.0 - p1 * p1).clamp_min(0)) + s * p2
    nh = p1[..., None] * t1 + p2[..., None] * t2 + torch.sqrt((1 - p1 * p1 - p2 * p2).clamp_min(0))[..., None] * vh
    return F.normalize(torch.stack([alpha * nh[..., 0], alpha * nh[..., 1], nh[..., 2].clamp_min(1e-6)], -1), dim=-1)


# ---------------------------------------------------------------------------------------------- split-sum table
def hammersley(n: int, device=None) -> tuple[Tensor, Tensor]:
    """n low-discrepancy points in [0, 1)^2 as two float64 (n,) tensors: ((i + 0.5) / n, radical inverse of i)."""
    i = torch.arange(n, dtype=torch.int64)
    rev = torch.zeros(n, dtype=torch.float64)
    bit, frac = i.clone(), 0.5
    while bool(bit.any()):
        rev += (bit & 1).double() * frac
        bit >>= 1
        frac *= 0.5
    return ((i.double() + 0.5) / n).to(device), rev.to(device)


def split_sum_lut(n: int = 64, n_samples: int = LUT_SAMPLES, device=None) -> Tensor:
    """The split-sum DFG table: (n, n, 2) ``(A, B)`` indexed ``[roughness, n.v]`` on the grid ``i / (n - 1)``.

    ``E_spec(n.v, r, f0) = f0 A + B`` is the specular directional albedo ``integral f_spec (n.l) dl`` of the GGX
    term with height-correlated Smith G (Schlick Fresnel is linear in f0, hence two channels). Computed once by
    importance sampling the visible normals with ``n_samples`` Hammersley points per cell (estimator
    ``G2 / G1(v)`` times ``1 - Fc`` or ``Fc``, ``Fc = (1 - v.h)^5``), in float64, and cached per device.
    """
    return _lut(n, n_samples, device)[0]


def _lut(n: int, n_samples: int, device=None) -> tuple[Tensor, Tensor]:
    """(table (n, n, 2), hemispherical averages (n, 2) of A and B per roughness: ``2 integral X(mu) mu dmu``)."""
    key = (n, n_samples, str(torch.device(device) if device is not None else torch.device("cpu")))
    if key not in _LUT_CACHE:
        if key[2] != "cpu":
            cpu_table, cpu_avg = _lut(n, n_samples, "cpu")
            _LUT_CACHE[key] = (cpu_table.to(device), cpu_avg.to(device))
            return _LUT_CACHE[key]
        c = torch.linspace(0, 1, n, dtype=torch.float64)
        alpha = (c**2).clamp_min(MIN_ALPHA)[:, None, None]  # (R, 1, 1)
        mu = c.clamp_min(1e-3)[None, :, None]  # (1, M, 1); n.v = 0 itself is a limit
        u1, u2 = hammersley(n_samples)
        v = torch.stack([torch.sqrt(1 - mu * mu), torch.zeros_like(mu), mu], -1).expand(n, n, 1, 3)
        h = sample_ggx_vndf(v, alpha, u1[None, None], u2[None, None])  # (R, M, S, 3)
        vdh = (v * h).sum(-1).clamp(0, 1)
        nl = 2 * vdh * h[..., 2] - mu
        w = torch.where(nl > 0, smith_g(mu, nl, alpha) / smith_g1(mu, alpha), torch.zeros_like(nl))
        fc = (1 - vdh) ** 5
        table = torch.stack([((1 - fc) * w).mean(-1), (fc * w).mean(-1)], -1)
        # E_avg = 2 integral E(mu) mu dmu, trapezoid rule on the n.v grid.
        avg = 2 * torch.trapezoid(table * c[None, :, None], c, dim=1)
        _LUT_CACHE[key] = (table.float(), avg.float())
    return _LUT_CACHE[key]


def _lut_lookup(table: Tensor, n_dot_v: Tensor, roughness: Tensor) -> Tensor:
    """Bilinear read of an (n, n, C) table (grid ``i / (n - 1)``) at (N, 1) n.v and roughness -> (N, C)."""
    grid = torch.stack([n_dot_v.reshape(-1) * 2 - 1, roughness.reshape(-1) * 2 - 1], -1)
    out = F.grid_sample(
        table.permute(2, 0, 1)[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[0, :, 0].T


def specular_albedo(n_dot_v: Tensor, roughness: Tensor, f0: Tensor, n: int = 64) -> Tensor:
    """``E(v) = f0 A + B``: fraction of light the GGX layer reflects, (N, 1) n.v and roughness, (N, 3) f0."""
    ab = _lut_lookup(split_sum_lut(n, device=f0.device), n_dot_v.clamp(0, 1), roughness.clamp(0, 1))
    return f0 * ab[:, :1] + ab[:, 1:]


def _specular_albedo_avg(roughness: Tensor, f0: Tensor, n: int = 64) -> Tensor:
    """``E_avg = f0 A_avg + B_avg`` (N, 3): cosine-weighted hemispherical mean of :func:`specular_albedo`."""
    avg = _lut(n, LUT_SAMPLES, f0.device)[1]  # (n, 2)
    x = roughness.clamp(0, 1).reshape(-1) * (n - 1)
    i0 = x.floor().clamp(0, n - 1)
    t = (x - i0).clamp(0, 1)[:, None]
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=n - 1)
    ab = avg[i0] * (1 - t) + avg[i1] * t
    return f0 * ab[:, :1] + ab[:, 1:]


def _repeat(x: Tensor, k: int) -> Tensor:
    """(N, C) -> (N * k, C), each row repeated k times consecutively."""
    return x[:, None].expand(-1, k, -1).reshape(-1, x.shape[-1])


def _col(x: Tensor) -> Tensor:
    return x.reshape(-1, 1)


def _material(albedo: Tensor, metallic: Tensor) -> Tensor:
    return DIELECTRIC_F0 * (1 - metallic) + albedo * metallic


def brdf_cook_torrance(n: Tensor, v: Tensor, l: Tensor, albedo: Tensor, roughness: Tensor, metallic: Tensor) -> Tensor:
    """BRDF value ``f(v, l)`` (N, 3) (not multiplied by n.l): GGX specular + energy-coupled Lambert, see the module
    docstring. Zero when ``n.v <= 0`` or ``n.l <= 0``. Reciprocal: ``f(v, l) == f(l, v)``.

    Args: unit normals ``n``, view ``v`` and light ``l`` directions (N, 3), both pointing away from the surface;
    ``albedo`` (N, 3); ``roughness`` and ``metallic`` (N,) or (N, 1).
    """
    roughness, metallic = _col(roughness), _col(metallic)
    nv, nl = _col((n * v).sum(-1)), _col((n * l).sum(-1))
    h = F.normalize(v + l, dim=-1)
    nh, vh = _col((n * h).sum(-1)), _col((v * h).sum(-1))
    alpha = roughness_to_alpha(roughness)
    f0 = _material(albedo, metallic)
    spec = (
        fresnel_schlick(vh, f0)
        * ggx_ndf(nh, alpha)
        * smith_g(nv, nl, alpha)
        / (4 * nv.clamp_min(1e-6) * nl.clamp_min(1e-6))
    )
    e_v = specular_albedo(nv, roughness, f0)
    e_l = specular_albedo(nl, roughness, f0)
    e_avg = _specular_albedo_avg(roughness, f0)
    diff = (1 - metallic) * albedo / math.pi * (1 - e_v) * (1 - e_l) / (1 - e_avg).clamp_min(1e-4)
    return torch.where((nv > 0) & (nl > 0), spec + diff, torch.zeros_like(spec))


# ---------------------------------------------------------------------------------------------- renderers
def occluded_irradiance(normals: Tensor, visibility: Tensor, lights: ShadowLights) -> Tensor:
    """Irradiance (N, 3) that the blocked part of ``lights`` would have brought: ``sum_k (1 - V_k) L_k (n.w_k)+ dw_k``
    for unit normals (N, 3) and visibility (N, K) in [0, 1] (see :mod:`nfields.render.shadows`)."""
    cos = (normals @ lights.dirs.T).clamp_min(0.0)
    return ((1.0 - visibility) * cos * lights.solid_angle) @ lights.radiance


def shade_pbr(
    normals: Tensor,
    view_dirs: Tensor,
    albedo: Tensor,
    roughness: Tensor,
    metallic: Tensor,
    env,
    return_parts: bool = False,
    shadow: tuple[Tensor, ShadowLights] | None = None,
    extra_irradiance: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Split-sum image-based lighting -> linear HDR rgb (N, 3) (formula in the module docstring).

    ``env`` provides ``irradiance(normals)`` and ``prefiltered(dirs, roughness)`` (an
    :class:`~nfields.render.envmap.EnvironmentMap` or :class:`~nfields.render.envmap.LearnedEnvironment`).
    ``view_dirs`` point from the surface to the camera. Back-facing normals (n.v <= 0) are shaded as if n.v were
    1e-4, a common guard for SDF normals near silhouettes. Differentiable in every input and in the environment.
    With ``return_parts`` returns ``(rgb, diffuse, specular)``. ``shadow = (visibility (N, K), lights)`` removes
    the blocked part of the light's brightest texels (see :mod:`nfields.render.shadows`): from the irradiance, and
    from the specular term by the same ratio. ``extra_irradiance`` (N, 3): irradiance added to the diffuse term
    after shadowing (a field's local light; see :mod:`nfields.fields.pbr`).
    """
    roughness, metallic = _col(roughness), _col(metallic)
    nv = _col((normals * view_dirs).sum(-1)).clamp(1e-4, 1.0)
    f0 = _material(albedo, metallic)
    e_spec = specular_albedo(nv, roughness, f0)
    irradiance = env.irradiance(normals)
    spec_light = env.prefiltered(reflect(view_dirs, normals), roughness)
    if shadow is not None:
        lit = (irradiance - occluded_irradiance(normals, *shadow)).clamp_min(0.0)
        spec_light = spec_light * (lit / irradiance.clamp_min(1e-8)).clamp(0.0, 1.0)
        irradiance = lit
    if extra_irradiance is not None:
        irradiance = irradiance + extra_irradiance
    diffuse = albedo * (1 - metallic) * (1 - e_spec) * irradiance / math.pi
    specular = spec_light * e_spec
    rgb = diffuse + specular
    return (rgb, diffuse, specular) if return_parts else rgb


_HALTON_BASES = (2, 3, 5)


def _radical_inverse(i: Tensor, base: int) -> Tensor:
    """Van der Corput radical inverse of the integer tensor ``i`` in ``base`` -> float64 in [0, 1)."""
    out = torch.zeros(i.shape, dtype=torch.float64, device=i.device)
    f, i = 1.0 / base, i.clone()
    while bool((i > 0).any()):
        out = out + f * (i % base).double()
        i, f = torch.div(i, base, rounding_mode="floor"), f / base
    return out


def _shifted_halton(index: Tensor, shift: Tensor) -> Tensor:
    """Halton points (bases 2, 3, 5) of the sample indices (k,), each point's sequence toroidally shifted by its own
    random offset (dims, N, 1) (Cranley-Patterson rotation: every sample stays uniform, so estimates stay unbiased,
    but one point's samples cover the square evenly) -> (dims, N, k)."""
    h = torch.stack([_radical_inverse(index, b) for b in _HALTON_BASES]).to(shift)  # (dims, k)
    return torch.remainder(h[:, None, :] + shift, 1.0)


class _EnvSampler:
    """Importance sampling of an equirect light (``env.texels()``, ``env.world_to_map``): texel j with probability
    ``P_j`` proportional to its mean radiance x solid angle, then uniform in its (u, v) rectangle; the density per
    solid angle of a direction in texel j is ``P_j H W / (2 pi^2 sin theta)``."""

    def __init__(self, env):
        from nfields.render.envmap import texel_solid_angle  # envmap imports this module

        with torch.no_grad():
            tex = env.texels().detach().float()
            h, w = tex.shape[:2]
            sa = texel_solid_angle(h, w).to(tex)  # (h, 1)
            # Radiance is looked up bilinearly, so a texel next to a bright one is partly as bright: take each
            # texel's 3x3 neighbourhood maximum (wrapping in u) so the pdf never undershoots the integrand.
            lum = F.pad(tex.mean(-1)[None, None], (1, 1, 0, 0), mode="circular")
            lum = F.max_pool2d(F.pad(lum, (0, 0, 1, 1), mode="replicate"), 3, stride=1)[0, 0]
            power = lum * sa
            power = power + 1e-6 * power.mean().clamp_min(1e-12)  # every texel reachable
            self.prob = (power / power.sum()).reshape(-1)
            # How concentrated the light is: 4 pi sum_j P_j^2 / dw_j, 1 for a uniform sky, large for a sun.
            dw = sa.expand(h, w).reshape(-1)
            self.concentration = float(4 * math.pi * (self.prob**2 / dw).sum())
            self.cdf = torch.cumsum(self.prob, 0)
            self.cdf[-1] = 1.0
        self.h, self.w = h, w
        self.to_world = env.world_to_map.to(tex)  # d_map = M d_world, so d_world (row) = d_map @ M

    def sample(self, u0: Tensor, u1: Tensor, u2: Tensor) -> Tensor:
        """Unit world directions (...) x 3 from three uniform tensors of one shape."""
        j = torch.searchsorted(self.cdf, u0.reshape(-1).contiguous()).clamp_max(self.h * self.w - 1).reshape(u0.shape)
        row, col = j // self.w, j % self.w
        uv = torch.stack([(col + u1) / self.w, (row + u2) / self.h], -1)
        theta, phi = uv[..., 1] * math.pi, (0.5 - uv[..., 0]) * (2 * math.pi)
        st = torch.sin(theta)
        d_map = torch.stack([st * torch.cos(phi), st * torch.sin(phi), torch.cos(theta)], -1)
        return d_map @ self.to_world.to(d_map)

    def pdf(self, dirs: Tensor) -> Tensor:
        """Density per solid angle (...) of drawing unit world directions (..., 3)."""
        d = dirs @ self.to_world.to(dirs).T
        x, y, z = d.unbind(-1)
        u = torch.remainder(0.5 - torch.atan2(y, x) / (2 * math.pi), 1.0)
        theta = torch.atan2(torch.sqrt(x * x + y * y), z)
        row = (theta / math.pi * self.h).long().clamp(0, self.h - 1)
        col = (u * self.w).long().clamp(0, self.w - 1)
        p = self.prob.to(dirs)[row * self.w + col]
        return p * (self.h * self.w) / (2 * math.pi**2 * torch.sin(theta).clamp_min(1e-6))


def shade_pbr_mc(
    normals: Tensor,
    view_dirs: Tensor,
    albedo: Tensor,
    roughness: Tensor,
    metallic: Tensor,
    env,
    n_samples: int = 64,
    generator: torch.Generator | None = None,
    visibility: Callable[[Tensor], Tensor] | None = None,
    env_sampling: float = 0.5,
) -> Tensor:
    """Monte Carlo reference of ``integral f(v, l) L(l) (n.l) dl`` -> linear HDR rgb (N, 3), same BRDF as
    :func:`brdf_cook_torrance`, lighting from ``env.radiance``.

    Each sample picks one of three strategies: the light itself with probability ``p_e`` (a texel drawn in
    proportion to its power, radiance x solid angle, then a uniform point in it: what keeps a small bright sun from
    turning into fireflies; ``p_e = env_sampling (1 - 1 / c)`` with ``c = 4 pi sum_j P_j^2 / dw_j`` the light's
    concentration, so a uniform sky is not sampled twice), else GGX visible-normal sampling (Heitz 2018) with
    probability ``p_s`` (the specular share of the expected reflectance, clamped to [0.1, 0.9]) or cosine sampling;
    each sample is weighted by the mixture pdf ``p_e pdf_env + (1 - p_e) (p_s pdf_ggx + (1 - p_s) pdf_cos)`` --
    one-sample MIS with the balance heuristic, unbiased and robust for sunny skies, mirror-like metals and matte
    dielectrics alike. ``env_sampling = 0`` (or an env without ``texels()``) samples the BRDF only. ``generator``
    (a CPU ``torch.Generator``) makes it reproducible.
    Differentiable (path derivatives through the sampled directions). Memory: processed ~1M samples at a time.
    ``visibility`` (optional, for shadows) maps the sampled world light directions (N, k, 3) of the N points to
    (N, k) in [0, 1]: 0 where the scene blocks the environment.
    """
    dev = normals.device
    roughness, metallic = _col(roughness), _col(metallic)
    nv = _col((normals * view_dirs).sum(-1)).clamp(1e-4, 1.0)
    alpha = roughness_to_alpha(roughness)
    f0 = _material(albedo, metallic)
    with torch.no_grad():
        e_spec = specular_albedo(nv, roughness, f0)
        kd = albedo * (1 - metallic) * (1 - e_spec)
        p_spec = (e_spec.mean(-1, keepdim=True) / (e_spec + kd).mean(-1, keepdim=True).clamp_min(1e-6)).clamp(0.1, 0.9)
    t, b = orthonormal_basis(normals)
    v_local = torch.cat([_col((view_dirs * t).sum(-1)), _col((view_dirs * b).sum(-1)), nv], -1)
    v_local = F.normalize(v_local, dim=-1)
    n_pts = normals.shape[0]
    chunk = max(1, min(n_samples, (1 << 20) // max(n_pts, 1)))
    total = torch.zeros_like(albedo)
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    shift = torch.rand((n_pts, 1), generator=generator, device=gen_dev).to(dev)
    # Quasi-random sample directions: Halton points per point, randomly rotated (see _shifted_halton).
    qmc_shift = torch.rand((len(_HALTON_BASES), n_pts, 1), generator=generator, device=gen_dev).to(dev, torch.float64)
    light = _EnvSampler(env) if env_sampling > 0 and callable(getattr(env, "texels", None)) else None
    # Light sampling pays off with a concentrated light; under a near-uniform sky it would only waste samples.
    p_env = float(env_sampling) * (1.0 - 1.0 / max(light.concentration, 1.0)) if light is not None else 0.0
    if p_env < 0.02:
        light, p_env = None, 0.0
    for s0 in range(0, n_samples, chunk):
        k = min(chunk, n_samples - s0)
        index = torch.arange(s0, s0 + k, device=dev)
        u = _shifted_halton(index, qmc_shift).to(normals.dtype)  # (3, N, k)
        # GGX branch: reflect v about a visible normal; cosine branch: Malley's method.
        h = sample_ggx_vndf(v_local[:, None], alpha, u[0], u[1])
        l_spec = 2 * (v_local[:, None] * h).sum(-1, keepdim=True) * h - v_local[:, None]
        r = torch.sqrt(u[0])
        l_cos = torch.stack(
            [r * torch.cos(2 * math.pi * u[1]), r * torch.sin(2 * math.pi * u[1]), torch.sqrt(1 - u[0])], -1
        )
        # Strategy choice stratified over the sample index with a random per-point shift: each choice is still
        # uniform (unbiased), but every point gets exactly ~p_s * n_samples GGX samples (no binomial noise).
        strata = (torch.arange(s0, s0 + k, device=dev, dtype=u.dtype) + 0.5) / n_samples
        pick = torch.remainder(strata[None] + shift, 1.0)  # (N, k) uniform; split into the strategies' shares
        pick_spec = (pick < p_env + (1 - p_env) * p_spec)[..., None]
        ll = torch.where(pick_spec, l_spec, l_cos)  # (N, k, 3) local
        if light is not None:
            le = light.sample(u[0], u[1], u[2])  # (N, k, 3) world; its samples are others than the BRDF's
            le_local = torch.stack(
                [(le * t[:, None]).sum(-1), (le * b[:, None]).sum(-1), (le * normals[:, None]).sum(-1)], -1
            )
            ll = torch.where((pick < p_env)[..., None], le_local, ll)
        nl = ll[..., 2:3]
        hh = F.normalize(ll + v_local[:, None], dim=-1)
        pdf_spec = ggx_ndf(hh[..., 2:3], alpha[:, None]) * smith_g1(nv, alpha)[:, None] / (4 * nv[:, None])
        pdf = p_spec[:, None] * pdf_spec + (1 - p_spec[:, None]) * nl.clamp_min(0) / math.pi
        lw = t[:, None] * ll[..., 0:1] + b[:, None] * ll[..., 1:2] + normals[:, None] * ll[..., 2:3]
        if light is not None:
            pdf = (1 - p_env) * pdf + p_env * light.pdf(lw)[..., None]
        per_sample = [_repeat(x, k) for x in (normals, view_dirs, albedo, roughness, metallic)]
        f = brdf_cook_torrance(per_sample[0], per_sample[1], lw.reshape(-1, 3), *per_sample[2:]).reshape(n_pts, k, 3)
        radiance = env.radiance(lw.reshape(-1, 3)).reshape(n_pts, k, 3)
        if visibility is not None:
            radiance = radiance * visibility(lw).reshape(n_pts, k, 1).to(radiance)
        ok = (nl > 1e-6) & (pdf > 0)
        contrib = torch.where(ok, f * radiance * nl / pdf.clamp_min(1e-12), torch.zeros_like(f))
        total = total + contrib.sum(1)
    return total / n_samples
