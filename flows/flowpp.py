"""The assembled Flow++ main flow (Ho et al. 2019), in the layout of its official CIFAR-10 model."""

from __future__ import annotations

from torch import nn

from flows.actnorm import ActNorm
from flows.base import Bijection, Compose
from flows.coupling import Coupling
from flows.invconv import InvertibleConv1x1
from flows.logistic import MixLogCDF
from flows.logit import Logit
from flows.squeeze import Squeeze

__all__ = ["FlowPlusPlus", "count_parameters"]


class FlowPlusPlus(Compose):
    """y ∈ (0, 1)^(C,H,W) → z ∈ R^(4C,H/2,W/2), the same number of dimensions.

    Logit preprocessing, then ``checkerboard[0]`` checkerboard couplings at full resolution, a squeeze,
    ``channel`` channel-wise couplings and ``checkerboard[1]`` more checkerboard couplings on
    (4C, H/2, W/2) (the official CIFAR-10 layout is 4, 2, 3, and keeps all channels: no factor-out).
    Every coupling is preceded by ActNorm and an invertible 1x1 convolution; parities alternate.

    Args:
        in_shape: (C, H, W) of the data; H and W must be even.
        filters: width of the conditioner networks.
        components: mixture components K of each MixLogCDF coupling.
        blocks: gated residual blocks per conditioner.
        attention: add gated multi-head self-attention after every block.
        heads: attention heads.
        dropout: dropout in the gated residual blocks.
        logit_alpha: α of the logit preprocessing.
        checkerboard: couplings before and after the squeezed stage.
        channel: channel-wise couplings in the squeezed stage.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (3, 32, 32),
        filters: int = 96,
        components: int = 32,
        blocks: int = 10,
        attention: bool = False,
        heads: int = 4,
        dropout: float = 0.2,
        logit_alpha: float = 0.05,
        checkerboard: tuple[int, int] = (4, 3),
        channel: int = 2,
    ) -> None:
        in_shape = tuple(in_shape)
        channels, height, width = in_shape
        if height % 2 or width % 2:
            raise ValueError(f"FlowPlusPlus needs even height and width, got in_shape={in_shape}")
        squeezed = (4 * channels, height // 2, width // 2)

        def step(shape: tuple[int, int, int], split: str, parity: int) -> list[Bijection]:
            coupling = Coupling(
                shape,
                split,
                parity,
                MixLogCDF(components),
                filters,
                blocks,
                dropout=dropout,
                attention=attention,
                heads=heads,
            )
            return [ActNorm(shape[0]), InvertibleConv1x1(shape[0]), coupling]

        layers: list[Bijection] = [Logit(logit_alpha)]
        for i in range(checkerboard[0]):
            layers += step(in_shape, "checkerboard", i % 2)
        layers.append(Squeeze())
        for i in range(channel):
            layers += step(squeezed, "channel", i % 2)
        for i in range(checkerboard[1]):
            layers += step(squeezed, "checkerboard", i % 2)
        super().__init__(layers)
        self.in_shape = in_shape
        self.out_shape = squeezed

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return count_parameters(self)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
