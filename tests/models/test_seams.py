"""The seams the next features plug into, checked on all three families:

* every projection to the vocabulary is a module (GPT's LM head, BERT's MLM decoder, the
  encoder-decoder's generator), so a replaced Linear (LoRA, INT8) is used, never bypassed;
* a model's forward has no graph break under torch.compile (input validation reads no tensor value
  while Dynamo traces; oracle: ``torch._dynamo.explain``);
* the position encoding is a config choice for GPT and BERT too (rotary through the same interface),
  with the KV cache and left padding still exact.
"""

import json

import pytest
import torch

from transformer_lab.generation.sampling import SamplingConfig, generate
from transformer_lab.models.bert import Bert, BertConfig
from transformer_lab.models.gpt import GPT, GPTConfig
from transformer_lab.models.hf import save_bert
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer

V = 97


class Doubled(torch.nn.Module):
    """A replacement for a Linear (as LoRA or a quantized layer would be): its forward must run."""

    def __init__(self, base: torch.nn.Linear):
        super().__init__()
        self.base, self.calls = base, 0

    def forward(self, x):
        self.calls += 1
        return 2 * self.base(x)


def gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, max_len=32, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0,
                         attention_dropout=0.0, **kw)).eval()


def bert(**kw) -> Bert:
    torch.manual_seed(0)
    return Bert(BertConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32, dropout=0.0,
                           attention_dropout=0.0, **kw)).eval()


def transformer(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("tiny", src_vocab_size=V, tgt_vocab_size=V, dropout=0.0, **kw)).eval()


def test_replaced_heads_are_used():
    x = torch.randint(1, V, (2, 9))
    g = gpt()
    plain = g(x)
    g.lm_head = Doubled(g.lm_head)
    torch.testing.assert_close(g(x), 2 * plain)
    assert g.lm_head.calls == 1
    b = bert(pretraining_heads=True)
    plain = b(x).mlm_logits
    b.mlm.decoder = Doubled(b.mlm.decoder)
    torch.testing.assert_close(b(x).mlm_logits, 2 * plain)
    t = transformer()
    plain = t.logits(x, x)
    t.generator.proj = Doubled(t.generator.proj)
    torch.testing.assert_close(t.logits(x, x), 2 * plain)


def test_replaced_attention_projections_are_used_in_a_batch_of_training_size():
    """A training batch (>= 32 rows) takes the fused Q/K/V path for plain Linears; a replaced one
    must still run its own forward there."""
    t = transformer()
    src, tgt = torch.randint(1, V, (8, 12)), torch.randint(1, V, (8, 10))
    plain = t.logits(src, tgt)
    for layer in (t.encoder.layers[0], t.decoder.layers[0]):
        layer.self_attn.w_v = Doubled(layer.self_attn.w_v)
    t.decoder.layers[0].cross_attn.w_k = Doubled(t.decoder.layers[0].cross_attn.w_k)
    out = t.logits(src, tgt)
    assert not torch.allclose(out, plain, atol=1e-3)
    assert t.encoder.layers[0].self_attn.w_v.calls == 1 and t.decoder.layers[0].cross_attn.w_k.calls == 1


@pytest.mark.parametrize("family", ["gpt", "bert", "transformer"])
def test_forward_has_no_graph_break_under_torch_compile(family):
    """Issue 9: the forward read tokens.min()/max() back to the host, a graph break in every forward
    (measured on a GPU); the checks now read only shapes while Dynamo traces. Eager calls still
    check the values (test_bad_ids_are_still_clear_errors)."""
    x = torch.randint(1, V, (2, 9))
    model, args = {"gpt": (gpt(), (x,)), "bert": (bert(), (x,)), "transformer": (transformer(), (x, x))}[family]
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(*args)
    assert explained.graph_break_count == 0, [str(r.reason)[:120] for r in explained.break_reasons]
    assert explained.graph_count == 1


def test_bad_ids_are_still_clear_errors():
    for model, call in ((gpt(), lambda m, x: m(x)), (bert(), lambda m, x: m(x)), (transformer(), lambda m, x: m(x, x))):
        with pytest.raises(ValueError, match=f"token id {V} is out of range"):
            call(model, torch.tensor([[1, V, 2]]))
    with pytest.raises(ValueError, match="segments: token id 2 is out of range"):
        bert()(torch.tensor([[1, 2]]), torch.tensor([[0, 2]]))


