"""Viewer latency: time from a camera update to the first preview frame sent, and to the full-resolution frame.

The render function is a stand-in for a field on the CPU: a random 3-layer MLP (32 wide) evaluated at ``--samples``
points per ray and volume-rendered, so the cost per pixel is like a small NeRF's.

Two measurements:

* ``loop``: the render loop alone (no viser, no browser): ``RenderLoop.set_camera`` -> the frame handed to a send
  function that JPEG-encodes it, as the server does;
* ``browser`` (when headless Chromium, chromedriver and selenium are installed): the whole path. The server moves a
  connected Chromium tab's camera; the page sends the new camera back over the websocket; the time is measured from
  the server-side move to the frame being queued for that tab.

    python apps/bench_viewer.py                   # both, 10 moves each
    python apps/bench_viewer.py --throughput      # + training steps/s headless vs with a browser tab open
    python apps/bench_viewer.py --moves 20 --full-res 256 --no-browser
    python apps/bench_viewer.py --run bench_out/runs/demo_cpu_s10   # latency on a trained run's own field

``--run RUN`` renders a finished run (its latest checkpoint, the real field and renderer, whole CPU as in
``nfields view RUN``) instead of the random MLP.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from nfields.viewer.camera import ViewCamera, c2w_to_pose
from nfields.viewer.render_loop import CameraState, FrameInfo, RenderLoop

ROOT = Path(__file__).resolve().parents[1]


def look_at_c2w(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV c2w (x right, y down, z forward) of a camera at ``eye`` looking at ``target``."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.concatenate([np.stack([x, y, z], axis=1), eye[:, None]], axis=1)


def orbit(k: int, radius: float = 3.0) -> np.ndarray:
    """The k-th camera on a circle around the origin, 20 degrees apart."""
    a = math.radians(20.0 * k)
    return look_at_c2w(np.array([radius * math.cos(a), radius * math.sin(a), 1.0]), np.zeros(3))


class MLPField:
    """A fixed random MLP field rendered by uniform sampling in a unit ball: the CPU cost of a small NeRF."""

    def __init__(self, samples: int = 32, width: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.samples = samples
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
            torch.nn.Linear(width, 4),
        )  # fmt: skip
        for p in self.net.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5
        self.calls = 0

    @torch.no_grad()
    def __call__(self, cam: ViewCamera, mode: str) -> np.ndarray:
        self.calls += 1
        K, c2w = cam.K(), torch.as_tensor(cam.c2w, dtype=torch.float32)
        u, v = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
        d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        d = torch.as_tensor(d_cam.reshape(-1, 3), dtype=torch.float32) @ c2w[:, :3].T
        d = d / d.norm(dim=-1, keepdim=True)
        o = c2w[:, 3].expand_as(d)
        dist = float(c2w[:, 3].norm())  # sample the unit ball wherever the camera is
        t = torch.linspace(max(dist - 1.0, 0.0), dist + 1.0, self.samples)
        x = o[:, None] + d[:, None] * t[None, :, None]  # (R, S, 3)
        out = self.net(x.reshape(-1, 3)).reshape(len(d), self.samples, 4)
        sigma = 8.0 * torch.relu(out[..., 0]) * (x.norm(dim=-1) < 1.0)
        alpha = 1 - torch.exp(-sigma * (t[1] - t[0]))
        w = alpha * torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], 1), 1)
        rgb = (w[..., None] * torch.sigmoid(out[..., 1:])).sum(1) + (1 - w.sum(1, keepdim=True))
        if mode == "depth":
            rgb = ((w * t).sum(1, keepdim=True) / (dist + 1.0)).expand(-1, 3)
        return rgb.reshape(cam.height, cam.width, 3).clamp(0, 1).numpy()


def jpeg(img: np.ndarray, quality: int) -> bytes:
    """JPEG bytes, as the server sends frames (viser encodes with OpenCV or imageio; PIL is the same cost)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def summary(name: str, xs: list[float]) -> str:
    if not xs:
        return f"{name:28s} (no samples)"
    ms = [1000 * x for x in xs]
    return (
        f"{name:28s} median {statistics.median(ms):8.1f} ms   min {min(ms):8.1f}   max {max(ms):8.1f}   (n={len(ms)})"
    )


def bench_loop(args, field) -> dict[str, list[float]]:
    """set_camera -> sent frame, on the render loop alone."""
    lock = threading.Condition()
    sent: list[tuple[float, FrameInfo]] = []

    def send(img: np.ndarray, info: FrameInfo) -> None:
        jpeg(img, 90 if info.full else 75)
        with lock:
            sent.append((time.perf_counter(), info))
            lock.notify_all()

    loop = RenderLoop(field, send, preview_res=args.preview_res, full_res=args.full_res, settle_s=args.settle_s)
    res: dict[str, list[float]] = {"preview": [], "full": [], "render_preview": [], "render_full": []}
    try:
        for k in range(args.moves + 1):
            n0 = len(sent)
            t0 = time.perf_counter()
            loop.set_camera(CameraState(orbit(k), math.radians(50), args.canvas[0], args.canvas[1]))
            with lock:
                if not lock.wait_for(lambda n0=n0: any(i.full for _, i in sent[n0:]), timeout=60):
                    raise SystemExit("bench_viewer: no full frame within 60 s")
            if k == 0:
                continue  # warm-up (first torch call, allocations)
            for key, full in (("preview", False), ("full", True)):
                t, info = next(((t, i) for t, i in sent[n0:] if i.full == full), (None, None))
                if t is not None:
                    res[key].append(t - t0)
                    res[f"render_{key}"].append(info.render_s)
    finally:
        loop.close()
    return res


