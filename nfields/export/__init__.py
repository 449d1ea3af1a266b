"""Export: mesh extraction from a field, UV unwrap, PBR texture baking, GLB/glTF/OBJ/PLY writers, validation.

Everything works on callables (``sdf_fn``, ``material_fn``), not on field classes. A typical pipeline::

    mesh = extract_mesh(sdf_fn, aabb, resolution=512)            # trimesh.Trimesh, outward normals
    mesh = decimate(cull_unseen(mesh, c2w, K, W, H), 200_000)    # optional clean-up
    uv_mesh = unwrapped_mesh(mesh)                               # xatlas
    tex = bake_pbr_textures(uv_mesh, material_fn, texture_size=2048)
    write_glb("out/mesh.glb", uv_mesh, tex); validate_gltf("out/mesh.glb")
"""

from nfields.export.bake import (
    PBRTextures,
    bake_pbr_textures,
    rasterize_uv,
    tangent_frame,
    unwrap_uv,
    unwrapped_mesh,
)
from nfields.export.gltf import write_glb, write_gltf
from nfields.export.marching import cull_unseen, decimate, extract_mesh, largest_component
from nfields.export.obj import write_obj
from nfields.export.ply import write_ply
from nfields.export.validate import atomic_export, validate_gltf

__all__ = [
    "PBRTextures",
    "atomic_export",
    "bake_pbr_textures",
    "cull_unseen",
    "decimate",
    "extract_mesh",
    "largest_component",
    "rasterize_uv",
    "tangent_frame",
    "unwrap_uv",
    "unwrapped_mesh",
    "validate_gltf",
    "write_glb",
    "write_gltf",
    "write_obj",
    "write_ply",
]