@pytest.mark.parametrize("position", ["rotary", "sinusoidal", "alibi", "t5", "shaw"])
def test_gpt_position_is_a_config_choice(position):
    g = gpt(position=position)
    assert not hasattr(g.embed.position, "embedding")  # no learned table
    inner = g.blocks.layers[0].self_attn.position
    assert (inner is g.embed.position) == (position in ("rotary", "alibi", "t5"))  # one shared instance
    if position == "shaw":  # one pair of tables per layer, as in the paper
        assert inner is not g.blocks.layers[1].self_attn.position and hasattr(inner, "key")
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    cfg = SamplingConfig(max_new_tokens=12, greedy=True)
    cached = generate(g, prompts, cfg, return_logits=True)
    plain = generate(g, prompts, SamplingConfig(max_new_tokens=12, greedy=True, use_cache=False), return_logits=True)
    assert cached.tokens == plain.tokens and (cached.logits - plain.logits).abs().max() <= 1e-5
    for i, p in enumerate(prompts):  # a left-padded row equals its prompt alone
        assert generate(g, [p], cfg).tokens[0] == cached.tokens[i]
    x = torch.randint(1, V, (1, 8))
    assert not torch.allclose(g(x)[0, -1], g(x.flip(1))[0, -1], atol=1e-4)  # order is seen


def test_bert_position_is_a_config_choice(tmp_path):
    b = bert(position="rotary")
    assert b.encoder.layers[0].self_attn.position is b.embed.position
    x = torch.randint(1, V, (2, 9))
    out = b(x).hidden
    assert torch.isfinite(out).all() and not torch.allclose(out[:, 0], b(x.flip(1)).hidden[:, 0], atol=1e-4)
    save_bert(b, tmp_path / "hf")  # not a Hugging Face BERT: a transformer-lab-bert folder (tests/models/test_bert.py)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "transformer-lab-bert"
    with pytest.raises(ValueError, match="position"):
        BertConfig(position="alibi-2")


@pytest.mark.parametrize("position", ["alibi", "t5", "shaw"])
def test_relative_positions_in_every_family_with_the_cache(position):
    """The encoder-decoder decodes the same tokens with and without its K/V cache (the cache keeps
    key positions); BERT sees order; relative encodings run past max_len, a learned table does not."""
    from transformer_lab.generation.search import Seq2SeqStep, greedy_search

    t = transformer(position=position)
    if position != "shaw":  # ALiBi and T5: the encoder bidirectional, the decoder causal
        assert not t.src_embed.position.causal and t.tgt_embed.position.causal
    src = torch.randint(3, V, (3, 10))
    runs = [greedy_search(Seq2SeqStep(t, src, use_cache=c), 3, 1, 2, 12) for c in (True, False)]
    assert runs[0].tokens == runs[1].tokens
    b = bert(position=position)
    x = torch.randint(1, V, (2, 9))
    assert not torch.allclose(b(x).hidden[:, 0], b(x.flip(1)).hidden[:, 0], atol=1e-4)
    long = torch.randint(1, V, (1, 40))  # max_len is 32
    assert gpt(position=position)(long).shape == (1, 40, V) and b(long).hidden.shape == (1, 40, 32)
    with pytest.raises(ValueError, match="max_len=32"):
        gpt()(long)


@pytest.mark.parametrize("attention", ["window:3", "block:4,random:1,global:1", "chunked:5"])
@pytest.mark.parametrize("position", ["learned", "rotary", "alibi", "t5"])
def test_gpt_attention_pattern_equals_its_dense_mask_with_and_without_the_cache(attention, position):
    """A patterned GPT (efficient path) equals the same weights run on the reference path (the pattern
    as a dense mask), and cached generation equals generation without the cache."""
    from transformer_lab.nn.sparse import parse_pattern

    g = gpt(position=position, attention=attention)
    x = torch.randint(1, V, (2, 23))
    fast = g(x)
    for layer in g.blocks.layers:
        layer.self_attn.impl = "reference"
    torch.testing.assert_close(g(x), fast, atol=1e-5, rtol=1e-5)
    for layer in g.blocks.layers:
        layer.self_attn.impl = "sdpa"
    cfg = SamplingConfig(max_new_tokens=10, greedy=True)
    cached = generate(g, [[5, 6, 7, 8, 9, 10, 11]], cfg, return_logits=True)
    plain = generate(g, [[5, 6, 7, 8, 9, 10, 11]], SamplingConfig(max_new_tokens=10, greedy=True, use_cache=False),
                     return_logits=True)
    assert cached.tokens == plain.tokens and (cached.logits - plain.logits).abs().max() <= 1e-4
    exact = parse_pattern(attention, causal=True).kind == "chunked"  # chunked is full attention, computed in parts
    assert torch.allclose(fast, gpt(position=position)(x), atol=1e-5) == exact


