"""Backend benchmark on real data: Kodak image fitting at matched parameter counts, CAM vs a Fourier MLP on the
every-other-pixel protocol, CAM's fused step vs its plain reference, FreSh's pick vs a sweep, and SDF fitting.

    python apps/bench_backends.py --sections kodak --images 2 --budgets 30 120
    python apps/bench_backends.py --sections cam_protocol cam_speed fresh sdf --images 1 --sdf-budget 60

Sections:
- kodak: test PSNR after each training-time budget (one run per backend, evaluated as the clock passes each
  budget; evaluation time excluded) with every backend's size chosen to land within +-10% of --params.
- cam_protocol: CAM vs the same MLP without modulation (Fourier features), trained on even pixels only, tested on
  all, for the same number of steps (the CAM paper's protocol).
- cam_speed: seconds per training step of CAM's fused forward vs :meth:`CAMNetwork.forward_plain`.
- fresh: FreSh's pick for a model family (--fresh-family: Fourier sigma, SIREN omega_0, positional n_freqs) vs a
  sweep of >= 8 values, each trained for --fresh-budget seconds.
- sdf: IoU / Chamfer-L1 on armadillo and bunny for each SDF backend within --sdf-budget seconds.

Prints markdown tables, the exact command and the machine; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nfields.encodings.fresh import FAMILIES
from nfields.fields.base import count_parameters
from nfields.registry import build_network
from nfields.tasks.image import fit_image
from nfields.tasks.sdf import MARGIN, fit_sdf

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Kodak: where each backend's learning rate ends, as a fraction of its start (exponential decay over the budget).
# Measured (docs/results.md, session 29): the hash grid at a constant 1e-2 oscillates late (kodim06 37.20 dB at
# 120 s; 0.1: 51.81), while the dense grid and the RBF layer need their rate to the end (kodim03 at 0.1: -4.3 and
# -4.9 dB).
LR_FINAL = {"hashgrid": 0.1}

# Per backend: fixed options and a grid of size options; the grid entry closest to the target count is used.
IMAGE_BACKENDS: dict[str, tuple[str, dict, list[dict]]] = {
    "mlp-fourier": ("mlp", {"encoding": "fourier", "sigma": 10.0, "n_fourier": 128, "layers": 3}, []),
    "mlp-positional": ("mlp", {"encoding": "positional", "n_freqs": 10, "layers": 3}, []),
    "siren": ("siren", {"layers": 3}, []),
    "cam": ("cam", {"encoding": "fourier", "sigma": 10.0, "n_fourier": 128, "layers": 3, "grid_res": 32}, []),
    "hashgrid": ("hashgrid", {"hidden": 64, "layers": 2, "base_res": 16, "finest_res": 1024}, []),
    "densegrid": ("densegrid", {"hidden": 64, "layers": 2, "levels": 4}, []),
    # Gaussian RBF layer: the parameters go into the feature grids (up to 496^2), not the neurons (each neuron costs
    # an exp per pixel: 1024 neurons managed ~100 steps in 120 s).
    "rbf": ("rbf", {"grid_levels": (32, 64, 128, 256, 496)}, []),
}


def size_grid(backend: str) -> list[dict]:
    """Candidate size options for ``backend`` (the knob that sets its parameter count)."""
    if backend in ("mlp-fourier", "mlp-positional", "siren", "cam"):
        return [{"hidden": h} for h in range(32, 1025, 8)]
    if backend == "hashgrid":
        return [{"levels": lv, "log2_table": t} for lv in range(4, 17) for t in range(10, 20)]
    if backend == "densegrid":
        return [{"resolution": r, "features": f} for r in range(64, 1025, 16) for f in (2, 4, 8)]
    if backend == "rbf":
        return [{"n_rbf": k, "grid_features": f} for k in (64, 128, 256) for f in range(1, 9)]
    raise KeyError(backend)


def matched_options(backend: str, target: int, in_dim: int = 2, out_dim: int = 3) -> tuple[dict, int]:
    """The backend's options whose parameter count is closest to ``target``, and that count."""
    name, fixed, _ = IMAGE_BACKENDS[backend]
    best, best_n = None, None
    for size in size_grid(backend):
        opts = {**fixed, **size}
        if name == "hashgrid":  # count without allocating: dense levels are smaller than the table
            from nfields.encodings.hashgrid import level_resolutions

            rows = sum(
                min(2 ** opts["log2_table"], (r + 1) ** in_dim)
                for r in level_resolutions(opts["levels"], opts["base_res"], opts["finest_res"])
            )
            mlp_in = opts["levels"] * 2
            n = rows * 2 + (mlp_in * 64 + 64) + (64 * 64 + 64) + (64 * out_dim + out_dim)
        else:
            n = count_parameters(build_network(name, in_dim, out_dim, **opts))
        if best_n is None or abs(n - target) < abs(best_n - target):
            best, best_n = opts, n
    return best, int(best_n)


