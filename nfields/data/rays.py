"""Random ray batches over a scene's views: pixels stay uint8 in the scene, only the batch is converted to float."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nfields.data.scene import Scene
from nfields.types import Rays


@dataclass
class RayBatch:
    """B training rays and what was observed along them.

    rays: origins/directions (B, 3); rgb: (B, 3) float32 in [0, 1]; mask: (B,) float32 in [0, 1] (foreground) or
    None when the scene has no masks; cam_idx: (B,) long scene view index of each ray.
    """

    rays: Rays
    rgb: Tensor
    mask: Tensor | None
    cam_idx: Tensor

    def __len__(self) -> int:
        return len(self.rays)


class RayBatcher:
    """Uniformly random pixels over the views ``ids`` of a scene (each pixel of each view equally likely).

    The stream is a function of ``seed`` only; :meth:`state_dict` / :meth:`load_state_dict` save and restore the
    generator so a resumed run continues with exactly the batches it would have drawn. ``batch_size`` may be
    changed between calls. Example::

        batcher = RayBatcher(scene, scene.train_ids, batch_size=4096)
        batch = batcher.next()  # batch.rays.origins (4096, 3), batch.rgb (4096, 3)
    """

    def __init__(self, scene: Scene, ids: list[int], batch_size: int, seed: int = 0, device="cpu"):
        if not ids:
            raise ValueError("RayBatcher needs at least one view id")
        self.scene = scene
        self.ids = torch.as_tensor(list(ids), dtype=torch.long)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.cameras = scene.cameras.to(self.device)
        self.generator = torch.Generator().manual_seed(int(seed))
        _, self.height, self.width = scene.images.shape[:3]
        # Flat views for one gather per batch; reshape() of a contiguous tensor shares memory (no copy).
        self._rgb = scene.images.reshape(-1, 3)
        self._mask = scene.masks.reshape(-1) if scene.masks is not None else None

    def next(self) -> RayBatch:
        """Draw ``batch_size`` random rays (with replacement) -> :class:`RayBatch` on the batcher's device."""
        b, g = self.batch_size, self.generator
        view = self.ids[torch.randint(len(self.ids), (b,), generator=g)]
        row = torch.randint(self.height, (b,), generator=g)
        col = torch.randint(self.width, (b,), generator=g)
        flat = (view * self.height + row) * self.width + col
        rgb = self._rgb[flat].float() / 255.0
        mask = self._mask[flat].float() / 255.0 if self._mask is not None else None
        pixels = torch.stack([col, row], -1).float() + 0.5  # pixel centres
        rays = self.cameras.rays(view.to(self.device), pixels.to(self.device))
        return RayBatch(
            rays=rays,
            rgb=rgb.to(self.device),
            mask=mask.to(self.device) if mask is not None else None,
            cam_idx=view.to(self.device),
        )

    def state_dict(self) -> dict:
        """The random generator's state (a uint8 tensor), to store in a checkpoint."""
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`; the next batches continue that stream."""
        self.generator.set_state(state["rng"])
