"""Our tokenizers against HF ``tokenizers`` on one corpus (default: Multi30k English train).

Each algorithm is trained by ours and by HF's trainer, configured alike; then the corpus is encoded
with our readable tokenizer and with the fast backend (HF tokenizers built from our vocabulary):
lines/s, the ratio ours/peer, and whether the ids are identical.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from transformer_lab.bench.harness import BenchResult
from transformer_lab.tokenizers.bpe import BPETokenizer
from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer
from transformer_lab.tokenizers.corpus import read_corpus
from transformer_lab.tokenizers.fast import FastTokenizer
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

ALGORITHMS = ("bpe", "bytelevel", "wordpiece")


def corpus_path(path: str | Path | None) -> Path:
    if path:
        return Path(path)
    root = os.environ.get("TRANSFORMER_LAB_DATA")
    if not root:
        raise ValueError("data: give a corpus file, or set TRANSFORMER_LAB_DATA to a folder holding multi30k/train.en.gz")
    return Path(root) / "multi30k" / "train.en.gz"


def _hf_trained(algo: str, lines: list[str], size: int):
    """The peer trainer of each algorithm in HF tokenizers, configured like ours."""
    from tokenizers import ByteLevelBPETokenizer as HFByteLevel
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    if algo == "bytelevel":
        tok = HFByteLevel()
        tok.train_from_iterator(lines, vocab_size=size, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
        return tok
    if algo == "wordpiece":
        tok = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                            show_progress=False)
    else:
        tok = HFTokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "removed")
        trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=2, end_of_word_suffix="</w>",
                                      special_tokens=["<pad>", "<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def _ours_trained(algo: str, lines: list[str], size: int):
    if algo == "bpe":
        return BPETokenizer.train(lines, size)
    if algo == "bytelevel":
        return ByteLevelBPETokenizer.train(lines, size)
    return WordPieceTokenizer.train(lines, size, min_frequency=1)


def bench_tokenizer(algo: str = "all", data: str | Path | None = None, vocab_size: int = 8000,
                    merges: int = 8000) -> BenchResult:
    if algo != "all" and algo not in ALGORITHMS:
        raise ValueError(f"algo: expected all or one of {ALGORITHMS}, got {algo!r}")
    path = corpus_path(data)
    lines = read_corpus([path])
    results = {}
    for name in ALGORITHMS if algo == "all" else (algo,):
        size = merges if name == "bpe" else vocab_size
        t0 = time.perf_counter()
        ours = _ours_trained(name, lines, size)
        t_train_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        _hf_trained(name, lines, size)
        t_train_peer = time.perf_counter() - t0
        fast = FastTokenizer.from_tokenizer(ours)  # same vocabulary, Rust implementation
        t0 = time.perf_counter()
        ids_ours = [ours.encode(line) for line in lines]
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids_fast = fast.encode_batch(lines)
        t_peer = time.perf_counter() - t0
        results[name] = {"vocab_size": ours.vocab_size, "ours": round(len(lines) / t_ours, 1),
                         "peer": round(len(lines) / t_peer, 1), "ratio": round(t_peer / t_ours, 4),
                         "identical_ids": ids_ours == ids_fast, "train_s_ours": round(t_train_ours, 2),
                         "train_s_peer": round(t_train_peer, 2)}
    total_ours = sum(len(lines) / r["ours"] for r in results.values())
    total_peer = sum(len(lines) / r["peer"] for r in results.values())
    result = {"benchmark": "tokenizer", "corpus": str(path), "lines": len(lines),
              "unit": "lines/s encoded (ours: readable Python; peer: HF tokenizers, same vocabulary)",
              "ours": round(len(results) * len(lines) / total_ours, 1),
              "peer": round(len(results) * len(lines) / total_peer, 1),
              "ratio": round(total_peer / total_ours, 4), "algorithms": results}
    notes = [f"{a}: vocabulary {r['vocab_size']}, same ids {r['identical_ids']}, training {r['train_s_ours']:.1f} s "
             f"(HF {r['train_s_peer']:.1f} s)" for a, r in results.items()]
    notes.append("The training pipeline encodes with the fast backend (ids identical, checked above).")
    return BenchResult(result, [(f"{a} lines/s", r) for a, r in results.items()], f"{path}: {len(lines)} lines", notes)
