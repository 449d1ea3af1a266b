"""Input encodings: frequency (positional / Fourier), spherical harmonics, dense grids and hash grids.

Every encoding is an ``nn.Module`` with an ``out_dim`` attribute. Only :mod:`nfields.encodings.tcnn` imports
tinycudann, lazily.
"""

from nfields.encodings.frequency import FourierFeatures, PositionalEncoding
from nfields.encodings.grid import DenseGrid
from nfields.encodings.hashgrid import HashGridEncoding, level_resolutions
from nfields.encodings.sh import SphericalHarmonics
from nfields.encodings.tcnn import TcnnHashGrid, make_hash_encoding, tcnn_available

__all__ = [
    "DenseGrid",
    "FourierFeatures",
    "HashGridEncoding",
    "PositionalEncoding",
    "SphericalHarmonics",
    "TcnnHashGrid",
    "level_resolutions",
    "make_hash_encoding",
    "tcnn_available",
]