def machine() -> str:
    """One line naming the CPU, core count, torch build and GPU."""
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


def kodak_images(n: int, downscale: int, first: int = 1) -> list[tuple[str, torch.Tensor]]:
    """``n`` Kodak images from the ``first``-th (1-based) as (name, (H, W, 3) float tensor), box-downscaled."""
    folder = DATA / "kodak"
    files = sorted(folder.glob("kodim*.png"))[first - 1 : first - 1 + n]
    if not files:
        sys.exit(f"bench_backends: no Kodak images under {folder}")
    out = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            if downscale > 1:
                im = im.resize((im.width // downscale, im.height // downscale), Image.BOX)
            out.append((f.stem, torch.from_numpy(np.array(im)).float() / 255.0))
    return out


def table(rows: list[dict], cols: list[str]) -> str:
    """Markdown table of ``rows`` restricted to ``cols``."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.5f}" if 0 < abs(v) < 0.01 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def bench_kodak(args, images) -> list[dict]:
    rows = []
    for backend in args.backends:
        name, _, _ = IMAGE_BACKENDS[backend]
        opts, n = matched_options(backend, args.params)
        for img_name, img in images:
            lr = args.lr.get(name, 1e-3)
            r = fit_image(
                img,
                name,
                opts,
                steps=10**9,
                lr=lr,
                batch=args.batch,
                time_budget_s=max(args.budgets),
                eval_at_s=args.budgets,
                lr_final=args.lr_final if args.lr_final is not None else LR_FINAL.get(name, 1.0),
            )
            row = {"image": img_name, "backend": backend, "params": r.params, "param_dev": r.params / args.params - 1}
            evals = [h for h in r.history if "psnr" in h]
            for b in args.budgets:
                hit = [h for h in evals if h["seconds"] >= b - 1e-6]
                row[f"psnr@{b:g}s"] = (hit[0] if hit else evals[-1])["psnr"]
            row.update(steps=r.steps, peak_mem_mb=r.peak_mem_mb, options=opts, expected_params=n)
            rows.append(row)
            print(
                f"  kodak {img_name} {backend}: " + ", ".join(f"{k} {row[k]:.2f}" for k in row if k.startswith("psnr"))
            )
    return rows


def bench_cam_protocol(args, images) -> list[dict]:
    rows = []
    base = {"hidden": 256, "layers": 3, "encoding": "fourier", "sigma": args.cam_sigma, "n_fourier": 256}
    for img_name, img in images:
        for backend, name, opts in [("mlp-fourier", "mlp", base), ("cam", "cam", {**base, "grid_res": 32})]:
            r = fit_image(
                img, name, opts, steps=args.steps, lr=1e-3, batch=args.batch, protocol="every_other",
                lr_milestones=tuple(args.lr_milestones),
            )  # fmt: skip
            rows.append(
                {
                    "image": img_name,
                    "backend": backend,
                    "steps": r.steps,
                    "psnr_test": r.psnr,
                    "psnr_train": r.psnr_train,
                    "seconds": r.seconds,
                    "params": r.params,
                }
            )
            print(f"  every_other {img_name} {backend}: test {r.psnr:.2f} dB, train {r.psnr_train:.2f} dB")
    return rows


def bench_cam_speed(args) -> list[dict]:
    net = build_network("cam", 2, 3, hidden=256, layers=4, encoding="fourier", n_fourier=128, grid_res=64)
    x = torch.rand(args.batch, 2) * 2 - 1
    y = torch.rand(args.batch, 3)
    rows = []
    for impl, f in [("fused", net.forward), ("plain", net.forward_plain)]:
        times = []
        for i in range(args.speed_steps + 1):
            t = time.perf_counter()
            loss = torch.nn.functional.mse_loss(f(x), y)
            net.zero_grad()
            loss.backward()
            if i:  # the first step warms up
                times.append(time.perf_counter() - t)
        rows.append({"impl": impl, "batch": args.batch, "ms_per_step": 1000 * float(np.median(times))})
    rows.append({"impl": "plain / fused", "ms_per_step": rows[1]["ms_per_step"] / rows[0]["ms_per_step"]})
    return rows


# FreSh sweeps: per model family, the network, its fixed options, its learning rate and the hyperparameter FreSh sets.
FRESH_FAMILIES: dict[str, tuple[str, dict, float, str]] = {
    "fourier": ("mlp", {"hidden": 128, "layers": 3, "encoding": "fourier", "n_fourier": 128}, 1e-3, "sigma"),
    "siren": ("siren", {"hidden": 128, "layers": 3}, 1e-4, "omega_0"),
    "positional": ("mlp", {"hidden": 128, "layers": 3, "encoding": "positional"}, 1e-3, "n_freqs"),
}


def bench_fresh(args, images) -> list[dict]:
    rows = []
    name, base, lr, option = FRESH_FAMILIES[args.fresh_family]
    values = args.fresh_values or FAMILIES[args.fresh_family]["candidates"]
    if option == "n_freqs":
        values = [int(v) for v in values]
    for img_name, img in images:
        pick = fit_image(img, name, base, steps=1, fresh=True, fresh_candidates=values).fresh
        # The selection itself (spectra of the target and of every untrained candidate), timed inside fresh_select:
        # not the fit's one-off costs (torch's first optimizer imports torch._dynamo: seconds, counted until session
        # 23) nor its one training step and full-image evaluation.
        pick_s = pick.seconds
        dist = dict(zip(pick.values, pick.distances))
        if args.fresh_pick_only:
            print(f"  fresh {img_name}: pick {option}={pick.best:g}, selection {pick_s:.2f} s")
            rows.append(
                {"image": img_name, "family": args.fresh_family, "option": option, "value": pick.best,
                 "w1": dist[pick.best], "fresh_pick": True, "pick_seconds": pick_s,
                 "pick_cost": pick_s / args.fresh_budget}
            )  # fmt: skip
            continue
        res = []
        for v in values:
            r = fit_image(
                img, name, {**base, option: v}, steps=10**9, lr=lr, batch=args.batch, time_budget_s=args.fresh_budget
            )
            res.append(
                {
                    "image": img_name,
                    "family": args.fresh_family,
                    "option": option,
                    "value": v,
                    "w1": dist[v],
                    "psnr": r.psnr,
                    "fresh_pick": v == pick.best,
                    "pick_seconds": pick_s,
                    "pick_cost": pick_s / args.fresh_budget,
                }
            )
            mark = " <- FreSh" if v == pick.best else ""
            print(f"  fresh {img_name} {option} {v:g}: W1 {dist[v]:.2f}, psnr {r.psnr:.2f}{mark}")
        order = sorted(res, key=lambda r: -r["psnr"])
        rank = 1 + [r["value"] for r in order].index(pick.best)
        for r in res:
            r["pick_rank"] = rank
        rows += res
    return rows


def bench_sdf(args) -> list[dict]:
    rows = []
    configs = {
        "mlp": ("mlp", {"hidden": 128, "layers": 4, "encoding": "positional", "n_freqs": 6}, 1e-3),
        "cam-triplane": ("cam", {"hidden": 128, "layers": 4, "n_freqs": 6, "grid_kind": "triplane"}, 1e-3),
        "hashgrid": ("hashgrid", {"levels": 8, "log2_table": 15, "finest_res": 256, "hidden": 64}, 1e-2),
        "rbf": ("rbf", {"n_rbf": 256, "grid_levels": (8, 16, 32, 64), "grid_features": 4}, 1e-2),
    }
    for mesh in args.meshes:
        path = DATA / "meshes" / f"{mesh}.obj"
        for backend in args.sdf_backends:
            name, opts, lr = configs[backend]
            r = fit_sdf(
                path,
                name,
                opts,
                steps=10**9,
                time_budget_s=args.sdf_budget,
                lr=lr,
                lr_final=args.sdf_lr_final,
                eval_res=args.sdf_res,
            )
            rows.append(
                {
                    "mesh": mesh,
                    "backend": backend,
                    "iou": r.iou,
                    "chamfer_l1": r.chamfer_l1,
                    # the same in units of the unit box (fit_sdf normalises the longest side to 2 * MARGIN)
                    "chamfer_unit_box": r.chamfer_l1 / (2 * MARGIN),
                    "steps": r.steps,
                    "seconds": r.seconds,
                    "params": r.params,
                    "peak_mem_mb": r.peak_mem_mb,
                }
            )
            print(f"  sdf {mesh} {backend}: {r.summary()}")
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", default=["kodak", "cam_protocol", "cam_speed", "fresh", "sdf"])
    p.add_argument("--images", type=int, default=2, help="N Kodak images (from --first)")
    p.add_argument("--first", type=int, default=1, help="1-based index of the first Kodak image (3 = kodim03)")
    p.add_argument("--downscale", type=int, default=1, help="box-downscale the images (quick runs)")
    p.add_argument("--budgets", type=float, nargs="+", default=[30.0, 120.0], help="kodak: seconds of training")
    p.add_argument("--params", type=int, default=200_000, help="kodak: target parameter count (+-10%%)")
    p.add_argument("--backends", nargs="+", default=list(IMAGE_BACKENDS))
    p.add_argument("--batch", type=int, default=1 << 16, help="pixels per step")
    p.add_argument(
        "--lr-final",
        type=float,
        default=None,
        help="kodak: learning rates decay to this fraction by the budget's end, every backend (default: 0.1 for the "
        "hash grid, which oscillates late at a constant rate; 1 = constant for the rest, which the decay costs 4-5 dB "
        "on kodim03)",
    )
    p.add_argument("--steps", type=int, default=500, help="cam_protocol: steps per model")
    p.add_argument("--cam-sigma", type=float, default=10.0)
    p.add_argument(
        "--lr-milestones", type=float, nargs="*", default=[], help="cam_protocol: step fractions where lr drops 10x "
        "(the CAM paper: 2000 full-batch steps, --lr-milestones 0.5 0.75)",
    )  # fmt: skip
    p.add_argument("--speed-steps", type=int, default=5)
    p.add_argument("--fresh-family", choices=list(FRESH_FAMILIES), default="fourier", help="fresh: the model family")
    p.add_argument("--fresh-values", type=float, nargs="+", default=None, help="fresh: the sweep (default: FAMILIES)")
    p.add_argument("--fresh-budget", type=float, default=30.0)
    p.add_argument("--fresh-pick-only", action="store_true", help="fresh: the pick and its cost only (no sweep)")
    p.add_argument("--meshes", nargs="+", default=["armadillo", "bunny"])
    p.add_argument("--sdf-backends", nargs="+", default=["mlp", "cam-triplane", "hashgrid", "rbf"])
    p.add_argument("--sdf-budget", type=float, default=60.0)
    p.add_argument("--sdf-res", type=int, default=256)
    p.add_argument("--sdf-lr-final", type=float, default=0.1, help="lr decays exponentially to lr * this by the end")
    p.add_argument("--out", type=Path, default=Path("bench_out/backends.json"))
    args = p.parse_args(argv)
    args.lr = {"hashgrid": 1e-2, "densegrid": 1e-2, "rbf": 1e-2, "siren": 1e-4}
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    results: dict = {"command": command, "machine": machine()}
    needs_images = {"kodak", "cam_protocol", "fresh"} & set(args.sections)
    images = kodak_images(args.images, args.downscale, args.first) if needs_images else []
    report = []
    if "kodak" in args.sections:
        rows = results["kodak"] = bench_kodak(args, images)
        cols = ["image", "backend", "params", "param_dev"] + [f"psnr@{b:g}s" for b in args.budgets] + ["steps"]
        report.append(f"### Kodak PSNR (dB) at matched parameters ({args.params:,} +-10%)\n\n" + table(rows, cols))
    if "cam_protocol" in args.sections:
        rows = results["cam_protocol"] = bench_cam_protocol(args, images)
        report.append(
            f"### CAM vs Fourier MLP, every-other-pixel protocol, {args.steps} steps\n\n"
            + table(rows, ["image", "backend", "params", "psnr_test", "psnr_train", "seconds"])
        )
    if "cam_speed" in args.sections:
        rows = results["cam_speed"] = bench_cam_speed(args)
        report.append("### CAM time per training step\n\n" + table(rows, ["impl", "batch", "ms_per_step"]))
    if "fresh" in args.sections:
        rows = results["fresh"] = bench_fresh(args, images)
        report.append(
            f"### FreSh vs a {args.fresh_family} sweep ({args.fresh_budget:g} s each)\n\n"
            + table(rows, ["image", "value", "w1", "psnr", "fresh_pick", "pick_rank", "pick_seconds", "pick_cost"])
        )
    if "sdf" in args.sections:
        rows = results["sdf"] = bench_sdf(args)
        report.append(
            f"### SDF fitting, {args.sdf_budget:g} s\n\n"
            + table(
                rows, ["mesh", "backend", "params", "iou", "chamfer_l1", "chamfer_unit_box", "steps", "peak_mem_mb"]
            )
        )
    print("\n\n".join(report))
    print(f"\ncommand: {command}\nmachine: {results['machine']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    from nfields.errors import NFieldsError

    try:
        main()
    except NFieldsError as e:  # bad options: one line, no traceback
        sys.exit(f"bench_backends: {e}")
