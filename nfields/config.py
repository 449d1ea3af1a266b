"""Run configuration: small dataclasses (two levels deep), YAML presets with strict keys.

A run is described by :class:`RunConfig`. It is built from, in order: the dataclass defaults, the size preset
(``nfields/configs/<preset>.yaml``: ``tiny``, ``cpu``, ``full``), that preset's section for the scene (``scenes:``),
its options for the chosen backend (``backends:``), then ``--set section.key=value`` overrides from the command
line. The run folder's ``config.yaml`` is the merged result and reproduces the run.
Unknown keys anywhere are an error that lists the valid names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nfields.errors import NFieldsError
from nfields.render.renderer import RenderConfig

PRESET_DIR = Path(__file__).parent / "configs"
PRESETS = ("tiny", "cpu", "full")


@dataclass
class DataConfig:
    """Which scene and how to load it."""

    scene: str = "demo"
    """Scene name ($NFIELDS_DATA/<name>, ./data/<name>, ../shared/data/<name>) or a path."""
    downscale: int = 1
    """Integer image downscale factor (DTU: 4 -> 400x300)."""
    holdout_every: int = 8
    """Every n-th view (index % n == 0) is held out for evaluation."""
    max_views: int | None = None
    """Load at most this many views (for quick tests)."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour RGBA images are composited on (NeRF-synthetic)."""
    use_masks: bool = True
    """Use foreground masks when the scene has them (DTU): black outside, opacity supervised."""


@dataclass
class ModelConfig:
    """The field: a registered network backend inside a radiance (density) field or a NeuS-style SDF field."""

    kind: str = "density"
    """Geometry representation: density (radiance field, NeRF) or sdf (signed distance + NeuS rendering, for surface
    reconstruction; normals and meshes come from the zero level set)."""
    network: str = "hashgrid"
    """Geometry network backend (see `nfields train --help`; e.g. mlp, hashgrid, cam, rbf)."""
    network_options: dict[str, Any] = field(default_factory=dict)
    """Backend options (e.g. {levels: 12, log2_table: 17})."""
    geo_feat_dim: int = 15
    color_hidden: int = 64
    color_layers: int = 2
    sdf_init_radius: float = 0.5
    """SDF fields start as a sphere of this radius (world units) at the origin."""
    sdf_normals: str = "analytic"
    """How SDF fields take their gradient: analytic (autograd, double backward in training; ~3x faster than finite
    differences with the torch backends on a CPU) or finite_difference (6 extra evaluations; for backends without a
    double backward, e.g. tiny-cuda-nn)."""
    sdf_fd_eps: float = 0.0
    """finite_difference normals: the step in world units; 0 = one cell of the finest active hash-grid level
    (Neuralangelo's numerical gradients, shrinking as coarse-to-fine training activates levels)."""
    sdf_color_dirs: str = "view"
    """SDF fields' neural colour head sees the view direction (view, NeuS) or the view direction mirrored about the
    normal (reflected, Ref-NeRF / Ref-NeuS: glossy and metallic surfaces without bumps faked into the geometry), or
    no direction (none: a view-independent colour, the most a diffuse material can show; a diagnostic reference)."""
    detach_color_normals: str = "none"
    """SDF fields: the colour sees the normals without their gradient -- none; neural (the neural colour head's
    normals only: the geometry stage cannot bend the surface to bake shadows or shading into it); all (also the
    PBR shading's normals)."""
    shading: str = "neural"
    """SDF fields: neural (a colour MLP of normal, view direction and features) or pbr (materials -- albedo, roughness,
    metallic -- shaded with GGX + Lambert under a learned HDR environment; relightable; see fields/pbr.py)."""
    env_height: int = 16
    """pbr: the learned environment map is env_height x 2 env_height texels (log radiance)."""
    env_lr_mult: float = 1.0
    """pbr: the learned light's learning rate is train.lr times this (its log-radiance texels must move by several
    units -- a sun is ~100x the sky -- in the few hundred steps of a short PBR stage)."""
    env_levels: int = 1
    """pbr: the learned light as a pyramid of this many log-radiance grids (the map, then each coarser by 2), summed:
    coarse levels move whole regions of the sky at once (see LearnedEnvironment); 1 = the texels alone."""
    env_sun_after: int = 0
    """pbr: give the learned light an explicit sun lobe (a direction and an RGB power, drawn as a narrow spherical
    Gaussian), filled from the map's brightest spot this many steps into the PBR stage (the light has found its sun
    by then) and learned with the texels from there on, so the sun cannot smear along its ring of elevation
    (see LearnedEnvironment); 0 = texels only."""
    env_up_axis: str = "z"
    """pbr: the scene's up axis for the environment map (z: generated scenes; -y: normalised DTU)."""
    shadow_lights: int = 0
    """pbr: cast shadows from this many of the light's brightest texels (soft sphere tracing through a cached copy
    of the SDF, once per ray; see render/shadows.py); 0 = unshadowed split-sum lighting."""
    shadow_sky: int = 0
    """pbr with shadows: also shadow the rest of the sky, as the texels of a shadow_sky x 2 shadow_sky copy of the
    light without its brightest texels (soft, broad lights: the sky's occlusion in concave parts); must divide 16;
    0 = the brightest texels only (see render/shadows.py)."""
    shadow_resolution: int = 64
    """pbr with shadows: vertices per side of the cached SDF lattice the shadow rays march through."""
    shadow_sky_cache: int = 32
    """pbr with sky shadows: the sky's visibility is traced from the near-surface vertices of a lattice of this many
    vertices per side with each shadow-lattice update and interpolated per ray (0 = traced per ray, every step)."""
    local_light: bool = False
    """pbr: add a smooth, spatially varying diffuse irradiance E(x, n) to the environment's -- near lamps and light
    bounced between surfaces, which a distant light cannot give (real captures such as DTU); dropped when relighting
    (see fields/pbr.py)."""
    view_gain: bool = False
    """Learn an RGB gain per training view on the rendered foreground (captures whose views differ in light or
    exposure, e.g. DTU's lamps shadowed by the robot in some views); training loss only (see fields/capture.py)."""
    camera_light: float = 0.0
    """pbr: add a second learned light attached to the camera (lamps on the camera rig: a flash, a robot-mounted
    rig), starting uniform at this radiance; 0 = none; dropped when relighting (see fields/pbr.py)."""
    env_radius: float = 0.0
    """pbr: the learned light painted on a sphere of this radius (units of the box's largest half-extent, >
    sqrt(3)) instead of at infinity -- lamps a few object sizes away, as in DTU's rig; 0 = distant; dropped when
    relighting (see fields/pbr.py)."""
    view_light: bool = False
    """pbr: the learned light changes with the camera's pose -- a smooth log-gain on the light from each direction,
    a function of that direction and of the direction to the camera (captures whose lamps the rig shadows in some
    poses, as DTU's robot does); used for held-out views (it is a function of the pose), dropped when relighting
    (see fields/pbr.py)."""
    view_light_bands: int = 4
    """pbr with view_light: spherical-harmonic bands (1-4) of the light direction and of the camera direction the
    gain sees (4: up to l = 3; on DTU 23.23 dB held-out vs 22.98 with 3, one run each, docs/results.md)."""
    view_light_hidden: int = 32
    """pbr with view_light: width of the gain's MLP (two hidden layers)."""
    material_grid: int = 0
    """pbr: give the material head its own hash grid (8 levels, finest this many cells across the box) besides the
    geometry features, for albedo texture the features do not hold; 0 = features only (see fields/pbr.py)."""


