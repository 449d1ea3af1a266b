"""``nfields view TARGET --seconds N``: a mesh file and a run folder each start a server that answers, then exit 0."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("viser", reason="the viewer needs viser (pip install 'nfields[viewer]')")

NFIELDS = [sys.executable, "-m", "nfields.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_fetch(target: Path, seconds: float = 3.0) -> tuple[int, str, str]:
    """Run ``nfields view TARGET`` on a free port; fetch its page once while it serves. -> (rc, stdout, stderr)."""
    port = free_port()
    args = ["view", str(target), "--port", str(port), "--seconds", str(seconds)]
    proc = subprocess.Popen(
        NFIELDS + args, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = proc.stdout.readline()  # "viewer: http://127.0.0.1:<port>", printed once the server listens
    fetched = False
    if first.startswith("viewer: "):
        url = first.split()[1]
        assert url == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url, timeout=5) as r:
            fetched = r.status == 200
    out, err = proc.communicate(timeout=90)
    assert fetched, (first, out, err)
    return proc.returncode, first + out, err


@pytest.fixture
def glb_file(tmp_path) -> Path:
    from nfields.export import extract_mesh, unwrapped_mesh, write_glb

    mesh = extract_mesh(lambda x: x.norm(dim=-1) - 0.5, [-1, -1, -1, 1, 1, 1], resolution=24)
    return write_glb(tmp_path / "ball.glb", unwrapped_mesh(mesh), None)


def test_view_mesh_file_serves_then_exits(glb_file):
    t0 = time.monotonic()
    rc, out, err = serve_and_fetch(glb_file)
    assert rc == 0, err
    assert time.monotonic() - t0 < 60


def test_view_run_serves_then_exits(tmp_path):
    from nfields.config import build_config
    from nfields.train.checkpoint import new_run_dir
    from nfields.train.trainer import Trainer

    cfg = build_config("demo", None, "tiny", ["data.downscale=4"])
    run_dir = new_run_dir(tmp_path / "runs", "r")
    cfg.name = run_dir.name
    Trainer(cfg, run_dir, progress=False).save()  # the initial field is enough to serve
    rc, out, err = serve_and_fetch(run_dir)
    assert rc == 0, err


def test_view_bad_target_is_one_line_exit_2(tmp_path, capsys):
    from nfields.cli import entrypoint

    (tmp_path / "notes.txt").write_text("not a mesh")
    for target, needle in [
        (tmp_path / "missing", "no such run folder or mesh file"),
        (tmp_path / "notes.txt", "not a"),
    ]:
        assert entrypoint(["view", str(target), "--seconds", "1"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines
