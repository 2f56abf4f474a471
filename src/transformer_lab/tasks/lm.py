"""Language modelling on plain text with a GPT: data, batches, loss, validation, checkpoints.

The text is split as nanoGPT splits it: the first 90% of the encoded tokens train, the last 10%
validate. A training batch is B windows of T+1 tokens at random offsets (x = window[:-1],
y = window[1:]); the offsets of an "epoch" (len(train) / (B·T) batches) are a pure function of
(seed, epoch), so a resumed run sees the same batches. Validation covers the whole validation split
in non-overlapping windows (nanoGPT estimates the same mean from 200 random windows).

Tokenizers: ``char`` (one id per character, nanoGPT's shakespeare-char), ``bytelevel`` (our GPT-2
byte-level BPE trained on the training split) or a path to a saved tokenizer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_lab.config import read_json_object
from transformer_lab.models.gpt import GPT
from transformer_lab.tokenizers.char import CharTokenizer
from transformer_lab.training.trainer import StepLoss

log = logging.getLogger(__name__)

CHAR_FILE = "char_tokenizer.json"
TOKENIZER_DIR = "tokenizer"


@dataclass
class LMBatch:
    x: Tensor  # (B, T) inputs
    y: Tensor  # (B, T) next tokens

    @property
    def n_tokens(self) -> int:
        return self.y.numel()


@dataclass
class LMData:
    train: Tensor  # (N_train,) token ids
    valid: Tensor  # (N_valid,)
    tokenizer: Any  # CharTokenizer or a transformer_lab Tokenizer


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty; a language model needs text to train on")
    return text


def build_tokenizer(kind: str, train_text: str, vocab_size: int):
    if kind == "char":
        return CharTokenizer.train(train_text)
    if kind == "bytelevel":
        from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer

        return ByteLevelBPETokenizer.train(train_text.splitlines(keepends=True), vocab_size)
    from transformer_lab.tokenizers.io import load_tokenizer

    return load_tokenizer(kind)  # a path


def prepare_lm_data(path: str | Path, tokenizer: str = "char", vocab_size: int = 4000, val_fraction: float = 0.1,
                    context: int = 64) -> LMData:
    text = read_text(path)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected 0 < f < 1, got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    # char: nanoGPT builds the vocabulary from the whole file; a subword vocabulary sees train only
    tok = build_tokenizer(tokenizer, text if tokenizer == "char" else text[:cut], vocab_size)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    n_train = int(len(ids) * (1 - val_fraction))
    data = LMData(ids[:n_train], ids[n_train:], tok)
    for name, part in (("training", data.train), ("validation", data.valid)):
        if len(part) <= context:
            raise ValueError(f"{path}: the {name} split has {len(part)} tokens, fewer than one window of "
                             f"{context + 1}; use a longer text or a shorter context")
    return data


class RandomWindows:
    """The trainer's batch source: batches of random window offsets, reproducible per epoch."""

    def __init__(self, ids: Tensor, batch_size: int, context: int, seed: int = 0):
        if batch_size < 1 or context < 1:
            raise ValueError("batch_size and context: expected >= 1")
        self.ids, self.batch_size, self.context, self.seed = ids, batch_size, context, seed
        self.n_batches = max(1, (len(ids) - 1) // (batch_size * context))

    def __len__(self) -> int:
        return self.n_batches

    def epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        offsets = torch.randint(len(self.ids) - self.context, (self.n_batches, self.batch_size), generator=g)
        return offsets.tolist()

    def make(self, offsets: Sequence[int]) -> LMBatch:
        idx = torch.as_tensor(offsets)[:, None] + torch.arange(self.context + 1)  # (B, T+1)
        windows = self.ids[idx]
        return LMBatch(windows[:, :-1], windows[:, 1:])


def lm_loss(model: GPT, batch: LMBatch, device: torch.device) -> StepLoss:
    x, y = batch.x.to(device, non_blocking=True), batch.y.to(device, non_blocking=True)
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
    return StepLoss(loss, loss.detach())


@torch.no_grad()
def loss_sum(model: GPT, windows: Tensor, batch_size: int = 64) -> float:
    """Summed next-token loss over windows (W, T+1): each predicts its tokens 1..T from 0..T-1."""
    was_training = model.training
    model.eval()
    device = model.token_weight.device
    total = 0.0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size].to(device)
        total += float(F.cross_entropy(model(w[:, :-1]).flatten(0, 1).float(), w[:, 1:].flatten(), reduction="sum"))
    model.train(was_training)
    return total