MODEL_KINDS = ("density", "sdf")
SHADINGS = ("neural", "pbr")


@dataclass
class TrainConfig:
    """Optimisation, evaluation and checkpointing."""

    steps: int = 5000
    lr: float = 1e-2
    lr_final_ratio: float = 0.03
    """Learning rate decays exponentially to lr * lr_final_ratio at the last step (after warm-up)."""
    warmup_steps: int = 100
    batch_rays: int = 4096
    """Rays per step at the start; adapted to keep about target_samples samples per step."""
    target_samples: int = 0
    """If > 0, adapt the ray batch so a step evaluates about this many samples (nerfacc's dynamic batch)."""
    max_batch_rays: int = 16384
    seed: int = 0
    eval_every: int = 1000
    eval_views: int = 0
    """Number of held-out views to evaluate periodically (0 = all)."""
    eval_downscale: int = 1
    ckpt_every: int = 500
    log_every: int = 50
    time_budget_s: float = 0.0
    """Stop after this many seconds of training (0 = no limit); the final eval still runs."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    mask_loss: float = 0.1
    """Weight of the opacity-vs-mask BCE loss when masks are used."""
    eikonal: float = 0.1
    """SDF fields: weight of the Eikonal loss (|grad sdf| - 1)^2 at the ray samples and at random points in the aabb."""
    eikonal_points: int = 1024
    """SDF fields: random points in the aabb per step added to the Eikonal loss (keeps empty space a distance field)."""
    pbr_start: int = 0
    """pbr shading: the step at which the physically based colour takes over from the neural head (two stages:
    geometry first, then materials and light on the settled surface; 0 = pbr from the start)."""
    material_smoothness: float = 0.01
    """pbr shading: weight of the material-smoothness prior |m(x) - m(x + delta)| at surface points."""
    metallic_l1: float = 0.0
    """pbr shading: weight of the mean metallic at surface points: dielectric unless the images need metal (a
    rough metal under a learned light can imitate a diffuse surface, and did on DTU: metallic 1.0 everywhere)."""
    light_warmup_steps: int = 0
    """pbr shading: for this many steps from pbr_start only the light trains (geometry and materials held, the
    albedo at its neutral start), so the light takes the shading -- the sun's direction and strength -- before a
    flexible albedo can absorb it (0 = everything trains from pbr_start)."""
    light_chroma_smoothness: float = 0.0
    """pbr shading: weight of a smoothness prior on the learned light's *colour*: the mean |difference| of
    neighbouring texels' log-chromaticity (log radiance minus its channel mean). Intensity stays free (a sun is one
    bright texel) but colour must vary slowly, so the light cannot take over the albedo's colour variation (the
    diffuse albedo x light ambiguity); a milder cousin of nvdiffrec's white-balance prior (0 = off)."""
    light_chroma_along: str = "uv"
    """pbr shading: the colour prior compares neighbours along uv (azimuth and elevation) or u (azimuth only: the
    light's colour may change with elevation -- a blue sky above, a brown ground below -- but not around it) or
    hemispheres (along uv within each hemisphere, not across the horizon: one colour for the sky, one for the
    ground)."""
    albedo_warm_start: float = 0.0
    """pbr shading: during the neural stage, weight of a fit of the material head's albedo (as sRGB) to the observed
    pixel colour at each ray's surface point (geometry features held), so the PBR stage starts from the images'
    colours under the grey starting light instead of an untrained head (0 = off)."""
    local_light_l1: float = 0.0
    """pbr with model.local_light: weight of the local light's share of the diffuse light at surface points (its
    mean irradiance over the environment's), so the distant light explains what it can (0 = no penalty)."""
    normal_smoothness: float = 0.0
    """SDF fields: weight of a curvature prior, mean |n(x) - n(x + delta)| of unit SDF normals at up to 1024 surface
    points per step (delta ~ N(0, eps^2), ``normal_smoothness_eps``); smooths the high-frequency noise of hash-grid
    SDFs (0 = off)."""
    normal_smoothness_eps: float = 0.01
    """SDF fields: the curvature prior's offset scale (delta ~ N(0, eps^2), world units): wrinkles shorter than it
    cost as much at any eps, smooth curvature (a fillet of radius r) costs ~eps / r."""
    normal_smoothness_final: float = 1.0
    """SDF fields: the curvature prior's weight at the end of the run, as a fraction of ``normal_smoothness``; the
    weight moves linearly from one to the other over the run's progress (that of the learning-rate schedule), so
    the prior can take the early wrinkles out and then let true curvature -- a fillet, a crease -- sharpen
    (Neuralangelo also decays its curvature weight as finer levels come in; 1 = constant)."""
    normal_smoothness_order: int = 1
    """1: the prior is the first difference of the normals, |n(x) - n(x + delta)| (any curvature costs, so it also
    flattens true creases and fillets); 2: the second difference |n(x + delta) + n(x - delta) - 2 n(x)| (zero on
    any surface of locally constant curvature -- spheres, cylinders, tori -- so only wrinkles cost)."""
    coarse_to_fine_steps: int = 0
    """Hash-grid fields: activate the grid's levels coarse to fine (Neuralangelo), from ``coarse_to_fine_start``
    levels to all of them evenly over this many steps (0 = every level from the start)."""
    coarse_to_fine_start: int = 4
    """Hash-grid levels active at step 0 when ``coarse_to_fine_steps`` > 0."""
    cos_anneal_steps: int = 500
    """SDF fields: NeuS's cos_anneal_ratio goes 0 -> 1 linearly over this many steps (0 = 1 from the start)."""
    mesh_eval_resolution: int = 128
    """SDF fields with a known surface (the demo scene): marching-cubes resolution of the final Chamfer / normal
    evaluation (0 = skip it)."""


