"""NeuS-style signed distance field with a neural colour head.

The geometry network (any registered backend) adds a learned correction to a sphere, so every backend starts from
the same sphere SDF (NeuS's sphere initialisation, without backend-specific weight tricks). Normals come from the SDF
gradient, either by autograd or by central finite differences (instant-nsr-pl; needed where the backend's autograd
has no double backward, and cheaper on a CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nfields.encodings.hashgrid import HashGridEncoding
from nfields.encodings.sh import SphericalHarmonics
from nfields.fields.base import Field
from nfields.registry import build_network
from nfields.render.shading import reflect

COLOR_DIRS = ("view", "reflected", "none")
DETACH_COLOR_NORMALS = ("none", "neural", "all")


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    """ReLU MLP with ``layers`` hidden layers."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class SDFField(Field):
    """Signed distance (negative inside) + features; colour from (normal, view direction, features).

    ``inv_s()`` is NeuS's learned sharpness s (alpha from sigmoid(s * sdf)); ``cos_anneal_ratio`` is set by the
    trainer (0 -> 1 over the first steps, as NeuS does).
    """

    kind = "sdf"

    def __init__(
        self,
        aabb: Tensor | list[float],
        network: str = "hashgrid",
        network_options: dict | None = None,
        geo_feat_dim: int = 15,
        init_radius: float = 0.5,
        init_variance: float = 0.3,
        color_hidden: int = 64,
        color_layers: int = 2,
        normals: str = "finite_difference",
        fd_eps: float = 1e-3,  # <= 0: tied to the active hash level (see finite_difference_eps)
        color_dirs: str = "view",
        detach_color_normals: str = "none",
    ):
        super().__init__(aabb)
        self.net = build_network(network, 3, 1 + geo_feat_dim, **(network_options or {}))
        self.init_radius = init_radius
        self.variance = nn.Parameter(torch.tensor(float(init_variance)))
        self.dir_enc = SphericalHarmonics(4)
        self.color_net = mlp(3 + self.dir_enc.out_dim + geo_feat_dim, color_hidden, color_layers, 3)
        if normals not in ("finite_difference", "analytic"):
            raise ValueError(f"normals must be finite_difference or analytic, got {normals!r}")
        self.normal_mode = normals
        self.fd_eps = fd_eps
        # For the level-tied finite-difference step: the geometry's hash grid (if any) and the box's longest side.
        self._fd_grid = next((m for m in self.net.modules() if isinstance(m, HashGridEncoding)), None)
        self._extent = float((self.aabb[3:] - self.aabb[:3]).max())
        if color_dirs not in COLOR_DIRS:
            raise ValueError(f"color_dirs must be one of {', '.join(COLOR_DIRS)}, got {color_dirs!r}")
        self.color_dirs = color_dirs
        if detach_color_normals not in DETACH_COLOR_NORMALS:
            raise ValueError(
                f"detach_color_normals must be one of {', '.join(DETACH_COLOR_NORMALS)}, got {detach_color_normals!r}"
            )
        self.detach_color_normals = detach_color_normals
        self.cos_anneal_ratio = 1.0
        # Floor of the occupancy shell's half-width (world units); see density().
        self.min_shell_width = 2.0 / 64.0

    def geometry(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """SDF (N,) in world units and features (N, geo_feat_dim)."""
        h = self.net(self.normalize(x))
        sdf = x.norm(dim=-1) - self.init_radius + h[:, 0]
        return sdf, h[:, 1:]

    def sdf(self, x: Tensor) -> Tensor:
        """Signed distance only (N,)."""
        return self.geometry(x)[0]

    def geometry_and_gradient(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """SDF (N,), features (N, F) and the SDF gradient (N, 3) (finite differences or autograd)."""
        if self.normal_mode == "analytic":
            grad_was_on = torch.is_grad_enabled()
            with torch.enable_grad():
                x = x if x.requires_grad else x.detach().requires_grad_(True)
                sdf, feat = self.geometry(x)
                (grad,) = torch.autograd.grad(sdf.sum(), x, create_graph=create_graph)
            if not grad_was_on:
                # Called under no_grad (rendering, evaluation): drop the graph built only to get the gradient.
                sdf, feat = sdf.detach(), feat.detach()
            return sdf, feat, grad
        sdf, feat = self.geometry(x)
        e = self.finite_difference_eps()
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * e
        pts = torch.cat([x[None] + offsets[:, None], x[None] - offsets[:, None]], dim=0).reshape(-1, 3)
        s = self.sdf(pts).reshape(2, 3, -1)
        grad = ((s[0] - s[1]) / (2 * e)).T
        return sdf, feat, grad

    def finite_difference_eps(self) -> float:
        """Step of the finite-difference normals (world units): ``fd_eps`` when > 0, else one cell of the finest
        active hash-grid level (Neuralangelo's numerical gradients: the step shrinks as coarse-to-fine training
        activates finer levels, and each difference spans the grid's cells, so its gradient reaches their neighbours
        instead of fitting within-cell wiggles)."""
        if self.fd_eps > 0:
            return self.fd_eps
        if self._fd_grid is None:
            return 1e-3  # no hash grid (e.g. an MLP or tiny-cuda-nn): the fixed default step
        return self._extent / self._fd_grid.resolutions[self._fd_grid.n_active() - 1]

    def inv_s(self) -> Tensor:
        """NeuS sharpness s = exp(10 * variance), clamped."""
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)

    def color(self, features: Tensor, dirs: Tensor, normals: Tensor | None = None) -> Tensor:
        """RGB (N, 3) from features, unit ray directions and unit normals. With ``color_dirs="reflected"`` the head
        sees the ray mirrored about the normal instead of the ray itself (Ref-NeRF): a glossy highlight is then a
        smooth function of its input, so the SDF is not pushed to bend the surface to fake one. ``color_dirs="none"``:
        the head sees no direction at all, a view-independent colour (what a diffuse material can show).

        ``detach_color_normals`` other than ``"none"``: the head sees the normals without their gradient, so the
        photometric loss shapes the surface only through where it is (the volume-rendering weights) and its
        features, never by tilting normals to darken or brighten a pixel (baked shadows)."""
        if normals is None:
            normals = torch.zeros_like(dirs)
        else:
            if self.detach_color_normals != "none":
                normals = normals.detach()
            if self.color_dirs == "reflected":
                dirs = reflect(-dirs, normals)  # the mirrored ray, pointing away from the surface
        if self.color_dirs == "none":  # view-independent colour (a diffuse reference; a point's normal is fixed)
            enc = dirs.new_zeros(dirs.shape[0], self.dir_enc.out_dim)
        else:
            enc = self.dir_enc(dirs)
        h = torch.cat([normals, enc, features], dim=-1)
        return torch.sigmoid(self.color_net(h))

    def shell_width(self, step_size: float) -> float:
        """Half-width of the band |sdf| < w outside of which NeuS's alpha is negligible (< ~1e-4 per sample) at
        the current sharpness s: 9 / s, plus one marching step for the interval's extent."""
        return 9.0 / float(self.inv_s().detach()) + float(step_size)

    def density(self, x: Tensor) -> Tensor:
        """Occupancy proxy for the grid: high within a shell around the surface whose width shrinks with s.

        The shell's half-width never drops below ``min_shell_width`` (default 2/64), so a cell crossing the surface
        is not dropped when s is large: one jittered point per cell always lands in the shell when the cell's
        diagonal is below it (grids of >= 111 cells over a [-1, 1] box). Coarser grids rely on the grid's EMA (an
        occupied cell decays over ~100 updates) to keep surface cells; set ``min_shell_width`` to the cell diagonal
        for a single-update guarantee.
        """
        sdf = self.sdf(x)
        width = max(self.min_shell_width, 4.0 / float(self.inv_s()))
        return 100.0 * torch.sigmoid((width - sdf.abs()) * 200.0)


def eikonal_loss(grad: Tensor) -> Tensor:
    """Mean (|grad sdf| - 1)^2 over samples (N, 3)."""
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()
