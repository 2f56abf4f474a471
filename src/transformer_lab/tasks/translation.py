"""Translation on real parallel text (Multi30k by default), trained and decoded as the paper does.

prepare: read aligned files -> train a subword tokenizer on the training side only (joint by
default, as the paper's shared BPE vocabulary; cached, keyed by the files' hashes and settings) ->
encode with the fast backend (cached) -> drop over-long pairs (counted) -> token-bucket batches.
build: the preset's encoder-decoder sized for the vocabulary. loss: label-smoothed cross-entropy.
validate: loss, perplexity and BLEU on a sample. decode: beam search (``translate``), scored with
sacrebleu (``evaluate``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from transformer_lab.adapters import AdapterConfig, apply_adapter, parameter_counts
from transformer_lab.config import check_positive
from transformer_lab.data.batches import Batch, TokenBuckets, inference_batches, pad_sequences
from transformer_lab.data.parallel import EncodedPairs, filter_long, multi30k_files, read_parallel, user_cache_dir
from transformer_lab.data.vocab import VOCAB_FILE, SymbolText, Vocab
from transformer_lab.generation.search import Seq2SeqStep, beam_search, greedy_search
from transformer_lab.generation.static_decoding import StaticSeq2Seq
from transformer_lab.models.presets import PRESETS, preset
from transformer_lab.models.summary import parameter_summary
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.sparse import padding_changes_rows
from transformer_lab.runs import LAST, clean_stale_temporaries, find_checkpoint, load_model
from transformer_lab.runtime import Runtime, runtime_for
from transformer_lab.tasks.common import (RunOptions, TaskResult, adapter_recipe, open_run, save_adapter,
                                          resumed_tokenizer_settings, task_adapter, task_settings, train, write_summary,
                                          write_uncut)
from transformer_lab.tokenizers.base import Tokenizer
from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer
from transformer_lab.tokenizers.cache import encode_file_cached
from transformer_lab.tokenizers.fast import FastTokenizer
from transformer_lab.tokenizers.io import load_tokenizer
from transformer_lab.tokenizers.special import BOS_ID, EOS_ID, PAD_ID, SEQ2SEQ_SPECIALS
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.losses import label_smoothed_cross_entropy, label_smoothed_nll, perplexity
from transformer_lab.training.loop import StepLoss, check_on_host
from transformer_lab.training.records import finite_or_none

log = logging.getLogger(__name__)

# Named tasks: Multi30k in four directions.
TASKS = {f"multi30k-{s}-{t}": dict(src=s, tgt=t) for s, t in (("de", "en"), ("en", "de"), ("fr", "en"), ("en", "fr"))}
# The paper's recipe scaled for Multi30k's 29,000 pairs on 2 CPU cores (README: BLEU 39.6 in 60 minutes).
RECIPE = TrainConfig(max_steps=100_000, warmup=1000, lr=0.7, schedule="noam", eval_every=500)


@dataclass(kw_only=True)
class ParallelSource:
    """Where a translation task's text comes from: aligned training and validation files, or a named
    set with both languages."""

    train_files: tuple[Path, Path] | None = None  # aligned source and target files
    valid_files: tuple[Path, Path] | None = None
    data: str | None = None  # a named set ("multi30k") instead of files, with src and tgt
    src: str | None = None
    tgt: str | None = None

    def check_files(self) -> None:
        if (self.train_files is None) != (self.valid_files is None):
            raise ValueError("train_files, valid_files: give both (training and validation files), or a named data set")
        if self.train_files is None and not (self.data and self.src and self.tgt):
            raise ValueError("data: give aligned files, or a named data set with both languages (src, tgt)")

    def files(self) -> tuple[tuple[Path, Path], tuple[Path, Path]]:
        """(train source, train target), (valid source, valid target)."""
        if self.train_files is not None:
            return ((Path(self.train_files[0]), Path(self.train_files[1])),
                    (Path(self.valid_files[0]), Path(self.valid_files[1])))
        return (named_files(self.data, self.src, self.tgt, "train"),
                named_files(self.data, self.src, self.tgt, "valid"))


@dataclass
class TranslationConfig(ParallelSource):
    run: RunOptions
    train: TrainConfig = field(default_factory=lambda: replace(RECIPE))
    model: str = "multi30k"  # size preset
    position: str | None = None  # None: the preset's (sinusoidal)
    attention: str = "full"  # self-attention's long-sequence pattern (encoder bidirectional, decoder causal)
    vocab_size: int = 8000  # byte-level BPE
    joint: bool = True  # one vocabulary for both sides, embeddings tied (§3.4)
    max_len: int = 100  # training pairs longer than this (tokens) are skipped, counted
    max_tokens: int = 4000  # padded tokens per batch
    bleu_sample: int = 200  # validation sentences scored with BLEU
    cache_dir: Path | None = None  # tokenizer and encoded-data cache (default: ~/.cache/transformer_lab)
    name: str = "translation"  # the task's name in summary.json (a preset's: multi30k-de-en, ...)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "max_tokens"):
            check_positive(name, getattr(self, name))
        if self.bleu_sample < 0:
            raise ValueError(f"bleu_sample: expected >= 0, got {self.bleu_sample}")
        if self.model not in PRESETS:
            raise ValueError(f"model: expected one of {sorted(PRESETS)}, got {self.model!r}")
        self.check_files()


def named_files(name: str | None, src: str, tgt: str, split: str) -> tuple[Path, Path]:
    if name != "multi30k":
        raise ValueError(f"data: the named data sets are ['multi30k'], got {name!r}")
    return multi30k_files(src, tgt, split)


# --- prepare --------------------------------------------------------------------------------------
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
    if tok.vocab_size < vocab_size:
        log.info("the vocabulary has %d tokens, not the %d asked for: the training text has no more pairs to merge",
                 tok.vocab_size, vocab_size)
    clean_stale_temporaries(folder.parent)  # what killed runs left
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    tok.save(tmp)
    try:
        tmp.replace(folder)  # a complete folder or none under the real name
    except OSError:  # another process cached the same tokenizer first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def prepare_data(
    train_files: tuple[Path, Path],
    valid_files: tuple[Path, Path],
    vocab_size: int = 8000,
    joint: bool = True,
    max_len: int | None = 100,
    cache_dir: Path | None = None,
) -> TranslationData:
    cache_dir = cache_dir or user_cache_dir()
    train_text = read_parallel(*train_files)
    if joint:
        tok_src = tok_tgt = train_tokenizer(train_text.src + train_text.tgt, vocab_size, list(train_files), cache_dir)
    else:
        tok_src = train_tokenizer(train_text.src, vocab_size, [train_files[0]], cache_dir)
        tok_tgt = train_tokenizer(train_text.tgt, vocab_size, [train_files[1]], cache_dir)
    return encode_data(tok_src, tok_tgt, train_files, valid_files, max_len, cache_dir, train_text)


def encode_data(tok_src: Tokenizer, tok_tgt: Tokenizer, train_files: tuple[Path, Path], valid_files: tuple[Path, Path],
                max_len: int | None = 100, cache_dir: Path | None = None, train_text: Any = None) -> TranslationData:
    """Aligned files encoded with given tokenizers (cached); pairs longer than ``max_len`` dropped, counted.
    ``train_text``: the training files' ``read_parallel``, when the caller has read them already."""
    cache_dir = cache_dir or user_cache_dir()

    def encode_pairs(files: tuple[Path, Path], text: Any = None) -> tuple[Any, list[list[int]], list[list[int]]]:
        # The cache encodes whole files; keep the pairs read_parallel kept (no empty side).
        text = text if text is not None else read_parallel(*files)
        ids_src = encode_file_cached(files[0], FastTokenizer.from_tokenizer(tok_src), cache_dir / "encoded")
        ids_tgt = encode_file_cached(files[1], FastTokenizer.from_tokenizer(tok_tgt), cache_dir / "encoded")
        if text.kept is None:
            return text, ids_src, ids_tgt
        return text, [ids_src[i] for i in text.kept], [ids_tgt[i] for i in text.kept]

    _, *train_ids = encode_pairs(train_files, train_text)
    valid_text, *valid_ids = encode_pairs(valid_files)
    enc_train = filter_long(*train_ids, max_len)
    if enc_train.skipped_long:
        log.warning("skipped %d training pairs longer than %d tokens (--max-len)", enc_train.skipped_long, max_len)
    enc_valid = filter_long(*valid_ids, max_len)
    if enc_valid.skipped_long:
        log.warning("validation loss leaves out %d pairs longer than %d tokens", enc_valid.skipped_long, max_len)
    return TranslationData(tok_src, tok_tgt, enc_train, valid_text.src, valid_text.tgt, enc_valid)


