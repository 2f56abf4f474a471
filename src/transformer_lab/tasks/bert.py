"""BERT tasks: sentence embeddings, MLM + NSP pretraining, sequence-classification fine-tuning.

Models live in Hugging Face folders (config.json, model.safetensors, vocab.txt), read by
``models.hf.load_bert`` and written by ``save_bert``; the WordPiece tokenizer is ours
(``tokenizers.wordpiece``, held equal to BertTokenizerFast by its tests), lowercasing as the
folder's tokenizer_config.json says.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_lab.data.mlm import IGNORE, PretrainBatch
from transformer_lab.data.vocab import epoch_order, pad_sequences
from transformer_lab.models.bert import Bert, mean_pool
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer
from transformer_lab.training.trainer import StepLoss

log = logging.getLogger(__name__)


def load_bert_tokenizer(folder: str | Path) -> WordPieceTokenizer:
    folder = Path(folder)
    if not (folder / "vocab.txt").is_file():
        raise FileNotFoundError(f"{folder / 'vocab.txt'}: not found (a BERT folder holds config.json, model.safetensors, vocab.txt)")
    settings = {}
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        settings = json.loads(cfg.read_text())
    if settings.get("tokenize_chinese_chars", True) is False:
        raise ValueError(f"{cfg}: tokenize_chinese_chars=false is not supported (BERT's default, true, is)")
    return WordPieceTokenizer.from_vocab_file(folder / "vocab.txt", lowercase=bool(settings.get("do_lower_case", True)),
                                              strip_accents=settings.get("strip_accents"))


def write_bert_tokenizer(tok: WordPieceTokenizer, folder: str | Path) -> None:
    """vocab.txt and the tokenizer_config.json keys BertTokenizer reads (lowercasing)."""
    folder = Path(folder)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tok.id_to_token), encoding="utf-8")
    config = {"do_lower_case": tok.lowercase, "strip_accents": tok.strip_accents, "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]",
              "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def max_seq_length(folder: str | Path, model: Bert) -> int:
    """sentence-transformers truncates at sentence_bert_config.json's max_seq_length (256 for
    all-MiniLM-L6-v2); without that file, the model's position table."""
    path = Path(folder) / "sentence_bert_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("max_seq_length")
        if value:
            return min(int(value), model.config.max_len)
    return model.config.max_len


def special_id(tok: WordPieceTokenizer, name: str) -> int:
    i = tok.token_to_id(name)
    if i is None:
        raise ValueError(f"tokenizer: the vocabulary has no {name} token")
    return i


