"""Translation on real parallel text (Multi30k by default), trained and decoded as the paper does.

Pipeline: read aligned files -> train a subword tokenizer on the training side only (joint by
default, as the paper's shared BPE vocabulary; cached, keyed by the files' hashes and settings) ->
encode with the fast backend (cached) -> drop over-long pairs (counted) -> token-bucket batches ->
Trainer; validation reports loss, perplexity and BLEU on a sample; decoding is beam search.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from transformer_lab.data.parallel import EncodedPairs, TokenBuckets, filter_long, multi30k_files, read_parallel, user_cache_dir
from transformer_lab.generation.search import Seq2SeqStep, beam_search, greedy_search
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.tokenizers.base import Tokenizer
from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer
from transformer_lab.tokenizers.cache import encode_file_cached
from transformer_lab.tokenizers.fast import FastTokenizer
from transformer_lab.tokenizers.io import load_tokenizer
from transformer_lab.tokenizers.special import SEQ2SEQ_SPECIALS
from transformer_lab.training.losses import label_smoothed_nll

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = range(4)  # SEQ2SEQ_SPECIALS order: every tokenizer here puts them first

# Task presets: the model size and the training recipe scaled for Multi30k's 29,000 pairs.
TASKS = {
    f"multi30k-{s}-{t}": dict(src=s, tgt=t)
    for s, t in (("de", "en"), ("en", "de"), ("fr", "en"), ("en", "fr"))
}


@dataclass
class TranslationData:
    tokenizer_src: Tokenizer
    tokenizer_tgt: Tokenizer
    train: EncodedPairs
    valid_src: list[str]
    valid_tgt: list[str]
    valid: EncodedPairs

    @property
    def joint(self) -> bool:
        return self.tokenizer_src is self.tokenizer_tgt


def _hash_files(paths: Sequence[Path], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:24]


def train_tokenizer(lines: list[str], vocab_size: int, paths: Sequence[Path], cache_dir: Path) -> Tokenizer:
    """Byte-level BPE with the seq2seq specials first (<pad>=0, <unk>=1, <s>=2, </s>=3), cached."""
    key = _hash_files(paths, {"algo": "bytelevel", "vocab_size": vocab_size, "specials": SEQ2SEQ_SPECIALS})
    folder = cache_dir / "tokenizers" / key
    if (folder / "tokenizer_config.json").is_file():
        return load_tokenizer(folder)
    tok = ByteLevelBPETokenizer.train(lines, vocab_size, specials=SEQ2SEQ_SPECIALS)
    tmp = folder.with_name(folder.name + ".tmp")
    tok.save(tmp)
    tmp.replace(folder)  # a complete folder or none under the real name
    return tok


def _encode(path: Path, tok: Tokenizer, cache_dir: Path, skip: set[int]) -> list[list[int]]:
    ids = encode_file_cached(path, FastTokenizer.from_tokenizer(tok), cache_dir / "encoded")
    return [x for i, x in enumerate(ids) if i not in skip]


def prepare_data(
    train_files: tuple[Path, Path],
    valid_files: tuple[Path, Path],
    vocab_size: int = 8000,
    joint: bool = True,
    max_len: int | None = 100,
    cache_dir: Path | None = None,
) -> TranslationData:
    cache_dir = cache_dir or user_cache_dir()
    train = read_parallel(*train_files)
    valid = read_parallel(*valid_files)
    if joint:
        tok_src = tok_tgt = train_tokenizer(train.src + train.tgt, vocab_size, list(train_files), cache_dir)
    else:
        tok_src = train_tokenizer(train.src, vocab_size, [train_files[0]], cache_dir)
        tok_tgt = train_tokenizer(train.tgt, vocab_size, [train_files[1]], cache_dir)

    def encode_pairs(files, pairs) -> tuple[list[list[int]], list[list[int]]]:
        # The cache encodes whole files; pairs with an empty side were dropped by read_parallel.
        from transformer_lab.tokenizers.io import read_lines

        raw_src, raw_tgt = list(read_lines(files[0])), list(read_lines(files[1]))
        skip = {i for i in range(len(raw_src)) if not (raw_src[i].strip() and raw_tgt[i].strip())}
        return _encode(files[0], tok_src, cache_dir, skip), _encode(files[1], tok_tgt, cache_dir, skip)

    enc_train = filter_long(*encode_pairs(train_files, train), max_len)
    if enc_train.skipped_long:
        log.warning("skipped %d training pairs longer than %d tokens (--max-len)", enc_train.skipped_long, max_len)
    enc_valid = filter_long(*encode_pairs(valid_files, valid), max_len)
    if enc_valid.skipped_long:
        log.warning("validation loss leaves out %d pairs longer than %d tokens", enc_valid.skipped_long, max_len)
    return TranslationData(tok_src, tok_tgt, enc_train, valid.src, valid.tgt, enc_valid)


def build_model(data: TranslationData, model_preset: str = "multi30k", max_len: int | None = None, **overrides) -> Transformer:
    """The preset's model sized for the data; the position table covers ``max_len`` tokens plus
    <s>/</s> (raised from the preset's when needed)."""
    if max_len is not None:
        from transformer_lab.models.presets import PRESETS

        overrides.setdefault("max_len", max(PRESETS[model_preset].get("max_len", 512), max_len + 2))
    cfg = preset(model_preset, src_vocab_size=data.tokenizer_src.vocab_size,
                 tgt_vocab_size=data.tokenizer_tgt.vocab_size, share_embeddings=data.joint, **overrides)
    return Transformer(cfg)


def batches(data: TranslationData, max_tokens: int, seed: int) -> TokenBuckets:
    return TokenBuckets(data.train, max_tokens, BOS, EOS, PAD, seed)


def max_output_lengths(src: torch.Tensor, pad: int = PAD, extra: int = 50) -> torch.Tensor:
    """The paper's limit (§6.1): input length + 50."""
    return (src != pad).sum(1) + extra


def translate(
    model: Transformer,
    tok_src: Tokenizer,
    tok_tgt: Tokenizer,
    sentences: Sequence[str],
    beam: int = 4,
    alpha: float = 0.6,
    batch_size: int = 64,
    use_cache: bool = True,
) -> list[str]:
    """Detokenised translations, batched by source length (results in input order)."""
    from transformer_lab.data.vocab import pad_sequences

    model.eval()
    device = next(model.parameters()).device
    limit = model.config.max_len - 1
    encoded = [tok_src.encode(s)[: limit - 1] + [EOS] for s in sentences]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(sentences)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        src = pad_sequences([encoded[i] for i in idx], PAD).to(device)
        lengths = max_output_lengths(src).clamp(max=limit)
        step = Seq2SeqStep(model, src, use_cache=use_cache)
        if beam > 1:
            res = beam_search(step, len(idx), beam, BOS, EOS, lengths, alpha)
        else:
            res = greedy_search(step, len(idx), BOS, EOS, lengths)
        for i, ids in zip(idx, res.tokens):
            out[i] = tok_tgt.decode(ids)
    return out


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """sacrebleu's corpus BLEU (detokenised, cased, 13a) and chrF, with their signatures."""
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": round(b.score, 2), "chrf": round(c.score, 2), "signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def make_validate(data: TranslationData, bleu_sample: int = 200, beam: int = 1, max_tokens: int = 4000):
    """Validation: NLL and perplexity on the whole validation set, BLEU on its first ``bleu_sample``
    sentences (greedy by default, to keep it cheap)."""
    buckets = TokenBuckets(data.valid, max_tokens, BOS, EOS, PAD, seed=0)

    @torch.no_grad()
    def validate(model: Transformer) -> dict:
        model.eval()
        device = next(model.parameters()).device
        nll, n = 0.0, 0
        for ix in buckets.batches:
            b = buckets.make(ix)
            logp = model(b.src.to(device), b.tgt_in.to(device))
            res = label_smoothed_nll(logp.float(), b.tgt_out.to(device), 0.0, PAD)
            nll, n = nll + float(res.nll), n + res.n_tokens
        metrics = {"val_loss": nll / n, "val_ppl": math.exp(min(nll / n, 50))}
        if bleu_sample:
            hyps = translate(model, data.tokenizer_src, data.tokenizer_tgt, data.valid_src[:bleu_sample], beam=beam)
            metrics["val_bleu"] = corpus_scores(hyps, data.valid_tgt[:bleu_sample])["bleu"]
        return metrics

    return validate


def tokenizer_files(data: TranslationData) -> dict:
    """What a checkpoint needs besides the weights to translate."""
    if data.joint:
        return {"tokenizer": data.tokenizer_src.save}
    return {"tokenizer_src": data.tokenizer_src.save, "tokenizer_tgt": data.tokenizer_tgt.save}


def load_tokenizers(checkpoint: Path) -> tuple[Tokenizer, Tokenizer]:
    if (checkpoint / "tokenizer").is_dir():
        tok = load_tokenizer(checkpoint / "tokenizer")
        return tok, tok
    if (checkpoint / "tokenizer_src").is_dir():
        return load_tokenizer(checkpoint / "tokenizer_src"), load_tokenizer(checkpoint / "tokenizer_tgt")
    raise FileNotFoundError(f"{checkpoint}: no tokenizer folder; is this a translation checkpoint?")


def named_files(name: str, src: str, tgt: str, split: str) -> tuple[Path, Path]:
    if name != "multi30k":
        raise ValueError(f"--data: the named data sets are ['multi30k'], got {name!r}")
    return multi30k_files(src, tgt, split)
