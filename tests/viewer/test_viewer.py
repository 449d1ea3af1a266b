"""The web viewer: camera math, the render loop's scheduling, the viser server, and a real headless browser.

The browser tests skip (with the reason) when chromium, chromedriver or selenium are missing; everything else runs
without a browser.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from browser import canvas_rect, headless_chromium, missing_browser, screenshot, wait_for, wait_for_canvas  # noqa: I001

from nfields.errors import NFieldsError
from nfields.viewer.camera import (
    ViewCamera,
    c2w_to_pose,
    fov_y_from_K,
    matrix_to_quat,
    pose_to_c2w,
    quat_to_matrix,
    render_size,
)
from nfields.viewer.render_loop import CameraState, RenderLoop, to_uint8_image

pytest.importorskip("viser", reason="the viewer needs viser (pip install 'nfields[viewer]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (SO_REUSEADDR, as servers bind: TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def look_at_c2w(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV c2w (x right, y down, z forward) of a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.concatenate([np.stack([x, y, z], axis=1), eye[:, None]], axis=1)


def still_camera(w: int = 64, h: int = 48) -> CameraState:
    return CameraState(look_at_c2w((2.0, -2.0, 1.0), (0.0, 0.0, 0.0)), math.radians(50), w, h)


# -- camera math ----


def test_view_camera_intrinsics_match_fov():
    cam = ViewCamera(np.eye(4)[:3], fov_y=math.radians(60), width=160, height=120)
    K = cam.K()
    assert K[0, 0] == pytest.approx(60 / math.tan(math.radians(30)))
    assert K[0, 0] == K[1, 1]
    assert (K[0, 2], K[1, 2]) == (80.0, 60.0)
    assert fov_y_from_K(K, 120) == pytest.approx(math.radians(60))


def test_pose_round_trip_and_opencv_axes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        eye = rng.normal(size=3) * 3
        c2w = look_at_c2w(eye, rng.normal(size=3) * 0.1)
        wxyz, pos = c2w_to_pose(c2w)
        assert np.linalg.norm(wxyz) == pytest.approx(1.0)
        np.testing.assert_allclose(pose_to_c2w(wxyz, pos), c2w, atol=1e-9)
    # quaternion <-> matrix on rotations near 180 degrees (the numerically hard branch)
    for axis in np.eye(3):
        R = quat_to_matrix(np.array([1e-9, *axis]))
        np.testing.assert_allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-9)
    # A scaled rotation (dataset poses) still gives a unit quaternion and the same axes.
    c2w = look_at_c2w((0.0, -3.0, 0.0), (0.0, 0.0, 0.0))
    scaled = c2w.copy()
    scaled[:, :3] *= 2.0
    np.testing.assert_allclose(pose_to_c2w(*c2w_to_pose(scaled)), c2w, atol=1e-9)
    # Looking along +y with z up: OpenCV x (right) is +x, y (down) is -z.
    np.testing.assert_allclose(c2w[:, 0], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:, 1], [0, 0, -1], atol=1e-12)


def test_render_size_keeps_aspect_and_never_upscales():
    assert render_size(1280, 720, 128) == (128, 72)
    assert render_size(720, 1280, 128) == (72, 128)
    assert render_size(100, 50, 512) == (100, 50)
    assert render_size(0, 0, 64) == (64, 64)


def test_to_uint8_image_conversions():
    f = np.array([[[0.0, 0.5, 1.5]]], dtype=np.float32)
    np.testing.assert_array_equal(to_uint8_image(f), [[[0, 128, 255]]])
    gray = np.full((2, 3), 0.25)
    assert to_uint8_image(gray).shape == (2, 3, 3)
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert to_uint8_image(rgba).shape == (2, 2, 3)
    assert to_uint8_image(np.full((1, 1, 3), np.nan))[0, 0, 0] == 0
    with pytest.raises(ValueError, match="expected"):
        to_uint8_image(np.zeros((4, 4, 2)))


# -- render loop (no browser) ----


class Recorder:
    """A render function and a send function that record what happened."""

    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.calls: list[tuple[int, int, str]] = []
        self.sent: list = []
        self.fail = fail
        self.delay = delay

    def render(self, cam: ViewCamera, mode: str) -> np.ndarray:
        self.calls.append((cam.width, cam.height, mode))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise ZeroDivisionError("test pattern failed")
        return np.full((cam.height, cam.width, 3), 0.5, np.float32)

    def send(self, img, info) -> None:
        self.sent.append((img.shape, info.full, info.mode))


def test_render_loop_preview_then_full_resolution():
    rec = Recorder()
    loop = RenderLoop(rec.render, rec.send, preview_res=16, full_res=64, settle_s=0.05, max_fps=100)
    try:
        loop.set_camera(still_camera(128, 96))
        assert loop.wait_for_frames(2, timeout=5.0)
        time.sleep(0.15)  # nothing more once the full frame is up
        assert rec.sent == [((12, 16, 3), False, "rgb"), ((48, 64, 3), True, "rgb")]
        assert (loop.preview_frames, loop.full_frames) == (1, 1)
        # An out-of-order (older) camera update is ignored: nothing new is rendered.
        stale = still_camera(128, 96)
        stale.stamp = -1.0
        loop.set_camera(stale)
        time.sleep(0.1)
        assert loop.frames_sent == 2
        loop.set_mode("depth")
        assert loop.wait_for_frames(4, timeout=5.0)
        assert rec.sent[2:] == [((12, 16, 3), False, "depth"), ((48, 64, 3), True, "depth")]
    finally:
        loop.close()
    assert not loop.alive


def test_render_loop_caps_fps_while_the_camera_moves():
    rec = Recorder()
    loop = RenderLoop(rec.render, rec.send, preview_res=8, full_res=32, settle_s=0.2, max_fps=10)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.6:  # a drag: 200 camera updates per second
            loop.set_camera(still_camera())
            time.sleep(0.005)
        n_moving = len(rec.calls)
        # 0.6 s at <= 10 fps: at most 7 renders, all previews (the camera never settled).
        assert 3 <= n_moving <= 7
        assert all(w == 8 for w, _, _ in rec.calls)
        assert wait_for(lambda: loop.full_frames == 1, 5.0)  # the full frame once it stopped
        assert rec.sent[-1][1] is True and sum(full for _, full, _ in rec.sent) == 1
    finally:
        loop.close()


def test_render_loop_refresh_is_rate_limited():
    rec = Recorder()
    loop = RenderLoop(rec.render, rec.send, preview_res=8, full_res=16, settle_s=0.01, refresh_interval_s=0.2)
    try:
        loop.set_camera(still_camera())
        assert loop.wait_for_frames(2, timeout=5.0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:  # a trainer calling request_refresh every ~1 ms
            loop.refresh()
            time.sleep(0.001)
        time.sleep(0.25)
        n_refresh = loop.frames_sent - 2
        assert 1 <= n_refresh <= 4  # ~0.7 s / 0.2 s, never hundreds
        assert all(full for _, full, _ in rec.sent[2:])  # a still camera re-renders at full resolution
    finally:
        loop.close()


def test_render_loop_cooldown_waits_then_renders_the_latest_camera():
    """A spent render budget (a live run's duty cycle) holds renders back without blocking; then the newest pose."""
    rec = Recorder()
    free_at = [time.monotonic() + 0.5]
    cooldown = lambda: max(0.0, free_at[0] - time.monotonic())  # noqa: E731
    loop = RenderLoop(
        rec.render, rec.send, preview_res=8, full_res=16, settle_s=0.01, max_fps=100, cooldown_fn=cooldown
    )
    try:
        t0 = time.perf_counter()
        for _ in range(50):  # a drag during the cooldown: set_camera never waits, nothing renders yet
            loop.set_camera(still_camera())
        assert time.perf_counter() - t0 < 0.1
        time.sleep(0.2)
        assert loop.render_calls == 0
        assert wait_for(lambda: loop.full_frames == 1, 5.0)
        assert time.monotonic() >= free_at[0] - 0.01
        assert loop.preview_frames == 1  # one preview of the latest pose, not one per stale update
    finally:
        loop.close()


def test_live_renderer_budget_follows_the_duty_cycle():
    from nfields.viewer.live import LiveRenderer

    live = LiveRenderer(trainer=None, duty_cycle=0.2)
    t = time.perf_counter()
    live._spend(0.1, t)  # a 0.1 s render at duty 0.2 buys 0.4 s of rest
    assert 0.3 < live.cooldown() <= 0.4
    live._spend(0.01, t)  # a cheap preview afterwards never shortens the rest
    assert live.cooldown() > 0.3
    with pytest.raises(NFieldsError, match="duty_cycle"):
        LiveRenderer(trainer=None, duty_cycle=0.0)


def test_render_loop_survives_errors_and_logs_once(caplog):
    rec = Recorder(fail=True)
    loop = RenderLoop(rec.render, rec.send, preview_res=8, full_res=16, settle_s=0.01, max_fps=100)
    try:
        with caplog.at_level(logging.WARNING, logger="nfields.viewer.render_loop"):
            for _ in range(3):
                n = loop.render_calls
                loop.set_camera(still_camera())
                assert wait_for(lambda n=n: loop.render_calls > n, 5.0)
        assert loop.errors.count >= 3
        assert loop.frames_sent == 0
        warnings = [r for r in caplog.records if "ZeroDivisionError" in r.getMessage()]
        assert len(warnings) == 1 and "Traceback" in warnings[0].getMessage()
        assert loop.alive
        rec.fail = False
        loop.refresh()
        assert loop.wait_for_frames(1, timeout=5.0)
    finally:
        loop.close()


def test_render_loop_inputs_never_block_on_a_slow_render():
    rec = Recorder(delay=0.5)
    loop = RenderLoop(rec.render, rec.send, preview_res=8, full_res=16, settle_s=0.01)
    try:
        loop.set_camera(still_camera())
        assert wait_for(lambda: len(rec.calls) == 1, 2.0)  # a render is in flight now
        cam = still_camera()
        t0 = time.perf_counter()
        for _ in range(1000):
            loop.refresh()
            loop.set_camera(cam)
        assert time.perf_counter() - t0 < 0.25  # half the render's 0.5 s: nobody waited for it
    finally:
        loop.close(timeout=0)


# -- viewer server (no browser) ----


def test_viewer_needs_viser(monkeypatch):
    from nfields.viewer import Viewer

    monkeypatch.setitem(sys.modules, "viser", None)
    with pytest.raises(NFieldsError, match=r"pip install 'nfields\[viewer\]'"):
        Viewer(lambda cam, mode: None, port=free_port())


def test_viewer_scene_metrics_and_meshes(tmp_path):
    import trimesh

    from nfields.viewer import Viewer

    c2w = np.stack([look_at_c2w((3 * math.cos(a), 3 * math.sin(a), 1.0), (0, 0, 0)) for a in np.linspace(0, 6, 4)])
    K = np.array([[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]])[None].repeat(4, 0)
    thumbs = np.zeros((4, 12, 16, 3), np.uint8)
    saved, exported = [], []
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))

    def export():
        p = tmp_path / "box.glb"
        # glTF is +Y up; write it the way nfields.export.gltf does (world z -> gltf y).
        m = box.copy()
        m.apply_transform(np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]]))
        m.export(p)
        exported.append(p)
        return str(p)

    v = Viewer(
        lambda cam, mode: np.zeros((cam.height, cam.width, 3)),
        port=free_port(), train_cameras=(c2w, K, 64, 48), thumbnails=thumbs, aabb=np.array([-1, -1, -1, 1, 1, 1.0]),
        occupancy_points_fn=lambda: np.random.default_rng(0).uniform(-1, 1, (300_000, 3)),
        on_save=lambda: saved.append(1) or "ckpt.pt", on_export=export,
    )  # fmt: skip
    try:
        assert v.url == f"http://127.0.0.1:{v.port}"
        with urllib.request.urlopen(v.url, timeout=5) as r:  # the page is served
            assert r.status == 200 and b"<html" in r.read().lower()
        assert len(v._frustum_specs) == 4
        # The first training camera is the starting view.
        np.testing.assert_allclose(v.server.initial_camera.position, c2w[0][:, 3], atol=1e-9)
        assert v.server.initial_camera.fov == pytest.approx(fov_y_from_K(K[0], 48))
        for step in range(1, 6):
            v.log_metrics(step, {"loss": 1.0 / step, "psnr": 10.0 + step})
        v._last_plot = 0.0
        v.log_metrics(6, {"loss": 0.1, "psnr": 17.0})
        xs, ys = v._plots["psnr"].data
        assert list(xs) == [1, 2, 3, 4, 5, 6] and ys[-1] == 17.0
        v.request_refresh()  # no client yet: a no-op, not an error
        # Buttons go through the callbacks only.
        v._toggle_pause()
        assert v.paused
        v._toggle_pause()
        assert not v.paused
        v._run_callback(v.server.gui.add_button("x"), v.on_save, "saved", show=False)
        assert saved == [1]
        v._run_callback(v.server.gui.add_button("y"), v.on_export, "exported", show=True)
        assert len(exported) == 1 and "/mesh" in v._mesh_handles
        # The GLB came back to the z-up world: extents (1, 2, 3) along x, y, z again.
        np.testing.assert_allclose(v.mesh_bounds, [-0.5, -1.0, -1.5, 0.5, 1.0, 1.5], atol=1e-6)
        v._toggle_occupancy(True)
        assert v._occupancy is not None and len(v._occupancy.points) == 200_000
        ply = tmp_path / "box.ply"
        box.export(ply)
        v.show_mesh(ply, name="ply")
        np.testing.assert_allclose(v.mesh_bounds, [-0.5, -1.0, -1.5, 0.5, 1.0, 1.5], atol=1e-6)
        with pytest.raises(NFieldsError, match="no such mesh file"):
            v.show_mesh(tmp_path / "missing.glb")
        (tmp_path / "notes.txt").write_text("x")
        with pytest.raises(NFieldsError, match="unknown mesh format"):
            v.show_mesh(tmp_path / "notes.txt")
        assert v.render_errors == 0
    finally:
        v.close()
        v.close(wait=True)
    assert port_is_free(v.port)
    port = free_port()
    with pytest.raises(NFieldsError, match="3 thumbnails for 4 training cameras"):
        Viewer(lambda cam, mode: None, port=port, train_cameras=(c2w, K, 64, 48), thumbnails=thumbs[:3])
    assert port_is_free(port)  # the failed viewer did not keep its server


