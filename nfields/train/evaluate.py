"""``nfields eval RUN``: every quality figure of a finished run, written to ``RUN/eval.json``.

Always: held-out view PSNR / SSIM (inside the mask for masked scenes) and mask IoU (rendered opacity > 0.5 vs
the mask). For SDF runs on a scene with ground truth (``nfields make-scene`` writes ``gt/``): Chamfer-L1 and
normal error against ``gt/mesh.ply`` (or the analytic demo surface), per-pixel normal MAE against ``gt/normal``,
and for SDF + PBR runs albedo PSNR after per-channel scale alignment (the albedo x light ambiguity; least squares
in linear space, then PSNR in sRGB) over the masked pixels the reconstruction covers (opacity > 0.5, the rendered
albedo divided by its opacity: the material, as the normals are; ``albedo_psnr_composited`` keeps the definition
used until session 27, the albedo composited over black on every masked pixel, which also charges the albedo for
partly covered silhouette pixels) and relit PSNR: the run re-rendered under the scene's
second light (``gt/scene.json``: the same map turned by ``relight_rotation_deg``, times the scene's exposure) with
the aligned albedo, against ``gt/relit``. Everything is measured in the scene's normalised frame, except DTU's
official metric in millimetres (``dtu_gt``: the folder with DTU's ``Points/`` and ``ObsMask/``; see
:mod:`nfields.train.dtu_eval`), reported as ``dtu_accuracy_mm``, ``dtu_completeness_mm`` and ``dtu_chamfer_mm``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nfields.errors import NFieldsError
from nfields.render.shading import linear_to_srgb, srgb_to_linear
from nfields.train.dtu_eval import DENSITY_MM, evaluate_dtu_official, load_dtu_ground_truth, scan_number
from nfields.train.metrics import psnr


def _gt_image(path: Path, shape: tuple[int, int], downscale: int) -> torch.Tensor:
    img = Image.open(path)
    if downscale > 1:
        img = img.resize((shape[1], shape[0]), Image.BOX)
    a = torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)
    return a if a.ndim == 3 else a[..., None]


def albedo_scale(pred_linear: torch.Tensor, gt_linear: torch.Tensor) -> torch.Tensor:
    """Per-channel least-squares factor k (3,) minimising ||k * pred - gt||^2 over the given pixels (M, 3)."""
    return (pred_linear * gt_linear).sum(0) / (pred_linear * pred_linear).sum(0).clamp_min(1e-12)


def normal_mae_deg(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean angle in degrees between unit normals (M, 3)."""
    pred = torch.nn.functional.normalize(pred, dim=-1)
    gt = torch.nn.functional.normalize(gt, dim=-1)
    return float(torch.rad2deg(torch.acos((pred * gt).sum(-1).clamp(-1, 1))).mean())


