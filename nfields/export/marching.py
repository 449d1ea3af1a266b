"""Mesh extraction from an implicit field: block-wise marching cubes, visibility culling, quadric decimation.

Works on callables (``sdf_fn(x (M,3)) -> (M,)``, SDF negative inside), so it does not depend on any field class.
For a density field pass ``sdf_fn = lambda x: threshold - density(x)``.

Memory: the field is evaluated one z-slab at a time (``block`` cells thick, in ``chunk``-point batches) and
marching cubes runs on ``block``^3 sub-blocks of that slab, so a 512^3 grid never exists at once; the slab's last
plane is kept and reused as the next slab's first plane, so neighbouring blocks see bit-identical samples and their
shared vertices weld exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import trimesh
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes
from torch import Tensor

from nfields.data.cameras import Cameras
from nfields.errors import NFieldsError

# Vertices of the same grid edge computed by two neighbouring blocks differ only by float32 rounding of the block's
# local coordinates (< 1e-5 voxel for blocks <= 256 cells); distinct vertices are never this close unless degenerate.
_WELD_TOL_VOXELS = 1e-3


def _check_aabb(aabb: Tensor | np.ndarray | list) -> np.ndarray:
    box = np.asarray(torch.as_tensor(aabb, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    if box.shape != (6,) or not np.all(np.isfinite(box)) or np.any(box[3:] <= box[:3]):
        raise NFieldsError(f"extract_mesh: aabb must be 6 finite numbers (xmin,ymin,zmin,xmax,ymax,zmax), got {box}")
    return box


def _eval_points(sdf_fn: Callable[[Tensor], Tensor], pts: np.ndarray, chunk: int, device: torch.device) -> np.ndarray:
    """Evaluate ``sdf_fn`` on (M,3) float64 points in chunks; returns (M,) float32."""
    out = np.empty(len(pts), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(pts), chunk):
            x = torch.from_numpy(pts[s : s + chunk].astype(np.float32)).to(device)
            v = sdf_fn(x)
            if not isinstance(v, Tensor) or v.numel() != len(x):
                raise NFieldsError(
                    f"extract_mesh: sdf_fn must return a tensor of shape (M,) for (M,3) points, got "
                    f"{getattr(v, 'shape', type(v).__name__)} for M={len(x)}"
                )
            out[s : s + chunk] = v.reshape(-1).float().cpu().numpy()
    return out


def _slab_values(
    sdf_fn: Callable[[Tensor], Tensor],
    axes: list[np.ndarray],
    k0: int,
    k1: int,
    chunk: int,
    device: torch.device,
    vals: np.ndarray,
) -> None:
    """Write the SDF on grid planes z-index ``k0..k1-1`` into ``vals`` (Nx, Ny, k1-k0), ``chunk`` points a call."""
    xs, ys, zs = axes[0], axes[1], axes[2][k0:k1]
    # One x-row of planes at a time keeps the float64 coordinate buffer small (Ny * nz * 3).
    rows = max(1, chunk // max(1, len(ys) * len(zs)))
    for i0 in range(0, len(xs), rows):
        gx, gy, gz = np.meshgrid(xs[i0 : i0 + rows], ys, zs, indexing="ij")
        pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
        vals[i0 : i0 + rows] = _eval_points(sdf_fn, pts, chunk, device).reshape(gx.shape)


NARROW_BAND_TILE = 4
"""Cells per side of the tiles a narrow-band extraction tests on its coarse grid (see :func:`extract_mesh`)."""


class _NarrowBand:
    """Which fine-grid samples a narrow-band extraction must evaluate, and a sign-correct value for the others.

    The field is first evaluated on a coarse grid (every ``NARROW_BAND_TILE``-th sample, plus the last). A tile of
    cells between coarse samples is *active* when its corner values are not all beyond ``band`` tile diagonals on one
    side of the level: for an SDF (1-Lipschitz) the surface cannot cross an inactive tile, and it still cannot for a
    field that overstates distances up to ``band`` times. Inactive samples take the value of their nearest coarse
    sample (a corner of their own tile, so the sign is right and no crossing appears there)."""

    def __init__(self, sdf_fn, axes, level: float, band: float, chunk: int, device) -> None:
        n = len(axes[0])
        idx = np.unique(np.r_[np.arange(0, n - 1, NARROW_BAND_TILE), n - 1])
        coarse = np.empty((len(idx),) * 3, dtype=np.float32)
        _slab_values(sdf_fn, [a[idx] for a in axes], 0, len(idx), chunk, device, coarse)
        c = coarse - np.float32(level)
        t = len(idx) - 1
        corners = [c[i : i + t, j : j + t, k : k + t] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        lo, hi = np.minimum.reduce(corners), np.maximum.reduce(corners)
        step = np.array([(a[-1] - a[0]) / (n - 1) for a in axes])
        margin = np.float32(band * NARROW_BAND_TILE * np.linalg.norm(step))
        active = ~((lo > margin) | (hi < -margin))  # NaN corners stay active
        # Tiles touching each sample along one axis: the tiles of its two neighbouring cells.
        cell_tile = np.searchsorted(idx, np.arange(n - 1), side="right") - 1
        below = cell_tile[np.clip(np.arange(n) - 1, 0, n - 2)]
        above = cell_tile[np.clip(np.arange(n), 0, n - 2)]
        self._ax = active[below] | active[above]  # (n, t, t): n^3 / 16 bytes, the fine mask is built per slab
        self._below, self._above = below, above
        nearest = np.abs(np.arange(n)[:, None] - idx[None, :]).argmin(axis=1)
        self._coarse, self._nearest = coarse, nearest
        self.active_fraction = float(active.mean())

    def fill(self, k0: int, k1: int, vals: np.ndarray) -> np.ndarray:
        """Fill ``vals`` (n, n, k1-k0) with the nearest coarse values; return the mask of samples to evaluate."""
        near = self._nearest
        vals[...] = self._coarse[np.ix_(near, near, near[k0:k1])]
        z = np.arange(k0, k1)
        axz = self._ax[:, :, self._below[z]] | self._ax[:, :, self._above[z]]  # (n, t, nz)
        return axz[:, self._below] | axz[:, self._above]


def _masked_values(sdf_fn, axes, k0: int, need: np.ndarray, chunk: int, device, vals: np.ndarray) -> None:
    """Evaluate the field at the samples where ``need`` (n, n, nz) is set, planes from ``k0``, into ``vals``."""
    n_rows = max(1, (4 * chunk) // max(1, need.shape[1] * need.shape[2]))
    for i0 in range(0, need.shape[0], n_rows):
        ii, jj, kk = np.nonzero(need[i0 : i0 + n_rows])
        if len(ii) == 0:
            continue
        pts = np.stack([axes[0][ii + i0], axes[1][jj], axes[2][kk + k0]], axis=1)
        vals[ii + i0, jj, kk] = _eval_points(sdf_fn, pts, chunk, device)


def _weld(verts: np.ndarray, faces: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices among ``candidates`` (indices) closer than the weld tolerance (voxel units)."""
    if len(candidates) > 1:
        pairs = cKDTree(verts[candidates]).query_pairs(_WELD_TOL_VOXELS, output_type="ndarray")
    else:
        pairs = np.zeros((0, 2), dtype=np.int64)
    n = len(verts)
    if len(pairs):
        a, b = candidates[pairs[:, 0]], candidates[pairs[:, 1]]
        graph = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
        _, label = connected_components(graph, directed=False)
    else:
        label = np.arange(n)
    # Representative of each group = its first vertex, so positions stay those marching cubes produced.
    _, first, inverse = np.unique(label, return_index=True, return_inverse=True)
    return verts[first], inverse[faces]


