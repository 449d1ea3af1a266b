"""Wavefront OBJ + MTL writer with PBR maps (written here; trimesh's OBJ export knows no Pr/Pm/norm).

Files for ``path = out/mesh.obj``: ``mesh.obj``, ``mesh.mtl``, ``mesh_albedo.png`` (sRGB), ``mesh_roughness.png``,
``mesh_metallic.png`` (linear, grey), ``mesh_normal.png`` (tangent space, +Y up), all written atomically together.
The MTL uses the PBR extension (Clara.io / Blender / three.js): ``Pr``/``Pm`` scalars, ``map_Pr``/``map_Pm``,
``norm``; ``map_Bump -bm 1`` names the normal map too, for importers that only know that key (Blender reads it as a
normal map). Coordinates are written as they are (no axis conversion); UVs in the OBJ convention (v up).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import trimesh

from nfields.export.bake import PBRTextures, mesh_arrays, tangent_frame
from nfields.export.gltf import png_bytes
from nfields.export.validate import atomic_export


def _rows(prefix: str, arr: np.ndarray, fmt: str) -> str:
    buf = io.StringIO()
    np.savetxt(buf, arr, fmt=prefix + (" " + fmt) * arr.shape[1] if fmt.count("%") == 1 else f"{prefix} {fmt}")
    return buf.getvalue()


def write_obj(path: str | Path, mesh_with_uv: trimesh.Trimesh, textures: PBRTextures | None) -> Path:
    """Write an OBJ with UVs and smooth normals, its MTL and the texture PNGs beside it (atomically).

    With ``textures=None`` the MTL holds a plain material (Kd 0.8, Pr 0.5, Pm 0) and no images are written.
    """
    path = Path(path)
    verts, faces, uvs = mesh_arrays(mesh_with_uv, "write_obj")
    normals, _ = tangent_frame(verts, faces, uvs)
    stem = path.stem
    mtl = ["# nfields PBR material\nnewmtl baked\nKa 0 0 0\nKs 0 0 0\nillum 2"]
    images: dict[str, np.ndarray] = {}
    if textures is None:
        mtl.append("Kd 0.8 0.8 0.8\nPr 0.5\nPm 0.0")
    else:
        images = {
            f"{stem}_albedo.png": textures.albedo,
            f"{stem}_roughness.png": textures.orm[..., 1],
            f"{stem}_metallic.png": textures.orm[..., 2],
            f"{stem}_normal.png": textures.normal,
        }
        # Scalars are 1 so the maps are used as they are (the extension multiplies scalar and map).
        mtl.append(
            f"Kd 1 1 1\nmap_Kd {stem}_albedo.png\nPr 1.0\nmap_Pr {stem}_roughness.png\nPm 1.0\n"
            f"map_Pm {stem}_metallic.png\nnorm {stem}_normal.png\nmap_Bump -bm 1 {stem}_normal.png"
        )
    f1 = faces + 1  # OBJ indices are 1-based; v, vt, vn share one index per vertex
    idx = np.repeat(f1, 3, axis=1)
    obj = (
        f"# nfields mesh: {len(verts)} vertices, {len(faces)} faces\nmtllib {stem}.mtl\n"
        + _rows("v", verts, "%.7g")
        + _rows("vt", uvs, "%.7g")
        + _rows("vn", normals, "%.6f")
        + "usemtl baked\n"
        + _rows("f", idx, "%d/%d/%d %d/%d/%d %d/%d/%d")
    )

    def write(tmp: Path) -> None:
        for name, image in images.items():
            tmp.with_name(name).write_bytes(png_bytes(image))
        tmp.with_name(f"{stem}.mtl").write_text("\n".join(mtl) + "\n")
        tmp.write_text(obj)

    return atomic_export(path, write)
