"""Sentence embeddings with a BERT folder (e.g. all-MiniLM-L6-v2), as sentence-transformers computes
them: [CLS] text [SEP], truncated at the folder's max_seq_length, mean of the last hidden states over
real tokens, L2-normalised. Also the BERT helpers the other BERT tasks share (encoding texts, running
the encoder over batches of similar length, exporting a Hugging Face folder)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from transformer_lab.config import check_positive, read_json_object
from transformer_lab.data.batches import inference_batches, padding_and_mask
from transformer_lab.models.bert import Bert, mean_pool
from transformer_lab.models.hf import load_bert, save_bert, sentence_max_seq_length
from transformer_lab.nn.sparse import padding_changes_rows
from transformer_lab.runs import find_checkpoint, is_ours, load_model
from transformer_lab.runs.checkpoint import recorded_settings
from transformer_lab.runtime import compile_for_inference
from transformer_lab.tasks.common import swap_in_folder
from transformer_lab.tokenizers.io import load_bert_tokenizer, write_bert_tokenizer
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer
from transformer_lab.training.config import TrainConfig

# BERT's optimiser for pre-training and fine-tuning: AdamW (β2 0.999, ε 1e-8, decay 0.01), clipping at 1,
# a linear warm-up (10% of the steps) and linear decay; the tasks set the rate and the steps.
BERT_RECIPE = TrainConfig(schedule="linear", label_smoothing=0.0, clip_norm=1.0, beta2=0.999, adam_eps=1e-8,
                          weight_decay=0.01)

log = logging.getLogger(__name__)


def load_encoder(folder: str | Path, device: str | torch.device = "cpu", split_special_tokens: bool | None = None,
                 compile: bool = False) -> tuple[Bert, WordPieceTokenizer, int]:
    """The encoder of a BERT folder (heads left out) or of one of our BERT checkpoints (a quantized
    one, say), its tokenizer, and the truncation length. ``compile``: the encoder under
    ``runtime.compile_for_inference`` (a per-token INT8 model 1.0-1.3x, once the first batch has compiled it)."""
    if is_ours(folder):
        loaded = load_model(find_checkpoint(folder), map_location=device)
        if not isinstance(loaded.model, Bert):
            raise ValueError(f"{loaded.path}: a {type(loaded.model).__name__} checkpoint, not a BERT encoder")
        folder, model = loaded.path, loaded.model.eval()
    else:
        model = load_bert(folder, pretraining_heads=False, n_labels=0).to(device).eval()
    room = model.config.max_len - model.n_virtual  # (a prompt or prefix takes positions too)
    tok, max_len = load_bert_tokenizer(folder, split_special_tokens), min(sentence_max_seq_length(folder, room), room)
    return (compile_for_inference(model) if compile else model), tok, max_len


def cut_length(folder: Path, model: Bert) -> int:
    """The pieces a text keeps ([CLS] and [SEP] included) for ``model`` read from ``folder``: the run's
    --max-len where its checkpoint recorded it (OUT/model: as its tokenizer's ``model_max_length``), else
    the folder's, within the positions a prompt or prefix leaves."""
    room = model.config.max_len - model.n_virtual
    if is_ours(folder):
        recorded = recorded_settings(folder)[2].get("max_len")
    else:
        config = Path(folder) / "tokenizer_config.json"
        recorded = read_json_object(config).get("model_max_length") if config.is_file() else None
    return min(recorded if isinstance(recorded, int) else sentence_max_seq_length(folder, room), room)


def special_id(tok: WordPieceTokenizer, name: str) -> int:
    i = tok.token_to_id(name)
    if i is None:
        raise ValueError(f"tokenizer: the vocabulary has no {name} token")
    return i


def encode_texts(tok: WordPieceTokenizer, texts: Sequence[str], max_len: int,
                 truncated: list[int] | None = None) -> list[list[int]]:
    """[CLS] pieces [SEP], the pieces cut to max_len - 2 (HF's truncation of a single text); the indices
    of the texts cut are appended to ``truncated`` when given."""
    cls_id, sep_id = special_id(tok, "[CLS]"), special_id(tok, "[SEP]")
    out = []
    for i, t in enumerate(texts):
        pieces = tok.encode(t)
        if truncated is not None and len(pieces) > max_len - 2:
            truncated.append(i)
        out.append([cls_id] + pieces[: max_len - 2] + [sep_id])
    return out


def warn_truncated(truncated: Sequence[int], n_texts: int, max_len: int) -> None:
    """One warning naming the texts (1-based, the first five) cut to the model's length, as sentence-
    transformers cuts them without a word: a label or an embedding of a text's beginning only."""
    if truncated:
        shown = ", ".join(str(i + 1) for i in truncated[:5]) + (", ..." if len(truncated) > 5 else "")
        log.warning("%d of %d texts cut to their first %d word pieces (max length %d with [CLS] and [SEP]): "
                    "text %s", len(truncated), n_texts, max_len - 2, max_len, shown)


@torch.no_grad()
def by_length(model: Bert, ids: list[list[int]], batch_size: int, head: Callable[[Bert, Tensor, Tensor], Tensor]) -> Tensor:
    """``head(model, tokens, mask)`` over batches of similar length (as sentence-transformers
    batches, so padding stays small; of one length under BigBird's random blocks, which padding moves),
    rows returned in the order of ``ids``, in eval mode."""
    check_positive("batch_size", batch_size)
    if not ids:
        raise ValueError("texts: nothing to encode (no text given)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    parts = []
    for batch in inference_batches(order, [len(x) for x in ids], batch_size, padding_changes_rows(model.config.attention)):
        tokens, mask = padding_and_mask([ids[i] for i in batch], model.config.pad_id)
        parts.append(head(model, tokens.to(device), mask.to(device)).cpu())
    model.train(was_training)
    out = torch.cat(parts)
    return out[torch.argsort(torch.tensor(order))]


def embed(model: Bert, tok: WordPieceTokenizer, texts: Sequence[str], max_len: int, batch_size: int = 32,
          truncated: list[int] | None = None) -> Tensor:
    """L2-normalised mean-pooled sentence embeddings, (N, D), in the order of ``texts`` (``truncated``: as
    ``encode_texts``)."""
    return by_length(model, encode_texts(tok, texts, max_len, truncated), batch_size,
                     lambda m, t, mask: mean_pool(m(t, attention_mask=mask).hidden, mask).float())


def similarity(model: Bert, tok: WordPieceTokenizer, a: str, b: str, max_len: int) -> float:
    """Cosine similarity of two texts' embeddings (unit vectors: their dot product)."""
    va, vb = embed(model, tok, [a, b], max_len)
    return float(va @ vb)


def export(model: Bert, tok: WordPieceTokenizer, folder: Path, max_length: int | None = None) -> Path:
    """A Hugging Face BERT folder (config.json, model.safetensors, vocab.txt, tokenizer_config.json, with
    ``max_length`` as its ``model_max_length``), written beside and then swapped in, so a reader never sees
    half of one."""
    def write(tmp: Path) -> None:
        save_bert(model, tmp)
        write_bert_tokenizer(tok, tmp, max_length)

    return swap_in_folder(folder, write)
