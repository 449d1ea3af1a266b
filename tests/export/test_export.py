"""Export on an analytic SDF (sphere + box union) with a procedural material: marching cubes, UV bake, writers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from nfields.errors import NFieldsError
from nfields.export import (
    atomic_export,
    bake_pbr_textures,
    cull_unseen,
    decimate,
    extract_mesh,
    tangent_frame,
    unwrapped_mesh,
    validate_gltf,
    write_glb,
    write_gltf,
    write_obj,
    write_ply,
)
from nfields.export.bake import srgb_to_linear, unwrap_uv
from nfields.export.gltf import Z_UP_TO_Y_UP
from nfields.export.validate import find_gltf_validator

AABB = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
RES = 64
VOXEL = 2.0 / (RES - 1)
BOX_C, BOX_H = torch.tensor([0.4, 0.0, 0.0]), torch.tensor([0.3, 0.2, 0.25])


def sdf(x: torch.Tensor) -> torch.Tensor:
    """Union of a sphere (r 0.5) and a box poking out of it along +x; negative inside."""
    sphere = x.norm(dim=-1) - 0.5
    q = (x - BOX_C).abs() - BOX_H
    box = q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)
    return torch.minimum(sphere, box)


def sphere_sdf(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1) - 0.6


def swirl_normal(x: torch.Tensor) -> torch.Tensor:
    """A field normal tilted away from the sphere normal (so the normal map is not flat)."""
    r = x / x.norm(dim=-1, keepdim=True)
    swirl = torch.stack([-x[:, 1], x[:, 0], torch.zeros_like(x[:, 0])], dim=-1)
    n = r + 0.6 * swirl
    return n / n.norm(dim=-1, keepdim=True)


def material(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "albedo": 0.2 + 0.3 * (x + 1.0),  # linear, in [0.2, 0.8]
        "roughness": 0.5 + 0.3 * x[:, 0],
        "metallic": 0.5 + 0.3 * x[:, 1],
        "normal": swirl_normal(x),
    }


@pytest.fixture(scope="module")
def mesh() -> trimesh.Trimesh:
    return extract_mesh(sdf, AABB, resolution=RES, block=16)


@pytest.fixture(scope="module")
def baked():
    sphere = extract_mesh(sphere_sdf, AABB, resolution=40)
    uv_mesh = unwrapped_mesh(sphere)
    return uv_mesh, bake_pbr_textures(uv_mesh, material, texture_size=256, dilate_px=4)


def numeric_grad(x: np.ndarray) -> np.ndarray:
    eps = 1e-4
    xt = torch.from_numpy(np.array(x, dtype=np.float64))
    g = [(sdf(xt + eps * e) - sdf(xt - eps * e)).numpy() / (2 * eps) for e in torch.eye(3, dtype=torch.float64)]
    return np.stack(g, axis=1)


# ------------------------------------------------------------------------------------------------ marching cubes


def test_extract_mesh_on_surface_watertight_outward(mesh):
    d = sdf(torch.from_numpy(mesh.vertices).float()).numpy()
    assert np.abs(d).max() < VOXEL  # linear interpolation error of the kinked union SDF stays below a voxel
    assert np.abs(d).mean() < 0.05 * VOXEL
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == 2  # one closed genus-0 surface
    assert mesh.volume > 0  # positive volume <=> outward-facing winding
    dots = np.sum(mesh.face_normals * numeric_grad(mesh.triangles_center), axis=1)
    assert np.mean(dots > 0) > 0.999
    # Union volume: sphere + the part of the box outside it, ~0.5236 + 0.05; 64^3 marching cubes within 1 %.
    assert 0.55 < mesh.volume < 0.59


def test_blockwise_equals_single_block(mesh):
    single = extract_mesh(sdf, AABB, resolution=RES, block=RES)
    odd = extract_mesh(sdf, AABB, resolution=RES, block=7)  # blocks that do not divide the grid
    for m in (single, odd):
        assert abs(len(m.vertices) - len(mesh.vertices)) <= 3
        assert abs(len(m.faces) - len(mesh.faces)) <= 6
        assert m.is_watertight
        dist, _ = trimesh.proximity.ProximityQuery(m).vertex(mesh.vertices)
        assert dist.max() < 1e-5
        assert m.volume == pytest.approx(mesh.volume, rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 0.3, 3.0])
def test_narrow_band_equals_dense(mesh, scale):
    """Evaluating the fine grid only near the surface gives the dense result, also for fields that under- or
    overstate distances (up to the band's 3x), while evaluating far fewer points."""
    calls = []

    def counted(x):
        calls.append(len(x))
        return scale * sdf(x)

    dense = extract_mesh(lambda x: scale * sdf(x), AABB, resolution=RES, block=16)
    band = extract_mesh(counted, AABB, resolution=RES, block=16, narrow_band=3.0)
    assert len(band.faces) == len(dense.faces) and len(band.vertices) == len(dense.vertices)
    np.testing.assert_allclose(np.sort(band.vertices, axis=0), np.sort(dense.vertices, axis=0), atol=1e-9)
    assert band.is_watertight
    if scale == 1.0:  # a 1-tile band on the exact SDF: the same mesh from about a third of the points
        calls.clear()
        tight = extract_mesh(counted, AABB, resolution=RES, block=16, narrow_band=1.0)
        assert len(tight.faces) == len(dense.faces)
        assert sum(calls) < 0.4 * RES**3  # the fraction drops with the resolution (~10 % at 512^3, band 3)


def test_extract_mesh_transform_and_largest_component(mesh):
    T = np.diag([2.0, 2.0, 2.0, 1.0])
    T[:3, 3] = [1.0, -2.0, 3.0]
    moved = extract_mesh(sdf, AABB, resolution=RES, block=16, transform=T)
    np.testing.assert_allclose(moved.vertices, mesh.vertices * 2 + [1.0, -2.0, 3.0], atol=1e-9)
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped = extract_mesh(sdf, AABB, resolution=RES, block=16, transform=mirror)
    assert flipped.volume == pytest.approx(mesh.volume, rel=1e-9)  # still outward after a reflection

    def with_part(radius):  # the object plus a separate ball: a floater when small, a real part when not
        return lambda x: torch.minimum(sdf(x), (x - torch.tensor([-0.75, -0.75, -0.75])).norm(dim=-1) - radius)

    both = extract_mesh(with_part(0.06), AABB, resolution=RES, block=16, keep_largest=False)
    largest = extract_mesh(with_part(0.06), AABB, resolution=RES, block=16)
    assert len(both.split(only_watertight=False)) == 2
    assert len(largest.faces) == len(mesh.faces) and len(both.faces) > len(mesh.faces)
    # A separate part with more than min_component (2 %) of the object's faces stays (like the demo's satellite).
    part = extract_mesh(with_part(0.15), AABB, resolution=RES, block=16)
    assert len(part.split(only_watertight=False)) == 2
    only = extract_mesh(with_part(0.15), AABB, resolution=RES, block=16, min_component=0.0)
    assert len(only.faces) == len(mesh.faces)


def test_extract_mesh_density_convention():
    # Density field: the caller passes threshold - density, so high density = inside.
    density = lambda x: 10.0 * torch.exp(-4.0 * x.norm(dim=-1) ** 2)  # noqa: E731
    m = extract_mesh(lambda x: 5.0 - density(x), AABB, resolution=32)
    r = np.sqrt(np.log(2.0) / 4.0)  # 10 exp(-4 r^2) = 5
    assert np.abs(np.linalg.norm(m.vertices, axis=1) - r).max() < 2.0 / 31
    assert m.volume > 0


def test_extract_mesh_bad_input():
    with pytest.raises(NFieldsError, match="aabb"):
        extract_mesh(sdf, [1, 1, 1, -1, -1, -1], resolution=16)
    with pytest.raises(NFieldsError, match="no surface"):
        extract_mesh(lambda x: x.norm(dim=-1) + 1.0, AABB, resolution=16)
    with pytest.raises(NFieldsError, match="sdf_fn must return"):
        extract_mesh(lambda x: x, AABB, resolution=16)


def test_cull_unseen_and_decimate(mesh):
    # One camera on +z looking down -z (OpenCV: y down) with a narrow field of view: sees |x|,|y| < ~0.3 only.
    c2w = np.array([[[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, -1.0, 3.0]]])
    W = H = 64
    K = np.array([[[320.0, 0, W / 2], [0, 320.0, H / 2], [0, 0, 1]]])
    culled = cull_unseen(mesh, c2w, K, W, H)
    c = culled.triangles_center
    assert 0 < len(culled.faces) < 0.5 * len(mesh.faces)
    assert np.all(np.abs(c[:, :2] / (3.0 - c[:, 2:3])) <= 0.1 + 1e-9)  # |x/z| <= (W/2)/f
    mask = np.zeros((1, H, W), dtype=bool)
    mask[:, :, : W // 2] = True  # only the image's left half (x < 0 in this camera)
    half = cull_unseen(mesh, c2w, K, W, H, masks=mask)
    assert 0 < len(half.faces) < len(culled.faces) and np.all(half.triangles_center[:, 0] < 1e-6)

    small = decimate(mesh, 2000)
    assert 1800 <= len(small.faces) <= 2000
    d = sdf(torch.from_numpy(small.vertices).float()).numpy()
    assert np.abs(d).max() < 2 * VOXEL


# ---------------------------------------------------------------------------------------------------- UV bake


def _sample_surface(uv_mesh: trimesh.Trimesh, n: int, seed: int = 0):
    """Random points on the mesh: (face, barycentrics, 3D point, uv)."""
    rng = np.random.default_rng(seed)
    f = rng.integers(0, len(uv_mesh.faces), n)
    lam = rng.dirichlet([1.0, 1.0, 1.0], n)
    fv = uv_mesh.faces[f]
    p = np.einsum("nk,nkd->nd", lam, uv_mesh.vertices[fv])
    uv = np.einsum("nk,nkd->nd", lam, np.asarray(uv_mesh.visual.uv)[fv])
    return f, lam, p, uv


def uv_overlap_texels(uv: np.ndarray, faces: np.ndarray, size: int = 256) -> int:
    """Texel centres strictly inside more than one UV triangle (0 for a valid atlas)."""
    count = np.zeros((size, size), np.int32)
    for a, b, c in uv[faces] * size:
        lo = np.floor(np.minimum(np.minimum(a, b), c)).astype(int).clip(0, size - 1)
        hi = np.ceil(np.maximum(np.maximum(a, b), c)).astype(int).clip(0, size - 1)
        xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1) + 0.5, np.arange(lo[1], hi[1] + 1) + 0.5)
        p = np.stack([xs, ys], -1)
        d = (b - a)[0] * (c - a)[1] - (b - a)[1] * (c - a)[0]
        if abs(d) < 1e-12:
            continue
        w1 = ((p[..., 0] - a[0]) * (c - a)[1] - (p[..., 1] - a[1]) * (c - a)[0]) / d
        w2 = ((b - a)[0] * (p[..., 1] - a[1]) - (b - a)[1] * (p[..., 0] - a[0])) / d
        inside = (w1 > 1e-3) & (w2 > 1e-3) & (w1 + w2 < 1 - 1e-3)
        count[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] += inside
    return int((count > 1).sum())


