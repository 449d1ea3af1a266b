"""Ray casting and point-to-surface distances on triangle meshes: the only place that imports open3d.

open3d's ``RaycastingScene`` (Embree underneath) casts tens of millions of rays per second on a CPU; the scene
generator uses it for primary rays and shadow rays. Without open3d, :class:`MeshRaycaster` falls back to
:func:`intersect_brute_force`, a chunked pure-torch Moller-Trumbore test of every ray against every triangle (exact,
but O(rays x faces): for small meshes and for the parity test against open3d).
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from torch import Tensor


def _open3d():
    try:
        import open3d as o3d
    except (ImportError, OSError):  # OSError: libusb missing (apt-get install libusb-1.0-0)
        return None
    return o3d


class MeshRaycaster:
    """Closest-hit and occlusion queries on a triangle mesh (float32 world coordinates).

    Example:
        >>> rc = MeshRaycaster(trimesh.creation.icosphere(subdivisions=3, radius=0.5))
        >>> hit, t, n = rc.intersect(torch.tensor([[0.0, 0, -2]]), torch.tensor([[0.0, 0, 1]]))
        >>> bool(hit[0]), round(float(t[0]), 2)
        (True, 1.5)
    """

    def __init__(self, mesh: trimesh.Trimesh, backend: str = "auto"):
        self.mesh = mesh
        o3d = _open3d() if backend in ("auto", "open3d") else None
        if backend == "open3d" and o3d is None:
            raise ImportError("open3d is not importable (pip install open3d; apt-get install libusb-1.0-0)")
        self.backend = "open3d" if o3d is not None else "torch"
        self.face_normals = torch.from_numpy(np.asarray(mesh.face_normals, dtype=np.float32))
        if self.backend == "open3d":
            self._scene = o3d.t.geometry.RaycastingScene()
            self._scene.add_triangles(
                o3d.core.Tensor(np.asarray(mesh.vertices, np.float32)),
                o3d.core.Tensor(np.asarray(mesh.faces, np.uint32)),
            )
            self._o3d = o3d
        else:
            self._tris = torch.from_numpy(np.asarray(mesh.triangles, dtype=np.float32))

    def _rays(self, origins: Tensor, dirs: Tensor):
        return self._o3d.core.Tensor(torch.cat([origins, dirs], -1).float().contiguous().numpy())

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Unsigned distance (M,) from points (M, 3) to the surface: open3d's exact BVH query, or the pure-torch
        twin :func:`_point_mesh_distance_torch`."""
        pts = np.asarray(points, dtype=np.float32)
        if len(pts) == 0:
            return np.zeros(0, np.float32)
        if self.backend == "open3d":
            return self._scene.compute_distance(self._o3d.core.Tensor(pts)).numpy()
        return _point_mesh_distance_torch(self.mesh, pts)

    def closest_hits(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Closest hits of rays (M, 3) -> (hit (M,) bool, t (M,) (inf on a miss), triangle index (M,) long)."""
        if self.backend == "open3d":
            ans = self._scene.cast_rays(self._rays(origins, dirs))
            t = torch.from_numpy(ans["t_hit"].numpy().copy())
            prim = torch.from_numpy(ans["primitive_ids"].numpy().astype(np.int64))
        else:
            t, prim = intersect_brute_force(self._tris, origins.float(), dirs.float())
        hit = torch.isfinite(t)
        return hit, t, torch.where(hit, prim, torch.zeros_like(prim))

    def intersect(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Closest hits of rays (M, 3) -> (hit (M,) bool, t (M,), shading normal (M, 3) facing the ray)."""
        m = origins.shape[0]
        hit, t, prim = self.closest_hits(origins, dirs)
        n = torch.zeros(m, 3)
        if hit.any():
            n[hit] = self.smooth_normals(prim[hit], origins[hit] + t[hit, None] * dirs[hit])
        flip = (n * dirs).sum(-1) > 0
        n[flip] = -n[flip]
        return hit, torch.where(hit, t, torch.zeros_like(t)), n

    def smooth_normals(self, faces: Tensor, points: Tensor) -> Tensor:
        """Vertex normals interpolated barycentrically at ``points`` (K, 3) on triangles ``faces`` (K,) -> (K, 3)."""
        f = self.mesh.faces[faces.numpy()]
        bary = trimesh.triangles.points_to_barycentric(self.mesh.vertices[f], points.double().numpy())
        vn = np.asarray(self.mesh.vertex_normals)[f]  # (K, 3 corners, 3)
        n = torch.from_numpy((bary[..., None] * vn).sum(1).astype(np.float32))
        return torch.nn.functional.normalize(n, dim=-1)

    def occluded(self, origins: Tensor, dirs: Tensor) -> Tensor:
        """Whether rays (M, 3) hit anything at t > 0 -> (M,) bool (shadow rays; offset origins off the surface)."""
        if origins.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool)
        if self.backend == "open3d":
            ans = self._scene.test_occlusions(self._rays(origins, dirs))
            return torch.from_numpy(ans.numpy().astype(bool))
        return torch.isfinite(intersect_brute_force(self._tris, origins.float(), dirs.float())[0])


