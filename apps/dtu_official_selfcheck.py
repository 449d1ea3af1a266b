"""Scale check of `nfields eval --dtu-gt` on a real DTU run without DTU's ground truth: the run's own culled mesh
(in mm) stands in for the scan, so the figures are the metric's sampling floor; prints each stage's time.

    python apps/dtu_official_selfcheck.py bench_out/runs/s19_pbr1500 [--resolution 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import trimesh

from nfields.train.dtu_eval import DTUGroundTruth, culled_mesh_mm, dtu_metrics, sample_surface_mm
from nfields.train.render_run import open_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--gt-points", type=int, default=3_000_000)
    args = p.parse_args()
    trainer = open_run(args.run)
    t = time.perf_counter()
    mesh = culled_mesh_mm(trainer.field, trainer.scene, resolution=args.resolution)
    print(f"marching cubes + culling: {time.perf_counter() - t:.1f} s, {len(mesh.faces)} faces")
    print(f"mesh extent {np.round(mesh.extents, 1)} mm, area {mesh.area:.0f} mm^2")
    gt_pts = np.asarray(trimesh.sample.sample_surface(mesh, args.gt_points, seed=5)[0])
    lo, hi = gt_pts.min(0) - 10, gt_pts.max(0) + 10
    shape = tuple(int(v) for v in np.ceil(hi - lo) + 1)
    gt = DTUGroundTruth(0, gt_pts, np.ones(shape, bool), np.stack([lo, hi]), 1.0, np.array([0, 0, 0, 1.0]))
    t = time.perf_counter()
    pts = sample_surface_mm(mesh)
    print(f"sampling: {time.perf_counter() - t:.1f} s, {len(pts)} samples")
    t = time.perf_counter()
    print(dtu_metrics(pts, gt))
    print(f"nearest neighbours: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
