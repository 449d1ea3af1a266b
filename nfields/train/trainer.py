"""The trainer: data -> rays -> renderer -> loss -> Adam, with durable run folders.

``model.kind`` picks the field: ``density`` (a radiance field) or ``sdf`` (a NeuS-style signed distance field,
trained with the Eikonal and mask losses and NeuS's cos-anneal; on a scene with a known surface the final
evaluation adds Chamfer-L1 and normal error, see :mod:`nfields.train.geometry_eval`).

Example::

    from nfields.config import build_config
    from nfields.train.trainer import Trainer
    cfg = build_config("lego", "hashgrid", "tiny")
    trainer = Trainer(cfg, run_dir=new_run_dir(Path("runs"), "lego"))
    result = trainer.train()          # {"psnr": ..., "ssim": ..., ...} on held-out views
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nfields.config import MODEL_KINDS, SHADINGS, RunConfig, save_config
from nfields.data import load_scene
from nfields.data.rays import RayBatcher
from nfields.errors import NFieldsError
from nfields.fields import count_parameters, param_groups
from nfields.fields.capture import ViewGain
from nfields.fields.radiance import RadianceField
from nfields.fields.sdf import COLOR_DIRS, DETACH_COLOR_NORMALS, SDFField, eikonal_loss
from nfields.render.envmap import CHROMA_ALONG
from nfields.render.renderer import Renderer
from nfields.render.shading import linear_to_srgb
from nfields.train.checkpoint import MetricsLog, list_checkpoints, load_checkpoint, save_checkpoint
from nfields.train.metrics import psnr, ssim

MAX_BAD_STEPS = 20


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_png(path: Path, img: torch.Tensor) -> None:
    """Save a float (H, W, 3|1) image in [0, 1] as PNG."""
    from PIL import Image

    arr = (img.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    Image.fromarray(arr).save(path)


def colorize_depth(depth: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    """Depth (H, W) -> grey (H, W, 3), normalised over pixels with opacity > 0.5 (near bright)."""
    m = opacity > 0.5
    if m.any():
        lo, hi = depth[m].min(), depth[m].max()
        d = 1 - ((depth - lo) / (hi - lo + 1e-8)).clamp(0, 1)
    else:
        d = torch.zeros_like(depth)
    return (d * m).unsqueeze(-1).expand(*depth.shape, 3)


class Trainer:
    """Trains a radiance field or an SDF field (``cfg.model.kind``) on a scene and writes a run folder.

    ``run_dir`` must exist (see :func:`nfields.train.checkpoint.new_run_dir`); with ``resume=True`` the newest
    checkpoint in it is loaded and training continues from its step. ``viewer`` (optional) is any object with
    ``paused``, ``log_metrics(step, dict)`` and ``request_refresh()``.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        resume: bool = False,
        progress: bool = True,
        viewer=None,
        read_only: bool = False,
    ):
        """Set up (or, with ``resume``, continue) the run in ``run_dir``. ``read_only`` opens a finished run at
        its last checkpoint for rendering / evaluation / export and writes nothing to the run folder (no metrics,
        no config)."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.viewer = viewer
        self.read_only = read_only
        # Held for a whole training step (and while checkpointing / evaluating): a viewer thread renders between
        # steps, never while the renderer is mid-forward in training mode (it flips the renderer to eval mode and the
        # field's render mode / light, which would change how the step's graph is built). Re-entrant.
        self.lock = threading.RLock()
        t = cfg.train
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        seed_everything(t.seed)

        d = cfg.data
        self.scene = load_scene(
            d.scene, downscale=d.downscale, holdout_every=d.holdout_every, background=d.background,
            max_views=d.max_views,
        )  # fmt: skip
        self.use_masks = d.use_masks and self.scene.masks is not None
        # RGBA scenes (NeRF-synthetic) come composited on a known background: the render is composited on the same
        # one and scored on the full image (the standard protocol); alpha still supervises opacity. Scenes with
        # separate masks (DTU) are scored inside the mask, on black.
        self.composited = self.scene.background is not None
        if self.composited:
            bg = torch.as_tensor(self.scene.background, dtype=torch.float32)
        else:
            bg = torch.zeros(3)
        self.background = bg

        self.field = build_field(cfg, self.scene.aabb)
        if cfg.model.view_gain:
            # Part of the field's state (saved and resumed with it), used only by the training loss.
            self.field.view_gain = ViewGain(len(self.scene.images), self.scene.train_ids)
        self.renderer = Renderer(self.field, cfg.render, near=self.scene.near, far=self.scene.far)
        groups = param_groups(self.field, t.lr)
        stage_params = {id(p) for p in getattr(self.field, "stage_parameters", lambda: [])()}
        if stage_params:
            # Material head and light: trained from the start of the PBR stage on their own schedule (below).
            # The light's own group (LearnedEnvironment.param_groups) carries "light": True.
            split = []
            for g in groups:
                own = [p for p in g["params"] if id(p) in stage_params]
                rest = [p for p in g["params"] if id(p) not in stage_params]
                split += [{**g, "params": rest}] if rest else []
                split += [{"light": False, **g, "params": own, "stage": "pbr"}] if own else []
            groups = split
        self.optimizer = torch.optim.Adam(groups, lr=t.lr, eps=1e-15)
        self.elapsed = 0.0
        self.pbr_start_progress: float | None = None
        log_final = math.log(max(t.lr_final_ratio, 1e-8))

        def schedule(step: int) -> float:
            if step < t.warmup_steps:
                return 0.01 + 0.99 * step / max(t.warmup_steps, 1)
            return math.exp(log_final * self.schedule_progress(step))

        def stage_schedule(step: int) -> float:
            # Full lr when the PBR stage starts, decaying to lr_final_ratio over what is left of the run.
            p0 = self.pbr_start_progress
            if p0 is None:
                return 1.0
            return math.exp(log_final * min(max((self.schedule_progress(step) - p0) / max(1.0 - p0, 1e-6), 0.0), 1.0))

        def held(step: int) -> bool:
            # The light's warm-up: the first light_warmup_steps of the PBR stage train only the light.
            return t.pbr_start <= step < t.pbr_start + t.light_warmup_steps

        def group_schedule(g: dict):
            base = stage_schedule if g.get("stage") == "pbr" else schedule
            if g.get("light") or t.light_warmup_steps <= 0 or not stage_params:
                return base
            return lambda step: 0.0 if held(step) else base(step)

        lambdas = [group_schedule(g) for g in self.optimizer.param_groups]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambdas)
        self.batcher = RayBatcher(self.scene, self.scene.train_ids, t.batch_rays, seed=t.seed)
        self.n_rays = t.batch_rays
        self.step = 0
        self.lr_scale = 1.0
        self.bad_steps = 0
        self.n_params = count_parameters(self.field)

        self.metrics: MetricsLog | None = None
        if resume or read_only:
            ckpts = list_checkpoints(self.run_dir)
            if not ckpts:
                what = "the run" if read_only else "--resume given but the run"
                raise NFieldsError(f"{self.run_dir}: {what} has no checkpoint")
            self.load_state(load_checkpoint(ckpts[-1]))
            if not read_only:
                self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=self.step)
        else:
            save_config(cfg, self.run_dir / "config.yaml")
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        if not read_only:
            (self.run_dir / "renders").mkdir(exist_ok=True)
        self.update_stage()

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly: model, grid, optimizer, schedule, data RNG, counters."""
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "n_rays": self.n_rays,
            "lr_scale": self.lr_scale,
            "pbr_start_progress": self.pbr_start_progress,
            "renderer": self.renderer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "batcher": self.batcher.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.renderer.load_state_dict(state["renderer"])
        if not self.read_only:
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except ValueError as e:  # e.g. a checkpoint written before the PBR parameters had their own group
                raise NFieldsError(f"{self.run_dir}: cannot resume, the checkpoint's optimizer differs ({e})") from None
            self.scheduler.load_state_dict(state["scheduler"])
        self.batcher.load_state_dict(state["batcher"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.n_rays = int(state["n_rays"])
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.pbr_start_progress = state.get("pbr_start_progress")

    def save(self) -> Path:
        """Write a checkpoint of the current step (atomic)."""
        with self.lock:
            return save_checkpoint(self.run_dir, self.step, self.state_dict())

    # ----------------------------------------------------------------------------------------------- training
    @property
    def is_sdf(self) -> bool:
        """True when the field is a signed distance field."""
        return self.field.kind == "sdf"

    def schedule_progress(self, step: int) -> float:
        """How far the run is, in [0, 1], for the learning-rate decay: the larger of the step fraction (after
        warm-up) and, with a time budget, the fraction of it spent -- so a run stopped by its budget has annealed
        too, instead of ending at a high learning rate partway down a schedule made for ``train.steps``."""
        t = self.cfg.train
        p = (step - t.warmup_steps) / max(t.steps - t.warmup_steps, 1)
        if t.time_budget_s:
            p = max(p, self.elapsed / t.time_budget_s)
        return min(max(p, 0.0), 1.0)

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns its metrics. Non-finite losses skip the step and back off the lr.
        Holds ``self.lock`` throughout (see ``__init__``)."""
        with self.lock:
            return self._train_step()

    def _train_step(self) -> dict[str, float]:
        t = self.cfg.train
        self.renderer.train()
        self.update_stage()
        if self.is_sdf:
            # NeuS: alpha ignores the view angle early on (ratio 0), so the surface can form before it sharpens.
            self.field.cos_anneal_ratio = min(1.0, self.step / t.cos_anneal_steps) if t.cos_anneal_steps > 0 else 1.0
        self.renderer.update_grid(self.step)
        self.batcher.batch_size = self.n_rays
        batch = self.batcher.next()
        out = self.renderer(batch.rays, background=self.background)
        target = batch.rgb
        if self.use_masks and batch.mask is not None and not self.composited:
            target = target * batch.mask[:, None]
        rgb = out.rgb
        gain = getattr(self.field, "view_gain", None)
        if gain is not None:
            rgb = gain(rgb, batch.cam_idx, out.opacity, self.background)
        mse = F.mse_loss(rgb, target)
        loss = mse
        if self.use_masks and batch.mask is not None and t.mask_loss > 0:
            op = out.opacity.clamp(1e-4, 1 - 1e-4)
            loss = loss + t.mask_loss * F.binary_cross_entropy(op, batch.mask)
        extra: dict[str, float] = {}
        if self.is_sdf and t.eikonal > 0:
            eik = self.eikonal_term(out.extras.get("sdf_grad"))
            loss = loss + t.eikonal * eik
            extra = {"eikonal": eik.item(), "inv_s": self.field.inv_s().item()}
        in_pbr = getattr(self.field, "shading", "") == "pbr"
        pbr = in_pbr and (t.material_smoothness > 0 or t.metallic_l1 > 0)
        local = in_pbr and getattr(self.field, "local_light", None) is not None  # its share is logged
        warm = t.albedo_warm_start > 0 and self.cfg.model.shading == "pbr" and not in_pbr
        if pbr or local or warm or (self.is_sdf and t.normal_smoothness > 0):
            hit = out.opacity.detach() > 0.5
            if hit.any():
                rays = batch.rays
                p = rays.origins[hit] + out.depth.detach()[hit, None] * rays.directions[hit]
                if pbr:
                    smooth, metal = self.field.material_priors(p)
                    loss = loss + t.material_smoothness * smooth + t.metallic_l1 * metal
                    extra["material_smoothness"] = smooth.item()
                    extra["metallic"] = metal.item()
                if warm:
                    # The material head learns the observed colours (geometry features held) before it shades.
                    with torch.no_grad():
                        feat = self.field.geometry(p)[1]
                    fit = F.mse_loss(linear_to_srgb(self.field.materials(feat, p)[0]), target[hit])
                    loss = loss + t.albedo_warm_start * fit
                    extra["albedo_warm_start"] = fit.item()
                if local:
                    n_hit = out.normals[hit].detach()
                    share = self.field.local_light_fraction(p, n_hit / n_hit.norm(dim=-1, keepdim=True).clamp_min(1e-8))
                    if t.local_light_l1 > 0:
                        loss = loss + t.local_light_l1 * share
                    extra["local_light"] = share.item()
                if self.is_sdf and t.normal_smoothness > 0:
                    pick = torch.randperm(len(p), device=p.device)[:1024]
                    curv = self.normal_smoothness_term(p[pick], t.normal_smoothness_eps)
                    loss = loss + self.normal_smoothness_weight() * curv
                    extra["normal_smoothness"] = curv.item()
        if in_pbr and t.light_chroma_smoothness > 0:
            chroma = self.field.env.chroma_variation(t.light_chroma_along)
            loss = loss + t.light_chroma_smoothness * chroma
            extra["light_chroma"] = chroma.item()
        stats = {"loss": loss.item(), "psnr": -10 * math.log10(max(mse.item(), 1e-10)), "n_rays": len(batch.rays)}
        if gain is not None:
            extra["view_gain_spread"] = gain.spread()
        stats.update(extra)
        stats["samples_per_ray"] = out.n_samples / max(len(batch.rays), 1)
        if "n_marched" in out.extras:
            stats["marched_per_ray"] = int(out.extras["n_marched"]) / max(len(batch.rays), 1)
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return self._skip_step(stats, "loss")
        loss.backward()
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([torch.linalg.vector_norm(g) for g in grads]).sum()):
            return self._skip_step(stats, "gradient")
        self.bad_steps = 0
        with self.lock:
            for g in self.optimizer.param_groups:
                g.setdefault("base_lr", g["lr"])
            self.optimizer.step()
            self.scheduler.step()
            if self.lr_scale != 1.0:
                for g in self.optimizer.param_groups:
                    g["lr"] *= self.lr_scale
        if t.target_samples > 0 and out.n_samples > 0:
            # nerfacc's dynamic batch: keep the number of samples per step near target_samples.
            want = int(len(batch.rays) * t.target_samples / out.n_samples)
            self.n_rays = int(min(max(want, 256), t.max_batch_rays))
        return stats

    def _grid_encodings(self) -> list:
        """The field's hash-grid encodings (those with ``active_levels``), found once."""
        if not hasattr(self, "_grid_encs"):
            self._grid_encs = [m for m in self.field.modules() if hasattr(m, "active_levels")]
        return self._grid_encs

    def _say(self, msg: str) -> None:
        """One line for the user: above the progress bar, or on stderr without one."""
        if self.progress:
            tqdm.write(msg)
        else:
            print(msg, file=sys.stderr)

    def _skip_step(self, stats: dict, what: str) -> dict:
        """A NaN/inf loss or gradient: drop the update, halve the learning rate, report it, and stop the run with
        a one-line error after MAX_BAD_STEPS in a row (the last checkpoint is kept)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        self.lr_scale *= 0.5
        self._say(f"step {self.step}: non-finite {what}, step skipped, learning rate x{self.lr_scale:g}")
        if self.bad_steps >= MAX_BAD_STEPS:
            raise NFieldsError(
                f"{self.run_dir}: {what} was NaN/inf {self.bad_steps} steps in a row; stopped (last checkpoint kept)"
            )
        stats["skipped"] = 1
        return stats

    def update_stage(self) -> None:
        """PBR runs: the neural colour head until ``train.pbr_start``, physically based shading from then on.
        Hash-grid fields with ``train.coarse_to_fine_steps``: the number of active grid levels for this step. A
        light with a sun lobe (``model.env_sun_after``): its brightest spot moves into the lobe once, that many steps
        into the PBR stage."""
        t = self.cfg.train
        if t.coarse_to_fine_steps > 0:
            for enc in self._grid_encodings():
                frac = min(1.0, self.step / t.coarse_to_fine_steps)
                start = min(max(t.coarse_to_fine_start, 1), enc.levels)
                enc.active_levels = start + int(frac * (enc.levels - start) + 1e-9)
        if hasattr(self.field, "shading") and self.cfg.model.shading == "pbr":
            self.field.shading = "pbr" if self.step >= self.cfg.train.pbr_start else "neural"
            if self.field.shading == "pbr" and self.pbr_start_progress is None:
                self.pbr_start_progress = self.schedule_progress(self.step) if self.step > 0 else 0.0
            env = self.field.env
            if env.sun and not bool(env.sun_on) and self.step >= t.pbr_start + self.cfg.model.env_sun_after:
                d = ", ".join(f"{v:.3f}" for v in env.extract_sun().tolist())
                self._say(f"step {self.step}: the light's brightest spot moved into its sun lobe, direction ({d})")

    def normal_smoothness_weight(self) -> float:
        """The curvature prior's weight now: ``train.normal_smoothness`` moving linearly to
        ``normal_smoothness * normal_smoothness_final`` over the run's :meth:`schedule_progress`."""
        t = self.cfg.train
        return t.normal_smoothness * (1.0 + (t.normal_smoothness_final - 1.0) * self.schedule_progress(self.step))

    def normal_smoothness_term(self, p: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
        """Curvature prior on unit SDF normals at surface points p (M, 3), delta ~ N(0, eps^2), trained through the
        double backward: mean |n(p) - n(p + delta)| (``train.normal_smoothness_order`` 1: neighbouring normals
        agree) or mean |n(p + delta) + n(p - delta) - 2 n(p)| (order 2: the curvature itself varies smoothly)."""
        m = len(p)
        delta = eps * torch.randn_like(p)
        second = self.cfg.train.normal_smoothness_order == 2
        pts = torch.cat([p, p + delta, p - delta] if second else [p, p + delta])
        g = self.field.geometry_and_gradient(pts, create_graph=True)[2]
        n = torch.nn.functional.normalize(g, dim=-1)
        if second:
            return (n[m : 2 * m] + n[2 * m :] - 2 * n[:m]).norm(dim=-1).mean()
        return (n[:m] - n[m : 2 * m]).norm(dim=-1).mean()

    def eikonal_term(self, sample_grad: torch.Tensor | None) -> torch.Tensor:
        """Eikonal loss over the ray samples' SDF gradients plus ``train.eikonal_points`` random points in the aabb."""
        grads = [] if sample_grad is None or len(sample_grad) == 0 else [sample_grad]
        n = self.cfg.train.eikonal_points
        if n > 0:
            lo, hi = self.field.aabb[:3], self.field.aabb[3:]
            x = lo + (hi - lo) * torch.rand(n, 3, device=lo.device)
            grads.append(self.field.geometry_and_gradient(x, create_graph=True)[2])
        if not grads:
            return torch.zeros(())
        return eikonal_loss(torch.cat(grads))

    def train(self, on_step: Callable[[int, dict], None] | None = None) -> dict[str, float]:
        """Train to ``cfg.train.steps`` (or the time budget), evaluating and checkpointing; returns the final eval."""
        t = self.cfg.train
        if self.step == 0:
            tqdm.write(
                f"{self.scene.name}: {len(self.scene.train_ids)} train / {len(self.scene.test_ids)} held-out views "
                f"at {self.scene.cameras.width}x{self.scene.cameras.height}; {self.field.kind} field "
                f"{self.cfg.model.network} ({self.n_params / 1e6:.2f} M params); run {self.run_dir}"
            )
        bar = tqdm(
            total=t.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True, desc="train",
            mininterval=1.0,
        )  # fmt: skip
        window_rays, window_time = 0, 0.0
        while self.step < t.steps:
            if t.time_budget_s and self.elapsed >= t.time_budget_s:
                tqdm.write(f"time budget of {t.time_budget_s:.0f} s reached at step {self.step}")
                break
            while self.viewer is not None and getattr(self.viewer, "paused", False):
                time.sleep(0.1)
            t0 = time.perf_counter()
            stats = self.train_step()
            dt = time.perf_counter() - t0
            self.elapsed += dt
            self.step += 1
            window_rays += stats["n_rays"]
            window_time += dt
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == t.steps:
                rays_s = window_rays / max(window_time, 1e-9)
                window_rays, window_time = 0, 0.0
                rec = {"step": self.step, "time": round(self.elapsed, 3), "rays_per_s": round(rays_s, 1)}
                rec.update({k: round(float(v), 5) for k, v in stats.items()})
                rec["lr"] = self.optimizer.param_groups[0]["lr"]
                self.metrics.write(rec)
                bar.set_postfix(
                    psnr=f"{stats['psnr']:.2f}", rays_s=f"{rays_s:.0f}", spr=f"{stats['samples_per_ray']:.1f}"
                )
                if self.viewer is not None:
                    self.viewer.log_metrics(self.step, {"loss": stats["loss"], "psnr": stats["psnr"]})
            if self.viewer is not None:
                self.viewer.request_refresh()
            if on_step is not None:
                on_step(self.step, stats)
            if t.eval_every and self.step % t.eval_every == 0 and self.step < t.steps:
                self.evaluate(limit=t.eval_views or None)
            if t.ckpt_every and self.step % t.ckpt_every == 0:
                self.save()
        bar.close()
        self.save()
        result = self.evaluate()
        tqdm.write(
            f"step {self.step}: held-out PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f} "
            f"({result['n_views']} views, {self.elapsed:.0f} s training)"
        )
        if self.is_sdf and t.mesh_eval_resolution > 0:
            geo = self.evaluate_geometry()
            if geo:
                result.update(geo)
                tqdm.write(
                    f"step {self.step}: Chamfer-L1 {geo['chamfer_l1']:.4f} (normalised units), normal error "
                    f"{geo['normal_mae_deg']:.1f} deg"
                )
        return result

    # ----------------------------------------------------------------------------------------------- evaluation
    def ground_truth(self, i: int, downscale: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Held-out image i (H, W, 3) float and mask (H, W) float, area-downscaled like the rendered view."""
        img = self.scene.images[i].float() / 255.0
        mask = self.scene.masks[i].float() / 255.0 if self.use_masks and not self.composited else None
        if downscale > 1:
            h, w = img.shape[0] // downscale * downscale, img.shape[1] // downscale * downscale
            img = F.avg_pool2d(img[:h, :w].permute(2, 0, 1)[None], downscale)[0].permute(1, 2, 0)
            if mask is not None:
                mask = F.avg_pool2d(mask[None, None, :h, :w], downscale)[0, 0]
        if mask is not None:
            img = img * (mask > 0.5)[..., None]
        return img, mask

    @torch.no_grad()
    def evaluate(self, limit: int | None = None, save: bool = True) -> dict[str, float]:
        """Render held-out views; PSNR/SSIM (PSNR inside the mask when masks are used); images to renders/."""
        self.renderer.eval()
        ids = list(self.scene.test_ids)
        if limit:
            ids = ids[:limit]
        ds = max(self.cfg.train.eval_downscale, 1)
        out_dir = self.run_dir / "renders" / f"step_{self.step:07d}"
        if save:
            out_dir.mkdir(parents=True, exist_ok=True)
        psnrs, ssims = [], []
        for i in ids:
            with self.lock:
                r = self.renderer.render_image(self.scene.cameras, i, background=self.background, downscale=ds)
            gt, mask = self.ground_truth(i, ds)
            pred = r["rgb"].clamp(0, 1)
            if pred.shape != gt.shape:
                raise RuntimeError(f"render {tuple(pred.shape)} vs ground truth {tuple(gt.shape)} for view {i}")
            psnrs.append(psnr(pred, gt, mask))
            ssims.append(ssim(pred, gt))
            if save:
                panels = [pred, gt, colorize_depth(r["depth"], r["opacity"])]
                if "normals" in r:
                    # World normals as colours, only where the surface was hit.
                    panels.append((r["normals"] * 0.5 + 0.5) * (r["opacity"] > 0.5)[..., None])
                save_png(out_dir / f"view_{i:03d}.png", torch.cat(panels, dim=1))
        result = {
            "step": self.step,
            "eval": True,
            "psnr": float(np.mean(psnrs)) if psnrs else float("nan"),
            "ssim": float(np.mean(ssims)) if ssims else float("nan"),
            "n_views": len(ids),
            "time": round(self.elapsed, 3),
            "masked": self.use_masks and not self.composited,
        }
        if self.metrics is not None:
            self.metrics.write(result)
        if self.progress and self.step < self.cfg.train.steps:
            tqdm.write(f"step {self.step}: held-out PSNR {result['psnr']:.2f} dB ({len(ids)} views)")
        self.renderer.train()
        return result

    def evaluate_geometry(self) -> dict[str, float] | None:
        """SDF runs on a scene with a known surface (the demo scene): mesh the field, write it to renders/, and
        measure Chamfer-L1 and normal error (:func:`~nfields.train.geometry_eval.evaluate_geometry`); the result
        is logged to metrics.jsonl. None when there is no reference surface."""
        from nfields.data.synthetic import cache_dir
        from nfields.train.geometry_eval import demo_reference_mesh, demo_reference_normals, evaluate_geometry

        demo_root = cache_dir() / "scenes" / "demo"
        if not self.is_sdf or not demo_root.exists() or Path(self.scene.root).resolve() != demo_root.resolve():
            return None
        out_dir = self.run_dir / "renders" / f"step_{self.step:07d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        with self.lock:
            geo = evaluate_geometry(
                self.field, demo_reference_mesh(), resolution=self.cfg.train.mesh_eval_resolution,
                save_mesh=out_dir / "mesh.ply", reference_normals=demo_reference_normals,
            )  # fmt: skip
        rounded = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in geo.items()}
        self.metrics.write({"step": self.step, "geometry": True, **rounded})
        return geo


def build_field(cfg: RunConfig, aabb: torch.Tensor):
    """The field ``cfg.model`` describes, over ``aabb``: a RadianceField (kind density) or an SDFField (kind sdf)."""
    m = cfg.model
    if m.kind not in MODEL_KINDS:
        raise NFieldsError(f"model.kind {m.kind!r}: unknown kind; valid: {', '.join(MODEL_KINDS)}")
    common = dict(
        network=m.network, network_options=dict(m.network_options), geo_feat_dim=m.geo_feat_dim,
        color_hidden=m.color_hidden, color_layers=m.color_layers,
    )  # fmt: skip
    if m.kind == "density":
        return RadianceField(aabb, **common)
    if m.sdf_normals not in ("finite_difference", "analytic"):
        raise NFieldsError(f"model.sdf_normals {m.sdf_normals!r}: valid: finite_difference, analytic")
    if not 0.0 <= cfg.train.normal_smoothness_final <= 1.0:
        raise NFieldsError(
            f"train.normal_smoothness_final {cfg.train.normal_smoothness_final}: must be in [0, 1] (a fraction of "
            "train.normal_smoothness)"
        )
    if not cfg.train.normal_smoothness_eps > 0:
        raise NFieldsError(f"train.normal_smoothness_eps {cfg.train.normal_smoothness_eps}: must be > 0 (world units)")
    if cfg.train.normal_smoothness_order not in (1, 2):
        raise NFieldsError(f"train.normal_smoothness_order {cfg.train.normal_smoothness_order}: valid: 1, 2")
    if m.sdf_fd_eps < 0:
        raise NFieldsError(f"model.sdf_fd_eps {m.sdf_fd_eps}: must be >= 0 (0 = tied to the active hash level)")
    if not 1 <= m.view_light_bands <= 4:
        raise NFieldsError(f"model.view_light_bands {m.view_light_bands}: must be in 1..4 (spherical-harmonic bands)")
    if m.view_light_hidden < 1:
        raise NFieldsError(f"model.view_light_hidden {m.view_light_hidden}: must be >= 1")
    if m.sdf_color_dirs not in COLOR_DIRS:
        raise NFieldsError(f"model.sdf_color_dirs {m.sdf_color_dirs!r}: valid: {', '.join(COLOR_DIRS)}")
    if m.detach_color_normals not in DETACH_COLOR_NORMALS:
        raise NFieldsError(
            f"model.detach_color_normals {m.detach_color_normals!r}: valid: {', '.join(DETACH_COLOR_NORMALS)}"
        )
    if m.shading not in SHADINGS:
        raise NFieldsError(f"model.shading {m.shading!r}: valid: {', '.join(SHADINGS)}")
    if m.shading == "pbr":
        from nfields.fields.pbr import PBRField

        if not m.env_lr_mult > 0:
            raise NFieldsError(f"model.env_lr_mult {m.env_lr_mult}: must be > 0")
        if m.env_levels < 1 or m.env_height % (1 << (m.env_levels - 1)):
            raise NFieldsError(
                f"model.env_levels {m.env_levels}: must be >= 1 with model.env_height ({m.env_height}) divisible by "
                "2^(levels - 1)"
            )
        t = cfg.train
        if t.light_chroma_along not in CHROMA_ALONG:
            raise NFieldsError(f"train.light_chroma_along {t.light_chroma_along!r}: valid: {', '.join(CHROMA_ALONG)}")
        if t.local_light_l1 < 0 or t.albedo_warm_start < 0 or t.metallic_l1 < 0:
            raise NFieldsError(
                f"train.local_light_l1 {t.local_light_l1} / albedo_warm_start {t.albedo_warm_start} / metallic_l1 "
                f"{t.metallic_l1}: must be >= 0"
            )
        if m.env_sun_after < 0:
            raise NFieldsError(f"model.env_sun_after {m.env_sun_after}: must be >= 0 (0 = no sun lobe)")
        if t.light_warmup_steps < 0 or t.light_chroma_smoothness < 0:
            raise NFieldsError(
                f"train.light_warmup_steps {t.light_warmup_steps} / light_chroma_smoothness "
                f"{t.light_chroma_smoothness}: must be >= 0"
            )
        return PBRField(
            aabb, env_height=m.env_height, env_lr_mult=m.env_lr_mult, env_levels=m.env_levels,
            env_sun=m.env_sun_after > 0,
            up_axis=m.env_up_axis, detach_color_normals=m.detach_color_normals,
            init_radius=m.sdf_init_radius, normals=m.sdf_normals, fd_eps=m.sdf_fd_eps, color_dirs=m.sdf_color_dirs,
            shadow_lights=m.shadow_lights, shadow_sky=m.shadow_sky, shadow_resolution=m.shadow_resolution,
            shadow_sky_cache=m.shadow_sky_cache, local_light=m.local_light,
            material_grid=m.material_grid, camera_light=m.camera_light, env_radius=m.env_radius,
            view_light=m.view_light, view_light_bands=m.view_light_bands, view_light_hidden=m.view_light_hidden,
            **common,
        )  # fmt: skip
    return SDFField(
        aabb, init_radius=m.sdf_init_radius, normals=m.sdf_normals, fd_eps=m.sdf_fd_eps, color_dirs=m.sdf_color_dirs,
        detach_color_normals=m.detach_color_normals, **common,
    )  # fmt: skip