def bench_browser(args, field) -> dict[str, list[float]] | None:
    """Server-side camera move -> the browser's camera message -> the frame queued for that tab."""
    sys.path.insert(0, str(ROOT / "tests" / "viewer"))
    from browser import headless_chromium, missing_browser, wait_for

    reason = missing_browser()
    if reason:
        print(f"browser benchmark skipped: {reason}")
        return None
    from nfields.viewer import Viewer

    frames: list[tuple[float, FrameInfo]] = []
    v = Viewer(field, port=args.port, preview_res=args.preview_res, full_res=args.full_res, settle_s=args.settle_s)
    v.frame_hooks.append(lambda client_id, info: frames.append((time.perf_counter(), info)))
    res: dict[str, list[float]] = {"preview": [], "full": [], "render_preview": [], "render_full": []}
    try:
        with headless_chromium(*args.canvas) as driver:
            driver.get(v.url)
            if not wait_for(lambda: v.n_clients == 1 and any(i.full for _, i in frames), 60.0):
                print("browser benchmark: the page never got a full frame")
                return None
            time.sleep(1.0)  # let the page's start-up camera moves finish
            (client,) = v.server.get_clients().values()
            for k in range(1, args.moves + 1):
                n0 = len(frames)
                wxyz, pos = c2w_to_pose(orbit(k))
                t0 = time.perf_counter()
                with client.atomic():
                    client.camera.position = pos
                    client.camera.wxyz = wxyz
                ok = wait_for(lambda n0=n0: any(i.full for _, i in frames[n0:]), 60.0, interval=0.005)
                if not ok:
                    print(f"browser benchmark: no full frame after move {k}")
                    continue
                first_preview = next(((t, i) for t, i in frames[n0:] if not i.full), None)
                if first_preview is not None:
                    res["preview"].append(first_preview[0] - t0)
                    res["render_preview"].append(first_preview[1].render_s)
                t_full, i_full = next((t, i) for t, i in frames[n0:] if i.full)
                res["full"].append(t_full - t0)
                res["render_full"].append(i_full.render_s)
                time.sleep(0.3)
            driver.get("about:blank")
    finally:
        v.close()
    return res


