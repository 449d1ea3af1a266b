"""Diagnostics for SDF + PBR runs on generated scenes: where the errors are, as images.

    python apps/diag_pbr.py maps RUN OUT.png        # per held-out view: image, normals, albedo, roughness, metallic
    python apps/diag_pbr.py noise --spp 128         # how noisy the demo's ground truth is at a sample count
    python apps/diag_pbr.py light RUN OUT.png       # learned light next to the scene's light, and their chroma
    python apps/diag_pbr.py albedo-bias RUN         # aligned albedo error by the surface's facing (up / down)
    python apps/diag_pbr.py profile RUN --steps 10  # where a training step's time goes, at the run's last step
    python apps/diag_pbr.py views RUN --every 3     # per view: rendered vs photo brightness inside the mask
    python apps/diag_pbr.py fit RUN --views 1 9 25  # masked PSNR on any views (training ones too), low / high freq.
    python apps/diag_pbr.py speed RUN --steps 10    # ms per training step: position-gradient and cull variants
    python apps/diag_pbr.py materials RUN --view 24 # learned roughness / metallic / albedo on a view's surface
    python apps/diag_pbr.py roughness RUN --values 0.3 0.45 0.6 1  # PSNR with the roughness set to constants
    python apps/diag_pbr.py oracle-light NAME [--set K=V ...]  # train the demo under its true light, held fixed
    python apps/diag_pbr.py albedo-regions RUN      # aligned albedo PSNR by region: edges, metal, dark pixels
    python apps/diag_pbr.py ceiling --lights 0 16 64 --sky 0 4 8  # the shading model's own error on the demo's truth
    python apps/diag_pbr.py ceiling --lights 16 --sky 8 --sky-cache 0 16 32  # ... with the sky's visibility cached

``maps``: one row per held-out view (first three): the training image; ground-truth and rendered normals with the
per-pixel angle error (white = 30 deg or more); ground-truth albedo, the run's albedo after the per-channel
alignment of ``nfields eval`` (needs RUN/eval.json) and its error x4; ground-truth and learned roughness and
metallic. Prints the normal-angle statistics per view.

``noise``: renders demo view 8 twice with different seeds at ``--spp`` and prints the masked PSNR between the two
(the ground truth's own noise: a perfect reconstruction scores ~3 dB above it) and the seconds per view.

``light``: the scene's light (area-averaged to the learned map's size, times the scene's exposure) above the run's
learned light divided by the albedo alignment scale of ``nfields eval`` (so both are in the same units: a perfect
decomposition makes the two rows equal), each tone-mapped, then each one's chromaticity (radiance / its channel
mean; where the light's colour varies). Prints the per-channel ratio of the two lights' mean radiance, the angle
between the learned sun (the sun lobe, ``model.env_sun_after``, or else the brightest texel) and the scene's
brightest direction, and the chromaticity error of the upper and lower hemispheres.

``albedo-bias``: over every held-out view, the mean log ratio of the run's aligned albedo to the true one per
channel, binned by the up component of the true normal (generated scenes' up is z): a light whose colour is wrong
above or below the horizon shows up as an albedo tint that follows the facing (e.g. too blue on up-facing
surfaces, too little blue on down-facing ones).

``profile``: reopens RUN at its last checkpoint (nothing written; a fresh optimiser state), runs ``--warmup`` steps,
then profiles ``--steps`` training steps with torch.profiler: wall seconds per step, the inclusive time of each
stage of a step (marching and the SDF cull, the SDF with its gradient, colour / shading, shadows, the priors,
backward, optimiser) and the operators with the most self time.

``views``: any run on a scene with masks (DTU too): every ``--every``-th view (training and held-out) rendered at
1/``--downscale`` of the training size, and per view the ratio photo / render of the mean colour inside the mask
(per channel), the masked PSNR, and the PSNR once that ratio is applied -- how much the captured views disagree in
brightness (lamps shadowed, exposure), i.e. what ``model.view_gain`` could recover.

``fit``: the masked PSNR of ``--views`` (training views as well as held-out ones: does a run underfit or overfit?)
at full training size, split into a low-pass part (PSNR of both images blurred by a 9x9 box: broad shading and
colour) and a high-pass part (mean squared error of what the blur removes: texture and edges); ``--out`` saves
photo | render | error x4 per view.

``speed``: reopens RUN at its last checkpoint for each variant in turn -- the hash grid's position gradient
(``closed_form``, the default, or ``autograd``) x the SDF cull (two passes, ``sdf_cull_first`` 20, the default, or
one pass) -- runs 2 warm-up and ``--steps`` timed training steps (no profiler), twice over in alternation, so the
machine's speed drift hits every variant alike; prints ms per step and rays per second.

``roughness``: an SDF + PBR run's masked PSNR on its training and held-out views (averaged separately) as learned,
then with the roughness replaced everywhere by each ``--values`` constant, all else as learned: whether the
optimiser sits where the images want the roughness (1 = what it learned is best).

``materials``: any SDF + PBR run (DTU too): the 5/25/50/75/95 % quantiles of the learned roughness and metallic and
the mean albedo at the surface points of ``--view`` (rendered at 1/4 size, opacity > 0.99), and the learned light's
texel range -- e.g. whether a run imitates a diffuse look with a rough metal.

``oracle-light``: trains a generated scene (default the demo) with the cpu preset (plus ``--set`` overrides) under its
*true* light, frozen -- what geometry and materials reach when the light is right; evaluate with ``nfields eval``.

``ceiling``: no training -- the demo's true geometry, materials and light shaded by the training shader, against
its Monte Carlo images (image PSNR) and inverted per pixel for the albedo (dielectric pixels): the most a perfect
optimisation could reach with that shading model, per shadow setting (``--lights`` brightest texels, ``--sky`` rows
of the rest of the sky, ``model.shadow_sky``; ``--sky-cache`` lattices caching the sky's visibility,
``model.shadow_sky_cache``, 0 = traced per pixel; ``--shadow-geometry RUN``: shadows cast by a run's learned SDF;
``--normals-from RUN``: that run's SDF normals instead of the true ones; ``--roughness true 0.45 1``: the true
roughness or a constant in its place; ``--light-from RUN``: that run's learned light instead of the true one;
``--light-mix true-colour|true-intensity``: its intensity with the true colour, or the other way round; ``true``
with ``--light-scale R G B``: the true light times a per-channel factor).

``albedo-regions``: a generated-scene run's aligned albedo PSNR by region (silhouette pixels, metal, dark pixels, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nfields.errors import NFieldsError


def _load(path: Path) -> torch.Tensor:
    a = np.array(Image.open(path)).astype(np.float32) / 255.0
    return torch.from_numpy(a if a.ndim == 3 else np.repeat(a[..., None], 3, -1))[..., :3]


def _albedo_scale(run: Path) -> torch.Tensor:
    """The per-channel albedo alignment of ``nfields eval`` (RUN/eval.json), or ones when the run is not evaluated."""
    eval_file = run / "eval.json"
    return torch.tensor(json.loads(eval_file.read_text())["albedo_scale"]) if eval_file.exists() else torch.ones(3)


def _render_material(tr, i: int, mode: str) -> dict:
    """View ``i`` of the run's ``mode`` map (albedo sRGB, roughness, metallic): the renderer's output, ``rgb``
    (H, W, 3) holding the map."""
    tr.field.render_mode = mode
    try:
        return tr.renderer.render_image(tr.scene.cameras, i, background=None)
    finally:
        tr.field.render_mode = "rgb"


@torch.no_grad()
def maps(run: Path, out: Path) -> None:
    """Write the error-map montage of ``run`` to ``out`` (see the module docstring)."""
    from nfields.render.shading import linear_to_srgb, srgb_to_linear
    from nfields.train.render_run import open_run

    tr = open_run(run)
    scene, renderer = tr.scene, tr.renderer
    root = Path(scene.root)
    gt = root / "gt"
    k = _albedo_scale(run)
    rows = []
    for i in scene.test_ids[:3]:
        r = renderer.render_image(scene.cameras, i, background=tr.background)
        mask = (_load(root / "mask" / f"{i:03d}.png")[..., 0] > 0.5) & (r["opacity"] > 0.5)
        m3 = mask[..., None].float()
        n = torch.nn.functional.normalize(r["normals"], dim=-1)
        gn = torch.nn.functional.normalize(_load(gt / "normal" / f"{i:06d}.png") * 2 - 1, dim=-1)
        ang = torch.rad2deg(torch.acos((n * gn).sum(-1).clamp(-1, 1)))
        a = ang[mask]
        print(f"view {i}: normal error mean {a.mean():.2f}, median {a.median():.2f}, p90 {a.quantile(0.9):.2f} deg")
        row = [_load(root / "image" / f"{i:06d}.png"), (gn * 0.5 + 0.5) * m3, (n * 0.5 + 0.5) * m3]
        row.append((ang / 30).clamp(0, 1)[..., None].expand(-1, -1, 3) * m3)
        mats = {mode: _render_material(tr, i, mode)["rgb"] for mode in ("albedo", "roughness", "metallic")}
        ga = _load(gt / "albedo" / f"{i:06d}.png")
        pa = linear_to_srgb((srgb_to_linear(mats["albedo"]) * k).clamp(0, 1))
        row += [ga * m3, pa * m3, ((pa - ga).abs() * 4).clamp(0, 1) * m3]
        metal = _load(gt / "metallic" / f"{i:06d}.png")[..., 0] > 0.5
        for label, part in (("metal", mask & metal), ("dielectric", mask & ~metal)):
            if part.any():
                mse = ((pa - ga)[part] ** 2).mean()
                rough = mats["roughness"][..., 0][part].mean()
                print(
                    f"  {label}: {part.sum().item()} px, albedo PSNR {-10 * torch.log10(mse).item():.2f} dB, "
                    f"learned metallic {mats['metallic'][..., 0][part].mean():.2f}, roughness {rough:.2f}, "
                    f"normal error {ang[part].mean():.2f} deg"
                )
        for mode in ("roughness", "metallic"):
            row += [_load(gt / mode / f"{i:06d}.png") * m3, mats[mode] * m3]
        rows.append(torch.cat(row, 1))
    img = (torch.cat(rows, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    Image.fromarray(img).save(out)
    print(f"wrote {out} (columns: image | normals gt, run, error | albedo gt, run, error x4 | roughness | metallic)")


def _print_sun(env, true_map) -> None:
    """Print the angle between the scene's sun (its map's brightest pixel, full resolution) and the learned one
    (the sun lobe when the light has one, else the learned map's brightest texel by power), and the lobe's share of
    the learned light's power."""
    from nfields.render.envmap import mean_radiance, texel_uv, uv_to_dir
    from nfields.render.shadows import brightest_texels

    img = torch.as_tensor(true_map, dtype=torch.float32)
    true_dir = uv_to_dir(texel_uv(*img.shape[:2]), env.up_axis).reshape(-1, 3)[img.mean(-1).argmax()]
    sun = env.sun_map() if env.sun else None
    if sun is not None:
        share = float(mean_radiance(sun).sum() / mean_radiance(env.texels()).sum())
        learned, what = env.sun_direction(), f"sun lobe ({100 * share:.0f} % of the light's power)"
    else:
        tex = env.texels()
        learned, what = brightest_texels(env, 1, tuple(tex.shape[:2])).dirs[0], "brightest texel (by power)"
    angle = math.degrees(math.acos(float((learned @ true_dir).clamp(-1, 1))))
    print(f"sun: the learned {what} is {angle:.1f} deg from the scene's brightest direction")


@torch.no_grad()
def light(run: Path, out: Path) -> None:
    """Write the learned-vs-true light montage of ``run`` to ``out`` (see the module docstring)."""
    from nfields.data.hdr import read_envmap
    from nfields.render.envmap import downsample_equirect
    from nfields.render.shading import linear_to_srgb
    from nfields.train.render_run import open_run

    tr = open_run(run)
    root = Path(tr.scene.root)
    meta = json.loads((root / "gt" / "scene.json").read_text())
    learned = tr.field.env.texels().float()
    h, w, _ = learned.shape
    true = downsample_equirect(torch.as_tensor(read_envmap(root / meta["envmap"]), dtype=torch.float32), h, w)
    true = true * float(meta.get("exposure", 1.0))
    k = _albedo_scale(run)
    learned = learned / k  # albedo * k matches the truth, so light / k does
    ratio = learned.mean((0, 1)) / true.mean((0, 1))
    print(f"learned / true mean radiance per channel: {', '.join(f'{v:.3f}' for v in ratio)}")

    def chroma(x):
        return x / x.mean(-1, keepdim=True).clamp_min(1e-6)

    _print_sun(tr.field.env, read_envmap(root / meta["envmap"]))
    for name, rows in (("upper", slice(0, h // 2)), ("lower", slice(h // 2, h))):
        err = (chroma(learned[rows]) - chroma(true[rows])).abs().mean((0, 1))
        print(f"{name} hemisphere: chromaticity |learned - true| per channel {', '.join(f'{v:.3f}' for v in err)}")
    scale = true.mean() * 2

    def tone(x):
        return linear_to_srgb((x / scale).clamp(0, 1))

    rows = [torch.cat([tone(true), (chroma(true) / 2).clamp(0, 1)], 1),
            torch.cat([tone(learned), (chroma(learned) / 2).clamp(0, 1)], 1)]  # fmt: skip
    img = torch.cat(rows, 0).repeat_interleave(8, 0).repeat_interleave(8, 1)
    Image.fromarray((img.numpy() * 255).astype(np.uint8)).save(out)
    print(f"wrote {out} (rows: true, learned / alignment; columns: radiance, chromaticity / 2)")


@torch.no_grad()
def albedo_bias(run: Path, n_bins: int = 8) -> None:
    """Print the aligned albedo's log error per channel by the true normal's up component (see the module
    docstring)."""
    from nfields.render.shading import srgb_to_linear
    from nfields.train.render_run import open_run

    tr = open_run(run)
    gt = Path(tr.scene.root) / "gt"
    k = _albedo_scale(run)
    up, err = [], []
    for i in tr.scene.test_ids:
        r = _render_material(tr, i, "albedo")
        mask = (_load(Path(tr.scene.root) / "mask" / f"{i:03d}.png")[..., 0] > 0.5) & (r["opacity"] > 0.5)
        n = torch.nn.functional.normalize(_load(gt / "normal" / f"{i:06d}.png") * 2 - 1, dim=-1)
        truth = srgb_to_linear(_load(gt / "albedo" / f"{i:06d}.png"))[mask].clamp_min(1e-3)
        up.append(n[mask][:, 2])
        err.append(torch.log((srgb_to_linear(r["rgb"])[mask] * k).clamp_min(1e-3) / truth))
    up, err = torch.cat(up), torch.cat(err)
    edges = torch.linspace(-1, 1, n_bins + 1)
    print("normal up component | pixels | mean log(aligned albedo / true) r g b")
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        m = (up >= a) & (up < b)
        if int(m.sum()) >= 50:
            print(
                f"[{a:+.2f}, {b:+.2f}) | {int(m.sum()):6d} | " + " ".join(f"{v:+.3f}" for v in err[m].mean(0).tolist())
            )
    print("rms log error r g b: " + " ".join(f"{v:.3f}" for v in err.pow(2).mean(0).sqrt().tolist()))


@torch.no_grad()
def views(run: Path, every: int = 3, downscale: int = 4) -> None:
    """Print per-view brightness ratios photo / render inside the mask (see the module docstring)."""
    from nfields.train.metrics import psnr
    from nfields.train.render_run import open_run

    tr = open_run(run)
    sc = tr.scene
    if sc.masks is None:
        raise NFieldsError(f"{run}: views needs a scene with masks")
    print("view | split | photo / render (r g b) | masked PSNR | PSNR after the ratio")
    ratios = []
    for i in range(0, len(sc.images), every):
        r = tr.renderer.render_image(sc.cameras, i, downscale=downscale)["rgb"]
        h, w = r.shape[:2]
        photo = sc.images[i].float()[::downscale, ::downscale][:h, :w] / 255
        m = sc.masks[i][::downscale, ::downscale][:h, :w] > 127
        k = photo[m].mean(0) / r[m].mean(0).clamp_min(1e-6)
        ratios.append(float(k.mean()))
        before, fixed = psnr(r, photo, m), psnr(r * k, photo, m)
        split = "train" if i in sc.train_ids else "test"
        print(f"{i:4d} | {split:5s} | " + " ".join(f"{v:.3f}" for v in k.tolist()) + f" | {before:.2f} | {fixed:.2f}")
    r = np.array(ratios)
    print(f"mean ratio over views: std {r.std():.3f}, min {r.min():.3f}, max {r.max():.3f}")


@torch.no_grad()
def noise(spp: int) -> None:
    """Print the agreement of two independent renders of demo view 8 (see the module docstring)."""
    from nfields.data.pbr_scene import DemoSurface, auto_exposure, demo_cameras, procedural_sky, render_pbr_view
    from nfields.render.envmap import EnvironmentMap

    env = EnvironmentMap(procedural_sky(), name="procedural sky")
    cams, surface = demo_cameras(40, 200, 0), DemoSurface()
    t0 = time.perf_counter()
    exposure = auto_exposure(env)
    a, b = (render_pbr_view(surface, cams, 8, env, spp, exposure, torch.Generator().manual_seed(s)) for s in (1, 2))
    m = a["mask"] > 0
    d = (a["rgb"].astype(np.float64) - b["rgb"].astype(np.float64))[m] / 255.0
    print(f"{spp} spp: two renders agree to {-10 * np.log10((d**2).mean()):.2f} dB (masked); "
          f"{(time.perf_counter() - t0) / 2:.2f} s per view")  # fmt: skip


# Stages of a training step for ``profile``: (label, owner, attribute); each is wrapped in a record_function.
_STAGES = [
    ("march", "nfields.render.renderer", "march_rays"),
    ("sdf cull (no grad)", "nfields.render.renderer:Renderer", "_visible"),
    ("sdf + gradient", "nfields.render.renderer:Renderer", "_sdf_and_gradient"),
    ("shadows", "nfields.render.renderer:Renderer", "_shadow_visibility"),
    ("colour / shading", "nfields.fields.pbr:PBRField", "color"),
    ("  irradiance table", "nfields.render.envmap:LearnedEnvironment", "irradiance_table"),
    ("  pre-filtered levels", "nfields.render.envmap:LearnedEnvironment", "prefiltered_levels"),
    ("  shade_pbr", "nfields.fields.pbr", "shade_pbr"),
    ("material smoothness", "nfields.fields.pbr:PBRField", "material_smoothness"),
    ("eikonal term", "nfields.train.trainer:Trainer", "eikonal_term"),
    ("occupancy / shadow grid update", "nfields.render.renderer:Renderer", "update_grid"),
    ("backward", "torch.Tensor", "backward"),
    ("optimizer step", "torch.optim:Adam", "step"),
]


def _wrap_stages() -> list:
    """Wrap each of ``_STAGES`` in a ``record_function`` of its label; returns the undo list."""
    import importlib

    undo = []
    for label, owner, attr in _STAGES:
        if owner == "torch.Tensor":
            target = torch.Tensor
        else:
            mod, _, cls = owner.partition(":")
            target = importlib.import_module(mod)
            target = getattr(target, cls) if cls else target
        orig = getattr(target, attr)

        def wrapped(*a, _orig=orig, _label=label, **k):
            with torch.profiler.record_function(_label):
                return _orig(*a, **k)

        setattr(target, attr, wrapped)
        undo.append((target, attr, orig))
    return undo


def profile(run: Path, steps: int = 10, warmup: int = 3, top: int = 20) -> None:
    """Print where a training step of ``run`` spends its time (see the module docstring)."""
    from nfields.train.render_run import open_run

    undo = _wrap_stages()
    try:
        tr = open_run(run)
        for _ in range(warmup):
            tr.train_step()
            tr.step += 1
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                stats = tr.train_step()
                tr.step += 1
        wall = (time.perf_counter() - t0) / steps
    finally:
        for target, attr, orig in undo:
            setattr(target, attr, orig)
    print(f"{run}: step {tr.step}, {wall:.3f} s per step (profiled), {stats['n_rays']} rays, "
          f"{stats['samples_per_ray']:.1f} samples/ray")  # fmt: skip
    events = {e.key: e for e in prof.key_averages()}
    print("stage | ms per step (inclusive)")
    for label, _, _ in _STAGES:
        if label in events:
            print(f"{label} | {events[label].cpu_time_total / 1e3 / steps:.1f}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def fit(run: Path, view_ids: list[int], out: Path | None = None) -> None:
    """Print per view (and their mean) the masked PSNR, low-pass PSNR and high-pass MSE (see the module docstring)."""
    from nfields.train.metrics import psnr
    from nfields.train.render_run import open_run

    tr = open_run(run)
    train_ids = set(int(i) for i in tr.scene.train_ids)
    box = torch.ones(1, 1, 9, 9) / 81.0

    def blur(im: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(im.permute(2, 0, 1)[:, None], box, padding=4)[:, 0].permute(1, 2, 0)

    rows, panels = [], []
    for i in view_ids:
        if not 0 <= i < len(tr.scene.cameras):
            raise SystemExit(f"error: view {i}: the scene has views 0..{len(tr.scene.cameras) - 1}")
        r = tr.renderer.render_image(tr.scene.cameras, i, background=tr.background)
        gt, mask = tr.ground_truth(i, 1)
        pred = r["rgb"].clamp(0, 1)
        m = torch.ones(gt.shape[:2], dtype=torch.bool) if mask is None else mask > 0.5
        high = ((pred - blur(pred)) - (gt - blur(gt)))[m].square().mean().item()
        rows.append((psnr(pred, gt, mask), psnr(blur(pred), blur(gt), mask), high))
        kind = "train" if i in train_ids else "held-out"
        print(f"view {i:3d} ({kind}): masked PSNR {rows[-1][0]:.2f} dB, low-pass {rows[-1][1]:.2f} dB, "
              f"high-pass MSE {high:.5f}")  # fmt: skip
        err = ((pred - gt).abs().mean(-1, keepdim=True) * 4 * m[..., None]).clamp(0, 1).expand(-1, -1, 3)
        panels.append(torch.cat([gt, pred, err], 1))
    mean = np.mean(np.array(rows), 0)
    print(f"mean over {len(rows)} views: masked PSNR {mean[0]:.2f} dB, low-pass {mean[1]:.2f} dB, "
          f"high-pass MSE {mean[2]:.5f}")  # fmt: skip
    if out is not None:
        Image.fromarray((torch.cat(panels, 0).numpy() * 255).astype(np.uint8)).save(out)
        print(f"wrote {out}")


def speed(run: Path, steps: int = 10) -> None:
    """Print ms per training step and rays/s of each variant (see the module docstring)."""
    from nfields.encodings.hashgrid import HashGridEncoding
    from nfields.train.render_run import open_run

    variants = [("autograd", 0), ("closed_form", 0), ("closed_form", 20)]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {v: [] for v in variants}
    try:
        for _ in range(2):
            for mode, first in variants:
                HashGridEncoding.position_grad = mode
                torch.manual_seed(0)
                tr = open_run(run)
                tr.renderer.cfg.sdf_cull_first = first
                for _ in range(2):
                    tr.train_step()
                    tr.step += 1
                rays = 0
                t0 = time.perf_counter()
                for _ in range(steps):
                    rays += tr.train_step()["n_rays"]
                    tr.step += 1
                dt = (time.perf_counter() - t0) / steps
                results[(mode, first)].append((dt, rays / steps / dt))
    finally:
        HashGridEncoding.position_grad = "closed_form"
    print(f"{run}: {steps} steps per variant from step {tr.step - steps}, two alternating rounds")
    for (mode, first), got in results.items():
        ms = " / ".join(f"{dt * 1e3:.0f}" for dt, _ in got)
        rps = " / ".join(f"{r:.0f}" for _, r in got)
        print(f"  position gradient {mode:12s} cull {'two passes' if first else 'one pass  '}: {ms} ms per step, "
              f"{rps} rays/s")  # fmt: skip


@torch.no_grad()
def roughness_sweep(run: Path, values: list[float]) -> None:
    """Print the run's masked PSNR averaged over its training views and over its held-out views, as learned and with
    the learned roughness replaced by each constant in ``values`` (see the module docstring)."""
    from nfields.fields.pbr import PBRField
    from nfields.train.metrics import psnr
    from nfields.train.render_run import open_run

    tr = open_run(run)
    field = tr.field
    if not isinstance(field, PBRField) or field.shading != "pbr":
        raise NFieldsError(f"{run}: not an SDF + PBR run past its PBR start; roughness needs one")
    for v in values:
        if not 0.0 < v <= 1.0:
            raise NFieldsError(f"--values {v}: roughness constants must be in (0, 1]")
    learned = field.materials
    groups = {"train": [int(i) for i in tr.scene.train_ids], "held-out": [int(i) for i in tr.scene.test_ids]}
    print(f"{run}: masked PSNR, mean over {len(groups['train'])} training / {len(groups['held-out'])} held-out views")
    try:
        for value in [None, *values]:

            def materials(features, points=None, value=value):
                a, r, m = learned(features, points)
                return a, (r if value is None else torch.full_like(r, value)), m

            field.materials = materials
            scores = {}
            for name, ids in groups.items():
                vals = []
                for i in ids:
                    r = tr.renderer.render_image(tr.scene.cameras, i, background=tr.background)
                    gt, mask = tr.ground_truth(i, 1)
                    vals.append(psnr(r["rgb"].clamp(0, 1), gt, mask))
                scores[name] = float(np.mean(vals))
            label = "as learned" if value is None else f"roughness {value:.2f}"
            print(f"  {label:16s} train {scores['train']:.2f} dB, held-out {scores['held-out']:.2f} dB", flush=True)
    finally:
        del field.materials  # the instance attribute; the class method again


@torch.no_grad()
def materials(run: Path, view: int = 24) -> None:
    """Print the learned materials at a view's surface points and the light's range (see the module docstring)."""
    from nfields.fields.pbr import PBRField
    from nfields.train.render_run import open_run

    tr = open_run(run)
    if not isinstance(tr.field, PBRField):
        raise SystemExit(f"error: {run}: not an SDF + PBR run (model.shading=pbr)")
    cams = tr.scene.cameras
    rays = cams.image_rays(view, 4)
    r = tr.renderer.render_image(cams, view, background=None, downscale=4)
    hit = torch.nonzero(r["opacity"].reshape(-1) > 0.99).squeeze(-1)
    pts = rays.origins[hit] + rays.directions[hit] * r["depth"].reshape(-1)[hit, None]
    albedo, rough, metal = tr.field.materials(tr.field.geometry(pts)[1], pts)
    levels = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])

    def q(t: torch.Tensor) -> str:
        return " / ".join(f"{v:.2f}" for v in torch.quantile(t.float(), levels).tolist())

    print(f"{run}: view {view}, {len(pts)} surface points; quantiles 5/25/50/75/95 %")
    print(f"  roughness {q(rough)}")
    print(f"  metallic  {q(metal)}")
    print(f"  albedo (linear) mean {' / '.join(f'{v:.3f}' for v in albedo.mean(0).tolist())}")
    lum = tr.field.env.texels().mean(-1)
    ratio = float(lum.max() / lum.median())
    print(f"  learned light: texel radiance {lum.min():.3f} .. {lum.max():.3f}, max / median {ratio:.1f}")


def oracle_light(
    name: str, scene: str = "demo", overrides: list[str] | None = None, out: Path = Path("bench_out/runs")
):
    """Train ``scene`` (a generated scene: gt/scene.json + its sky) like ``nfields train --preset cpu`` but with the
    learned light replaced by the scene's true one (times its exposure, area-averaged to the learned map's size) and
    frozen: what the materials and geometry reach when the light is right. Evaluate with ``nfields eval``."""
    from nfields.config import build_config
    from nfields.data.hdr import read_hdr
    from nfields.data.resolve import resolve_scene_path
    from nfields.render.envmap import downsample_equirect
    from nfields.train.checkpoint import new_run_dir
    from nfields.train.trainer import Trainer

    root = resolve_scene_path(scene)
    meta_file = root / "gt" / "scene.json"
    if not meta_file.exists():
        raise NFieldsError(f"{root}: no gt/scene.json; oracle-light needs a generated scene (nfields make-scene)")
    meta = json.loads(meta_file.read_text())
    sky = Path(meta["envmap"])
    sky = sky if sky.is_absolute() or sky.exists() else root / sky
    cfg = build_config(scene, None, "cpu", ["train.eval_every=0", *(overrides or [])])
    run_dir = new_run_dir(out, name)
    cfg.name = run_dir.name
    tr = Trainer(cfg, run_dir, progress=True)
    env = tr.field.env
    h, w, _ = env.log_radiance.shape
    true = downsample_equirect(torch.from_numpy(read_hdr(sky)).float(), h, w) * float(meta["exposure"])
    with torch.no_grad():
        env.log_radiance.copy_(true.clamp_min(1e-6).log())
        for c in env.coarse:
            c.zero_()
    for prm in env.parameters():
        prm.requires_grad_(False)
    print(f"{run_dir}: true light {sky} x {meta['exposure']:.3f}, {h}x{w} texels, frozen")
    print(json.dumps(tr.train()))


@torch.no_grad()
def ceiling(
    lights_list: list[int],
    views: list[int],
    resolution: int = 64,
    sky_list: tuple[int, ...] = (0,),
    sky_cache: tuple[int, ...] = (0,),
    shadow_geometry: Path | None = None,
    normals_from: Path | None = None,
    roughness: tuple[str, ...] = ("true",),
    light_from: Path | None = None,
    light_mix: str = "learned",
    light_scale: tuple[float, float, float] | None = None,
) -> None:
    """The demo's true geometry, materials and light (area-averaged to the learned map's 16x32 texels) shaded by the
    training shader (split-sum, shadows from the K brightest texels -- and with a ``sky`` > 0 from the rest of the sky's
    texels at sky x 2 sky, see ``model.shadow_sky`` -- through a ``resolution``^3 SDF lattice), against the demo's Monte
    Carlo images (``sky_cache``: with each of these lattices caching the sky's visibility, as
    ``model.shadow_sky_cache``; 0 = traced per pixel; ``shadow_geometry``: a run whose learned SDF casts the shadows
    instead of the true one, at the true surface points -- how faithful a learned lattice's shadows are): the image PSNR
    a perfect reconstruction would reach, and the albedo PSNR of inverting the shader per pixel (dielectric pixels: what
    the image implies the albedo is, given everything else true). Where these fall short of the targets, the shading
    model, not the optimisation, is what limits. ``normals_from``: a run's SDF normals at the true surface points
    instead of the true normals (what its normal error alone costs); ``roughness``: each entry ``true`` or a constant
    that replaces the true roughness everywhere (what a flat roughness costs); ``light_from``: a run's learned light
    instead of the true one (the true albedo divided by the run's ``nfields eval`` alignment for the image; the
    inverted albedo aligned per channel like ``nfields eval`` -- what the learned light alone costs); ``light_mix``
    ``true-colour``: the learned light's intensity (channel mean) with the true light's colour, ``true-intensity``:
    the other way round -- which of the two the learned light's cost comes from; ``true``: the control (the true
    light in the run's units: the true-light ceiling again); ``light_scale``: use this per-channel factor instead of
    the run's alignment (with ``true``: the true light times it -- what the light's absolute scale alone costs)."""
    from nfields.data.pbr_scene import DemoSurface, auto_exposure, procedural_materials, procedural_sky
    from nfields.data.resolve import resolve_scene_path
    from nfields.data.synthetic import demo_cameras, demo_sdf
    from nfields.render.envmap import EnvironmentMap, LearnedEnvironment
    from nfields.render.shading import linear_to_srgb, shade_pbr, srgb_to_linear
    from nfields.render.shadows import ShadowVolume, light_visibility, shadow_lights
    from nfields.train.evaluate import albedo_scale
    from nfields.train.render_run import open_run

    for rough in roughness:  # checked before any run is loaded
        try:
            ok = rough == "true" or 0.0 < float(rough) <= 1.0
        except ValueError:
            ok = False
        if not ok:
            raise NFieldsError(f"--roughness {rough!r}: 'true' or a number in (0, 1]")
    if light_mix not in ("learned", "true-colour", "true-intensity", "true"):
        raise NFieldsError(f"--light-mix {light_mix!r}: learned, true-colour, true-intensity or true")
    root = resolve_scene_path("demo")
    sky = procedural_sky()
    exposure = auto_exposure(EnvironmentMap(sky))
    env = LearnedEnvironment.from_image(sky, 16, 32)
    scale = torch.ones(3)
    if light_from is not None:
        learned_env, scale = open_run(light_from).field.env, _albedo_scale(light_from)
        if light_scale is not None:
            scale = torch.tensor(light_scale, dtype=torch.float32)
        align = [round(float(x), 3) for x in scale]
        print(f"the light learned by {light_from} (albedo alignment {align}), {light_mix}")
        mine = learned_env.texels().detach().float()
        truth = env.texels().detach().float() * exposure * scale  # the true light in the run's units
        if light_mix == "learned":
            env = learned_env
        elif light_mix == "true":  # the control: the true light in the run's units
            env = LearnedEnvironment.from_image(truth, *truth.shape[:2])
        else:
            lum_m, lum_t = mine.mean(-1, keepdim=True), truth.mean(-1, keepdim=True).clamp_min(1e-8)
            mixed = lum_m * truth / lum_t if light_mix == "true-colour" else lum_t * mine / lum_m.clamp_min(1e-8)
            env = LearnedEnvironment.from_image(mixed, *mixed.shape[:2])
        exposure = 1.0
    cams = demo_cameras(40, 200, 0)  # generate_demo_scene's defaults
    surface = DemoSurface()
    volume = ShadowVolume(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), resolution)
    if shadow_geometry is None:
        volume.update(demo_sdf)
    else:
        field = open_run(shadow_geometry).field
        volume.update(field.sdf, device=volume.aabb.device)
        print(f"shadows cast by the SDF of {shadow_geometry}")
    learned = None
    if normals_from is not None:
        learned = open_run(normals_from).field
        print(f"normals from the SDF of {normals_from}, at the true surface points")
    settings = [
        (k, s, c, rg)
        for k in lights_list
        for s in sky_list
        for c in sky_cache
        for rg in roughness
        if (k or not s) and (s or not c)
    ]
    for k, sky, cache, rough in settings:
        img_err, n_img, ests, trues, t0 = 0.0, 0, [], [], time.perf_counter()
        for i in views:
            rays = cams.image_rays(i)
            hit, t, n = surface.intersect(rays.origins, rays.directions)
            j = torch.nonzero(hit).squeeze(-1)
            p, n, v = rays.origins[j] + t[j, None] * rays.directions[j], n[j], -rays.directions[j]
            if learned is not None:
                n = torch.nn.functional.normalize(learned.geometry_and_gradient(p)[2], dim=-1)
            a, r, m = procedural_materials(p)
            if rough != "true":
                r = torch.full_like(r, float(rough))
            shadow = None
            if k:
                lights = shadow_lights(env, k, sky)
                vis = light_visibility(volume, p, n, lights, sky, cache)
                shadow = (vis, lights)
            rgb = shade_pbr(n, v, a / scale, r, m, env, shadow=shadow) * exposure
            photo = _load(root / "image" / f"{i:06d}.png").reshape(-1, 3)[j]
            img_err += float(((linear_to_srgb(rgb.clamp(0, 1)) - photo) ** 2).sum())
            n_img += photo.numel()
            # Invert for albedo on dielectric pixels: rgb = albedo * diffuse(albedo 1) + specular (f0 = 0.04).
            d = m < 0.5
            _, diff1, spec = shade_pbr(
                n[d],
                v[d],
                torch.ones_like(a[d]),
                r[d],
                torch.zeros_like(m[d]),
                env,
                True,
                None if shadow is None else (shadow[0][d], shadow[1]),
            )
            ests.append((srgb_to_linear(photo[d]) / exposure - spec) / diff1.clamp_min(1e-6))
            trues.append(a[d])
        est, true = torch.cat(ests), torch.cat(trues)
        if light_from is not None:
            est = est * albedo_scale(est.clamp(0, 1), true)
        alb_err = float(((linear_to_srgb(est.clamp(0, 1)) - linear_to_srgb(true)) ** 2).mean())
        img_psnr, alb_psnr = -10 * math.log10(img_err / n_img), -10 * math.log10(alb_err)
        print(
            f"shadow lights {k:4d}, sky {sky}, sky cache {cache}, roughness {rough}: image PSNR {img_psnr:.2f} dB, "
            f"albedo by inversion (dielectric) {alb_psnr:.2f} dB ({time.perf_counter() - t0:.1f} s)"
        )


@torch.no_grad()
def albedo_regions(run: Path) -> None:
    """The aligned albedo PSNR (sRGB, the alignment of ``nfields eval``) of a generated-scene run over every held-out
    view, by region: the whole mask (composited over black, ``albedo_psnr_composited``), the mask eroded by 2 pixels,
    its dielectric part, the true metal, the partly covered pixels (opacity < 0.99), the darkest quarter of the
    photo's masked pixels and the rest; and, for scale, the true albedo against itself blurred by 5 x 5 (its fine
    detail)."""
    import torch.nn.functional as F

    from nfields.render.shading import linear_to_srgb, srgb_to_linear
    from nfields.train.render_run import open_run

    tr = open_run(run)
    root = Path(tr.scene.root)
    gt = root / "gt"
    if not (gt / "albedo").is_dir():
        raise NFieldsError(f"{run}: its scene has no gt/albedo; albedo-regions needs a generated scene")
    k = _albedo_scale(run)
    acc: dict[str, list[float]] = {}

    def add(name: str, err: torch.Tensor) -> None:
        s, n = acc.get(name, [0.0, 0])
        acc[name] = [s + float(err.sum()), n + err.numel()]

    for i in tr.scene.test_ids:
        r = _render_material(tr, i, "albedo")
        pa = linear_to_srgb((srgb_to_linear(r["rgb"]) * k).clamp(0, 1))
        ga = _load(gt / "albedo" / f"{i:06d}.png")
        mask = _load(root / "mask" / f"{i:03d}.png")[..., 0] > 0.5
        eroded = ~(F.max_pool2d((~mask).float()[None, None], 5, 1, 2)[0, 0] > 0)
        metal = _load(gt / "metallic" / f"{i:06d}.png")[..., 0] > 0.5
        photo = _load(root / "image" / f"{i:06d}.png").mean(-1)
        dark = photo <= photo[mask].quantile(0.25)
        e = (pa - ga) ** 2
        add("whole mask (composited)", e[mask])
        add("mask eroded by 2 px", e[eroded])
        add("eroded, dielectric", e[eroded & ~metal])
        add("true metal", e[mask & metal])
        add("partly covered (opacity < 0.99)", e[mask & (r["opacity"] < 0.99)])
        add("darkest quarter of the photo", e[mask & dark])
        add("the other three quarters", e[mask & ~dark])
        blurred = F.avg_pool2d(ga.permute(2, 0, 1)[None], 5, 1, 2)[0].permute(1, 2, 0)
        add("true albedo vs itself blurred 5x5", ((blurred - ga) ** 2)[eroded])
    total = acc["whole mask (composited)"][1]
    print(f"{run}: aligned albedo PSNR by region over {len(tr.scene.test_ids)} held-out views")
    for name, (s, n) in acc.items():
        print(f"  {name:36s} {100 * n / total:5.1f} % of the mask  {-10 * math.log10(s / n):6.2f} dB")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pm = sub.add_parser("maps")
    pm.add_argument("run", type=Path)
    pm.add_argument("out", type=Path)
    pl = sub.add_parser("light")
    pl.add_argument("run", type=Path)
    pl.add_argument("out", type=Path)
    pb = sub.add_parser("albedo-bias")
    pb.add_argument("run", type=Path)
    pp = sub.add_parser("profile")
    pp.add_argument("run", type=Path)
    pp.add_argument("--steps", type=int, default=10)
    pp.add_argument("--warmup", type=int, default=3)
    pv = sub.add_parser("views")
    pv.add_argument("run", type=Path)
    pv.add_argument("--every", type=int, default=3)
    pv.add_argument("--downscale", type=int, default=4)
    pf = sub.add_parser("fit")
    pf.add_argument("run", type=Path)
    pf.add_argument("--views", type=int, nargs="+", required=True)
    pf.add_argument("--out", type=Path, default=None)
    ps = sub.add_parser("speed")
    ps.add_argument("run", type=Path)
    ps.add_argument("--steps", type=int, default=10)
    prs = sub.add_parser("roughness")
    prs.add_argument("run", type=Path)
    prs.add_argument("--values", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.8, 1.0])
    pmt = sub.add_parser("materials")
    pmt.add_argument("run", type=Path)
    pmt.add_argument("--view", type=int, default=24)
    po = sub.add_parser("oracle-light")
    po.add_argument("name")
    po.add_argument("--scene", default="demo")
    po.add_argument("--set", nargs="*", default=[])
    par = sub.add_parser("albedo-regions")
    par.add_argument("run", type=Path)
    pc = sub.add_parser("ceiling")
    pc.add_argument("--lights", type=int, nargs="+", default=[0, 16, 64, 256])
    pc.add_argument("--views", type=int, nargs="+", default=[0, 8, 16])
    pc.add_argument("--resolution", type=int, default=64)
    pc.add_argument("--sky", type=int, nargs="+", default=[0])
    pc.add_argument("--sky-cache", type=int, nargs="+", default=[0])
    pc.add_argument("--shadow-geometry", type=Path, default=None)
    pc.add_argument("--normals-from", type=Path, default=None)
    pc.add_argument("--roughness", nargs="+", default=["true"])
    pc.add_argument("--light-from", type=Path, default=None)
    pc.add_argument("--light-mix", default="learned")
    pc.add_argument("--light-scale", type=float, nargs=3, default=None)
    pn = sub.add_parser("noise")
    pn.add_argument("--spp", type=int, default=128)
    args = p.parse_args(argv)

    try:
        if args.cmd == "albedo-regions":
            albedo_regions(args.run)
        elif args.cmd == "ceiling":
            ceiling(
                args.lights,
                args.views,
                args.resolution,
                args.sky,
                args.sky_cache,
                args.shadow_geometry,
                args.normals_from,
                tuple(args.roughness),
                args.light_from,
                args.light_mix,
                args.light_scale,
            )
        elif args.cmd == "oracle-light":
            oracle_light(args.name, args.scene, args.set)
        elif args.cmd == "noise":
            noise(args.spp)
        elif args.cmd == "profile":
            profile(args.run, args.steps, args.warmup)
        elif args.cmd == "roughness":
            roughness_sweep(args.run, args.values)
        elif args.cmd == "materials":
            materials(args.run, args.view)
        elif args.cmd == "speed":
            speed(args.run, args.steps)
        elif args.cmd == "fit":
            fit(args.run, args.views, args.out)
        elif args.cmd == "views":
            views(args.run, args.every, args.downscale)
        elif args.cmd == "albedo-bias":
            albedo_bias(args.run)
        else:
            (maps if args.cmd == "maps" else light)(args.run, args.out)
    except NFieldsError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
