"""BERT pretraining data: masking statistics (15%, 80/10/10, specials never), whole words,
dynamic vs static masks, NSP balance and NotNext provenance, pair packing."""

import random

import pytest
import torch

from transformer_lab.data.mlm import IGNORE, make_pairs, mask_tokens, pack_pair, word_ids_for

MASK, VOCAB = 4, 1000


def test_masking_statistics_on_a_large_sample():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, VOCAB, (400, 512))
    special = torch.zeros_like(tokens, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS] ... [SEP]
    special[::3, 400:] = True  # padding tails
    out, labels = mask_tokens(tokens, special, MASK, VOCAB, g, random_low=5)
    selected = labels != IGNORE
    assert not selected[special].any()  # specials and padding never selected
    frac = selected.sum().item() / (~special).sum().item()
    assert abs(frac - 0.15) < 0.005
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


def test_whole_word_masking_selects_every_piece_of_a_word():
    pieces = ["[CLS]", "un", "##believ", "##able", "story", "is", "tr", "##ue", "[SEP]"]
    special = [p.startswith("[") for p in pieces]
    ids = word_ids_for(pieces, special)
    assert ids == [-1, 0, 0, 0, 1, 2, 3, 3, -1]
    words = torch.tensor([ids] * 4000)
    tokens = torch.arange(10, 19).repeat(4000, 1)
    sp = torch.tensor([special] * 4000)
    g = torch.Generator().manual_seed(1)
    _, labels = mask_tokens(tokens, sp, MASK, VOCAB, g, word_ids=words, random_low=5)
    sel = labels != IGNORE
    assert torch.equal(sel[:, 1], sel[:, 2]) and torch.equal(sel[:, 2], sel[:, 3]) and torch.equal(sel[:, 6], sel[:, 7])
    assert abs(sel[:, 1].float().mean().item() - 0.15) < 0.02
    assert not sel[:, 0].any() and not sel[:, 8].any()


def _docs(n_docs=60, per_doc=8):
    return [[[d * 100 + s + 10] * 3 for s in range(per_doc)] for d in range(n_docs)]


def test_nsp_pairs_are_balanced_and_not_next_comes_from_another_document():
    docs = _docs()
    owner = {tuple(s): d for d, doc in enumerate(docs) for s in doc}
    pairs = []
    for seed in range(30):
        pairs += make_pairs(docs, random.Random(seed))
    frac = sum(p.not_next for p in pairs) / len(pairs)
    assert abs(frac - 0.5) < 0.01, frac  # 12,600 pairs
    for p in pairs:
        da, db = owner[tuple(p.a)], owner[tuple(p.b)]
        if p.not_next:
            assert da != db
        else:
            assert da == db and docs[da].index(p.b) == docs[da].index(p.a) + 1


def test_nsp_needs_two_documents_and_can_be_switched_off():
    with pytest.raises(ValueError, match="two documents"):
        make_pairs(_docs(1), random.Random(0))
    single = make_pairs(_docs(1), random.Random(0), nsp=False)
    assert len(single) == 8 and all(p.b == [] for p in single)


def test_pack_pair_truncates_the_longer_side():
    ids, seg = pack_pair(list(range(10, 30)), [7, 8], cls_id=2, sep_id=3, max_len=10)
    assert ids == [2, 10, 11, 12, 13, 14, 3, 7, 8, 3] and seg == [0] * 7 + [1] * 3
    ids, seg = pack_pair([5], [], 2, 3, 10)
    assert ids == [2, 5, 3] and seg == [0, 0, 0]


def test_not_next_sentences_come_from_the_pool():
    docs = _docs(10)
    owner = {tuple(s): d for d, doc in enumerate(docs) for s in doc}
    train, held = list(range(2, 10)), [0, 1]
    for seed in range(5):
        for p in make_pairs(docs, random.Random(seed), only=train, pool=train):
            assert owner[tuple(p.a)] in train and owner[tuple(p.b)] in train
        for p in make_pairs(docs, random.Random(seed), only=held, pool=held):
            assert owner[tuple(p.b)] in held
