"""Tokenizer files and folders: load any tokenizer from a path, and the tokenizer of a model folder.

``load_tokenizer(PATH)`` accepts a folder written by ``save`` (its ``tokenizer_config.json`` names the
algorithm), a Hugging Face model folder or ``tokenizer.json`` (WordPiece, or BPE: byte-level when its
pre-tokenizer is ByteLevel, Sennrich-style when the model has the ``</w>`` suffix), or a BERT
``vocab.txt``.

A tokenizer loaded from Hugging Face files behaves as ``transformers`` does with them: literal
special-token text ("[MASK]", "<|endoftext|>") in the input is parsed as the special token, unless the
folder's ``tokenizer_config.json`` or the caller sets ``split_special_tokens`` (see ``special.py``).
Our own folders keep the setting they were saved with (default: such text is ordinary text).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformer_lab.config import read_json_object
from transformer_lab.tokenizers.base import Tokenizer
from transformer_lab.tokenizers.bpe import BPETokenizer
from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer
from transformer_lab.tokenizers.char import CharTokenizer
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

log = logging.getLogger(__name__)

CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"
BERT_VOCAB = "vocab.txt"
CHAR_FILE = "char_tokenizer.json"  # a character tokenizer inside a checkpoint
TOKENIZER_DIR = "tokenizer"  # any other tokenizer inside a checkpoint


def _wordpiece_from_hf_json(data: dict) -> WordPieceTokenizer:
    model = data["model"]
    norm = data.get("normalizer") or {}
    specials = [t["content"] for t in data.get("added_tokens", []) if t.get("special")]
    return WordPieceTokenizer(model["vocab"], lowercase=bool(norm.get("lowercase", True)),
                              strip_accents=norm.get("strip_accents"), specials=specials,
                              unk_token=model.get("unk_token", "[UNK]"))


def _merges(model: dict) -> list[tuple[str, str]]:
    out = []
    for m in model.get("merges", []):
        a, b = (m.split(" ") if isinstance(m, str) else m)
        out.append((a, b))
    return out


def load_hf_json(path: str | Path) -> Tokenizer:
    """Our tokenizer equivalent to an HF ``tokenizer.json``; special-token text is parsed, as HF does."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        kind = model.get("type")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not an HF tokenizer.json ({e})") from None
    specials = [t["content"] for t in data.get("added_tokens", []) if t.get("special")]
    tok: Tokenizer | None = None
    if kind == "WordPiece":
        tok = _wordpiece_from_hf_json(data)
    elif kind == "BPE":
        pre = json.dumps(data.get("pre_tokenizer") or {})
        if '"ByteLevel"' in pre:
            tok = ByteLevelBPETokenizer(model["vocab"], _merges(model), specials=specials)
        elif model.get("end_of_word_suffix") == "</w>":
            tok = BPETokenizer.from_hf_json(data)
    if tok is None:
        raise ValueError(f"{path}: unsupported tokenizer model {kind!r} (expected WordPiece or BPE)")
    tok.split_special_tokens = False
    return tok


def load_bert_vocab(path: str | Path, hf_config: dict[str, Any] | None = None, where: str = "",
                    cased: bool | None = None) -> WordPieceTokenizer:
    """A BERT ``vocab.txt`` with the settings of the folder's HF ``tokenizer_config.json``
    (``do_lower_case``, ``strip_accents``, ``split_special_tokens``; transformers' defaults without one)."""
    hf_config = hf_config or {}
    if hf_config.get("tokenize_chinese_chars", True) is False:
        raise ValueError(f"{where}: tokenize_chinese_chars=false is not supported (BERT's default, true, is)")
    lowercase = bool(hf_config.get("do_lower_case", True)) if cased is None else not cased
    tok = WordPieceTokenizer.from_vocab_file(path, lowercase=lowercase, strip_accents=hf_config.get("strip_accents"))
    tok.split_special_tokens = bool(hf_config.get("split_special_tokens", False))
    return tok