def evaluate_lm(model: GPT, ids: Tensor, context: int, batch_size: int = 64) -> dict[str, float]:
    """Mean next-token loss over ``ids`` in non-overlapping windows of ``context`` (the tail that
    does not fill a window is scored in a last, shorter window). Returns loss and perplexity."""
    if len(ids) < 2:
        raise ValueError("evaluate: the text is too short (needs at least 2 tokens)")
    n_full = (len(ids) - 1) // context
    full = ids[: n_full * context + 1].unfold(0, context + 1, context)  # (n_full, T+1), overlapping by 1
    total = loss_sum(model, full, batch_size) if n_full else 0.0
    tail = ids[n_full * context:]
    if len(tail) > 1:
        total += loss_sum(model, tail[None])
    count = len(ids) - 1  # every token but the first is predicted once
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def make_validate(data: LMData, context: int, windows: int = 240, seed: int = 0) -> Callable[[GPT], dict]:
    """Periodic validation on a fixed sample of ``windows`` random windows of the validation split
    (nanoGPT's CPU run estimates from 20 batches of 12 = 240 windows); the run's final figure is
    ``evaluate_lm`` over the whole split."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(len(data.valid) - context, (windows,), generator=g)
    sample = data.valid[offsets[:, None] + torch.arange(context + 1)]  # (W, T+1)

    def validate(model: GPT) -> dict:
        loss = loss_sum(model, sample) / (sample.size(0) * context)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    return validate


def tokenizer_files(tok: Any) -> dict[str, Callable[[Path], Any]]:
    if isinstance(tok, CharTokenizer):
        return {CHAR_FILE: tok.save}
    return {TOKENIZER_DIR: tok.save}


def load_lm_tokenizer(checkpoint: Path):
    if (checkpoint / CHAR_FILE).is_file():
        return CharTokenizer.load(checkpoint / CHAR_FILE)
    if (checkpoint / TOKENIZER_DIR).is_dir():
        from transformer_lab.tokenizers.io import load_tokenizer

        return load_tokenizer(checkpoint / TOKENIZER_DIR)
    if (checkpoint / "tokenizer.json").is_file():  # a Hugging Face GPT-2 folder
        from transformer_lab.tokenizers.io import load_tokenizer

        return load_tokenizer(checkpoint)
    raise FileNotFoundError(f"{checkpoint}: no tokenizer ({CHAR_FILE}, {TOKENIZER_DIR}/ or tokenizer.json)")


def load_lm(path: str | Path, device: str = "cpu") -> tuple[GPT, Any]:
    """A GPT and its tokenizer from one of our checkpoints or a Hugging Face GPT-2 folder."""
    from transformer_lab.training.checkpoint import load_model, resolve_checkpoint

    path = Path(path)
    if (path / "checkpoints" / "last").is_dir():
        path = path / "checkpoints" / ("best" if (path / "checkpoints" / "best").is_dir() else "last")
    cfg_file = path / "config.json"
    if cfg_file.is_file() and read_json_object(cfg_file).get("model_type") == "gpt2":
        from transformer_lab.models.hf import gpt_from_hf

        model = gpt_from_hf(path)
    else:
        loaded = load_model(path, map_location=device)
        if not isinstance(loaded.model, GPT):
            raise ValueError(f"{path}: a {type(loaded.model).__name__} checkpoint, not a GPT language model")
        model, path = loaded.model, resolve_checkpoint(path)
    return model.to(device).eval(), load_lm_tokenizer(path)
