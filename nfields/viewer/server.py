"""The viser web viewer: live renders of a field, training cameras, scene bounds, metrics and meshes.

This is the only module that imports viser (lazily: without it, constructing a :class:`Viewer` raises
:class:`~nfields.errors.NFieldsError` with the install command). The viewer knows nothing about fields or trainers:
it takes a render callable ``(ViewCamera, mode) -> image`` and plain arrays, so it works the same on a live trainer,
a reopened run, or a test pattern.

Safety: it binds 127.0.0.1 unless told otherwise, and nothing the browser sends is used as a path: saving and
exporting go through the callbacks the caller passed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nfields.errors import NFieldsError
from nfields.viewer.camera import ViewCamera, c2w_to_pose, fov_y_from_K, pose_to_c2w
from nfields.viewer.render_loop import CameraState, ErrorLog, FrameInfo, RenderFn, RenderLoop

log = logging.getLogger(__name__)

__all__ = ["Viewer", "ViewCamera", "RenderFn", "view_mesh", "serve_until", "MESH_SUFFIXES"]

MESH_SUFFIXES = (".glb", ".gltf", ".ply", ".obj", ".stl", ".off")
# glTF is +Y up, the project's world +Z up (nfields/export/gltf.py bakes the -90 deg X rotation into the vertices);
# +90 deg about X undoes it so an exported GLB lands back on the field it came from.
_GLTF_TO_WORLD_WXYZ = np.array([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0])
_MAX_OCCUPANCY_POINTS = 200_000
_MAX_PLOT_POINTS = 1000


def _import_viser():
    try:
        import viser
    except ImportError:
        raise NFieldsError("the viewer needs viser: pip install 'nfields[viewer]'") from None
    return viser


def _box_edges(aabb: np.ndarray) -> np.ndarray:
    """(12, 2, 3) line segments of an axis-aligned box (xmin, ymin, zmin, xmax, ymax, zmax)."""
    lo, hi = aabb[:3], aabb[3:]
    corners = np.array([[(hi if (i >> k) & 1 else lo)[k] for k in range(3)] for i in range(8)])
    # Corners i and j share an edge when their indices differ in exactly one bit.
    pairs = [(i, i | (1 << k)) for i in range(8) for k in range(3) if not (i >> k) & 1]
    return np.stack([corners[[i, j]] for i, j in pairs]).astype(np.float32)


class Viewer:
    """A viser web viewer around a render callable; one background render thread per browser tab.

    Args:
        render_fn: ``(ViewCamera, mode) -> (H, W, 3)`` uint8 or float in [0, 1]; None serves the scene only (meshes).
        modes: render modes offered in each tab's dropdown (the first is the default).
        host, port: where to serve; 127.0.0.1 unless the network should see it. A busy port moves to the next free one.
        train_cameras: ``(c2w (N, 3, 4), K (N, 3, 3), W, H)`` drawn as frustums; clicking one moves that tab's camera
            to it. The first one is also the starting view.
        thumbnails: (N, h, w, 3) uint8 images shown inside the frustums.
        aabb: (6,) scene bounds (xmin, ymin, zmin, xmax, ymax, zmax), drawn as a box.
        occupancy_points_fn: returns (M, 3) centres of occupied grid cells; called when its toggle is switched on.
        on_save: saves a checkpoint and returns its path (button "Save checkpoint").
        relight: (map names, set_relight(name, degrees)) for the "relit" render mode of PBR runs: a map dropdown
            and a rotation slider; the names are the server's own list, so the browser never names a file.
        on_export: exports a mesh and returns the file path, which is then shown (button "Export mesh").
        preview_res: long side in pixels of the frames rendered while the camera moves.
        full_res: long side of the frames rendered once the camera stopped (capped by the browser canvas).
        max_fps: upper bound on renders per second per tab.
        refresh_interval_s: after a :meth:`request_refresh` (training step), wait this long after the previous render.
        settle_s: the camera counts as stopped after this long without updates.
        cooldown_fn: seconds until the next render may start (a live run's CPU budget, shared by all tabs).

    The caller prints :attr:`url`, polls :attr:`paused`, calls :meth:`log_metrics`, :meth:`request_refresh` and
    finally :meth:`close`. Counters for tests and benchmarks: :attr:`frames_sent`, :attr:`render_errors`.

    Example:
        >>> v = Viewer(lambda cam, mode: np.full((cam.height, cam.width, 3), 0.5), port=8090)  # doctest: +SKIP
        >>> print(v.url)  # doctest: +SKIP
        http://127.0.0.1:8090
    """

    def __init__(
        self,
        render_fn: RenderFn | None,
        *,
        modes: tuple[str, ...] | list[str] = ("rgb", "depth", "normals"),
        host: str = "127.0.0.1",
        port: int = 8080,
        train_cameras: tuple[np.ndarray, np.ndarray, int, int] | None = None,
        thumbnails: np.ndarray | None = None,
        aabb: np.ndarray | None = None,
        occupancy_points_fn: Callable[[], np.ndarray] | None = None,
        on_save: Callable[[], str] | None = None,
        on_export: Callable[[], str] | None = None,
        relight: tuple[tuple[str, ...], Callable[[str, float], None]] | None = None,
        preview_res: int = 96,
        full_res: int = 512,
        max_fps: float = 15.0,
        refresh_interval_s: float = 1.0,
        settle_s: float = 0.2,
        cooldown_fn: Callable[[], float] | None = None,
        label: str = "nfields",
    ) -> None:
        viser = _import_viser()
        if not modes:
            raise NFieldsError("viewer: modes must name at least one render mode")
        if not 8 <= preview_res <= full_res <= 4096:
            raise NFieldsError(f"viewer: need 8 <= preview_res ({preview_res}) <= full_res ({full_res}) <= 4096")
        self.render_fn = render_fn
        self.modes = tuple(modes)
        self.preview_res, self.full_res = int(preview_res), int(full_res)
        self.max_fps, self.refresh_interval_s, self.settle_s = max_fps, refresh_interval_s, settle_s
        self.on_save, self.on_export = on_save, on_export
        self.cooldown_fn = cooldown_fn
        self.relight = relight
        self.occupancy_points_fn = occupancy_points_fn
        self.paused = False
        self.errors = ErrorLog()
        self.frame_hooks: list[Callable[[int, FrameInfo], None]] = []
        self._lock = threading.Lock()
        self._sessions: dict[int, _Session] = {}
        self._frames_of_closed = 0
        self._closed = False
        self._stopper: threading.Thread | None = None
        self._metrics: dict[str, tuple[list[float], list[float]]] = {}
        self._plots: dict = {}
        self._last_plot = 0.0

        # viser prints a banner of its own; the caller prints `url` once, in its own words.
        with contextlib.redirect_stdout(io.StringIO()):
            self.server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
        self.host = host
        self.port = int(self.server.get_port())
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        self.url = f"http://{shown}:{self.port}"

        self._aabb = None if aabb is None else np.asarray(aabb, dtype=np.float64).reshape(6)
        self._cams = None
        if train_cameras is not None:
            c2w, K, w, h = train_cameras
            self._cams = (np.asarray(c2w, dtype=np.float64), np.asarray(K, dtype=np.float64), int(w), int(h))
        self._scale = self._scene_scale()
        try:
            self._setup_scene(thumbnails)
            self._setup_gui(viser)
        except BaseException:  # e.g. mismatched thumbnails: do not leave a server running behind the error
            self.server.stop()
            raise
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)

    # -- public API ----

    @property
    def frames_sent(self) -> int:
        """Frames sent to browsers so far (all tabs, closed ones included)."""
        with self._lock:
            return self._frames_of_closed + sum(lp.frames_sent for lp in self._loops_locked())

    @property
    def render_errors(self) -> int:
        """How many renders (or frame sends) raised."""
        return self.errors.count

    @property
    def n_clients(self) -> int:
        """Browser tabs connected now."""
        with self._lock:
            return len(self._sessions)

    def render_loops(self) -> list[RenderLoop]:
        """The render loops of the tabs connected now (for tests and benchmarks)."""
        with self._lock:
            return self._loops_locked()

    def _loops_locked(self) -> list[RenderLoop]:
        return [s.loop for s in self._sessions.values() if s.loop is not None]

    def request_refresh(self) -> None:
        """The field changed (a training step): every tab re-renders its view, rate-limited. Never blocks."""
        for loop in self.render_loops():
            loop.refresh()

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Append training metrics; the GUI plots (one per key) update at most twice a second."""
        with self._lock:
            for k, v in metrics.items():
                xs, ys = self._metrics.setdefault(k, ([], []))
                xs.append(float(step))
                ys.append(float(v))
            now = time.monotonic()
            if now - self._last_plot < 0.5 and all(k in self._plots for k in metrics):
                return
            self._last_plot = now
            data = {k: (np.asarray(xs), np.asarray(ys)) for k, (xs, ys) in self._metrics.items()}
        self._update_plots(data)

    def show_mesh(self, mesh, name: str = "mesh") -> None:
        """Show a mesh: a file path (.glb/.gltf/.ply/.obj/.stl/.off) or a ``trimesh.Trimesh``/``Scene``.

        glTF files are +Y up by the standard and are turned back to the project's +Z-up world; other formats are
        shown as they are. A checkbox toggles it.
        """
        glb, wxyz, bounds = _mesh_to_glb(mesh)
        handle = self.server.scene.add_glb(f"/{name}", glb_data=glb, wxyz=wxyz)
        if self._mesh_toggle is None:
            self._mesh_toggle = self.server.gui.add_checkbox("Mesh", True, order=32)
            self._mesh_toggle.on_update(lambda _: self._set_visible("/mesh", self._mesh_toggle.value))
        self._mesh_handles[f"/{name}"] = handle
        self.mesh_bounds = bounds
        if self._cams is None and self._aabb is None and bounds is not None:
            self._frame_bounds(bounds)

    def close(self, wait: bool = False) -> None:
        """Stop the render threads now and the server (idempotent).

        viser's shutdown waits seconds for browsers' open connections, so by default the server stops in a
        background thread and ``close`` returns at once (the end of training is not held up); ``wait=True`` blocks
        until the port is free.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
            loops = self._loops_locked()
            self._frames_of_closed += sum(lp.frames_sent for lp in loops)
            self._sessions.clear()
        if first:
            for loop in loops:
                loop.close(timeout=1.0)
            # Not silenced like the start banner: redirecting stdout from a thread would swallow the caller's prints.
            self._stopper = threading.Thread(target=self.server.stop, name="viewer-stop", daemon=True)
            self._stopper.start()
        if wait:
            self._stopper.join()

    # -- scene ----

    def _scene_scale(self) -> float:
        # A length for frustum sizes and point sizes: the bounds' diagonal, else the cameras' spread.
        if self._aabb is not None:
            return float(np.linalg.norm(self._aabb[3:] - self._aabb[:3])) or 1.0
        if self._cams is not None and len(self._cams[0]) > 1:
            t = self._cams[0][:, :, 3]
            return float(2 * np.linalg.norm(t - t.mean(0), axis=1).max()) or 1.0
        return 1.0

    def _setup_scene(self, thumbnails: np.ndarray | None) -> None:
        scene = self.server.scene
        self._mesh_toggle = None
        self._mesh_handles: dict = {}
        self.mesh_bounds: np.ndarray | None = None
        self._frustum_specs: list[tuple] = []
        self._frustum_scale = 0.05 * self._scale
        self._occupancy = None
        self._frustum_positions = np.zeros((0, 3))
        up = np.array([0.0, 0.0, 1.0])
        if self._cams is not None:
            c2w, K, w, h = self._cams
            # The scene's up: the average of the cameras' up vectors (-y in OpenCV); +Z if they cancel out.
            mean_up = -c2w[:, :3, 1].mean(0)
            if np.linalg.norm(mean_up) > 1e-3:
                up = mean_up / np.linalg.norm(mean_up)
            scene.set_up_direction(up)
            if thumbnails is not None and len(thumbnails) != len(c2w):
                raise NFieldsError(f"viewer: {len(thumbnails)} thumbnails for {len(c2w)} training cameras")
            # Frustums are per tab (see _on_connect): a tab hides the one it stands in, so its thumbnail does not cover
            # the render; the specs are computed once here.
            for i in range(len(c2w)):
                wxyz, pos = c2w_to_pose(c2w[i])
                img = None if thumbnails is None else np.ascontiguousarray(thumbnails[i][..., :3]).astype(np.uint8)
                self._frustum_specs.append((wxyz, pos, fov_y_from_K(K[i], h), w / h, img))
            self._frustum_positions = np.stack([spec[1] for spec in self._frustum_specs])
            # Start where the first training camera stands, looking at the scene centre (or along its axis).
            target = self._aabb_center() if self._aabb is not None else c2w[0][:, 3] + c2w[0][:, 2] * self._scale * 0.5
            cam = self.server.initial_camera
            cam.position = tuple(c2w[0][:, 3])
            cam.look_at = tuple(target)
            cam.up = tuple(up)
            cam.fov = fov_y_from_K(K[0], h)
        elif self._aabb is not None:
            self._frame_bounds(self._aabb)
        if self._aabb is not None:
            self._bounds = scene.add_line_segments(
                "/bounds", _box_edges(self._aabb), colors=(60, 160, 255), thickness=2.0, thickness_units="screen"
            )

    def _aabb_center(self) -> np.ndarray:
        return 0.5 * (self._aabb[:3] + self._aabb[3:])

    def _frame_bounds(self, aabb: np.ndarray) -> None:
        # Look at a box from a diagonal (z-up world), far enough to see all of it.
        lo, hi = np.asarray(aabb[:3], float), np.asarray(aabb[3:], float)
        c, r = 0.5 * (lo + hi), max(0.5 * float(np.linalg.norm(hi - lo)), 1e-3)
        cam = self.server.initial_camera
        cam.position = tuple(c + np.array([1.0, -1.0, 0.7]) / np.linalg.norm([1.0, -1.0, 0.7]) * 2.5 * r)
        cam.look_at = tuple(c)
        for client in self.server.get_clients().values():
            with client.atomic():
                client.camera.position = cam.position
                client.camera.look_at = cam.look_at

    def _add_frustums(self, client, session: _Session) -> None:
        for i, (wxyz, pos, fov, aspect, img) in enumerate(self._frustum_specs):
            fr = client.scene.add_camera_frustum(
                f"/train_cameras/{i:04d}", fov=fov, aspect=aspect, scale=self._frustum_scale, thickness=1.5,
                thickness_units="screen", color=(230, 120, 30), image=img, jpeg_quality=80, wxyz=wxyz, position=pos,
            )  # fmt: skip
            fr.on_click(lambda event, i=i: self._goto(session, event.client, i))
            session.frustums.append(fr)
        session.show_cameras = client.gui.add_checkbox("Training cameras", True, order=30)
        session.show_cameras.on_update(lambda _: self._update_frustums(session))
        self._update_frustums(session)

    def _update_frustums(self, session: _Session) -> None:
        on = session.show_cameras is None or session.show_cameras.value
        for i, fr in enumerate(session.frustums):
            visible = on and i != session.hidden
            if fr.visible != visible:
                fr.visible = visible

    def _goto(self, session: _Session, client, i: int) -> None:
        # Only the tab that clicked moves; the others keep their views.
        wxyz, pos, fov, _, _ = self._frustum_specs[i]
        session.hidden = i
        self._update_frustums(session)
        with client.atomic():
            client.camera.position = pos
            client.camera.wxyz = wxyz
            client.camera.fov = fov

    def _camera_moved(self, session: _Session, cam) -> None:
        if session.loop is not None:
            session.loop.set_camera(_camera_state(cam))
        if self._frustum_specs:
            # Hide the frustum the tab stands in (after a click, or at the start): its thumbnail would cover the view.
            d = np.linalg.norm(self._frustum_positions - np.asarray(cam.position)[None], axis=1)
            i = int(np.argmin(d))
            hidden = i if d[i] < 0.5 * self._frustum_scale else None
            if hidden != session.hidden:
                session.hidden = hidden
                self._update_frustums(session)

    def _set_visible(self, prefix: str, visible: bool) -> None:
        if prefix == "/bounds":
            self._bounds.visible = visible
        elif prefix == "/mesh":
            for h in self._mesh_handles.values():
                h.visible = visible

    def _toggle_occupancy(self, on: bool) -> None:
        if not on:
            if self._occupancy is not None:
                self._occupancy.visible = False
            return
        try:
            pts = np.asarray(self.occupancy_points_fn(), dtype=np.float32).reshape(-1, 3)
        except Exception as e:
            self.errors.report(e, "occupancy_points_fn")
            self._status(f"occupancy grid failed: {type(e).__name__}: {e}")
            return
        if len(pts) > _MAX_OCCUPANCY_POINTS:  # a browser chokes on millions of points; a random subset reads the same
            pts = pts[np.random.default_rng(0).choice(len(pts), _MAX_OCCUPANCY_POINTS, replace=False)]
        self._occupancy = self.server.scene.add_point_cloud(
            "/occupancy", points=pts, colors=(80, 200, 120), point_size=0.004 * self._scale, point_shape="square"
        )
        self._status(f"occupancy grid: {len(pts)} cells shown")

    # -- GUI ----

    def _setup_gui(self, viser) -> None:
        gui = self.server.gui
        self._uplot = viser.uplot
        self._status_md = gui.add_markdown("", order=90)
        if self.render_fn is not None:
            self._pause = gui.add_button("Pause training", order=20)
            self._pause.on_click(lambda _: self._toggle_pause())
        if self.on_save is not None:
            save = gui.add_button("Save checkpoint", order=21)
            save.on_click(lambda _: self._run_callback(save, self.on_save, "checkpoint saved", show=False))
        if self.on_export is not None:
            export = gui.add_button("Export mesh", order=22)
            export.on_click(lambda _: self._run_callback(export, self.on_export, "mesh exported", show=True))
        if self._aabb is not None:
            bb = gui.add_checkbox("Scene bounds", True, order=31)
            bb.on_update(lambda _: self._set_visible("/bounds", bb.value))
        if self.occupancy_points_fn is not None:
            oc = gui.add_checkbox("Occupancy grid", False, order=33)
            oc.on_update(lambda _: self._toggle_occupancy(oc.value))
        if self.relight is not None and self.relight[0]:
            names, set_relight = self.relight
            env = gui.add_dropdown("Relight map", names, initial_value=names[0], order=12)
            rot = gui.add_slider("Rotate map (deg)", min=-180.0, max=180.0, step=5.0, initial_value=0.0, order=13)

            def changed(_) -> None:
                set_relight(env.value, float(rot.value))  # a name from the server's own list, never a path
                self.request_refresh()

            env.on_update(changed)
            rot.on_update(changed)

    def _status(self, text: str) -> None:
        self._status_md.content = text

    def _toggle_pause(self) -> None:
        self.paused = not self.paused
        self._pause.label = "Resume training" if self.paused else "Pause training"
        self._status("training paused" if self.paused else "training resumed")

    def _run_callback(self, button, fn: Callable[[], str], done: str, show: bool) -> None:
        # Runs on viser's worker pool, so a slow export never stalls the server; the button is off meanwhile.
        button.disabled = True
        try:
            path = fn()
            if show and path:
                self.show_mesh(path)
            self._status(f"{done}: `{path}`")
        except Exception as e:
            self.errors.report(e, button.label)
            self._status(f"{button.label} failed: {type(e).__name__}: {e}")
        finally:
            button.disabled = False

    def _update_plots(self, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        uplot = self._uplot
        colors = ("#e8590c", "#1c7ed6", "#2f9e44", "#ae3ec9")
        for i, (key, (xs, ys)) in enumerate(data.items()):
            if len(xs) > _MAX_PLOT_POINTS:  # keep the websocket messages small on long runs
                idx = np.linspace(0, len(xs) - 1, _MAX_PLOT_POINTS).round().astype(int)
                xs, ys = xs[idx], ys[idx]
            if key not in self._plots:
                self._plots[key] = self.server.gui.add_uplot(
                    data=(xs, ys),
                    series=(uplot.Series(label="step"), uplot.Series(label=key, stroke=colors[i % 4], width=2)),
                    scales={"x": uplot.Scale(time=False, auto=True), "y": uplot.Scale(auto=True)},
                    legend=uplot.Legend(show=False),
                    title=key, aspect=2.0, order=40 + i,
                )  # fmt: skip
            else:
                self._plots[key].data = (xs, ys)

    # -- clients ----

    def _on_connect(self, client) -> None:
        client_id = client.client_id
        session = _Session()
        if self._frustum_specs:
            self._add_frustums(client, session)
        if self.render_fn is not None:
            session.loop = self._start_render_loop(client)
        with self._lock:
            if self._closed:
                if session.loop is not None:
                    session.loop.close(timeout=0)
                return
            self._sessions[client_id] = session
        client.camera.on_update(lambda cam: self._camera_moved(session, cam))
        self._camera_moved(session, client.camera)

    def _start_render_loop(self, client) -> RenderLoop:
        client_id = client.client_id

        def send(img: np.ndarray, info: FrameInfo) -> None:
            client.scene.set_background_image(img, format="jpeg", jpeg_quality=90 if info.full else 75)

        def on_frame(info: FrameInfo) -> None:
            for hook in list(self.frame_hooks):
                hook(client_id, info)
            if info.full:
                stats_md.content = f"{info.mode} {info.width}x{info.height}, {1000 * info.render_s:.0f} ms"

        loop = RenderLoop(
            self.render_fn, send, mode=self.modes[0], preview_res=self.preview_res, full_res=self.full_res,
            settle_s=self.settle_s, max_fps=self.max_fps, refresh_interval_s=self.refresh_interval_s,
            errors=self.errors, on_frame=on_frame, cooldown_fn=self.cooldown_fn, name=f"viewer-render-{client_id}",
        )  # fmt: skip
        # Per-tab controls: each tab has its own mode and render statistics.
        mode = client.gui.add_dropdown("Render mode", self.modes, initial_value=self.modes[0], order=10)
        mode.on_update(lambda _: loop.set_mode(mode.value))
        stats_md = client.gui.add_markdown("", order=11)
        return loop

    def _on_disconnect(self, client) -> None:
        with self._lock:
            session = self._sessions.pop(client.client_id, None)
            if session is not None and session.loop is not None:
                self._frames_of_closed += session.loop.frames_sent
        if session is not None and session.loop is not None:
            session.loop.close(timeout=0)


class _Session:
    """What the viewer keeps per browser tab: its render loop, its frustums and which one it stands in."""

    def __init__(self) -> None:
        self.loop: RenderLoop | None = None
        self.frustums: list = []
        self.show_cameras = None
        self.hidden: int | None = None


def _camera_state(cam) -> CameraState:
    """A viser CameraHandle -> CameraState (OpenCV c2w, vertical fov, canvas size)."""
    return CameraState(
        pose_to_c2w(cam.wxyz, cam.position), float(cam.fov), int(cam.image_width), int(cam.image_height),
        stamp=float(cam.update_timestamp),
    )  # fmt: skip


def _mesh_to_glb(mesh) -> tuple[bytes, np.ndarray, np.ndarray | None]:
    """A mesh file or trimesh object -> (GLB bytes, wxyz to place it in the world, (6,) bounds in the world)."""
    import trimesh

    identity = np.array([1.0, 0.0, 0.0, 0.0])
    if isinstance(mesh, (str, Path)):
        path = Path(mesh)
        if not path.is_file():
            raise NFieldsError(f"{path}: no such mesh file")
        suffix = path.suffix.lower()
        if suffix not in MESH_SUFFIXES:
            raise NFieldsError(f"{path}: unknown mesh format {suffix!r} (expected one of {', '.join(MESH_SUFFIXES)})")
        try:
            loaded = trimesh.load(path, force=None)
        except Exception as e:
            raise NFieldsError(f"{path}: cannot read mesh: {type(e).__name__}: {e}") from None
        gltf = suffix in (".glb", ".gltf")
        # A .glb goes to the browser as it is (keeps tangents and PBR textures); others are converted by trimesh.
        glb = path.read_bytes() if suffix == ".glb" else None
    elif isinstance(mesh, (trimesh.Trimesh, trimesh.Scene)):
        loaded, gltf, glb = mesh, False, None
    else:
        raise NFieldsError(f"show_mesh: expected a mesh path or a trimesh object, got {type(mesh).__name__}")
    if isinstance(loaded, (trimesh.Trimesh, trimesh.Scene)) and loaded.is_empty:
        raise NFieldsError(f"{mesh}: the mesh is empty")
    if glb is None:
        buf = io.BytesIO()
        loaded.export(buf, file_type="glb")
        glb = buf.getvalue()
    wxyz = _GLTF_TO_WORLD_WXYZ if gltf else identity
    bounds = None
    b = getattr(loaded, "bounds", None)
    if b is not None:
        b = np.asarray(b, dtype=np.float64)
        if gltf:  # (x, y, z)_gltf -> (x, -z, y)_world
            b = np.stack([b[:, 0], -b[:, 2], b[:, 1]], axis=1)
            b = np.stack([b.min(0), b.max(0)])
        bounds = b.reshape(6)
    return glb, wxyz, bounds


def view_mesh(path: str | Path, host: str = "127.0.0.1", port: int = 8080, seconds: float = 0.0) -> None:
    """Serve one mesh file in the browser until Ctrl-C, or for ``seconds`` when > 0 (``nfields view FILE.glb``)."""
    viewer = Viewer(None, host=host, port=port)
    try:
        viewer.show_mesh(path)
        if viewer.mesh_bounds is not None:  # a ground grid under the mesh, sized to it
            lo, hi = viewer.mesh_bounds[:3], viewer.mesh_bounds[3:]
            size = float(max(hi[:2] - lo[:2]).max()) * 2 or 1.0
            viewer.server.scene.add_grid(
                "/grid", width=size, height=size, cell_size=size / 20, section_size=size / 4,
                position=(*(0.5 * (lo[:2] + hi[:2])), lo[2]),
            )  # fmt: skip
        print(f"viewer: {viewer.url}  (Ctrl-C to stop)", flush=True)
        serve_until(seconds)
    finally:
        viewer.close(wait=True)


def serve_until(seconds: float = 0.0) -> None:
    """Block until Ctrl-C, or for ``seconds`` when > 0 (the viewer serves from its own threads meanwhile)."""
    deadline = time.monotonic() + seconds if seconds > 0 else math.inf
    try:
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))
    except KeyboardInterrupt:
        pass
