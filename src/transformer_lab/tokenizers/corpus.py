"""Reading text corpora: UTF-8 lines of plain or gzipped files and streams, with errors that name the
source, the line and the byte offset."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import BinaryIO, Iterator


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


def readable_file(path: str | Path) -> Path:
    """``path`` as a file to read: FileNotFoundError naming it when there is none, IsADirectoryError for a
    folder; a pipe reads too (``<(zcat a.gz)``, /dev/stdin)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not a file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def read_lines(path: str | Path) -> Iterator[str]:
    """Lines of a UTF-8 text file, plain or .gz (see ``decode_lines``)."""
    path = readable_file(path)
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
