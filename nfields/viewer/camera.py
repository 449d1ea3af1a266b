"""Camera math between the browser (viser) and the renderer: pure numpy, no viser import.

Everything uses the OpenCV convention (x right, y down, z forward), which is also what viser reports for a client's
camera (``wxyz`` is the rotation of ``P_world = R @ p_camera + t``) and what :class:`nfields.data.cameras.Cameras`
expects, so no axis flips happen anywhere in the viewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ViewCamera:
    """A pinhole camera the viewer asks a render function to render.

    c2w: (3, 4) camera-to-world, OpenCV convention (x right, y down, z forward);
    fov_y: vertical field of view in radians; width, height: image size in pixels (square pixels, centred
    principal point).

    Example:
        >>> cam = ViewCamera(np.eye(4)[:3], fov_y=math.pi / 2, width=4, height=2)
        >>> cam.K().round(3).tolist()
        [[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    """

    c2w: np.ndarray
    fov_y: float
    width: int
    height: int

    def K(self) -> np.ndarray:
        """(3, 3) intrinsics: fx = fy = (H / 2) / tan(fov_y / 2), principal point at the image centre."""
        f = 0.5 * self.height / math.tan(0.5 * self.fov_y)
        return np.array([[f, 0.0, 0.5 * self.width], [0.0, f, 0.5 * self.height], [0.0, 0.0, 1.0]])


def quat_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> (3, 3) rotation matrix (the input is normalised first)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method, stable near 180 deg)."""
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def pose_to_c2w(wxyz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """A viser camera pose (wxyz, position) -> (3, 4) OpenCV c2w."""
    return np.concatenate([quat_to_matrix(wxyz), np.asarray(position, dtype=np.float64).reshape(3, 1)], axis=1)


def c2w_to_pose(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, 4) OpenCV c2w -> (wxyz, position) for viser scene nodes and client cameras.

    The rotation block is re-orthonormalised first (SVD) because dataset poses often carry a scale or shear that
    would otherwise give a non-unit quaternion.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    U, _, Vt = np.linalg.svd(c2w[:3, :3])
    R = U @ Vt
    if np.linalg.det(R) < 0:  # a reflection is no rotation; flip the last axis back
        U[:, -1] *= -1
        R = U @ Vt
    return matrix_to_quat(R), c2w[:3, 3].copy()


def fov_y_from_K(K: np.ndarray, height: int) -> float:
    """Vertical field of view (radians) of intrinsics K for an image ``height`` pixels tall."""
    return 2.0 * math.atan(0.5 * height / float(K[1, 1]))


def render_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Image size with the browser canvas' aspect ratio whose longer side is ``max_side`` (never larger than the
    canvas, at least 1x1). A canvas of unknown size (0) counts as square."""
    if width <= 0 or height <= 0:
        width = height = max_side
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))
