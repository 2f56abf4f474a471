"""Language modelling on plain text with a GPT.

prepare: read the text, build the tokenizer (``char``: one id per character, nanoGPT's
shakespeare-char; ``bytelevel``: our GPT-2 byte-level BPE trained on the training split; or a path
to a saved tokenizer), split 90/10 as nanoGPT. build: a GPT preset sized for the vocabulary. loss:
next-token cross-entropy. validate: a fixed sample of validation windows during training (as
nanoGPT), the whole validation split at the end (``evaluate_lm``). decode: ``generation.sampling``.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from transformer_lab.adapters import AdapterConfig, apply_adapter, parameter_counts
from transformer_lab.config import check_positive, read_json_object
from transformer_lab.data.batches import LMBatch, RandomWindows, SegmentStreams
from transformer_lab.data.text import read_text, split_tokens
from transformer_lab.generation.sampling import SamplingConfig, cut_at_eos, generate, pads_exactly, stop_token
from transformer_lab.models.gpt import GPT
from transformer_lab.models.hf import gpt_from_hf
from transformer_lab.models.presets import GPT_PRESETS, gpt_preset
from transformer_lab.models.summary import parameter_summary
from transformer_lab.nn.positions import POSITION_ENCODINGS
from transformer_lab.nn.sparse import parse_pattern
from transformer_lab.files import refuse_onnx_export
from transformer_lab.runs import LAST, find_checkpoint, is_ours, load_model
from transformer_lab.runtime import Runtime, runtime_for, unwrap
from transformer_lab.runtime.signals import Interrupted, interruptible_section
from transformer_lab.tasks.common import (RunOptions, TaskResult, adapter_recipe, after_training, open_run,
                                          resumed_tokenizer, resumed_tokenizer_settings, save_adapter, task_adapter,
                                          task_settings, train,
                                          write_summary, write_uncut)
from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer
from transformer_lab.tokenizers.char import CharTokenizer
from transformer_lab.tokenizers.io import checkpoint_tokenizer, load_tokenizer, save_into_checkpoint
from transformer_lab.tokenizers.streaming import IncrementalDecoder
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.losses import cross_entropy_sum, perplexity
from transformer_lab.training.loop import StepLoss, check_on_host
from transformer_lab.training.records import finite_or_none

log = logging.getLogger(__name__)

# nanoGPT's config/train_shakespeare_char.py with its README's CPU overrides (context 64, batch 12,
# 4x4x128, 2,000 iterations, dropout 0): AdamW, cosine, warm-up 100, β2 0.99, decay 0.1.
# deviation: peak lr 2e-3 -> 2e-4 (nanoGPT: 1e-3 -> 1e-4, tuned for its 5,000-step GPU run); measured
# on the whole validation split after 2,000 steps: 1.897 with 1e-3, 1.803 with 2e-3.
SHAKESPEARE_CHAR = TrainConfig(max_steps=2000, warmup=100, lr=2e-3, schedule="cosine", min_lr=2e-4, beta2=0.99,
                               adam_eps=1e-8, weight_decay=0.1, eval_every=250, label_smoothing=0.0)
# nanoGPT's config/train_shakespeare_char.py as it is, for a GPU (issue 14's figure: validation <= 1.47 in
# <= 90 s; nanoGPT reports 1.47 in about 3 minutes on an A100): 6x6x384, context 256, batch 64, dropout 0.2,
# 5,000 iterations, lr 1e-3 -> 1e-4. Run it with --device cuda --precision bf16 --compile.
SHAKESPEARE_CHAR_GPU = TrainConfig(max_steps=5000, warmup=100, lr=1e-3, schedule="cosine", min_lr=1e-4, beta2=0.99,
                                   adam_eps=1e-8, weight_decay=0.1, eval_every=250, label_smoothing=0.0)
SUBWORD = TrainConfig(max_steps=5000, warmup=200, lr=1e-3, schedule="cosine", min_lr=1e-4, beta2=0.99, adam_eps=1e-8,
                      weight_decay=0.1, eval_every=500, label_smoothing=0.0)
# task preset -> (training recipe, model preset, tokenizer, batch size)
PRESETS = {"shakespeare-char": (SHAKESPEARE_CHAR, "shakespeare-char", "char", 12),
           "shakespeare-char-gpu": (SHAKESPEARE_CHAR_GPU, "shakespeare-char-gpu", "char", 64),
           "lm": (SUBWORD, "gpt-tiny", "bytelevel", 16)}


def check_no_label_smoothing(train: TrainConfig) -> None:
    if train.label_smoothing:
        raise ValueError(f"label_smoothing: the language-model loss here is plain cross-entropy; got "
                         f"{train.label_smoothing}, expected 0")


@dataclass
class LMConfig:
    run: RunOptions
    data: Path  # a UTF-8 text file
    train: TrainConfig = field(default_factory=lambda: replace(SUBWORD))
    model: str = "gpt-tiny"  # GPT size preset
    position: str | None = None  # None: the preset's (learned)
    memory: int | None = None  # Transformer-XL: segments of `context` attending to this many positions before
    attention: str = "full"  # self-attention pattern (``nn.sparse.parse_pattern``)
    tokenizer: str = "bytelevel"  # char, bytelevel or a tokenizer path
    vocab_size: int = 8000  # bytelevel
    context: int | None = None  # training window; None: the model's max_len
    batch_size: int = 16  # windows per batch
    val_fraction: float = 0.1
    name: str = "lm"  # the task's name in summary.json (the preset's)

    def __post_init__(self) -> None:
        check_no_label_smoothing(self.train)
        self.data = Path(self.data)
        check_positive("batch_size", self.batch_size)
        check_positive("vocab_size", self.vocab_size)
        check_positive("context", self.context, allow_none=True)
        if self.model not in GPT_PRESETS:
            raise ValueError(f"model: {self.model!r} is not a GPT preset; expected one of {sorted(GPT_PRESETS)}")
        if self.position is not None and self.position not in POSITION_ENCODINGS:
            raise ValueError(f"position: expected one of {sorted(POSITION_ENCODINGS)}, got {self.position!r}")
        parse_pattern(self.attention, causal=True, position=self.position)  # a clear error before any data is read
        check_positive("memory", self.memory, allow_none=True)
        relative = self.position is not None and POSITION_ENCODINGS[self.position].acts_in_attention
        if self.memory is not None and not relative:
            raise ValueError(f"memory: segment recurrence needs a relative position encoding (--position rotary, alibi, "
                             f"t5 or shaw); got {self.position or 'the preset default (learned)'}")
        if self.memory is not None and self.attention not in (None, "full"):
            raise ValueError(f"memory: a segment attends to all of [memory; segment] under a causal mask; not with "
                             f"--attention {self.attention} (a pattern replaces that mask)")

    @classmethod
    def preset(cls, name: str, run: RunOptions, data: Path, **overrides) -> "LMConfig":
        if name not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
        recipe, model, tokenizer, batch_size = PRESETS[name]
        values = dict(train=replace(recipe), model=model, tokenizer=tokenizer, batch_size=batch_size, name=name)
        return cls(run=run, data=data, **{**values, **overrides})


# --- prepare --------------------------------------------------------------------------------------
@dataclass
class LMData:
    train: Tensor  # (N_train,) token ids
    valid: Tensor  # (N_valid,)
    tokenizer: Any  # CharTokenizer or a transformer_lab Tokenizer


def build_tokenizer(kind: str, train_text: str, vocab_size: int):
    if kind == "char":
        return CharTokenizer.train(train_text)
    if kind == "bytelevel":
        return ByteLevelBPETokenizer.train(train_text.splitlines(keepends=True), vocab_size)
    return load_tokenizer(kind)  # a path


def prepare_lm_data(path: str | Path, tokenizer: str = "char", vocab_size: int = 8000, val_fraction: float = 0.1,
                    context: int = 64, trained: Any = None) -> LMData:
    """The text split 90/10 and encoded; ``trained``: a tokenizer to use as it is (a resumed run's own)
    instead of building ``tokenizer`` from the text."""
    text = read_text(path)
    cut = int(len(text) * (1 - val_fraction))
    # char: nanoGPT builds the vocabulary from the whole file; a subword vocabulary sees train only
    tok = trained or build_tokenizer(tokenizer, text if tokenizer == "char" else text[:cut], vocab_size)
    train_ids, valid_ids = split_tokens(encode_file(tok, text, path), val_fraction, context, str(path))
    return LMData(train_ids, valid_ids, tok)


def encode_file(tok: Any, text: str, path: str | Path) -> list[int]:
    """``tok.encode(text)``, a refusal (characters a character vocabulary lacks) naming the file, and a
    warning when text becomes the unknown token (a subword tokenizer trained on lines has no newline:
    the model would never see or write one)."""
    try:
        ids = tok.encode(text)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    unk = getattr(tok, "unk_id", None)
    lost = 0 if unk is None else ids.count(unk)
    if lost:
        spelt = next((c for c in text[:10_000] if not c.isspace() and unk not in tok.encode(c)), None)
        lines = "\n" in text and spelt is not None and unk in tok.encode(f"{spelt}\n{spelt}")
        log.warning("%s: %s of %s tokens are the tokenizer's unknown token %r: that text is lost to the model%s; "
                    "--tokenizer bytelevel spells every character", path, f"{lost:,}", f"{len(ids):,}", tok.unk_token,
                    " (newlines among it: this tokenizer has none)" if lines else "")
    return ids


# --- loss, validation, evaluation -----------------------------------------------------------------
def lm_loss(model: GPT, batch: LMBatch, device: torch.device) -> StepLoss:
    x, y = batch.x.to(device, non_blocking=True), batch.y.to(device, non_blocking=True)
    logits = model(x)
    loss = cross_entropy_sum(logits.flatten(0, 1).float(), y.flatten())
    return StepLoss(loss, loss.detach())


lm_loss.check_batch = lambda model, batch: check_on_host(model, batch.x)  # (see training.loop.LossFn)


class SegmentLoss:
    """``lm_loss`` over consecutive segments with Transformer-XL's memory (``GPT.forward_segment``): each
    batch of ``SegmentStreams`` attends to the last ``mem_len`` positions of the batches before it in its
    streams; segment 0 starts without one. The memory is part of the training state (``state_dict``),
    so a resumed run continues with the memory it stopped with."""

    def __init__(self, mem_len: int):
        check_positive("mem_len", mem_len)
        self.mem_len = mem_len
        self.memory: list[Tensor] | None = None

    def __call__(self, model: GPT, batch: LMBatch, device: torch.device) -> StepLoss:
        if batch.segment is None:
            raise ValueError("SegmentLoss: batches must come from SegmentStreams (consecutive segments)")
        x, y = batch.x.to(device, non_blocking=True), batch.y.to(device, non_blocking=True)
        memory = None if batch.segment == 0 else self.memory
        if memory is not None and memory[0].device != x.device:  # (a resumed run's, loaded on the CPU)
            memory = [m.to(x.device) for m in memory]
        logits, self.memory = unwrap(model).forward_segment(x, memory, self.mem_len)  # (a single process: DDP is issue 14)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
        return StepLoss(loss, loss.detach())

    def check_batch(self, model: GPT, batch: LMBatch) -> bool:
        return check_on_host(model, batch.x)

    def state_dict(self) -> dict[str, Any]:
        return {"memory": None if self.memory is None else [m.cpu() for m in self.memory]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = state.get("memory")


@torch.no_grad()
def _position_nll(model: GPT, windows: Tensor, batch_size: int, progress: bool = False) -> Tensor:
    """Next-token loss at each position of windows (W, T+1), summed over the windows: (T,) float64, in
    eval mode. ``progress``: a bar over the windows on a terminal."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(windows.size(1) - 1, dtype=torch.float64)
    bar = tqdm(total=len(windows), desc="evaluate", unit="window", leave=False, file=sys.stderr,
               disable=None if progress else True)  # (None: only on a terminal)
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size].to(device)
        nll = F.cross_entropy(model(w[:, :-1]).transpose(1, 2).float(), w[:, 1:], reduction="none")  # (b, T)
        total += nll.double().sum(0).cpu()
        bar.update(len(w))
    bar.close()
    model.train(was_training)
    return total


