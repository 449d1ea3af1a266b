"""Bad input gives one-line NFieldsErrors naming the file and the problem (broken copies of a tiny DTU scene)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from nfields.data import generate_demo_scene, load_scene, resolve_scene_path
from nfields.errors import NFieldsError
from tests.conftest import DATA


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return generate_demo_scene(tmp_path_factory.mktemp("pristine") / "scene", n_views=4, size=24)


@pytest.fixture
def scene(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "scene")


def _error(root, **kw) -> str:
    with pytest.raises(NFieldsError) as e:
        load_scene(str(root), **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_pristine_copy_loads(scene):
    assert load_scene(str(scene)).images.shape == (4, 24, 24, 3)


def test_truncated_png(scene):
    p = scene / "image" / "000003.png"
    p.write_bytes(p.read_bytes()[:200])
    msg = _error(scene)
    assert "image/000003.png: cannot read image (truncated?)" in msg


def test_garbage_png(scene):
    (scene / "mask" / "001.png").write_bytes(b"not a png at all")
    assert "mask/001.png: cannot read image" in _error(scene)


def test_mask_size_mismatch(scene):
    Image.fromarray(np.zeros((12, 20), np.uint8)).save(scene / "mask" / "002.png")
    assert "mask/002.png: mask is 20x12 but image is 24x24" in _error(scene)


def test_image_size_mismatch(scene):
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(scene / "image" / "000001.png")
    assert "image/000001.png: image is 20x12" in _error(scene)


def test_npz_without_world_mat(scene):
    mats = dict(np.load(scene / "cameras_sphere.npz"))
    del mats["world_mat_3"]
    np.savez(scene / "cameras_sphere.npz", **mats)
    assert "cameras_sphere.npz: missing world_mat_3" in _error(scene)


def test_corrupt_npz(scene):
    (scene / "cameras_sphere.npz").write_bytes(b"PK\x03\x04 broken")
    assert "cameras_sphere.npz: cannot read camera file" in _error(scene)


def test_image_count_differs_from_camera_count(scene):
    (scene / "image" / "000003.png").unlink()
    assert "cameras_sphere.npz: 4 cameras but the scene has 3 images" in _error(scene)


def test_mask_count_differs(scene):
    (scene / "mask" / "000.png").unlink()
    msg = _error(scene)
    assert "mask: 3 masks but 4 images" in msg


def test_missing_image_folder(scene):
    shutil.rmtree(scene / "image")
    assert "image: folder not found" in _error(scene)


def test_missing_scene_folder_lists_places_and_downloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NFIELDS_DATA", str(tmp_path / "datasets"))
    with pytest.raises(NFieldsError) as e:
        resolve_scene_path("scan_nope")
    msg = str(e.value)
    assert "scan_nope" in msg and str(tmp_path / "datasets" / "scan_nope") in msg
    assert "data/scan_nope" in msg and "../shared/data/scan_nope" in msg
    assert "NeuS" in msg and "nerf_synthetic" in msg
    # A folder that exists but is no known layout.
    (tmp_path / "empty").mkdir()
    assert "unknown scene layout" in _error(tmp_path / "empty")


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "s1").mkdir(parents=True)
    (tmp_path / "env" / "s1").mkdir(parents=True)
    monkeypatch.setenv("NFIELDS_DATA", str(tmp_path / "env"))
    assert resolve_scene_path("s1") == tmp_path / "env" / "s1"
    monkeypatch.delenv("NFIELDS_DATA")
    assert resolve_scene_path("s1").resolve() == (tmp_path / "data" / "s1").resolve()
    if (DATA / "lego").exists():
        monkeypatch.setenv("NFIELDS_DATA", str(DATA))
        assert resolve_scene_path("lego") == DATA / "lego"


def test_bad_json_and_options(tmp_path):
    (tmp_path / "transforms_train.json").write_text("{ not json")
    assert "transforms_train.json: invalid JSON" in _error(tmp_path)
    (tmp_path / "transforms_train.json").write_text(json.dumps({"frames": [{"file_path": "x"}]}))
    assert "transforms_train.json: missing camera_angle_x" in _error(tmp_path)
    (tmp_path / "transforms_train.json").unlink()
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_model": "OPENCV_FISHEYE", "frames": [{}]}))
    assert "transforms.json: frame 0 has no file_path" in _error(tmp_path)
    meta = {"camera_model": "OPENCV_FISHEYE", "w": 4, "h": 4, "fl_x": 4, "frames": [{"file_path": "a.png"}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    assert "transforms.json: camera_model OPENCV_FISHEYE is not supported" in _error(tmp_path)
    assert "downscale must be" in _error(tmp_path, downscale=0)
    assert "background must be" in _error(tmp_path, background=(1.0, 1.0))
