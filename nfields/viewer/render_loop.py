"""One background render thread per browser tab, independent of viser (so it is testable without a browser).

The loop keeps the *latest* request only (camera pose, render mode, field version) and decides what to render next:

* a new camera pose or mode -> a cheap preview (``preview_res`` px on the long side) at once, for fluid dragging;
* once the camera has been still for ``settle_s`` -> the same view at ``full_res``;
* the field changed (a training step, :meth:`RenderLoop.refresh`) -> the still view again at full resolution, but
  only ``refresh_interval_s`` after the previous render, so a live viewer cannot starve the trainer;
* every render, of any kind, starts at least ``1 / max_fps`` s after the previous one;
* an optional ``cooldown_fn`` (shared by all tabs of a live run) holds back every render while the renderer's CPU
  budget is spent (a duty cycle, so training keeps its share); the loop waits without blocking and then renders the
  *latest* camera, so the view never lags behind a stale pose.

Exceptions from the render function are logged (once per exception type, with traceback, through the shared
:class:`ErrorLog`), counted, and the loop carries on; callers never wait on the render thread.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nfields.viewer.camera import ViewCamera, render_size

log = logging.getLogger(__name__)

RenderFn = Callable[[ViewCamera, str], np.ndarray]
"""(camera, mode) -> (H, W, 3) image, uint8 or float in [0, 1]."""


@dataclass
class CameraState:
    """What the browser reports: OpenCV c2w (3, 4), vertical fov (radians), canvas size in CSS pixels, and when it
    was reported (``stamp``, any clock; 0 = unknown)."""

    c2w: np.ndarray
    fov_y: float
    canvas_width: int
    canvas_height: int
    stamp: float = 0.0


class ErrorLog:
    """Counts render errors and logs each exception type once with its traceback (later ones only count)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self.count = 0

    def report(self, exc: BaseException, where: str) -> None:
        """Record ``exc``; log it with traceback the first time its type is seen."""
        kind = type(exc).__qualname__
        with self._lock:
            first = kind not in self._seen
            self._seen.add(kind)
        if first:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            log.warning("viewer: %s failed (%s; further %s errors are only counted):\n%s", where, exc, kind, tb)
        with self._lock:  # counted once logged, so whoever sees the count also finds the log record
            self.count += 1


