"""Scene names -> folders -> :class:`Scene`, whatever the layout."""

from __future__ import annotations

import os
from pathlib import Path

from nfields.data.blender import load_blender
from nfields.data.dtu import find_camera_file, load_dtu
from nfields.data.scene import Scene
from nfields.data.synthetic import demo_scene_path
from nfields.data.transforms_json import load_transforms_json
from nfields.errors import NFieldsError

DOWNLOADS = (
    "DTU: the public_data release linked from github.com/Totoro97/NeuS (e.g. public_data/dtu_scan24); "
    "NeRF-synthetic: the nerf_synthetic release linked from github.com/bmild/nerf"
)


def search_paths(name: str) -> list[Path]:
    """Where :func:`resolve_scene_path` looks for ``name``, in order: $NFIELDS_DATA/<name>, ./data/<name>,
    ../shared/data/<name> (the last two relative to the current directory)."""
    places = []
    if os.environ.get("NFIELDS_DATA"):
        places.append(Path(os.environ["NFIELDS_DATA"]).expanduser() / name)
    places += [Path("data") / name, Path("..") / "shared" / "data" / name]
    return places


def resolve_scene_path(name: str) -> Path:
    """A scene folder for ``name``: an existing path is used as is; ``"demo"`` is the generated demo scene (made once
    in ``$NFIELDS_CACHE`` or ``~/.cache/nfields``); otherwise the first of :func:`search_paths` that exists.

    Nothing found -> NFieldsError listing the places looked and where the public datasets can be downloaded.
    """
    p = Path(name).expanduser()
    if p.exists():
        return p
    if name == "demo":
        return demo_scene_path()
    places = search_paths(name)
    for q in places:
        if q.exists():
            return q
    looked = ", ".join(str(q) for q in places)
    raise NFieldsError(f"scene {name!r} not found; looked in {looked}. Download: {DOWNLOADS}")


def scene_layout(root: Path) -> str:
    """``"dtu"`` (cameras_sphere.npz / cameras.npz), ``"blender"`` (transforms_train.json) or ``"transforms"``
    (transforms.json); anything else is an NFieldsError."""
    if not root.is_dir():
        raise NFieldsError(f"{root}: not a scene folder")
    if find_camera_file(root) is not None:
        return "dtu"
    if (root / "transforms_train.json").is_file():
        return "blender"
    if (root / "transforms.json").is_file():
        return "transforms"
    raise NFieldsError(
        f"{root}: unknown scene layout (expected cameras_sphere.npz (DTU/NeuS), transforms_train.json "
        "(NeRF-synthetic) or transforms.json (instant-ngp/nerfstudio))"
    )


def load_scene(
    name: str,
    downscale: int = 1,
    holdout_every: int = 8,
    background: tuple = (1.0, 1.0, 1.0),
    max_views: int | None = None,
) -> Scene:
    """Find (:func:`resolve_scene_path`) and load a scene, detecting its layout (:func:`scene_layout`).

    downscale: integer image reduction (box filter; intrinsics scaled to match);
    holdout_every: test views are those with ``id % holdout_every == 0`` (0, 8, 16, ... ; <= 0 holds none out) --
    NeRF-synthetic val/test split files, when present, are added to the test views;
    background: RGB in [0, 1] that RGBA images are composited on;
    max_views: keep that many views, evenly spaced, before the split (quick experiments and tests).
    """
    if int(downscale) < 1:
        raise NFieldsError(f"downscale must be an integer >= 1, got {downscale}")
    if len(tuple(background)) != 3 or not all(0.0 <= float(c) <= 1.0 for c in background):
        raise NFieldsError(f"background must be 3 numbers in [0, 1], got {tuple(background)}")
    if max_views is not None and max_views < 1:
        raise NFieldsError(f"max_views must be >= 1, got {max_views}")
    root = resolve_scene_path(str(name))
    layout = scene_layout(root)
    if layout == "dtu":
        scene = load_dtu(root, downscale=downscale, holdout_every=holdout_every, max_views=max_views)
    elif layout == "blender":
        scene = load_blender(root, downscale, holdout_every, background, max_views)
    else:
        scene = load_transforms_json(root, downscale, holdout_every, background, max_views)
    return scene
