"""Single-signal fitting tasks: an image (:func:`fit_image`) or a mesh's signed distance (:func:`fit_sdf`) with any
registered network backend. Each returns a small result dataclass with quality, time, parameter count and memory,
and has a CLI options dataclass (``FitImage``, ``FitSdf``) whose ``main()`` prints a one-line summary."""

from __future__ import annotations

import resource
import time

import torch
import yaml

from nfields.errors import NFieldsError


def parse_options(items: list[str] | dict | None) -> dict:
    """Backend options from ``["hidden=64", "grid_levels=[8,16]"]`` (YAML-parsed values) or a dict (copied)."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise NFieldsError(f"--set {item}: expected option=value (e.g. hidden=64)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def pick_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class PeakMemory:
    """Peak memory of a fit in MB: CUDA's max allocated bytes on a GPU; on a CPU the process's resident set size,
    sampled by :meth:`sample` (``/proc/self/statm``; falls back to ``ru_maxrss``, the lifetime peak)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self._page_mb = resource.getpagesize() / 2**20
        self.sample()

    def sample(self) -> None:
        """Record the current usage (cheap: one small file read)."""
        if self.device.type == "cuda":
            return
        try:
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * self._page_mb)
        except OSError:
            self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    def mb(self) -> float:
        """The peak so far, in MB."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        self.sample()
        return self.peak


class Stopwatch:
    """Training-time clock that can be paused (evaluation does not count against a time budget)."""

    def __init__(self):
        self.total, self._start = 0.0, None

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is not None:
            self.total += time.perf_counter() - self._start
            self._start = None

    def elapsed(self) -> float:
        """Seconds counted so far (including the running lap)."""
        return self.total + (time.perf_counter() - self._start if self._start is not None else 0.0)


from nfields.tasks.image import FitImage, FitResult, fit_image  # noqa: E402
from nfields.tasks.sdf import FitSdf, SdfResult, fit_sdf  # noqa: E402

__all__ = ["FitImage", "FitResult", "FitSdf", "SdfResult", "fit_image", "fit_sdf", "parse_options"]
