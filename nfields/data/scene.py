"""The loaded scene: cameras, uint8 images and masks, the train/test split and the object's bounds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from nfields.data.cameras import Cameras


@dataclass
class Scene:
    """Everything a trainer needs from a dataset.

    name: short name (folder name, or ``"demo"``); root: the folder it was read from;
    cameras: N cameras (OpenCV convention, intrinsics matching ``images``' size);
    images: (N, H, W, 3) uint8 -- kept uint8 in memory, converted to float per batch;
    masks: (N, H, W) uint8 foreground masks (0/255 for DTU-style masks, soft alpha edges for RGBA data) or None;
    train_ids / test_ids: view indices into the above (see :func:`holdout_split`);
    aabb: (6,) world bounds xmin, ymin, zmin, xmax, ymax, zmax of the object;
    background: (3,) float in [0, 1] the images were composited on (white for NeRF-synthetic), or None (real photos);
    near, far: ray distance range that covers the object from every camera;
    scale_mat: (4, 4) maps the normalised world the cameras live in -> the dataset's original coordinates
    (DTU's scale_mat_0; identity elsewhere);
    object_radius: the object lies inside this sphere at the origin (DTU, demo: 1.0), or None.
    """

    name: str
    root: Path
    cameras: Cameras
    images: Tensor
    masks: Tensor | None
    train_ids: list[int]
    test_ids: list[int]
    aabb: Tensor
    background: Tensor | None
    near: float
    far: float
    scale_mat: Tensor
    object_radius: float | None

    def __len__(self) -> int:
        return len(self.cameras)


def holdout_split(n: int, holdout_every: int) -> tuple[list[int], list[int]]:
    """Train/test ids for n views: every ``holdout_every``-th view (``i % holdout_every == 0``: 0, 8, 16, ...) is
    held out for testing, the rest train. ``holdout_every <= 0`` (or fewer than 2 views) holds nothing out."""
    if holdout_every <= 0 or n < 2:
        return list(range(n)), []
    test = [i for i in range(n) if i % holdout_every == 0]
    train = [i for i in range(n) if i % holdout_every != 0]
    return train, test


def select_views(n: int, max_views: int | None) -> list[int]:
    """Indices of at most ``max_views`` of n views, evenly spaced over the sequence (all when None)."""
    if max_views is None or max_views >= n:
        return list(range(n))
    if max_views <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, max_views)})