def closest_point_on_triangles(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Closest points (M, 3) to points p (M, 3) on triangles (a, b, c) (M, 3) each (Ericson, Real-Time Collision
    Detection 5.1.5: the Voronoi region of the point decides vertex / edge / face), vectorised."""

    def dot(u, v):
        return (u * v).sum(-1, keepdim=True)

    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = dot(ab, ap), dot(ac, ap)
    bp = p - b
    d3, d4 = dot(ab, bp), dot(ac, bp)
    cp = p - c
    d5, d6 = dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    tiny = 1e-20
    denom = 1.0 / (va + vb + vc).clamp_min(tiny)
    out = a + ab * (vb * denom) + ac * (vc * denom)  # inside the face
    # Edge and vertex regions, from the least to the most specific test, so the later ones win.
    e_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6)).clamp_min(tiny)
    out = torch.where((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), b + (c - b) * e_bc, out)
    out = torch.where((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * (d2 / (d2 - d6).clamp_min(tiny)), out)
    out = torch.where((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * (d1 / (d1 - d3).clamp_min(tiny)), out)
    out = torch.where((d6 >= 0) & (d5 <= d6), c, out)
    out = torch.where((d3 >= 0) & (d4 <= d3), b, out)
    out = torch.where((d1 <= 0) & (d2 <= 0), a, out)
    return out


def point_mesh_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Unsigned distance (M,) from points (M, 3) to the surface of ``mesh`` (not to samples of it).

    open3d's ``RaycastingScene.compute_distance`` (exact, BVH) when open3d imports; otherwise the pure-torch twin:
    the ``k`` triangles whose centroids are nearest (KD-tree) are tested exactly with
    :func:`closest_point_on_triangles` (exact whenever the closest triangle is among them, which holds for the
    evenly tessellated meshes marching cubes and scans produce).
    """
    return MeshRaycaster(mesh).distance(points)


def _point_mesh_distance_torch(mesh: trimesh.Trimesh, pts: np.ndarray, k: int = 16, chunk: int = 65536) -> np.ndarray:
    from scipy.spatial import cKDTree

    tris = torch.from_numpy(np.asarray(mesh.triangles, dtype=np.float32))  # (F, 3, 3)
    k = min(k, len(tris))
    _, cand = cKDTree(tris.mean(1).numpy()).query(pts, k=k, workers=-1)
    cand = torch.from_numpy(np.asarray(cand).reshape(len(pts), k))
    p_all = torch.from_numpy(pts)
    out = np.empty(len(pts), np.float32)
    for s in range(0, len(pts), chunk):
        c = cand[s : s + chunk]
        t = tris[c.reshape(-1)]  # (m k, 3, 3)
        p = p_all[s : s + chunk].repeat_interleave(k, 0)
        q = closest_point_on_triangles(p, t[:, 0], t[:, 1], t[:, 2])
        out[s : s + chunk] = (q - p).norm(dim=-1).reshape(-1, k).min(1).values.numpy()
    return out


def surface_chamfer(a: trimesh.Trimesh, b: trimesh.Trimesh, n: int = 100_000, seed: int = 0) -> tuple[float, float]:
    """Point-to-surface Chamfer parts: (mean distance from ``n`` surface samples of ``a`` to the surface of ``b``,
    the same from ``b`` to ``a``). Unlike sample-to-sample nearest neighbours this has no floor from the sampling
    density: a mesh against itself scores 0."""
    pa = np.asarray(trimesh.sample.sample_surface(a, n, seed=seed)[0])
    pb = np.asarray(trimesh.sample.sample_surface(b, n, seed=seed + 1)[0])
    return float(point_mesh_distance(b, pa).mean()), float(point_mesh_distance(a, pb).mean())


def intersect_brute_force(
    tris: Tensor, origins: Tensor, dirs: Tensor, eps: float = 1e-7, budget: int = 1 << 24
) -> tuple[Tensor, Tensor]:
    """Closest hit of every ray against every triangle (Moller-Trumbore), pure torch.

    tris (F, 3, 3); origins, dirs (M, 3) -> (t (M,) with inf for a miss, triangle index (M,)). Works on
    ``budget`` ray-triangle pairs at a time, so memory stays bounded.
    """
    m = origins.shape[0]
    t_best = torch.full((m,), float("inf"))
    idx_best = torch.zeros(m, dtype=torch.long)
    v0, e1, e2 = tris[:, 0], tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    rays_per = max(1, budget // max(len(tris), 1))
    for s in range(0, m, rays_per):
        o, d = origins[s : s + rays_per, None], dirs[s : s + rays_per, None]  # (R, 1, 3)
        p = torch.linalg.cross(d.expand(-1, len(tris), -1), e2[None].expand(d.shape[0], -1, -1))
        det = (e1[None] * p).sum(-1)
        inv = 1.0 / torch.where(det.abs() < eps, torch.full_like(det, float("inf")), det)
        tv = o - v0[None]
        u = (tv * p).sum(-1) * inv
        q = torch.linalg.cross(tv, e1[None].expand_as(tv))
        v = (d * q).sum(-1) * inv
        t = (e2[None] * q).sum(-1) * inv
        ok = (det.abs() >= eps) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > eps)
        t = torch.where(ok, t, torch.full_like(t, float("inf")))
        tmin, imin = t.min(dim=1)
        t_best[s : s + rays_per], idx_best[s : s + rays_per] = tmin, imin
    return t_best, idx_best
