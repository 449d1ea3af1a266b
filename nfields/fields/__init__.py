"""Field backends. Importing this package registers every built-in network backend."""

from nfields.fields.base import Field, count_parameters, param_groups
from nfields.fields.cam import CAMConfig, CAMNetwork
from nfields.fields.hashgrid import DenseGridConfig, GridNetwork, HashGridConfig
from nfields.fields.mlp import CoordinateMLP, MLPConfig, Siren, SirenConfig
from nfields.fields.radiance import RadianceField, trunc_exp
from nfields.fields.rbf import RBFConfig, RBFNetwork

__all__ = [
    "CAMConfig",
    "CAMNetwork",
    "CoordinateMLP",
    "DenseGridConfig",
    "Field",
    "GridNetwork",
    "HashGridConfig",
    "MLPConfig",
    "RBFConfig",
    "RBFNetwork",
    "RadianceField",
    "Siren",
    "SirenConfig",
    "count_parameters",
    "param_groups",
    "trunc_exp",
]
