"""Integrity of exported files: atomic (all-or-nothing) writes and the Khronos glTF validator.

The validator is the npm package ``gltf-validator`` run by node through ``gltf_validate.js`` (beside this file).
It is looked up in ``$NFIELDS_NODE_MODULES`` if set, else in ``<repo>/.cache/npm/node_modules``, where
``scripts/install.sh`` puts it (``npm install --prefix .cache/npm gltf-validator``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from nfields.errors import NFieldsError

_SCRIPT = Path(__file__).with_name("gltf_validate.js")
_REPO = Path(__file__).resolve().parents[2]


def atomic_export(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Run ``writer(tmp_path)`` in a temporary folder beside ``path``, then move its files into place.

    ``tmp_path`` has the same file name as ``path``; the writer may also create sibling files next to it (an OBJ's
    .mtl and PNGs, a .gltf's .bin). Only when the writer returns are the files moved with ``os.replace`` (same
    file system, so each move is atomic), the main file last. If the writer raises, nothing at ``path`` or beside
    it is touched and the temporary folder is removed; the exception propagates.

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    if not path.name or path.is_dir():
        raise NFieldsError(f"{path}: export path must be a file name, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        writer(tmpdir / path.name)
        produced = sorted(tmpdir.iterdir())
        if not (tmpdir / path.name).is_file():
            raise NFieldsError(f"{path}: the writer did not create the file")
        if any(not p.is_file() for p in produced):
            raise NFieldsError(f"{path}: the writer created a folder; only files beside the main file are supported")
        for p in sorted(produced, key=lambda p: p.name == path.name):  # main file last
            os.replace(p, path.parent / p.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def find_gltf_validator() -> tuple[str, Path]:
    """(node executable, node_modules folder holding gltf-validator), or a one-line NFieldsError saying what to do."""
    node = shutil.which("node")
    if node is None:
        raise NFieldsError("validate_gltf: node not found on PATH (install Node.js, e.g. apt-get install nodejs npm)")
    env = os.environ.get("NFIELDS_NODE_MODULES")
    modules = Path(env) if env else _REPO / ".cache" / "npm" / "node_modules"
    if not (modules / "gltf-validator").is_dir():
        raise NFieldsError(
            f"validate_gltf: gltf-validator not found in {modules} "
            f"(npm install --prefix {_REPO / '.cache' / 'npm'} gltf-validator, or set NFIELDS_NODE_MODULES)"
        )
    return node, modules


def validate_gltf(path: str | Path, timeout: float = 300.0) -> dict:
    """Validate a .glb / .gltf file with the Khronos glTF validator.

    Returns:
        ``{"errors": n, "warnings": n, "infos": n, "hints": n, "messages": [{"code", "message", "severity",
        "pointer"}...], "report": <the validator's full report>}``; severity 0 error, 1 warning, 2 info, 3 hint.
    """
    path = Path(path)
    if not path.is_file():
        raise NFieldsError(f"{path}: no such file to validate")
    node, modules = find_gltf_validator()
    env = dict(os.environ, NODE_PATH=str(modules))
    try:
        run = subprocess.run(
            [node, str(_SCRIPT), str(path)], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise NFieldsError(f"{path}: glTF validator did not finish in {timeout:.0f} s") from e
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise NFieldsError(f"{path}: glTF validator failed: {last}")
    report = json.loads(run.stdout)
    issues = report.get("issues", {})
    return {
        "errors": int(issues.get("numErrors", 0)),
        "warnings": int(issues.get("numWarnings", 0)),
        "infos": int(issues.get("numInfos", 0)),
        "hints": int(issues.get("numHints", 0)),
        "messages": [
            {k: m.get(k) for k in ("code", "message", "severity", "pointer")} for m in issues.get("messages", [])
        ],
        "report": report,
    }