def test_unwrap_in_pieces_is_one_valid_atlas():
    """A mesh unwrapped as spatially compact pieces: same surface, faces in order, one atlas without overlaps."""
    sphere = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
    v, f, uv, vmap = unwrap_uv(sphere, piece_faces=700)  # 8 pieces
    np.testing.assert_array_equal(vmap[f], sphere.faces)  # every output face is the input face, in order
    np.testing.assert_allclose(v, sphere.vertices[vmap])
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    assert uv_overlap_texels(uv, f) == 0
    whole = unwrap_uv(sphere)  # one piece: the same contract
    np.testing.assert_array_equal(whole[3][whole[1]], sphere.faces)


def test_bake_texels_match_material(baked):
    uv_mesh, tex = baked
    T = tex.size
    _, _, p, uv = _sample_surface(uv_mesh, 4000)
    col = np.clip((uv[:, 0] * T).astype(int), 0, T - 1)
    row = np.clip(((1 - uv[:, 1]) * T).astype(int), 0, T - 1)
    # Texel centres at most half a texel away from the sample: about 0.01 in 3D here, so the smooth material
    # (slope 0.3) moves by < 1/255 on top of the 8-bit rounding.
    ok = tex.coverage[row, col]
    assert ok.mean() > 0.97
    mat = {k: v.numpy() for k, v in material(torch.from_numpy(p[ok]).float()).items()}
    assert np.abs(tex.orm[row, col, 1][ok] / 255.0 - mat["roughness"]).max() < 2.5 / 255
    assert np.abs(tex.orm[row, col, 2][ok] / 255.0 - mat["metallic"]).max() < 2.5 / 255
    assert np.all(tex.orm[..., 0] == 255)
    albedo = srgb_to_linear(tex.albedo[row, col][ok] / 255.0)
    assert np.abs(albedo - mat["albedo"]).max() < 0.01


