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
    """Reopen a run folder at its last checkpoint (scene loaded, nothing written)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise NFieldsError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    return Trainer(cfg, run_dir, resume=True, progress=False)


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