def to_uint8_image(img) -> np.ndarray:
    """A render function's output -> contiguous (H, W, 3) uint8.

    Accepts numpy arrays or torch tensors, uint8 or float in [0, 1] (clipped), (H, W), (H, W, 1), (H, W, 3) or
    (H, W, 4) (alpha dropped); anything else raises ValueError, which the loop reports like any render error.
    """
    if hasattr(img, "detach"):  # a torch tensor; avoid importing torch here
        img = img.detach().cpu().numpy()
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"render function returned shape {img.shape}; expected (H, W, 3)")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (np.clip(np.nan_to_num(img.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(img)


@dataclass
class FrameInfo:
    """One frame handed to the send function: which request it answers and how long it took."""

    full: bool
    width: int
    height: int
    mode: str
    camera_version: int
    render_s: float
    sent_at: float


class RenderLoop:
    """Renders one client's view in a daemon thread; feed it with :meth:`set_camera`, :meth:`set_mode`,
    :meth:`refresh`.

    ``send_fn(image_uint8, info)`` delivers a frame (e.g. as the viser background image). ``on_frame(info)`` is an
    optional hook called after each sent frame (benchmarks and tests use it).

    Example:
        >>> frames = []
        >>> black = lambda cam, mode: np.zeros((cam.height, cam.width, 3))
        >>> loop = RenderLoop(black, lambda img, info: frames.append(img), preview_res=8, full_res=16, settle_s=0.01)
        >>> loop.set_camera(CameraState(np.eye(4)[:3], 1.0, 32, 32))
        >>> loop.wait_for_frames(2, timeout=5.0)
        True
        >>> [f.shape for f in frames]
        [(8, 8, 3), (16, 16, 3)]
        >>> loop.close()
    """

    def __init__(
        self,
        render_fn: RenderFn,
        send_fn: Callable[[np.ndarray, FrameInfo], None],
        *,
        mode: str = "rgb",
        preview_res: int = 96,
        full_res: int = 512,
        settle_s: float = 0.2,
        max_fps: float = 15.0,
        refresh_interval_s: float = 1.0,
        errors: ErrorLog | None = None,
        on_frame: Callable[[FrameInfo], None] | None = None,
        cooldown_fn: Callable[[], float] | None = None,
        name: str = "viewer-render",
    ) -> None:
        self.render_fn = render_fn
        self.send_fn = send_fn
        self.preview_res = int(preview_res)
        self.full_res = int(full_res)
        self.settle_s = float(settle_s)
        self.min_interval_s = 1.0 / max_fps if max_fps > 0 else 0.0
        self.refresh_interval_s = float(refresh_interval_s)
        self.errors = errors if errors is not None else ErrorLog()
        self.on_frame = on_frame
        self.cooldown_fn = cooldown_fn
        # Counters read by Viewer, tests and the benchmark.
        self.frames_sent = 0
        self.preview_frames = 0
        self.full_frames = 0
        self.render_calls = 0
        self.dropped_frames = 0
        self.last_frame: FrameInfo | None = None

        self._cond = threading.Condition()
        self._closed = False
        self._camera: CameraState | None = None
        self._camera_version = 0
        self._camera_time = 0.0
        self._mode = mode
        self._field_version = 0
        # (camera_version, mode, field_version, full) of the last render attempt; a failed attempt counts too, so a
        # broken render function is retried only when something changes, not in a hot loop.
        self._done: tuple[int, str, int, bool] | None = None
        self._last_start = -1e9
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- inputs (any thread; they never block on a render) ------------------------------------------------------------

    def set_camera(self, camera: CameraState) -> None:
        """The browser camera moved: render a preview now and the full frame once it stays still.

        An update stamped older than the current camera is ignored (callbacks may run out of order on a pool)."""
        with self._cond:
            if self._camera is not None and camera.stamp < self._camera.stamp:
                return
            self._camera = camera
            self._camera_version += 1
            self._camera_time = time.monotonic()
            self._cond.notify_all()

    def set_mode(self, mode: str) -> None:
        """Switch the render mode (e.g. "rgb", "depth", "normals")."""
        with self._cond:
            if mode != self._mode:
                self._mode = mode
                self._cond.notify_all()

    @property
    def mode(self) -> str:
        """The current render mode."""
        return self._mode

    def refresh(self) -> None:
        """The field changed: re-render the current view (rate-limited by ``refresh_interval_s``)."""
        with self._cond:
            self._field_version += 1
            self._cond.notify_all()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread (waits up to ``timeout`` s for a render in flight to finish)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """True while the render thread runs."""
        return self._thread.is_alive()

    def wait_for_frames(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` frames were sent (True) or ``timeout`` s passed (False). For tests/benchmarks."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.frames_sent < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- the thread ----

    def _next_job(self, now: float) -> tuple[tuple | None, float | None]:
        """(job, None) to render now, or (None, seconds to wait; None = until notified). Called with the lock held."""
        cam = self._camera
        if cam is None:
            return None, None
        key = (self._camera_version, self._mode, self._field_version)
        still_for = now - self._camera_time
        done = self._done
        if done is not None and done[:3] == key:
            if done[3]:
                return None, None  # the full frame of this exact view is up
            if still_for < self.settle_s:
                return None, self.settle_s - still_for  # preview up, camera may still move
            full = True
        elif done is not None and done[:2] == key[:2]:
            # Only the field changed (training): re-render the still view at full resolution, rate-limited.
            wait = self._last_start + self.refresh_interval_s - now
            if wait > 0:
                return None, wait
            full = still_for >= self.settle_s
        else:
            full = False  # new camera or mode: a quick preview first
        wait = self._last_start + self.min_interval_s - now
        if self.cooldown_fn is not None:
            wait = max(wait, self.cooldown_fn())
        if wait > 0:
            return None, wait
        res = self.full_res if full else self.preview_res
        if not full and self.preview_res >= self.full_res:
            full = True
        w, h = render_size(cam.canvas_width, cam.canvas_height, res)
        view = ViewCamera(c2w=cam.c2w.copy(), fov_y=cam.fov_y, width=w, height=h)
        return (key, full, view), None

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    job, wait = self._next_job(now)
                    if job is not None:
                        break
                    self._cond.wait(wait)
                key, full, view = job
                self._last_start = now
                self._done = (*key, full)
            self._render_and_send(key, full, view)

    def _render_and_send(self, key: tuple, full: bool, view: ViewCamera) -> None:
        camera_version, mode, _ = key
        t0 = time.perf_counter()
        try:
            self.render_calls += 1
            img = to_uint8_image(self.render_fn(view, mode))
        except Exception as e:  # a broken render must never kill the viewer or reach the trainer
            self.errors.report(e, f"render ({mode}, {view.width}x{view.height})")
            return
        render_s = time.perf_counter() - t0
        with self._cond:
            if self._closed:
                return
            # A full frame for a camera the user has already left would make the view jump back: drop it.
            stale = full and camera_version != self._camera_version
        if stale:
            self.dropped_frames += 1
            return
        info = FrameInfo(full, img.shape[1], img.shape[0], mode, camera_version, render_s, 0.0)
        try:
            self.send_fn(img, info)
        except Exception as e:  # e.g. the client disconnected mid-send
            self.errors.report(e, "sending a frame")
            return
        info.sent_at = time.perf_counter()
        with self._cond:
            self.frames_sent += 1
            if full:
                self.full_frames += 1
            else:
                self.preview_frames += 1
            self.last_frame = info
            self._cond.notify_all()
        if self.on_frame is not None:
            try:
                self.on_frame(info)
            except Exception as e:
                self.errors.report(e, "on_frame hook")