def browser_cpu_s() -> float:
    """CPU seconds (user + system) used so far by all Chromium / chromedriver processes (Linux /proc; 0 elsewhere)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if "chrom" in name:
            fields = text[text.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def bench_throughput(args) -> dict | None:
    """Training steps/s headless vs with the live viewer open in one headless Chromium tab whose camera moves
    every ``--orbit-every`` seconds (a user looking around): the issue's ">= 70 % of headless steps/s"."""
    import tempfile

    sys.path.insert(0, str(ROOT / "tests" / "viewer"))
    from browser import headless_chromium, missing_browser, wait_for

    from nfields.config import build_config
    from nfields.train.trainer import Trainer
    from nfields.viewer.live import start_live_viewer

    reason = missing_browser()
    if reason:
        print(f"throughput benchmark skipped: {reason}")
        return None
    sets = [f"train.time_budget_s={args.train_seconds}", "train.steps=1000000", "train.eval_every=0",
            "train.ckpt_every=0", "train.mesh_eval_resolution=0"]  # fmt: skip

    def steps_per_s(trainer: Trainer) -> float:
        trainer.train_step()  # warm-up: first-call allocations, grid update
        t0, s0 = time.perf_counter(), trainer.step
        while time.perf_counter() - t0 < args.train_seconds:
            trainer.train_step()
            trainer.step += 1
            if trainer.viewer is not None:
                if trainer.step % 25 == 0:
                    trainer.viewer.log_metrics(trainer.step, {"loss": 0.0, "psnr": 0.0})
                trainer.viewer.request_refresh()
        return (trainer.step - s0) / (time.perf_counter() - t0)

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(args.scene, "hashgrid", args.preset, sets)
        for sub in ("a", "b"):
            (Path(tmp) / sub).mkdir()
        out["headless_steps_s"] = steps_per_s(Trainer(cfg, Path(tmp) / "a", progress=False))
        trainer = Trainer(cfg, Path(tmp) / "b", progress=False)
        viewer = start_live_viewer(trainer, port=args.port + 1)
        trainer.viewer = viewer
        frames: list[FrameInfo] = []
        viewer.frame_hooks.append(lambda client_id, info: frames.append(info))
        stop = threading.Event()
        try:
            with headless_chromium(*args.canvas) as driver:
                driver.get(viewer.url)
                if not wait_for(lambda: viewer.n_clients == 1 and len(frames) > 0, 120.0):
                    print("throughput benchmark: the page never got a frame")
                    return None
                (client,) = viewer.server.get_clients().values()

                def look_around() -> None:
                    k = 0
                    while not stop.wait(args.orbit_every):
                        k += 1
                        wxyz, pos = c2w_to_pose(orbit(k))
                        with client.atomic():
                            client.camera.position = pos
                            client.camera.wxyz = wxyz

                mover = threading.Thread(target=look_around, daemon=True)
                mover.start()
                n0 = len(frames)
                c0, w0 = browser_cpu_s(), time.perf_counter()
                out["viewer_steps_s"] = steps_per_s(trainer)
                out["browser_cpu_share"] = (browser_cpu_s() - c0) / (time.perf_counter() - w0) / (os.cpu_count() or 1)
                out["frames_during"] = len(frames) - n0
                out["full_frames_during"] = sum(i.full for i in frames[n0:])
                out["render_s"] = [round(i.render_s, 3) for i in frames[n0:]]
                stop.set()
                driver.get("about:blank")
        finally:
            stop.set()
            viewer.close()
    out["ratio"] = out["viewer_steps_s"] / out["headless_steps_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moves", type=int, default=10, help="camera moves measured per mode")
    ap.add_argument("--preview-res", type=int, default=96)
    ap.add_argument("--full-res", type=int, default=512)
    ap.add_argument("--settle-s", type=float, default=0.2, help="stillness before the full-resolution frame")
    ap.add_argument("--samples", type=int, default=16, help="MLP samples per ray")
    ap.add_argument("--width", type=int, default=32, help="MLP hidden width")
    ap.add_argument("--canvas", type=int, nargs=2, default=(1024, 640), metavar=("W", "H"), help="browser window")
    ap.add_argument("--port", type=int, default=8093)
    ap.add_argument("--no-browser", action="store_true", help="only the in-process render loop")
    ap.add_argument("--run", help="latency: render this finished run's field instead of the random MLP")
    ap.add_argument("--mode", default="rgb", help="latency with --run: render mode")
    ap.add_argument("--throughput", action="store_true", help="also: training steps/s headless vs with a tab open")
    ap.add_argument("--scene", default="demo", help="throughput: scene to train")
    ap.add_argument("--preset", default="cpu", help="throughput: preset")
    ap.add_argument("--train-seconds", type=float, default=60.0, help="throughput: seconds of training per side")
    ap.add_argument("--orbit-every", type=float, default=2.0, help="throughput: seconds between camera moves")
    args = ap.parse_args()

    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}"
    )
    if args.run:
        from nfields.train.render_run import open_run
        from nfields.viewer.live import LiveRenderer

        trainer = open_run(args.run)
        trainer.renderer.eval()
        live = LiveRenderer(trainer, duty_cycle=1.0)
        field = lambda cam, mode: live(cam, args.mode)  # noqa: E731
        what = f"run {args.run} ({trainer.field.__class__.__name__}, mode {args.mode})"
    else:
        field = MLPField(samples=args.samples, width=args.width)
        what = f"random MLP field ({args.width} wide), {args.samples} samples/ray"
    print(
        f"render: {what}; preview {args.preview_res} px, full {args.full_res} px "
        f"(long side), canvas {args.canvas[0]}x{args.canvas[1]}, settle {args.settle_s} s"
    )
    results = {"loop": bench_loop(args, field)}
    if not args.no_browser:
        r = bench_browser(args, field)
        if r is not None:
            results["browser"] = r
    if args.throughput:
        t = bench_throughput(args)
        if t is not None:
            print(
                f"\n[throughput] {args.scene} / {args.preset}, {args.train_seconds:g} s each: headless "
                f"{t['headless_steps_s']:.2f} steps/s, with one browser tab "
                f"(camera moved every {args.orbit_every:g} s) "
                f"{t['viewer_steps_s']:.2f} steps/s = {100 * t['ratio']:.0f} % "
                f"({t['frames_during']} frames sent, {t['full_frames_during']} full; "
                f"render_fn median {statistics.median(t['render_s'] or [0.0]):.2f} s; the browser used "
                f"{100 * t['browser_cpu_share']:.0f} % of the machine's CPU)"
            )
    for name, r in results.items():
        print(f"\n[{name}]")
        print(summary("camera move -> preview sent", r["preview"]))
        print(summary("camera move -> full sent", r["full"]))
        print(summary("preview render_fn", r["render_preview"]))
        print(summary("full render_fn", r["render_full"]))
        if r["preview"] and len(r["preview"]) == len(r["render_preview"]):
            overhead = [a - b for a, b in zip(r["preview"], r["render_preview"])]
            print(summary("preview overhead (no render)", overhead))


if __name__ == "__main__":
    main()
