"""SDF (NeuS-style) training: a tiny demo reconstruction beats Chamfer and PSNR bars; SDFField at its sphere
initialisation renders the analytic depth and normals; the geometry evaluation scores an exact surface near zero."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from nfields.config import build_config
from nfields.errors import NFieldsError
from nfields.export.marching import extract_mesh
from nfields.fields.base import param_groups
from nfields.fields.sdf import SDFField
from nfields.render.rays_box import ray_sphere_intersect
from nfields.render.renderer import RenderConfig, Renderer
from nfields.train.geometry_eval import evaluate_geometry
from nfields.train.trainer import Trainer, build_field
from nfields.types import Rays


class _Zero(nn.Module):
    """A network that outputs zeros: SDFField then is exactly its initial sphere."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.dummy = nn.Parameter(torch.zeros(()))  # so the field has a parameter the graph can reach

    def forward(self, x):
        return torch.zeros(len(x), self.out_dim, device=x.device) + 0.0 * self.dummy


def _sphere_field(normals: str, radius: float = 0.5) -> SDFField:
    field = SDFField([-1, -1, -1, 1, 1, 1], network="mlp", init_radius=radius, normals=normals, geo_feat_dim=4)
    field.net = _Zero(1 + 4)
    with torch.no_grad():
        field.variance.fill_(0.7)  # s = exp(7) ~ 1100: a sharp surface
    return field


def test_tiny_demo_sdf_run_beats_chamfer_and_psnr_bars(tmp_path):
    # One thread: on a busy 2-core machine two OpenMP threads were measured ~10x slower per step than one.
    cfg = build_config("demo", None, "tiny", ["train.threads=1"])
    assert cfg.model.kind == "sdf"
    t0 = time.perf_counter()
    trainer = Trainer(cfg, tmp_path, progress=False)
    result = trainer.train()
    seconds = time.perf_counter() - t0
    assert trainer.field.kind == "sdf" and trainer.field.cos_anneal_ratio == 1.0
    # Measured (300 steps, 100x100 views, ~43 s training on 1 thread): Chamfer-L1 0.018 (normalised units; the
    # object spans ~1.5), normal error 20 deg, masked held-out PSNR 22.7 dB; the initial sphere scores 0.099, 40 deg.
    assert result["chamfer_l1"] < 0.028, result
    assert result["normal_mae_deg"] < 30.0, result
    assert result["psnr"] > 21.0, result
    assert seconds < 240, seconds  # ~60 s on an idle machine; generous for a shared CI box
    # The run folder has what a density run has, plus the mesh and a geometry record.
    assert list((tmp_path / "ckpt").glob("step_*.pt"))
    assert (tmp_path / "renders" / "step_0000300" / "mesh.ply").exists()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert any('"geometry": true' in x for x in lines)
    # Resume continues from the checkpoint with the SDF field (inv_s learned, not the initial value).
    again = Trainer(cfg, tmp_path, resume=True, progress=False)
    assert again.step == 300
    assert again.field.inv_s().item() == pytest.approx(trainer.field.inv_s().item())


@pytest.mark.parametrize("normals", ["analytic", "finite_difference"])
def test_sdf_field_sphere_renders_analytic_depth_and_normals(normals):
    field = _sphere_field(normals)
    field.min_shell_width = 0.11  # a 32-cell grid's cell diagonal (0.108): one grid update finds every surface cell
    r = Renderer(field, RenderConfig(n_steps=512, grid_resolution=32, stratified=False))
    r.update_grid(0)
    r.eval()
    g = torch.Generator().manual_seed(0)
    o = torch.tensor([0.2, 0.3, -2.5]).expand(200, 3).contiguous()
    d = (torch.rand(200, 3, generator=g) - 0.5) * 1.4 - o
    d = d / d.norm(dim=-1, keepdim=True)
    out = r(Rays(o, d))
    t0, _, hit = ray_sphere_intersect(o, d, torch.zeros(3), 0.5)
    closest = (o - (o * d).sum(-1, keepdim=True) * d).norm(dim=-1)
    clear = hit & (closest < 0.4)
    assert int(clear.sum()) > 40
    assert (out.opacity[clear] > 0.99).all()
    assert (out.depth[clear] - t0[clear]).abs().max().item() < 0.01
    n_true = torch.nn.functional.normalize(o[clear] + t0[clear, None] * d[clear], dim=-1)
    n = torch.nn.functional.normalize(out.normals[clear], dim=-1)
    assert torch.rad2deg(torch.acos((n * n_true).sum(-1).clamp(-1, 1))).max().item() < 2.0
    assert out.opacity[~hit & (closest > 0.6)].max().item() < 1e-3


