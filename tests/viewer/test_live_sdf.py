"""A viewer thread rendering an SDF run while it trains: the training steps must not be disturbed (the viewer flips
the renderer to eval mode, which once made a step build its graph without create_graph and fail in backward)."""

from __future__ import annotations

import math
import threading

import numpy as np

from nfields.config import build_config
from nfields.train.trainer import Trainer
from nfields.viewer.camera import ViewCamera
from nfields.viewer.live import LiveRenderer


def test_live_renders_during_sdf_training_do_not_break_steps(tmp_path):
    cfg = build_config("demo", None, "tiny", ["train.batch_rays=512"])
    trainer = Trainer(cfg, tmp_path, progress=False)
    live = LiveRenderer(trainer, chunk=256, duty_cycle=1.0)
    cams = trainer.scene.cameras
    fov = 2 * math.atan(0.5 * cams.height / float(cams.K[0, 1, 1]))
    cam = ViewCamera(cams.c2w[0].numpy(), fov, 32, 32)
    stop, frames, errors = threading.Event(), [], []

    def render() -> None:
        while not stop.is_set():
            try:
                frames.append(live(cam, "normals"))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    th = threading.Thread(target=render, daemon=True)
    th.start()
    try:
        for _ in range(12):
            stats = trainer.train_step()
            trainer.step += 1
            assert math.isfinite(stats["loss"]) and "skipped" not in stats
    finally:
        stop.set()
        th.join(timeout=60)
    assert not errors and frames and np.isfinite(frames[-1]).all()
    assert trainer.renderer.training  # the last step left the renderer in training mode