@dataclass
class RunConfig:
    """Everything that defines a run; saved as the run folder's config.yaml."""

    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the type of the current value (tuples stay tuples; ints accept whole floats)."""
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes", "on"):
                return True
            if value.lower() in ("false", "0", "no", "off"):
                return False
            raise NFieldsError(f"{where}: expected true/false, got {value!r}")
        return bool(value)
    if isinstance(current, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(current, int) and not isinstance(value, bool):
        try:
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        except (TypeError, ValueError):
            raise NFieldsError(f"{where}: expected an integer, got {value!r}") from None
    if isinstance(current, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise NFieldsError(f"{where}: expected a number, got {value!r}") from None
    return value


def apply_dict(cfg: RunConfig, data: dict, source: str) -> RunConfig:
    """Merge a nested dict (from YAML) into ``cfg`` in place; unknown sections/keys raise NFieldsError."""
    if not isinstance(data, dict):
        raise NFieldsError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    sections = _field_names(RunConfig)
    for sec, values in data.items():
        if sec not in sections:
            raise NFieldsError(f"{source}: unknown section {sec!r}; valid: {', '.join(sections)}")
        if sec == "name":
            cfg.name = str(values)
            continue
        if not isinstance(values, dict):
            raise NFieldsError(f"{source}: section {sec!r} must be a mapping")
        target = getattr(cfg, sec)
        valid = _field_names(type(target))
        for key, value in values.items():
            if key not in valid:
                raise NFieldsError(f"{source}: unknown key {sec}.{key}; valid: {', '.join(valid)}")
            cur = getattr(target, key)
            if key == "network_options":
                if not isinstance(value, dict):
                    raise NFieldsError(f"{source}: {sec}.{key} must be a mapping")
                merged = dict(cur)
                merged.update(value)
                setattr(target, key, merged)
            elif cur is None or value is None:
                setattr(target, key, value)
            else:
                setattr(target, key, _coerce(value, cur, f"{source}: {sec}.{key}"))
    return cfg


def load_yaml(path: Path) -> dict:
    """Read a YAML mapping; unreadable or malformed files give a one-line error."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise NFieldsError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise NFieldsError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    return data or {}


