"""Quantized Linear layers: the integer path (torch._int_mm, torch._weight_int8pack_mm) against the
readable fp32 path of the same formulas; that path against torch's own fake-quantize ops (the
oracle: the arithmetic torch.ao's quantization-aware training uses); int4 packing; SmoothQuant."""

import pytest
import torch
import torch.nn.functional as F

from transformer_lab.compression.linear import QuantLinear, pack_int4, unpack_int4
from transformer_lab.compression.observers import MinMaxObserver, MSEObserver
from transformer_lab.compression.quant import qparams_from_range

CASES = [("dynamic", 8, "channel"), ("dynamic", 8, "tensor"), ("dynamic", 4, "channel"), ("static", 8, "channel"),
         ("static", 4, "tensor"), ("weight-only", 8, "channel"), ("weight-only", 4, "channel"),
         ("weight-only", 4, "group"), ("weight-only", 8, "tensor")]


def _layer(scheme, bits, granularity, linear, x, **kw):
    p = None
    if scheme == "static":
        obs = MinMaxObserver(bits=8)
        obs.observe(x)
        p = obs.qparams()
    return QuantLinear.from_linear(linear, scheme, bits, granularity, group_size=16, input_qparams=p, **kw)


@pytest.mark.parametrize("scheme,bits,granularity", CASES)
@pytest.mark.parametrize("shape", [(8, 16, 48), (1, 48)])
def test_the_integer_path_equals_the_reference_path(scheme, bits, granularity, shape):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80)
    x = torch.randn(*shape) * 2
    layer = _layer(scheme, bits, granularity, linear, x)
    with torch.no_grad():
        fast = layer(x)
        layer.impl = "reference"
        slow, exact = layer(x), linear(x)
    assert fast.shape == exact.shape
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-5)  # the same numbers, summed in int32 vs fp32
    bound = {8: 0.02, 4: 0.2}[bits]  # relative error of 8-bit and 4-bit weight grids
    assert float((fast - exact).norm() / exact.norm()) < bound


@pytest.mark.parametrize("shape", [(8, 16, 48), (1, 48), (3, 1, 48)])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("smooth", [False, True])
def test_per_tensor_activations_on_fbgemm_equal_the_reference_path(shape, bits, smooth):
    """Dynamic activations with one affine grid per call: fbgemm's quantized::linear_dynamic on our int8
    weights against the same formula in fp32 (within a grid step's rounding at a tie: fbgemm scales by
    1 / s); with SmoothQuant multipliers, x / m goes to the same kernel."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80)
    x = torch.randn(*shape) * 2
    m = torch.rand(48) + 0.5 if smooth else None
    layer = QuantLinear.from_linear(linear, "dynamic", bits, activations="tensor", smooth=m)
    assert layer._fast
    with torch.no_grad():
        fast = layer(x)
        layer.impl = "reference"
        slow, exact = layer(x), linear(x)
    torch.testing.assert_close(fast, slow, atol=2e-3, rtol=1e-3)
    assert float((fast - exact).norm() / exact.norm()) < {8: 0.03, 4: 0.2}[bits]


def test_layers_reading_one_input_run_as_one_product():
    """``joint``: Q, K, V on fbgemm as one GEMM over one quantized input gives each layer's own output
    (the same per-tensor grid: one input), repacked when a layer's weights are loaded anew; layers that
    cannot share a call (another path, other SmoothQuant multipliers) give None."""
    torch.manual_seed(0)
    linears = [torch.nn.Linear(48, n) for n in (48, 48, 32)]
    x = torch.randn(2, 7, 48)
    m = torch.rand(48) + 0.5
    for smooth in (None, m):
        layers = [QuantLinear.from_linear(lin, activations="tensor", smooth=smooth) for lin in linears]
        with torch.no_grad():
            alone = torch.cat([layer(x) for layer in layers], dim=-1)
            together = layers[0].joint(*layers[1:])(x)
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    layers[2].load_state_dict(QuantLinear.from_linear(torch.nn.Linear(48, 32), activations="tensor", smooth=m).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layers[0].joint(*layers[1:])(x)[..., 96:], layers[2](x), atol=1e-5, rtol=1e-5)
    other = QuantLinear.from_linear(linears[1], activations="tensor", smooth=m * 2)
    assert layers[0].joint(other) is None
    assert layers[0].joint(QuantLinear.from_linear(linears[1], activations="tensor")) is None  # unsmoothed
    assert layers[0].joint(QuantLinear.from_linear(linears[1], smooth=m)) is None  # per-token activations
    assert layers[0].joint(linears[1]) is None  # an fp32 Linear
    assert layers[0].joint(layers[1]) is not None
    layers[1].impl = "reference"  # after the joint product was built: it is not used any more
    assert layers[0].joint(layers[1]) is None


@pytest.mark.parametrize("scheme", ["dynamic", "static", "weight-only"])
def test_the_reference_path_is_torchs_fake_quantization(scheme):
    """Oracle: torch.fake_quantize_per_channel_affine on W (int8, symmetric) and, for the activations,
    torch.fake_quantize_per_tensor_affine (static: the calibrated uint8 grid; dynamic: one per token)."""
    torch.manual_seed(1)
    linear = torch.nn.Linear(32, 24)
    x = torch.randn(6, 32) * 3
    # Each row's extreme is positive: at -max|x| our x / s = -127.5 rounds (half to even) to -128, torch's
    # x * (1 / s) to -127 (a float32 tie), and the two grids would differ by that one step.
    x[:, 0] = x.abs().amax(dim=1) + 1
    with torch.no_grad():
        linear.weight[:, 0] = linear.weight.abs().amax(dim=1) + 0.01  # (the same for the weight rows)
    layer = _layer(scheme, 8, "channel", linear, x, impl="reference")
    w = linear.weight.detach()
    s_w = w.abs().amax(dim=1) / 127.5
    w_fq = torch.fake_quantize_per_channel_affine(w, s_w, torch.zeros(24, dtype=torch.int32), 0, -128, 127)
    if scheme == "static":
        lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
        s = float((hi - lo) / 255)
        x_fq = torch.fake_quantize_per_tensor_affine(x, s, int(-torch.round(lo / s)), 0, 255)
    elif scheme == "dynamic":
        x_fq = torch.stack([torch.fake_quantize_per_tensor_affine(r, float(r.abs().max() / 127.5), 0, -128, 127) for r in x])
    else:
        x_fq = x
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x_fq, w_fq, linear.bias), atol=1e-5, rtol=1e-5)


def test_int4_packs_two_to_a_byte_and_back():
    q = torch.randint(-8, 8, (5, 7), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 4)
    assert torch.equal(unpack_int4(packed, 7), q)


def test_weights_shrink_4x_at_8_bits_and_8x_at_4():
    linear = torch.nn.Linear(256, 256)
    fp32 = 4 * linear.weight.numel()
    assert fp32 / QuantLinear.from_linear(linear).weight_bytes() > 3.9
    assert fp32 / QuantLinear.from_linear(linear, "weight-only", 4).weight_bytes() > 7.5  # (scales: 4 bytes per row)


def test_a_weight_observer_sets_the_weight_grid():
    """Long-tailed rows (Student-t, 2 degrees of freedom) on a 4-bit grid: MSE clips their tails, min-max
    keeps them, and the clipped grid is the closer one."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 16)
    with torch.no_grad():
        linear.weight.copy_(torch.distributions.StudentT(2.0).sample((16, 512)) * 0.02)
    plain = QuantLinear.from_linear(linear, "weight-only", 4)
    clipped = QuantLinear.from_linear(linear, "weight-only", 4, weight_observer=MSEObserver)
    assert bool((clipped.weight_scale < plain.weight_scale).all())
    w = linear.weight.detach()
    assert float((clipped.dequantized_weight() - w).norm()) < float((plain.dequantized_weight() - w).norm())


