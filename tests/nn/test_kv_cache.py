"""The K/V cache (``nn.kv_cache``): what it stores and returns, beam reordering, and the contract
that matters: decoding with the cache gives the logits and tokens of decoding without it (the
encoder-decoder here; GPT in generation/test_sampling.py)."""

import pytest
import torch

from conftest import padded_batch
from transformer_lab.generation.search import Seq2SeqStep, beam_search, greedy_search
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.kv_cache import AttentionCache, DecoderCache

BOS, EOS = 2, 3


def test_self_attention_cache_grows_and_returns_everything():
    cache = AttentionCache()
    k1, v1 = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)
    k, v = cache.append(k1, v1)
    assert cache.length == 3 and torch.equal(k, k1) and torch.equal(v, v1)
    k2, v2 = torch.randn(2, 4, 1, 8), torch.randn(2, 4, 1, 8)
    k, v = cache.append(k2, v2)
    assert cache.length == 4 and torch.equal(k, torch.cat([k1, k2], 2)) and torch.equal(v, torch.cat([v1, v2], 2))


def test_cross_attention_cache_is_set_once():
    cache = AttentionCache(static=True)
    k1, v1 = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    cache.append(k1, v1)
    k, v = cache.append(torch.zeros(2, 4, 5, 8), torch.zeros(2, 4, 5, 8))  # later steps: the stored K/V
    assert torch.equal(k, k1) and torch.equal(v, v1)


def test_reorder_keeps_the_rows_beam_search_chose():
    cache = DecoderCache.empty(2)
    for c in (*cache.self_attn, *cache.cross_attn):
        c.append(torch.arange(3.0)[:, None, None, None].expand(3, 1, 2, 4), torch.zeros(3, 1, 2, 4))
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.self_attn[1].k[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]
    assert cache.cross_attn[0].k[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0] and cache.length == 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(preset("tiny", src_vocab_size=23, tgt_vocab_size=23, dropout=0.0)).eval()


def test_cached_and_uncached_decoding_agree(model):
    src = padded_batch(4, 9, 23, pad_id=0)
    cached, plain = Seq2SeqStep(model, src, use_cache=True), Seq2SeqStep(model, src, use_cache=False)
    prefixes = torch.full((4, 1), BOS)
    for _ in range(12):
        a, b = cached(prefixes), plain(prefixes)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        prefixes = torch.cat([prefixes, a.argmax(-1, keepdim=True)], 1)
    g1 = greedy_search(Seq2SeqStep(model, src, True), 4, BOS, EOS, 15)
    g2 = greedy_search(Seq2SeqStep(model, src, False), 4, BOS, EOS, 15)
    assert g1.tokens == g2.tokens
    b1 = beam_search(Seq2SeqStep(model, src, True), 4, 3, BOS, EOS, 15)
    b2 = beam_search(Seq2SeqStep(model, src, False), 4, 3, BOS, EOS, 15)
    assert b1.tokens == b2.tokens
