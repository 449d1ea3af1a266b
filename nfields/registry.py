"""Name -> network config registry.

A *network* (backbone) maps coordinates in [-1, 1]^in_dim to out_dim values; fields for images, SDFs and
radiance all wrap one. Every backend is a config dataclass with ``build(in_dim, out_dim) -> nn.Module`` and is
registered once under its name::

    @register("mlp")
    @dataclass
    class MLPConfig:
        hidden: int = 64
        def build(self, in_dim, out_dim): ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from nfields.errors import NFieldsError

_NETWORKS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register a network config dataclass under ``name`` (duplicates are an error)."""

    def deco(cls: type) -> type:
        if name in _NETWORKS:
            raise ValueError(f"network name {name!r} registered twice ({_NETWORKS[name].__name__}, {cls.__name__})")
        if not dataclasses.is_dataclass(cls) or not hasattr(cls, "build"):
            raise TypeError(f"{cls.__name__} must be a dataclass with a build(in_dim, out_dim) method")
        _NETWORKS[name] = cls
        cls.registered_name = name
        return cls

    return deco


def _load_builtin() -> None:
    # Importing the package registers every built-in backend.
    import nfields.fields  # noqa: F401


def registered_names() -> list[str]:
    """Sorted names of every registered network backend."""
    _load_builtin()
    return sorted(_NETWORKS)


def network_config(name: str, **overrides: Any):
    """A fresh config for backend ``name`` with keyword overrides; unknown names/keys give one-line errors."""
    _load_builtin()
    if name not in _NETWORKS:
        raise NFieldsError(f"unknown field backend {name!r}; registered: {', '.join(sorted(_NETWORKS))}")
    cls = _NETWORKS[name]
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise NFieldsError(f"unknown option(s) {bad} for backend {name!r}; valid: {', '.join(sorted(valid))}")
    return cls(**overrides)


def build_network(name: str, in_dim: int, out_dim: int, **overrides: Any):
    """Build backend ``name`` as an ``nn.Module`` mapping (N, in_dim) in [-1, 1] to (N, out_dim)."""
    return network_config(name, **overrides).build(in_dim, out_dim)
