"""Reading corpora and loading any tokenizer from a path.

``load_tokenizer(PATH)`` accepts a folder written by ``save`` (its ``tokenizer_config.json`` names the
algorithm), an HF ``tokenizer.json`` (WordPiece, or BPE: byte-level when its pre-tokenizer is
ByteLevel, Sennrich-style when the model has the ``</w>`` suffix), or a BERT ``vocab.txt``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import BinaryIO, Iterator

from transformer_lab.tokenizers.base import Tokenizer


def decode_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Lines of a binary stream decoded as UTF-8, without newlines. Invalid UTF-8 is an error naming
    the source, the line and the byte offset, not a crash deep inside a tokenizer."""
    offset = 0
    for n, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{name}: line {n}: invalid UTF-8 at byte offset {offset + e.start} "
                f"(byte 0x{raw[e.start]:02x}); re-encode the text as UTF-8"
            ) from None
        offset += len(raw)
        yield line.rstrip("\r\n")


def read_lines(path: str | Path) -> Iterator[str]:
    """Lines of a UTF-8 text file, plain or .gz (see ``decode_lines``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        yield from decode_lines(f, str(path))


def read_corpus(paths: list[str | Path]) -> list[str]:
    lines: list[str] = []
    for p in paths:
        got = list(read_lines(p))
        if not any(line.strip() for line in got):
            raise ValueError(f"{p}: the file is empty (no non-blank line to learn from)")
        lines.extend(got)
    return lines


def _wordpiece_from_hf_json(data: dict, where: str) -> Tokenizer:
    from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

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
    """Our tokenizer equivalent to an HF ``tokenizer.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an HF tokenizer.json ({e})") from None
    kind = model.get("type")
    specials = [t["content"] for t in data.get("added_tokens", []) if t.get("special")]
    if kind == "WordPiece":
        return _wordpiece_from_hf_json(data, str(path))
    if kind == "BPE":
        pre = json.dumps(data.get("pre_tokenizer") or {})
        if '"ByteLevel"' in pre:
            from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer

            return ByteLevelBPETokenizer(model["vocab"], _merges(model), specials=specials)
        if model.get("end_of_word_suffix") == "</w>":
            from transformer_lab.tokenizers.bpe import BPETokenizer

            return BPETokenizer.from_hf_json(data)
    raise ValueError(f"{path}: unsupported tokenizer model {kind!r} (expected WordPiece or BPE)")


def load_tokenizer(path: str | Path, cased: bool = False) -> Tokenizer:
    """A tokenizer from a folder we wrote, a ``tokenizer.json`` or a BERT ``vocab.txt``
    (WordPiece, lowercased unless ``cased``)."""
    from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

    path = Path(path)
    if path.is_dir():
        config = path / "tokenizer_config.json"
        algorithm = json.loads(config.read_text()).get("algorithm") if config.is_file() else None
        if algorithm is not None:  # ours; HF also writes a tokenizer_config.json, without this key
            return _class_for(algorithm, config).load(path)
        if (path / "tokenizer.json").is_file():
            return load_hf_json(path / "tokenizer.json")
        if (path / "vocab.txt").is_file():
            return WordPieceTokenizer.from_vocab_file(path / "vocab.txt", lowercase=not cased)
        raise FileNotFoundError(f"{path}: no tokenizer_config.json, tokenizer.json or vocab.txt in this folder")
    if path.suffix == ".json":
        return load_hf_json(path)
    if path.suffix == ".txt":
        return WordPieceTokenizer.from_vocab_file(path, lowercase=not cased)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    raise ValueError(f"{path}: expected a tokenizer folder, a tokenizer.json or a vocab.txt")


def _class_for(algorithm: str | None, where: Path):
    if algorithm == "wordpiece":
        from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

        return WordPieceTokenizer
    if algorithm == "bpe":
        from transformer_lab.tokenizers.bpe import BPETokenizer

        return BPETokenizer
    if algorithm == "bytelevel":
        from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer

        return ByteLevelBPETokenizer
    raise ValueError(f"{where}: unknown algorithm {algorithm!r}; expected bpe, bytelevel or wordpiece")
