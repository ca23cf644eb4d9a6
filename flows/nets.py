"""The conditioner network of Flow++ couplings: gated residual convolutions with weight normalisation,
concat-ELU, dropout, layer norm over channels and optional gated multi-head self-attention.

References: Ho et al. 2019 (Flow++), Salimans et al. 2017 (PixelCNN++ gated resnet),
Salimans & Kingma 2016 (weight normalisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["ConditionerNet"]


def wn_conv(in_channels: int, out_channels: int, kernel_size: int, init_scale: float = 1.0) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    with torch.no_grad():
        conv.weight.mul_(init_scale)
        conv.bias.zero_()
    return weight_norm(conv)


class _ConcatELU(torch.autograd.Function):
    """elu(cat(x, −x)) along channels. With e = exp(−|x|) − 1, elu(x) = max(x, e) and
    elu(−x) = max(−x, e) (since exp(x) ≥ 1 + x): one exp per input element, and no expm1, which is
    not vectorised on CPU (F.elu is about ten times slower here). The backward pass needs only the
    output: d elu(y)/dy = min(out, 0) + 1."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        e = torch.exp(-x.abs()).sub_(1)
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        layout = torch.channels_last if nhwc else torch.contiguous_format  # keep the input's layout
        out = torch.empty((b, 2 * c, h, w), dtype=x.dtype, device=x.device, memory_format=layout)
        torch.maximum(x, e, out=out[:, :c])
        torch.maximum(x.neg(), e, out=out[:, c:])
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        grad_y = out.clamp_max(0).add_(1).mul_(grad)
        positive, negative = grad_y.chunk(2, dim=1)
        return positive.sub_(negative)


def concat_elu(x: Tensor) -> Tensor:
    """Concatenated ELU (Shang et al. 2016): (batch, C, H, W) -> (batch, 2C, H, W)."""
    return _ConcatELU.apply(x)


class ChannelNorm(nn.LayerNorm):
    """Layer norm over the channels of each pixel of a (batch, C, H, W) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GatedResidualBlock(nn.Module):
    """``x + a · σ(b)``, ``(a, b) = conv1x1(dropout(celu(conv3x3(celu(x)))))``, then layer norm.

    Dropout drops whole channels (``nn.Dropout2d``, as in the public PyTorch Flow++ port): an
    element-wise mask costs about an eighth of a CPU training step in random number generation.
    """

    def __init__(self, filters: int, dropout: float) -> None:
        super().__init__()
        self.conv = wn_conv(2 * filters, filters, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.gate = wn_conv(2 * filters, 2 * filters, 1, init_scale=0.1)
        self.norm = ChannelNorm(filters)

    def forward(self, x: Tensor) -> Tensor:
        h = self.gate(self.dropout(concat_elu(self.conv(concat_elu(x)))))
        a, b = h.chunk(2, dim=1)
        return self.norm(x + a * torch.sigmoid(b))


class GatedAttention(nn.Module):
    """Multi-head self-attention over the pixels, gated like the residual block, then layer norm."""

    def __init__(self, filters: int, heads: int, dropout: float) -> None:
        super().__init__()
        if filters % heads:
            raise ValueError(f"filters ({filters}) must be divisible by attention heads ({heads})")
        self.heads = heads
        self.dropout = dropout
        self.qkv = wn_conv(filters, 3 * filters, 1)
        self.gate = wn_conv(filters, 2 * filters, 1, init_scale=0.1)
        self.norm = ChannelNorm(filters)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(dim=1)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        g, gate = self.gate(out).chunk(2, dim=1)
        return self.norm(x + g * torch.sigmoid(gate))


class ConditionerNet(nn.Module):
    """(batch, in_channels, H, W) -> (batch, out_channels, H, W).

    in conv3x3 → ``blocks`` × [gated residual block (+ gated attention)] → out conv3x3, the last
    initialised small so a fresh coupling is close to the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filters: int,
        blocks: int,
        dropout: float = 0.0,
        attention: bool = False,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.inp = wn_conv(in_channels, filters, 3)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(GatedResidualBlock(filters, dropout))
            if attention:
                layers.append(GatedAttention(filters, heads, dropout))
        self.body = nn.Sequential(*layers)
        self.out = wn_conv(filters, out_channels, 3, init_scale=0.05)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(self.inp(x)))
