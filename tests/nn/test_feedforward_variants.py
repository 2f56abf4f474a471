"""The FFN's activation options against their oracles (torch.nn.functional, and Shazeer 2020's SwiGLU
written with torch ops), and SwiGLU at equal cost: 2/3 of the width, the same parameter count."""

import pytest
import torch
import torch.nn.functional as F

from transformer_lab.nn.feedforward import PositionwiseFeedForward, gated_width


def _hidden(ffn: PositionwiseFeedForward, x: torch.Tensor) -> torch.Tensor:
    return x @ ffn.w_1.weight.T + ffn.w_1.bias


@pytest.mark.parametrize("activation, oracle", [("relu", F.relu), ("gelu", F.gelu),
                                                ("gelu_tanh", lambda h: F.gelu(h, approximate="tanh"))])
def test_activation_matches_torch_functional(activation, oracle):
    torch.manual_seed(0)
    ffn = PositionwiseFeedForward(16, 48, activation)
    x = torch.randn(3, 7, 16)
    expected = oracle(_hidden(ffn, x)) @ ffn.w_2.weight.T + ffn.w_2.bias
    torch.testing.assert_close(ffn(x), expected, atol=1e-6, rtol=0)


def test_gelu_tanh_is_the_gpt2_formula():
    torch.manual_seed(0)
    ffn = PositionwiseFeedForward(8, 24, "gelu_tanh")
    x = torch.randn(2, 5, 8)
    h = _hidden(ffn, x)
    gelu = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3)))
    torch.testing.assert_close(ffn(x), gelu @ ffn.w_2.weight.T + ffn.w_2.bias, atol=1e-6, rtol=0)


def test_swiglu_is_shazeer_2020():
    """FFN_SwiGLU(x) = (Swish_1(x W) ⊗ x V) W_2, Swish_1(z) = z · sigmoid(z) (biases: ours keeps them)."""
    torch.manual_seed(0)
    ffn = PositionwiseFeedForward(16, gated_width(64), "swiglu")
    x = torch.randn(2, 9, 16)
    xw = _hidden(ffn, x)
    xv = x @ ffn.w_3.weight.T + ffn.w_3.bias
    expected = (xw * torch.sigmoid(xw) * xv) @ ffn.w_2.weight.T + ffn.w_2.bias
    torch.testing.assert_close(ffn(x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("d_model, d_ff", [(128, 512), (128, 128), (512, 2048)])
def test_swiglu_at_two_thirds_width_has_relus_parameters(d_model, d_ff):
    def count(module):
        return sum(p.numel() for p in module.parameters())

    plain = count(PositionwiseFeedForward(d_model, d_ff, "relu"))
    gated = count(PositionwiseFeedForward(d_model, gated_width(d_ff), "swiglu"))
    assert gated_width(d_ff) == round(d_ff * 2 / 3)
    assert abs(gated - plain) / plain < 0.005


def test_gated_width_refuses_a_width_below_two():
    with pytest.raises(ValueError, match="d_ff"):
        gated_width(1)
