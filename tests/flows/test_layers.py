"""Layer behaviour beyond the bijection property: ActNorm initialisation, numerical range, size."""

import pytest
import torch

from flows import ActNorm, FlowPlusPlus, UniformDequantizer, VariationalDequantizer, count_parameters
from flows.nets import concat_elu


def test_actnorm_initialises_once_from_data() -> None:
    layer = ActNorm(3).train()
    x = 5 + 3 * torch.randn(64, 3, 4, 4)
    y, _ = layer(x)
    assert bool(layer.initialized)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    before = layer.log_scale.detach().clone()
    layer(10 * torch.randn(64, 3, 4, 4))
    assert torch.equal(layer.log_scale, before)


def test_actnorm_state_dict_round_trip_keeps_it_initialised() -> None:
    layer = ActNorm(3).train()
    layer(torch.randn(8, 3, 4, 4))
    restored = ActNorm(3).train()
    restored.load_state_dict(layer.state_dict())
    assert bool(restored.initialized)
    x = 7 * torch.randn(8, 3, 4, 4)
    assert torch.equal(restored(x)[0], layer(x)[0])


@pytest.mark.parametrize("fill", ["zeros", "full", "noise"])
@pytest.mark.parametrize("dequantizer", [UniformDequantizer, VariationalDequantizer])
def test_extreme_images_stay_finite(fill: str, dequantizer: type) -> None:
    shape = (3, 8, 8)
    images = {
        "zeros": torch.zeros(4, *shape, dtype=torch.uint8),
        "full": torch.full((4, *shape), 255, dtype=torch.uint8),
        "noise": torch.randint(0, 256, (4, *shape), dtype=torch.uint8),
    }[fill]
    deq = dequantizer(shape) if dequantizer is VariationalDequantizer else dequantizer()
    flow = FlowPlusPlus(shape, filters=16, components=4, blocks=2)
    flow.train()
    y, log_q = deq(images)
    z, logdet = flow(y)
    assert torch.isfinite(y).all() and torch.isfinite(log_q).all()
    assert ((y > 0) & (y < 1)).all()
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    flow.eval()
    with torch.no_grad():
        z, _ = flow(y)
        y_back = flow.inverse(z)
    assert torch.isfinite(y_back).all()
    assert (y_back - y).abs().max() < 1e-4
    assert ((y_back * 256).floor().clamp(0, 255).to(torch.uint8) == images).float().mean() > 0.99


def test_dequantizer_rejects_float_images() -> None:
    with pytest.raises(TypeError, match="uint8"):
        UniformDequantizer()(torch.rand(2, 3, 4, 4))


def test_parameter_count_at_the_papers_size() -> None:
    """Paper Table 2: 31,445,192 for its Gaussian-Flow (filters 100, 33 components, 10 blocks),
    dequantizer included. Ours is stated in the README; this pins the main flow's count to the
    layer formula so a change to the architecture is noticed."""
    flow = FlowPlusPlus((3, 32, 32), filters=100, components=33, blocks=10)
    f, k = 100, 33

    def conditioner(cin: int, cout: int) -> int:
        wn = lambda i, o, ks: i * o * ks * ks + o + o  # noqa: E731  weight, bias, WN gain
        block = wn(2 * f, f, 3) + wn(2 * f, 2 * f, 1) + 2 * f
        return wn(cin, f, 3) + 10 * block + wn(f, cout, 3)

    def step(c: int, cin: int, cout: int) -> int:
        return 2 * c + (2 * c * c + c) + conditioner(cin, cout * (3 * k + 2))

    expected = 4 * step(3, 3, 3) + 2 * step(12, 6, 6) + 3 * step(12, 12, 12)
    assert flow.num_parameters == expected == count_parameters(flow)


def test_concat_elu_matches_its_definition_and_gradient() -> None:
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.elu(torch.cat([x, -x], dim=1))
    assert torch.allclose(concat_elu(x), expected, atol=1e-15)
    assert torch.autograd.gradcheck(concat_elu, (x,))


def test_mixed_precision_keeps_the_data_path_in_float32() -> None:
    """Under bf16 autocast only the conditioner networks run in bf16: z and the log-determinant stay
    float32, and the flow still inverts to float32 accuracy."""
    flow = FlowPlusPlus((3, 8, 8), filters=16, components=4, blocks=1)
    y = torch.rand(4, 3, 8, 8) * 0.98 + 0.01
    flow.train()
    flow(y)
    flow.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = flow(y)
        y_back = flow.inverse(z)
    assert z.dtype == torch.float32 and logdet.dtype == torch.float32
    assert (y_back - y).abs().max() < 1e-4


def test_flowpp_names_what_to_change_for_bad_inputs() -> None:
    flow = FlowPlusPlus((1, 4, 4), filters=4, components=2, blocks=1)
    for images in (torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8), torch.full((2, 1, 4, 4), 200.0)):
        with pytest.raises((TypeError, ValueError), match="256"):
            flow(images)
    with pytest.raises(ValueError, match=r"in_shape=\(1, 4, 4\): x must have shape \(batch, 1, 4, 4\)"):
        flow(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, 4, 2, 2\)"):
        flow.inverse(torch.randn(2, 16))
    flow.check_range = False  # opted out: values outside [0, 1] pass through (to NaN)
    assert not torch.isfinite(flow(torch.full((2, 1, 4, 4), 2.0))[0]).all()
    for bad in ({"components": 0}, {"filters": 0}, {"in_shape": (1, 4)}):
        with pytest.raises(ValueError, match=r"components|filters|in_shape"):
            FlowPlusPlus(**{"in_shape": (1, 4, 4), **bad})
