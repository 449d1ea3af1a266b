"""What belongs to a capture rather than to the scene: a per-view colour gain.

Real captures do not light or expose every photo alike: DTU's robot arm shadows some of the rig's lamps from some
camera positions (NeRO drops those photos by hand), and auto-exposed phone captures vary by view. A field with a
fixed light -- the SDF + PBR field above all, whose light is one environment for every view -- then has to average
the views' brightness into its albedo and light, and fits all of them worse. :class:`ViewGain` gives each training
view a learned RGB factor on its rendered foreground (zero-mean in log over the training views, so the light keeps
the overall scale and held-out views, rendered with factor 1, see the average capture). It is a training-time
correction only: evaluation, relighting and export never apply it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ViewGain(nn.Module):
    """Per-view RGB gains ``exp(g_v - mean_train(g))`` (n_views, 3), all 1 at the start.

    Example::

        >>> vg = ViewGain(4, train_ids=[0, 1, 3])
        >>> vg(torch.full((2, 3), 0.5), torch.tensor([0, 3]), torch.ones(2), torch.zeros(3)).tolist()
        [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    """

    def __init__(self, n_views: int, train_ids: list[int]):
        super().__init__()
        self.log_gain = nn.Parameter(torch.zeros(n_views, 3))
        train = torch.zeros(n_views, dtype=torch.bool)
        train[torch.as_tensor(list(train_ids), dtype=torch.long)] = True
        self.register_buffer("train_views", train, persistent=False)

    def gains(self) -> Tensor:
        """(n_views, 3) factors, with geometric mean 1 over the training views."""
        g = self.log_gain
        return torch.exp(g - g[self.train_views].mean(0, keepdim=True))

    def forward(self, rgb: Tensor, view: Tensor, opacity: Tensor, background: Tensor) -> Tensor:
        """Rendered colours (B, 3) of rays from views ``view`` (B,) composited over ``background`` (3,) with
        ``opacity`` (B,) -> the same with the foreground scaled by its view's gain (the background untouched)."""
        bg = (1.0 - opacity)[:, None] * background.to(rgb)
        return (rgb - bg) * self.gains()[view] + bg

    def spread(self) -> float:
        """Standard deviation of the training views' log gains (how much the views disagree)."""
        g = self.log_gain.detach()[self.train_views]
        return float((g - g.mean(0)).std()) if len(g) > 1 else 0.0
