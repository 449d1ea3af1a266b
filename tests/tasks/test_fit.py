"""fit_image / fit_sdf end to end on tiny inputs, the inside test, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from nfields.errors import NFieldsError
from nfields.tasks import FitImage, FitSdf, fit_image, fit_sdf, parse_options
from nfields.tasks.image import main as fit_image_main
from nfields.tasks.sdf import chamfer_l1, inside_mesh, load_mesh

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MLP = {"hidden": 32, "layers": 2, "encoding": "fourier", "n_fourier": 32, "sigma": 2.0}
SDF_FAST = dict(batch=2048, n_train=30_000, n_surface=30_000, eval_points=30_000, eval_res=40, chamfer_points=10_000)


def smooth_image(h: int = 24, w: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([xx, yy, 0.5 + 0.5 * torch.sin(3 * xx + 2 * yy)], -1)


def test_fit_image_tensor_and_protocols():
    img = smooth_image()
    r = fit_image(img, "mlp", MLP, steps=200, lr=3e-3)
    assert r.steps == 200 and r.params == (64 * 32 + 32) + (32 * 32 + 32) + (32 * 3 + 3)
    assert r.psnr > 28 and r.psnr == pytest.approx(r.psnr_train)  # full protocol: train pixels = test pixels
    assert r.peak_mem_mb > 0 and r.seconds > 0 and r.history[-1]["psnr"] == r.psnr
    # every_other trains on 1/4 of the pixels; frequencies beyond that grid's Nyquist limit would alias, so a
    # low-frequency encoding here (Fourier sigma 2 scores ~15 dB on the unseen pixels).
    smooth = {**MLP, "encoding": "positional", "n_freqs": 3}
    eo = fit_image(img, "mlp", smooth, steps=200, lr=3e-3, protocol="every_other")
    assert eo.psnr > 25 and eo.psnr_train > eo.psnr
    assert fit_image(img, "mlp", smooth, steps=50, batch=64).steps == 50


def _lrs_per_step(fit):
    """``fit()``'s result, and the first parameter group's learning rate at each of its optimizer steps."""
    seen = []
    orig = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        result = fit()
    finally:
        torch.optim.Adam.step = orig
    return result, seen


def test_fit_image_lr_milestones():
    """The CAM paper's step decay: lr x0.1 at the given fractions of the run; bad milestones are one-line errors."""
    img = smooth_image()
    r, seen = _lrs_per_step(lambda: fit_image(img, "mlp", MLP, steps=40, lr=3e-3, lr_milestones=(0.5, 0.75)))
    assert r.steps == 40
    assert seen[0] == pytest.approx(3e-3) and seen[25] == pytest.approx(3e-4) and seen[-1] == pytest.approx(3e-5)
    for bad in [(0.0,), (1.5,)]:
        with pytest.raises(NFieldsError, match="milestones"):
            fit_image(img, "mlp", MLP, steps=10, lr_milestones=bad)


def test_fit_image_lr_final_decays_exponentially_to_the_fraction():
    """``lr_final``: the rate decays as lr * lr_final ** (step / steps); bad values are one-line errors."""
    img = smooth_image()
    _, seen = _lrs_per_step(lambda: fit_image(img, "mlp", MLP, steps=40, lr=3e-3, lr_final=0.1))
    assert seen[0] == pytest.approx(3e-3) and seen[20] == pytest.approx(3e-3 * 0.1**0.5, rel=1e-6)
    assert seen[-1] == pytest.approx(3e-3 * 0.1 ** (39 / 40), rel=1e-6)
    for kw in ({"lr_final": 0.0}, {"lr_final": 2.0}, {"lr_final": 0.1, "lr_milestones": (0.5,)}):
        with pytest.raises(NFieldsError, match="lr final"):
            fit_image(img, "mlp", MLP, steps=10, **kw)


def test_fit_image_file_budget_and_fresh(tmp_path, capsys):
    path = tmp_path / "img.png"
    Image.fromarray((smooth_image().numpy() * 255).astype(np.uint8)).save(path)
    r = fit_image(path, "mlp", MLP, steps=10**6, time_budget_s=0.3, eval_at_s=[0.1])
    assert 0 < r.steps < 10**6 and r.seconds < 1.0 and any("psnr" in h for h in r.history[:-1])
    opts = FitImage(image=path, field="mlp", set=["hidden=16", "layers=1", "encoding=fourier"], steps=20, fresh=True)
    res = fit_image_main(opts)
    out = capsys.readouterr().out
    assert res.fresh is not None and res.options["sigma"] == res.fresh.best and len(res.fresh.values) >= 8
    assert "FreSh (fourier): sigma" in out and "psnr" in out and "*" in out