def batches(data: TranslationData, max_tokens: int, seed: int) -> TokenBuckets:
    return TokenBuckets(data.train, max_tokens, BOS_ID, EOS_ID, PAD_ID, seed)


# --- build ----------------------------------------------------------------------------------------
def build_model(data: TranslationData, model_preset: str = "multi30k", max_len: int | None = None, **overrides) -> Transformer:
    """The preset's model sized for the data; the position table covers ``max_len`` tokens plus
    <s>/</s> (raised from the preset's when needed)."""
    if max_len is not None:
        overrides.setdefault("max_len", max(PRESETS[model_preset].get("max_len", 512), max_len + 2))
    cfg = preset(model_preset, src_vocab_size=data.tokenizer_src.vocab_size,
                 tgt_vocab_size=data.tokenizer_tgt.vocab_size, share_embeddings=data.joint, **overrides)
    return Transformer(cfg)


# --- loss and validation --------------------------------------------------------------------------
def seq2seq_loss(label_smoothing: float):
    """The encoder-decoder's loss: label-smoothed cross-entropy of tgt_out given (src, tgt_in)."""

    def loss_fn(model: torch.nn.Module, b: Batch, device: torch.device) -> StepLoss:
        src, tgt_in, tgt_out = (t.to(device, non_blocking=True) for t in (b.src, b.tgt_in, b.tgt_out))
        logits = model(src, tgt_in, log_probs=False)  # (a DDP wrapper's forward: gradients are all-reduced)
        res = label_smoothed_cross_entropy(logits.float(), tgt_out, label_smoothing, b.pad_id)
        return StepLoss(res.loss, res.nll)

    loss_fn.check_batch = lambda model, b: check_on_host(model, b.src, b.tgt_in)  # (see training.loop.LossFn)
    return loss_fn


