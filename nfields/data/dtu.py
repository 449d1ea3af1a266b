"""DTU in the IDR/NeuS layout: ``cameras_sphere.npz`` (``world_mat_i``, ``scale_mat_i``), ``image/*.png``,
optional ``mask/*.png`` (1- or 3-channel, >127 = foreground).

``world_mat_i @ scale_mat_i`` is the projection matrix of camera i in a normalised world where the object lies
inside the unit sphere; it is decomposed into K and a camera-to-world pose exactly as NeuS's ``load_K_Rt_from_P``
does with ``cv2.decomposeProjectionMatrix`` (RQ decomposition, K normalised by K[2,2], pose = inverse of [R|t],
centre = the projection's null space). The calibration puts pixel centres at integer coordinates, so the principal
point is shifted by +0.5 to this package's convention (see :mod:`nfields.data.cameras`).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from nfields.data.cameras import Cameras
from nfields.data.images import image_size, list_images, parallel_map, read_image, resize, to_mask
from nfields.data.scene import Scene, holdout_split, select_views
from nfields.errors import NFieldsError

CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3x4 (or 4x4) projection matrix into intrinsics K (3, 3) with K[2,2] = 1 and a camera-to-world
    pose (3, 4), both float64, in the OpenCV convention. Same result as ``cv2.decomposeProjectionMatrix``."""
    P = np.asarray(P, dtype=np.float64)[:3, :4]
    M = P[:, :3]
    # P is defined up to scale; a negative determinant would make R a reflection, so flip the sign first.
    if np.linalg.det(M) < 0:
        P, M = -P, -M
    K, R = scipy.linalg.rq(M)
    # RQ is unique up to the signs of K's diagonal: make them positive (D @ D = I keeps K @ R unchanged).
    D = np.diag(np.sign(np.diag(K)))
    K, R = K @ D, D @ R
    K = K / K[2, 2]
    centre = -np.linalg.solve(M, P[:, 3])
    c2w = np.concatenate([R.T, centre[:, None]], axis=1)
    return K, c2w


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise NFieldsError(f"{path}: cannot read camera file ({e})") from None


def find_camera_file(root: Path) -> Path | None:
    """The IDR/NeuS camera file in ``root`` (``cameras_sphere.npz``, else IDR's ``cameras.npz``), or None."""
    for name in CAMERA_FILES:
        if (root / name).is_file():
            return root / name
    return None


def load_dtu_cameras(root: Path, n_images: int | None = None) -> tuple[Cameras, np.ndarray, Path]:
    """Decompose every camera in ``root``'s camera file -> (full-resolution Cameras, scale_mat_0 (4, 4), npz path).

    The image size is read from the first image's header. n_images: expected camera count (the image count).
    """
    root = Path(root)
    npz = find_camera_file(root)
    if npz is None:
        raise NFieldsError(f"{root / CAMERA_FILES[0]}: file not found")
    data = _read_npz(npz)
    ids = sorted(int(m.group(1)) for k in data if (m := re.fullmatch(r"world_mat_(\d+)", k)))
    if not ids:
        raise NFieldsError(f"{npz}: no world_mat_i arrays (not an IDR/NeuS camera file)")
    # Every index below the largest one (or the image count) must be there: name the first one missing.
    for i in range(max(max(ids) + 1, n_images or 0)):
        for key in (f"world_mat_{i}", f"scale_mat_{i}"):
            if key not in data:
                raise NFieldsError(f"{npz}: missing {key}")
            if data[key].shape not in ((4, 4), (3, 4)):
                raise NFieldsError(f"{npz}: {key} has shape {data[key].shape}, expected (4, 4)")
    n = len(ids)
    if n_images is not None and n_images != n:
        raise NFieldsError(f"{npz}: {n} cameras but the scene has {n_images} images")

    Ks, c2ws = [], []
    for i in range(n):
        scale = np.eye(4)
        scale[: data[f"scale_mat_{i}"].shape[0]] = data[f"scale_mat_{i}"]
        P = data[f"world_mat_{i}"][:3, :4].astype(np.float64) @ scale
        if not np.isfinite(P).all() or abs(np.linalg.det(P[:, :3])) < 1e-12:
            raise NFieldsError(f"{npz}: world_mat_{i} @ scale_mat_{i} is not a valid projection")
        K, c2w = decompose_projection(P)
        K[:2, 2] += 0.5  # integer pixel centres (IDR/NeuS) -> centres at +0.5
        Ks.append(K)
        c2ws.append(c2w)

    images = _image_files(root)
    width, height = image_size(images[0]) if images else (0, 0)
    cams = Cameras(
        K=torch.as_tensor(np.stack(Ks), dtype=torch.float32),
        c2w=torch.as_tensor(np.stack(c2ws), dtype=torch.float32),
        width=width,
        height=height,
    )
    scale0 = np.eye(4)
    scale0[: data["scale_mat_0"].shape[0]] = data["scale_mat_0"]
    return cams, scale0, npz


