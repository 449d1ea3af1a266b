"""Glue between a running Trainer (or a reopened run) and the web viewer.

The viewer's render thread calls :meth:`LiveRenderer.__call__`; it renders in ray chunks, taking the trainer's lock
only per chunk (a training step waits at most one chunk), and keeps a CPU budget (a duty cycle) that the viewer's
render loops consult before each frame, so training keeps most of the CPU; the loops wait without blocking and then
render the latest camera.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nfields.data.cameras import Cameras
from nfields.errors import NFieldsError

MATERIAL_MODES = ("albedo", "roughness", "metallic")
"""Extra viewer modes of SDF + PBR fields: the composited material channel (albedo in sRGB)."""


class LiveRenderer:
    """Render function for the viewer: (ViewCamera, mode) -> (H, W, 3) float image in [0, 1]."""

    def __init__(self, trainer, chunk: int = 4096, duty_cycle: float = 0.15, relight_maps: dict | None = None):
        self.trainer = trainer
        self.chunk = chunk
        if not 0.0 < duty_cycle <= 1.0:
            raise NFieldsError(f"viewer: duty_cycle must be in (0, 1], got {duty_cycle}")
        self.duty_cycle = duty_cycle
        self._free_at = 0.0  # perf_counter time before which the render budget is spent
        self._budget_lock = threading.Lock()
        self.lock = getattr(trainer, "lock", None) or threading.RLock()
        # name -> .hdr path, chosen server-side (the browser only ever sends a name from this list).
        self.relight_maps: dict[str, Path] = dict(relight_maps or {})
        self._relight = (next(iter(self.relight_maps), None), 0.0)
        self._relight_env = None  # (key, EnvironmentMap) of the last relight light built

    def set_relight(self, name: str, rotate_deg: float) -> None:
        """Choose the map (a key of ``relight_maps``) and rotation of the ``relit`` mode."""
        if name not in self.relight_maps:
            raise NFieldsError(f"viewer: unknown relight map {name!r}")
        self._relight = (name, float(rotate_deg))

    def _relight_light(self):
        from nfields.train.render_run import relight_environment

        key = self._relight
        if self._relight_env is None or self._relight_env[0] != key:
            env, _ = relight_environment(self.trainer.field, self.relight_maps[key[0]], key[1])
            self._relight_env = (key, env)
        return self._relight_env[1]

    def modes(self) -> tuple[str, ...]:
        """Render modes this run supports: + normals for SDF fields, + the material channels for PBR fields."""
        field = self.trainer.field
        if field.kind != "sdf":
            return ("rgb", "depth", "opacity")
        if hasattr(field, "render_mode"):
            relit = ("relit",) if self.relight_maps else ()
            return ("rgb", "depth", "opacity", "normals") + MATERIAL_MODES + relit
        return ("rgb", "depth", "opacity", "normals")

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
        field = self.trainer.field
        material = mode in MATERIAL_MODES and hasattr(field, "render_mode")
        relit = self._relight_light() if mode == "relit" and self.relight_maps else None
        outs = {"rgb": [], "depth": [], "opacity": [], "normals": []}
        waited = 0.0  # seconds spent waiting for a training step to release the lock: not render CPU
        for s in range(0, len(rays), self.chunk):
            tw = time.perf_counter()
            with self.lock:
                waited += time.perf_counter() - tw
                was_training = r.training
                r.eval()
                if material:  # the field composites the material channel instead of shaded colour
                    field.render_mode = mode
                if relit is not None:  # shaded under the chosen map instead of the learned light
                    field.relight(relit)
                try:
                    o = r(rays[s : s + self.chunk], background=self.trainer.background)
                finally:
                    if material:
                        field.render_mode = "rgb"
                    if relit is not None:
                        field.relight(None)
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
        t1 = time.perf_counter()
        self._spend(t1 - t0 - waited, t1)
        return img.clamp(0, 1).numpy()

    def _spend(self, busy: float, t1: float) -> None:
        # A render that ended at t1 and kept the CPU busy for `busy` s buys busy * (1 / duty_cycle - 1) s of rest
        # for training.
        with self._budget_lock:
            self._free_at = max(self._free_at, t1 + busy * (1.0 / self.duty_cycle - 1.0))

    def cooldown(self) -> float:
        """Seconds until the render budget allows the next frame (0 when it does)."""
        return max(0.0, self._free_at - time.perf_counter())


def start_live_viewer(
    trainer,
    host: str = "127.0.0.1",
    port: int = 8080,
    duty_cycle: float = 0.15,
    allow_save: bool = True,
    on_export: Callable[[], str] | None = None,
):
    """Start the viser viewer on a trainer; prints its URL and returns the Viewer (ImportError without viser).

    ``duty_cycle``: the share of wall time renders may use (training keeps the rest; 1.0 for a finished run).
    ``allow_save``: show "Save checkpoint" (off for a finished run: there is nothing new to save).
    ``on_export``: the "Export mesh" callback (returns the written path), None hides the button.
    """
    from nfields.viewer.server import Viewer

    scene = trainer.scene
    maps = find_relight_maps(trainer) if getattr(trainer.field, "shading", None) is not None else {}
    cams = scene.cameras
    ids = scene.train_ids
    # Small thumbnails for the frustums: nearest-neighbour downsampling of the uint8 images, no float copies.
    step = max(1, max(cams.width, cams.height) // 96)
    thumbs = scene.images[ids][:, ::step, ::step].numpy()
    render = LiveRenderer(trainer, duty_cycle=duty_cycle, relight_maps=maps)

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
        on_save=(lambda: str(trainer.save())) if allow_save else None,
        on_export=on_export,
        relight=(tuple(maps), render.set_relight) if maps else None,
        cooldown_fn=render.cooldown,  # always 0 at duty_cycle 1 (a finished run)
    )
    print(f"viewer: {viewer.url}", flush=True)
    return viewer


def find_relight_maps(trainer) -> dict[str, Path]:
    """HDR maps the viewer offers for relighting, by display name: the scene's own (``gt/*.hdr``), the run's
    ``envmaps/`` folder, and ``envmaps/`` of the data roots (``./data``, ``../shared/data``, ``$NFIELDS_DATA``)."""
    import os

    roots = [Path(trainer.scene.root) / "gt", Path(trainer.run_dir) / "envmaps", Path("data") / "envmaps"]
    roots.append(Path("..") / "shared" / "data" / "envmaps")
    if os.environ.get("NFIELDS_DATA"):
        roots.append(Path(os.environ["NFIELDS_DATA"]) / "envmaps")
    maps: dict[str, Path] = {}
    for root in roots:
        for f in sorted(root.glob("*.hdr")) if root.is_dir() else []:
            maps.setdefault(f.stem if f.stem not in maps else f"{root.parent.name}/{f.stem}", f.resolve())
    return maps


def view_run(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080, seconds: float = 0.0) -> None:
    """Serve a finished run (its latest checkpoint) in the viewer until Ctrl-C, or for ``seconds`` when > 0.

    Renders use the whole CPU (nothing trains); "Export mesh" writes ``<run>/export/mesh.glb`` and shows it.
    """
    from nfields.export.run_export import export_trainer
    from nfields.train.checkpoint import list_checkpoints
    from nfields.train.render_run import open_run
    from nfields.viewer.server import serve_until

    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file() and not list_checkpoints(run_dir):
        raise NFieldsError(f"{run_dir}: the run has no checkpoint yet (train it first: ckpt/ is empty)")
    trainer = open_run(run_dir)
    trainer.renderer.eval()
    viewer = start_live_viewer(
        trainer, host=host, port=port, duty_cycle=1.0, allow_save=False,
        on_export=lambda: str(export_trainer(trainer, run_dir / "export" / "mesh.glb").path),
    )  # fmt: skip
    try:
        serve_until(seconds)
    finally:
        viewer.close(wait=True)


def view_target(target: str | Path, host: str = "127.0.0.1", port: int = 8080, seconds: float = 0.0) -> None:
    """``nfields view TARGET``: a run folder (:func:`view_run`) or a mesh file (:func:`~nfields.viewer.view_mesh`)."""
    from nfields.viewer.server import MESH_SUFFIXES, view_mesh

    target = Path(target)
    if target.is_dir():
        view_run(target, host=host, port=port, seconds=seconds)
    elif target.is_file():
        if target.suffix.lower() not in MESH_SUFFIXES:
            raise NFieldsError(f"{target}: not a run folder or a mesh file ({', '.join(MESH_SUFFIXES)})")
        view_mesh(target, host=host, port=port, seconds=seconds)
    else:
        raise NFieldsError(f"{target}: no such run folder or mesh file")
