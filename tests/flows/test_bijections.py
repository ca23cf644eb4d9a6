"""The shared property test: every bijection inverts exactly and reports the log-determinant of its
autograd Jacobian (docs/maths.md §7)."""

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from flows import (
    ActNorm,
    Affine,
    Bijection,
    Compose,
    Coupling,
    FlowPlusPlus,
    InvertibleConv1x1,
    Logit,
    MixLogCDF,
    Squeeze,
    VariationalDequantizer,
)

SHAPE = (2, 4, 4)  # 32 dimensions: small enough for a full Jacobian
Case = tuple[Bijection, Callable[[int], Tensor], Tensor | None]


def gaussian(n: int) -> Tensor:
    return torch.randn(n, *SHAPE)


def unit_interval(n: int) -> Tensor:
    return torch.rand(n, *SHAPE) * 0.98 + 0.01


def coupling(split: str, parity: int, transform: nn.Module, **kw) -> Coupling:
    return Coupling(SHAPE, split, parity, transform, filters=8, blocks=2, **kw)


def dequantizer_flow() -> Case:
    deq = VariationalDequantizer(SHAPE, filters=8, blocks=1, context_channels=3)
    return deq.noise_flow, gaussian, torch.randn(1, 3, *SHAPE[1:])


CASES: dict[str, Callable[[], Case]] = {
    "logit": lambda: (Logit(0.05), unit_interval, None),
    "actnorm": lambda: (ActNorm(SHAPE[0]), gaussian, None),
    "invconv": lambda: (InvertibleConv1x1(SHAPE[0]), gaussian, None),
    "squeeze": lambda: (Squeeze(), gaussian, None),
    "mixlog-checkerboard-0": lambda: (coupling("checkerboard", 0, MixLogCDF(4)), gaussian, None),
    "mixlog-checkerboard-1": lambda: (coupling("checkerboard", 1, MixLogCDF(4)), gaussian, None),
    "mixlog-channel-0": lambda: (coupling("channel", 0, MixLogCDF(4)), gaussian, None),
    "mixlog-channel-1": lambda: (coupling("channel", 1, MixLogCDF(4)), gaussian, None),
    "mixlog-attention": lambda: (
        coupling("checkerboard", 0, MixLogCDF(4), attention=True, heads=2),
        gaussian,
        None,
    ),
    "affine-context": lambda: (
        coupling("checkerboard", 1, Affine(), context_channels=3),
        gaussian,
        torch.randn(1, 3, *SHAPE[1:]),
    ),
    "dequantizer-noise-flow": dequantizer_flow,
    "compose": lambda: (Compose([ActNorm(2), InvertibleConv1x1(2), Squeeze()]), gaussian, None),
    "flowplusplus": lambda: (
        FlowPlusPlus(SHAPE, filters=8, components=3, blocks=1, dropout=0.2),
        unit_interval,
        None,
    ),
}


def build(name: str, dtype: torch.dtype) -> tuple[Bijection, Tensor, Tensor | None]:
    """The bijection with randomised parameters (so no layer sits at its identity initialisation),
    ActNorm initialised on a batch, in eval mode; a test input of 3 examples."""
    bijection, sample, context = CASES[name]()
    bijection = bijection.to(dtype)
    with torch.no_grad():
        for p in bijection.parameters():
            p.add_(0.3 * torch.randn_like(p))
    bijection.train()
    x = sample(3).to(dtype)
    ctx = None if context is None else context.expand(3, -1, -1, -1).to(dtype)
    bijection(sample(16).to(dtype), None if ctx is None else context.expand(16, -1, -1, -1).to(dtype))
    return bijection.eval(), x, ctx


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_inverse_of_forward_is_identity(
    name: str, dtype: torch.dtype, tol: float, device: torch.device
) -> None:
    bijection, x, context = build(name, dtype)
    bijection, x = bijection.to(device), x.to(device)
    context = None if context is None else context.to(device)
    with torch.no_grad():
        y, logdet = bijection(x, context)
        x_back = bijection.inverse(y, context)
    assert logdet.shape == (x.shape[0],)
    assert y.dtype == dtype and logdet.dtype == dtype
    assert (x_back - x).abs().max().item() <= tol


@pytest.mark.parametrize("name", CASES)
def test_logdet_equals_autograd_jacobian(name: str) -> None:
    bijection, x, context = build(name, torch.float64)
    _, logdet = bijection(x, context)
    for i in range(x.shape[0]):
        ctx = None if context is None else context[i : i + 1]

        def f(v: Tensor, ctx: Tensor | None = ctx) -> Tensor:
            return bijection(v.reshape(1, *x.shape[1:]), ctx)[0].flatten()

        jac = torch.autograd.functional.jacobian(f, x[i].flatten())
        assert jac.shape[0] <= 64
        expected = torch.linalg.slogdet(jac).logabsdet
        assert abs(logdet[i].item() - expected.item()) <= 1e-6