def test_geometry_eval_scores_exact_sphere_near_zero():
    field = _sphere_field("analytic", radius=0.5)
    reference = extract_mesh(lambda x: x.norm(dim=-1) - 0.5, [-0.6, -0.6, -0.6, 0.6, 0.6, 0.6], resolution=96)
    geo = evaluate_geometry(field, reference, resolution=64, n_points=20_000)
    assert geo["chamfer_l1"] < 0.01, geo  # the sampling floor at 20k points is ~0.006
    assert geo["normal_mae_deg"] < 1.0, geo
    # A sphere of the wrong radius is off by the radius difference.
    geo = evaluate_geometry(_sphere_field("analytic", radius=0.55), reference, resolution=64, n_points=20_000)
    assert math.isclose(geo["chamfer_l1"], 0.05, abs_tol=0.01), geo
    # No zero crossing in the box: an infinite distance, not a crash.
    geo = evaluate_geometry(_sphere_field("analytic", radius=3.0), reference, resolution=16, n_points=1000)
    assert geo["chamfer_l1"] == math.inf and geo["mesh_faces"] == 0


def test_unknown_model_kind_is_one_line_error():
    cfg = build_config("demo", None, "tiny", ["model.kind=voxels"])
    with pytest.raises(NFieldsError, match="model.kind 'voxels'.*valid: density, sdf"):
        build_field(cfg, torch.tensor([-1.0, -1, -1, 1, 1, 1]))


def test_reflected_colour_head_sees_the_mirrored_ray():
    aabb = [-1.0, -1, -1, 1, 1, 1]
    torch.manual_seed(0)
    view = SDFField(aabb, network="mlp", color_dirs="view")
    refl = SDFField(aabb, network="mlp", color_dirs="reflected")
    refl.load_state_dict(view.state_dict())
    n = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    feat = torch.randn(64, view.color_net[0].in_features - 3 - view.dir_enc.out_dim)
    mirrored = d - 2 * (d * n).sum(-1, keepdim=True) * n
    assert torch.allclose(refl.color(feat, d, n), view.color(feat, mirrored, n), atol=1e-6)
    assert not torch.allclose(refl.color(feat, d, n), view.color(feat, d, n), atol=1e-3)
    # Gradients reach the normals through the mirrored direction (what straightens glossy surfaces).
    n.requires_grad_(True)
    refl.color(feat, d, n).sum().backward()
    assert n.grad.abs().sum() > 0
    cfg = build_config("demo", None, "tiny", ["model.sdf_color_dirs=mirror"])
    with pytest.raises(NFieldsError, match="model.sdf_color_dirs 'mirror'.*valid: view, reflected, none"):
        build_field(cfg, torch.tensor(aabb))


def test_view_independent_colour_head_ignores_the_ray():
    torch.manual_seed(0)
    field = SDFField([-1.0, -1, -1, 1, 1, 1], network="mlp", color_dirs="none")
    n = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    d1, d2 = (torch.nn.functional.normalize(torch.randn(64, 3), dim=-1) for _ in range(2))
    feat = torch.randn(64, field.color_net[0].in_features - 3 - field.dir_enc.out_dim)
    assert torch.equal(field.color(feat, d1, n), field.color(feat, d2, n))
    assert not torch.allclose(field.color(feat, d1, n), field.color(feat, d1, -n), atol=1e-4)  # still sees the normal


def test_coarse_to_fine_activates_hash_levels_on_schedule(tmp_path):
    cfg = build_config("demo", "hashgrid", "tiny", ["train.coarse_to_fine_steps=100", "train.coarse_to_fine_start=2"])
    trainer = Trainer(cfg, tmp_path, progress=False)
    (enc,) = trainer._grid_encodings()
    seen = []
    for step in (0, 50, 99, 100, 500):
        trainer.step = step
        trainer.update_stage()
        seen.append(enc.active_levels)
    assert seen[0] == 2 and seen[-1] == seen[-2] == enc.levels
    assert seen == sorted(seen) and seen[1] == 2 + (enc.levels - 2) // 2
    # Inactive levels encode as zeros and get no gradient; active ones equal the full encoding.
    trainer.step = 0
    trainer.update_stage()
    x = torch.rand(64, 3)
    part = enc(x)
    enc.active_levels = enc.levels
    full = enc(x)
    f = enc.features_per_level
    assert torch.equal(part[:, : 2 * f], full[:, : 2 * f]) and not part[:, 2 * f :].any()
    # The curvature prior (train.normal_smoothness) is logged and trains the geometry through the double backward.
    trainer.cfg.train.normal_smoothness = 0.1
    stats = trainer.train_step()
    assert 0.0 < stats["normal_smoothness"] < 2.0
    # train.normal_smoothness_final: the weight moves linearly to that fraction over the run.
    trainer.cfg.train.normal_smoothness_final = 0.2
    weights = []
    for step in (trainer.cfg.train.warmup_steps, (trainer.cfg.train.warmup_steps + trainer.cfg.train.steps) // 2):
        trainer.step = step
        weights.append(trainer.normal_smoothness_weight())
    trainer.step = trainer.cfg.train.steps
    weights.append(trainer.normal_smoothness_weight())
    assert weights == pytest.approx([0.1, 0.06, 0.02], abs=1e-3), weights
    trainer.cfg.train.normal_smoothness_final = 1.0
    trainer.field.zero_grad()
    p = torch.nn.functional.normalize(torch.randn(256, 3), dim=-1) * 0.5
    trainer.normal_smoothness_term(p).backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in trainer.field.net.parameters())