def test_fit_image_bad_inputs(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(NFieldsError, match="cannot read image"):
        fit_image(bad, "mlp", MLP, steps=1)
    with pytest.raises(NFieldsError, match="not found"):
        fit_image(tmp_path / "missing.png", "mlp", MLP, steps=1)
    with pytest.raises(NFieldsError, match="protocol"):
        fit_image(smooth_image(), "mlp", MLP, steps=1, protocol="odd")
    with pytest.raises(NFieldsError, match="unknown field backend"):
        fit_image(smooth_image(), "nope", {}, steps=1)
    with pytest.raises(NFieldsError, match="fresh"):
        fit_image(smooth_image(), "rbf", {}, steps=1, fresh=True)
    with pytest.raises(NFieldsError, match="expected"):
        parse_options(["hidden"])
    assert parse_options(["grid_levels=[4, 8]", "sigma=2.5"]) == {"grid_levels": (4, 8), "sigma": 2.5}


def test_inside_mesh_matches_analytic_shapes():
    p = np.random.default_rng(0).uniform(-1, 1, (20_000, 3))
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    r = np.linalg.norm(p, axis=1)
    far = np.abs(r - 0.7) > 0.01  # the polygonal sphere deviates from the ideal one by < 0.01
    assert np.array_equal(inside_mesh(sphere, p)[far], (r < 0.7)[far])
    box = trimesh.creation.box(extents=(1.0, 0.5, 0.3))
    assert np.array_equal(inside_mesh(box, p), np.all(np.abs(p) < [0.5, 0.25, 0.15], axis=1))


def test_fit_sdf_sphere(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)  # normalised to radius 0.9
    out = tmp_path / "recon.ply"
    opts = {"hidden": 64, "layers": 3, "encoding": "positional", "n_freqs": 4}
    r = fit_sdf(sphere, "mlp", opts, steps=200, out_mesh=out, **SDF_FAST)
    assert r.iou > 0.95 and r.chamfer_l1 < 0.03, r.summary()
    assert r.params > 0 and r.peak_mem_mb > 0 and r.steps == 200
    recon = trimesh.load(out)
    assert len(recon.faces) > 100 and np.abs(np.linalg.norm(recon.vertices, axis=1) - 0.9).mean() < 0.03
    rbf_opts = {"n_rbf": 64, "grid_levels": (4, 8, 16)}
    rbf = fit_sdf(sphere, "rbf", rbf_opts, steps=200, lr=1e-2, lr_final=0.1, **SDF_FAST)  # with lr decay
    assert rbf.iou > 0.9, rbf.summary()


def test_chamfer_of_scaled_sphere():
    a = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    b = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    assert chamfer_l1(a, b, 20_000) == pytest.approx(0.1, abs=0.005)
    # Point-to-surface: a mesh against itself scores 0, with no floor from the sample density.
    assert chamfer_l1(a, a, 20_000) < 1e-6


def test_point_mesh_distance_torch_twin_matches_exact():
    from nfields.data.raycast import _point_mesh_distance_torch, closest_point_on_triangles, point_mesh_distance

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    mesh.apply_scale([1.0, 0.7, 1.3])  # not a sphere: distances are not just | |p| - r |
    rng = np.random.default_rng(0)
    p = rng.uniform(-1, 1, (300, 3)).astype(np.float32)
    tris = torch.from_numpy(np.asarray(mesh.triangles, np.float32))
    q = torch.from_numpy(p).repeat_interleave(len(tris), 0)
    t = tris.repeat(len(p), 1, 1)
    brute = (closest_point_on_triangles(q, t[:, 0], t[:, 1], t[:, 2]) - q).norm(dim=-1).reshape(len(p), -1).min(1)
    assert np.abs(_point_mesh_distance_torch(mesh, p) - brute.values.numpy()).max() < 1e-5
    assert np.abs(point_mesh_distance(mesh, p) - brute.values.numpy()).max() < 1e-5  # open3d when installed


def test_fit_sdf_bad_meshes(tmp_path):
    with pytest.raises(NFieldsError, match="not found"):
        fit_sdf(tmp_path / "nope.obj", "mlp", MLP, steps=1)
    with pytest.raises(NFieldsError, match="lr-final"):
        fit_sdf(tmp_path / "nope.obj", "mlp", MLP, steps=1, lr_final=0.0)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing\n")
    with pytest.raises(NFieldsError, match="(no triangles|cannot read)"):
        fit_sdf(empty, "mlp", MLP, steps=1)
    open_mesh = trimesh.creation.icosphere(subdivisions=1)
    open_mesh.update_faces(np.arange(len(open_mesh.faces)) > 0)  # drop one triangle: a hole
    with pytest.raises(NFieldsError, match="watertight"):
        load_mesh(open_mesh)
    assert FitSdf(mesh=Path("x.obj")).eval_res == 128


def test_fit_sdf_real_mesh_loads():
    path = DATA / "meshes" / "bunny.obj"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (clone beside ../shared/data, as CI does)")
    m = load_mesh(path)
    assert np.max(m.extents) == pytest.approx(1.8) and np.abs(m.bounds).max() <= 0.9 + 1e-9
    p = np.random.default_rng(0).uniform(-1, 1, (5000, 3))
    frac = inside_mesh(m, p).mean()
    assert frac * 8 == pytest.approx(m.volume, rel=0.1)  # Monte-Carlo volume vs trimesh's exact volume
