"""Greedy and beam search: a hand-built model with known probabilities, and our model cached vs not."""

import math

import pytest
import torch

from conftest import padded_batch
from transformer_lab.generation.search import Seq2SeqStep, beam_search, greedy_search, length_penalty
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer

PAD, BOS, EOS, A, B = range(5)

# Markov tables: next-token probabilities given the last token, one table per sentence.
TABLES = [
    {BOS: {A: 0.6, B: 0.4}, A: {EOS: 0.3, A: 0.45, B: 0.25}, B: {EOS: 0.9, A: 0.05, B: 0.05}},
    {BOS: {A: 0.2, B: 0.8}, A: {EOS: 1.0}, B: {A: 0.7, EOS: 0.3}},
]


class ToyStep:
    """Hand-set log-probabilities; each row remembers which sentence it belongs to."""

    def __init__(self, sentences):
        self.rows = torch.tensor(sentences)

    def __call__(self, prefixes):
        out = torch.full((prefixes.size(0), 5), float("-inf"))
        for r in range(prefixes.size(0)):
            for tok, p in TABLES[int(self.rows[r])][int(prefixes[r, -1])].items():
                out[r, tok] = math.log(p)
        return out

    def expand(self, k):
        self.rows = self.rows.repeat_interleave(k)

    def reorder(self, index):
        self.rows = self.rows[index]


def test_beam_search_hand_computed():
    """Sentence 0, K=2, α=0.6, max 3 tokens. Step 1: beams a (.6), b (.4). Step 2: b</s> (.36) is
    rank 0 -> finished; live a·a (.27), a·b (.15); a</s> (.18) ranks 2nd of the live-or-final list
    below K... (rank 2 >= K: not kept). Step 3: a·b</s> (.135) rank 0 -> finished: 2 hypotheses, done."""
    res = beam_search(ToyStep([0]), 1, beam_size=2, bos=BOS, eos=EOS, max_len=3, alpha=0.6)
    expected = [([B], math.log(0.36) / length_penalty(2, 0.6)), ([A, B], math.log(0.6 * 0.25 * 0.9) / length_penalty(3, 0.6))]
    assert [h for h, _ in res.hypotheses[0]] == [h for h, _ in expected]
    for (_, got), (_, want) in zip(res.hypotheses[0], expected):
        assert got == pytest.approx(want, abs=1e-6)
    assert res.tokens == [[B]]
    assert greedy_search(ToyStep([0]), 1, BOS, EOS, max_len=3).tokens == [[A, A, A]]  # greedy misses it


def test_length_penalty_keeps_finished_hypotheses():
    """Sentence 1: b</s> (.24) finishes at step 2 while b·a (.56) lives on and ends with
    b·a</s> (.56): a better, longer hypothesis replaces nothing; both are kept and ranked."""
    res = beam_search(ToyStep([1]), 1, beam_size=2, bos=BOS, eos=EOS, max_len=5, alpha=0.6)
    hyps = dict((tuple(h), s) for h, s in res.hypotheses[0])
    assert hyps[(B,)] == pytest.approx(math.log(0.8 * 0.3) / length_penalty(2, 0.6), abs=1e-6)
    assert hyps[(B, A)] == pytest.approx(math.log(0.8 * 0.7) / length_penalty(3, 0.6), abs=1e-6)
    assert res.tokens == [[B, A]]


def test_each_sentence_is_independent_of_the_batch():
    together = beam_search(ToyStep([0, 1]), 2, beam_size=2, bos=BOS, eos=EOS, max_len=4)
    alone = [beam_search(ToyStep([s]), 1, beam_size=2, bos=BOS, eos=EOS, max_len=4) for s in (0, 1)]
    assert together.tokens == [a.tokens[0] for a in alone]
    assert together.hypotheses == [a.hypotheses[0] for a in alone]


def test_beam_one_is_greedy_on_the_toy():
    for s in (0, 1):
        assert beam_search(ToyStep([s]), 1, 1, BOS, EOS, 6).tokens == greedy_search(ToyStep([s]), 1, BOS, EOS, 6).tokens


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(preset("tiny", src_vocab_size=23, tgt_vocab_size=23, dropout=0.0)).eval()


def test_beam_one_equals_greedy_on_the_model(model):
    src = padded_batch(5, 7, 23)
    assert beam_search(Seq2SeqStep(model, src), 5, 1, BOS, EOS, 12).tokens == greedy_search(Seq2SeqStep(model, src), 5, BOS, EOS, 12).tokens


def test_per_sentence_max_length(model):
    src = padded_batch(3, 6, 23)
    res = greedy_search(Seq2SeqStep(model, src), 3, BOS, 999, torch.tensor([2, 5, 3]))  # eos never produced
    assert [len(t) for t in res.tokens] == [2, 5, 3]
    res = beam_search(Seq2SeqStep(model, src), 3, 2, BOS, 999, torch.tensor([2, 5, 3]))
    assert [len(t) for t in res.tokens] == [2, 5, 3]


@torch.no_grad()
def test_recorded_cross_attention_follows_reordered_rows(model):
    """A reorder moves each row's recorded cross-attention with it (it stayed in place, so a beam's record
    was spliced from other beams): after steps with reorders between them, each row's record equals the
    last decoder layer's cross-attention of its own prefix, teacher-forced in one pass."""
    src = padded_batch(2, 6, 23)
    step = Seq2SeqStep(model, src, record_cross_attention=True)
    step.expand(2)  # rows: sentence 0, 0, 1, 1
    prefixes = torch.full((4, 1), BOS)
    for index, token in ((torch.tensor([1, 0, 3, 2]), [5, 6, 7, 8]), (torch.tensor([0, 0, 2, 3]), [9, 10, 11, 12])):
        step(prefixes)
        step.reorder(index)
        prefixes = torch.cat([prefixes.index_select(0, index), torch.tensor(token)[:, None]], 1)
    step(prefixes)
    recorded = torch.cat(step.cross_attention, dim=2)  # (N, H, T, S)
    model.decode(model.encode(step.src), step.src, prefixes, record_cross_attention=True)
    assert torch.allclose(recorded, model.decoder.layers[-1].cross_weights, atol=1e-6)
