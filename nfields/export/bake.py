"""UV unwrapping (xatlas) and PBR texture baking from a material callable.

Conventions used by every exporter in this package:

- UVs are stored OBJ-style, ``(u, v)`` in [0,1] with v pointing *up* the image: texel row ``r`` covers
  ``v in [1-(r+1)/T, 1-r/T]``. The glTF writer stores ``(u, 1-v)`` (glTF's v points down); trimesh flips them back.
- Texel ``(row, col)`` has its centre at ``u = (col+0.5)/T``, ``v = 1-(row+0.5)/T``.
- Tangent frame (per vertex, MikkTSpace-like): ``N`` = area-weighted face normals accumulated over all faces that
  share the vertex *position* (smooth across UV seams); ``T`` = dP/du accumulated per UV vertex and made orthogonal
  to ``N``; ``w = sign(dot(cross(N, T), dP/dv))``; the glTF bitangent is ``B = w * cross(N, T)``, which points up
  the image (OpenGL / glTF normal-map convention, +Y up, flat = (128,128,255)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy import ndimage
from torch import Tensor

from nfields.errors import NFieldsError


@dataclass
class PBRTextures:
    """Baked glTF metallic-roughness textures, rows top to bottom (image convention).

    Attributes:
        albedo: (T,T,3) uint8, sRGB-encoded base colour.
        orm: (T,T,3) uint8, linear: R occlusion (255 = unoccluded), G roughness, B metallic (glTF channel layout).
        normal: (T,T,3) uint8 tangent-space normal map, +Y up (OpenGL/glTF), (128,128,255) = flat.
        coverage: (T,T) bool, texels written by the rasteriser (before seam dilation).
    """

    albedo: np.ndarray
    orm: np.ndarray
    normal: np.ndarray
    coverage: np.ndarray

    @property
    def size(self) -> int:
        """Texture side length T in texels."""
        return int(self.albedo.shape[0])


# --------------------------------------------------------------------------------------------------------- unwrap


UNWRAP_PIECE_FACES = 25_000
"""xatlas' chart search grows faster than linearly with a mesh's face count (one 200k-face mesh: 95 s on 2 cores;
the same mesh in 8 pieces of 25k: 12 s, fewer charts, better atlas use), so big meshes are unwrapped as spatially
compact pieces of at most this many faces, all packed into one atlas."""


def _spatial_pieces(centroids: np.ndarray, max_faces: int) -> list[np.ndarray]:
    """Face index sets of at most ``max_faces`` each: recursive median splits along the longest extent (a k-d tree)."""
    out: list[np.ndarray] = []
    todo = [np.arange(len(centroids))]
    while todo:
        idx = todo.pop()
        if len(idx) <= max_faces:
            out.append(idx)
            continue
        c = centroids[idx]
        axis = int(np.argmax(c.max(0) - c.min(0)))
        order = idx[np.argsort(c[:, axis], kind="stable")]
        half = len(order) // 2
        todo += [order[:half], order[half:]]
    return out


def unwrap_uv(
    mesh: trimesh.Trimesh, piece_faces: int = UNWRAP_PIECE_FACES
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrap a mesh with xatlas (imported here only: ``pip install xatlas``).

    Meshes above ``piece_faces`` faces are cut into spatially compact pieces (see :data:`UNWRAP_PIECE_FACES`), each
    charted on its own and all packed into one atlas; the cuts become ordinary UV seams.

    Returns:
        vertices (V',3) float64 (input vertices duplicated along UV seams), faces (F,3) int64 into them,
        uvs (V',2) float32 in [0,1] (OBJ convention, v up), vmapping (V',) int64: input vertex of each output vertex.
        Faces keep the input's order.
    """
    try:
        import xatlas
    except ImportError as e:
        raise NFieldsError("unwrap_uv: needs the 'xatlas' package (pip install xatlas)") from e
    if len(mesh.faces) == 0:
        raise NFieldsError("unwrap_uv: mesh has no faces")
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    pieces = _spatial_pieces(verts[faces].mean(axis=1), max(1, int(piece_faces)))
    atlas = xatlas.Atlas()
    used_of = []
    for idx in pieces:
        used, local = np.unique(faces[idx], return_inverse=True)
        used_of.append(used)
        atlas.add_mesh(
            np.ascontiguousarray(verts[used], dtype=np.float32),
            np.ascontiguousarray(local.reshape(-1, 3), dtype=np.uint32),
        )
    atlas.generate()
    vmaps, out_faces, uvs = [], np.empty((len(faces), 3), np.int64), []
    offset = 0
    for k, (idx, used) in enumerate(zip(pieces, used_of, strict=True)):
        vmapping, indices, uv = atlas[k]
        vmaps.append(used[vmapping.astype(np.int64)])
        out_faces[idx] = indices.astype(np.int64) + offset
        uvs.append(uv)
        offset += len(vmapping)
    vmapping = np.concatenate(vmaps)
    return verts[vmapping], out_faces, np.concatenate(uvs).astype(np.float32), vmapping


