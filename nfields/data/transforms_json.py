"""instant-ngp / nerfstudio ``transforms.json`` captures.

Intrinsics ``fl_x, fl_y, cx, cy, w, h`` and distortion ``k1, k2, p1, p2`` are read from the top level and may be
overridden per frame (nerfstudio writes them per frame for multi-camera captures); ``camera_angle_x/y`` stand in
for missing focal lengths. ``camera_model`` must be ``OPENCV`` (or ``PINHOLE``/``SIMPLE_PINHOLE``/absent); fisheye
and higher-order distortion are refused with a clear error. Poses are OpenGL camera-to-world (converted to OpenCV).
Principal points follow COLMAP's convention (pixel centres at +0.5), which is this package's.

Bounds: instant-ngp's ``aabb_scale`` k (with its ``scale`` 0.33 and ``offset`` 0.5 defaults) gives a cube of
half-size ``k / (2 * scale)`` centred at ``(0.5 - offset) / scale``; without it the aabb is a cube around the mean
camera centre that contains every camera. RGBA images are composited on ``background`` (alpha kept as the mask);
``mask_path`` entries, when every frame has one, are loaded as 0/255 masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nfields.data.blender import frame_image_path, frame_pose, read_json, read_rgba_views
from nfields.data.cameras import Cameras
from nfields.data.images import image_size, parallel_map, read_image, resize, to_mask
from nfields.data.scene import Scene, holdout_split, select_views
from nfields.errors import NFieldsError

SUPPORTED_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")


def _intrinsics(path: Path, meta: dict, frame: dict, i: int, size: tuple[int, int] | None) -> tuple:
    """(w, h, fx, fy, cx, cy, dist(4)) for one frame: the frame's keys override the file's top level."""

    def get(key: str, default=None):
        v = frame.get(key, meta.get(key, default))
        if v is not None and not isinstance(v, (int, float)):
            raise NFieldsError(f"{path}: frame {i} {key} must be a number, got {v!r}")
        return v

    model = str(frame.get("camera_model", meta.get("camera_model", "OPENCV"))).upper()
    if model not in SUPPORTED_MODELS:
        raise NFieldsError(f"{path}: camera_model {model} is not supported (use one of {', '.join(SUPPORTED_MODELS)})")
    for key in ("k3", "k4"):
        if get(key, 0.0):
            raise NFieldsError(f"{path}: frame {i} has {key}={get(key)}; only k1, k2, p1, p2 distortion is supported")
    w, h = get("w"), get("h")
    if w is None or h is None:
        if size is None:
            raise NFieldsError(f"{path}: frame {i} has no w/h and its image size is unknown")
        w, h = size
    w, h = int(w), int(h)
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None:
        if get("camera_angle_x") is None:
            raise NFieldsError(f"{path}: frame {i} has neither fl_x nor camera_angle_x")
        fx = 0.5 * w / math.tan(0.5 * get("camera_angle_x"))
    if fy is None:
        fy = 0.5 * h / math.tan(0.5 * get("camera_angle_y")) if get("camera_angle_y") is not None else fx
    cx, cy = get("cx", w / 2), get("cy", h / 2)
    dist = [float(get(k, 0.0)) for k in ("k1", "k2", "p1", "p2")]
    return w, h, float(fx), float(fy), float(cx), float(cy), dist


def _bounds(meta: dict, centres: np.ndarray) -> np.ndarray:
    """(6,) aabb: instant-ngp's aabb_scale box, else a cube around the cameras (see the module docstring)."""
    if "aabb_scale" in meta:
        scale = float(meta.get("scale", 0.33))
        offset = np.broadcast_to(np.asarray(meta.get("offset", 0.5), dtype=np.float64), (3,))
        centre = (0.5 - offset) / scale
        half = float(meta["aabb_scale"]) / (2 * scale)
    else:
        centre = centres.mean(0)
        half = max(float(np.linalg.norm(centres - centre, axis=1).max()), 1e-3)
    return np.concatenate([centre - half, centre + half])


def load_transforms_json(
    root: Path,
    downscale: int = 1,
    holdout_every: int = 8,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    max_views: int | None = None,
) -> Scene:
    """Load a folder with ``transforms.json`` -> :class:`Scene` (test views: ids % holdout_every == 0)."""
    root = Path(root)
    path = root / "transforms.json"
    meta = read_json(path)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise NFieldsError(f"{path}: no frames")
    keep = select_views(len(frames), max_views)
    frames = [(i, frames[i]) for i in keep]
    paths = []
    for i, f in frames:
        if not isinstance(f, dict) or "file_path" not in f:
            raise NFieldsError(f"{path}: frame {i} has no file_path")
        paths.append(frame_image_path(root, f["file_path"]))
    header_size = None
    if any("w" not in f and "w" not in meta for _, f in frames):
        header_size = image_size(paths[0])

    intr = [_intrinsics(path, meta, f, i, header_size) for i, f in frames]
    sizes = {(w, h) for w, h, *_ in intr}
    if len(sizes) > 1:
        raise NFieldsError(f"{path}: frames have different image sizes {sorted(sizes)}; one size per scene only")
    width, height = sizes.pop()
    K = np.zeros((len(frames), 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2] = np.array([t[2:6] for t in intr]).T
    K[:, 2, 2] = 1.0
    dist = np.array([t[6] for t in intr])
    c2w = np.stack([frame_pose(path, f, i) for i, f in frames])
    cams = Cameras(
        K=torch.as_tensor(K, dtype=torch.float32),
        c2w=torch.as_tensor(c2w, dtype=torch.float32),
        width=width,
        height=height,
        distortion=torch.as_tensor(dist, dtype=torch.float32) if np.any(dist != 0) else None,
    )
    k = max(int(downscale), 1)
    if k > 1:
        cams = cams.scaled(1.0 / k)
    size = (cams.width, cams.height)
    images, masks = read_rgba_views(paths, (width, height), size, background)
    has_alpha = masks is not None

    if all("mask_path" in f for _, f in frames):

        def read_mask(item: tuple[int, dict]) -> np.ndarray:
            p = root / item[1]["mask_path"]
            m = read_image(p)
            if (m.shape[1], m.shape[0]) != (width, height):
                raise NFieldsError(f"{p}: mask is {m.shape[1]}x{m.shape[0]} but image is {width}x{height}")
            m = to_mask(m, binary=True)
            return to_mask(resize(m, size)[:, :, None], binary=True) if k > 1 else m

        masks = torch.from_numpy(np.stack(parallel_map(read_mask, frames)))

    aabb = _bounds(meta, c2w[:, :, 3])
    corners = np.stack(np.meshgrid(*[aabb[[a, a + 3]] for a in range(3)], indexing="ij"), -1).reshape(-1, 3)
    centres = c2w[:, :, 3]
    far = float(np.linalg.norm(centres[:, None] - corners[None], axis=-1).max())
    # Distance from each camera to the box (0 inside): the nearest the object can be.
    outside = np.maximum(np.maximum(aabb[:3] - centres, centres - aabb[3:]), 0.0)
    near = max(float(np.linalg.norm(outside, axis=1).min()), 0.01 * far)
    train_ids, test_ids = holdout_split(len(frames), holdout_every)
    return Scene(
        name=root.name,
        root=root,
        cameras=cams,
        images=images,
        masks=masks,
        train_ids=train_ids,
        test_ids=test_ids,
        aabb=torch.as_tensor(aabb, dtype=torch.float32),
        background=torch.as_tensor(background, dtype=torch.float32).reshape(3) if has_alpha else None,
        near=near,
        far=far,
        scale_mat=torch.eye(4),
        object_radius=None,
    )
