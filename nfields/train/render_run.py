"""Render a finished run: held-out views and an orbit video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nfields.config import load_config
from nfields.data.cameras import Cameras
from nfields.errors import NFieldsError
from nfields.train.trainer import Trainer, save_png


def open_run(run_dir: Path) -> Trainer:
    """Reopen a finished run folder at its last checkpoint (scene loaded; nothing is written to the run)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise NFieldsError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    return Trainer(cfg, run_dir, progress=False, read_only=True)


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenCV camera-to-world (3, 4) at ``eye`` looking at ``target`` (camera -y along ``up``)."""
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    x = x / x.norm().clamp_min(1e-8)
    y = torch.linalg.cross(z, x)
    return torch.stack([x, y, z, eye], dim=1)


def orbit_cameras(cams: Cameras, n: int) -> Cameras:
    """``n`` cameras on a circle around the origin at the training cameras' mean distance and height.

    The orbit axis is the mean camera up vector, so the video is upright for DTU (y down) and Blender (z up) alike.
    """
    centres = cams.c2w[:, :, 3]
    up = -cams.c2w[:, :, 1].mean(0)
    up = up / up.norm()
    height = (centres @ up).mean()
    radial = centres - (centres @ up)[:, None] * up
    radius = radial.norm(dim=-1).mean()
    e1 = radial[0] / radial[0].norm()
    e2 = torch.linalg.cross(up, e1)
    c2w = []
    for k in range(n):
        a = 2 * np.pi * k / n
        eye = up * height + radius * (np.cos(a) * e1 + np.sin(a) * e2)
        c2w.append(look_at(eye, torch.zeros(3), up))
    return Cameras(K=cams.K[:1].expand(n, 3, 3).clone(), c2w=torch.stack(c2w), width=cams.width, height=cams.height)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 30) -> Path:
    """MP4 through imageio-ffmpeg when available, else an animated GIF next to it."""
    import imageio.v2 as imageio

    try:
        imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
        return path
    except Exception:  # noqa: BLE001 - no ffmpeg backend: fall back to GIF
        gif = path.with_suffix(".gif")
        imageio.mimwrite(gif, frames, duration=1000 / fps, loop=0)
        return gif


@torch.no_grad()
def render_run(run_dir: Path, orbit_frames: int = 60, downscale: int = 1) -> Path:
    """Render the held-out views (prediction | ground truth) and an orbit video into ``run/renders/final``."""
    trainer = open_run(run_dir)
    out = Path(run_dir) / "renders" / "final"
    out.mkdir(parents=True, exist_ok=True)
    r = trainer.renderer
    r.eval()
    res = trainer.evaluate(save=False)
    for i in tqdm(trainer.scene.test_ids, desc="held-out views"):
        img = r.render_image(trainer.scene.cameras, i, background=trainer.background, downscale=downscale)
        gt, _ = trainer.ground_truth(i, downscale)
        save_png(out / f"view_{i:03d}.png", torch.cat([img["rgb"], gt], dim=1))
    print(f"held-out PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.3f} ({res['n_views']} views) -> {out}")
    if orbit_frames > 0:
        orbit = orbit_cameras(trainer.scene.cameras, orbit_frames)
        frames = []
        for k in tqdm(range(orbit_frames), desc="orbit"):
            img = r.render_image(orbit, k, background=trainer.background, downscale=downscale)["rgb"]
            frames.append((img.clamp(0, 1).numpy() * 255).astype(np.uint8))
        video = write_video(out / "orbit.mp4", frames)
        print(f"orbit video: {video}")
    return out


@torch.no_grad()
def relight_environment(field, envmap: Path, rotate: float = 0.0, exposure: float | None = None):
    """The light to relight a PBR ``field`` with: ``envmap`` (.hdr) turned ``rotate`` degrees about the field's
    up axis, times ``exposure`` (None: scaled to the learned light's mean radiance, see :func:`relight_run`).
    Returns (EnvironmentMap, exposure)."""
    from nfields.render.envmap import EnvironmentMap, mean_radiance

    env = EnvironmentMap.from_file(envmap, rotation_deg=rotate, up_axis=field.env.up_axis)
    if exposure is None:
        learned = mean_radiance(field.env.texels().detach()).mean()
        exposure = float(learned / mean_radiance(env.texels()).mean().clamp_min(1e-12))
    if not (exposure > 0 and np.isfinite(exposure)):
        raise NFieldsError(f"--exposure {exposure}: must be a positive number")
    scaled = EnvironmentMap(env.texels() * exposure, rotation_deg=rotate, up_axis=field.env.up_axis, name=str(envmap))
    return scaled, exposure


@torch.no_grad()
def relight_run(
    run_dir: Path,
    envmap: Path,
    rotate: float = 0.0,
    exposure: float | None = None,
    orbit_frames: int = 60,
    downscale: int = 1,
) -> Path:
    """Render an SDF + PBR run under a new HDR environment (``envmap``, turned ``rotate`` degrees about the
    scene's up axis) into ``run/renders/relit_<map>_<deg>/``: the held-out views (relit | training-light render)
    and an orbit video, plus the learned light and the new one as PNG previews.

    ``exposure`` multiplies the new map's radiance. Albedo and light are only known up to a common scale (a
    brighter light with a darker albedo renders the same), so by default (None) the new map is scaled to the
    learned light's mean radiance: the relit asset keeps the brightness it was trained at.
    """
    from nfields.fields.pbr import PBRField
    from nfields.render.shading import linear_to_srgb

    trainer = open_run(run_dir)
    field, r = trainer.field, trainer.renderer
    if not isinstance(field, PBRField) or field.shading != "pbr":
        raise NFieldsError(
            f"{run_dir}: --envmap needs an SDF + PBR run (model.kind sdf, model.shading pbr, trained past "
            "train.pbr_start); this run has no materials to relight"
        )
    envmap = Path(envmap)
    env, exposure = relight_environment(field, envmap, rotate, exposure)
    out = Path(run_dir) / "renders" / f"relit_{envmap.stem}_{rotate:g}"
    out.mkdir(parents=True, exist_ok=True)

    def preview(tex: torch.Tensor) -> torch.Tensor:  # tone-mapped equirect at 256 px wide
        img = linear_to_srgb((tex / (1 + tex)).clamp(0, 1))  # Reinhard, so the sun does not burn everything
        return torch.nn.functional.interpolate(img.permute(2, 0, 1)[None], size=(128, 256), mode="bilinear")[0].permute(
            1, 2, 0
        )

    save_png(out / "light_learned.png", preview(field.env.texels().float()))
    save_png(out / "light_new.png", preview(env.texels()))
    r.eval()
    bg = trainer.background
    try:
        for i in tqdm(trainer.scene.test_ids, desc="relit views"):
            field.relight(env)
            relit = r.render_image(trainer.scene.cameras, i, background=bg, downscale=downscale)["rgb"]
            field.relight(None)
            before = r.render_image(trainer.scene.cameras, i, background=bg, downscale=downscale)["rgb"]
            save_png(out / f"view_{i:03d}.png", torch.cat([relit, before], dim=1).clamp(0, 1))
        if orbit_frames > 0:
            field.relight(env)
            orbit = orbit_cameras(trainer.scene.cameras, orbit_frames)
            frames = []
            for k in tqdm(range(orbit_frames), desc="relit orbit"):
                img = r.render_image(orbit, k, background=bg, downscale=downscale)["rgb"]
                frames.append((img.clamp(0, 1).numpy() * 255).astype(np.uint8))
            print(f"relit orbit video: {write_video(out / 'orbit.mp4', frames)}")
    finally:
        field.relight(None)
    print(f"relit under {envmap.name} turned {rotate:g} deg, exposure {exposure:.4g} -> {out}")
    return out