def test_smoothing_keeps_the_function_and_tames_an_outlier_channel():
    """SmoothQuant: W·diag(m) with x/m is the same product; with one input channel 50x the others, the
    static per-tensor grid loses the small channels unless the range moves into the weights."""
    from transformer_lab.compression.model import smoothing_factors

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(256, 64)
    x[:, 3] *= 50
    m = smoothing_factors(x.abs().amax(dim=0), linear.weight, 0.5)
    errors = {}
    for name, smooth in (("plain", None), ("smooth", m)):
        obs = MinMaxObserver(bits=8)
        obs.observe(x if smooth is None else x / smooth)
        layer = QuantLinear.from_linear(linear, "static", input_qparams=obs.qparams(), smooth=smooth)
        with torch.no_grad():
            errors[name] = float((layer(x) - linear(x)).norm() / linear(x).norm())
    layer = QuantLinear.from_linear(linear, "dynamic", smooth=m)
    layer = QuantLinear.from_linear(linear, "dynamic", smooth=m)
    torch.testing.assert_close(layer.dequantized_weight() * layer.input_multiplier, linear.weight.detach(),
                               atol=float((layer.weight_scale.max() * layer.input_multiplier.max())), rtol=0)
    assert errors["smooth"] < 0.5 * errors["plain"], errors


def test_bad_input_is_refused():
    layer = QuantLinear.from_linear(torch.nn.Linear(8, 4))
    with pytest.raises(ValueError, match="last dimension 6"):
        layer(torch.randn(2, 6))
    with pytest.raises(ValueError, match="impl"):
        QuantLinear.from_linear(torch.nn.Linear(8, 4), impl="fast")
    with pytest.raises(ValueError, match="weight-only"):
        QuantLinear.from_linear(torch.nn.Linear(8, 4), "dynamic", granularity="group", group_size=4)
    with pytest.raises(ValueError, match="does not divide"):
        QuantLinear.from_linear(torch.nn.Linear(10, 4), "weight-only", granularity="group", group_size=4)
    with pytest.raises(ValueError, match="activation grid"):
        QuantLinear.from_linear(torch.nn.Linear(8, 4), "static")
    with pytest.raises(ValueError, match="one 8-bit grid per tensor"):
        QuantLinear.from_linear(torch.nn.Linear(8, 4), "static",
                                input_qparams=qparams_from_range(-torch.ones(4), torch.ones(4), axis=0))