def _coincident(verts: np.ndarray) -> np.ndarray:
    """Indices of vertices lying (nearly) on a grid sample, where several marching-cubes vertices may coincide."""
    frac = np.abs(verts - np.round(verts))
    return np.nonzero((frac < _WELD_TOL_VOXELS).all(axis=1))[0]


def _clean_faces(faces: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Drop faces that reference a vertex twice or have zero area (welding can collapse slivers)."""
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[ok]
    keep = np.empty(len(faces), dtype=bool)
    step = 2**18  # chunked: all (F,3,3) float64 corners at once would be ~0.4 GB at 512^3
    for s in range(0, len(faces), step):
        tri = verts[faces[s : s + step]]
        keep[s : s + step] = np.any(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) != 0, axis=1)
    return faces[keep]


def largest_component(mesh: trimesh.Trimesh, min_fraction: float = 0.0) -> trimesh.Trimesh:
    """Keep the connected component (by shared vertices) with the most faces, and every other component with at
    least ``min_fraction`` of its face count (0: the largest only). Floaters are tiny next to the object, while a
    real part of it that does not touch the rest (the demo's satellite sphere) is not; unreferenced vertices go."""
    if len(mesh.faces) == 0:
        return mesh
    f = mesh.faces
    n = len(mesh.vertices)
    graph = sparse.coo_matrix((np.ones(2 * len(f)), (np.r_[f[:, 0], f[:, 1]], np.r_[f[:, 1], f[:, 2]])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    face_label = label[f[:, 0]]
    sizes = np.bincount(face_label)
    if min_fraction > 0:
        keep = sizes >= min_fraction * sizes.max()
    else:
        keep = np.arange(len(sizes)) == sizes.argmax()
    return _submesh(mesh, keep[face_label])


def _submesh(mesh: trimesh.Trimesh, face_mask: np.ndarray) -> trimesh.Trimesh:
    """Faces where ``face_mask``; vertices re-indexed, unreferenced ones removed, vertex colours kept."""
    faces = mesh.faces[face_mask]
    used = np.unique(faces)
    remap = np.full(len(mesh.vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    kwargs = {}
    if mesh.visual.kind == "vertex":
        kwargs["vertex_colors"] = np.asarray(mesh.visual.vertex_colors)[used]
    return trimesh.Trimesh(mesh.vertices[used], remap[faces], process=False, **kwargs)


def extract_mesh(
    sdf_fn: Callable[[Tensor], Tensor],
    aabb: Tensor | np.ndarray | list,
    resolution: int = 512,
    level: float = 0.0,
    chunk: int = 2**18,
    keep_largest: bool = True,
    min_component: float = 0.02,
    transform: np.ndarray | None = None,
    block: int = 128,
    device: str | torch.device = "cpu",
    narrow_band: float = 0.0,
) -> trimesh.Trimesh:
    """Marching-cubes mesh of the ``level`` set of ``sdf_fn`` inside ``aabb``, with outward normals.

    Args:
        sdf_fn: (M,3) float32 points -> (M,) signed distance, negative inside. Called under ``torch.no_grad``.
        aabb: (6,) ``[xmin, ymin, zmin, xmax, ymax, zmax]`` in the field's (normalised) coordinates.
        resolution: grid samples per axis (the grid spacing is ``extent / (resolution - 1)``).
        level: iso-level; the surface is ``sdf_fn(x) == level``.
        chunk: points per ``sdf_fn`` call (bounds the field's activation memory).
        keep_largest: drop floaters: keep the largest connected component and any other with at least
            ``min_component`` of its faces (0 = the largest only).
        transform: (4,4) map from the field's normalised coordinates to the output coordinates (e.g. DTU's
            ``scale_mat``); applied to the vertices at the end (a reflection keeps normals outward).
        block: cells per marching-cubes block and per evaluation slab; memory is about
            ``resolution^2 * (block+1) * 4`` bytes of SDF values plus one block's marching-cubes output (``block`` is
            lowered so that this stays <= ~1 GB, e.g. 16 at 4096^3).
        device: where points are sent before ``sdf_fn`` is called.
        narrow_band: 0 evaluates the whole grid. > 0 (for signed distance fields only): evaluate a coarse grid
            first and the fine grid only in tiles that may hold the surface (corners within ``narrow_band`` tile
            diagonals of the level; 3 tolerates a field that overstates distances 3x); a 512^3 grid then costs a
            few percent of its samples. Not for densities (no distance bound).

    Returns:
        ``trimesh.Trimesh`` (vertices (V,3) float64, faces (F,3)), counter-clockwise seen from outside.

    Example:
        >>> mesh = extract_mesh(lambda x: x.norm(dim=-1) - 0.5, [-1, -1, -1, 1, 1, 1], resolution=64)
        >>> bool(mesh.is_watertight)
        True
    """
    box = _check_aabb(aabb)
    if int(resolution) < 2:
        raise NFieldsError(f"extract_mesh: resolution must be >= 2, got {resolution}")
    if int(block) < 1 or int(chunk) < 1:
        raise NFieldsError(f"extract_mesh: block and chunk must be >= 1, got block={block}, chunk={chunk}")
    if transform is not None:
        transform = np.asarray(transform, dtype=np.float64)
        if transform.shape != (4, 4) or not np.all(np.isfinite(transform)):
            raise NFieldsError(f"extract_mesh: transform must be a finite (4,4) matrix, got shape {transform.shape}")
    n, block, device = int(resolution), int(block), torch.device(device)
    block = max(1, min(block, 2**28 // (n * n)))  # a slab of SDF values stays <= ~1 GB at any resolution
    axes = [np.linspace(box[a], box[a + 3], n) for a in range(3)]
    step = (box[3:] - box[:3]) / (n - 1)
    starts = list(range(0, n - 1, block))  # block b covers cells [s, min(s+block, n-1)), samples one more

    band = _NarrowBand(sdf_fn, axes, level, float(narrow_band), chunk, device) if narrow_band > 0 else None

    def values(k0: int, k1: int, out: np.ndarray) -> None:
        if band is None:
            _slab_values(sdf_fn, axes, k0, k1, chunk, device, out)
        else:
            _masked_values(sdf_fn, axes, k0, band.fill(k0, k1, out), chunk, device, out)

    verts_all, faces_all, boundary_all = [], [], []
    n_verts = 0
    prev_plane = None
    for kz in starts:
        kz1 = min(kz + block, n - 1) + 1
        slab = np.empty((n, n, kz1 - kz), dtype=np.float32)
        if prev_plane is None:
            values(kz, kz1, slab)
        else:
            # Reuse the shared plane: identical samples -> identical shared vertices in both blocks.
            slab[:, :, 0] = prev_plane
            values(kz + 1, kz1, slab[:, :, 1:])
        prev_plane = slab[:, :, -1].copy()
        for kx in starts:
            for ky in starts:
                sub = slab[kx : min(kx + block, n - 1) + 1, ky : min(ky + block, n - 1) + 1]
                if not (sub.min() <= level <= sub.max()) or sub.min() == sub.max():
                    continue  # no crossing in this block
                # skimage's 'descent' winding is counter-clockwise seen from the side with values above the level,
                # i.e. from outside for an SDF (negative inside) -> outward normals (checked by a test).
                v, f, _, _ = marching_cubes(sub, level=level, gradient_direction="descent", allow_degenerate=True)
                v = v.astype(np.float64)
                local_max = np.array(sub.shape, dtype=np.float64) - 1
                # Vertices on an interior block face may be shared with a neighbour block: weld candidates.
                on_face = ((v == 0) | (v == local_max)).any(axis=1)
                boundary_all.append(np.nonzero(on_face)[0] + n_verts)
                verts_all.append(v + np.array([kx, ky, kz], dtype=np.float64))
                faces_all.append(f.astype(np.int64) + n_verts)
                n_verts += len(v)
        slab = sub = None  # release this slab (``sub`` is a view of it) before the next one is allocated

    if not verts_all:
        raise NFieldsError(
            f"extract_mesh: no surface at level {level} inside aabb {box.tolist()} at resolution {n} "
            "(the field never crosses the level; check the aabb, level and the field's sign convention)"
        )
    verts, faces, boundary = np.concatenate(verts_all), np.concatenate(faces_all), np.concatenate(boundary_all)
    del verts_all, faces_all, boundary_all
    # Weld across block faces, plus any vertex coinciding with another: a sample exactly at the level makes marching
    # cubes emit one vertex per incident edge at the same point, which would leave topological holes there.
    dup = _coincident(verts)
    verts, faces = _weld(verts, faces, np.union1d(boundary, dup))
    verts = box[:3] + verts * step  # grid index -> field coordinates
    faces = _clean_faces(faces, verts)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if keep_largest:
        mesh = largest_component(mesh, min_component)
    else:
        mesh = _submesh(mesh, np.ones(len(mesh.faces), dtype=bool))
    if transform is not None:
        mesh.apply_transform(transform)  # trimesh flips the winding when the transform is a reflection
    return mesh


def cull_unseen(
    mesh: trimesh.Trimesh,
    cameras_c2w: Tensor | np.ndarray,
    K: Tensor | np.ndarray,
    width: int,
    height: int,
    masks: Tensor | np.ndarray | None = None,
) -> trimesh.Trimesh:
    """Drop faces whose centroid no training camera sees (NeuS-style clean-up of unobserved geometry).

    A centroid is seen by a camera when it is in front of it (z > 0), projects inside the image, and, with
    ``masks``, lands on a foreground pixel. Cameras use the OpenCV convention (x right, y down, z forward).

    Args:
        mesh: mesh in the cameras' world coordinates.
        cameras_c2w: (N,3,4) camera-to-world matrices.
        K: (N,3,3) intrinsics (pixel units, pixel centres at +0.5).
        width, height: image size in pixels.
        masks: optional (N,H,W) foreground masks (bool or values in [0,1]; > 0.5 is foreground).
    """
    c2w = np.asarray(torch.as_tensor(cameras_c2w, dtype=torch.float64).cpu(), dtype=np.float64)
    Ks = np.asarray(torch.as_tensor(K, dtype=torch.float64).cpu(), dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (3, 4) or Ks.shape != (len(c2w), 3, 3):
        raise NFieldsError(f"cull_unseen: need c2w (N,3,4) and K (N,3,3), got {c2w.shape} and {Ks.shape}")
    if masks is not None:
        masks = np.asarray(torch.as_tensor(masks).cpu()) > 0.5
        if masks.shape != (len(c2w), height, width):
            raise NFieldsError(f"cull_unseen: masks must be (N,H,W)=({len(c2w)},{height},{width}), got {masks.shape}")
    cams = Cameras(K=torch.from_numpy(Ks).float(), c2w=torch.from_numpy(c2w).float(), width=width, height=height)
    centres = torch.from_numpy(np.array(mesh.triangles_center, dtype=np.float32))  # a copy: trimesh's is read-only
    seen = torch.zeros(len(centres), dtype=torch.bool)
    for i in range(len(c2w)):
        uv, inside = cams.in_image(i, centres)
        if masks is not None:
            px = uv[:, 0].nan_to_num(0).long().clamp(0, width - 1).numpy()
            py = uv[:, 1].nan_to_num(0).long().clamp(0, height - 1).numpy()
            inside &= torch.from_numpy(masks[i, py, px])
        seen |= inside
    seen = seen.numpy()
    return _submesh(mesh, seen)


def decimate(mesh: trimesh.Trimesh, target_faces: int) -> trimesh.Trimesh:
    """Quadric-error decimation to about ``target_faces`` faces (``fast-simplification``, imported here only).

    A mesh already at or below the target is returned unchanged (a copy).
    """
    if int(target_faces) < 4:
        raise NFieldsError(f"decimate: target_faces must be >= 4, got {target_faces}")
    if len(mesh.faces) <= target_faces:
        return mesh.copy()
    try:
        import fast_simplification
    except ImportError as e:
        raise NFieldsError("decimate: needs the 'fast-simplification' package (pip install fast-simplification)") from e
    v, f = fast_simplification.simplify(
        np.asarray(mesh.vertices, dtype=np.float64),
        np.asarray(mesh.faces, dtype=np.int32),
        target_count=int(target_faces),
    )
    out = trimesh.Trimesh(v, f, process=False)
    return _submesh(out, np.ones(len(out.faces), dtype=bool))