def make_validate(data: TranslationData, bleu_sample: int = 200, beam: int = 1, max_tokens: int = 4000):
    """Validation: NLL and perplexity on the whole validation set, BLEU on its first ``bleu_sample``
    sentences (greedy by default, to keep it cheap)."""
    buckets = TokenBuckets(data.valid, max_tokens, BOS_ID, EOS_ID, PAD_ID, seed=0)

    @torch.no_grad()
    def validate(model: Transformer) -> dict:
        model.eval()
        device = next(model.parameters()).device
        nll, n = 0.0, 0
        for ix in buckets.batches:
            b = buckets.make(ix)
            logp = model(b.src.to(device), b.tgt_in.to(device))
            res = label_smoothed_nll(logp.float(), b.tgt_out.to(device), 0.0, PAD_ID)
            nll, n = nll + float(res.nll), n + res.n_tokens
        metrics = {"val_loss": nll / n, "val_ppl": perplexity(nll / n)}
        if bleu_sample:
            hyps = translate(model, data.tokenizer_src, data.tokenizer_tgt, data.valid_src[:bleu_sample], beam=beam)
            metrics["val_bleu"] = corpus_scores(hyps, data.valid_tgt[:bleu_sample])["bleu"]
        return metrics

    return validate


# --- decode ---------------------------------------------------------------------------------------
def max_output_lengths(src: torch.Tensor, pad: int = PAD_ID, extra: int = 50) -> torch.Tensor:
    """The paper's limit (§6.1): input length + 50."""
    return (src != pad).sum(1) + extra


