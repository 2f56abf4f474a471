"""Embeddings, FFN, residual + LayerNorm, dropout placement: each against its formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_lab.nn.embeddings import Embeddings, TokenEmbedding
from transformer_lab.nn.feedforward import PositionwiseFeedForward
from transformer_lab.nn.layers import BlockConfig, EncoderLayer, SublayerConnection
from transformer_lab.nn.positions import SinusoidalPositionEncoding, sinusoid_table


def test_embedding_is_scaled_by_sqrt_d_model_plus_sinusoids():
    tok = TokenEmbedding(20, 16)
    emb = Embeddings(tok, SinusoidalPositionEncoding(16, 32), dropout=0.0)
    ids = torch.tensor([[3, 7, 1], [0, 19, 5]])
    expected = tok.weight[ids] * math.sqrt(16) + sinusoid_table(32, 16)[:3]
    torch.testing.assert_close(emb(ids), expected)


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_ffn_formula(activation):
    ffn = PositionwiseFeedForward(8, 32, activation)
    x = torch.randn(2, 5, 8)
    h = x @ ffn.w_1.weight.T + ffn.w_1.bias
    if activation == "relu":
        h = h.clamp_min(0)
    elif activation == "gelu":
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    else:
        h = h * torch.sigmoid(h) * (x @ ffn.w_3.weight.T + ffn.w_3.bias)
    torch.testing.assert_close(ffn(x), h @ ffn.w_2.weight.T + ffn.w_2.bias, atol=1e-6, rtol=0)


def test_ffn_acts_on_each_position_independently():
    ffn = PositionwiseFeedForward(8, 32)
    x = torch.randn(1, 6, 8)
    torch.testing.assert_close(ffn(x)[:, 2:3], ffn(x[:, 2:3]))


@pytest.mark.parametrize("norm_first", [False, True])
def test_sublayer_connection_formulas(norm_first):
    sc = SublayerConnection(8, dropout=0.0, norm_first=norm_first)
    with torch.no_grad():
        sc.norm.weight.uniform_(0.5, 1.5), sc.norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 8)
    f = torch.nn.Linear(8, 8)
    ln = lambda t: F.layer_norm(t, (8,), sc.norm.weight, sc.norm.bias, 1e-5)  # noqa: E731
    expected = x + f(ln(x)) if norm_first else ln(x + f(x))
    torch.testing.assert_close(sc(x, f), expected)


def test_dropout_where_the_paper_puts_it_and_none_in_eval():
    """Dropout on embedding sums, sub-layer outputs and attention weights; off in eval mode."""
    cfg = BlockConfig(d_model=16, n_heads=4, d_ff=32, dropout=0.5, attention_dropout=0.5)
    layer = EncoderLayer(cfg)
    assert all(sl.dropout.p == 0.5 for sl in layer.sublayers)
    assert layer.self_attn.dropout == 0.5
    emb = Embeddings(TokenEmbedding(10, 16), SinusoidalPositionEncoding(16, 10), dropout=0.5)
    ids = torch.randint(0, 10, (2, 6))
    x = torch.randn(2, 6, 16)
    layer.train(), emb.train()
    assert not torch.equal(layer(x, None), layer(x, None))
    assert not torch.equal(emb(ids), emb(ids))
    layer.eval(), emb.eval()
    torch.testing.assert_close(layer(x, None), layer(x, None), atol=0, rtol=0)
    torch.testing.assert_close(emb(ids), emb(ids), atol=0, rtol=0)
