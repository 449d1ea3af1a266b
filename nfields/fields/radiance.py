"""Radiance field (Instant-NGP style): geometry backbone -> density + features, colour MLP on (SH(dirs), features)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nfields.encodings.sh import SphericalHarmonics
from nfields.fields.base import Field
from nfields.fields.mlp import check_option, make_mlp
from nfields.registry import build_network

DIR_ENCODINGS = ("sh", "none")


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward uses exp(min(x, 15)): large densities cannot blow up the gradient (Instant-NGP)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """Elementwise exp with a clamped-gradient backward (gradient of exp(min(x, 15))). Any shape."""
    return _TruncExp.apply(x)


class RadianceField(Field):
    """Density field for volume rendering.

    ``geometry(x)``: x (N, 3) world -> density (N,) >= 0 (0 outside the aabb), features (N, geo_feat_dim).
    ``color(features, dirs)``: features (N, geo_feat_dim), unit dirs (N, 3) -> rgb (N, 3) in [0, 1].

    Example::

        >>> f = RadianceField([-1, -1, -1, 1, 1, 1], network_options={"levels": 4, "log2_table": 12})
        >>> sigma, feat = f.geometry(torch.rand(8, 3) * 2 - 1)
        >>> f.color(feat, torch.nn.functional.normalize(torch.randn(8, 3), dim=-1)).shape
        torch.Size([8, 3])
    """

    kind = "density"

    def __init__(
        self,
        aabb: Tensor | list[float],
        network: str = "hashgrid",
        network_options: dict | None = None,
        geo_feat_dim: int = 15,
        color_hidden: int = 64,
        color_layers: int = 2,
        dir_encoding: str = "sh",
        density_bias: float = -1.0,
    ):
        super().__init__(aabb)
        check_option("geo_feat_dim", geo_feat_dim, geo_feat_dim >= 1, ">= 1")
        check_option("dir_encoding", dir_encoding, dir_encoding in DIR_ENCODINGS, f"one of {', '.join(DIR_ENCODINGS)}")
        self.geo_feat_dim = geo_feat_dim
        # Negative bias: exp(-1) ~ 0.37 density at init, so the scene starts nearly transparent yet every sample
        # still gets gradient (a plain ReLU/zero init can leave the field dead).
        self.density_bias = density_bias
        self.backbone = build_network(network, 3, 1 + geo_feat_dim, **(network_options or {}))
        self.dir_encoding: nn.Module = SphericalHarmonics(4) if dir_encoding == "sh" else nn.Identity()
        dir_dim = 16 if dir_encoding == "sh" else 3
        self.color_net = make_mlp(dir_dim + geo_feat_dim, 3, color_hidden, color_layers, "relu")

    def geometry(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, 3) world positions -> density (N,) >= 0, features (N, geo_feat_dim)."""
        xn = self.normalize(x)
        inside = (xn.abs() <= 1.0).all(dim=-1)
        h = self.backbone(xn.clamp(-1.0, 1.0))
        density = trunc_exp(h[:, 0] + self.density_bias) * inside
        return density, h[:, 1:]

    def color(self, features: Tensor, dirs: Tensor, normals: Tensor | None = None) -> Tensor:
        """features (N, geo_feat_dim), unit view directions (N, 3) -> rgb (N, 3) in [0, 1]; normals unused."""
        return torch.sigmoid(self.color_net(torch.cat([self.dir_encoding(dirs), features], dim=-1)))
