"""The ONLY module that imports tinycudann (lazily). The pure-torch twin is :class:`HashGridEncoding`.

tinycudann is a CUDA source build (see README), so it is never a hard dependency: :func:`tcnn_available` says
whether it can be used, and :func:`make_hash_encoding` picks the backend.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from nfields.encodings.hashgrid import HashGridEncoding, check_hashgrid_options, level_resolutions
from nfields.errors import NFieldsError

BACKENDS = ("auto", "torch", "tcnn")


@functools.lru_cache(maxsize=1)
def _import_tcnn():
    try:
        # Lazy on purpose: the one import site of an optional, CUDA-only dependency.
        import tinycudann
    except Exception:  # ImportError, or a broken CUDA build raising OSError/RuntimeError at import
        return None
    return tinycudann


def tcnn_available() -> bool:
    """True when tinycudann imports and a CUDA device is present."""
    return torch.cuda.is_available() and _import_tcnn() is not None


class TcnnHashGrid(nn.Module):
    """tinycudann ``HashGrid`` encoding with the constructor of :class:`HashGridEncoding`.

    Input (N, in_dim) in [0, 1]; output (N, levels * features_per_level) float32 (tcnn computes in half).
    The module's parameters live on CUDA (tcnn has no CPU kernels).
    """

    def __init__(
        self,
        in_dim: int = 3,
        levels: int = 16,
        features_per_level: int = 2,
        log2_table: int = 19,
        base_res: int = 16,
        finest_res: int = 2048,
    ):
        super().__init__()
        tcnn = _import_tcnn()
        if tcnn is None or not torch.cuda.is_available():
            raise NFieldsError(
                "--field.backend tcnn: tinycudann is not installed (pip install "
                "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch, needs CUDA; see README); "
                "use backend=torch"
            )
        check_hashgrid_options(levels, features_per_level, log2_table, base_res, finest_res)
        self.in_dim, self.levels, self.features_per_level = in_dim, levels, features_per_level
        self.out_dim = levels * features_per_level
        self.resolutions = level_resolutions(levels, base_res, finest_res)
        growth = (finest_res / base_res) ** (1.0 / (levels - 1)) if levels > 1 else 1.0
        self.encoding = tcnn.Encoding(
            n_input_dims=in_dim,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": levels,
                "n_features_per_level": features_per_level,
                "log2_hashmap_size": log2_table,
                "base_resolution": base_res,
                "per_level_scale": growth,
            },
        )

    def param_groups(self, lr: float) -> list[dict]:
        """The table in its own group without weight decay (same hook as the torch twin)."""
        return [{"params": list(self.encoding.parameters()), "lr": lr, "weight_decay": 0.0}]

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) in [0, 1] -> (N, levels * features_per_level) float32."""
        return self.encoding(x.clamp(0.0, 1.0)).float()


def make_hash_encoding(backend: str = "auto", **options) -> nn.Module:
    """Hash encoding for ``backend``: "torch" (pure torch), "tcnn" (error when unavailable) or "auto" (tcnn when it
    imports and CUDA is present, else torch). ``options`` are :class:`HashGridEncoding`'s constructor arguments."""
    if backend not in BACKENDS:
        raise NFieldsError(f"--field.backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    if backend == "tcnn" or (backend == "auto" and tcnn_available()):
        options.pop("init_scale", None)  # tcnn initialises its own table (also U(-1e-4, 1e-4))
        return TcnnHashGrid(**options)
    return HashGridEncoding(**options)