def unwrapped_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """``mesh`` with a UV atlas: a new Trimesh (seam vertices split) whose ``visual.uv`` is (V',2), v up."""
    v, f, uv, _ = unwrap_uv(mesh)
    return trimesh.Trimesh(v, f, visual=trimesh.visual.TextureVisuals(uv=uv), process=False)


def mesh_arrays(mesh: trimesh.Trimesh, who: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices float64, faces int64, uvs float64) of a mesh with UVs, or a one-line error naming ``who``."""
    uv = getattr(mesh.visual, "uv", None)
    if uv is None or len(uv) != len(mesh.vertices):
        raise NFieldsError(f"{who}: mesh has no per-vertex UVs (unwrap it first with unwrapped_mesh)")
    return (
        np.asarray(mesh.vertices, dtype=np.float64),
        np.asarray(mesh.faces, dtype=np.int64),
        np.asarray(uv, dtype=np.float64)[:, :2],
    )


# ------------------------------------------------------------------------------------------------ tangent frame


def _normalize(x: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    out = x / np.maximum(n, 1e-30)
    if fallback is not None:
        out = np.where(n > 1e-20, out, fallback)
    return out


def _any_perpendicular(n: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to each unit row of ``n`` (for tangents of UV-degenerate vertices)."""
    a = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    return _normalize(np.cross(n, a))


def tangent_frame(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex unit normals (V,3) and glTF tangents (V,4) (xyz unit, orthogonal to the normal, w = +-1).

    See the module docstring for the convention. Normals are smooth across UV seams (vertices at the same position
    share one normal); tangents follow the UV chart of each vertex.
    """
    tri = vertices[faces]  # (F,3,3)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    fn = np.cross(e1, e2)  # length = 2 * area -> area weighting
    _, pos_id = np.unique(vertices, axis=0, return_inverse=True)
    pos_id = pos_id.reshape(-1)
    acc = np.zeros((pos_id.max() + 1, 3))
    for k in range(3):
        np.add.at(acc, pos_id[faces[:, k]], fn)
    normals = _normalize(acc[pos_id], fallback=np.array([0.0, 0.0, 1.0]))

    t_uv = uvs[faces]
    du1, dv1 = t_uv[:, 1, 0] - t_uv[:, 0, 0], t_uv[:, 1, 1] - t_uv[:, 0, 1]
    du2, dv2 = t_uv[:, 2, 0] - t_uv[:, 0, 0], t_uv[:, 2, 1] - t_uv[:, 0, 1]
    r = du1 * dv2 - du2 * dv1
    sgn = np.where(r < 0, -1.0, 1.0)[:, None]
    # dP/du, dP/dv up to the positive factor |r|; normalised then weighted by the 3D face area.
    area = 0.5 * np.linalg.norm(fn, axis=1, keepdims=True)
    ft = _normalize((e1 * dv2[:, None] - e2 * dv1[:, None]) * sgn) * area
    fb = _normalize((e2 * du1[:, None] - e1 * du2[:, None]) * sgn) * area
    ft[np.abs(r) < 1e-20] = 0.0
    fb[np.abs(r) < 1e-20] = 0.0
    t_acc = np.zeros_like(vertices)
    b_acc = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(t_acc, faces[:, k], ft)
        np.add.at(b_acc, faces[:, k], fb)
    t = t_acc - normals * np.sum(t_acc * normals, axis=1, keepdims=True)
    t = _normalize(t, fallback=_any_perpendicular(normals))
    w = np.where(np.sum(np.cross(normals, t) * b_acc, axis=1) < 0, -1.0, 1.0)
    return normals, np.concatenate([t, w[:, None]], axis=1)


# -------------------------------------------------------------------------------------------------- rasterise


def rasterize_uv(
    uvs: np.ndarray, faces: np.ndarray, size: int, band_px: float = 1.0, budget: int = 2**18
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which triangle covers each texel centre, with barycentrics (vectorised, chunked over triangles).

    Texels whose centre is outside every triangle but within ``band_px`` of one are assigned to the nearest
    (clamped barycentrics): bilinear filtering at chart borders then reads values of the right surface.

    Returns:
        face (T,T) int64 (-1 = empty), bary (T,T,3) float32, inside (T,T) bool (centre strictly covered).
    """
    T = int(size)
    p = np.stack([uvs[:, 0] * T - 0.5, (1.0 - uvs[:, 1]) * T - 0.5], axis=1)[faces]  # (F,3,2) col,row
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area2 = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]  # twice the signed area in texels
    valid = np.nonzero(np.abs(area2) > 1e-12)[0]
    lo = np.clip(np.floor(p.min(axis=1) - band_px), 0, T - 1).astype(np.int64)
    hi = np.clip(np.ceil(p.max(axis=1) + band_px), 0, T - 1).astype(np.int64)
    w = hi[:, 0] - lo[:, 0] + 1
    h = hi[:, 1] - lo[:, 1] + 1
    counts = (w * h)[valid]

    best = np.full(T * T, -np.inf, dtype=np.float32)
    face = np.full(T * T, -1, dtype=np.int64)
    bary = np.zeros((T * T, 3), dtype=np.float32)
    ends = np.cumsum(counts)
    start = 0
    while start < len(valid):
        # Triangles whose candidate texels fit the budget (at least one triangle per chunk).
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + budget, side="right")))
        ids = valid[start:stop]
        n_c = counts[start:stop]
        tid = np.repeat(ids, n_c)
        local = np.arange(n_c.sum()) - np.repeat(np.cumsum(n_c) - n_c, n_c)
        x = lo[tid, 0] + local % w[tid]
        y = lo[tid, 1] + local // w[tid]
        q = np.stack([x, y], axis=1).astype(np.float64)
        a, b, c = p[tid, 0], p[tid, 1], p[tid, 2]
        s2 = area2[tid]

        def cross(o, d, pt):
            return (d[:, 0] - o[:, 0]) * (pt[:, 1] - o[:, 1]) - (d[:, 1] - o[:, 1]) * (pt[:, 0] - o[:, 0])

        # Edge functions; barycentric of a vertex = edge function of the opposite edge / (2 * area).
        l0, l1, l2 = cross(b, c, q) / s2, cross(c, a, q) / s2, cross(a, b, q) / s2
        # Signed distance (px, + inside) to each edge line: edge function / edge length, sign-corrected.
        sign = np.sign(s2)
        d0 = cross(b, c, q) * sign / np.linalg.norm(c - b, axis=1)
        d1 = cross(c, a, q) * sign / np.linalg.norm(a - c, axis=1)
        d2 = cross(a, b, q) * sign / np.linalg.norm(b - a, axis=1)
        score = np.minimum(np.minimum(d0, d1), np.minimum(d2, 0.0))  # inside -> 0, outside -> -distance
        keep = score >= -band_px
        lam = np.stack([l0, l1, l2], axis=1)[keep]
        outside = score[keep] < 0
        lam[outside] = np.clip(lam[outside], 0.0, None)
        lam /= lam.sum(axis=1, keepdims=True)
        texel, score_k, tid_k = (y * T + x)[keep], score[keep].astype(np.float32), tid[keep]
        # Best candidate per texel within the chunk (highest score), then merge with earlier chunks.
        order = np.lexsort((-score_k, texel))
        texel, score_k, tid_k, lam = texel[order], score_k[order], tid_k[order], lam[order]
        first = np.ones(len(texel), dtype=bool)
        first[1:] = texel[1:] != texel[:-1]
        texel, score_k, tid_k, lam = texel[first], score_k[first], tid_k[first], lam[first]
        better = score_k > best[texel]
        texel = texel[better]
        best[texel] = score_k[better]
        face[texel] = tid_k[better]
        bary[texel] = lam[better]
        start = stop
    return face.reshape(T, T), bary.reshape(T, T, 3), (best >= 0).reshape(T, T)


