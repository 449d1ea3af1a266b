"""NeRF-synthetic (Blender) scenes: ``transforms_{train,val,test}.json`` with ``camera_angle_x`` and per-frame
OpenGL camera-to-world ``transform_matrix``; RGBA PNGs composited on a constant background, alpha kept as the mask.

Views: the train split is split again with the holdout rule (every ``holdout_every``-th view is a test view); frames
of ``transforms_val.json`` and ``transforms_test.json``, when present, follow the train frames and are all test views.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nfields.data.cameras import Cameras
from nfields.data.images import composite, image_size, parallel_map, read_image, resize, to_mask
from nfields.data.scene import Scene, holdout_split, select_views
from nfields.errors import NFieldsError

# OpenGL/Blender cameras look along -z with y up; OpenCV along +z with y down: negate the y and z columns.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def read_json(path: Path) -> dict:
    """Parse a JSON file; unreadable or invalid JSON is a one-line NFieldsError naming the file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NFieldsError(f"{path}: file not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NFieldsError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise NFieldsError(f"{path}: expected a JSON object at the top level")
    return data


def frame_image_path(root: Path, file_path: str) -> Path:
    """Resolve a frame's ``file_path`` (relative to the JSON's folder; NeRF-synthetic omits the ``.png``)."""
    p = root / str(file_path)
    if not p.is_file() and p.with_name(p.name + ".png").is_file():
        return p.with_name(p.name + ".png")
    return p


def frame_pose(json_path: Path, frame: dict, i: int) -> np.ndarray:
    """A frame's OpenGL ``transform_matrix`` -> OpenCV camera-to-world (3, 4) float64."""
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except KeyError:
        raise NFieldsError(f"{json_path}: frame {i} has no transform_matrix") from None
    except (TypeError, ValueError):
        raise NFieldsError(f"{json_path}: frame {i} transform_matrix is not a 4x4 number array") from None
    if m.shape not in ((4, 4), (3, 4)) or not np.isfinite(m).all():
        raise NFieldsError(f"{json_path}: frame {i} transform_matrix has shape {m.shape}, expected (4, 4)")
    full = np.eye(4)
    full[:3] = m[:3]
    return (full @ GL_TO_CV)[:3]


def read_rgba_views(
    paths: Sequence[Path], full: tuple[int, int], size: tuple[int, int], background: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode images in parallel: RGBA composited on ``background`` (then box-resized to ``size``), alpha kept as
    a soft (H, W) uint8 mask. Returns images (N, H, W, 3) and masks (N, H, W), or None when no image has alpha."""

    # Workers write straight into the final arrays (no second copy); views without alpha are fully opaque.
    images = np.empty((len(paths), size[1], size[0], 3), np.uint8)
    masks = np.full((len(paths), size[1], size[0]), 255, np.uint8)
    has_alpha = [False] * len(paths)

    def read(j: int) -> None:
        p = paths[j]
        arr = read_image(p)
        if (arr.shape[1], arr.shape[0]) != tuple(full):
            raise NFieldsError(f"{p}: image is {arr.shape[1]}x{arr.shape[0]} but the scene is {full[0]}x{full[1]}")
        if arr.shape[2] == 4:
            masks[j] = resize(to_mask(arr, binary=False), size)
            arr = composite(arr, background)
            has_alpha[j] = True
        elif arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        images[j] = resize(arr, size)

    parallel_map(read, range(len(paths)))
    return torch.from_numpy(images), torch.from_numpy(masks) if any(has_alpha) else None


def load_blender(
    root: Path,
    downscale: int = 1,
    holdout_every: int = 8,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    max_views: int | None = None,
) -> Scene:
    """Load a NeRF-synthetic scene folder -> :class:`Scene` (aabb [-1.5, 1.5]^3, near 2, far 6).

    downscale k: box-filtered images at 1/k size; max_views: at most that many frames per split file, evenly spaced.
    """
    root = Path(root)
    frames: list[tuple[Path, dict, int]] = []
    n_train = 0
    angle_x = None
    for split in ("train", "val", "test"):
        path = root / f"transforms_{split}.json"
        if not path.is_file():
            if split == "train":
                raise NFieldsError(f"{path}: file not found")
            continue
        meta = read_json(path)
        split_frames = meta.get("frames")
        if not isinstance(split_frames, list) or not split_frames:
            raise NFieldsError(f"{path}: no frames")
        if "camera_angle_x" not in meta:
            raise NFieldsError(f"{path}: missing camera_angle_x")
        if angle_x is None:
            angle_x = float(meta["camera_angle_x"])
        keep = select_views(len(split_frames), max_views)
        frames += [(path, split_frames[i], i) for i in keep]
        if split == "train":
            n_train = len(frames)

    paths = []
    for json_path, frame, i in frames:
        if "file_path" not in frame:
            raise NFieldsError(f"{json_path}: frame {i} has no file_path")
        paths.append(frame_image_path(root, frame["file_path"]))
    c2w = np.stack([frame_pose(jp, f, i) for jp, f, i in frames])
    width, height = image_size(paths[0])
    focal = 0.5 * width / math.tan(0.5 * angle_x)
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)
    cams = Cameras(
        K=torch.as_tensor(np.repeat(K[None], len(frames), 0), dtype=torch.float32),
        c2w=torch.as_tensor(c2w, dtype=torch.float32),
        width=width,
        height=height,
    )
    k = max(int(downscale), 1)
    if k > 1:
        cams = cams.scaled(1.0 / k)
    images, masks = read_rgba_views(paths, (width, height), (cams.width, cams.height), background)

    train_ids, test_ids = holdout_split(n_train, holdout_every)
    test_ids += list(range(n_train, len(frames)))
    return Scene(
        name=root.name,
        root=root,
        cameras=cams,
        images=images,
        masks=masks,
        train_ids=train_ids,
        test_ids=test_ids,
        aabb=torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5]),
        background=torch.as_tensor(background, dtype=torch.float32).reshape(3) if masks is not None else None,
        near=2.0,
        far=6.0,
        scale_mat=torch.eye(4),
        object_radius=None,
    )
