"""The assembled Flow++ main flow (Ho et al. 2019), in the layout of its official CIFAR-10 model."""

from __future__ import annotations

from torch import Tensor, nn

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
        if len(in_shape) != 3 or not all(isinstance(n, int) and n > 0 for n in in_shape):
            raise ValueError(f"in_shape must be (C, H, W) of positive integers, got {in_shape!r}")
        channels, height, width = in_shape
        if height % 2 or width % 2:
            raise ValueError(f"FlowPlusPlus needs even height and width, got in_shape={in_shape}")
        if filters < 1 or components < 1 or blocks < 0:
            raise ValueError(
                f"filters and components must be >= 1 and blocks >= 0, got {filters}, {components}, {blocks}"
            )
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
        self.check_range = True  # the [0, 1] check on forward's input (one reduction)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (batch, C, H, W) floats in [0, 1] (dequantized images) -> (z, log|det ∂z/∂x|)."""
        self._check_input(x, self.in_shape, "x")
        if self.check_range and x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
            low, high = float(x.min()), float(x.max())
            raise ValueError(
                f"FlowPlusPlus takes images scaled to [0, 1] (dequantized: (pixels + noise) / 256), got "
                f"values in [{low:g}, {high:g}]: divide 0-255 images by 256 (check_range = False skips this)"
            )
        return super().forward(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """z: (batch, 4C, H/2, W/2) -> images in (0, 1)."""
        self._check_input(y, self.out_shape, "z")
        return super().inverse(y, context)

    def _check_input(self, x: Tensor, shape: tuple[int, ...], name: str) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(
                f"FlowPlusPlus needs a floating-point {name}, got {kind}: uint8 images go through a "
                "dequantizer (or .float() / 256) first"
            )
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"FlowPlusPlus was built with in_shape={self.in_shape}: {name} must have shape "
                f"(batch, {', '.join(map(str, shape))}), got {tuple(x.shape)}"
            )

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return count_parameters(self)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
