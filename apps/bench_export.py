"""Export benchmark on an analytic SDF: block-wise marching cubes, decimation, UV unwrap, PBR bake, GLB + validator.

    python apps/bench_export.py                                   # 512^3 grid, 2048^2 textures
    python apps/bench_export.py --resolution 256 --texture 1024   # quicker

Per stage: wall time, the process's peak RSS so far (``resource.getrusage``; monotonic, so it shows where the peak
was reached) and the stage's own peak of Python + numpy heap (``tracemalloc``; torch's allocator is not traced).
Prints a markdown table, the exact command and the machine; writes bench_out/export_<res>_<tex>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from nfields.errors import NFieldsError
from nfields.export import (
    bake_pbr_textures,
    decimate,
    extract_mesh,
    unwrapped_mesh,
    validate_gltf,
    write_glb,
)


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
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def sdf(x: torch.Tensor) -> torch.Tensor:
    """Sphere (r 0.5) united with a torus around z (R 0.6, r 0.15) and a box along +x; negative inside."""
    sphere = x.norm(dim=-1) - 0.5
    q = torch.stack([x[:, :2].norm(dim=-1) - 0.6, x[:, 2]], dim=-1)
    torus = q.norm(dim=-1) - 0.15
    b = (x - torch.tensor([0.55, 0.0, 0.0])).abs() - torch.tensor([0.3, 0.2, 0.25])
    box = b.clamp(min=0).norm(dim=-1) + b.max(dim=-1).values.clamp(max=0)
    return torch.minimum(torch.minimum(sphere, torus), box)


def material(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Smooth procedural PBR material with a finite-difference SDF normal (what a neural field would give)."""
    eps = 1e-3
    grad = torch.stack([sdf(x + eps * e) - sdf(x - eps * e) for e in torch.eye(3)], dim=-1)
    return {
        "albedo": 0.5 + 0.4 * torch.sin(4.0 * x),
        "roughness": 0.5 + 0.4 * torch.sin(3.0 * x[:, 0]),
        "metallic": (x[:, 2] > 0).float(),
        "normal": grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--texture", type=int, default=2048)
    ap.add_argument("--faces", type=int, default=200_000, help="decimation target before unwrapping")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    args = ap.parse_args()

    rows: list[dict] = []
    tracemalloc.start()

    def stage(name: str, fn):
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        out = fn()
        rows.append(
            {
                "stage": name,
                "seconds": round(time.perf_counter() - t0, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "peak_heap_mb": round(tracemalloc.get_traced_memory()[1] / 2**20, 1),
            }
        )
        print(f"{name}: {rows[-1]}", flush=True)
        return out

    aabb = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    mesh = stage(f"marching cubes {args.resolution}^3", lambda: extract_mesh(sdf, aabb, resolution=args.resolution))
    voxel = 2.0 / (args.resolution - 1)
    err = sdf(torch.from_numpy(np.asarray(mesh.vertices)).float()).abs()
    facts = {
        "mc_vertices": len(mesh.vertices),
        "mc_faces": len(mesh.faces),
        "mc_watertight": bool(mesh.is_watertight),
        "mc_max_abs_sdf_in_voxels": round(float(err.max()) / voxel, 4),
    }
    small = stage(f"decimate to {args.faces}", lambda: decimate(mesh, args.faces))
    uv_mesh = stage("unwrap (xatlas)", lambda: unwrapped_mesh(small))
    tex = stage(f"bake {args.texture}^2", lambda: bake_pbr_textures(uv_mesh, material, texture_size=args.texture))
    facts["texel_coverage"] = round(float(tex.coverage.mean()), 3)
    args.out.mkdir(parents=True, exist_ok=True)
    glb = args.out / f"export_{args.resolution}_{args.texture}.glb"
    stage("write glb", lambda: write_glb(glb, uv_mesh, tex))
    facts["glb_mb"] = round(glb.stat().st_size / 2**20, 1)
    try:
        report = stage("glTF validator", lambda: validate_gltf(glb))
        facts["validator"] = {k: report[k] for k in ("errors", "warnings", "infos", "hints")}
    except NFieldsError as e:
        facts["validator"] = f"skipped: {e}"
    tracemalloc.stop()

    print("\n| stage | seconds | peak RSS so far (MB) | stage heap peak (MB) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mb']} | {r['peak_heap_mb']} |")
    print("\n" + json.dumps(facts))
    cmd = "python " + " ".join(sys.argv)
    print(f"\ncommand: {cmd}\nmachine: {machine()}")
    result = {"command": cmd, "machine": machine(), "stages": rows, **facts}
    (args.out / f"export_{args.resolution}_{args.texture}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
