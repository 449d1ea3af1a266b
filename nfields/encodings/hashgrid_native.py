"""The ONLY place that builds and loads the fused CPU hash-grid kernels (hashgrid_cpu.cpp); the pure-torch twin is
the level-by-level code in hashgrid.py, which the tests compare these kernels against.

The kernels are plain C built on first use with the system's C++ compiler (``g++ -O3 -fopenmp``, about a second, no
torch headers) into a per-user cache and called through ctypes with the tensors' data pointers. Without a compiler,
or with ``NFIELDS_NATIVE=0`` in the environment, :func:`native_kernels` returns None and the torch code runs.

What the fusion buys (2-core CPU, 131k points, 12 levels): the torch code materialises (2^d, levels, N) corner
tensors and streams them through memory at every elementwise op; the kernels recompute a point's corners in
registers. See :class:`HashGridEncoding` and docs/results.md for the measured speed-ups.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_SOURCE = Path(__file__).with_name("hashgrid_cpu.cpp")
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
# Entry points: name -> (tensor inputs after x, outputs); each is called as
# (d, F, N, x, *inputs, L, res, offset, hashed, mask, stride, *outputs, threads) and returns 0 (or -1: unsupported).
_KERNELS = {
    "nf_hg_forward": (1, 1),  # table -> encoding
    "nf_hg_backward_table": (1, 1),  # grad of the encoding -> grad of the table
    "nf_hg_grad_x": (2, 1),  # table, grad of the encoding -> grad of x
    "nf_hg_grad_x_backward": (3, 2),  # table, grad of the encoding, grad of grad_x -> grads of table and encoding
}
_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    root = os.environ.get("NFIELDS_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "nfields" / "native"


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build() -> Path:
    """Compile the kernels (once per source, flags and CPU) and return the shared library's path."""
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join(_FLAGS).encode() + _cpu_id().encode()).hexdigest()[:16]
    out = _cache_dir() / f"hashgrid_cpu_{key}.so"
    if out.exists():
        return out
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes never load a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *_FLAGS, str(_SOURCE), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def native_kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; None when disabled (``NFIELDS_NATIVE=0``) or when it
    cannot be built here (one warning says why, then the pure-torch code runs)."""
    global _lib, _tried
    if os.environ.get("NFIELDS_NATIVE", "1") == "0":
        return None
    if _tried:
        return _lib
    _tried = True
    if sys.platform == "win32":
        return None
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError) as exc:
        warnings.warn(
            f"nfields: fused CPU hash-grid kernels unavailable ({exc}); using the pure-torch encoding", stacklevel=2
        )
        return None
    p, i32, i64, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_uint32
    levels = [i32, p, p, p, u32, i64]  # L, res, offset, hashed, mask, stride
    for name, (n_in, n_out) in _KERNELS.items():
        fn = getattr(lib, name)
        fn.argtypes = [i32, i32, i64, p, *[p] * n_in, *levels, *[p] * n_out, i32]
        fn.restype = i32
    _lib = lib
    return _lib


class LevelSpec:
    """Per-level constants of a hash grid as the kernels take them (CPU tensors kept alive here)."""

    def __init__(
        self, resolutions: list[int], offsets: list[int], dense: list[bool], log2_table: int, in_dim: int, features: int
    ):
        self.res = torch.tensor(resolutions, dtype=torch.int32)
        self.offset = torch.tensor(offsets, dtype=torch.int64)
        self.hashed = torch.tensor([0 if d else 1 for d in dense], dtype=torch.int32)
        self.mask = 2**log2_table - 1
        self.d, self.f, self.levels = in_dim, features, len(resolutions)


def _run(kernel: str, spec: LevelSpec, active: int, xc: Tensor, inputs: list[Tensor], outputs: list[Tensor | None]):
    """Call one kernel on the first ``active`` levels; a None output is not computed."""
    inputs = [t.contiguous() for t in inputs]  # held in a list: a temporary could be freed before the call
    rc = getattr(native_kernels(), kernel)(
        spec.d, spec.f, xc.shape[0], xc.data_ptr(), *[t.data_ptr() for t in inputs],
        active, spec.res.data_ptr(), spec.offset.data_ptr(), spec.hashed.data_ptr(), spec.mask, spec.levels * spec.f,
        *[None if t is None else t.data_ptr() for t in outputs], max(torch.get_num_threads(), 1),
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"{kernel}: unsupported dimension {spec.d} / features per level {spec.f}")


def native_encode(table: Tensor, x: Tensor, spec: LevelSpec, active: int) -> Tensor:
    """The hash encoding (N, levels * F) of x (N, d) through the fused kernels; differentiable w.r.t. the table and,
    twice, w.r.t. x as :class:`HashGridEncoding`'s closed-form path is (levels beyond ``active`` encode as 0)."""
    return _Encode.apply(table, x, spec, active)


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: Tensor, x: Tensor, spec: LevelSpec, active: int) -> Tensor:
        xc = x.detach().contiguous()
        out = (torch.empty if active == spec.levels else torch.zeros)(
            xc.shape[0], spec.levels * spec.f, dtype=torch.float32
        )
        _run("nf_hg_forward", spec, active, xc, [table], [out])
        ctx.save_for_backward(table, xc)
        ctx.spec, ctx.active = spec, active
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        table, xc = ctx.saved_tensors
        grad_table = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_table = torch.zeros_like(table)
            _run("nf_hg_backward_table", ctx.spec, ctx.active, xc, [grad_out], [grad_table])
        if ctx.needs_input_grad[1]:
            grad_x = _GradX.apply(table, grad_out.contiguous(), xc, ctx.spec, ctx.active)
        return grad_table, grad_x, None, None


class _GradX(torch.autograd.Function):
    """grad_x (N, d) from the table and the encoding's incoming gradient; differentiable once more w.r.t. both (not
    w.r.t. x: sample positions are not parameters)."""

    @staticmethod
    def forward(ctx, table: Tensor, grad_out: Tensor, xc: Tensor, spec: LevelSpec, active: int) -> Tensor:
        gx = torch.empty(xc.shape[0], spec.d, dtype=torch.float32)
        _run("nf_hg_grad_x", spec, active, xc, [table, grad_out], [gx])
        ctx.save_for_backward(table, grad_out, xc)
        ctx.spec, ctx.active = spec, active
        return gx

    @staticmethod
    @once_differentiable
    def backward(ctx, gg: Tensor):
        table, grad_out, xc = ctx.saved_tensors
        g_table = torch.zeros_like(table) if ctx.needs_input_grad[0] else None
        g_out = torch.zeros_like(grad_out) if ctx.needs_input_grad[1] else None
        if g_table is not None or g_out is not None:
            _run("nf_hg_grad_x_backward", ctx.spec, ctx.active, xc, [table, grad_out, gg], [g_table, g_out])
        return g_table, g_out, None, None, None