# -- a real browser ----

MAGENTA = np.array([255, 0, 255])


def pattern_render_fn(seen: list):
    """Colour gradient over the image (red along x, green along y) with a magenta centre block; the blue channel of
    the gradient encodes the camera height so the picture depends on the pose."""

    def render(cam: ViewCamera, mode: str) -> np.ndarray:
        seen.append(cam)
        h, w = cam.height, cam.width
        img = np.zeros((h, w, 3), np.float32)
        img[..., 0] = np.linspace(0, 1, w)[None, :]
        img[..., 1] = np.linspace(0, 1, h)[:, None]
        img[..., 2] = np.clip(cam.c2w[2, 3] / 10.0, 0, 0.2)
        img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (1.0, 0.0, 1.0)
        return img

    return render


def magenta_fraction(img: np.ndarray) -> float:
    return float((np.abs(img.astype(int) - MAGENTA).max(axis=2) < 60).mean())


@pytest.fixture(scope="module")
def browser():
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    with headless_chromium(1024, 768) as driver:
        yield driver


def test_browser_shows_rendered_frames(browser, tmp_path):
    from nfields.viewer import Viewer

    seen: list[ViewCamera] = []
    eye, center = np.array([0.5, -3.0, 1.2]), np.zeros(3)
    c2w = look_at_c2w(eye, center)[None]
    K = np.array([[[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]])
    v = Viewer(
        pattern_render_fn(seen), port=free_port(), preview_res=32, full_res=128, train_cameras=(c2w, K, 64, 48),
        aabb=np.array([-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]),
    )  # fmt: skip
    try:
        browser.get(v.url)
        assert wait_for_canvas(browser), "viser's page never showed a canvas"
        assert wait_for(lambda: v.frames_sent >= 1, 15.0), f"no frame sent (render calls: {len(seen)})"
        shots = []

        def pattern_on_screen() -> bool:
            shots.append(screenshot(browser))
            return magenta_fraction(shots[-1]) > 0.08

        shown = wait_for(pattern_on_screen, 10.0, interval=0.3)
        img = screenshot(browser, tmp_path / "viewer.png")
        x, y, w, h = canvas_rect(browser)
        assert shown, f"pattern never on screen: magenta {magenta_fraction(shots[-1]):.3f}; see {tmp_path}"
        canvas = img[y : y + h, x : x + w]
        assert canvas.std() > 40  # a picture, not a blank canvas
        assert magenta_fraction(canvas) > 0.08
        # The gradient: red grows along x in the bottom strip (below the magenta block, right of the axes gizmo).
        strip = canvas[int(0.82 * h) : int(0.92 * h)].astype(float)
        left = strip[:, int(0.12 * w) : int(0.25 * w), 0].mean()
        right = strip[:, int(0.75 * w) : int(0.9 * w), 0].mean()
        assert right - left > 100, (left, right)
        assert strip[..., 1].mean() > 170  # green is high near the bottom
        # The browser camera reaches render_fn unchanged, in OpenCV axes. (The page first reports viser's default
        # camera, then moves to the initial one: the first training camera, looking at the bounds' centre.)
        assert wait_for(lambda: any(np.allclose(c.c2w[:, 3], eye, atol=1e-3) for c in seen), 10.0)
        cam = next(c for c in seen if np.allclose(c.c2w[:, 3], eye, atol=1e-3))
        np.testing.assert_allclose(cam.c2w[:, 3], eye, atol=1e-3)
        np.testing.assert_allclose(cam.c2w[:, 2], (center - eye) / np.linalg.norm(center - eye), atol=1e-3)
        assert cam.c2w[2, 1] < 0  # image y (down) points against world z (up)
        assert cam.fov_y == pytest.approx(fov_y_from_K(K[0], 48), abs=1e-3)
        assert max(cam.width, cam.height) == 32  # a new view starts with a preview
        assert wait_for(lambda: max(seen[-1].width, seen[-1].height) == 128, 5.0)  # then the full frame
        assert np.allclose(seen[-1].c2w, cam.c2w)
        # The tab stands in the training camera: its frustum (and thumbnail) is hidden there, not over the render.
        (session,) = v._sessions.values()
        assert session.hidden == 0 and len(session.frustums) == 1 and not session.frustums[0].visible
        # A second tab gets its own render loop and frames.
        first = browser.current_window_handle
        browser.switch_to.new_window("tab")
        browser.get(v.url)
        assert wait_for(lambda: v.n_clients == 2 and all(lp.frames_sent for lp in v.render_loops()), 15.0)
        browser.close()
        browser.switch_to.window(first)
        assert v.render_errors == 0
    finally:
        v.close()


def test_browser_render_errors_do_not_stop_the_viewer(browser, caplog):
    from nfields.viewer import Viewer

    broken = threading.Event()
    broken.set()
    seen: list[ViewCamera] = []
    pattern = pattern_render_fn(seen)

    def render(cam, mode):
        if broken.is_set():
            raise RuntimeError("field exploded")
        return pattern(cam, mode)

    v = Viewer(render, port=free_port(), preview_res=32, full_res=64, refresh_interval_s=0.1)
    try:
        with caplog.at_level(logging.WARNING, logger="nfields.viewer.render_loop"):
            browser.get(v.url)
            assert wait_for(lambda: v.render_errors >= 1, 15.0)
        assert v.frames_sent == 0
        assert sum("field exploded" in r.getMessage() for r in caplog.records) == 1
        with urllib.request.urlopen(v.url, timeout=5) as r:  # the server still answers
            assert r.status == 200
        assert all(lp.alive for lp in v.render_loops())
        broken.clear()
        v.request_refresh()  # e.g. the next training step fixed the field
        assert wait_for(lambda: v.frames_sent >= 1, 10.0)
        assert wait_for(lambda: magenta_fraction(screenshot(browser)) > 0.08, 10.0, interval=0.3)
    finally:
        v.close()
        browser.get("about:blank")
