"""Coordinate-MLP backends: "mlp" (positional / Fourier / no encoding) and "siren".

Both map (N, in_dim) coordinates in [-1, 1] to (N, out_dim). Build them through the registry::

    >>> from nfields.registry import build_network
    >>> net = build_network("mlp", 2, 3, encoding="fourier", sigma=10.0, hidden=64, layers=2)
    >>> net(torch.zeros(5, 2)).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nfields.encodings.frequency import FourierFeatures, PositionalEncoding
from nfields.errors import NFieldsError
from nfields.registry import register

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}
ENCODINGS = ("positional", "fourier", "none")


def check_option(name: str, value, ok: bool, valid: str) -> None:
    """Raise a one-line :class:`NFieldsError` ``--field.<name> <value>: must be <valid>`` unless ``ok``."""
    if not ok:
        raise NFieldsError(f"--field.{name} {value!r}: must be {valid}")


def make_mlp(in_dim: int, out_dim: int, hidden: int, layers: int, activation: str = "relu") -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (Linear + activation each), then a linear output layer.

    (N, in_dim) -> (N, out_dim). PyTorch's default (Kaiming-uniform) initialisation.
    """
    check_option("hidden", hidden, hidden >= 1, ">= 1")
    check_option("layers", layers, layers >= 1, ">= 1")
    check_option("activation", activation, activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
    mods: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    mods.append(nn.Linear(width, out_dim))
    return nn.Sequential(*mods)


class CoordinateMLP(nn.Module):
    """Encoding followed by an MLP: (N, in_dim) in [-1, 1] -> (N, out_dim)."""

    def __init__(self, encoding: nn.Module, mlp: nn.Module, in_dim: int, out_dim: int):
        super().__init__()
        self.encoding, self.mlp = encoding, mlp
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        return self.mlp(self.encoding(x))


class _Identity(nn.Module):
    """The "none" encoding: passes coordinates through; ``out_dim`` = ``in_dim``."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: Tensor) -> Tensor:
        return x


@register("mlp")
@dataclass
class MLPConfig:
    """Coordinate MLP with a frequency encoding (NeRF positional, random Fourier features, or none)."""

    hidden: int = 256
    """Width of each hidden layer."""
    layers: int = 4
    """Number of hidden layers (each Linear + activation), followed by a linear output layer."""
    encoding: str = "positional"
    """Input encoding: positional (sin/cos 2^k pi x), fourier (random Gaussian features), none."""
    n_freqs: int = 10
    """Positional encoding: number of octaves k = 0..n_freqs-1."""
    n_fourier: int = 256
    """Fourier features: number of random frequencies (2 * n_fourier encoded dims)."""
    sigma: float = 10.0
    """Fourier features: standard deviation of the random frequencies (cycles per unit of [-1, 1] input)."""
    activation: str = "relu"
    """Hidden activation: relu, silu, gelu, tanh, softplus, leaky_relu."""
    seed: int = 0
    """Seed of the Fourier frequency matrix and the weight initialisation (equal configs build equal networks)."""

    def __post_init__(self):
        check_option("encoding", self.encoding, self.encoding in ENCODINGS, f"one of {', '.join(ENCODINGS)}")
        check_option("n_freqs", self.n_freqs, 0 <= self.n_freqs <= 20, "in 0..20")
        check_option("n_fourier", self.n_fourier, self.n_fourier >= 1, ">= 1")
        check_option("sigma", self.sigma, self.sigma > 0 and math.isfinite(self.sigma), "> 0")
        check_option("hidden", self.hidden, self.hidden >= 1, ">= 1")
        check_option("layers", self.layers, self.layers >= 1, ">= 1")
        check_option("activation", self.activation, self.activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")

    def build(self, in_dim: int, out_dim: int) -> CoordinateMLP:
        """(N, in_dim) in [-1, 1] -> (N, out_dim)."""
        if self.encoding == "positional":
            enc: nn.Module = PositionalEncoding(in_dim, self.n_freqs)
        elif self.encoding == "fourier":
            enc = FourierFeatures(in_dim, self.n_fourier, self.sigma, self.seed)
        else:
            enc = _Identity(in_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            mlp = make_mlp(enc.out_dim, out_dim, self.hidden, self.layers, self.activation)
        return CoordinateMLP(enc, mlp, in_dim, out_dim)


class SineLayer(nn.Module):
    """``sin(omega_0 * (W x + b))`` with SIREN initialisation (Sitzmann et al. 2020).

    First layer: W ~ U(-1/in, 1/in); later layers: W ~ U(-sqrt(6/in)/omega_0, sqrt(6/in)/omega_0), which keeps
    pre-activations ~ U(-sqrt(6), sqrt(6))-distributed through depth. (N, in) -> (N, out).
    """

    def __init__(self, in_dim: int, out_dim: int, omega_0: float, first: bool):
        super().__init__()
        self.omega_0 = omega_0
        self.linear = nn.Linear(in_dim, out_dim)
        bound = 1.0 / in_dim if first else math.sqrt(6.0 / in_dim) / omega_0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(N, in) -> (N, out)."""
        return torch.sin(self.omega_0 * self.linear(x))


class Siren(nn.Module):
    """SIREN: ``layers`` sine layers of width ``hidden`` and a linear output layer. (N, in_dim) -> (N, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, layers: int = 4, omega_0: float = 30.0):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        dims = [in_dim] + [hidden] * layers
        self.net = nn.Sequential(
            *[SineLayer(a, b, omega_0, first=i == 0) for i, (a, b) in enumerate(zip(dims, dims[1:]))]
        )
        self.last = nn.Linear(hidden, out_dim)
        bound = math.sqrt(6.0 / hidden) / omega_0
        with torch.no_grad():
            self.last.weight.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        return self.last(self.net(x))


@register("siren")
@dataclass
class SirenConfig:
    """SIREN: sine-activated MLP with Sitzmann initialisation."""

    hidden: int = 256
    """Width of each sine layer."""
    layers: int = 4
    """Number of sine layers (the first reads the coordinates), followed by a linear output layer."""
    omega_0: float = 30.0
    """Frequency factor of the sine layers (30 in the paper)."""
    seed: int = 0
    """Seed for the weight initialisation (so two builds with the same config are identical)."""

    def __post_init__(self):
        check_option("hidden", self.hidden, self.hidden >= 1, ">= 1")
        check_option("layers", self.layers, self.layers >= 1, ">= 1")
        check_option("omega_0", self.omega_0, self.omega_0 > 0 and math.isfinite(self.omega_0), "> 0")

    def build(self, in_dim: int, out_dim: int) -> Siren:
        """(N, in_dim) in [-1, 1] -> (N, out_dim)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return Siren(in_dim, out_dim, self.hidden, self.layers, self.omega_0)