@torch.no_grad()
def evaluate_run(
    run_dir: str | Path,
    downscale: int = 1,
    mesh_resolution: int = 192,
    dtu_gt: str | Path | None = None,
    dtu_scan: int | None = None,
    dtu_resolution: int = 512,
    dtu_density: float = DENSITY_MM,
) -> dict:
    """Evaluate a run folder (see the module docstring); returns the metrics and writes ``eval.json``.

    dtu_gt: folder with DTU's ground truth for the official metric; dtu_scan: its scan number (default: from the
    scene's name, e.g. ``dtu_scan24``); dtu_resolution: marching cubes for that metric (NeuS evaluates at 512);
    dtu_density: its sample spacing in the ground truth's units (DTU's 0.2 mm)."""
    from nfields.fields.pbr import PBRField
    from nfields.render.envmap import EnvironmentMap
    from nfields.train.render_run import open_run

    run_dir = Path(run_dir)
    trainer = open_run(run_dir)
    gt_dtu = None
    if dtu_gt is not None:
        # Read (and check) the ground truth before the minutes of rendering.
        scan = dtu_scan if dtu_scan is not None else scan_number(trainer.scene.name)
        if scan is None:
            raise NFieldsError(f"scene {trainer.scene.name!r}: no scan number in its name; pass --dtu-scan N")
        if trainer.field.kind != "sdf":
            raise NFieldsError("--dtu-gt: the official DTU metric needs an SDF run (model.kind=sdf)")
        gt_dtu = load_dtu_ground_truth(dtu_gt, scan)
    scene, field, renderer = trainer.scene, trainer.field, trainer.renderer
    scene_dir = Path(scene.root)
    gt_dir = scene_dir / "gt" if scene_dir.name else None
    has_gt = gt_dir is not None and (gt_dir / "scene.json").exists()
    meta = json.loads((gt_dir / "scene.json").read_text()) if has_gt else {}
    is_pbr = isinstance(field, PBRField) and getattr(field, "shading", "") == "pbr"
    ds = max(int(downscale), 1)
    base = trainer.evaluate(save=False)
    out: dict = {"run": str(run_dir), "step": trainer.step, "psnr": base["psnr"], "ssim": base["ssim"]}
    out["masked"] = base["masked"]

    ious, normal_errs, alb_pred, alb_gt, alb_comp, views = [], [], [], [], [], []
    for i in scene.test_ids:
        r = renderer.render_image(scene.cameras, i, background=trainer.background, downscale=ds)
        h, w = r["opacity"].shape
        if scene.masks is not None:
            m = scene.masks[i].float() / 255.0
            if ds > 1:
                m = torch.nn.functional.avg_pool2d(m[None, None, : h * ds, : w * ds], ds)[0, 0]
            m = m > 0.5
            pred_m = r["opacity"] > 0.5
            ious.append(float((m & pred_m).sum() / (m | pred_m).sum().clamp_min(1)))
        else:
            m = torch.ones(h, w, dtype=torch.bool)
        views.append((i, m))
        if has_gt and "normals" in r and (gt_dir / "normal" / f"{i:06d}.png").exists():
            gt_n = _gt_image(gt_dir / "normal" / f"{i:06d}.png", (h, w), ds) * 2 - 1
            both = m & (r["opacity"] > 0.5)
            normal_errs.append(normal_mae_deg(r["normals"][both], gt_n[both]))
        if has_gt and is_pbr:
            field.render_mode = "albedo"
            try:
                ra = renderer.render_image(scene.cameras, i, background=None, downscale=ds)
            finally:
                field.render_mode = "rgb"
            ga = _gt_image(gt_dir / "albedo" / f"{i:06d}.png", (h, w), ds)
            # The material where the reconstruction covers the pixel (like the normals): the composited albedo
            # divided by the opacity; and, as before session 27, composited over black on every masked pixel.
            both = m & (ra["opacity"] > 0.5)
            alb_pred.append(srgb_to_linear((ra["rgb"][both] / ra["opacity"][both, None]).clamp(0, 1)))
            alb_gt.append(srgb_to_linear(ga[both]))
            alb_comp.append((srgb_to_linear(ra["rgb"][m]), srgb_to_linear(ga[m])))
    if ious:
        out["mask_iou"] = float(np.mean(ious))
    if normal_errs:
        out["normal_mae_deg_pixels"] = float(np.mean(normal_errs))
    if alb_pred:
        p, g = torch.cat(alb_pred), torch.cat(alb_gt)
        k = albedo_scale(p, g)
        out["albedo_scale"] = [round(float(v), 4) for v in k]
        out["albedo_psnr"] = psnr(linear_to_srgb(p * k), linear_to_srgb(g))
        pc, gc = (torch.cat(t) for t in zip(*alb_comp))
        out["albedo_psnr_composited"] = psnr(linear_to_srgb(pc * albedo_scale(pc, gc)), linear_to_srgb(gc))
        env_file = Path(meta["envmap"])
        if not env_file.is_absolute() and not env_file.exists():
            env_file = scene_dir / env_file
        if env_file.exists():
            img = EnvironmentMap.from_file(env_file).texels() * float(meta["exposure"])
            field.relight(EnvironmentMap(img, rotation_deg=float(meta["relight_rotation_deg"])))
            field.set_albedo_gain(k)
            try:
                ps = []
                for i, m in views:
                    f = gt_dir / "relit" / f"{i:06d}.png"
                    if f.exists():
                        rr = renderer.render_image(scene.cameras, i, background=None, downscale=ds)["rgb"]
                        ps.append(psnr(rr.clamp(0, 1)[m], _gt_image(f, rr.shape[:2], ds)[m]))
                if ps:
                    out["relit_psnr"] = float(np.mean(ps))
            finally:
                field.relight(None)
                field.set_albedo_gain(None)
    if field.kind == "sdf":
        from nfields.train.geometry_eval import (
            demo_reference_mesh,
            demo_reference_normals,
            evaluate_geometry,
            load_reference_mesh,
        )

        ref, ref_normals = None, None
        if has_gt and (gt_dir / "mesh.ply").exists():
            ref = load_reference_mesh(gt_dir / "mesh.ply")
        elif (has_gt and meta.get("shape") == "demo") or scene.name == "demo":
            ref, ref_normals = demo_reference_mesh(), demo_reference_normals
        if ref is not None:
            train_cams = scene.cameras[list(scene.train_ids)]
            geo = evaluate_geometry(
                field, ref, resolution=mesh_resolution, reference_normals=ref_normals, cameras=train_cams
            )
            out.update({k: v for k, v in geo.items() if isinstance(v, (int, float))})
            diag = float(np.linalg.norm(ref.bounds[1] - ref.bounds[0]))
            if "chamfer_l1" in geo:
                out["chamfer_pct_of_diagonal"] = 100.0 * geo["chamfer_l1"] / diag
    if gt_dtu is not None:
        dtu = evaluate_dtu_official(
            field, scene, gt_dtu, dtu_resolution, dtu_density, save_mesh=run_dir / "eval_dtu_mesh.ply"
        )
        out.update({f"dtu_{k}": v for k, v in dtu.items()})
    out = {k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()}
    tmp = run_dir / ".eval.json.tmp"
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(run_dir / "eval.json")
    return out
