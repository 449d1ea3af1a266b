"""``nfields export RUN``: a run folder -> GLB / OBJ / PLY through the real CLI, on tiny demo runs of both field kinds.

The runs are made in-process (no subprocess start-up): an SDF run at step 0 (its sphere initialisation already has
a surface) and a density run trained for a few steps (exported at a low --level: a few steps do not make a dense
surface). Quality is not the point here; the pipeline, the files and the error handling are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from nfields.cli import entrypoint
from nfields.errors import NFieldsError

NFIELDS = [sys.executable, "-m", "nfields.cli"]
SMALL = ["--resolution", "48", "--texture-size", "128"]
FAST = ["data.downscale=4", "train.batch_rays=256", "train.eval_views=1", "train.ckpt_every=10"]


def run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(NFIELDS + args, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


def make_run(out: Path, name: str, kind: str, steps: int) -> Path:
    """A demo run of ``kind`` with a checkpoint after ``steps`` training steps (0 = the initial field)."""
    from nfields.config import build_config
    from nfields.train.checkpoint import new_run_dir
    from nfields.train.trainer import Trainer

    cfg = build_config("demo", None, "tiny", [f"train.steps={max(steps, 1)}", *FAST])
    if not hasattr(cfg.model, "kind"):
        if kind != "density":
            pytest.skip("this checkout has no model.kind (SDF training not here yet)")
    else:
        cfg.model.kind = kind
    run_dir = new_run_dir(out, name)
    cfg.name = run_dir.name
    trainer = Trainer(cfg, run_dir, progress=False)
    if steps > 0:
        trainer.train()
    else:
        trainer.save()
    return run_dir


def density_level(run_dir: Path) -> str:
    """Half the largest density of a barely trained run (its densities are far below the default level)."""
    from nfields.train.render_run import open_run

    field = open_run(run_dir).field
    with torch.no_grad():
        x = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return f"{0.5 * float(field.density(x * 0.8).max()):.4g}"


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    # conftest's autouse cache fixture is per test; module fixtures build scenes before it, so set the same path.
    cache = os.environ.get("NFIELDS_TEST_CACHE", str(tmp_path_factory.getbasetemp() / "nfields_cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NFIELDS_CACHE", cache)
        yield cache


@pytest.fixture(scope="module")
def sdf_run(cache_env, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "sdf", "sdf", steps=0)


@pytest.fixture(scope="module")
def density_run(cache_env, tmp_path_factory) -> tuple[Path, str]:
    run_dir = make_run(tmp_path_factory.mktemp("runs"), "density", "density", steps=10)
    return run_dir, density_level(run_dir)


def test_export_glb_validates_and_has_pbr_textures(sdf_run, tmp_path):
    out = tmp_path / "mesh.glb"
    proc = run_cli(["export", str(sdf_run), "--format", "glb", *SMALL, "--decimate", "3000", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert f"exported {out}: " in proc.stdout and " faces" in proc.stdout
    assert "roughness 1, metallic 0" in proc.stdout  # no PBR head: albedo from colour, said so
    loaded = trimesh.load(out)
    (mesh,) = loaded.geometry.values()
    assert 1000 < len(mesh.faces) <= 3000  # decimated
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    assert np.isfinite(mesh.vertex_normals).all()
    mat = mesh.visual.material
    assert isinstance(mat, trimesh.visual.material.PBRMaterial)
    for image in (mat.baseColorTexture, mat.metallicRoughnessTexture, mat.normalTexture):
        assert image is not None and image.size == (128, 128)
    orm = np.asarray(mat.metallicRoughnessTexture.convert("RGB"))
    assert (orm[..., 1] == 255).all() and (orm[..., 2] == 0).all()  # roughness 1, metallic 0
    # The demo's scale_mat (x1.5, offset (0.2, -0.1, 0.3)) is applied; GLB is y-up: (x, y, z) -> (x, z, -y).
    centre = mesh.bounds.mean(0)
    np.testing.assert_allclose([centre[0], -centre[2], centre[1]], [0.2, -0.1, 0.3], atol=0.15)

    from nfields.export.validate import find_gltf_validator, validate_gltf

    try:
        find_gltf_validator()
    except NFieldsError as e:
        pytest.skip(f"glTF validator unavailable: {e}")
    report = validate_gltf(out)
    assert (report["errors"], report["warnings"]) == (0, 0), report["messages"][:5]


def test_export_obj_mtl_has_pbr_keys(density_run, tmp_path):
    run_dir, level = density_run
    out = tmp_path / "obj" / "mesh.obj"
    proc = run_cli(["export", str(run_dir), "--format", "obj", "--level", level, *SMALL, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    keys = {ln.split()[0] for ln in (out.parent / "mesh.mtl").read_text().splitlines() if ln and ln[0] != "#"}
    assert {"Pr", "Pm", "map_Kd", "map_Pr", "map_Pm"} <= keys
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "mesh.mtl",
        "mesh.obj",
        "mesh_albedo.png",
        "mesh_metallic.png",
        "mesh_normal.png",
        "mesh_roughness.png",
    ]
    loaded = trimesh.load(out, process=False)
    assert len(loaded.faces) > 100 and loaded.visual.uv.shape == (len(loaded.vertices), 2)


def test_export_ply_vertex_colors_default_path(density_run):
    run_dir, level = density_run
    proc = run_cli(["export", str(run_dir), "--format", "ply", "--level", level, "--resolution", "48"])
    assert proc.returncode == 0, proc.stderr
    path = run_dir / "export" / "mesh.ply"
    loaded = trimesh.load(path, process=False)
    assert len(loaded.faces) > 100
    colors = np.asarray(loaded.visual.vertex_colors)
    assert colors.shape == (len(loaded.vertices), 4) and colors[:, :3].std() > 0
    # Original coordinates: the normalised aabb (plus the marching margin of 4 cells) mapped by the demo's scale_mat.
    offset, scale = np.array([0.2, -0.1, 0.3]), 1.5
    assert np.all(np.abs(loaded.bounds - offset) <= scale * (1.0 + 8.0 / 47))


def test_export_bad_input_is_one_line_exit_2(sdf_run, tmp_path, capsys):
    proc = run_cli(["export", str(tmp_path / "missing")], timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"nfields: error: {tmp_path / 'missing'}: no such run folder"]

    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(sdf_run / "config.yaml", no_ckpt / "config.yaml")
    cases = [
        (["export", str(sdf_run), "--format", "stl"], "unknown format 'stl'"),
        (["export", str(no_ckpt)], "no checkpoint"),
        (["export", str(sdf_run), "--out", str(tmp_path / "x.obj")], "must end in .glb"),
    ]
    for args, needle in cases:
        assert entrypoint(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_material_callback_uses_the_pbr_head_when_there_is_one():
    from nfields.export.run_export import material_fn_for, surface_normals_and_features
    from nfields.fields.sdf import SDFField

    aabb = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    x = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), dim=-1) * 0.5
    sdf = SDFField(aabb, network="mlp")
    fn, kind = material_fn_for(sdf)
    out = fn(x)
    assert kind == "color" and (out["roughness"] == 1).all() and (out["metallic"] == 0).all()
    assert torch.allclose(out["normal"].norm(dim=-1), torch.ones(64), atol=1e-5)
    try:
        from nfields.fields.pbr import PBRField
    except ImportError:
        pytest.skip("no PBRField in this checkout")
    pbr = PBRField(aabb, network="mlp")
    fn, kind = material_fn_for(pbr)
    out = fn(x)
    _, feat = surface_normals_and_features(pbr, x)
    albedo, rough, metal = pbr.materials(feat)
    assert kind == "field"
    for key, want in [("albedo", albedo), ("roughness", rough), ("metallic", metal)]:
        torch.testing.assert_close(out[key], want.detach())
