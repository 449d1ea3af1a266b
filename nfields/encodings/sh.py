"""Real spherical harmonics for encoding unit view directions (as tcnn's "SphericalHarmonics" encoding)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nfields.errors import NFieldsError


class SphericalHarmonics(nn.Module):
    """Orthonormal real spherical harmonics of bands ``l < degree`` evaluated at unit directions.

    Input (N, 3) unit vectors; output (N, degree**2) (16 at the default degree 4). Degree 1..4.
    The functions are orthonormal over the sphere: ``integral Y_i Y_j dw = delta_ij``.
    """

    def __init__(self, degree: int = 4):
        super().__init__()
        if not 1 <= degree <= 4:
            raise NFieldsError(f"--field.sh_degree {degree}: must be in 1..4")
        self.degree = degree
        self.in_dim, self.out_dim = 3, degree**2

    def forward(self, dirs: Tensor) -> Tensor:
        """(N, 3) unit directions -> (N, degree**2)."""
        x, y, z = dirs.unbind(-1)
        out = [torch.full_like(x, 0.28209479177387814)]
        if self.degree > 1:
            out += [0.4886025119029199 * y, 0.4886025119029199 * z, 0.4886025119029199 * x]
        if self.degree > 2:
            xx, yy, zz = x * x, y * y, z * z
            out += [
                1.0925484305920792 * x * y,
                1.0925484305920792 * y * z,
                0.9461746957575601 * zz - 0.31539156525251999,
                1.0925484305920792 * x * z,
                0.5462742152960396 * (xx - yy),
            ]
        if self.degree > 3:
            out += [
                0.5900435899266435 * y * (3 * xx - yy),
                2.890611442640554 * x * y * z,
                0.4570457994644658 * y * (5 * zz - 1),
                0.3731763325901154 * z * (5 * zz - 3),
                0.4570457994644658 * x * (5 * zz - 1),
                1.445305721320277 * z * (xx - yy),
                0.5900435899266435 * x * (xx - 3 * yy),
            ]
        return torch.stack(out, dim=-1)