def encode_texts(tok: WordPieceTokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """[CLS] pieces [SEP], the pieces cut to max_len - 2 (HF's truncation of a single text)."""
    cls_id, sep_id = special_id(tok, "[CLS]"), special_id(tok, "[SEP]")
    return [[cls_id] + tok.encode(t)[: max_len - 2] + [sep_id] for t in texts]


def pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right padding. Returns tokens (B, S) and attention mask (B, S) bool."""
    tokens = pad_sequences(rows, pad_id)
    mask = torch.arange(tokens.size(1))[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    return tokens, mask


@torch.no_grad()
def by_length(model: Bert, ids: list[list[int]], batch_size: int, head: Callable[[Bert, Tensor, Tensor], Tensor]) -> Tensor:
    """``head(model, tokens, mask)`` over batches of similar length (as sentence-transformers
    batches, so padding stays small), rows returned in the order of ``ids``, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    parts = []
    for k in range(0, len(order), batch_size):
        tokens, mask = pad([ids[i] for i in order[k:k + batch_size]], model.config.pad_id)
        parts.append(head(model, tokens.to(device), mask.to(device)).cpu())
    model.train(was_training)
    out = torch.cat(parts)
    return out[torch.argsort(torch.tensor(order))]


def embed(model: Bert, tok: WordPieceTokenizer, texts: Sequence[str], max_len: int, batch_size: int = 32) -> Tensor:
    """L2-normalised mean-pooled sentence embeddings, (N, D), in the order of ``texts``."""
    return by_length(model, encode_texts(tok, texts, max_len), batch_size,
                     lambda m, t, mask: mean_pool(m(t, attention_mask=mask).hidden, mask).float())


# --- pretraining ----------------------------------------------------------------------------------
def pretrain_loss(nsp: bool):
    def loss_fn(model: Bert, b: PretrainBatch, device: torch.device) -> StepLoss:
        tokens, segments, mask, labels = (t.to(device) for t in (b.tokens, b.segments, b.attention_mask, b.labels))
        selected = labels != IGNORE
        out = model(tokens, segments, mask, mlm_positions=selected)
        targets = labels[selected]
        mlm = F.cross_entropy(out.mlm_logits.float(), targets) if targets.numel() else out.mlm_logits.sum() * 0
        loss = mlm
        metrics = {"mlm_acc": float((out.mlm_logits.argmax(-1) == targets).float().mean()) if targets.numel() else 0.0}
        if nsp:
            not_next = b.not_next.to(device)
            loss = loss + F.cross_entropy(out.nsp_logits.float(), not_next)
            metrics["nsp_acc"] = float((out.nsp_logits.argmax(-1) == not_next).float().mean())
        n = tokens.size(0)
        return StepLoss(loss * n, float(mlm.detach()) * n, metrics)

    return loss_fn


@torch.no_grad()
def evaluate_pretraining(model: Bert, source, nsp: bool, max_batches: int | None = None) -> dict[str, float]:
    """MLM accuracy over all selected tokens, NSP accuracy over all pairs, MLM loss; masks are the
    source's epoch-0 draw, so the figure is the same for every call."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = count = nsp_correct = pairs = 0
    loss_sum = 0.0
    for k, idx in enumerate(source.epoch(0)):
        if max_batches is not None and k >= max_batches:
            break
        b = source.make(idx)
        selected = b.labels != IGNORE
        out = model(b.tokens.to(device), b.segments.to(device), b.attention_mask.to(device),
                    mlm_positions=selected.to(device))
        targets = b.labels[selected].to(device)
        correct += int((out.mlm_logits.argmax(-1) == targets).sum())
        loss_sum += float(F.cross_entropy(out.mlm_logits.float(), targets, reduction="sum"))
        count += targets.numel()
        if nsp:
            nsp_correct += int((out.nsp_logits.argmax(-1).cpu() == b.not_next).sum())
            pairs += b.not_next.numel()
    model.train(was_training)
    res = {"mlm_acc": correct / max(count, 1), "mlm_loss": loss_sum / max(count, 1)}
    if nsp:
        res["nsp_acc"] = nsp_correct / max(pairs, 1)
    return res


# --- fine-tuning ----------------------------------------------------------------------------------
def read_labelled_tsv(path: str | Path) -> tuple[list[str], list[int]]:
    """GLUE-style TSV with a header naming ``sentence`` and ``label`` columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file; expected a header 'sentence<TAB>label' and rows")
        if "sentence" not in header or "label" not in header:
            raise ValueError(f"{path}: header {header} lacks 'sentence' and 'label' columns")
        si, li = header.index("sentence"), header.index("label")
        texts, labels = [], []
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{n}: expected {len(header)} tab-separated fields, got {len(row)}")
            try:
                labels.append(int(row[li]))
            except ValueError:
                raise ValueError(f"{path}:{n}: label {row[li]!r} is not an integer") from None
            texts.append(row[si])
    if not texts:
        raise ValueError(f"{path}: no rows after the header")
    if min(labels) < 0:
        raise ValueError(f"{path}: negative label {min(labels)}")
    return texts, labels


@dataclass
class ClassBatch:
    tokens: Tensor  # (B, S)
    attention_mask: Tensor  # (B, S)
    labels: Tensor  # (B,)

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())  # real tokens, for throughput

    @property
    def loss_units(self) -> int:
        return self.tokens.size(0)  # the loss is a mean over sentences


class ClassBatches:
    """Sentences shuffled per epoch from (seed, epoch), batched with right padding."""

    def __init__(self, ids: list[list[int]], labels: list[int], batch_size: int, pad_id: int, seed: int = 0):
        self.ids, self.labels, self.batch_size, self.pad_id, self.seed = ids, labels, batch_size, pad_id, seed

    def __len__(self) -> int:
        return (len(self.ids) + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        order = epoch_order(len(self.ids), self.seed, epoch)
        return [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]

    def make(self, indices: Sequence[int]) -> ClassBatch:
        tokens, mask = pad([self.ids[i] for i in indices], self.pad_id)
        return ClassBatch(tokens, mask, torch.tensor([self.labels[i] for i in indices]))


def classification_loss(model: Bert, b: ClassBatch, device: torch.device) -> StepLoss:
    logits = model(b.tokens.to(device), attention_mask=b.attention_mask.to(device)).class_logits
    labels = b.labels.to(device)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    return StepLoss(loss, loss.detach(), {"acc": float((logits.argmax(-1) == labels).float().mean())})


def classify(model: Bert, ids: list[list[int]], batch_size: int = 64) -> Tensor:
    """Predicted labels (N,)."""
    return by_length(model, ids, batch_size, lambda m, t, mask: m(t, attention_mask=mask).class_logits.argmax(-1))