def _image_files(root: Path) -> list[Path]:
    for name in ("image", "images", "rgb"):
        if (root / name).is_dir():
            return list_images(root / name)
    raise NFieldsError(f"{root / 'image'}: folder not found")


def load_dtu(root: Path, downscale: int = 1, holdout_every: int = 8, max_views: int | None = None) -> Scene:
    """Load an IDR/NeuS-layout scene (see the module docstring) -> :class:`Scene` in the normalised world.

    downscale k: images and masks box-filtered to 1/k size (masks re-thresholded to 0/255), intrinsics scaled;
    max_views: keep that many views, evenly spaced (before the holdout split); test views are ids % holdout_every == 0.
    """
    root = Path(root)
    if not root.is_dir():
        raise NFieldsError(f"{root}: scene folder not found")
    image_files = _image_files(root)
    if not image_files:
        raise NFieldsError(f"{root / 'image'}: no images found")
    cams_full, scale_mat, _ = load_dtu_cameras(root, n_images=len(image_files))

    mask_files: list[Path] | None = None
    if (root / "mask").is_dir():
        mask_files = list_images(root / "mask")
        if len(mask_files) != len(image_files):
            raise NFieldsError(f"{root / 'mask'}: {len(mask_files)} masks but {len(image_files)} images")

    keep = select_views(len(image_files), max_views)
    cams_full = cams_full[keep]
    k = max(int(downscale), 1)
    cams = cams_full.scaled(1.0 / k) if k > 1 else cams_full
    size = (cams.width, cams.height)
    full = (cams_full.width, cams_full.height)

    # Workers write straight into the final arrays: no second copy of a few hundred MB of pixels.
    images = np.empty((len(keep), size[1], size[0], 3), np.uint8)
    masks = np.empty((len(keep), size[1], size[0]), np.uint8) if mask_files is not None else None

    def read_view(j: int) -> None:
        i = keep[j]
        img = read_image(image_files[i])
        if (img.shape[1], img.shape[0]) != full:
            raise NFieldsError(
                f"{image_files[i]}: image is {img.shape[1]}x{img.shape[0]} but {image_files[0].name} is "
                f"{full[0]}x{full[1]}"
            )
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        images[j] = resize(np.ascontiguousarray(img[:, :, :3]), size)
        if masks is not None:
            m = read_image(mask_files[i])
            if (m.shape[1], m.shape[0]) != full:
                raise NFieldsError(
                    f"{mask_files[i]}: mask is {m.shape[1]}x{m.shape[0]} but image is {full[0]}x{full[1]}"
                )
            mask = to_mask(m, binary=True)
            masks[j] = to_mask(resize(mask, size)[:, :, None], binary=True) if k > 1 else mask

    parallel_map(read_view, range(len(keep)))

    train_ids, test_ids = holdout_split(len(keep), holdout_every)
    # The object is inside the unit sphere; the ray range covers it from the nearest and farthest camera.
    dist = cams.centers.norm(dim=-1)
    near = max(float(dist.min()) - 1.0, 0.05)
    far = float(dist.max()) + 1.0
    return Scene(
        name=root.name,
        root=root,
        cameras=cams,
        images=torch.from_numpy(images),
        masks=torch.from_numpy(masks) if masks is not None else None,
        train_ids=train_ids,
        test_ids=test_ids,
        aabb=torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]),
        background=None,
        near=near,
        far=far,
        scale_mat=torch.as_tensor(scale_mat, dtype=torch.float32),
        object_radius=1.0,
    )