def load_tokenizer(path: str | Path, cased: bool | None = None, split_special_tokens: bool | None = None) -> Tokenizer:
    """A tokenizer from a folder we wrote, a Hugging Face folder, a ``tokenizer.json`` or a BERT
    ``vocab.txt``. ``cased`` (vocab.txt only) overrides lowercasing; ``split_special_tokens`` overrides
    how literal special-token text is read (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        config_path = path / CONFIG_FILE
        config = read_json_object(config_path) if config_path.is_file() else {}
        if "algorithm" in config:  # ours; HF also writes a tokenizer_config.json, without this key
            tok = _class_for(config["algorithm"], config_path).load(path)
            tok.split_special_tokens = bool(config.get("split_special_tokens", True))
        elif (path / HF_FILE).is_file():
            tok = load_hf_json(path / HF_FILE)
            tok.split_special_tokens = bool(config.get("split_special_tokens", False))
        elif (path / BERT_VOCAB).is_file():
            tok = load_bert_vocab(path / BERT_VOCAB, config, str(config_path), cased)
        else:
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE}, {HF_FILE} or {BERT_VOCAB} in this folder")
    elif path.suffix == ".json":
        tok = load_hf_json(path)
    elif path.suffix == ".txt":
        tok = load_bert_vocab(path, cased=cased)  # (as transformers' BertTokenizer(vocab_file): its defaults)
        if split_special_tokens is not None:
            tok.split_special_tokens = split_special_tokens
        _warn_of_settings_beside(path, tok, cased, split_special_tokens)
    elif not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    else:
        raise ValueError(f"{path}: expected a tokenizer folder, a tokenizer.json or a vocab.txt")
    if split_special_tokens is not None:
        tok.split_special_tokens = split_special_tokens
    return tok


def _warn_of_settings_beside(vocab: Path, tok: WordPieceTokenizer, cased: bool | None,
                             split_special_tokens: bool | None) -> None:
    """A vocab.txt read alone takes BERT's defaults; say so when its folder, read whole, would read text otherwise
    (its tokenizer_config.json: transformers' keys, or ours), leaving out what the caller set itself."""
    if vocab.name != BERT_VOCAB or not (vocab.parent / CONFIG_FILE).is_file():
        return
    try:
        there = load_tokenizer(vocab.parent, split_special_tokens=split_special_tokens)
    except (ValueError, OSError, TypeError, KeyError):
        return  # (a folder that does not read as a tokenizer: nothing to compare)
    keys = ("strip_accents", "split_special_tokens") if cased is not None else ("lowercase", "strip_accents",
                                                                               "split_special_tokens")
    differ = [k for k in keys if getattr(tok, k) != getattr(there, k, getattr(tok, k))]
    if differ:
        log.warning("%s is read alone, with BERT's defaults (%s); the %s beside it sets %s: give the folder %s to "
                    "read it as its model does", vocab, ", ".join(f"{k}={getattr(tok, k)}" for k in differ), CONFIG_FILE,
                    ", ".join(f"{k}={getattr(there, k)}" for k in differ), vocab.parent)


def _class_for(algorithm: Any, where: Path):
    classes = {"wordpiece": WordPieceTokenizer, "bpe": BPETokenizer, "bytelevel": ByteLevelBPETokenizer}
    if algorithm not in classes:
        raise ValueError(f"{where}: unknown algorithm {algorithm!r}; expected one of {sorted(classes)}")
    return classes[algorithm]


# --- model and checkpoint folders -----------------------------------------------------------------
def load_bert_tokenizer(folder: str | Path, split_special_tokens: bool | None = None) -> WordPieceTokenizer:
    """The WordPiece tokenizer of a BERT folder, behaving as the folder's ``transformers`` tokenizer
    (lowercasing, accents, special-token text); see ``load_tokenizer``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder (expected config.json, model.safetensors, vocab.txt)")
    if (folder / TOKENIZER_DIR).is_dir() and not (folder / BERT_VOCAB).is_file():
        folder = folder / TOKENIZER_DIR  # one of our checkpoints: its tokenizer is a folder inside
    tok = load_tokenizer(folder, split_special_tokens=split_special_tokens)
    if not isinstance(tok, WordPieceTokenizer):
        raise ValueError(f"{folder}: its tokenizer is {tok.algorithm}, not BERT's WordPiece")
    return tok


def write_bert_tokenizer(tok: WordPieceTokenizer, folder: str | Path, max_length: int | None = None) -> None:
    """vocab.txt and the tokenizer_config.json keys BertTokenizer reads (lowercasing, specials; with
    ``max_length``, ``model_max_length``: where its truncation cuts, the length a model was trained at)."""
    folder = Path(folder)
    (folder / BERT_VOCAB).write_text("".join(t + "\n" for t in tok.id_to_token), encoding="utf-8")
    config = {"do_lower_case": tok.lowercase, "strip_accents": tok.strip_accents, "tokenizer_class": "BertTokenizer",
              "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
              "mask_token": "[MASK]", "split_special_tokens": tok.split_special_tokens,
              **({"model_max_length": max_length} if max_length else {})}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def save_into_checkpoint(tok: Tokenizer | CharTokenizer):
    """``{file or folder name: writer}`` for a checkpoint's extra files (see ``runs.checkpoint``)."""
    if isinstance(tok, CharTokenizer):
        return {CHAR_FILE: tok.save}
    return {TOKENIZER_DIR: tok.save}


def checkpoint_tokenizer(folder: str | Path, split_special_tokens: bool | None = None) -> Tokenizer | CharTokenizer:
    """The tokenizer stored with a model: ours inside a checkpoint (``char_tokenizer.json`` or
    ``tokenizer/``), or a Hugging Face folder's own (``tokenizer.json``, ``vocab.txt``)."""
    folder = Path(folder)
    if (folder / CHAR_FILE).is_file():
        return CharTokenizer.load(folder / CHAR_FILE)
    if (folder / TOKENIZER_DIR).is_dir():
        return load_tokenizer(folder / TOKENIZER_DIR, split_special_tokens=split_special_tokens)
    if (folder / HF_FILE).is_file() or (folder / BERT_VOCAB).is_file():
        return load_tokenizer(folder, split_special_tokens=split_special_tokens)
    raise FileNotFoundError(f"{folder}: no tokenizer ({CHAR_FILE}, {TOKENIZER_DIR}/, {HF_FILE} or {BERT_VOCAB})")
