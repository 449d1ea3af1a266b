"""Datasets: cameras (OpenCV convention), scene loaders (DTU/NeuS, NeRF-synthetic, transforms.json, the generated
demo), and random ray batches.

    from nfields.data import load_scene
    scene = load_scene("dtu_scan24", downscale=4)   # or "lego", "demo", a folder path
"""

from nfields.data.cameras import Cameras, distort, undistort
from nfields.data.rays import RayBatch, RayBatcher
from nfields.data.resolve import load_scene, resolve_scene_path
from nfields.data.scene import Scene
from nfields.data.synthetic import demo_albedo, demo_sdf, generate_demo_scene

__all__ = [
    "Cameras",
    "RayBatch",
    "RayBatcher",
    "Scene",
    "demo_albedo",
    "demo_sdf",
    "distort",
    "generate_demo_scene",
    "load_scene",
    "resolve_scene_path",
    "undistort",
]