def test_bert_longformer_pattern_and_bad_combinations():
    b = bert(attention="window:2,global:0")
    x = torch.randint(1, V, (2, 20))
    x[1, -4:] = 0  # padding
    fast = b(x).hidden
    for layer in b.encoder.layers:
        layer.self_attn.impl = "reference"
    torch.testing.assert_close(b(x).hidden[0], fast[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b(x).hidden[1, :-4], fast[1, :-4], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shaw"):
        GPTConfig(attention="window:4", position="shaw")
    with pytest.raises(ValueError, match="attention"):
        GPTConfig(attention="dilated:4")
    with pytest.raises(ValueError, match="global_tokens"):
        GPTConfig(attention="window:4,global:0")  # Longformer's global tokens are bidirectional


@pytest.mark.parametrize("position", ["rotary", "alibi", "t5", "shaw"])
def test_segment_recurrence_equals_full_attention_over_the_segments(position):
    """Transformer-XL's memory: segment 2 with segment 1's layer inputs as memory gives full causal
    attention's outputs over [segment 1; segment 2]; no gradient reaches the memory; a memory shorter
    than a segment keeps the latest positions."""
    g = gpt(position=position)
    x = torch.randint(1, V, (2, 24))
    full = g(x)
    first, memory = g.forward_segment(x[:, :12], None, mem_len=12)
    second, memory2 = g.forward_segment(x[:, 12:], memory, mem_len=12)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-5, rtol=1e-5)
    assert all(not m.requires_grad for m in memory) and memory2[0].shape == (2, 12, 32)
    assert torch.equal(memory2[0], g.embed(x[:, 12:], torch.arange(12, 24)))  # layer 0's inputs, the latest 12
    with pytest.raises(ValueError, match="relative position"):
        gpt().forward_segment(x, None, 8)


@pytest.mark.parametrize("position", ["rotary", "alibi"])
def test_gpt_window_on_flexattention_equals_the_reference_path(position, monkeypatch):
    """In inference on long inputs (``sparse.FLEX_MIN_N``, lowered here) a windowed GPT runs on
    FlexAttention (ALiBi through its score_mod); the logits equal the dense reference path's."""
    from transformer_lab.nn import sparse

    torch._dynamo.reset()
    for name, value in (("FLEX_MIN_N", 1), ("_flex_attention", None), ("_FLEX_GRAPHS", set()), ("_FLEX_MASKS", {})):
        monkeypatch.setattr(sparse, name, value)
    calls, flex = [], sparse._flex
    monkeypatch.setattr(sparse, "_flex", lambda *a: calls.append(1) or flex(*a))
    g = gpt(position=position, attention="window:5")
    x = torch.randint(1, V, (2, 30))
    with torch.no_grad():
        fast = g(x)
    assert len(calls) == 2  # both layers ran on FlexAttention
    with torch.no_grad():
        for layer in g.blocks.layers:
            layer.self_attn.impl = "reference"
        torch.testing.assert_close(g(x), fast, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["window:3", "block:4,random:1,global:1", "chunked:5"])
@pytest.mark.parametrize("position", ["sinusoidal", "alibi"])
def test_encoder_decoder_pattern_equals_its_dense_mask_and_decodes_with_the_cache(attention, position):
    """The encoder-decoder with a pattern (the encoder's bidirectional, the decoder's causal; cross-attention
    full): the efficient path equals the same weights on the reference path (the pattern as a dense mask)
    on every real position of a padded batch, and step-by-step decoding with the cache equals teacher
    forcing. Chunked attention is full attention computed in parts; the others differ from it."""
    t = transformer(attention=attention, position=position)
    src, tgt = torch.randint(1, V, (2, 17)), torch.randint(1, V, (2, 13))
    src[1, -3:] = 0
    with torch.no_grad():
        fast = t(src, tgt)
        for layer in (*t.encoder.layers, *t.decoder.layers):
            layer.self_attn.impl = "reference"
        torch.testing.assert_close(t(src, tgt), fast, atol=1e-5, rtol=1e-5)
        for layer in (*t.encoder.layers, *t.decoder.layers):
            layer.self_attn.impl = "sdpa"
        memory, cache = t.encode(src), t.new_cache()
        steps = torch.cat([t.decode(memory, src, tgt[:, i:i + 1], cache=cache) for i in range(tgt.size(1))], dim=1)
        torch.testing.assert_close(steps, t.decode(memory, src, tgt), atol=1e-5, rtol=1e-5)
        exact = attention.startswith("chunked")
        assert torch.allclose(fast, transformer(position=position)(src, tgt), atol=1e-5) == exact


def test_encoder_decoder_pattern_combinations_are_named():
    with pytest.raises(ValueError, match="global tokens"):
        transformer(attention="window:4,global:0")  # they see every position: not in a causal decoder
    with pytest.raises(ValueError, match="decoder_causal"):
        transformer(attention="window:4", decoder_causal=False)
    with pytest.raises(ValueError, match="shaw"):
        transformer(attention="window:4", position="shaw")
    from transformer_lab.export.onnx import export_model

    with pytest.raises(ValueError, match="pattern"):
        export_model(transformer(attention="window:4"), "/nonexistent/never-written")