def test_bake_normal_map_decodes_to_field_normal(baked):
    uv_mesh, tex = baked
    T = tex.size
    verts, faces, uvs = uv_mesh.vertices, uv_mesh.faces, np.asarray(uv_mesh.visual.uv)
    normals, tangents = tangent_frame(verts, faces, uvs)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1) and np.allclose(np.abs(tangents[:, 3]), 1)
    assert np.abs(np.sum(normals * tangents[:, :3], axis=1)).max() < 1e-9
    f, lam, p, uv = _sample_surface(uv_mesh, 3000, seed=1)
    col = np.clip((uv[:, 0] * T).astype(int), 0, T - 1)
    row = np.clip(((1 - uv[:, 1]) * T).astype(int), 0, T - 1)
    ok = tex.coverage[row, col]
    fv = faces[f]
    # Decode the way a glTF viewer does: B = w * cross(N, T), n = T x + B y + N z.
    N = np.einsum("nk,nkd->nd", lam, normals[fv])
    N /= np.linalg.norm(N, axis=1, keepdims=True)
    t = np.einsum("nk,nkd->nd", lam, tangents[fv, :3])
    t -= N * np.sum(t * N, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    B = np.cross(N, t) * tangents[fv[:, 0], 3:]
    c = tex.normal[row, col].astype(np.float64) / 255.0 * 2.0 - 1.0
    n = c[:, :1] * t + c[:, 1:2] * B + c[:, 2:3] * N
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    want = swirl_normal(torch.from_numpy(p).float()).numpy()
    angle = np.degrees(np.arccos(np.clip(np.sum(n * want, axis=1), -1, 1)))[ok]
    assert np.median(angle) < 1.0 and np.percentile(angle, 99) < 4.0
    # +Y of the normal map points up the image (glTF/OpenGL convention): B along dP/dv (v up).
    tri_uv, tri_p = uvs[faces[f]], verts[faces[f]]
    e1, e2 = tri_p[:, 1] - tri_p[:, 0], tri_p[:, 2] - tri_p[:, 0]
    du1, dv1 = tri_uv[:, 1, 0] - tri_uv[:, 0, 0], tri_uv[:, 1, 1] - tri_uv[:, 0, 1]
    du2, dv2 = tri_uv[:, 2, 0] - tri_uv[:, 0, 0], tri_uv[:, 2, 1] - tri_uv[:, 0, 1]
    dpdv = (e2 * du1[:, None] - e1 * du2[:, None]) / (du1 * dv2 - du2 * dv1)[:, None]
    assert np.mean(np.sum(B * dpdv, axis=1) > 0) > 0.99


def test_bake_dilation_leaves_no_empty_texels_at_seams(baked):
    _, tex = baked
    cov = tex.coverage
    assert 0.5 < cov.mean() < 0.95
    pad = np.pad(cov, 1)
    H, W = cov.shape
    ring = ~cov & np.any([pad[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0)
    assert ring.sum() > 100
    # Every ring texel is a copy of one of its covered neighbours (no black, no mean fill, at every seam).
    img = np.concatenate([tex.albedo, tex.orm, tex.normal], axis=2).astype(int)
    pimg = np.pad(img, ((1, 1), (1, 1), (0, 0)))
    ys, xs = np.nonzero(ring)
    match = np.zeros(len(ys), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nb_cov = pad[1 + ys + dy, 1 + xs + dx]
            same = np.all(pimg[1 + ys + dy, 1 + xs + dx] == img[ys, xs], axis=1)
            match |= nb_cov & same
    assert match.all()
    assert tex.albedo[ring].min() > 100  # linear albedo >= 0.2 -> sRGB >= 124


def test_bake_needs_uvs(mesh):
    with pytest.raises(NFieldsError, match="UVs"):
        bake_pbr_textures(mesh, material, texture_size=16)


# ------------------------------------------------------------------------------------------------------ writers


def _glb_json(path) -> dict:
    data = path.read_bytes()
    magic, version, total = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and total == len(data)
    n, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON"
    return json.loads(data[20 : 20 + n])


def test_glb_round_trip(baked, tmp_path):
    uv_mesh, tex = baked
    path = write_glb(tmp_path / "mesh.glb", uv_mesh, tex)
    gltf = _glb_json(path)
    prim = gltf["meshes"][0]["primitives"][0]
    assert set(prim["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0", "TANGENT"}
    assert gltf["accessors"][prim["attributes"]["TANGENT"]]["type"] == "VEC4"
    loaded = list(trimesh.load(path).geometry.values())[0]
    mat = loaded.visual.material
    assert isinstance(mat, trimesh.visual.material.PBRMaterial)
    for image, ref in [(mat.baseColorTexture, tex.albedo), (mat.metallicRoughnessTexture, tex.orm)]:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), ref)
    np.testing.assert_array_equal(np.asarray(mat.normalTexture.convert("RGB")), tex.normal)
    np.testing.assert_allclose(loaded.visual.uv, uv_mesh.visual.uv, atol=1e-6)
    # z-up world -> y-up glTF: (x, y, z) -> (x, z, -y).
    np.testing.assert_allclose(loaded.vertices, uv_mesh.vertices @ Z_UP_TO_Y_UP.T, atol=1e-6)
    normals, _ = tangent_frame(uv_mesh.vertices, uv_mesh.faces, np.asarray(uv_mesh.visual.uv))
    np.testing.assert_allclose(loaded.vertex_normals, normals @ Z_UP_TO_Y_UP.T, atol=1e-5)


def test_gltf_validator_reports_no_issues(baked, tmp_path):
    try:
        find_gltf_validator()
    except NFieldsError as e:
        pytest.skip(f"glTF validator unavailable: {e}")
    uv_mesh, tex = baked
    for path in (write_glb(tmp_path / "a.glb", uv_mesh, tex), write_gltf(tmp_path / "b" / "b.gltf", uv_mesh, tex)):
        report = validate_gltf(path)
        assert (report["errors"], report["warnings"]) == (0, 0), report["messages"][:5]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "b.bin",
        "b.gltf",
        "b_albedo.png",
        "b_normal.png",
        "b_orm.png",
    ]


def test_obj_mtl_and_pngs(baked, tmp_path):
    uv_mesh, tex = baked
    path = write_obj(tmp_path / "out" / "mesh.obj", uv_mesh, tex)
    mtl = (path.parent / "mesh.mtl").read_text().split("\n")
    keys = {line.split()[0]: line.split()[-1] for line in mtl if line and not line.startswith("#")}
    for key in ("Kd", "map_Kd", "Pr", "Pm", "map_Pr", "map_Pm", "norm", "map_Bump"):
        assert key in keys
    for key, name in [("map_Kd", "albedo"), ("map_Pr", "roughness"), ("map_Pm", "metallic"), ("norm", "normal")]:
        assert keys[key] == f"mesh_{name}.png" and (path.parent / keys[key]).is_file()
    rough = np.asarray(Image.open(path.parent / "mesh_roughness.png"))
    np.testing.assert_array_equal(rough, tex.orm[..., 1])
    loaded = trimesh.load(path, process=False)
    assert len(loaded.faces) == len(uv_mesh.faces)
    np.testing.assert_allclose(loaded.vertices, uv_mesh.vertices, atol=1e-6)
    np.testing.assert_allclose(loaded.visual.uv, uv_mesh.visual.uv, atol=1e-6)


def test_ply_round_trip(mesh, tmp_path):
    colors = (np.abs(mesh.vertices) * 255).clip(0, 255).astype(np.uint8)
    path = write_ply(tmp_path / "mesh.ply", mesh, colors)
    assert b"binary_little_endian" in path.read_bytes()[:200]
    loaded = trimesh.load(path, process=False)
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], colors)
    with pytest.raises(NFieldsError, match="vertex_colors"):
        write_ply(tmp_path / "bad.ply", mesh, colors[:10])


def test_atomic_export_keeps_previous_file(baked, tmp_path):
    target = tmp_path / "mesh.glb"
    target.write_bytes(b"good")

    def failing(tmp):
        tmp.write_bytes(b"half-written")
        tmp.with_name("mesh.bin").write_bytes(b"sibling")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_export(target, failing)
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.glb"]  # no sibling, no temp folder

    # Multi-file OBJ: a failure while encoding textures leaves the previous OBJ/MTL/PNGs untouched.
    uv_mesh, tex = baked
    obj = write_obj(tmp_path / "o" / "mesh.obj", uv_mesh, tex)
    before = {p.name: p.read_bytes() for p in obj.parent.iterdir()}
    # The normal map is encoded last, after the albedo/roughness/metallic PNGs were written to the temp folder.
    broken = type(tex)(albedo=tex.albedo, orm=tex.orm, normal=tex.normal[..., :1].astype(np.float64), coverage=None)
    with pytest.raises(Exception):  # noqa: B017 - PIL's error type for a float image is not part of our API
        write_obj(obj, uv_mesh, broken)
    assert {p.name: p.read_bytes() for p in obj.parent.iterdir()} == before
