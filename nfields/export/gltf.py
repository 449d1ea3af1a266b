"""glTF 2.0 writers (binary .glb and .gltf + .bin + PNGs), metallic-roughness PBR, written by hand.

trimesh can write PBR GLBs but not a TANGENT attribute (only custom ``_NAME`` attributes), and a normal map needs the
exact tangent frame it was baked in, so the JSON and binary buffer are built here: small and explicit.

Axes: glTF is +Y up. The project's world (DTU, demo) is +Z up, so with ``z_up=True`` (default) positions, normals and
tangents are rotated -90 degrees about X: ``(x, y, z) -> (x, z, -y)`` (+Z becomes +Y, +Y becomes -Z), baked into
the vertex data (no node transform, so every viewer shows the same thing). Pass ``z_up=False`` for a y-up world.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from nfields.errors import NFieldsError
from nfields.export.bake import PBRTextures, mesh_arrays, tangent_frame
from nfields.export.validate import atomic_export

# Rotation -90 deg about X: +Z (project up) -> +Y (glTF up).
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_FLOAT, _UNSIGNED_INT = 5126, 5125
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an (H,W,3|4) or (H,W) uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def _build(
    mesh_with_uv: trimesh.Trimesh, textures: PBRTextures | None, tangents: bool, z_up: bool, embed_images: bool
) -> tuple[dict, bytes, dict[str, bytes]]:
    """glTF JSON dict, binary buffer, and (when not embedded) image name -> PNG bytes."""
    verts, faces, uvs = mesh_arrays(mesh_with_uv, "write_gltf")
    if len(faces) == 0:
        raise NFieldsError("write_gltf: mesh has no faces")
    normals, tang = tangent_frame(verts, faces, uvs)
    if z_up:
        verts, normals = verts @ Z_UP_TO_Y_UP.T, normals @ Z_UP_TO_Y_UP.T
        tang = np.concatenate([tang[:, :3] @ Z_UP_TO_Y_UP.T, tang[:, 3:]], axis=1)

    blob = bytearray()
    views: list[dict] = []
    accessors: list[dict] = []

    def add_view(data: bytes, target: int | None) -> int:
        blob.extend(b"\0" * (-len(blob) % 4))  # accessors need 4-byte aligned offsets
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        blob.extend(data)
        views.append(view)
        return len(views) - 1

    def add_accessor(arr: np.ndarray, kind: str, ctype: int, target: int, minmax: bool = False) -> int:
        acc = {
            "bufferView": add_view(arr.tobytes(), target),
            "componentType": ctype,
            "count": int(arr.shape[0]),
            "type": kind,
        }
        if minmax:
            flat = arr.reshape(len(arr), -1)
            acc["min"] = [x.item() for x in flat.min(0)]
            acc["max"] = [x.item() for x in flat.max(0)]
        accessors.append(acc)
        return len(accessors) - 1

    f32 = np.float32
    attrs = {
        "POSITION": add_accessor(verts.astype(f32), "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=True),
        "NORMAL": add_accessor(normals.astype(f32), "VEC3", _FLOAT, _ARRAY_BUFFER),
    }
    if textures is not None:
        # glTF's v runs down the image; ours (OBJ, trimesh) runs up.
        uv_gltf = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], 1).astype(f32)
        attrs["TEXCOORD_0"] = add_accessor(uv_gltf, "VEC2", _FLOAT, _ARRAY_BUFFER)
    if tangents and textures is not None:
        attrs["TANGENT"] = add_accessor(tang.astype(f32), "VEC4", _FLOAT, _ARRAY_BUFFER)
    indices = add_accessor(faces.reshape(-1).astype(np.uint32), "SCALAR", _UNSIGNED_INT, _ELEMENT_ARRAY_BUFFER, True)

    material: dict = {"name": "baked", "pbrMetallicRoughness": {"metallicFactor": 1.0, "roughnessFactor": 1.0}}
    gltf: dict = {
        "asset": {"version": "2.0", "generator": "nfields"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "mesh"}],
        "meshes": [{"name": "mesh", "primitives": [{"attributes": attrs, "indices": indices, "material": 0}]}],
        "materials": [material],
    }
    images: dict[str, bytes] = {}
    if textures is not None:
        names = ["albedo", "orm", "normal"]
        pngs = [png_bytes(textures.albedo), png_bytes(textures.orm), png_bytes(textures.normal)]
        if embed_images:
            gltf["images"] = [
                {"name": n, "bufferView": add_view(p, None), "mimeType": "image/png"} for n, p in zip(names, pngs)
            ]
        else:
            gltf["images"] = [{"name": n, "uri": f"{{stem}}_{n}.png"} for n in names]
            images = dict(zip(names, pngs))
        gltf["samplers"] = [
            {"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR, "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE}
        ]
        gltf["textures"] = [{"sampler": 0, "source": i} for i in range(3)]
        pbr = material["pbrMetallicRoughness"]
        pbr["baseColorTexture"] = {"index": 0}
        pbr["metallicRoughnessTexture"] = {"index": 1}  # G roughness, B metallic
        material["occlusionTexture"] = {"index": 1}  # R occlusion of the same ORM image
        material["normalTexture"] = {"index": 2}
    blob.extend(b"\0" * (-len(blob) % 4))
    gltf["bufferViews"] = views
    gltf["accessors"] = accessors
    gltf["buffers"] = [{"byteLength": len(blob)}]
    return gltf, bytes(blob), images


def write_glb(
    path: str | Path,
    mesh_with_uv: trimesh.Trimesh,
    textures: PBRTextures | None,
    tangents: bool = True,
    z_up: bool = True,
) -> Path:
    """Write a binary glTF 2.0 (.glb) with a metallic-roughness material, atomically.

    Material: baseColorTexture = ``textures.albedo`` (sRGB), metallicRoughnessTexture = ``textures.orm`` (G rough,
    B metal), occlusionTexture = the same ORM image (R), normalTexture = ``textures.normal``. Attributes: POSITION,
    NORMAL, TEXCOORD_0, and TANGENT (vec4, the frame the normal map was baked in) when ``tangents`` and textures
    (``tangents=False`` makes viewers generate their own tangents: the validator warns, the normal map may not
    match). ``textures=None`` writes the mesh with a plain white material. See the module docstring for ``z_up``.
    """
    gltf, blob, _ = _build(mesh_with_uv, textures, tangents, z_up, embed_images=True)
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)  # JSON chunk padded with spaces, BIN chunk with zeros (spec)
    total = 12 + 8 + len(js) + 8 + len(blob)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<4sII", b"glTF", 2, total))
            f.write(struct.pack("<I4s", len(js), b"JSON") + js)
            f.write(struct.pack("<I4s", len(blob), b"BIN\0") + blob)

    return atomic_export(path, write)


def write_gltf(
    path: str | Path,
    mesh_with_uv: trimesh.Trimesh,
    textures: PBRTextures | None,
    tangents: bool = True,
    z_up: bool = True,
) -> Path:
    """Write ``<stem>.gltf`` + ``<stem>.bin`` + ``<stem>_{albedo,orm,normal}.png`` beside it, atomically.

    Same content as :func:`write_glb`; the files are written to a temporary folder first and moved in only when all
    of them were written.
    """
    path = Path(path)
    gltf, blob, images = _build(mesh_with_uv, textures, tangents, z_up, embed_images=False)
    stem = path.stem
    gltf["buffers"][0]["uri"] = f"{stem}.bin"
    for im in gltf.get("images", []):
        im["uri"] = im["uri"].format(stem=stem)

    def write(tmp: Path) -> None:
        tmp.with_name(f"{stem}.bin").write_bytes(blob)
        for name, data in images.items():
            tmp.with_name(f"{stem}_{name}.png").write_bytes(data)
        tmp.write_text(json.dumps(gltf, indent=1))

    return atomic_export(path, write)
