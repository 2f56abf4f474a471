"""The batch sources the trainer draws from (``data.batches``): every epoch a pure function of
(seed, epoch), each example once per epoch, the sizes they promise, the batches they make; and
bad sizes refused."""

import random

import pytest
import torch

from transformer_lab.data.batches import (ClassBatches, PretrainBatches, RandomWindows, ShuffledBatches, TokenBuckets,
                                          make_batch, padding_and_mask)
from transformer_lab.data.mlm import make_pairs
from transformer_lab.data.parallel import EncodedPairs
from transformer_lab.data.synthetic import DateTask
from transformer_lab.data.vocab import Vocab
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer


def test_token_buckets_cap_padded_size_and_cover_each_pair_once():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (500,), generator=g).tolist()
    pairs = EncodedPairs([[5] * n for n in lengths], [[6] * (n // 2 + 1) for n in lengths])
    buckets = TokenBuckets(pairs, max_tokens=400, bos=2, eos=3, pad=0, seed=1)
    for e in (0, 1):
        seen = sorted(i for batch in buckets.epoch(e) for i in batch)
        assert seen == list(range(500))
    assert buckets.epoch(0) != buckets.epoch(1) and buckets.epoch(1) == buckets.epoch(1)
    for batch in buckets.epoch(0):
        b = buckets.make(batch)
        assert b.src.numel() <= 400 and b.tgt_in.numel() <= 400
        assert (b.tgt_in[:, 0] == 2).all()
    with pytest.raises(ValueError, match="longest pair"):
        TokenBuckets(pairs, max_tokens=20, bos=2, eos=3, pad=0)


def test_shuffled_batches_cover_the_set_once_per_epoch():
    pairs = DateTask(first_year=1990, last_year=1990, n_test=5).pairs()[0]  # 360 pairs
    vocab = Vocab(DateTask.symbols())
    src = ShuffledBatches(pairs, vocab, 32, seed=3)
    e0, e1 = src.epoch(0), src.epoch(1)
    assert len(e0) == len(src) == 11 and all(len(b) == 32 for b in e0)  # 352 of 360: the last partial is dropped
    assert len({i for b in e0 for i in b}) == 352 and e0 != e1 and e0 == src.epoch(0)
    b = src.make(e0[0])
    assert torch.equal(b.src, make_batch([pairs[i] for i in e0[0]], vocab).src)
    with pytest.raises(ValueError, match="more than the 360"):
        ShuffledBatches(pairs, vocab, 400)


def test_windows_are_reproducible_and_shifted():
    src = RandomWindows(TRAIN_IDS, 4, 16, seed=3)
    assert src.epoch(2) == src.epoch(2) and src.epoch(2) != src.epoch(3)
    b = src.make(src.epoch(0)[0])
    assert b.x.shape == b.y.shape == (4, 16) and torch.equal(b.x[:, 1:], b.y[:, :-1])


def test_class_batches_pad_right_and_keep_labels():
    ids, labels = [[2, 5, 3], [2, 6, 7, 8, 3], [2, 3]], [1, 0, 1]
    src = ClassBatches(ids, labels, batch_size=2, pad_id=0, seed=0)
    assert len(src) == 2 and sorted(i for b in src.epoch(4) for i in b) == [0, 1, 2]
    b = src.make([1, 2])
    assert b.tokens.tolist() == [[2, 6, 7, 8, 3], [2, 3, 0, 0, 0]] and b.labels.tolist() == [0, 1]
    assert b.attention_mask.sum(1).tolist() == [5, 2] and b.n_tokens == 7 and b.loss_units == 2
    tokens, mask = padding_and_mask([[1], [1, 2, 3]], pad_id=9)
    assert tokens.tolist() == [[1, 9, 9], [1, 2, 3]] and mask.tolist() == [[True, False, False], [True] * 3]


@pytest.mark.parametrize("make", [
    lambda: ShuffledBatches([(["1"], ["one"])] * 4, Vocab(["1", "one"]), 0),
    lambda: RandomWindows(torch.arange(100), 0, 8),
    lambda: RandomWindows(torch.arange(100), 4, 0),
    lambda: RandomWindows(torch.arange(5), 4, 8),
    lambda: ClassBatches([[1]], [0], -1, 0),
    lambda: ClassBatches([[1]], [0, 1], 2, 0),
    lambda: TokenBuckets(EncodedPairs([[1]], [[1]]), 0, 2, 3, 0),
])
def test_bad_sizes_are_refused(make):
    with pytest.raises(ValueError):
        make()


TRAIN_IDS = torch.arange(1000) % 37


@pytest.fixture(scope="module")
def tok():
    lines = ["the cat sat on the mat", "a dog ran in the park", "unbelievable stories are true"] * 20
    return WordPieceTokenizer.train(lines, 60)


def test_dynamic_masks_change_between_epochs_static_do_not(tok):
    docs = [[tok.encode("the cat sat on the mat"), tok.encode("a dog ran in the park")] * 3,
            [tok.encode("unbelievable stories are true")] * 4]
    pairs = make_pairs(docs, random.Random(0), max_len=32)
    for dynamic in (True, False):
        src = PretrainBatches(pairs, tok, max_len=32, batch_size=64, dynamic=dynamic, prob=0.5)
        e0 = src.make(sorted(src.epoch(0)[0]))  # the same examples, in epochs 0 and 1
        e1 = src.make(sorted(src.epoch(1)[0]))
        assert torch.equal(src.make(sorted(src.epoch(0)[0])).labels, e0.labels)  # a pure function
        assert torch.equal(e0.labels, e1.labels) != dynamic
        # pairs and segments do not depend on the masks
        assert torch.equal(e0.segments, e1.segments)
        assert (e0.tokens[:, 0] == tok.token_to_id("[CLS]")).all()


def test_an_examples_masks_do_not_depend_on_its_batch(tok):
    """The same example batched with a short or with a long partner (different padding): the same
    selection, the same 80/10/10 outcome, the same random replacements."""
    docs = [[tok.encode("the cat sat"), tok.encode("a dog ran in the park the cat sat on the mat")] * 4,
            [tok.encode("unbelievable stories are true")] * 4]
    pairs = make_pairs(docs, random.Random(0), max_len=64)
    src = PretrainBatches(pairs, tok, max_len=64, batch_size=8, prob=0.5)
    lengths = [len(p.a) + len(p.b) for p in pairs]
    short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
    alone, padded = src.make([short]), src.make([short, long])
    n = alone.tokens.size(1)
    assert padded.tokens.size(1) > n
    assert torch.equal(alone.tokens[0], padded.tokens[0, :n]) and torch.equal(alone.labels[0], padded.labels[0, :n])