def parse_overrides(items: list[str]) -> dict:
    """``["train.steps=100", "model.network_options.levels=8"]`` -> nested dict with YAML-parsed values."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise NFieldsError(f"--set {item}: expected section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2:
            raise NFieldsError(f"--set {item}: expected section.key=value (e.g. train.steps=100)")
        value = yaml.safe_load(raw)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def scene_key(scene: str, sections: dict) -> str | None:
    """The preset section for a scene argument: its folder name, ``dtu`` for any other DTU scan, ``pbr`` for a
    scene written by ``nfields make-scene``."""
    name = Path(scene).name
    if name in sections:
        return name
    if name.startswith("dtu_") and "dtu" in sections:
        return "dtu"
    # Scenes written by `nfields make-scene` (they carry gt/scene.json) are SDF + PBR reconstructions.
    if "pbr" in sections and any((Path(root) / scene / "gt" / "scene.json").is_file() for root in ("", "data")):
        return "pbr"
    return None


def build_config(scene: str, field: str | None, preset: str, overrides: list[str] | None = None) -> RunConfig:
    """Merge defaults, scene preset, size preset (and its per-scene section) and overrides into a RunConfig."""
    if preset not in PRESETS:
        raise NFieldsError(f"--preset {preset}: unknown preset; valid: {', '.join(PRESETS)}")
    cfg = RunConfig()
    cfg.data.scene = scene
    preset_file = PRESET_DIR / f"{preset}.yaml"
    pdata = load_yaml(preset_file)
    per_scene = pdata.pop("scenes", {}) or {}
    backends = pdata.pop("backends", {}) or {}
    apply_dict(cfg, pdata, str(preset_file))
    key = scene_key(scene, per_scene)
    if key is not None:
        section = dict(per_scene[key])
        # A scene section may resize backends too (``backends: {hashgrid: {finest_res: 256}}``), over the preset's.
        for name, opts in (section.pop("backends", {}) or {}).items():
            backends[name] = {**backends.get(name, {}), **opts}
        apply_dict(cfg, section, f"{preset_file}[scenes.{key}]")
    if field is not None:
        cfg.model.network = field
    # Each preset sizes every backend for its budget (``backends: {name: options}``).
    if cfg.model.network in backends:
        cfg.model.network_options = {**backends[cfg.model.network], **cfg.model.network_options}
    if overrides:
        apply_dict(cfg, parse_overrides(overrides), "--set")
    cfg.data.scene = scene
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict (tuples as lists) for YAML."""

    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write config.yaml (atomically)."""
    tmp = Path(path).with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def load_config(path: Path) -> RunConfig:
    """Read a run's config.yaml back into a RunConfig (strict keys)."""
    return apply_dict(RunConfig(), load_yaml(path), str(path))
