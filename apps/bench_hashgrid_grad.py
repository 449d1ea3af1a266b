"""Time an SDF training step's geometry part with the hash grid's two position-gradient implementations.

    python apps/bench_hashgrid_grad.py [--points 65536] [--repeats 5] [--levels 12]

Per repeat and implementation (interleaved, so machine-speed drift hits both alike): the SDF, its features and its
gradient at ``--points`` random points with ``create_graph`` (what the renderer does for every kept sample), then
the backward of an Eikonal + feature + SDF loss (what the optimiser step needs), on the DTU cpu preset's geometry
(hash grid 12 levels, 2^17 rows, finest 512, one hidden layer of 64). ``autograd``: plain autograd ops and their
double backward (the reference); ``closed_form``: the default custom functions (see nfields/encodings/hashgrid.py).
Prints the median milliseconds of the forward and backward part per implementation and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nfields.encodings.hashgrid import HashGridEncoding
from nfields.fields.sdf import SDFField

MODES = ("autograd", "closed_form")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=65536)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--levels", type=int, default=12, help="active hash levels (coarse-to-fine training starts at 4)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    opts = dict(levels=12, log2_table=17, base_res=16, finest_res=512, hidden=64, layers=1)
    field = SDFField([-1, -1, -1, 1, 1, 1], network="hashgrid", network_options=opts, normals="analytic")
    enc = next(m for m in field.modules() if isinstance(m, HashGridEncoding))
    enc.active_levels = args.levels
    with torch.no_grad():
        enc.table.normal_(0.0, 0.1)
    x = torch.rand(args.points, 3) * 1.6 - 0.8
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for r in range(args.repeats + 1):
        for mode in MODES:
            enc.position_grad = mode
            field.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            sdf, feat, grad = field.geometry_and_gradient(x, create_graph=True)
            t1 = time.perf_counter()
            loss = ((grad.norm(dim=-1) - 1) ** 2).mean() + feat.square().mean() + sdf.square().mean()
            loss.backward()
            t2 = time.perf_counter()
            if r:  # the first round warms up
                times[mode].append((t1 - t0, t2 - t1))
    print(f"{args.points} points, {args.levels} active levels, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}:")  # fmt: skip
    total = {}
    for mode in MODES:
        fwd = statistics.median(a for a, _ in times[mode]) * 1e3
        bwd = statistics.median(b for _, b in times[mode]) * 1e3
        total[mode] = fwd + bwd
        print(f"  {mode:12s} forward + gradient {fwd:6.0f} ms, backward {bwd:6.0f} ms, total {fwd + bwd:6.0f} ms")
    print(f"  speed-up {total['autograd'] / total['closed_form']:.2f}x")


if __name__ == "__main__":
    main()
