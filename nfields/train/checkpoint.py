"""Run folders and atomic checkpoints.

A run folder holds ``config.yaml`` (reproduces the run), ``ckpt/step_XXXXXXX.pt`` (the last few checkpoints),
``metrics.jsonl`` (one JSON object per logged step or evaluation) and ``renders/``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from nfields.errors import NFieldsError

CKPT_RE = re.compile(r"step_(\d+)\.pt$")


def new_run_dir(root: Path, name: str) -> Path:
    """Create ``root/name``; if it exists, ``root/name_1``, ``_2``... An existing run is never overwritten."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NFieldsError(f"{root}: cannot create the output folder ({e.strerror})") from None
    if not os.access(root, os.W_OK):
        raise NFieldsError(f"{root}: output folder is not writable")
    candidate, k = root / name, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            k += 1
            candidate = root / f"{name}_{k}"
        except OSError as e:
            raise NFieldsError(f"{candidate}: cannot create the run folder ({e.strerror})") from None


def latest_run_dir(root: Path, name: str) -> Path | None:
    """The newest existing run folder named ``name`` or ``name_<k>`` under root (for ``--resume``)."""
    root = Path(root)
    if not root.is_dir():
        return None
    pat = re.compile(rf"^{re.escape(name)}(_\d+)?$")
    runs = [p for p in root.iterdir() if p.is_dir() and pat.match(p.name)]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    d = Path(run_dir) / "ckpt"
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.search(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``ckpt/step_<step>.pt`` atomically (temp file in the same folder + rename) and keep the last ``keep``."""
    d = Path(run_dir) / "ckpt"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.pt"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a damaged file gives a one-line error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise NFieldsError(f"{path}: cannot read checkpoint ({type(e).__name__})") from None


class MetricsLog:
    """Append-only ``metrics.jsonl``; on resume, entries after the checkpoint's step are dropped (they are redone)."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
            self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """All records."""
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
