"""The experiments' model variants that are not the paper: additive (Bahdanau) attention scores and
BatchNorm in place of LayerNorm. Oracles: Bahdanau's formula written as a loop, gradcheck, and
torch.nn.BatchNorm1d on the real tokens."""

import pytest
import torch
from torch import nn

from conftest import padded_batch
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer, TransformerConfig
from transformer_lab.nn.attention import MultiHeadAttention, additive_attention
from transformer_lab.nn.layers import TokenBatchNorm
from transformer_lab.nn.masks import decoder_self_mask, padding_mask, token_keep


def test_additive_attention_is_bahdanaus_formula():
    b, h, tq, tk, dh = 2, 3, 4, 5, 6
    q, k, v = torch.randn(b, h, tq, dh), torch.randn(b, h, tk, dh), torch.randn(b, h, tk, dh)
    w = torch.randn(h, dh)
    mask = torch.ones(b, 1, 1, tk, dtype=torch.bool)
    mask[1, ..., 3:] = False
    res = additive_attention(q, k, v, w, mask)
    scores = torch.empty(b, h, tq, tk)
    for bi in range(b):
        for hi in range(h):
            for i in range(tq):
                for j in range(tk):
                    scores[bi, hi, i, j] = (w[hi] * torch.tanh(q[bi, hi, i] + k[bi, hi, j])).sum()
    scores[1, ..., 3:] = float("-inf")
    expected = scores.softmax(-1)
    torch.testing.assert_close(res.weights, expected)
    torch.testing.assert_close(res.output, expected @ v)


def test_additive_attention_gradients_pass_gradcheck():
    args = [torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    w = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, w: additive_attention(q, k, v, w).output, (*args, w))


def test_additive_module_ignores_masked_keys_and_rejects_unknown_scores():
    mha = MultiHeadAttention(16, 2, score="additive").eval()
    x = torch.randn(2, 5, 16)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[:, ..., 4] = False
    y = x.clone()
    y[:, 4] = 100.0  # a masked key's content must not matter
    torch.testing.assert_close(mha(x, x, mask).output[:, :4], mha(x, y, mask).output[:, :4])
    with pytest.raises(ValueError, match="score"):
        MultiHeadAttention(16, 2, score="cosine")
    with pytest.raises(ValueError, match="attention_score"):
        TransformerConfig(attention_score="cosine")


def test_token_keep_reads_the_real_tokens_off_self_attention_masks():
    tokens = padded_batch(3, 6, 20)
    real = tokens != 0
    assert torch.equal(token_keep(padding_mask(tokens, 0), 6), real)
    assert torch.equal(token_keep(decoder_self_mask(tokens, 0), 6), real)
    assert token_keep(None, 6) is None


def test_masked_batchnorm_is_batchnorm1d_over_the_real_tokens():
    x = torch.randn(3, 7, 8)
    keep = torch.rand(3, 7) > 0.3
    ours, oracle = TokenBatchNorm(8, masked=True), nn.BatchNorm1d(8)
    with torch.no_grad():
        ours.weight.uniform_(), ours.bias.uniform_()
    oracle.load_state_dict(ours.state_dict())
    out = ours(x, keep)
    torch.testing.assert_close(out[keep], oracle(x[keep]))
    torch.testing.assert_close(out[~keep], x[~keep])  # padding passes through
    torch.testing.assert_close(ours.running_mean, oracle.running_mean)  # test-time statistics: real tokens only
    torch.testing.assert_close(ours.running_var, oracle.running_var)
    plain = TokenBatchNorm(8)
    plain.load_state_dict(oracle.state_dict())
    oracle2 = nn.BatchNorm1d(8)
    oracle2.load_state_dict(oracle.state_dict())
    torch.testing.assert_close(plain(x, keep), oracle2(x.reshape(-1, 8)).view_as(x))  # unmasked: padding counts


@pytest.mark.parametrize("norm, padding_matters", [("batch", True), ("batch-masked", False), ("layer", False)])
def test_only_unmasked_batchnorm_lets_padding_change_real_tokens(norm, padding_matters):
    torch.manual_seed(0)
    model = Transformer(preset("tiny", src_vocab_size=30, tgt_vocab_size=30, norm=norm, dropout=0.0, attention_dropout=0.0))
    src, tgt = padded_batch(4, 6, 30, min_len=3), padded_batch(4, 5, 30, min_len=2)
    pad = lambda t: torch.cat([t, torch.zeros(t.size(0), 4, dtype=t.dtype)], 1)  # noqa: E731 - four more pad columns
    short, long = model(src, tgt), model(pad(src), pad(tgt))[:, :5]
    real = tgt != 0
    assert (not torch.allclose(short[real], long[real], atol=1e-5)) == padding_matters