@dataclass
class Translations:
    texts: list[str]  # one per input sentence, in input order ("" for a blank input)
    truncated: list[int]  # indices of inputs cut to the model's length


def translate_detailed(
    model: Transformer,
    tok_src: Tokenizer,
    tok_tgt: Tokenizer,
    sentences: Sequence[str],
    beam: int = 4,
    alpha: float = 0.6,
    batch_size: int = 64,
    use_cache: bool = True,
    make_step: Callable[[torch.Tensor], Any] | None = None,
    static_cache: bool = False,
    compile: bool = False,
    progress: bool = False,
) -> Translations:
    """Detokenised translations, batched by source length. A blank input gives a blank output (no
    model call: there is nothing to translate); an input longer than the model's position table is
    cut to fit, with a warning naming it. ``make_step(src)``: another engine's decoding step for a
    batch of sources (e.g. onnxruntime's, ``export.OnnxSeq2SeqStep``); ``model`` then only gives the
    limits. ``static_cache``: the K/V in buffers allocated once for the call
    (``generation.static_decoding.StaticSeq2Seq``); ``compile``: its one-token step under torch.compile
    (CUDA graphs on a GPU; implies the static cache). ``progress``: a bar of sentences on stderr (a terminal)."""
    check_positive("batch_size", batch_size)
    check_positive("beam", beam)
    if beam > model.config.tgt_vocab_size:  # (beam 10^6 was a 23 GB run the kernel killed)
        raise ValueError(f"beam: {beam} is more than the target vocabulary's {model.config.tgt_vocab_size} entries; "
                         "each step keeps at most that many hypotheses")
    if alpha < 0:
        raise ValueError(f"alpha: expected a length penalty >= 0, got {alpha}")
    static_cache, requested = static_cache or compile, batch_size
    if static_cache and (make_step is not None or not use_cache):
        raise ValueError("static_cache/compile (--static-cache/--compile): our model's K/V cache; not with "
                         "--no-cache or another engine's step")
    model.eval()
    device = next(model.parameters()).device
    limit = model.config.max_len - 1 - model.n_virtual  # a prefix or prompt takes the first positions
    encoded: dict[int, list[int]] = {}
    truncated: list[int] = []
    for i, s in enumerate(sentences):
        if not s.strip():
            continue
        ids = tok_src.encode(s)
        if len(ids) > limit - 1:
            truncated.append(i)
            if len(truncated) <= 5:
                log.warning("input %d: %d tokens, cut to the first %d (the model's max_len is %d)",
                            i + 1, len(ids), limit - 1, model.config.max_len)
            ids = ids[: limit - 1]
        encoded[i] = ids + [EOS_ID]
    if len(truncated) > 5:
        log.warning("%d inputs in all were cut to the model's length", len(truncated))
    order = sorted(encoded, key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(sentences)
    if static_cache and order:
        # Batches as even as the batch size allows (100 at 64: 50 and 50, not 64 and 36): the static buffers
        # take the largest batch, and a smaller one's rows are computed too. The rows are rounded up (to
        # 1, 2, 4, 8 sentences, then a multiple of 8; at most the batch size), so calls of other sizes
        # mostly share the compiled step.
        batch_size = -(-len(order) // -(-len(order) // batch_size))
        bucket = 1 << (batch_size - 1).bit_length() if batch_size <= 8 else -(-batch_size // 8) * 8
        rows = min(bucket, requested) * beam
        longest = len(encoded[order[-1]])
        engine = StaticSeq2Seq(model, rows, longest, min(longest + 50, limit), compile)
        make_step = engine.step
    bar = tqdm(total=len(order), desc="translate", unit="sent", leave=False, file=sys.stderr,
               disable=None if progress else True)  # (None: only on a terminal)
    src_lengths = {i: len(ids) for i, ids in encoded.items()}  # (BigBird's random blocks: batches of one length)
    for idx in inference_batches(order, src_lengths, batch_size, padding_changes_rows(model.config.attention)):
        src = pad_sequences([encoded[i] for i in idx], PAD_ID).to(device)
        lengths = max_output_lengths(src).clamp(max=limit)
        step = make_step(src) if make_step is not None else Seq2SeqStep(model, src, use_cache=use_cache)
        if beam > 1:
            res = beam_search(step, len(idx), beam, BOS_ID, EOS_ID, lengths, alpha)
        else:
            res = greedy_search(step, len(idx), BOS_ID, EOS_ID, lengths)
        for i, ids in zip(idx, res.tokens):
            out[i] = tok_tgt.decode(ids)
        bar.update(len(idx))
    bar.close()
    return Translations(out, truncated)


def translate(model: Transformer, tok_src: Tokenizer, tok_tgt: Tokenizer, sentences: Sequence[str], beam: int = 4,
              alpha: float = 0.6, batch_size: int = 64, use_cache: bool = True,
              make_step: Callable[[torch.Tensor], Any] | None = None, static_cache: bool = False,
              compile: bool = False, progress: bool = False) -> list[str]:
    """``translate_detailed``'s texts."""
    return translate_detailed(model, tok_src, tok_tgt, sentences, beam, alpha, batch_size, use_cache, make_step,
                              static_cache, compile, progress).texts


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """sacrebleu's corpus BLEU (detokenised, cased, 13a) and chrF, with their signatures."""
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": round(b.score, 2), "chrf": round(c.score, 2), "signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def evaluate(model: Transformer, tok_src: Tokenizer, tok_tgt: Tokenizer, src_file: str | Path, ref_file: str | Path,
             beam: int = 4, alpha: float = 0.6, batch_size: int = 64, use_cache: bool = True, static_cache: bool = False,
             compile: bool = False, progress: bool = False) -> tuple[dict, list[str]]:
    """BLEU and chrF of the translations of every line of ``src_file`` against ``ref_file`` (blank
    lines included: a blank source scores its blank translation); returns (scores, translations)."""
    text = read_parallel(src_file, ref_file, keep_empty=True)
    res = translate_detailed(model, tok_src, tok_tgt, text.src, beam, alpha, batch_size, use_cache,
                             static_cache=static_cache, compile=compile, progress=progress)
    scores = {**corpus_scores(res.texts, text.tgt), "sentences": len(res.texts), "beam": beam,
              "blank_sources": sum(not s.strip() for s in text.src), "truncated_sources": len(res.truncated)}
    return scores, res.texts


# --- checkpoints ----------------------------------------------------------------------------------
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
    if (checkpoint / VOCAB_FILE).is_file():  # the dates task's (`make demo`): characters in, words out
        vocab = Vocab.load(checkpoint / VOCAB_FILE)
        return SymbolText(vocab, "char"), SymbolText(vocab, "word")  # type: ignore[return-value]
    raise FileNotFoundError(f"{checkpoint}: no tokenizer folder; is this a translation checkpoint?")


def resumed_tokenizers(resume: Path) -> tuple[Tokenizer, Tokenizer]:
    """The source and target tokenizers of the translation checkpoint a run resumes."""
    checkpoint = find_checkpoint(resume, prefer=(LAST,))
    if (checkpoint / VOCAB_FILE).is_file():
        raise ValueError(f"--resume {resume}: a run of the dates demo (its symbols), not a translation run")
    tok_src, tok_tgt = load_tokenizers(checkpoint)
    log.info("resuming: the data read with the run's own tokenizer%s (%s tokens)", "" if tok_src is tok_tgt else "s",
             tok_src.vocab_size if tok_src is tok_tgt else f"{tok_src.vocab_size} and {tok_tgt.vocab_size}")
    return tok_src, tok_tgt


def load_translator(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer, Tokenizer]:
    """A trained model and its tokenizers from a run folder (its best checkpoint, else the last) or a
    checkpoint folder."""
    loaded = load_model(find_checkpoint(path), map_location=device)
    if not isinstance(loaded.model, Transformer):
        raise ValueError(f"{loaded.path}: a {type(loaded.model).__name__} checkpoint, not a translation model")
    tok_src, tok_tgt = load_tokenizers(loaded.path)
    return loaded.model.eval(), tok_src, tok_tgt


# --- run ------------------------------------------------------------------------------------------
def run(cfg: TranslationConfig, runtime: Runtime | None = None) -> TaskResult:
    runtime = runtime or runtime_for(cfg.run.device, cfg.run.fsdp)
    train_files, valid_files = cfg.files()
    with open_run(cfg.run, runtime) as folder:
        cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        if cfg.run.resume:  # the tokenizers the weights were trained with (new ones, trained on other data of the
            tok_src, tok_tgt = resumed_tokenizers(cfg.run.resume)  # same size, gave the rows other pieces)
            cfg = resumed_tokenizer_settings(cfg, cfg.run.resume, ("vocab_size", "joint"))
            data = encode_data(tok_src, tok_tgt, train_files, valid_files, cfg.max_len, cache)
        else:
            data = prepare_data(train_files, valid_files, cfg.vocab_size, cfg.joint, cfg.max_len, cache)
        overrides = {"attention": cfg.attention, **({} if cfg.position is None else {"position": cfg.position})}
        torch.manual_seed(cfg.train.seed)  # the initial weights
        model = build_model(data, cfg.model, max_len=cfg.max_len, **overrides)
        log.info("data: %d training pairs (%d skipped as longer than %d tokens), %d validation; vocabulary %d%s",
                 len(data.train), data.train.skipped_long, cfg.max_len, len(data.valid),
                 data.tokenizer_tgt.vocab_size, " (joint)" if data.joint else " per side")
        log.info("model: %s, %s parameters; device %s", cfg.model, f"{parameter_summary(model)['total']:,}",
                 runtime.device)
        _, result = train(folder, cfg.run, runtime, model, batches(data, cfg.max_tokens, cfg.train.seed), cfg.train,
                          seq2seq_loss(cfg.train.label_smoothing), make_validate(data, cfg.bleu_sample),
                          tokenizer_files(data), task_settings(cfg))
        summary: dict[str, Any] = {
            "task": cfg.name, "steps": result.state.step, "stopped_by": result.stopped_by,
            "train_seconds": round(result.state.elapsed_s, 1), "target_tokens_per_s": round(result.tokens_per_s, 1),
            "best_val_loss": finite_or_none(result.state.best_val_loss),
            "last_validation": next((r for r in reversed(result.state.history) if "val_loss" in r), None)}
        write_summary(folder, runtime, summary)
        if runtime.is_main:
            log.info("wrote %s", folder.written())
    return TaskResult(summary, result.signum, runtime.is_main)


# --- fine-tuning ----------------------------------------------------------------------------------
# Continuing a trained translation model on new parallel text (another domain, or another source
# language its byte-level vocabulary covers), encoded with the model's own tokenizers: Adam with a short
# warm-up and cosine decay, every weight at 1e-4 (a tenth of the recipe's peak), an adapter at its own
# rate (``adapters.LEARNING_RATES``); label smoothing 0.1 as in training.
FINETUNE = TrainConfig(max_steps=1000, warmup=100, lr=1e-4, schedule="cosine", min_lr=1e-5, eval_every=250)


def finetune_recipe(adapter: AdapterConfig | None) -> TrainConfig:
    return adapter_recipe(FINETUNE, adapter)


@dataclass
class TranslationFinetuneConfig(ParallelSource):
    run: RunOptions
    model: Path  # one of our translation runs, or a checkpoint folder
    train: TrainConfig = field(default_factory=lambda: replace(FINETUNE))
    max_len: int = 100  # training pairs longer than this (tokens) are skipped, counted
    max_tokens: int = 4000
    bleu_sample: int = 200
    cache_dir: Path | None = None
    adapter: AdapterConfig | None = None  # None: every weight trains
    prompt_text: str | None = None  # prompt tuning: initialise the soft prompt from this (source-side) text

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        for name in ("max_len", "max_tokens"):
            check_positive(name, getattr(self, name))
        if self.bleu_sample < 0:
            raise ValueError(f"bleu_sample: expected >= 0, got {self.bleu_sample}")
        self.check_files()


def finetune(cfg: TranslationFinetuneConfig, runtime: Runtime | None = None) -> TaskResult:
    """Fine-tune a trained translation model (all weights, or an adapter) on new parallel text; report
    validation loss and BLEU before and after, and export OUT/adapter when an adapter trained."""
    runtime = runtime or runtime_for(cfg.run.device, cfg.run.fsdp)
    if (find_checkpoint(cfg.model) / VOCAB_FILE).is_file():  # (a wrong model path also fails before any data work)
        raise ValueError(f"{cfg.model}: the dates demo's model reads a fixed symbol vocabulary (characters and "
                         "number words), not text of another language; fine-tune a model trained on text "
                         "(train --preset multi30k-de-en, or --train-src ...)")
    train_files, valid_files = cfg.files()
    with open_run(cfg.run, runtime, reads=cfg.model) as folder:
        model, tok_src, tok_tgt = load_translator(cfg.model, runtime.device)
        if getattr(model, "adapter_config", None) is not None:
            method = model.adapter_config.method  # (prefix and prompt adapters add inputs: nothing to merge)
            raise ValueError(f"{cfg.model}: the model carries a {method} adapter; " + (
                "merge it (transformer-lab peft merge) or start from its base" if method in ("lora", "qlora")
                else "start from its base"))
        if cfg.adapter is not None:
            apply_adapter(model, task_adapter(cfg.adapter, tok_src, cfg.prompt_text))
        counts = parameter_counts(model)
        # a pair fits with <s> or </s> beside the prefix or prompt positions (it failed at its first batch)
        max_len = min(cfg.max_len, model.config.max_len - 1 - model.n_virtual)
        if max_len < 1:
            raise ValueError(f"{model.n_virtual} prefix or prompt positions leave no room in the model's "
                             f"{model.config.max_len} positions; a shorter --prefix-len or --prompt-len")
        data = encode_data(tok_src, tok_tgt, train_files, valid_files, max_len,
                           Path(cfg.cache_dir) if cfg.cache_dir else None)
        log.info("fine-tuning %s on %d pairs (%d skipped as longer than %d tokens%s), %d validation; %s%s", cfg.model,
                 len(data.train), data.train.skipped_long, max_len,
                 f": the model's {model.config.max_len} positions" + (f" less {model.n_virtual} prefix or prompt positions"
                                                                       if model.n_virtual else "")
                 if max_len < cfg.max_len else "", len(data.valid), counts,
                 f" ({cfg.adapter.method})" if cfg.adapter else " (every weight)")
        validate = make_validate(data, cfg.bleu_sample)
        before = validate(model)
        _, result = train(folder, cfg.run, runtime, model, batches(data, cfg.max_tokens, cfg.train.seed), cfg.train,
                          seq2seq_loss(cfg.train.label_smoothing), validate, tokenizer_files(data), task_settings(cfg))
        summary: dict[str, Any] = {
            "task": "finetune-translation", "method": cfg.adapter.method if cfg.adapter else "full",
            "steps": result.state.step, "stopped_by": result.stopped_by,
            "train_seconds": round(result.state.elapsed_s, 1), "trainable_parameters": counts.trainable,
            "total_parameters": counts.total, **{f"{k}_before": round(v, 4) for k, v in before.items()},
            "best_val_loss": finite_or_none(result.state.best_val_loss),
            "last_validation": next((r for r in reversed(result.state.history) if "val_loss" in r), None)}
        if before.get("val_bleu") is not None and summary["last_validation"]:
            log.info("validation BLEU %.2f before fine-tuning, %.2f after %d steps", before["val_bleu"],
                     summary["last_validation"].get("val_bleu", float("nan")), result.state.step)
        if runtime.is_main and cfg.adapter is not None:
            best = load_model(find_checkpoint(folder.path), map_location=runtime.device).model
            summary["adapter"] = str(write_uncut(result, lambda: save_adapter(best, folder.export("adapter"), cfg.model)))
        write_summary(folder, runtime, summary)
    return TaskResult(summary, result.signum, runtime.is_main)


# --- attention --------------------------------------------------------------------------------------
def cross_attention(model: Transformer, tok_src: Tokenizer, sentence: str, beam: int = 4,
                    alpha: float = 0.6) -> tuple[list[int], list[int], torch.Tensor]:
    """One sentence translated as ``translate`` does (beam search, or greedy with ``beam`` 1), and the last
    decoder layer's cross-attention over that translation: (source ids, output ids with </s> when one came,
    weights (H, T_out, S)). The weights come from one teacher-forced pass over the output, the weights each
    step of the search computed (the decoder is causal)."""
    if not sentence.strip():
        raise ValueError("sentence: blank; nothing to draw the attention of")
    device = next(model.parameters()).device
    src_ids = tok_src.encode(sentence)[: model.config.max_len - 2 - model.n_virtual] + [EOS_ID]
    src = torch.tensor([src_ids], device=device)
    limit = min(len(src_ids) + 50, model.config.max_len - 1 - model.n_virtual)
    with torch.no_grad():
        step = Seq2SeqStep(model.eval(), src)
        res = (beam_search(step, 1, beam, BOS_ID, EOS_ID, limit, alpha) if beam > 1 else
               greedy_search(step, 1, BOS_ID, EOS_ID, limit))
        out_ids = res.tokens[0] + ([EOS_ID] if len(res.tokens[0]) < limit else [])  # (a </s> only if one came)
        model.decode(model.encode(src), src, torch.tensor([[BOS_ID] + out_ids[:-1]], device=device),
                     record_cross_attention=True)  # (the search's step holds its beams' rows)
    return src_ids, out_ids, model.decoder.layers[-1].cross_weights[0].float().cpu()


def plot_attention(model: Transformer, tok_src: Tokenizer, tok_tgt: Tokenizer, sentence: str, path: str | Path,
                   beam: int = 4, alpha: float = 0.6) -> None:
    """Draw ``cross_attention``'s weights, each head: output tokens down, source tokens across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src_ids, out_ids, weights = cross_attention(model, tok_src, sentence, beam, alpha)
    src_labels, out_labels = _labels(tok_src, src_ids), _labels(tok_tgt, out_ids)
    if model.prompt is not None:  # the memory's soft-prompt positions come first
        src_labels = [f"<p{i}>" for i in range(model.prompt.length)] + src_labels
    h = weights.size(0)
    cols = min(4, h)
    rows = (h + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 0.28 * len(out_labels) * rows + 2), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= h:
            ax.axis("off")
            continue
        ax.imshow(weights[k].numpy(), cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_title(f"head {k + 1}", fontsize=9)
        ax.set_xticks(range(len(src_labels)), src_labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(out_labels)), out_labels if k % cols == 0 else [""] * len(out_labels), fontsize=7)
    search = f"beam {beam}, alpha {alpha}" if beam > 1 else "greedy"
    fig.suptitle(f"cross-attention, last decoder layer ({search})\n{sentence}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _labels(tok: Tokenizer, ids: list[int]) -> list[str]:
    """Readable piece labels: byte-level pieces decoded one by one (Ġ shown as a space)."""
    if tok.algorithm == "bytelevel":
        return [tok.decode([i], skip_special=False) for i in ids]
    return [tok.id_to_token[i] for i in ids]
