"""Labelled sentences for sequence classification: GLUE-style TSV files (batching: ``batches``)."""

from __future__ import annotations

import csv
from pathlib import Path

from transformer_lab.tokenizers.corpus import readable_file


def read_labelled_tsv(path: str | Path) -> tuple[list[str], list[int]]:
    """GLUE-style TSV with a header naming ``sentence`` and ``label`` columns; labels are integers >= 0."""
    path = readable_file(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # (a byte-order mark, as spreadsheets write, dropped)
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not rows:
        raise ValueError(f"{path}: empty file; expected a header 'sentence<TAB>label' and rows")
    header = rows[0]
    missing = [c for c in ("sentence", "label") if c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks the {' and '.join(repr(c) for c in missing)} "
                         f"column{'s' * (len(missing) > 1)} (expected 'sentence<TAB>label')")
    si, li = header.index("sentence"), header.index("label")
    texts, labels = [], []
    for n, row in enumerate(rows[1:], start=2):
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