def loss_sum(model: GPT, windows: Tensor, batch_size: int = 64, progress: bool = False) -> float:
    """Summed next-token loss over windows (W, T+1): each predicts its tokens 1..T from 0..T-1."""
    return float(_position_nll(model, windows, batch_size, progress).sum())


def evaluate_lm(model: GPT, ids: Tensor, context: int, batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """Mean next-token loss over ``ids`` in non-overlapping windows of ``context`` (the tail that
    does not fill a window is scored in a last, shorter window). Returns loss and perplexity."""
    check_positive("batch_size", batch_size)
    if len(ids) < 2:
        raise ValueError("evaluate: the text is too short (needs at least 2 tokens)")
    n_full = (len(ids) - 1) // context
    total = 0.0
    if n_full:  # (a text shorter than one window is the tail alone)
        full = ids[: n_full * context + 1].unfold(0, context + 1, context)  # (n_full, T+1), overlapping by 1
        total = loss_sum(model, full, batch_size, progress)
    tail = ids[n_full * context:]
    if len(tail) > 1:
        total += loss_sum(model, tail[None])
    count = len(ids) - 1  # every token but the first is predicted once
    loss = total / count
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": count}


def loss_by_position(model: GPT, windows: Tensor, batch_size: int = 16) -> Tensor:
    """Mean next-token loss at each position of windows (W, T+1), over the windows: (T,). Position t
    predicts token t+1 having seen t+1 tokens: what a model trained on shorter windows makes of the
    positions it never saw is the extrapolation curve."""
    return (_position_nll(model, windows, batch_size) / len(windows)).float()


def position_bands(per_position: Tensor, band: int) -> list[dict]:
    """Mean loss over consecutive bands of ``band`` positions (the last band may be shorter)."""
    check_positive("band", band)
    return [{"from": i, "to": min(i + band, len(per_position)), "loss": float(per_position[i:i + band].mean())}
            for i in range(0, len(per_position), band)]


@torch.no_grad()
def evaluate_with_memory(model: GPT, ids: Tensor, segment: int, mem_len: int, streams: int = 8) -> dict[str, float]:
    """Mean next-token loss read as Transformer-XL reads a text: ``streams`` contiguous parts side by
    side, each in consecutive segments of ``segment`` tokens, every segment attending to the last
    ``mem_len`` positions before it (``GPT.forward_segment``). Each stream's first token is context
    only; a remainder shorter than one token per stream is left out (``tokens`` counts what is scored)."""
    check_positive("segment", segment)
    check_positive("streams", streams)
    if len(ids) < 2:
        raise ValueError("evaluate: the text is too short (needs at least 2 tokens)")
    segment = min(segment, len(ids) - 1)
    text = SegmentStreams(ids, max(1, min(streams, (len(ids) - 1) // segment)), segment)  # cut as training cuts it
    (streams, per), device = text.inputs.shape, next(model.parameters()).device
    inputs, targets = text.inputs.to(device), text.targets.to(device)
    was_training = model.training
    model.eval()
    memory, total = None, 0.0
    for s0 in range(0, per, segment):
        logits, memory = model.forward_segment(inputs[:, s0:s0 + segment], memory, mem_len)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), targets[:, s0:s0 + segment].flatten(), reduction="sum"))
    model.train(was_training)
    loss = total / (streams * per)
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": streams * per, "memory": mem_len}


def evaluate_file(model: GPT, tok: Any, path: str | Path, context: int | None = None, batch_size: int = 64,
                  band: int | None = None, memory: int | None = None, progress: bool = False) -> dict:
    """``evaluate_lm`` over a whole text file, in windows of ``context`` (default: all the model sees).
    A model whose positions are relative (ALiBi, T5, Shaw, rotary) takes windows longer than its
    max_len, the length it was trained at; a position table (learned, sinusoidal) does not. ``band``:
    also the loss per band of positions over the full windows (``loss_by_band``). ``memory``: read in
    segments of ``context`` that each attend to the ``memory`` positions before them (Transformer-XL)."""
    context = context or model.context
    unbounded = model.embed.position.max_len is None
    if context < 1 or (context > model.context and not unbounded):
        raise ValueError(f"context: expected 1..{model.context} (the model's max_len, less any prefix or prompt; "
                         f"its {model.config.position} positions hold no more), got {context}")
    ids = torch.tensor(encode_file(tok, read_text(path), path), dtype=torch.long)
    if memory is not None:  # segments of ``context`` with a Transformer-XL memory of ``memory`` positions
        if band is not None:
            raise ValueError("band: not with --memory (every segment sees a memory; bands are for one window)")
        return {**evaluate_with_memory(model, ids, context, memory), "context": context}
    out = {**evaluate_lm(model, ids, context, batch_size, progress), "context": context}
    if band is not None:
        n_full = (len(ids) - 1) // context
        if n_full == 0:
            raise ValueError(f"band: the text ({len(ids)} tokens) does not fill one window of {context}")
        windows = ids[: n_full * context + 1].unfold(0, context + 1, context)
        out["loss_by_band"] = position_bands(loss_by_position(model, windows, max(1, batch_size // 4)), band)
    return out


def make_validate(data: LMData, context: int, windows: int = 240, seed: int = 0) -> Callable[[GPT], dict]:
    """Periodic validation on a fixed sample of ``windows`` random windows of the validation split
    (nanoGPT's CPU run estimates from 20 batches of 12 = 240 windows); the run's final figure is
    ``evaluate_lm`` over the whole split. The training commands take ``run_windows``."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(len(data.valid) - context, (windows,), generator=g)
    sample = data.valid[offsets[:, None] + torch.arange(context + 1)]  # (W, T+1)

    def validate(model: GPT) -> dict:
        loss = loss_sum(model, sample) / (sample.size(0) * context)
        return {"val_loss": loss, "val_ppl": perplexity(loss)}

    return validate


def run_windows(data: LMData, context: int, most: int = 240) -> int:
    """A training run's validation windows: ``most``, but never more than the split holds end to end (at
    least 8): at a long context 240 windows read many times a small split, at every validation."""
    return min(most, max(8, math.ceil(len(data.valid) / context)))


# --- checkpoints ----------------------------------------------------------------------------------
def load_lm(path: str | Path, device: str | torch.device = "cpu", split_special_tokens: bool | None = None) -> tuple[GPT, Any]:
    """A GPT and its tokenizer from one of our run or checkpoint folders (the best checkpoint, else
    the last) or a Hugging Face GPT-2 folder (config.json with model_type gpt2, model.safetensors,
    tokenizer.json)."""
    path = Path(path)
    cfg_file = path / "config.json"
    refuse_onnx_export(path)
    kind = read_json_object(cfg_file).get("model_type") if cfg_file.is_file() and not is_ours(path) else None
    if kind == "gpt2":
        model, folder = gpt_from_hf(path), path
    elif kind is not None:  # (it said "not a complete checkpoint, missing ['meta.json']")
        raise ValueError(f"{path}: a Hugging Face {kind} folder, not a GPT language model (our GPT runs and "
                         "checkpoints, or a GPT-2 folder)")
    else:
        loaded = load_model(find_checkpoint(path), map_location=device)
        if not isinstance(loaded.model, GPT):
            raise ValueError(f"{loaded.path}: a {type(loaded.model).__name__} checkpoint, not a GPT language model")
        model, folder = loaded.model, loaded.path
    return model.to(device).eval(), checkpoint_tokenizer(folder, split_special_tokens)


def encode_prompt(tok, text: str, eos_id: int | None) -> list[int]:
    """Prompt ids; an empty prompt starts from the end-of-text token when the model has one, as GPT-2's
    unconditional samples do."""
    ids = tok.encode(text)
    if not ids:
        if eos_id is None:
            raise ValueError("prompt: the prompt encodes to no tokens, and this model has no end-of-text "
                             "token to start from; give some text")
        ids = [eos_id]
    return ids


# --- run ------------------------------------------------------------------------------------------
def recorded_max_len(resume: Path, default: int) -> int:
    """The positions the model of the checkpoint a run resumes holds (a run before models held their
    context had the preset's), else ``default``."""
    value = recorded_config(resume).get("max_len")
    return value if isinstance(value, int) else default


def recorded_config(resume: Path) -> dict:
    """The model config of the checkpoint a run resumes."""
    return read_json_object(find_checkpoint(resume, prefer=(LAST,)) / "config.json")


def run(cfg: LMConfig, runtime: Runtime | None = None) -> TaskResult:
    runtime = runtime or runtime_for(cfg.run.device, cfg.run.fsdp)
    base = gpt_preset(cfg.model)
    context = cfg.context or base.max_len
    with open_run(cfg.run, runtime) as folder:
        # a resumed run reads the text with the tokenizer its weights were trained with, not one built anew
        trained = resumed_tokenizer(cfg.run.resume) if cfg.run.resume else None
        if trained is not None:  # (so the log and the recorded settings name the tokenizer actually used)
            cfg = resumed_tokenizer_settings(cfg, cfg.run.resume, ("tokenizer", "vocab_size"))
        data = prepare_lm_data(cfg.data, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction, context=context,
                               trained=trained)
        overrides = {"attention": cfg.attention, **({} if cfg.position is None else {"position": cfg.position})}
        if (cfg.position or base.position) == "sinusoidal":  # the paper's pairing, tokens x sqrt(d_model): GPT-2's
            # 0.02-std token vectors drowned under unit sinusoids (README, positions); a resumed run keeps its own
            recorded = recorded_config(cfg.run.resume).get("scale_embeddings") if cfg.run.resume else None
            overrides["scale_embeddings"] = recorded if isinstance(recorded, bool) else True
        if base.eos_id is not None:  # (gpt2's 50256 names a token of its own vocabulary: this one's, if it has one)
            find = getattr(data.tokenizer, "token_to_id", None)
            overrides["eos_id"] = find("<|endoftext|>") if find else None
        torch.manual_seed(cfg.train.seed)  # the initial weights
        # the model holds the positions it trains (nanoGPT's block_size): `evaluate` and `generate` read windows
        # of max_len, and positions never trained would be read too (a checkpoint keeps its own: a resume)
        max_len = context if trained is None else recorded_max_len(cfg.run.resume, context)
        bounded = not POSITION_ENCODINGS[cfg.position or base.position].acts_in_attention  # (a table: learned, sinusoids)
        if not bounded:  # no table to outgrow: the model holds the longest context it trained at (evaluate and
            max_len = max(max_len, context)  # generate read it; a resume at a longer --context kept the first)
        if context > max_len and bounded:
            raise ValueError(f"--context {context}: the run's model holds {max_len} positions (its training context, "
                             f"{cfg.position or base.position} positions); resume with --context <= {max_len}, or "
                             "start a new run")
        model = GPT(gpt_preset(cfg.model, vocab_size=data.tokenizer.vocab_size, max_len=max_len,
                               **overrides))
        log.info("data: %s training tokens, %s validation (90/10 split); vocabulary %d (%s)", f"{len(data.train):,}",
                 f"{len(data.valid):,}", data.tokenizer.vocab_size, cfg.tokenizer)
        log.info("model: %s, %s parameters, context %d; device %s", cfg.model, f"{parameter_summary(model)['total']:,}",
                 context, runtime.device)
        if cfg.memory is not None and runtime.world_size > 1:
            raise ValueError("memory: Transformer-XL's streams carry their memory from one batch to the next in one "
                             "process; train --memory in a single process (not under torchrun)")
        if cfg.memory is None:
            source, loss_fn = RandomWindows(data.train, cfg.batch_size, context, cfg.train.seed), lm_loss
        else:  # streams of consecutive segments, each attending to the memory of the ones before
            source, loss_fn = SegmentStreams(data.train, cfg.batch_size, context), SegmentLoss(cfg.memory)
            log.info("Transformer-XL recurrence: %d streams, segments of %d, memory of %d positions", cfg.batch_size,
                     context, cfg.memory)
        trainer, result = train(folder, cfg.run, runtime, model, source, cfg.train, loss_fn,
                                make_validate(data, context, run_windows(data, context)),
                                save_into_checkpoint(data.tokenizer), task_settings(cfg))
        summary: dict[str, Any] = {
            "task": cfg.name, "steps": result.state.step, "stopped_by": result.stopped_by,
            "train_seconds": round(result.state.elapsed_s, 1), "tokens_per_s": round(result.tokens_per_s, 1),
            "best_sampled_val_loss": finite_or_none(result.state.best_val_loss)}
        def whole_split() -> dict:
            if cfg.memory is None:
                return evaluate_lm(trainer.final_model, data.valid, context)
            return evaluate_with_memory(trainer.final_model, data.valid, context, cfg.memory)

        full = after_training(result, whole_split)  # the whole split
        if full is not None:
            summary.update(val_loss=round(full["loss"], 4), val_ppl=round(full["perplexity"], 3), val_tokens=full["tokens"])
            log.info("validation loss %.4f (perplexity %.2f) on all %s validation tokens after %d steps, %.1f s "
                     "of training", full["loss"], full["perplexity"], f"{full['tokens']:,}", result.state.step,
                     result.state.elapsed_s)
        write_summary(folder, runtime, summary)
        log.info("wrote %s", folder.written())
    return TaskResult(summary, result.signum, runtime.is_main)


# --- fine-tuning ----------------------------------------------------------------------------------
# Fine-tuning a pretrained GPT on a text: AdamW, cosine to a tenth, short warm-up; every weight at
# 5e-5 (GPT-2 fine-tuning's usual rate), an adapter at its own rate (``adapters.LEARNING_RATES``).
FINETUNE = TrainConfig(max_steps=500, warmup=50, lr=5e-5, schedule="cosine", min_lr=5e-6, beta2=0.99, adam_eps=1e-8,
                       weight_decay=0.0, eval_every=100, label_smoothing=0.0)


def finetune_recipe(adapter: AdapterConfig | None) -> TrainConfig:
    return adapter_recipe(FINETUNE, adapter)


@dataclass
class LMFinetuneConfig:
    run: RunOptions
    model: Path  # a Hugging Face GPT-2 folder, or one of our GPT runs / checkpoints
    data: Path  # a UTF-8 text file, tokenised by the model's tokenizer
    train: TrainConfig = field(default_factory=lambda: replace(FINETUNE))
    context: int | None = None  # training window; None: the model's context (less any prefix or prompt), at most 256
    batch_size: int = 8
    val_fraction: float = 0.1
    adapter: AdapterConfig | None = None  # None: every weight trains
    prompt_text: str | None = None  # prompt tuning: initialise the soft prompt from this text

    def __post_init__(self) -> None:
        check_no_label_smoothing(self.train)
        self.model, self.data = Path(self.model), Path(self.data)
        check_positive("batch_size", self.batch_size)
        check_positive("context", self.context, allow_none=True)


def finetune(cfg: LMFinetuneConfig, runtime: Runtime | None = None) -> TaskResult:
    """Fine-tune a pretrained GPT on a text file (all weights, or an adapter); report the validation loss
    before and after, and export OUT/adapter (a peft adapter folder) when an adapter trained."""
    runtime = runtime or runtime_for(cfg.run.device, cfg.run.fsdp)
    with open_run(cfg.run, runtime, reads=cfg.model) as folder:
        model, tok = load_lm(cfg.model, runtime.device)
        if cfg.adapter is not None:
            apply_adapter(model, task_adapter(cfg.adapter, tok, cfg.prompt_text))
        counts = parameter_counts(model)
        context = cfg.context or min(model.context, 256)
        if context > model.context:
            raise ValueError(f"context: {context} tokens, but the model sees {model.context} at once"
                             f"{' (its prefix or prompt takes the rest)' if model.n_virtual else ''}")
        train_ids, valid_ids = split_tokens(encode_file(tok, read_text(cfg.data), cfg.data), cfg.val_fraction, context,
                                            str(cfg.data))
        log.info("fine-tuning %s on %s: %s training tokens, %s validation; %s%s", cfg.model, cfg.data,
                 f"{len(train_ids):,}", f"{len(valid_ids):,}", counts,
                 f" ({cfg.adapter.method})" if cfg.adapter else " (every weight)")
        before = evaluate_lm(model, valid_ids, context)
        data = LMData(train_ids, valid_ids, tok)
        source = RandomWindows(train_ids, cfg.batch_size, context, cfg.train.seed)
        trainer, result = train(folder, cfg.run, runtime, model, source, cfg.train, lm_loss,
                                make_validate(data, context, run_windows(data, context)), save_into_checkpoint(tok), task_settings(cfg))
        summary: dict[str, Any] = {
            "task": "finetune-lm", "method": cfg.adapter.method if cfg.adapter else "full", "steps": result.state.step,
            "stopped_by": result.stopped_by, "train_seconds": round(result.state.elapsed_s, 1),
            "trainable_parameters": counts.trainable, "total_parameters": counts.total,
            "val_loss_before": round(before["loss"], 4)}
        after = after_training(result, lambda: evaluate_lm(trainer.final_model, valid_ids, context))
        if after is not None:
            summary.update(val_loss=round(after["loss"], 4), val_ppl=round(after["perplexity"], 3))
            log.info("validation loss %.4f before fine-tuning, %.4f after %d steps", before["loss"], after["loss"],
                     result.state.step)
        if runtime.is_main and cfg.adapter is not None:
            best = load_model(find_checkpoint(folder.path), map_location=runtime.device).model
            summary["adapter"] = str(write_uncut(result, lambda: save_adapter(best, folder.export("adapter"), cfg.model)))
        write_summary(folder, runtime, summary)
    return TaskResult(summary, result.signum, runtime.is_main)


# --- decode -----------------------------------------------------------------------------------------
@dataclass
class Samples:
    prompts: list[str]  # one per sample (a prompt repeats num_samples times)
    texts: list[str]  # the continuations
    tokens: list[int]  # new tokens per sample, the end token included if reached
    signum: int | None = None  # the signal that stopped generation early, if one did


def sample(model: GPT, tok: Any, prompts: list[str], cfg: SamplingConfig, generator: torch.Generator | None = None,
           num_samples: int = 1, on_text: Callable[[str], None] | None = None,
           on_step: Callable[[], None] | None = None) -> Samples:
    """Continue each prompt ``num_samples`` times. ``on_text`` receives the first sample's text as it
    is generated (streaming: the pieces concatenate to the final text); ``on_step`` is called once per
    step (progress: at most ``cfg.max_new_tokens`` calls in all). A SIGINT/SIGTERM stops generation and
    keeps what was generated."""
    check_positive("num_samples", num_samples)
    ids = []
    for n, p in enumerate(prompts, 1):
        try:
            ids.append(encode_prompt(tok, p, model.config.eos_id))
        except ValueError as e:  # which of the prompts (lines of stdin, most often: a trailing blank one)
            raise ValueError(f"prompt {n} of {len(prompts)}: {str(e).removeprefix('prompt: ')}" if len(prompts) > 1
                             else str(e)) from None
    rows = [i for i in ids for _ in range(num_samples)]
    decoder = IncrementalDecoder(tok)
    steps: list[Tensor] = []
    eos = stop_token(model, cfg)
    groups = [list(range(len(rows)))]
    if not pads_exactly(model):  # a block-sparse model: one call per prompt length (see generation.sampling)
        lengths: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            lengths.setdefault(len(r), []).append(i)
        groups = list(lengths.values())  # (the first holds row 0: the streamed sample is its first row)
    streaming = on_text is not None
    progress, reported = 0.0, 0  # steps done over all groups, in units of one group's step

    def step(tokens: Tensor) -> None:
        nonlocal streaming, progress, reported
        steps.append(tokens.cpu())
        if streaming:
            first = int(tokens[0])
            on_text(decoder.push([first]))
            streaming = first != eos
        progress += 1 / len(groups)
        while on_step is not None and reported < int(progress + 1e-9):
            on_step()
            reported += 1

    signum = None
    out: list[list[int]] = [[] for _ in rows]
    for group in groups:
        steps.clear()
        try:
            with interruptible_section():
                done = generate(model, [rows[i] for i in group], cfg, generator, on_step=step).tokens
        except Interrupted as e:  # keep what was generated
            signum = e.signum
            done = cut_at_eos(steps, eos) or [[] for _ in group]
        for i, t in zip(group, done):
            out[i] = t
        streaming = False  # (the first sample is complete: later groups do not hold it)
        if signum is not None:
            break
    if on_text is not None:
        on_text(decoder.flush())
    return Samples([prompts[k // num_samples] for k in range(len(rows))], [tok.decode(t) for t in out],
                   [len(t) for t in out], signum)
