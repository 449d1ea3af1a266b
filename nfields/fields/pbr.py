"""SDF + PBR: a NeuS-style signed distance field whose colour is *shaded*, not predicted (the MatDecompSDF recipe).

Per sample the field predicts materials from its geometry features -- albedo (linear, 3), roughness and metallic --
and shades them with the split-sum GGX + Lambert model of :mod:`nfields.render.shading` under a learned HDR
environment (:class:`~nfields.render.envmap.LearnedEnvironment`, 16x32 log-radiance texels by default), using the
SDF normal and the view direction. The result is linear radiance, clipped and encoded to sRGB like the images
(a camera's exposure is absorbed into the light's scale).

Why it keeps the neural colour head of :class:`~nfields.fields.sdf.SDFField`: training runs in two stages (the
trainer switches ``shading`` from ``"neural"`` to ``"pbr"``), geometry first with the flexible head, which
converges faster and more reliably, then materials and light on a settled surface.

Scale ambiguity: ``albedo x light`` is only determined up to a per-channel factor (a twice brighter sky and a half
as bright albedo render the same). Nothing in training pins it; the light starts at a neutral grey of 1.0 and
albedo is bounded to [0.03, 1], and evaluation aligns albedo per channel (least squares) before PSNR, as the
inverse-rendering literature (NeRFactor, TensoIR) does. Relighting with a new map uses the learned albedo as is.

Shadows (``shadow_lights`` > 0): the brightest texels of the light cast soft shadows, traced per ray through a
cached copy of the SDF (:mod:`nfields.render.shadows`); the renderer asks :meth:`PBRField.shadow_visibility` at
each ray's surface point and passes the result to :meth:`PBRField.color`. With ``shadow_sky`` > 0 the rest of the
sky casts soft shadows too, as the texels of a coarse copy of the light without its brightest ones
(:func:`~nfields.render.shadows.shadow_lights`); their visibility is traced once per shadow-lattice update from the
near-surface vertices of a ``shadow_sky_cache``^3 lattice and interpolated per ray (~10x fewer traced directions
than per ray on the demo).

Local light (``local_light``): a distant environment lights every point alike, which a real capture does not --
lamps near the object (DTU's LED rig), light bounced between its own surfaces, a room rather than a sky. Those
reach the diffuse term through a spatially varying irradiance ``E_loc(x, n)`` added to the environment's
(:class:`LocalIrradiance`: a small MLP of a low-frequency positional encoding of x and degree-2 spherical harmonics
of n gives a non-negative factor, times the irradiance a constant sky of the learned light's mean radiance would
give -- so it is in the learned light's units whatever scale that drifts to -- starting at 0.1 everywhere and
learning at 10x the rate, like the light), multiplied by the albedo like any irradiance, so albedo stays a
material. It is smooth by construction (3 octaves across the box) so it cannot take over the albedo's texture, and
``train.local_light_l1`` asks it to explain as little as it can. Relighting drops it: it belongs to the capture's
light, not the scene (the same choice as InvRender / NeILF's indirect or incident-light fields, in a lighter form).

Camera-attached light (``camera_light`` > 0): a second learned environment fixed to the *camera*, not the world.
Captures lit by lamps on the camera rig -- a flash, a phone's torch, and possibly DTU's robot-mounted rig (the
hypothesis this was built to test) -- light each view differently, which no world-fixed light can give: a learned
world light would then fake the view-dependent shading, e.g. with rough metal (as DTU's preset does). The attached
light is looked up in a frame built per ray: ``y`` towards the camera (the reversed ray direction), ``z`` the
world's up made perpendicular to it, ``x = y x z``; a light at the camera's centre is then the fixed direction
``+y`` of that map whatever the view, and lamps beside the lens sit at fixed offsets from it (a frame per ray, not
per view: for a light near the camera the direction *from the point* is what stays put). It starts uniform at
``camera_light`` (linear radiance, small beside the world light's 1.0), adds to both the diffuse and the specular
term, is unshadowed (a light beside the lens casts shadows the camera barely sees) and is dropped when relighting,
like the local light: it belongs to the capture, not to the scene.

Near light (``env_radius`` > 0): a distant environment is the same from every point, so a lamp's reflection moves
over a surface only with its normal. Lamps a few object sizes away (DTU's LED rig, a room's walls) are not
distant: seen from the two ends of the object their directions differ by tens of degrees. With ``env_radius`` R the
learned map is painted on a sphere of radius R (in units of the box's largest half-extent, around its centre)
instead of at infinity, and each lookup -- the reflected direction for the specular term, the normal for the
irradiance -- is replaced by the direction from the centre to where that ray from the point leaves the sphere (a
parallax-corrected lookup, as in games' local reflection probes; the irradiance's is an approximation: the lobe
about the normal is shifted, not re-integrated over the sphere). R -> infinity gives the distant light back. It
needs the sample positions, and is dropped when relighting with a new (distant) map.

View light (``view_light``): in some captures the light itself changes with the camera's pose -- on DTU's robot
rig, NeRO notes that the robot shadows some of the lamps in some views -- so a point's brightness depends on where
the camera is, through the light, not the material. A world-fixed light can only fake that with rough metal (as
DTU's preset does: metallic 1.0 everywhere), and a per-view gain (``view_gain``) cannot follow it within a view or
to a held-out pose. :class:`ViewLight` models it as a smooth log-gain ``g(w, v)`` on the light arriving from
direction ``w`` when the camera sits in direction ``v`` from the point (the reversed ray; spherical harmonics
up to degree 3 of both, a small MLP), taken at the centre of each term's lobe: the diffuse term is multiplied by
``exp(g(n, v))``, the specular by ``exp(g(r, v))`` (r the mirrored view ray). It is a function of the pose, not a
per-view code, so held-out views get the light of their own pose; it has no input from the position, so it cannot
hold texture; it starts at zero (the world light alone) and is dropped when relighting: it belongs to the capture,
not to the scene. Poses far from the capture's (an orbit behind the object) extrapolate the gain, clamped to
``exp(+-3)``.

Material grid (``material_grid`` > 0): the material head reads, besides the geometry features, its own hash grid
at the point (8 levels, 2 features each, finest ``material_grid`` cells across the box). The geometry features were
shaped by the neural colour head and learn slowly once the surface has settled (the shared learning rate has
decayed by the PBR stage); a grid of its own lets the albedo hold texture the features do not (windows, tiles,
printed patterns), as nvdiffrec's and NeRO's material grids do. The grid belongs to the PBR stage's parameters
(with ``train.albedo_warm_start`` it already learns during the neural stage).

``render_mode`` selects what :meth:`color` returns for the renderer to composite: ``rgb`` (shaded, sRGB),
``albedo`` (sRGB), ``roughness``, ``metallic`` (grey, linear) -- the material maps for evaluation and the viewer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfields.encodings.frequency import PositionalEncoding
from nfields.encodings.hashgrid import HashGridEncoding
from nfields.encodings.sh import SphericalHarmonics
from nfields.errors import NFieldsError
from nfields.fields.sdf import SDFField, mlp
from nfields.render.envmap import LearnedEnvironment, world_to_map
from nfields.render.shading import linear_to_srgb, reflect, shade_pbr
from nfields.render.shadows import SHADOW_MAP_HW, ShadowVolume, light_visibility, shadow_lights

RENDER_MODES = ("rgb", "albedo", "roughness", "metallic")
MIN_ALBEDO, MIN_ROUGHNESS = 0.03, 0.08


class _OwnRate(nn.Module):
    """A sub-module that trains at ``self.lr_mult`` times the base learning rate."""

    lr_mult: float = 1.0

    def param_groups(self, lr: float) -> list[dict]:
        """One optimiser group at ``lr * lr_mult`` (see :func:`nfields.fields.base.param_groups`)."""
        return [{"params": list(self.parameters()), "lr": lr * self.lr_mult}]


class LocalIrradiance(_OwnRate):
    """The local light's relative irradiance ``E_loc(x, n) / E_ref`` (N, 3) >= 0 (see the module docstring): a ReLU
    MLP (``hidden`` wide, ``layers`` deep) of the positional encoding of x in the box's [-1, 1]^3 (``n_freqs``
    octaves) and the degree-2 spherical harmonics of the unit normal n, then softplus. Starts at ``init``
    everywhere (the last layer's weights are zero); trains at ``lr_mult`` times the base learning rate."""

    def __init__(self, n_freqs: int = 3, hidden: int = 32, layers: int = 2, init: float = 0.1, lr_mult: float = 10.0):
        super().__init__()
        if n_freqs < 0 or init <= 0:
            raise NFieldsError(f"LocalIrradiance: n_freqs {n_freqs} must be >= 0 and init {init} > 0")
        self.pos_enc = PositionalEncoding(3, n_freqs)
        self.sh = SphericalHarmonics(3)
        self.net = mlp(self.pos_enc.out_dim + self.sh.out_dim, hidden, layers, 3)
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.fill_(init + torch.log(-torch.expm1(torch.tensor(-init))).item())  # softplus^-1
        self.lr_mult = float(lr_mult)

    def forward(self, x: Tensor, normals: Tensor) -> Tensor:
        """Points (N, 3) in [-1, 1]^3 (:meth:`~nfields.fields.base.Field.normalize`) and unit normals (N, 3) ->
        relative irradiance (N, 3)."""
        return F.softplus(self.net(torch.cat([self.pos_enc(x), self.sh(normals)], -1)))


class ViewLight(_OwnRate):
    """The capture's light as it changes with the camera's pose (see the module docstring): a log-gain ``g(w, v)``
    (N, 3) on the learned light arriving from direction ``w`` while the camera looks along ``-v``: a ReLU MLP
    (``hidden`` wide, ``layers`` deep) of the spherical harmonics (bands below ``degree``) of both unit vectors
    (smooth in each: no texture, no sharp per-view changes), starting at 0 (the last layer's weights are zero),
    clamped to +-3, training at ``lr_mult`` times the base learning rate."""

    def __init__(self, hidden: int = 32, layers: int = 2, degree: int = 4, lr_mult: float = 1.0):
        super().__init__()
        self.sh = SphericalHarmonics(degree)
        self.net = mlp(2 * self.sh.out_dim, hidden, layers, 3)
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()
        self.lr_mult = float(lr_mult)

    def forward(self, light_dirs: Tensor, to_camera: Tensor) -> Tensor:
        """Unit light directions (K, N, 3), K per point, and unit directions towards the camera (N, 3) -> log-gain
        (K, N, 3)."""
        cam = self.sh(to_camera).expand(light_dirs.shape[0], -1, -1)
        light = self.sh(light_dirs.reshape(-1, 3)).view(*cam.shape)  # explicit shape: N may be 0 (an empty chunk)
        return self.net(torch.cat([light, cam], -1)).clamp(-3.0, 3.0)


def camera_frames(dirs: Tensor, up: Tensor) -> Tensor:
    """Per-ray camera frames (N, 3, 3) for ray directions (N, 3) and the world's up (3,): rows ``x``, ``y`` (towards
    the camera, ``-dir``), ``z`` (``up`` made perpendicular to ``y``), right-handed; ``frame @ w`` takes a world
    direction into the frame (see the module docstring). A ray along ``up`` takes the world's x-axis instead."""
    y = -F.normalize(dirs, dim=-1)
    up = up.to(dirs)
    z = up - (y @ up)[:, None] * y
    fallback = torch.zeros_like(z)
    fallback[:, 0] = 1.0
    degenerate = z.norm(dim=-1, keepdim=True) < 1e-6
    z = torch.where(degenerate, fallback - (y * fallback).sum(-1, keepdim=True) * y, z)
    z = F.normalize(z, dim=-1)
    x = torch.cross(y, z, dim=-1)
    return torch.stack([x, y, z], dim=1)


class CameraAttachedLight:
    """A world light plus a light fixed to the camera (``attached``, looked up in per-ray ``frames`` (N, 3, 3) from
    :func:`camera_frames`): the ``irradiance`` / ``prefiltered`` pair :func:`~nfields.render.shading.shade_pbr`
    asks of a light, each the sum of the two; ``texels`` and ``radiance`` are the world light's (shadows come from
    it alone)."""

    def __init__(self, world, attached, frames: Tensor):
        self.world, self.attached, self.frames = world, attached, frames

    def _local(self, w: Tensor) -> Tensor:
        return torch.einsum("nij,nj->ni", self.frames, w)

    def irradiance(self, normals: Tensor) -> Tensor:
        return self.world.irradiance(normals) + self.attached.irradiance(self._local(normals))

    def prefiltered(self, dirs: Tensor, roughness: Tensor) -> Tensor:
        return self.world.prefiltered(dirs, roughness) + self.attached.prefiltered(self._local(dirs), roughness)

    def texels(self) -> Tensor:
        return self.world.texels()

    def radiance(self, dirs: Tensor) -> Tensor:
        return self.world.radiance(dirs)


def sphere_exit_dirs(points: Tensor, dirs: Tensor, radius: float) -> Tensor:
    """Unit directions (N, 3) from the origin to where rays from ``points`` (N, 3, inside the sphere) along unit
    ``dirs`` (N, 3) leave the sphere of ``radius`` -- the parallax-corrected lookup of a light painted on that
    sphere (see the module docstring)."""
    pd = (points * dirs).sum(-1, keepdim=True)
    disc = (pd * pd - (points * points).sum(-1, keepdim=True) + radius * radius).clamp_min(1e-12)
    return F.normalize(points + (disc.sqrt() - pd) * dirs, dim=-1)


class NearLight:
    """A learned light painted on a sphere of ``radius`` around the origin, seen from ``points`` (N, 3, centred
    and scaled like the radius): the ``irradiance`` / ``prefiltered`` pair :func:`~nfields.render.shading.shade_pbr`
    asks of a light, looked up along :func:`sphere_exit_dirs`; ``texels`` and ``radiance`` are the light's own."""

    def __init__(self, light, points: Tensor, radius: float):
        self.light, self.points, self.radius = light, points, radius

    def irradiance(self, normals: Tensor) -> Tensor:
        return self.light.irradiance(sphere_exit_dirs(self.points, normals, self.radius))

    def prefiltered(self, dirs: Tensor, roughness: Tensor) -> Tensor:
        return self.light.prefiltered(sphere_exit_dirs(self.points, F.normalize(dirs, dim=-1), self.radius), roughness)

    def texels(self) -> Tensor:
        return self.light.texels()

    def radiance(self, dirs: Tensor) -> Tensor:
        return self.light.radiance(dirs)


class PBRField(SDFField):
    """SDF geometry + material head + learned environment light, shaded physically (see the module docstring).

    Extra arguments over :class:`SDFField`: ``material_hidden``/``material_layers`` (the material MLP on geometry
    features), ``env_height`` (learned map of env_height x 2 env_height texels), ``env_init`` (initial radiance),
    ``env_lr_mult`` (the light's learning rate relative to the rest), ``env_levels`` (the light as a pyramid of that
    many grids), ``env_sun`` (the light with an explicit sun lobe, off until ``env.extract_sun()``), ``up_axis``
    of the environment (``"-y"`` for DTU's normalised frame, ``"z"`` for generated scenes),
    ``shadow_lights`` (shadow-casting texels, 0 = none), ``shadow_sky`` (rows of the coarse sky whose texels also
    cast shadows, 0 = none) and ``shadow_resolution`` (cached SDF lattice), ``shadow_sky_cache`` (the sky's
    visibility cached on a lattice of that many vertices per side and interpolated per ray; 0 = traced per ray),
    ``local_light`` (add a :class:`LocalIrradiance`; see the module docstring), ``material_grid`` (finest resolution
    of the material head's own hash grid, 0 = none; see the module docstring), ``camera_light`` (initial radiance of
    a light attached to the camera, 0 = none; see the module docstring), ``env_radius`` (the learned light on a
    sphere of this radius, in units of the box's largest half-extent, > sqrt(3); 0 = distant; see the module
    docstring), ``view_light`` (a :class:`ViewLight`: the light changes with the camera's pose; see the module
    docstring), ``view_light_bands`` (its spherical-harmonic bands) and ``view_light_hidden`` (its MLP's width).
    """

    def __init__(
        self,
        aabb,
        material_hidden: int = 64,
        material_layers: int = 2,
        env_height: int = 16,
        env_init: float = 1.0,
        env_lr_mult: float = 1.0,
        env_levels: int = 1,
        env_sun: bool = False,
        up_axis: str = "z",
        shadow_lights: int = 0,
        shadow_sky: int = 0,
        shadow_resolution: int = 64,
        shadow_sky_cache: int = 32,
        local_light: bool = False,
        material_grid: int = 0,
        camera_light: float = 0.0,
        env_radius: float = 0.0,
        view_light: bool = False,
        view_light_bands: int = 4,
        view_light_hidden: int = 32,
        **sdf_kwargs,
    ):
        super().__init__(aabb, **sdf_kwargs)
        geo_feat_dim = self.color_net[0].in_features - 3 - self.dir_enc.out_dim
        if material_grid < 0:
            raise NFieldsError(f"model.material_grid {material_grid}: must be >= 0 (0 = no material grid)")
        self.material_grid = (
            HashGridEncoding(3, levels=8, features_per_level=2, log2_table=17, base_res=16, finest_res=material_grid)
            if material_grid
            else None
        )
        grid_dim = 0 if self.material_grid is None else self.material_grid.out_dim
        self.material_net = mlp(geo_feat_dim + grid_dim, material_hidden, material_layers, 5)
        self.env = LearnedEnvironment(
            env_height,
            2 * env_height,
            init=env_init,
            up_axis=up_axis,
            lr_mult=env_lr_mult,
            levels=env_levels,
            sun=env_sun,
        )
        self.shading = "pbr"
        self.render_mode = "rgb"
        # Not a sub-module: a relight map is a rendering choice, never part of the checkpoint.
        object.__setattr__(self, "relight_env", None)
        # Per-channel albedo factor for evaluation/relighting after scale alignment (see the module docstring).
        object.__setattr__(self, "albedo_gain", None)
        if shadow_lights < 0 or (shadow_lights and shadow_resolution < 8):
            raise NFieldsError(
                f"model.shadow_lights {shadow_lights} / shadow_resolution {shadow_resolution}: need >= 0 lights and "
                "a lattice of >= 8"
            )
        if shadow_sky < 0 or (shadow_sky and (not shadow_lights or SHADOW_MAP_HW[0] % shadow_sky)):
            raise NFieldsError(
                f"model.shadow_sky {shadow_sky}: must be 0 or divide {SHADOW_MAP_HW[0]}, with model.shadow_lights > 0"
            )
        self.shadow_lights = int(shadow_lights)
        self.shadow_sky = int(shadow_sky)
        if shadow_sky_cache < 0 or 0 < shadow_sky_cache < 4:
            raise NFieldsError(f"model.shadow_sky_cache {shadow_sky_cache}: must be 0 (trace per ray) or >= 4")
        self.shadow_sky_cache = int(shadow_sky_cache)
        object.__setattr__(self, "shadow_volume", ShadowVolume(self.aabb, shadow_resolution) if shadow_lights else None)
        self.local_light = LocalIrradiance() if local_light else None
        if not camera_light >= 0:
            raise NFieldsError(f"model.camera_light {camera_light}: must be >= 0 (0 = no camera-attached light)")
        self.camera_env = (
            LearnedEnvironment(
                env_height, 2 * env_height, init=camera_light, up_axis="z", lr_mult=env_lr_mult, levels=env_levels
            )
            if camera_light
            else None
        )
        self.register_buffer("world_up", world_to_map(up_axis)[2].clone(), persistent=False)
        if not (env_radius == 0 or env_radius > 3**0.5):
            raise NFieldsError(
                f"model.env_radius {env_radius}: must be 0 (a distant light) or > sqrt(3) (outside the box)"
            )
        self.env_radius = float(env_radius)
        self.view_light = (
            ViewLight(hidden=view_light_hidden, degree=view_light_bands, lr_mult=env_lr_mult) if view_light else None
        )

    def _near(self) -> bool:
        return self.env_radius > 0 and self.relight_env is None

    def wants_shadows(self) -> bool:
        """True when the next :meth:`color` call shades with shadows (pbr stage, rgb mode, shadows on)."""
        return self.shadow_volume is not None and self.shading == "pbr" and self.render_mode == "rgb"

    def wants_points(self) -> bool:
        """True when the next :meth:`color` call needs the sample positions: the material grid, whenever materials
        are asked for (pbr stage or a material render mode); the local light, in the pbr stage's rgb mode under
        the learned light; the near light (``env_radius``) likewise."""
        if self.material_grid is not None:
            return self.shading == "pbr" or self.render_mode != "rgb"
        return (
            (self.local_light is not None or self._near())
            and self.relight_env is None
            and self.shading == "pbr"
            and self.render_mode == "rgb"
        )

    def update_shadows(self) -> None:
        """Re-sample the SDF into the shadow lattice (the renderer does it with each occupancy-grid update); a no-op
        without shadows or before the PBR stage."""
        if self.shadow_volume is not None and self.shading == "pbr":
            self.shadow_volume.update(self.sdf, device=self.aabb.device)  # refreshes the sky's cache too

    def _light(self):
        return self.relight_env if self.relight_env is not None else self.env

    def shadow_casters(self, env):
        """The lights of ``env`` that cast shadows (:func:`~nfields.render.shadows.shadow_lights`)."""
        return shadow_lights(env, self.shadow_lights, self.shadow_sky)

    @torch.no_grad()
    def shadow_visibility(self, points: Tensor, normals: Tensor) -> Tensor:
        """Visibility (M, K) in [0, 1] of the light's K shadow-casting lights (:meth:`shadow_casters`) from surface
        points (M, 3) with unit normals (M, 3); builds the shadow lattice on first use."""
        if self.shadow_volume.volume is None:
            self.update_shadows()
        lights = self.shadow_casters(self._light())
        return light_visibility(self.shadow_volume, points, normals, lights, self.shadow_sky, self.shadow_sky_cache)

    def stage_parameters(self) -> list:
        """The parameters that only the PBR stage trains (material head and light); the trainer gives them a
        learning-rate schedule that starts when that stage does."""
        local = [] if self.local_light is None else list(self.local_light.parameters())
        grid = [] if self.material_grid is None else list(self.material_grid.parameters())
        attached = [] if self.camera_env is None else list(self.camera_env.parameters())
        view = [] if self.view_light is None else list(self.view_light.parameters())
        return [*self.material_net.parameters(), *grid, *self.env.parameters(), *local, *attached, *view]

    def relight(self, env) -> None:
        """Shade under ``env`` (an :class:`~nfields.render.envmap.EnvironmentMap`) instead of the learned light;
        None goes back to the learned one."""
        object.__setattr__(self, "relight_env", env)

    def materials(self, features: Tensor, points: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Albedo (N, 3) linear in [0.03, 1], roughness (N,) in [0.08, 1], metallic (N,) in [0, 1] from geometry
        features (N, F) and, with a material grid, the world points (N, 3) they were taken at."""
        if self.material_grid is not None:
            if points is None:
                raise NFieldsError(
                    "PBRField.materials: this field has a material grid (model.material_grid) and needs the points"
                )
            features = torch.cat([features, self.material_grid((self.normalize(points) + 1.0) * 0.5)], -1)
        m = torch.sigmoid(self.material_net(features))
        albedo = MIN_ALBEDO + (1 - MIN_ALBEDO) * m[:, :3]
        if self.albedo_gain is not None:
            albedo = (albedo * self.albedo_gain.to(albedo)).clamp(0.0, 1.0)
        return albedo, MIN_ROUGHNESS + (1 - MIN_ROUGHNESS) * m[:, 3], m[:, 4]

    def color(
        self,
        features: Tensor,
        dirs: Tensor,
        normals: Tensor | None = None,
        visibility: Tensor | None = None,
        points: Tensor | None = None,
    ) -> Tensor:
        """What ``render_mode`` asks for, (N, 3) in [0, 1]; ``rgb`` is shaded under the learned (or relight) light
        once ``shading == "pbr"``, and comes from the neural head before that. ``visibility`` (N, K): the shadow
        term from :meth:`shadow_visibility` (None: unshadowed). ``points`` (N, 3): the sample positions, for the
        local light (see :meth:`wants_points`; None: without it)."""
        if self.render_mode not in RENDER_MODES:
            raise NFieldsError(f"render_mode {self.render_mode!r}: choose one of {', '.join(RENDER_MODES)}")
        if self.render_mode == "rgb" and self.shading != "pbr":
            return super().color(features, dirs, normals)
        albedo, rough, metal = self.materials(features, points)
        if self.render_mode == "albedo":
            return linear_to_srgb(albedo)
        if self.render_mode in ("roughness", "metallic"):
            v = rough if self.render_mode == "roughness" else metal
            return v[:, None].expand(-1, 3)
        if normals is None:
            raise NFieldsError("PBRField.color needs normals to shade")
        if self.detach_color_normals == "all":
            normals = normals.detach()
        env = self._light()
        shadow = None if visibility is None else (visibility, self.shadow_casters(env))
        local = self.local_irradiance(points, normals)
        if self._near() and points is not None:  # the world light only: an attached light moves with the camera
            lo, hi = self.aabb[:3], self.aabb[3:]
            centred = (points - (lo + hi) / 2) / ((hi - lo).max() / 2)
            env = NearLight(env, centred, self.env_radius)
        if self.camera_env is not None and self.relight_env is None:
            env = CameraAttachedLight(env, self.camera_env, camera_frames(dirs, self.world_up))
        linear, diffuse, specular = shade_pbr(
            normals, -dirs, albedo, rough, metal, env, return_parts=True, shadow=shadow, extra_irradiance=local
        )
        if self.view_light is not None and self.relight_env is None:
            # The same gain map g(w, pose) taken at the centre of each term's lobe: the normal for the irradiance,
            # the mirrored view ray for the specular light (both lobes are wide where the gain matters).
            gains = self.view_light(torch.stack([normals, reflect(-dirs, normals)]), -dirs).exp()
            linear = diffuse * gains[0] + specular * gains[1]
        return linear_to_srgb(linear.clamp(0.0, 1.0))

    def local_irradiance(self, points: Tensor | None, normals: Tensor) -> Tensor | None:
        """The local light's irradiance at ``points`` (N, 3) -> (N, 3), or None when there is none to add (no local
        light, no points, or relighting under another map)."""
        if self.local_light is None or points is None or self.relight_env is not None:
            return None
        reference = torch.pi * self.env.texels().detach().mean()  # a constant sky of the light's mean radiance
        return self.local_light(self.normalize(points), normals) * reference

    def local_light_fraction(self, points: Tensor, normals: Tensor) -> Tensor:
        """The local light's share of the diffuse light at surface points (M, 3) with unit normals (M, 3): mean
        ``E_loc`` over mean environment irradiance (the latter without gradient), a scale-free quantity for
        ``train.local_light_l1`` to keep small (0 without a local light, or while relighting)."""
        local = self.local_irradiance(points, normals)
        if local is None:
            return points.new_zeros(())
        return local.mean() / self.env.irradiance(normals).detach().mean().clamp_min(1e-8)

    def set_albedo_gain(self, gain: Tensor | None) -> None:
        """Multiply albedo by a per-channel factor (3,) from now on (None: off); not part of the checkpoint."""
        object.__setattr__(self, "albedo_gain", None if gain is None else torch.as_tensor(gain, dtype=torch.float32))

    def material_smoothness(self, x: Tensor, eps: float = 0.01) -> Tensor:
        """Mean |m(x) - m(x + delta)| of albedo, roughness and metallic at points x (N, 3), delta ~ N(0, eps^2):
        materials should change at edges, not everywhere (MatDecompSDF's smoothness prior)."""
        return self.material_priors(x, eps)[0]

    def material_priors(self, x: Tensor, eps: float = 0.01) -> tuple[Tensor, Tensor]:
        """:meth:`material_smoothness` and the mean metallic at points x (N, 3), from one evaluation of the
        materials (the trainer's ``train.metallic_l1`` asks surfaces to be dielectric unless the images need
        metal: most captured objects are, and a rough metal can imitate a diffuse surface under a learned light)."""
        both = torch.cat([x, x + eps * torch.randn_like(x)], 0)
        a, r, m = self.materials(self.geometry(both)[1], both)
        mats = torch.cat([a, r[:, None], m[:, None]], -1)
        n = x.shape[0]
        return (mats[:n] - mats[n:]).abs().mean(), m[:n].mean()
