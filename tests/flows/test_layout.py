"""channels_last end to end: every conditioner convolution sees NHWC input, and the numbers equal the
NCHW flow's."""

import pytest
import torch
from torch import nn

from ebmflow.module import EBMFlow
from flows import FlowPlusPlus, VariationalDequantizer, use_channels_last
from priors import GaussianPrior


def conv_inputs_layouts(module: nn.Module, run) -> list[bool]:
    """Run ``run()`` and return, for every Conv2d call, whether its input was channels-last (and not
    trivially so: more than one channel)."""
    seen = []
    hooks = [
        m.register_forward_pre_hook(
            lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 8, 8)])
def test_channels_last_keeps_the_layout_and_the_numbers(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    plain = EBMFlow(
        FlowPlusPlus(shape, filters=8, components=3, blocks=1, dropout=0.0),
        GaussianPrior(torch.Size(shape).numel()),
        VariationalDequantizer(shape, filters=8, blocks=1, context_channels=4),
    )
    nhwc = EBMFlow(
        FlowPlusPlus(shape, filters=8, components=3, blocks=1, dropout=0.0),
        GaussianPrior(torch.Size(shape).numel()),
        VariationalDequantizer(shape, filters=8, blocks=1, context_channels=4),
        channels_last=True,
    )
    nhwc.load_state_dict(plain.state_dict())
    images = torch.randint(0, 256, (4, *shape), dtype=torch.uint8)
    plain.train()  # ActNorm initialises from the same batch in both
    nhwc.train()
    torch.manual_seed(1)
    expected = plain.log_likelihood(images, plain.dequantizer)
    torch.manual_seed(1)
    layouts = conv_inputs_layouts(nhwc, lambda: nhwc.log_likelihood(images, nhwc.dequantizer))
    torch.manual_seed(1)
    got = nhwc.log_likelihood(images, nhwc.dequantizer)
    assert len(layouts) > 20 and all(layouts)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-3)  # nats over 3·64 dims: float32 sums
    plain.eval()
    nhwc.eval()
    z = torch.randn(3, plain.dims)
    assert (plain.decode(z).int() - nhwc.decode(z).int()).abs().max() <= 1
    assert all(conv_inputs_layouts(nhwc, lambda: nhwc.decode(z)))


def test_use_channels_last_switches_back() -> None:
    flow = use_channels_last(FlowPlusPlus((3, 8, 8), filters=4, components=2, blocks=1), True)
    assert all(layer.channels_last for layer in flow.modules() if hasattr(type(layer), "channels_last"))
    use_channels_last(flow, False)
    assert not any(layer.channels_last for layer in flow.modules() if hasattr(type(layer), "channels_last"))
    weight = next(m.weight for m in flow.modules() if isinstance(m, nn.Conv2d))
    assert weight.is_contiguous()
