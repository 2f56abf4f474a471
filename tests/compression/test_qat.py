"""Quantization-aware training: the fake-quantized forward equals the quantized layer's reference path
(itself held to torch's fake-quantize ops in test_linear), gradients pass straight through the
rounding, and training under fake quantization recovers what post-training 4-bit rounding loses."""

import pytest
import torch

from transformer_lab.compression import QuantConfig, QuantLinear, quantize_model
from transformer_lab.compression.qat import FakeQuantLinear, convert_qat, prepare_qat


@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(scheme="weight-only", bits=4, granularity="group", group_size=16),
                                 QuantConfig(granularity="tensor", bits=4)])
def test_the_fake_forward_is_the_quantized_layers_arithmetic(cfg):
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 24)
    x = torch.randn(5, 7, 32)
    fake = FakeQuantLinear(linear, cfg)
    real = QuantLinear.from_linear(linear, cfg.scheme, cfg.bits, cfg.granularity, cfg.group_size, impl="reference")
    with torch.no_grad():
        torch.testing.assert_close(fake(x), real(x), atol=1e-5, rtol=1e-5)


def test_gradients_pass_straight_through_the_rounding():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    fake = FakeQuantLinear(linear, QuantConfig())
    x = torch.randn(4, 16, requires_grad=True)
    fake(x).pow(2).sum().backward()
    # The same products with the rounded operands held as leaves: STE hands their gradients on unchanged.
    w_hat = fake.fake_weight().requires_grad_()
    x_hat = fake.fake_input(x.detach()).requires_grad_()
    torch.nn.functional.linear(x_hat, w_hat, linear.bias.detach()).pow(2).sum().backward()
    torch.testing.assert_close(linear.weight.grad, w_hat.grad)
    torch.testing.assert_close(x.grad, x_hat.grad)


def test_static_ranges_follow_a_moving_average_and_are_not_saved():
    fake = FakeQuantLinear(torch.nn.Linear(4, 2), QuantConfig(scheme="static"))
    fake(torch.full((3, 4), 2.0))
    fake(torch.full((3, 4), -2.0))
    assert float(fake.input_hi) == pytest.approx(2.0 * 0.99 + 0.01 * -2.0)  # first batch sets it, then 1% per batch
    assert set(fake.state_dict()) == {"weight", "bias"}


def test_a_model_learns_under_fake_quantization():
    """An MLP trained from scratch with 4-bit fake-quantized weights and activations fits a teacher:
    its loss falls, and the converted, quantized model computes what the fake one did. (Whether QAT
    beats quantizing an fp32-trained model is a measurement, not a unit test: `finetune classify --qat`.)"""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = torch.randn(1024, 32)
    y = teacher(x).detach()
    torch.manual_seed(1)
    cfg = QuantConfig(bits=4)
    model = prepare_qat(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        fake = model(x)
        real = quantize_model(convert_qat(model), cfg)(x)
    torch.testing.assert_close(real, fake, atol=1e-4, rtol=1e-4)
    assert isinstance(model[0], QuantLinear)


def test_convert_gives_plain_linears_with_the_trained_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    weight = model[0].weight
    prepare_qat(model, QuantConfig())
    assert isinstance(model[0], FakeQuantLinear) and model[0].weight is weight
    convert_qat(model)
    assert type(model[0]) is torch.nn.Linear and model[0].weight is weight
    with pytest.raises(ValueError, match="SmoothQuant"):
        prepare_qat(model, QuantConfig(smooth=0.5))


def test_qat_skips_the_layers_quantize_model_skips():
    """A skip name is read as quantize_model reads it (a name or its end: ``w_q`` is every layer's); QAT took only
    full paths, so it fake-quantized layers the quantization then left in fp32."""
    from transformer_lab.models.presets import preset
    from transformer_lab.models.transformer import Transformer

    def fake(m):
        return {n for n, x in m.named_modules() if isinstance(x, (FakeQuantLinear, QuantLinear))}

    cfg = QuantConfig(skip="w_q")
    model = Transformer(preset("tiny", src_vocab_size=20, tgt_vocab_size=20, d_model=16, d_ff=32, n_heads=2))
    trained = prepare_qat(model, cfg)
    assert fake(trained) and not any(n.endswith("w_q") for n in fake(trained))
    assert fake(quantize_model(convert_qat(trained), cfg)) == fake(prepare_qat(
        Transformer(preset("tiny", src_vocab_size=20, tgt_vocab_size=20, d_model=16, d_ff=32, n_heads=2)), cfg))
