"""NaN/inf losses and gradients are caught: the update is dropped, the learning rate backed off, the event reported,
and a run that keeps producing them stops with a one-line error instead of training on garbage."""

from __future__ import annotations

import math

import pytest
import torch

from nfields.config import build_config
from nfields.errors import NFieldsError
from nfields.train.trainer import MAX_BAD_STEPS, Trainer


def _params(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in trainer.field.parameters()])


def test_nan_loss_and_gradient_steps_are_skipped_and_backed_off(tmp_path, capsys):
    cfg = build_config("demo", None, "tiny", ["train.threads=1", "train.batch_rays=256"])
    trainer = Trainer(cfg, tmp_path, progress=False)
    forward = trainer.renderer.forward
    poison = {"mode": None}

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        if poison["mode"] == "loss":
            out.rgb = out.rgb * float("nan")
        elif poison["mode"] == "grad":
            out.rgb.register_hook(lambda g: g * float("inf"))
        return out

    trainer.renderer.forward = poisoned
    trainer.train_step()  # a good step: Adam has state, parameters move
    for mode in ("loss", "grad"):
        poison["mode"] = mode
        before = _params(trainer)
        stats = trainer.train_step()
        assert stats["skipped"] == 1
        assert torch.equal(_params(trainer), before)  # nothing of the bad step reached the weights
    assert trainer.lr_scale == 0.25 and trainer.bad_steps == 2
    assert "non-finite loss" in capsys.readouterr().err
    poison["mode"] = None
    stats = trainer.train_step()
    assert "skipped" not in stats and math.isfinite(stats["loss"]) and trainer.bad_steps == 0
    assert torch.isfinite(_params(trainer)).all()
    # The optimizer runs at the schedule's rate times the back-off.
    for g, lr in zip(trainer.optimizer.param_groups, trainer.scheduler.get_last_lr()):
        assert g["lr"] == pytest.approx(0.25 * lr)
    # A run that only produces NaN stops with one line naming the run folder.
    poison["mode"] = "loss"
    with pytest.raises(NFieldsError, match=r"NaN/inf \d+ steps in a row") as e:
        for _ in range(MAX_BAD_STEPS):
            trainer.train_step()
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)