def test_finite_difference_step_follows_the_active_hash_level():
    aabb = [-1.0, -1, -1, 1, 1, 1]
    opts = dict(levels=4, log2_table=12, base_res=4, finest_res=32, hidden=16, layers=1)
    field = SDFField(aabb, network="hashgrid", network_options=opts, normals="finite_difference", fd_eps=0.0)
    enc = next(m for m in field.net.modules() if hasattr(m, "active_levels"))
    assert field.finite_difference_eps() == pytest.approx(2.0 / 32)  # one finest cell of the 2-wide box
    enc.active_levels = 2
    assert field.finite_difference_eps() == pytest.approx(2.0 / enc.resolutions[1])
    x = torch.rand(32, 3) - 0.5
    sdf, _, grad = field.geometry_and_gradient(x)
    e = 2.0 / enc.resolutions[1]
    fd_x = (field.sdf(x + torch.tensor([e, 0, 0])) - field.sdf(x - torch.tensor([e, 0, 0]))) / (2 * e)
    assert torch.allclose(grad[:, 0], fd_x, atol=1e-5)
    assert SDFField(aabb, network="mlp", fd_eps=0.01).finite_difference_eps() == 0.01
    cfg = build_config("demo", None, "tiny", ["model.sdf_fd_eps=-1"])
    with pytest.raises(NFieldsError, match="model.sdf_fd_eps -1"):
        build_field(cfg, torch.tensor(aabb))


def test_light_has_its_own_learning_rate():
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    cfg = build_config("demo", None, "tiny", ["model.shading=pbr", "model.env_lr_mult=5"])
    field = build_field(cfg, aabb)
    groups = param_groups(field, 0.01)
    light = [g for g in groups if any(p is field.env.log_radiance for p in g["params"])]
    assert len(light) == 1 and light[0]["lr"] == pytest.approx(0.05) and len(light[0]["params"]) == 1
    assert all(g["lr"] == pytest.approx(0.01) for g in groups if g is not light[0])
    cfg = build_config("demo", None, "tiny", ["model.shading=pbr", "model.env_lr_mult=0"])
    with pytest.raises(NFieldsError, match="model.env_lr_mult 0"):
        build_field(cfg, aabb)
    # A pyramid light: every level in the light's one group.
    cfg = build_config("demo", None, "tiny", ["model.shading=pbr", "model.env_levels=3"])
    field = build_field(cfg, aabb)
    (light,) = [g for g in param_groups(field, 0.01) if g.get("light")]
    assert [tuple(p.shape) for p in light["params"]] == [(16, 32, 3), (8, 16, 3), (4, 8, 3)]
    for bad in ("model.env_levels=0", "model.env_levels=6"):
        with pytest.raises(NFieldsError, match="model.env_levels"):
            build_field(build_config("demo", None, "tiny", ["model.shading=pbr", bad]), aabb)
    with pytest.raises(NFieldsError, match="train.light_chroma_along 'v'.*valid: uv, u"):
        build_field(build_config("demo", None, "tiny", ["model.shading=pbr", "train.light_chroma_along=v"]), aabb)
    with pytest.raises(NFieldsError, match="model.detach_color_normals 'geometry'.*valid: none, neural, all"):
        build_field(build_config("demo", None, "tiny", ["model.detach_color_normals=geometry"]), aabb)
    cfg = build_config("demo", None, "tiny", ["model.shading=pbr", "train.light_warmup_steps=-1"])
    with pytest.raises(NFieldsError, match="train.light_warmup_steps -1"):
        build_field(cfg, aabb)


def test_seen_surface_is_the_cap_a_camera_sees():
    """One camera at distance 3 sees the cap of a radius-0.5 sphere: a (1 - r/d) / 2 = 5/12 share of its area; a
    second sphere between them hides part of it."""
    import numpy as np
    import trimesh

    from nfields.data.cameras import Cameras
    from nfields.train.geometry_eval import seen_by_cameras

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    p, _ = trimesh.sample.sample_surface(sphere, 20_000, seed=0)
    x = torch.as_tensor(np.asarray(p), dtype=torch.float32)
    n = torch.nn.functional.normalize(x, dim=-1)
    # OpenCV camera at +z*3 looking down -z: x right, y down, z forward = (1, 0, 0), (0, -1, 0), (0, 0, -1).
    c2w = torch.tensor([[[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 3]]])
    K = torch.tensor([[[200.0, 0, 100], [0, 200, 100], [0, 0, 1]]])
    cams = Cameras(K=K, c2w=c2w, width=200, height=200)
    seen = seen_by_cameras(sphere, x, n, cams)
    assert math.isclose(seen.float().mean().item(), 5 / 12, abs_tol=0.01)
    assert (x[seen, 2] > 0.5**2 / 3 - 0.01).all()  # only the cap above z = r^2 / d
    # A blocker between the camera and the sphere's top hides the points behind it.
    blocker = trimesh.creation.icosphere(subdivisions=3, radius=0.2)
    blocker.apply_translation([0, 0, 1.5])
    hidden = seen_by_cameras(trimesh.util.concatenate([sphere, blocker]), x, n, cams)
    assert hidden.sum() < seen.sum() and not hidden[(x[:, :2].norm(dim=-1) < 0.05) & (x[:, 2] > 0)].any()


def test_second_order_normal_prior_leaves_constant_curvature_alone():
    """On an exact sphere the first difference of the normals costs ~|delta| / r; the second difference is ~0, so
    the order-2 prior does not flatten true curvature. A bumpy sphere costs under both."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(2048, 3), dim=-1) * 0.5
    cfg = build_config("demo", "mlp", "tiny")
    stub = SimpleNamespace(field=_sphere_field("analytic", radius=0.5), cfg=cfg)
    first = Trainer.normal_smoothness_term(stub, p).item()
    cfg.train.normal_smoothness_order = 2
    second = Trainer.normal_smoothness_term(stub, p).item()
    assert 0.015 < first < 0.05 and second < 0.002, (first, second)  # E|delta_t| / r = 0.01 * 1.25 / 0.5 = 0.025

    class _Bumps(nn.Module):
        def forward(self, x):
            bump = 0.01 * torch.sin(40 * x).prod(-1, keepdim=True)
            return torch.cat([bump, torch.zeros(len(x), 4)], -1)

    stub.field.net = _Bumps()
    assert Trainer.normal_smoothness_term(stub, p).item() > 10 * second
    with pytest.raises(NFieldsError, match="normal_smoothness_order"):
        build_field(build_config("demo", "mlp", "tiny", ["train.normal_smoothness_order=3"]), [-1, -1, -1, 1, 1, 1])
    with pytest.raises(NFieldsError, match=r"normal_smoothness_final 1.5: must be in \[0, 1\]"):
        build_field(build_config("demo", "mlp", "tiny", ["train.normal_smoothness_final=1.5"]), [-1, -1, -1, 1, 1, 1])
    with pytest.raises(NFieldsError, match="normal_smoothness_eps 0.0: must be > 0"):
        build_field(build_config("demo", "mlp", "tiny", ["train.normal_smoothness_eps=0"]), [-1, -1, -1, 1, 1, 1])


def test_sun_lobe_is_extracted_once_into_the_pbr_stage(tmp_path):
    """model.env_sun_after: the light's brightest spot moves into its sun lobe that many steps into the PBR stage,
    once (a resumed trainer sees the lobe already on); the lobe trains in the light's group; < 0 is refused."""
    cfg = build_config("demo", "hashgrid", "tiny", ["model.shading=pbr", "train.pbr_start=5", "model.env_sun_after=3"])
    trainer = Trainer(cfg, tmp_path, progress=False)
    env = trainer.field.env
    (light,) = [g for g in param_groups(trainer.field, 0.01) if g.get("light")]
    assert any(p is env.sun_dir for p in light["params"])
    with torch.no_grad():
        env.log_radiance[4, 10] += math.log(50.0)  # a sun the light has found
    for step in (0, 5, 7):
        trainer.step = step
        trainer.update_stage()
        assert not bool(env.sun_on)
    trainer.step = 8
    trainer.update_stage()
    assert bool(env.sun_on)
    want = torch.nn.functional.normalize(env.texel_dirs[4, 10], dim=0) @ env.world_to_map
    assert float(env.sun_direction() @ want) > 0.99
    power = env.sun_log_power.detach().exp()
    with torch.no_grad():
        env.sun_log_power.add_(1.0)  # the lobe learns on; a later step must not extract again
    trainer.step = 9
    trainer.update_stage()
    assert torch.allclose(env.sun_log_power.detach().exp(), power * math.e)
    with pytest.raises(NFieldsError, match="model.env_sun_after -1"):
        build_field(build_config("demo", None, "tiny", ["model.shading=pbr", "model.env_sun_after=-1"]), torch.zeros(6))
