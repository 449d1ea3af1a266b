"""Radiance-field benchmark: held-out PSNR over wall-clock training time, time to a PSNR target, renderer
throughput and the occupancy grid's saving in samples per ray.

    python apps/bench_radiance.py --scene lego --field hashgrid --preset cpu --budget 600 --target 25
    python apps/bench_radiance.py --scene dtu_scan24 --preset cpu --budget 900

Training time excludes evaluation (the clock stops while held-out views render). Prints a markdown table row,
the exact command and the machine; writes bench_out/<scene>_<field>_<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from nfields.config import build_config
from nfields.train.checkpoint import new_run_dir
from nfields.train.trainer import Trainer


def machine() -> str:
    """One line naming the CPU, core count and torch build."""
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}"


@torch.no_grad()
def samples_per_ray(trainer: Trainer, use_grid: bool, n_rays: int = 4096) -> float:
    """Mean packed samples per ray over held-out-view rays, with or without the occupancy grid."""
    r = trainer.renderer
    r.eval()
    old = r.cfg.use_grid
    r.cfg.use_grid = use_grid
    cams = trainer.scene.cameras
    i = trainer.scene.test_ids[0]
    rays = cams.image_rays(i)
    idx = torch.randperm(len(rays), generator=torch.Generator().manual_seed(0))[:n_rays]
    out = r(rays[idx], background=trainer.background)
    r.cfg.use_grid = old
    r.train()
    return out.n_samples / n_rays


def throughput(trainer: Trainer, steps: int = 20) -> dict[str, float]:
    """Forward+backward samples/s and rays/s of training steps (no evaluation)."""
    n_s, n_r, t = 0, 0, 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.batcher.batch_size = trainer.n_rays
        batch = trainer.batcher.next()
        out = trainer.renderer(batch.rays, background=trainer.background)
        loss = ((out.rgb - batch.rgb) ** 2).mean()
        trainer.optimizer.zero_grad()
        loss.backward()
        t += time.perf_counter() - t0
        n_s += out.n_samples
        n_r += len(batch.rays)
    trainer.optimizer.zero_grad()
    return {"samples_per_s": n_s / t, "rays_per_s": n_r / t}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="lego")
    ap.add_argument("--field", default="hashgrid")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds")
    ap.add_argument("--eval-every-s", type=float, default=60.0, help="evaluate held-out views every N training s")
    ap.add_argument("--target", type=float, default=25.0, help="PSNR target for time-to-target")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides (section.key=value)")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    cmd = "python apps/bench_radiance.py " + " ".join(sys.argv[1:] if argv is None else argv)

    cfg = build_config(args.scene, args.field, args.preset, args.set + [f"train.time_budget_s={args.budget}"])
    cfg.train.steps = max(cfg.train.steps, 10**6)  # the budget, not the step count, ends the run
    cfg.train.eval_every = 0
    cfg.train.ckpt_every = 0
    run = new_run_dir(Path(args.out) / "runs", f"{Path(args.scene).name}_{args.field}_{args.preset}")
    trainer = Trainer(cfg, run, progress=False)
    curve, t_target = [], None
    next_eval = args.eval_every_s
    print(f"machine: {machine()}\ncommand: {cmd}\nrun: {run}", flush=True)
    t_start, paused = time.perf_counter(), 0.0
    while trainer.elapsed < args.budget:
        stats = trainer.train_step()
        trainer.step += 1
        trainer.elapsed = time.perf_counter() - t_start - paused
        if trainer.elapsed >= next_eval or trainer.elapsed >= args.budget:
            t0 = time.perf_counter()
            res = trainer.evaluate(save=False)
            paused += time.perf_counter() - t0
            curve.append({"time_s": round(trainer.elapsed, 1), "step": trainer.step, "psnr": round(res["psnr"], 3)})
            print(f"  t={trainer.elapsed:6.1f}s step={trainer.step:6d} held-out PSNR {res['psnr']:.2f} dB "
                  f"(train batch {stats['psnr']:.2f}, {stats['samples_per_ray']:.1f} samples/ray, "
                  f"{trainer.n_rays} rays)", flush=True)  # fmt: skip
            if t_target is None and res["psnr"] >= args.target:
                t_target = trainer.elapsed
            next_eval += args.eval_every_s
    final = trainer.evaluate(save=True)
    spr_grid = samples_per_ray(trainer, True)
    spr_uniform = samples_per_ray(trainer, False)
    tp = throughput(trainer)
    result = {
        "scene": args.scene, "field": args.field, "preset": args.preset, "budget_s": args.budget,
        "steps": trainer.step, "psnr": round(final["psnr"], 3), "ssim": round(final["ssim"], 4),
        "masked": final["masked"], "views": final["n_views"],
        "resolution": f"{trainer.scene.cameras.width}x{trainer.scene.cameras.height}",
        "time_to_target_s": None if t_target is None else round(t_target, 1), "target": args.target,
        "samples_per_ray_grid": round(spr_grid, 2), "samples_per_ray_uniform": round(spr_uniform, 2),
        "grid_saving": round(spr_uniform / max(spr_grid, 1e-9), 2), **{k: round(v) for k, v in tp.items()},
        "params": trainer.n_params, "curve": curve, "command": cmd, "machine": machine(),
    }  # fmt: skip
    out = Path(args.out) / f"{Path(args.scene).name}_{args.field}_{args.preset}.json"
    out.write_text(json.dumps(result, indent=1))
    tt = "-" if t_target is None else f"{t_target:.0f} s"
    print("\n| scene | field | res | steps | held-out PSNR | SSIM | time to target | samples/ray grid / uniform |"
          " fwd+bwd samples/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.scene} | {args.field} | {result['resolution']} | {trainer.step} | {final['psnr']:.2f} dB"
          f"{' (masked)' if final['masked'] else ''} | {final['ssim']:.3f} | {tt} ({args.target} dB) | "
          f"{spr_grid:.1f} / {spr_uniform:.1f} ({result['grid_saving']}x) | {tp['samples_per_s']:.3g} |")  # fmt: skip
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
