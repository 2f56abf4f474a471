"""BERT pretraining data, as BERT's reference code (google-research/bert, create_pretraining_data.py)
builds it: the MLM count per sequence (max(1, round(0.15 n))), 80/10/10 per token, specials never,
whole words; segment pairs of whole sentences for NSP, with their properties: IsNext is the document's
own continuation, NotNext another document's text, the unused sentences of a NotNext chunk put back (a
document's A and IsNext B segments, in order, are the document), one-sentence chunks always NotNext."""

import random

import pytest
import torch

from transformer_lab.data.mlm import IGNORE, make_pairs, mask_tokens, n_predictions, pack_pair, word_ids_for

MASK, VOCAB = 4, 1000


def test_masking_statistics_on_a_large_sample():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, VOCAB, (400, 512))
    special = torch.zeros_like(tokens, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS] ... [SEP]
    special[::3, 400:] = True  # padding tails
    lengths = torch.full((400,), 512)
    lengths[::3] = 400
    out, labels = mask_tokens(tokens, special, MASK, VOCAB, g, random_low=5, lengths=lengths)
    selected = labels != IGNORE
    assert not selected[special].any()  # specials and padding never selected
    # the reference's count per sequence, [CLS] and [SEP] counted: 77 of 512 tokens, 60 of 400
    assert selected.sum(1).tolist() == [n_predictions(int(n)) for n in lengths] and n_predictions(512) == 77
    n = selected.sum().item()
    masked = (out == MASK) & selected
    changed = (out != tokens) & (out != MASK) & selected
    kept = (out == tokens) & selected
    # a random replacement equal to the original (1 in 995) counts as kept: within tolerance
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(changed.sum().item() / n - 0.1) < 0.01
    assert abs(kept.sum().item() / n - 0.1) < 0.01
    assert torch.equal(labels[selected], tokens[selected])  # the target is the original token
    assert torch.equal(out[~selected], tokens[~selected])  # nothing else touched
    assert out[changed].min() >= 5  # random replacements never produce special tokens
    # the chosen positions are uniform over the candidates: every position near 15%
    share = selected[1::3, 1:511].float().mean(0)
    assert share.min() > 0.07 and share.max() < 0.25


def test_every_sequence_has_a_target_even_a_short_one_token_by_token():
    """Bernoulli selection left 23% of 12-token pairs with nothing to predict; the reference chooses
    max(1, round(0.15 n)) tokens."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, VOCAB, (2000, 12))
    special = torch.zeros_like(tokens, dtype=torch.bool)
    special[:, [0, 5, 11]] = True
    _, labels = mask_tokens(tokens, special, MASK, VOCAB, g, random_low=5)
    assert ((labels != IGNORE).sum(1) == 2).all()  # round(1.8)
    assert ((mask_tokens(tokens[:, :4], special[:, :4], MASK, VOCAB, g)[1] != IGNORE).sum(1) == 1).all()


def test_whole_word_masking_chooses_whole_words_and_treats_each_piece_alone():
    pieces = ["[CLS]", "un", "##believ", "##able", "story", "is", "tr", "##ue"] * 5 + ["[SEP]"]
    special = [p.startswith("[") for p in pieces]
    ids = word_ids_for(pieces, special)
    assert ids[:9] == [-1, 0, 0, 0, 1, 2, 3, 3, -1]
    rows = 3000
    words = torch.tensor([ids] * rows)
    tokens = torch.arange(10, 10 + len(pieces)).repeat(rows, 1)
    sp = torch.tensor([special] * rows)
    g = torch.Generator().manual_seed(1)
    out, labels = mask_tokens(tokens, sp, MASK, VOCAB, g, word_ids=words, random_low=5)
    sel = labels != IGNORE
    k = n_predictions(len(pieces))  # 6 of 41
    assert (sel.sum(1) <= k).all() and sel.sum(1).float().mean() > k - 1  # words that would overshoot are skipped
    for start in range(1, len(pieces) - 1, 8):  # every piece of a word, or none
        assert torch.equal(sel[:, start], sel[:, start + 1]) and torch.equal(sel[:, start], sel[:, start + 2])
        assert torch.equal(sel[:, start + 5], sel[:, start + 6])
    assert not sel[:, 0].any() and not sel[:, -1].any() and not sel[sp].any()
    # [MASK] / random / unchanged for each piece (the reference's loop over the word's indexes)
    word = sel[:, 1]
    as_mask = out[word][:, 1:4] == MASK
    mixed = as_mask.any(1) & ~as_mask.all(1)
    assert 0.35 < mixed.float().mean() < 0.55  # 1 - 0.8^3 - 0.2^3 = 0.48


def _docs(n_docs=60, per_doc=8):
    """``n_docs`` documents of ``per_doc`` sentences of 3 tokens; token t belongs to document t // 100."""
    return [[[d * 100 + s + 10] * 3 for s in range(per_doc)] for d in range(n_docs)]


