"""Flow++ bijections: the contract, its layers and the assembled flow."""

from flows.actnorm import ActNorm
from flows.affine import Affine
from flows.base import Bijection, Compose
from flows.coupling import Coupling
from flows.dequantization import Dequantizer, UniformDequantizer, VariationalDequantizer
from flows.flowpp import FlowPlusPlus, count_parameters
from flows.invconv import InvertibleConv1x1
from flows.layout import to_channels_last, use_channels_last
from flows.logistic import MixLogCDF
from flows.logit import Logit
from flows.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "Affine",
    "Bijection",
    "Compose",
    "Coupling",
    "Dequantizer",
    "FlowPlusPlus",
    "InvertibleConv1x1",
    "Logit",
    "MixLogCDF",
    "Squeeze",
    "UniformDequantizer",
    "VariationalDequantizer",
    "count_parameters",
    "to_channels_last",
    "use_channels_last",
]