# ---------------------------------------------------------------------------------------------------- baking


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """sRGB transfer function (IEC 61966-2-1) on values in [0,1]."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`linear_to_srgb`."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _material_column(out: dict, key: str, m: int, dim: int) -> np.ndarray:
    if key not in out:
        raise NFieldsError(f"bake_pbr_textures: material_fn must return {key!r} (got keys {sorted(out)})")
    v = out[key]
    v = v.detach().float().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v, dtype=np.float32)
    if v.size != m * dim:
        raise NFieldsError(f"bake_pbr_textures: material_fn[{key!r}] must have {m}x{dim} values, got {v.shape}")
    return v.reshape(m, dim)


def bake_pbr_textures(
    mesh_with_uv: trimesh.Trimesh,
    material_fn: Callable[[Tensor], dict[str, Tensor]],
    texture_size: int = 2048,
    dilate_px: int = 8,
    chunk: int = 2**18,
    field_from_mesh: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> PBRTextures:
    """Bake albedo / ORM / tangent-space normal textures by evaluating ``material_fn`` at each covered texel.

    Args:
        mesh_with_uv: mesh with per-vertex UVs (see :func:`unwrapped_mesh`).
        material_fn: (M,3) float32 points -> ``{"albedo": (M,3) linear [0,1], "roughness": (M,), "metallic": (M,),
            optional "normal": (M,3) world-space unit field normal}``. Not wrapped in ``no_grad`` (a field may need
            autograd for its normal); results are detached.
        texture_size: T, texels per side.
        dilate_px: copy each covered texel's value up to this many texels outward across chart borders, so that
            bilinear filtering and mip-mapping never pull in empty (black) texels at seams.
        chunk: points per ``material_fn`` call.
        field_from_mesh: optional (4,4) map from mesh coordinates to the field's coordinates (the inverse of the
            ``transform`` given to ``extract_mesh``); field normals are mapped back to mesh coordinates.
        device: where points are sent before ``material_fn`` is called.

    Returns:
        :class:`PBRTextures`; texels covered by no chart and farther than ``dilate_px`` from one hold the mean
        albedo / ORM and a flat normal (keeps low mip levels free of black).
    """
    T = int(texture_size)
    if T < 2 or dilate_px < 0 or chunk < 1:
        raise NFieldsError(f"bake_pbr_textures: need texture_size >= 2, dilate_px >= 0, chunk >= 1; got {T}")
    verts, faces, uvs = mesh_arrays(mesh_with_uv, "bake_pbr_textures")
    normals, tangents = tangent_frame(verts, faces, uvs)
    face, bary, _ = rasterize_uv(uvs, faces, T)
    covered = face >= 0
    if not covered.any():
        raise NFieldsError("bake_pbr_textures: no texel is covered by the UV layout (UVs outside [0,1]?)")
    A, b = np.eye(3), np.zeros(3)
    if field_from_mesh is not None:
        M = np.asarray(field_from_mesh, dtype=np.float64)
        if M.shape != (4, 4):
            raise NFieldsError(f"bake_pbr_textures: field_from_mesh must be (4,4), got {M.shape}")
        A, b = M[:3, :3], M[:3, 3]

    # One float image with every channel: linear albedo, occlusion, roughness, metallic, tangent normal (encoded).
    img = np.zeros((T, T, 9), np.float32)
    rows, cols = np.nonzero(covered)
    device = torch.device(device)
    # Texels in chunks: interpolation temporaries are ~100 floats per texel, too many for all of a 2048^2 atlas.
    for s in range(0, len(rows), chunk):
        r, c = rows[s : s + chunk], cols[s : s + chunk]
        lam = bary[r, c].astype(np.float64)[:, :, None]  # (m,3,1)
        fv = faces[face[r, c]]
        pts = (verts[fv] * lam).sum(1)
        x = torch.from_numpy((pts @ A.T + b).astype(np.float32)).to(device)
        out = material_fn(x)
        m = len(x)
        texel = np.empty((m, 9), np.float32)
        texel[:, 0:3] = np.clip(_material_column(out, "albedo", m, 3), 0.0, 1.0)
        texel[:, 3] = 1.0
        texel[:, 4] = _material_column(out, "roughness", m, 1)[:, 0]
        texel[:, 5] = _material_column(out, "metallic", m, 1)[:, 0]
        if "normal" in out:
            n_i = _normalize((normals[fv] * lam).sum(1), fallback=np.array([0.0, 0.0, 1.0]))
            t_i = (tangents[fv, :3] * lam).sum(1)
            t_i = _normalize(t_i - n_i * np.sum(t_i * n_i, axis=1, keepdims=True), fallback=_any_perpendicular(n_i))
            w_i = np.where((tangents[fv, 3:] * lam).sum(1) < 0, -1.0, 1.0)
            b_i = np.cross(n_i, t_i) * w_i
            # Field -> mesh normals: A^T n (row-vector form n @ A), then into the (T, B, N) frame.
            n_mesh = _normalize(_material_column(out, "normal", m, 3).astype(np.float64) @ A, fallback=n_i)
            n_tan = np.stack([(n_mesh * t_i).sum(1), (n_mesh * b_i).sum(1), (n_mesh * n_i).sum(1)], axis=1)
            texel[:, 6:9] = _normalize(n_tan, fallback=np.array([0.0, 0.0, 1.0])) * 0.5 + 0.5
        else:
            texel[:, 6:9] = (0.5, 0.5, 1.0)
        img[r, c] = texel
    img = _dilate(img, covered, dilate_px)
    return PBRTextures(
        albedo=_to_u8(linear_to_srgb(img[..., 0:3])),
        orm=_to_u8(img[..., 3:6]),
        normal=_to_u8(img[..., 6:9]),
        coverage=covered,
    )


def _dilate(img: np.ndarray, covered: np.ndarray, px: int) -> np.ndarray:
    """Copy the nearest covered texel into empty texels within ``px``; fill the rest with the mean / flat normal."""
    dist, (iy, ix) = ndimage.distance_transform_edt(~covered, return_indices=True)
    near = (~covered) & (dist <= px)
    img[near] = img[iy[near], ix[near]]
    far = (~covered) & ~near
    if far.any():
        fill = img[covered].mean(axis=0)
        fill[6:9] = (0.5, 0.5, 1.0)
        img[far] = fill
    return img