def _owner(tokens):
    owners = {t // 100 for t in tokens}
    assert len(owners) == 1, tokens
    return owners.pop()


def _sentences(tokens):
    """Token runs of 3 -> the sentence numbers they are (whole sentences only)."""
    assert len(tokens) % 3 == 0 and all(tokens[i] == tokens[i + 1] == tokens[i + 2] for i in range(0, len(tokens), 3))
    return [t % 100 - 10 for t in tokens[::3]]


def test_nsp_pairs_follow_the_reference():
    docs = _docs()
    budget = 12  # four sentences: no truncation, so sentences stay whole
    by_doc: dict[int, list[int]] = {}
    pairs = []
    for seed in range(20):
        got = make_pairs(docs, random.Random(seed), max_len=budget + 3, short_seq_prob=0.0)
        pairs += got
        if seed == 0:
            for p in got:  # A and an IsNext B, in order, are the document's text: nothing skipped or repeated
                by_doc.setdefault(_owner(p.a), []).extend(_sentences(p.a) + (_sentences(p.b) if not p.not_next else []))
    assert by_doc == {d: list(range(8)) for d in range(60)}
    for p in pairs:
        assert p.a and p.b and len(p.a) + len(p.b) <= budget
        a, b = _sentences(p.a), _sentences(p.b)
        assert a == list(range(a[0], a[0] + len(a))) and b == list(range(b[0], b[0] + len(b)))  # contiguous
        if p.not_next:
            assert _owner(p.b) != _owner(p.a)
        else:
            assert _owner(p.b) == _owner(p.a) and b[0] == a[-1] + 1
    share = sum(p.not_next for p in pairs) / len(pairs)
    # half of the multi-sentence chunks, and every one-sentence chunk (a document's last sentence alone)
    assert 0.5 < share < 0.6, share
    single = [make_pairs(_docs(per_doc=1), random.Random(s), max_len=15) for s in range(3)]
    assert all(p.not_next for ps in single for p in ps)


def test_pairs_fit_their_length_and_short_sequences_come_as_often_as_asked():
    docs = [[[d * 100 + 10 + s] * (1 + (d * 7 + s * 3) % 40) for s in range(12)] for d in range(50)]
    for max_len in (16, 40, 128):
        for nsp in (True, False):
            pairs = make_pairs(docs, random.Random(0), nsp, max_len=max_len)
            assert all(len(p.a) + len(p.b) <= max_len - (3 if nsp else 2) and p.a for p in pairs)
            assert all(bool(p.b) == nsp for p in pairs)
    full = make_pairs(docs, random.Random(0), max_len=128, short_seq_prob=0.0)
    short = make_pairs(docs, random.Random(0), max_len=128, short_seq_prob=1.0)
    mean = lambda ps: sum(len(p.a) + len(p.b) for p in ps) / len(ps)  # noqa: E731
    assert mean(short) < 0.8 * mean(full)


def test_nsp_needs_two_documents_and_can_be_switched_off():
    with pytest.raises(ValueError, match="two documents"):
        make_pairs(_docs(1), random.Random(0), max_len=15)
    single = make_pairs(_docs(1), random.Random(0), nsp=False, max_len=14, short_seq_prob=0.0)
    assert all(p.b == [] and len(p.a) == 12 for p in single)  # RoBERTa's DOC-SENTENCES: chunks of one document
    assert [s for p in single for s in _sentences(p.a)] == list(range(8))
    with pytest.raises(ValueError, match="no room"):
        make_pairs(_docs(), random.Random(0), max_len=4)


def test_pack_pair_truncates_the_longer_side():
    ids, seg = pack_pair(list(range(10, 30)), [7, 8], cls_id=2, sep_id=3, max_len=10)
    assert ids == [2, 10, 11, 12, 13, 14, 3, 7, 8, 3] and seg == [0] * 7 + [1] * 3
    ids, seg = pack_pair([5], [], 2, 3, 10)
    assert ids == [2, 5, 3] and seg == [0, 0, 0]
    ids, _ = pack_pair([5, 6, 7], [8, 9, 10], 2, 3, 8)  # a tie: B loses a token first (the reference's rule)
    assert ids == [2, 5, 6, 7, 3, 8, 9, 3]


def test_not_next_text_comes_from_the_pool():
    docs = _docs(10)
    train, held = list(range(2, 10)), [0, 1]
    for seed in range(5):
        for p in make_pairs(docs, random.Random(seed), only=train, pool=train, max_len=15):
            assert _owner(p.a) in train and _owner(p.b) in train
        for p in make_pairs(docs, random.Random(seed), only=held, pool=held, max_len=15):
            assert _owner(p.a) in held and _owner(p.b) in held


def test_truncation_takes_tokens_from_either_end():
    """The reference cuts the longer side at its front or its back at random ("to add more randomness and
    avoid biases"); always the back would keep every document's first tokens."""
    docs = [[list(range(d * 100 + 1, d * 100 + 41))] for d in range(30)]  # one 40-token sentence each
    pairs = [p for s in range(5) for p in make_pairs(docs, random.Random(s), max_len=23, short_seq_prob=0.0)]
    assert all(len(p.a) + len(p.b) <= 20 for p in pairs)
    starts, ends = {p.a[0] % 100 for p in pairs}, {p.a[-1] % 100 for p in pairs}
    assert max(starts) > 1 and min(ends) < 40  # cut at the front, and at the back
