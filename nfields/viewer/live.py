"""Glue between a running Trainer (or a reopened run) and the web viewer.

The viewer's render thread calls :meth:`LiveRenderer.__call__`; it renders in ray chunks, taking the trainer's lock
only per chunk (a training step waits at most one chunk), and throttles itself to a duty cycle so training keeps
most of the CPU.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from nfields.data.cameras import Cameras


class LiveRenderer:
    """Render function for the viewer: (ViewCamera, mode) -> (H, W, 3) float image in [0, 1]."""

    def __init__(self, trainer, chunk: int = 4096, duty_cycle: float = 0.25):
        self.trainer = trainer
        self.chunk = chunk
        self.duty_cycle = duty_cycle
        self._busy = 0.0
        self._since = time.perf_counter()
        self.lock: threading.Lock = getattr(trainer, "lock", threading.Lock())

    def modes(self) -> tuple[str, ...]:
        """Render modes this run supports."""
        return (
            ("rgb", "depth", "opacity", "normals") if self.trainer.field.kind == "sdf" else ("rgb", "depth", "opacity")
        )

    @torch.no_grad()
    def __call__(self, camera, mode: str) -> np.ndarray:
        """Render the field from a browser camera (OpenCV c2w (3,4), K) in ``mode``."""
        t0 = time.perf_counter()
        cams = Cameras(
            K=torch.as_tensor(camera.K(), dtype=torch.float32)[None],
            c2w=torch.as_tensor(camera.c2w, dtype=torch.float32)[None],
            width=int(camera.width),
            height=int(camera.height),
        )
        rays = cams.image_rays(0)
        r = self.trainer.renderer
        outs = {"rgb": [], "depth": [], "opacity": [], "normals": []}
        for s in range(0, len(rays), self.chunk):
            with self.lock:
                was_training = r.training
                r.eval()
                o = r(rays[s : s + self.chunk], background=self.trainer.background)
                r.train(was_training)
            outs["rgb"].append(o.rgb)
            outs["depth"].append(o.depth)
            outs["opacity"].append(o.opacity)
            if o.normals is not None:
                outs["normals"].append(o.normals)
        h, w = cams.height, cams.width
        if mode == "depth":
            d = torch.cat(outs["depth"]).reshape(h, w)
            op = torch.cat(outs["opacity"]).reshape(h, w)
            m = op > 0.5
            if m.any():
                lo, hi = d[m].min(), d[m].max()
                d = 1 - ((d - lo) / (hi - lo + 1e-8)).clamp(0, 1)
            img = (d * m).unsqueeze(-1).expand(h, w, 3)
        elif mode == "opacity":
            img = torch.cat(outs["opacity"]).reshape(h, w, 1).expand(h, w, 3)
        elif mode == "normals" and outs["normals"]:
            img = torch.cat(outs["normals"]).reshape(h, w, 3) * 0.5 + 0.5
        else:
            img = torch.cat(outs["rgb"]).reshape(h, w, 3)
        self._throttle(time.perf_counter() - t0)
        return img.clamp(0, 1).numpy()

    def _throttle(self, spent: float) -> None:
        # Sleep so rendering uses at most duty_cycle of wall time: training keeps the rest of the cores.
        if self.duty_cycle < 1.0:
            time.sleep(spent * (1.0 / self.duty_cycle - 1.0))


def start_live_viewer(trainer, host: str = "127.0.0.1", port: int = 8080):
    """Start the viser viewer on a trainer; prints its URL and returns the Viewer (ImportError without viser)."""
    from nfields.viewer.server import Viewer

    scene = trainer.scene
    cams = scene.cameras
    ids = scene.train_ids
    # Small thumbnails for the frustums: nearest-neighbour downsampling of the uint8 images, no float copies.
    step = max(1, max(cams.width, cams.height) // 96)
    thumbs = scene.images[ids][:, ::step, ::step].numpy()
    render = LiveRenderer(trainer)

    def occupancy_points() -> np.ndarray:
        grid = trainer.renderer.grid
        idx = torch.nonzero(grid.binary).float()
        res = torch.tensor(grid.binary.shape, dtype=torch.float32)
        lo, hi = grid.aabb[:3], grid.aabb[3:]
        return (lo + (idx + 0.5) / res * (hi - lo)).numpy()

    viewer = Viewer(
        render,
        modes=render.modes(),
        host=host,
        port=port,
        train_cameras=(cams.c2w[ids].numpy(), cams.K[ids].numpy(), cams.width, cams.height),
        thumbnails=thumbs,
        aabb=trainer.field.aabb.numpy(),
        occupancy_points_fn=occupancy_points,
        on_save=lambda: str(trainer.save()),
    )
    print(f"viewer: {viewer.url}", flush=True)
    return viewer
