"""model.view_gain: a per-view RGB gain learns which training view was captured darker, keeps a geometric mean of
1 over the training views, and touches neither the background nor what evaluation renders."""

from __future__ import annotations

import torch

from nfields.config import build_config
from nfields.fields.capture import ViewGain
from nfields.train.trainer import Trainer


def test_view_gain_scales_the_foreground_only_and_is_normalised_over_training_views():
    vg = ViewGain(4, train_ids=[0, 1, 2])
    with torch.no_grad():
        vg.log_gain.copy_(torch.tensor([[0.1] * 3, [0.1] * 3, [0.4] * 3, [5.0] * 3]))  # view 3 is held out
    g = vg.gains()
    assert torch.allclose(g[:3].log().mean(0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(g[2], torch.full((3,), float(torch.exp(torch.tensor(0.2)))), atol=1e-6)
    bg = torch.tensor([1.0, 1.0, 1.0])
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    out = vg(rgb, torch.tensor([2, 2]), torch.tensor([0.0, 0.5]), bg)
    assert torch.allclose(out[0], bg)  # no foreground: the background as it was
    assert torch.allclose(out[1], (0.5 - 0.5) * g[2] + 0.5)


def test_training_finds_the_darkened_view(tmp_path):
    cfg = build_config("demo", None, "tiny", ["train.threads=1", "model.shading=neural", "model.view_gain=true",
                                              "train.steps=150", "train.eval_every=0"])  # fmt: skip
    trainer = Trainer(cfg, tmp_path, progress=False)
    dark = trainer.scene.train_ids[0]
    with torch.no_grad():  # the batcher reads the scene's images in place
        trainer.scene.images[dark] = (trainer.scene.images[dark].float() * 0.6).to(torch.uint8)
    for _ in range(150):
        stats = trainer.train_step()
        trainer.step += 1
    g = trainer.field.view_gain.gains().detach().mean(-1)
    others = [i for i in trainer.scene.train_ids if i != dark]
    # Measured: the dark view's gain ~0.6x the others' (their geometric mean 1 by construction).
    assert g[dark] < 0.8 * g[others].mean(), g
    assert stats["view_gain_spread"] > 0.02
    state = trainer.field.state_dict()
    assert "view_gain.log_gain" in state  # saved and resumed with the field
