"""The encoder-decoder's static K/V cache (generation/static_decoding.StaticSeq2Seq) against the growing
cache (Seq2SeqStep, which tests/generation/test_search.py and the translation tests hold to
torch.nn.Transformer and to decoding without a cache): the same greedy and beam tokens and scores, with
source padding, a smaller batch and a shorter source in the same buffers; compiled, one graph for every
one-token step and every later call of the same sizes."""

import pytest
import torch

from transformer_lab.generation.search import Seq2SeqStep, beam_search, greedy_search
from transformer_lab.generation.static_decoding import StaticSeq2Seq
from transformer_lab.models.transformer import Transformer, TransformerConfig

BOS, EOS = 1, 2


def small_model(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(src_vocab_size=40, tgt_vocab_size=40, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2,
               n_decoder_layers=2, dropout=0.0, max_len=64)
    return Transformer(TransformerConfig(**{**cfg, **kw})).eval()


def sources() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 40, (3, 7), generator=g)
    src[1, 5:] = 0  # padding
    src[2, 3:] = 0
    return src, torch.tensor([12, 9, 20])  # each sentence's output limit


def assert_same(a, b) -> None:
    assert a.tokens == b.tokens
    torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rotary"])
def test_static_cache_decodes_like_the_growing_cache(position):
    model, (src, limits) = small_model(position=position), sources()
    engine = StaticSeq2Seq(model, rows=3 * 4, src_len=7, tgt_len=20)
    assert_same(greedy_search(engine.step(src), 3, BOS, EOS, limits), greedy_search(Seq2SeqStep(model, src), 3, BOS, EOS, limits))
    static = beam_search(engine.step(src), 3, 4, BOS, EOS, limits)
    grown = beam_search(Seq2SeqStep(model, src), 3, 4, BOS, EOS, limits)
    assert_same(static, grown)
    assert [[h for h, _ in hyps] for hyps in static.hypotheses] == [[h for h, _ in hyps] for hyps in grown.hypotheses]
    # the same buffers for a smaller batch with a shorter source: filler rows and masked source slots
    short = src[1:, :5]
    assert_same(beam_search(engine.step(short), 2, 3, BOS, EOS, limits[1:]),
                beam_search(Seq2SeqStep(model, short), 2, 3, BOS, EOS, limits[1:]))


def test_a_reorder_across_sentences_moves_the_encoders_side_too():
    """Beam search keeps each row on its sentence (the encoder's keys then stay put); any other reorder
    must move them, in both steps, and a later shuffle within a block must not be taken for one that
    keeps rows on their sentences (the rows' sentences are tracked, not their places)."""
    model, (src, _) = small_model(), sources()
    engine = StaticSeq2Seq(model, rows=6, src_len=7, tgt_len=8)
    reorders = [torch.tensor([5, 4, 0, 1, 3, 2]), torch.tensor([0, 2, 1, 3, 4, 5]), torch.tensor([1, 0, 2, 3, 5, 4])]
    tokens = torch.full((6, 1), BOS)
    rows = torch.arange(3).repeat_interleave(2)  # the sentence each row decodes after the reorders so far
    for index in reorders:
        rows = rows.index_select(0, index)
    expected = None
    for step in (Seq2SeqStep(model, src), engine.step(src)):
        step.expand(2)
        prefix = tokens
        for t, index in enumerate(reorders):
            step(prefix)
            step.reorder(index)
            prefix = torch.cat([prefix, torch.full((6, 1), 7 + t)], 1)
        out = step(prefix)
        if expected is None:  # the same tokens from the start, on the rows' own sentences
            fresh = Seq2SeqStep(model, src.index_select(0, rows))
            for t in range(1, prefix.size(1) + 1):
                expected = fresh(prefix[:, :t])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_compiled_step_is_one_graph_for_every_step_and_call():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, (src, limits) = small_model(), sources()
    grown = beam_search(Seq2SeqStep(model, src), 3, 2, BOS, EOS, limits)
    compiled = beam_search(StaticSeq2Seq(model, 6, 7, 20, compile=True).step(src), 3, 2, BOS, EOS, limits)
    assert compiled.tokens == grown.tokens
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    again = greedy_search(StaticSeq2Seq(model, 6, 7, 20, compile=True).step(src[:2]), 2, BOS, EOS, limits[:2])
    assert again.tokens == greedy_search(Seq2SeqStep(model, src[:2]), 2, BOS, EOS, limits[:2]).tokens
    assert counters["stats"]["unique_graphs"] == 1  # a new call of the same sizes reuses the graph


@pytest.mark.parametrize("kw, named", [(dict(position="alibi"), "alibi"), (dict(position="t5"), "t5"),
                                       (dict(attention="window:4"), "window:4")])
def test_models_it_cannot_serve_are_refused_by_name(kw, named):
    with pytest.raises(ValueError, match=f"static K/V cache.*{named}.*translate or evaluate without"):
        StaticSeq2Seq(small_model(**kw), 4, 7, 20)


def test_sizes_beyond_the_buffers_are_named_errors():
    model, (src, limits) = small_model(), sources()
    with pytest.raises(ValueError, match="max_len"):
        StaticSeq2Seq(model, 4, 65, 20)
    engine = StaticSeq2Seq(model, rows=4, src_len=5, tgt_len=3)
    assert (engine.src_slots, engine.tgt_slots) == (16, 32)  # rounded up: similar calls share a graph
    with pytest.raises(ValueError, match="source slots"):
        engine.step(torch.randint(3, 40, (1, 17)))
    with pytest.raises(ValueError, match="rows"):
        beam_search(engine.step(src), 3, 2, BOS, EOS, limits)  # 6 rows for 4
    with pytest.raises(ValueError, match="target slots"):
        greedy_search(engine.step(src[:1]), 1, BOS, EOS, 40)  # no </s> from an untrained model: 40 steps
    with pytest.raises(ValueError, match="token id 99"):
        engine.step(torch.tensor([[99, 2]]))
    step = engine.step(src[:2])
    step(torch.full((2, 1), BOS))
    with pytest.raises(ValueError, match="prefixes: token id 40"):  # a later step's ids too, as decode checks them
        step(torch.tensor([[BOS, 5], [BOS, 40]]))
    with pytest.raises(ValueError, match=r"index: expected \(2,\)"):
        step.reorder(torch.tensor([0]))
